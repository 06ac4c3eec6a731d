//! Requests per second of an axum app behind `LockLayer` (in-memory backend,
//! a distinct key per request) against the same app without it, under the
//! same concurrent load generator over loopback.
//!
//! ```text
//! cargo bench --bench http -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Criterion reports each side's time per request and throughput; then the
//! two sides run in alternating rounds, and the last lines give both in
//! requests per second and their ratio.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, extract::Path, routing::post};
use criterion::{Criterion, Throughput};
use tower_lock::{LockLayer, Locker, middleware::key};

/// Requests in flight at once.
const CONCURRENCY: usize = 32;
/// Rounds per side of the interleaved comparison.
const ROUNDS: usize = 10;
/// Requests per round.
const ROUND_REQUESTS: u64 = 5_000;

async fn handler(Path(id): Path<u64>) -> String {
    id.to_string()
}

fn app(locker: Option<Locker>) -> Router {
    let router = Router::new().route("/items/{id}", post(handler));
    match locker {
        Some(locker) => router.route_layer(LockLayer::new(locker, key::path_param("id"))),
        None => router,
    }
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Sends `total` requests with distinct ids, `CONCURRENCY` at a time.
async fn load(client: &reqwest::Client, addr: SocketAddr, ids: &AtomicU64, total: u64) -> Duration {
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, sent) = (client.clone(), sent.clone());
            let first_id = ids.fetch_add(total, Ordering::Relaxed);
            tokio::spawn(async move {
                loop {
                    let n = sent.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    let url = format!("http://{addr}/items/{}", first_id + n);
                    let response = client.post(url).send().await.expect("request");
                    assert!(response.status().is_success(), "{}", response.status());
                    response.bytes().await.expect("body");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    start.elapsed()
}

/// The layer's own cost, without HTTP: one request through the router on a
/// current-thread runtime, with and without the layer.
fn service_overhead(criterion: &mut Criterion) {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = criterion.benchmark_group("service");
    for (name, locker) in [
        ("without_layer", None),
        ("with_lock_layer", Some(Locker::in_memory())),
    ] {
        let app = app(locker);
        let mut id = 0u64;
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                id += 1;
                let request = http::Request::post(format!("/items/{id}"))
                    .body(Body::empty())
                    .expect("request");
                let app = app.clone();
                async move {
                    let response = app.oneshot(request).await.expect("call");
                    response.into_body().collect().await.expect("body");
                }
            })
        });
    }
    group.finish();
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (plain, locked) = runtime.block_on(async {
        (
            serve(app(None)).await,
            serve(app(Some(Locker::in_memory()))).await,
        )
    });
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .expect("client");
    let ids = AtomicU64::new(0);

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("http");
    group.throughput(Throughput::Elements(1));
    for (name, addr) in [("without_layer", plain), ("with_lock_layer", locked)] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let (client, ids) = (&client, &ids);
                async move { load(client, addr, ids, iters).await }
            })
        });
    }
    group.finish();
    service_overhead(&mut criterion);
    criterion.final_summary();

    // Criterion measures one side after the other, so a change in the
    // machine's load between them skews the comparison. Alternate short
    // rounds of both sides for the ratio.
    if std::env::args().any(|arg| arg == "--bench") {
        let mut time = [Duration::ZERO; 2];
        for round in 0..2 * ROUNDS {
            let side = round % 2;
            let addr = [plain, locked][side];
            time[side] += runtime.block_on(load(&client, addr, &ids, ROUND_REQUESTS));
        }
        let per_second = time.map(|t| (ROUNDS as u64 * ROUND_REQUESTS) as f64 / t.as_secs_f64());
        println!("interleaved, {ROUNDS} rounds of {ROUND_REQUESTS} requests per side:");
        println!("  without LockLayer: {:>9.0} req/s", per_second[0]);
        println!("  with LockLayer:    {:>9.0} req/s", per_second[1]);
        println!(
            "  ratio:             {:>9.2}x",
            per_second[1] / per_second[0]
        );
    }
}
