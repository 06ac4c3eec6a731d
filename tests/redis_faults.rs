//! Faults against real redis-server processes: a holder process killed or
//! paused, the server restarted under waiters, wake-ups refused.
#![cfg(feature = "redis")]

mod conformance;
mod redis_support;
mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use conformance::{Counting, OverlapChecker};
use redis_support::{REDIS_SERVER, cli, server_args};
use support::{
    ServerProcess,
    child::{ChildProcess, MARK},
    free_port, signal,
};
use tower_lock::{LockError, Locker, redis::RedisBackend};

/// What a child process is asked to do, through this variable.
const CHILD_ENV: &str = "TOWER_LOCK_REDIS_CHILD";

fn start_server(extra: &[&str]) -> ServerProcess {
    let port = free_port();
    let dir = tempfile::tempdir().expect("dir");
    let mut args = server_args(port, dir.path());
    // ServerProcess runs in its own temp dir: write there, not in `dir`.
    args.truncate(args.len() - 2);
    args.extend(extra.iter().map(|s| s.to_string()));
    ServerProcess::start(REDIS_SERVER, args, port)
}

fn url(server: &ServerProcess) -> String {
    format!("redis://127.0.0.1:{}/", server.port)
}

fn start_child(mode: &str, url: &str, key: &str) -> ChildProcess {
    ChildProcess::start("child_process", CHILD_ENV, format!("{mode}\n{url}\n{key}"))
}

/// The other side of the process tests; does nothing unless started by one
/// of them (with `CHILD_ENV` set).
#[tokio::test]
#[ignore = "run as a child process by the fault tests"]
async fn child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.lines();
    let (mode, url, key) = (
        parts.next().expect("mode"),
        parts.next().expect("url"),
        parts.next().expect("key"),
    );
    let backend = RedisBackend::from_url(url).await.expect("connect");
    match mode {
        // Take the lock and keep it by renewal, never giving it back: the
        // parent kills us.
        "hold" => {
            let guard = Locker::new(backend)
                .auto_renew(true)
                .acquire(key, Duration::from_secs(1))
                .await
                .expect("acquire");
            println!("{MARK}ACQUIRED {}", guard.fence());
            std::future::pending::<()>().await;
        }
        // Keep the lock by renewal until told to release it.
        "renew" => {
            let guard = Locker::new(backend)
                .auto_renew(true)
                .acquire(key, Duration::from_millis(600))
                .await
                .expect("acquire");
            println!("{MARK}ACQUIRED {}", guard.fence());
            tokio::task::spawn_blocking(|| std::io::stdin().lines().next())
                .await
                .expect("stdin");
            let outcome = match guard.release().await {
                Ok(()) => "ok".to_owned(),
                Err(LockError::Lost) => "lost".to_owned(),
                Err(err) => format!("error {err}"),
            };
            println!("{MARK}RELEASED {outcome}");
        }
        other => panic!("unknown child mode {other}"),
    }
}

/// A holder process that renews its lease holds the key for several ttls;
/// once SIGKILLed, a waiter in this process takes over when the last
/// renewed lease runs out: after the kill, within ttl + 250 ms of it, and
/// not before the lease renewed up to a third of a ttl earlier could end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_process_is_taken_over_after_its_ttl() -> anyhow::Result<()> {
    let server = start_server(&[]);
    let ttl = Duration::from_secs(1);
    let child = start_child("hold", &url(&server), "job");
    let child_fence: u64 = child.expect_line("ACQUIRED").parse()?;
    let waiter = Locker::new(RedisBackend::from_url(&url(&server)).await?);
    let task = tokio::spawn(async move {
        let guard = waiter.acquire("job", Duration::from_secs(30)).await;
        (guard, Instant::now())
    });
    tokio::time::sleep(ttl * 3).await;
    assert!(
        !task.is_finished(),
        "the child renews its lease: the key is still held after three ttls"
    );
    signal(child.pid(), "KILL");
    let killed_at = Instant::now();
    let (guard, acquired_at) = tokio::time::timeout(Duration::from_secs(10), task).await??;
    let guard = guard?;
    assert!(guard.fence() > child_fence);
    let after_kill = acquired_at - killed_at;
    assert!(
        after_kill >= ttl * 2 / 3 - Duration::from_millis(50),
        "taken over {after_kill:?} after the kill, before the renewed lease could end"
    );
    assert!(
        after_kill <= ttl + Duration::from_millis(250),
        "taken over {after_kill:?} after the kill"
    );
    guard.release().await?;
    Ok(())
}

/// A holder process frozen (SIGSTOP) past its ttl cannot renew: the next
/// holder gets a higher fence, and the frozen one, once thawed, gets `Lost`
/// from its release and leaves the new holder's lock alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_loses_its_lock_and_cannot_free_the_next() -> anyhow::Result<()> {
    let server = start_server(&[]);
    let mut child = start_child("renew", &url(&server), "job");
    let child_fence: u64 = child.expect_line("ACQUIRED").parse()?;
    let (me, other) = (
        Locker::new(RedisBackend::from_url(&url(&server)).await?),
        Locker::new(RedisBackend::from_url(&url(&server)).await?),
    );
    // While the child runs, renewal keeps its 600 ms lease alive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        me.try_lock("job", Duration::from_secs(30)).await?.is_none(),
        "the child renews its lease while it runs"
    );
    signal(child.pid(), "STOP");
    let guard = tokio::time::timeout(
        Duration::from_secs(5),
        me.acquire("job", Duration::from_secs(30)),
    )
    .await??;
    assert!(guard.fence() > child_fence);
    signal(child.pid(), "CONT");
    child.tell("release");
    assert_eq!(child.expect_line("RELEASED"), "lost");
    assert!(
        other
            .try_lock("job", Duration::from_secs(30))
            .await?
            .is_none(),
        "the stale holder's release must not free the new lock"
    );
    guard.release().await?;
    Ok(())
}

