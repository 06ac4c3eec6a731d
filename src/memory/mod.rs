//! The in-memory backend: the embedded default, and several nodes sharing
//! one table over a [`Bus`].
//!
//! Standalone, the table is sharded across mutexes (no global lock on the
//! hot path) and leases expire on the process's coarse monotonic clock. With
//! a bus, every node replicates the table from the bus's ordered events and
//! judges expiry by the bus's stamps (see [`bus`](crate::bus)).
//!
//! # The coarse clock
//!
//! The standalone table judges leases by [`Tick`]: on
//! Linux the kernel's last tick (`CLOCK_MONOTONIC_COARSE`), a few ns a
//! reading where the precise clock takes 20 to 40 ns on a virtual machine,
//! which was a fifth of an uncontended lock. It is as monotonic as the
//! precise clock but moves in ticks (1 to 10 ms; 4 ms on most
//! distributions' kernels), and how far it runs behind real time varies by
//! up to about two ticks, so:
//!
//! - the table adds two ticks and a millisecond to every lease
//!   ([`Tick::lag`](crate::backend::Tick::lag)): a lease lasts at least its
//!   ttl, and up to about four ticks more;
//! - the holder reads the same clock before the store does and counts the
//!   same way, so [`LockGuard::is_lost`](crate::LockGuard::is_lost) turns
//!   true no later than the store hands the key to someone else;
//! - [`LockGuard::lost`](crate::LockGuard::lost) may resolve up to a
//!   millisecond after the clock shows the lease over.
//!
//! Other systems read the precise clock, with no lag.
//!
//! [`Tick`]: crate::backend::Tick
//!
//! Fences come from one counter per shard of the table (standalone; a key
//! always lives in the same shard) or from the bus's sequence numbers
//! (shared), so they increase strictly for every key and need no per-key
//! entry: a released key leaves nothing behind.
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

mod replica;
mod table;

use std::{
    fmt,
    hash::BuildHasher,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use self::table::count_fence;
pub(crate) use self::table::{KeyHasher, Table};
use self::{replica::Replica, table::Released};
use crate::{
    LockError,
    backend::{Attempt, Backend, Holder, Lease, Subscription, Token, WakeRegistry},
    bus::Bus,
    clock::Tick,
    key::validate_ttl,
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
    shards: Box<[Mutex<Table<Tick>>]>,
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
    /// The node subscribes at once, so it sees every event from now on. It
    /// applies events on a task it starts on the tokio runtime of its first
    /// operation; the task ends when the last clone of the backend is
    /// dropped. See [`bus`](crate::bus) for an example.
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

impl Standalone {
    /// The key's hash and its shard, locked. One hash serves both the shard
    /// and the table inside it: bits 32 and up pick the shard, which the
    /// table's own probing (low bits, and the top seven) leaves alone.
    fn shard(&self, key: &str) -> (u64, MutexGuard<'_, Table<Tick>>) {
        let hash = self.hasher.hash_one(key);
        let index = (hash >> 32) as usize % SHARDS;
        (hash, lock(&self.shards[index]))
    }

    fn try_acquire(
        &self,
        key: &str,
        token: Token,
        ttl: Duration,
        holder: Option<Holder>,
    ) -> Attempt {
        let (hash, mut shard) = self.shard(key);
        shard.try_acquire_hashed(key, hash, token, ttl, Tick::now(), count_fence, holder)
    }

    fn holder(&self, key: &str) -> Option<Holder> {
        let (hash, shard) = self.shard(key);
        shard.holder_hashed(key, hash)
    }

    fn extend(&self, key: &str, lease: &Lease, ttl: Duration) -> Option<u64> {
        let (hash, mut shard) = self.shard(key);
        shard.extend_hashed(key, hash, lease, ttl, Tick::now())
    }

    fn release(&self, key: &str, lease: &Lease) -> bool {
        let (hash, mut shard) = self.shard(key);
        let released = shard.release_hashed(key, hash, lease, Tick::now());
        drop(shard);
        match released {
            Released::Held => {
                self.wakeups.notify(key);
                true
            }
            Released::Lost => false,
        }
    }
}

pub(super) use crate::sync::lock;

#[async_trait::async_trait]
impl Backend for MemoryBackend {
    async fn try_acquire(
        &self,
        key: &str,
        token: Token,
        ttl: Duration,
    ) -> Result<Attempt, LockError> {
        match &*self.inner {
            Inner::Standalone(s) => {
                validate_ttl(ttl)?;
                Ok(s.try_acquire(key, token, ttl, None))
            }
            Inner::Replicated(r) => r.try_acquire(key, token, ttl).await,
        }
    }

    async fn extend(
        &self,
        key: &str,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Option<u64>, LockError> {
        match &*self.inner {
            Inner::Standalone(s) => {
                validate_ttl(ttl)?;
                Ok(s.extend(key, lease, ttl))
            }
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
            Inner::Replicated(r) => Ok(r.wakeups().subscribe(key)),
        }
    }

    fn try_acquire_now(
        &self,
        key: &str,
        token: Token,
        ttl: Duration,
        holder: Holder,
    ) -> Option<Result<Attempt, LockError>> {
        match &*self.inner {
            Inner::Standalone(s) => {
                Some(validate_ttl(ttl).map(|()| s.try_acquire(key, token, ttl, Some(holder))))
            }
            // A replica's answer comes back over the bus.
            Inner::Replicated(_) => None,
        }
    }

    fn holder_now(&self, key: &str) -> Option<Option<Holder>> {
        match &*self.inner {
            Inner::Standalone(s) => Some(s.holder(key)),
            Inner::Replicated(_) => None,
        }
    }

    fn count_holders_now(&self, counted: &dyn Fn(&Holder) -> bool) -> Option<usize> {
        match &*self.inner {
            Inner::Standalone(s) => Some(
                s.shards
                    .iter()
                    .map(|shard| lock(shard).count_holders(counted))
                    .sum(),
            ),
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
