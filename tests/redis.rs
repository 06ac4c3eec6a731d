//! RedisBackend on a standalone redis-server started by the tests: the
//! conformance suite, key events, connection counts, bad input.
#![cfg(feature = "redis")]

mod conformance;
mod redis_support;
mod support;

use std::{
    sync::LazyLock,
    time::{Duration, Instant},
};

use redis_support::{Deployment, RedisHarness, Tied, scan_keys};
use tower_lock::{LockError, Locker, redis::RedisBackend};

/// One server for the whole binary; each test keeps to its own prefix.
static SERVER: LazyLock<Tied> = LazyLock::new(|| Tied::start(support::free_port(), Vec::new()));

fn harness() -> RedisHarness {
    RedisHarness::new(Deployment::Standalone(SERVER.url()), vec![SERVER.url()])
}

mod standalone {
    crate::conformance_suite!(async { crate::harness() });
}

/// How many backends wait in Redis's queue for `key`.
async fn queue_len(h: &RedisHarness, key: &str) -> usize {
    let backend = h.backend().await;
    let mut conn = redis::Client::open(h.scan[0].as_str())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    redis::cmd("LLEN")
        .arg(format!("{}:queue", backend.redis_key(key)))
        .query_async(&mut conn)
        .await
        .expect("LLEN")
}

/// A server of the test's own, for checks that reconfigure it.
fn own_server(extra: &[&str]) -> Tied {
    Tied::start(
        support::free_port(),
        extra.iter().map(|s| s.to_string()).collect(),
    )
}

async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_url_selects_the_database_and_leaves_others_alone() -> anyhow::Result<()> {
    let server = own_server(&[]);
    let url = format!("redis://127.0.0.1:{}/3", server.port);
    let locker = Locker::new(RedisBackend::from_url(&url).await?);
    let guard = locker.acquire("k", Duration::from_secs(30)).await?;
    let mut db3 = admin(&url).await;
    let mut db0 = admin(&server.url()).await;
    let in_db3: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut db3).await?;
    let in_db0: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut db0).await?;
    assert_eq!(in_db3.len(), 2, "lock and fence counter: {in_db3:?}");
    assert!(in_db0.is_empty(), "{in_db0:?}");
    guard.release().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_namespaced_and_never_touch_foreign_keys() -> anyhow::Result<()> {
    let h = harness();
    let backend = h.backend().await;
    let mut conn = admin(&SERVER.url()).await;
    // A key that looks like what a request could name.
    let foreign = format!("{}other", h.prefix);
    redis::cmd("SET")
        .arg(&foreign)
        .arg("precious")
        .query_async::<()>(&mut conn)
        .await?;
    let locker = Locker::new(backend.clone());
    for key in ["other", "*", "{other}", "a b\n[c]?", "ключ 🔒"] {
        let guard = locker.acquire(key, Duration::from_secs(30)).await?;
        let stored: Option<String> = redis::cmd("GET")
            .arg(backend.redis_key(key))
            .query_async(&mut conn)
            .await?;
        assert!(
            stored.is_some(),
            "{key:?} is stored under its own Redis key"
        );
        guard.release().await?;
    }
    let kept: String = redis::cmd("GET")
        .arg(&foreign)
        .query_async(&mut conn)
        .await?;
    assert_eq!(kept, "precious");
    let left = scan_keys(&SERVER.url(), &backend.key_pattern()).await;
    assert!(
        left.iter().all(|k| !backend.is_lock_key(k)),
        "released locks leave only fence counters"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_with_braces_is_refused() -> anyhow::Result<()> {
    let client = redis::Client::open(SERVER.url().as_str())?;
    let err = RedisBackend::builder(client)
        .prefix("a{b}:")
        .build()
        .await
        .expect_err("braces would change the hash tag");
    assert!(matches!(err, LockError::InvalidKey { .. }), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_fails_construction() {
    let url = format!("redis://127.0.0.1:{}/", support::free_port());
    let err = RedisBackend::from_url(&url)
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, LockError::Unavailable { .. }), "{err}");
    assert!(matches!(
        RedisBackend::from_url("not a url").await,
        Err(LockError::Unavailable { .. })
    ));
}

/// Expiry and `DEL` by someone else wake subscribers through key events
/// when the server publishes them, in the database actually used (not 0).
/// Nothing but an event can fire a subscription here: no lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_events_wake_subscribers_in_the_database_in_use() -> anyhow::Result<()> {
    let server = own_server(&["--notify-keyspace-events", "Exg", "--hz", "100"]);
    let url = format!("redis://127.0.0.1:{}/5", server.port);
    let holder = Locker::new(RedisBackend::from_url(&url).await?);
    let backend = RedisBackend::from_url(&url).await?;
    let mut conn = admin(&url).await;
    for (key, command) in [("expires", "PEXPIRE"), ("deleted", "DEL")] {
        let held = holder.acquire(key, Duration::from_secs(60)).await?;
        let mut wakeups = tower_lock::backend::Backend::subscribe(&backend, key).await?;
        let mut cmd = redis::cmd(command);
        cmd.arg(backend.redis_key(key));
        if command == "PEXPIRE" {
            cmd.arg(20);
        }
        cmd.query_async::<()>(&mut conn).await?;
        tokio::time::timeout(Duration::from_secs(5), wakeups.changed())
            .await
            .map_err(|_| anyhow::anyhow!("no wake-up from the {command} key event"))?;
        std::mem::forget(held);
    }
    Ok(())
}

/// The control for the test above: with key events off (the default) the
/// same expiry wakes nobody, and waiters rely on their timers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_key_events_expiry_is_found_by_the_timer() -> anyhow::Result<()> {
    let server = own_server(&[]);
    let holder = Locker::new(RedisBackend::from_url(&server.url()).await?);
    let backend = RedisBackend::from_url(&server.url()).await?;
    let held = holder.acquire("k", Duration::from_millis(300)).await?;
    let mut wakeups = tower_lock::backend::Backend::subscribe(&backend, "k").await?;
    assert!(
        tokio::time::timeout(Duration::from_secs(1), wakeups.changed())
            .await
            .is_err(),
        "an expiry with key events off must not look like a release"
    );
    std::mem::forget(held);
    let guard = tokio::time::timeout(
        Duration::from_secs(3),
        Locker::new(backend).acquire("k", Duration::from_secs(5)),
    )
    .await??;
    guard.release().await?;
    Ok(())
}

