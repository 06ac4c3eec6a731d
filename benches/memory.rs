//! Uncontended acquire+release on the in-memory backend, side by side with
//! a baseline keyed lock written here (`HashMap<String, Arc<tokio::sync::Mutex<()>>>`
//! behind a mutex: as it was first written, with a cheaper lookup that
//! allocates no key, and leak-free), and a sweep of 1,000,000 distinct keys
//! that must leave the table empty.
//!
//! `cargo bench --bench memory`
//!
//! Criterion times each side in turn; the ratios to quote come from the
//! last lines, where the sides run in alternating rounds (A B C D A B C D
//! …), so that a change in the machine's speed touches every side alike.

use std::{
    collections::HashMap,
    hint::black_box,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use tower_lock::{Locker, memory::MemoryBackend};

/// The baseline: a map of async mutexes behind one mutex.
#[derive(Default)]
struct KeyedMutexes {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedMutexes {
    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().expect("baseline map");
        locks.entry(key.to_owned()).or_default().clone()
    }

    /// The same, allocating a key only when it is new.
    fn lock_for_cheaply(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().expect("baseline map");
        if let Some(lock) = locks.get(key) {
            return lock.clone();
        }
        locks.entry(key.to_owned()).or_default().clone()
    }

    /// The baseline made leak-free like tower-lock: the entry goes with the
    /// last user.
    fn forget(&self, key: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self.locks.lock().expect("baseline map");
        drop(lock);
        if locks.get(key).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(key);
        }
    }
}

fn uncontended(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ttl = Duration::from_secs(10);
    let mut group = c.benchmark_group("uncontended acquire+release");

    let baseline = KeyedMutexes::default();
    group.bench_function("baseline: HashMap<String, Arc<tokio Mutex>>", |b| {
        b.to_async(&runtime).iter(|| async {
            let lock = baseline.lock_for("invoice:42");
            let held = lock.lock().await;
            drop(black_box(held));
        })
    });

    let baseline = KeyedMutexes::default();
    group.bench_function("baseline, key allocated only when new", |b| {
        b.to_async(&runtime).iter(|| async {
            let lock = baseline.lock_for_cheaply("invoice:42");
            let held = lock.lock().await;
            drop(black_box(held));
        })
    });

    let baseline = KeyedMutexes::default();
    group.bench_function("baseline, entry removed on release", |b| {
        b.to_async(&runtime).iter(|| async {
            let lock = baseline.lock_for("invoice:42");
            let held = lock.lock().await;
            drop(black_box(held));
            baseline.forget("invoice:42", lock);
        })
    });

    let locker = Locker::in_memory();
    group.bench_function("tower-lock: Locker::in_memory", |b| {
        b.to_async(&runtime).iter(|| async {
            let guard = locker
                .acquire("invoice:42", ttl)
                .await
                .expect("uncontended acquire");
            black_box(guard.fence());
            guard.release().await.expect("release");
        })
    });
    group.finish();
}

/// Not a timing: checks and prints that a million distinct keys leave
/// nothing behind, and how long it took.
fn million_keys(_: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let backend = MemoryBackend::new();
    let locker = Locker::new(backend.clone());
    let start = Instant::now();
    runtime.block_on(async {
        for i in 0..1_000_000u32 {
            let guard = locker
                .acquire(&format!("key:{i}"), Duration::from_secs(10))
                .await
                .expect("acquire");
            guard.release().await.expect("release");
        }
    });
    let elapsed = start.elapsed();
    println!(
        "1,000,000 distinct keys locked and released in {elapsed:.2?}: table holds {} leases, \
         locker holds {} keys, {} queued keys",
        backend.len(),
        locker.held_count(),
        locker.queued_keys(),
    );
    assert_eq!(backend.len(), 0, "released keys must leave the table");
    assert_eq!(locker.held_count(), 0);
}

