//! [`LockService`]: takes the lock, then calls the inner service.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use smol_str::SmolStr;
use tower_service::Service;

use super::{
    KeyExtractor, LockBody, LockLayer, LockRejection, MissingKey, ResponseFuture,
    future::Acquire,
    held::{Holding, join},
    key::{KeyError, Keys},
    layer::{Config, DEFAULT_RETRY_AFTER, Treatment},
};
use crate::{Locker, locker::scope::Held, metrics::Refusal};

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

    /// Always ready: the inner service's readiness is awaited only once
    /// the request holds its lock, so requests waiting for a lock take none
    /// of the inner service's capacity (a concurrency limit inside the
    /// layer counts only requests that hold their lock).
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // A clone per request, driven to readiness in the future: see
        // `poll_ready`.
        let inner = self.inner.clone();
        let config = &*self.config;
        let kind = match config.treatment(request.method()) {
            Treatment::Locked(kind) => kind,
            Treatment::PassedThrough => return ResponseFuture::passed_through(inner, request),
        };
        let (parts, body) = request.into_parts();
        let key = config.extractor.extract(&parts);
        let request = Request::from_parts(parts, body);
        let key = match key {
            Ok(key) => key,
            Err(KeyError::Missing { source }) if config.missing_key == MissingKey::PassThrough => {
                if config.logged.first_pass_through() {
                    tracing::warn!(%source, "a request without its lock key passes through unlocked (MissingKey::PassThrough); logged once");
                }
                return ResponseFuture::passed_through(inner, request);
            }
            Err(error) => {
                if matches!(error, KeyError::Missing { .. }) {
                    config.locker.metrics().refused(None, Refusal::MissingKey);
                }
                if matches!(error, KeyError::Misplaced { .. }) && config.logged.first_misplaced() {
                    tracing::error!(%error, "lock key extractor misplaced: every request is refused with 500; logged once");
                }
                return ResponseFuture::refused((config.on_rejection)(
                    LockRejection::from_key_error(error),
                ));
            }
        };
        // The count was checked when the layer was built.
        let locker = match config.locker.of_kind(kind) {
            Ok(locker) => locker,
            Err(error) => {
                let rejection = LockRejection::from_error(join(key.iter()), error);
                return ResponseFuture::refused((config.on_rejection)(rejection));
            }
        };
        let (ttl, wait) = (config.ttl, config.wait);
        let held = Held::new(&locker, key.iter().map(SmolStr::new).collect());
        // While holders renew, their remaining lease says nothing about
        // when the key frees.
        let retry_after = match (config.retry_after, config.auto_renew) {
            (Some(fixed), _) => Some(fixed),
            (None, true) => Some(DEFAULT_RETRY_AFTER),
            (None, false) => None,
        };
        let refused = move |key: String, error| match LockRejection::from_error(key, error) {
            LockRejection::Busy {
                key,
                retry_after: reported,
            } => LockRejection::Busy {
                key,
                retry_after: retry_after.or(reported),
            },
            rejection => rejection,
        };
        let acquire: Acquire = match key {
            Keys::One(key) => Box::pin(async move {
                match locker.acquire_timeout(&key, ttl, wait).await {
                    Ok(guard) => Ok(Holding::One(guard)),
                    Err(error) => Err(refused(key, error)),
                }
            }),
            Keys::Several(keys) => Box::pin(async move {
                match locker.acquire_all_timeout(&keys, ttl, wait).await {
                    Ok(set) => Ok(Holding::Set(set)),
                    Err(error) => Err(refused(join(keys.iter().map(String::as_str)), error)),
                }
            }),
        };
        ResponseFuture::acquiring(
            acquire,
            inner,
            request,
            config.on_rejection.clone(),
            config.max_hold,
            held,
        )
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
