//! RedisBackend against someone who may publish on the server and against
//! a slow server, each on a redis-server of its own: a message alone writes
//! nothing, the kinds' scripts pass on what a writer does not take and
//! leave other writers' claims alone, and the backend's one deadline
//! governs every request.
#![cfg(feature = "redis")]

mod conformance;
mod redis_support;
mod support;

use std::time::{Duration, Instant};

use redis_support::{Deployment, RedisHarness, Tied, admin};
use tower_lock::{
    LockError,
    backend::{AcquireRequest, Attempt, Backend, Lease, LeaseKind, Token},
    redis::RedisBackend,
};

const LONG: Duration = Duration::from_secs(30);

fn own(extra: &[&str]) -> (Tied, RedisHarness) {
    let server = Tied::start(
        support::free_port(),
        extra.iter().map(|s| s.to_string()).collect(),
    );
    let url = server.url();
    let harness = RedisHarness::new(Deployment::Standalone(url.clone()), vec![url]);
    (server, harness)
}

/// How often the server ran a script (`EVAL`, `EVALSHA`).
async fn scripts_run(url: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut admin(url).await)
        .await
        .expect("INFO");
    info.lines()
        .filter(|line| line.starts_with("cmdstat_eval:") || line.starts_with("cmdstat_evalsha:"))
        .filter_map(|line| {
            line.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn lease(token: Token, attempt: Attempt, kind: LeaseKind) -> Lease {
    let Attempt::Acquired { fence, revision } = attempt else {
        panic!("not granted: {attempt:?}");
    };
    Lease::granted(token, kind, fence, revision)
}

/// A forged turn on a backend's own channel, about a key it never queued
/// for (and about keys nobody uses), wakes nothing to do: the backend sends
/// no request at all, where it used to run its withdrawal script 20 ms
/// later for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_turn_makes_no_request() {
    let (server, h) = own(&[]);
    let backend = h.backend().await;
    let mut conn = admin(&server.url()).await;
    let before = scripts_run(&server.url()).await;
    let mut sent = 0;
    for n in 0..20 {
        let payload = backend.redis_key(&format!("never-queued-{n}"));
        let _: i64 = redis::cmd("PUBLISH")
            .arg(backend.release_channel())
            .arg(&payload)
            .query_async(&mut conn)
            .await
            .expect("PUBLISH");
        sent += 1;
    }
    sent += conformance::Harness::forge(&h, "never-queued").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        scripts_run(&server.url()).await,
        before,
        "{sent} forged messages made the backend run scripts"
    );
}

/// A holder retrying with its own token (a lost answer) while a writer of
/// another backend waits leaves that writer's claim in place, and a new
/// reader stays out; a grant to that writer ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holders_retry_keeps_a_waiting_writers_claim() {
    let (server, h) = own(&[]);
    let (holder, writer) = (h.backend().await, h.backend().await);
    let reader = tower_lock::Locker::new(h.backend().await);
    let key = "claimed";
    let claim = format!("{}:claim", holder.redis_key(key));
    let token = Token::new();
    let request = AcquireRequest::new(key, token, LONG);
    let held = lease(
        token,
        holder.try_acquire(&request).await.expect("try"),
        LeaseKind::Exclusive,
    );
    let _waiting = writer.subscribe(key).await.expect("subscribe");
    let refused = writer
        .try_acquire(&AcquireRequest::new(key, Token::new(), LONG).waiting(true))
        .await
        .expect("try");
    assert!(matches!(refused, Attempt::Queued { .. }), "{refused:?}");
    let writer_id = writer
        .release_channel()
        .rsplit(':')
        .next()
        .expect("id")
        .to_owned();
    let mut conn = admin(&server.url()).await;
    let claimed = |conn: &mut redis::aio::MultiplexedConnection| {
        let (mut conn, claim) = (conn.clone(), claim.clone());
        async move {
            let value: Option<String> = redis::cmd("GET")
                .arg(claim)
                .query_async(&mut conn)
                .await
                .expect("GET");
            value
        }
    };
    assert_eq!(
        claimed(&mut conn).await.as_deref(),
        Some(writer_id.as_str())
    );
    let again = holder.try_acquire(&request).await.expect("retry");
    assert!(matches!(again, Attempt::Acquired { fence, .. } if fence == held.fence));
    assert_eq!(
        claimed(&mut conn).await.as_deref(),
        Some(writer_id.as_str()),
        "the holder's retry removed the waiting writer's claim"
    );
    holder.release(key, &held).await.expect("release");
    assert!(
        reader
            .try_lock_shared(key, LONG)
            .await
            .expect("try")
            .is_none(),
        "a reader jumped the waiting writer"
    );
    let token = Token::new();
    let granted = writer
        .try_acquire(&AcquireRequest::new(key, token, LONG).waiting(true))
        .await
        .expect("try");
    let granted = lease(token, granted, LeaseKind::Exclusive);
    assert_eq!(
        claimed(&mut conn).await,
        None,
        "the writer's grant ends its claim"
    );
    writer.release(key, &granted).await.expect("release");
}

