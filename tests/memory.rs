//! The conformance suite against the in-memory backend: standalone, and
//! three nodes sharing one `LocalBus`.

mod conformance;

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
        assert!(next.fence() > 0);
    }
}
