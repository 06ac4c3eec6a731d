//! The conformance suite every backend must pass.
//!
//! A test file provides a [`Harness`] (how to make independent lockers over
//! one store, and how to count what the store still holds) and expands
//! [`conformance_suite!`] with it; each check then runs as its own test.
#![allow(dead_code)]

pub mod overlap;

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tower_lock::{LockError, Locker};

pub use overlap::OverlapChecker;

/// A store under test.
pub trait Harness: Send + Sync + 'static {
    /// A new owner over the shared store (a new `Locker`, possibly on its own
    /// connection): locks it takes belong to it alone.
    fn locker(&self) -> impl std::future::Future<Output = Locker> + Send;

    /// How many lock entries the store still holds, fence counters aside.
    fn stored_locks(&self) -> impl std::future::Future<Output = usize> + Send;
}

/// Long enough that a test passing by expiry instead of by release fails.
const LONG: Duration = Duration::from_secs(30);
/// The most a prompt hand-off may take here: far below `LONG`, far above
/// any round trip, so the bound tests the mechanism, not the machine.
const PROMPT: Duration = Duration::from_secs(3);

/// Expands to one `#[tokio::test]` per check, each making its harness with
/// `$make` (an async expression) and bounded in time.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@tests $make;
            try_lock_excludes_other_owners,
            acquire_waits_and_wakes_promptly_on_release,
            abandoned_lock_expires_after_its_ttl,
            only_the_owner_can_release,
            release_by_key_frees_what_the_locker_holds,
            dropping_a_guard_releases,
            fences_increase_strictly_per_key,
            cancelled_waiters_leave_nothing_behind,
            cancelled_requests_leave_no_lock,
            invalid_input_is_refused_and_changes_nothing,
            keys_with_any_characters_are_distinct_locks,
            release_after_lease_loss_reports_lost_and_spares_the_new_holder,
            renewal_keeps_the_lease_past_its_ttl,
            lost_signal_fires_when_the_lease_runs_out,
            contention_loses_no_update_and_never_overlaps,
        );
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $make.await;
                tokio::time::timeout(
                    std::time::Duration::from_secs(120),
                    $crate::conformance::$name(&harness),
                )
                .await
                .expect(concat!(stringify!($name), " did not finish in 120s"));
            }
        )*
    };
}

fn key(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // Unique per test run so suites sharing a store never collide.
    format!(
        "conformance:{name}:{}:{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn try_lock_excludes_other_owners<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await, h.locker().await);
    let k = key("try");
    let held = a
        .try_lock(&k, LONG)
        .await
        .expect("try_lock")
        .expect("free key");
    assert!(b.try_lock(&k, LONG).await.expect("try_lock").is_none());
    assert!(
        a.try_lock(&k, LONG).await.expect("try_lock").is_none(),
        "locks are not re-entrant"
    );
    held.release().await.expect("release");
    let next = b.try_lock(&k, LONG).await.expect("try_lock");
    assert!(next.is_some(), "a released key is free");
    next.expect("checked").release().await.expect("release");
}

pub async fn acquire_waits_and_wakes_promptly_on_release<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await, h.locker().await);
    let k = key("wake");
    let held = a.acquire(&k, LONG).await.expect("acquire");
    let waiter = tokio::spawn({
        let k = k.clone();
        async move { b.acquire(&k, LONG).await.map(|g| (g, Instant::now())) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiter.is_finished(),
        "acquire must wait while the key is held"
    );
    let released_at = Instant::now();
    held.release().await.expect("release");
    let (guard, acquired_at) = tokio::time::timeout(PROMPT, waiter)
        .await
        .expect("the waiter must be woken by the release, not by the ttl")
        .expect("task")
        .expect("acquire");
    assert!(acquired_at >= released_at);
    guard.release().await.expect("release");
}

pub async fn abandoned_lock_expires_after_its_ttl<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await, h.locker().await);
    let k = key("expire");
    let ttl = Duration::from_millis(400);
    let start = Instant::now();
    let abandoned = a.acquire(&k, ttl).await.expect("acquire");
    // A crashed holder: the guard never releases.
    std::mem::forget(abandoned);
    let guard = tokio::time::timeout(ttl + PROMPT, b.acquire(&k, LONG))
        .await
        .expect("an abandoned lock must free itself after its ttl")
        .expect("acquire");
    assert!(
        start.elapsed() >= ttl - Duration::from_millis(50),
        "taken over after {:?}, before the {ttl:?} lease ran out",
        start.elapsed()
    );
    guard.release().await.expect("release");
}

