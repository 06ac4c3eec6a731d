//! Elections on a redis-server and a nats-server this bench starts on free
//! loopback ports, each figure beside the bound or baseline it is held to:
//!
//! - **failover**: a leader in a child process is SIGKILLed while a
//!   candidate here waits; the time from the kill to the candidate's
//!   `campaign` returning, median of `RUNS`, against ttl + 250 ms (Redis)
//!   and ttl + 500 ms (NATS).
//! - **resign seen**: a leader here resigns; the time from the call to an
//!   observer on another connection seeing no leader, median of `SAMPLES`,
//!   against the backend's round trip (a `PING` for Redis, a KV `put` for
//!   NATS, medians of `SAMPLES`) times 3.
//!
//! `cargo bench --features redis,nats --bench election`

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tower_lock::{Locker, election::Election, nats::NatsBackend, redis::RedisBackend};

const CHILD_ENV: &str = "TOWER_LOCK_ELECTION_BENCH_CHILD";
const TTL: Duration = Duration::from_millis(1000);
const RUNS: usize = 10;
const SAMPLES: usize = 50;

async fn locker(url: &str) -> Locker {
    if url.starts_with("redis://") {
        return Locker::new(RedisBackend::from_url(url).await.expect("Redis"));
    }
    let js = async_nats::jetstream::new(async_nats::connect(url).await.expect("NATS"));
    Locker::new(NatsBackend::new(js, "locks").await.expect("bucket"))
}

fn election(locker: Locker, name: &str) -> Election {
    Election::new(locker, name)
        .ttl(TTL)
        .renew_deadline(TTL * 6 / 10)
        .renew_every(TTL * 15 / 100)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The child: lead, say so, and wait to be killed.
async fn child(spec: &str) {
    let (url, name) = spec.split_once('\n').expect("url and name");
    let leadership = election(locker(url).await, name)
        .campaign("child")
        .await
        .expect("campaign");
    println!("LEADING {}", leadership.term());
    std::future::pending::<()>().await;
}

async fn failover(url: &str, run: usize) -> Duration {
    let name = format!("failover-{run}");
    let mut child = Command::new(std::env::current_exe().expect("bench binary"))
        .env(CHILD_ENV, format!("{url}\n{name}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the leader");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .next()
            .expect("a line")
            .expect("read")
    })
    .await
    .expect("read");
    assert!(line.starts_with("LEADING"), "the leader said {line:?}");
    let heir = election(locker(url).await, &name);
    let campaign = tokio::spawn(async move { heir.campaign("heir").await });
    // Renewed at least once, and the heir is waiting.
    tokio::time::sleep(TTL / 2).await;
    child.kill().expect("SIGKILL");
    let killed = Instant::now();
    let leadership = campaign.await.expect("task").expect("campaign");
    let took = killed.elapsed();
    let _ = child.wait();
    leadership.resign().await.expect("resign");
    took
}

/// How long an observer took to see a resignation, how long the
/// resignation itself took, and how long one read of the leader takes.
async fn resign_seen(url: &str, sample: usize) -> (Duration, Duration, Duration) {
    let name = format!("resign-{sample}");
    let observer = election(locker(url).await, &name);
    let mut leader = observer.observe().await.expect("observe");
    let leadership = election(locker(url).await, &name)
        .campaign("leader")
        .await
        .expect("campaign");
    leader.wait_for(Option::is_some).await.expect("observer");
    let asked = Instant::now();
    leadership.resign().await.expect("resign");
    let resigned = asked.elapsed();
    leader.wait_for(Option::is_none).await.expect("observer");
    let seen = asked.elapsed();
    let read = Instant::now();
    observer.leader().await.expect("leader");
    (seen, resigned, read.elapsed())
}

async fn round_trip(url: &str) -> Duration {
    let mut samples = Vec::with_capacity(SAMPLES);
    if url.starts_with("redis://") {
        let client = redis::Client::open(url).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        for _ in 0..SAMPLES {
            let start = Instant::now();
            let _: String = redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .expect("PING");
            samples.push(start.elapsed());
        }
    } else {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.expect("NATS"));
        // A key of the locks' own bucket, beside the election's.
        let backend = NatsBackend::new(js, "locks").await.expect("bucket");
        for n in 0..SAMPLES {
            let start = Instant::now();
            let put = backend.store().put("round-trip", n.to_string().into());
            put.await.expect("put");
            samples.push(start.elapsed());
        }
    }
    median(samples)
}

async fn report(backend: &str, url: &str, bound: Duration) {
    let mut failovers = Vec::with_capacity(RUNS);
    for run in 0..RUNS {
        failovers.push(failover(url, run).await);
    }
    let (fastest, slowest) = (
        *failovers.iter().min().expect("runs"),
        *failovers.iter().max().expect("runs"),
    );
    let failover = median(failovers);
    println!(
        "{backend} failover after SIGKILL: median {failover:?} (min {fastest:?}, max {slowest:?}) \
         over {RUNS} runs; bound ttl + {bound:?} = {:?}: {}",
        TTL + bound,
        if failover <= TTL + bound {
            "within"
        } else {
            "OVER"
        }
    );
    let (mut seen, mut resigned, mut read) = (Vec::new(), Vec::new(), Vec::new());
    for sample in 0..SAMPLES {
        let (s, r, d) = resign_seen(url, sample).await;
        seen.push(s);
        resigned.push(r);
        read.push(d);
    }
    let (seen, resigned, read) = (median(seen), median(resigned), median(read));
    let trip = round_trip(url).await;
    println!(
        "{backend} resign seen by an observer: median {seen:?}; round trip {trip:?}; \
         ratio {:.2} (bound 3.00); the resign call alone {resigned:?}, one read of the \
         leader {read:?}: ratio to their sum {:.2}",
        seen.as_secs_f64() / trip.as_secs_f64(),
        seen.as_secs_f64() / (resigned + read).as_secs_f64()
    );
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(child(&spec));
        return;
    }
    // `cargo bench` passes `--bench`; a plain `cargo test` of the benches
    // runs nothing.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let redis_port = support::free_port();
    let _redis = support::ServerProcess::start(
        "/usr/bin/redis-server",
        [
            "--port",
            &redis_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        redis_port,
    );
    let nats = support::nats::server();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let redis_url = format!("redis://127.0.0.1:{redis_port}/");
        report("Redis", &redis_url, Duration::from_millis(250)).await;
        let nats_url = format!("nats://127.0.0.1:{}", nats.port);
        report("NATS", &nats_url, Duration::from_millis(500)).await;
    });
}
