//! Where [`LockLayer`](super::LockLayer) finds a request's lock key.
//!
//! A [`KeyExtractor`] looks at the request head and returns the key, or
//! `None` when the request has none (see [`MissingKey`](super::MissingKey)).
//! Closures `Fn(&Parts) -> Option<String>` are extractors; [`from_fn`] helps
//! the compiler infer their argument type. Ready ones:
//!
//! - [`header`]: the value of a request header (per-tenant locks).
//! - `path_param` (feature `axum`): a parameter of the matched axum route.
//! - `method_and_path` (feature `axum`): the method and the route
//!   template, one lock per endpoint.
//!
//! Any extractor can put a namespace in front of its keys with
//! [`KeyExtractor::prefixed`], so that `tenant:7` and `account:7` differ.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use tower_lock::{LockLayer, Locker, middleware::key};
//!
//! let locker = Locker::in_memory();
//! let by_tenant = LockLayer::new(locker.clone(), key::header("x-tenant-id").prefixed("tenant:"));
//! let by_first_segment = LockLayer::new(
//!     locker,
//!     key::from_fn(|parts| parts.uri.path().split('/').nth(1).map(str::to_owned)),
//! );
//! ```

use http::{HeaderName, request::Parts};

/// Finds the lock key of a request from its head.
///
/// Extraction is synchronous and must be cheap: it runs on every request
/// before the lock is taken. Keys may hold any characters, up to
/// [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes; a longer or empty key is
/// refused with `400`.
pub trait KeyExtractor: Send + Sync + 'static {
    /// The lock key of the request, or `None` when it has none.
    fn extract(&self, parts: &Parts) -> Option<String>;

    /// This extractor with `prefix` in front of every key it finds.
    ///
    /// ```
    /// use tower_lock::middleware::{KeyExtractor, key};
    ///
    /// let request = http::Request::builder().header("x-tenant-id", "7").body(()).unwrap();
    /// let (parts, _) = request.into_parts();
    /// let extractor = key::header("x-tenant-id").prefixed("tenant:");
    /// assert_eq!(extractor.extract(&parts).as_deref(), Some("tenant:7"));
    /// ```
    fn prefixed(self, prefix: impl Into<String>) -> Prefixed<Self>
    where
        Self: Sized,
    {
        Prefixed {
            prefix: prefix.into(),
            inner: self,
        }
    }
}

impl<F> KeyExtractor for F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    fn extract(&self, parts: &Parts) -> Option<String> {
        self(parts)
    }
}

/// A closure as an extractor; the same as passing the closure, with its
/// argument type inferred.
///
/// ```
/// use tower_lock::middleware::{KeyExtractor, key};
///
/// let by_query = key::from_fn(|parts| parts.uri.query().map(str::to_owned));
/// let (parts, _) = http::Request::get("/x?job=7").body(()).unwrap().into_parts();
/// assert_eq!(by_query.extract(&parts).as_deref(), Some("job=7"));
/// ```
pub fn from_fn<F>(f: F) -> F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    f
}

/// See [`KeyExtractor::prefixed`].
#[derive(Clone, Debug)]
pub struct Prefixed<K> {
    prefix: String,
    inner: K,
}

impl<K: KeyExtractor> KeyExtractor for Prefixed<K> {
    fn extract(&self, parts: &Parts) -> Option<String> {
        self.inner
            .extract(parts)
            .map(|key| format!("{}{key}", self.prefix))
    }
}

/// Keys requests by the value of the header `name` (its first value).
///
/// A request without the header has no key. A value that is not UTF-8 is
/// read lossily: two such values may then share a lock, which serialises
/// more than needed but never less.
///
/// # Panics
///
/// When `name` is not a valid header name: a programming error, caught on
/// the first run.
///
/// ```
/// use tower_lock::middleware::{KeyExtractor, key};
///
/// let (parts, _) = http::Request::builder()
///     .header("x-tenant-id", "acme")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert_eq!(key::header("x-tenant-id").extract(&parts).as_deref(), Some("acme"));
/// ```
pub fn header(name: impl AsRef<str>) -> Header {
    let name = name.as_ref();
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(name) => Header { name },
        Err(_) => panic!("key::header: {name:?} is not a valid header name"),
    }
}

