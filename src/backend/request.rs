//! What crosses the [`Backend`](super::Backend) trait: the acquire request,
//! its answer, a held lease, and a key's holder.

use std::time::Duration;

use super::token::Token;

/// A request to take a key, for
/// [`Backend::try_acquire`](super::Backend::try_acquire).
///
/// Fields are added as lock kinds grow; make one with
/// [`new`](Self::new).
///
/// ```
/// use std::time::Duration;
/// use tower_lock::backend::{AcquireRequest, Token};
///
/// let request = AcquireRequest::new("invoice:42", Token::new(), Duration::from_secs(5));
/// assert!(!request.waiting);
/// assert!(request.waiting(true).waiting);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AcquireRequest<'a> {
    /// The lock key.
    pub key: &'a str,
    /// The identity the lease is taken with.
    pub token: Token,
    /// The lease length.
    pub ttl: Duration,
    /// Whether the caller waits for the key if it is busy: it has
    /// [subscribed](super::Backend::subscribe) to the key's wake-ups before
    /// this request, and tries again when woken. A store with a waiter
    /// queue may queue such a caller; `false` is a one-off try
    /// ([`Locker::try_lock`](crate::Locker::try_lock), or the first try of
    /// an acquire) that must never be queued.
    pub waiting: bool,
    /// Whether, besides this waiting caller, others of its process wait for
    /// the key behind it. A store that queues waiters and grants such a
    /// request keeps the caller's place, moved to the tail of its queue, so
    /// that the next of them is served in its turn without a try of its own
    /// to join the queue; the locker then waits for that turn's wake-up.
    pub queued_behind: bool,
    /// A value stored with the lease (an election's leader id), readable by
    /// anyone through [`Backend::holder`](super::Backend::holder). A grant
    /// of a lease with a value wakes the key's subscribers, so observers
    /// learn of a new holder; leases without one (plain locks) wake nobody
    /// when taken.
    ///
    /// A retry with the holder's own token replaces the value and keeps the
    /// fence: that is how a leader changes its id without a new term.
    pub value: Option<&'a str>,
    /// The kind of lease asked for: exclusive (the default), shared, or
    /// one of a number of permits.
    pub kind: LeaseKind,
}

impl<'a> AcquireRequest<'a> {
    /// A one-off try for `key`, with `token`, for `ttl`.
    pub fn new(key: &'a str, token: Token, ttl: Duration) -> Self {
        AcquireRequest {
            key,
            token,
            ttl,
            waiting: false,
            queued_behind: false,
            value: None,
            kind: LeaseKind::Exclusive,
        }
    }

    /// Sets [`waiting`](Self::waiting).
    pub fn waiting(mut self, waiting: bool) -> Self {
        self.waiting = waiting;
        self
    }

    /// Sets [`queued_behind`](Self::queued_behind).
    pub fn queued_behind(mut self, queued_behind: bool) -> Self {
        self.queued_behind = queued_behind;
        self
    }

    /// Sets [`value`](Self::value).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lock::backend::{AcquireRequest, Token};
    ///
    /// let request = AcquireRequest::new("leader", Token::new(), Duration::from_secs(5));
    /// assert_eq!(request.value(Some("node-a")).value, Some("node-a"));
    /// ```
    pub fn value(mut self, value: Option<&'a str>) -> Self {
        self.value = value;
        self
    }

    /// Sets [`kind`](Self::kind).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lock::backend::{AcquireRequest, LeaseKind, Token};
    ///
    /// let request = AcquireRequest::new("doc:1", Token::new(), Duration::from_secs(5));
    /// assert_eq!(request.kind(LeaseKind::Shared).kind, LeaseKind::Shared);
    /// ```
    pub fn kind(mut self, kind: LeaseKind) -> Self {
        self.kind = kind;
        self
    }
}

/// How long an exclusive waiter's claim on a key lasts (see
/// [`LeaseKind::Shared`]): twice the longest backoff step, so a waiter that
/// keeps trying keeps it, and one that crashed lets readers in again soon.
pub(crate) const WRITER_CLAIM: Duration = Duration::from_secs(1);

/// How a lease shares its key with others.
///
/// Leases of a key are compatible only with leases of the same kind:
/// shared ones with each other, counted ones with others of the same
/// `permits` up to that many at once, and an exclusive lease with none.
/// Every kind draws its fence from the key's one sequence, so fences
/// increase over all acquisitions of a key, whatever their kind.
///
/// A store may treat every kind as exclusive: that never breaks exclusion,
/// it only shares less.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LeaseKind {
    /// The only holder of the key.
    #[default]
    Exclusive,
    /// One of any number of shared holders; none while an exclusive lease
    /// holds the key, and none newly granted while an exclusive waiter
    /// claims it.
    ///
    /// A [waiting](AcquireRequest::waiting) exclusive request that finds the
    /// key held claims it for one second from that answer (each such try
    /// renews the claim; an exclusive grant ends it). While a claim runs,
    /// shared and counted requests are answered busy, so a stream of readers
    /// cannot starve a writer.
    Shared,
    /// One of at most `permits` holders at once. The count is stored with
    /// the key by its first holder; a request with another count while
    /// the key has holders is refused with
    /// [`LockError::PermitsMismatch`](crate::LockError::PermitsMismatch).
    /// Two requests with different counts that meet at the same moment may
    /// both be refused (on NATS, each sees the other's entry); never both
    /// granted.
    Counted {
        /// How many holders the key allows at once (at least 1).
        permits: u32,
    },
}

