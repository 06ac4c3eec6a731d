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

/// The six sides in alternating rounds: each round times `PER_ROUND`
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
    let mut times: [Vec<f64>; 6] = Default::default();
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
                        _ => {
                            let guard = locker.acquire(key, ttl).await.expect("acquire");
                            black_box(guard.fence());
                            guard.release().await.expect("release");
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
    let [a, b, c, d, e, f] = times.each_mut().map(median);
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
}

criterion_group!(benches, uncontended, interleaved, million_keys);
criterion_main!(benches);
