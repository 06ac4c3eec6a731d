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
//!
//! [`Backend`]: crate::backend::Backend
//! [`Backend::holder`]: crate::backend::Backend::holder
//! [`LeaseKind`]: crate::backend::LeaseKind
//! [`LeaseKind::Shared`]: crate::backend::LeaseKind::Shared
//! [`LockError::Misconfigured`]: crate::LockError::Misconfigured
//! [`LockError::PermitsMismatch`]: crate::LockError::PermitsMismatch
//! [`LockError::Unavailable`]: crate::LockError::Unavailable

mod announce;
mod bucket;
mod builder;
mod claims;
mod contract;
mod counted;
mod entries;
mod exclusive;
mod fence;
mod grant;
mod holders;
mod key;
mod leader;
mod lease;
mod own;
mod server_clock;
mod shared;
mod watch;

use std::{fmt, sync::Arc, time::Duration};

use async_nats::jetstream::{self, kv::Store};

pub use self::builder::Builder;
use self::{
    claims::Claims, counted::Freed, fence::Fences, leader::Leader, lease::SeenKeys, own::OwnLeases,
};
use crate::backend::WakeRegistry;

/// How often one call re-reads a key whose revision moved under it before
/// it answers "busy" or "lost"; each round is a real change by someone else.
const ROUNDS: usize = 4;

/// The `max_age` of a bucket this backend creates: the longest lease it
/// accepts ([`MAX_TTL`](crate::MAX_TTL), a year), and how long a crashed
/// holder's entry can stay.
pub const DEFAULT_MAX_AGE: Duration = crate::MAX_TTL;

/// How long any one request to the server may take before it counts as
/// [`LockError::Unavailable`](crate::LockError::Unavailable).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`Backend`](crate::backend::Backend) over a NATS JetStream key-value bucket. Cheap to clone;
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

impl NatsBackend {
    /// The key-value bucket the locks live in.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }
}

/// A write that lost its compare-and-set: the key's revision moved on.
struct Conflict;

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
