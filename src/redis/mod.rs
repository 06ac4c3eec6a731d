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
//!
//! [`Backend::holder`]: crate::backend::Backend::holder
//! [`LeaseKind::Counted`]: crate::backend::LeaseKind::Counted
//! [`LeaseKind::Shared`]: crate::backend::LeaseKind::Shared
//! [`LockError::Misconfigured`]: crate::LockError::Misconfigured
//! [`LockError::PermitsMismatch`]: crate::LockError::PermitsMismatch
//! [`LockError::Unavailable`]: crate::LockError::Unavailable

mod backend;
mod client;
mod contract;
mod eviction;
mod keys;
mod notify;
mod scripts;
mod store;

use self::store::Store;
pub use self::{
    backend::{
        DEFAULT_PREFIX, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETENTION, RedisBackend,
        RedisBackendBuilder,
    },
    client::RedisClient,
};
