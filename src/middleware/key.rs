//! Where [`LockLayer`](super::LockLayer) finds a request's lock key.
//!
//! A [`KeyExtractor`] looks at the request head and returns the key, or a
//! [`KeyError`]: this request has no key ([`KeyError::Missing`], refused
//! with `400` unless the layer lets such requests pass, see
//! [`MissingKey`](super::MissingKey)), its key is not usable
//! ([`KeyError::Invalid`], `400`), or the extractor cannot work where the
//! layer is installed ([`KeyError::Misplaced`], always `500`). Closures
//! `Fn(&Parts) -> Option<String>` are extractors (`None` is a missing key);
//! [`from_fn`] helps the compiler infer their argument type. Ready ones:
//!
//! - [`header`]: the value of a request header (per-tenant locks);
//!   [`header_as`] parses it and locks its canonical form.
//! - `path_param` (feature `axum`): a parameter of the matched axum route;
//!   `path_param_as::<T>` parses it and locks its canonical form;
//!   `path_params` locks several at once (a transfer's two accounts).
//! - [`from_fn_all`]: a closure that finds several keys.
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

use std::{borrow::Cow, fmt};

use http::{HeaderName, request::Parts};

/// Why a [`KeyExtractor`] found no key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// This request carries no key: the header or parameter is absent.
    Missing {
        /// Where the key was looked for (`header x-tenant-id`), for the
        /// `400` body and the log.
        source: Cow<'static, str>,
    },
    /// The request carries its key in a form that is not usable (a path
    /// parameter that does not parse as its type).
    Invalid {
        /// Where the key was looked for.
        source: Cow<'static, str>,
        /// Why the value is refused.
        reason: Cow<'static, str>,
    },
    /// The extractor cannot work where the layer is installed (a path
    /// parameter extractor outside axum's routing): no request would ever
    /// have a key, so this is never passed through.
    Misplaced {
        /// What to change.
        reason: &'static str,
    },
}

impl KeyError {
    /// A missing key, looked for at `source`.
    pub fn missing(source: impl Into<Cow<'static, str>>) -> Self {
        KeyError::Missing {
            source: source.into(),
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Missing { source } => write!(f, "the request carries no lock key ({source})"),
            KeyError::Invalid { source, reason } => {
                write!(f, "the request's lock key ({source}) is invalid: {reason}")
            }
            KeyError::Misplaced { reason } => f.write_str(reason),
        }
    }
}

impl std::error::Error for KeyError {}

/// The key, or keys, a request is locked on.
///
/// Several keys are taken together, all or nothing, in the one order every
/// process uses (see [`Locker::acquire_all`](crate::Locker::acquire_all)),
/// so requests naming them in opposite orders never deadlock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keys {
    /// One key: the common case.
    One(String),
    /// Several keys, taken as one set.
    Several(Vec<String>),
}

impl Keys {
    /// The keys, as given.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        let (one, several) = match self {
            Keys::One(key) => (Some(key.as_str()), &[][..]),
            Keys::Several(keys) => (None, keys.as_slice()),
        };
        one.into_iter().chain(several.iter().map(String::as_str))
    }

    /// Every key changed by `f`.
    pub fn map(self, mut f: impl FnMut(String) -> String) -> Self {
        match self {
            Keys::One(key) => Keys::One(f(key)),
            Keys::Several(keys) => Keys::Several(keys.into_iter().map(f).collect()),
        }
    }
}

impl From<String> for Keys {
    fn from(key: String) -> Self {
        Keys::One(key)
    }
}

impl From<&str> for Keys {
    fn from(key: &str) -> Self {
        Keys::One(key.to_owned())
    }
}

/// Finds the lock key of a request from its head.
///
/// Extraction is synchronous and must be cheap: it runs on every request
/// before the lock is taken. Keys may hold any characters, up to
/// [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes; a longer or empty key is
/// refused with `400`.
pub trait KeyExtractor: Send + Sync + 'static {
    /// The lock key (or keys) of the request, or why it has none.
    ///
    /// # Errors
    ///
    /// A [`KeyError`]: missing, invalid, or an extractor that cannot work
    /// where it is installed.
    fn extract(&self, parts: &Parts) -> Result<Keys, KeyError>;

    /// This extractor with `prefix` in front of every key it finds.
    ///
    /// ```
    /// use tower_lock::middleware::{KeyExtractor, key};
    ///
    /// let request = http::Request::builder().header("x-tenant-id", "7").body(()).unwrap();
    /// let (parts, _) = request.into_parts();
    /// let extractor = key::header("x-tenant-id").prefixed("tenant:");
    /// assert_eq!(extractor.extract(&parts), Ok("tenant:7".into()));
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
    fn extract(&self, parts: &Parts) -> Result<Keys, KeyError> {
        self(parts)
            .map(Keys::One)
            .ok_or_else(|| KeyError::missing("the key function"))
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
/// assert_eq!(by_query.extract(&parts), Ok("job=7".into()));
/// ```
pub fn from_fn<F>(f: F) -> F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    f
}

