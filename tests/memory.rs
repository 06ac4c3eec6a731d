//! The conformance suite against the in-memory backend: standalone, and
//! three nodes sharing one `LocalBus`.

mod conformance;

/// What a store's wake-up registry still holds, as a harness reports it.
fn watched(keys: usize) -> Vec<String> {
    (keys > 0)
        .then(|| format!("{keys} keys with wake-up registrations"))
        .into_iter()
        .collect()
}

mod standalone {
    use tower_lock::{Locker, memory::MemoryBackend};

    pub struct Standalone(MemoryBackend);

    impl crate::conformance::Harness for Standalone {
        async fn locker(&self) -> Locker {
            Locker::new(self.0.clone())
        }

        async fn stored_locks(&self) -> usize {
            self.0.len()
        }

        async fn leftovers(&self) -> Vec<String> {
            let watched = self.0.watched_keys();
            crate::watched(watched)
        }
    }

    crate::conformance_suite!(async { Standalone(MemoryBackend::new()) });

    /// The store and its holders judge leases by a coarse clock, which runs
    /// behind real time by an amount that varies (a CPU waking from idle
    /// brings it up to date at once). The store allows for it, so a lease is
    /// never handed on before its ttl has passed; the holder reads the clock
    /// first, so the store never hands the key on while the holder still
    /// counts on its lease. Half the rounds poll with sleeps in between,
    /// which lets the CPU idle.
    #[tokio::test]
    async fn a_lease_is_handed_on_only_after_its_ttl_and_its_holder_knows() {
        use std::time::{Duration, Instant};

        let backend = MemoryBackend::new();
        let (holder, other) = (Locker::new(backend.clone()), Locker::new(backend));
        let ttl = Duration::from_millis(20);
        for round in 0..40 {
            let asked = Instant::now();
            let guard = holder.acquire("k", ttl).await.expect("acquire");
            let taken = loop {
                if let Some(taken) = other.try_lock("k", ttl).await.expect("try_lock") {
                    break taken;
                }
                if round % 2 == 0 {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_micros(1500)).await;
                }
            };
            let lasted = asked.elapsed();
            assert!(lasted >= ttl, "round {round}: handed on after {lasted:?}");
            assert!(
                guard.is_lost(),
                "round {round}: the store granted the key again while its holder \
                 still counted on its lease"
            );
            drop((guard, taken));
            tokio::time::sleep(Duration::from_micros(700 * (round % 7))).await;
        }
    }
}

mod over_bus {
    use std::sync::Mutex;

    use tower_lock::{Locker, bus::LocalBus, memory::MemoryBackend};

    /// Nodes on one bus: every locker is a node of its own, joining when it
    /// is made, so many checks run with nodes that joined after locks were
    /// taken.
    pub struct Nodes {
        bus: LocalBus,
        nodes: Mutex<Vec<MemoryBackend>>,
    }

    impl crate::conformance::Harness for Nodes {
        async fn locker(&self) -> Locker {
            let node = MemoryBackend::with_bus(self.bus.clone());
            self.nodes.lock().expect("nodes").push(node.clone());
            Locker::new(node)
        }

        async fn stored_locks(&self) -> usize {
            let nodes = self.nodes.lock().expect("nodes").clone();
            let counts: Vec<usize> = nodes.iter().map(MemoryBackend::len).collect();
            // Replicas apply events on their own tasks, so one may lag an
            // instant; report the largest.
            counts.into_iter().max().unwrap_or(0)
        }

        async fn leftovers(&self) -> Vec<String> {
            let nodes = self.nodes.lock().expect("nodes").clone();
            let watched: usize = nodes.iter().map(MemoryBackend::watched_keys).sum();
            crate::watched(watched)
        }
    }

    fn nodes() -> Nodes {
        Nodes {
            bus: LocalBus::new(),
            nodes: Mutex::default(),
        }
    }

    crate::conformance_suite!(async { nodes() });

    #[tokio::test]
    async fn a_node_that_joins_late_sees_the_leases_granted_before_it() {
        let bus = LocalBus::new();
        let first = Locker::new(MemoryBackend::with_bus(bus.clone()));
        let ttl = std::time::Duration::from_secs(30);
        let held = first.acquire("leader", ttl).await.expect("acquire");
        let first_fence = held.fence();
        let late = Locker::new(MemoryBackend::with_bus(bus.clone()));
        assert!(
            late.try_lock("leader", ttl)
                .await
                .expect("try_lock")
                .is_none(),
            "a late node must not grant a lock another node holds"
        );
        held.release().await.expect("release");
        let next = late
            .acquire("leader", ttl)
            .await
            .expect("acquire after release");
        assert!(next.fence() > first_fence);
    }
}

