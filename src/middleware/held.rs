//! What a request holds: one lock or a set ([`Holding`]), and what its
//! handler learns about them ([`HeldLock`]).

use std::{fmt, future::Future, sync::Arc};

use smol_str::SmolStr;
use tokio::time::Instant;

use crate::{
    LockGuard, LockSet,
    lease::{Record, any_lost},
};

/// The lock or locks [`LockLayer`](super::LockLayer) holds for the current
/// request: their keys, their fencing tokens, and whether their leases still
/// hold. Cheap to clone.
///
/// The layer puts it in the request's extensions before calling the
/// service. Pass [`fence`](Self::fence) along with writes to a resource that
/// can refuse a stale writer. With the `axum` feature, `HeldLock` (and
/// `Option<HeldLock>`) is an extractor. A request keyed by several keys
/// (`key::path_params`) holds them all: [`fences`](Self::fences) lists
/// each, in the order they were taken.
///
/// The layer stops the handler itself when a lease is lost (it drops the
/// handler's future); [`lost`](Self::lost) and [`is_lost`](Self::is_lost)
/// are for work the handler hands to tasks of its own, which that does not
/// stop.
///
/// # Examples
///
/// ```
/// use tower_lock::middleware::HeldLock;
///
/// fn audit(request: &http::Request<()>) {
///     if let Some(lock) = request.extensions().get::<HeldLock>() {
///         println!("{} held with fence {}", lock.key(), lock.fence());
///     }
/// }
/// ```
#[derive(Clone)]
pub struct HeldLock {
    locks: Arc<[Lock]>,
}

struct Lock {
    key: SmolStr,
    fence: u64,
    lease: Option<Arc<Record>>,
}

impl Lock {
    fn of(guard: &LockGuard) -> Self {
        Lock {
            key: guard.shared_key(),
            fence: guard.fence(),
            lease: guard.lease(),
        }
    }
}

impl HeldLock {
    pub(crate) fn new(holding: &Holding) -> Self {
        let locks = match holding {
            Holding::One(guard) => Arc::new([Lock::of(guard)]) as Arc<[Lock]>,
            Holding::Set(set) => set.guards().iter().map(Lock::of).collect(),
        };
        HeldLock { locks }
    }

    /// The key the lock is held on; for several keys, the first in the
    /// order they were taken.
    pub fn key(&self) -> &str {
        self.locks.first().map_or("", |lock| &lock.key)
    }

    /// The lock's fencing token: greater than that of every earlier holder
    /// of the key. For several keys, the first one's; see
    /// [`fences`](Self::fences).
    pub fn fence(&self) -> u64 {
        self.locks.first().map_or(0, |lock| lock.fence)
    }

    /// Every held key with its fence, in the order they were taken.
    pub fn fences(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.locks.iter().map(|lock| (&*lock.key, lock.fence))
    }

    /// The fence of `key`; `None` when the request does not hold it.
    pub fn fence_of(&self, key: &str) -> Option<u64> {
        self.fences()
            .find(|(held, _)| *held == key)
            .map(|(_, fence)| fence)
    }

    /// Whether any of the request's leases is known to be over (a renewal
    /// failed past its deadline, the store no longer held it, or it was
    /// released). See [`LockGuard::is_lost`].
    pub fn is_lost(&self) -> bool {
        self.locks
            .iter()
            .any(|lock| lock.lease.as_ref().is_none_or(|lease| lease.is_lost()))
    }

    /// Resolves when any of the request's leases is over; see
    /// [`LockGuard::lost`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes the leases.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + use<> {
        any_lost(self.locks.iter().filter_map(|lock| lock.lease.clone()))
    }
}

impl PartialEq for HeldLock {
    fn eq(&self, other: &Self) -> bool {
        self.fences().eq(other.fences())
    }
}

impl Eq for HeldLock {}

impl fmt::Debug for HeldLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldLock")
            .field("fences", &self.fences().collect::<Vec<_>>())
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// What a request holds while its handler and body run.
pub(crate) enum Holding {
    One(LockGuard),
    Set(LockSet),
}

impl Holding {
    /// The key, or the keys joined, for logs and rejections.
    pub(crate) fn label(&self) -> SmolStr {
        match self {
            Holding::One(guard) => guard.shared_key(),
            Holding::Set(set) => join(set.keys()).into(),
        }
    }

    /// The (first) fence, for logs and rejections.
    pub(crate) fn fence(&self) -> u64 {
        match self {
            Holding::One(guard) => guard.fence(),
            Holding::Set(set) => set.fences().next().map_or(0, |(_, fence)| fence),
        }
    }

    /// Whether any lease held is over at `now`.
    pub(crate) fn is_lost_at(&self, now: Instant) -> bool {
        self.guards().iter().any(|guard| guard.is_lost_at(now))
    }

    /// Renews no lease held after `until`.
    pub(crate) fn renew_until(&self, until: Instant) {
        for guard in self.guards() {
            guard.renew_until(until);
        }
    }

    fn guards(&self) -> &[LockGuard] {
        match self {
            Holding::One(guard) => std::slice::from_ref(guard),
            Holding::Set(set) => set.guards(),
        }
    }

    /// Resolves when any lease held is over.
    pub(crate) fn lost(&self) -> impl Future<Output = ()> + Send + use<> {
        any_lost(self.guards().iter().filter_map(LockGuard::lease))
    }
}

/// Keys for a log line or a rejection: `a, b`.
pub(crate) fn join<'a>(keys: impl Iterator<Item = &'a str>) -> String {
    keys.collect::<Vec<_>>().join(", ")
}
