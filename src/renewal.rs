//! Lease renewal for every lease of one owner: one scheduler task, instead
//! of one task per lease. It knows leases and their backend, nothing of who
//! holds them.
//!
//! Most locks (an HTTP request's, say) are released long before their first
//! renewal is due, so scheduling a renewal must cost next to nothing: an
//! entry in a time-ordered map, removed again at release. The scheduler
//! sleeps until the earliest entry is due and is woken only when a new entry
//! is due before that; each due renewal runs as a task of its own.
//!
//! A lease may have an end to its renewal (a request's longest hold, whose
//! holder may never look at the lease again): the scheduler renews it no
//! more after that instant and lets it run out, with no timer of its own.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{runtime::Handle, sync::Notify, task::AbortHandle, time::Instant};

use crate::{
    LockError,
    backend::Backend,
    lease::{Record, RenewalSlot},
    metrics::Metrics,
};

/// The shortest wait before a failed renewal is tried again.
const RETRY_MIN: Duration = Duration::from_millis(5);

pub(crate) struct Renewals {
    shared: Arc<Shared>,
    /// The scheduler, started by the first lease that asks for renewal, and
    /// again should the runtime it ran on have shut down; `Err` once
    /// [`stop`](Self::stop) was called, never to start again.
    task: Mutex<Result<Option<AbortHandle>, Stopped>>,
}

/// The scheduler was stopped for good.
struct Stopped;

struct Shared {
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    schedule: Mutex<Schedule>,
    wake: Notify,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Schedule {
    /// The leases, held until they are due or cancelled: every way a lease
    /// ends (release, loss) cancels its slot.
    due: BTreeMap<RenewalSlot, Arc<Record>>,
    /// When the scheduler looks next; `None` while it waits to be woken.
    looks_at: Option<Instant>,
}

impl Renewals {
    pub(crate) fn new(backend: Arc<dyn Backend>, metrics: Arc<Metrics>) -> Self {
        Renewals {
            shared: Arc::new(Shared {
                backend,
                metrics,
                schedule: Mutex::default(),
                wake: Notify::new(),
                next_id: AtomicU64::new(0),
            }),
            task: Mutex::new(Ok(None)),
        }
    }

    /// Renews `record` at `at`, starting the scheduler on `runtime` if it
    /// does not run.
    pub(crate) fn schedule(&self, record: &Arc<Record>, at: Instant, runtime: &Handle) {
        {
            let mut task = crate::sync::lock(&self.task);
            let Ok(task) = &mut *task else {
                return;
            };
            if task.as_ref().is_none_or(AbortHandle::is_finished) {
                let shared = self.shared.clone();
                *task = Some(runtime.spawn(run(shared)).abort_handle());
            }
        }
        self.shared.insert(record, at);
    }

    /// Stops the scheduler for good: nothing is renewed from now on, and
    /// leases scheduled later are left alone.
    pub(crate) fn stop(&self) {
        let task = std::mem::replace(&mut *crate::sync::lock(&self.task), Err(Stopped));
        if let Ok(Some(task)) = task {
            task.abort();
        }
        self.shared.lock().due.clear();
    }

    /// Takes a lease out of the schedule (it was released).
    pub(crate) fn cancel(&self, slot: RenewalSlot) {
        self.shared.lock().due.remove(&slot);
    }

    /// How many leases wait for renewal.
    pub(crate) fn len(&self) -> usize {
        self.shared.lock().due.len()
    }
}

impl Drop for Renewals {
    fn drop(&mut self) {
        if let Ok(Some(task)) = &*crate::sync::lock(&self.task) {
            task.abort();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Schedule> {
        // Every step leaves the map consistent.
        crate::sync::lock(&self.schedule)
    }

    fn insert(&self, record: &Arc<Record>, at: Instant) {
        let slot = (at, self.next_id.fetch_add(1, Ordering::Relaxed));
        let wake = {
            let mut schedule = self.lock();
            schedule.due.insert(slot, record.clone());
            let wake = schedule.looks_at.is_none_or(|looks_at| at < looks_at);
            if wake {
                schedule.looks_at = Some(at);
            }
            wake
        };
        if !record.set_renewal(slot) {
            // Released meanwhile: its release saw no slot to cancel.
            self.lock().due.remove(&slot);
            return;
        }
        if wake {
            // A stored permit if the scheduler is not waiting yet: no lost
            // wake-up.
            self.wake.notify_one();
        }
    }

    /// One renewal, when it is due; schedules the next.
    async fn renew(self: Arc<Self>, record: Arc<Record>) {
        let every = record.renew_every();
        let extended = record.extend(&*self.backend, record.ttl(), true).await;
        // Released or past its end meanwhile is no failure.
        if !matches!(extended, Err(LockError::NotHeld)) {
            self.metrics.renewed(record.key(), extended.is_ok());
        }
        let next = match extended {
            Ok(()) => Instant::now() + every,
            Err(LockError::Lost | LockError::NotHeld) => return,
            Err(err) => {
                let left = record.remaining();
                if left.is_zero() {
                    record.mark_lost();
                    tracing::warn!(key = ?record.key(), error = %err, "lease lost: renewal failed until its deadline");
                    return;
                }
                tracing::warn!(key = ?record.key(), error = %err, "lease renewal failed; retrying");
                // Retry well before the deadline, but never in a spin.
                Instant::now() + (every.min(left) / 2).max(RETRY_MIN)
            }
        };
        if record.renews_past(next) {
            return;
        }
        self.insert(&record, next);
    }
}

async fn run(shared: Arc<Shared>) {
    loop {
        let now = Instant::now();
        let (due, next) = {
            let mut schedule = shared.lock();
            let later = schedule.due.split_off(&(now, u64::MAX));
            let due = std::mem::replace(&mut schedule.due, later);
            let next = schedule.due.keys().next().map(|(at, _)| *at);
            schedule.looks_at = next;
            (due, next)
        };
        for record in due.into_values() {
            tokio::spawn(shared.clone().renew(record));
        }
        match next {
            Some(next) => {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    () = shared.wake.notified() => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}