/// See [`header`].
#[derive(Clone, Debug)]
pub struct Header {
    name: HeaderName,
}

/// The ready extractors offer [`KeyExtractor::prefixed`] without importing
/// the trait.
macro_rules! inherent_prefixed {
    ($ty:ty) => {
        impl $ty {
            /// This extractor with `prefix` in front of every key it finds;
            /// see [`KeyExtractor::prefixed`].
            pub fn prefixed(self, prefix: impl Into<String>) -> Prefixed<Self> {
                KeyExtractor::prefixed(self, prefix)
            }
        }
    };
}

inherent_prefixed!(Header);

impl KeyExtractor for Header {
    fn extract(&self, parts: &Parts) -> Option<String> {
        let value = parts.headers.get(&self.name)?;
        Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
    }
}

/// Keys requests by the path parameter `name` of the matched axum route
/// (`{id}` in `/accounts/{id}`), percent-decoded.
///
/// Axum knows a route's parameters only once it has routed the request:
/// install the layer with [`Router::route_layer`](axum::Router::route_layer)
/// (or on the route itself), not around the whole router. A request where
/// the parameter is not found has no key.
///
/// ```
/// use axum::{Router, routing::post};
/// use tower_lock::{LockLayer, Locker, middleware::key};
///
/// let app: Router = Router::new()
///     .route("/accounts/{id}/deposit", post(|| async { "ok" }))
///     .route_layer(LockLayer::new(Locker::in_memory(), key::path_param("id").prefixed("account:")));
/// ```
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub fn path_param(name: impl Into<String>) -> PathParam {
    PathParam { name: name.into() }
}

/// See [`path_param`].
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Clone, Debug)]
pub struct PathParam {
    name: String,
}

#[cfg(feature = "axum")]
inherent_prefixed!(PathParam);

#[cfg(feature = "axum")]
impl KeyExtractor for PathParam {
    fn extract(&self, parts: &Parts) -> Option<String> {
        use axum::extract::{FromRequestParts, RawPathParams};

        // Axum keeps route parameters in a private extension that only its
        // extractors read, and those want `&mut Parts`: lend them a head with
        // a copy of the extensions. `RawPathParams` does no I/O, so its
        // future is ready on the first poll.
        let mut head = http::Request::new(()).into_parts().0;
        head.extensions = parts.extensions.clone();
        let extraction = RawPathParams::from_request_parts(&mut head, &());
        let mut extraction = std::pin::pin!(extraction);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let std::task::Poll::Ready(Ok(params)) = extraction.as_mut().poll(&mut cx) else {
            return None;
        };
        params
            .iter()
            .find(|(name, _)| *name == self.name)
            .map(|(_, value)| value.to_owned())
    }
}

/// Keys requests by method and matched route template
/// (`"POST /accounts/{id}"`): one request at a time per endpoint, whatever
/// its parameters.
///
/// Uses axum's [`MatchedPath`](axum::extract::MatchedPath); a request that
/// axum did not route (a fallback) is keyed by its URI path instead.
///
/// ```
/// use axum::{Router, routing::post};
/// use tower_lock::{LockLayer, Locker, middleware::key};
///
/// let app: Router = Router::new()
///     .route("/reports/rebuild", post(|| async { "rebuilt" }))
///     .route_layer(LockLayer::new(Locker::in_memory(), key::method_and_path()));
/// ```
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub fn method_and_path() -> MethodAndPath {
    MethodAndPath { _private: () }
}

/// See [`method_and_path`].
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Clone, Debug)]
pub struct MethodAndPath {
    _private: (),
}

#[cfg(feature = "axum")]
inherent_prefixed!(MethodAndPath);

#[cfg(feature = "axum")]
impl KeyExtractor for MethodAndPath {
    fn extract(&self, parts: &Parts) -> Option<String> {
        let path = match parts.extensions.get::<axum::extract::MatchedPath>() {
            Some(matched) => matched.as_str(),
            None => parts.uri.path(),
        };
        Some(format!("{} {path}", parts.method))
    }
}
