//! [`LockGuard`]: a held lock, its fence and its lease.

use std::{
    fmt,
    future::Future,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use smol_str::SmolStr;
use tokio::{runtime::Handle, sync::Notify, time::Instant};

use crate::{
    BACKOFF_START, LockError,
    backend::{Lease, Token},
    clock::Tick,
    locker::LockerInner,
    pool::{self, LeaseRef},
    renewal::Slot,
    run_to_end::RunToEnd,
};

/// A held lock. Dropping it releases the lock.
///
/// The guard carries the lock's [fence](Self::fence), which a resource can
/// use to refuse writes from a holder whose lease has since run out. The
/// lease lasts the ttl given at acquisition; with
/// [`Locker::auto_renew`](crate::Locker::auto_renew) it is renewed every
/// third of the ttl for as long as the guard lives.
///
/// Dropping the guard releases the lock in the background on the tokio
/// runtime the lock was acquired on; [`release`](Self::release) does it in
/// place and reports whether the lease was still held. A guard dropped after
/// its runtime has shut down does not panic: the lease then ends at its ttl.
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
/// let guard = locker.acquire("invoice:42", Duration::from_secs(10)).await?;
/// assert_eq!(guard.key(), "invoice:42");
/// let fence = guard.fence(); // hand this to the resource with every write
/// guard.release().await?;
///
/// let next = locker.acquire("invoice:42", Duration::from_secs(10)).await?;
/// assert!(next.fence() > fence);
/// # Ok(())
/// # }
/// ```
#[must_use = "if unused the lock is released at once"]
#[clippy::has_significant_drop]
pub struct LockGuard {
    /// `None` once [`release`](Self::release) or the drop has taken over,
    /// which consume the guard: always there for its public methods.
    parts: Option<Parts>,
}

struct Parts {
    held: LeaseRef,
    locker: Arc<LockerInner>,
    /// Where a release that needs I/O runs; `None` for stores in this
    /// process, which release on the spot.
    runtime: Option<Handle>,
}

/// Durations beyond u64 nanoseconds (584 years) are beyond `MAX_TTL`.
fn nanos(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX)
}

/// One acquisition, shared by its guard, its Locker's table of held keys
/// (for [`Locker::release`](crate::Locker::release)) and its renewal task.
pub(crate) struct HeldLease {
    pub(crate) key: SmolStr,
    token: Token,
    /// Set once, when the store grants the lease (the lease is made before
    /// the try, so that a store in this process can keep it as the holder).
    fence: AtomicU64,
    /// The `Locker` (with its clones) that owns the lease.
    pub(crate) owner: u64,
    /// Whether the owner's table of held keys lists it (stores outside the
    /// process); stores inside keep the
    /// [`Holder`](crate::backend::Holder) instead.
    pub(crate) listed: AtomicBool,
    /// The lease length of the last grant or extension, in nanoseconds:
    /// renewal keeps to what the holder last asked for.
    ttl_nanos: AtomicU64,
    /// Measured from before the request that granted or renewed the lease
    /// was sent, so the holder never believes in a lease the store has ended.
    deadline: Mutex<Deadline>,
    /// Lost: the holder can no longer count on the lock (a release says so
    /// through `op`).
    over: AtomicBool,
    /// How many `lost()` futures watch: a change nobody watches skips the
    /// notification, which the uncontended release would otherwise pay.
    watchers: AtomicU32,
    /// Whether the lease is released, or an operation on it under way.
    op: OpState,
    /// Whether it was ever scheduled for renewal: lets releases of leases
    /// that do not renew skip the renewal slot's lock.
    renews: AtomicBool,
    /// Made on first use: most leases are taken and released without
    /// anyone watching, renewing or waiting on them, and a lease that does
    /// not carry these is built (and moved into its allocation) faster.
    extras: OnceLock<Box<Extras>>,
}

/// The parts of a [`HeldLease`] that only some leases use.
struct Extras {
    /// Wakes `lost()` futures when the status changes.
    status_changed: Notify,
    /// Serialises renewals with the release (FIFO), so that a release always
    /// sees the revision of the last extension and never races one in
    /// flight.
    ops: tokio::sync::Mutex<()>,
    /// Where the lease waits in its locker's renewal schedule, if it does.
    renewal: Mutex<Option<Slot>>,
    /// The store's revision of the lease, where it differs from the fence
    /// (stores with revisions of their own); [`SAME_AS_FENCE`] otherwise.
    revision: AtomicU64,
}

