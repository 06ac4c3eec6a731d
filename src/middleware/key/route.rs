//! Keys from the method and the matched route template: one lock per
//! endpoint.

use http::request::Parts;

use super::{KeyError, KeyExtractor, Keys, Prefixed, extractor::inherent_prefixed};

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
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub fn method_and_path() -> MethodAndPath {
    MethodAndPath { _private: () }
}

/// See [`method_and_path`].
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Clone, Debug)]
pub struct MethodAndPath {
    _private: (),
}

inherent_prefixed!(MethodAndPath);

impl KeyExtractor for MethodAndPath {
    fn extract(&self, parts: &Parts) -> Result<Keys, KeyError> {
        let path = match parts.extensions.get::<axum::extract::MatchedPath>() {
            Some(matched) => matched.as_str(),
            None => parts.uri.path(),
        };
        Ok(Keys::One(format!("{} {path}", parts.method)))
    }
}
