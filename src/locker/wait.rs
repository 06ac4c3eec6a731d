//! The wait strategy shared by every backend: a FIFO queue per key inside
//! the process, then wake-ups or backoff at the store.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use smol_str::SmolStr;
use tokio::time::Instant;
use tracing::Instrument;

use super::{
    Locker,
    attempt::{Asking, current_runtime},
};
use crate::{
    LockError, LockGuard,
    backend::{Subscription, Token},
    key::{KeyHasher, owned_key, validate_key, validate_ttl},
    metrics::Started,
};

/// The first wait between two tries while the holder gives no wake-up.
pub const BACKOFF_START: Duration = Duration::from_millis(5);
/// The longest wait between two tries; the backoff doubles up to it.
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// One FIFO queue per key that has waiters in this process; the task
/// holding a key's gate is the only one talking to the store for it.
#[derive(Default)]
pub(super) struct LocalQueue {
    gates: DashMap<SmolStr, Arc<Gate>, KeyHasher>,
    /// Live tickets: lets the uncontended path skip the `gates` lookup.
    queued: AtomicUsize,
}

/// Held by the key's head waiter. `true` when the previous head left this
/// locker's place in the store's queue (see
/// [`AcquireRequest::queued_behind`](crate::backend::AcquireRequest::queued_behind)):
/// the next head waits for its turn without a try of its own.
type Gate = tokio::sync::Mutex<bool>;

impl LocalQueue {
    pub(super) fn len(&self) -> usize {
        self.gates.len()
    }

    /// Whether tasks of this process wait for `key` (they go first).
    fn has_waiters(&self, key: &str) -> bool {
        self.queued.load(Ordering::Acquire) != 0 && self.gates.contains_key(key)
    }
}

/// A place in a key's local queue; the queue's entry goes with its last
/// ticket, so keys nobody waits for leave nothing behind.
struct QueueTicket<'a> {
    queue: &'a LocalQueue,
    key: &'a SmolStr,
    gate: Arc<Gate>,
}

impl<'a> QueueTicket<'a> {
    fn join(queue: &'a LocalQueue, key: &'a SmolStr) -> Self {
        queue.queued.fetch_add(1, Ordering::AcqRel);
        let gate = queue.gates.entry(key.clone()).or_default().clone();
        QueueTicket { queue, key, gate }
    }
}

impl Drop for QueueTicket<'_> {
    fn drop(&mut self) {
        // Clones are only made under the map's shard lock, which `remove_if`
        // holds: two references (the map's and ours) mean nobody else waits.
        self.queue
            .gates
            .remove_if(&**self.key, |_, gate| Arc::strong_count(gate) == 2);
        self.queue.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The head waiter's subscription, which tells the backend on drop whether
/// this locker gave up on the key.
struct Waiting<'a> {
    subscription: Subscription,
    ticket: &'a QueueTicket<'a>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // Clones of the gate are the map's, ours and one per other waiter.
        if Arc::strong_count(&self.ticket.gate) > 2 {
            self.subscription.done();
        }
    }
}

impl Locker {
    /// Validates, tries once, and waits if the key is busy.
    pub(super) async fn lock(
        &self,
        key: &str,
        ttl: Duration,
        deadline: Option<Instant>,
    ) -> Result<LockGuard, LockError> {
        validate_key(key)?;
        validate_ttl(ttl)?;
        super::scope::refuse_reentry(self.backend_id(), key)?;
        let started = Started::now();
        let locked = self.lock_checked(owned_key(key), ttl, deadline).await;
        self.observe(key, started, &locked, true);
        locked
    }