pub async fn only_the_owner_can_release<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await, h.locker().await);
    let k = key("owner");
    let held = a.acquire(&k, LONG).await.expect("acquire");
    assert!(matches!(b.release(&k).await, Err(LockError::NotHeld)));
    assert!(
        b.try_lock(&k, LONG).await.expect("try_lock").is_none(),
        "a stranger's release must not free the lock"
    );
    held.release().await.expect("the owner's release works");
}

pub async fn release_by_key_frees_what_the_locker_holds<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await, h.locker().await);
    let k = key("by-key");
    let guard = a.acquire(&k, LONG).await.expect("acquire");
    assert_eq!(a.held_count(), 1);
    // Already waiting when the release comes.
    let lost = tokio::spawn(guard.lost());
    tokio::time::sleep(Duration::from_millis(20)).await;
    a.clone()
        .release(&k)
        .await
        .expect("a clone releases its owner's lock");
    assert_eq!(a.held_count(), 0);
    tokio::time::timeout(PROMPT, lost)
        .await
        .expect("lost() must fire when the lock is released by key")
        .expect("lost() task");
    assert!(guard.is_lost());
    assert!(matches!(a.release(&k).await, Err(LockError::NotHeld)));
    assert!(matches!(guard.release().await, Err(LockError::NotHeld)));
    let next = b.try_lock(&k, LONG).await.expect("try_lock");
    next.expect("released by key")
        .release()
        .await
        .expect("release");
}

pub async fn dropping_a_guard_releases<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await, h.locker().await);
    let k = key("drop");
    drop(a.acquire(&k, LONG).await.expect("acquire"));
    let guard = tokio::time::timeout(PROMPT, b.acquire(&k, LONG))
        .await
        .expect("a dropped guard must release well before its ttl")
        .expect("acquire");
    guard.release().await.expect("release");
    assert_eq!(a.held_count(), 0);
}

pub async fn fences_increase_strictly_per_key<H: Harness>(h: &H) {
    let lockers = [h.locker().await, h.locker().await, h.locker().await];
    let k = key("fence");
    let mut last = 0;
    for round in 0..30 {
        let guard = lockers[round % 3].acquire(&k, LONG).await.expect("acquire");
        assert!(guard.fence() > last, "fence {} after {last}", guard.fence());
        last = guard.fence();
        guard.release().await.expect("release");
    }
    // A takeover after expiry gets a higher fence too.
    let stale = lockers[0]
        .acquire(&k, Duration::from_millis(100))
        .await
        .expect("acquire");
    let stale_fence = stale.fence();
    std::mem::forget(stale);
    let next = lockers[1].acquire(&k, LONG).await.expect("acquire");
    assert!(next.fence() > stale_fence);
    next.release().await.expect("release");
}

pub async fn cancelled_waiters_leave_nothing_behind<H: Harness>(h: &H) {
    let (a, b, c) = (h.locker().await, h.locker().await, h.locker().await);
    let k = key("cancel");
    let held = a.acquire(&k, LONG).await.expect("acquire");
    for _ in 0..5 {
        let waited = tokio::time::timeout(Duration::from_millis(50), b.acquire(&k, LONG)).await;
        assert!(
            waited.is_err(),
            "the key is held: acquire must still be waiting"
        );
    }
    assert_eq!(
        b.queued_keys(),
        0,
        "a cancelled waiter leaves no queue entry"
    );
    held.release().await.expect("release");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let next = c.try_lock(&k, LONG).await.expect("try_lock");
    assert!(next.is_some(), "no cancelled waiter may hold the key");
    next.expect("checked").release().await.expect("release");
    assert_eq!(b.held_count(), 0);
}

