//! [`LockLayer`]: the configuration, and the tower layer.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use tower_layer::Layer;

use super::{KeyExtractor, LockRejection, LockService, MissingKey, body::Refusal};
use crate::{Locker, MAX_TTL, MIN_TTL, backend::LeaseKind, key::validate_permits};

/// The default lease of a request's lock.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// The default longest wait for a request's lock.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
/// The default longest time a request (its handler and its response body)
/// holds its key.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(120);
/// The default `Retry-After` of a refusal for a busy key while holders renew
/// their leases (their remaining lease then says nothing about when the key
/// frees).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The share of the ttl after the send time of its last successful renewal
/// at which a request counts its lease lost: 9/10, so it stops before the
/// store can hand the key on as long as the holder's and the store's clocks
/// run at rates within 10 % of each other.
const RENEW_DEADLINE: (u32, u32) = (9, 10);

pub(crate) type RejectionHook = Arc<dyn Fn(LockRejection) -> Response<Refusal> + Send + Sync>;

/// Serialises requests that share a key: each runs under a distributed lock.
///
/// See the [module docs](super) for an example. Options and defaults:
///
/// | option | default |
/// |--------|---------|
/// | [`ttl`](Self::ttl) | 30 s ([`DEFAULT_TTL`]) |
/// | [`wait_timeout`](Self::wait_timeout) / [`no_wait`](Self::no_wait) | wait up to 5 s ([`DEFAULT_WAIT`]) |
/// | [`auto_renew`](Self::auto_renew) | on |
/// | [`max_hold`](Self::max_hold) | 2 minutes ([`DEFAULT_MAX_HOLD`]) |
/// | [`missing_key`](Self::missing_key) | [`MissingKey::Reject`] (`400`) |
/// | [`methods`](Self::methods) | every method locked |
/// | [`shared_for`](Self::shared_for) | no method shared: every locked one exclusive |
/// | [`permits`](Self::permits) | one request per key at once |
/// | [`retry_after`](Self::retry_after) | 1 s with renewal on, else the holder's remaining lease |
/// | [`busy_status`](Self::busy_status) | `423 Locked` |
/// | [`on_rejection_response`](Self::on_rejection_response) | [`LockRejection::into_http_response`] |
///
/// # Fail closed
///
/// The handler never runs, or stops, without its lock:
///
/// | the request… | answer |
/// |---|---|
/// | carries no key | `400`, naming where the key was looked for (a pass-through only with [`MissingKey::PassThrough`]) |
/// | has a key extractor that cannot work where the layer is (a path parameter outside routing) | `500`, and an error log once per layer |
/// | waits past [`wait_timeout`](Self::wait_timeout) | `423` (or [`busy_status`](Self::busy_status)), with `Retry-After` |
/// | finds the store unreachable | `503` |
/// | loses its lease while it runs, or holds its key past [`max_hold`](Self::max_hold) | the handler is dropped (it stops at its next await): `503` before the response head; after it, the body ends with an error at its next poll |
///
/// Methods outside [`methods`](Self::methods), when set, pass through
/// unlocked, by that explicit choice.
///
/// # One table from method to lock
///
/// Each method gets one treatment: a shared lock for those named in
/// [`shared_for`](Self::shared_for); otherwise, for methods
/// [`methods`](Self::methods) locks (every method unless it is set), an
/// exclusive lock, or one of [`permits`](Self::permits) when that is set;
/// the rest pass through. A method named both in `methods` and in
/// `shared_for` is a configuration error, caught (a panic) when the layer
/// is built. A shared or counted lock that cannot be had is refused like a
/// busy key (`423`, with `Retry-After`).
///
/// Several keys from one request (see
/// [`key::path_params`](super::key::path_params)) are taken together, each
/// with the request's treatment.
pub struct LockLayer<K> {
    config: Config<K>,
}

pub(crate) struct Config<K> {
    pub(crate) locker: Locker,
    pub(crate) extractor: Arc<K>,
    pub(crate) ttl: Duration,
    pub(crate) wait: Duration,
    pub(crate) auto_renew: bool,
    pub(crate) max_hold: Duration,
    pub(crate) missing_key: MissingKey,
    /// `None`: every method is locked.
    pub(crate) methods: Option<Arc<[Method]>>,
    /// Methods that take a shared lock.
    pub(crate) shared: Arc<[Method]>,
    /// How many requests of a key run at once under the locks that are not
    /// shared; `None`: one (an exclusive lock).
    pub(crate) permits: Option<u32>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) busy_status: StatusCode,
    pub(crate) on_rejection: RejectionHook,
    pub(crate) logged: Arc<Logged>,
}

