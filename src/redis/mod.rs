// Over 400 lines: a quarter is the backend's manual (the module docs), and
// the rest is the backend type, its builder and its `Backend` impl, which
// share one set of connections and keys; the parts that stand alone
// (client, keys, notify, scripts) are modules of their own.
//! [`RedisBackend`]: locks in Redis (standalone, Sentinel or Cluster), with
//! prompt wake-ups over pub/sub and fencing tokens.
//!
//! # How it works
//!
//! - **Acquire** is one Lua script (`SET key token PX ttl` when the key is
//!   free, and the next fence, see [Fences](#fences)); when the key is busy
//!   it returns the holder's `PTTL`, so a waiter never sleeps past the
//!   expiry. A key that already holds the caller's token is granted again,
//!   with the same fence: that is a retry of a try whose answer was lost
//!   (redis-rs re-sends after a reconnect), or a leader storing a new id,
//!   and the locker gives back by token any try whose answer it never got,
//!   so neither orphans the lock for its ttl. A lease with a value (an
//!   election's) is stored as `token value`.
//! - **Waiters queue in Redis.** A try from a caller that waits puts its
//!   backend in the key's queue (`lock:{K}:queue`, once per backend). The
//!   release script hands the lock to the first queued backend: the key
//!   holds `next:<backend id>` for a 250 ms grace, which only that backend
//!   may take, and that backend's own turn channel tells it. So waiters across
//!   processes are served first come, first served, a newcomer cannot jump
//!   the queue even at the very moment of a release, and a release wakes
//!   one backend instead of a herd that retries in vain. A claim by a
//!   waiter with others of its locker behind it moves its backend to the
//!   tail of the queue in the same script, so the next of them needs no
//!   request of its own to rejoin. A backend leaves
//!   the queue when its waiter takes the lock, and when its last waiter on
//!   the key gives up (a timeout, a dropped future), passing on a turn
//!   already reserved for it; one that died while queued costs the queue
//!   its grace.
//! - **Release** and **extend** are scripts that act only while the stored
//!   token is the caller's: nobody can free or prolong another holder's
//!   lock, whatever fence or revision they name (the fence is no
//!   credential: a release or extend checks the token alone). With nobody
//!   queued, release deletes the key.
//! - **Wake-ups** come over one pub/sub connection per backend, shared by all
//!   waiters: the backend's turn channel, the `<prefix>changed` channel
//!   (where the scripts publish grants and releases of leases with a value,
//!   so an election's observers hear of every change of leader; plain locks
//!   publish nothing there), plus the `expired` and `del` key events of
//!   the database in use when the server's `notify-keyspace-events` enables
//!   them. Expiry never needs an event: a waiter's timer is capped by the
//!   holder's `PTTL`. In a Cluster the turn channel reaches every node
//!   (classic pub/sub is broadcast), but key events are per node and come
//!   only from the node the wake-up connection is on; expiries elsewhere are
//!   found by that capped timer.
//! - **A message only wakes.** Anyone who may publish on the server can
//!   send any payload on any of these channels. A message wakes the
//!   waiters of the key it names, which then try, and the scripts decide
//!   from what Redis holds: a turn is the lock holding `next:<backend id>`,
//!   not the message that says so. No message makes the backend write: a
//!   turn that nobody here picks up is passed on (the `WITHDRAW` script)
//!   only for a key this backend has queued for, so a forged or replayed
//!   turn for any other key costs nothing but a wake-up. Payloads that are
//!   not a lock key of the backend's prefix (other keys, other prefixes,
//!   bytes that are not UTF-8) are dropped.
//! - **Where a wake-up is lost** (the pub/sub connection is down, an ACL
//!   denies the channel) the turn lapses after its grace and waiters find
//!   the lock free on their timers (a queued waiter checks back at least
//!   every 500 ms); after the connection is back every waiter is woken
//!   once.
//! - **Connections**: one command connection that reconnects by itself
//!   (redis-rs's `ConnectionManager`; the cluster connection; the Sentinel
//!   master, looked up again after a failover) and the pub/sub connection.
//!
//! # Shared and counted locks
//!
//! [`LeaseKind::Shared`] and [`LeaseKind::Counted`] leases keep all of a
//! key's state in its Cluster slot, and every expiry on the server's clock
//! (`TIME`, `PEXPIREAT`), never the client's:
//!
//! - **Stored**: the lock `lock:{K}` holds a marker, `shared` or
//!   `permits:<n>` (the count the first holder took it with), instead of a
//!   token, so an exclusive try sees a busy key in its one `GET` as before.
//!   The holders are a sorted set `lock:{K}:holders` of tokens by the end of
//!   their lease (server ms), with their fences in a hash
//!   `lock:{K}:fences`. The marker and both sets expire exactly when the
//!   last lease does, so a crashed holder frees its place after its ttl:
//!   the next script on the key drops every lease that has ended. Each
//!   acquire, release and extend is one script (one request), like the
//!   exclusive ones; fences come from the same counter and clock, so they
//!   increase over every kind. A retry with a live holder's own token is
//!   granted again with its fence.
//! - **Writers are not starved**: a waiting exclusive try refused by any
//!   holder sets `lock:{K}:claim` to its backend's id for one second (each
//!   refused try renews it). Only that backend's grant deletes it: another
//!   writer's grant, or a holder's retry with its own token, leaves a
//!   waiting writer's claim in place. While it lives, new shared and
//!   counted tries are refused, except those whose backend was given a
//!   turn (below): they queued ahead of that writer.
//! - **Woken**: shared and counted waiters join the same queue as exclusive
//!   ones, as `<backend>:s` or `<backend>:c:<n>`. The release of a shared
//!   lease that leaves other holders wakes nobody; the last one hands the
//!   key to the head of the queue as an exclusive release does. When that
//!   head is a shared waiter, it and every shared entry behind it up to the
//!   next writer get a turn at once (a place in `lock:{K}:turns` for the
//!   250 ms grace, and one message each on their backend's turn channel),
//!   so all the readers queued before a writer get in together and those
//!   behind it wait for it. A released permit gives a turn to the next
//!   queued counted waiter only, and a turn keeps its permit for it; a
//!   writer of that backend that meets the turn instead drops it, and the
//!   permit goes to the next queued counted waiter at once. A grant whose
//!   locker has more waiters behind it lets the next of them in at once
//!   when one more lease of the kind is free.
//! - **Refused**: a counted request whose count differs from the marker's,
//!   while the key has holders, gets [`LockError::PermitsMismatch`] and
//!   changes nothing (the caller's own queue entry aside). Another kind of
//!   holder is simply busy.
//! - **[`Backend::holder`]** reports exclusive holders only: for a key held
//!   shared or counted it returns `None`, as for a free key.
//!
//! # Keys
//!
//! Locks live under a prefix (`lock:` unless set with
//! [`RedisBackendBuilder::prefix`]), so a key that came from an HTTP request
//! can never name an unrelated Redis key. The key `K` is stored as
//! `lock:{K}`, with `%`, `{`, `}` and control characters percent-encoded
//! inside the braces, so any key works, and `{K}` is the Cluster hash tag
//! that puts the lock, its fence counter, its queue, a writer's claim and
//! the holders of shared and counted leases in one slot.
//!
//! Requires Redis 6.2 or later (`LPOS`; scripts replicate their effects,
//! which lets them read `TIME`).
//!
//! # Fences
//!
//! A fence is the serving node's clock in microseconds (`TIME`, read
//! inside the acquire script; scripts replicate their effects, so replicas
//! store what the master computed), or one more than the key's
//! counter `lock:{K}:fence` when that is not below it. The counter keeps
//! the last fence for the lease plus a retention ([`DEFAULT_RETENTION`],
//! 60 s; [`RedisBackendBuilder::fence_retention`]); a release cuts it to
//! the retention. So fences strictly increase per key:
//!
//! - while the counter lives, whatever the clock does;
//! - after it has expired, because the clock moved on by more than the
//!   retention since the last fence, provided **every node that can serve
//!   a key (the master, a replica promoted by Sentinel or Cluster
//!   failover, a copy restored from a backup) reads a clock within Δ of
//!   the others, with Δ below the failover time**. That covers a restart
//!   that lost every key and a failover to a replica that lagged: the
//!   counter they lost held a fence from a clock that is now further back
//!   than the outage took.
//!
//! A step back of one server's clock by less than the retention is
//! absorbed (by the counter while it lives; by the retention once it has
//! gone). A larger step back can repeat or reorder fences of keys last
//! acquired within the step, until the clock has caught up. Fences are
//! about 1.8 × 10^15 today: they fit an `i64` (a `BIGINT` column) and stay
//! below 2^53 (exact as JSON numbers) until the year 2255.
//!
//! # Storage per key
//!
//! A key in use costs its lock and its counter: `MEMORY USAGE` reports 120
//! and 72 bytes for `lock:{tenant-12345}` (Redis 7.0), growing with the
//! key's length, plus an entry each in Redis's table of expiries. While
//! backends wait there is also a queue (about 200 bytes with one backend,
//! about 50 more for each further one). A key held shared or counted has a
//! marker (88 bytes) and its holders and their fences (a sorted set and a
//! hash: 136 bytes each with one holder, 50 more each for every further
//! one), and a waiting writer adds its claim (120 bytes). Elections add one
//! key per prefix, `<prefix>epoch`, which never expires (see [Elections
//! after a state loss](#elections-after-a-state-loss)). Nothing else
//! outlives the key's last lease or waiter by more than the
//! retention: the counter expires as above, the queue expires with the
//! holder's lease plus the retention after its last join (Redis also drops
//! a list when its last entry is popped), the holders expire with the last
//! lease, a turn reservation lasts 250 ms and a claim one second. So
//! request-chosen keys cannot grow Redis without bound.
//!
//! # Configuration that is refused
//!
//! A `maxmemory-policy` other than `noeviction` can evict live locks
//! (every `volatile-*` policy evicts exactly the keys with a ttl, which
//! every lock has) or counters: [`RedisBackendBuilder::build`] refuses it
//! with [`LockError::Misconfigured`] unless
//! [`RedisBackendBuilder::allow_eviction`] opts in. Where `CONFIG GET` is
//! refused (managed services), construction succeeds with a warning. The
//! check runs at construction: a server reconfigured later, or a Sentinel
//! failover to a differently configured replica, is not seen.
//!
//! Each request has one deadline, the backend's
//! ([`DEFAULT_REQUEST_TIMEOUT`], 5 s;
//! [`RedisBackendBuilder::request_timeout`]): a hung connection or a
//! paused server fails the request with [`LockError::Unavailable`] at it,
//! and a slow one that answers before it succeeds. It also bounds the
//! wake-up connection's subscribe and liveness ping, and replaces redis-rs's
//! own shorter timeouts (500 ms for a response, 1 s to connect) on the
//! connections the backend makes. A user-built Cluster client may carry an
//! overall timeout that cannot be replaced: see [`RedisClient::Cluster`].
//!
//! # Elections after a state loss
//!
//! Redis replicates asynchronously, so a failover can also lose a held
//! lock, as with any single-Redis lock; a restart without persistence or a
//! `FLUSHALL` loses every one. A plain lock's holder is then protected by
//! its fence alone. An election's leader acts on its leadership itself,
//! and counts on a lost lease until its next renewal fails (up to its
//! renewal interval), so a lease with a value (an election's) is held
//! back, answered as busy and reported by [`Backend::holder`] (and so by
//! `Election::observe`) as no leader, until every leader whose lease was
//! lost has counted it lost:
//!
//! - **by a backend whose pub/sub connection was reset** (a restart, a
//!   failover): for one ttl after it noticed;
//! - **by the store's epoch**, for any backend: a lease with a value on a
//!   key with no fence counter (a first election, one unused for longer
//!   than the retention, or one whose counter was lost) is granted only
//!   once the key `<prefix>epoch` is one ttl old by the server's clock.
//!   That key has no expiry and is written when absent, so a `FLUSHALL`, or
//!   a restart that lost every key, writes it again and starts the wait;
//!   a backend started right after a restart, which saw no disconnect, is
//!   held back by it too. The first election of a new store (or of a new
//!   prefix) pays this once, up to one ttl; a key whose counter lives pays
//!   nothing, and neither does any request without a value. The check is
//!   one more request, on the grant of a key with no counter only.
//!
//! Both count the ttl of the request held back: they assume every
//! candidate of an election uses the same ttl. What remains undetectable:
//! a lease lost while the store kept both its epoch and the key's fence
//! counter — a Sentinel or Cluster failover to a replica that lagged
//! behind the last grant or renewal, and a restart that restored an older
//! snapshot or an append-only file missing the last writes, each seen only
//! by the backends whose wake-up connection was reset by it (in a Cluster,
//! only those on the failed node; never a backend started after it); in a
//! Cluster, also a `FLUSHALL` or a restart of a node other than the one
//! that serves the epoch's slot; and the lock deleted by hand.
//! There a candidate can win while the old leader counts on its lease
//! until its next renewal fails.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_lock::{Locker, redis::RedisBackend};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_lock::LockError> {
//! let backend = RedisBackend::from_url("redis://127.0.0.1:6379/").await?;
//! let locker = Locker::new(backend);
//!
//! let guard = locker.acquire("invoice:42", Duration::from_secs(10)).await?;
//! println!("fence {}", guard.fence());
//! guard.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! A Cluster or a Sentinel group works the same way:
//!
//! ```no_run
//! use redis::{cluster::ClusterClient, sentinel::{SentinelClient, SentinelServerType}};
//! use tower_lock::{Locker, redis::RedisBackend};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = ClusterClient::new(vec!["redis://10.0.0.1:7000/", "redis://10.0.0.2:7000/"])?;
//! let locker = Locker::new(RedisBackend::new(cluster).await?);
//!
//! let sentinel = SentinelClient::build(
//!     vec!["redis://10.0.0.1:26379/"],
//!     "mymaster".to_owned(),
//!     None,
//!     SentinelServerType::Master,
//! )?;
//! let locker = Locker::new(RedisBackend::builder(sentinel).prefix("billing:locks:").build().await?);
//! # Ok(())
//! # }
//! ```

