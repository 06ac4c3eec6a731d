//! The fault harness on every backend: random histories under a nemesis,
//! checked by an oracle (see `tests/harness/`). A short run of fixed seeds
//! here; `scripts/soak.sh` runs it for as long as asked.

mod conformance;
mod harness;
#[cfg(feature = "redis")]
mod redis_support;
mod support;

use std::time::Duration;

use harness::{Report, target};

/// How long each history of the short run starts operations.
const SHORT: Duration = Duration::from_secs(4);

fn assert_clean(reports: &[Report]) {
    for report in reports {
        println!("{report}");
    }
    let broken: Vec<&Report> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .collect();
    assert!(
        broken.is_empty(),
        "{} histories broke the model",
        broken.len()
    );
}

async fn short_run<T: target::Target>(target: T, seeds: &[u64]) {
    let mut reports = Vec::new();
    for &seed in seeds {
        reports.push(harness::history(&target, seed, SHORT).await);
    }
    assert_clean(&reports);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_histories_keep_the_model() {
    let backend = std::sync::Arc::new(tower_lock::memory::MemoryBackend::new());
    short_run(target::Memory(backend), &[1, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bus_histories_keep_the_model() {
    short_run(target::Bus::default(), &[3, 4]).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_histories_keep_the_model() {
    short_run(target::Redis::standalone(), &[5, 6, 7]).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_histories_keep_the_model() {
    let cluster = tokio::task::spawn_blocking(target::Redis::cluster)
        .await
        .expect("cluster");
    short_run(cluster, &[11]).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_histories_keep_the_model() {
    let group = tokio::task::spawn_blocking(target::Redis::sentinel)
        .await
        .expect("sentinel");
    short_run(group, &[12]).await;
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_histories_keep_the_model() {
    short_run(target::Nats::start(), &[8, 9, 10]).await;
}

/// A child process's share of a history (run by the harness, not alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the harness as a child process"]
async fn harness_child() {
    if let Ok(spec) = std::env::var(harness::CHILD_VAR) {
        harness::child_main(&spec).await;
    }
}

/// Histories for as long as `SOAK_MINUTES` says, on `SOAK_BACKEND`, from
/// `SOAK_SEED` on: `scripts/soak.sh` runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by scripts/soak.sh"]
async fn soak() {
    let minutes: f64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(1.0);
    let backend = std::env::var("SOAK_BACKEND").unwrap_or_else(|_| "memory".into());
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let until = std::time::Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let summary = match backend.as_str() {
        "memory" => soak_on(target::Memory(Default::default()), seed, until).await,
        "memory-bus" => soak_on(target::Bus::default(), seed, until).await,
        #[cfg(feature = "redis")]
        "redis" => soak_on(target::Redis::standalone(), seed, until).await,
        #[cfg(feature = "redis")]
        "redis-cluster" => soak_on(target::Redis::cluster(), seed, until).await,
        #[cfg(feature = "redis")]
        "redis-sentinel" => soak_on(target::Redis::sentinel(), seed, until).await,
        #[cfg(feature = "nats")]
        "nats" => soak_on(target::Nats::start(), seed, until).await,
        #[cfg(feature = "nats")]
        "nats-r3" => soak_on(target::Nats::cluster().await, seed, until).await,
        other => panic!(
            "no backend {other:?}: memory, memory-bus, redis, redis-cluster, redis-sentinel, nats, nats-r3"
        ),
    };
    assert_eq!(summary, 0, "violations found: see the lines above");
}

async fn soak_on<T: target::Target>(target: T, first: u64, until: std::time::Instant) -> usize {
    let (mut histories, mut ops, mut holdings, mut violations) = (0, 0, 0, 0);
    let mut faults = std::collections::BTreeMap::<String, usize>::new();
    let mut longest = Duration::ZERO;
    let mut seed = first;
    let started = std::time::Instant::now();
    // To time how long the harness takes to find a broken mechanism.
    let stop_at_first = std::env::var_os("SOAK_STOP_AT_FIRST").is_some();
    while std::time::Instant::now() < until {
        let report = harness::history(&target, seed, Duration::from_secs(8)).await;
        histories += 1;
        ops += report.ops;
        holdings += report.holdings;
        violations += report.violations.len();
        longest = longest.max(report.recovery);
        for (kind, n) in &report.faults {
            *faults.entry(kind.clone()).or_default() += n;
        }
        println!("[{histories} at {:.0?}] {report}", started.elapsed());
        seed += 1;
        if stop_at_first && violations > 0 {
            break;
        }
    }
    let crashes = target.crashes();
    println!(
        "SUMMARY {}: {histories} histories (seeds {first}..{seed}), {ops} operations, {holdings} holdings, \
         faults {faults:?}, longest time for every key to be had again after the nemesis {longest:?}, {violations} violations, \
         {} crashes of the server itself{}",
        target.name(),
        crashes.len(),
        crashes
            .first()
            .map_or(String::new(), |first| format!(" (the first: {first})")),
    );
    violations
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_r3_histories_keep_the_model() {
    short_run(target::Nats::cluster().await, &[13]).await;
}
