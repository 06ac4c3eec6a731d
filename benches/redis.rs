//! RedisBackend against its baselines, side by side in one run, on a
//! redis-server the bench starts itself on a free loopback port.
//!
//! Criterion groups:
//! - `uncontended`: acquire + release through `Locker`, vs the floor (the
//!   same two commands, `SET NX PX` then the release script by `EVALSHA`,
//!   sent directly with redis-rs on a `ConnectionManager`), vs `rslock`.
//! - `round_trip`: a `PING` on the same connection type, for scale.
//! - `shared`: uncontended shared acquire + release and a permit's (of 4),
//!   beside the exclusive acquire + release, through `Locker`.
//!
//! Then a summary, printed after criterion's output:
//! - wake-up: median time from a holder's release to a waiter's acquisition
//!   (another Locker with its own connection), vs the median `PING`;
//! - contention: 16 tasks over 4 Lockers (4 backends) on one key with a 1 ms
//!   critical section, vs one task doing the same loop alone, vs rslock in
//!   the same harness: acquisitions per second, Jain's fairness index over
//!   the 16 tasks, Redis commands per acquisition (`INFO stats`) and the
//!   server's own CPU time per acquisition (`INFO cpu`, user + system);
//! - permit contention: 16 tasks over 4 Lockers taking one of 4 permits of
//!   one key, 1 ms sections, vs 4 × one task alone (the most 4 permits
//!   allow): acquisitions per second and Jain's index over the 16 tasks;
//! - requests: the contention runs again (exclusive and permits), watched
//!   by `redis-cli monitor`, which tells the commands clients send from
//!   those their scripts run (`INFO stats` counts both).
//!
//! Run: `cargo bench --features redis --bench redis -- --warm-up-time 1 --measurement-time 3`

#[path = "common/interleave.rs"]
mod interleave;
#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::Criterion;
use redis::aio::ConnectionManager;
use tokio::runtime::Runtime;
use tower_lock::{Locker, backend::Token, redis::RedisBackend};

const TTL: Duration = Duration::from_secs(10);
/// The permits of the counted benches.
const PERMITS: u32 = 4;
/// The release script of `src/redis/scripts.rs`, for the floor.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], KEYS[1])
  return 1
end
return 0
";

