//! The in-memory backend: the embedded default, and several nodes sharing
//! one table over a [`Bus`].
//!
//! Standalone, the table is sharded across mutexes (no global lock on the
//! hot path) and answers on the spot, with no future: an uncontended lock
//! and its release never wait. Leases expire on tokio's monotonic clock, so
//! tests that pause time (`tokio::time::pause`, `start_paused = true`) see
//! them run out as the clock advances. With a bus, every node replicates
//! the table from the bus's ordered events and judges expiry by the bus's
//! stamps (see [`bus`]).
//!
//! Fences never fall below the wall clock in microseconds, and count on
//! from the last one of the key's shard (standalone; a key always lives in
//! the same shard) or of the bus's table (shared): they increase strictly
//! for every key, need no per-key entry (a released key leaves nothing
//! behind), and keep increasing across a restart of the process or a new
//! bus. A burst runs at most 1 ms ahead of the clock; past that, a shard
//! grants at most one lock per microsecond. So fences repeat only if a
//! restart takes under 1 ms, or the clock steps back across it by more than
//! the restart took beyond 1 ms.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use tower_lock::{memory::MemoryBackend, Locker};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_lock::LockError> {
//! let backend = MemoryBackend::new();
//! // Two independent lockers (two owners) over one table.
//! let alice = Locker::new(backend.clone());
//! let bob = Locker::new(backend.clone());
//!
//! let guard = alice.acquire("doc:1", Duration::from_secs(5)).await?;
//! assert!(bob.try_lock("doc:1", Duration::from_secs(5)).await?.is_none());
//! guard.release().await?;
//! assert_eq!(backend.len(), 0);
//! # Ok(())
//! # }
//! ```

pub mod bus;
mod clock;
mod replica;
mod table;

use std::{
    fmt,
    hash::BuildHasher,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::time::Instant;

use self::{
    bus::Bus,
    clock::clock_fence,
    replica::Replica,
    table::{Released, Table},
};
use crate::{
    LockError, Locker,
    backend::{AcquireRequest, Attempt, Backend, Holding, Lease, Subscription, WakeRegistry},
    key::{KeyHasher, validate_ttl},
    sync::lock,
};

/// An in-process lock table; see the [module docs](self).
///
/// Cheap to clone: clones share the table. Lockers over clones are distinct
/// owners of their locks.
#[derive(Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

enum Inner {
    Standalone(Standalone),
    Replicated(Replica),
}

struct Standalone {
    shards: Box<[Mutex<Table<Instant>>]>,
    hasher: KeyHasher,
    wakeups: WakeRegistry,
}

const SHARDS: usize = 64;

impl MemoryBackend {
    /// A standalone table for this process.
    pub fn new() -> Self {
        let hasher = KeyHasher::default();
        MemoryBackend {
            inner: Arc::new(Inner::Standalone(Standalone {
                shards: (0..SHARDS)
                    .map(|_| Mutex::new(Table::with_hasher(hasher.clone())))
                    .collect(),
                hasher,
                wakeups: WakeRegistry::default(),
            })),
        }
    }

    /// A node that shares its table with every other node on `bus`.
    ///
    /// The node joins the bus on its first operation, from the bus's
    /// snapshot, so a node that never locks costs the bus nothing. It
    /// applies events on a task it starts on the tokio runtime of that
    /// operation (and starts again on a later operation's runtime if that
    /// one shut down); the task ends when the last clone of the backend is
    /// dropped. See [`bus`] for an example.
    pub fn with_bus(bus: impl Bus) -> Self {
        MemoryBackend {
            inner: Arc::new(Inner::Replicated(Replica::new(Arc::new(bus)))),
        }
    }

    /// How many leases the table holds now, including expired ones not yet
    /// swept. Released keys are removed at once; expired ones are swept as
    /// the table grows (a shard past 1,024 entries sweeps whenever it has
    /// doubled since its last sweep), so abandoned leases cost memory only in
    /// proportion to the live ones.
    pub fn len(&self) -> usize {
        match &*self.inner {
            Inner::Standalone(s) => s.shards.iter().map(|shard| lock(shard).len()).sum(),
            Inner::Replicated(r) => r.len(),
        }
    }

    /// Whether the table holds no lease.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many keys have waiters subscribed for wake-ups on this node.
    pub fn watched_keys(&self) -> usize {
        match &*self.inner {
            Inner::Standalone(s) => s.wakeups.len(),
            Inner::Replicated(r) => r.wakeups().len(),
        }
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend::new()
    }
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &*self.inner {
            Inner::Standalone(_) => "standalone",
            Inner::Replicated(_) => "bus",
        };
        f.debug_struct("MemoryBackend")
            .field("mode", &mode)
            .field("leases", &self.len())
            .finish()
    }
}