pub async fn cancelled_requests_leave_no_lock<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await, h.locker().await);
    let k = key("cancel-mid");
    // Cut acquisitions off at every point of their request to the store:
    // after a given number of polls, then after a given time.
    for polls in 1..=30 {
        let mut acquire = std::pin::pin!(a.acquire(&k, LONG));
        for _ in 0..polls {
            if let std::task::Poll::Ready(result) = futures_util::poll!(acquire.as_mut()) {
                result.expect("acquire").release().await.expect("release");
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    for step in 0..20u64 {
        let cut = Duration::from_micros(step * 100);
        if let Ok(Ok(guard)) = tokio::time::timeout(cut, a.acquire(&k, LONG)).await {
            guard.release().await.expect("release");
        }
    }
    let deadline = Instant::now() + PROMPT;
    loop {
        if let Some(guard) = b.try_lock(&k, LONG).await.expect("try_lock") {
            guard.release().await.expect("release");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a cancelled acquire left the key locked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.held_count(), 0);
    assert_eq!(a.queued_keys(), 0);
}

pub async fn invalid_input_is_refused_and_changes_nothing<H: Harness>(h: &H) {
    let a = h.locker().await;
    let before = h.stored_locks().await;
    let long_key = "k".repeat(tower_lock::MAX_KEY_LEN + 1);
    for bad in ["", long_key.as_str()] {
        assert!(matches!(
            a.acquire(bad, LONG).await,
            Err(LockError::InvalidKey { .. })
        ));
        assert!(matches!(
            a.try_lock(bad, LONG).await,
            Err(LockError::InvalidKey { .. })
        ));
        assert!(matches!(
            a.release(bad).await,
            Err(LockError::InvalidKey { .. })
        ));
    }
    let k = key("bad-ttl");
    for ttl in [
        Duration::ZERO,
        Duration::from_micros(10),
        tower_lock::MAX_TTL * 2,
    ] {
        assert!(matches!(
            a.acquire(&k, ttl).await,
            Err(LockError::InvalidTtl { .. })
        ));
        assert!(matches!(
            a.try_lock(&k, ttl).await,
            Err(LockError::InvalidTtl { .. })
        ));
    }
    assert_eq!(
        h.stored_locks().await,
        before,
        "refused input must change nothing"
    );
    assert_eq!(a.held_count(), 0);
    let guard = a.acquire(&k, LONG).await.expect("the key itself was fine");
    assert!(matches!(
        guard.extend(Duration::ZERO).await,
        Err(LockError::InvalidTtl { .. })
    ));
    guard.release().await.expect("release");
}

pub async fn keys_with_any_characters_are_distinct_locks<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await, h.locker().await);
    let base = key("chars");
    let suffixes = [
        " space", "_space", "*", "?", "[", "]", ":", "{}", "{tag}", "\n", "\r\n", "é", "e\u{301}",
        "ключ", "🔒", ".", "..", "/", "-", "=", "%2A", "\0", "\\", "\"'", "$", ">",
    ];
    let keys: Vec<String> = suffixes.iter().map(|s| format!("{base}{s}")).collect();
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), keys.len());
    let mut guards = Vec::new();
    for k in &keys {
        let guard = a.try_lock(k, LONG).await.expect("try_lock");
        guards.push(guard.unwrap_or_else(|| panic!("{k:?} collided with another key")));
    }
    for k in &keys {
        assert!(
            b.try_lock(k, LONG).await.expect("try_lock").is_none(),
            "{k:?}"
        );
    }
    let mut longest = base.clone();
    while longest.len() + 'é'.len_utf8() <= tower_lock::MAX_KEY_LEN {
        longest.push('é');
    }
    guards.push(
        a.try_lock(&longest, LONG)
            .await
            .expect("longest key")
            .expect("free"),
    );
    for guard in guards {
        guard.release().await.expect("release");
    }
}

