//! Graceful shutdown: axum's `with_graceful_shutdown` drains the requests
//! that finish in time, then `Locker::shutdown` stops the ones still
//! running under a lock and gives every lock back to the store, so the
//! other replicas need not wait for a lease to run out.
//!
//! ```text
//! cargo run --example graceful
//! cargo run --example graceful --features redis -- --backend redis://127.0.0.1:6379
//! cargo run --example graceful --features nats -- --backend nats://127.0.0.1:4222
//! ```
//!
//! It serves on a loopback port, sends itself a quick job and a stuck one,
//! then plays the signal a real server gets from `tokio::signal::ctrl_c()`
//! or SIGTERM, and exits once it has checked the outcome.

use std::{process::ExitCode, time::Duration};

use axum::{
    Router,
    extract::{Path, Query},
    routing::post,
};
use serde_json::Value;
use tokio::{sync::oneshot, time::Instant};
use tower_lock::{LockError, LockLayer, Locker, middleware::key};

#[path = "common/backend.rs"]
mod backend;

const USAGE: &str = "\
usage: graceful [--backend memory|redis://HOST:PORT|nats://HOST:PORT]

  --backend   lock store: memory (default), redis://HOST:PORT (feature redis),
              nats://HOST:PORT (feature nats)";

/// How long the server may take to finish its requests once told to stop.
const DRAIN: Duration = Duration::from_millis(300);

/// `POST /jobs/{id}/run?ms=N`: works for N ms under the job's lock.
async fn run_job(Path(id): Path<String>, Query(query): Query<Value>) -> String {
    let ms = query
        .get("ms")
        .and_then(Value::as_str)
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(10);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("job {id} ran {ms} ms")
}

async fn run() -> anyhow::Result<()> {
    let backend = backend::from_args(USAGE)?;
    let locker = backend::connect(&backend, "graceful").await?;
    let app = Router::new()
        .route("/jobs/{id}/run", post(run_job))
        .route_layer(LockLayer::new(
            locker.clone(),
            key::path_param("id").prefixed("graceful:job:"),
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            // A real server waits for `tokio::signal::ctrl_c()` or SIGTERM.
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    println!("serving on http://{addr}, locks in {backend}");

    let client = reqwest::Client::builder().no_proxy().build()?;
    let started = Instant::now();
    let send = |job: &'static str, ms: u64| {
        let (client, url) = (
            client.clone(),
            format!("http://{addr}/jobs/{job}/run?ms={ms}"),
        );
        tokio::spawn(async move {
            let response = client.post(url).send().await?;
            let status = response.status();
            anyhow::Ok((status, response.text().await?, started.elapsed()))
        })
    };
    let quick = send("quick", 100);
    let stuck = send("stuck", 60_000);
    let deadline = Instant::now() + Duration::from_secs(10);
    while locker.held_count() < 2 {
        anyhow::ensure!(Instant::now() < deadline, "the jobs never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    println!(
        "{:>6.0?}  signal: stop accepting, drain for {DRAIN:?}",
        started.elapsed()
    );
    let _ = stop.send(());
    let drained = tokio::time::timeout(DRAIN, server).await.is_ok();
    println!(
        "{:>6.0?}  drain {}; {} lock(s) still held",
        started.elapsed(),
        if drained { "complete" } else { "timed out" },
        locker.held_count()
    );
    locker.shutdown().await?;
    println!(
        "{:>6.0?}  Locker::shutdown: every lease lost and released",
        started.elapsed()
    );

    let (quick_status, quick_body, quick_at) = quick.await??;
    let (stuck_status, _, stuck_at) = stuck.await??;
    println!("quick job: {quick_status} at {quick_at:.0?} ({quick_body})");
    println!("stuck job: {stuck_status} at {stuck_at:.0?} (stopped, not left to run 60 s)");

    // Another owner over the same store finds both jobs free at once.
    let other = Locker::from_arc(locker.backend().clone());
    let ttl = Duration::from_secs(5);
    let mut free = 0;
    for job in ["quick", "stuck"] {
        if let Some(guard) = other.try_lock(&format!("graceful:job:{job}"), ttl).await? {
            guard.release().await?;
            free += 1;
        }
    }
    let refused = locker.acquire("graceful:job:late", ttl).await;
    println!(
        "store: {free} of 2 job locks free; a late acquire: {}",
        match &refused {
            Err(err) => err.to_string(),
            Ok(_) => "granted".to_owned(),
        }
    );

    anyhow::ensure!(
        quick_status == 200,
        "the quick job should finish in the drain"
    );
    anyhow::ensure!(
        stuck_status == 503,
        "the stuck job should be stopped with 503"
    );
    anyhow::ensure!(free == 2, "a job lock was left in the store");
    anyhow::ensure!(matches!(refused, Err(LockError::ShutDown)));
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("graceful: {err:#}");
            ExitCode::FAILURE
        }
    }
}
