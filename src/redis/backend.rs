//! [`RedisBackend`] and its builder: what the backend's clones share (the
//! connections, the key space, the wake-ups) and how it is connected.

use std::{fmt, sync::Arc, time::Duration};

use redis::aio::ConnectionLike;

use super::{
    client::{self, Conn, RedisClient},
    eviction::check_eviction_policy,
    keys::KeySpace,
    notify::{Listener, Notifier},
    store::{Store, millis},
};
use crate::{
    LockError,
    backend::{Token, WakeRegistry},
};

/// The key prefix used unless [`RedisBackendBuilder::prefix`] sets another.
pub const DEFAULT_PREFIX: &str = "lock:";

/// How long a key's fence counter and waiter queue outlive its last lease
/// or waiter, unless [`RedisBackendBuilder::fence_retention`] sets another:
/// see [Fences](super#fences).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(60);

/// How long a request to Redis may go unanswered before it fails with
/// [`LockError::Unavailable`], unless
/// [`RedisBackendBuilder::request_timeout`] sets another.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Locks in Redis; see the [module docs](super).
///
/// Cheap to clone: clones share the connections. Lockers over clones are
/// distinct owners of their locks.
#[derive(Clone)]
pub struct RedisBackend {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) store: Store,
    pub(super) registry: WakeRegistry,
    _notifier: Notifier,
}

impl Inner {
    /// Wakes the next waiter of this backend's locker on `key` when it
    /// subscribes, a moment after its head returns with the lease just
    /// granted: one more lease of the key's kind is free for it.
    pub(super) fn wake_next(&self, key: &str) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.store.handover.hold(key));
        }
    }

    /// Takes this backend out of `key`'s queue, in the background, unless
    /// another of its waiters still waits for the key.
    pub(super) fn withdraw(&self, key: String) {
        if self.registry.is_watched(&key) || !self.store.joined.has(&key) {
            return;
        }
        // Without a runtime, the entry stays until a release pops it, and a
        // turn then given to this backend is passed on by its listener.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.store.clone().withdraw(&runtime, key);
        }
    }
}

impl RedisBackend {
    /// Connects with `client` (a standalone [`redis::Client`], a
    /// [`ClusterClient`](redis::cluster::ClusterClient) or a
    /// [`SentinelClient`](redis::sentinel::SentinelClient)) and the default
    /// prefix [`DEFAULT_PREFIX`].
    ///
    /// # Errors
    ///
    /// [`LockError::Unavailable`] when the first connection fails. Later
    /// drops are reconnected without any step from you.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let backend = tower_lock::redis::RedisBackend::new(client).await?;
    /// # Ok(()) }
    /// ```
    pub async fn new(client: impl Into<RedisClient>) -> Result<Self, LockError> {
        RedisBackend::builder(client).build().await
    }

    /// Connects to the standalone server at `url` (`redis://host:port/db`,
    /// `rediss://…`, `redis+unix:///path`).
    ///
    /// # Errors
    ///
    /// [`LockError::Unavailable`] for a malformed url or a failed connection.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tower_lock::LockError> {
    /// let backend = tower_lock::redis::RedisBackend::from_url("redis://127.0.0.1:6379/2").await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_url(url: &str) -> Result<Self, LockError> {
        let client = redis::Client::open(url).map_err(LockError::unavailable)?;
        RedisBackend::new(client).await
    }

    /// A builder, to set the key prefix before connecting.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let backend = tower_lock::redis::RedisBackend::builder(client)
    ///     .prefix("myapp:locks:")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(client: impl Into<RedisClient>) -> RedisBackendBuilder {
        RedisBackendBuilder {
            client: client.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            subscriber: None,
            retention: DEFAULT_RETENTION,
            deadline: DEFAULT_REQUEST_TIMEOUT,
            allow_eviction: false,
        }
    }

    /// The prefix of every Redis key this backend writes.
    pub fn prefix(&self) -> &str {
        self.inner.store.keys.prefix()
    }

    /// The Redis key that holds the lock on `key` (its fence counter is this
    /// plus `:fence`, its queue `:queue`; a shared or counted key's holders
    /// are `:holders`, see the [module docs](super#shared-and-counted-locks)):
    /// for inspecting locks with other tools.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tower_lock::LockError> {
    /// let backend = tower_lock::redis::RedisBackend::from_url("redis://127.0.0.1/").await?;
    /// assert_eq!(backend.redis_key("a{b}"), "lock:{a%7Bb%7D}");
    /// # Ok(()) }
    /// ```
    pub fn redis_key(&self, key: &str) -> String {
        self.inner.store.keys.lock_key(key)
    }

    /// Whether `redis_key` names a lock (not a fence counter, queue, claim
    /// or holders) of this backend's prefix.
    pub fn is_lock_key(&self, redis_key: &[u8]) -> bool {
        self.inner.store.keys.is_lock_key(redis_key)
    }

    /// A `SCAN MATCH` pattern covering every key this backend writes (locks,
    /// fence counters, queues, claims and holders, and the store's epoch);
    /// tell locks from the rest with [`is_lock_key`](Self::is_lock_key).
    pub fn key_pattern(&self) -> String {
        self.inner.store.keys.scan_pattern()
    }

    /// The pub/sub channel on which this backend is told that a lock was
    /// handed to its waiters (`<prefix>released:<backend id>`).
    pub fn release_channel(&self) -> &str {
        &self.inner.store.channel
    }
}

