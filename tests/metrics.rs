//! What a `Locker` reports through the `metrics` facade, read back with
//! `metrics-util`'s `DebuggingRecorder` after known sequences.
//!
//! Each test records into a recorder of its own, on a current-thread
//! runtime inside `metrics::with_local_recorder`, so that tasks the locker
//! spawns (renewals, background releases) report to the same recorder and
//! tests running side by side never see each other's values.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use metrics_util::{
    CompositeKey, MetricKind,
    debugging::{DebugValue, DebuggingRecorder, Snapshotter},
};
use tower_lock::{
    LockError, Locker,
    backend::{AcquireRequest, Attempt, Backend, Holding, Lease, Subscription},
    memory::MemoryBackend,
};

const LONG: Duration = Duration::from_secs(30);

/// Runs `test` on a current-thread runtime that reports to a recorder of its
/// own, and returns what it recorded.
fn recorded<F: Future<Output = ()>>(test: impl FnOnce() -> F) -> Recorded {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    metrics::with_local_recorder(&recorder, || runtime.block_on(test()));
    Recorded::from(&snapshotter)
}

struct Recorded(Vec<(CompositeKey, DebugValue)>);

impl Recorded {
    fn from(snapshotter: &Snapshotter) -> Self {
        let values = snapshotter.snapshot().into_vec();
        Recorded(
            values
                .into_iter()
                .map(|(key, _, _, value)| (key, value))
                .collect(),
        )
    }

    /// The value of the metric `name` with exactly `labels`.
    fn find(&self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        self.0.iter().find_map(|(key, value)| {
            let metric = key.key();
            let mut theirs: Vec<(&str, &str)> = metric
                .labels()
                .map(|label| (label.key(), label.value()))
                .collect();
            let mut ours = labels.to_vec();
            theirs.sort_unstable();
            ours.sort_unstable();
            (key.kind() == kind && metric.name() == name && theirs == ours).then_some(value)
        })
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.find(MetricKind::Counter, name, labels) {
            Some(DebugValue::Counter(count)) => *count,
            None => 0,
            Some(other) => panic!("{name} is not a counter: {other:?}"),
        }
    }

    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.find(MetricKind::Histogram, name, labels) {
            Some(DebugValue::Histogram(values)) => values.iter().map(|v| v.into_inner()).collect(),
            None => Vec::new(),
            Some(other) => panic!("{name} is not a histogram: {other:?}"),
        }
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .0
            .iter()
            .map(|(key, _)| format!("{:?}", key.key()))
            .collect();
        names.sort();
        names
    }
}

#[test]
fn a_known_sequence_is_counted_by_backend_and_key_prefix() {
    let seen = recorded(|| async {
        let locker = Locker::in_memory().metrics_key_prefix();
        let guard = locker.acquire("acct:1", LONG).await.expect("acquire");
        assert!(
            locker
                .try_lock("acct:1", LONG)
                .await
                .expect("try_lock")
                .is_none()
        );
        let waited = locker
            .acquire_timeout("acct:1", LONG, Duration::from_millis(20))
            .await;
        assert!(matches!(waited, Err(LockError::Busy { .. })), "{waited:?}");
        tokio::time::sleep(Duration::from_millis(30)).await;
        guard.release().await.expect("release");

        let lapsing = locker
            .acquire("job:1", Duration::from_millis(30))
            .await
            .expect("acquire");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(matches!(lapsing.release().await, Err(LockError::Lost)));

        // Bad input is the caller's fault, not a refusal of the lock.
        assert!(locker.acquire("", LONG).await.is_err());
        locker.shutdown().await.expect("shutdown");
        assert!(matches!(
            locker.acquire("acct:2", LONG).await,
            Err(LockError::ShutDown)
        ));
    });
    let acct = [("backend", "memory"), ("key_class", "acct")];
    let job = [("backend", "memory"), ("key_class", "job")];
    let with = |labels: &[(&'static str, &'static str)], reason| {
        let mut labels = labels.to_vec();
        labels.push(("reason", reason));
        labels
    };

    assert_eq!(
        seen.counter("tower_lock_acquisitions_total", &acct),
        1,
        "{:?}",
        seen.names()
    );
    assert_eq!(seen.counter("tower_lock_acquisitions_total", &job), 1);
    assert_eq!(
        seen.counter("tower_lock_refusals_total", &with(&acct, "busy")),
        1
    );
    assert_eq!(
        seen.counter("tower_lock_refusals_total", &with(&acct, "timeout")),
        1
    );
    assert_eq!(
        seen.counter("tower_lock_refusals_total", &with(&acct, "shut_down")),
        1
    );
    assert_eq!(
        seen.counter("tower_lock_refusals_total", &with(&acct, "unavailable")),
        0
    );
    assert_eq!(seen.counter("tower_lock_leases_lost_total", &job), 1);
    assert_eq!(seen.counter("tower_lock_leases_lost_total", &acct), 0);

    let waits = seen.histogram("tower_lock_wait_seconds", &acct);
    assert_eq!(waits.len(), 1, "one granted wait: {waits:?}");
    assert!(waits[0] < 0.02, "a free key is had at once: {waits:?}");
    let holds = seen.histogram("tower_lock_hold_seconds", &acct);
    assert_eq!(holds.len(), 1, "{holds:?}");
    assert!(
        holds[0] >= 0.05,
        "held through the refusals and the sleep: {holds:?}"
    );
    let lapsed = seen.histogram("tower_lock_hold_seconds", &job);
    assert!(lapsed.len() == 1 && lapsed[0] >= 0.06, "{lapsed:?}");
    assert!(
        seen.names().iter().all(|name| !name.contains("acct:1")),
        "a raw key became a label: {:?}",
        seen.names()
    );
}

