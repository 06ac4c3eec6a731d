//! LockLayer over a real Redis that loses a request's lock under it: the
//! handler is stopped, and a streamed body is cut.
#![cfg(all(feature = "redis", feature = "axum"))]

mod conformance;
mod redis_support;
mod support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    http::StatusCode,
    routing::{get, post},
};
use redis_support::Tied;
use support::http::{Concurrency, client, one_stream, serve};
use tower_lock::{LockLayer, Locker, middleware::key, redis::RedisBackend};

/// Renewed every 200 ms: a deleted key is noticed within one renewal.
const TTL: Duration = Duration::from_millis(600);
const LIVENESS: Duration = Duration::from_secs(10);

/// Deletes `key`'s lock from Redis, as an operator (or an eviction) would.
async fn delete_lock(server: &Tied, backend: &RedisBackend, key: &str) {
    let mut conn = redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let deleted: i64 = redis::cmd("DEL")
        .arg(backend.redis_key(key))
        .query_async(&mut conn)
        .await
        .expect("DEL");
    assert_eq!(deleted, 1, "the lock was not in Redis");
}

struct Stopped(Arc<AtomicUsize>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_deleted_under_a_running_handler_stops_it_with_503() {
    let server = Tied::start(support::free_port(), Vec::new());
    let backend = RedisBackend::from_url(&server.url())
        .await
        .expect("backend");
    let locker = Locker::new(backend.clone());
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let started_tx = Arc::new(Mutex::new(Some(started_tx)));
    let (stopped, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let handler = {
        let (stopped, finished) = (stopped.clone(), finished.clone());
        move || async move {
            let guard = Stopped(stopped.clone());
            if let Some(tx) = started_tx.lock().expect("tx").take() {
                let _ = tx.send(());
            }
            tokio::time::sleep(LIVENESS).await;
            std::mem::forget(guard);
            finished.fetch_add(1, Ordering::SeqCst);
            "done"
        }
    };
    let app = Router::new()
        .route("/", post(handler))
        .layer(LockLayer::new(locker, key::header("x-key")).ttl(TTL));
    let addr = serve(app).await;
    let request = tokio::spawn(
        client()
            .post(format!("http://{addr}/"))
            .header("x-key", "k")
            .send(),
    );
    started_rx.await.expect("the handler started");
    delete_lock(&server, &backend, "k").await;
    let response = tokio::time::timeout(LIVENESS, request).await;
    let response = response.expect("answered").expect("task").expect("send");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        stopped.load(Ordering::SeqCst),
        1,
        "the handler was not stopped"
    );
    assert_eq!(finished.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_deleted_under_a_streamed_body_cuts_it() {
    let server = Tied::start(support::free_port(), Vec::new());
    let backend = RedisBackend::from_url(&server.url())
        .await
        .expect("backend");
    let locker = Locker::new(backend.clone());
    let (tx, handler) = one_stream();
    let app = Router::new()
        .route("/", get(handler))
        .layer(LockLayer::new(locker.clone(), key::header("x-key")).ttl(TTL));
    let addr = serve(app).await;
    tx.send(Bytes::from_static(b"first")).await.expect("send");
    let mut response = client()
        .get(format!("http://{addr}/"))
        .header("x-key", "k")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.chunk().await.expect("chunk").expect("data"),
        "first"
    );
    delete_lock(&server, &backend, "k").await;
    let rest = tokio::time::timeout(LIVENESS, async {
        while let Some(_chunk) = response.chunk().await? {}
        Ok::<_, reqwest::Error>(())
    })
    .await;
    assert!(
        rest.expect("the body ended").is_err(),
        "a cut body read as whole"
    );
    // Another request takes the key now.
    let other = locker.try_lock("k", TTL).await.expect("try");
    assert!(other.is_some(), "the key was not free after the cut");
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permits_bound_a_keys_handlers_across_two_replicas_sharing_redis() {
    let server = Tied::start(support::free_port(), Vec::new());
    let exports = Arc::new(Concurrency::default());
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let backend = RedisBackend::from_url(&server.url())
            .await
            .expect("backend");
        let exports = exports.clone();
        let app = Router::new()
            .route(
                "/exports/{tenant}",
                post(move || {
                    let exports = exports.clone();
                    async move { exports.run(Duration::from_millis(50)).await }
                }),
            )
            .layer(
                LockLayer::new(Locker::new(backend), key::path_param("tenant"))
                    .permits(2)
                    .wait_timeout(Duration::from_secs(30)),
            );
        replicas.push(serve(app).await);
    }
    let client = client();
    let requests = (0..16).map(|i| {
        let request = client.post(format!("http://{}/exports/tenant-4", replicas[i % 2]));
        async move { request.send().await.expect("request").status() }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(
        statuses.iter().all(|status| *status == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(exports.most(), 2, "most exports of one tenant at once");
}
