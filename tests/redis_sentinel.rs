//! RedisBackend through Redis Sentinel (`redis-server --sentinel`) watching
//! a master started by the tests: the conformance suite.
#![cfg(feature = "redis")]

mod conformance;
mod redis_support;
mod support;

use std::sync::LazyLock;

use redis_support::{Deployment, RedisHarness, SentinelGroup};

static GROUP: LazyLock<SentinelGroup> = LazyLock::new(SentinelGroup::start);

fn harness() -> RedisHarness {
    RedisHarness::new(
        Deployment::Sentinel {
            sentinel: GROUP.sentinel.url(),
        },
        vec![GROUP.master.url()],
    )
}

mod sentinel {
    crate::conformance_suite!(async { crate::harness() });
}

/// The master dies; Sentinel promotes its replica; the same backend finds
/// the new master by itself. Fences keep growing (the counter had reached
/// the replica), and a task that was waiting through the failover gets the
/// lock once the replicated lease runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_is_followed_without_help() -> anyhow::Result<()> {
    use std::time::{Duration, Instant};

    use redis_support::{MASTER_NAME, Tied, cli};
    use tower_lock::{Locker, redis::RedisBackend};

    let master = Tied::start(support::free_port(), Vec::new());
    let replica = Tied::start(
        support::free_port(),
        vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port.to_string(),
        ],
    );
    let group = SentinelGroup::watch(master, 1000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cli(group.sentinel.port, &["sentinel", "replicas", MASTER_NAME])
        .contains(&replica.port.to_string())
    {
        assert!(
            Instant::now() < deadline,
            "sentinel did not find the replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let locker = Locker::new(RedisBackend::new(group.client()).await?);
    let ttl = Duration::from_secs(3);
    let mut last = 0;
    for _ in 0..5 {
        let guard = locker.acquire("failover", ttl).await?;
        last = guard.fence();
        guard.release().await?;
    }
    let held = locker.acquire("held", ttl).await?;
    // Everything so far reaches the replica before the master dies.
    let synced = cli(group.master.port, &["WAIT", "1", "5000"]);
    assert_eq!(synced.trim(), "1", "replica did not acknowledge: {synced}");
    let waiter = tokio::spawn({
        let locker = Locker::new(RedisBackend::new(group.client()).await?);
        async move {
            let guard = locker
                .acquire("held", ttl)
                .await
                .map_err(|e| anyhow::anyhow!("waiter acquire: {e}"))?;
            guard
                .release()
                .await
                .map_err(|e| anyhow::anyhow!("waiter release: {e}"))
        }
    });

    // Waiting (past its first try, whose errors it would return) before the
    // master dies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let SentinelGroup { master, sentinel } = group;
    drop(master);
    let group_sentinel = sentinel;
    let deadline = Instant::now() + Duration::from_secs(60);
    let fence = loop {
        match tokio::time::timeout(Duration::from_secs(5), locker.acquire("failover", ttl)).await {
            Ok(Ok(guard)) => {
                let fence = guard.fence();
                guard.release().await?;
                break fence;
            }
            Ok(Err(err)) => {
                assert!(Instant::now() < deadline, "no new master in time: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => assert!(Instant::now() < deadline, "no new master in time"),
        }
    };
    assert!(fence > last, "fence {fence} after {last}");
    let promoted = cli(
        group_sentinel.port,
        &["sentinel", "get-master-addr-by-name", MASTER_NAME],
    );
    assert!(promoted.contains(&replica.port.to_string()), "{promoted}");
    tokio::time::timeout(Duration::from_secs(30), waiter).await???;
    drop(held);
    Ok(())
}

/// Through Sentinel too, a master slowed to between redis-rs's own 500 ms
/// response timeout and the backend's deadline answers in time, and one
/// slowed past the deadline fails the request at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deadline_governs_requests_through_sentinel() -> anyhow::Result<()> {
    use std::time::{Duration, Instant};

    use redis_support::Tied;
    use tower_lock::{LockError, Locker, redis::RedisBackend};

    let master = Tied::start(
        support::free_port(),
        vec!["--enable-debug-command".into(), "yes".into()],
    );
    let group = SentinelGroup::watch(master, 10_000);
    let deadline = Duration::from_secs(3);
    let backend = RedisBackend::builder(group.client())
        .request_timeout(deadline)
        .build()
        .await?;
    let locker = Locker::new(backend);
    let url = group.master.url();
    let sleep = |seconds: &'static str| {
        let url = url.clone();
        tokio::spawn(async move {
            // A connection of redis-rs's own would give up at 500 ms.
            let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
            let mut conn = redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(seconds)
                .query_async::<()>(&mut conn)
                .await
        })
    };
    // The backend's master connection is open before the server sleeps.
    locker
        .try_lock("warm", Duration::from_secs(30))
        .await?
        .expect("free")
        .release()
        .await?;
    let slowed = sleep("1.5");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let guard = locker
        .try_lock("slow", Duration::from_secs(30))
        .await?
        .expect("free");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the server was not slowed"
    );
    slowed.await??;
    guard.release().await?;
    let stalled = sleep("4.5");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let err = locker
        .try_lock("stalled", Duration::from_secs(30))
        .await
        .expect_err("past the deadline");
    let took = started.elapsed();
    assert!(matches!(err, LockError::Unavailable { .. }), "{err}");
    assert!(
        took >= deadline - Duration::from_millis(200),
        "failed after {took:?}"
    );
    assert!(
        took < deadline + Duration::from_secs(1),
        "failed after {took:?}"
    );
    stalled.await??;
    Ok(())
}
