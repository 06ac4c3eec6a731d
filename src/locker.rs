//! [`Locker`]: the front type, and the wait strategy shared by every
//! backend.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use smol_str::SmolStr;
use tokio::{runtime::Handle, time::Instant};
use tracing::Instrument;

use crate::{
    LockError, LockGuard,
    backend::{Attempt, Backend, Holder, Lease, Subscription, Token},
    guard::{Deadline, HeldLease},
    key::{owned_key, validate_key, validate_ttl},
    memory::{KeyHasher, MemoryBackend},
    pool::{self, LeaseRef},
    renewal::Renewals,
    run_to_end::RunToEnd,
};

/// The first wait between two tries while the holder gives no wake-up.
pub const BACKOFF_START: Duration = Duration::from_millis(5);
/// The longest wait between two tries; the backoff doubles up to it.
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Takes and releases locks on a [`Backend`]. Cheap to clone.
///
/// A `Locker` is one owner: locks it takes can be released through it or
/// any of its clones ([`release`](Self::release)), but not through another
/// `Locker`, even one over the same backend.
///
/// # Waiting and fairness
///
/// [`acquire`](Self::acquire) tries once at once. If the key is busy, it
/// subscribes to the backend's wake-ups for the key and tries again *before*
/// it waits, so a release that happens between a failed try and the wait is
/// never missed. It then waits for a wake-up or a backoff timer,
/// whichever comes first: 5 ms doubling to 500 ms, never longer than the
/// holder's remaining lease when the store reports it. A lost wake-up costs
/// at most one backoff step.
///
/// Waiters in one process for the same key queue in FIFO order (the order
/// their `acquire` calls started waiting), and only the head of the queue
/// talks to the store, so one process sends one contender per key, not one
/// per task. Across lockers and processes there is no queue: whoever tries
/// first after a release wins, and a woken waiter yields a random few times
/// before its try so that this order is not always the runtime's.
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
/// drop(guard); // releases in the background
///
/// let guard = locker.acquire("invoice:42", ttl).await?;
/// locker.release("invoice:42").await?; // or guard.release().await
/// # drop(guard);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Locker {
    inner: Arc<LockerInner>,
    auto_renew: bool,
}

pub(crate) struct LockerInner {
    pub(crate) backend: Arc<dyn Backend>,
    /// Tells this owner's leases from others' in a store of this process.
    id: u64,
    /// What this owner holds in a store outside the process, for
    /// `Locker::release(key)`. A store inside keeps the lease's holder with
    /// the lease instead, which spares the uncontended path a map.
    held: DashMap<SmolStr, LeaseRef, KeyHasher>,
    /// One FIFO queue per key that has local waiters; the task holding the
    /// gate is the only one talking to the store for that key.
    gates: DashMap<SmolStr, Arc<Gate>, KeyHasher>,
    /// Live queue tickets: lets the uncontended path skip the `gates` lookup.
    queued: AtomicUsize,
    pub(crate) renewals: Renewals,
}

type Gate = tokio::sync::Mutex<()>;

impl LockerInner {
    /// Takes a released lease out of this owner's records.
    pub(crate) fn forget(&self, held: &HeldLease) {
        // A store in this process forgets the holder with the lease.
        if held.listed.load(Ordering::Acquire) {
            self.held
                .remove_if(&*held.key, |_, current| std::ptr::eq(&**current, held));
        }
    }
}

/// Owner ids, never reused within a process.
static OWNERS: AtomicU64 = AtomicU64::new(0);

impl Locker {
    /// A locker over `backend`.
    ///
    /// ```
    /// use tower_lock::{memory::MemoryBackend, Locker};
    ///
    /// let locker = Locker::new(MemoryBackend::new());
    /// ```
    pub fn new(backend: impl Backend) -> Self {
        Locker::from_arc(Arc::new(backend))
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
        Locker {
            inner: Arc::new(LockerInner {
                backend,
                id: OWNERS.fetch_add(1, Ordering::Relaxed),
                held: DashMap::default(),
                gates: DashMap::default(),
                queued: AtomicUsize::new(0),
                renewals: Renewals::default(),
            }),
            auto_renew: false,
        }
    }

