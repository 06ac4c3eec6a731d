//! [`LockGuard`]: a held lock, its fence and its lease.

use std::{fmt, future::Future, sync::Arc, time::Duration};

use smol_str::SmolStr;
use tokio::{runtime::Handle, time::Instant};

use crate::{LockError, lease::Record, metrics::Started, owner::Owner};

/// A held lock. Dropping it releases the lock.
///
/// The guard carries the lock's [fence](Self::fence), which a resource can
/// use to refuse writes from a holder whose lease has since run out. The
/// lease lasts the ttl given at acquisition; with
/// [`Locker::auto_renew`](crate::Locker::auto_renew) it is renewed every
/// third of the ttl for as long as the guard lives.
///
/// Dropping the guard releases the lock in the background on the tokio
/// runtime the lock was acquired on; [`release`](Self::release) does it in
/// place and reports whether the lease was still held. A guard dropped after
/// its runtime has shut down does not panic: the lease then ends at its ttl.
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
/// let guard = locker.acquire("invoice:42", Duration::from_secs(10)).await?;
/// assert_eq!(guard.key(), "invoice:42");
/// let fence = guard.fence(); // hand this to the resource with every write
/// guard.release().await?;
///
/// let next = locker.acquire("invoice:42", Duration::from_secs(10)).await?;
/// assert!(next.fence() > fence);
/// # Ok(())
/// # }
/// ```
#[must_use = "if unused the lock is released at once"]
#[clippy::has_significant_drop]
pub struct LockGuard {
    /// `None` once [`release`](Self::release) or the drop has taken over,
    /// which consume the guard: always there for its public methods.
    parts: Option<Parts>,
}

struct Parts {
    record: Arc<Record>,
    owner: Arc<Owner>,
    /// Where a release that needs I/O runs; `None` when the store answered
    /// on the spot and nothing renews (a release then needs no runtime
    /// either, or takes the current one).
    runtime: Option<Handle>,
    /// When the lock was granted, for the hold time in the metrics.
    since: Started,
}

impl Parts {
    fn report_release(&self) {
        self.owner.metrics().released(self.record.key(), self.since);
    }
}

impl LockGuard {
    pub(crate) fn new(record: Arc<Record>, owner: Arc<Owner>, runtime: Option<Handle>) -> Self {
        LockGuard {
            parts: Some(Parts {
                record,
                owner,
                runtime,
                since: Started::now(),
            }),
        }
    }

    /// The locked key.
    pub fn key(&self) -> &str {
        self.parts.as_ref().map_or("", |p| p.record.key())
    }

    /// The key as a clone that shares the guard's storage.
    pub(crate) fn shared_key(&self) -> SmolStr {
        self.parts
            .as_ref()
            .map_or_else(SmolStr::default, |p| p.record.key().clone())
    }

    /// The lease's record, for views of the lock that outlive a borrow of
    /// the guard (a request's [`HeldLock`](crate::middleware::HeldLock)).
    pub(crate) fn lease(&self) -> Option<Arc<Record>> {
        self.parts.as_ref().map(|p| p.record.clone())
    }

    /// The fencing token: strictly greater than the fence of every earlier
    /// acquisition of this key, by any holder. Pass it with each write so the
    /// resource can refuse a write carrying a smaller fence than one it has
    /// already seen.
    pub fn fence(&self) -> u64 {
        self.parts.as_ref().map_or(0, |p| p.record.fence())
    }

    /// The lease length this lock was taken (and is renewed) with.
    pub fn ttl(&self) -> Duration {
        self.parts
            .as_ref()
            .map_or(Duration::ZERO, |p| p.record.ttl())
    }

    /// Whether the lease is known to be over: lost to renewal failure, run
    /// out on this process's monotonic clock, or released.
    ///
    /// `false` is not a guarantee: a paused process may not know yet. Use the
    /// [fence](Self::fence) where that matters.
    pub fn is_lost(&self) -> bool {
        self.parts.as_ref().is_none_or(|p| p.record.is_lost())
    }

