//! The record of one held lease, and its state: held, renewed, lost or
//! released.
//!
//! A record is made when the store grants a lease, and is shared by the
//! guard, its owner's bookkeeping and the renewal schedule. The holder
//! measures the lease on tokio's clock from the send time of the request
//! that granted (or last renewed) it, which is never later than when the
//! store started it: so the holder stops counting on the lease no later
//! than the store can hand the key on.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use smol_str::SmolStr;
use tokio::{sync::Notify, time::Instant};

use crate::{
    LockError,
    backend::{AcquireRequest, Attempt, Backend, Lease, LeaseKind, Token},
};

/// Where a lease waits in its owner's renewal schedule: its due time and a
/// tie-breaker.
pub(crate) type RenewalSlot = (Instant, u64);

/// When a lease renews, and how long its holder counts on it without a
/// successful renewal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Timing {
    /// The renewal interval; a third of the ttl when `None`.
    pub(crate) every: Option<Duration>,
    /// How long after the send time of its last successful grant or renewal
    /// the holder counts the lease lost: the ttl when `None`, and never more.
    pub(crate) deadline: Option<Duration>,
}

impl Timing {
    pub(crate) fn every(&self, ttl: Duration) -> Duration {
        self.every.unwrap_or(ttl / 3).min(ttl)
    }

    pub(crate) fn deadline(&self, ttl: Duration) -> Duration {
        self.deadline.unwrap_or(ttl).min(ttl)
    }
}

/// One held lease.
pub(crate) struct Record {
    key: SmolStr,
    token: Token,
    kind: LeaseKind,
    fence: u64,
    /// The store's revision of the lease; moved on by each extension.
    revision: AtomicU64,
    /// The lease length of the last grant or extension, in nanoseconds:
    /// renewal keeps to what the holder last asked for.
    ttl_nanos: AtomicU64,
    timing: Timing,
    /// When the holder stops counting on the lease.
    deadline: Mutex<Instant>,
    /// Idle, an operation under way, or released.
    state: AtomicU8,
    /// Lost: the store refused a renewal, or renewal failed until the
    /// deadline.
    lost: AtomicBool,
    /// What only leases that renew, are watched or release through I/O
    /// use; made on first use, since most locks are taken and released on
    /// the spot with none of it (and a record without it is built faster).
    busy: OnceLock<Box<Busy>>,
    /// Whether a `lost()` future ever watched: a change nobody watches
    /// skips waking, which would otherwise cost every release a lock.
    watched: AtomicBool,
    /// Whether it was ever scheduled for renewal: lets releases of leases
    /// that do not renew skip the slot's lock.
    renews: AtomicBool,
}

#[derive(Default)]
struct Busy {
    /// Serialises the operations that await (renewals, a release through
    /// I/O), FIFO: a release always sees the revision of the last extension
    /// and never races one in flight.
    ops: tokio::sync::Mutex<()>,
    /// Wakes `lost()` futures when the state or deadline changes.
    changed: Notify,
    /// Where the lease waits in the renewal schedule, if it does.
    renewal: Mutex<Option<RenewalSlot>>,
    /// Set when renewal must stop at an instant (a request's longest
    /// hold): its holder may stop looking, so the lease must run out on its
    /// own.
    renews_until: OnceLock<Instant>,
}

const IDLE: u8 = 0;
const BUSY: u8 = 1;
const RELEASED: u8 = 2;

/// Durations beyond u64 nanoseconds (584 years) are beyond `MAX_TTL`.
fn nanos(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX)
}

/// `ttl` after `start`; at `start` past the clock's range, which can only
/// make the holder more careful (validated ttls are far inside it).
fn after(start: Instant, ttl: Duration) -> Instant {
    start.checked_add(ttl).unwrap_or(start)
}