    /// A locker over a new standalone [`MemoryBackend`]: locks for the tasks
    /// of this process.
    ///
    /// ```
    /// let locker = tower_lock::Locker::in_memory();
    /// ```
    pub fn in_memory() -> Self {
        Locker::new(MemoryBackend::new())
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

    /// The backend this locker runs on.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// How many keys this locker (with its clones) holds, by its own records
    /// (leases it has not released, including any that ran out). For a store
    /// in this process that means a walk over the store, which keeps the
    /// records with the leases: a diagnostic, not for a hot path.
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
        let id = self.inner.id;
        let here = self
            .inner
            .backend
            .count_holders_now(&|holder| holder.0.owner == id && !holder.0.is_released());
        self.inner.held.len() + here.unwrap_or(0)
    }

    /// How many leases of this locker wait for their next renewal (see
    /// [`auto_renew`](Self::auto_renew)); released ones leave at once.
    pub fn renewing_count(&self) -> usize {
        self.inner.renewals.len()
    }

    /// How many keys have tasks of this locker waiting for them.
    pub fn queued_keys(&self) -> usize {
        self.inner.gates.len()
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
    /// store fails the first try, or when not called on a tokio runtime.
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
        let key = owned_key(key);
        Ok(self.attempt(&key, ttl).await?.ok())
    }

