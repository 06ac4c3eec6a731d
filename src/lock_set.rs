//! [`LockSet`]: several held locks, taken together and let go together.

use std::{fmt, future::Future};

use futures_util::future::join_all;

use crate::{LockError, LockGuard, lease::any_lost};

/// Several held locks, from [`Locker::acquire_all`](crate::Locker::acquire_all)
/// and its siblings. Dropping it releases them all.
///
/// The locks are in the order they were taken: every key's bytes in
/// ascending order, the one order every process uses, so that two callers
/// naming the same keys in any order can never deadlock. Each lock keeps
/// its own [fence](Self::fence). With
/// [`Locker::auto_renew`](crate::Locker::auto_renew) every lease renews
/// while the set lives; a dropped set releases like dropped
/// [`LockGuard`]s, with the same runtime rules.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tower_lock::Locker;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_lock::LockError> {
/// let locker = Locker::in_memory();
/// // A transfer locks both accounts, whatever order it names them in.
/// let set = locker
///     .acquire_all(["account:7", "account:3"], Duration::from_secs(10))
///     .await?;
/// assert_eq!(set.keys().collect::<Vec<_>>(), ["account:3", "account:7"]);
/// let fence = set.fence("account:7").expect("held");
/// set.release().await?;
/// # let _ = fence;
/// # Ok(())
/// # }
/// ```
#[must_use = "if unused the locks are released at once"]
#[clippy::has_significant_drop]
pub struct LockSet {
    guards: Vec<LockGuard>,
}

impl LockSet {
    pub(crate) fn new(guards: Vec<LockGuard>) -> Self {
        LockSet { guards }
    }

    pub(crate) fn guards(&self) -> &[LockGuard] {
        &self.guards
    }

    /// The locked keys, in the order they were taken.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.guards.iter().map(LockGuard::key)
    }

    /// The fence of `key`'s lock; `None` for a key not in the set.
    pub fn fence(&self, key: &str) -> Option<u64> {
        self.guard(key).map(LockGuard::fence)
    }

    /// Each key with its fence, in the order they were taken.
    pub fn fences(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.guards.iter().map(|guard| (guard.key(), guard.fence()))
    }

    /// The guard of `key`'s lock.
    pub fn guard(&self, key: &str) -> Option<&LockGuard> {
        self.guards.iter().find(|guard| guard.key() == key)
    }

    /// How many locks the set holds.
    pub fn len(&self) -> usize {
        self.guards.len()
    }

    /// Whether the set holds no lock (it was asked for no keys).
    pub fn is_empty(&self) -> bool {
        self.guards.is_empty()
    }

    /// Whether any of the leases is known to be over; see
    /// [`LockGuard::is_lost`].
    pub fn is_lost(&self) -> bool {
        self.guards.iter().any(LockGuard::is_lost)
    }

    /// Resolves when any of the leases is over; see [`LockGuard::lost`].
    /// An empty set never resolves.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes the leases.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + use<> {
        any_lost(self.guards.iter().filter_map(LockGuard::lease))
    }

    /// Releases every lock at once (the releases go to the store together,
    /// not one after another).
    ///
    /// # Errors
    ///
    /// [`LockError::Lost`] when any lease had already been lost;
    /// [`LockError::Unavailable`] when the store could not be reached. Every
    /// lock is released either way; the first error is returned.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not stop the releases: what it has not
    /// sent, the dropped guards release in the background.
    pub async fn release(mut self) -> Result<(), LockError> {
        release_all(std::mem::take(&mut self.guards)).await
    }
}

/// Releases `guards` together: on the spot where the store answers so,
/// the others in concurrent requests; the first error, if any.
pub(crate) async fn release_all(guards: Vec<LockGuard>) -> Result<(), LockError> {
    let mut first = Ok(());
    let mut remote = Vec::new();
    for guard in guards {
        match guard.release_now() {
            Ok(outcome) => {
                if first.is_ok() {
                    first = outcome;
                }
            }
            Err(guard) => remote.push(guard),
        }
    }
    if !remote.is_empty() {
        let outcomes = join_all(remote.into_iter().map(LockGuard::release)).await;
        if let (Ok(()), Some(err)) = (&first, outcomes.into_iter().find(Result::is_err)) {
            first = err;
        }
    }
    first
}

impl fmt::Debug for LockSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.fences()).finish()
    }
}
