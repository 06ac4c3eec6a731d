//! [`Locker`]: the front type users hold.
//!
//! The API is here; the wait strategy shared by every backend is in
//! `wait.rs`, and one try at the store (with what its answer comes to) in
//! `attempt.rs`.

mod all;
mod attempt;
mod kinds;
pub(crate) mod scope;
mod wait;

use std::{fmt, sync::Arc, time::Duration};

use tokio::time::Instant;

pub use self::wait::{BACKOFF_MAX, BACKOFF_START};
use self::{attempt::Asking, wait::LocalQueue};
use crate::{
    LockError, LockGuard,
    backend::{Backend, LeaseKind},
    key::{owned_key, validate_key, validate_ttl},
    lease::Timing,
    metrics::{Metrics, Refusal, Started},
    owner::Owner,
};

/// Takes and releases locks on a [`Backend`]. Cheap to clone.
///
/// A `Locker` is one owner: locks it takes can be released through it or
/// any of its clones ([`release`](Self::release)), but not through another
/// `Locker`, even one over the same backend.
///
/// # Waiting and fairness
///
/// Waiters in one process for the same key queue in FIFO order (the order
/// their `acquire` calls started waiting): only the head of the queue talks
/// to the store, so one process sends one contender per key, not one per
/// task. Across processes, the order depends on the store: Redis keeps a
/// queue of waiting backends per key and hands a released lock to the first
/// of them (first come, first served); on the other stores whoever tries
/// first after a release wins.
///
/// A release wakes the next waiter in about one round trip to the store. A
/// waiter that misses a wake-up tries again after a backoff step at most (5
/// ms doubling to 500 ms, never longer than the holder's remaining lease
/// when the store reports it), and a holder that crashed frees the key once
/// its lease runs out.
///
/// Locks are not re-entrant: acquiring a key this `Locker` already holds
/// waits until that lease ends.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tower_lock::Locker;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_lock::LockError> {
/// let locker = Locker::in_memory();
/// let ttl = Duration::from_secs(10);
///
/// let guard = locker.acquire("invoice:42", ttl).await?;
/// assert!(locker.try_lock("invoice:42", ttl).await?.is_none());
/// drop(guard); // releases
///
/// let guard = locker.acquire("invoice:42", ttl).await?;
/// locker.release("invoice:42").await?; // or guard.release().await
/// # drop(guard);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Locker {
    owner: Arc<Owner>,
    queue: Arc<LocalQueue>,
    auto_renew: bool,
    timing: Timing,
    /// Stored with every lease this clone takes (an election's candidate
    /// id); `None` for plain locks.
    value: Option<Arc<str>>,
    /// The kind of lease this clone takes: exclusive but for the shared and
    /// counted entry points (`kinds.rs`).
    kind: LeaseKind,
}

impl Locker {
    /// A locker over `backend`.
    ///
    /// ```
    /// use tower_lock::{memory::MemoryBackend, Locker};
    ///
    /// let locker = Locker::new(MemoryBackend::new());
    /// ```
    pub fn new<B: Backend>(backend: B) -> Self {
        Locker::with_name(Arc::new(backend), crate::metrics::backend_name::<B>())
    }

    /// A locker over a backend that is already shared.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_lock::{backend::Backend, memory::MemoryBackend, Locker};
    ///
    /// let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    /// let (a, b) = (Locker::from_arc(backend.clone()), Locker::from_arc(backend));
    /// ```
    pub fn from_arc(backend: Arc<dyn Backend>) -> Self {
        Locker::with_name(backend, "custom")
    }

    /// A locker over `backend`, named `backend_name` in its metrics.
    fn with_name(backend: Arc<dyn Backend>, backend_name: &'static str) -> Self {
        Locker {
            owner: Arc::new(Owner::new(backend, backend_name)),
            queue: Arc::default(),
            auto_renew: false,
            timing: Timing::default(),
            value: None,
            kind: LeaseKind::Exclusive,
        }
    }