/// What a layer logs only once.
#[derive(Debug, Default)]
pub(crate) struct Logged {
    passed_through: AtomicBool,
    misplaced: AtomicBool,
}

impl Logged {
    /// `true` the first time a request without a key passes through.
    pub(crate) fn first_pass_through(&self) -> bool {
        !self.passed_through.swap(true, Ordering::Relaxed)
    }

    /// `true` the first time the extractor says it is misplaced.
    pub(crate) fn first_misplaced(&self) -> bool {
        !self.misplaced.swap(true, Ordering::Relaxed)
    }
}

/// How the layer treats a request, by its method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Treatment {
    /// Under a lease of this kind.
    Locked(LeaseKind),
    PassedThrough,
}

impl<K> Config<K> {
    /// The one table from method to treatment.
    pub(crate) fn treatment(&self, method: &Method) -> Treatment {
        if self.shared.contains(method) {
            return Treatment::Locked(LeaseKind::Shared);
        }
        match &self.methods {
            Some(methods) if !methods.contains(method) => Treatment::PassedThrough,
            _ => Treatment::Locked(self.permits.map_or(LeaseKind::Exclusive, |permits| {
                LeaseKind::Counted { permits }
            })),
        }
    }
}

/// Panics when a method is named both in `methods` and in `shared_for`.
fn refuse_overlap(methods: Option<&[Method]>, shared: &[Method]) {
    let both = methods
        .into_iter()
        .flatten()
        .find(|method| shared.contains(method));
    if let Some(method) = both {
        panic!(
            "LockLayer: {method} is named both in `methods` (exclusive) and in `shared_for`; \
             give each method one treatment"
        );
    }
}

/// `hook`, with `busy` in place of `423` in its answer to a busy key.
fn with_busy_status(hook: RejectionHook, busy: StatusCode) -> RejectionHook {
    if busy == StatusCode::LOCKED {
        return hook;
    }
    Arc::new(move |rejection| {
        let is_busy = matches!(rejection, LockRejection::Busy { .. });
        let mut response = hook(rejection);
        if is_busy && response.status() == StatusCode::LOCKED {
            *response.status_mut() = busy;
        }
        response
    })
}

impl<K> Clone for Config<K> {
    fn clone(&self) -> Self {
        Config {
            locker: self.locker.clone(),
            extractor: self.extractor.clone(),
            ttl: self.ttl,
            wait: self.wait,
            auto_renew: self.auto_renew,
            max_hold: self.max_hold,
            missing_key: self.missing_key,
            methods: self.methods.clone(),
            shared: self.shared.clone(),
            permits: self.permits,
            retry_after: self.retry_after,
            busy_status: self.busy_status,
            on_rejection: self.on_rejection.clone(),
            logged: self.logged.clone(),
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
                max_hold: DEFAULT_MAX_HOLD,
                missing_key: MissingKey::Reject,
                methods: None,
                shared: Arc::new([]),
                permits: None,
                retry_after: None,
                busy_status: StatusCode::LOCKED,
                on_rejection: Arc::new(|rejection: LockRejection| {
                    rejection.into_http_response().map(Refusal::Bytes)
                }),
                logged: Arc::default(),
            },
        }
    }
}

