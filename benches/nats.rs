//! NatsBackend against a nats-server this bench starts on a free loopback
//! port, side by side with its baselines:
//!
//! - `uncontended`: acquire + release through `Locker`, against the same
//!   operations issued directly with async-nats (`floor_same_ops`: create on
//!   an empty key, then delete exactly that message) and against the issue's
//!   named floor (`floor_kv_create_delete`: `Store::create` then
//!   `Store::delete_expect_revision` on a classic KV bucket).
//! - `wakeup`: release → acquisition by a waiter in another `Locker`,
//!   against one KV `put` round trip (one write and its ack, the cost of a store round trip) (criterion reports means; the
//!   printed `wakeup:` line gives the medians of 200 hand-offs).
//! - `switch` (printed): the same hand-off between kinds (an exclusive
//!   holder to a shared waiter, and back), in the same alternating rounds
//!   as the `wakeup:` line, as medians and against the writer hand-off.
//! - `NATS uncontended acquire+release, interleaved` (printed): the locker
//!   and the same operations by hand in alternating rounds; the ratio to
//!   quote.
//! - contention (printed): 16 tasks over 4 Lockers on one key with a 1 ms
//!   critical section, against one task doing the same serially; and Jain's
//!   fairness index over the tasks.
//! - `NATS lease kinds uncontended acquire+release, interleaved` (printed):
//!   exclusive, shared and counted cycles side by side, with the exclusive
//!   cycle's operations by hand as they were before shared locks (create,
//!   delete) and as they are now (create, the leader's read of the key's
//!   holder entries, delete).
//! - permit contention (printed): 16 tasks over 4 Lockers taking one of 4
//!   permits of one key for a 1 ms section, against 4 times the rate of one
//!   task doing the same serially; and Jain's fairness index.
//!
//! `cargo bench --features nats --bench nats -- --warm-up-time 1 --measurement-time 3`

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

use criterion::{Criterion, criterion_group};
use tokio::runtime::Runtime;
use tower_lock::{Locker, nats::NatsBackend};

const TTL: Duration = Duration::from_secs(30);

struct Setup {
    rt: Runtime,
    _server: support::ServerProcess,
    port: u16,
}

fn setup() -> Setup {
    let server = support::nats::server();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    Setup {
        rt,
        port: server.port,
        _server: server,
    }
}

async fn locker(port: u16) -> Locker {
    let js = async_nats::jetstream::new(support::nats::connect(&[port]).await);
    Locker::new(NatsBackend::new(js, "bench").await.expect("bucket"))
}

fn benches(c: &mut Criterion) {
    let s = setup();
    let (a, b) =
        s.rt.block_on(async { (locker(s.port).await, locker(s.port).await) });
    let js = s
        .rt
        .block_on(async { async_nats::jetstream::new(support::nats::connect(&[s.port]).await) });
    let store =
        s.rt.block_on(async { js.get_key_value("bench").await.expect("bucket") });
    // A classic KV bucket (delete markers) for the named floor.
    let kv = s.rt.block_on(async {
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "KV_classic".into(),
            subjects: vec!["$KV.classic.>".into()],
            max_messages_per_subject: 1,
            discard: async_nats::jetstream::stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .expect("classic bucket");
        js.get_key_value("classic").await.expect("classic bucket")
    });

    let mut group = c.benchmark_group("uncontended");
    group.bench_function("locker_acquire_release", |bench| {
        bench.to_async(&s.rt).iter(|| async {
            let guard = a.acquire("uncontended", TTL).await.expect("acquire");
            guard.release().await.expect("release");
        })
    });
    group.bench_function("floor_same_ops", |bench| {
        bench.to_async(&s.rt).iter(|| floor_same_ops(&store, &js))
    });
    group.bench_function("floor_kv_create_delete", |bench| {
        bench.to_async(&s.rt).iter(|| async {
            let revision = kv
                .create("floor", "v1 x 30000".into())
                .await
                .expect("create");
            kv.delete_expect_revision("floor", Some(revision))
                .await
                .expect("delete");
        })
    });
    group.finish();

    let mut group = c.benchmark_group("wakeup");
    group.bench_function("release_to_acquire_other_locker", |bench| {
        bench.to_async(&s.rt).iter_custom(|iters| {
            let (a, b) = (a.clone(), b.clone());
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += handoff(&a, &b).await;
                }
                total
            }
        })
    });
    group.bench_function("kv_put_round_trip", |bench| {
        bench.to_async(&s.rt).iter(|| async {
            store.put("rtt", "x".into()).await.expect("put");
        })
    });
    group.finish();
}