impl Locker {
    /// A locker over a new standalone [`MemoryBackend`]: locks for the tasks
    /// of this process.
    ///
    /// ```
    /// let locker = tower_lock::Locker::in_memory();
    /// ```
    pub fn in_memory() -> Self {
        Locker::new(MemoryBackend::new())
    }
}

impl Standalone {
    /// The key's hash and its shard, locked. One hash serves both the shard
    /// and the table inside it: bits 32 and up pick the shard, which the
    /// table's own probing (low bits, and the top seven) leaves alone.
    fn shard(&self, key: &str) -> (u64, MutexGuard<'_, Table<Instant>>) {
        let hash = self.hasher.hash_one(key);
        let index = (hash >> 32) as usize % SHARDS;
        (hash, lock(&self.shards[index]))
    }

    fn try_acquire(&self, request: &AcquireRequest<'_>) -> Result<Attempt, LockError> {
        validate_ttl(request.ttl)?;
        let (hash, mut shard) = self.shard(request.key);
        let attempt = shard.try_acquire_hashed(request, hash, Instant::now(), clock_fence);
        drop(shard);
        let attempt = attempt.map_err(|mismatch| mismatch.into_error(request))?;
        if request.value.is_some() && matches!(attempt, Attempt::Acquired { .. }) {
            // Observers of an election learn of its new leader.
            self.wakeups.notify(request.key);
        }
        Ok(attempt)
    }

    fn holder(&self, key: &str) -> Option<Holding> {
        let (hash, shard) = self.shard(key);
        shard.holder_hashed(key, hash, Instant::now())
    }

    fn extend(&self, key: &str, lease: &Lease, ttl: Duration) -> Result<Option<u64>, LockError> {
        validate_ttl(ttl)?;
        let (hash, mut shard) = self.shard(key);
        Ok(shard.extend_hashed(key, hash, lease, ttl, Instant::now()))
    }

    fn release(&self, key: &str, lease: &Lease) -> bool {
        let (hash, mut shard) = self.shard(key);
        let released = shard.release_hashed(key, hash, lease, Instant::now());
        drop(shard);
        match released {
            Released::Held { wake } => {
                if wake {
                    self.wakeups.notify(key);
                }
                true
            }
            Released::Lost => false,
        }
    }
}

#[async_trait::async_trait]
impl Backend for MemoryBackend {
    async fn try_acquire(&self, request: &AcquireRequest<'_>) -> Result<Attempt, LockError> {
        match &*self.inner {
            Inner::Standalone(s) => s.try_acquire(request),
            Inner::Replicated(r) => r.try_acquire(request).await,
        }
    }

    async fn extend(
        &self,
        key: &str,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Option<u64>, LockError> {
        match &*self.inner {
            Inner::Standalone(s) => s.extend(key, lease, ttl),
            Inner::Replicated(r) => r.extend(key, lease, ttl).await,
        }
    }

    async fn release(&self, key: &str, lease: &Lease) -> Result<bool, LockError> {
        match &*self.inner {
            Inner::Standalone(s) => Ok(s.release(key, lease)),
            Inner::Replicated(r) => r.release(key, lease).await,
        }
    }

    async fn subscribe(&self, key: &str) -> Result<Subscription, LockError> {
        match &*self.inner {
            Inner::Standalone(s) => Ok(s.wakeups.subscribe(key)),
            Inner::Replicated(r) => r.subscribe(key),
        }
    }

    /// On a bus node: the holder as of the last bus event the node applied.
    async fn holder(&self, key: &str) -> Result<Option<Holding>, LockError> {
        match &*self.inner {
            Inner::Standalone(s) => Ok(s.holder(key)),
            Inner::Replicated(r) => r.holder(key),
        }
    }

    fn try_acquire_now(&self, request: &AcquireRequest<'_>) -> Option<Result<Attempt, LockError>> {
        match &*self.inner {
            Inner::Standalone(s) => Some(s.try_acquire(request)),
            // A replica's answer comes back over the bus.
            Inner::Replicated(_) => None,
        }
    }

    fn release_now(&self, key: &str, lease: &Lease) -> Option<Result<bool, LockError>> {
        match &*self.inner {
            Inner::Standalone(s) => Some(Ok(s.release(key, lease))),
            Inner::Replicated(_) => None,
        }
    }
}