fn main() {
    let port = support::free_port();
    let server = support::ServerProcess::start(
        "/usr/bin/redis-server",
        [
            "--port",
            &port.to_string(),
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
        port,
    );
    let url = format!("redis://127.0.0.1:{port}/");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let mut c = Criterion::default().configure_from_args();
    uncontended(&mut c, &rt, &url);
    c.final_summary();

    if std::env::args().any(|arg| arg == "--bench") {
        rt.block_on(summary(&url, port));
    }
    drop(server);
}

fn uncontended(c: &mut Criterion, rt: &Runtime, url: &str) {
    let client = redis::Client::open(url).expect("client");
    let locker = Locker::new(rt.block_on(RedisBackend::from_url(url)).expect("backend"));
    let backend = rt.block_on(RedisBackend::from_url(url)).expect("backend");
    let floor_key = backend.redis_key("floor");
    let channel = backend.release_channel().to_owned();
    let conn = rt
        .block_on(ConnectionManager::new(client.clone()))
        .expect("connection");
    let release = redis::Script::new(RELEASE);
    let rslock = rslock::LockManager::new(vec![url.to_owned()]);

    let mut group = c.benchmark_group("uncontended");
    group.bench_function("locker_acquire_release", |b| {
        b.to_async(rt).iter(|| async {
            let guard = locker.acquire("uncontended", TTL).await.expect("acquire");
            guard.release().await.expect("release");
        })
    });
    group.bench_function("floor_set_nx_px_then_evalsha_release", |b| {
        b.to_async(rt)
            .iter(|| floor_cycle(&conn, &release, &floor_key, &channel))
    });
    group.bench_function("rslock_lock_unlock", |b| {
        b.to_async(rt).iter(|| async {
            let lock = rslock.lock("rslock-uncontended", TTL).await.expect("lock");
            rslock.unlock(&lock).await;
        })
    });
    group.finish();

    rt.block_on(async {
        let (locker, conn, release, rslock) = (&locker, &conn, &release, &rslock);
        let (floor_key, channel) = (&floor_key, &channel);
        interleave::compare(
            "Redis uncontended acquire+release",
            30,
            40,
            &mut [
                (
                    "tower-lock Locker",
                    Box::new(move || {
                        Box::pin(async move {
                            let guard = locker.acquire("uncontended", TTL).await.expect("acquire");
                            guard.release().await.expect("release");
                        })
                    }),
                ),
                (
                    "tower-lock acquire_all, 2 keys",
                    Box::new(move || {
                        Box::pin(async move {
                            let keys = ["uncontended-a", "uncontended-b"];
                            let set = locker.acquire_all(keys, TTL).await.expect("acquire_all");
                            set.release().await.expect("release");
                        })
                    }),
                ),
                (
                    "floor: SET NX PX, EVALSHA release",
                    Box::new(move || {
                        Box::pin(async move {
                            floor_cycle(conn, release, floor_key, channel).await;
                        })
                    }),
                ),
                (
                    "rslock lock, unlock",
                    Box::new(move || {
                        Box::pin(async move {
                            let lock = rslock.lock("rslock-uncontended", TTL).await.expect("lock");
                            rslock.unlock(&lock).await;
                        })
                    }),
                ),
            ],
        )
        .await;
    });

    let mut group = c.benchmark_group("shared");
    group.bench_function("exclusive_acquire_release", |b| {
        b.to_async(rt).iter(|| async {
            let guard = locker.acquire("kinds", TTL).await.expect("acquire");
            guard.release().await.expect("release");
        })
    });
    group.bench_function("shared_acquire_release", |b| {
        b.to_async(rt).iter(|| async {
            let guard = locker.acquire_shared("kinds", TTL).await.expect("shared");
            guard.release().await.expect("release");
        })
    });
    group.bench_function("permit_acquire_release", |b| {
        b.to_async(rt).iter(|| async {
            let guard = locker
                .acquire_permit("kinds", PERMITS, TTL)
                .await
                .expect("permit");
            guard.release().await.expect("release");
        })
    });
    group.finish();

    rt.block_on(async {
        let locker = &locker;
        interleave::compare(
            "Redis uncontended acquire+release by kind",
            30,
            40,
            &mut [
                (
                    "exclusive",
                    Box::new(move || {
                        Box::pin(async move {
                            let guard = locker.acquire("kinds", TTL).await.expect("acquire");
                            guard.release().await.expect("release");
                        })
                    }),
                ),
                (
                    "shared",
                    Box::new(move || {
                        Box::pin(async move {
                            let guard = locker.acquire_shared("kinds", TTL).await.expect("shared");
                            guard.release().await.expect("release");
                        })
                    }),
                ),
                (
                    "one of 4 permits",
                    Box::new(move || {
                        Box::pin(async move {
                            let guard = locker
                                .acquire_permit("kinds", PERMITS, TTL)
                                .await
                                .expect("permit");
                            guard.release().await.expect("release");
                        })
                    }),
                ),
            ],
        )
        .await;
    });

    let mut group = c.benchmark_group("round_trip");
    group.bench_function("ping", |b| {
        b.to_async(rt).iter(|| async {
            let mut conn = conn.clone();
            redis::cmd("PING")
                .query_async::<()>(&mut conn)
                .await
                .expect("PING");
        })
    });
    group.finish();
}

/// The floor: the cheapest correct pair, a bare `SET NX PX` and a
/// token-checked release script.
async fn floor_cycle(conn: &ConnectionManager, release: &redis::Script, key: &str, channel: &str) {
    let mut conn = conn.clone();
    let token = Token::new().to_string();
    let set: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(&token)
        .arg("NX")
        .arg("PX")
        .arg(TTL.as_millis() as u64)
        .query_async(&mut conn)
        .await
        .expect("SET");
    assert!(set.is_some());
    let released: i64 = release
        .key(key)
        .arg(&token)
        .arg(channel)
        .invoke_async(&mut conn)
        .await
        .expect("EVALSHA");
    assert_eq!(released, 1);
}

async fn summary(url: &str, port: u16) {
    println!("\n== summary (redis-server on {url}) ==");
    wake_up(url).await;
    let serial = contention(url, Contender::Locker, 1, 1).await;
    serial.print("tower-lock, 1 task alone (serial limit)", None);
    let ours = contention(url, Contender::Locker, 16, 4).await;
    ours.print("tower-lock, 16 tasks / 4 Lockers", Some(serial.rate()));
    let permit_serial = contention(url, Contender::Permits, 1, 1).await;
    permit_serial.print("tower-lock permit of 4, 1 task alone (serial limit)", None);
    let permits = contention(url, Contender::Permits, 16, 4).await;
    permits.print(
        "tower-lock permits of 4, 16 tasks / 4 Lockers (vs 4x serial)",
        Some(permit_serial.rate() * f64::from(PERMITS)),
    );
    let rslock_serial = contention(url, Contender::Rslock, 1, 1).await;
    rslock_serial.print("rslock, 1 task alone", None);
    let rslock = contention(url, Contender::Rslock, 16, 4).await;
    rslock.print(
        "rslock, 16 tasks / 4 LockManagers",
        Some(rslock_serial.rate()),
    );
    // The same runs again, watched.
    for (name, contender) in [
        ("tower-lock", Contender::Locker),
        ("tower-lock permits of 4", Contender::Permits),
        ("rslock", Contender::Rslock),
    ] {
        let monitor = Monitor::start(port).await;
        let outcome = contention(url, contender, 16, 4).await;
        let (requests, scripted) = monitor.stop(url).await;
        let per = |n: u64| n as f64 / outcome.total().max(1) as f64;
        println!(
            "{name}, 16 tasks / 4 owners, watched by MONITOR: {:.2} requests/acquisition \
             (commands clients send), plus {:.2} commands run inside scripts",
            per(requests),
            per(scripted),
        );
    }
}

/// Tells the commands clients send from those their scripts run, by
/// watching the server with `redis-cli monitor` (Redis counts both in
/// `total_commands_processed`). MONITOR slows the server, so it watches
/// runs of its own, never the timed ones.
struct Monitor {
    child: tokio::process::Child,
    counts: tokio::task::JoinHandle<(u64, u64)>,
}

/// Sent once the watched run is over: the monitor counts up to it.
const MONITOR_END: &str = "monitor-end";

impl Monitor {
    async fn start(port: u16) -> Self {
        use tokio::io::AsyncBufReadExt;

        let mut child = tokio::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "monitor"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-cli monitor (Debian package redis-tools)");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        // MONITOR answers OK once it watches.
        let ok = lines.next_line().await.expect("monitor output");
        assert_eq!(ok.as_deref(), Some("OK"), "redis-cli monitor did not start");
        let counts = tokio::spawn(async move {
            let (mut requests, mut scripted) = (0, 0);
            while let Ok(Some(line)) = lines.next_line().await {
                // `<time> [<db> <client address or lua>] "COMMAND" args...`
                let Some((client, command)) = line
                    .split_once('[')
                    .and_then(|(_, rest)| rest.split_once("] "))
                else {
                    continue;
                };
                let command = command.to_ascii_lowercase();
                if command.contains(MONITOR_END) {
                    break;
                }
                if command.starts_with("\"info\"") {
                    continue; // the harness's own counters
                }
                if client.ends_with(" lua") {
                    scripted += 1;
                } else {
                    requests += 1;
                }
            }
            (requests, scripted)
        });
        Monitor { child, counts }
    }

    /// Stops watching; returns the requests and the commands run by scripts.
    async fn stop(mut self, url: &str) -> (u64, u64) {
        let mut conn = ConnectionManager::new(redis::Client::open(url).expect("client"))
            .await
            .expect("connection");
        redis::cmd("ECHO")
            .arg(MONITOR_END)
            .query_async::<String>(&mut conn)
            .await
            .expect("ECHO");
        let counts = tokio::time::timeout(Duration::from_secs(10), self.counts)
            .await
            .expect("the monitor saw the end of the run")
            .expect("monitor task");
        let _ = self.child.kill().await;
        counts
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Hand-offs between two Lockers with their own connections: the waiter is
/// parked on its wake-up when the holder releases.
async fn wake_up(url: &str) {
    const ROUNDS: usize = 200;
    let holder = Locker::new(RedisBackend::from_url(url).await.expect("backend"));
    let waiter = Locker::new(RedisBackend::from_url(url).await.expect("backend"));
    let mut conn = ConnectionManager::new(redis::Client::open(url).expect("client"))
        .await
        .expect("connection");
    // A hand-off comes after the machine sat idle while the waiter waited;
    // waking an idle machine (here a VM) costs more than a round trip on a
    // busy one. So the PING is taken both ways: back to back, and after the
    // same idle pause as a hand-off.
    let mut pings = Vec::new();
    let mut idle_pings = Vec::new();
    for _ in 0..ROUNDS {
        pings.push(ping(&mut conn).await);
        tokio::time::sleep(IDLE).await;
        idle_pings.push(ping(&mut conn).await);
    }
    let mut hand_offs = Vec::new();
    let mut after_return = Vec::new();
    for _ in 0..ROUNDS {
        let held = holder.acquire("wake", TTL).await.expect("acquire");
        let task = tokio::spawn({
            let waiter = waiter.clone();
            async move {
                let guard = waiter.acquire("wake", TTL).await.expect("acquire");
                (guard, Instant::now())
            }
        });
        // Past the waiter's first backoff steps (5 + 10 ms), inside its
        // 20 ms step: only the wake-up can end it early.
        tokio::time::sleep(IDLE).await;
        let released_at = Instant::now();
        held.release().await.expect("release");
        let returned_at = Instant::now();
        let (guard, acquired_at) = task.await.expect("task");
        hand_offs.push(acquired_at - released_at);
        after_return.push(acquired_at.saturating_duration_since(returned_at));
        guard.release().await.expect("release");
    }
    let (hand_off, ping, idle_ping) =
        (median(hand_offs.clone()), median(pings), median(idle_pings));
    hand_offs.sort();
    let returned = median(after_return);
    let times = |d: Duration, of: Duration| d.as_secs_f64() / of.as_secs_f64();
    println!(
        "wake-up: median {hand_off:?} from the release call (p90 {:?}), {returned:?} from its return",
        hand_offs[hand_offs.len() * 9 / 10],
    );
    println!(
        "  PING median {ping:?} back to back: {:.2}x / {:.2}x; {idle_ping:?} after the same idle pause: {:.2}x / {:.2}x",
        times(hand_off, ping),
        times(returned, ping),
        times(hand_off, idle_ping),
        times(returned, idle_ping),
    );
}

/// How long a hand-off's waiter waits, and the idle PING's pause.
const IDLE: Duration = Duration::from_millis(22);

async fn ping(conn: &mut ConnectionManager) -> Duration {
    let start = Instant::now();
    redis::cmd("PING")
        .query_async::<()>(conn)
        .await
        .expect("PING");
    start.elapsed()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Contender {
    Locker,
    /// `Locker::acquire_permit` with `PERMITS`.
    Permits,
    Rslock,
}

struct Outcome {
    counts: Vec<u64>,
    elapsed: Duration,
    commands: u64,
    /// The server's CPU time (user + system) over the run.
    cpu: Duration,
}

impl Outcome {
    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn rate(&self) -> f64 {
        self.total() as f64 / self.elapsed.as_secs_f64()
    }

    fn jain(&self) -> f64 {
        let sum: f64 = self.counts.iter().map(|&c| c as f64).sum();
        let squares: f64 = self.counts.iter().map(|&c| (c as f64).powi(2)).sum();
        sum * sum / (self.counts.len() as f64 * squares)
    }

    fn print(&self, name: &str, serial: Option<f64>) {
        let versus = serial.map_or(String::new(), |s| {
            format!(" ({:.2}x serial)", self.rate() / s)
        });
        println!(
            "{name}: {:.0} acquisitions/s{versus}, Jain {:.3} (min {} max {} per task), \
             {:.2} Redis commands/acquisition, {:.1} µs server CPU/acquisition",
            self.rate(),
            self.jain(),
            self.counts.iter().min().unwrap_or(&0),
            self.counts.iter().max().unwrap_or(&0),
            self.commands as f64 / self.total().max(1) as f64,
            self.cpu.as_secs_f64() * 1e6 / self.total().max(1) as f64,
        );
    }
}

/// This process's CPU time so far, user + system (`/proc/self/stat`, in
/// clock ticks of 10 ms).
fn client_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15: 12 and 13 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Calls per command name, from `INFO commandstats`.
async fn command_calls(conn: &mut ConnectionManager) -> std::collections::BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            let calls = rest.split(',').next()?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// The server's CPU time so far, user + system, from `INFO cpu`.
async fn server_cpu(conn: &mut ConnectionManager) -> Duration {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .expect("INFO");
    let seconds = |field: &str| -> f64 {
        info.lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("INFO cpu has no {field}"))
    };
    Duration::from_secs_f64(seconds("used_cpu_user:") + seconds("used_cpu_sys:"))
}

async fn commands_processed(conn: &mut ConnectionManager) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|line| line.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_commands_processed")
}

/// `tasks` tasks spread over `owners` Lockers (or rslock managers), each
/// looping acquire, 1 ms critical section, release, for a fixed time.
async fn contention(url: &str, contender: Contender, tasks: usize, owners: usize) -> Outcome {
    const RUN: Duration = Duration::from_secs(3);
    let key = format!("contention-{tasks}-{}", Token::new());
    let mut admin = ConnectionManager::new(redis::Client::open(url).expect("client"))
        .await
        .expect("connection");
    let mut lockers = Vec::new();
    let mut managers = Vec::new();
    for _ in 0..owners {
        match contender {
            Contender::Locker | Contender::Permits => lockers.push(Locker::new(
                RedisBackend::from_url(url).await.expect("backend"),
            )),
            Contender::Rslock => managers.push(rslock::LockManager::new(vec![url.to_owned()])),
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let calls_before = command_calls(&mut admin).await;
    let before = commands_processed(&mut admin).await;
    let cpu_before = server_cpu(&mut admin).await;
    let client_before = client_cpu();
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let (stop, key) = (stop.clone(), key.clone());
            let locker = lockers.get(i % owners).cloned();
            let manager = managers.get(i % owners).cloned();
            tokio::spawn(async move {
                let mut count = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(locker) = &locker {
                        let guard = if contender == Contender::Permits {
                            locker.acquire_permit(&key, PERMITS, TTL).await
                        } else {
                            locker.acquire(&key, TTL).await
                        }
                        .expect("acquire");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        guard.release().await.expect("release");
                    } else if let Some(manager) = &manager {
                        let guard = manager.acquire(key.as_str(), TTL).await.expect("acquire");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        guard.release().await;
                    }
                    count += 1;
                }
                count
            })
        })
        .collect();
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    let mut counts = Vec::new();
    for handle in handles {
        counts.push(handle.await.expect("task"));
    }
    let elapsed = start.elapsed();
    let client = client_cpu().saturating_sub(client_before);
    let cpu = server_cpu(&mut admin).await.saturating_sub(cpu_before);
    // Minus the three INFOs since `before` (it, and the two CPU readings).
    let commands = commands_processed(&mut admin).await - before - 3;
    let total: u64 = counts.iter().sum();
    let breakdown: Vec<String> = command_calls(&mut admin)
        .await
        .into_iter()
        .filter(|(name, _)| name != "info")
        .filter_map(|(name, calls)| {
            let new = calls - calls_before.get(&name).copied().unwrap_or(0);
            (new > 0).then(|| format!("{name} {:.2}", new as f64 / total.max(1) as f64))
        })
        .collect();
    println!(
        "  per acquisition: {}; bench process CPU {:.1} µs (of {:.2} cores over the run)",
        breakdown.join(", "),
        client.as_secs_f64() * 1e6 / total.max(1) as f64,
        client.as_secs_f64() / elapsed.as_secs_f64(),
    );
    Outcome {
        counts,
        elapsed,
        commands,
        cpu,
    }
}
