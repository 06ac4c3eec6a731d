//! Leader election: one candidate of a fleet leads at a time, others watch.
//!
//! An [`Election`] is a named lease on any backend. [`campaign`] waits
//! until this candidate leads and returns its [`Leadership`], whose
//! [`term`] is a fence; [`observe`] keeps anyone up to date with who
//! leads, leaderless spells included; [`run_while_leader`] is the
//! scheduled-job case in one call.
//!
//! ```
//! use std::time::Duration;
//! use tower_lock::{Locker, election::Election};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_lock::LockError> {
//! let locker = Locker::in_memory();
//! let election = Election::new(locker.clone(), "nightly-report")
//!     .ttl(Duration::from_secs(15))
//!     .renew_deadline(Duration::from_secs(10))
//!     .renew_every(Duration::from_secs(2));
//!
//! let mut leader = election.observe().await?; // a tokio watch of Option<Leader>
//! assert!(leader.borrow().is_none()); // read from the store: nobody leads yet
//! let leadership = election.campaign("node-a").await?;
//! leader.wait_for(|now| now.is_some()).await.unwrap();
//! assert_eq!(leader.borrow().as_ref().map(|l| l.term), Some(leadership.term()));
//!
//! leadership.resign().await?;
//! leader.wait_for(Option::is_none).await.unwrap(); // nobody leads now
//! # Ok(())
//! # }
//! ```
//!
//! Election keys live in a namespace of their own: no lock key a user (or
//! an HTTP request) can pass to [`Locker`] names an election's lease.
//!
//! # Choosing the timings
//!
//! - **`ttl`** (default 15 s): the lease in the store. A leader that
//!   crashes blocks the election for this long; a shorter one fails over
//!   faster and renews more often.
//! - **`renew_deadline`** (default 10 s): a leader that has had no
//!   successful renewal for this long, counted from the send time of its
//!   last successful one, counts itself lost, before the store can let
//!   anyone else win. `ttl − renew_deadline` is the safety margin: it has
//!   to cover how much faster the store's clock (or, on NATS, another
//!   candidate's) may run than the leader's over one ttl.
//! - **`renew_every`** (default 2 s): how often the leader renews. Each
//!   renewal is one round trip to the store; several must fit within the
//!   deadline, so that one slow or failed request does not cost the
//!   leadership.
//!
//! They must satisfy `ttl > renew_deadline > renew_every` (as client-go's
//! leader election requires); [`campaign`] refuses others with
//! [`LockError::InvalidSetting`]. The defaults are client-go's.
//!
//! # What the term is for
//!
//! [`Leadership::term`] is the lease's fence: strictly greater for every
//! new leadership of the election, across restarts of the store (under
//! each backend's fence rule). A leader that was paused can act after its
//! term ended, before it notices; a resource that stores the highest term
//! it has seen and refuses writes with a lower one makes such a late write
//! harmless. Pass it along with every write only the leader may make.
//!
//! # Stopping before anyone else leads
//!
//! A leader counts itself lost `renew_deadline` after the send time of its
//! last successful renewal, on its own monotonic clock, whether or not its
//! requests come back. The store hands the lease on no earlier than `ttl`
//! after it received that renewal: Redis by the server's clock, the
//! in-memory backend by its process's clock, NATS by each waiting
//! candidate's clock from when it first saw that renewal's write. So as
//! long as no other clock involved runs faster than the leader's by more
//! than `ttl − renew_deadline` over one ttl, the old leader's
//! [`Leadership::lost`] has fired before a new leader's [`campaign`]
//! returns. [`run_while_leader`] drops the job's future then.
//!
//! # Clocks and suspend
//!
//! A system suspend (a laptop's sleep, a VM paused by its host) stops the
//! monotonic clock that [`std::time::Instant`] and tokio read, while the
//! store's time runs on. A leader that wakes from suspend may still read
//! `is_lost() == false` for a lease that ran out long ago, until its next
//! renewal is refused. Where suspend can happen, re-check with the store
//! before acting ([`Election::leader`] and compare the term), and rely on
//! the term as a fence.
//!
//! # A store that lost its state
//!
//! After a Redis restart without persistence, a `FLUSHALL`, a failover that
//! lost recent writes, or a NATS bucket deleted and created again, the old
//! lease is gone while the old leader still counts on it until its next
//! renewal fails. A candidate does not win until the old leader has counted
//! itself lost:
//!
//! - a backend that saw the loss (its Redis connection was reset, its NATS
//!   bucket's stream has a new creation time) lets no candidate win for one
//!   ttl after it noticed;
//! - any backend, also one started after the loss, holds a candidate back
//!   until the store is one ttl old by the server's clock: on Redis, the
//!   store's epoch (a key written again once the old one is gone), read
//!   when the election's key has no fence counter; on NATS, the bucket's
//!   stream. A new store's first election therefore waits up to one ttl,
//!   once.
//!
//! While a candidate is held back nothing is written, so
//! [`Election::leader`] and [`observe`] report no leader for it. What no
//! backend can see (a failover to a replica that lagged but kept the fence
//! counter, a restore from an older snapshot, a server clock that stepped
//! forward) is listed in the `redis` and `nats` module docs; there the
//! term still tells the two leaders apart.
//!
//! # Cancel safety and fairness
//!
//! Dropping a [`campaign`] future leaves no lease and no waiter. Candidates
//! in one process are served in the order they started campaigning; across
//! processes, as [`Locker`] serves waiters on the backend.
//!
//! [`campaign`]: Election::campaign
//! [`observe`]: Election::observe
//! [`run_while_leader`]: Election::run_while_leader
//! [`term`]: Leadership::term

