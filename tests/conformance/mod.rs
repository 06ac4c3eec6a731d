//! The conformance suite every backend must pass.
//!
//! A test file provides a [`Harness`] (how to make independent lockers over
//! one store, and how to count what the store still holds) and expands
//! [`conformance_suite!`] with it; each check then runs as its own test.
#![allow(dead_code)]

pub mod adversary;
pub mod counting;
pub mod election;
pub mod overlap;
pub mod shared;

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tower_lock::{
    BACKOFF_MAX, LockError, Locker,
    backend::{Lease, LeaseKind, Token},
};

// Not every test binary runs the adversary's checks.
#[allow(unused_imports)]
pub use adversary::*;
pub use counting::Counting;
// Not every test binary runs the election checks.
#[allow(unused_imports)]
pub use election::*;
pub use overlap::OverlapChecker;
// Not every test binary runs the shared checks.
#[allow(unused_imports)]
pub use shared::*;

/// A store under test.
pub trait Harness: Send + Sync + 'static {
    /// A new owner over the shared store (a new `Locker`, possibly on its own
    /// connection): locks it takes belong to it alone.
    fn locker(&self) -> impl std::future::Future<Output = Locker> + Send;

    /// How many lock entries the store still holds, fence counters aside.
    fn stored_locks(&self) -> impl std::future::Future<Output = usize> + Send;

    /// What else the store or its backends still keep for keys nobody
    /// holds or waits for (waiter queues, wake-up registrations): checked
    /// to be empty after every check of the suite.
    fn leftovers(&self) -> impl std::future::Future<Output = Vec<String>> + Send {
        async { Vec::new() }
    }

    /// Whether a waiter measures another's lease from when it first saw it
    /// (NATS 2.9, which has no per-key expiry), rather than the store
    /// ending it at its ttl.
    fn measures_from_first_sight(&self) -> bool {
        false
    }

    /// `locker`'s process crashed (a check played it): it is not asked what
    /// it left behind.
    fn crashed(&self, _locker: &Locker) {}

    /// Plays a principal who may publish on the store's server but holds
    /// nothing: sends forged messages about `key` on every channel or
    /// subject the store's backends listen to (release announcements, grant
    /// and change notices, slot hints), with payloads chosen to make a
    /// waiter grant, create or delete something, and replays of messages
    /// the backends sent. Returns how many it sent: 0 for a store that
    /// nobody outside the process can write to.
    fn forge(&self, _key: &str) -> impl std::future::Future<Output = usize> + Send {
        async { 0 }
    }
}

/// A harness that keeps every locker it made, so that after a check each
/// can be asked what it still queues or renews.
pub struct Tracked<H> {
    inner: H,
    made: std::sync::Mutex<Vec<Locker>>,
}

impl<H> Tracked<H> {
    pub fn new(inner: H) -> Self {
        Tracked {
            inner,
            made: std::sync::Mutex::default(),
        }
    }
}

impl<H: Harness> Harness for Tracked<H> {
    async fn locker(&self) -> Locker {
        let locker = self.inner.locker().await;
        self.made.lock().expect("lockers").push(locker.clone());
        locker
    }

    async fn stored_locks(&self) -> usize {
        self.inner.stored_locks().await
    }

    async fn leftovers(&self) -> Vec<String> {
        let mut left = self.inner.leftovers().await;
        let made = self.made.lock().expect("lockers").clone();
        // Leases are not counted: checks that play a crashed holder forget
        // its guard, and what they hold is checked where they release.
        for (i, locker) in made.iter().enumerate() {
            let (queued, renewing) = (locker.queued_keys(), locker.renewing_count());
            if queued + renewing > 0 {
                left.push(format!(
                    "locker {i}: {queued} queued keys, {renewing} renewals"
                ));
            }
        }
        left
    }

    fn measures_from_first_sight(&self) -> bool {
        self.inner.measures_from_first_sight()
    }

    fn crashed(&self, locker: &Locker) {
        let mut made = self.made.lock().expect("lockers");
        made.retain(|kept| !Arc::ptr_eq(kept.backend(), locker.backend()));
    }

    async fn forge(&self, key: &str) -> usize {
        self.inner.forge(key).await
    }
}