pub async fn release_after_lease_loss_reports_lost_and_spares_the_new_holder<H: Harness>(h: &H) {
    let (a, b, c) = (h.locker().await, h.locker().await, h.locker().await);
    let k = key("lost");
    let stale = a
        .acquire(&k, Duration::from_millis(150))
        .await
        .expect("acquire");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(stale.is_lost());
    let current = b.acquire(&k, LONG).await.expect("acquire after expiry");
    assert!(current.fence() > stale.fence());
    assert!(matches!(stale.release().await, Err(LockError::Lost)));
    assert!(
        c.try_lock(&k, LONG).await.expect("try_lock").is_none(),
        "a stale holder's release must not free the new holder's lock"
    );
    current.release().await.expect("release");
}

pub async fn renewal_keeps_the_lease_past_its_ttl<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await.auto_renew(true), h.locker().await);
    let k = key("renew");
    let ttl = Duration::from_millis(300);
    let guard = a.acquire(&k, ttl).await.expect("acquire");
    for _ in 0..8 {
        tokio::time::sleep(ttl / 2).await;
        assert!(
            b.try_lock(&k, LONG).await.expect("try_lock").is_none(),
            "renewed lease must hold"
        );
        assert!(!guard.is_lost());
    }
    guard
        .release()
        .await
        .expect("a renewed lease is still ours");
}

pub async fn lost_signal_fires_when_the_lease_runs_out<H: Harness>(h: &H) {
    let a = h.locker().await;
    let k = key("lost-signal");
    let ttl = Duration::from_millis(200);
    let guard = a.acquire(&k, ttl).await.expect("acquire");
    let lost = guard.lost();
    assert!(!guard.is_lost());
    tokio::time::timeout(ttl + PROMPT, lost)
        .await
        .expect("lost() must fire once the lease is over");
    assert!(guard.is_lost());
    let _ = guard.release().await;
}

pub async fn contention_loses_no_update_and_never_overlaps<H: Harness>(h: &H) {
    const LOCKERS: usize = 8;
    const TASKS: usize = 64;
    const ROUNDS: usize = 200;
    let mut lockers = Vec::new();
    for _ in 0..LOCKERS {
        lockers.push(h.locker().await);
    }
    let k = key("contend");
    let checker = Arc::new(OverlapChecker::default());
    // The shared resource: a non-atomic read, yield, write.
    let counter = Arc::new(std::sync::Mutex::new(0u64));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (locker, k) = (lockers[task % LOCKERS].clone(), k.clone());
            let (checker, counter) = (checker.clone(), counter.clone());
            tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let guard = locker.acquire(&k, LONG).await.expect("acquire");
                    let section = checker.enter(guard.fence());
                    let read = *counter.lock().expect("counter");
                    tokio::task::yield_now().await;
                    *counter.lock().expect("counter") = read + 1;
                    drop(section);
                    guard.release().await.expect("release");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let total = *counter.lock().expect("counter");
    assert_eq!(
        total,
        (TASKS * ROUNDS) as u64,
        "lost updates: {}",
        (TASKS * ROUNDS) as u64 - total
    );
    checker.assert_exclusive(TASKS * ROUNDS);
    for locker in &lockers {
        assert_eq!(locker.held_count(), 0);
        assert_eq!(locker.queued_keys(), 0);
    }
    let deadline = Instant::now() + PROMPT;
    while h.stored_locks().await != 0 {
        assert!(
            Instant::now() < deadline,
            "released locks left entries in the store"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