/// A closure that finds several keys as an extractor: the request is
/// locked on all of them at once (see [`Keys::Several`]). `None` is a
/// missing key.
///
/// ```
/// use tower_lock::middleware::{KeyExtractor, key::{self, Keys}};
///
/// // `POST /transfers?from=7&to=3` locks both accounts.
/// let accounts = key::from_fn_all(|parts| {
///     let query = parts.uri.query()?;
///     let value = |name: &str| {
///         query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
///     };
///     Some(vec![format!("account:{}", value("from")?), format!("account:{}", value("to")?)])
/// });
/// let (parts, _) = http::Request::post("/transfers?from=7&to=3").body(()).unwrap().into_parts();
/// assert_eq!(
///     accounts.extract(&parts),
///     Ok(Keys::Several(vec!["account:7".into(), "account:3".into()])),
/// );
/// ```
pub fn from_fn_all<F>(f: F) -> FromFnAll<F>
where
    F: Fn(&Parts) -> Option<Vec<String>> + Send + Sync + 'static,
{
    FromFnAll(f)
}

/// See [`from_fn_all`].
#[derive(Clone)]
pub struct FromFnAll<F>(F);

impl<F> fmt::Debug for FromFnAll<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FromFnAll")
    }
}

impl<F> KeyExtractor for FromFnAll<F>
where
    F: Fn(&Parts) -> Option<Vec<String>> + Send + Sync + 'static,
{
    fn extract(&self, parts: &Parts) -> Result<Keys, KeyError> {
        (self.0)(parts)
            .map(Keys::Several)
            .ok_or_else(|| KeyError::missing("the keys function"))
    }
}

/// See [`KeyExtractor::prefixed`].
#[derive(Clone, Debug)]
pub struct Prefixed<K> {
    prefix: String,
    inner: K,
}

