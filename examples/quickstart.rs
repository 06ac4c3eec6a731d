//! A short walk through tower-lock with the in-memory default:
//! acquire / try_lock / release, fencing, and leader election.
//!
//! `cargo run --example quickstart`

use std::time::Duration;

use tower_lock::{LockError, Locker, bus::LocalBus, memory::MemoryBackend};

#[tokio::main]
async fn main() -> Result<(), LockError> {
    let locker = Locker::in_memory();
    let ttl = Duration::from_secs(10);

    // acquire waits for its turn; the guard releases when dropped.
    let guard = locker.acquire("invoice:42", ttl).await?;
    println!("holding {} with fence {}", guard.key(), guard.fence());

    // try_lock never waits: somebody holds the key, so it says None.
    let attempt = locker.try_lock("invoice:42", ttl).await?;
    println!(
        "try_lock while held: {}",
        if attempt.is_some() { "got it" } else { "busy" }
    );

    // Waiters are woken by the release, not by polling.
    let waiter = tokio::spawn({
        let locker = locker.clone();
        async move {
            let guard = locker.acquire("invoice:42", ttl).await?;
            println!(
                "waiter got it with fence {} (greater: a stale writer can be refused)",
                guard.fence()
            );
            guard.release().await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    guard.release().await?; // reports Err(Lost) if the lease had run out
    waiter.await.expect("waiter task")?;

    // release(key) gives back what this locker (or a clone) holds.
    let _guard = locker.acquire("tenant:7", ttl).await?;
    locker.release("tenant:7").await?;
    println!(
        "released tenant:7 by key; releasing again: {:?}",
        locker.release("tenant:7").await
    );

    leader_election().await
}

/// Three nodes share one lock table over a bus; whoever holds "leader" runs
/// the job. The leader keeps its lease alive by renewal, and when it goes
/// away another node takes over.
async fn leader_election() -> Result<(), LockError> {
    let bus = LocalBus::new();
    let ttl = Duration::from_millis(300);
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b", "node-c"] {
        let locker = Locker::new(MemoryBackend::with_bus(bus.clone())).auto_renew(true);
        nodes.push(tokio::spawn(async move {
            let leadership = locker.acquire("leader", ttl).await?;
            println!("{name} is leader (fence {})", leadership.fence());
            for tick in 1..=3 {
                tokio::select! {
                    () = leadership.lost() => {
                        println!("{name} lost its lease: stops the job");
                        return Ok(());
                    }
                    () = tokio::time::sleep(Duration::from_millis(100)) => {
                        println!("{name} runs the scheduled job, tick {tick}");
                    }
                }
            }
            println!("{name} steps down");
            leadership.release().await
        }));
    }
    for node in nodes {
        node.await.expect("node task")?;
    }
    Ok(())
}