    /// Releases the lock this locker (or a clone) holds on `key`.
    ///
    /// # Errors
    ///
    /// [`LockError::NotHeld`] when it holds nothing there (another owner's
    /// lock is never touched); [`LockError::Lost`] when its lease had
    /// already been lost.
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
        // Left in the records until the release takes it out, so a release
        // that can not start (no runtime) forgets nothing.
        let held = match self.inner.backend.holder_now(key) {
            Some(holder) => holder
                .map(|holder| holder.0)
                .filter(|held| held.owner == self.inner.id),
            None => self.inner.held.get(key).map(|held| held.clone()),
        };
        let held = held.ok_or(LockError::NotHeld)?;
        HeldLease::release_from(held, self.inner.clone(), None).await
    }

    async fn lock(
        &self,
        key: &str,
        ttl: Duration,
        deadline: Option<Instant>,
    ) -> Result<LockGuard, LockError> {
        validate_key(key)?;
        validate_ttl(ttl)?;
        let key = owned_key(key);
        let mut remaining = None;
        let mut seen_busy = false;
        // Nobody of ours is queued: try at once (queued waiters go first).
        if self.inner.queued.load(Ordering::Acquire) == 0 || !self.inner.gates.contains_key(&*key) {
            match self.attempt(&key, ttl).await? {
                Ok(guard) => return Ok(guard),
                Err(refused) => (remaining, seen_busy) = (refused.remaining, true),
            }
        }
        tracing::debug!(%key, "lock contended; waiting");
        let span = tracing::debug_span!("lock_wait", %key);
        // Boxed: the waiting state is large, and the uncontended path should
        // not carry (and move) it.
        Box::pin(
            self.wait(key, ttl, deadline, remaining, seen_busy)
                .instrument(span),
        )
        .await
    }

    /// The contended path: queue locally, then wake-up or backoff.
    async fn wait(
        &self,
        key: SmolStr,
        ttl: Duration,
        deadline: Option<Instant>,
        mut remaining: Option<Duration>,
        mut seen_busy: bool,
    ) -> Result<LockGuard, LockError> {
        // Timers need a runtime; fail rather than panic without one.
        current_runtime()?;
        let queue = QueueTicket::join(&self.inner, &key);
        let Some(_turn) = until(deadline, queue.gate().lock()).await else {
            return Err(LockError::Busy {
                retry_after: remaining,
            });
        };
        let busy = |retry_after| LockError::Busy { retry_after };
        // Store calls count against the deadline too: a try that is cut off
        // finishes in the background and gives back what it took.
        let subscribed = until(deadline, self.inner.backend.subscribe(&key)).await;
        let mut wakeups = match subscribed.ok_or(busy(remaining))? {
            Ok(wakeups) => wakeups,
            Err(err) => {
                tracing::warn!(%key, error = %err, "no wake-ups for this wait; polling");
                Subscription::never()
            }
        };
        let mut backoff = BACKOFF_START;
        loop {
            let attempt = until(deadline, self.attempt(&key, ttl)).await;
            let mut queued = false;
            match attempt.ok_or(busy(remaining))? {
                Ok(Ok(guard)) => return Ok(guard),
                Ok(Err(refused)) => {
                    (remaining, seen_busy, queued) = (refused.remaining, true, refused.queued);
                }
                Err(err) if !seen_busy => return Err(err),
                Err(err) => {
                    tracing::warn!(%key, error = %err, "lock store failed while waiting; retrying");
                    remaining = None;
                }
            }
            // Queued in the store, the waiter is woken in its turn: it only
            // checks back when the holder's lease ends, or after the longest
            // step in case the wake-up was lost.
            let step = if queued { BACKOFF_MAX } else { backoff };
            let pause = remaining
                .map_or(step, |left| left.min(step))
                .max(Duration::from_millis(1));
            let woken = until(deadline, async {
                tokio::select! {
                    () = wakeups.changed() => true,
                    () = tokio::time::sleep(pause) => false,
                }
            })
            .await;
            match woken {
                None => {
                    return Err(LockError::Busy {
                        retry_after: remaining,
                    });
                }
                Some(true) => {
                    backoff = BACKOFF_START;
                    shuffle().await;
                }
                Some(false) => backoff = (backoff * 2).min(BACKOFF_MAX),
            }
        }
    }

    /// One try at the store. `Err` inside `Ok` is "busy".
    async fn attempt(
        &self,
        key: &SmolStr,
        ttl: Duration,
    ) -> Result<Result<LockGuard, Refused>, LockError> {
        match self.attempt_here(key, ttl) {
            Some(answer) => answer,
            // Boxed: the in-process path should not carry (and move) the
            // state of a request it never makes.
            None => Box::pin(self.attempt_remote(key, ttl)).await,
        }
    }

    /// A try at a store in this process, which answers on the spot, keeps
    /// the lease's holder with the lease, and needs no runtime to release
    /// either (only renewal does); `None` when the store needs I/O.
    fn attempt_here(
        &self,
        key: &SmolStr,
        ttl: Duration,
    ) -> Option<Result<Result<LockGuard, Refused>, LockError>> {
        let runtime = match self.auto_renew.then(current_runtime).transpose() {
            Ok(runtime) => runtime,
            Err(err) => return Some(Err(err)),
        };
        let token = Token::in_process();
        // Read before the store reads its own clock: the holder's lease never
        // outlasts the store's.
        let start = Deadline::coarse_now();
        let held = self.lease(key, token, ttl, start);
        let holder = Holder(held.clone());
        let outcome = match self.inner.backend.try_acquire_now(key, token, ttl, holder) {
            Some(Ok(outcome)) => outcome,
            Some(Err(err)) => return Some(Err(err)),
            None => {
                // Back to the pool, or a thread whose locks go over I/O
                // would drain it on every try.
                pool::recycle(held);
                return None;
            }
        };
        Some(Ok(self.settle(held, outcome, runtime, None)))
    }

    /// A try at a store behind I/O: a random token, and a lease measured on
    /// the precise clock from before the request.
    async fn attempt_remote(
        &self,
        key: &SmolStr,
        ttl: Duration,
    ) -> Result<Result<LockGuard, Refused>, LockError> {
        let runtime = current_runtime()?;
        let token = Token::new();
        let sent_at = Instant::now();
        let start = Deadline::Precise(sent_at);
        let held = self.lease(key, token, ttl, start);
        let outcome = self.request(&runtime, key, token, ttl).await?;
        let answer = self.settle(held.clone(), outcome, Some(runtime), Some(sent_at));
        if answer.is_ok() {
            held.listed.store(true, Ordering::Release);
            if let Some(stale) = self.inner.held.insert(key.clone(), held) {
                // The store granted the key again, so the earlier lease of
                // ours on it has run out.
                stale.supersede(&self.inner);
            }
        }
        Ok(answer)
    }

    /// The record of a lease of this owner's, about to be asked for.
    fn lease(&self, key: &SmolStr, token: Token, ttl: Duration, start: Deadline) -> LeaseRef {
        pool::share(HeldLease::new(
            key.clone(),
            token,
            self.inner.id,
            ttl,
            start,
        ))
    }

    /// What a try came to: a guard over `held`, or the refusal.
    fn settle(
        &self,
        held: LeaseRef,
        outcome: Attempt,
        runtime: Option<Handle>,
        sent_at: Option<Instant>,
    ) -> Result<LockGuard, Refused> {
        let (remaining, queued) = match outcome {
            Attempt::Acquired { fence, revision } => {
                held.granted(fence, revision);
                if let Some(runtime) = runtime.as_ref().filter(|_| self.auto_renew) {
                    let start = sent_at.unwrap_or_else(Instant::now);
                    HeldLease::start_renewal(&held, &self.inner, runtime, start);
                }
                tracing::debug!(key = %held.key, fence, "lock acquired");
                return Ok(LockGuard::new(held, self.inner.clone(), runtime));
            }
            Attempt::Busy { remaining } => (remaining, false),
            Attempt::Queued { remaining } => (remaining, true),
        };
        Err(Refused { remaining, queued })
    }

    /// A try that needs I/O. If the caller goes away mid-request, a lock it
    /// was granted is nobody's: it is given back.
    async fn request(
        &self,
        runtime: &Handle,
        key: &SmolStr,
        token: Token,
        ttl: Duration,
    ) -> Result<Attempt, LockError> {
        let request = {
            let (backend, key) = (self.inner.backend.clone(), key.clone());
            async move { backend.try_acquire(&key, token, ttl).await }
        };
        let cleanup = {
            let (backend, key) = (self.inner.backend.clone(), key.clone());
            move |outcome: Result<Attempt, LockError>| async move {
                if let Ok(Attempt::Acquired { fence, revision }) = outcome {
                    let lease = Lease {
                        token,
                        fence,
                        revision,
                    };
                    let _ = backend.release(&key, &lease).await;
                }
            }
        };
        RunToEnd::new(runtime.clone(), request, cleanup).await
    }
}