/// Two permits held; two backends' counted waiters queued; a release gives
/// the first backend the freed permit's turn, which its writer meets
/// instead and drops: the next queued counted waiter gets the permit at
/// once, not after the writer's claim and its own backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counted_turn_a_writer_drops_goes_to_the_next_counted_waiter() {
    let (_server, h) = own(&[]);
    let (holder, first, second) = (h.backend().await, h.backend().await, h.backend().await);
    let key = "permits";
    let two = LeaseKind::Counted { permits: 2 };
    let take = |backend: &RedisBackend, waiting: bool| {
        let (backend, token) = (backend.clone(), Token::new());
        async move {
            let request = AcquireRequest::new(key, token, LONG)
                .kind(two)
                .waiting(waiting);
            (token, backend.try_acquire(&request).await.expect("try"))
        }
    };
    let (t1, a1) = take(&holder, false).await;
    let (t2, a2) = take(&holder, false).await;
    let (h1, h2) = (lease(t1, a1, two), lease(t2, a2, two));
    // Both watch the key, so their listeners only wake them.
    let (_first_waits, _second_waits) = (
        first.subscribe(key).await.expect("subscribe"),
        second.subscribe(key).await.expect("subscribe"),
    );
    for backend in [&first, &second] {
        let (_, queued) = take(backend, true).await;
        assert!(matches!(queued, Attempt::Queued { .. }), "{queued:?}");
    }
    assert!(holder.release(key, &h1).await.expect("release"));
    // The first backend's turn is met by its writer.
    let writer = first
        .try_acquire(&AcquireRequest::new(key, Token::new(), LONG).waiting(true))
        .await
        .expect("try");
    assert!(!matches!(writer, Attempt::Acquired { .. }), "{writer:?}");
    let (t3, next) = take(&second, true).await;
    assert!(
        matches!(next, Attempt::Acquired { .. }),
        "the permit the writer dropped was kept from the next counted waiter: {next:?}"
    );
    let h3 = lease(t3, next, two);
    assert!(second.release(key, &h3).await.expect("release"));
    assert!(holder.release(key, &h2).await.expect("release"));
}