mod client;
mod keys;
mod notify;
mod scripts;

use std::{fmt, sync::Arc, time::Duration};

use redis::{Script, ScriptInvocation, aio::ConnectionLike};

pub use self::client::RedisClient;
use self::{
    client::Conn,
    keys::KeySpace,
    notify::{Handover, Joined, Listener, Notifier},
};
use crate::{
    LockError,
    backend::{
        AcquireRequest, Attempt, Backend, Holding, Lease, LeaseKind, StateLoss, Subscription,
        Token, WRITER_CLAIM, WakeRegistry,
    },
};

/// The key prefix used unless [`RedisBackendBuilder::prefix`] sets another.
pub const DEFAULT_PREFIX: &str = "lock:";

/// How long a key's fence counter and waiter queue outlive its last lease
/// or waiter, unless [`RedisBackendBuilder::fence_retention`] sets another:
/// see [Fences](self#fences).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(60);

/// How long a request to Redis may go unanswered before it fails with
/// [`LockError::Unavailable`], unless
/// [`RedisBackendBuilder::request_timeout`] sets another.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Locks in Redis; see the [module docs](self).
///
/// Cheap to clone: clones share the connections. Lockers over clones are
/// distinct owners of their locks.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    registry: WakeRegistry,
    _notifier: Notifier,
}