mod leadership;
mod observer;

use std::{
    fmt,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use smol_str::SmolStr;
use tokio::sync::watch;

pub use self::leadership::Leadership;
use crate::{
    LockError, Locker,
    backend::Holding,
    key::{election_key, validate_ttl},
};

/// The default lease of an election.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);
/// The default renew deadline of an election.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// The default renewal interval of an election.
pub const DEFAULT_RENEW_EVERY: Duration = Duration::from_secs(2);

/// The longest candidate id, in bytes.
pub const MAX_ID_LEN: usize = 1024;

/// The first pause of [`Election::run_while_leader`] after the store
/// failed a campaign; doubles to `RETRY_MAX`.
const RETRY_START: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Who leads an election, as [`Election::observe`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leader {
    /// The id the leader campaigned (or last proclaimed) with.
    pub id: String,
    /// Its term (see [`Leadership::term`]).
    pub term: u64,
}

impl Leader {
    /// The leader `id` in `term`.
    ///
    /// ```
    /// let leader = tower_lock::election::Leader::new("node-a", 7);
    /// assert_eq!((leader.id.as_str(), leader.term), ("node-a", 7));
    /// ```
    pub fn new(id: impl Into<String>, term: u64) -> Self {
        Leader {
            id: id.into(),
            term,
        }
    }
}

impl Leader {
    /// The leader a holding of the election's key names.
    pub(super) fn of(holding: Holding) -> Self {
        Leader::new(holding.value.unwrap_or_default(), holding.fence)
    }
}

/// A named election over a [`Locker`]'s backend. Cheap to clone; clones
/// share one observer.
///
/// See the [module docs](self) for timings and guarantees.
///
/// ```
/// use std::time::Duration;
/// use tower_lock::{Locker, election::Election};
///
/// let election = Election::new(Locker::in_memory(), "nightly-report")
///     .ttl(Duration::from_secs(6))
///     .renew_deadline(Duration::from_secs(4))
///     .renew_every(Duration::from_secs(1));
/// ```
#[derive(Clone)]
pub struct Election {
    locker: Locker,
    name: Arc<str>,
    ttl: Duration,
    renew_deadline: Duration,
    renew_every: Duration,
    /// The observer's channel, while its task runs.
    observer: Arc<Mutex<Option<watch::Sender<Option<Leader>>>>>,
}

impl Election {
    /// The election `name` on `locker`'s backend, with the default timings.
    /// Candidates (and observers) of one election use the same name on the
    /// same store.
    ///
    /// A name that is not a valid lock key (empty, over 502 bytes, or
    /// starting with a NUL byte) is reported by [`campaign`](Self::campaign)
    /// and [`leader`](Self::leader).
    pub fn new(locker: Locker, name: &str) -> Self {
        Election {
            locker,
            name: name.into(),
            ttl: DEFAULT_TTL,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            renew_every: DEFAULT_RENEW_EVERY,
            observer: Arc::default(),
        }
    }

    /// Sets the lease (default [`DEFAULT_TTL`]).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets how long a leader counts on its lease without a successful
    /// renewal (default [`DEFAULT_RENEW_DEADLINE`]).
    pub fn renew_deadline(mut self, deadline: Duration) -> Self {
        self.renew_deadline = deadline;
        self
    }

    /// Sets how often the leader renews (default [`DEFAULT_RENEW_EVERY`]).
    pub fn renew_every(mut self, every: Duration) -> Self {
        self.renew_every = every;
        self
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The store key of the election, checked with its timings.
    fn checked(&self) -> Result<SmolStr, LockError> {
        validate_ttl(self.ttl)?;
        let invalid = |reason: String| {
            Err(LockError::InvalidSetting {
                setting: "election timings",
                reason,
            })
        };
        let (ttl, deadline, every) = (self.ttl, self.renew_deadline, self.renew_every);
        if deadline >= ttl {
            return invalid(format!(
                "the renew deadline ({deadline:?}) must be shorter than the ttl ({ttl:?})"
            ));
        }
        if every.is_zero() || every >= deadline {
            return invalid(format!(
                "the renewal interval ({every:?}) must be above zero and shorter than the renew \
                 deadline ({deadline:?})"
            ));
        }
        election_key(&self.name)
    }

    /// Waits until this candidate leads, storing `id` (a host name, an
    /// address: anything others should read) with its lease.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidSetting`] for timings out of order or an empty
    /// or overlong id, [`LockError::InvalidKey`] for a bad election name
    /// (nothing is sent to the store); [`LockError::Unavailable`] when the
    /// store fails the first try (later failures are retried while
    /// waiting).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future leaves no lease and no waiter.
    pub async fn campaign(&self, id: &str) -> Result<Leadership, LockError> {
        let key = self.checked()?;
        validate_id(id)?;
        let candidate = self
            .locker
            .clone()
            .auto_renew(true)
            .renew_every(self.renew_every)
            .renew_deadline(self.renew_deadline)
            .with_value(id);
        let guard = candidate.lock_checked(key, self.ttl, None).await?;
        Ok(Leadership::new(guard, id.to_owned()))
    }

    /// Who leads now, read from the store once.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidKey`] for a bad election name;
    /// [`LockError::Unavailable`] when the store can not be reached.
    pub async fn leader(&self) -> Result<Option<Leader>, LockError> {
        let key = election_key(&self.name)?;
        let holding = self.locker.backend().holder(&key).await?;
        Ok(holding.map(Leader::of))
    }

    /// Watches who leads, from a first read of the store on: the receiver
    /// starts with who leads now (`None`: nobody), and then holds the
    /// latest leader this process has read (a new leader, a new id, and
    /// `None` once the leader resigned or its lease ran out).
    ///
    /// A [`watch`] channel keeps only the latest value: a receiver that
    /// looks less often than the leader changes sees the newest state, not
    /// each one in between ([`changed`](watch::Receiver::changed) resolves
    /// once for any number of changes since it last looked). Compare
    /// [`Leader::term`]s to tell that the leadership changed hands.
    ///
    /// One task per election and process reads the store after each
    /// wake-up the backend sends for the election (a grant, a release) and
    /// when the leader's lease may have run out; it stops when the last
    /// receiver is dropped. Receivers of one election in one process share
    /// it, and a receiver taken while it runs starts with its latest read.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidKey`] for a bad election name;
    /// [`LockError::Unavailable`] when the first read fails (later failures
    /// are retried, the receiver keeping the last leader read);
    /// [`LockError::InvalidSetting`] outside a tokio runtime, where nothing
    /// could keep the receiver up to date.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call leaves no task behind.
    pub async fn observe(&self) -> Result<watch::Receiver<Option<Leader>>, LockError> {
        let key = election_key(&self.name)?;
        if let Some(receiver) = running(&crate::sync::lock(&self.observer)) {
            return Ok(receiver);
        }
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| LockError::InvalidSetting {
                setting: "runtime",
                reason: "Election::observe needs a tokio runtime to keep the leader up to date"
                    .into(),
            })?;
        let now = self.leader().await?;
        let mut observer = crate::sync::lock(&self.observer);
        // Another call may have started the task while this one read.
        if let Some(receiver) = running(&observer) {
            return Ok(receiver);
        }
        let (sender, receiver) = watch::channel(now);
        runtime.spawn(observer::run(
            self.locker.backend().clone(),
            key,
            self.ttl,
            sender.clone(),
        ));
        *observer = Some(sender);
        Ok(receiver)
    }

    /// Leads whenever it can, running `job` while it leads: campaigns as
    /// `id`, runs `job(leadership)`, drops the job's future when the
    /// leadership is lost, and campaigns again. Returns what the job
    /// returns, once one runs to its end while leading (the leadership it
    /// was given resigns when dropped); runs until the returned future is
    /// dropped otherwise.
    ///
    /// Store failures while campaigning are retried with a backoff (50 ms
    /// doubling to 2 s).
    ///
    /// # Errors
    ///
    /// As for [`campaign`](Self::campaign), for bad input only.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future drops the job and resigns.
    ///
    /// ```
    /// use tower_lock::{Locker, election::Election};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_lock::LockError> {
    /// let election = Election::new(Locker::in_memory(), "nightly-report");
    /// let report = election
    ///     .run_while_leader("node-a", |leadership| async move {
    ///         // the scheduled job, with leadership.term() as its fence
    ///         format!("report written under term {}", leadership.term())
    ///     })
    ///     .await?;
    /// assert!(report.starts_with("report written"));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn run_while_leader<F, Fut, T>(&self, id: &str, mut job: F) -> Result<T, LockError>
    where
        F: FnMut(Leadership) -> Fut,
        Fut: Future<Output = T>,
    {
        // Bad input fails the first campaign, which returns it.
        let mut retry = RETRY_START;
        loop {
            let leadership = match self.campaign(id).await {
                Ok(leadership) => leadership,
                Err(err @ LockError::Unavailable { .. }) => {
                    tracing::warn!(election = %self.name, error = %err, "campaign failed; retrying");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
                Err(err) => return Err(err),
            };
            retry = RETRY_START;
            let (lost, term) = (leadership.lost(), leadership.term());
            let resigned = leadership.resigned();
            tracing::info!(election = %self.name, term, "leading");
            let job = job(leadership);
            tokio::pin!(job);
            tokio::select! {
                // A job that is ready in the same poll as the loss is not
                // trusted with its result.
                biased;
                () = lost => {
                    // The job gave its leadership up itself: it runs to its
                    // end, as its own choice.
                    if resigned() {
                        return Ok(job.await);
                    }
                    tracing::warn!(election = %self.name, term, "leadership lost; campaigning again");
                }
                done = &mut job => return Ok(done),
            }
        }
    }
}

/// A receiver of an election's observer task, if one runs.
fn running(
    observer: &Option<watch::Sender<Option<Leader>>>,
) -> Option<watch::Receiver<Option<Leader>>> {
    observer
        .as_ref()
        .filter(|sender| !sender.is_closed())
        .map(watch::Sender::subscribe)
}

/// Candidate ids are stored with the lease: not empty (the stores read an
/// empty value as none), and bounded.
fn validate_id(id: &str) -> Result<(), LockError> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.len() > MAX_ID_LEN {
        "it is longer than 1024 bytes"
    } else {
        return Ok(());
    };
    Err(LockError::InvalidSetting {
        setting: "candidate id",
        reason: reason.to_owned(),
    })
}

impl fmt::Debug for Election {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Election")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .field("renew_deadline", &self.renew_deadline)
            .field("renew_every", &self.renew_every)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_out_of_order_are_refused() {
        let s = Duration::from_secs;
        let election = |ttl, deadline, every| {
            Election::new(Locker::in_memory(), "e")
                .ttl(ttl)
                .renew_deadline(deadline)
                .renew_every(every)
                .checked()
        };
        assert!(election(s(15), s(10), s(2)).is_ok());
        for (ttl, deadline, every) in [
            (s(10), s(10), s(2)),
            (s(10), s(11), s(2)),
            (s(15), s(10), s(10)),
            (s(15), s(10), Duration::ZERO),
        ] {
            let err = election(ttl, deadline, every).unwrap_err();
            assert!(
                matches!(
                    err,
                    LockError::InvalidSetting {
                        setting: "election timings",
                        ..
                    }
                ),
                "{ttl:?} {deadline:?} {every:?}: {err}"
            );
        }
        assert!(matches!(
            election(Duration::ZERO, Duration::ZERO, Duration::ZERO),
            Err(LockError::InvalidTtl { .. })
        ));
    }

    #[test]
    fn ids_must_be_present_and_bounded() {
        assert!(validate_id("node-a").is_ok());
        assert!(validate_id(&"x".repeat(MAX_ID_LEN)).is_ok());
        for bad in [String::new(), "x".repeat(MAX_ID_LEN + 1)] {
            assert!(matches!(
                validate_id(&bad),
                Err(LockError::InvalidSetting {
                    setting: "candidate id",
                    ..
                })
            ));
        }
    }
}