/// What a release came to, logged the same way wherever it ran.
pub(crate) fn settle_release(
    record: &Record,
    outcome: Result<bool, LockError>,
) -> Result<(), LockError> {
    let (key, fence) = (&record.key, record.fence);
    match outcome {
        Ok(true) => {
            tracing::debug!(?key, fence, "lock released");
            Ok(())
        }
        Ok(false) => {
            tracing::warn!(?key, fence, "lease was lost before release");
            Err(LockError::Lost)
        }
        Err(err) => {
            tracing::warn!(?key, fence, error = %err, "release failed");
            Err(err)
        }
    }
}

impl Record {
    /// A lease the store granted with `fence` and `revision`, to a request
    /// sent at `sent_at`.
    pub(crate) fn new(
        key: SmolStr,
        (token, kind): (Token, LeaseKind),
        (fence, revision): (u64, u64),
        ttl: Duration,
        timing: Timing,
        sent_at: Instant,
    ) -> Arc<Self> {
        Arc::new(Record {
            key,
            token,
            kind,
            fence,
            revision: AtomicU64::new(revision),
            ttl_nanos: AtomicU64::new(nanos(ttl)),
            timing,
            deadline: Mutex::new(after(sent_at, timing.deadline(ttl))),
            state: AtomicU8::new(IDLE),
            lost: AtomicBool::new(false),
            busy: OnceLock::new(),
            watched: AtomicBool::new(false),
            renews: AtomicBool::new(false),
        })
    }

    fn busy(&self) -> &Busy {
        self.busy.get_or_init(Box::default)
    }

    pub(crate) fn key(&self) -> &SmolStr {
        &self.key
    }

    pub(crate) fn fence(&self) -> u64 {
        self.fence
    }

    pub(crate) fn ttl(&self) -> Duration {
        Duration::from_nanos(self.ttl_nanos.load(Ordering::Acquire))
    }

    /// How long after a successful grant or renewal the next renewal is due.
    pub(crate) fn renew_every(&self) -> Duration {
        self.timing.every(self.ttl())
    }

    pub(crate) fn lease(&self) -> Lease {
        Lease::granted(
            self.token,
            self.kind,
            self.fence,
            self.revision.load(Ordering::Acquire),
        )
    }

    /// When the request of its last grant or renewal was sent (what its
    /// renewals are timed from).
    pub(crate) fn renewed_at(&self) -> Instant {
        let deadline = *crate::sync::lock(&self.deadline);
        deadline
            .checked_sub(self.timing.deadline(self.ttl()))
            .unwrap_or(deadline)
    }

    /// How long until the holder stops counting on the lease; zero once it
    /// has.
    pub(crate) fn remaining(&self) -> Duration {
        crate::sync::lock(&self.deadline).saturating_duration_since(Instant::now())
    }

    fn is_released(&self) -> bool {
        self.state.load(Ordering::SeqCst) == RELEASED
    }

    /// Released by its holder, without having been lost first.
    pub(crate) fn was_given_up(&self) -> bool {
        self.is_released() && !self.lost.load(Ordering::SeqCst)
    }

    /// Lost or released.
    fn is_over(&self) -> bool {
        self.lost.load(Ordering::SeqCst) || self.is_released()
    }

    /// Over, or past the holder's deadline.
    pub(crate) fn is_lost(&self) -> bool {
        self.is_over() || self.remaining().is_zero()
    }

    /// [`is_lost`](Self::is_lost) at `now`, for a caller that checks
    /// several things against one reading of the clock.
    pub(crate) fn is_lost_at(&self, now: Instant) -> bool {
        self.is_over() || *crate::sync::lock(&self.deadline) <= now
    }

    /// Marks the lease as no longer to be counted on.
    pub(crate) fn mark_lost(&self) {
        self.lost.store(true, Ordering::SeqCst);
        self.wake_watchers();
    }

    /// Wakes `lost()` futures, if any ever watched. Sequentially
    /// consistent, like the state: a watcher marks itself before it reads
    /// the state, so one that this load misses reads what was written
    /// before it.
    fn wake_watchers(&self) {
        // A watcher makes the busy parts before it marks itself.
        if self.watched.load(Ordering::SeqCst)
            && let Some(busy) = self.busy.get()
        {
            busy.changed.notify_waiters();
        }
    }