/// What the backend's uncontended cycle sends, by hand: a create on an
/// empty key, then the same exact delete of that message (no secure erase).
async fn floor_same_ops(
    store: &async_nats::jetstream::kv::Store,
    js: &async_nats::jetstream::Context,
) {
    let revision = store
        .update("floor", "v1 x 30000".into(), 0)
        .await
        .expect("create");
    let _: serde_json_free::Reply = js
        .request(
            "STREAM.MSG.DELETE.KV_bench",
            &serde_json_free::Delete {
                seq: revision,
                no_erase: true,
            },
        )
        .await
        .expect("delete");
}

/// The uncontended cycle against its floors, in alternating rounds.
fn uncontended_interleaved() {
    let s = setup();
    s.rt.block_on(async {
        let a = locker(s.port).await;
        let js = async_nats::jetstream::new(support::nats::connect(&[s.port]).await);
        let store = js.get_key_value("bench").await.expect("bucket");
        let (a, js, store) = (&a, &js, &store);
        interleave::compare(
            "NATS uncontended acquire+release",
            30,
            20,
            &mut [
                (
                    "tower-lock Locker",
                    Box::new(move || {
                        Box::pin(async move {
                            let guard = a.acquire("uncontended", TTL).await.expect("acquire");
                            guard.release().await.expect("release");
                        })
                    }),
                ),
                (
                    "tower-lock acquire_all, 2 keys",
                    Box::new(move || {
                        Box::pin(async move {
                            let keys = ["uncontended-a", "uncontended-b"];
                            let set = a.acquire_all(keys, TTL).await.expect("acquire_all");
                            set.release().await.expect("release");
                        })
                    }),
                ),
                (
                    "the same KV operations by hand",
                    Box::new(move || Box::pin(floor_same_ops(store, js))),
                ),
            ],
        )
        .await;
    });
}

/// The exclusive, shared and counted cycles side by side, with the
/// exclusive cycle's store operations by hand.
fn kinds_interleaved() {
    let s = setup();
    s.rt.block_on(async {
        let a = locker(s.port).await;
        let js = async_nats::jetstream::new(support::nats::connect(&[s.port]).await);
        let store = js.get_key_value("bench").await.expect("bucket");
        let (a, js, store) = (&a, &js, &store);
        interleave::compare(
            "NATS lease kinds uncontended acquire+release",
            30,
            20,
            &mut [
                (
                    "exclusive (acquire)",
                    Box::new(move || {
                        Box::pin(async move {
                            let guard = a.acquire("kinds-x", TTL).await.expect("acquire");
                            guard.release().await.expect("release");
                        })
                    }),
                ),
                (
                    "shared (acquire_shared)",
                    Box::new(move || {
                        Box::pin(async move {
                            let guard = a.acquire_shared("kinds-s", TTL).await.expect("shared");
                            guard.release().await.expect("release");
                        })
                    }),
                ),
                (
                    "counted (acquire_permit, 4)",
                    Box::new(move || {
                        Box::pin(async move {
                            let guard = a.acquire_permit("kinds-p", 4, TTL).await.expect("permit");
                            guard.release().await.expect("release");
                        })
                    }),
                ),
                (
                    "by hand: create, delete (before)",
                    Box::new(move || Box::pin(floor_same_ops(store, js))),
                ),
                (
                    "by hand: create, leader read, delete (now)",
                    Box::new(move || Box::pin(floor_with_check(store, js))),
                ),
            ],
        )
        .await;
    });
}