    /// Whether guards from this locker renew their lease while they live
    /// (every third of the ttl). The same owner: clones made with either
    /// setting release each other's locks.
    ///
    /// Off by default: a lease that renews itself outlives a holder that is
    /// stuck (deadlocked, or waiting on a call that never returns), and the
    /// ttl is what frees the lock from such a holder. Turn it on where the
    /// critical section's length is not known in advance (an HTTP handler,
    /// a leader's term), and watch [`LockGuard::lost`].
    ///
    /// ```
    /// let locker = tower_lock::Locker::in_memory().auto_renew(true);
    /// ```
    pub fn auto_renew(mut self, enabled: bool) -> Self {
        self.auto_renew = enabled;
        self
    }

    /// Names the store in the `backend` label of this locker's metrics
    /// (and its clones': they are one owner). [`Locker::new`] names the
    /// built-in stores `memory`, `redis` and `nats`, and any other by its
    /// type's name; [`from_arc`](Self::from_arc) cannot see the type and
    /// says `custom`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_lock::{Locker, backend::Backend, memory::MemoryBackend};
    ///
    /// let shared: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    /// let locker = Locker::from_arc(shared).metrics_backend("memory");
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics_backend(self, name: &'static str) -> Self {
        self.owner.metrics().set_backend(name);
        self
    }

    /// Labels this locker's metrics (and its clones') with `key_class`: the
    /// key up to its first `:` (`invoice` for `invoice:42`; a key without
    /// `:` is its own class). Off by default.
    ///
    /// # Warning
    ///
    /// Every distinct prefix is a new time series in the exporter: use it
    /// only where the prefixes are your own few namespaces, never where a
    /// request can choose what comes before the first `:`; otherwise use
    /// [`metrics_key_class`](Self::metrics_key_class).
    ///
    /// ```
    /// let locker = tower_lock::Locker::in_memory().metrics_key_prefix();
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics_key_prefix(self) -> Self {
        self.owner
            .metrics()
            .set_key_class(crate::metrics::KeyClass::Prefix);
        self
    }

    /// Labels this locker's metrics (and its clones') with `key_class`:
    /// what `class` answers for the key. It answers a `&'static str`, so
    /// the label keeps to the few values the code names, whatever keys
    /// requests bring. Off by default.
    ///
    /// ```
    /// let locker = tower_lock::Locker::in_memory().metrics_key_class(|key| {
    ///     if key.starts_with("account:") { "account" } else { "other" }
    /// });
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics_key_class(
        self,
        class: impl Fn(&str) -> &'static str + Send + Sync + 'static,
    ) -> Self {
        self.owner
            .metrics()
            .set_key_class(crate::metrics::KeyClass::With(Arc::new(class)));
        self
    }

    /// What this locker reports to, for the middleware's own events.
    pub(crate) fn metrics(&self) -> &Metrics {
        self.owner.metrics()
    }

    /// Reports what a call for `key` came to: a lock, or a refusal (a wait
    /// that ran out when the call `waited`).
    fn observe<T>(
        &self,
        key: &str,
        started: Started,
        outcome: &Result<T, LockError>,
        waited: bool,
    ) {
        match outcome {
            Ok(_) => self.metrics().acquired(key, started),
            Err(error) => {
                if let Some(refusal) = Refusal::of(error, waited) {
                    self.metrics().refused(Some(key), refusal);
                }
            }
        }
    }

    /// Counts each lease lost `deadline` after the send time of its last
    /// successful grant or renewal (never later than its ttl), for callers
    /// that must stop before the store can hand the key on even when clocks
    /// run at slightly different rates.
    pub(crate) fn renew_deadline(mut self, deadline: Duration) -> Self {
        self.timing.deadline = Some(deadline);
        self
    }

    /// Renews each lease `every` after the send time of its last successful
    /// grant or renewal, instead of every third of its ttl.
    pub(crate) fn renew_every(mut self, every: Duration) -> Self {
        self.timing.every = Some(every);
        self
    }

    /// Stores `value` with every lease this clone takes (see
    /// [`AcquireRequest::value`](crate::backend::AcquireRequest::value)).
    pub(crate) fn with_value(mut self, value: &str) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Which backend this is, as far as "the same backend" matters: lockers
    /// over one `Arc` of it (clones, and [`from_arc`](Self::from_arc) of one
    /// `Arc`) are the same.
    pub(crate) fn backend_id(&self) -> usize {
        Arc::as_ptr(self.owner.backend()).cast::<()>() as usize
    }