    /// Resolves when the lease is over (see [`is_lost`](Self::is_lost)).
    pub(crate) fn lost(self: &Arc<Self>) -> impl Future<Output = ()> + Send + use<> {
        let record = self.clone();
        async move {
            let changes = &record.busy().changed;
            record.watched.store(true, Ordering::SeqCst);
            loop {
                // `notify_waiters` reaches a `Notified` from its creation, so
                // a change between the reads below and the wait is not missed.
                let changed = changes.notified();
                let left = record.remaining();
                if record.is_over() || left.is_zero() {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(left) => {}
                    () = changed => {}
                }
            }
        }
    }

    /// Releases at once through `release` (the store's answer on the spot,
    /// or `None` where it has none), unless an operation is under way.
    /// `None`: nothing changed, the release must queue; `Some(None)`: it was
    /// already released; `Some(Some(answer))`: released.
    ///
    /// Marked released before the store answers, so that the uncontended
    /// release is one compare-and-swap; a store that turns out to have no
    /// answer on the spot gets the lease back idle, for the release to
    /// queue (what saw it released meanwhile saw a release under way).
    pub(crate) fn release_here<R>(&self, release: impl FnOnce() -> Option<R>) -> Option<Option<R>> {
        match self
            .state
            .compare_exchange(IDLE, RELEASED, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => {}
            Err(RELEASED) => return Some(None),
            Err(_) => return None,
        }
        let Some(answer) = release() else {
            let _ = self
                .state
                .compare_exchange(RELEASED, IDLE, Ordering::SeqCst, Ordering::SeqCst);
            return None;
        };
        self.wake_watchers();
        Some(Some(answer))
    }

    /// Waits for the operations queued ahead, then marks the lease
    /// released; `false` when it already was.
    pub(crate) async fn release_queued(&self) -> bool {
        let Some(mut op) = self.begin().await else {
            return false;
        };
        op.then = RELEASED;
        drop(op);
        self.wake_watchers();
        true
    }

    /// Waits for the operations queued ahead; `None` once released.
    async fn begin(&self) -> Option<Op<'_>> {
        let queued = self.busy().ops.lock().await;
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

    /// Restarts the lease at `ttl` from now in `backend`; a `renewal` only until its end.
    pub(crate) async fn extend(
        &self,
        backend: &dyn Backend,
        ttl: Duration,
        renewal: bool,
    ) -> Result<(), LockError> {
        let Some(_op) = self.begin().await else {
            return Err(LockError::NotHeld);
        };
        // In the queue: none goes out once `stop_renewal` has had its turn.
        if renewal && self.renews_past(Instant::now()) {
            return Err(LockError::NotHeld);
        }
        let sent_at = Instant::now();
        match backend.extend(&self.key, &self.lease(), ttl).await? {
            Some(revision) => {
                self.restarted(revision, ttl, sent_at);
                Ok(())
            }
            None => {
                self.mark_lost();
                tracing::warn!(key = ?self.key, fence = self.fence, "lease lost");
                Err(LockError::Lost)
            }
        }
    }

    /// The store restarted the lease at `ttl`, under `revision`, for a
    /// request sent at `sent_at`.
    fn restarted(&self, revision: u64, ttl: Duration, sent_at: Instant) {
        self.revision.store(revision, Ordering::Release);
        self.ttl_nanos.store(nanos(ttl), Ordering::Release);
        *crate::sync::lock(&self.deadline) = after(sent_at, self.timing.deadline(ttl));
        self.wake_watchers();
    }

