//! A distributed lock you can trust, with first-class tower and axum
//! integration.
//!
//! - [`Locker`] takes locks: [`acquire`](Locker::acquire) waits,
//!   [`try_lock`](Locker::try_lock) never does, [`release`](Locker::release)
//!   gives back what this owner holds.
//! - [`LockGuard`] is the held lock: RAII release, a [fencing
//!   token](LockGuard::fence), a lease that can renew itself and tells you
//!   when it is [lost](LockGuard::lost).
//! - [`Backend`](backend::Backend) is the small trait a store implements. The
//!   in-memory backend is built in ([`memory`], with a [`bus`] to share it
//!   between nodes).
//! - [`LockLayer`] is tower middleware that runs the requests sharing a key
//!   one at a time, across every replica of a service ([`middleware`]);
//!   `extract` (feature `axum`) has axum extractors for the lock a handler
//!   holds.
//!
//! # Quick start
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
//! | `axum` (default) | `extract`: `HeldLock`, `Locked<K>`; `key::path_param` and `key::method_and_path` |
//! | `redis` | `redis::RedisBackend`: standalone, Sentinel and Cluster |
//! | `nats`  | `nats::NatsBackend`: JetStream key-value, nats-server 2.9+ |
//!
//! # Runtime
//!
//! tower-lock runs on tokio. A guard remembers the runtime it was acquired
//! on and releases there when dropped.

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
    key::{MAX_KEY_LEN, MAX_TTL, MIN_TTL},
    lock_set::LockSet,
    locker::{BACKOFF_MAX, BACKOFF_START, Locker},
    middleware::{LockLayer, LockService},
};
