//! Lease renewal for every guard of one `Locker`: one scheduler task per
//! locker, instead of one task per guard.
//!
//! Most locks (an HTTP request's, say) are released long before their first
//! renewal is due, so scheduling a renewal must cost next to nothing: an
//! entry in a time-ordered map, removed again at release. The scheduler
//! sleeps until the earliest entry is due and is woken only when a new entry
//! is due before that; each due renewal runs as a task of its own.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{runtime::Handle, sync::Notify, task::AbortHandle, time::Instant};

use crate::{guard::HeldLease, locker::LockerInner, pool::LeaseRef};

/// Where a lease waits in the schedule: its due time and a tie-breaker.
pub(crate) type Slot = (Instant, u64);

#[derive(Default)]
pub(crate) struct Renewals {
    shared: Arc<Shared>,
    /// The scheduler, started by the first lease that asks for renewal.
    task: OnceLock<AbortHandle>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<Schedule>,
    wake: Notify,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Schedule {
    /// The leases, held until they are due or cancelled: every way a lease
    /// ends (release, loss, a superseding grant) cancels its slot.
    due: BTreeMap<Slot, LeaseRef>,
    /// When the scheduler looks next; `None` while it waits to be woken.
    looks_at: Option<Instant>,
}

impl Renewals {
    /// Renews `held` at `at`, starting the scheduler on `runtime` if needed.
    pub(crate) fn schedule(
        &self,
        held: &LeaseRef,
        at: Instant,
        locker: &Arc<LockerInner>,
        runtime: &Handle,
    ) {
        let slot = (at, self.shared.next_id.fetch_add(1, Ordering::Relaxed));
        let wake = {
            let mut schedule = self.shared.lock();
            schedule.due.insert(slot, held.clone());
            let wake = schedule.looks_at.is_none_or(|looks_at| at < looks_at);
            if wake {
                schedule.looks_at = Some(at);
            }
            wake
        };
        held.set_renewal_slot(Some(slot));
        self.task.get_or_init(|| {
            runtime
                .spawn(run(self.shared.clone(), Arc::downgrade(locker)))
                .abort_handle()
        });
        if wake {
            // A stored permit if the scheduler is not waiting yet: no lost
            // wake-up.
            self.shared.wake.notify_one();
        }
    }

    /// Takes a lease out of the schedule (it was released or superseded).
    pub(crate) fn cancel(&self, slot: Slot) {
        self.shared.lock().due.remove(&slot);
    }

    /// How many leases wait for renewal.
    pub(crate) fn len(&self) -> usize {
        self.shared.lock().due.len()
    }
}

impl Drop for Renewals {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Schedule> {
        // Every step leaves the map consistent.
        crate::sync::lock(&self.state)
    }
}

async fn run(shared: Arc<Shared>, locker: Weak<LockerInner>) {
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
        if !due.is_empty() {
            // The locker is gone: so are its guards, nothing to renew.
            let Some(locker) = locker.upgrade() else {
                return;
            };
            for held in due.into_values() {
                tokio::spawn(HeldLease::renew_once(held, locker.clone()));
            }
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