/// The outcome of [`Backend::try_acquire`](super::Backend::try_acquire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Attempt {
    /// The key is now held by the caller's token.
    Acquired {
        /// The fencing token: strictly greater than every earlier fence of
        /// the key.
        fence: u64,
        /// A backend-specific version of the stored lease, handed back in
        /// [`Lease::revision`] (the key's revision on NATS; the fence where a
        /// store has no such notion).
        revision: u64,
    },
    /// Somebody else holds the key.
    Busy {
        /// How long the holder's lease still runs, when the store says.
        remaining: Option<Duration>,
    },
    /// Somebody else holds the key, and the store has put the caller in its
    /// queue for it: a wake-up comes when the caller's turn does, so the
    /// waiter has no need to poll. It still tries again once `remaining`
    /// (the holder's lease, or the turn reserved for another waiter) runs
    /// out, and at the longest backoff step at the latest, in case a wake-up
    /// is lost.
    Queued {
        /// How long the holder's lease (or the turn held for the waiter
        /// ahead) still runs, when the store says.
        remaining: Option<Duration>,
    },
}

/// What identifies one holding of a key to its backend.
///
/// Either a grant the store answered ([`Lease::granted`]), or a try whose
/// answer was lost ([`Lease::unanswered`]): the store may have granted it,
/// and only the token and the kind are known.
///
/// ```
/// use tower_lock::backend::{Lease, LeaseKind, Token};
///
/// let token = Token::new();
/// let held = Lease::granted(token, LeaseKind::Exclusive, 7, 3);
/// assert!(!held.is_unanswered());
/// // A real revision 0 is still a grant, never a lost answer.
/// assert!(!Lease::granted(token, LeaseKind::Exclusive, 0, 0).is_unanswered());
/// assert!(Lease::unanswered(token, LeaseKind::Shared).is_unanswered());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The token the key was taken with.
    pub token: Token,
    /// The fence returned with the acquisition (0 when
    /// [unanswered](Self::is_unanswered)).
    pub fence: u64,
    /// The lease's current revision (see [`Attempt::Acquired`]); updated by
    /// each successful [`Backend::extend`](super::Backend::extend) (0 when
    /// [unanswered](Self::is_unanswered)).
    pub revision: u64,
    /// The kind of lease it is ([`AcquireRequest::kind`] of its grant).
    pub kind: LeaseKind,
    unanswered: bool,
}

impl Lease {
    /// The lease of a grant: the fence and revision of
    /// [`Attempt::Acquired`].
    pub fn granted(token: Token, kind: LeaseKind, fence: u64, revision: u64) -> Self {
        Self {
            token,
            fence,
            revision,
            kind,
            unanswered: false,
        }
    }

    /// The lease a try of `token` may have been granted when its answer was
    /// lost: its fence and revision are unknown, so a store finds it by its
    /// token alone.
    pub fn unanswered(token: Token, kind: LeaseKind) -> Self {
        Self {
            unanswered: true,
            ..Self::granted(token, kind, 0, 0)
        }
    }

    /// Whether this is the lease of a try whose answer was lost
    /// ([`Lease::unanswered`]).
    pub fn is_unanswered(&self) -> bool {
        self.unanswered
    }
}

/// Who holds a key, from [`Backend::holder`](super::Backend::holder).
///
/// ```
/// use std::time::Duration;
/// use tower_lock::backend::{Holding, Token};
///
/// let holding = Holding::new(Token::new(), 7, Some(Duration::from_secs(3)));
/// assert_eq!(holding.fence, 7);
/// assert_eq!(holding.with_value(Some("node-a".into())).value.as_deref(), Some("node-a"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holding {
    /// The holder's token.
    pub token: Token,
    /// The fence of the holder's acquisition.
    pub fence: u64,
    /// How long its lease still runs, when the store says.
    pub remaining: Option<Duration>,
    /// The value stored with the lease
    /// ([`AcquireRequest::value`]), if it has one.
    pub value: Option<String>,
}

impl Holding {
    /// The holding of `token`, acquired with `fence`, with `remaining` left.
    pub fn new(token: Token, fence: u64, remaining: Option<Duration>) -> Self {
        Holding {
            token,
            fence,
            remaining,
            value: None,
        }
    }

    /// Sets [`value`](Self::value).
    pub fn with_value(mut self, value: Option<String>) -> Self {
        self.value = value;
        self
    }
}