impl Default for Extras {
    fn default() -> Self {
        Extras {
            status_changed: Notify::new(),
            ops: tokio::sync::Mutex::new(()),
            renewal: Mutex::new(None),
            revision: AtomicU64::new(SAME_AS_FENCE),
        }
    }
}

/// The revision of a lease whose store gives its fence as its revision, as
/// the in-memory store does: such a lease needs no extras to keep it.
const SAME_AS_FENCE: u64 = u64::MAX;

/// When a lease ends, on the clock its store is judged by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// A store in this process: the clock the store judges by too
    /// ([`Tick`]), read before the store reads it, so the holder's lease
    /// never ends after the store's.
    Coarse(Tick),
    /// A store behind I/O: the precise clock (tokio's, so that tests can
    /// pause it).
    Precise(Instant),
}

impl Deadline {
    /// Now, on the coarse clock.
    #[inline]
    pub(crate) fn coarse_now() -> Self {
        Deadline::Coarse(Tick::now())
    }

    /// Now, on the same clock as `self`.
    fn now_alike(self) -> Self {
        match self {
            Deadline::Coarse(_) => Deadline::coarse_now(),
            Deadline::Precise(_) => Deadline::Precise(Instant::now()),
        }
    }

    /// `ttl` after `self`. Leases are bounded by `MAX_TTL`, far inside both
    /// clocks' range; past it, the lease is taken to end at once, which can
    /// only make its holder more careful.
    fn plus(self, ttl: Duration) -> Self {
        match self {
            Deadline::Coarse(at) => Deadline::Coarse(at.after(ttl).unwrap_or(at)),
            Deadline::Precise(at) => Deadline::Precise(at.checked_add(ttl).unwrap_or(at)),
        }
    }

    /// How long until the deadline; zero once it has passed.
    fn remaining(self) -> Duration {
        match self {
            Deadline::Coarse(at) => at.remaining(),
            Deadline::Precise(at) => at.saturating_duration_since(Instant::now()),
        }
    }
}

/// After a timer has run out a lease that the coarse clock does not see over
/// yet, `lost()` checks again this many times, a millisecond apart (more than
/// the clock can lag), then trusts the timer: a paused test clock moves
/// tokio's timers but not the coarse clock.
const COARSE_LAG_CHECKS: u32 = 12;

impl HeldLease {
    /// A lease about to be asked for, from `start` (read before the store
    /// is); [`granted`](Self::granted) completes it.
    pub(crate) fn new(
        key: SmolStr,
        token: Token,
        owner: u64,
        ttl: Duration,
        start: Deadline,
    ) -> Self {
        HeldLease {
            key,
            token,
            fence: AtomicU64::new(0),
            owner,
            listed: AtomicBool::new(false),
            ttl_nanos: AtomicU64::new(nanos(ttl)),
            deadline: Mutex::new(start.plus(ttl)),
            over: AtomicBool::new(false),
            watchers: AtomicU32::new(0),
            op: OpState::default(),
            renews: AtomicBool::new(false),
            extras: OnceLock::new(),
        }
    }

    fn extras(&self) -> &Extras {
        self.extras.get_or_init(Box::default)
    }

    /// Records what the store granted.
    pub(crate) fn granted(&self, fence: u64, revision: u64) {
        self.fence.store(fence, Ordering::Release);
        self.set_revision(revision);
    }

    fn set_revision(&self, revision: u64) {
        // Extras made since would start from `SAME_AS_FENCE`: right only
        // while the revision is the fence.
        if revision != self.fence() || self.extras.get().is_some() {
            self.extras().revision.store(revision, Ordering::Release);
        }
    }

    fn revision(&self) -> u64 {
        match self.extras.get() {
            Some(extras) => match extras.revision.load(Ordering::Acquire) {
                SAME_AS_FENCE => self.fence(),
                revision => revision,
            },
            None => self.fence(),
        }
    }

