//! The lock store an example runs on, chosen by its `--backend` flag:
//! `memory`, `redis://HOST:PORT` (feature `redis`) or `nats://HOST:PORT`
//! (feature `nats`).

use anyhow::{Context as _, bail};
use tower_lock::Locker;

/// The store named by the only flag an example takes, `--backend`
/// (`memory` when absent); `-h`/`--help` prints `usage` and exits.
#[allow(dead_code)] // examples with more flags parse their own
pub fn from_args(usage: &str) -> anyhow::Result<String> {
    let mut backend = "memory".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{usage}");
                std::process::exit(0);
            }
            "--backend" => {
                backend = args
                    .next()
                    .with_context(|| format!("--backend needs a value\n{usage}"))?;
            }
            _ => bail!("unknown argument {flag}\n{usage}"),
        }
    }
    Ok(backend)
}

/// The one place a lock store is chosen.
pub async fn connect(backend: &str, example: &str) -> anyhow::Result<Locker> {
    let scheme = backend
        .split_once("://")
        .map_or(backend, |(scheme, _)| scheme);
    match scheme {
        "memory" => Ok(Locker::in_memory()),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => {
            let store = tower_lock::redis::RedisBackend::from_url(backend)
                .await
                .with_context(|| format!("connect to Redis at {backend}"))?;
            Ok(Locker::new(store))
        }
        #[cfg(feature = "nats")]
        "nats" => {
            let client = async_nats::connect(backend)
                .await
                .with_context(|| format!("connect to NATS at {backend}"))?;
            let js = async_nats::jetstream::new(client);
            let bucket = format!("tower-lock-{example}");
            let store = tower_lock::nats::NatsBackend::new(js, &bucket)
                .await
                .with_context(|| format!("open the KV bucket {bucket}"))?;
            Ok(Locker::new(store))
        }
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" => bail!(
            "--backend {backend}: run the example with `--features redis` \
             (cargo run --release --features redis --example {example} -- --backend {backend})"
        ),
        #[cfg(not(feature = "nats"))]
        "nats" => bail!(
            "--backend {backend}: run the example with `--features nats` \
             (cargo run --release --features nats --example {example} -- --backend {backend})"
        ),
        _ => bail!(
            "--backend {backend}: unknown backend; expected memory, redis://HOST:PORT or nats://HOST:PORT"
        ),
    }
}
