//! A distributed lock you can trust, with first-class tower and axum
//! integration.
//!
//! One line puts an axum route's requests one at a time per account, on
//! every replica that shares the lock store:
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use axum::{Router, routing::post};
//! use tower_lock::{LockLayer, Locker, middleware::key};
//!
//! let app: Router = Router::new()
//!     .route("/accounts/{id}/deposit", post(|| async { "one deposit per account at a time" }))
//!     .route_layer(LockLayer::new(Locker::in_memory(), key::path_param("id").prefixed("account:")));
//! # }
//! ```
//!
//! [`middleware`] has the layer's options (keys from headers, path
//! parameters or closures; how long to wait; what a refusal answers) and
//! how it fails closed; [`extract`] has the axum extractors: `HeldLock`
//! (the lock the layer took) and `Locked<K>` (a lock taken by the handler
//! itself). [`election`] runs leader election on any backend: one node of a
//! fleet leads, with a term to fence its writes, and everyone can watch
//! who does.
//!
//! # The lock itself: [`Locker`]
//!
//! [`Locker`] takes locks: [`acquire`](Locker::acquire) waits,
//! [`try_lock`](Locker::try_lock) never does,
//! [`acquire_all`](Locker::acquire_all) takes several keys deadlock-free,
//! [`acquire_shared`](Locker::acquire_shared) lets readers share a key that
//! writers take alone, and [`acquire_permit`](Locker::acquire_permit) lets
//! at most N holders have a key at once. Each returns a [`LockGuard`]: RAII release, a [fencing
//! token](LockGuard::fence), and a lease that can renew itself and tells you
//! when it is [lost](LockGuard::lost).
//!
//! ```
//! use std::time::Duration;
//! use tower_lock::{LockError, Locker};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), LockError> {
//! let locker = Locker::in_memory();
//! let ttl = Duration::from_secs(10);
//!
//! let guard = locker.acquire("invoice:42", ttl).await?; // waits for its turn
//! println!("writing with fence {}", guard.fence());
//! guard.release().await?;
//!
//! if let Some(guard) = locker.try_lock("invoice:42", ttl).await? {
//!     // nobody else had it
//!     # drop(guard);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Backends
//!
//! Every store implements the small [`Backend`](backend::Backend) trait; a
//! `Locker` works the same on each.
//!
//! **In memory** (built in, no feature): one process, or several nodes
//! sharing one lock table over an ordered [`bus`] ([`memory`]).
//!
//! ```
//! use tower_lock::{Locker, bus::LocalBus, memory::MemoryBackend};
//!
//! let locker = Locker::in_memory();
//! // Two nodes deciding every lock in the bus's order:
//! let bus = LocalBus::new();
//! let node_a = Locker::new(MemoryBackend::with_bus(bus.clone()));
//! let node_b = Locker::new(MemoryBackend::with_bus(bus));
//! ```
//!
//! **Redis** (feature `redis`): standalone, Sentinel or Cluster
//! ([`redis`]).
//!
//! ```
//! # #[cfg(feature = "redis")]
//! async fn connect() -> Result<tower_lock::Locker, tower_lock::LockError> {
//!     let backend = tower_lock::redis::RedisBackend::from_url("redis://127.0.0.1:6379/").await?;
//!     Ok(tower_lock::Locker::new(backend))
//! }
//! ```
//!
//! **NATS JetStream** (feature `nats`): a key-value bucket, created when
//! absent, on nats-server 2.9 and later ([`nats`]).
//!
//! ```
//! # #[cfg(feature = "nats")]
//! async fn connect() -> Result<tower_lock::Locker, Box<dyn std::error::Error>> {
//!     let client = async_nats::connect("127.0.0.1:4222").await?;
//!     let js = async_nats::jetstream::new(client);
//!     let backend = tower_lock::nats::NatsBackend::new(js, "my-locks").await?;
//!     Ok(tower_lock::Locker::new(backend))
//! }
//! ```
//!
//! # Graceful shutdown
//!
//! After the server has drained, [`Locker::shutdown`] stops the requests
//! still running under a lock (their leases are marked lost) and gives every
//! lock back to the store, so other replicas need not wait for a ttl:
//!
//! ```
//! # #[cfg(feature = "axum")]
//! async fn serve(app: axum::Router, locker: tower_lock::Locker) -> std::io::Result<()> {
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app)
//!         .with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; })
//!         .await?;
//!     locker.shutdown().await.map_err(std::io::Error::other)
//! }
//! ```
//!
//! # Guarantees
//!
//! Every backend keeps these:
//!
//! 1. **Mutual exclusion**: at most one live holder per key while its lease
//!    runs.
//! 2. **Ownership**: only the holder's token can extend or release a lock;
//!    anyone else gets [`LockError::NotHeld`] or [`LockError::Lost`] and
//!    changes nothing.
//! 3. **Liveness**: a holder that crashes loses the lock after its ttl.
//! 4. **Prompt hand-off**: a release wakes a waiter in about one round trip;
//!    a lost wake-up costs at most one backoff step.
//! 5. **Fencing**: each acquisition's fence is greater than every earlier
//!    fence of its key.
//! 6. **Clock safety**: expiry is decided by one clock (the store's, or a
//!    monotonic one), never by comparing two machines' wall clocks.
//! 7. **Bad input** gets [`LockError::InvalidKey`] or
//!    [`LockError::InvalidTtl`] before anything reaches the store. Keys may
//!    hold any characters up to [`MAX_KEY_LEN`] bytes.
//! 8. **No leaks**: released keys leave no entry, waiter or task behind.
//!
//! # Features
//!
//! | feature | adds |
//! |---------|------|
//! | (none)  | [`Locker`], [`LockGuard`], the in-memory backend, [`bus`], [`LockLayer`] |
//! | `axum` (default) | [`extract`]: `HeldLock`, `Locked<K>`, `LockedAll<K>`; `key::path_param(s)` and `key::method_and_path` |
//! | `redis` | [`redis`]: `RedisBackend`, standalone, Sentinel and Cluster |
//! | `nats`  | [`nats`]: `NatsBackend`, JetStream key-value, nats-server 2.9+ |
//! | `metrics` | counters and histograms through the [`metrics`](https://docs.rs/metrics) facade (no exporter): acquisitions, wait and hold times, refusals by reason, lost leases, renewals; labelled by backend and, if you choose, a key class ([`Locker::metrics_key_class`]) |
//!
//! # Runtime
//!
//! tower-lock runs on tokio. A guard remembers the runtime it was acquired
//! on and releases there when dropped.
//!
// Modules behind a feature are linked from the crate docs; without the
// feature the links point at the docs.rs build, which has every feature.
#![cfg_attr(
    not(feature = "axum"),
    doc = "[`extract`]: https://docs.rs/tower-lock/latest/tower_lock/extract/"
)]
#![cfg_attr(
    not(feature = "redis"),
    doc = "[`redis`]: https://docs.rs/tower-lock/latest/tower_lock/redis/"
)]
#![cfg_attr(
    not(feature = "nats"),
    doc = "[`nats`]: https://docs.rs/tower-lock/latest/tower_lock/nats/"
)]
#![cfg_attr(
    not(feature = "metrics"),
    doc = "[`Locker::metrics_key_class`]: https://docs.rs/tower-lock/latest/tower_lock/struct.Locker.html#method.metrics_key_class"
)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]
#![deny(unreachable_pub, unsafe_code)]

pub mod backend;
pub mod election;
mod error;
mod guard;
mod key;
mod lease;
mod lock_set;
mod locker;
pub mod memory;
mod metrics;
pub mod middleware;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;
mod owner;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod renewal;
mod run_to_end;
mod sync;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod extract;

#[doc(inline)]
pub use crate::memory::bus;
pub use crate::{
    error::{BoxError, LockError},
    guard::LockGuard,
    key::{MAX_KEY_LEN, MAX_PERMITS, MAX_TTL, MIN_TTL},
    lock_set::LockSet,
    locker::{BACKOFF_MAX, BACKOFF_START, Locker},
    middleware::{LockLayer, LockService},
};

// The README's Rust snippets compile (and those not marked `no_run` run) as
// doctests, with the features they use.
#[cfg(all(doctest, feature = "axum", feature = "redis", feature = "nats"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