impl Inner {
    /// Wakes the next waiter of this backend's locker on `key` when it
    /// subscribes, a moment after its head returns with the lease just
    /// granted: one more lease of the key's kind is free for it.
    fn wake_next(&self, key: &str) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.store.handover.hold(key));
        }
    }

    /// Takes this backend out of `key`'s queue, in the background, unless
    /// another of its waiters still waits for the key.
    fn withdraw(&self, key: String) {
        if self.registry.is_watched(&key) || !self.store.joined.has(&key) {
            return;
        }
        // Without a runtime, the entry stays until a release pops it, and a
        // turn then given to this backend is passed on by its listener.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.store.clone().withdraw(&runtime, key);
        }
    }
}

/// What the backend and its listener both act on: the connection, the key
/// space and this backend's name in queues. Cheap to clone.
#[derive(Clone)]
struct Store {
    conn: Conn,
    keys: KeySpace,
    /// Where turns are announced: `<prefix>released:<backend id>`, one
    /// channel per backend, so a turn reaches only the backend it is for.
    turns: String,
    /// This backend's own turn channel: `turns` and `id`.
    channel: String,
    /// Names this backend in waiter queues and turn messages.
    id: String,
    /// How long fence counters and queues outlive their key's use, in ms.
    retention: u64,
    /// Hears of grants and releases of leases that carry a value.
    changed: String,
    /// Noticed when the wake-up connection comes back: the server may have
    /// restarted, or failed over, without the keys.
    loss: Arc<StateLoss>,
    /// Wake-ups held for the next waiter to subscribe to a key.
    handover: Arc<Handover>,
    /// The keys whose queue this backend may be in.
    joined: Arc<Joined>,
    /// The key of the store's epoch (see [`scripts::EPOCH`]).
    epoch: String,
}