    pub(crate) fn is_released(&self) -> bool {
        self.op.is_released()
    }

    pub(crate) fn fence(&self) -> u64 {
        self.fence.load(Ordering::Acquire)
    }

    pub(crate) fn lease(&self) -> Lease {
        Lease {
            token: self.token,
            fence: self.fence(),
            revision: self.revision(),
        }
    }

    /// Marks the lease as no longer to be counted on.
    pub(crate) fn end(&self) {
        self.over.store(true, Ordering::SeqCst);
        self.wake_watchers();
    }

    fn deadline(&self) -> Deadline {
        *crate::sync::lock(&self.deadline)
    }

    fn set_deadline(&self, deadline: Deadline) {
        *crate::sync::lock(&self.deadline) = deadline;
        self.wake_watchers();
    }

    /// Lost or released.
    fn is_over(&self) -> bool {
        self.over.load(Ordering::SeqCst) || self.is_released()
    }

    /// Wakes `lost()` futures, if any watch. A watcher counts itself before
    /// it reads the status and `released`, so one that this load misses
    /// reads what was written before it.
    fn wake_watchers(&self) {
        if self.watchers.load(Ordering::SeqCst) > 0 {
            // A watcher makes the extras before it counts itself.
            if let Some(extras) = self.extras.get() {
                extras.status_changed.notify_waiters();
            }
        }
    }

    /// Releases the lease in the store, once, whoever asks first (the guard,
    /// its drop, or [`Locker::release`](crate::Locker::release)).
    pub(crate) async fn release(this: LeaseRef, locker: Arc<LockerInner>) -> Result<(), LockError> {
        let Some(op) = this.op.begin(&this.extras().ops).await else {
            return Err(LockError::NotHeld);
        };
        op.end_released();
        this.forget(&locker);
        let outcome = locker.backend.release(&this.key, &this.lease()).await;
        this.settle(outcome)
    }

    /// [`release_now`](Self::release_now), after which the record goes back
    /// to its thread's pool; the record back when the release needs a
    /// future.
    fn release_here(
        this: LeaseRef,
        locker: &LockerInner,
    ) -> Result<Result<(), LockError>, LeaseRef> {
        match this.release_now(locker) {
            Some(released) => {
                pool::recycle(this);
                Ok(released)
            }
            None => Err(this),
        }
    }

    /// [`release`](Self::release) without a future, when the backend can
    /// answer on the spot and no renewal is under way; `None` otherwise,
    /// having changed nothing.
    fn release_now(&self, locker: &LockerInner) -> Option<Result<(), LockError>> {
        if self.listed.load(Ordering::Acquire) {
            // Granted through I/O: released the same way.
            return None;
        }
        if !self.op.release_now()? {
            return Some(Err(LockError::NotHeld));
        }
        let Some(outcome) = locker.backend.release_now(&self.key, &self.lease()) else {
            // A store that granted on the spot releases on the spot; were it
            // not to, the release goes the async way.
            self.op.unrelease();
            return None;
        };
        self.forget(locker);
        Some(self.settle(outcome))
    }

    /// What follows marking the lease released: renewal and the owner's
    /// records let go of it, and `lost()` futures wake (the op state itself
    /// tells them and `is_lost`: no status write).
    fn forget(&self, locker: &LockerInner) {
        self.stop_renewal(locker);
        self.wake_watchers();
        locker.forget(self);
    }

    fn settle(&self, outcome: Result<bool, LockError>) -> Result<(), LockError> {
        match outcome {
            Ok(true) => {
                tracing::debug!(key = %self.key, fence = self.fence(), "lock released");
                Ok(())
            }
            Ok(false) => {
                tracing::warn!(key = %self.key, fence = self.fence(), "lease was lost before release");
                Err(LockError::Lost)
            }
            Err(err) => {
                tracing::warn!(key = %self.key, fence = self.fence(), error = %err, "release failed");
                Err(err)
            }
        }
    }

