// Over 400 lines: a sixth is the backend's manual (the module docs), and the
// rest is the backend type, its builder, the few bucket operations its
// `Backend` impl is built from, and that impl, all over one bucket's
// handles; the parts that stand alone (bucket, key, lease, watch) are
// modules of their own.
//! [`NatsBackend`]: locks in a NATS JetStream key-value bucket.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_lock::{Locker, nats::NatsBackend};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = async_nats::connect("127.0.0.1:4222").await?;
//! let js = async_nats::jetstream::new(client);
//! let locker = Locker::new(NatsBackend::new(js, "my-locks").await?);
//!
//! let guard = locker.acquire("invoice:42", Duration::from_secs(10)).await?;
//! println!("writing with fence {}", guard.fence());
//! guard.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # How it works
//!
//! Each lock is one key of the bucket (history 1), holding the holder's
//! token and lease length, and, once renewed or when it carries one, its
//! fence and the value stored with it (an election's leader id).
//!
//! - **Acquire** creates the key only if it has no message at all (a
//!   compare-and-set on "no last revision"). The fence is the bucket
//!   stream's creation time in microseconds plus the revision of that write
//!   (a stream sequence, strictly increasing for every key of the bucket),
//!   so fences keep growing when the bucket is deleted and created again;
//!   see [Fences](#fences). A key that already holds the caller's token is
//!   granted again (renewed at its revision, with the same fence): a retry
//!   of a try whose answer was lost, or a leader storing a new id.
//! - **Release** first reads the key from the stream leader, then deletes
//!   exactly that message, by its sequence, if it carries the holder's
//!   token: it can never remove another holder, and leaves the key with no
//!   message at all, so nothing stays behind in the bucket. See
//!   [The token is the authority](#the-token-is-the-authority).
//! - **Extend** reads the key the same way, then rewrites the lease at the
//!   revision that carries the holder's token, with its fence and value,
//!   and returns the new revision. It refuses (the lease is lost) once the
//!   lease ran out on this backend's own clock, so it never races a
//!   takeover, and once the stream is not the one it was granted in.
//! - **Wake-ups**: a release announces itself on the plain NATS subject
//!   `tower-lock.<bucket>.released.<key>`, as does a grant of a lease with
//!   a value (an election's new leader); each backend subscribes once and
//!   wakes that key's waiters and observers. The release of a lease with a
//!   value waits until its announcement has left, since a leader often
//!   resigns as its process exits. A lost announcement costs one backoff step.
//!   One watch over the bucket per backend records new leases (so waiters
//!   measure them from when they appeared) and, after it fails and is
//!   re-established, wakes every waiter. An announcement only wakes:
//!   nothing it carries grants, creates or deletes anything. The waiter
//!   reads the key again and decides from what the store answers, and what
//!   it measured of a lease stands, so whoever may publish on that subject
//!   can never let a waiter in, nor keep an abandoned lock from being
//!   reclaimed. (A counted release's announcement names the freed slot; see
//!   [Writer claims](#writer-claims) for how little that hint may do.)
//!
//! Why creates on empty keys and exact deletes: on a replicated bucket,
//! nats-server before 2.9.21 checks a write's expected revision only on the
//! stream leader, before replication, so two concurrent compare-and-sets at
//! the same revision can both succeed
//! ([nats-server#4320](https://github.com/nats-io/nats-server/issues/4320)).
//! A create on an empty key, and a delete of one message by sequence, are
//! decided by every replica in log order, on every version.
//!
//! # Shared and counted locks
//!
//! Shared and counted leases ([`LeaseKind`]) are built from the same two
//! operations as the exclusive one, a create on a key with no message and
//! an exact delete of one message by its sequence, and every holder has an
//! entry of its own. For a lock key `K` (encoded, so it never holds a `.`,
//! and these keys are never another lock's):
//!
//! | key | what it holds |
//! |-----|---------------|
//! | `K` | the exclusive lease, as above |
//! | `K.r.<token>` | one shared holder |
//! | `K.p.<permits>.<slot>` | one of `permits` counted holders, `slot` in `0..permits` |
//! | `K.w` | a waiting writer's claim |
//!
//! Each acquirer writes its entry first, then reads for entries it must not
//! coexist with, and if it finds a live one, deletes exactly its own message
//! again and answers busy. These reads are `STREAM.MSG.GET` and
//! `STREAM.INFO` requests, which only the stream leader answers (never a
//! direct get, which a lagging replica may answer):
//!
//! - **Exclusive**: after creating `K`, the first entry matching `K.*.>`:
//!   every shared and counted holder, and no claim (`K.w` has one token
//!   less). One more round trip than the exclusive lock took before shared
//!   locks existed (see the NATS bench for figures).
//! - **Shared**: after creating `K.r.<token>`, at once: `K`, `K.w`, and the
//!   first entry matching `K.p.>`.
//! - **Counted**: first the list of `K.p.>` and the claim, so that a full
//!   key, a live claim and a live holder of another count are answered
//!   without a write ([`LockError::PermitsMismatch`] for the last); then a
//!   free slot is created (one picked at random, so that contenders spread
//!   over the free ones), then at once: `K`, the first entry matching
//!   `K.r.>`, and the list of `K.p.>` again, for holders of another count.
//!
//! An entry found whose lease ran out (measured from first sight for a
//! whole ttl, as for the exclusive lock: the same holder's token at the
//! same revision all along) is removed by the sequence of the read that
//! found it, and counts as absent. Renewal rewrites a holder's own entry
//! at the revision that carries its token, and release deletes it by the
//! sequence a read just found its token at, then announces the release on
//! the lock key's subject. [`Backend::holder`] reports exclusive leases only: a
//! key held shared or counted reports `None`.
//!
//! ## Why no two incompatible holders meet
//!
//! 1. The stream orders every write. The leader acknowledges a create only
//!    once it has applied it (on a replicated bucket, once a quorum stored
//!    it), and answers a read from its applied state, so a read sent after
//!    an acknowledgement sees that write and every write ordered before it.
//! 2. Take two acquirers whose leases are incompatible (a writer and a
//!    reader; a reader and a counted holder; counted holders of two counts).
//!    Each creates its entry, then reads for the other's. Their creates are
//!    ordered: say A's comes first. B reads after B's create was
//!    acknowledged, so after A's create, and finds A's entry unless it is
//!    gone; an entry goes only by its holder's release or withdrawal (A
//!    holds nothing then) or by a takeover after A's lease ran out, which
//!    comes after A's own deadline (A's deadline started before its write;
//!    the taker measured a whole ttl from a later moment). So at least one
//!    of them finds the other and withdraws: they never both hold. (Both may
//!    withdraw; they then wait and try again, and the writer's claim keeps
//!    new readers from coming back in its way.)
//! 3. Counted holders of one count each hold one of `permits` keys, each
//!    created only on an empty key: at most `permits` live holders.
//! 4. Fences are `created + revision` of the holder's entry. A holder
//!    granted while or after an incompatible one held wrote its entry after
//!    that one's (by 2., the later creator is the one that checks and finds
//!    it), so a writer after readers has a greater fence than each of them,
//!    and readers after a writer greater ones than the writer's.
//!
//! Nothing in this relies on a compare-and-set at a revision, which before
//! nats-server 2.9.21 only the stream leader checks, before replication
//! ([nats-server#4320](https://github.com/nats-io/nats-server/issues/4320)):
//! creates on empty keys and exact deletes are decided by every replica in
//! log order, and the reads go to the leader. Shared and counted locks are
//! therefore not refused on replicated buckets of older servers. The one
//! compare-and-set is a holder's renewal of its own entry, which nobody
//! else writes while the lease runs on the holder's clock (as for the
//! exclusive lock). The argument assumes that a newly elected stream leader
//! answers reads with every write its predecessor acknowledged applied.
//!
//! ## Writer claims
//!
//! A waiting exclusive try that is refused writes `K.w` (at most every
//! 250 ms per backend while it keeps being refused). A claim only delays
//! shared and counted requests, never decides who holds what, so it is a
//! plain write. While one is live, shared and counted requests are busy;
//! exclusive ones pass it by. A one-off try reads the claim from the
//! leader; a waiting one reads it only when its backend's watch saw one
//! written (it is subscribed to the key, so the watch records claims on
//! it). How this differs from the claim the backend contract describes
//! ([`LeaseKind::Shared`]), since no clocks are compared:
//!
//! - A claim keeps readers out for one second from when each backend first
//!   sees it (the watch records it as it is written, for keys that backend
//!   waits for), so a reader that first sees it late may wait up to a
//!   second longer than the writer's own second.
//! - The writer's grant ends its claim (deletes its message) unless others
//!   of its process wait behind it, for whom it stands; a backend that
//!   gives up waiting for the key withdraws it. Another backend's grant
//!   does not end it: it lapses within its second.
//! - A shared or counted try of the claiming writer's own backend passes
//!   the claim and ends it (waking the key's waiters once it is gone): a
//!   locker queues its waiters in order, so the writer it was made for has
//!   had its turn, and a writer of that process still waiting claims again
//!   when it is next refused. Otherwise a reader queued behind its own
//!   process's writer would wait out that writer's claim, and with it every
//!   reader elsewhere. (Two lockers over one backend count as one process
//!   here: a reader of one passes the claim of the other's writer once.)
//! - A waiting reader that knows of a live claim (from its watch, or its
//!   own) reads it before writing its entry, and answers busy without a
//!   write while it stands: an entry written and withdrawn would turn away
//!   the very writer the claim is for.
//! - The claim of a crashed process keeps nobody out after its second, and
//!   goes within about one more second after the key is next used: an
//!   exclusive release reads the key's claim beside its proof (no read on
//!   the grant path), and a claim that stood unchanged for a whole second
//!   since that backend first saw it is removed (at once, or when the
//!   second ends, looked at again in the background); a shared or counted
//!   request removes it likewise. A writer ends only a claim that carries
//!   its own token: another writer's claim in its place stands.
//!
//! A refused one-off try announces its withdrawal, waking those its entry
//! may have turned away meanwhile; a waiting try withdraws silently, since
//! waiters that turn each other away would otherwise wake each other for as
//! long as they wait, and the holders they met wake them when they leave.
//!
//! A counted release names its slot in its announcement; a waiting counted
//! try of a backend that heard it tries that slot first, by a create on an
//! empty key as for any slot. Anyone may publish an announcement, so the
//! hint is used only when it is one of the lock's own slots of the
//! waiter's count, spelled as this crate spells slots
//! (`K.p.<permits>.<slot>`, `slot` below `permits`, plain decimals): it can
//! only change which free slot is tried first. When that slot is taken the
//! try goes on as if there had been no hint.
//!
//! A counted request whose token holds a slot is granted again (same fence)
//! when this backend granted it; a release by token (the answer of a grant
//! was lost) reads the slots to find its entry.
//!
//! A bucket that forbids deleting single messages (one made with
//! `nats kv add`) refuses shared and counted leases with
//! [`LockError::Misconfigured`] (`deny_delete`): each reader would leave a
//! delete marker, and a slot's next holder would need a compare-and-set on
//! a marker.
//!
//! # Expiry without trusting clocks
//!
//! nats-server 2.9 has no per-key expiry (a bucket's `max_age` applies to
//! every key and emits no event), so a crashed holder's entry stays in the
//! bucket. A waiter that finds a lease notes when *it* first saw that
//! revision, on its own monotonic clock, and takes the key over (it deletes
//! exactly that revision, then creates the key) only after a whole lease
//! length has passed since. No two machines' clocks are ever compared. The
//! holder's own deadline started before its write, so it always ends first;
//! a renewal writes a new revision, which restarts every waiter's
//! measurement.
//!
//! The cost: a lock abandoned by a crashed holder is free at most one ttl
//! after a waiter first sees it, which may be up to twice the ttl after the
//! holder's last write. A holder whose lease ran out but that nobody took
//! over yet can still release it.
//!
//! # Fences
//!
//! A fence is `created + revision`: the stream's creation time in
//! microseconds since the Unix epoch, plus the lease's stream sequence. A
//! recreated bucket's sequences start again at 1, but its creation time is
//! after the old bucket's deletion, and the old bucket's last sequence
//! counts its messages (every acquisition and renewal is one). So fences
//! never go back as long as a bucket stores fewer than one message per
//! microsecond on average over its life (a stream stores at most a few
//! hundred thousand a second) and the server's clock does not step back
//! between the deletion and the new creation. Fences stay below the wall
//! clock in microseconds: below 2^53 until the year 2255. Every grant reads
//! the creation time after its write (one `STREAM.INFO` request) and
//! stands only if it is the one the backend knew before it sent the write:
//! that stream then lived all along and took the write. Otherwise the
//! stream was created again around the write, which went to either stream,
//! and either fence could be wrong (a deleted stream's base, or the new
//! base with the old stream's revision, above the new stream's next
//! grants; the fault harness found both): the grant is given back and
//! answered busy, once per backend and re-creation. Writes on holders' behalf are proven by
//! token (see [The token is the authority](#the-token-is-the-authority)
//! for the one window left).
//!
//! Leases with a value (an election's) are held back after a re-creation:
//! leaders of the old bucket may still count on their leases until their
//! next renewal fails. A backend that saw a new bucket grants none for one
//! ttl from then; and every backend grants none while the stream is
//! younger than the lease's ttl, answering busy for the rest of it, so
//! that a process started right after a re-creation, or one that never saw
//! the old bucket, does not let a candidate win while the old leader
//! acts. Meanwhile nothing is written, so [`Backend::holder`] reports no
//! such candidate. The stream's age is read on the server's clock alone:
//! its creation time against the time the server stored a message this
//! backend writes for the purpose (at `=.clock`, which no lock key can
//! be, removed at once; on a bucket that forbids deleting messages its
//! delete marker stays, one message in all), once per stream, then carried
//! on this backend's monotonic clock. The cost: the first leader of a bucket created for it
//! waits one ttl. What stays undetectable: a bucket re-created more than
//! one ttl before the candidate's try while an old leader still believes
//! it leads (its renewals have failed for longer than a ttl by then, so
//! its own renew deadline has ended that belief first, unless its process
//! or clock was stopped); a server clock that stepped forward between the
//! creation and that message (the stream then reads as older than it is);
//! and plain leases, which are protected by their fences alone.
//!
//! # The token is the authority
//!
//! `STREAM.MSG.DELETE` takes a sequence and nothing else, and a
//! compare-and-set at a revision checks only the key's last sequence; a
//! re-created bucket numbers its messages from 1 again, so another
//! holder's entry (of the same key, or of another) can sit at the sequence
//! or revision a holder from before the re-creation knows. Every delete
//! and compare-and-set of a lease this backend makes (a release, a
//! renewal, the withdrawal of a refused try, the removal of a claim, the
//! lost-answer release of a lease known only by its token) first reads the
//! key from the stream leader and writes only at the sequence that carries
//! the holder's token there; a lease this backend granted is also checked
//! against the creation time of the stream it was granted in (read again
//! when the stream may be new, see [Fences](#fences)). Another token with
//! the holder's revision, the revision of a deleted bucket, or a forged
//! lease changes nothing and answers not held or lost. An expired entry's
//! removal deletes the sequence of the read that found it, after judging
//! that very holder's token at that revision expired.
//!
//! What remains: a bucket deleted and created again between the proving
//! read and the write (one round trip), with another entry written at that
//! sequence meanwhile, could still be deleted or overwritten. This is the
//! only window, beside the fence's clock assumption above. The proof costs
//! a release and a renewal one read each (see the NATS bench).
//!
//! The watch's events come on an inbox of this backend's, which anyone
//! who learns its name may publish on too: they only wake waiters and
//! start measurements. A delete marker the watch reports is never the
//! revision of a compare-and-set (only one this backend wrote and the
//! store acknowledged is), so a forged event grants and deletes nothing;
//! it can at most make a waiter measure an abandoned lease afresh, which
//! delays a takeover.
//!
//! # The bucket
//!
//! [`NatsBackend::new`] creates the bucket when it is absent (file storage,
//! history 1, one replica, a `max_age` of a year; see
//! [`NatsBackend::builder`] for more). It works on nats-server 2.9 and
//! later. The `max_age` is the longest lease the backend accepts, and how
//! long an entry left by a crashed holder stays when nobody waits for its
//! key (nobody else removes it: 2.9 has no per-key expiry). A released key
//! leaves no message at all, and a crashed waiting writer's claim goes
//! within about a second after the key is next used (see [Writer
//! claims](#writer-claims)).
//!
//! An existing bucket is checked first, and refused with
//! [`LockError::Misconfigured`] naming the setting when its stream could
//! drop a live lease or keep an old one: a history other than 1, or
//! discarding old messages at a message or byte limit. Its `max_age`, if
//! any (`nats kv add --ttl`), is allowed; a lease longer than it is refused
//! when asked for, naming both, since the server would drop it while it
//! runs.
//!
//! Every request has a deadline ([`Builder::request_timeout`], 5 s by
//! default), after which the operation fails with
//! [`LockError::Unavailable`]. The bucket's stream is a KV bucket's, except
//! that it allows deleting single messages. A bucket that forbids it (one
//! made with `nats kv add`) works too, but a release then leaves a delete
//! marker and the next acquisition is a compare-and-set at the marker's
//! revision: do not use such a bucket replicated on servers older than
//! 2.9.21. A value this crate did not write is a lock held for ever.
//!
//! Keys may hold any characters. Those NATS does not allow in a key become
//! `=XX` escapes ([`encode_key`]); `invoice:42` is stored as
//! `invoice=3A42`.
//!
//! Buckets reached through a JetStream domain or API prefix are not
//! supported.

