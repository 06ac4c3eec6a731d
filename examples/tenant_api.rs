//! Per-tenant serialisation across two replicas of an API.
//!
//! Two copies of the same axum service (two "replicas", each with its own
//! lock store client, as two pods would have) sit behind `LockLayer` keyed
//! by the `x-tenant-id` header. Requests for one tenant run one at a time
//! even when they land on different replicas; different tenants run at once.
//!
//! With no server (the default), the replicas are two nodes of one in-memory
//! lock table shared over a `LocalBus`: each node decides every lock in the
//! bus's order, as two processes sharing a store would. With `--backend`,
//! each replica connects to the store on its own.
//!
//! ```text
//! cargo run --example tenant_api
//! cargo run --example tenant_api --features redis -- --backend redis://127.0.0.1:6379
//! cargo run --example tenant_api --features nats -- --backend nats://127.0.0.1:4222
//! ```

use std::{
    collections::HashMap,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
use serde_json::{Value, json};
use tower_lock::{
    LockLayer, Locker,
    bus::LocalBus,
    memory::MemoryBackend,
    middleware::{HeldLock, key},
};

#[path = "common/backend.rs"]
mod backend;

const USAGE: &str = "\
usage: tenant_api [--backend memory|redis://HOST:PORT|nats://HOST:PORT]

  --backend   lock store: memory (default: two nodes over one LocalBus),
              redis://HOST:PORT (feature redis), nats://HOST:PORT (feature nats)";

const TENANTS: usize = 4;
const REQUESTS_PER_TENANT: usize = 25;

/// Stands in for the tenants' database, shared by both replicas.
#[derive(Default)]
struct Database {
    tenants: Mutex<HashMap<String, Tenant>>,
}

#[derive(Default)]
struct Tenant {
    /// Rebuilt by a read-modify-write that must not interleave.
    invoices: u64,
    inside: usize,
    most_inside: usize,
    last_fence: u64,
    stale_writes: u64,
}

/// `POST /invoices` with `x-tenant-id`: renumbers the tenant's invoices, a
/// tenant-wide mutation (read, await, write).
async fn add_invoice(
    State(db): State<Arc<Database>>,
    lock: HeldLock,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, StatusCode> {
    let tenant = headers
        .get("x-tenant-id")
        .and_then(|v| v.to_str().ok())
        .ok_or(StatusCode::BAD_REQUEST)?
        .to_owned();
    let read = {
        let mut tenants = db
            .tenants
            .lock()
            .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
        let t = tenants.entry(tenant.clone()).or_default();
        t.inside += 1;
        t.most_inside = t.most_inside.max(t.inside);
        // The fence lets the database refuse a writer whose lease ran out.
        if lock.fence() <= t.last_fence {
            t.stale_writes += 1;
        }
        t.last_fence = lock.fence();
        t.invoices
    };
    tokio::time::sleep(Duration::from_millis(2)).await; // the database round trip
    let mut tenants = db
        .tenants
        .lock()
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let t = tenants.entry(tenant).or_default();
    t.invoices = read + 1;
    t.inside -= 1;
    Ok(Json(
        json!({ "invoices": t.invoices, "fence": lock.fence() }),
    ))
}

/// The two replicas' lockers: nodes of one bus, or two clients of a store.
async fn lockers(backend: &str) -> anyhow::Result<[Locker; 2]> {
    if backend == "memory" {
        let bus = LocalBus::new();
        let node = || Locker::new(MemoryBackend::with_bus(bus.clone()));
        return Ok([node(), node()]);
    }
    Ok([
        backend::connect(backend, "tenant_api").await?,
        backend::connect(backend, "tenant_api").await?,
    ])
}

async fn replica(locker: Locker, db: Arc<Database>) -> anyhow::Result<String> {
    let app = Router::new()
        .route("/invoices", post(add_invoice))
        .layer(
            LockLayer::new(locker, key::header("x-tenant-id").prefixed("tenant-api:"))
                .wait_timeout(Duration::from_secs(10)),
        )
        .with_state(db);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

async fn run() -> anyhow::Result<()> {
    let backend = backend::from_args(USAGE)?;
    let db = Arc::new(Database::default());
    let [a, b] = lockers(&backend).await?;
    let replicas = [
        replica(a.clone(), db.clone()).await?,
        replica(b.clone(), db.clone()).await?,
    ];
    println!(
        "two replicas at {} and {}, locks in {backend}",
        replicas[0], replicas[1]
    );

    let client = reqwest::Client::builder().no_proxy().build()?;
    let started = Instant::now();
    let mut requests = Vec::new();
    for i in 0..TENANTS * REQUESTS_PER_TENANT {
        let (client, url) = (client.clone(), format!("{}/invoices", replicas[i % 2]));
        let tenant = format!("tenant-{}", i % TENANTS);
        requests.push(tokio::spawn(async move {
            client.post(url).header("x-tenant-id", tenant).send().await
        }));
    }
    let mut refused = 0;
    for request in requests {
        let response = request.await?.context("request")?;
        if !response.status().is_success() {
            refused += 1;
        }
    }
    let elapsed = started.elapsed();

    println!(
        "\n{:<10} {:>9} {:>9} {:>12} {:>12}",
        "tenant", "expected", "invoices", "most inside", "stale fence"
    );
    // The report, with the database's lock let go before the awaits below.
    let ok = {
        let tenants = db
            .tenants
            .lock()
            .map_err(|_| anyhow::anyhow!("database lock poisoned"))?;
        let mut names: Vec<_> = tenants.keys().cloned().collect();
        names.sort();
        let mut ok = refused == 0;
        for name in names {
            let t = &tenants[&name];
            println!(
                "{name:<10} {REQUESTS_PER_TENANT:>9} {:>9} {:>12} {:>12}",
                t.invoices, t.most_inside, t.stale_writes
            );
            ok &= t.invoices == REQUESTS_PER_TENANT as u64
                && t.most_inside == 1
                && t.stale_writes == 0;
        }
        println!(
            "\n{} requests over 2 replicas in {elapsed:.2?}, {refused} refused: {}",
            TENANTS * REQUESTS_PER_TENANT,
            if ok {
                "every tenant serialised, no update lost"
            } else {
                "SERIALISATION FAILED"
            }
        );
        ok
    };
    // Every request has answered: nothing is left for the replicas to hold.
    a.shutdown().await?;
    b.shutdown().await?;
    anyhow::ensure!(ok, "a tenant's requests overlapped or were refused");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tenant_api: {err:#}");
            ExitCode::FAILURE
        }
    }
}