    /// Asks the store for the lease again with its own token, storing
    /// `value` with it: the lease restarts at its ttl and keeps its fence.
    ///
    /// A store that lost the lease may grant the key afresh, under a new
    /// fence: that grant is given back, and the lease counts as lost, like
    /// one the key was taken from.
    pub(crate) async fn regrant(
        &self,
        backend: &dyn Backend,
        value: &str,
    ) -> Result<(), LockError> {
        let Some(_op) = self.begin().await else {
            return Err(LockError::NotHeld);
        };
        if self.is_lost() {
            return Err(LockError::Lost);
        }
        let ttl = self.ttl();
        let request = AcquireRequest::new(&self.key, self.token, ttl)
            .value(Some(value))
            .kind(self.kind);
        let sent_at = Instant::now();
        match backend.try_acquire(&request).await? {
            Attempt::Acquired { fence, revision } if fence == self.fence => {
                self.restarted(revision, ttl, sent_at);
                return Ok(());
            }
            Attempt::Acquired { fence, revision } => {
                let fresh = Lease::granted(self.token, self.kind, fence, revision);
                if let Err(err) = backend.release(&self.key, &fresh).await {
                    tracing::debug!(key = ?self.key, error = %err, "could not give back a fresh grant; it ends at its ttl");
                }
            }
            Attempt::Busy { .. } | Attempt::Queued { .. } => {}
        }
        self.mark_lost();
        tracing::warn!(key = ?self.key, fence = self.fence, "lease lost");
        Err(LockError::Lost)
    }

    /// Records the lease's place in the renewal schedule; `false` (nothing
    /// recorded) once it is released, so that a release and a renewal being
    /// scheduled never miss each other: the release marks the state first,
    /// then takes the slot under the same lock.
    pub(crate) fn set_renewal(&self, slot: RenewalSlot) -> bool {
        // Before the check below: a release that misses this flag is one
        // whose mark the check then sees.
        self.renews.store(true, Ordering::SeqCst);
        let mut current = crate::sync::lock(&self.busy().renewal);
        if self.is_released() {
            return false;
        }
        *current = Some(slot);
        true
    }

    /// Renews the lease no more after `until`, whoever holds it: the lease
    /// then runs out one ttl after its last renewal at the latest. Only the
    /// first end set counts; a lease that does not renew has none to set.
    pub(crate) fn renew_until(&self, until: Instant) {
        // Scheduled at the grant, before the holder can get here: a lease
        // not marked now never renews.
        if self.renews.load(Ordering::SeqCst) {
            let _ = self.busy().renews_until.set(until);
        }
    }

    /// Renews the lease no more from now on ([`renew_until`](Self::renew_until)),
    /// once a renewal under way has answered; takes its schedule slot.
    pub(crate) async fn stop_renewal(&self) -> Option<RenewalSlot> {
        let _queued = self.begin().await;
        self.renew_until(Instant::now());
        self.take_renewal()
    }

    /// Whether renewing at `at` would go past the end set by
    /// [`renew_until`](Self::renew_until).
    pub(crate) fn renews_past(&self, at: Instant) -> bool {
        self.busy
            .get()
            .and_then(|busy| busy.renews_until.get())
            .is_some_and(|until| at > *until)
    }

    /// Takes the lease's place in the renewal schedule, if it has one.
    pub(crate) fn take_renewal(&self) -> Option<RenewalSlot> {
        if !self.renews.load(Ordering::SeqCst) {
            return None;
        }
        // Made by `set_renewal`, which set the flag.
        let busy = self.busy.get()?;
        crate::sync::lock(&busy.renewal).take()
    }
}

/// Resolves when any of `leases` is over, never for none; borrows nothing.
pub(crate) fn any_lost(
    leases: impl IntoIterator<Item = Arc<Record>>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let lost: Vec<_> = leases.into_iter().map(|l| Box::pin(l.lost())).collect();
    Box::pin(async move {
        if lost.is_empty() {
            std::future::pending().await
        }
        futures_util::future::select_all(lost).await;
    })
}

/// An operation under way; leaves the state idle, or released.
struct Op<'a> {
    state: &'a AtomicU8,
    then: u8,
    _queued: tokio::sync::MutexGuard<'a, ()>,
}

impl Drop for Op<'_> {
    fn drop(&mut self) {
        self.state.store(self.then, Ordering::SeqCst);
    }
}