    /// [`lock`](Self::lock) for a key and ttl already checked.
    pub(crate) async fn lock_checked(
        &self,
        key: SmolStr,
        ttl: Duration,
        deadline: Option<Instant>,
    ) -> Result<LockGuard, LockError> {
        let mut remaining = None;
        let mut seen_busy = false;
        // Nobody of ours is queued: try at once (queued waiters go first).
        if !self.queue.has_waiters(&key) {
            match self.attempt(&key, ttl, Asking::Once).await? {
                Ok(guard) => return Ok(guard),
                Err(refused) => (remaining, seen_busy) = (refused.remaining, true),
            }
        }
        tracing::debug!(?key, "lock contended; waiting");
        let span = tracing::debug_span!("lock_wait", ?key);
        // Boxed: the waiting state is large, and the uncontended path should
        // not carry (and move) it.
        let waiting = Box::pin(
            self.wait(key, ttl, deadline, remaining, seen_busy)
                .instrument(span),
        );
        // A shutdown ends every wait at once; the wait is cancel safe.
        tokio::select! {
            biased;
            locked = waiting => locked,
            () = self.owner.closed() => Err(LockError::ShutDown),
        }
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
        let busy = |retry_after| LockError::Busy { retry_after };
        let ticket = QueueTicket::join(&self.queue, &key);
        let Some(mut turn) = until(deadline, ticket.gate.lock()).await else {
            return Err(busy(remaining));
        };
        // The previous head left our place in the store's queue: its turn
        // comes as a wake-up, with no try needed to join.
        let place_kept = std::mem::take(&mut *turn);
        let mut store_queues = place_kept;
        let mut skip_try = place_kept;
        // Then the key is held, by the head before us.
        seen_busy |= place_kept;
        // Subscribed before every waiting try, so that a release between a
        // busy answer and the wait below is never missed. Store calls count
        // against the deadline too: a try that is cut off finishes in the
        // background and gives back what it took.
        let subscribed = until(deadline, self.backend().subscribe(&key)).await;
        let wakeups = match subscribed.ok_or(busy(remaining))? {
            Ok(wakeups) => wakeups,
            Err(err) => {
                tracing::warn!(?key, error = %err, "no wake-ups for this wait; polling");
                Subscription::never()
            }
        };
        // However the wait ends, the backend hears whether this locker gave
        // up on the key: not when it acquired, nor when the next of its
        // waiters takes over the wait.
        let mut wakeups = Waiting {
            subscription: wakeups,
            ticket: &ticket,
        };
        let mut backoff = BACKOFF_START;
        loop {
            let mut queued = std::mem::take(&mut skip_try);
            if !queued {
                // Clones of the gate are the map's, ours and one per other
                // waiter behind us.
                let behind = Arc::strong_count(&ticket.gate) > 2;
                let asking = Asking::Waiting { behind };
                let attempt = until(deadline, self.attempt(&key, ttl, asking)).await;
                match attempt.ok_or(busy(remaining))? {
                    Ok(Ok(guard)) => {
                        // A store that queues keeps our place for the next.
                        *turn = behind && store_queues;
                        wakeups.subscription.done();
                        return Ok(guard);
                    }
                    Ok(Err(refused)) => {
                        (remaining, seen_busy, queued) = (refused.remaining, true, refused.queued);
                        store_queues |= queued;
                    }
                    // Another count is the caller's error, not the store's.
                    Err(err @ LockError::PermitsMismatch { .. }) => return Err(err),
                    Err(err) if !seen_busy => return Err(err),
                    Err(err) => {
                        tracing::warn!(?key, error = %err, "lock store failed while waiting; retrying");
                        remaining = None;
                    }
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
                    () = wakeups.subscription.changed() => true,
                    () = tokio::time::sleep(pause) => false,
                }
            })
            .await;
            match woken {
                None => return Err(busy(remaining)),
                Some(true) => {
                    backoff = BACKOFF_START;
                    shuffle().await;
                }
                Some(false) => backoff = (backoff * 2).min(BACKOFF_MAX),
            }
        }
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

/// Runs `future` until `deadline`; `None` if the deadline came first.
async fn until<T>(deadline: Option<Instant>, future: impl Future<Output = T>) -> Option<T> {
    match deadline {
        None => Some(future.await),
        Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
    }
}
