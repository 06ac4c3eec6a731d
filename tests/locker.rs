//! The wait strategy and guard behaviour that `Locker` adds on top of any
//! backend: local FIFO queueing, one contender per process, wake-up
//! fallback, and releasing from drops in awkward places.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tower_lock::{
    BACKOFF_MAX, LockError, Locker,
    backend::{AcquireRequest, Attempt, Backend, Holding, Lease, Subscription},
    bus::LocalBus,
    memory::MemoryBackend,
};

const LONG: Duration = Duration::from_secs(30);

/// A `MemoryBackend` that counts the tries that reach it, and can withhold
/// wake-ups. It answers only asynchronously, like a networked store.
#[derive(Debug, Clone)]
struct Instrumented {
    store: MemoryBackend,
    tries: Arc<AtomicUsize>,
    extends: Arc<AtomicUsize>,
    wakeups: bool,
    /// Answers every extension with "no longer held", as a store does whose
    /// key was deleted or evicted under a live lease.
    refuse_extends: bool,
    /// How long each extension takes to reach the store; counted then.
    slow_extends: Option<Duration>,
}

impl Instrumented {
    fn new(store: MemoryBackend, wakeups: bool) -> Self {
        Instrumented {
            store,
            tries: Arc::default(),
            extends: Arc::default(),
            wakeups,
            refuse_extends: false,
            slow_extends: None,
        }
    }
}

#[async_trait::async_trait]
impl Backend for Instrumented {
    async fn try_acquire(&self, request: &AcquireRequest<'_>) -> Result<Attempt, LockError> {
        self.tries.fetch_add(1, Ordering::SeqCst);
        self.store.try_acquire(request).await
    }

