//! Shared and counted locks behind `LockLayer` and the `Locked` extractor,
//! over real HTTP on loopback.
#![cfg(feature = "axum")]

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::{FromRequestParts, Path},
    http::{Method, StatusCode, request::Parts},
    routing::get,
};
use futures_util::future::join_all;
use support::http::{Concurrency, client, serve};
use tower_lock::{
    LockLayer, Locker,
    backend::LeaseKind,
    extract::{LockKey, Locked},
    middleware::key,
};

/// Who is inside a document's handlers now, and the most readers seen at
/// once; panics (a 500) if a writer ever meets anyone.
#[derive(Default)]
struct Inside {
    readers: AtomicUsize,
    writers: AtomicUsize,
    most_readers: AtomicUsize,
}

impl Inside {
    async fn read(&self) {
        let now = self.readers.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_readers.fetch_max(now, Ordering::SeqCst);
        assert_eq!(
            self.writers.load(Ordering::SeqCst),
            0,
            "a GET ran alongside a PUT"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        self.readers.fetch_sub(1, Ordering::SeqCst);
    }

    async fn write(&self) {
        let writers = self.writers.fetch_add(1, Ordering::SeqCst);
        assert_eq!(writers, 0, "two PUTs overlapped");
        assert_eq!(
            self.readers.load(Ordering::SeqCst),
            0,
            "a PUT ran alongside a GET"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.writers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads and writes of a document behind `layer`; deletes are unlocked
/// unless the layer locks them.
fn documents(layer: LockLayer<key::PathParam>, inside: Arc<Inside>) -> Router {
    let (reads, writes) = (inside.clone(), inside);
    Router::new()
        .route(
            "/documents/{id}",
            get(move || {
                let inside = reads.clone();
                async move { inside.read().await }
            })
            .put(move || {
                let inside = writes.clone();
                async move { inside.write().await }
            })
            .delete(|| async { "deleted" }),
        )
        .layer(layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gets_of_one_document_run_side_by_side_while_a_put_runs_alone() {
    let inside = Arc::new(Inside::default());
    let layer = LockLayer::new(Locker::in_memory(), key::path_param("id"))
        .shared_for([Method::GET, Method::HEAD])
        .wait_timeout(Duration::from_secs(20));
    let addr = serve(documents(layer, inside.clone())).await;
    let client = client();
    let url = format!("http://{addr}/documents/7");
    let requests = (0..24).map(|i| {
        let request = if i % 6 == 3 {
            client.put(&url)
        } else {
            client.get(&url)
        };
        async move { request.send().await.expect("request").status() }
    });
    let statuses = join_all(requests).await;
    assert!(
        statuses.iter().all(|status| *status == StatusCode::OK),
        "{statuses:?}"
    );
    let most = inside.most_readers.load(Ordering::SeqCst);
    assert!(
        most > 1,
        "GETs never ran side by side (most at once: {most})"
    );
}

#[test]
#[should_panic(expected = "named both in `methods` (exclusive) and in `shared_for`")]
fn a_method_with_two_treatments_is_refused_when_the_layer_is_built() {
    let _ = LockLayer::new(Locker::in_memory(), key::path_param("id"))
        .methods([Method::PUT, Method::GET])
        .shared_for([Method::GET]);
}

#[test]
#[should_panic(expected = "named both in `methods` (exclusive) and in `shared_for`")]
fn a_method_with_two_treatments_is_refused_in_either_order() {
    let _ = LockLayer::new(Locker::in_memory(), key::path_param("id"))
        .shared_for([Method::GET])
        .methods([Method::GET]);
}

#[test]
#[should_panic(expected = "LockLayer::permits")]
fn zero_permits_are_refused_when_the_layer_is_built() {
    let _ = LockLayer::new(Locker::in_memory(), key::path_param("id")).permits(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn methods_outside_the_table_pass_through_and_shared_ones_still_exclude_writers() {
    let locker = Locker::in_memory();
    let layer = LockLayer::new(locker.clone(), key::path_param("id"))
        .methods([Method::PUT])
        .shared_for([Method::GET])
        .no_wait();
    let app = documents(layer, Arc::default());
    let addr = serve(app).await;
    let url = format!("http://{addr}/documents/9");
    let writer = locker
        .acquire("9", Duration::from_secs(30))
        .await
        .expect("acquire");
    let client = client();
    let get = client.get(&url).send().await.expect("get");
    assert_eq!(
        get.status(),
        StatusCode::LOCKED,
        "a GET got in under a writer"
    );
    let delete = client.delete(&url).send().await.expect("delete");
    assert_eq!(
        delete.status(),
        StatusCode::OK,
        "an unlisted method did not pass through"
    );
    writer.release().await.expect("release");
    let reader = locker
        .acquire_shared("9", Duration::from_secs(30))
        .await
        .expect("shared");
    let get = client.get(&url).send().await.expect("get");
    assert_eq!(
        get.status(),
        StatusCode::OK,
        "a GET did not share with a reader"
    );
    let put = client.put(&url).send().await.expect("put");
    assert_eq!(
        put.status(),
        StatusCode::LOCKED,
        "a PUT got in with a reader"
    );
    reader.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permits_bound_the_handlers_of_a_key_running_at_once() {
    let locker = Locker::in_memory();
    let exports = Arc::new(Concurrency::default());
    let app = {
        let exports = exports.clone();
        Router::new()
            .route(
                "/exports/{tenant}",
                get(move || {
                    let exports = exports.clone();
                    async move { exports.run(Duration::from_millis(40)).await }
                }),
            )
            .layer(
                LockLayer::new(locker, key::path_param("tenant"))
                    .permits(3)
                    .wait_timeout(Duration::from_secs(20)),
            )
    };
    let addr = serve(app).await;
    let client = client();
    let url = format!("http://{addr}/exports/tenant-4");
    let statuses = join_all((0..12).map(|_| {
        let request = client.get(&url);
        async move { request.send().await.expect("request").status() }
    }))
    .await;
    assert!(
        statuses.iter().all(|status| *status == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(exports.most(), 3, "most exports of one tenant at once");
}

/// Reads of a document, shared.
struct DocumentRead;

impl<S: Send + Sync> LockKey<S> for DocumentRead {
    type Rejection = axum::extract::rejection::PathRejection;
    const KIND: LeaseKind = LeaseKind::Shared;
    const WAIT: Duration = Duration::ZERO;

    async fn lock_key(parts: &mut Parts, state: &S) -> Result<String, Self::Rejection> {
        let Path(id) = Path::<u64>::from_request_parts(parts, state).await?;
        Ok(format!("document:{id}"))
    }
}

/// Exports of a tenant, two at once.
struct Export;

impl<S: Send + Sync> LockKey<S> for Export {
    type Rejection = axum::extract::rejection::PathRejection;
    const KIND: LeaseKind = LeaseKind::Counted { permits: 2 };
    const WAIT: Duration = Duration::ZERO;

    async fn lock_key(parts: &mut Parts, state: &S) -> Result<String, Self::Rejection> {
        let Path(tenant) = Path::<String>::from_request_parts(parts, state).await?;
        Ok(format!("export:{tenant}"))
    }
}

/// A lock kind whose count is out of bounds: a server bug, answered 500.
struct Broken;

impl<S: Send + Sync> LockKey<S> for Broken {
    type Rejection = std::convert::Infallible;
    const KIND: LeaseKind = LeaseKind::Counted { permits: 0 };

    async fn lock_key(_: &mut Parts, _: &S) -> Result<String, Self::Rejection> {
        Ok("broken".into())
    }
}

#[tokio::test]
async fn the_locked_extractor_takes_shared_and_counted_locks() {
    let locker = Locker::in_memory();
    let app = Router::new()
        .route(
            "/documents/{id}",
            get(|lock: Locked<DocumentRead>| async move { lock.fence().to_string() }),
        )
        .route(
            "/exports/{tenant}",
            get(|lock: Locked<Export>| async move { lock.fence().to_string() }),
        )
        .route("/broken", get(|_: Locked<Broken>| async { "ran" }))
        .with_state(locker.clone());
    let addr = serve(app).await;
    let client = client();
    let ttl = Duration::from_secs(30);
    // A reader already in: a shared extractor joins it.
    let reader = locker
        .acquire_shared("document:1", ttl)
        .await
        .expect("shared");
    let get = client
        .get(format!("http://{addr}/documents/1"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        get.status(),
        StatusCode::OK,
        "a shared extractor did not share with a reader"
    );
    reader.release().await.expect("release");
    let writer = locker.acquire("document:1", ttl).await.expect("acquire");
    let get = client
        .get(format!("http://{addr}/documents/1"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        get.status(),
        StatusCode::LOCKED,
        "a shared extractor got in under a writer"
    );
    writer.release().await.expect("release");
    // One permit of two taken: the extractor takes the other, then none is left.
    let first = locker
        .acquire_permit("export:t", 2, ttl)
        .await
        .expect("permit");
    let get = client
        .get(format!("http://{addr}/exports/t"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        get.status(),
        StatusCode::OK,
        "the extractor did not take the second permit"
    );
    let second = locker
        .acquire_permit("export:t", 2, ttl)
        .await
        .expect("permit");
    let get = client
        .get(format!("http://{addr}/exports/t"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        get.status(),
        StatusCode::LOCKED,
        "a third export ran with two permits"
    );
    drop((first, second));
    let get = client
        .get(format!("http://{addr}/broken"))
        .send()
        .await
        .expect("get");
    assert_eq!(get.status(), StatusCode::INTERNAL_SERVER_ERROR);
}