/// Waits until the harness reports no leftovers.
pub async fn assert_no_leftovers<H: Harness>(h: &H) {
    let deadline = Instant::now() + PROMPT;
    loop {
        let left = h.leftovers().await;
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the store holds no lock: releases reach every node of a
/// replicated store (a bus) a moment after the releaser's.
pub async fn assert_store_empties<H: Harness>(h: &H) {
    let deadline = Instant::now() + PROMPT;
    while h.stored_locks().await != 0 {
        assert!(
            Instant::now() < deadline,
            "released locks left entries in the store"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    // A store that treats every lease kind as exclusive (which the backend
    // contract allows): every check but those of sharing.
    (exclusive $make:expr) => {
        $crate::conformance_suite!(@tests $make;
            try_lock_excludes_other_owners,
            acquire_waits_and_wakes_promptly_on_release,
            a_release_between_a_busy_try_and_the_wait_is_not_missed,
            the_store_refuses_a_stale_or_foreign_token,
            the_holder_counts_its_lease_lost_before_the_store_hands_it_on,
            bad_input_never_reaches_the_store,
            the_shortest_and_longest_ttls_are_accepted,
            abandoned_lock_expires_after_its_ttl,
            a_waiter_before_the_expiry_takes_over_at_the_expiry,
            only_the_owner_can_release,
            release_by_key_frees_what_the_locker_holds,
            dropping_a_guard_releases,
            shutdown_releases_everything_and_refuses_more,
            fences_increase_strictly_per_key,
            a_retried_try_with_its_own_token_is_granted_again,
            cancelled_waiters_leave_nothing_behind,
            cancelled_requests_leave_no_lock,
            invalid_input_is_refused_and_changes_nothing,
            keys_with_any_characters_are_distinct_locks,
            release_after_lease_loss_reports_lost_and_spares_the_new_holder,
            renewal_keeps_the_lease_past_its_ttl,
            lost_signal_fires_when_the_lease_runs_out,
            contention_loses_no_update_and_never_overlaps,
            a_set_with_a_busy_key_takes_nothing,
            a_dropped_set_leaves_nothing_behind,
            a_set_is_checked_first_and_takes_each_key_once,
            a_set_reports_a_lost_lease,
            a_set_keeps_its_first_keys_while_it_waits,
            acquire_all_renews_nothing_once_it_returns,
            transfers_in_opposite_orders_never_deadlock_or_lose_money,
            a_value_is_stored_with_its_lease_and_kept_by_renewal,
            a_valued_grant_wakes_subscribers_and_a_plain_one_does_not,
            one_candidate_leads_at_a_time_with_rising_terms,
            observers_see_every_change_of_leader,
            an_observer_starts_from_a_read_of_the_store,
            a_crashed_leader_is_replaced_after_its_ttl,
            election_names_never_meet_lock_keys,
            a_job_that_resigns_ends_its_run,
            another_token_with_the_holders_revision_changes_nothing,
            forged_messages_grant_create_and_delete_nothing,
        );
    };
    ($make:expr) => {
        $crate::conformance_suite!(exclusive $make);
        $crate::conformance_suite!(@tests $make;
            shared_holders_coexist_and_an_exclusive_holder_excludes_all,
            readers_share_and_writers_exclude_under_contention,
            a_stream_of_readers_does_not_starve_a_writer,
            permits_are_never_exceeded_and_are_all_used,
            another_permit_count_is_refused_naming_both,
            a_locker_holding_several_leases_on_a_key_releases_them_all,
            abandoned_shared_and_counted_leases_expire_after_their_ttl,
            dropped_shared_and_counted_futures_leave_nothing,
            shared_and_counted_leases_renew_and_report_loss,
            another_token_with_a_shared_or_counted_holders_revision_changes_nothing,
            an_unanswered_shared_or_counted_lease_is_released_by_its_token,
            a_switch_between_kinds_is_woken,
        );
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $crate::conformance::Tracked::new($make.await);
                tokio::time::timeout(std::time::Duration::from_secs(120), async {
                    $crate::conformance::$name(&harness).await;
                    $crate::conformance::assert_no_leftovers(&harness).await;
                })
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

/// A waiter over `store` (which counts its tries), waiting long enough that
/// its backoff (or a queued waiter's check-back) is at its longest step.
async fn waiter_at_its_longest_step(
    store: Arc<dyn tower_lock::backend::Backend>,
    k: &str,
) -> (
    Arc<Counting>,
    tokio::task::JoinHandle<Result<tower_lock::LockGuard, LockError>>,
) {
    kind_waiter_at_its_longest_step(store, k, LeaseKind::Exclusive).await
}

/// Takes `k` on `locker` with a lease of `kind`.
pub async fn acquire_kind(
    locker: &Locker,
    k: &str,
    kind: LeaseKind,
) -> Result<tower_lock::LockGuard, LockError> {
    match kind {
        LeaseKind::Shared => locker.acquire_shared(k, LONG).await,
        LeaseKind::Counted { permits } => locker.acquire_permit(k, permits, LONG).await,
        _ => locker.acquire(k, LONG).await,
    }
}

/// [`waiter_at_its_longest_step`] for a lease of `kind`.
async fn kind_waiter_at_its_longest_step(
    store: Arc<dyn tower_lock::backend::Backend>,
    k: &str,
    kind: LeaseKind,
) -> (
    Arc<Counting>,
    tokio::task::JoinHandle<Result<tower_lock::LockGuard, LockError>>,
) {
    let counting = Counting::new(store);
    let waiter = Locker::from_arc(counting.clone());
    let task = tokio::spawn({
        let k = k.to_owned();
        async move { acquire_kind(&waiter, &k, kind).await }
    });
    // 5 ms doubling reaches 500 ms after about 0.6 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !task.is_finished(),
        "acquire must wait while the key is held"
    );
    (counting, task)
}

/// The winning try came from the release's wake-up, not from the backoff
/// timer: it followed the busy try before it by far less than a step.
fn assert_woken(counting: &Counting) {
    let gap = counting.last_gap();
    assert!(
        gap < BACKOFF_MAX / 2,
        "the winning try came {gap:?} after the busy one before it: the \
         backoff timer found the free lock, no wake-up did"
    );
}

/// `holder` takes `k`; a waiter over `store` waits until it is on its
/// longest backoff step; `holder` releases just after one of the waiter's
/// busy tries, so the timer's next try is a whole step away: the waiter's
/// winning try must come from the release's wake-up.
pub async fn assert_hand_off_is_woken(
    holder: &Locker,
    store: Arc<dyn tower_lock::backend::Backend>,
    k: &str,
) {
    assert_kind_hand_off_is_woken(holder, LeaseKind::Exclusive, store, LeaseKind::Exclusive, k)
        .await;
}

/// [`assert_hand_off_is_woken`] from a holder of `held_kind` to a waiter of
/// `waiter_kind`.
pub async fn assert_kind_hand_off_is_woken(
    holder: &Locker,
    held_kind: LeaseKind,
    store: Arc<dyn tower_lock::backend::Backend>,
    waiter_kind: LeaseKind,
    k: &str,
) {
    let held = acquire_kind(holder, k, held_kind).await.expect("acquire");
    let (counting, waiter) = kind_waiter_at_its_longest_step(store, k, waiter_kind).await;
    counting.until_tries(counting.tries() + 1).await;
    held.release().await.expect("release");
    let guard = tokio::time::timeout(PROMPT, waiter)
        .await
        .expect("the waiter must be woken by the release, not by the ttl")
        .expect("task")
        .expect("acquire");
    assert_woken(&counting);
    guard.release().await.expect("release");
}

pub async fn acquire_waits_and_wakes_promptly_on_release<H: Harness>(h: &H) {
    let holder = h.locker().await;
    let store = h.locker().await.backend().clone();
    assert_hand_off_is_woken(&holder, store, &key("wake")).await;
}

/// The release lands after the waiter's try found the key busy and before
/// it waits: its subscription, made before the try, still wakes it.
pub async fn a_release_between_a_busy_try_and_the_wait_is_not_missed<H: Harness>(h: &H) {
    let a = h.locker().await;
    let k = key("between");
    let held = a.acquire(&k, LONG).await.expect("acquire");
    let store = h.locker().await.backend().clone();
    let (counting, waiter) = waiter_at_its_longest_step(store, &k).await;
    counting.after_next_busy(move || drop(held));
    let guard = tokio::time::timeout(PROMPT, waiter)
        .await
        .expect("the release between the try and the wait was missed")
        .expect("task")
        .expect("acquire");
    assert_woken(&counting);
    guard.release().await.expect("release");
}

/// Ownership is the store's to check, not only the locker's records: a
/// holder whose lease was taken over, and a token that never held the key,
/// change nothing there.
pub async fn the_store_refuses_a_stale_or_foreign_token<H: Harness>(h: &H) {
    let (a, b, c) = (h.locker().await, h.locker().await, h.locker().await);
    let k = key("stale");
    let stale_ttl = Duration::from_millis(200);
    let stale = a.acquire(&k, stale_ttl).await.expect("acquire");
    tokio::time::sleep(stale_ttl * 2).await;
    let current = b.acquire(&k, LONG).await.expect("acquire after expiry");
    assert!(matches!(stale.extend(LONG).await, Err(LockError::Lost)));
    // A token that never held the key (with a revision no store issued:
    // NATS deletes by revision, which only the writer of it knows).
    let foreign = Lease::granted(
        Token::new(),
        LeaseKind::Exclusive,
        current.fence(),
        u64::MAX,
    );
    let store = c.backend();
    assert_eq!(
        store.extend(&k, &foreign, LONG).await.expect("extend"),
        None
    );
    assert!(!store.release(&k, &foreign).await.expect("release"));
    assert!(matches!(stale.release().await, Err(LockError::Lost)));
    // Past the stale lease's ttl again: the current holder still holds.
    tokio::time::sleep(stale_ttl * 2).await;
    assert!(
        c.try_lock(&k, LONG).await.expect("try_lock").is_none(),
        "a stale or foreign token freed or shortened the current lease"
    );
    let holding = store.holder(&k).await.expect("holder").expect("held");
    assert_eq!(holding.fence, current.fence());
    current
        .release()
        .await
        .expect("the current lease is intact");
    // Read where the release was made: other nodes of a bus apply it a
    // moment later.
    assert!(b.backend().holder(&k).await.expect("holder").is_none());
}

/// The holder stops counting on its lease no later than the store lets
/// anyone else take the key.
pub async fn the_holder_counts_its_lease_lost_before_the_store_hands_it_on<H: Harness>(h: &H) {
    let (holder, other) = (h.locker().await, h.locker().await);
    let k = key("handed-on");
    let ttl = Duration::from_millis(100);
    for round in 0..5 {
        let asked = Instant::now();
        let guard = holder.acquire(&k, ttl).await.expect("acquire");
        let taken = loop {
            if let Some(taken) = other.try_lock(&k, LONG).await.expect("try_lock") {
                break taken;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        assert!(
            asked.elapsed() >= ttl,
            "round {round}: handed on after {:?}",
            asked.elapsed()
        );
        assert!(
            guard.is_lost(),
            "round {round}: the store handed the key on while its holder still counted on it"
        );
        drop(guard);
        taken.release().await.expect("release");
    }
}

/// Bad input is refused by the locker: not one call reaches the store.
pub async fn bad_input_never_reaches_the_store<H: Harness>(h: &H) {
    let counting = Counting::new(h.locker().await.backend().clone());
    let a = Locker::from_arc(counting.clone());
    let long_key = "k".repeat(tower_lock::MAX_KEY_LEN + 1);
    for bad in ["", long_key.as_str()] {
        assert!(a.acquire(bad, LONG).await.is_err());
        assert!(a.try_lock(bad, LONG).await.is_err());
        assert!(a.acquire_timeout(bad, LONG, LONG).await.is_err());
        assert!(a.release(bad).await.is_err());
    }
    let k = key("bad-input");
    for ttl in [
        Duration::ZERO,
        Duration::from_micros(999),
        tower_lock::MAX_TTL + Duration::from_millis(1),
    ] {
        assert!(a.acquire(&k, ttl).await.is_err());
        assert!(a.try_lock(&k, ttl).await.is_err());
    }
    assert_eq!(counting.calls(), 0, "refused input reached the store");
    let guard = a.acquire(&k, LONG).await.expect("acquire");
    let before = counting.calls();
    assert!(guard.extend(Duration::ZERO).await.is_err());
    assert_eq!(
        counting.calls(),
        before,
        "a refused extension reached the store"
    );
    guard.release().await.expect("release");
}

/// The bounds are accepted by the real store, exactly.
pub async fn the_shortest_and_longest_ttls_are_accepted<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await, h.locker().await);
    let k = key("bounds");
    let longest = a
        .acquire(&k, tower_lock::MAX_TTL)
        .await
        .expect("the longest ttl is accepted");
    assert!(b.try_lock(&k, LONG).await.expect("try_lock").is_none());
    let holding = a.backend().holder(&k).await.expect("holder").expect("held");
    let left = holding.remaining.unwrap_or(tower_lock::MAX_TTL);
    assert!(
        left > tower_lock::MAX_TTL - Duration::from_secs(60),
        "{left:?}"
    );
    longest.release().await.expect("release");
    let shortest = a
        .acquire(&k, tower_lock::MIN_TTL)
        .await
        .expect("the shortest ttl is accepted");
    drop(shortest);
    let next = tokio::time::timeout(PROMPT, b.acquire(&k, LONG))
        .await
        .expect("a 1 ms lease ends")
        .expect("acquire");
    next.release().await.expect("release");
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

/// A waiter that starts while an abandoned lease still runs sleeps no
/// longer than the lease it was told of: it takes over at the expiry (as
/// its store measures it), not a backoff step later.
pub async fn a_waiter_before_the_expiry_takes_over_at_the_expiry<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await, h.locker().await);
    let k = key("before-expiry");
    let ttl = Duration::from_secs(1);
    let taken = Instant::now();
    std::mem::forget(a.acquire(&k, ttl).await.expect("acquire"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let guard = b.acquire(&k, LONG).await.expect("acquire");
    let from = if h.measures_from_first_sight() {
        started
    } else {
        taken
    };
    let after = from.elapsed();
    assert!(
        after >= ttl - Duration::from_millis(50),
        "taken over after {after:?}"
    );
    assert!(
        after <= ttl + Duration::from_millis(150),
        "taken over {after:?} after the lease began: the waiter overslept its expiry"
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
        // Exact as a JSON number (and so in an `i64` column too).
        assert!(guard.fence() < 1 << 53, "fence {} past 2^53", guard.fence());
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

/// A try whose answer was lost is sent again with the same token: the store
/// grants it again rather than count it a stranger (which would orphan the
/// lock for its ttl), and a release by that token alone, with no fence or
/// revision known, frees it.
pub async fn a_retried_try_with_its_own_token_is_granted_again<H: Harness>(h: &H) {
    use tower_lock::backend::{AcquireRequest, Attempt};

    let locker = h.locker().await;
    let backend = locker.backend().clone();
    let k = key("retry");
    let token = Token::new();
    let request = AcquireRequest::new(&k, token, LONG);
    let first = backend.try_acquire(&request).await.expect("first try");
    let second = backend.try_acquire(&request).await.expect("retried try");
    let (Attempt::Acquired { fence: a, .. }, Attempt::Acquired { fence: b, .. }) = (first, second)
    else {
        panic!("a retry was refused: {first:?} then {second:?}");
    };
    assert_eq!(b, a, "the retry's fence changed");
    let stranger = AcquireRequest::new(&k, Token::new(), LONG);
    assert!(
        matches!(
            backend
                .try_acquire(&stranger)
                .await
                .expect("stranger's try"),
            Attempt::Busy { .. }
        ),
        "another token was granted the held key"
    );
    let by_token = Lease::unanswered(token, LeaseKind::Exclusive);
    assert!(
        backend.release(&k, &by_token).await.expect("release"),
        "a release by token alone did not free the key"
    );
    let taken = h.locker().await.try_lock(&k, LONG).await.expect("try_lock");
    taken
        .expect("the key is free after the release by token")
        .release()
        .await
        .expect("release");
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
    // A turn reserved for a cancelled waiter's backend is passed on: the key
    // comes free without anyone's ttl running out.
    let deadline = Instant::now() + PROMPT;
    let next = loop {
        if let Some(next) = c.try_lock(&k, LONG).await.expect("try_lock") {
            break next;
        }
        assert!(
            Instant::now() < deadline,
            "a cancelled waiter kept the key from others"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    next.release().await.expect("release");
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
    while longest.len() < tower_lock::MAX_KEY_LEN {
        longest.push('x');
    }
    assert_eq!(longest.len(), tower_lock::MAX_KEY_LEN);
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
    // Renewed every 300 ms: a loaded machine has ample slack.
    let ttl = Duration::from_millis(900);
    let guard = a.acquire(&k, ttl).await.expect("acquire");
    for _ in 0..6 {
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
    // Once someone else holds the key, the lost lease's release says so.
    let other = h.locker().await;
    let next = tokio::time::timeout(PROMPT, other.acquire(&k, LONG))
        .await
        .expect("the lost lease frees the key")
        .expect("acquire");
    assert!(matches!(guard.release().await, Err(LockError::Lost)));
    next.release().await.expect("release");
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
    assert_store_empties(h).await;
}

/// A set is all or nothing: one busy key, and the keys taken before it are
/// given back; nothing else is left held or queued.
pub async fn a_set_with_a_busy_key_takes_nothing<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await, h.locker().await);
    let keys = [key("set-a"), key("set-b"), key("set-c")];
    let busy = b.acquire(&keys[1], LONG).await.expect("acquire");
    let tried = a.try_lock_all(&keys, LONG).await.expect("try_lock_all");
    assert!(tried.is_none(), "a set with a busy key was granted");
    let waited = a
        .acquire_all_timeout(&keys, LONG, Duration::from_millis(50))
        .await;
    assert!(matches!(waited, Err(LockError::Busy { .. })), "{waited:?}");
    assert_eq!(a.held_count(), 0, "the locker kept keys of a refused set");
    for key in [&keys[0], &keys[2]] {
        let other = b.try_lock(key, LONG).await.expect("try_lock");
        other
            .expect("a key of the refused set is still held")
            .release()
            .await
            .expect("release");
    }
    busy.release().await.expect("release");
}

/// A dropped `acquire_all`, before its first key, between two, or after the
/// last, leaves nothing held or queued.
pub async fn a_dropped_set_leaves_nothing_behind<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await, h.locker().await);
    let keys = [key("drop-a"), key("drop-b"), key("drop-c")];
    for busy in 0..keys.len() {
        let held = b.acquire(&keys[busy], LONG).await.expect("acquire");
        // Waits on `busy` with the keys before it taken.
        let waited = tokio::time::timeout(Duration::from_millis(80), a.acquire_all(&keys, LONG));
        assert!(
            waited.await.is_err(),
            "the set was granted around a held key"
        );
        held.release().await.expect("release");
    }
    // Dropped at once, before it took anything.
    drop(a.acquire_all(&keys, LONG));
    // Taken whole, then dropped.
    let set = a.acquire_all(&keys, LONG).await.expect("acquire_all");
    assert_eq!(set.len(), keys.len());
    drop(set);
    for key in &keys {
        let taken = tokio::time::timeout(PROMPT, b.acquire(key, LONG))
            .await
            .expect("a key of a dropped set stayed held")
            .expect("acquire");
        taken.release().await.expect("release");
    }
}

/// One bad key refuses the whole set before anything is taken; a key named
/// twice is taken once; the order of the names does not matter.
pub async fn a_set_is_checked_first_and_takes_each_key_once<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await, h.locker().await);
    let k = key("set-once");
    let refused = a.acquire_all([k.as_str(), ""], LONG).await;
    assert!(
        matches!(refused, Err(LockError::InvalidKey { .. })),
        "{refused:?}"
    );
    assert_eq!(a.held_count(), 0, "a key of an invalid set was taken");
    let other = key("set-twice");
    let set = a
        .acquire_all([other.as_str(), k.as_str(), other.as_str()], LONG)
        .await
        .expect("acquire_all");
    assert_eq!(set.len(), 2);
    let mut sorted = [k.clone(), other.clone()];
    sorted.sort();
    assert_eq!(set.keys().collect::<Vec<_>>(), sorted);
    let fences: Vec<_> = set
        .fences()
        .map(|(key, fence)| (key.to_owned(), fence))
        .collect();
    assert_eq!(
        fences,
        sorted
            .iter()
            .map(|key| (key.clone(), set.fence(key).expect("held")))
            .collect::<Vec<_>>()
    );
    assert!(fences.iter().all(|(_, fence)| *fence > 0));
    assert_eq!(set.guard(&k).map(|guard| guard.key()), Some(k.as_str()));
    assert!(!set.is_empty() && !set.is_lost());
    assert!(format!("{set:?}").contains(&*k), "{set:?}");
    let none = a.acquire_all(Vec::<String>::new(), LONG).await;
    assert!(none.expect("an empty set").is_empty());
    assert!(b.try_lock(&k, LONG).await.expect("try_lock").is_none());
    set.release().await.expect("release");
    assert!(
        b.try_lock_all([&k, &other], LONG)
            .await
            .expect("try")
            .is_some()
    );
}

/// Transfers between accounts, half of them naming the keys the other way
/// round: none deadlocks, no money is made or lost, and no two holders of
/// one account ever overlap.
pub async fn transfers_in_opposite_orders_never_deadlock_or_lose_money<H: Harness>(h: &H) {
    const LOCKERS: usize = 4;
    const TASKS: usize = 16;
    const TRANSFERS: usize = 300;
    const ACCOUNTS: usize = 8;
    const START: i64 = 1_000;
    let mut lockers = Vec::new();
    for _ in 0..LOCKERS {
        lockers.push(h.locker().await);
    }
    let names: Arc<Vec<String>> =
        Arc::new((0..ACCOUNTS).map(|i| key(&format!("acct{i}"))).collect());
    let balances: Arc<Vec<std::sync::Mutex<i64>>> = Arc::new(
        (0..ACCOUNTS)
            .map(|_| std::sync::Mutex::new(START))
            .collect(),
    );
    let checkers: Arc<Vec<OverlapChecker>> =
        Arc::new((0..ACCOUNTS).map(|_| OverlapChecker::default()).collect());
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let locker = lockers[task % LOCKERS].clone();
            let (names, balances, checkers, next) = (
                names.clone(),
                balances.clone(),
                checkers.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if n >= TRANSFERS {
                        return;
                    }
                    let (from, to) = (n % ACCOUNTS, (n * 5 + 3) % ACCOUNTS);
                    let to = if to == from { (to + 1) % ACCOUNTS } else { to };
                    // Half of them name the keys the other way round.
                    let keys = if n.is_multiple_of(2) {
                        [&names[from], &names[to]]
                    } else {
                        [&names[to], &names[from]]
                    };
                    let set = locker.acquire_all(keys, LONG).await.expect("acquire_all");
                    let _sections = (
                        checkers[from].enter(set.fence(&names[from]).expect("from")),
                        checkers[to].enter(set.fence(&names[to]).expect("to")),
                    );
                    let read = |i: usize| *balances[i].lock().expect("balance");
                    let (a, b) = (read(from), read(to));
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    *balances[from].lock().expect("balance") = a - 7;
                    *balances[to].lock().expect("balance") = b + 7;
                    drop(_sections);
                    set.release().await.expect("release");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("transfer task");
    }
    let total: i64 = balances.iter().map(|b| *b.lock().expect("balance")).sum();
    assert_eq!(total, START * ACCOUNTS as i64, "money was made or lost");
    let sections: usize = checkers.iter().map(|c| c.sections().len()).sum();
    assert_eq!(sections, 2 * TRANSFERS);
    // One holder of an account at a time, in fence order.
    for checker in checkers.iter() {
        checker.assert_exclusive(checker.sections().len());
    }
}

/// A set whose lease runs out (no renewal) says so, and its release
/// reports the loss without touching the new holder.
pub async fn a_set_reports_a_lost_lease<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await, h.locker().await);
    let keys = [key("lost-set-a"), key("lost-set-b")];
    let ttl = Duration::from_millis(200);
    let set = a.acquire_all(&keys, ttl).await.expect("acquire_all");
    assert!(!set.is_lost());
    tokio::time::timeout(ttl + PROMPT, set.lost())
        .await
        .expect("lost() must fire once a lease is over");
    assert!(set.is_lost());
    let next = tokio::time::timeout(PROMPT, b.acquire(&keys[0], LONG))
        .await
        .expect("the lost lease frees the key")
        .expect("acquire");
    assert!(matches!(set.release().await, Err(LockError::Lost)));
    assert!(
        a.try_lock(&keys[0], LONG)
            .await
            .expect("try_lock")
            .is_none(),
        "the lost set's release freed the new holder's lock"
    );
    next.release().await.expect("release");
}

/// Keys a set already took are renewed while it waits for the rest, even on
/// a locker that does not renew: the set never comes back holding a lease
/// that ran down meanwhile.
pub async fn a_set_keeps_its_first_keys_while_it_waits<H: Harness>(h: &H) {
    let (a, b, c) = (h.locker().await, h.locker().await, h.locker().await);
    let (first, busy) = (key("keep-a"), key("keep-b"));
    let ttl = Duration::from_millis(600);
    let held = b.acquire(&busy, LONG).await.expect("acquire");
    let waiting = tokio::spawn({
        let keys = [first.clone(), busy.clone()];
        async move { a.acquire_all(&keys, ttl).await }
    });
    // Two leases long, looked at often: without renewal the first key's
    // lease is over, and with a gap in it another owner gets in.
    let until = Instant::now() + ttl * 2;
    while Instant::now() < until {
        tokio::time::sleep(ttl / 6).await;
        assert!(
            c.try_lock(&first, LONG).await.expect("try_lock").is_none(),
            "the first key was let go while the set waited"
        );
    }
    held.release().await.expect("release");
    let set = tokio::time::timeout(PROMPT, waiting)
        .await
        .expect("the set is taken once the key is free")
        .expect("task")
        .expect("acquire_all");
    assert!(
        !set.is_lost(),
        "the set came back with a lease that ran down"
    );
    set.release().await.expect("every lease was still held");
}

/// A set on a locker that does not renew keeps its first keys while it
/// waits, and renews nothing once `acquire_all` returns: its leases run out
/// one ttl after that at the latest, and the keys are free again.
pub async fn acquire_all_renews_nothing_once_it_returns<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await, h.locker().await);
    let keys = [key("stop-a"), key("stop-b")];
    let ttl = Duration::from_millis(600);
    let held = b.acquire(&keys[1], LONG).await.expect("acquire");
    let waiting = tokio::spawn({
        let (a, keys) = (a.clone(), keys.clone());
        async move { a.acquire_all(&keys, ttl).await }
    });
    // Past the first key's ttl: it renewed while the set waited.
    tokio::time::sleep(ttl * 3 / 2).await;
    held.release().await.expect("release");
    let set = tokio::time::timeout(PROMPT, waiting)
        .await
        .expect("the set is taken once the key is free")
        .expect("task")
        .expect("acquire_all");
    let returned = Instant::now();
    assert!(
        !set.is_lost(),
        "the first key ran down while the set waited"
    );
    assert_eq!(
        a.renewing_count(),
        0,
        "the set's leases are still scheduled"
    );
    tokio::time::timeout_at((returned + ttl + ttl / 4).into(), set.lost())
        .await
        .expect("a lease of the set was renewed after acquire_all returned");
    for key in &keys {
        let next = tokio::time::timeout(PROMPT, b.acquire(key, LONG))
            .await
            .expect("a lease of the set outlived its ttl in the store")
            .expect("acquire");
        next.release().await.expect("release");
    }
    assert!(matches!(set.release().await, Err(LockError::Lost)));
}

/// `Locker::shutdown` ends every lease of the locker and its clones (held,
/// renewing, in a set, dropped a moment ago) in the store before it
/// returns, fires their `lost()`, ends waits at once, refuses new locks, and
/// leaves another owner's lock alone.
pub async fn shutdown_releases_everything_and_refuses_more<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await, h.locker().await);
    let renewing = a.clone().auto_renew(true);
    let k = |name: &str| key(&format!("shutdown-{name}"));
    let (held_key, renewed_key, dropped_key, busy_key) =
        (k("held"), k("renewed"), k("dropped"), k("busy"));
    let set_keys = [k("set-1"), k("set-2")];

    let held = a.acquire(&held_key, LONG).await.expect("acquire");
    let renewed = renewing.acquire(&renewed_key, LONG).await.expect("acquire");
    let set = a.acquire_all(&set_keys, LONG).await.expect("acquire_all");
    let foreign = b.acquire(&busy_key, LONG).await.expect("acquire");
    let waiter = tokio::spawn({
        let (a, busy_key) = (a.clone(), busy_key.clone());
        async move { a.acquire(&busy_key, LONG).await }
    });
    let lost = held.lost();
    // Four leases of `a` and the other owner's.
    assert_eq!(h.stored_locks().await, 5);
    assert_eq!(renewing.renewing_count(), 1);
    // Released in the background on a networked store: shutdown waits for it.
    drop(a.acquire(&dropped_key, LONG).await.expect("acquire"));
    a.shutdown().await.expect("shutdown");
    assert!(a.is_shut_down() && renewing.is_shut_down());
    // At once, with no wait for a release on its way: shutdown waited.
    for free in [
        &held_key,
        &renewed_key,
        &dropped_key,
        &set_keys[0],
        &set_keys[1],
    ] {
        let guard = b.try_lock(free, LONG).await.expect("try_lock");
        let guard = guard.unwrap_or_else(|| panic!("{free} was left held by the shutdown"));
        guard.release().await.expect("release");
    }
    tokio::time::timeout(PROMPT, lost)
        .await
        .expect("lost() fires on shutdown");
    assert!(held.is_lost() && renewed.is_lost() && set.is_lost());
    let waited = tokio::time::timeout(PROMPT, waiter)
        .await
        .expect("a waiter ends at once")
        .expect("task");
    assert!(matches!(waited, Err(LockError::ShutDown)), "{waited:?}");
    assert_eq!(
        (a.held_count(), a.renewing_count(), a.queued_keys()),
        (0, 0, 0)
    );

    assert!(matches!(
        a.acquire(&held_key, LONG).await,
        Err(LockError::ShutDown)
    ));
    assert!(matches!(
        renewing.try_lock(&held_key, LONG).await,
        Err(LockError::ShutDown)
    ));
    assert!(matches!(
        a.try_lock_all(&set_keys, LONG).await,
        Err(LockError::ShutDown)
    ));
    assert!(matches!(held.release().await, Err(LockError::NotHeld)));
    drop((renewed, set));
    a.shutdown().await.expect("a second shutdown is a no-op");

    // Replicas of a bus apply events on their own tasks: one may lag an
    // instant.
    let deadline = Instant::now() + PROMPT;
    while h.stored_locks().await != 1 {
        assert!(
            Instant::now() < deadline,
            "{} locks stored",
            h.stored_locks().await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    foreign
        .release()
        .await
        .expect("the other owner's lock was left alone");

    // An owner whose only lease is a dropped guard's, released in the
    // background: shutdown returns once the store let go of it.
    let c = h.locker().await;
    let dropped_last = k("dropped-last");
    drop(c.acquire(&dropped_last, LONG).await.expect("acquire"));
    c.shutdown().await.expect("shutdown");
    let guard = b.try_lock(&dropped_last, LONG).await.expect("try_lock");
    guard
        .expect("shutdown waits for the releases of dropped guards")
        .release()
        .await
        .expect("release");
}
