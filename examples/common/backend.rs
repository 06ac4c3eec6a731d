//! The lock store an example runs on, chosen by its `--backend` flag:
//! `memory`, `redis://HOST:PORT` (feature `redis`) or `nats://HOST:PORT`
//! (feature `nats`).

#[cfg(any(feature = "redis", feature = "nats"))]
use anyhow::Context as _;
use anyhow::bail;
use tower_lock::Locker;

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
