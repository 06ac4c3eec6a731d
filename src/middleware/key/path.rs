//! Keys from the path parameters of the matched axum route: one, several at
//! once, or one parsed into its canonical form.

use std::fmt;

use http::request::Parts;

use super::{
    KeyError, KeyExtractor, Keys, Prefixed, canonical::canonical, extractor::inherent_prefixed,
};

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
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub fn path_param(name: impl Into<String>) -> PathParam {
    PathParam { name: name.into() }
}

/// See [`path_param`].
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Clone, Debug)]
pub struct PathParam {
    name: String,
}

/// Where path parameter extractors say they are misplaced.
const OUTSIDE_ROUTING: &str = "the lock key is a path parameter, but the request was not routed \
     to a route by axum (the layer is around the router, or this is the fallback): add the \
     LockLayer to the routes with `Router::route_layer`";

/// The raw parameters of the route axum matched: `Misplaced` when the
/// request was not routed to one.
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

inherent_prefixed!(PathParam);

impl PathParam {
    fn value(&self, params: &axum::extract::RawPathParams) -> Result<String, KeyError> {
        params
            .iter()
            .find(|(name, _)| *name == self.name)
            .map(|(_, value)| value.to_owned())
            .ok_or_else(|| KeyError::missing(format!("path parameter {}", self.name)))
    }
}

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
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Clone, Debug)]
pub struct PathParams {
    params: Vec<PathParam>,
}

inherent_prefixed!(PathParams);

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
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub struct PathParamAs<T> {
    param: PathParam,
    _type: std::marker::PhantomData<fn() -> T>,
}

impl<T> Clone for PathParamAs<T> {
    fn clone(&self) -> Self {
        PathParamAs {
            param: self.param.clone(),
            _type: std::marker::PhantomData,
        }
    }
}

impl<T> fmt::Debug for PathParamAs<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PathParamAs")
            .field("name", &self.param.name)
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

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

impl<T> KeyExtractor for PathParamAs<T>
where
    T: std::str::FromStr + fmt::Display + 'static,
{
    fn extract(&self, parts: &Parts) -> Result<Keys, KeyError> {
        let raw = self.param.value(&raw_path_params(parts)?)?;
        canonical::<T>(Some(&raw), || format!("path parameter {}", self.param.name))
    }
}