/// A store of a third party's that answers on the spot, through the
/// optional pair of the `Backend` trait, held to the same suite.
mod on_the_spot {
    use std::{
        collections::HashMap,
        sync::{
            Arc, Mutex,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use tokio::time::Instant;
    use tower_lock::{
        LockError, Locker,
        backend::{
            AcquireRequest, Attempt, Backend, Holding, Lease, Subscription, Token, WakeRegistry,
        },
    };

    /// A holder's token, fence, expiry and value.
    type Entry = (Token, u64, Instant, Option<String>);

    /// One mutex over a map; counts the calls that needed a future.
    #[derive(Debug, Default)]
    pub struct SpotStore {
        table: Mutex<HashMap<String, Entry>>,
        fences: AtomicUsize,
        wakeups: WakeRegistry,
        async_tries: AtomicUsize,
        async_releases: AtomicUsize,
    }

    impl SpotStore {
        fn take(&self, request: &AcquireRequest<'_>) -> Attempt {
            let mut table = self.table.lock().expect("table");
            let now = Instant::now();
            // The holder's own token again is a retry, granted anew with
            // the same fence.
            let mut kept = None;
            if let Some((holder, fence, expires, _)) = table.get(request.key)
                && *expires > now
            {
                if *holder != request.token {
                    return Attempt::Busy {
                        remaining: Some(*expires - now),
                    };
                }
                kept = Some(*fence);
            }
            let fence =
                kept.unwrap_or_else(|| self.fences.fetch_add(1, Ordering::SeqCst) as u64 + 1);
            let expires = now + request.ttl;
            let value = request.value.map(str::to_owned);
            table.insert(
                request.key.to_owned(),
                (request.token, fence, expires, value),
            );
            drop(table);
            if request.value.is_some() {
                self.wakeups.notify(request.key);
            }
            Attempt::Acquired {
                fence,
                revision: fence,
            }
        }

        fn give_back(&self, key: &str, lease: &Lease) -> bool {
            let mut table = self.table.lock().expect("table");
            let Some((token, expires)) = table
                .get(key)
                .map(|(token, _, expires, _)| (*token, *expires))
            else {
                return false;
            };
            if token != lease.token {
                return false;
            }
            table.remove(key);
            drop(table);
            let held = expires > Instant::now();
            if held {
                self.wakeups.notify(key);
            }
            held
        }

        pub fn len(&self) -> usize {
            self.table.lock().expect("table").len()
        }
    }

    #[async_trait::async_trait]
    impl Backend for SpotStore {
        async fn try_acquire(&self, request: &AcquireRequest<'_>) -> Result<Attempt, LockError> {
            self.async_tries.fetch_add(1, Ordering::SeqCst);
            Ok(self.take(request))
        }

        async fn extend(
            &self,
            key: &str,
            lease: &Lease,
            ttl: Duration,
        ) -> Result<Option<u64>, LockError> {
            let mut table = self.table.lock().expect("table");
            let now = Instant::now();
            Ok(match table.get_mut(key) {
                Some((token, _, expires, _)) if *token == lease.token && *expires > now => {
                    *expires = now + ttl;
                    Some(lease.revision)
                }
                _ => None,
            })
        }

        async fn release(&self, key: &str, lease: &Lease) -> Result<bool, LockError> {
            self.async_releases.fetch_add(1, Ordering::SeqCst);
            Ok(self.give_back(key, lease))
        }

        async fn subscribe(&self, key: &str) -> Result<Subscription, LockError> {
            Ok(self.wakeups.subscribe(key))
        }

        async fn holder(&self, key: &str) -> Result<Option<Holding>, LockError> {
            let table = self.table.lock().expect("table");
            let now = Instant::now();
            Ok(table
                .get(key)
                .filter(|(_, _, expires, _)| *expires > now)
                .map(|(token, fence, expires, value)| {
                    Holding::new(*token, *fence, Some(*expires - now)).with_value(value.clone())
                }))
        }

        fn try_acquire_now(
            &self,
            request: &AcquireRequest<'_>,
        ) -> Option<Result<Attempt, LockError>> {
            Some(Ok(self.take(request)))
        }

        fn release_now(&self, key: &str, lease: &Lease) -> Option<Result<bool, LockError>> {
            Some(Ok(self.give_back(key, lease)))
        }
    }

    pub struct Spot(Arc<SpotStore>);

    impl crate::conformance::Harness for Spot {
        async fn locker(&self) -> Locker {
            Locker::from_arc(self.0.clone())
        }

        async fn stored_locks(&self) -> usize {
            self.0.len()
        }

        async fn leftovers(&self) -> Vec<String> {
            let watched = self.0.wakeups.len();
            crate::watched(watched)
        }
    }

    crate::conformance_suite!(exclusive async { Spot(Arc::default()) });

    /// The optional pair is used, and alone is enough: no try or release
    /// of an uncontended lock goes through a future, and what the locker
    /// holds is found by key and counted all the same.
    #[tokio::test]
    async fn a_store_that_answers_on_the_spot_is_used_so_and_its_locks_are_found_by_key() {
        let store = Arc::new(SpotStore::default());
        let locker = Locker::from_arc(store.clone());
        let ttl = Duration::from_secs(30);
        let guard = locker.acquire("a", ttl).await.expect("acquire");
        let other = locker
            .try_lock("b", ttl)
            .await
            .expect("try_lock")
            .expect("free");
        assert_eq!(locker.held_count(), 2);
        locker.release("a").await.expect("found by key");
        assert!(guard.is_lost(), "released by key");
        drop(other);
        assert_eq!(locker.held_count(), 0);
        assert_eq!(store.len(), 0, "dropped guards released on the spot");
        assert_eq!(store.async_tries.load(Ordering::SeqCst), 0);
        assert_eq!(store.async_releases.load(Ordering::SeqCst), 0);
    }
}

/// The standalone store runs on tokio's clock: tests that pause time see
/// leases run out as they advance it, and not before.
#[tokio::test(start_paused = true)]
async fn leases_follow_paused_time() {
    use std::time::Duration;

    use tower_lock::{Locker, memory::MemoryBackend};

    let backend = MemoryBackend::new();
    let (holder, other) = (Locker::new(backend.clone()), Locker::new(backend));
    let ttl = Duration::from_secs(60);
    let guard = holder.acquire("paused", ttl).await.expect("acquire");
    tokio::time::advance(ttl - Duration::from_millis(1)).await;
    assert!(!guard.is_lost());
    assert!(
        other
            .try_lock("paused", ttl)
            .await
            .expect("try_lock")
            .is_none()
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(guard.is_lost(), "the holder sees its lease run out");
    let next = other.try_lock("paused", ttl).await.expect("try_lock");
    assert!(
        next.is_some(),
        "the store hands the key on as time advances"
    );
}

/// A lease of one locker that ran out and was granted to the same locker
/// again: both leases are its own, neither supersedes the other.
#[tokio::test]
async fn a_locker_keeps_each_lease_it_holds_on_one_key() {
    use std::time::Duration;

    use tower_lock::{LockError, Locker};

    let locker = Locker::in_memory();
    let stale = locker
        .acquire("again", Duration::from_millis(30))
        .await
        .expect("acquire");
    tokio::time::sleep(Duration::from_millis(60)).await;
    let current = locker
        .acquire("again", Duration::from_secs(30))
        .await
        .expect("acquire after the first lease ran out");
    assert_eq!(locker.held_count(), 2);
    assert!(stale.is_lost());
    assert!(
        !current.is_lost(),
        "a new grant is not lost with the old one"
    );
    assert!(matches!(stale.release().await, Err(LockError::Lost)));
    assert_eq!(locker.held_count(), 1);
    assert!(
        locker
            .try_lock("again", Duration::from_secs(1))
            .await
            .expect("try")
            .is_none(),
        "the stale release left the current lease alone"
    );
    current
        .release()
        .await
        .expect("the current lease is still held");
    assert_eq!(locker.held_count(), 0);
}

/// Request-chosen keys cannot grow the store: 100,000 distinct keys locked
/// and released leave nothing in the table or the locker.
#[tokio::test]
async fn a_hundred_thousand_distinct_keys_leave_nothing_behind() {
    use std::time::Duration;

    use tower_lock::{Locker, memory::MemoryBackend};

    let backend = MemoryBackend::new();
    let locker = Locker::new(backend.clone());
    for i in 0..100_000u32 {
        let guard = locker
            .acquire(&format!("tenant:{i}"), Duration::from_secs(10))
            .await
            .expect("acquire");
        if i % 2 == 0 {
            guard.release().await.expect("release");
        } else {
            drop(guard);
        }
    }
    assert_eq!(backend.len(), 0, "released keys must leave the table");
    assert_eq!(backend.watched_keys(), 0);
    assert_eq!(locker.held_count(), 0);
    assert_eq!(locker.queued_keys(), 0);
}

/// A restarted process (here: a new table, as a restart makes) grants
/// fences above every fence of the one before, even after a burst that ran
/// the old table's counter ahead of the clock.
#[tokio::test]
async fn fences_keep_growing_across_a_restart_after_a_burst() {
    use std::time::Duration;

    use tower_lock::{Locker, memory::MemoryBackend};

    let before = Locker::new(MemoryBackend::new());
    let mut last = 0;
    for _ in 0..50_000 {
        let guard = before.try_lock("hot", Duration::from_secs(10)).await;
        let guard = guard.expect("try_lock").expect("a free key");
        assert!(guard.fence() > last);
        last = guard.fence();
        guard.release().await.expect("release");
    }
    drop(before);
    // A restart takes longer than the 1 ms a burst may run ahead.
    std::thread::sleep(Duration::from_millis(2));
    let after = Locker::new(MemoryBackend::new());
    let guard = after.acquire("hot", Duration::from_secs(10)).await;
    let fence = guard.expect("acquire").fence();
    assert!(
        fence > last,
        "fence {fence} after the restart, {last} before"
    );
}

/// The same for nodes on a bus started again: the fence floor is the
/// bus's wall clock, carried by its events, so every node agrees on it.
#[tokio::test]
async fn fences_keep_growing_on_a_new_bus() {
    use std::time::Duration;

    use tower_lock::{Locker, bus::LocalBus, memory::MemoryBackend};

    let bus = LocalBus::new();
    let nodes = [
        Locker::new(MemoryBackend::with_bus(bus.clone())),
        Locker::new(MemoryBackend::with_bus(bus)),
    ];
    let mut last = 0;
    for round in 0..2_000 {
        let guard = nodes[round % 2]
            .acquire("hot", Duration::from_secs(10))
            .await;
        let guard = guard.expect("acquire");
        assert!(guard.fence() > last);
        last = guard.fence();
        guard.release().await.expect("release");
    }
    drop(nodes);
    std::thread::sleep(Duration::from_millis(2));
    let node = Locker::new(MemoryBackend::with_bus(LocalBus::new()));
    let fence = node.acquire("hot", Duration::from_secs(10)).await;
    let fence = fence.expect("acquire").fence();
    assert!(fence > last, "fence {fence} on the new bus, {last} before");
}

/// A bus node that never locks joins nothing: it buffers no event, however
/// busy the bus. Its first use joins from the bus's snapshot, so it still
/// sees the leases granted before.
#[tokio::test]
async fn an_idle_bus_node_buffers_nothing_and_joins_on_first_use() {
    use std::time::Duration;

    use tower_lock::{Locker, bus::LocalBus, memory::MemoryBackend};

    let bus = LocalBus::new();
    let idle = MemoryBackend::with_bus(bus.clone());
    let busy = Locker::new(MemoryBackend::with_bus(bus.clone()));
    let held = busy.acquire("held", Duration::from_secs(30)).await;
    let _held = held.expect("acquire");
    for i in 0..1_000 {
        let guard = busy
            .acquire(&format!("k{i}"), Duration::from_secs(30))
            .await;
        guard.expect("acquire").release().await.expect("release");
    }
    assert_eq!(bus.subscribers(), 1, "the idle node joined the bus");
    assert_eq!(idle.len(), 0);
    let idle = Locker::new(idle);
    let try_held = idle.try_lock("held", Duration::from_secs(30)).await;
    assert!(
        try_held.expect("try_lock").is_none(),
        "a held key was granted"
    );
    assert_eq!(bus.subscribers(), 2);
}

/// Request-chosen keys on bus nodes: 100,000 distinct keys locked and
/// released leave nothing in any node's table nor in the bus's snapshot.
#[tokio::test]
async fn a_hundred_thousand_distinct_keys_leave_nothing_on_a_bus() {
    use std::time::Duration;

    use tower_lock::{Locker, bus::LocalBus, memory::MemoryBackend};

    let bus = LocalBus::new();
    let backends = [
        MemoryBackend::with_bus(bus.clone()),
        MemoryBackend::with_bus(bus.clone()),
    ];
    let lockers = backends.clone().map(Locker::new);
    for i in 0..100_000usize {
        let key = format!("tenant:{i}");
        let guard = lockers[i % 2].acquire(&key, Duration::from_secs(10)).await;
        guard.expect("acquire").release().await.expect("release");
    }
    // Every node has applied every event once its last request came back.
    for locker in &lockers {
        let guard = locker.acquire("last", Duration::from_secs(10)).await;
        guard.expect("acquire").release().await.expect("release");
    }
    for backend in &backends {
        assert_eq!(backend.len(), 0, "a node kept released keys");
    }
    assert!(
        format!("{bus:?}").contains("leases: 0"),
        "the bus's snapshot kept released keys: {bus:?}"
    );
}

/// Elections over a bus whose link to one node can be cut, as a network
/// partition would: that node's commands wait until the link is back, so
/// its renewals neither arrive nor fail meanwhile.
mod election_over_a_cut_link {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        time::{Duration, Instant},
    };

    use tower_lock::{
        LockError, Locker,
        bus::{Bus, Command, Feed, LocalBus},
        election::Election,
        memory::MemoryBackend,
    };

    #[derive(Debug, Clone)]
    struct Link {
        bus: LocalBus,
        cut: Arc<AtomicBool>,
    }

    #[async_trait::async_trait]
    impl Bus for Link {
        async fn publish(&self, command: Command) -> Result<(), LockError> {
            while self.cut.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.bus.publish(command).await
        }

        fn subscribe(&self) -> Feed {
            self.bus.subscribe()
        }
    }

    const TTL: Duration = Duration::from_millis(1500);

    fn election(bus: &LocalBus) -> (Election, Arc<AtomicBool>) {
        let cut = Arc::new(AtomicBool::new(false));
        let link = Link {
            bus: bus.clone(),
            cut: cut.clone(),
        };
        let locker = Locker::new(MemoryBackend::with_bus(link));
        let election = Election::new(locker, "cut")
            .ttl(TTL)
            .renew_deadline(Duration::from_millis(1000))
            .renew_every(Duration::from_millis(250));
        (election, cut)
    }

    /// Cut off, the leader counts itself lost at its renew deadline, before
    /// the others' store lets one of them win.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_cut_off_stops_before_another_leads() {
        let bus = LocalBus::new();
        let (first, cut) = election(&bus);
        let (second, _) = election(&bus);
        let leadership = first.campaign("first").await.expect("campaign");
        let heir = tokio::spawn(async move {
            let leadership = second.campaign("second").await;
            (leadership, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        cut.store(true, Ordering::SeqCst);
        let cut_at = Instant::now();
        tokio::time::timeout(TTL, leadership.lost())
            .await
            .expect("the cut-off leader never counted itself lost");
        let lost_at = Instant::now();
        assert!(leadership.is_lost());
        let (next, won_at) = tokio::time::timeout(TTL * 2, heir)
            .await
            .expect("no new leader")
            .expect("task");
        let next = next.expect("campaign");
        assert!(next.term() > leadership.term());
        assert!(
            lost_at < won_at,
            "lost {:?} after the cut, the heir won {:?} after it",
            lost_at - cut_at,
            won_at - cut_at
        );
        next.resign().await.expect("resign");
    }

    /// run_while_leader drops the job of a leader that lost, and leads
    /// again (with a higher term) once it can.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_job_is_dropped_and_the_node_leads_again() {
        struct Dropped(tokio::sync::mpsc::UnboundedSender<&'static str>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.send("dropped");
            }
        }
        let bus = LocalBus::new();
        let (election, cut) = election(&bus);
        let (events, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let (terms, mut term) = tokio::sync::mpsc::unbounded_channel();
        let run = tokio::spawn(async move {
            election
                .run_while_leader("node", |leadership| {
                    let (events, terms) = (events.clone(), terms.clone());
                    async move {
                        let _dropped = Dropped(events);
                        let _ = terms.send(leadership.term());
                        std::future::pending::<()>().await;
                    }
                })
                .await
        });
        let first = tokio::time::timeout(TTL, term.recv())
            .await
            .expect("never led")
            .expect("a term");
        cut.store(true, Ordering::SeqCst);
        let event = tokio::time::timeout(TTL, seen.recv())
            .await
            .expect("job not dropped");
        assert_eq!(event, Some("dropped"));
        cut.store(false, Ordering::SeqCst);
        let again = tokio::time::timeout(TTL * 3, term.recv())
            .await
            .expect("never led again")
            .expect("a term");
        assert!(again > first, "term {again} after {first}");
        run.abort();
    }
}
