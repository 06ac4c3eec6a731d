//! Middleware that runs requests sharing a key one at a time, across every
//! replica of a service.
//!
//! [`LockLayer`] finds each request's key with a [`KeyExtractor`] (a header,
//! an axum path parameter, a closure: see [`key`]), takes the distributed
//! lock of that key with a [`Locker`](crate::Locker), calls the inner
//! service, and holds the lock until the response body has been sent to its
//! end (or dropped). Requests with different keys run concurrently.
//!
//! - **Waiting**: a request waits up to [`wait_timeout`](LockLayer::wait_timeout)
//!   (5 s by default) for a busy key, in FIFO order with the other requests
//!   of this replica, then gets `423 Locked` with `Retry-After`.
//! - **Fail closed**: when the lock store is unreachable the request gets
//!   `503` and the service is not called. An invalid key gets `400`. The
//!   responses can be replaced with [`on_rejection`](LockLayer::on_rejection).
//! - **Lease**: renewed while the request runs
//!   ([`auto_renew`](LockLayer::auto_renew)), so a slow handler keeps its
//!   lock; a crashed replica's locks end after the [`ttl`](LockLayer::ttl).
//! - **Cancellation**: a client that disconnects while its request waits
//!   leaves no lock and no waiter behind. A handler that panics (behind
//!   tower-http's `CatchPanicLayer`) releases its lock.
//! - The service sees the lock as a [`HeldLock`] request extension (an axum
//!   extractor with the `axum` feature).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::post};
//! use tower_lock::{LockLayer, Locker, middleware::{HeldLock, key}};
//!
//! async fn deposit(lock: axum::Extension<HeldLock>) -> String {
//!     // Only one request per tenant gets here at a time, on every replica.
//!     format!("deposited under fence {}", lock.fence())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let locker = Locker::in_memory(); // or a Redis or NATS backend, shared by the replicas
//! let app: Router = Router::new()
//!     .route("/deposit", post(deposit))
//!     .layer(
//!         LockLayer::new(locker, key::header("x-tenant-id").prefixed("tenant:"))
//!             .wait_timeout(Duration::from_secs(2)),
//!     );
//! # let _ = app;
//! # }
//! ```
//!
//! Keyed by a path parameter (feature `axum`), the layer goes on the routes
//! with `route_layer`, because axum knows parameters only after routing:
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use axum::{Router, routing::post};
//! use tower_lock::{LockLayer, Locker, middleware::key};
//!
//! let app: Router = Router::new()
//!     .route("/accounts/{id}/deposit", post(|| async { "ok" }))
//!     .route_layer(LockLayer::new(Locker::in_memory(), key::path_param("id").prefixed("account:")));
//! # }
//! ```

mod body;
mod future;
mod held;
pub mod key;
mod layer;
mod rejection;
mod service;

pub use self::{
    body::LockBody,
    future::ResponseFuture,
    held::HeldLock,
    key::KeyExtractor,
    layer::{DEFAULT_TTL, DEFAULT_WAIT, LockLayer},
    rejection::{LockRejection, MissingKey},
    service::LockService,
};