#[test]
fn without_a_key_class_only_the_backend_labels() {
    let seen = recorded(|| async {
        let locker = Locker::in_memory();
        let set = locker
            .acquire_all(["a:1", "b:2"], LONG)
            .await
            .expect("acquire_all");
        assert!(
            locker
                .try_lock_all(["b:2", "c:3"], LONG)
                .await
                .expect("try_lock_all")
                .is_none()
        );
        set.release().await.expect("release");
    });
    let memory = [("backend", "memory")];
    assert_eq!(
        seen.counter("tower_lock_acquisitions_total", &memory),
        2,
        "{:?}",
        seen.names()
    );
    assert_eq!(seen.histogram("tower_lock_hold_seconds", &memory).len(), 2);
    assert_eq!(
        seen.counter(
            "tower_lock_refusals_total",
            &[("backend", "memory"), ("reason", "busy")]
        ),
        1
    );
}

/// A memory store whose extensions can be refused, as a store's are whose
/// key was deleted under a live lease.
#[derive(Debug, Clone, Default)]
struct Refusing {
    store: MemoryBackend,
    refuse: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Backend for Refusing {
    async fn try_acquire(&self, request: &AcquireRequest<'_>) -> Result<Attempt, LockError> {
        self.store.try_acquire(request).await
    }

    async fn extend(
        &self,
        key: &str,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Option<u64>, LockError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Ok(None);
        }
        self.store.extend(key, lease, ttl).await
    }

    async fn release(&self, key: &str, lease: &Lease) -> Result<bool, LockError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Ok(false);
        }
        self.store.release(key, lease).await
    }

    async fn subscribe(&self, key: &str) -> Result<Subscription, LockError> {
        self.store.subscribe(key).await
    }

    async fn holder(&self, key: &str) -> Result<Option<Holding>, LockError> {
        self.store.holder(key).await
    }
}

#[test]
fn renewals_and_a_refused_renewal_are_counted_under_the_users_class() {
    let seen = recorded(|| async {
        let store = Refusing::default();
        let locker = Locker::new(store.clone())
            .auto_renew(true)
            .metrics_key_class(|key| {
                if key.starts_with("report") {
                    "report"
                } else {
                    "other"
                }
            });
        let ttl = Duration::from_millis(90);
        let guard = locker
            .acquire("report:nightly", ttl)
            .await
            .expect("acquire");
        // Renewed every 30 ms: at least two renewals in 100 ms.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!guard.is_lost());
        store.refuse.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(5), guard.lost())
            .await
            .expect("the refused renewal ends the lease");
        assert!(matches!(guard.release().await, Err(LockError::Lost)));
    });
    let report = [("backend", "Refusing"), ("key_class", "report")];
    let renewals = seen.counter("tower_lock_renewals_total", &report);
    assert!(
        (2..=4).contains(&renewals),
        "{renewals} renewals: {:?}",
        seen.names()
    );
    assert_eq!(
        seen.counter("tower_lock_renewal_failures_total", &report),
        1
    );
    assert_eq!(seen.counter("tower_lock_leases_lost_total", &report), 1);
}

#[cfg(feature = "axum")]
#[test]
fn the_layer_counts_requests_without_their_key() {
    use axum::{Router, body::Body, http::Request, routing::post};
    use tower::ServiceExt as _;
    use tower_lock::{LockLayer, middleware::key};

    let seen = recorded(|| async {
        let locker = Locker::in_memory().metrics_backend("ledger-memory");
        let app = Router::new()
            .route("/", post(|| async { "ok" }))
            .layer(LockLayer::new(locker, key::header("x-tenant-id")));
        let without = Request::post("/").body(Body::empty()).expect("request");
        let response = app.clone().oneshot(without).await.expect("infallible");
        assert_eq!(response.status(), 400);
        let with = Request::post("/")
            .header("x-tenant-id", "7")
            .body(Body::empty())
            .expect("request");
        let response = app.oneshot(with).await.expect("infallible");
        assert_eq!(response.status(), 200);
    });
    let backend = [("backend", "ledger-memory")];
    assert_eq!(
        seen.counter(
            "tower_lock_refusals_total",
            &[("backend", "ledger-memory"), ("reason", "missing_key")]
        ),
        1,
        "{:?}",
        seen.names()
    );
    assert_eq!(seen.counter("tower_lock_acquisitions_total", &backend), 1);
}
