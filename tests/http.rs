//! LockLayer and the axum extractors over real HTTP on loopback.

#![cfg(feature = "axum")]

#[allow(dead_code)]
#[path = "conformance/overlap.rs"]
mod overlap;
mod support;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{FromRequestParts, Path, State},
    http::{StatusCode, request::Parts},
    routing::{get, post},
};
use futures_util::future::join_all;
use overlap::OverlapChecker;
use support::http::{client, one_stream, serve};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tower_http::catch_panic::CatchPanicLayer;
use tower_lock::{
    LockError, LockLayer, LockService, Locker,
    backend::{AcquireRequest, Attempt, Backend, Holding, Lease, Subscription},
    extract::{HeldLock, LockKey, Locked},
    middleware::{MissingKey, key},
};

const LIVENESS: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(30);

/// `POST http://{addr}/` with the lock key in `x-key`.
async fn post_key(addr: SocketAddr, key: &str) -> reqwest::Response {
    client()
        .post(format!("http://{addr}/"))
        .header("x-key", key)
        .send()
        .await
        .expect("send")
}

/// Polls `condition` until it holds; panics after a generous bound.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + LIVENESS;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A store that is down: every call fails as a real client's would.
#[derive(Debug)]
struct DownBackend;

fn refused() -> LockError {
    LockError::unavailable(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused",
    ))
}

#[async_trait::async_trait]
impl Backend for DownBackend {
    async fn try_acquire(&self, _: &AcquireRequest<'_>) -> Result<Attempt, LockError> {
        Err(refused())
    }

    async fn extend(&self, _: &str, _: &Lease, _: Duration) -> Result<Option<u64>, LockError> {
        Err(refused())
    }

    async fn release(&self, _: &str, _: &Lease) -> Result<bool, LockError> {
        Err(refused())
    }

    async fn subscribe(&self, _: &str) -> Result<Subscription, LockError> {
        Err(refused())
    }

    async fn holder(&self, _: &str) -> Result<Option<Holding>, LockError> {
        Err(refused())
    }
}

#[test]
fn static_properties() {
    fn send_sync_clone<T: Send + Sync + Clone>() {}
    send_sync_clone::<LockLayer<key::Header>>();
    send_sync_clone::<LockService<Router, key::PathParam>>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_key_requests_never_overlap() {
    const ACCOUNTS: usize = 3;
    const PER_ACCOUNT: usize = 15;
    let checkers: Arc<HashMap<String, OverlapChecker>> = Arc::new(
        (0..ACCOUNTS)
            .map(|i| (format!("account:{i}"), OverlapChecker::default()))
            .collect(),
    );
    let handler = {
        let checkers = checkers.clone();
        move |lock: HeldLock| async move {
            let _section = checkers[lock.key()].enter(lock.fence());
            tokio::time::sleep(Duration::from_millis(3)).await;
            lock.key().to_owned()
        }
    };
    let locker = Locker::in_memory();
    let app = Router::new()
        .route("/accounts/{id}", post(handler))
        .route_layer(LockLayer::new(
            locker.clone(),
            key::path_param("id").prefixed("account:"),
        ));
    let addr = serve(app).await;
    let client = client();
    let requests = (0..ACCOUNTS * PER_ACCOUNT).map(|i| {
        let (client, account) = (client.clone(), i % ACCOUNTS);
        async move {
            let response = client
                .post(format!("http://{addr}/accounts/{account}"))
                .send()
                .await
                .expect("send");
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response.text().await.expect("body"),
                format!("account:{account}")
            );
        }
    });
    join_all(requests).await;
    for checker in checkers.values() {
        checker.assert_exclusive(PER_ACCOUNT);
    }
    eventually("all locks released", || locker.held_count() == 0).await;
}