impl Store {
    /// A failed request; one that lost its connection may mean the server
    /// restarted or failed over without the keys (see `loss`).
    fn failed(&self, err: redis::RedisError) -> LockError {
        if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
            self.loss.notice();
        }
        LockError::unavailable(err)
    }

    /// `script` with every key of `key`'s lock and the arguments every
    /// script starts with (see the `scripts` module).
    fn invocation(&self, script: &'static Script, key: &str) -> ScriptInvocation<'static> {
        let mut invocation = script.prepare_invoke();
        for redis_key in KeySpace::script_keys(self.keys.lock_key(key)) {
            invocation.key(redis_key);
        }
        invocation
            .arg(&self.id)
            .arg(&self.turns)
            .arg(millis(TURN_GRACE))
            .arg(self.retention)
            .arg(millis(WRITER_CLAIM));
        invocation
    }

    /// The script of a try for `request`; `proven`: the store is known to
    /// have kept its state for at least the request's ttl (see
    /// [`scripts::EPOCH`]).
    fn acquire(&self, request: &AcquireRequest<'_>, proven: bool) -> ScriptInvocation<'static> {
        let flag = |set: bool| if set { "1" } else { "0" };
        let mut invocation = match request.kind {
            LeaseKind::Exclusive => self.invocation(&scripts::ACQUIRE, request.key),
            LeaseKind::Shared | LeaseKind::Counted { .. } => {
                self.invocation(&scripts::ACQUIRE_SHARED, request.key)
            }
        };
        invocation
            .arg(request.token.to_string())
            .arg(millis(request.ttl))
            .arg(flag(request.waiting))
            .arg(flag(request.queued_behind));
        match request.kind {
            LeaseKind::Exclusive => invocation
                .arg(request.value.unwrap_or(""))
                .arg(&self.changed)
                .arg(flag(proven)),
            LeaseKind::Shared => invocation.arg("s").arg(0),
            LeaseKind::Counted { permits } => invocation.arg("c").arg(permits),
        };
        invocation
    }

    /// How much longer a lease with a value and `ttl`, on a key with no
    /// counter, must wait: until the store's epoch is `ttl` old.
    async fn epoch_hold_back(&self, ttl: Duration) -> Result<Duration, LockError> {
        let mut invocation = scripts::EPOCH.prepare_invoke();
        invocation.key(&self.epoch);
        let reply: Vec<i64> = self.run(&invocation).await?;
        let [since, now] = reply[..] else {
            return Ok(ttl);
        };
        let until = since.saturating_add(i64::try_from(millis(ttl)).unwrap_or(i64::MAX));
        let left = u64::try_from(until.saturating_sub(now)).unwrap_or(0);
        Ok(Duration::from_millis(left))
    }

    /// Runs `invocation` on the command connection.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, LockError> {
        invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|err| self.failed(err))
    }

    /// Releases `lease` on `key`. `None`: it was no longer held;
    /// `Some(released)`: released.
    async fn release(&self, key: &str, lease: &Lease) -> Result<Option<Released>, LockError> {
        let mut invocation = match lease.kind {
            LeaseKind::Exclusive => self.invocation(&scripts::RELEASE, key),
            LeaseKind::Shared | LeaseKind::Counted { .. } => {
                self.invocation(&scripts::RELEASE_SHARED, key)
            }
        };
        invocation.arg(lease.token.to_string()).arg(&self.changed);
        let reply: Vec<redis::Value> = self.run(&invocation).await?;
        let (others_hold, handed_to) = match reply.split_first() {
            Some((redis::Value::Int(1), handed_to)) => (false, handed_to),
            Some((redis::Value::Int(2), handed_to)) => (true, handed_to),
            _ => return Ok(None),
        };
        let handed_to = handed_to
            .iter()
            .filter_map(|id| match id {
                redis::Value::BulkString(id) => Some(String::from_utf8_lossy(id).into_owned()),
                _ => None,
            })
            .collect();
        Ok(Some(Released {
            others_hold,
            handed_to,
        }))
    }

    /// In the background on `runtime`: takes this backend out of `key`'s
    /// queue, and passes on a turn already given to it, because nobody
    /// here waits for the key any longer.
    fn withdraw(self, runtime: &tokio::runtime::Handle, key: String) {
        runtime.spawn(async move {
            let invocation = self.invocation(&scripts::WITHDRAW, &key);
            if let Err(err) = self.run::<i64>(&invocation).await {
                // The turn lapses after its grace instead, and the queue
                // expires after the retention.
                tracing::debug!(?key, error = %err, "could not leave the waiter queue");
            }
            // Forgotten either way, so the map holds only keys waited for.
            self.joined.left(&key);
        });
    }
}