mod bucket;
mod fence;
mod key;
mod kinds;
mod leader;
mod lease;
mod watch;

use std::{
    borrow::Cow,
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::{
    HeaderMap, HeaderValue,
    jetstream::{
        self,
        context::PublishErrorKind,
        kv::{Entry, Operation, Store, UpdateErrorKind},
        response::Response,
        stream::DeleteStatus,
    },
};
use bytes::Bytes;
use tokio::time::Instant;

use self::{
    fence::{Fences, Sent},
    kinds::{Claims, Freed, Holder},
    leader::Leader,
    lease::{LeaseValue, SeenKeys, Verdict},
};
use crate::{
    LockError,
    backend::{
        AcquireRequest, Attempt, Backend, Holding, Lease, LeaseKind, Subscription, Token,
        WakeRegistry,
    },
};

/// Where a backend writes the message whose time tells it the server's
/// clock: never a lock's key nor one of its entries (`=` alone is no
/// encoded key), and removed as soon as it is read.
const CLOCK_KEY: &str = "=.clock";

/// How often one call re-reads a key whose revision moved under it before
/// it answers "busy" or "lost"; each round is a real change by someone else.
const ROUNDS: usize = 4;

/// The `max_age` of a bucket this backend creates: the longest lease it
/// accepts ([`MAX_TTL`](crate::MAX_TTL), a year), and how long a crashed
/// holder's entry can stay.
pub const DEFAULT_MAX_AGE: Duration = crate::MAX_TTL;

/// How long any one request to the server may take before it counts as
/// [`LockError::Unavailable`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`Backend`] over a NATS JetStream key-value bucket. Cheap to clone;
/// clones share one watch.
///
/// See the [module docs](self) for how it works and an example.
#[derive(Clone)]
pub struct NatsBackend {
    inner: Arc<Inner>,
}

struct Inner {
    js: jetstream::Context,
    store: Store,
    /// `$KV.<bucket>.`: where keys are written.
    subject_prefix: String,
    /// Whether the bucket's stream allows deleting one message: then a
    /// release removes exactly the holder's message and leaves the key with
    /// no message at all (see `NatsBackend::free`).
    exact_delete: bool,
    /// Where releases are announced: `tower-lock.<bucket>.released.<key>`.
    released_prefix: String,
    /// The local deadline of each lease this backend granted or renewed.
    own: OwnLeases,
    fences: Arc<Fences>,
    /// The bucket's `max_age`, if it has one: no lease may be longer.
    max_age: Option<Duration>,
    wakeups: WakeRegistry,
    seen: Arc<SeenKeys>,
    /// Reads the stream leader answers, for the checks between kinds.
    leader: Leader,
    /// The claims of this backend's waiting writers.
    claims: Claims,
    /// The slots release announcements named, per lock key.
    freed: Arc<Freed>,
    watch: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// Builds a [`NatsBackend`] with settings for a bucket it creates.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("127.0.0.1:4222").await?;
/// let js = async_nats::jetstream::new(client);
/// let backend = tower_lock::nats::NatsBackend::builder(js, "my-locks")
///     .replicas(3)
///     .build()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct Builder {
    js: jetstream::Context,
    bucket: String,
    settings: bucket::Settings,
    request_timeout: Duration,
}

impl Builder {
    /// How many replicas a bucket this backend creates keeps (default 1).
    /// An existing bucket is used as it is.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.settings.replicas = replicas;
        self
    }

    /// The `max_age` of a bucket this backend creates (default
    /// [`DEFAULT_MAX_AGE`], a year): leases longer than it are refused, and
    /// an entry left by a crashed holder is gone after it even if nobody
    /// waits for its key. Set it to the longest lease you take to bound
    /// those entries tightly. An existing bucket keeps its own.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.settings.max_age = max_age;
        self
    }

    /// How long one request to the server may take (default
    /// [`DEFAULT_REQUEST_TIMEOUT`], 5 s) before the operation fails with
    /// [`LockError::Unavailable`]. It replaces the JetStream context's own
    /// timeout for this backend.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Opens the bucket, creating it when absent, checks it, and starts
    /// watching it.
    ///
    /// # Errors
    ///
    /// [`LockError::Unavailable`] when the bucket name is invalid or the
    /// server can not be reached; [`LockError::Misconfigured`], naming the
    /// setting, for an existing bucket that could drop a live lease or keep
    /// an old one (a history above 1; discarding old messages at a limit).
    pub async fn build(mut self) -> Result<NatsBackend, LockError> {
        self.js.set_timeout(self.request_timeout);
        let store = bucket::open_or_create(&self.js, &self.bucket, self.settings).await?;
        let info = store.stream.cached_info();
        bucket::check(&info.config)?;
        let max_age = Some(info.config.max_age).filter(|age| !age.is_zero());
        let fences = Arc::new(Fences::new(info));
        let wakeups = WakeRegistry::default();
        let seen = Arc::new(SeenKeys::default());
        let freed = Arc::new(Freed::default());
        let released_prefix = format!("tower-lock.{}.released.", self.bucket);
        let watch = watch::start(
            self.js.client(),
            store.clone(),
            &released_prefix,
            wakeups.clone(),
            seen.clone(),
            fences.clone(),
            freed.clone(),
        )
        .await?;
        let subject_prefix = store
            .put_prefix
            .clone()
            .unwrap_or_else(|| store.prefix.clone());
        let exact_delete = !store.stream.cached_info().config.deny_delete;
        let leader = Leader::new(self.js.clone(), store.stream.clone(), store.prefix.clone());
        Ok(NatsBackend {
            inner: Arc::new(Inner {
                js: self.js,
                store,
                subject_prefix,
                exact_delete,
                released_prefix,
                own: OwnLeases::default(),
                fences,
                max_age,
                wakeups,
                seen,
                leader,
                claims: Claims::default(),
                freed,
                watch,
            }),
        })
    }
}

