//! [`HeldLock`]: what a handler learns about the lock taken for it.

use std::{fmt, future::Future, sync::Arc};

use smol_str::SmolStr;

use crate::{LockGuard, lease::Record};

/// The lock [`LockLayer`](super::LockLayer) holds for the current request:
/// its key, its fencing token, and whether its lease still holds. Cheap to
/// clone.
///
/// The layer puts it in the request's extensions before calling the
/// service. Pass [`fence`](Self::fence) along with writes to a resource that
/// can refuse a stale writer. With the `axum` feature, `HeldLock` (and
/// `Option<HeldLock>`) is an extractor.
///
/// The layer stops the handler itself when the lease is lost (it drops the
/// handler's future); [`lost`](Self::lost) and [`is_lost`](Self::is_lost)
/// let a handler stop cleanly on its own first, between two steps that
/// must not run without the lock.
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
    key: SmolStr,
    fence: u64,
    lease: Option<Arc<Record>>,
}

impl HeldLock {
    pub(crate) fn new(guard: &LockGuard) -> Self {
        HeldLock {
            key: guard.shared_key(),
            fence: guard.fence(),
            lease: guard.lease(),
        }
    }

    /// The key the lock is held on.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lock's fencing token: greater than that of every earlier holder
    /// of the key.
    pub fn fence(&self) -> u64 {
        self.fence
    }

    /// Whether the request's lease is known to be over (a renewal failed
    /// past its deadline, the store no longer held it, or it was released).
    /// See [`LockGuard::is_lost`].
    pub fn is_lost(&self) -> bool {
        self.lease.as_ref().is_none_or(|lease| lease.is_lost())
    }

    /// Resolves when the request's lease is over; see [`LockGuard::lost`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes the lease.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + use<> {
        let lost = self.lease.as_ref().map(Record::lost);
        async move {
            if let Some(lost) = lost {
                lost.await;
            }
        }
    }
}

impl PartialEq for HeldLock {
    fn eq(&self, other: &Self) -> bool {
        (&self.key, self.fence) == (&other.key, other.fence)
    }
}

impl Eq for HeldLock {}

impl fmt::Debug for HeldLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldLock")
            .field("key", &self.key)
            .field("fence", &self.fence)
            .field("lost", &self.is_lost())
            .finish()
    }
}
