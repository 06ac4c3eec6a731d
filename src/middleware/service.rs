//! [`LockService`]: takes the lock, then calls the inner service.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower_service::Service;

use super::{
    KeyExtractor, LockBody, LockLayer, LockRejection, MissingKey, ResponseFuture, layer::Config,
};
use crate::Locker;

/// Runs each request under the lock of its key. Built by [`LockLayer`]; see
/// the [module docs](super) for an example.
pub struct LockService<S, K> {
    inner: S,
    config: Arc<Config<K>>,
}

impl<S, K> LockService<S, K> {
    pub(crate) fn from_config(inner: S, config: Arc<Config<K>>) -> Self {
        LockService { inner, config }
    }

    /// A [`LockLayer`] for this service; the same as [`LockLayer::new`].
    pub fn layer(locker: Locker, extractor: K) -> LockLayer<K>
    where
        K: KeyExtractor,
    {
        LockLayer::new(locker, extractor)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for LockService<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    K: KeyExtractor,
    ResBody: http_body::Body,
{
    type Response = Response<LockBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let key = self.config.extractor.extract(&parts);
        let request = Request::from_parts(parts, body);
        let Some(key) = key else {
            return match self.config.missing_key {
                MissingKey::PassThrough => ResponseFuture::unlocked(self.inner.call(request)),
                MissingKey::Reject => {
                    ResponseFuture::refused((self.config.on_rejection)(LockRejection::MissingKey))
                }
            };
        };
        // The service that was driven to readiness is `self.inner`: move it
        // into the future and keep a fresh clone, as tower's docs advise
        // (https://docs.rs/tower/latest/tower/trait.Service.html#be-careful-when-cloning-inner-services).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let Config {
            locker, ttl, wait, ..
        } = &*self.config;
        let (locker, ttl, wait) = (locker.clone(), *ttl, *wait);
        let acquire = Box::pin(async move {
            locker
                .acquire_timeout(&key, ttl, wait)
                .await
                .map_err(|error| LockRejection::from_error(key, error))
        });
        ResponseFuture::acquiring(acquire, inner, request, self.config.on_rejection.clone())
    }
}

impl<S: Clone, K> Clone for LockService<S, K> {
    fn clone(&self) -> Self {
        LockService {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for LockService<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockService")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}