/// The server is killed and restarted (with its append-only file) while
/// tasks wait: they ride it out, then take turns with no overlap, and
/// wake-ups work again after the listener resubscribes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_recover_from_a_server_restart() -> anyhow::Result<()> {
    let mut server = start_server(&["--appendonly", "yes", "--appendfsync", "always"]);
    let url = url(&server);
    let holder = Locker::new(RedisBackend::from_url(&url).await?);
    let held = holder.acquire("job", Duration::from_secs(2)).await?;
    let first_fence = held.fence();
    std::mem::forget(held);
    let mut lockers = Vec::new();
    for _ in 0..2 {
        lockers.push(Locker::new(RedisBackend::from_url(&url).await?));
    }
    let checker = Arc::new(OverlapChecker::default());
    const TASKS: usize = 6;
    const ROUNDS: usize = 10;
    let tasks = contend(&lockers, &checker, TASKS, ROUNDS, Duration::from_millis(2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(tasks.iter().all(|t| !t.is_finished()), "the key is held");
    // Down long enough that waiters retry into refused connections.
    server.kill();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.restart();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task).await???;
    }
    checker.assert_exclusive(TASKS * ROUNDS);
    // After the restart, the persisted counter still orders fences: every
    // fence taken after it is above every fence taken before it.
    let (before, after): (Vec<_>, Vec<_>) = checker
        .sections()
        .into_iter()
        .partition(|(_, start, _)| *start < killed_at);
    let largest_before = before
        .iter()
        .map(|(fence, ..)| *fence)
        .max()
        .unwrap_or(first_fence);
    let smallest_after = after.iter().map(|(fence, ..)| *fence).min();
    assert!(
        smallest_after.is_some_and(|smallest| smallest > largest_before.max(first_fence)),
        "fences after the restart ({smallest_after:?}..) did not stay above {largest_before}"
    );
    let last = lockers[0].acquire("job", Duration::from_secs(30)).await?;
    // A release wakes a waiter again (the listener has resubscribed): the
    // winning try follows the busy one before it by far less than the
    // longest backoff step the waiter is on.
    let counting = Counting::new(lockers[1].backend().clone());
    let waiter = tokio::spawn({
        let locker = Locker::from_arc(counting.clone());
        async move { locker.acquire("job", Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    counting.until_tries(counting.tries() + 1).await;
    last.release().await?;
    tokio::time::timeout(Duration::from_secs(3), waiter)
        .await???
        .release()
        .await?;
    let gap = counting.last_gap();
    assert!(
        gap < tower_lock::BACKOFF_MAX / 2,
        "after the restart, the waiter found the lock by its timer ({gap:?}), not by a wake-up"
    );
    Ok(())
}

/// `tasks` tasks spread over `lockers`, each taking "job" `rounds` times
/// and holding it for `hold` inside an overlap-checked section.
fn contend(
    lockers: &[Locker],
    checker: &Arc<OverlapChecker>,
    tasks: usize,
    rounds: usize,
    hold: Duration,
) -> Vec<tokio::task::JoinHandle<Result<(), LockError>>> {
    (0..tasks)
        .map(|i| {
            let (locker, checker) = (lockers[i % lockers.len()].clone(), checker.clone());
            tokio::spawn(async move {
                for _ in 0..rounds {
                    let guard = locker.acquire("job", Duration::from_secs(30)).await?;
                    let section = checker.enter(guard.fence());
                    tokio::time::sleep(hold).await;
                    drop(section);
                    guard.release().await?;
                }
                Ok(())
            })
        })
        .collect()
}

/// Wake-ups refused outright (an ACL denies every pub/sub channel, so the
/// listener cannot subscribe and the release script cannot publish): locks
/// still change hands, by the waiters' timers, with no overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_off_works_without_notifications() -> anyhow::Result<()> {
    let server = start_server(&[]);
    cli(server.port, &["acl", "setuser", "default", "resetchannels"]);
    let url = url(&server);
    let mut check = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let denied: redis::RedisResult<()> = redis::cmd("PUBLISH")
        .arg("x")
        .arg("y")
        .query_async(&mut check)
        .await;
    assert!(denied.is_err(), "the ACL must deny pub/sub");
    let lockers = [
        Locker::new(RedisBackend::from_url(&url).await?),
        Locker::new(RedisBackend::from_url(&url).await?),
    ];
    let checker = Arc::new(OverlapChecker::default());
    const TASKS: usize = 4;
    const ROUNDS: usize = 8;
    let tasks = contend(&lockers, &checker, TASKS, ROUNDS, Duration::from_millis(5));
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task).await???;
    }
    checker.assert_exclusive(TASKS * ROUNDS);
    // And an expiry is found by the timer, capped by the holder's PTTL.
    let stale = lockers[0]
        .acquire("job", Duration::from_millis(300))
        .await?;
    std::mem::forget(stale);
    let next = tokio::time::timeout(
        Duration::from_secs(3),
        lockers[1].acquire("job", Duration::from_secs(30)),
    )
    .await??;
    next.release().await?;
    Ok(())
}
