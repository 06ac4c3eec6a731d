//! The [`Backend`] trait that every store implements, and its small value
//! types.
//!
//! A backend offers atomic primitives only: take a key with a token and a
//! ttl, extend, release by token, wake-ups for released keys, and a read of
//! a key's holder. All waiting (queueing, backoff, cancellation) lives in
//! [`Locker`](crate::Locker), so a backend never sleeps or retries.
//!
//! Requests and answers are structs and enums that can grow
//! ([`AcquireRequest`], [`Attempt`], [`Holding`]): what later kinds of lock
//! need travels in their fields, so the trait itself stays this small.
//!
//! # Writing a backend
//!
//! ```
//! use std::{collections::HashMap, sync::Mutex, time::{Duration, Instant}};
//! use tower_lock::backend::{
//!     AcquireRequest, Attempt, Backend, Holding, Lease, Subscription, Token, WakeRegistry,
//! };
//! use tower_lock::{LockError, Locker};
//!
//! /// A single-mutex table: fine for an example, too slow for real use. It
//! /// treats every lease kind as exclusive, which the contract allows.
//! #[derive(Debug, Default)]
//! struct TinyBackend {
//!     table: Mutex<HashMap<String, (Token, u64, Instant, Option<String>)>>,
//!     fences: Mutex<u64>,
//!     wakeups: WakeRegistry,
//! }
//!
//! #[async_trait::async_trait]
//! impl Backend for TinyBackend {
//!     async fn try_acquire(&self, request: &AcquireRequest<'_>) -> Result<Attempt, LockError> {
//!         let mut table = self.table.lock().unwrap();
//!         let now = Instant::now();
//!         let mut fence = None;
//!         if let Some((token, held, expires, _)) = table.get(request.key) {
//!             if *expires > now && *token != request.token {
//!                 return Ok(Attempt::Busy { remaining: Some(*expires - now) });
//!             }
//!             // The holder's own token again: granted anew, same fence.
//!             fence = (*expires > now).then_some(*held);
//!         }
//!         let fence = fence.unwrap_or_else(|| {
//!             let mut fences = self.fences.lock().unwrap();
//!             *fences += 1;
//!             *fences
//!         });
//!         let value = request.value.map(str::to_owned);
//!         table.insert(request.key.to_owned(), (request.token, fence, now + request.ttl, value));
//!         drop(table);
//!         if request.value.is_some() {
//!             self.wakeups.notify(request.key); // observers learn of a new holder
//!         }
//!         Ok(Attempt::Acquired { fence, revision: fence })
//!     }
//!
//!     async fn extend(&self, key: &str, lease: &Lease, ttl: Duration) -> Result<Option<u64>, LockError> {
//!         let mut table = self.table.lock().unwrap();
//!         match table.get_mut(key) {
//!             Some((token, _, expires, _)) if *token == lease.token && *expires > Instant::now() => {
//!                 *expires = Instant::now() + ttl;
//!                 Ok(Some(lease.revision))
//!             }
//!             _ => Ok(None),
//!         }
//!     }
//!
//!     async fn release(&self, key: &str, lease: &Lease) -> Result<bool, LockError> {
//!         let mut table = self.table.lock().unwrap();
//!         let held = matches!(table.get(key), Some((token, _, expires, _))
//!             if *token == lease.token && *expires > Instant::now());
//!         if matches!(table.get(key), Some((token, ..)) if *token == lease.token) {
//!             table.remove(key);
//!         }
//!         drop(table);
//!         if held {
//!             self.wakeups.notify(key);
//!         }
//!         Ok(held)
//!     }
//!
//!     async fn subscribe(&self, key: &str) -> Result<Subscription, LockError> {
//!         Ok(self.wakeups.subscribe(key))
//!     }
//!
//!     async fn holder(&self, key: &str) -> Result<Option<Holding>, LockError> {
//!         let table = self.table.lock().unwrap();
//!         let now = Instant::now();
//!         Ok(table.get(key).filter(|(_, _, expires, _)| *expires > now).map(
//!             |(token, fence, expires, value)| {
//!                 Holding::new(*token, *fence, Some(*expires - now)).with_value(value.clone())
//!             },
//!         ))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), LockError> {
//! let locker = Locker::new(TinyBackend::default());
//! let guard = locker.acquire("job", Duration::from_secs(5)).await?;
//! guard.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! A store inside the process can also answer on the spot, through
//! [`Backend::try_acquire_now`] and [`Backend::release_now`]: then an
//! uncontended lock needs no future at all, and a guard dropped outside any
//! runtime still releases at once.

mod contract;
mod request;
#[cfg(any(feature = "redis", feature = "nats"))]
mod state_loss;
mod token;
mod wake;
pub(crate) mod wall_clock;

pub(crate) use self::request::WRITER_CLAIM;
#[cfg(any(feature = "redis", feature = "nats"))]
pub(crate) use self::state_loss::StateLoss;
pub use self::{
    contract::Backend,
    request::{AcquireRequest, Attempt, Holding, Lease, LeaseKind},
    token::Token,
    wake::{Subscription, WakeRegistry},
};
