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
//!   of this replica, then gets `423 Locked` with `Retry-After`. A waiting
//!   request holds none of the inner service's capacity: its readiness is
//!   awaited only once the lock is held.
//! - **Lease**: renewed while the request runs
//!   ([`auto_renew`](LockLayer::auto_renew)) up to
//!   [`max_hold`](LockLayer::max_hold), so a slow handler keeps its lock; a
//!   crashed replica's locks end after the [`ttl`](LockLayer::ttl).
//! - **Cancellation**: a client that disconnects while its request waits
//!   leaves no lock and no waiter behind. A handler that panics (behind
//!   tower-http's `CatchPanicLayer`) releases its lock.
//!
//! # Fail closed
//!
//! No handler runs, or keeps running, without its lock:
//!
//! - a request without its key: `400`, naming where the key was looked
//!   for; it passes through unlocked only with [`MissingKey::PassThrough`]
//!   (logged once);
//! - a key extractor that cannot work where the layer is (a path parameter
//!   key outside axum's routing, including the fallback under
//!   `Router::layer`): `500`, logged once; use `route_layer`;
//! - an invalid key: `400`; the store unreachable: `503`;
//! - a lease lost while the request runs (a renewal failed until 9/10 of
//!   the ttl after the last one was sent, or the store no longer held it),
//!   or a request holding its key past [`max_hold`](LockLayer::max_hold)
//!   (2 minutes by default): the handler's future is dropped and the client
//!   gets `503`, or, once the response head is out, the body ends with an
//!   error at its next poll. A warning is logged with the key and fence.
//!
//! Only methods left out by [`methods`](LockLayer::methods) pass through by
//! design. What remains: a lock deleted from under a live lease is noticed
//! at the next renewal (a third of the ttl), and a dropped handler cannot
//! take back a write it already sent: the [fence](HeldLock::fence) is what
//! protects the resource. The responses can be replaced with
//! [`on_rejection`](LockLayer::on_rejection) (feature `axum`, any
//! `IntoResponse`) or [`on_rejection_response`](LockLayer::on_rejection_response).
//!
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
mod hold;
pub mod key;
mod layer;
mod rejection;
mod service;

pub use self::{
    body::{BoxError, LockBody},
    future::ResponseFuture,
    held::HeldLock,
    key::{KeyError, KeyExtractor, Keys},
    layer::{DEFAULT_MAX_HOLD, DEFAULT_RETRY_AFTER, DEFAULT_TTL, DEFAULT_WAIT, LockLayer},
    rejection::{LockRejection, MissingKey},
    service::LockService,
};