/// A server slowed to between redis-rs's own 500 ms response timeout and
/// the backend's deadline answers in time: the request succeeds. Slowed
/// past the deadline, the request fails at the deadline, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deadline_governs_every_request() {
    let (server, h) = own(&["--enable-debug-command", "yes"]);
    let deadline = Duration::from_secs(3);
    let client = redis::Client::open(server.url().as_str()).expect("client");
    let backend = RedisBackend::builder(client)
        .prefix(h.prefix.clone())
        .request_timeout(deadline)
        .build()
        .await
        .expect("connect");
    let locker = tower_lock::Locker::new(backend);
    let url = server.url();
    let sleep = |seconds: &'static str| {
        let url = url.clone();
        tokio::spawn(async move {
            // A connection of redis-rs's own would give up at 500 ms.
            let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
            let mut conn = redis::Client::open(url.as_str())
                .expect("client")
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .expect("connect");
            let () = redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(seconds)
                .query_async(&mut conn)
                .await
                .expect("DEBUG SLEEP");
        })
    };
    let slowed = sleep("1.5");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let guard = locker
        .try_lock("slow", LONG)
        .await
        .expect("a request answered within the deadline fails")
        .expect("free");
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "the server was not slowed"
    );
    slowed.await.expect("sleep");
    guard.release().await.expect("release");

    let stalled = sleep("4.5");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let err = locker
        .try_lock("stalled", LONG)
        .await
        .expect_err("past the deadline");
    let took = started.elapsed();
    assert!(matches!(err, LockError::Unavailable { .. }), "{err}");
    assert!(
        took >= deadline - Duration::from_millis(200),
        "failed after {took:?}, before the deadline of {deadline:?}"
    );
    assert!(
        took < deadline + Duration::from_secs(1),
        "failed after {took:?}"
    );
    stalled.await.expect("sleep");
}

/// A writer that gives up its wait ends its claim with its withdrawal:
/// readers are not kept out for the rest of the claim's second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_gives_up_ends_its_claim() {
    let (server, h) = own(&[]);
    let holder = tower_lock::Locker::new(h.backend().await);
    let writer = tower_lock::Locker::new(h.backend().await);
    let key = "given-up";
    let claim = format!("{}:claim", h.backend().await.redis_key(key));
    let held = holder.acquire_shared(key, LONG).await.expect("shared");
    let waited = tokio::time::timeout(Duration::from_millis(200), writer.acquire(key, LONG)).await;
    assert!(waited.is_err(), "the writer got in past a reader");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(&claim)
        .query_async(&mut admin(&server.url()).await)
        .await
        .expect("EXISTS");
    assert!(
        !exists,
        "the claim of a writer that gave up kept readers out"
    );
    let reader = tower_lock::Locker::new(h.backend().await);
    let shared = reader
        .try_lock_shared(key, LONG)
        .await
        .expect("try")
        .expect("a reader is let in once the writer gave up");
    shared.release().await.expect("release");
    held.release().await.expect("release");
}

/// Found by the fault harness (redis seeds 70048, 70063): the server counts
/// a lease from the start of the millisecond it runs the request in, so a
/// ttl passed as it is let the next holder in up to a millisecond before
/// the first one stopped counting on its lease. The lock key must expire
/// (`PEXPIRETIME`, on the machine's wall clock, which the test reads too)
/// no earlier than the holder's own deadline: its send time plus the ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lease_ends_in_the_store_before_its_holder_stops_counting_on_it() {
    let (server, h) = own(&[]);
    let client = redis::Client::open(server.url().as_str()).expect("client");
    let backend = RedisBackend::builder(client)
        .prefix(h.prefix.clone())
        .build()
        .await
        .expect("connect");
    let mut admin = admin(&server.url()).await;
    let ttl = Duration::from_millis(5_000);
    for round in 0..40 {
        let k = format!("resolution-{round}");
        let sent_at = std::time::SystemTime::now();
        let held = backend
            .try_acquire(&AcquireRequest::new(&k, Token::new(), ttl))
            .await
            .expect("try");
        assert!(matches!(held, Attempt::Acquired { .. }), "{held:?}");
        let deadline = sent_at + ttl;
        // The key holding the lease expires first; the others outlast it.
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*{k}*", h.prefix))
            .query_async(&mut admin)
            .await
            .expect("KEYS");
        let mut ends = Vec::new();
        for key in keys {
            let at: i64 = redis::cmd("PEXPIRETIME")
                .arg(&key)
                .query_async(&mut admin)
                .await
                .expect("PEXPIRETIME");
            ends.extend(u64::try_from(at).ok());
        }
        let ends = ends.into_iter().min().expect("the lease's key expires");
        let ends = std::time::UNIX_EPOCH + Duration::from_millis(ends);
        assert!(
            ends >= deadline,
            "round {round}: the store ends the lease {:?} before its holder's deadline",
            deadline.duration_since(ends).unwrap_or_default()
        );
    }
}
