//! Shared and counted locks: the same waiting and guards as exclusive ones,
//! for leases of another [`LeaseKind`].

use std::time::Duration;

use tokio::time::Instant;

use super::Locker;
use crate::{LockError, LockGuard, backend::LeaseKind, key::validate_permits};

impl Locker {
    /// This locker, taking leases of `kind` (a count checked here).
    pub(crate) fn of_kind(&self, kind: LeaseKind) -> Result<Locker, LockError> {
        if let LeaseKind::Counted { permits } = kind {
            validate_permits(permits)?;
        }
        Ok(Locker {
            kind,
            ..self.clone()
        })
    }

    /// Waits until no exclusive holder has `key`, then takes a shared lease
    /// on it for `ttl`: any number of shared holders (of any locker) may
    /// hold the key at once, and [`acquire`](Self::acquire) waits until every
    /// one of them has left.
    ///
    /// The guard is like any other: its own fence (strictly greater than
    /// every earlier fence of the key, of any kind), lease, renewal and
    /// [`lost`](LockGuard::lost) signal.
    ///
    /// # Fairness
    ///
    /// Writers are not starved: once an exclusive waiter has tried for the
    /// key and found shared holders there, new shared leases of the key wait
    /// until it has had its turn, so a stream of readers cannot keep a
    /// writer out. Readers already holding the key keep it until they
    /// leave. The caveat: a store learns of the waiting writer from its
    /// tries, so readers that arrive in the moment between its first try and
    /// the store's answer still get in; and the writer's claim lapses (about
    /// one second, twice the longest backoff step) if it stops trying
    /// without telling the store, when its process crashes.
    ///
    /// Shared leases are not re-entrant either: a task that holds a shared
    /// lease and asks for another on the same key may wait behind a queued
    /// writer that waits for the first.
    ///
    /// # Errors
    ///
    /// As for [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Self::acquire): dropping the future leaves no
    /// lease and no waiter.
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
    /// let ttl = Duration::from_secs(10);
    /// let first = locker.acquire_shared("doc:1", ttl).await?;
    /// let second = locker.acquire_shared("doc:1", ttl).await?; // readers share
    /// assert!(second.fence() > first.fence());
    /// assert!(locker.try_lock("doc:1", ttl).await?.is_none()); // a writer waits
    /// drop((first, second));
    /// assert!(locker.try_lock("doc:1", ttl).await?.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn acquire_shared(&self, key: &str, ttl: Duration) -> Result<LockGuard, LockError> {
        self.of_kind(LeaseKind::Shared)?.lock(key, ttl, None).await
    }

    /// Like [`acquire_shared`](Self::acquire_shared), but gives up after
    /// `wait` with [`LockError::Busy`], as
    /// [`acquire_timeout`](Self::acquire_timeout) does.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Self::acquire).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lock::{LockError, Locker};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), LockError> {
    /// let locker = Locker::in_memory();
    /// let _writer = locker.acquire("doc:1", Duration::from_secs(30)).await?;
    /// let wait = Duration::from_millis(20);
    /// let refused = locker.acquire_shared_timeout("doc:1", Duration::from_secs(5), wait).await;
    /// assert!(matches!(refused, Err(LockError::Busy { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn acquire_shared_timeout(
        &self,
        key: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockGuard, LockError> {
        let deadline = Instant::now().checked_add(wait);
        self.of_kind(LeaseKind::Shared)?
            .lock(key, ttl, deadline)
            .await
    }

    /// Takes a shared lease on `key` for `ttl` if no exclusive holder (or
    /// queued exclusive waiter) has it now; never waits.
    ///
    /// # Errors
    ///
    /// As for [`try_lock`](Self::try_lock); a key held (or claimed by a
    /// waiting writer) is `Ok(None)`.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Self::acquire).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lock::Locker;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_lock::LockError> {
    /// let locker = Locker::in_memory();
    /// let ttl = Duration::from_secs(5);
    /// let reader = locker.try_lock_shared("doc:1", ttl).await?;
    /// assert!(reader.is_some());
    /// assert!(locker.try_lock_shared("doc:1", ttl).await?.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn try_lock_shared(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<LockGuard>, LockError> {
        self.of_kind(LeaseKind::Shared)?.try_lock(key, ttl).await
    }

    /// Waits until fewer than `permits` holders have `key`, then takes one
    /// of its permits for `ttl`: at most `permits` holders (of any locker,
    /// in any process) hold the key at once.
    ///
    /// The count is stored with the key by its first holder and goes with
    /// its last. The guard is like any other: its own fence, lease, renewal
    /// and [`lost`](LockGuard::lost) signal. A counted key shares with
    /// counted holders only: [`acquire`](Self::acquire) and
    /// [`acquire_shared`](Self::acquire_shared) of the same key wait until
    /// every permit is back.
    ///
    /// # Fairness
    ///
    /// As for exclusive locks: FIFO among the waiters of one process; across
    /// processes, as the store orders them (see
    /// [Waiting and fairness](Self#waiting-and-fairness)).
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidSetting`] when `permits` is 0 or above
    /// [`MAX_PERMITS`](crate::MAX_PERMITS), and
    /// [`LockError::PermitsMismatch`], naming both counts, when the key's
    /// holders took it with another count (the limit never changes under
    /// them); nothing is taken either way. Otherwise as for
    /// [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Self::acquire): dropping the future leaves no
    /// permit taken and no waiter.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lock::{LockError, Locker};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), LockError> {
    /// let locker = Locker::in_memory();
    /// let ttl = Duration::from_secs(60);
    /// let a = locker.acquire_permit("export:tenant-4", 2, ttl).await?;
    /// let b = locker.acquire_permit("export:tenant-4", 2, ttl).await?;
    /// assert!(locker.try_lock_permit("export:tenant-4", 2, ttl).await?.is_none());
    /// let other_limit = locker.try_lock_permit("export:tenant-4", 3, ttl).await;
    /// assert!(matches!(other_limit, Err(LockError::PermitsMismatch { stored: 2, requested: 3, .. })));
    /// drop(a);
    /// assert!(locker.try_lock_permit("export:tenant-4", 2, ttl).await?.is_some());
    /// # drop(b);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn acquire_permit(
        &self,
        key: &str,
        permits: u32,
        ttl: Duration,
    ) -> Result<LockGuard, LockError> {
        self.of_kind(LeaseKind::Counted { permits })?
            .lock(key, ttl, None)
            .await
    }

    /// Like [`acquire_permit`](Self::acquire_permit), but gives up after
    /// `wait` with [`LockError::Busy`], as
    /// [`acquire_timeout`](Self::acquire_timeout) does.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Self::acquire).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lock::{LockError, Locker};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), LockError> {
    /// let locker = Locker::in_memory();
    /// let ttl = Duration::from_secs(30);
    /// let _only = locker.acquire_permit("report", 1, ttl).await?;
    /// let wait = Duration::from_millis(20);
    /// let refused = locker.acquire_permit_timeout("report", 1, ttl, wait).await;
    /// assert!(matches!(refused, Err(LockError::Busy { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn acquire_permit_timeout(
        &self,
        key: &str,
        permits: u32,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockGuard, LockError> {
        let deadline = Instant::now().checked_add(wait);
        self.of_kind(LeaseKind::Counted { permits })?
            .lock(key, ttl, deadline)
            .await
    }

    /// Takes one of `key`'s `permits` for `ttl` if one is free now; never
    /// waits.
    ///
    /// # Errors
    ///
    /// As for [`acquire_permit`](Self::acquire_permit); a key whose permits
    /// are all taken is `Ok(None)`.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Self::acquire).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lock::Locker;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_lock::LockError> {
    /// let locker = Locker::in_memory();
    /// let ttl = Duration::from_secs(5);
    /// let first = locker.try_lock_permit("slots", 1, ttl).await?;
    /// assert!(first.is_some());
    /// assert!(locker.try_lock_permit("slots", 1, ttl).await?.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn try_lock_permit(
        &self,
        key: &str,
        permits: u32,
        ttl: Duration,
    ) -> Result<Option<LockGuard>, LockError> {
        self.of_kind(LeaseKind::Counted { permits })?
            .try_lock(key, ttl)
            .await
    }
}