    /// The backend this locker runs on.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        self.owner.backend()
    }

    /// How many leases this locker (with its clones) holds, by its own
    /// records: leases it has not released, including any that ran out.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_lock::LockError> {
    /// let locker = tower_lock::Locker::in_memory();
    /// let guard = locker.acquire("k", std::time::Duration::from_secs(5)).await?;
    /// assert_eq!(locker.held_count(), 1);
    /// guard.release().await?;
    /// assert_eq!(locker.held_count(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn held_count(&self) -> usize {
        self.owner.held_count()
    }

    /// How many leases of this locker wait for their next renewal (see
    /// [`auto_renew`](Self::auto_renew)); released ones leave at once.
    pub fn renewing_count(&self) -> usize {
        self.owner.renewing_count()
    }

    /// How many keys have tasks of this locker waiting for them.
    pub fn queued_keys(&self) -> usize {
        self.queue.len()
    }

    /// Waits until `key` is free, then takes it for `ttl`.
    ///
    /// See [Waiting and fairness](Self#waiting-and-fairness). To bound the
    /// wait, use [`acquire_timeout`](Self::acquire_timeout) or wrap this in
    /// [`tokio::time::timeout`].
    ///
    /// Errors from the store are returned when they happen on the first try;
    /// once the call is waiting, it retries through them on its backoff
    /// timer, so a restarting store delays waiters instead of failing them.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidKey`] or [`LockError::InvalidTtl`] for bad input
    /// (nothing is sent to the store); [`LockError::Unavailable`] when the
    /// store fails the first try, or when not called on a tokio runtime;
    /// [`LockError::HeldByThisRequest`], at once, when called from inside a
    /// request that [`LockLayer`](crate::LockLayer) runs under this very key
    /// on this backend (waiting would wait for the request itself).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future leaves no lock and no waiter. A try
    /// already sent to the store finishes in the background, and a lock it
    /// took is released. A cancelled waiter loses its place in the queue.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lock::Locker;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_lock::LockError> {
    /// let locker = Locker::in_memory();
    /// let guard = locker.acquire("tenant:7", Duration::from_secs(5)).await?;
    /// let waiter = tokio::spawn({
    ///     let locker = locker.clone();
    ///     async move { locker.acquire("tenant:7", Duration::from_secs(5)).await }
    /// });
    /// guard.release().await?;
    /// let next = waiter.await.unwrap()?; // woken by the release
    /// # drop(next);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn acquire(&self, key: &str, ttl: Duration) -> Result<LockGuard, LockError> {
        self.lock(key, ttl, None).await
    }

    /// Like [`acquire`](Self::acquire), but gives up after `wait` with
    /// [`LockError::Busy`], carrying the holder's remaining lease when the
    /// store reported it. A zero `wait` never waits for a wake-up.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Self::acquire).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lock::{LockError, Locker};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), LockError> {
    /// let locker = Locker::in_memory();
    /// let _held = locker.acquire("k", Duration::from_secs(30)).await?;
    /// let err = locker.acquire_timeout("k", Duration::from_secs(1), Duration::from_millis(20)).await.unwrap_err();
    /// let LockError::Busy { retry_after } = err else { panic!("{err}") };
    /// assert!(retry_after.unwrap() > Duration::from_secs(29));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn acquire_timeout(
        &self,
        key: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockGuard, LockError> {
        // A wait too long to represent is no deadline at all.
        self.lock(key, ttl, Instant::now().checked_add(wait)).await
    }

    /// Takes `key` for `ttl` if it is free now; never waits.
    ///
    /// # Errors
    ///
    /// As for [`acquire`](Self::acquire); a held key is `Ok(None)`.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Self::acquire).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lock::Locker;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_lock::LockError> {
    /// let locker = Locker::in_memory();
    /// let first = locker.try_lock("k", Duration::from_secs(5)).await?;
    /// assert!(first.is_some());
    /// assert!(locker.try_lock("k", Duration::from_secs(5)).await?.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn try_lock(&self, key: &str, ttl: Duration) -> Result<Option<LockGuard>, LockError> {
        validate_key(key)?;
        validate_ttl(ttl)?;
        scope::refuse_reentry(self.backend_id(), key)?;
        let started = Started::now();
        let owned = owned_key(key);
        let taken = match self.attempt(&owned, ttl, Asking::Once).await {
            Ok(Ok(guard)) => Ok(guard),
            Ok(Err(_)) => Err(LockError::Busy { retry_after: None }),
            Err(error) => Err(error),
        };
        self.observe(key, started, &taken, false);
        match taken {
            Ok(guard) => Ok(Some(guard)),
            Err(LockError::Busy { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Releases every lease this locker (or a clone) holds on `key`.
    ///
    /// # Errors
    ///
    /// [`LockError::NotHeld`] when it holds nothing there (another owner's
    /// lock is never touched); [`LockError::Lost`] when a lease had already
    /// been lost; [`LockError::Unavailable`] when the store could not be
    /// reached. Every lease is released either way; the first error is
    /// returned.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not stop the release.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lock::{LockError, Locker};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), LockError> {
    /// let locker = Locker::in_memory();
    /// let _guard = locker.acquire("k", Duration::from_secs(5)).await?;
    /// locker.release("k").await?;
    /// assert!(matches!(locker.release("k").await, Err(LockError::NotHeld)));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn release(&self, key: &str) -> Result<(), LockError> {
        validate_key(key)?;
        let records = self.owner.held_on(key);
        if records.is_empty() {
            return Err(LockError::NotHeld);
        }
        let mut first_error = None;
        for record in records {
            if let Err(err) = self.owner.release_from(record, None).await {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Ends this locker, and every clone of it, for a graceful shutdown.
    ///
    /// Meant to run once the server has drained (after axum's
    /// `with_graceful_shutdown`, or its drain timeout): every lease the
    /// locker still holds is marked lost first, so [`LockGuard::lost`]
    /// resolves and [`LockLayer`](crate::LockLayer) stops the requests still
    /// running under one; then each is released in the store, renewal stops,
    /// and the call waits for releases still under way in the background
    /// (of guards dropped earlier, of waits cut short). When it returns `Ok`,
    /// the store holds none of this locker's leases.
    ///
    /// From the first call on, [`acquire`](Self::acquire),
    /// [`try_lock`](Self::try_lock) and their siblings fail with
    /// [`LockError::ShutDown`], calls waiting for a lock end with it at once,
    /// and a guard's [`release`](LockGuard::release) answers
    /// [`LockError::NotHeld`]. Lockers over the same backend built with
    /// [`Locker::new`] or [`from_arc`](Self::from_arc) are other owners and
    /// keep working.
    ///
    /// Idempotent: a second call releases nothing more and waits for what
    /// the first started.
    ///
    /// # Errors
    ///
    /// The first [`LockError::Unavailable`] of a release the store did not
    /// answer (that lease then ends at its ttl); every lease is released
    /// either way.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the locker shut down and its leases marked
    /// lost; releases already sent finish in the background, and a later
    /// call waits for them.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lock::{LockError, Locker};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), LockError> {
    /// let locker = Locker::in_memory();
    /// let guard = locker.acquire("job", Duration::from_secs(30)).await?;
    ///
    /// // ... after the server has drained:
    /// locker.shutdown().await?;
    /// assert!(guard.is_lost());
    /// assert_eq!(locker.held_count(), 0);
    /// let refused = locker.acquire("job", Duration::from_secs(30)).await;
    /// assert!(matches!(refused, Err(LockError::ShutDown)));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn shutdown(&self) -> Result<(), LockError> {
        self.owner.shut_down().await
    }

    /// Whether [`shutdown`](Self::shutdown) was called on this locker or a
    /// clone.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_lock::LockError> {
    /// let locker = tower_lock::Locker::in_memory();
    /// let clone = locker.clone();
    /// locker.shutdown().await?;
    /// assert!(clone.is_shut_down());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_shut_down(&self) -> bool {
        self.owner.is_closed()
    }
}

impl fmt::Debug for Locker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locker")
            .field("backend", self.owner.backend())
            .field("held", &self.owner.held_count())
            .field("queued_keys", &self.queue.len())
            .field("auto_renew", &self.auto_renew)
            .finish()
    }
}
