//! How a [`NatsBackend`] is made: its builder, which opens (or creates)
//! the bucket, checks it and starts the watch.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self};

use super::{
    DEFAULT_MAX_AGE, DEFAULT_REQUEST_TIMEOUT, Inner, NatsBackend, bucket, claims::Claims,
    counted::Freed, fence::Fences, leader::Leader, lease::SeenKeys, own::OwnLeases, watch,
};
use crate::{LockError, backend::WakeRegistry};

/// Builds a [`NatsBackend`] with settings for a bucket it creates.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("127.0.0.1:4222").await?;
/// let js = async_nats::jetstream::new(client);
/// let backend = tower_lock::nats::NatsBackend::builder(js, "my-locks")
///     .replicas(3)
///     .build()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct Builder {
    js: jetstream::Context,
    bucket: String,
    settings: bucket::Settings,
    request_timeout: Duration,
}

impl Builder {
    /// How many replicas a bucket this backend creates keeps (default 1).
    /// An existing bucket is used as it is.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.settings.replicas = replicas;
        self
    }

    /// The `max_age` of a bucket this backend creates (default
    /// [`DEFAULT_MAX_AGE`], a year): leases longer than it are refused, and
    /// an entry left by a crashed holder is gone after it even if nobody
    /// waits for its key. Set it to the longest lease you take to bound
    /// those entries tightly. An existing bucket keeps its own.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.settings.max_age = max_age;
        self
    }

    /// How long one request to the server may take (default
    /// [`DEFAULT_REQUEST_TIMEOUT`], 5 s) before the operation fails with
    /// [`LockError::Unavailable`]. It replaces the JetStream context's own
    /// timeout for this backend.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Opens the bucket, creating it when absent, checks it, and starts
    /// watching it.
    ///
    /// # Errors
    ///
    /// [`LockError::Unavailable`] when the bucket name is invalid or the
    /// server can not be reached; [`LockError::Misconfigured`], naming the
    /// setting, for an existing bucket that could drop a live lease or keep
    /// an old one (a history above 1; discarding old messages at a limit).
    pub async fn build(mut self) -> Result<NatsBackend, LockError> {
        self.js.set_timeout(self.request_timeout);
        let store = bucket::open_or_create(&self.js, &self.bucket, self.settings).await?;
        let info = store.stream.cached_info();
        bucket::check(&info.config)?;
        let max_age = Some(info.config.max_age).filter(|age| !age.is_zero());
        let fences = Arc::new(Fences::new(info));
        let wakeups = WakeRegistry::default();
        let seen = Arc::new(SeenKeys::default());
        let freed = Arc::new(Freed::default());
        let released_prefix = format!("tower-lock.{}.released.", self.bucket);
        let watch = watch::start(
            self.js.client(),
            store.clone(),
            &released_prefix,
            wakeups.clone(),
            seen.clone(),
            fences.clone(),
            freed.clone(),
        )
        .await?;
        let subject_prefix = store
            .put_prefix
            .clone()
            .unwrap_or_else(|| store.prefix.clone());
        let exact_delete = !store.stream.cached_info().config.deny_delete;
        let leader = Leader::new(self.js.clone(), store.stream.clone(), store.prefix.clone());
        Ok(NatsBackend {
            inner: Arc::new(Inner {
                js: self.js,
                store,
                subject_prefix,
                exact_delete,
                released_prefix,
                own: OwnLeases::default(),
                fences,
                max_age,
                wakeups,
                seen,
                leader,
                claims: Claims::default(),
                freed,
                watch,
            }),
        })
    }
}

impl NatsBackend {
    /// Opens the KV bucket `bucket`, creating it when absent (history 1, one
    /// replica), and starts watching it for releases.
    ///
    /// Concurrent callers creating the same bucket all succeed.
    ///
    /// # Errors
    ///
    /// [`LockError::Unavailable`] when the bucket name is invalid or the
    /// server can not be reached.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), tower_lock::LockError> {
    /// # let client = async_nats::connect("127.0.0.1:4222").await.unwrap();
    /// let js = async_nats::jetstream::new(client);
    /// let backend = tower_lock::nats::NatsBackend::new(js, "my-locks").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn new(js: jetstream::Context, bucket: &str) -> Result<Self, LockError> {
        Self::builder(js, bucket).build().await
    }

    /// A [`Builder`], for settings of a bucket this backend creates.
    pub fn builder(js: jetstream::Context, bucket: &str) -> Builder {
        Builder {
            js,
            bucket: bucket.to_owned(),
            settings: bucket::Settings {
                replicas: 1,
                max_age: DEFAULT_MAX_AGE,
            },
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}