/// Two replicas of one service, each with its own `Locker` over one shared
/// store (two nodes on one bus): requests for one account never overlap,
/// whichever replica serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_at_a_time_across_replicas() {
    const REQUESTS: usize = 40;
    let checker = Arc::new(OverlapChecker::default());
    let bus = tower_lock::bus::LocalBus::new();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let checker = checker.clone();
        let handler = move |lock: HeldLock| async move {
            let _section = checker.enter(lock.fence());
            tokio::time::sleep(Duration::from_millis(3)).await;
        };
        let locker = Locker::new(tower_lock::memory::MemoryBackend::with_bus(bus.clone()));
        let app = Router::new()
            .route("/accounts/{id}", post(handler))
            .route_layer(LockLayer::new(locker.clone(), key::path_param("id")));
        replicas.push((serve(app).await, locker));
    }
    let client = client();
    let requests = (0..REQUESTS).map(|i| {
        let (client, addr) = (client.clone(), replicas[i % 2].0);
        async move {
            let response = client
                .post(format!("http://{addr}/accounts/7"))
                .send()
                .await
                .expect("send");
            assert_eq!(response.status(), StatusCode::OK);
        }
    });
    join_all(requests).await;
    checker.assert_exclusive(REQUESTS);
    for (_, locker) in &replicas {
        eventually("all locks released", || locker.held_count() == 0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn different_keys_run_at_the_same_time() {
    const KEYS: usize = 4;
    // Every handler waits inside its lock until all of them are inside: this
    // only completes if the locks of different keys are held at once.
    let barrier = Arc::new(tokio::sync::Barrier::new(KEYS));
    let handler = move || async move {
        match tokio::time::timeout(LIVENESS, barrier.wait()).await {
            Ok(_) => StatusCode::OK,
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    };
    let app = Router::new()
        .route("/work/{id}", post(handler))
        .route_layer(LockLayer::new(Locker::in_memory(), key::path_param("id")));
    let addr = serve(app).await;
    let client = client();
    let statuses = join_all((0..KEYS).map(|i| {
        let client = client.clone();
        async move {
            let response = client.post(format!("http://{addr}/work/{i}")).send().await;
            response.expect("send").status()
        }
    }))
    .await;
    assert_eq!(statuses, vec![StatusCode::OK; KEYS]);
}

fn counting_app(layer: LockLayer<key::Header>, ran: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route(
            "/",
            post(move |lock: Option<HeldLock>| async move {
                ran.fetch_add(1, Ordering::SeqCst);
                match lock {
                    Some(lock) => format!("locked {}", lock.key()),
                    None => "unlocked".to_owned(),
                }
            }),
        )
        .layer(layer)
}

#[tokio::test]
async fn busy_key_gets_423_with_retry_after() {
    let locker = Locker::in_memory();
    let ran = Arc::new(AtomicUsize::new(0));
    let layer = LockLayer::new(locker.clone(), key::header("x-key")).ttl(TTL);
    let fail_fast = serve(counting_app(layer.clone().no_wait(), ran.clone())).await;
    let short_wait = serve(counting_app(
        layer.clone().wait_timeout(Duration::from_millis(100)),
        ran.clone(),
    ))
    .await;
    let not_renewing = serve(counting_app(
        layer.clone().no_wait().auto_renew(false),
        ran.clone(),
    ))
    .await;
    let fixed = serve(counting_app(
        layer
            .clone()
            .no_wait()
            .retry_after(Duration::from_secs(7))
            .busy_status(StatusCode::CONFLICT),
        ran.clone(),
    ))
    .await;
    let retry_after = |response: &reqwest::Response| -> u64 {
        let value = response.headers()["retry-after"].to_str().expect("ascii");
        value.parse().expect("seconds")
    };

    let holder = locker.acquire("k", TTL).await.expect("lock");
    for addr in [fail_fast, short_wait] {
        let response = post_key(addr, "k").await;
        assert_eq!(response.status(), StatusCode::LOCKED);
        // Holders renew their leases: their remaining lease says nothing.
        assert_eq!(retry_after(&response), 1);
    }
    let response = post_key(not_renewing, "k").await;
    assert_eq!(response.status(), StatusCode::LOCKED);
    // The holder's lease has about 30 s left; the in-memory store adds its
    // clock's lag (a few ms), which rounds up to one more second.
    let left = retry_after(&response);
    assert!((25..=31).contains(&left), "Retry-After: {left}");
    let response = post_key(fixed, "k").await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(retry_after(&response), 7);
    assert_eq!(ran.load(Ordering::SeqCst), 0, "a refused request ran");

    holder.release().await.expect("release");
    let response = post_key(fail_fast, "k").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("body"), "locked k");
}

#[tokio::test]
async fn waiting_requests_get_the_lock_when_it_is_released() {
    let locker = Locker::in_memory();
    let ran = Arc::new(AtomicUsize::new(0));
    let layer = LockLayer::new(locker.clone(), key::header("x-key")).wait_timeout(LIVENESS);
    let addr = serve(counting_app(layer, ran.clone())).await;
    let holder = locker.acquire("k", TTL).await.expect("lock");
    let waiting = tokio::spawn(
        client()
            .post(format!("http://{addr}/"))
            .header("x-key", "k")
            .send(),
    );
    eventually("the request queues", || locker.queued_keys() == 1).await;
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    holder.release().await.expect("release");
    let response = waiting.await.expect("task").expect("send");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn unreachable_store_gets_503_and_the_handler_never_runs() {
    let ran = Arc::new(AtomicUsize::new(0));
    let layer = LockLayer::new(Locker::new(DownBackend), key::header("x-key"));
    let addr = serve(counting_app(layer, ran.clone())).await;
    let response = post_key(addr, "k").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get("retry-after").is_none());
    assert_eq!(ran.load(Ordering::SeqCst), 0, "ran without its lock");
}

#[tokio::test]
async fn keys_that_are_missing_or_invalid() {
    let ran = Arc::new(AtomicUsize::new(0));
    let layer = LockLayer::new(Locker::in_memory(), key::header("x-key"));
    // Refused by default, naming where the key was looked for.
    let strict = serve(counting_app(layer.clone(), ran.clone())).await;
    let lenient = serve(counting_app(
        layer.missing_key(MissingKey::PassThrough),
        ran.clone(),
    ))
    .await;

    let response = client()
        .post(format!("http://{strict}/"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = response.text().await.expect("body");
    assert!(body.contains("header x-key"), "{body}");
    assert_eq!(ran.load(Ordering::SeqCst), 0, "ran without its key");

    // Passed through only by explicit choice.
    let response = client()
        .post(format!("http://{lenient}/"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("body"), "unlocked");
    assert_eq!(ran.swap(0, Ordering::SeqCst), 1);

    let too_long = "x".repeat(tower_lock::MAX_KEY_LEN + 1);
    for addr in [lenient, strict] {
        let response = client()
            .post(format!("http://{addr}/"))
            .header("x-key", &too_long)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn custom_rejection_responses() {
    let layer = LockLayer::new(Locker::new(DownBackend), key::header("x-key"))
        .on_rejection_response(|rejection| {
            let mut response = rejection.into_http_response();
            *response.body_mut() = Bytes::from_static(b"{\"error\":\"try later\"}");
            response
        });
    let addr = serve(counting_app(layer, Arc::default())).await;
    let response = post_key(addr, "k").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.text().await.expect("body"),
        "{\"error\":\"try later\"}"
    );
}

#[tokio::test]
async fn client_disconnect_while_waiting_leaves_nothing_behind() {
    let locker = Locker::in_memory();
    let ran = Arc::new(AtomicUsize::new(0));
    let layer = LockLayer::new(locker.clone(), key::header("x-key")).wait_timeout(LIVENESS);
    let addr = serve(counting_app(layer, ran.clone())).await;
    let holder = locker.acquire("k", TTL).await.expect("lock");

    let mut connection = TcpStream::connect(addr).await.expect("connect");
    connection
        .write_all(b"POST / HTTP/1.1\r\nhost: test\r\nx-key: k\r\ncontent-length: 0\r\n\r\n")
        .await
        .expect("write");
    eventually("the request queues", || locker.queued_keys() == 1).await;
    drop(connection);
    eventually("the waiter leaves", || locker.queued_keys() == 0).await;

    holder.release().await.expect("release");
    eventually("nothing is held", || locker.held_count() == 0).await;
    let again = locker.try_lock("k", TTL).await.expect("try");
    assert!(again.is_some(), "the key stayed locked");
    assert_eq!(ran.load(Ordering::SeqCst), 0, "the abandoned request ran");
}

#[tokio::test]
async fn a_panicking_handler_releases_its_lock() {
    let locker = Locker::in_memory();
    let app = Router::new()
        .route(
            "/boom/{id}",
            post(|| async {
                if true {
                    panic!("handler bug");
                }
            }),
        )
        .route_layer(LockLayer::new(locker.clone(), key::path_param("id")))
        .layer(CatchPanicLayer::new());
    let addr = serve(app).await;
    let response = client()
        .post(format!("http://{addr}/boom/1"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    eventually("the lock is released", || locker.held_count() == 0).await;
    assert!(locker.try_lock("1", TTL).await.expect("try").is_some());
}

/// Serves `GET /report/{id}` behind `LockLayer`: the (single) response body
/// streams whatever the returned sender sends, and ends when it is dropped.
async fn streaming_report(locker: &Locker) -> (tokio::sync::mpsc::Sender<Bytes>, SocketAddr) {
    let (tx, handler) = one_stream();
    let app = Router::new()
        .route("/report/{id}", get(handler))
        .route_layer(LockLayer::new(locker.clone(), key::path_param("id")));
    (tx, serve(app).await)
}

#[tokio::test]
async fn a_streamed_body_holds_the_lock_until_its_last_frame() {
    let locker = Locker::in_memory();
    let (tx, addr) = streaming_report(&locker).await;

    tx.send(Bytes::from_static(b"first")).await.expect("send");
    let mut response = client()
        .get(format!("http://{addr}/report/7"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.chunk().await.expect("chunk").expect("data"),
        "first"
    );
    assert!(
        locker.try_lock("7", TTL).await.expect("try").is_none(),
        "released while the body was still streaming"
    );

    tx.send(Bytes::from_static(b"last")).await.expect("send");
    drop(tx);
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"last");
    eventually("the lock is released", || locker.held_count() == 0).await;
    assert!(locker.try_lock("7", TTL).await.expect("try").is_some());
}

#[tokio::test]
async fn a_response_the_client_abandons_releases() {
    let locker = Locker::in_memory();
    let (_tx, addr) = streaming_report(&locker).await;

    let mut connection = TcpStream::connect(addr).await.expect("connect");
    connection
        .write_all(b"GET /report/7 HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .expect("write");
    let mut head = [0u8; 12];
    connection.read_exact(&mut head).await.expect("status line");
    assert_eq!(&head, b"HTTP/1.1 200");
    assert_eq!(locker.held_count(), 1);
    drop(connection);
    eventually("the lock is released", || locker.held_count() == 0).await;
}

#[tokio::test]
async fn held_lock_without_the_layer_is_a_500_naming_it() {
    let app = Router::new()
        .route(
            "/strict",
            get(|lock: HeldLock| async move { lock.fence().to_string() }),
        )
        .route(
            "/optional",
            get(|lock: Option<HeldLock>| async move { format!("{:?}", lock.map(|l| l.fence())) }),
        );
    let addr = serve(app).await;
    let response = client()
        .get(format!("http://{addr}/strict"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.text().await.expect("body").contains("LockLayer"));
    let response = client()
        .get(format!("http://{addr}/optional"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.text().await.expect("body"), "None");
}

/// `Locked<Account>`: one request per `{id}`.
struct Account;

impl<S: Send + Sync> LockKey<S> for Account {
    type Rejection = axum::extract::rejection::PathRejection;
    const WAIT: Duration = Duration::from_millis(100);

    async fn lock_key(parts: &mut Parts, state: &S) -> Result<String, Self::Rejection> {
        let Path(id) = Path::<u32>::from_request_parts(parts, state).await?;
        Ok(format!("account:{id}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locked_extractor_serialises_and_refuses() {
    const REQUESTS: usize = 12;
    let locker = Locker::in_memory();
    let checker = Arc::new(OverlapChecker::default());
    let handler = {
        let checker = checker.clone();
        move |State(_): State<Locker>, lock: Locked<Account>| async move {
            let _section = checker.enter(lock.fence());
            tokio::time::sleep(Duration::from_millis(3)).await;
            lock.key().to_owned()
        }
    };
    let app = Router::new()
        .route("/accounts/{id}", post(handler))
        .with_state(locker.clone());
    let addr = serve(app).await;
    let client = client();

    // Serialised: the extractor's wait is short, so queue within it.
    let statuses = join_all((0..REQUESTS).map(|_| {
        let client = client.clone();
        async move {
            let response = client
                .post(format!("http://{addr}/accounts/1"))
                .send()
                .await;
            response.expect("send").status()
        }
    }))
    .await;
    let served = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::LOCKED),
        "{statuses:?}"
    );
    assert!(
        served >= 2,
        "requests must queue and be served in turn: {statuses:?}"
    );
    checker.assert_exclusive(served);
    eventually("all released", || locker.held_count() == 0).await;

    // Busy.
    let holder = locker.acquire("account:1", TTL).await.expect("lock");
    let response = client
        .post(format!("http://{addr}/accounts/1"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::LOCKED);
    assert!(response.headers().contains_key("retry-after"));
    drop(holder);

    // The key's own rejection.
    let response = client
        .post(format!("http://{addr}/accounts/not-a-number"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // The store is down.
    let down = Router::new()
        .route("/accounts/{id}", post(|_: Locked<Account>| async { "ran" }))
        .with_state(Locker::new(DownBackend));
    let down = serve(down).await;
    let response = client
        .post(format!("http://{down}/accounts/1"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn ready_extractors_key_by_route_and_by_parameter() {
    let key_of = |lock: HeldLock| async move { lock.key().to_owned() };
    // A `route_layer` covers the routes added before it: the parameter's
    // layer first, so that the route without that parameter is not under
    // it (it would get 400, the key being missing).
    let app = Router::new()
        .route("/by-param/{id}/{name}", post(key_of))
        .route_layer(LockLayer::new(
            Locker::in_memory(),
            key::path_param("name").prefixed("user:"),
        ))
        .route("/by-route/{id}", post(key_of))
        .route_layer(LockLayer::new(Locker::in_memory(), key::method_and_path()));
    let addr = serve(app).await;
    let key = |path: &'static str| {
        let client = client();
        async move {
            let response = client.post(format!("http://{addr}{path}")).send().await;
            response.expect("send").text().await.expect("body")
        }
    };
    assert_eq!(key("/by-route/1").await, "POST /by-route/{id}");
    assert_eq!(key("/by-route/2").await, "POST /by-route/{id}");
    // Percent-decoded, any characters.
    assert_eq!(key("/by-param/1/j%C3%BCrgen%20k").await, "user:jürgen k");
}

/// A store whose renewals stall: a lease runs out under its holder.
#[derive(Debug, Clone, Default)]
struct StalledRenewals(tower_lock::memory::MemoryBackend);

#[async_trait::async_trait]
impl Backend for StalledRenewals {
    async fn try_acquire(&self, request: &AcquireRequest<'_>) -> Result<Attempt, LockError> {
        self.0.try_acquire(request).await
    }

    /// Answers only after a second, with a failure: a store unreachable
    /// past the lease.
    async fn extend(&self, _: &str, _: &Lease, _: Duration) -> Result<Option<u64>, LockError> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Err(refused())
    }

    async fn release(&self, key: &str, lease: &Lease) -> Result<bool, LockError> {
        self.0.release(key, lease).await
    }

    async fn subscribe(&self, key: &str) -> Result<Subscription, LockError> {
        self.0.subscribe(key).await
    }

    async fn holder(&self, key: &str) -> Result<Option<Holding>, LockError> {
        self.0.holder(key).await
    }
}

/// Counts the handlers that were dropped before they finished.
#[derive(Default)]
struct Stops {
    started: AtomicUsize,
    finished: AtomicUsize,
    dropped: AtomicUsize,
}

struct DropCounter(Arc<Stops>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// A handler that takes `work` after it started, behind `layer`.
fn slow_app(layer: LockLayer<key::Header>, stops: Arc<Stops>, work: Duration) -> Router {
    Router::new()
        .route(
            "/",
            post(move |lock: HeldLock| async move {
                let counter = DropCounter(stops.clone());
                stops.started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(work).await;
                assert!(!lock.is_lost(), "ran on past its lost lease");
                stops.finished.fetch_add(1, Ordering::SeqCst);
                std::mem::forget(counter);
                "done"
            }),
        )
        .layer(layer)
}

#[tokio::test]
async fn a_lost_lease_stops_the_handler_and_answers_503() {
    let stops = Arc::new(Stops::default());
    let locker = Locker::new(StalledRenewals::default());
    // Renewals (every 100 ms) never answer: the request counts its lease
    // lost at 9/10 of the ttl, before the store could hand the key on.
    let layer =
        LockLayer::new(locker.clone(), key::header("x-key")).ttl(Duration::from_millis(300));
    let addr = serve(slow_app(layer, stops.clone(), LIVENESS)).await;
    let response = post_key(addr, "k").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(stops.started.load(Ordering::SeqCst), 1);
    assert_eq!(
        stops.finished.load(Ordering::SeqCst),
        0,
        "the handler finished"
    );
    assert_eq!(
        stops.dropped.load(Ordering::SeqCst),
        1,
        "the handler was not stopped"
    );
    eventually("the lease is given back", || locker.held_count() == 0).await;
}

#[tokio::test]
async fn a_handler_sees_its_lease_lost_and_can_stop_on_its_own() {
    let locker = Locker::new(StalledRenewals::default());
    let layer = LockLayer::new(locker, key::header("x-key")).ttl(Duration::from_millis(300));
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let seen_tx = Arc::new(Mutex::new(Some(seen_tx)));
    // Work the handler hands to a task of its own is not stopped with the
    // handler's future: it watches the lease itself.
    let app = Router::new()
        .route(
            "/",
            post(move |lock: HeldLock| async move {
                assert!(!lock.is_lost());
                let seen_tx = seen_tx.lock().expect("tx").take();
                tokio::spawn(async move {
                    lock.lost().await;
                    if let Some(tx) = seen_tx {
                        let _ = tx.send(lock.is_lost());
                    }
                });
                std::future::pending::<()>().await;
            }),
        )
        .layer(layer);
    let addr = serve(app).await;
    let response = post_key(addr, "k").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let seen = tokio::time::timeout(LIVENESS, seen_rx).await;
    assert!(
        seen.expect("lost() resolved").expect("sent"),
        "is_lost() after lost()"
    );
}

/// Streams chunks from the returned sender behind `layer`, on `GET /`.
async fn streaming_app(
    layer: LockLayer<key::Header>,
) -> (tokio::sync::mpsc::Sender<Bytes>, SocketAddr) {
    let (tx, handler) = one_stream();
    (
        tx,
        serve(Router::new().route("/", get(handler)).layer(layer)).await,
    )
}

/// Reads the body until it ends; `Err` when it was cut.
async fn read_to_end(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut all = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        all.extend_from_slice(&chunk);
    }
    Ok(all)
}

#[tokio::test]
async fn a_lost_lease_cuts_a_streamed_body() {
    let locker = Locker::new(StalledRenewals::default());
    let layer =
        LockLayer::new(locker.clone(), key::header("x-key")).ttl(Duration::from_millis(300));
    let (tx, addr) = streaming_app(layer).await;
    tx.send(Bytes::from_static(b"first")).await.expect("send");
    let response = client()
        .get(format!("http://{addr}/"))
        .header("x-key", "k")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let read = tokio::time::timeout(LIVENESS, read_to_end(response)).await;
    assert!(
        read.expect("the body ended").is_err(),
        "a cut body read as whole"
    );
    eventually("the lease is given back", || locker.held_count() == 0).await;
    drop(tx);
}

#[tokio::test]
async fn a_body_held_past_max_hold_is_cut_and_the_key_released() {
    let locker = Locker::in_memory();
    let layer =
        LockLayer::new(locker.clone(), key::header("x-key")).max_hold(Duration::from_millis(300));
    let (tx, addr) = streaming_app(layer).await;
    tx.send(Bytes::from_static(b"first")).await.expect("send");
    let mut response = client()
        .get(format!("http://{addr}/"))
        .header("x-key", "k")
        .send()
        .await
        .expect("send");
    assert_eq!(
        response.chunk().await.expect("chunk").expect("data"),
        "first"
    );
    // The client keeps the connection and reads nothing more; the sender
    // never ends the stream.
    eventually("the key is released", || locker.held_count() == 0).await;
    assert!(locker.try_lock("k", TTL).await.expect("try").is_some());
    let rest = tokio::time::timeout(LIVENESS, read_to_end(response)).await;
    assert!(
        rest.expect("the body ended").is_err(),
        "a cut body read as whole"
    );
    drop(tx);
}

/// An endless body that is always ready (an export from memory, a file in
/// the page cache): 16 KiB chunks, counted as they are made.
fn endless_body(made: Arc<AtomicUsize>) -> Body {
    static CHUNK: [u8; 16 * 1024] = [b'x'; 16 * 1024];
    Body::from_stream(futures_util::stream::repeat_with(move || {
        made.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>(Bytes::from_static(&CHUNK))
    }))
}

/// Serves [`endless_body`] on `GET /` behind `layer`.
async fn endless_app(layer: LockLayer<key::Header>, made: Arc<AtomicUsize>) -> SocketAddr {
    let handler = move || {
        let made = made.clone();
        async move { endless_body(made) }
    };
    serve(Router::new().route("/", get(handler)).layer(layer)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_ready_body_is_cut_once_its_lease_is_lost() {
    // What may still arrive once the key has passed on: what the sockets
    // and the client's buffers held when the body was cut. An uncut body
    // sends that many bytes on loopback in a few milliseconds.
    const IN_FLIGHT: u64 = 16 << 20;
    let memory = tower_lock::memory::MemoryBackend::new();
    // Renewals never answer: the request counts its lease lost at 270 ms,
    // and the store frees the key at 300 ms.
    let locker = Locker::new(StalledRenewals(memory.clone()));
    let other = Locker::new(memory);
    let layer =
        LockLayer::new(locker.clone(), key::header("x-key")).ttl(Duration::from_millis(300));
    let made = Arc::new(AtomicUsize::new(0));
    let addr = endless_app(layer, made.clone()).await;
    let mut response = client()
        .get(format!("http://{addr}/"))
        .header("x-key", "k")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let received = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let received = received.clone();
        async move {
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => received.fetch_add(chunk.len() as u64, Ordering::SeqCst),
                    Ok(None) => return Ok(()),
                    Err(cut) => return Err(cut),
                };
            }
        }
    });
    let theirs = tokio::time::timeout(LIVENESS, other.acquire("k", TTL))
        .await
        .expect("the key never passed on")
        .expect("acquire");
    let (made_then, received_then) = (made.load(Ordering::SeqCst), received.load(Ordering::SeqCst));
    let ended = tokio::time::timeout(Duration::from_secs(2), reader).await;
    let received_after = received.load(Ordering::SeqCst) - received_then;
    let made_after = made.load(Ordering::SeqCst) - made_then;
    let Ok(ended) = ended else {
        panic!(
            "still streaming 2 s after another locker took the key: {received_after} bytes since, {made_after} chunks made"
        );
    };
    assert!(ended.expect("reader").is_err(), "a cut body read as whole");
    assert_eq!(
        made_after, 0,
        "chunks made while another locker held the key"
    );
    assert!(
        received_after <= IN_FLIGHT,
        "{received_after} bytes arrived after another locker took the key"
    );
    assert!(!theirs.is_lost());
    eventually("the lease is given back", || locker.held_count() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_keeps_the_key_at_most_max_hold_and_one_ttl() {
    const MAX_HOLD: Duration = Duration::from_millis(400);
    const LEASE: Duration = Duration::from_millis(400);
    const MARGIN: Duration = Duration::from_millis(600);
    let memory = tower_lock::memory::MemoryBackend::new();
    let (locker, other) = (Locker::new(memory.clone()), Locker::new(memory));
    let layer = LockLayer::new(locker.clone(), key::header("x-key"))
        .ttl(LEASE)
        .max_hold(MAX_HOLD);
    let made = Arc::new(AtomicUsize::new(0));
    let addr = endless_app(layer, made.clone()).await;
    let start = tokio::time::Instant::now();
    let mut connection = TcpStream::connect(addr).await.expect("connect");
    connection
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nx-key: k\r\n\r\n")
        .await
        .expect("write");
    eventually("the body streams", || made.load(Ordering::SeqCst) > 0).await;
    assert!(
        other.try_lock("k", TTL).await.expect("try").is_none(),
        "the request does not hold its key"
    );
    // The client reads nothing: once the sockets are full, hyper polls the
    // body no more, and only the lease running out frees the key.
    let freed = tokio::time::timeout_at(start + MAX_HOLD + LEASE + MARGIN, async {
        loop {
            if let Some(guard) = other.try_lock("k", TTL).await.expect("try") {
                return guard;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a client that never reads kept the key past max_hold plus one ttl");
    assert_eq!(
        locker.held_count(),
        1,
        "the body was polled and released: the lease did not run out on its own"
    );
    // Read again, the body is cut at its next poll and the connection ends.
    let mut sink = vec![0u8; 64 * 1024];
    let drained = tokio::time::timeout(LIVENESS, async {
        while let Ok(1..) = connection.read(&mut sink).await {}
    })
    .await;
    assert!(drained.is_ok(), "the body was not cut once read again");
    eventually("the lease is given back", || locker.held_count() == 0).await;
    assert!(!freed.is_lost());
}

#[tokio::test]
async fn a_max_hold_past_the_clocks_range_never_stops_a_request() {
    let locker = Locker::in_memory();
    let layer = LockLayer::new(locker.clone(), key::header("x-key")).max_hold(Duration::MAX);
    let app = Router::new()
        .route("/", post(|| async { "done" }))
        .layer(layer);
    let addr = serve(app).await;
    let response = post_key(addr, "k").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("body"), "done");
    eventually("the key is released", || locker.held_count() == 0).await;
}

#[tokio::test]
async fn a_handler_past_max_hold_is_stopped_with_503() {
    let stops = Arc::new(Stops::default());
    let locker = Locker::in_memory();
    let layer =
        LockLayer::new(locker.clone(), key::header("x-key")).max_hold(Duration::from_millis(200));
    let addr = serve(slow_app(layer, stops.clone(), LIVENESS)).await;
    let response = post_key(addr, "k").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        stops.dropped.load(Ordering::SeqCst),
        1,
        "the handler was not stopped"
    );
    assert_eq!(stops.finished.load(Ordering::SeqCst), 0);
    eventually("the key is released", || locker.held_count() == 0).await;
}

#[tokio::test]
async fn a_path_parameter_key_outside_routing_is_a_500_never_a_pass_through() {
    use tower::Layer as _;

    let ran = Arc::new(AtomicUsize::new(0));
    let counted = |ran: Arc<AtomicUsize>| {
        post(move || async move {
            ran.fetch_add(1, Ordering::SeqCst);
            "ran"
        })
    };
    let layer = LockLayer::new(Locker::in_memory(), key::path_param("id"));
    // Around the whole router, as a service: no request has parameters.
    let outside = layer
        .clone()
        .layer(Router::new().route("/accounts/{id}", counted(ran.clone())));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let outside_addr = listener.local_addr().expect("addr");
    let outside = tower::ServiceExt::<axum::extract::Request>::map_response(
        outside,
        |r: http::Response<_>| r.map(Body::new),
    );
    let outside = axum::ServiceExt::<axum::extract::Request>::into_make_service(outside);
    tokio::spawn(async move { axum::serve(listener, outside).await });
    let response = client()
        .post(format!("http://{outside_addr}/accounts/1"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = response.text().await.expect("body");
    assert!(body.contains("route_layer"), "{body}");
    assert_eq!(ran.load(Ordering::SeqCst), 0, "ran unlocked");

    // Under `Router::layer`, matched routes are locked and the fallback,
    // which matched no route, gets the same 500.
    let layered = Router::new()
        .route("/accounts/{id}", counted(ran.clone()))
        .fallback(|| async { "fallback" })
        .layer(layer);
    let addr = serve(layered).await;
    let matched = client()
        .post(format!("http://{addr}/accounts/1"))
        .send()
        .await;
    assert_eq!(matched.expect("send").status(), StatusCode::OK);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    let fallback = client().post(format!("http://{addr}/nowhere")).send().await;
    assert_eq!(
        fallback.expect("send").status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[tokio::test]
async fn a_typed_path_parameter_locks_its_canonical_form() {
    let app = Router::new()
        .route(
            "/accounts/{id}",
            post(|lock: HeldLock| async move { lock.key().to_owned() }),
        )
        .route_layer(LockLayer::new(
            Locker::in_memory(),
            key::path_param_as::<u64>("id").prefixed("account:"),
        ));
    let addr = serve(app).await;
    for spelling in ["7", "07", "+7"] {
        let response = client()
            .post(format!("http://{addr}/accounts/{spelling}"))
            .send()
            .await
            .expect("send");
        assert_eq!(
            response.text().await.expect("body"),
            "account:7",
            "{spelling}"
        );
    }
    let response = client()
        .post(format!("http://{addr}/accounts/seven"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn methods_outside_the_filter_pass_through_unlocked() {
    let locker = Locker::in_memory();
    let which = |lock: Option<HeldLock>| async move {
        lock.map_or("unlocked".to_owned(), |lock| {
            format!("locked {}", lock.key())
        })
    };
    let app = Router::new()
        .route("/", get(which).post(which))
        .layer(LockLayer::new(locker.clone(), key::header("x-key")).methods([http::Method::POST]));
    let addr = serve(app).await;
    let _held = locker.acquire("k", TTL).await.expect("lock");
    let read = client()
        .get(format!("http://{addr}/"))
        .header("x-key", "k")
        .send()
        .await;
    assert_eq!(read.expect("send").text().await.expect("body"), "unlocked");
    // A read needs no key either.
    let keyless = client().get(format!("http://{addr}/")).send().await;
    assert_eq!(keyless.expect("send").status(), StatusCode::OK);
    let write = client()
        .post(format!("http://{addr}/"))
        .header("x-key", "other")
        .send()
        .await;
    assert_eq!(
        write.expect("send").text().await.expect("body"),
        "locked other"
    );
}

#[tokio::test]
async fn waiting_requests_hold_no_capacity_of_the_inner_service() {
    let locker = Locker::in_memory();
    let app = Router::new().route("/", post(|| async { "ok" })).layer(
        tower::ServiceBuilder::new()
            .layer(LockLayer::new(locker.clone(), key::header("x-key")).wait_timeout(LIVENESS))
            .layer(tower::limit::ConcurrencyLimitLayer::new(1)),
    );
    let addr = serve(app).await;
    let held = locker.acquire("a", TTL).await.expect("lock");
    let waiters: Vec<_> = (0..3).map(|_| tokio::spawn(post_key(addr, "a"))).collect();
    eventually("the requests for a wait", || locker.queued_keys() == 1).await;
    let other = tokio::time::timeout(Duration::from_secs(3), post_key(addr, "b")).await;
    let other = other.expect("a waiting request held the only slot");
    assert_eq!(other.status(), StatusCode::OK);
    drop(held);
    for waiter in waiters {
        assert_eq!(waiter.await.expect("task").status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn rejections_shaped_as_any_axum_response() {
    let layer = LockLayer::new(Locker::new(DownBackend), key::header("x-key")).on_rejection(
        |rejection: tower_lock::middleware::LockRejection| {
            (
                rejection.status(),
                axum::Json(serde_json::json!({ "error": rejection.body_text() })),
            )
        },
    );
    let addr = serve(counting_app(layer, Arc::default())).await;
    let response = post_key(addr, "k").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value =
        serde_json::from_str(&response.text().await.expect("body")).expect("json");
    assert_eq!(body["error"], "The lock service is unavailable.");
}

#[test]
#[should_panic(expected = "LockLayer::ttl")]
fn an_invalid_ttl_is_refused_when_the_layer_is_built() {
    let _ = LockLayer::new(Locker::in_memory(), key::header("x-key")).ttl(Duration::ZERO);
}

/// A handler that asks for the key its request already holds gets an answer
/// at once, never a wait for itself; other keys, and other requests for the
/// same key, behave as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_asking_for_its_own_key_is_answered_at_once() {
    let locker = Locker::in_memory();
    let handler = |State(locker): State<Locker>, lock: HeldLock| async move {
        let again = locker.acquire(lock.key(), TTL).await;
        let tried = locker.try_lock(lock.key(), TTL).await;
        let set = locker.acquire_all(["elsewhere", lock.key()], TTL).await;
        let other = locker.acquire("elsewhere", TTL).await;
        match (again, tried, set, other) {
            (
                Err(LockError::HeldByThisRequest { key }),
                Err(LockError::HeldByThisRequest { .. }),
                Err(LockError::HeldByThisRequest { .. }),
                Ok(_),
            ) => format!("refused {key}"),
            (again, tried, set, other) => format!("{again:?} {tried:?} {set:?} {other:?}"),
        }
    };
    let app = Router::new()
        .route("/accounts/{id}", post(handler))
        .route("/locked/{id}", post(|_: Locked<Account>| async { "ran" }))
        .route_layer(LockLayer::new(
            locker.clone(),
            key::path_param_as::<u32>("id").prefixed("account:"),
        ))
        .with_state(locker.clone());
    let addr = serve(app).await;
    let response = tokio::time::timeout(
        Duration::from_secs(3),
        client().post(format!("http://{addr}/accounts/7")).send(),
    )
    .await
    .expect("answered at once");
    assert_eq!(
        response.expect("send").text().await.expect("body"),
        "refused account:7"
    );
    // `Locked<K>` on the layer's key: at once, not after its wait (423).
    let response = tokio::time::timeout(
        Duration::from_secs(3),
        client().post(format!("http://{addr}/locked/7")).send(),
    )
    .await
    .expect("answered at once");
    assert_eq!(
        response.expect("send").status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    eventually("all released", || locker.held_count() == 0).await;
}

/// The request counts its lease lost at 9/10 of the ttl after its last
/// successful renewal was sent, so its handler is stopped before the store
/// can hand the key to anyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handler_is_stopped_before_its_key_is_handed_on() {
    let backend = StalledRenewals::default();
    let locker = Locker::new(backend.clone());
    let stopped_at: Arc<Mutex<Option<tokio::time::Instant>>> = Arc::default();
    struct StopClock(Arc<Mutex<Option<tokio::time::Instant>>>);
    impl Drop for StopClock {
        fn drop(&mut self) {
            *self.0.lock().expect("clock") = Some(tokio::time::Instant::now());
        }
    }
    let handler = {
        let stopped_at = stopped_at.clone();
        move || async move {
            let _clock = StopClock(stopped_at);
            std::future::pending::<()>().await;
        }
    };
    let layer = LockLayer::new(locker, key::header("x-key")).ttl(Duration::from_millis(300));
    let addr = serve(Router::new().route("/", post(handler)).layer(layer)).await;
    let request = tokio::spawn(post_key(addr, "k"));
    // Another replica, over the same store, waits for the key.
    let other = Locker::new(backend.0.clone());
    eventually("the request holds the key", || backend.0.len() == 1).await;
    let taken = other
        .acquire_timeout("k", TTL, LIVENESS)
        .await
        .expect("handed on");
    let taken_at = tokio::time::Instant::now();
    let stopped = stopped_at
        .lock()
        .expect("clock")
        .expect("the handler was stopped");
    assert!(
        stopped <= taken_at,
        "the key was handed on while the handler ran"
    );
    assert_eq!(
        request.await.expect("task").status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    drop(taken);
}

/// A ledger of `ACCOUNTS` accounts whose transfers read both balances,
/// await, then write both: money is made or lost unless both are locked.
#[derive(Default)]
struct Ledger {
    balances: Mutex<HashMap<u32, i64>>,
}

impl Ledger {
    fn balance(&self, account: u32) -> i64 {
        *self
            .balances
            .lock()
            .expect("ledger")
            .get(&account)
            .unwrap_or(&0)
    }

    fn set(&self, account: u32, balance: i64) {
        self.balances
            .lock()
            .expect("ledger")
            .insert(account, balance);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfers_both_ways_through_the_layer_never_deadlock_and_conserve_money() {
    const ACCOUNTS: u32 = 4;
    const TRANSFERS: usize = 200;
    let ledger = Arc::new(Ledger::default());
    let locker = Locker::in_memory();
    let handler = {
        let ledger = ledger.clone();
        move |Path((from, to)): Path<(u32, u32)>, lock: HeldLock| async move {
            assert!(lock.fence_of(&format!("account:{from}")).is_some());
            assert!(lock.fence_of(&format!("account:{to}")).is_some());
            let (a, b) = (ledger.balance(from), ledger.balance(to));
            tokio::time::sleep(Duration::from_millis(1)).await;
            ledger.set(from, a - 5);
            ledger.set(to, b + 5);
            format!("{}", lock.fences().count())
        }
    };
    let app = Router::new()
        .route("/transfers/{from}/{to}", post(handler))
        .route_layer(
            LockLayer::new(
                locker.clone(),
                key::path_params(["from", "to"]).prefixed("account:"),
            )
            .wait_timeout(LIVENESS),
        );
    let addr = serve(app).await;
    let client = client();
    let responses = join_all((0..TRANSFERS).map(|n| {
        let client = client.clone();
        let (from, to) = (n as u32 % ACCOUNTS, (n as u32 + 1) % ACCOUNTS);
        // Half of them the other way round: A→B and B→A at once.
        let (from, to) = if n % 2 == 0 { (from, to) } else { (to, from) };
        async move {
            let response = client
                .post(format!("http://{addr}/transfers/{from}/{to}"))
                .send()
                .await
                .expect("send");
            (response.status(), response.text().await.expect("body"))
        }
    }));
    let responses = tokio::time::timeout(Duration::from_secs(60), responses)
        .await
        .expect("transfers deadlocked");
    for (status, body) in &responses {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(body, "2", "the handler did not see both locks");
    }
    let total: i64 = (0..ACCOUNTS).map(|a| ledger.balance(a)).sum();
    assert_eq!(total, 0, "money was made or lost");
    eventually("all released", || locker.held_count() == 0).await;
}

/// Both accounts of `/moves/{from}/{to}`, for `LockedAll`.
struct Move;

impl<S: Send + Sync> tower_lock::extract::LockKeys<S> for Move {
    type Rejection = axum::extract::rejection::PathRejection;

    async fn lock_keys(parts: &mut Parts, state: &S) -> Result<Vec<String>, Self::Rejection> {
        let Path((from, to)) = Path::<(u32, u32)>::from_request_parts(parts, state).await?;
        Ok(vec![format!("account:{from}"), format!("account:{to}")])
    }
}

#[tokio::test]
async fn the_locked_extractor_takes_several_keys_all_or_nothing() {
    let locker = Locker::in_memory();
    let app = Router::new()
        .route(
            "/moves/{from}/{to}",
            post(|locks: tower_lock::extract::LockedAll<Move>| async move {
                locks.keys().collect::<Vec<_>>().join(" ")
            }),
        )
        .with_state(locker.clone());
    let addr = serve(app).await;
    let response = client()
        .post(format!("http://{addr}/moves/9/2"))
        .send()
        .await;
    assert_eq!(
        response.expect("send").text().await.expect("body"),
        "account:2 account:9"
    );
    // One of them busy: refused, and the other is not kept.
    let busy = locker.acquire("account:9", TTL).await.expect("lock");
    let response = client()
        .post(format!("http://{addr}/moves/2/9"))
        .send()
        .await;
    assert_eq!(response.expect("send").status(), StatusCode::LOCKED);
    eventually("only the busy key is held", || locker.held_count() == 1).await;
    assert!(
        locker
            .try_lock("account:2", TTL)
            .await
            .expect("try")
            .is_some()
    );
    drop(busy);
}

#[tokio::test]
async fn a_typed_header_locks_its_canonical_form() {
    let app = Router::new()
        .route(
            "/",
            post(|lock: HeldLock| async move { lock.key().to_owned() }),
        )
        .layer(LockLayer::new(
            Locker::in_memory(),
            key::header_as::<u64>("x-tenant-id").prefixed("tenant:"),
        ));
    let addr = serve(app).await;
    for spelling in ["7", "007", "+7"] {
        let response = client()
            .post(format!("http://{addr}/"))
            .header("x-tenant-id", spelling)
            .send()
            .await
            .expect("send");
        assert_eq!(
            response.text().await.expect("body"),
            "tenant:7",
            "{spelling}"
        );
    }
    let response = client()
        .post(format!("http://{addr}/"))
        .header("x-tenant-id", "seven")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

/// `Locker::shutdown` after a drain: a request still running under the
/// layer is stopped with `503` (its handler's future dropped), the store
/// keeps none of its locks, and later requests are refused with `503`
/// without running their handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_running_requests_and_refuses_new_ones() {
    let backend = tower_lock::memory::MemoryBackend::new();
    let locker = Locker::new(backend.clone());
    let (entered, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let handler = {
        let (entered, finished) = (entered.clone(), finished.clone());
        move || async move {
            entered.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(60)).await;
            finished.fetch_add(1, Ordering::SeqCst);
            "done"
        }
    };
    let app = Router::new()
        .route("/", post(handler))
        .layer(LockLayer::new(locker.clone(), key::header("x-key")));
    let addr = serve(app).await;

    let running = tokio::spawn(post_key(addr, "slow"));
    eventually("the handler runs", || entered.load(Ordering::SeqCst) == 1).await;
    assert_eq!(backend.len(), 1);

    tokio::time::timeout(LIVENESS, locker.shutdown())
        .await
        .expect("shutdown finishes")
        .expect("shutdown");
    let stopped = tokio::time::timeout(LIVENESS, running)
        .await
        .expect("the running request is stopped, not left to its 60 s")
        .expect("task");
    assert_eq!(stopped.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        backend.len(),
        0,
        "the store keeps none of the locker's locks"
    );
    assert_eq!(locker.held_count(), 0);

    let refused = post_key(addr, "later").await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        entered.load(Ordering::SeqCst),
        1,
        "no handler ran after shutdown"
    );
    assert_eq!(finished.load(Ordering::SeqCst), 0);
}
