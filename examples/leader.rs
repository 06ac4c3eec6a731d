//! Leader election: three nodes campaign in one election; whoever leads
//! runs a periodic job, with its term as the fence, and an observer prints
//! every change of leader.
//!
//! ```text
//! cargo run --example leader                                   # three nodes over one in-memory bus
//! cargo run --features redis --example leader -- --backend redis://127.0.0.1:6379
//! cargo run --features nats --example leader -- --backend nats://127.0.0.1:4222
//! ```
//!
//! Midway the leader is killed (its runtime stops dead: no renewal, no
//! resignation), and another node takes over once its lease has run out;
//! later that leader resigns, and the last node takes over at once. The run
//! ends by itself after a few seconds.

#[path = "common/backend.rs"]
mod common;

use std::{sync::Arc, thread, time::Duration};

use tokio::{
    sync::{oneshot, watch},
    time::Instant,
};
use tower_lock::{
    Locker,
    bus::LocalBus,
    election::{Election, Leadership},
    memory::MemoryBackend,
};

const USAGE: &str = "usage: leader [--backend memory|redis://HOST:PORT|nats://HOST:PORT]";
const NAME: &str = "leader-example";
const TTL: Duration = Duration::from_millis(1500);
const JOB_EVERY: Duration = Duration::from_millis(250);
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

fn at(start: Instant) -> String {
    format!("[{:>5.2}s]", start.elapsed().as_secs_f64())
}

/// A node's own connection to the store (its own bus node in memory).
async fn locker(backend: &str, bus: &LocalBus) -> anyhow::Result<Locker> {
    if backend == "memory" {
        return Ok(Locker::new(MemoryBackend::with_bus(bus.clone())));
    }
    common::connect(backend, "leader").await
}

fn election(locker: Locker) -> Election {
    Election::new(locker, NAME)
        .ttl(TTL)
        .renew_deadline(TTL * 2 / 3)
        .renew_every(TTL / 6)
}

/// The job, while this node leads: until it is told to step down (then it
/// resigns), or until run_while_leader drops it at a loss.
async fn job(
    leadership: Leadership,
    mut step_down: watch::Receiver<bool>,
    start: Instant,
) -> anyhow::Result<()> {
    let (id, term) = (leadership.id().to_owned(), leadership.term());
    println!("{} {id} leads (term {term})", at(start));
    let mut tick = tokio::time::interval(JOB_EVERY);
    loop {
        tokio::select! {
            _ = step_down.wait_for(|down| *down) => break,
            _ = tick.tick() => {
                // A real job passes the term along with its writes, so that
                // a store refuses a leader that has been replaced.
                println!("{}   {id} runs the job (term {term})", at(start));
            }
        }
    }
    leadership.resign().await?;
    println!("{} {id} resigned", at(start));
    Ok(())
}

/// A node on a runtime of its own, which `kill` stops dead.
struct Node {
    kill: Option<oneshot::Sender<()>>,
    step_down: watch::Sender<bool>,
    thread: Option<thread::JoinHandle<anyhow::Result<()>>>,
}

impl Node {
    fn start(id: &'static str, backend: Arc<str>, bus: LocalBus, start: Instant) -> Node {
        let (kill, killed) = oneshot::channel::<()>();
        let (step_down, stepping_down) = watch::channel(false);
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new()?;
            let campaign = runtime.spawn(async move {
                let election = election(locker(&backend, &bus).await?);
                election
                    .run_while_leader(id, |leadership| {
                        job(leadership, stepping_down.clone(), start)
                    })
                    .await?
            });
            runtime.block_on(async {
                tokio::select! {
                    _ = killed => Ok(()),
                    done = campaign => done?,
                }
            })?;
            // Whatever still runs on the node stops here, without a word to
            // the store: a crash.
            runtime.shutdown_background();
            Ok(())
        });
        Node {
            kill: Some(kill),
            step_down,
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Which node `leader` is.
fn index_of(leader: &watch::Receiver<Option<tower_lock::election::Leader>>) -> Option<usize> {
    let id = leader.borrow().as_ref()?.id.clone();
    NODES.iter().position(|node| *node == id)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let backend: Arc<str> = common::from_args(USAGE)?.into();
    let bus = LocalBus::new();
    let start = Instant::now();
    // The observer is a process of its own too: it only watches.
    let observer = election(locker(&backend, &bus).await?);
    let mut leader = observer.observe().await?;
    let printer = {
        let mut leader = leader.clone();
        tokio::spawn(async move {
            while leader.changed().await.is_ok() {
                match &*leader.borrow_and_update() {
                    Some(now) => println!(
                        "{} observed: {} leads, term {}",
                        at(start),
                        now.id,
                        now.term
                    ),
                    None => println!("{} observed: nobody leads", at(start)),
                }
            }
        })
    };
    let mut nodes: Vec<Node> = NODES
        .iter()
        .map(|id| Node::start(id, backend.clone(), bus.clone(), start))
        .collect();

    let first = tokio::time::timeout(Duration::from_secs(10), leader.wait_for(Option::is_some))
        .await??
        .clone();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let killed = index_of(&leader).ok_or_else(|| anyhow::anyhow!("no leader to kill"))?;
    println!(
        "{} == killing {} (no resignation) ==",
        at(start),
        NODES[killed]
    );
    nodes[killed].kill();

    let next = tokio::time::timeout(
        TTL * 4,
        leader.wait_for(|now| now.as_ref().is_some_and(|now| Some(now) != first.as_ref())),
    )
    .await??
    .clone();
    let next = next.ok_or_else(|| anyhow::anyhow!("no new leader"))?;
    println!(
        "{} == {} took over after the kill, term {} ==",
        at(start),
        next.id,
        next.term
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let resigning = index_of(&leader).ok_or_else(|| anyhow::anyhow!("no leader to resign"))?;
    println!("{} == asking {} to resign ==", at(start), NODES[resigning]);
    nodes[resigning].step_down.send_replace(true);
    let last = tokio::time::timeout(
        TTL * 2,
        leader.wait_for(|now| now.as_ref().is_some_and(|now| now.term > next.term)),
    )
    .await??
    .clone();
    if let Some(last) = last {
        println!(
            "{} == {} took over at once, term {} ==",
            at(start),
            last.id,
            last.term
        );
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(nodes);
    printer.abort();
    println!("{} done", at(start));
    Ok(())
}