impl<K: KeyExtractor> KeyExtractor for Prefixed<K> {
    fn extract(&self, parts: &Parts) -> Result<Keys, KeyError> {
        let keys = self.inner.extract(parts)?;
        Ok(keys.map(|key| format!("{}{key}", self.prefix)))
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
/// assert_eq!(key::header("x-tenant-id").extract(&parts), Ok("acme".into()));
/// ```
pub fn header(name: impl AsRef<str>) -> Header {
    let name = name.as_ref();
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(name) => Header {
            source: format!("header {name}").into(),
            name,
        },
        Err(_) => panic!("key::header: {name:?} is not a valid header name"),
    }
}

/// See [`header`].
#[derive(Clone, Debug)]
pub struct Header {
    name: HeaderName,
    source: Cow<'static, str>,
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
    fn extract(&self, parts: &Parts) -> Result<Keys, KeyError> {
        let Some(value) = parts.headers.get(&self.name) else {
            return Err(KeyError::missing(self.source.clone()));
        };
        Ok(Keys::One(
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ))
    }
}

/// Keys requests by the header `name`, parsed as a `T` and locked in its
/// canonical form (`T`'s `Display`), so that every spelling of one value
/// takes one lock: with `T = u64`, `7`, `07` and `+7` all lock `7`. A value
/// that does not parse is [`KeyError::Invalid`] (`400`); a missing header
/// is [`KeyError::Missing`].
///
/// # Panics
///
/// When `name` is not a valid header name, as [`header`].
///
/// ```
/// use tower_lock::middleware::{KeyExtractor, key};
///
/// let tenant = key::header_as::<u64>("x-tenant-id").prefixed("tenant:");
/// let (parts, _) = http::Request::builder()
///     .header("x-tenant-id", "007")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert_eq!(tenant.extract(&parts), Ok("tenant:7".into()));
/// ```
pub fn header_as<T>(name: impl AsRef<str>) -> HeaderAs<T>
where
    T: std::str::FromStr + fmt::Display + 'static,
{
    HeaderAs {
        header: header(name),
        _type: std::marker::PhantomData,
    }
}

/// See [`header_as`].
pub struct HeaderAs<T> {
    header: Header,
    _type: std::marker::PhantomData<fn() -> T>,
}

impl<T> Clone for HeaderAs<T> {
    fn clone(&self) -> Self {
        HeaderAs {
            header: self.header.clone(),
            _type: std::marker::PhantomData,
        }
    }
}

impl<T> fmt::Debug for HeaderAs<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderAs")
            .field("name", &self.header.name)
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T> HeaderAs<T>
where
    T: std::str::FromStr + fmt::Display + 'static,
{
    /// This extractor with `prefix` in front of every key it finds; see
    /// [`KeyExtractor::prefixed`].
    pub fn prefixed(self, prefix: impl Into<String>) -> Prefixed<Self> {
        KeyExtractor::prefixed(self, prefix)
    }
}

impl<T> KeyExtractor for HeaderAs<T>
where
    T: std::str::FromStr + fmt::Display + 'static,
{
    fn extract(&self, parts: &Parts) -> Result<Keys, KeyError> {
        let Some(value) = parts.headers.get(&self.header.name) else {
            return Err(KeyError::missing(self.header.source.clone()));
        };
        canonical::<T>(value.to_str().ok(), || self.header.source.to_string())
    }
}

/// `raw` parsed as a `T`, in `T`'s canonical form; `Invalid`, naming
/// where it came from, when it does not parse.
fn canonical<T>(raw: Option<&str>, source: impl FnOnce() -> String) -> Result<Keys, KeyError>
where
    T: std::str::FromStr + fmt::Display + 'static,
{
    match raw.map(str::parse::<T>) {
        Some(Ok(value)) => Ok(Keys::One(value.to_string())),
        _ => Err(KeyError::Invalid {
            source: source().into(),
            reason: format!("not a valid {}", std::any::type_name::<T>()).into(),
        }),
    }
}

/// Keys requests by the path parameter `name` of the matched axum route
/// (`{id}` in `/accounts/{id}`), percent-decoded.
///
/// Axum knows a route's parameters only once it has routed the request:
/// install the layer with [`Router::route_layer`](axum::Router::route_layer)
/// (or on the route itself). A matched route without the parameter has no
/// key ([`KeyError::Missing`]). A request that axum did not route to a
/// route means the layer runs outside routing (around the whole router as a
/// service, or under [`Router::layer`](axum::Router::layer) for the
/// fallback, which matched no route): that is [`KeyError::Misplaced`],
/// answered with `500`, never passed through. `route_layer` leaves the
/// fallback alone.
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

/// Where path parameter extractors say they are misplaced.
#[cfg(feature = "axum")]
const OUTSIDE_ROUTING: &str = "the lock key is a path parameter, but the request was not routed \
     to a route by axum (the layer is around the router, or this is the fallback): add the \
     LockLayer to the routes with `Router::route_layer`";

/// The raw parameters of the route axum matched: `Misplaced` when the
/// request was not routed to one.
#[cfg(feature = "axum")]
fn raw_path_params(parts: &Parts) -> Result<axum::extract::RawPathParams, KeyError> {
    use axum::extract::{FromRequestParts, MatchedPath, RawPathParams};

    // Axum marks every request it routed to a route with the route's
    // template; the fallback gets (empty) parameters, but no template.
    let misplaced = KeyError::Misplaced {
        reason: OUTSIDE_ROUTING,
    };
    if parts.extensions.get::<MatchedPath>().is_none() {
        return Err(misplaced);
    }

    // Axum keeps route parameters in a private extension that only its
    // extractors read, and those want `&mut Parts`: lend them a head with
    // a copy of the extensions. `RawPathParams` does no I/O, so its future
    // is ready on the first poll.
    let mut head = http::Request::new(()).into_parts().0;
    head.extensions = parts.extensions.clone();
    let extraction = RawPathParams::from_request_parts(&mut head, &());
    let mut extraction = std::pin::pin!(extraction);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match extraction.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Ok(params)) => Ok(params),
        _ => Err(misplaced),
    }
}

#[cfg(feature = "axum")]
inherent_prefixed!(PathParam);

#[cfg(feature = "axum")]
impl PathParam {
    fn value(&self, params: &axum::extract::RawPathParams) -> Result<String, KeyError> {
        params
            .iter()
            .find(|(name, _)| *name == self.name)
            .map(|(_, value)| value.to_owned())
            .ok_or_else(|| KeyError::missing(format!("path parameter {}", self.name)))
    }
}

