//! [`Leadership`]: one candidate's term as leader.

use std::{fmt, future::Future};

use crate::{LockError, LockGuard};

/// This candidate leads its election; returned by
/// [`Election::campaign`](super::Election::campaign).
///
/// The lease behind it renews itself. It ends when it is
/// [resigned](Self::resign) or dropped (which resigns in the background),
/// or when it is lost: a renewal was refused, or none succeeded within the
/// election's renew deadline. Once [`is_lost`](Self::is_lost) is `true`,
/// stop acting as leader: another candidate may lead soon.
///
/// # Examples
///
/// ```
/// use tower_lock::{Locker, election::Election};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_lock::LockError> {
/// let election = Election::new(Locker::in_memory(), "nightly-report");
/// let mut leadership = election.campaign("node-a").await?;
/// let term = leadership.term(); // pass it to the resource as a fence
/// leadership.proclaim("node-a:9090").await?; // same term, new id
/// assert_eq!(leadership.term(), term);
/// assert_eq!(election.leader().await?.map(|leader| leader.id), Some("node-a:9090".into()));
/// leadership.resign().await?;
/// assert_eq!(election.leader().await?, None);
/// # Ok(())
/// # }
/// ```
#[must_use = "dropping a leadership resigns it at once"]
#[clippy::has_significant_drop]
pub struct Leadership {
    guard: LockGuard,
    id: String,
}

impl Leadership {
    pub(super) fn new(guard: LockGuard, id: String) -> Self {
        Leadership { guard, id }
    }

    /// The term: the fence of this leadership, strictly greater than the
    /// term of every earlier leadership of the election. Hand it to the
    /// resources the leader writes to, so that they refuse a deposed
    /// leader's late writes.
    pub fn term(&self) -> u64 {
        self.guard.fence()
    }

    /// The id this candidate leads under, as others read it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this leadership is known to be over: lost (a renewal was
    /// refused, or none succeeded within the renew deadline, counted on
    /// this process's monotonic clock) or resigned.
    ///
    /// Check it before each action that only the leader may take. `false`
    /// just after a system suspend is not to be trusted: see [Clocks and
    /// suspend](super#clocks-and-suspend).
    pub fn is_lost(&self) -> bool {
        self.guard.is_lost()
    }

    /// Resolves when this leadership is over (see [`is_lost`](Self::is_lost)),
    /// at the renew deadline at the latest if renewals stop succeeding.
    ///
    /// The future does not borrow the leadership.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes the lease.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + use<> {
        self.guard.lost()
    }

    /// Tells, once [`lost`](Self::lost) has fired, whether the leadership
    /// was resigned by its holder rather than lost.
    pub(super) fn resigned(&self) -> impl Fn() -> bool + Send + use<> {
        let record = self.guard.lease();
        move || record.as_ref().is_some_and(|record| record.was_given_up())
    }

    /// Changes the id stored with the leadership, keeping its term:
    /// observers see the new id.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidSetting`] for an empty id or one over 1024
    /// bytes (nothing changes); [`LockError::Lost`] when the leadership was
    /// lost meanwhile (it then counts as lost); [`LockError::Unavailable`]
    /// when the store could not be reached (the old id stays).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped mid-way, the store may hold either id.
    pub async fn proclaim(&mut self, id: &str) -> Result<(), LockError> {
        super::validate_id(id)?;
        self.guard.store_value(id).await?;
        id.clone_into(&mut self.id);
        Ok(())
    }

    /// Gives up leadership now: observers see no leader (or the next one)
    /// within one wake-up, and the next candidate may take over at once.
    ///
    /// # Errors
    ///
    /// [`LockError::Lost`] when the leadership had already been lost (the
    /// store is left alone: it may have a new leader);
    /// [`LockError::Unavailable`] when the store could not be reached (the
    /// lease then ends at its ttl, and this candidate counts it lost).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not stop the resignation.
    pub async fn resign(self) -> Result<(), LockError> {
        self.guard.release().await
    }
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("id", &self.id)
            .field("term", &self.term())
            .field("lost", &self.is_lost())
            .finish()
    }
}