    /// [`is_lost`](Self::is_lost) at `now`.
    pub(crate) fn is_lost_at(&self, now: Instant) -> bool {
        self.parts.as_ref().is_none_or(|p| p.record.is_lost_at(now))
    }

    /// Stops renewing the lease after `until` (see
    /// [`Record::renew_until`]).
    pub(crate) fn renew_until(&self, until: Instant) {
        if let Some(p) = &self.parts {
            p.record.renew_until(until);
        }
    }

    /// Resolves when the lease is over: the store refused a renewal, the
    /// lease ran out on this process's clock, or the lock was released
    /// (through [`Locker::release`](crate::Locker::release)). Use it to stop
    /// work that must not outlive the lock.
    ///
    /// The returned future does not borrow the guard.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes the lease.
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
    /// let guard = locker.acquire("job", Duration::from_millis(50)).await?;
    /// tokio::select! {
    ///     _ = guard.lost() => println!("lease ran out: stop writing"),
    ///     _ = tokio::time::sleep(Duration::from_secs(5)) => unreachable!(),
    /// }
    /// assert!(guard.is_lost());
    /// # Ok(())
    /// # }
    /// ```
    pub fn lost(&self) -> impl Future<Output = ()> + Send + use<> {
        let lost = self.parts.as_ref().map(|p| p.record.lost());
        async move {
            if let Some(lost) = lost {
                lost.await;
            }
        }
    }

    /// Restarts the lease at `ttl` from now.
    ///
    /// # Errors
    ///
    /// [`LockError::Lost`] when the store no longer holds this lease (it ran
    /// out or was taken over); [`LockError::InvalidTtl`] for a ttl out of
    /// bounds; [`LockError::Unavailable`] when the store can not be reached.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lock::Locker;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_lock::LockError> {
    /// let locker = Locker::in_memory();
    /// let guard = locker.acquire("job", Duration::from_secs(1)).await?;
    /// guard.extend(Duration::from_secs(30)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn extend(&self, ttl: Duration) -> Result<(), LockError> {
        crate::key::validate_ttl(ttl)?;
        let p = self.parts.as_ref().ok_or(LockError::NotHeld)?;
        p.record.extend(&**p.owner.backend(), ttl, false).await
    }

    /// Releases the lock now.
    ///
    /// # Errors
    ///
    /// [`LockError::Lost`] when the lease had already been lost (the lock may
    /// belong to someone else now, and was left alone);
    /// [`LockError::NotHeld`] when it was already released through
    /// [`Locker::release`](crate::Locker::release);
    /// [`LockError::Unavailable`] when the store could not be reached (the
    /// lease then ends at its ttl).
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future does not stop the release: it finishes
    /// in the background.
    pub async fn release(mut self) -> Result<(), LockError> {
        let Some(parts) = self.parts.take() else {
            return Err(LockError::NotHeld);
        };
        parts.report_release();
        parts.owner.release_from(parts.record, parts.runtime).await
    }
}

impl LockGuard {
    /// Replaces the value stored with the lease, keeping its fence (see
    /// [`AcquireRequest::value`](crate::backend::AcquireRequest::value)).
    pub(crate) async fn store_value(&self, value: &str) -> Result<(), LockError> {
        let parts = self.parts.as_ref().ok_or(LockError::NotHeld)?;
        parts.record.regrant(&**parts.owner.backend(), value).await
    }

    /// Releases on the spot where the store can answer so (see
    /// [`Backend::release_now`](crate::backend::Backend::release_now));
    /// `Err(self)`, unchanged, where the release needs I/O.
    pub(crate) fn release_now(mut self) -> Result<Result<(), LockError>, LockGuard> {
        let Some(parts) = self.parts.as_ref() else {
            return Ok(Err(LockError::NotHeld));
        };
        match parts.owner.release_here(&parts.record) {
            Some(outcome) => {
                parts.report_release();
                self.parts = None;
                Ok(outcome)
            }
            None => Err(self),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(parts) = self.parts.take() {
            parts.report_release();
            parts.owner.release_dropped(parts.record, parts.runtime);
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key())
            .field("fence", &self.fence())
            .field("lost", &self.is_lost())
            .finish()
    }
}