#[cfg(feature = "axum")]
impl KeyExtractor for PathParam {
    fn extract(&self, parts: &Parts) -> Result<Keys, KeyError> {
        self.value(&raw_path_params(parts)?).map(Keys::One)
    }
}

/// Keys requests by several path parameters of the matched axum route at
/// once (`{from}` and `{to}` in `/transfers/{from}/{to}`), each
/// percent-decoded: the request holds all of them, taken together in the
/// one order every process uses, so `A→B` and `B→A` never deadlock.
/// Installed like [`path_param`].
///
/// ```
/// use axum::{Router, routing::post};
/// use tower_lock::{LockLayer, Locker, middleware::key};
///
/// let app: Router = Router::new()
///     .route("/transfers/{from}/{to}", post(|| async { "moved" }))
///     .route_layer(LockLayer::new(
///         Locker::in_memory(),
///         key::path_params(["from", "to"]).prefixed("account:"),
///     ));
/// ```
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub fn path_params<I>(names: I) -> PathParams
where
    I: IntoIterator,
    I::Item: Into<String>,
{
    PathParams {
        params: names.into_iter().map(path_param).collect(),
    }
}

/// See [`path_params`].
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Clone, Debug)]
pub struct PathParams {
    params: Vec<PathParam>,
}

#[cfg(feature = "axum")]
inherent_prefixed!(PathParams);

#[cfg(feature = "axum")]
impl KeyExtractor for PathParams {
    fn extract(&self, parts: &Parts) -> Result<Keys, KeyError> {
        let params = raw_path_params(parts)?;
        let keys = self.params.iter().map(|param| param.value(&params));
        keys.collect::<Result<_, _>>().map(Keys::Several)
    }
}

/// Keys requests by the path parameter `name`, parsed as a `T` and locked
/// in its canonical form (`T`'s `Display`), so that every spelling of one
/// value takes one lock: with `T = u64`, `/accounts/7`, `/accounts/07` and
/// `/accounts/+7` all lock `7`. A value that does not parse is
/// [`KeyError::Invalid`] (`400`). Installed like [`path_param`].
///
/// ```
/// use axum::{Router, routing::post};
/// use tower_lock::{LockLayer, Locker, middleware::key};
///
/// let app: Router = Router::new()
///     .route("/accounts/{id}/deposit", post(|| async { "ok" }))
///     .route_layer(LockLayer::new(
///         Locker::in_memory(),
///         key::path_param_as::<u64>("id").prefixed("account:"),
///     ));
/// ```
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub fn path_param_as<T>(name: impl Into<String>) -> PathParamAs<T>
where
    T: std::str::FromStr + fmt::Display + 'static,
{
    PathParamAs {
        param: path_param(name),
        _type: std::marker::PhantomData,
    }
}

/// See [`path_param_as`].
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub struct PathParamAs<T> {
    param: PathParam,
    _type: std::marker::PhantomData<fn() -> T>,
}

#[cfg(feature = "axum")]
impl<T> Clone for PathParamAs<T> {
    fn clone(&self) -> Self {
        PathParamAs {
            param: self.param.clone(),
            _type: std::marker::PhantomData,
        }
    }
}

#[cfg(feature = "axum")]
impl<T> fmt::Debug for PathParamAs<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PathParamAs")
            .field("name", &self.param.name)
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

#[cfg(feature = "axum")]
impl<T> PathParamAs<T>
where
    T: std::str::FromStr + fmt::Display + 'static,
{
    /// This extractor with `prefix` in front of every key it finds; see
    /// [`KeyExtractor::prefixed`].
    pub fn prefixed(self, prefix: impl Into<String>) -> Prefixed<Self> {
        KeyExtractor::prefixed(self, prefix)
    }
}

#[cfg(feature = "axum")]
impl<T> KeyExtractor for PathParamAs<T>
where
    T: std::str::FromStr + fmt::Display + 'static,
{
    fn extract(&self, parts: &Parts) -> Result<Keys, KeyError> {
        let raw = self.param.value(&raw_path_params(parts)?)?;
        canonical::<T>(Some(&raw), || format!("path parameter {}", self.param.name))
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
    fn extract(&self, parts: &Parts) -> Result<Keys, KeyError> {
        let path = match parts.extensions.get::<axum::extract::MatchedPath>() {
            Some(matched) => matched.as_str(),
            None => parts.uri.path(),
        };
        Ok(Keys::One(format!("{} {path}", parts.method)))
    }
}