impl fmt::Debug for Locker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locker")
            .field("backend", &self.inner.backend)
            .field("held", &self.inner.held.len())
            .field("queued_keys", &self.inner.gates.len())
            .field("auto_renew", &self.auto_renew)
            .finish()
    }
}

/// Lets the waiters that one release woke reach the store in a random
/// order.
///
/// They all hear the release at about the same moment and the first to retry
/// wins. Left alone, that order is the order in which the runtime polls
/// them, which is the same every time, so one `Locker` of a process could
/// win nearly every hand-off while the others starve (the Redis contention
/// bench measured a Jain index of 0.5 across 16 tasks on 4 lockers, 0.97
/// with this). A random number of yields, with no timer, costs microseconds.
async fn shuffle() {
    const MOST_YIELDS: u128 = 4;
    for _ in 0..Token::new().as_uuid().as_u128() % MOST_YIELDS {
        tokio::task::yield_now().await;
    }
}

fn current_runtime() -> Result<Handle, LockError> {
    Handle::try_current().map_err(LockError::unavailable)
}

/// Runs `future` until `deadline`; `None` if the deadline came first.
async fn until<T>(deadline: Option<Instant>, future: impl Future<Output = T>) -> Option<T> {
    match deadline {
        None => Some(future.await),
        Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
    }
}

/// A try that found the key busy.
struct Refused {
    /// The holder's remaining lease, when the store said.
    remaining: Option<Duration>,
    /// Whether the store queued the caller (see [`Attempt::Queued`]).
    queued: bool,
}

/// A place in a key's local queue; the queue's entry goes with its last
/// ticket, so keys nobody waits for leave nothing behind.
struct QueueTicket<'a> {
    locker: &'a LockerInner,
    key: &'a SmolStr,
    gate: Arc<Gate>,
}

impl<'a> QueueTicket<'a> {
    fn join(locker: &'a LockerInner, key: &'a SmolStr) -> Self {
        locker.queued.fetch_add(1, Ordering::AcqRel);
        let gate = locker.gates.entry(key.clone()).or_default().clone();
        QueueTicket { locker, key, gate }
    }

    fn gate(&self) -> &Gate {
        &self.gate
    }
}

impl Drop for QueueTicket<'_> {
    fn drop(&mut self) {
        // Clones are only made under the map's shard lock, which `remove_if`
        // holds: two references (the map's and ours) mean nobody else waits.
        self.locker
            .gates
            .remove_if(&**self.key, |_, gate| Arc::strong_count(gate) == 2);
        self.locker.queued.fetch_sub(1, Ordering::AcqRel);
    }
}