/// The seven sides in alternating rounds: each round times `PER_ROUND`
/// cycles of one side; the median round of each side is reported.
fn interleaved(_: &mut Criterion) {
    const ROUNDS: usize = 40;
    const PER_ROUND: u32 = 100_000;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ttl = Duration::from_secs(10);
    let (first, cheap, leak_free) = (
        KeyedMutexes::default(),
        KeyedMutexes::default(),
        KeyedMutexes::default(),
    );
    let locker = Locker::in_memory();
    // In-memory fences follow the wall clock in microseconds, so one key
    // is granted at most once a microsecond in a long burst; these sides
    // take 64 keys in turn, each well below that rate.
    let keys: Vec<String> = (0..64).map(|i| format!("invoice:{i}")).collect();
    let leak_free_many = KeyedMutexes::default();
    let mut times: [Vec<f64>; 7] = Default::default();
    runtime.block_on(async {
        for _ in 0..ROUNDS {
            for (side, times) in times.iter_mut().enumerate() {
                let start = Instant::now();
                for cycle in 0..PER_ROUND {
                    let key = &keys[cycle as usize % keys.len()];
                    match side {
                        0 => {
                            let lock = first.lock_for("invoice:42");
                            drop(black_box(lock.lock().await));
                        }
                        1 => {
                            let lock = cheap.lock_for_cheaply("invoice:42");
                            drop(black_box(lock.lock().await));
                        }
                        2 => {
                            let lock = leak_free.lock_for("invoice:42");
                            drop(black_box(lock.lock().await));
                            leak_free.forget("invoice:42", lock);
                        }
                        3 => {
                            let guard = locker.acquire("invoice:42", ttl).await.expect("acquire");
                            black_box(guard.fence());
                            guard.release().await.expect("release");
                        }
                        4 => {
                            let lock = leak_free_many.lock_for(key);
                            drop(black_box(lock.lock().await));
                            leak_free_many.forget(key, lock);
                        }
                        5 => {
                            let guard = locker.acquire(key, ttl).await.expect("acquire");
                            black_box(guard.fence());
                            guard.release().await.expect("release");
                        }
                        _ => {
                            let next = &keys[(cycle as usize + 1) % keys.len()];
                            let set = locker.acquire_all([key, next], ttl).await;
                            let set = set.expect("acquire_all");
                            black_box(set.len());
                            set.release().await.expect("release");
                        }
                    }
                }
                times.push(start.elapsed().as_secs_f64() * 1e9 / f64::from(PER_ROUND));
            }
        }
    });
    let median = |times: &mut Vec<f64>| {
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    let [a, b, c, d, e, f, g] = times.each_mut().map(median);
    println!("interleaved, median of {ROUNDS} rounds of {PER_ROUND} cycles:");
    println!("  baseline as first written (key allocated every call): {a:.1} ns");
    println!("  baseline, key allocated only when new:                {b:.1} ns");
    println!("  baseline, entry removed on release:                   {c:.1} ns");
    println!("  tower-lock Locker::in_memory:                         {d:.1} ns");
    println!(
        "  tower-lock / them: {:.2}x, {:.2}x, {:.2}x",
        d / a,
        d / b,
        d / c
    );
    println!("  64 keys in turn, baseline, entry removed on release:  {e:.1} ns");
    println!("  64 keys in turn, tower-lock Locker::in_memory:        {f:.1} ns");
    println!("  tower-lock / baseline over 64 keys: {:.2}x", f / e);
    println!("  64 keys in turn, tower-lock acquire_all of 2 keys:    {g:.1} ns");
    println!("  2 keys / 1 key: {:.2}x", g / f);
}

/// Not a timing of one call: the conformance suite's transfer workload (16
/// tasks over 4 lockers, 300 transfers among 8 accounts, each holding its
/// two accounts for 1 ms, half of them naming the keys the other way
/// round), with `acquire_all` of both accounts and with one global lock,
/// the naive safe alternative, in alternating rounds.
fn transfers(_: &mut Criterion) {
    const ROUNDS: usize = 5;
    const TRANSFERS: usize = 300;
    const ACCOUNTS: usize = 8;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let backend = MemoryBackend::new();
    let lockers: Vec<Locker> = (0..4).map(|_| Locker::new(backend.clone())).collect();
    let run = |global: bool| {
        let lockers = lockers.clone();
        runtime.block_on(async move {
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let start = Instant::now();
            let tasks: Vec<_> = (0..16)
                .map(|task| {
                    let (locker, next) = (lockers[task % 4].clone(), next.clone());
                    tokio::spawn(async move {
                        let ttl = Duration::from_secs(10);
                        loop {
                            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if n >= TRANSFERS {
                                return;
                            }
                            let (from, to) = (n % ACCOUNTS, (n * 5 + 3) % ACCOUNTS);
                            let to = if to == from { (to + 1) % ACCOUNTS } else { to };
                            let keys = if n % 2 == 0 { [from, to] } else { [to, from] };
                            let keys = keys.map(|k| format!("account:{k}"));
                            if global {
                                let guard = locker.acquire("ledger", ttl).await.expect("acquire");
                                tokio::time::sleep(Duration::from_millis(1)).await;
                                guard.release().await.expect("release");
                            } else {
                                let set =
                                    locker.acquire_all(&keys, ttl).await.expect("acquire_all");
                                tokio::time::sleep(Duration::from_millis(1)).await;
                                set.release().await.expect("release");
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task");
            }
            TRANSFERS as f64 / start.elapsed().as_secs_f64()
        })
    };
    let (mut sets, mut global) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        sets.push(run(false));
        global.push(run(true));
    }
    let median = |mut rates: Vec<f64>| {
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let (sets, global) = (median(sets), median(global));
    println!(
        "transfers, 16 tasks / 4 lockers, 8 accounts, 1 ms sections, median of {ROUNDS} rounds:"
    );
    println!("  acquire_all of both accounts: {sets:.0} transfers/s");
    println!("  one global lock:              {global:.0} transfers/s");
    println!("  acquire_all / global: {:.2}x", sets / global);
}

criterion_group!(benches, uncontended, interleaved, million_keys, transfers);
criterion_main!(benches);
