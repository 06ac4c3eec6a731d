//! [`LockLayer`]: the configuration, and the tower layer.

use std::{fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use http::Response;
use tower_layer::Layer;

use super::{KeyExtractor, LockRejection, LockService, MissingKey};
use crate::Locker;

/// The default lease of a request's lock.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// The default longest wait for a request's lock.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

pub(crate) type RejectionHook = Arc<dyn Fn(LockRejection) -> Response<Bytes> + Send + Sync>;

/// Serialises requests that share a key: each runs under a distributed lock.
///
/// See the [module docs](super) for an example. Options and defaults:
///
/// | option | default |
/// |--------|---------|
/// | [`ttl`](Self::ttl) | 30 s ([`DEFAULT_TTL`]) |
/// | [`wait_timeout`](Self::wait_timeout) / [`no_wait`](Self::no_wait) | wait up to 5 s ([`DEFAULT_WAIT`]) |
/// | [`auto_renew`](Self::auto_renew) | on |
/// | [`missing_key`](Self::missing_key) | [`MissingKey::PassThrough`] |
/// | [`on_rejection`](Self::on_rejection) | [`LockRejection::into_response`] |
pub struct LockLayer<K> {
    config: Config<K>,
}

pub(crate) struct Config<K> {
    pub(crate) locker: Locker,
    pub(crate) extractor: Arc<K>,
    pub(crate) ttl: Duration,
    pub(crate) wait: Duration,
    pub(crate) auto_renew: bool,
    pub(crate) missing_key: MissingKey,
    pub(crate) on_rejection: RejectionHook,
}

impl<K> Clone for Config<K> {
    fn clone(&self) -> Self {
        Config {
            locker: self.locker.clone(),
            extractor: self.extractor.clone(),
            ttl: self.ttl,
            wait: self.wait,
            auto_renew: self.auto_renew,
            missing_key: self.missing_key,
            on_rejection: self.on_rejection.clone(),
        }
    }
}

impl<K: KeyExtractor> LockLayer<K> {
    /// A layer that locks each request on the key `extractor` finds, with
    /// `locker`.
    ///
    /// ```
    /// use tower_lock::{LockLayer, Locker, middleware::key};
    ///
    /// let layer = LockLayer::new(Locker::in_memory(), key::header("x-tenant-id"));
    /// ```
    pub fn new(locker: Locker, extractor: K) -> Self {
        LockLayer {
            config: Config {
                locker,
                extractor: Arc::new(extractor),
                ttl: DEFAULT_TTL,
                wait: DEFAULT_WAIT,
                auto_renew: true,
                missing_key: MissingKey::PassThrough,
                on_rejection: Arc::new(LockRejection::into_response),
            },
        }
    }
}

impl<K> LockLayer<K> {
    /// The lease of each request's lock. Default: 30 s.
    ///
    /// With [`auto_renew`](Self::auto_renew) on, the lease is renewed while
    /// the request runs, and the ttl only bounds how long a crashed replica
    /// keeps the lock. A ttl outside 1 ms..=365 days makes every locked
    /// request fail with [`LockRejection::Failed`] (`500`).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = ttl;
        self
    }

    /// How long a request waits for a busy key before it is refused with
    /// `423 Locked`. Default: 5 s.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lock::{LockLayer, Locker, middleware::key};
    ///
    /// let layer = LockLayer::new(Locker::in_memory(), key::header("x-tenant-id"))
    ///     .wait_timeout(Duration::from_millis(500));
    /// ```
    pub fn wait_timeout(mut self, wait: Duration) -> Self {
        self.config.wait = wait;
        self
    }

    /// Refuses a request at once when its key is busy: fail fast with
    /// `423 Locked` instead of queueing. Same as a zero
    /// [`wait_timeout`](Self::wait_timeout).
    pub fn no_wait(self) -> Self {
        self.wait_timeout(Duration::ZERO)
    }

    /// Whether a request's lease renews itself while the request (and its
    /// response body) runs. Default: on, so that a slow handler never loses
    /// its lock midway.
    ///
    /// # Warning
    ///
    /// With renewal on, a handler that hangs holds its key until it returns
    /// or its client goes away. Bound handlers with a timeout layer inside
    /// this one.
    pub fn auto_renew(mut self, enabled: bool) -> Self {
        self.config.auto_renew = enabled;
        self
    }

    /// What to do with a request that has no key. Default:
    /// [`MissingKey::PassThrough`] (serve it unlocked).
    pub fn missing_key(mut self, behaviour: MissingKey) -> Self {
        self.config.missing_key = behaviour;
        self
    }

    /// Builds the response for refused requests. Default:
    /// [`LockRejection::into_response`].
    ///
    /// The hook runs instead of the service; it may log, count, or answer in
    /// the API's own error format.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::Response;
    /// use tower_lock::{LockLayer, Locker, middleware::{LockRejection, key}};
    ///
    /// let layer = LockLayer::new(Locker::in_memory(), key::header("x-tenant-id"))
    ///     .on_rejection(|rejection: LockRejection| {
    ///         let body = format!(r#"{{"error":"{}"}}"#, rejection.body_text());
    ///         let mut response = rejection.into_response();
    ///         *response.body_mut() = Bytes::from(body);
    ///         response.headers_mut().insert("content-type", "application/json".parse().unwrap());
    ///         response
    ///     });
    /// ```
    pub fn on_rejection<F>(mut self, hook: F) -> Self
    where
        F: Fn(LockRejection) -> Response<Bytes> + Send + Sync + 'static,
    {
        self.config.on_rejection = Arc::new(hook);
        self
    }
}

impl<K> Clone for LockLayer<K> {
    fn clone(&self) -> Self {
        LockLayer {
            config: self.config.clone(),
        }
    }
}

impl<S, K> Layer<S> for LockLayer<K> {
    type Service = LockService<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        let mut config = self.config.clone();
        config.locker = config.locker.auto_renew(config.auto_renew);
        LockService::from_config(inner, Arc::new(config))
    }
}

impl<K> fmt::Debug for LockLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl<K> fmt::Debug for Config<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockLayer")
            .field("locker", &self.locker)
            .field("extractor", &std::any::type_name::<K>())
            .field("ttl", &self.ttl)
            .field("wait", &self.wait)
            .field("auto_renew", &self.auto_renew)
            .field("missing_key", &self.missing_key)
            .finish_non_exhaustive()
    }
}