    async fn extend(
        &self,
        key: &str,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Option<u64>, LockError> {
        if let Some(delay) = self.slow_extends {
            tokio::time::sleep(delay).await;
        }
        self.extends.fetch_add(1, Ordering::SeqCst);
        if self.refuse_extends {
            return Ok(None);
        }
        self.store.extend(key, lease, ttl).await
    }

    async fn release(&self, key: &str, lease: &Lease) -> Result<bool, LockError> {
        self.store.release(key, lease).await
    }

    async fn subscribe(&self, key: &str) -> Result<Subscription, LockError> {
        if self.wakeups {
            self.store.subscribe(key).await
        } else {
            Ok(Subscription::never())
        }
    }

    async fn holder(&self, key: &str) -> Result<Option<Holding>, LockError> {
        self.store.holder(key).await
    }
}

/// On one thread, a spawned waiter has joined the queue once it yields back:
/// the order is set by the queue, not by sleeps.
#[tokio::test(flavor = "current_thread")]
async fn local_waiters_are_served_in_fifo_order() {
    let locker = Locker::in_memory();
    let held = locker.acquire("fifo", LONG).await.expect("acquire");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..10 {
        let (locker, order) = (locker.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let guard = locker.acquire("fifo", LONG).await.expect("acquire");
            order.lock().expect("order").push(i);
            guard.release().await.expect("release");
        }));
        // Waiter `i` runs until it waits in the queue, before `i + 1` starts.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
    held.release().await.expect("release");
    for waiter in waiters {
        waiter.await.expect("waiter");
    }
    assert_eq!(*order.lock().expect("order"), (0..10).collect::<Vec<_>>());
    assert_eq!(locker.queued_keys(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_sends_one_contender_to_the_store() {
    let store = MemoryBackend::new();
    let holder = Locker::new(store.clone());
    let backend = Instrumented::new(store.clone(), true);
    let tries = backend.tries.clone();
    let waiters_locker = Locker::new(backend);
    let held = holder.acquire("herd", LONG).await.expect("acquire");

    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let locker = waiters_locker.clone();
            tokio::spawn(async move {
                let guard = locker.acquire("herd", LONG).await.expect("acquire");
                guard.release().await.expect("release");
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = tries.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let during = tries.load(Ordering::SeqCst) - before;
    // One contender backing off 5, 10, … 500 ms tries a handful of times in
    // 400 ms; twenty contenders would try at least twenty times.
    assert!(during < 10, "{during} tries reached the store in 400 ms");
    assert_eq!(store.watched_keys(), 1, "one wake-up subscription per key");

    held.release().await.expect("release");
    for waiter in waiters {
        waiter.await.expect("waiter");
    }
    assert_eq!(store.len(), 0);
    assert_eq!(store.watched_keys(), 0);
    assert_eq!(waiters_locker.queued_keys(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wake_ups_a_waiter_still_gets_the_lock_within_a_backoff_step() {
    let store = MemoryBackend::new();
    let holder = Locker::new(store.clone());
    let waiter = Locker::new(Instrumented::new(store, false));
    let held = holder.acquire("deaf", LONG).await.expect("acquire");
    let task = tokio::spawn(async move {
        let guard = waiter.acquire("deaf", LONG).await.expect("acquire");
        let at = Instant::now();
        guard.release().await.expect("release");
        at
    });
    // Long enough for the backoff to reach its cap.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let released = Instant::now();
    held.release().await.expect("release");
    let acquired = tokio::time::timeout(BACKOFF_MAX * 4, task)
        .await
        .expect("the backoff timer must find the free lock")
        .expect("task");
    assert!(acquired >= released);
}

#[tokio::test]
async fn acquire_timeout_reports_busy_with_the_holders_remaining_lease() {
    let store = MemoryBackend::new();
    let (locker, other) = (Locker::new(store.clone()), Locker::new(store));
    let _held = locker.acquire("busy", LONG).await.expect("acquire");
    // A zero wait takes a free key, and refuses a held one at once.
    let free = other.acquire_timeout("free", LONG, Duration::ZERO).await;
    assert!(free.is_ok(), "{free:?}");
    let held = other.acquire_timeout("busy", LONG, Duration::ZERO).await;
    assert!(matches!(held, Err(LockError::Busy { .. })), "{held:?}");
    match locker
        .acquire_timeout("busy", LONG, Duration::from_millis(50))
        .await
    {
        Err(LockError::Busy { retry_after }) => {
            let left = retry_after.expect("the memory store reports the remaining lease");
            assert!(left > LONG - Duration::from_secs(5) && left <= LONG);
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    assert_eq!(locker.queued_keys(), 0);
}

fn bus_node_runtime() -> (tokio::runtime::Runtime, MemoryBackend, MemoryBackend) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let bus = LocalBus::new();
    (
        runtime,
        MemoryBackend::with_bus(bus.clone()),
        MemoryBackend::with_bus(bus),
    )
}

#[test]
fn a_guard_dropped_outside_any_runtime_releases_on_its_own() {
    let (runtime, node, observer) = bus_node_runtime();
    let locker = Locker::new(node);
    let guard = runtime
        .block_on(locker.acquire("elsewhere", LONG))
        .expect("acquire");
    // Dropped on a thread with no runtime: the release runs on the runtime
    // the lock was acquired on.
    std::thread::spawn(move || drop(guard))
        .join()
        .expect("thread");
    let observer = Locker::new(observer);
    let next = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(3), observer.acquire("elsewhere", LONG)).await
    });
    assert!(matches!(next, Ok(Ok(_))), "the dropped guard must release");
}

#[test]
fn a_guard_dropped_after_its_runtime_shut_down_does_not_panic() {
    let (runtime, node, _) = bus_node_runtime();
    let locker = Locker::new(node);
    let guard = runtime
        .block_on(locker.acquire("orphan", LONG))
        .expect("acquire");
    drop(runtime);
    drop(guard);

    // A store in this process releases on the spot, runtime or not.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let store = MemoryBackend::new();
    let locker = Locker::new(store.clone());
    let guard = runtime
        .block_on(locker.acquire("orphan", LONG))
        .expect("acquire");
    drop(runtime);
    drop(guard);
    assert_eq!(store.len(), 0);
}

#[test]
fn a_renewing_locker_outside_any_runtime_refuses_before_it_takes_anything() {
    let store = MemoryBackend::new();
    let locker = Locker::new(store.clone()).auto_renew(true);
    // Renewal needs a runtime; with none, the try must fail before the
    // store grants a lock nobody would hold.
    let mut attempt = std::pin::pin!(locker.try_lock("k", LONG));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let outcome = attempt.as_mut().poll(&mut cx);
    assert!(
        matches!(
            outcome,
            std::task::Poll::Ready(Err(LockError::Unavailable { .. }))
        ),
        "{outcome:?}"
    );
    assert_eq!(store.len(), 0, "the failed try left a lock in the store");
}

/// `Locker::release(key)` finds a lease in the store as soon as it is
/// granted, before its renewal is scheduled: that renewal must not stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_by_key_racing_the_grant_leaves_no_renewal_behind() {
    let locker = Locker::in_memory().auto_renew(true);
    let mut released_early = 0;
    for i in 0..2000 {
        let key = format!("k{i}");
        let started = Arc::new(AtomicUsize::new(0));
        let releaser = tokio::spawn({
            let (locker, key, started) = (locker.clone(), key.clone(), started.clone());
            async move {
                started.store(1, Ordering::SeqCst);
                for _ in 0..2000 {
                    if locker.release(&key).await.is_ok() {
                        return true;
                    }
                }
                false
            }
        });
        // The releaser spins on its own worker while the grant happens.
        while started.load(Ordering::SeqCst) == 0 {
            std::hint::spin_loop();
        }
        let guard = locker.acquire(&key, LONG).await.expect("acquire");
        released_early += usize::from(releaser.await.expect("releaser"));
        drop(guard);
    }
    assert!(released_early > 0, "no release raced a grant");
    assert_eq!(locker.renewing_count(), 0, "renewals left behind");
}

#[tokio::test]
async fn locker_is_send_sync_clone_and_guard_is_send() {
    fn send_sync_clone<T: Send + Sync + Clone>() {}
    fn send<T: Send>() {}
    send_sync_clone::<Locker>();
    send::<tower_lock::LockGuard>();
    let locker = Locker::in_memory();
    let guard = locker.acquire("send", LONG).await.expect("acquire");
    tokio::spawn(async move { guard.release().await })
        .await
        .expect("task")
        .expect("release");
}

#[test]
fn a_bus_node_whose_event_task_died_starts_again_on_the_current_runtime() {
    let (first_runtime, node, _) = bus_node_runtime();
    let locker = Locker::new(node);
    let guard = first_runtime
        .block_on(locker.acquire("pump", LONG))
        .expect("acquire");
    let fence = guard.fence();
    std::mem::forget(guard);
    // The node's event task lived on this runtime.
    drop(first_runtime);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let other = tokio::time::timeout(Duration::from_secs(3), locker.try_lock("other", LONG))
            .await
            .expect("the node answers instead of hanging")
            .expect("the node works again")
            .expect("a free key is granted");
        assert!(other.fence() > fence, "fences went back after the restart");
        // The restarted node knows the lease granted before, from the
        // bus's snapshot.
        let pump = locker.try_lock("pump", LONG).await.expect("try");
        assert!(pump.is_none(), "a held key was granted again");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewing_guards_leave_the_schedule_when_released_and_keep_their_lease_meanwhile() {
    let store = MemoryBackend::new();
    let locker = Locker::new(store.clone()).auto_renew(true);
    let other = Locker::new(store.clone());
    // Renewed every 200 ms: a loaded machine has ample slack.
    let ttl = Duration::from_millis(600);
    let mut guards = Vec::new();
    for i in 0..20 {
        guards.push(
            locker
                .acquire(&format!("renew:{i}"), ttl)
                .await
                .expect("acquire"),
        );
    }
    assert_eq!(locker.renewing_count(), 20);
    // Several ttls: every lease must have been renewed, none taken over.
    tokio::time::sleep(ttl * 4).await;
    for i in 0..20 {
        assert!(
            other
                .try_lock(&format!("renew:{i}"), ttl)
                .await
                .expect("try_lock")
                .is_none(),
            "lease {i} ran out despite renewal"
        );
    }
    for guard in guards {
        assert!(!guard.is_lost());
        guard
            .release()
            .await
            .expect("a renewed lease is still ours");
    }
    assert_eq!(
        locker.renewing_count(),
        0,
        "released leases leave the schedule"
    );
    assert_eq!(store.len(), 0);
}

/// Renewal keeps to its schedule: a lease renews about every third of its
/// ttl, not more often (which would load the store) nor less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewing_lease_renews_every_third_of_its_ttl() {
    let backend = Instrumented::new(MemoryBackend::new(), true);
    let extends = backend.extends.clone();
    let locker = Locker::new(backend).auto_renew(true);
    let ttl = Duration::from_millis(600);
    let guard = locker.acquire("schedule", ttl).await.expect("acquire");
    // Six ttls: eighteen renewals on schedule.
    tokio::time::sleep(ttl * 6).await;
    let renewed = extends.load(Ordering::SeqCst);
    assert!(
        (12..=20).contains(&renewed),
        "{renewed} renewals in six ttls, where eighteen are due"
    );
    guard.release().await.expect("release");
}

/// A store that refuses a renewal (its key was deleted or evicted under a
/// live lease) makes the lease lost at once, long before its ttl: `lost()`
/// fires and `is_lost()` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_renewal_loses_the_lease_at_once() {
    let mut backend = Instrumented::new(MemoryBackend::new(), true);
    backend.refuse_extends = true;
    let locker = Locker::new(backend.clone()).auto_renew(true);
    let ttl = Duration::from_millis(900);
    let guard = locker.acquire("evicted", ttl).await.expect("acquire");
    let lost = guard.lost();
    // The first renewal is due after a third of the ttl, and refused.
    tokio::time::timeout(ttl / 2, lost)
        .await
        .expect("lost() must fire when the store refuses the renewal");
    assert!(guard.is_lost());
    assert_eq!(locker.renewing_count(), 0, "a lost lease stops renewing");
    let explicit = Locker::new(backend)
        .acquire("evicted-too", LONG)
        .await
        .expect("acquire");
    assert!(matches!(explicit.extend(LONG).await, Err(LockError::Lost)));
    assert!(explicit.is_lost(), "a refused extension loses the lease");
}

/// The renewal scheduler runs on the runtime of the first lease that
/// renews; if that runtime shuts down, the next renewing lease starts it
/// again on its own runtime, so leases never silently stop renewing.
#[test]
fn renewal_restarts_on_a_new_runtime_when_its_first_one_shut_down() {
    let store = MemoryBackend::new();
    let locker = Locker::new(store.clone()).auto_renew(true);
    let other = Locker::new(store);
    let first = tokio::runtime::Runtime::new().expect("runtime");
    first.block_on(async {
        let guard = locker.acquire("first", LONG).await.expect("acquire");
        guard.release().await.expect("release");
    });
    drop(first);
    let second = tokio::runtime::Runtime::new().expect("runtime");
    second.block_on(async {
        let ttl = Duration::from_millis(600);
        let guard = locker.acquire("second", ttl).await.expect("acquire");
        tokio::time::sleep(ttl * 3).await;
        assert!(
            other
                .try_lock("second", LONG)
                .await
                .expect("try_lock")
                .is_none(),
            "the lease stopped renewing with the first runtime"
        );
        assert!(!guard.is_lost());
        guard.release().await.expect("release");
    });
}

/// A set on a locker that does not renew renews its first keys while it
/// waits for the rest, and not once more after `acquire_all` returns: not
/// even a renewal that was under way then lands later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_renews_while_it_waits_and_never_after_acquire_all_returns() {
    let store = MemoryBackend::new();
    let backend = Instrumented::new(store.clone(), true);
    let extends = backend.extends.clone();
    let (locker, other) = (Locker::new(backend), Locker::new(store));
    let ttl = Duration::from_millis(300);
    let busy = other.acquire("set:b", LONG).await.expect("acquire");
    let waiting = tokio::spawn({
        let locker = locker.clone();
        async move { locker.acquire_all(["set:a", "set:b"], ttl).await }
    });
    // Three ttls: about nine renewals of the first key are due.
    tokio::time::sleep(ttl * 3).await;
    busy.release().await.expect("release");
    let set = waiting.await.expect("task").expect("acquire_all");
    let renewed = extends.load(Ordering::SeqCst);
    assert!(renewed >= 4, "{renewed} renewals in three ttls of waiting");
    assert_eq!(locker.renewing_count(), 0, "the set is still scheduled");
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(
        extends.load(Ordering::SeqCst),
        renewed,
        "renewed after acquire_all returned"
    );
    assert!(set.is_lost(), "the set's leases outlived their ttl");
    assert!(matches!(set.release().await, Err(LockError::Lost)));
}

/// A first key lost while the set waits for the next (the store refuses
/// its renewal) fails the set at once with `Lost`, holding nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_whose_first_key_is_lost_while_it_waits_fails_and_holds_nothing() {
    let store = MemoryBackend::new();
    let mut backend = Instrumented::new(store.clone(), true);
    backend.refuse_extends = true;
    let (locker, other) = (Locker::new(backend), Locker::new(store.clone()));
    let ttl = Duration::from_millis(900);
    let busy = other.acquire("lost:b", LONG).await.expect("acquire");
    // The first renewal is due after a third of the ttl, and refused.
    let refused = tokio::time::timeout(ttl / 2, locker.acquire_all(["lost:a", "lost:b"], ttl))
        .await
        .expect("the set must fail once its first key is lost");
    assert!(matches!(refused, Err(LockError::Lost)), "{refused:?}");
    assert_eq!((locker.held_count(), locker.renewing_count()), (0, 0));
    let freed = other.try_lock("lost:a", LONG).await.expect("try_lock");
    assert!(freed.is_some(), "the failed set kept its first key");
    drop((freed, busy));
}

/// A renewal under way when the set's last key comes free lands before
/// `acquire_all` returns, not after: nothing renews the set once it is
/// handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_under_way_when_the_set_is_whole_lands_before_acquire_all_returns() {
    let store = MemoryBackend::new();
    let mut backend = Instrumented::new(store.clone(), true);
    let delay = Duration::from_millis(300);
    backend.slow_extends = Some(delay);
    let extends = backend.extends.clone();
    let (locker, other) = (Locker::new(backend), Locker::new(store));
    let ttl = Duration::from_millis(900);
    let busy = other.acquire("slow:b", LONG).await.expect("acquire");
    let waiting = tokio::spawn({
        let locker = locker.clone();
        async move { locker.acquire_all(["slow:a", "slow:b"], ttl).await }
    });
    // The first renewal is sent after a third of the ttl and lands `delay`
    // later: free the last key halfway.
    tokio::time::sleep(ttl / 3 + delay / 2).await;
    busy.release().await.expect("release");
    let set = waiting.await.expect("task").expect("acquire_all");
    let landed = extends.load(Ordering::SeqCst);
    assert_eq!(landed, 1, "the renewal under way had not landed");
    tokio::time::sleep(delay * 2).await;
    assert_eq!(
        extends.load(Ordering::SeqCst),
        1,
        "renewed after acquire_all returned"
    );
    drop(set);
}
