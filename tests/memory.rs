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
}

mod over_bus {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tower_lock::{Locker, bus::LocalBus, memory::MemoryBackend};

    /// Three nodes on one bus; lockers are spread over them in turn.
    pub struct Nodes {
        nodes: Vec<MemoryBackend>,
        next: AtomicUsize,
    }

    impl crate::conformance::Harness for Nodes {
        async fn locker(&self) -> Locker {
            let node = self.next.fetch_add(1, Ordering::Relaxed) % self.nodes.len();
            Locker::new(self.nodes[node].clone())
        }

        async fn stored_locks(&self) -> usize {
            // Every replica must agree; report the largest.
            self.nodes.iter().map(MemoryBackend::len).max().unwrap_or(0)
        }
    }

    fn nodes() -> Nodes {
        let bus = LocalBus::new();
        Nodes {
            nodes: (0..3)
                .map(|_| MemoryBackend::with_bus(bus.clone()))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    crate::conformance_suite!(async { nodes() });
}