/// Managed services often disable CONFIG: construction must still work and
/// hand-off still be prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_config_command_is_tolerated() -> anyhow::Result<()> {
    let server = own_server(&["--rename-command", "CONFIG", ""]);
    let (a, b) = (
        Locker::new(RedisBackend::from_url(&server.url()).await?),
        Locker::new(RedisBackend::from_url(&server.url()).await?),
    );
    conformance::assert_hand_off_is_woken(&a, b.backend().clone(), "k").await;
    Ok(())
}

fn connection_count(port: u16) -> usize {
    redis_support::cli(port, &["client", "list"])
        .lines()
        .filter(|line| line.starts_with("id="))
        .count()
}

/// 1,000 tasks waiting on 1,000 keys share the backend's connections: at
/// most 3 per RedisBackend (`CLIENT LIST`), and all are woken when the keys
/// are released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_waiters_hold_at_most_three_connections() -> anyhow::Result<()> {
    const KEYS: usize = 1000;
    let server = own_server(&[]);
    let holder = Locker::new(RedisBackend::from_url(&server.url()).await?);
    let waiter = Locker::new(RedisBackend::from_url(&server.url()).await?);
    let ttl = Duration::from_secs(60);
    let mut held = Vec::new();
    for i in 0..KEYS {
        held.push(holder.acquire(&format!("key {i}"), ttl).await?);
    }
    let tasks: Vec<_> = (0..KEYS)
        .map(|i| {
            let waiter = waiter.clone();
            tokio::spawn(async move { waiter.acquire(&format!("key {i}"), ttl).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while waiter.queued_keys() < KEYS {
        assert!(Instant::now() < deadline, "waiters did not all queue");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Two backends, plus the redis-cli asking.
    let connections = connection_count(server.port) - 1;
    assert!(
        connections <= 2 * 3,
        "{connections} connections for two backends"
    );
    for guard in held {
        guard.release().await?;
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await??
            .map_err(anyhow::Error::from)?
            .release()
            .await?;
    }
    assert!(connection_count(server.port) - 1 <= 2 * 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_backend_closes_its_connections() -> anyhow::Result<()> {
    let server = own_server(&[]);
    let before = connection_count(server.port);
    let locker = Locker::new(RedisBackend::from_url(&server.url()).await?);
    drop(locker.acquire("k", Duration::from_secs(5)).await?);
    assert!(connection_count(server.port) > before);
    drop(locker);
    let deadline = Instant::now() + Duration::from_secs(5);
    while connection_count(server.port) > before {
        assert!(
            Instant::now() < deadline,
            "a dropped backend left connections open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Backends on one key take turns in the order they started waiting,
/// even against a newcomer of the releasing backend that tries the moment
/// the lock is released (it would win any race).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_backends_take_turns_in_queue_order() -> anyhow::Result<()> {
    let h = harness();
    let ttl = Duration::from_secs(30);
    let holder = Locker::new(h.backend().await);
    let first = Locker::new(h.backend().await);
    let second = Locker::new(h.backend().await);
    let guard = holder.acquire("turns", ttl).await?;
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for (name, locker) in [("first", first), ("second", second)] {
        let order = order.clone();
        waiters.push(tokio::spawn(async move {
            let guard = locker.acquire("turns", ttl).await.expect("acquire");
            order.lock().expect("order").push(name);
            tokio::time::sleep(Duration::from_millis(20)).await;
            guard.release().await.expect("release");
        }));
        // Queued in this order: wait until Redis has the waiter's backend
        // in the key's queue.
        let queued = waiters.len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while queue_len(&h, "turns").await < queued {
            assert!(Instant::now() < deadline, "the waiter never queued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    guard.release().await?;
    let again = holder.acquire("turns", ttl).await?;
    order.lock().expect("order").push("newcomer");
    again.release().await?;
    for waiter in waiters {
        waiter.await?;
    }
    assert_eq!(
        *order.lock().expect("order"),
        ["first", "second", "newcomer"]
    );
    Ok(())
}

/// A backend whose waiter gave up still has its place in the queue; when
/// its turn comes it passes the turn on at once instead of letting the
/// lock sit reserved for the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_nobody_waits_for_is_passed_on() -> anyhow::Result<()> {
    let h = harness();
    let ttl = Duration::from_secs(30);
    let holder = Locker::new(h.backend().await);
    let quitter = Locker::new(h.backend().await);
    let patient = Locker::new(h.backend().await);
    let guard = holder.acquire("pass", ttl).await?;
    let gave_up = quitter
        .acquire_timeout("pass", ttl, Duration::from_millis(100))
        .await;
    assert!(
        matches!(gave_up, Err(LockError::Busy { .. })),
        "{gave_up:?}"
    );
    let waiter = tokio::spawn(async move {
        let guard = patient.acquire("pass", ttl).await.expect("acquire");
        (Instant::now(), guard)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let released_at = Instant::now();
    guard.release().await?;
    let (acquired_at, next) = waiter.await?;
    // The grace a turn is reserved for is 250 ms; a pass-on takes a couple
    // of round trips.
    let took = acquired_at - released_at;
    assert!(took < Duration::from_millis(200), "took {took:?}");
    next.release().await?;
    Ok(())
}

/// A backend that went away while queued costs the waiters behind it one
/// grace (250 ms), not a stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_backend_that_is_gone_only_delays_the_queue() -> anyhow::Result<()> {
    let h = harness();
    let ttl = Duration::from_secs(30);
    let holder = Locker::new(h.backend().await);
    let guard = holder.acquire("gone", ttl).await?;
    {
        let doomed = Locker::new(h.backend().await);
        let waiting = tokio::spawn(async move { doomed.acquire("gone", ttl).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        waiting.abort();
        let _ = waiting.await;
    }
    let patient = Locker::new(h.backend().await);
    let waiter = tokio::spawn(async move { patient.acquire("gone", ttl).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    guard.release().await?;
    let next = tokio::time::timeout(Duration::from_secs(2), waiter).await???;
    next.release().await?;
    Ok(())
}

/// `try_lock` never waits, so it never joins the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_lock_never_joins_the_queue() -> anyhow::Result<()> {
    let h = harness();
    let backend = h.backend().await;
    let (a, b) = (Locker::new(backend.clone()), Locker::new(h.backend().await));
    let guard = a.acquire("no-queue", Duration::from_secs(30)).await?;
    assert!(
        b.try_lock("no-queue", Duration::from_secs(30))
            .await?
            .is_none()
    );
    let queue = format!("{}:queue", backend.redis_key("no-queue"));
    let queued: usize = redis::cmd("LLEN")
        .arg(&queue)
        .query_async(&mut admin(&SERVER.url()).await)
        .await?;
    assert_eq!(queued, 0);
    guard.release().await?;
    Ok(())
}

/// A waiter that gives up (a timeout, a dropped future) takes its backend
/// out of the key's queue at once, unless another waiter of its locker
/// still waits; nothing is left queued for a waiter that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_gives_up_leaves_the_queue() -> anyhow::Result<()> {
    let h = harness();
    let ttl = Duration::from_secs(30);
    let holder = Locker::new(h.backend().await);
    let quitter = Locker::new(h.backend().await);
    let guard = holder.acquire("quit", ttl).await?;
    let until_queue_is = |len: usize| {
        let h = &h;
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while queue_len(h, "quit").await != len {
                assert!(Instant::now() < deadline, "the queue never held {len}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    // Timed out.
    let gave_up = quitter
        .acquire_timeout("quit", ttl, Duration::from_millis(300))
        .await;
    assert!(
        matches!(gave_up, Err(LockError::Busy { .. })),
        "{gave_up:?}"
    );
    until_queue_is(0).await;

    // Dropped while waiting.
    let waiting = tokio::spawn({
        let quitter = quitter.clone();
        async move { quitter.acquire("quit", ttl).await }
    });
    until_queue_is(1).await;
    waiting.abort();
    let _ = waiting.await;
    until_queue_is(0).await;

    // Two waiters of one locker, and one of another backend queued after
    // them: the first of the two to give up leaves the other's place in the
    // queue alone, so it still comes before the other backend's waiter.
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let waiter = |locker: Locker, name: &'static str| {
        let order = order.clone();
        tokio::spawn(async move {
            let guard = locker.acquire("quit", ttl).await.expect("acquire");
            order.lock().expect("order").push(name);
            guard.release().await.expect("release");
        })
    };
    let impatient = tokio::spawn({
        let quitter = quitter.clone();
        async move {
            quitter
                .acquire_timeout("quit", ttl, Duration::from_millis(800))
                .await
        }
    });
    until_queue_is(1).await;
    let patient = waiter(quitter.clone(), "patient");
    // It waits behind the impatient one, inside its locker.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let later = waiter(Locker::new(h.backend().await), "other backend");
    until_queue_is(2).await;
    let gave_up = impatient.await?;
    assert!(
        matches!(gave_up, Err(LockError::Busy { .. })),
        "{gave_up:?}"
    );
    guard.release().await?;
    for task in [patient, later] {
        tokio::time::timeout(Duration::from_secs(5), task).await??;
    }
    assert_eq!(*order.lock().expect("order"), ["patient", "other backend"]);
    until_queue_is(0).await;
    Ok(())
}

/// The server's clock, in microseconds (`TIME`).
async fn server_micros(url: &str) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut admin(url).await)
        .await
        .expect("TIME");
    secs * 1_000_000 + micros
}

/// A server that lost every key (restarted without persistence) still
/// grants fences above every fence it granted before: they come from its
/// clock, not from a counter that starts again at 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_keep_growing_after_the_server_lost_its_keys() -> anyhow::Result<()> {
    let port = support::free_port();
    let server = Tied::start(port, Vec::new());
    let url = server.url();
    let locker = Locker::new(RedisBackend::from_url(&url).await?);
    let floor = server_micros(&url).await;
    let mut before = Vec::new();
    for _ in 0..200 {
        let guard = locker.acquire("k", Duration::from_secs(30)).await?;
        before.push(guard.fence());
        guard.release().await?;
    }
    assert!(before.windows(2).all(|w| w[0] < w[1]), "{before:?}");
    assert!(
        before[0] >= floor,
        "fence {} below the clock {floor}",
        before[0]
    );
    let largest_before = *before.last().expect("fences");

    drop(server);
    let _restarted = Tied::start(port, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        match locker.try_lock("k", Duration::from_secs(30)).await {
            Ok(Some(guard)) => break guard.fence(),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => anyhow::bail!("no lock after the restart: {other:?}"),
        }
    };
    assert!(
        after > largest_before,
        "fence {after} after the restart, {largest_before} before"
    );
    // Every fence fits a BIGINT and a JSON number.
    assert!(after < 1 << 53);
    Ok(())
}

/// The fence counter lives for the lease plus the retention, and a
/// release cuts it to the retention: nothing of a key stays long after
/// its use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_counter_outlives_the_lease_by_the_retention() -> anyhow::Result<()> {
    let server = own_server(&[]);
    let retention = Duration::from_secs(7);
    let backend = RedisBackend::builder(redis::Client::open(server.url())?)
        .fence_retention(retention)
        .build()
        .await?;
    let fence_key = format!("{}:fence", backend.redis_key("k"));
    let mut conn = admin(&server.url()).await;
    let mut pttl = async || -> i64 {
        redis::cmd("PTTL")
            .arg(&fence_key)
            .query_async(&mut conn)
            .await
            .expect("PTTL")
    };
    let locker = Locker::new(backend.clone());
    let guard = locker.acquire("k", Duration::from_secs(20)).await?;
    // The lease's ttl goes to the server a millisecond longer.
    let held = pttl().await;
    assert!((26_000..=27_001).contains(&held), "counter ttl {held} ms");
    guard.extend(Duration::from_secs(40)).await?;
    let extended = pttl().await;
    assert!(
        (46_000..=47_001).contains(&extended),
        "counter ttl {extended} ms"
    );
    guard.release().await?;
    let released = pttl().await;
    assert!(
        (6_000..=7_250).contains(&released),
        "counter ttl {released} ms"
    );
    Ok(())
}

/// 100,000 distinct keys locked and released leave at most 1 % of them as
/// Redis keys once the retention has passed (here shortened to 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_distinct_keys_leave_nothing_after_the_retention() -> anyhow::Result<()>
{
    const KEYS: usize = 100_000;
    const TASKS: usize = 64;
    let server = own_server(&["--hz", "50"]);
    let backend = RedisBackend::builder(redis::Client::open(server.url())?)
        .fence_retention(Duration::from_secs(1))
        .build()
        .await?;
    let locker = Locker::new(backend.clone());
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let locker = locker.clone();
            tokio::spawn(async move {
                for i in (task..KEYS).step_by(TASKS) {
                    let guard = locker
                        .acquire(&format!("tenant-{i}"), Duration::from_secs(30))
                        .await?;
                    guard.release().await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let right_after = scan_keys(&server.url(), &backend.key_pattern()).await.len();
    // The keys of the last second are still within the retention.
    assert!(right_after > 0, "no counter kept within the retention");
    // Redis expires keys lazily and by sampling: give it a few cycles.
    let deadline = Instant::now() + Duration::from_secs(30);
    let left = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let left = scan_keys(&server.url(), &backend.key_pattern()).await.len();
        if left <= KEYS / 100 || Instant::now() > deadline {
            break left;
        }
    };
    assert!(
        left <= KEYS / 100,
        "{left} of {KEYS} keys left after the retention"
    );
    Ok(())
}

/// A queue whose backends died while queued goes with the holder's lease
/// plus the retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_expires_after_the_lease_plus_the_retention() -> anyhow::Result<()> {
    let server = own_server(&[]);
    let build = async || {
        RedisBackend::builder(redis::Client::open(server.url()).expect("client"))
            .fence_retention(Duration::from_secs(5))
            .build()
            .await
    };
    let holder = Locker::new(build().await?);
    let waiting_backend = build().await?;
    let queue = format!("{}:queue", waiting_backend.redis_key("k"));
    let waiter = Locker::new(waiting_backend);
    let _held = holder.acquire("k", Duration::from_secs(20)).await?;
    let waiting = tokio::spawn(async move { waiter.acquire("k", Duration::from_secs(20)).await });
    let mut conn = admin(&server.url()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let pttl = loop {
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&queue)
            .query_async(&mut conn)
            .await?;
        if pttl > 0 {
            break pttl;
        }
        assert!(Instant::now() < deadline, "the waiter never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!((24_000..=25_001).contains(&pttl), "queue ttl {pttl} ms");
    waiting.abort();
    Ok(())
}

/// A server whose eviction policy could drop live locks is refused, with
/// the setting named, unless the builder opts in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_server_is_refused_unless_allowed() -> anyhow::Result<()> {
    let server = own_server(&["--maxmemory-policy", "volatile-lru"]);
    let err = RedisBackend::from_url(&server.url())
        .await
        .expect_err("volatile-lru evicts keys with a ttl: every lock");
    assert!(
        matches!(
            &err,
            LockError::Misconfigured {
                setting: "maxmemory-policy",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("volatile-lru"), "{err}");
    let allowed = RedisBackend::builder(redis::Client::open(server.url())?)
        .allow_eviction()
        .build()
        .await?;
    let guard = Locker::new(allowed)
        .acquire("k", Duration::from_secs(5))
        .await?;
    guard.release().await?;
    Ok(())
}

/// A server that stops answering (paused) fails each request after the
/// deadline, and the try whose answer never came is given back by token
/// once the server answers again: the lock is not orphaned for its ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_fails_requests_at_the_deadline_and_orphans_nothing() -> anyhow::Result<()> {
    let server = own_server(&[]);
    let deadline = Duration::from_millis(300);
    let locker = Locker::new(
        RedisBackend::builder(redis::Client::open(server.url())?)
            .request_timeout(deadline)
            .build()
            .await?,
    );
    let other = Locker::new(RedisBackend::from_url(&server.url()).await?);
    let pid = redis_support::cli(server.port, &["info", "server"])
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .expect("process_id");
    support::signal(pid, "STOP");
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        locker.try_lock("k", Duration::from_secs(60)),
    )
    .await;
    let took = started.elapsed();
    support::signal(pid, "CONT");
    let outcome = outcome.map_err(|_| anyhow::anyhow!("no deadline: still waiting after 10 s"))?;
    assert!(
        matches!(outcome, Err(LockError::Unavailable { .. })),
        "{outcome:?}"
    );
    assert!(took < Duration::from_secs(5), "the request waited {took:?}");
    // The acquire ran once the server woke up; the give-back follows it.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(guard) = other.try_lock("k", Duration::from_secs(60)).await? {
            guard.release().await?;
            break;
        }
        assert!(
            Instant::now() < until,
            "the lock of the unanswered try was orphaned"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A retried try with the token that already holds the key (its first
/// answer was lost) is granted again, with the same fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_try_with_its_own_token_is_granted_again() -> anyhow::Result<()> {
    use tower_lock::backend::{AcquireRequest, Attempt, Backend, Token};
    let h = harness();
    let backend = h.backend().await;
    let token = Token::new();
    let request = AcquireRequest::new("retried", token, Duration::from_secs(30));
    let first = backend.try_acquire(&request).await?;
    let second = backend.try_acquire(&request).await?;
    let (Attempt::Acquired { fence: a, .. }, Attempt::Acquired { fence: b, .. }) = (first, second)
    else {
        anyhow::bail!("{first:?} then {second:?}");
    };
    assert_eq!(b, a, "the retry changed the fence");
    let stranger = AcquireRequest::new("retried", Token::new(), Duration::from_secs(30));
    assert!(
        matches!(backend.try_acquire(&stranger).await?, Attempt::Busy { .. }),
        "another token is still refused"
    );
    Ok(())
}

// Shared and counted leases: how they are stored and woken in Redis.

/// Every Redis key under the harness's prefix, as text.
async fn keys_under(h: &RedisHarness) -> Vec<String> {
    let backend = h.backend().await;
    let mut keys: Vec<String> = scan_keys(&h.scan[0], &backend.key_pattern())
        .await
        .into_iter()
        .map(|key| String::from_utf8_lossy(&key).into_owned())
        .collect();
    keys.sort();
    keys
}

/// Counts the turn messages published to any backend of `prefix`, by
/// channel, from when it returns.
struct TurnWatcher {
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TurnWatcher {
    async fn start(url: &str, prefix: &str) -> TurnWatcher {
        use futures_util::StreamExt;
        let mut pubsub = redis::Client::open(url)
            .expect("client")
            .get_async_pubsub()
            .await
            .expect("pubsub");
        pubsub
            .psubscribe(format!("{prefix}released:*"))
            .await
            .expect("PSUBSCRIBE");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    let channel = message.get_channel_name().to_owned();
                    seen.lock().expect("seen").push(channel);
                }
            }
        });
        TurnWatcher { seen, task }
    }

    /// The channels messages went to since the last call, after a moment
    /// for them to arrive.
    async fn take(&self) -> Vec<String> {
        tokio::time::sleep(Duration::from_millis(150)).await;
        std::mem::take(&mut *self.seen.lock().expect("seen"))
    }
}

impl Drop for TurnWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until `key`'s queue in Redis holds `len` entries.
async fn until_queued(h: &RedisHarness, key: &str, len: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue_len(h, key).await != len {
        assert!(Instant::now() < deadline, "the queue never held {len}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A reader leaving while other readers hold the key wakes nobody; the
/// last one hands the key to the queued writer, on its channel alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_release_wakes_nobody_until_the_last_reader_leaves() -> anyhow::Result<()> {
    let h = harness();
    let ttl = Duration::from_secs(30);
    let (r1, r2) = (
        Locker::new(h.backend().await),
        Locker::new(h.backend().await),
    );
    let writer_backend = h.backend().await;
    let writer_channel = writer_backend.release_channel().to_owned();
    let writer = Locker::new(writer_backend);
    let first = r1.acquire_shared("readers", ttl).await?;
    let second = r2.acquire_shared("readers", ttl).await?;
    let waiting = tokio::spawn(async move { writer.acquire("readers", ttl).await });
    until_queued(&h, "readers", 1).await;
    let turns = TurnWatcher::start(&SERVER.url(), &h.prefix).await;
    first.release().await?;
    assert_eq!(turns.take().await, Vec::<String>::new(), "a reader left");
    assert!(!waiting.is_finished(), "the writer got in beside a reader");
    second.release().await?;
    let guard = tokio::time::timeout(Duration::from_secs(3), waiting).await???;
    assert_eq!(turns.take().await, [writer_channel]);
    guard.release().await?;
    Ok(())
}

/// The readers queued behind a writer are let in together when it leaves,
/// with one message each, but not the reader queued behind the next
/// writer: it comes after that writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_hands_the_key_to_every_reader_queued_before_the_next_writer() -> anyhow::Result<()>
{
    let h = harness();
    let ttl = Duration::from_secs(30);
    let holder = Locker::new(h.backend().await);
    let held = holder.acquire("phases", ttl).await?;
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let inside = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (go, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut channels = Vec::new();
    let mut tasks = Vec::new();
    for (i, name) in ["reader 1", "reader 2", "reader 3", "writer", "reader 4"]
        .into_iter()
        .enumerate()
    {
        let backend = h.backend().await;
        channels.push(backend.release_channel().to_owned());
        let locker = Locker::new(backend);
        let (order, inside, most) = (order.clone(), inside.clone(), most.clone());
        let mut leave = go.subscribe();
        tasks.push(tokio::spawn(async move {
            let writer = name == "writer";
            let guard = if writer {
                locker.acquire("phases", ttl).await
            } else {
                locker.acquire_shared("phases", ttl).await
            }
            .expect("acquire");
            order.lock().expect("order").push(name);
            let now = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            if name.starts_with("reader") && name != "reader 4" {
                // The first readers stay until all three are in.
                let _ = leave.recv().await;
            }
            inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            guard.release().await.expect("release");
        }));
        until_queued(&h, "phases", i + 1).await;
    }
    let turns = TurnWatcher::start(&SERVER.url(), &h.prefix).await;
    held.release().await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while order.lock().expect("order").len() < 3 {
        assert!(Instant::now() < deadline, "the readers were not let in");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut woken = turns.take().await;
    woken.sort();
    let mut readers = channels[..3].to_vec();
    readers.sort();
    assert_eq!(
        woken, readers,
        "one message to each reader ahead of the writer"
    );
    assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 3);
    let _ = go.send(());
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(5), task).await??;
    }
    let order = order.lock().expect("order").clone();
    assert_eq!(&order[3..], ["writer", "reader 4"], "{order:?}");
    Ok(())
}

/// A released permit wakes the one counted waiter queued first, not the
/// others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_permit_wakes_one_queued_waiter() -> anyhow::Result<()> {
    let h = harness();
    let ttl = Duration::from_secs(30);
    let holder = Locker::new(h.backend().await);
    let held = [
        holder.acquire_permit("permits", 2, ttl).await?,
        holder.acquire_permit("permits", 2, ttl).await?,
    ];
    let mut channels = Vec::new();
    let mut waiters = Vec::new();
    for i in 0..3 {
        let backend = h.backend().await;
        channels.push(backend.release_channel().to_owned());
        let locker = Locker::new(backend);
        waiters.push(tokio::spawn(async move {
            locker.acquire_permit("permits", 2, ttl).await
        }));
        until_queued(&h, "permits", i + 1).await;
    }
    let turns = TurnWatcher::start(&SERVER.url(), &h.prefix).await;
    let [first, second] = held;
    first.release().await?;
    let next = tokio::time::timeout(Duration::from_secs(3), &mut waiters[0]).await???;
    assert_eq!(turns.take().await, [channels[0].clone()]);
    assert!(waiters[1..].iter().all(|w| !w.is_finished()));
    second.release().await?;
    let after = tokio::time::timeout(Duration::from_secs(3), &mut waiters[1]).await???;
    assert_eq!(turns.take().await, [channels[1].clone()]);
    assert!(!waiters[2].is_finished());
    next.release().await?;
    let last = tokio::time::timeout(Duration::from_secs(3), &mut waiters[2]).await???;
    for guard in [after, last] {
        guard.release().await?;
    }
    Ok(())
}

/// `holder` reports exclusive holders only: elections read it, and a key
/// held shared or counted has no one holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_reports_exclusive_leases_only() -> anyhow::Result<()> {
    use tower_lock::backend::Backend;
    let h = harness();
    let backend = h.backend().await;
    let locker = Locker::new(backend.clone());
    let ttl = Duration::from_secs(30);
    let shared = locker.acquire_shared("holder", ttl).await?;
    assert_eq!(backend.holder("holder").await?, None);
    shared.release().await?;
    let permit = locker.acquire_permit("holder", 3, ttl).await?;
    assert_eq!(backend.holder("holder").await?, None);
    permit.release().await?;
    let exclusive = locker.acquire("holder", ttl).await?;
    let holding = backend
        .holder("holder")
        .await?
        .expect("an exclusive holder");
    assert_eq!(holding.fence, exclusive.fence());
    exclusive.release().await?;
    Ok(())
}

/// A request for another permit count is refused with both counts named,
/// and changes nothing in Redis: the holders, the queue and the fence
/// counter are as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_mismatch_names_both_counts_and_changes_nothing() -> anyhow::Result<()> {
    let h = harness();
    let (a, b) = (
        Locker::new(h.backend().await),
        Locker::new(h.backend().await),
    );
    let ttl = Duration::from_secs(30);
    let held = a.acquire_permit("count", 2, ttl).await?;
    let before = keys_under(&h).await;
    let mut conn = admin(&SERVER.url()).await;
    let holders = format!("{}:holders", h.backend().await.redis_key("count"));
    let fence = format!("{}:fence", h.backend().await.redis_key("count"));
    let snapshot = async |conn: &mut redis::aio::MultiplexedConnection| {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(&holders)
            .arg(0)
            .arg(-1)
            .query_async(conn)
            .await
            .expect("ZRANGE");
        let counter: String = redis::cmd("GET")
            .arg(&fence)
            .query_async(conn)
            .await
            .expect("GET");
        (members, counter)
    };
    let stored = snapshot(&mut conn).await;
    for refused in [
        b.try_lock_permit("count", 5, ttl).await.map(|_| ()),
        b.acquire_permit("count", 5, ttl).await.map(|_| ()),
    ] {
        let err = refused.expect_err("another count");
        assert!(
            matches!(
                &err,
                LockError::PermitsMismatch {
                    stored: 2,
                    requested: 5,
                    ..
                }
            ),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains('2') && message.contains('5') && message.contains("count"),
            "{message}"
        );
    }
    assert_eq!(keys_under(&h).await, before);
    assert_eq!(snapshot(&mut conn).await, stored);
    held.release().await?;
    Ok(())
}

/// Shared and counted keys used every way (holders, a waiting writer's
/// claim, queued readers and permit takers let in by turns, waiters that
/// gave up) leave only their fence counters once released, within the
/// retention; with a short retention, nothing at all soon after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_shared_and_counted_keys_leave_only_fence_counters() -> anyhow::Result<()> {
    let server = own_server(&[]);
    let retention = Duration::from_secs(2);
    let build = async || {
        RedisBackend::builder(redis::Client::open(server.url()).expect("client"))
            .fence_retention(retention)
            .build()
            .await
            .expect("backend")
    };
    let lockers = [
        Locker::new(build().await),
        Locker::new(build().await),
        Locker::new(build().await),
    ];
    let ttl = Duration::from_secs(30);
    for key in ["shared", "counted"] {
        let take = |locker: Locker| async move {
            if key == "shared" {
                locker.acquire_shared(key, ttl).await
            } else {
                locker.acquire_permit(key, 2, ttl).await
            }
        };
        let held = [
            take(lockers[0].clone()).await?,
            take(lockers[0].clone()).await?,
        ];
        // A writer that waits, then gives up: its claim and queue entry.
        let writer = lockers[1].acquire_timeout(key, ttl, Duration::from_millis(200));
        assert!(matches!(writer.await, Err(LockError::Busy { .. })));
        // A writer holding, with readers or permit takers queued behind it.
        for guard in held {
            guard.release().await?;
        }
        let exclusive = lockers[1].acquire(key, ttl).await?;
        let waiters: Vec<_> = (0..4)
            .map(|i| {
                let taking = take(lockers[i % 3].clone());
                tokio::spawn(async move {
                    let guard = taking.await?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    guard.release().await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // And one that gives up while queued.
        let quitter = tokio::time::timeout(Duration::from_millis(50), take(lockers[2].clone()));
        assert!(quitter.await.is_err());
        exclusive.release().await?;
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(5), waiter).await???;
        }
    }
    let backend = build().await;
    // Claims last 1 s and turns 250 ms: after them, only counters are left.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let left: Vec<String> = scan_keys(&server.url(), &backend.key_pattern())
        .await
        .into_iter()
        .map(|key| String::from_utf8_lossy(&key).into_owned())
        .collect();
    assert!(
        left.iter().all(|key| key.ends_with(":fence")),
        "left behind: {left:?}"
    );
    assert_eq!(left.len(), 2, "{left:?}");
    let deadline = Instant::now() + retention + Duration::from_secs(5);
    loop {
        let all: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut admin(&server.url()).await)
            .await?;
        if all.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left after the retention: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

const CHILD_ENV: &str = "TOWER_LOCK_REDIS_HOLDER_CHILD";

/// The other side of the crash test; does nothing unless started by it.
/// It takes a shared lease or a permit (as its spec says), says so, and
/// then waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the crash test"]
async fn holder_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.lines();
    let (url, prefix, key, kind) = (
        parts.next().expect("url"),
        parts.next().expect("prefix"),
        parts.next().expect("key"),
        parts.next().expect("kind"),
    );
    let ttl = Duration::from_millis(parts.next().expect("ttl").parse().expect("ms"));
    let backend = RedisBackend::builder(redis::Client::open(url).expect("url"))
        .prefix(prefix)
        .build()
        .await
        .expect("backend");
    let locker = Locker::new(backend).auto_renew(true);
    let guard = if kind == "shared" {
        locker.acquire_shared(key, ttl).await
    } else {
        locker.acquire_permit(key, 2, ttl).await
    }
    .expect("acquire");
    println!("{}HOLDING {}", support::child::MARK, guard.fence());
    std::future::pending::<()>().await;
}

/// A process SIGKILLed while it holds a shared lease, and one killed
/// holding a permit, free their places once their ttl has run out: a writer
/// waiting behind the reader, and a permit taker waiting for the permit,
/// get in then, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_shared_and_counted_holders_free_their_place_after_the_ttl() -> anyhow::Result<()> {
    use support::child::ChildProcess;
    let h = harness();
    let ttl = Duration::from_millis(1500);
    let start = |key: &str, kind: &str| {
        let spec = format!(
            "{}\n{}\n{key}\n{kind}\n{}",
            SERVER.url(),
            h.prefix,
            ttl.as_millis()
        );
        ChildProcess::start("holder_process", CHILD_ENV, spec)
    };
    let (reader, permit) = (
        start("crash-shared", "shared"),
        start("crash-permit", "permit"),
    );
    reader.expect_line("HOLDING");
    permit.expect_line("HOLDING");
    let here = Locker::new(h.backend().await);
    let ttl_here = Duration::from_secs(30);
    // The other permit of two is held here: the child's is the last.
    let mine = here.acquire_permit("crash-permit", 2, ttl_here).await?;
    // Renewed, the child's leases outlive their ttl while it lives.
    tokio::time::sleep(ttl * 2).await;
    assert!(here.try_lock("crash-shared", ttl_here).await?.is_none());
    assert!(
        here.try_lock_permit("crash-permit", 2, ttl_here)
            .await?
            .is_none()
    );
    support::signal(reader.pid(), "KILL");
    support::signal(permit.pid(), "KILL");
    let killed = Instant::now();
    let (writer, taker) = (
        Locker::new(h.backend().await),
        Locker::new(h.backend().await),
    );
    let (written, taken) = tokio::join!(
        tokio::time::timeout(ttl * 3, writer.acquire("crash-shared", ttl_here)),
        tokio::time::timeout(ttl * 3, taker.acquire_permit("crash-permit", 2, ttl_here)),
    );
    let took = killed.elapsed();
    let (written, taken) = (written??, taken??);
    // The last renewal came at most a ttl before the kill, and at most a
    // third of one (the renewal interval) before it: so neither place was
    // freed by the kill itself, and both were within the ttl and a bound.
    assert!(took >= ttl / 2, "freed {took:?} after the kill");
    assert!(took <= ttl + Duration::from_secs(2), "took {took:?}");
    for guard in [written, taken, mine] {
        guard.release().await?;
    }
    drop((reader, permit));
    Ok(())
}