    /// Keeps the lease alive until it is released or lost: renewed every
    /// third of its ttl by the locker's scheduler.
    pub(crate) fn start_renewal(
        this: &LeaseRef,
        locker: &Arc<LockerInner>,
        runtime: &Handle,
        sent_at: Instant,
    ) {
        let at = sent_at + this.ttl() / 3;
        locker.renewals.schedule(this, at, locker, runtime);
        // A release that came before the slot was recorded (a concurrent
        // `Locker::release(key)` finds the lease in the store as soon as it
        // is granted) saw no renewal to stop; the slot's lock orders the
        // two, so one of us cancels it.
        if this.is_released() {
            this.stop_renewal(locker);
        }
    }

    pub(crate) fn set_renewal_slot(&self, slot: Option<Slot>) {
        // Sequentially consistent, like the release state: a release that
        // misses this flag is one that `start_renewal` then sees.
        self.renews.store(true, Ordering::SeqCst);
        *crate::sync::lock(&self.extras().renewal) = slot;
    }

    fn stop_renewal(&self, locker: &LockerInner) {
        if !self.renews.load(Ordering::SeqCst) {
            return;
        }
        let slot = crate::sync::lock(&self.extras().renewal).take();
        if let Some(slot) = slot {
            locker.renewals.cancel(slot);
        }
    }

    /// One renewal, run by the scheduler when it is due; schedules the next.
    pub(crate) async fn renew_once(this: LeaseRef, locker: Arc<LockerInner>) {
        let ttl = this.ttl();
        let period = ttl / 3;
        let next = match this.extend(&locker, ttl).await {
            Ok(()) => Instant::now() + period,
            Err(LockError::Lost | LockError::NotHeld) => return,
            Err(err) => {
                let left = this.deadline().remaining();
                if left.is_zero() {
                    this.end();
                    tracing::warn!(key = %this.key, error = %err, "lease lost: renewal failed until it ran out");
                    return;
                }
                tracing::warn!(key = %this.key, error = %err, "lease renewal failed; retrying");
                // Retry well before the lease runs out, but never in a spin.
                Instant::now() + (period.min(left) / 2).max(BACKOFF_START)
            }
        };
        locker
            .renewals
            .schedule(&this, next, &locker, &Handle::current());
        // A release that came while this renewal ran may have missed the
        // new slot; the slot's lock orders the two, so one of us cancels it.
        if this.is_released() {
            this.stop_renewal(&locker);
        }
    }

    async fn extend(&self, locker: &LockerInner, ttl: Duration) -> Result<(), LockError> {
        let Some(_op) = self.op.begin(&self.extras().ops).await else {
            return Err(LockError::NotHeld);
        };
        let start = self.deadline().now_alike();
        match locker.backend.extend(&self.key, &self.lease(), ttl).await? {
            Some(revision) => {
                self.set_revision(revision);
                self.ttl_nanos.store(nanos(ttl), Ordering::Release);
                self.set_deadline(start.plus(ttl));
                Ok(())
            }
            None => {
                self.end();
                tracing::warn!(key = %self.key, fence = self.fence(), "lease lost");
                Err(LockError::Lost)
            }
        }
    }

    fn ttl(&self) -> Duration {
        Duration::from_nanos(self.ttl_nanos.load(Ordering::Acquire))
    }

    /// Ends a lease that the store has since granted to us again: it can
    /// only have run out, so its renewal must stop too.
    pub(crate) fn supersede(&self, locker: &LockerInner) {
        self.stop_renewal(locker);
        self.end();
    }

    /// Releases from a caller that may go away: on the spot when the backend
    /// can answer so, else a request that finishes even if the caller drops
    /// the future.
    pub(crate) async fn release_from(
        this: LeaseRef,
        locker: Arc<LockerInner>,
        runtime: Option<Handle>,
    ) -> Result<(), LockError> {
        let this = match HeldLease::release_here(this, &locker) {
            Ok(released) => return released,
            Err(this) => this,
        };
        let runtime = match runtime {
            Some(runtime) => runtime,
            None => Handle::try_current().map_err(LockError::unavailable)?,
        };
        // Boxed: a release on the spot should not carry (and move) the state
        // of one through I/O.
        let release = HeldLease::release(this, locker);
        Box::pin(RunToEnd::new(runtime, release, |_| async {})).await
    }

