//! Shared and counted locks on the in-memory backend, and shared locks
//! behind `LockLayer`, each side by side with its baseline in one run.
//!
//! ```text
//! cargo bench --features axum --bench shared
//! ```
//!
//! - cycle: uncontended acquire + release, exclusive vs shared vs one of 4
//!   permits, in alternating rounds;
//! - permits: 16 tasks over 4 lockers contend for one key with 4 permits,
//!   each holding it for 1 ms, vs one task doing the same loop alone:
//!   acquisitions per second against 4x the serial rate, and Jain's
//!   fairness index over the 16 tasks;
//! - http: 64 concurrent GETs of one hot key over loopback, behind
//!   `LockLayer::shared_for([GET])` vs the same app without the layer, in
//!   alternating rounds.
//!
//! The Redis and NATS figures for the first two are in the `redis` and
//! `nats` benches.

#[allow(dead_code)]
#[path = "../tests/support/http.rs"]
mod http_support;
#[path = "common/interleave.rs"]
mod interleave;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, http::Method, routing::get};
use tower_lock::{LockLayer, Locker, middleware::key};

const TTL: Duration = Duration::from_secs(30);
/// Concurrent GETs of the hot key.
const READERS: usize = 64;
/// Requests per HTTP round, and rounds per side.
const ROUND_REQUESTS: u64 = 4_000;
const ROUNDS: usize = 8;

async fn cycle() {
    let locker = Locker::in_memory();
    let (ex, sh, pe) = (locker.clone(), locker.clone(), locker);
    let mut sides: Vec<interleave::Side<'_>> = vec![
        (
            "exclusive acquire + release",
            Box::new(move || {
                let locker = ex.clone();
                Box::pin(async move {
                    let guard = locker.acquire("doc:1", TTL).await.expect("acquire");
                    guard.release().await.expect("release");
                })
            }),
        ),
        (
            "shared acquire + release",
            Box::new(move || {
                let locker = sh.clone();
                Box::pin(async move {
                    let guard = locker.acquire_shared("doc:2", TTL).await.expect("shared");
                    guard.release().await.expect("release");
                })
            }),
        ),
        (
            "permit (of 4) acquire + release",
            Box::new(move || {
                let locker = pe.clone();
                Box::pin(async move {
                    let guard = locker
                        .acquire_permit("doc:3", 4, TTL)
                        .await
                        .expect("permit");
                    guard.release().await.expect("release");
                })
            }),
        ),
    ];
    // A distinct key per side: one key's fence clock caps grants at one per
    // microsecond, which an uncontended loop on one key would measure.
    interleave::compare("memory, uncontended", 15, 20_000, &mut sides).await;
}

/// Acquisitions per second and each task's count, for `tasks` tasks over
/// `lockers` lockers taking one of `permits` for 1 ms, for `run`.
async fn contend(tasks: usize, lockers: usize, permits: u32, run: Duration) -> (f64, Vec<u64>) {
    let lockers: Vec<Locker> = (0..lockers).map(|_| Locker::in_memory()).collect();
    // One store under every locker: lockers are separate owners over it.
    let backend = lockers[0].backend().clone();
    let lockers: Vec<Locker> = lockers
        .iter()
        .map(|_| Locker::from_arc(backend.clone()))
        .collect();
    let deadline = Instant::now() + run;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let locker = lockers[task % lockers.len()].clone();
            tokio::spawn(async move {
                let mut taken = 0u64;
                while Instant::now() < deadline {
                    let guard = locker
                        .acquire_permit("export:tenant-4", permits, TTL)
                        .await
                        .expect("permit");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    guard.release().await.expect("release");
                    taken += 1;
                }
                taken
            })
        })
        .collect();
    let mut counts = Vec::new();
    for handle in handles {
        counts.push(handle.await.expect("task"));
    }
    let total: u64 = counts.iter().sum();
    (total as f64 / start.elapsed().as_secs_f64(), counts)
}

fn jain(counts: &[u64]) -> f64 {
    let sum: f64 = counts.iter().map(|&c| c as f64).sum();
    let squares: f64 = counts.iter().map(|&c| (c as f64).powi(2)).sum();
    sum * sum / (counts.len() as f64 * squares)
}

async fn permits() {
    let run = Duration::from_secs(3);
    let (serial, _) = contend(1, 1, 1, run).await;
    let (rate, counts) = contend(16, 4, 4, run).await;
    println!("memory, permit contention (16 tasks over 4 lockers, 4 permits, 1 ms sections):");
    println!(
        "  serial (1 task):      {serial:>8.0} acq/s; 4x: {:.0}",
        4.0 * serial
    );
    println!(
        "  16 tasks, 4 permits:  {rate:>8.0} acq/s = {:.2}x of 4x serial; Jain {:.3}",
        rate / (4.0 * serial),
        jain(&counts)
    );
}

/// `total` GETs of the hot key, `READERS` at a time.
async fn load(client: &reqwest::Client, addr: SocketAddr, total: u64) -> Duration {
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..READERS)
        .map(|_| {
            let (client, sent) = (client.clone(), sent.clone());
            tokio::spawn(async move {
                while sent.fetch_add(1, Ordering::Relaxed) < total {
                    let response = client
                        .get(format!("http://{addr}/documents/hot"))
                        .send()
                        .await
                        .expect("request");
                    assert!(response.status().is_success(), "{}", response.status());
                    response.bytes().await.expect("body");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    start.elapsed()
}

async fn http() {
    let app = || Router::new().route("/documents/{id}", get(|| async { "the document" }));
    let plain = http_support::serve(app()).await;
    let layer =
        LockLayer::new(Locker::in_memory(), key::path_param("id")).shared_for([Method::GET]);
    let shared = http_support::serve(app().layer(layer)).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(READERS)
        .build()
        .expect("client");
    let mut time = [Duration::ZERO; 2];
    for round in 0..2 * ROUNDS {
        let side = round % 2;
        time[side] += load(&client, [plain, shared][side], ROUND_REQUESTS).await;
    }
    let per_second = time.map(|t| (ROUNDS as u64 * ROUND_REQUESTS) as f64 / t.as_secs_f64());
    println!(
        "http, {READERS} concurrent GETs of one key, {ROUNDS} rounds of {ROUND_REQUESTS} per side:"
    );
    println!("  without LockLayer:        {:>9.0} req/s", per_second[0]);
    println!("  with shared_for([GET]):   {:>9.0} req/s", per_second[1]);
    println!(
        "  ratio:                    {:>9.2}x",
        per_second[1] / per_second[0]
    );
}

fn main() {
    // `cargo test --benches` runs bench targets with no `--bench`: nothing
    // to measure then.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        cycle().await;
        permits().await;
        http().await;
    });
}