/// The exclusive cycle's operations now: a create on an empty key, the
/// stream leader's read of the key's shared and counted entries (none),
/// then the exact delete.
async fn floor_with_check(
    store: &async_nats::jetstream::kv::Store,
    js: &async_nats::jetstream::Context,
) {
    let revision = store
        .update("floor", "v1 x 30000".into(), 0)
        .await
        .expect("create");
    let found = store
        .stream
        .get_first_raw_message_by_subject("$KV.bench.floor.*.>", 1)
        .await;
    assert!(found.is_err(), "no entry under the floor key");
    let _: serde_json_free::Reply = js
        .request(
            "STREAM.MSG.DELETE.KV_bench",
            &serde_json_free::Delete {
                seq: revision,
                no_erase: true,
            },
        )
        .await
        .expect("delete");
}

/// Like [`contention`], for one of `permits` permits of the key.
fn permit_contention(
    s: &Setup,
    lockers: usize,
    tasks: usize,
    permits: u32,
    period: Duration,
) -> Vec<f64> {
    s.rt.block_on(async {
        let mut all = Vec::new();
        for _ in 0..lockers {
            all.push(locker(s.port).await);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..tasks)
            .map(|task| {
                let (locker, stop) = (all[task % lockers].clone(), stop.clone());
                tokio::spawn(async move {
                    let mut count = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let guard = locker
                            .acquire_permit("permits", permits, TTL)
                            .await
                            .expect("permit");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        guard.release().await.expect("release");
                        count += 1;
                    }
                    count
                })
            })
            .collect();
        let start = Instant::now();
        tokio::time::sleep(period).await;
        stop.store(true, Ordering::Relaxed);
        let mut counts = Vec::new();
        for handle in handles {
            counts.push(handle.await.expect("task"));
        }
        let elapsed = start.elapsed().as_secs_f64();
        counts
            .into_iter()
            .map(|count| count as f64 / elapsed)
            .collect()
    })
}

fn permit_contention_summary() {
    let s = setup();
    let period = Duration::from_secs(5);
    let serial: f64 = permit_contention(&s, 1, 1, 4, period).iter().sum();
    let rates = permit_contention(&s, 4, 16, 4, period);
    let total: f64 = rates.iter().sum();
    let per_task: Vec<String> = rates.iter().map(|rate| format!("{rate:.0}")).collect();
    println!(
        "permit contention: serial 1 task {serial:.0}/s (x4 = {:.0}/s) | 16 tasks over 4 lockers, 4 permits {total:.0}/s = {:.2}x of 4x serial | Jain fairness {:.3} | per task /s [{}]",
        serial * 4.0,
        total / (serial * 4.0),
        jain(&rates),
        per_task.join(", "),
    );
}

/// Acquisitions per second of each task, `tasks` tasks over `lockers`
/// lockers for about `period`: divided by the time from the start to the
/// last task's end, since tasks finish the acquisition they are in.
fn contention(s: &Setup, lockers: usize, tasks: usize, period: Duration) -> Vec<f64> {
    s.rt.block_on(async {
        let mut all = Vec::new();
        for _ in 0..lockers {
            all.push(locker(s.port).await);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..tasks)
            .map(|task| {
                let (locker, stop) = (all[task % lockers].clone(), stop.clone());
                tokio::spawn(async move {
                    let mut count = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let guard = locker.acquire("contended", TTL).await.expect("acquire");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        guard.release().await.expect("release");
                        count += 1;
                    }
                    count
                })
            })
            .collect();
        let start = Instant::now();
        tokio::time::sleep(period).await;
        stop.store(true, Ordering::Relaxed);
        let mut counts = Vec::new();
        for handle in handles {
            counts.push(handle.await.expect("task"));
        }
        let elapsed = start.elapsed().as_secs_f64();
        counts
            .into_iter()
            .map(|count| count as f64 / elapsed)
            .collect()
    })
}

fn jain(counts: &[f64]) -> f64 {
    let sum: f64 = counts.iter().sum();
    let squares: f64 = counts.iter().map(|c| c.powi(2)).sum();
    sum * sum / (counts.len() as f64 * squares)
}