impl<K> LockLayer<K> {
    /// The lease of each request's lock. Default: 30 s.
    ///
    /// With [`auto_renew`](Self::auto_renew) on, the lease is renewed while
    /// the request runs, and the ttl only bounds how long a crashed replica
    /// keeps the lock. The request counts its lease lost at 9/10 of the ttl
    /// after its last successful renewal was sent, so it is stopped before
    /// another replica can take the key, as long as the clocks of the
    /// replica and the store run at rates within 10 % of each other.
    ///
    /// # Panics
    ///
    /// For a ttl outside [`MIN_TTL`]..=[`MAX_TTL`] (1 ms..=365 days): a
    /// configuration error, caught when the layer is built rather than on
    /// every request.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        assert!(
            (MIN_TTL..=MAX_TTL).contains(&ttl),
            "LockLayer::ttl: {ttl:?} is outside {MIN_TTL:?}..={MAX_TTL:?}"
        );
        self.config.ttl = ttl;
        self
    }

    /// The longest a request, its handler and its response body together,
    /// holds its key. Default: 2 minutes ([`DEFAULT_MAX_HOLD`]). Past it
    /// the handler is stopped (`503`), or the body is cut at its next poll
    /// however ready it is, and the key is released.
    ///
    /// The request's lease is not renewed past `max_hold` either, so a body
    /// that nobody polls (hyper stops polling the body of a client that
    /// does not read) keeps the key at most `max_hold` plus one
    /// [`ttl`](Self::ttl), when the lease runs out in the store: a client
    /// that stops reading cannot keep the key for as long as its connection
    /// lives.
    ///
    /// # Panics
    ///
    /// For a zero `max_hold`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lock::{LockLayer, Locker, middleware::key};
    ///
    /// let layer = LockLayer::new(Locker::in_memory(), key::header("x-tenant-id"))
    ///     .max_hold(Duration::from_secs(10));
    /// ```
    pub fn max_hold(mut self, max_hold: Duration) -> Self {
        assert!(!max_hold.is_zero(), "LockLayer::max_hold: must not be zero");
        self.config.max_hold = max_hold;
        self
    }

    /// Locks only requests with these methods; the others pass through
    /// unlocked, by this explicit choice (reads of a resource whose writes
    /// are locked). Default: every method is locked.
    ///
    /// ```
    /// use http::Method;
    /// use tower_lock::{LockLayer, Locker, middleware::key};
    ///
    /// let layer = LockLayer::new(Locker::in_memory(), key::header("x-tenant-id"))
    ///     .methods([Method::POST, Method::PUT, Method::PATCH, Method::DELETE]);
    /// ```
    ///
    /// # Panics
    ///
    /// When a method is also named in [`shared_for`](Self::shared_for).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        let methods: Arc<[Method]> = methods.into_iter().collect();
        refuse_overlap(Some(&methods), &self.config.shared);
        self.config.methods = Some(methods);
        self
    }

    /// Takes a shared lock for requests with these methods, and an
    /// exclusive one (or a permit, with [`permits`](Self::permits)) for the
    /// others that are locked: `GET`s of a document run side by side, never
    /// alongside a `PUT` of it, across every replica. Default: none.
    ///
    /// A writer waiting for the key keeps new readers out (see
    /// [`Locker::acquire_shared`]), so a stream of `GET`s cannot starve a
    /// `PUT`.
    ///
    /// # Panics
    ///
    /// When a method is also named in [`methods`](Self::methods): each
    /// method gets one treatment.
    ///
    /// ```
    /// use http::Method;
    /// use tower_lock::{LockLayer, Locker, middleware::key};
    ///
    /// let layer = LockLayer::new(Locker::in_memory(), key::path_param("id"))
    ///     .shared_for([Method::GET, Method::HEAD]);
    /// ```
    pub fn shared_for(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        let shared: Arc<[Method]> = methods.into_iter().collect();
        refuse_overlap(self.config.methods.as_deref(), &shared);
        self.config.shared = shared;
        self
    }

    /// Lets at most `permits` requests of a key run at once, across every
    /// replica sharing the store ("two exports per tenant at once"):
    /// requests that are locked and not [shared](Self::shared_for) take one
    /// of the key's permits (see [`Locker::acquire_permit`]) instead of an
    /// exclusive lock, and wait, or are refused as for a busy key, when all
    /// are taken. Default: one request per key (an exclusive lock).
    ///
    /// Every replica must use the same count for a key: a request that
    /// meets holders with another count is refused with `500`.
    ///
    /// # Panics
    ///
    /// For `permits` of 0 or above [`MAX_PERMITS`](crate::MAX_PERMITS).
    ///
    /// ```
    /// use tower_lock::{LockLayer, Locker, middleware::key};
    ///
    /// let layer = LockLayer::new(Locker::in_memory(), key::header("x-tenant-id"))
    ///     .permits(2);
    /// ```
    pub fn permits(mut self, permits: u32) -> Self {
        if let Err(error) = validate_permits(permits) {
            panic!("LockLayer::permits: {error}");
        }
        self.config.permits = Some(permits);
        self
    }

    /// The `Retry-After` of a refusal for a busy key. Default: with
    /// [`auto_renew`](Self::auto_renew) on, 1 s ([`DEFAULT_RETRY_AFTER`]),
    /// since a renewed lease says nothing about when the key frees; with it
    /// off, the holder's remaining lease, where the store reports it.
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.config.retry_after = Some(retry_after);
        self
    }

    /// The status of the default refusal for a busy key: `423 Locked`
    /// unless set (`409 Conflict` suits idempotency-style APIs; `429` and
    /// `503` also fit). It replaces `423` in whatever response the
    /// rejection hook gives.
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_lock::{LockLayer, Locker, middleware::key};
    ///
    /// let layer = LockLayer::new(Locker::in_memory(), key::header("idempotency-key"))
    ///     .no_wait()
    ///     .busy_status(StatusCode::CONFLICT);
    /// ```
    pub fn busy_status(mut self, status: StatusCode) -> Self {
        self.config.busy_status = status;
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
    /// With renewal on, a handler that hangs holds its key until it returns,
    /// its client goes away or [`max_hold`](Self::max_hold) passes. Bound
    /// handlers more tightly with a timeout layer inside this one.
    pub fn auto_renew(mut self, enabled: bool) -> Self {
        self.config.auto_renew = enabled;
        self
    }

    /// What to do with a request that has no key. Default:
    /// [`MissingKey::Reject`] (`400`).
    pub fn missing_key(mut self, behaviour: MissingKey) -> Self {
        self.config.missing_key = behaviour;
        self
    }

    /// Builds the response for refused requests as a plain
    /// `http::Response`. Default: [`LockRejection::into_http_response`].
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
    ///     .on_rejection_response(|rejection: LockRejection| {
    ///         let body = format!(r#"{{"error":"{}"}}"#, rejection.body_text());
    ///         let mut response = rejection.into_http_response();
    ///         *response.body_mut() = Bytes::from(body);
    ///         response.headers_mut().insert("content-type", "application/json".parse().unwrap());
    ///         response
    ///     });
    /// ```
    pub fn on_rejection_response<F>(mut self, hook: F) -> Self
    where
        F: Fn(LockRejection) -> Response<Bytes> + Send + Sync + 'static,
    {
        self.config.on_rejection = Arc::new(move |rejection| hook(rejection).map(Refusal::Bytes));
        self
    }

    /// Builds the response for refused requests with anything axum can turn
    /// into a response: the application's own error type, JSON, a tuple.
    /// Default: [`LockRejection`]'s own response (see
    /// [`into_http_response`](LockRejection::into_http_response)).
    ///
    /// ```
    /// use axum::{Json, http::StatusCode};
    /// use tower_lock::{LockLayer, Locker, middleware::{LockRejection, key}};
    ///
    /// let layer = LockLayer::new(Locker::in_memory(), key::header("x-tenant-id"))
    ///     .on_rejection(|rejection: LockRejection| {
    ///         let status = rejection.status();
    ///         (status, Json(serde_json::json!({ "error": rejection.body_text() })))
    ///     });
    /// ```
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub fn on_rejection<F, R>(mut self, hook: F) -> Self
    where
        F: Fn(LockRejection) -> R + Send + Sync + 'static,
        R: axum::response::IntoResponse,
    {
        self.config.on_rejection =
            Arc::new(move |rejection| hook(rejection).into_response().map(Refusal::shaped));
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
        config.on_rejection = with_busy_status(config.on_rejection, config.busy_status);
        let (part, whole) = RENEW_DEADLINE;
        let deadline = config.ttl * part / whole;
        config.locker = config
            .locker
            .auto_renew(config.auto_renew)
            .renew_deadline(deadline);
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
            .field("max_hold", &self.max_hold)
            .field("missing_key", &self.missing_key)
            .field("methods", &self.methods)
            .field("shared", &self.shared)
            .field("permits", &self.permits)
            .field("retry_after", &self.retry_after)
            .field("busy_status", &self.busy_status)
            .finish_non_exhaustive()
    }
}
