//! [`HeldLock`]: what a handler learns about the lock taken for it.

use smol_str::SmolStr;

use crate::LockGuard;

/// The lock [`LockLayer`](super::LockLayer) holds for the current request:
/// its key and its fencing token. Cheap to clone.
///
/// The layer puts it in the request's extensions before calling the
/// service. Pass [`fence`](Self::fence) along with writes to a resource that
/// can refuse a stale writer. With the `axum` feature, `HeldLock` (and
/// `Option<HeldLock>`) is an extractor.
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldLock {
    key: SmolStr,
    fence: u64,
}

impl HeldLock {
    pub(crate) fn new(guard: &LockGuard) -> Self {
        HeldLock {
            key: guard.shared_key(),
            fence: guard.fence(),
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
}
