//! Leader election: three nodes share one in-memory lock table over a
//! `LocalBus`; whichever holds the `leader` lock runs a periodic job.
//!
//! ```text
//! cargo run --example leader
//! ```
//!
//! Midway, the leader is cut off from the others (its lease can no longer be
//! renewed: `guard.lost()` tells it to stop), and later the next leader is
//! killed outright without releasing. Each time another node takes over once
//! the old lease has run out. The run ends by itself after a few seconds.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
use tower_lock::{
    LockError, Locker,
    bus::{Bus, Command, Feed, LocalBus},
    memory::MemoryBackend,
};

const TTL: Duration = Duration::from_millis(900);
const JOB_EVERY: Duration = Duration::from_millis(250);

/// A node's link to the bus, which the demo can cut like a network cable.
#[derive(Debug, Clone)]
struct Link {
    bus: LocalBus,
    cut: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Bus for Link {
    async fn publish(&self, command: Command) -> Result<(), LockError> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(LockError::unavailable("network cable cut"));
        }
        self.bus.publish(command).await
    }

    fn subscribe(&self) -> Feed {
        self.bus.subscribe()
    }
}

fn at(start: Instant) -> String {
    format!("[{:>5.2}s]", start.elapsed().as_secs_f64())
}

/// One node: campaign for the lock, run the job while it holds it.
async fn node(name: &'static str, locker: Locker, start: Instant) {
    let mut unreachable = false;
    loop {
        let guard = match locker.acquire("leader", TTL).await {
            Ok(guard) => guard,
            Err(err) => {
                if !unreachable {
                    println!("{} {name} cannot reach the lock store: {err}", at(start));
                    unreachable = true;
                }
                tokio::time::sleep(JOB_EVERY).await;
                continue;
            }
        };
        unreachable = false;
        println!(
            "{} {name} is the leader (fence {})",
            at(start),
            guard.fence()
        );
        let lost = guard.lost();
        tokio::pin!(lost);
        let mut tick = tokio::time::interval(JOB_EVERY);
        let mut runs = 0;
        loop {
            tokio::select! {
                () = &mut lost => {
                    println!("{} {name} lost its lease: stops the job after {runs} runs", at(start));
                    break;
                }
                _ = tick.tick() => {
                    runs += 1;
                    // Pass the fence along with the job's writes, so a store
                    // can refuse a leader that has been replaced.
                    println!("{}   {name} runs the job (#{runs}, fence {})", at(start), guard.fence());
                }
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let bus = LocalBus::new();
    let start = Instant::now();
    // Every node joins the bus before anyone takes a lock: a node's replica
    // starts from the events it sees, so a node that joins later would not
    // know about locks taken before it.
    let nodes: Vec<_> = ["node-a", "node-b", "node-c"]
        .into_iter()
        .map(|name| {
            let link = Link {
                bus: bus.clone(),
                cut: Arc::default(),
            };
            // Renewal keeps the lease while the leader lives; a leader that
            // stops renewing loses the lock after the ttl.
            let locker = Locker::new(MemoryBackend::with_bus(link.clone())).auto_renew(true);
            (name, link, locker)
        })
        .collect();
    let mut running = Vec::new();
    for (name, link, locker) in nodes {
        running.push((name, link, tokio::spawn(node(name, locker, start))));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let nodes = running;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (name, link, _) = &nodes[0];
    println!("{} == cutting {name} off the network ==", at(start));
    link.cut.store(true, Ordering::SeqCst);

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (name, link, task) = &nodes[1];
    println!("{} == killing {name} (no release) ==", at(start));
    link.cut.store(true, Ordering::SeqCst);
    task.abort();

    tokio::time::sleep(Duration::from_millis(2000)).await;
    println!("{} done", at(start));
}
