//! The one error type every operation returns.

use std::time::Duration;

/// A boxed error from a backend's client library, kept as the `source` of
/// [`LockError::Unavailable`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a lock operation failed.
///
/// Input errors ([`InvalidKey`](LockError::InvalidKey),
/// [`InvalidTtl`](LockError::InvalidTtl)) are raised before anything reaches
/// the store, so they change nothing.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tower_lock::{LockError, Locker};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let locker = Locker::in_memory();
/// let err = locker.acquire("", Duration::from_secs(1)).await.unwrap_err();
/// assert!(matches!(err, LockError::InvalidKey { .. }));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The key is empty or longer than [`MAX_KEY_LEN`](crate::MAX_KEY_LEN).
    #[error("invalid lock key: {reason}")]
    InvalidKey {
        /// What is wrong with the key.
        reason: &'static str,
    },
    /// The ttl is below [`MIN_TTL`](crate::MIN_TTL) or above
    /// [`MAX_TTL`](crate::MAX_TTL).
    #[error("invalid lock ttl {ttl:?}: it must be between 1ms and 365 days")]
    InvalidTtl {
        /// The ttl that was refused.
        ttl: Duration,
    },
    /// The lock stayed held by someone else for the whole wait of
    /// [`Locker::acquire_timeout`](crate::Locker::acquire_timeout).
    #[error("the lock is held by someone else")]
    Busy {
        /// How long the holder's lease still ran when last seen, when the
        /// store reported it: a fair `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// This [`Locker`](crate::Locker) (and its clones) holds nothing on the key.
    #[error("the lock is not held by this locker")]
    NotHeld,
    /// The lease ran out or was taken over before the holder released or
    /// renewed it; the lock may now belong to someone else.
    #[error("the lock's lease was lost before it was released")]
    Lost,
    /// The current request already holds this key, through
    /// [`LockLayer`](crate::LockLayer), on the same backend: waiting for it
    /// would wait for the request itself. To take a second, different key,
    /// take both at once instead.
    #[error("the lock {key:?} is already held by this request")]
    HeldByThisRequest {
        /// The key asked for.
        key: String,
    },
    /// The [`Locker`](crate::Locker) (or a clone of it) was
    /// [shut down](crate::Locker::shutdown): it takes no more locks.
    #[error("the locker was shut down and takes no more locks")]
    ShutDown,
    /// The store is set up in a way that could drop or keep a lock wrongly
    /// (an eviction policy, a bucket's limits), so the backend refused to
    /// use it; `setting` names what to change.
    #[error("lock store misconfigured: {setting}: {reason}")]
    Misconfigured {
        /// The store's setting at fault, as the store names it.
        setting: &'static str,
        /// Why it is unsafe, and what to do.
        reason: String,
    },
    /// A setting given to the crate is out of bounds (an election's
    /// timings, a candidate id); nothing was sent to the store.
    #[error("invalid {setting}: {reason}")]
    InvalidSetting {
        /// The setting at fault, as the method that takes it names it.
        setting: &'static str,
        /// What is wrong, and what would do.
        reason: String,
    },
    /// A counted lock was asked for with `requested` permits while the
    /// key's holders took it with `stored`: the limit is never changed
    /// under them. Nothing was taken.
    #[error("the lock {key:?} allows {stored} holders at once, not the {requested} asked for")]
    PermitsMismatch {
        /// The key asked for.
        key: String,
        /// The count its current holders took it with.
        stored: u32,
        /// The count this request asked for.
        requested: u32,
    },
    /// The backend could not be reached or answered with an error.
    #[error("lock backend unavailable: {source}")]
    Unavailable {
        /// The client library's error.
        #[source]
        source: BoxError,
    },
}

impl LockError {
    /// Wraps a backend client's error as [`LockError::Unavailable`].
    ///
    /// ```
    /// use tower_lock::LockError;
    ///
    /// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    /// assert!(matches!(LockError::unavailable(io), LockError::Unavailable { .. }));
    /// ```
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        LockError::Unavailable {
            source: source.into(),
        }
    }
}