    fn is_lost(&self) -> bool {
        self.is_over() || self.deadline().remaining().is_zero()
    }
}

/// The store operations of one lease, and whether it is released, in one
/// atomic: the release of a store in this process is a single
/// compare-and-swap, and operations that await (renewals, a release through
/// I/O) queue on a tokio mutex, FIFO, and mark themselves busy.
#[derive(Default)]
struct OpState {
    state: AtomicU8,
}

const IDLE: u8 = 0;
const BUSY: u8 = 1;
const RELEASED: u8 = 2;

/// An operation under way; leaves the state idle, or released.
struct Op<'a> {
    state: &'a AtomicU8,
    then: u8,
    _queued: tokio::sync::MutexGuard<'a, ()>,
}

impl OpState {
    /// Sequentially consistent, like the watcher count, so that a `lost()`
    /// future that registers late still sees the release.
    fn is_released(&self) -> bool {
        self.state.load(Ordering::SeqCst) == RELEASED
    }

    /// Marks the lease released unless an operation is under way (`None`);
    /// `Some(false)` when it already was.
    fn release_now(&self) -> Option<bool> {
        match self
            .state
            .compare_exchange(IDLE, RELEASED, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => Some(true),
            Err(RELEASED) => Some(false),
            Err(_) => None,
        }
    }

    /// Takes back a [`release_now`](Self::release_now) whose store did not
    /// answer.
    fn unrelease(&self) {
        let _ = self
            .state
            .compare_exchange(RELEASED, IDLE, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Waits for the operations queued ahead on `queue` (the lease's only
    /// one); `None` once released.
    async fn begin<'a>(&'a self, queue: &'a tokio::sync::Mutex<()>) -> Option<Op<'a>> {
        let queued = queue.lock().await;
        // Only queued operations mark the state busy, and each leaves it
        // before the queue moves on: it is idle or released here.
        self.state
            .compare_exchange(IDLE, BUSY, Ordering::SeqCst, Ordering::SeqCst)
            .ok()?;
        Some(Op {
            state: &self.state,
            then: IDLE,
            _queued: queued,
        })
    }
}

impl Op<'_> {
    /// Ends the operation as the lease's release.
    fn end_released(mut self) {
        self.then = RELEASED;
    }
}

impl Drop for Op<'_> {
    fn drop(&mut self) {
        self.state.store(self.then, Ordering::SeqCst);
    }
}

/// Counts a `lost()` future as a watcher of its lease while it lives.
struct Watching<'a>(&'a HeldLease);

