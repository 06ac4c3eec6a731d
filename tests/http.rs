//! LockLayer and the axum extractors over real HTTP on loopback.

#![cfg(feature = "axum")]

#[allow(dead_code)]
#[path = "conformance/overlap.rs"]
mod overlap;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
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

/// Serves `app` on a free loopback port until the test ends.
async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// `POST http://{addr}/` with the lock key in `x-key`.
async fn post_key(addr: SocketAddr, key: &str) -> reqwest::Response {
    client()
        .post(format!("http://{addr}/"))
        .header("x-key", key)
        .send()
        .await
        .expect("send")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
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
        layer.wait_timeout(Duration::from_millis(100)),
        ran.clone(),
    ))
    .await;

    let holder = locker.acquire("k", TTL).await.expect("lock");
    for addr in [fail_fast, short_wait] {
        let response = post_key(addr, "k").await;
        assert_eq!(response.status(), StatusCode::LOCKED);
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        // The holder's lease has about 30 s left; the in-memory store adds
        // its clock's lag (a few ms), which rounds up to one more second.
        assert!(
            (25..=31).contains(&retry_after),
            "Retry-After: {retry_after}"
        );
    }
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
    let lenient = serve(counting_app(layer.clone(), ran.clone())).await;
    let strict = serve(counting_app(
        layer.missing_key(MissingKey::Reject),
        ran.clone(),
    ))
    .await;

    let response = client()
        .post(format!("http://{lenient}/"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("body"), "unlocked");
    assert_eq!(ran.swap(0, Ordering::SeqCst), 1);

    let response = client()
        .post(format!("http://{strict}/"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

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
    let layer =
        LockLayer::new(Locker::new(DownBackend), key::header("x-key")).on_rejection(|rejection| {
            let mut response = rejection.into_response();
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
    type Chunks = tokio::sync::mpsc::Receiver<Bytes>;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let rx: Arc<Mutex<Option<Chunks>>> = Arc::new(Mutex::new(Some(rx)));
    let handler = move || async move {
        let rx = rx.lock().expect("rx").take().expect("one request");
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
        });
        Body::from_stream(stream)
    };
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
    let app = Router::new()
        .route("/by-route/{id}", post(key_of))
        .route_layer(LockLayer::new(Locker::in_memory(), key::method_and_path()))
        .route("/by-param/{id}/{name}", post(key_of))
        .route_layer(LockLayer::new(
            Locker::in_memory(),
            key::path_param("name").prefixed("user:"),
        ));
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