/// What a release did.
struct Released {
    /// Other shared or counted holders still hold the key.
    others_hold: bool,
    /// The queued backends given a turn.
    handed_to: Vec<String>,
}

impl Released {
    /// Whether waiters of the backend `id` may now take the key: it is their
    /// turn, or the key was freed with nobody queued.
    fn frees_for(&self, id: &str) -> bool {
        self.handed_to.iter().any(|to| to == id) || (self.handed_to.is_empty() && !self.others_hold)
    }
}

/// How long a released lock stays reserved for the first queued backend:
/// long enough for the turn message and the claim to cross the network, and
/// short, because a backend that died while queued costs the queue this.
const TURN_GRACE: Duration = Duration::from_millis(250);

impl RedisBackend {
    /// Connects with `client` (a standalone [`redis::Client`], a
    /// [`ClusterClient`](redis::cluster::ClusterClient) or a
    /// [`SentinelClient`](redis::sentinel::SentinelClient)) and the default
    /// prefix [`DEFAULT_PREFIX`].
    ///
    /// # Errors
    ///
    /// [`LockError::Unavailable`] when the first connection fails. Later
    /// drops are reconnected without any step from you.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let backend = tower_lock::redis::RedisBackend::new(client).await?;
    /// # Ok(()) }
    /// ```
    pub async fn new(client: impl Into<RedisClient>) -> Result<Self, LockError> {
        RedisBackend::builder(client).build().await
    }