fn contention_summary() {
    let s = setup();
    let period = Duration::from_secs(5);
    let serial: f64 = contention(&s, 1, 1, period).iter().sum();
    let rates = contention(&s, 4, 16, period);
    let total: f64 = rates.iter().sum();
    let per_task: Vec<String> = rates.iter().map(|rate| format!("{rate:.0}")).collect();
    println!(
        "contention: serial 1 task {serial:.0}/s | 16 tasks over 4 lockers {total:.0}/s = {:.2}x serial | Jain fairness {:.3} | per task /s [{}]",
        total / serial,
        jain(&rates),
        per_task.join(", "),
    );
}

/// The message-delete request and reply, without a JSON crate.
mod serde_json_free {
    #[derive(serde::Serialize)]
    pub struct Delete {
        pub seq: u64,
        pub no_erase: bool,
    }

    #[derive(serde::Deserialize)]
    pub struct Reply {
        #[allow(dead_code)]
        pub success: bool,
    }
}

/// Medians of `rounds` hand-offs (release → acquisition by a waiter in
/// another Locker): writer to writer, and the switches between kinds
/// (writer to reader, reader to writer), with as many KV put round trips,
/// all in alternating rounds.
fn wakeup_medians(rounds: usize) {
    let s = setup();
    let [writers, to_reader, to_writer, updates] = s.rt.block_on(async {
        let (a, b) = (locker(s.port).await, locker(s.port).await);
        let js = async_nats::jetstream::new(support::nats::connect(&[s.port]).await);
        let store = js.get_key_value("bench").await.expect("bucket");
        let mut times: [Vec<Duration>; 4] = Default::default();
        for _ in 0..rounds {
            times[0].push(handoff(&a, &b).await);
            times[1].push(kind_handoff(&a, &b, false, true).await);
            times[2].push(kind_handoff(&a, &b, true, false).await);
            let sent = Instant::now();
            store.put("rtt", "x".into()).await.expect("put");
            times[3].push(sent.elapsed());
        }
        times
    });
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (handoff, update) = (median(writers), median(updates));
    println!(
        "wakeup: median release->acquire {handoff:?} | median KV put round trip (one write and its ack) {update:?} | ratio {:.2}x",
        handoff.as_secs_f64() / update.as_secs_f64()
    );
    let (to_reader, to_writer) = (median(to_reader), median(to_writer));
    println!(
        "switch: median exclusive->shared {to_reader:?} ({:.2}x the writer hand-off) | \
         shared->exclusive {to_writer:?} ({:.2}x)",
        to_reader.as_secs_f64() / handoff.as_secs_f64(),
        to_writer.as_secs_f64() / handoff.as_secs_f64(),
    );
}

criterion_group!(nats, benches);

fn main() {
    nats();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    uncontended_interleaved();
    kinds_interleaved();
    wakeup_medians(200);
    contention_summary();
    permit_contention_summary();
}

/// One hand-off: `a` holds, `b` waits, `a` releases; the time from the
/// release call to `b` holding the lock.
async fn handoff(a: &Locker, b: &Locker) -> Duration {
    kind_handoff(a, b, false, false).await
}

/// [`handoff`] with a shared lease on either side (`true`) or an exclusive
/// one: a switch between kinds when they differ.
async fn kind_handoff(a: &Locker, b: &Locker, held_shared: bool, waits_shared: bool) -> Duration {
    let take = |locker: &Locker, shared: bool| {
        let locker = locker.clone();
        async move {
            if shared {
                locker.acquire_shared("wakeup", TTL).await
            } else {
                locker.acquire("wakeup", TTL).await
            }
        }
    };
    let held = take(a, held_shared).await.expect("acquire");
    let waiter = tokio::spawn({
        let waiting = take(b, waits_shared);
        async move {
            let guard = waiting.await.expect("acquire");
            (guard, Instant::now())
        }
    });
    // Let the waiter try, fail and wait for the wake-up.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let released_at = Instant::now();
    held.release().await.expect("release");
    let (guard, acquired_at) = waiter.await.expect("waiter");
    guard.release().await.expect("release");
    acquired_at - released_at
}