impl<'a> Watching<'a> {
    fn new(held: &'a HeldLease) -> Self {
        // Made first, so that a waker that sees the count sees them.
        held.extras();
        held.watchers.fetch_add(1, Ordering::SeqCst);
        Watching(held)
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl LockGuard {
    pub(crate) fn new(held: LeaseRef, locker: Arc<LockerInner>, runtime: Option<Handle>) -> Self {
        LockGuard {
            parts: Some(Parts {
                held,
                locker,
                runtime,
            }),
        }
    }

    /// The locked key.
    pub fn key(&self) -> &str {
        self.parts.as_ref().map_or("", |p| &p.held.key)
    }

    /// The key as a clone that shares the guard's storage.
    pub(crate) fn shared_key(&self) -> SmolStr {
        self.parts
            .as_ref()
            .map_or_else(SmolStr::default, |p| p.held.key.clone())
    }

    /// The fencing token: strictly greater than the fence of every earlier
    /// acquisition of this key, by any holder. Pass it with each write so the
    /// resource can refuse a write carrying a smaller fence than one it has
    /// already seen.
    pub fn fence(&self) -> u64 {
        self.parts.as_ref().map_or(0, |p| p.held.fence())
    }

    /// The lease length this lock was taken (and is renewed) with.
    pub fn ttl(&self) -> Duration {
        self.parts.as_ref().map_or(Duration::ZERO, |p| p.held.ttl())
    }

    /// Whether the lease is known to be over: lost to renewal failure, run
    /// out on this process's monotonic clock, or released.
    ///
    /// `false` is not a guarantee: a paused process may not know yet. Use the
    /// [fence](Self::fence) where that matters.
    pub fn is_lost(&self) -> bool {
        self.parts.as_ref().is_none_or(|p| p.held.is_lost())
    }

    /// Resolves when the lease is over: the store refused a renewal, the
    /// lease ran out on this process's clock, or the lock was released
    /// (through [`Locker::release`](crate::Locker::release)). Use it to stop
    /// work that must not outlive the lock.
    ///
    /// The returned future does not borrow the guard.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes the lease.
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
    /// let guard = locker.acquire("job", Duration::from_millis(50)).await?;
    /// tokio::select! {
    ///     _ = guard.lost() => println!("lease ran out: stop writing"),
    ///     _ = tokio::time::sleep(Duration::from_secs(5)) => unreachable!(),
    /// }
    /// assert!(guard.is_lost());
    /// # Ok(())
    /// # }
    /// ```
    pub fn lost(&self) -> impl Future<Output = ()> + Send + use<> {
        let held = self.parts.as_ref().map(|p| p.held.clone());
        async move {
            let Some(held) = held else {
                return;
            };
            let _watching = Watching::new(&held);
            // The deadline a timer has already run out, and the checks left
            // before that timer is trusted (see `COARSE_LAG_CHECKS`).
            let mut timed_out = None;
            let mut lag_checks = COARSE_LAG_CHECKS;
            loop {
                // `notify_waiters` reaches a `Notified` from its creation, so
                // a change between the read below and the wait is not missed.
                let changed = held.extras().status_changed.notified();
                let deadline = held.deadline();
                let left = deadline.remaining();
                if held.is_over() || left.is_zero() {
                    return;
                }
                let pause = if timed_out == Some(deadline) {
                    if lag_checks == 0 {
                        // Said over here, so that `is_lost` agrees.
                        held.end();
                        return;
                    }
                    lag_checks -= 1;
                    Duration::from_millis(1)
                } else {
                    left
                };
                tokio::select! {
                    () = tokio::time::sleep(pause) => timed_out = Some(deadline),
                    () = changed => {}
                }
            }
        }
    }

    /// Restarts the lease at `ttl` from now.
    ///
    /// # Errors
    ///
    /// [`LockError::Lost`] when the store no longer holds this lease (it ran
    /// out or was taken over); [`LockError::InvalidTtl`] for a ttl out of
    /// bounds; [`LockError::Unavailable`] when the store can not be reached.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lock::Locker;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_lock::LockError> {
    /// let locker = Locker::in_memory();
    /// let guard = locker.acquire("job", Duration::from_secs(1)).await?;
    /// guard.extend(Duration::from_secs(30)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn extend(&self, ttl: Duration) -> Result<(), LockError> {
        crate::key::validate_ttl(ttl)?;
        let parts = self.parts.as_ref().ok_or(LockError::NotHeld)?;
        parts.held.extend(&parts.locker, ttl).await
    }

    /// Releases the lock now.
    ///
    /// # Errors
    ///
    /// [`LockError::Lost`] when the lease had already been lost (the lock may
    /// belong to someone else now, and was left alone);
    /// [`LockError::NotHeld`] when it was already released through
    /// [`Locker::release`](crate::Locker::release);
    /// [`LockError::Unavailable`] when the store could not be reached (the
    /// lease then ends at its ttl).
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future does not stop the release: it finishes
    /// in the background.
    pub async fn release(mut self) -> Result<(), LockError> {
        let Some(Parts {
            held,
            locker,
            runtime,
        }) = self.parts.take()
        else {
            return Err(LockError::NotHeld);
        };
        HeldLease::release_from(held, locker, runtime).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(Parts {
            held,
            locker,
            runtime,
        }) = self.parts.take()
            && !held.is_released()
            && let Err(held) = HeldLease::release_here(held, &locker)
        {
            // A runtime that has shut down drops the task instead of running
            // it, and without any runtime nothing is spawned: no panic, and
            // the lease ends at its ttl.
            if let Some(runtime) = runtime.or_else(|| Handle::try_current().ok()) {
                runtime.spawn(async move {
                    let _ = HeldLease::release(held, locker).await;
                });
            }
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key())
            .field("fence", &self.fence())
            .field("lost", &self.is_lost())
            .finish()
    }
}