    /// Connects to the standalone server at `url` (`redis://host:port/db`,
    /// `rediss://…`, `redis+unix:///path`).
    ///
    /// # Errors
    ///
    /// [`LockError::Unavailable`] for a malformed url or a failed connection.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tower_lock::LockError> {
    /// let backend = tower_lock::redis::RedisBackend::from_url("redis://127.0.0.1:6379/2").await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_url(url: &str) -> Result<Self, LockError> {
        let client = redis::Client::open(url).map_err(LockError::unavailable)?;
        RedisBackend::new(client).await
    }

    /// A builder, to set the key prefix before connecting.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let backend = tower_lock::redis::RedisBackend::builder(client)
    ///     .prefix("myapp:locks:")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(client: impl Into<RedisClient>) -> RedisBackendBuilder {
        RedisBackendBuilder {
            client: client.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            subscriber: None,
            retention: DEFAULT_RETENTION,
            deadline: DEFAULT_REQUEST_TIMEOUT,
            allow_eviction: false,
        }
    }

    /// The prefix of every Redis key this backend writes.
    pub fn prefix(&self) -> &str {
        self.inner.store.keys.prefix()
    }

    /// The Redis key that holds the lock on `key` (its fence counter is this
    /// plus `:fence`, its queue `:queue`; a shared or counted key's holders
    /// are `:holders`, see the [module docs](self#shared-and-counted-locks)):
    /// for inspecting locks with other tools.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tower_lock::LockError> {
    /// let backend = tower_lock::redis::RedisBackend::from_url("redis://127.0.0.1/").await?;
    /// assert_eq!(backend.redis_key("a{b}"), "lock:{a%7Bb%7D}");
    /// # Ok(()) }
    /// ```
    pub fn redis_key(&self, key: &str) -> String {
        self.inner.store.keys.lock_key(key)
    }

    /// Whether `redis_key` names a lock (not a fence counter, queue, claim
    /// or holders) of this backend's prefix.
    pub fn is_lock_key(&self, redis_key: &[u8]) -> bool {
        self.inner.store.keys.is_lock_key(redis_key)
    }

    /// A `SCAN MATCH` pattern covering every key this backend writes (locks,
    /// fence counters, queues, claims and holders, and the store's epoch);
    /// tell locks from the rest with [`is_lock_key`](Self::is_lock_key).
    pub fn key_pattern(&self) -> String {
        self.inner.store.keys.scan_pattern()
    }

    /// The pub/sub channel on which this backend is told that a lock was
    /// handed to its waiters (`<prefix>released:<backend id>`).
    pub fn release_channel(&self) -> &str {
        &self.inner.store.channel
    }
}

/// Configures a [`RedisBackend`]; made by [`RedisBackend::builder`].
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct RedisBackendBuilder {
    client: RedisClient,
    prefix: String,
    subscriber: Option<redis::Client>,
    retention: Duration,
    deadline: Duration,
    allow_eviction: bool,
}

impl RedisBackendBuilder {
    /// The prefix of every Redis key the backend writes; [`DEFAULT_PREFIX`]
    /// (`lock:`) by default. Give services that must not share locks
    /// different prefixes. It may not contain `{` or `}`, which would
    /// change the Cluster hash tag.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The server to open the wake-up (pub/sub) connection to, for a Cluster
    /// whose nodes need credentials or TLS: by default the backend picks a
    /// master from `CLUSTER SLOTS` and connects to it with no credentials.
    /// Any node of the Cluster will do. Standalone and Sentinel backends
    /// ignore it.
    pub fn cluster_subscriber(mut self, node: redis::Client) -> Self {
        self.subscriber = Some(node);
        self
    }

    /// How long a key's fence counter (and waiter queue) outlives its last
    /// lease (or waiter): [`DEFAULT_RETENTION`] (60 s) unless set. Fences
    /// stay strictly increasing through a step back of the server's clock
    /// shorter than this; see [Fences](self#fences). Rounded up to whole
    /// milliseconds, at least 1 ms.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let backend = tower_lock::redis::RedisBackend::builder(client)
    ///     .fence_retention(Duration::from_secs(10))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn fence_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How long any one request to Redis may go unanswered (a hung
    /// connection, a paused server) before it fails with
    /// [`LockError::Unavailable`]: [`DEFAULT_REQUEST_TIMEOUT`] (5 s) unless
    /// set. A try that timed out may still have been granted; the locker
    /// then releases it by its token.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let backend = tower_lock::redis::RedisBackend::builder(client)
    ///     .request_timeout(Duration::from_millis(500))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn request_timeout(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Accepts a server whose `maxmemory-policy` is not `noeviction`.
    /// Without this, [`build`](Self::build) refuses such a server: an
    /// eviction policy may drop a live lock (every `volatile-*` policy
    /// evicts exactly the keys with a ttl, which every lock has) or a fence
    /// counter. Opt in only where memory can never reach `maxmemory`.
    pub fn allow_eviction(mut self) -> Self {
        self.allow_eviction = true;
        self
    }

    /// Connects, and checks the server's `maxmemory-policy`.
    ///
    /// # Errors
    ///
    /// - [`LockError::InvalidKey`] when the prefix holds `{` or `}`;
    /// - [`LockError::Misconfigured`] when the server's `maxmemory-policy`
    ///   can evict keys, unless [`allow_eviction`](Self::allow_eviction)
    ///   was set (where `CONFIG GET` is refused, as on many managed
    ///   services, construction succeeds with a warning);
    /// - [`LockError::Unavailable`] when the first connection fails.
    pub async fn build(self) -> Result<RedisBackend, LockError> {
        if self.prefix.contains(['{', '}']) {
            return Err(LockError::InvalidKey {
                reason: "the Redis key prefix contains `{` or `}`",
            });
        }
        let (conn, mut source) = Conn::connect(self.client, self.deadline)
            .await
            .map_err(LockError::unavailable)?;
        if !self.allow_eviction {
            check_eviction_policy(&conn).await?;
        }
        if let (Some(node), true) = (self.subscriber, conn.is_cluster()) {
            source = client::PubSubSource::Client(Box::new(node));
        }
        let keys = KeySpace::new(self.prefix);
        let id = Token::new().to_string();
        let turns = format!("{}released:", keys.prefix());
        let epoch = format!("{}epoch", keys.prefix());
        let store = Store {
            channel: format!("{turns}{id}"),
            changed: format!("{}changed", keys.prefix()),
            turns,
            conn,
            keys,
            id,
            retention: millis(self.retention),
            loss: Arc::default(),
            handover: Arc::default(),
            joined: Arc::default(),
            epoch,
        };
        let registry = WakeRegistry::default();
        let notifier = Notifier::start(Listener {
            source,
            store: store.clone(),
            registry: registry.clone(),
        })
        .await;
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                store,
                registry,
                _notifier: notifier,
            }),
        })
    }
}

impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackendBuilder")
            .field("client", &self.client)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("deployment", &self.inner.store.conn.kind())
            .field("db", &self.inner.store.conn.get_db())
            .field("prefix", &self.inner.store.keys.prefix())
            .field("waiting_keys", &self.inner.registry.len())
            .finish()
    }
}

/// Whole milliseconds for Redis, rounded up: a holder counts its lease
/// from before its request, so the store must never keep it for less.
fn millis(ttl: Duration) -> u64 {
    let millis = ttl.as_nanos().div_ceil(1_000_000);
    u64::try_from(millis).unwrap_or(u64::MAX).max(1)
}

/// Refuses a server whose `maxmemory-policy` can evict keys; see
/// [`RedisBackendBuilder::allow_eviction`].
async fn check_eviction_policy(conn: &Conn) -> Result<(), LockError> {
    let reply: redis::RedisResult<redis::Value> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(&mut conn.clone())
        .await;
    let reply = match reply {
        Ok(reply) => reply,
        Err(err) if err.kind() == redis::ErrorKind::Io || err.is_timeout() => {
            return Err(LockError::unavailable(err));
        }
        Err(err) => {
            tracing::warn!(
                error = %err,
                "CONFIG GET maxmemory-policy refused: cannot check that Redis never evicts locks"
            );
            return Ok(());
        }
    };
    // A Cluster answers per node; any node that may evict is refused.
    let mut policies = Vec::new();
    collect_policies(&reply, &mut policies);
    if policies.is_empty() {
        tracing::warn!(?reply, "no maxmemory-policy in the CONFIG GET reply");
    }
    match policies.into_iter().find(|policy| policy != "noeviction") {
        Some(policy) => Err(LockError::Misconfigured {
            setting: "maxmemory-policy",
            reason: format!(
                "`{policy}` can evict live locks and fence counters; set it to `noeviction`, \
                 or opt in with RedisBackendBuilder::allow_eviction"
            ),
        }),
        None => Ok(()),
    }
}

/// The values that follow a `maxmemory-policy` name anywhere in a reply
/// (a flat `[name, value]` array, a map, or one of those per node).
fn collect_policies(reply: &redis::Value, into: &mut Vec<String>) {
    use redis::Value;
    let text = |value: &Value| match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    };
    match reply {
        Value::Array(items) | Value::Set(items) => {
            for pair in items.windows(2) {
                if text(&pair[0]).as_deref() == Some("maxmemory-policy")
                    && let Some(policy) = text(&pair[1])
                {
                    into.push(policy);
                }
            }
            for item in items {
                collect_policies(item, into);
            }
        }
        Value::Map(entries) => {
            for (name, value) in entries {
                match text(name) {
                    Some(name) if name == "maxmemory-policy" => into.extend(text(value)),
                    _ => collect_policies(value, into),
                }
            }
        }
        _ => {}
    }
}

#[async_trait::async_trait]
impl Backend for RedisBackend {
    async fn try_acquire(&self, request: &AcquireRequest<'_>) -> Result<Attempt, LockError> {
        if let Some(left) = self.inner.store.loss.holds_back(request) {
            return Ok(Attempt::Busy {
                remaining: Some(left),
            });
        }
        let store = &self.inner.store;
        // Only a waiting caller (subscribed to the key's wake-ups before it
        // tried) joins the queue: a turn that comes for a key nobody here
        // watches is passed on.
        let ticket = request.waiting.then(|| store.joined.joining(request.key));
        let mut reply: Vec<i64> = store.run(&store.acquire(request, false)).await?;
        if reply.first() == Some(&4) {
            let left = store.epoch_hold_back(request.ttl).await?;
            if !left.is_zero() {
                if let Some(ticket) = ticket {
                    ticket.settle(None);
                }
                return Ok(Attempt::Busy {
                    remaining: Some(left),
                });
            }
            reply = store.run(&store.acquire(request, true)).await?;
        }
        let (outcome, value) = match reply[..] {
            [outcome, value, ..] => (outcome, value),
            _ => (0, -1),
        };
        if let Some(ticket) = ticket {
            // A grant leaves its backend in the queue only for the waiters
            // behind it: an exclusive one always, a shared or counted one
            // unless it wakes the next of them at once.
            let queued = match outcome {
                1 => {
                    request.queued_behind
                        && (request.kind == LeaseKind::Exclusive || reply.get(2) != Some(&1))
                }
                2 => true,
                _ => false,
            };
            ticket.settle(Some(queued));
        }
        if outcome == 1 {
            // Any turn this backend had on the key went to this grant (an
            // exclusive grant leaves none; a shared or counted one says), so
            // no later waiter here is to be woken for it.
            if request.kind == LeaseKind::Exclusive || reply.get(3) == Some(&1) {
                store.handover.cancel(request.key);
            }
            if reply.get(2) == Some(&1) {
                self.inner.wake_next(request.key);
            }
        }
        // Negative PTTL: the holder's key has no expiry (set by hand).
        let remaining = u64::try_from(value).ok().map(Duration::from_millis);
        Ok(match outcome {
            1 => {
                // The server's clock in µs: never below 1.
                let fence = u64::try_from(value).unwrap_or(0);
                Attempt::Acquired {
                    fence,
                    revision: fence,
                }
            }
            2 => Attempt::Queued { remaining },
            3 => {
                let requested = match request.kind {
                    LeaseKind::Counted { permits } => permits,
                    _ => 0,
                };
                return Err(LockError::PermitsMismatch {
                    key: request.key.to_owned(),
                    stored: u32::try_from(value).unwrap_or(u32::MAX),
                    requested,
                });
            }
            _ => Attempt::Busy { remaining },
        })
    }