impl NatsBackend {
    /// Opens the KV bucket `bucket`, creating it when absent (history 1, one
    /// replica), and starts watching it for releases.
    ///
    /// Concurrent callers creating the same bucket all succeed.
    ///
    /// # Errors
    ///
    /// [`LockError::Unavailable`] when the bucket name is invalid or the
    /// server can not be reached.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), tower_lock::LockError> {
    /// # let client = async_nats::connect("127.0.0.1:4222").await.unwrap();
    /// let js = async_nats::jetstream::new(client);
    /// let backend = tower_lock::nats::NatsBackend::new(js, "my-locks").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn new(js: jetstream::Context, bucket: &str) -> Result<Self, LockError> {
        Self::builder(js, bucket).build().await
    }

    /// A [`Builder`], for settings of a bucket this backend creates.
    pub fn builder(js: jetstream::Context, bucket: &str) -> Builder {
        Builder {
            js,
            bucket: bucket.to_owned(),
            settings: bucket::Settings {
                replicas: 1,
                max_age: DEFAULT_MAX_AGE,
            },
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// The key-value bucket the locks live in.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Writes `value` at `key` if its last revision is `expected` (0: the
    /// key has no message at all).
    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expected: u64,
    ) -> Result<Result<u64, Conflict>, LockError> {
        match self.inner.store.update(key, value, expected).await {
            Ok(revision) => Ok(Ok(revision)),
            Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => Ok(Err(Conflict)),
            Err(err) => {
                // The bucket may be gone, and the next one a new stream.
                self.inner.fences.suspect();
                Err(LockError::unavailable(err))
            }
        }
    }

    /// Removes the message at `revision` if it is still stored: an exact,
    /// replicated delete of one holder's lease. `Err(Conflict)` when it is
    /// gone (replaced by a renewal or a takeover, or already released).
    async fn remove(&self, revision: u64) -> Result<Result<(), Conflict>, LockError> {
        /// `Stream::delete_message` asks for a secure erase (the message's
        /// bytes overwritten on disk), which costs milliseconds; a lease
        /// holds nothing secret.
        #[derive(serde::Serialize)]
        struct DeleteRequest {
            seq: u64,
            no_erase: bool,
        }
        let subject = format!("STREAM.MSG.DELETE.{}", self.inner.store.stream_name);
        let request = DeleteRequest {
            seq: revision,
            no_erase: true,
        };
        let response: Response<DeleteStatus> = self
            .inner
            .js
            .request(subject, &request)
            .await
            .map_err(LockError::unavailable)?;
        match response {
            Response::Ok(DeleteStatus { success: true }) => Ok(Ok(())),
            Response::Ok(DeleteStatus { success: false }) => Ok(Err(Conflict)),
            // Servers answer a missing message with any of these (2.9:
            // "delete failed: no message found"); callers confirm by reading
            // the key before they conclude anything.
            Response::Err { error }
                if [
                    jetstream::ErrorCode::NO_MESSAGE_FOUND,
                    jetstream::ErrorCode::STREAM_MESSAGE_DELETE_FAILED,
                    jetstream::ErrorCode::SEQUENCE_NOT_FOUND,
                ]
                .contains(&error.error_code()) =>
            {
                Ok(Err(Conflict))
            }
            Response::Err { error } => Err(LockError::unavailable(error)),
        }
    }

    /// Writes a delete marker at `key` if its last revision is `expected`,
    /// returning the marker's revision (which `Store::delete_expect_revision`
    /// does not give). Only for buckets that forbid deleting messages.
    async fn mark_deleted(
        &self,
        key: &str,
        expected: u64,
    ) -> Result<Result<u64, Conflict>, LockError> {
        let mut headers = HeaderMap::new();
        headers.insert("KV-Operation", "DEL");
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            HeaderValue::from(expected),
        );
        let subject = format!("{}{key}", self.inner.subject_prefix);
        let ack = match self
            .inner
            .js
            .publish_with_headers(subject, headers, Bytes::new())
            .await
        {
            Ok(ack) => ack.await,
            Err(err) => Err(err),
        };
        match ack {
            Ok(ack) => Ok(Ok(ack.sequence)),
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => Ok(Err(Conflict)),
            Err(err) => Err(LockError::unavailable(err)),
        }
    }

    /// The key's last entry (a lease, or a delete marker).
    async fn entry(&self, key: &str) -> Result<Option<Entry>, LockError> {
        let store = &self.inner.store;
        store.entry(key).await.map_err(LockError::unavailable)
    }

    /// The revision of `key`'s last message when it carries `token`'s
    /// lease, as the stream leader has it: the proof every delete and
    /// compare-and-set of a lease makes first. A stream sequence or a
    /// revision alone proves nothing: a re-created bucket numbers from 1
    /// again, and anyone watching the bucket sees them.
    async fn held_by(&self, key: &str, token: Token) -> Result<Option<u64>, LockError> {
        let stored = self.inner.leader.last(key).await?;
        // Not `Fences::saw`: a stored lease's revision is below later writes
        // of the stream, and would make the stream look new.
        Ok(stored
            .filter(|stored| stored.carries(token))
            .map(|stored| stored.revision))
    }

    /// Removes `token`'s message at `key`, once proven there
    /// ([`held_by`](Self::held_by)): `false` when the key does not carry
    /// it (any more). Which revision the caller last knew does not matter:
    /// a renewal whose answer was lost moves it on, and the token decides.
    async fn remove_held(&self, key: &str, token: Token) -> Result<bool, LockError> {
        for _ in 0..ROUNDS {
            let Some(revision) = self.held_by(key, token).await? else {
                return Ok(false);
            };
            if self.inner.exact_delete {
                if self.remove(revision).await?.is_ok() {
                    // What this backend saw of the key is over.
                    self.inner.seen.forget(key);
                    return Ok(true);
                }
            } else if let Ok(marker) = self.mark_deleted(key, revision).await? {
                self.inner.seen.free(key, marker);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether the stream is still the one `own` was granted in (by its
    /// creation time): a lease of a deleted bucket is lost, whatever the
    /// new one holds at its key.
    async fn same_stream(&self, own: &Own) -> Result<bool, LockError> {
        let created = self.inner.fences.created(&self.inner.store.stream).await?;
        Ok(created == own.created)
    }

    /// Tells waiters everywhere that `key` was released. The stream's
    /// message deletes emit no watch event, so releases are announced on a
    /// plain NATS subject; one lost announcement costs a waiter one backoff
    /// step.
    ///
    /// Waiters of this backend are woken by the echo too, not at once:
    /// waking them first would let the releasing process win most races for
    /// the key, starving waiters elsewhere.
    /// Wakes the waiters and observers of `key` on every backend of the
    /// bucket: after a release, and after a grant of a lease with a value.
    ///
    /// `flush`: wait until the announcement has left for the server. The
    /// client sends it in the background otherwise, which a process that
    /// exits right after (a leader resigning at shutdown) may never do.
    async fn announce(&self, key: &str, flush: bool) {
        self.announce_entry(key, flush, None).await;
    }

    /// [`announce`](Self::announce), naming the entry a counted holder
    /// freed: that backend's next waiter tries that slot first.
    async fn announce_entry(&self, key: &str, flush: bool, freed: Option<&str>) {
        let subject = format!("{}{key}", self.inner.released_prefix);
        let client = self.inner.js.client();
        let payload = freed.map_or_else(Bytes::new, |entry| Bytes::from(entry.to_owned()));
        let sent = match client.publish(subject, payload).await {
            Ok(()) if flush => client.flush().await.map_err(|err| err.to_string()),
            Ok(()) => Ok(()),
            Err(err) => Err(err.to_string()),
        };
        if let Err(err) = sent {
            tracing::debug!(%key, error = %err, "release announcement not sent");
            // Then at least the waiters here learn of it.
            self.inner.wakeups.notify(key);
        }
    }

    /// How much longer a lease with a value of length `ttl` must wait
    /// because the stream is younger than `ttl`: it may be a bucket created
    /// again, whose old leaders still count on their leases (see
    /// [Fences](self#fences)). The stream's age is read on the server's
    /// clock alone: its creation time against the time of a message this
    /// backend writes for it ([`read_server_clock`](Self::read_server_clock)),
    /// once per stream, then on this backend's monotonic clock.
    async fn young_stream(&self, ttl: Duration) -> Result<Option<Duration>, LockError> {
        let fences = &self.inner.fences;
        fences.created(&self.inner.store.stream).await?;
        let age = match fences.stream_age() {
            Some(age) => age,
            None => {
                self.read_server_clock().await?;
                fences.stream_age().unwrap_or_default()
            }
        };
        Ok(ttl.checked_sub(age).filter(|left| !left.is_zero()))
    }

    /// Reads the server's clock: writes [`CLOCK_KEY`], reads back when the
    /// server stored it, and removes it. Any message stored there is as
    /// good (it was stored before the read): concurrent readers may read
    /// each other's.
    async fn read_server_clock(&self) -> Result<(), LockError> {
        let token = Token::new();
        let value = LeaseValue {
            token,
            ttl: Duration::from_millis(1),
            fence: None,
            value: None,
        }
        .encode();
        if let Err(err) = self.inner.store.put(CLOCK_KEY, value).await {
            self.inner.fences.suspect();
            return Err(LockError::unavailable(err));
        }
        if let Some(stored) = self.inner.leader.last(CLOCK_KEY).await? {
            self.inner.fences.server_read(stored.time);
        }
        if let Err(err) = self.remove_held(CLOCK_KEY, token).await {
            tracing::debug!(error = %err, "clock reading not removed");
        }
        Ok(())
    }

    /// Refuses a lease longer than the bucket's `max_age`, which the
    /// server would drop while it runs.
    fn check_ttl(&self, ttl: Duration) -> Result<(), LockError> {
        match self.inner.max_age {
            Some(max_age) if ttl > max_age => Err(LockError::Misconfigured {
                setting: "max_age",
                reason: format!(
                    "a lease of {ttl:?} is longer than the max_age of bucket {:?} ({max_age:?}), \
                     which would drop it while it runs",
                    self.inner.store.name
                ),
            }),
            _ => Ok(()),
        }
    }

    /// What a write of `request`'s lease at `revision` comes to; `fence`
    /// when the write kept the holder's fence, else the fence of the
    /// revision.
    async fn granted(
        &self,
        key: &str,
        request: &AcquireRequest<'_>,
        sent: Sent,
        revision: u64,
        fence: Option<u64>,
    ) -> Result<Attempt, LockError> {
        self.inner.seen.forget(key);
        let stream = &self.inner.store.stream;
        let fences = &self.inner.fences;
        let Some(of_revision) = fences.fence(stream, revision, sent).await? else {
            return self.give_back(key, request, None).await;
        };
        // This very grant may be the one that showed the stream is new.
        if let Some(left) = fences.holds_back(request) {
            return self.give_back(key, request, Some(left)).await;
        }
        let created = fences.base();
        self.inner.own.granted(
            key,
            request.token,
            sent.at + request.ttl,
            request.value,
            created,
        );
        if request.value.is_some() {
            self.announce(key, false).await;
        }
        Ok(Attempt::Acquired {
            fence: fence.unwrap_or(of_revision),
            revision,
        })
    }
    /// Takes back a write of `request` at `key` that must not be granted:
    /// busy, for `remaining`.
    async fn give_back(
        &self,
        key: &str,
        request: &AcquireRequest<'_>,
        remaining: Option<Duration>,
    ) -> Result<Attempt, LockError> {
        if let Err(err) = self.remove_held(key, request.token).await {
            tracing::debug!(%key, error = %err, "could not give back a grant held back");
        }
        Ok(Attempt::Busy { remaining })
    }

    /// An exclusive lease of `request` was written at `key`: granted unless
    /// a shared or counted holder wrote before it (then withdrawn). A
    /// rewrite of the token's own entry is checked too: it may be left from
    /// a try that found a reader and could not withdraw.
    async fn written(
        &self,
        key: &str,
        request: &AcquireRequest<'_>,
        sent: Sent,
        revision: u64,
        fence: Option<u64>,
    ) -> Result<Attempt, LockError> {
        // Shared and counted holders write entries of their own: whoever of
        // them wrote before us is found now.
        if let Holder::Running(remaining) = self.writer_conflict(key).await? {
            self.withdraw(request, key, key).await?;
            return Ok(Attempt::Busy { remaining });
        }
        // Others of this process wait behind: their claim stands.
        if !request.queued_behind {
            self.end_claim(key, false);
        }
        self.granted(key, request, sent, revision, fence).await
    }

    /// The bucket key `lease` of (encoded) `key` is held at: `None` for a
    /// counted lease whose slot holds its token no more. A slot this
    /// backend did not grant (a grant whose answer was lost) is looked for
    /// by its token.
    async fn entry_of(&self, key: &str, lease: &Lease) -> Result<Option<String>, LockError> {
        Ok(match lease.kind {
            LeaseKind::Shared => Some(key::reader(key, lease.token)),
            LeaseKind::Counted { .. } => match self.inner.own.counted_entry(key, lease.token) {
                Some(entry) => Some(entry),
                None => self.find_counted(key, lease.token).await?,
            },
            LeaseKind::Exclusive => Some(key.to_owned()),
        })
    }

    /// An exclusive try: the lock's own key, created on empty, then a check
    /// for shared and counted holders.
    async fn try_exclusive(&self, request: &AcquireRequest<'_>) -> Result<Attempt, LockError> {
        let (token, ttl) = (request.token, request.ttl);
        let key = key::encode(request.key);
        let stored = request.value.map(Cow::Borrowed);
        let value = LeaseValue {
            token,
            ttl,
            fence: None,
            value: stored.clone(),
        }
        .encode();
        let seen = &self.inner.seen;
        let mut expected = seen.expected_free_revision(&key);
        for _ in 0..ROUNDS {
            let sent = self.inner.fences.sent();
            if let Ok(revision) = self.put(&key, value.clone(), expected).await? {
                return self.written(&key, request, sent, revision, None).await;
            }
            // Lost a race for a free key: the winner's lease is usually known
            // from the watch already, which saves a read. Unless the lease
            // is our own: then this is its holder asking again.
            if expected == 0
                && self.inner.own.running(&key, token).is_none()
                && let Some(remaining) = seen.running(&key)
            {
                return Ok(Attempt::Busy {
                    remaining: Some(remaining),
                });
            }
            expected = match self.entry(&key).await? {
                None => 0,
                Some(entry) if entry.operation != Operation::Put => entry.revision,
                Some(entry) => {
                    // A value this crate did not write never expires.
                    let Some(lease) = LeaseValue::decode(&entry.value) else {
                        return Ok(Attempt::Busy { remaining: None });
                    };
                    // Our own token: a retry of a try whose answer was
                    // lost, or the holder storing a new value.
                    if lease.token == token {
                        match self.regrant(&key, request).await? {
                            Some(attempt) => return Ok(attempt),
                            None => continue,
                        }
                    }
                    match seen.judge(&key, entry.revision, lease.token, lease.ttl) {
                        Verdict::Running(remaining) => {
                            return Ok(Attempt::Busy {
                                remaining: Some(remaining),
                            });
                        }
                        Verdict::Expired if self.inner.exact_delete => {
                            tracing::debug!(%key, revision = entry.revision, "lease ran out; taking over");
                            // Remove exactly that lease, then create as on a
                            // free key: creating on an empty key is the one
                            // compare-and-set that replicated streams of
                            // every server version serialise.
                            let _ = self.remove(entry.revision).await?;
                            0
                        }
                        Verdict::Expired => {
                            tracing::debug!(%key, revision = entry.revision, "lease ran out; taking over");
                            entry.revision
                        }
                    }
                }
            };
        }
        // Others kept changing the key under us: it is contended.
        Ok(Attempt::Busy { remaining: None })
    }

    /// Renews the lease `lease` holds at the bucket key `entry`.
    async fn extend_entry(
        &self,
        entry: &str,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Option<u64>, LockError> {
        // A lease that ran out on our own clock may be being taken over
        // right now: renewing it could race the takeover.
        let Some(own) = self.inner.own.running(entry, lease.token) else {
            return Ok(None);
        };
        if !self.same_stream(&own).await? {
            self.inner.own.forget(entry, lease.token);
            return Ok(None);
        }
        // The fence is written, so that the holder's stays what it was
        // granted while the revision moves on.
        let value = LeaseValue {
            token: lease.token,
            ttl,
            fence: Some(lease.fence),
            value: own.value.as_deref().map(Cow::Borrowed),
        }
        .encode();
        let sent_at = Instant::now();
        for _ in 0..ROUNDS {
            // The revision to write at is the one that carries our token
            // now: another holder's lease can sit at the revision we knew
            // (a re-created bucket), and a renewal whose reply was lost
            // may have moved ours on.
            let Some(expected) = self.held_by(entry, lease.token).await? else {
                break;
            };
            if let Ok(revision) = self.put(entry, value.clone(), expected).await? {
                let deadline = sent_at + ttl;
                self.inner.own.granted(
                    entry,
                    lease.token,
                    deadline,
                    own.value.as_deref(),
                    own.created,
                );
                return Ok(Some(revision));
            }
        }
        self.inner.own.forget(entry, lease.token);
        Ok(None)
    }

    /// Releases the lease `lease` holds at the bucket key `entry` (of the
    /// lock `key`): by its token, whatever revision the caller knew.
    async fn release_entry(
        &self,
        key: &str,
        entry: &str,
        lease: &Lease,
    ) -> Result<bool, LockError> {
        let own = self.inner.own.forget(entry, lease.token);
        if let Some(own) = &own
            && !self.same_stream(own).await?
        {
            return Ok(false);
        }
        // The claim is read beside the proof, on an exclusive release only:
        // a crashed writer's claim is found without a read on the grant path.
        let claim = (entry == key && self.inner.exact_delete).then(|| key::claim(key));
        let claim_read = async {
            match &claim {
                Some(claim) => self.inner.leader.last(claim).await.ok().flatten(),
                None => None,
            }
        };
        let (removed, claim) = tokio::join!(self.remove_held(entry, lease.token), claim_read);
        if !removed? {
            return Ok(false);
        }
        if let Some(claim) = claim {
            self.sweep_claim(key, claim);
        }
        // An election's leader often resigns on its way out.
        let valued = own.is_some_and(|own| own.value.is_some());
        let slot = matches!(key::Entry::of(entry), Some(key::Entry::Slot { .. }));
        self.announce_entry(key, valued, slot.then_some(entry))
            .await;
        Ok(true)
    }
}

/// A write that lost its compare-and-set: the key's revision moved on.
struct Conflict;

#[async_trait::async_trait]
impl Backend for NatsBackend {
    async fn try_acquire(&self, request: &AcquireRequest<'_>) -> Result<Attempt, LockError> {
        self.check_ttl(request.ttl)?;
        if let Some(left) = self.inner.fences.holds_back(request) {
            return Ok(Attempt::Busy {
                remaining: Some(left),
            });
        }
        if request.value.is_some()
            && let Some(left) = self.young_stream(request.ttl).await?
        {
            return Ok(Attempt::Busy {
                remaining: Some(left),
            });
        }
        match request.kind {
            LeaseKind::Shared => return self.try_shared(request).await,
            LeaseKind::Counted { permits } => return self.try_counted(request, permits).await,
            LeaseKind::Exclusive => {}
        }
        let attempt = self.try_exclusive(request).await?;
        if request.waiting && matches!(attempt, Attempt::Busy { .. }) {
            self.claim(&key::encode(request.key), request.token);
        }
        Ok(attempt)
    }

    async fn extend(
        &self,
        key: &str,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Option<u64>, LockError> {
        self.check_ttl(ttl)?;
        match self.entry_of(&key::encode(key), lease).await? {
            Some(entry) => self.extend_entry(&entry, lease, ttl).await,
            None => Ok(None),
        }
    }

    async fn release(&self, key: &str, lease: &Lease) -> Result<bool, LockError> {
        let key = key::encode(key);
        match self.entry_of(&key, lease).await? {
            Some(entry) => self.release_entry(&key, &entry, lease).await,
            None => Ok(false),
        }
    }

    async fn subscribe(&self, key: &str) -> Result<Subscription, LockError> {
        // The watch is live from construction (and re-established with a
        // wake-up for everyone after failures), so registering is enough.
        let key = key::encode(key);
        let backend = self.clone();
        let subscription = self.inner.wakeups.subscribe(&key);
        Ok(subscription.on_give_up(move || backend.give_up(&key)))
    }

    /// The lease stored at the key, with its remaining time as this backend
    /// measures it (from when it first saw the lease's revision).
    async fn holder(&self, key: &str) -> Result<Option<Holding>, LockError> {
        let key = key::encode(key);
        let Some(entry) = self
            .entry(&key)
            .await?
            .filter(|entry| entry.operation == Operation::Put)
        else {
            return Ok(None);
        };
        // A value this crate did not write is a holder that never expires.
        let Some(lease) = LeaseValue::decode(&entry.value) else {
            return Ok(Some(Holding::new(
                Token::from(uuid::Uuid::nil()),
                self.inner.fences.of(entry.revision),
                None,
            )));
        };
        Ok(
            match self
                .inner
                .seen
                .judge(&key, entry.revision, lease.token, lease.ttl)
            {
                Verdict::Running(remaining) => {
                    let fence = lease.fence_at(entry.revision, |at| self.inner.fences.of(at));
                    let value = lease.value.map(Cow::into_owned);
                    Some(Holding::new(lease.token, fence, Some(remaining)).with_value(value))
                }
                Verdict::Expired => None,
            },
        )
    }
}

/// The local deadlines of the leases this backend granted, so that it never
/// renews one that already ran out on its own clock.
#[derive(Debug, Default)]
struct OwnLeases {
    leases: Mutex<HashMap<String, Own>>,
}

/// One lease this backend holds: renewals rewrite its value as it is.
#[derive(Clone, Debug)]
struct Own {
    token: Token,
    deadline: Instant,
    value: Option<Arc<str>>,
    /// The creation time of the stream it was granted in (its fence base).
    created: u64,
}

impl OwnLeases {
    fn granted(
        &self,
        key: &str,
        token: Token,
        deadline: Instant,
        value: Option<&str>,
        created: u64,
    ) {
        let mut leases = self.lock();
        if leases.len() >= 4096 {
            // Guards that were leaked never release: drop what ran out.
            let now = Instant::now();
            leases.retain(|_, own| own.deadline > now);
        }
        let value = value.map(Arc::from);
        leases.insert(
            key.to_owned(),
            Own {
                token,
                deadline,
                value,
                created,
            },
        );
    }

    /// `token`'s lease on `key`, while it runs.
    fn running(&self, key: &str, token: Token) -> Option<Own> {
        self.lock()
            .get(key)
            .filter(|own| own.token == token && own.deadline > Instant::now())
            .cloned()
    }

    /// The slot `token` holds a counted lease of `key` with.
    fn counted_entry(&self, key: &str, token: Token) -> Option<String> {
        let slots = format!("{key}.p.");
        self.lock()
            .iter()
            .find(|(entry, own)| own.token == token && entry.starts_with(&slots))
            .map(|(entry, _)| entry.clone())
    }

    fn forget(&self, key: &str, token: Token) -> Option<Own> {
        let mut leases = self.lock();
        if leases.get(key).is_some_and(|own| own.token == token) {
            return leases.remove(key);
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Own>> {
        crate::sync::lock(&self.leases)
    }
}

impl fmt::Debug for NatsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBackend")
            .field("bucket", &self.inner.store.name)
            .field("watched_keys", &self.inner.wakeups.len())
            .field("remembered_keys", &self.inner.seen.len())
            .finish()
    }
}

/// The NATS KV key a lock key is stored under: characters NATS does not
/// allow in keys (and `=`, `.`) become `=XX` hex escapes of their UTF-8
/// bytes.
///
/// ```
/// use tower_lock::nats::{decode_key, encode_key};
///
/// assert_eq!(encode_key("invoice:42"), "invoice=3A42");
/// assert_eq!(decode_key("invoice=3A42").as_deref(), Some("invoice:42"));
/// ```
pub fn encode_key(key: &str) -> String {
    key::encode(key)
}

/// The lock key a NATS KV key of the bucket stands for; `None` for a key
/// [`encode_key`] can not have made.
pub fn decode_key(key: &str) -> Option<String> {
    key::decode(key)
}
