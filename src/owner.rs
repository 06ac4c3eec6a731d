//! What one owner (a `Locker` and its clones) holds: its leases by key, so
//! that it can release by key and count what it holds, and their renewal.
//!
//! An owner may hold several leases on one key (a lease that ran out and
//! was granted again, and later several shared holders): each is kept, and
//! a release by key releases them all.

use std::{
    hash::BuildHasher,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use futures_util::future::join_all;
use hashbrown::HashTable;
use tokio::{runtime::Handle, sync::Notify, time::Instant};

use crate::{
    LockError,
    backend::Backend,
    key::KeyHasher,
    lease::{Record, settle_release},
    metrics::Metrics,
    renewal::Renewals,
    run_to_end::RunToEnd,
};

/// Shards of the table of held leases, so that tasks on several threads
/// rarely contend for one.
const SHARDS: usize = 16;

pub(crate) struct Owner {
    backend: Arc<dyn Backend>,
    /// The leases, by their key's hash; one entry per lease, so one key may
    /// have several.
    held: Box<[Mutex<HashTable<Arc<Record>>>]>,
    hasher: KeyHasher,
    renewals: Renewals,
    metrics: Arc<Metrics>,
    /// Set by [`shut_down`](Self::shut_down): no lease is granted to this
    /// owner any more.
    closed: AtomicBool,
    /// Wakes this owner's waiters when it shuts down.
    closing: Notify,
    background: Arc<Background>,
}

/// Work that runs on after its caller went away and may still free (or, for
/// a try whose answer is on its way, hold) a lease in the store: shutdown
/// waits for it, so that it returns only once the store holds nothing of
/// this owner's.
#[derive(Default)]
struct Background {
    running: AtomicUsize,
    idle: Notify,
}

/// One piece of background work, counted while it lives.
pub(crate) struct Running(Arc<Background>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Background {
    async fn idle(&self) {
        loop {
            // Registered before the count is read: a last task ending in
            // between still reaches this waiter.
            let notified = self.idle.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Owner {
    /// An owner over `backend`, named `backend_name` in its metrics.
    pub(crate) fn new(backend: Arc<dyn Backend>, backend_name: &'static str) -> Self {
        let metrics = Arc::new(Metrics::new(backend_name));
        Owner {
            renewals: Renewals::new(backend.clone(), metrics.clone()),
            metrics,
            backend,
            held: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: KeyHasher::default(),
            closed: AtomicBool::new(false),
            closing: Notify::new(),
            background: Arc::default(),
        }
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What a release came to, logged and counted the same way wherever it
    /// ran.
    fn settled(&self, record: &Record, outcome: Result<bool, LockError>) -> Result<(), LockError> {
        let settled = settle_release(record, outcome);
        if matches!(settled, Err(LockError::Lost)) {
            self.metrics.lost(record.key());
        }
        settled
    }

    /// Whether [`shut_down`](Self::shut_down) was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Resolves once [`shut_down`](Self::shut_down) is called.
    pub(crate) async fn closed(&self) {
        let notified = self.closing.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the flag is read: no shutdown in between is missed.
        notified.as_mut().enable();
        if self.is_closed() {
            return;
        }
        notified.await;
    }

    /// Counts background work that shutdown must wait for, until the
    /// returned value is dropped.
    pub(crate) fn running(&self) -> Running {
        self.background.running.fetch_add(1, Ordering::SeqCst);
        Running(self.background.clone())
    }

    /// Refuses new leases, marks every lease held lost (waking `lost()`
    /// futures first, so that work under them stops), releases them in the
    /// store, and waits for the background releases under way. The first
    /// store error is returned; every lease is released either way.
    pub(crate) async fn shut_down(self: &Arc<Self>) -> Result<(), LockError> {
        if !self.closed.swap(true, Ordering::SeqCst) {
            self.closing.notify_waiters();
            self.renewals.stop();
        }
        let held: Vec<Arc<Record>> = self
            .held
            .iter()
            .flat_map(|shard| crate::sync::lock(shard).iter().cloned().collect::<Vec<_>>())
            .collect();
        for record in &held {
            record.mark_lost();
        }
        // Without a runtime, what needs I/O fails (and ends at its ttl).
        let runtime = Handle::try_current().ok();
        let releases = held
            .into_iter()
            .map(|record| self.release_from(record, runtime.clone()));
        let mut first_error = None;
        for outcome in join_all(releases).await {
            match outcome {
                // Marked lost above, or released meanwhile by its holder.
                Ok(()) | Err(LockError::Lost | LockError::NotHeld) => {}
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        self.background.idle().await;
        first_error.map_or(Ok(()), Err)
    }

    /// The key's hash and its shard, locked: the hash's top bits pick the
    /// shard, which the table's own probing leaves alone.
    fn shard(&self, key: &str) -> (u64, MutexGuard<'_, HashTable<Arc<Record>>>) {
        let hash = self.hasher.hash_one(key);
        let index = (hash >> 32) as usize % SHARDS;
        (hash, crate::sync::lock(&self.held[index]))
    }

    pub(crate) fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Records a lease the store granted to this owner.
    pub(crate) fn hold(&self, record: &Arc<Record>) {
        let (hash, mut shard) = self.shard(record.key());
        let rehash = |held: &Arc<Record>| self.hasher.hash_one(&**held.key());
        shard.insert_unique(hash, record.clone(), rehash);
    }

    /// Keeps `record` alive in the store until it is released or lost, from
    /// a grant or renewal sent at `sent_at`.
    pub(crate) fn renew(&self, record: &Arc<Record>, runtime: &Handle, sent_at: Instant) {
        if self.is_closed() {
            return;
        }
        let at = sent_at + record.renew_every();
        self.renewals.schedule(record, at, runtime);
    }

    /// The leases this owner holds on `key`.
    pub(crate) fn held_on(&self, key: &str) -> Vec<Arc<Record>> {
        let (hash, shard) = self.shard(key);
        let on_key = shard.iter_hash(hash).filter(|held| held.key() == key);
        on_key.cloned().collect()
    }

    /// How many leases this owner holds.
    pub(crate) fn held_count(&self) -> usize {
        self.held
            .iter()
            .map(|shard| crate::sync::lock(shard).len())
            .sum()
    }

    /// How many leases wait for their next renewal.
    pub(crate) fn renewing_count(&self) -> usize {
        self.renewals.len()
    }

    /// Renews `record` no more (see [`Record::stop_renewal`]).
    pub(crate) async fn stop_renewing(&self, record: &Record) {
        if let Some(slot) = record.stop_renewal().await {
            self.renewals.cancel(slot);
        }
    }

    /// What follows marking a lease released: renewal and these records let
    /// go of it.
    fn forget(&self, record: &Record) {
        if let Some(slot) = record.take_renewal() {
            self.renewals.cancel(slot);
        }
        let (hash, mut shard) = self.shard(record.key());
        if let Ok(entry) = shard.find_entry(hash, |held| std::ptr::eq(&**held, record)) {
            entry.remove();
        }
    }

    /// Releases on the spot, when no operation is under way and the store
    /// can answer so; `None`, having changed nothing, otherwise.
    pub(crate) fn release_here(&self, record: &Record) -> Option<Result<(), LockError>> {
        let answer =
            record.release_here(|| self.backend.release_now(record.key(), &record.lease()));
        // `None`: busy, or not a store that answers on the spot; the
        // release goes the async way.
        let Some(outcome) = answer? else {
            return Some(Err(LockError::NotHeld));
        };
        self.forget(record);
        Some(self.settled(record, outcome))
    }

    /// Releases `record` in the store, once, whoever asks first (its guard,
    /// the guard's drop, or a release by key).
    pub(crate) async fn release(&self, record: &Record) -> Result<(), LockError> {
        if !record.release_queued().await {
            return Err(LockError::NotHeld);
        }
        self.forget(record);
        let outcome = self.backend.release(record.key(), &record.lease()).await;
        self.settled(record, outcome)
    }

    /// Releases for a caller that may go away: on the spot when the store
    /// can answer so, else a request that finishes even if the caller drops
    /// the future (on `runtime`, or the current one).
    pub(crate) async fn release_from(
        self: &Arc<Self>,
        record: Arc<Record>,
        runtime: Option<Handle>,
    ) -> Result<(), LockError> {
        if let Some(released) = self.release_here(&record) {
            return released;
        }
        let runtime = match runtime {
            Some(runtime) => runtime,
            None => Handle::try_current().map_err(LockError::unavailable)?,
        };
        let (owner, running) = (self.clone(), self.running());
        let release = async move {
            let _running = running;
            owner.release(&record).await
        };
        // Boxed: a release on the spot should not carry (and move) the state
        // of one through I/O.
        Box::pin(RunToEnd::new(runtime, release, |_| async {})).await
    }

    /// Releases a lease whose guard was dropped: on the spot, or in the
    /// background on `runtime` (or the current one). A runtime that has shut
    /// down drops the task instead of running it, and without any runtime
    /// nothing is spawned: no panic, and the lease ends at its ttl.
    pub(crate) fn release_dropped(self: &Arc<Self>, record: Arc<Record>, runtime: Option<Handle>) {
        // Released already, or now, on the spot.
        if self.release_here(&record).is_some() {
            return;
        }
        if let Some(runtime) = runtime.or_else(|| Handle::try_current().ok()) {
            let (owner, running) = (self.clone(), self.running());
            runtime.spawn(async move {
                let _running = running;
                let _ = owner.release(&record).await;
            });
        }
    }
}