/// Configures a [`RedisBackend`]; made by [`RedisBackend::builder`].
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct RedisBackendBuilder {
    client: RedisClient,
    prefix: String,
    subscriber: Option<redis::Client>,
    retention: Duration,
    deadline: Duration,
    allow_eviction: bool,
}

impl RedisBackendBuilder {
    /// The prefix of every Redis key the backend writes; [`DEFAULT_PREFIX`]
    /// (`lock:`) by default. Give services that must not share locks
    /// different prefixes. It may not contain `{` or `}`, which would
    /// change the Cluster hash tag.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The server to open the wake-up (pub/sub) connection to, for a Cluster
    /// whose nodes need credentials or TLS: by default the backend picks a
    /// master from `CLUSTER SLOTS` and connects to it with no credentials.
    /// Any node of the Cluster will do. Standalone and Sentinel backends
    /// ignore it.
    pub fn cluster_subscriber(mut self, node: redis::Client) -> Self {
        self.subscriber = Some(node);
        self
    }

    /// How long a key's fence counter (and waiter queue) outlives its last
    /// lease (or waiter): [`DEFAULT_RETENTION`] (60 s) unless set. Fences
    /// stay strictly increasing through a step back of the server's clock
    /// shorter than this; see [Fences](super#fences). Rounded up to whole
    /// milliseconds, at least 1 ms.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let backend = tower_lock::redis::RedisBackend::builder(client)
    ///     .fence_retention(Duration::from_secs(10))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn fence_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How long any one request to Redis may go unanswered (a hung
    /// connection, a paused server) before it fails with
    /// [`LockError::Unavailable`]: [`DEFAULT_REQUEST_TIMEOUT`] (5 s) unless
    /// set. A try that timed out may still have been granted; the locker
    /// then releases it by its token.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let backend = tower_lock::redis::RedisBackend::builder(client)
    ///     .request_timeout(Duration::from_millis(500))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn request_timeout(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Accepts a server whose `maxmemory-policy` is not `noeviction`.
    /// Without this, [`build`](Self::build) refuses such a server: an
    /// eviction policy may drop a live lock (every `volatile-*` policy
    /// evicts exactly the keys with a ttl, which every lock has) or a fence
    /// counter. Opt in only where memory can never reach `maxmemory`.
    pub fn allow_eviction(mut self) -> Self {
        self.allow_eviction = true;
        self
    }

    /// Connects, and checks the server's `maxmemory-policy`.
    ///
    /// # Errors
    ///
    /// - [`LockError::InvalidKey`] when the prefix holds `{` or `}`;
    /// - [`LockError::Misconfigured`] when the server's `maxmemory-policy`
    ///   can evict keys, unless [`allow_eviction`](Self::allow_eviction)
    ///   was set (where `CONFIG GET` is refused, as on many managed
    ///   services, construction succeeds with a warning);
    /// - [`LockError::Unavailable`] when the first connection fails.
    pub async fn build(self) -> Result<RedisBackend, LockError> {
        if self.prefix.contains(['{', '}']) {
            return Err(LockError::InvalidKey {
                reason: "the Redis key prefix contains `{` or `}`",
            });
        }
        let (conn, mut source) = Conn::connect(self.client, self.deadline)
            .await
            .map_err(LockError::unavailable)?;
        if !self.allow_eviction {
            check_eviction_policy(&conn).await?;
        }
        if let (Some(node), true) = (self.subscriber, conn.is_cluster()) {
            source = client::PubSubSource::Client(Box::new(node));
        }
        let keys = KeySpace::new(self.prefix);
        let id = Token::new().to_string();
        let turns = format!("{}released:", keys.prefix());
        let epoch = format!("{}epoch", keys.prefix());
        let store = Store {
            channel: format!("{turns}{id}"),
            changed: format!("{}changed", keys.prefix()),
            turns,
            conn,
            keys,
            id,
            retention: millis(self.retention),
            loss: Arc::default(),
            handover: Arc::default(),
            joined: Arc::default(),
            epoch,
        };
        let registry = WakeRegistry::default();
        let notifier = Notifier::start(Listener {
            source,
            store: store.clone(),
            registry: registry.clone(),
        })
        .await;
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                store,
                registry,
                _notifier: notifier,
            }),
        })
    }
}

impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackendBuilder")
            .field("client", &self.client)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("deployment", &self.inner.store.conn.kind())
            .field("db", &self.inner.store.conn.get_db())
            .field("prefix", &self.inner.store.keys.prefix())
            .field("waiting_keys", &self.inner.registry.len())
            .finish()
    }
}
