//! The Redis hand-off, counted in scripts the server ran: alone in its test
//! binary, so that no other test loads the machine while it counts.
#![cfg(feature = "redis")]

mod conformance;
mod redis_support;
mod support;

use std::time::{Duration, Instant};

use redis_support::Tied;
use tower_lock::{Locker, redis::RedisBackend};

/// How many scripts the server has run (`EVALSHA` calls).
async fn scripts_run(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// A hand-off to a locker with two waiters: the first one's claim keeps the
/// locker's place in the queue, so the second is served in its turn without
/// a try of its own to rejoin; a claim with nobody behind keeps no place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_keeps_the_place_of_the_waiters_behind_it() -> anyhow::Result<()> {
    let server = Tied::start(support::free_port(), Vec::new());
    let holder = Locker::new(RedisBackend::from_url(&server.url()).await?);
    let waiters = Locker::new(RedisBackend::from_url(&server.url()).await?);
    let mut conn = redis::Client::open(server.url())?
        .get_multiplexed_async_connection()
        .await?;
    // Every script loaded first: a script's first use costs a failed
    // `EVALSHA` that the client follows with `EVAL`.
    holder
        .acquire("warm", Duration::from_secs(30))
        .await?
        .release()
        .await?;
    let held = holder.acquire("k", Duration::from_secs(30)).await?;
    let before = scripts_run(&mut conn).await;
    let (first, second) = (waiters.clone(), waiters.clone());
    let first = tokio::spawn(async move { first.acquire("k", Duration::from_secs(30)).await });
    // The first waiter is queued in Redis (its one-off try and its waiting
    // try) before the second joins behind it in the locker.
    let deadline = Instant::now() + Duration::from_secs(10);
    while scripts_run(&mut conn).await < before + 2 {
        assert!(Instant::now() < deadline, "the first waiter never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = tokio::spawn(async move { second.acquire("k", Duration::from_secs(30)).await });
    while waiters.queued_keys() != 1 {
        assert!(Instant::now() < deadline, "the second waiter never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    held.release().await?; // 3: hands the lock to the waiters' backend
    let first = first.await??; // 4: the claim, which keeps the place
    // The second waiter takes over the wait, and would send its try now.
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.release().await?; // 5: hands it on to that place
    let second = tokio::time::timeout(Duration::from_secs(5), second).await???; // 6: the claim
    second.release().await?; // 7
    // Nobody was behind the second: its claim kept no place, so no turn
    // comes back to be passed on.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        scripts_run(&mut conn).await - before,
        7,
        "a waiter sent a try of its own to rejoin, or a claim kept a place for nobody"
    );
    Ok(())
}