    async fn extend(
        &self,
        key: &str,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Option<u64>, LockError> {
        let store = &self.inner.store;
        let mut invocation = match lease.kind {
            LeaseKind::Exclusive => store.invocation(&scripts::EXTEND, key),
            LeaseKind::Shared | LeaseKind::Counted { .. } => {
                store.invocation(&scripts::EXTEND_SHARED, key)
            }
        };
        invocation.arg(lease.token.to_string()).arg(millis(ttl));
        let extended: i64 = store.run(&invocation).await?;
        Ok((extended == 1).then_some(lease.revision))
    }

    async fn release(&self, key: &str, lease: &Lease) -> Result<bool, LockError> {
        let Some(released) = self.inner.store.release(key, lease).await? else {
            return Ok(false);
        };
        // Waiters sharing this backend need not wait for the message's round
        // trip through Redis, when it is their turn.
        if released.frees_for(&self.inner.store.id) {
            self.inner.registry.notify(key);
        }
        Ok(true)
    }

    /// A waiter that gives up takes this backend out of the key's queue,
    /// once no other waiter here is left, and passes on a turn already
    /// reserved for it.
    async fn subscribe(&self, key: &str) -> Result<Subscription, LockError> {
        let (inner, gone) = (self.inner.clone(), key.to_owned());
        let subscription = self.inner.registry.subscribe(key);
        if self.inner.store.handover.claim(key) {
            self.inner.registry.notify(key);
        }
        Ok(subscription.on_give_up(move || inner.withdraw(gone)))
    }

    async fn holder(&self, key: &str) -> Result<Option<Holding>, LockError> {
        let invocation = self.inner.store.invocation(&scripts::HOLDER, key);
        let reply: Vec<redis::Value> = self.inner.store.run(&invocation).await?;
        let [
            redis::Value::Int(1),
            token,
            redis::Value::Int(fence),
            redis::Value::Int(pttl),
            value @ ..,
        ] = &reply[..]
        else {
            return Ok(None);
        };
        let value = match value {
            [redis::Value::BulkString(value)] => Some(String::from_utf8_lossy(value).into_owned()),
            _ => None,
        };
        // A value this crate did not write is a holder all the same.
        let token = match token {
            redis::Value::BulkString(token) => std::str::from_utf8(token)
                .ok()
                .and_then(|token| uuid::Uuid::parse_str(token).ok()),
            _ => None,
        };
        Ok(Some(
            Holding::new(
                token.unwrap_or_default().into(),
                u64::try_from(*fence).unwrap_or(0),
                u64::try_from(*pttl).ok().map(Duration::from_millis),
            )
            .with_value(value),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_milliseconds() {
        assert_eq!(millis(Duration::from_micros(10_900)), 11);
        assert_eq!(millis(Duration::from_millis(10)), 10);
        assert_eq!(millis(Duration::from_nanos(1)), 1);
        assert_eq!(millis(Duration::from_nanos(1_000_001)), 2);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn eviction_policies_are_found_in_every_reply_shape() {
        use redis::Value;
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let flat = Value::Array(vec![text("maxmemory-policy"), text("allkeys-lru")]);
        let map = Value::Map(vec![(text("maxmemory-policy"), text("noeviction"))]);
        let per_node = Value::Array(vec![map.clone(), flat.clone()]);
        for (reply, expected) in [
            (&flat, vec!["allkeys-lru"]),
            (&map, vec!["noeviction"]),
            (&per_node, vec!["noeviction", "allkeys-lru"]),
        ] {
            let mut found = Vec::new();
            collect_policies(reply, &mut found);
            assert_eq!(found, expected, "{reply:?}");
        }
    }
}
