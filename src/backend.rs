//! The [`Backend`] trait that every store implements, and its small value
//! types.
//!
//! A backend offers atomic primitives only: take a key with a token and a
//! ttl, extend, release by token, and wake-ups for released keys. All waiting
//! (queueing, backoff, cancellation) lives in [`Locker`](crate::Locker), so a
//! backend never sleeps or retries.
//!
//! # Writing a backend
//!
//! ```
//! use std::{collections::HashMap, sync::Mutex, time::{Duration, Instant}};
//! use tower_lock::backend::{Attempt, Backend, Lease, Subscription, Token, WakeRegistry};
//! use tower_lock::{LockError, Locker};
//!
//! /// A single-mutex table: fine for an example, too slow for real use.
//! #[derive(Debug, Default)]
//! struct TinyBackend {
//!     table: Mutex<HashMap<String, (Token, u64, Instant)>>,
//!     fences: Mutex<u64>,
//!     wakeups: WakeRegistry,
//! }
//!
//! #[async_trait::async_trait]
//! impl Backend for TinyBackend {
//!     async fn try_acquire(&self, key: &str, token: Token, ttl: Duration) -> Result<Attempt, LockError> {
//!         let mut table = self.table.lock().unwrap();
//!         let now = Instant::now();
//!         if let Some((_, _, expires)) = table.get(key) {
//!             if *expires > now {
//!                 return Ok(Attempt::Busy { remaining: Some(*expires - now) });
//!             }
//!         }
//!         let mut fences = self.fences.lock().unwrap();
//!         *fences += 1;
//!         table.insert(key.to_owned(), (token, *fences, now + ttl));
//!         Ok(Attempt::Acquired { fence: *fences, revision: *fences })
//!     }
//!
//!     async fn extend(&self, key: &str, lease: &Lease, ttl: Duration) -> Result<Option<u64>, LockError> {
//!         let mut table = self.table.lock().unwrap();
//!         match table.get_mut(key) {
//!             Some((token, _, expires)) if *token == lease.token && *expires > Instant::now() => {
//!                 *expires = Instant::now() + ttl;
//!                 Ok(Some(lease.revision))
//!             }
//!             _ => Ok(None),
//!         }
//!     }
//!
//!     async fn release(&self, key: &str, lease: &Lease) -> Result<bool, LockError> {
//!         let mut table = self.table.lock().unwrap();
//!         let held = matches!(table.get(key), Some((token, _, expires))
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

use std::{
    cell::Cell,
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;
use uuid::Uuid;

pub use crate::clock::Tick;
use crate::{LockError, pool::LeaseRef};

/// A store that can hold leases on keys.
///
/// Implementations must keep the semantics listed in the crate docs: mutual
/// exclusion, ownership by token, expiry after the ttl decided by one clock,
/// and strictly increasing fences per key. Keys arrive validated (non-empty,
/// at most [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes) but may contain any
/// characters; a store that restricts characters must encode them.
///
/// The trait is object-safe; [`Locker`](crate::Locker) holds it as
/// `Arc<dyn Backend>`. See the [module docs](self) for a complete backend.
#[async_trait::async_trait]
pub trait Backend: fmt::Debug + Send + Sync + 'static {
    /// Takes `key` for `token` for `ttl` if nobody holds it (or its holder's
    /// lease has run out).
    ///
    /// Returns [`Attempt::Busy`] with the holder's remaining lease when the
    /// store reports it, so waiters never sleep past an expiry.
    async fn try_acquire(
        &self,
        key: &str,
        token: Token,
        ttl: Duration,
    ) -> Result<Attempt, LockError>;

    /// Restarts the lease of `lease` on `key` at `ttl` from now.
    ///
    /// Returns the lease's new revision, or `None` when the lease is no
    /// longer held by `lease.token` (expired or taken over); in that case
    /// nothing is changed.
    async fn extend(
        &self,
        key: &str,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Option<u64>, LockError>;

    /// Releases `key` if it is still held by `lease`, and wakes the key's
    /// waiters.
    ///
    /// Returns `false`, changing nothing that belongs to anyone else, when
    /// the lease was no longer held.
    async fn release(&self, key: &str, lease: &Lease) -> Result<bool, LockError>;

    /// Registers interest in wake-ups for `key`.
    ///
    /// Must be registered when the returned future completes: a release that
    /// happens afterwards has to wake the subscription. A backend that can
    /// not deliver wake-ups may return [`Subscription::never`]; waiters then
    /// fall back to their backoff timer.
    async fn subscribe(&self, key: &str) -> Result<Subscription, LockError>;

    /// Answers [`try_acquire`](Self::try_acquire) on the spot, for a store
    /// inside this process; `None` (the default) means "this needs I/O: call
    /// `try_acquire`". A synchronous answer needs no future, and can not be
    /// cancelled half-way.
    ///
    /// The store judges the lease by [`Tick`]: it starts at a `Tick::now()`
    /// read in this call and runs until `start.after(ttl)`. The caller
    /// counts its view of the lease the same way from a reading taken before
    /// the call, so the holder never counts on a lease the store has ended.
    ///
    /// A store that grants the lease keeps `holder` with it until the lease
    /// leaves the store, and gives it back from
    /// [`holder_now`](Self::holder_now): the owner then needs no table of
    /// its own to find its lease by key.
    fn try_acquire_now(
        &self,
        key: &str,
        token: Token,
        ttl: Duration,
        holder: Holder,
    ) -> Option<Result<Attempt, LockError>> {
        let _ = (key, token, ttl, holder);
        None
    }

    /// The [`Holder`] kept with the lease on `key` (live or run out, until it
    /// leaves the store), for a store that answers
    /// [`try_acquire_now`](Self::try_acquire_now); `None` (the default) for
    /// any other store. `Some(None)`: no lease granted on the spot is there.
    fn holder_now(&self, key: &str) -> Option<Option<Holder>> {
        let _ = key;
        None
    }

    /// How many leases kept with a [`Holder`] satisfy `counted`, for a store
    /// that answers [`try_acquire_now`](Self::try_acquire_now) (a walk over
    /// the whole store: for diagnostics, not the hot path); `None` (the
    /// default) for any other store.
    fn count_holders_now(&self, counted: &dyn Fn(&Holder) -> bool) -> Option<usize> {
        let _ = counted;
        None
    }

    /// Answers [`release`](Self::release) on the spot, like
    /// [`try_acquire_now`](Self::try_acquire_now). It also lets a guard
    /// dropped outside any runtime release at once.
    fn release_now(&self, key: &str, lease: &Lease) -> Option<Result<bool, LockError>> {
        let _ = (key, lease);
        None
    }
}

#[async_trait::async_trait]
impl<B: Backend + ?Sized> Backend for Arc<B> {
    async fn try_acquire(
        &self,
        key: &str,
        token: Token,
        ttl: Duration,
    ) -> Result<Attempt, LockError> {
        (**self).try_acquire(key, token, ttl).await
    }

    async fn extend(
        &self,
        key: &str,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Option<u64>, LockError> {
        (**self).extend(key, lease, ttl).await
    }

    async fn release(&self, key: &str, lease: &Lease) -> Result<bool, LockError> {
        (**self).release(key, lease).await
    }

    async fn subscribe(&self, key: &str) -> Result<Subscription, LockError> {
        (**self).subscribe(key).await
    }

    fn try_acquire_now(
        &self,
        key: &str,
        token: Token,
        ttl: Duration,
        holder: Holder,
    ) -> Option<Result<Attempt, LockError>> {
        (**self).try_acquire_now(key, token, ttl, holder)
    }

    fn holder_now(&self, key: &str) -> Option<Option<Holder>> {
        (**self).holder_now(key)
    }

    fn count_holders_now(&self, counted: &dyn Fn(&Holder) -> bool) -> Option<usize> {
        (**self).count_holders_now(counted)
    }

    fn release_now(&self, key: &str, lease: &Lease) -> Option<Result<bool, LockError>> {
        (**self).release_now(key, lease)
    }
}

/// Who holds a lease granted by [`Backend::try_acquire_now`]: opaque to the
/// store, which only keeps it with the lease and hands it back from
/// [`Backend::holder_now`].
#[derive(Clone)]
pub struct Holder(pub(crate) LeaseRef);

impl fmt::Debug for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Holder").finish_non_exhaustive()
    }
}

/// The identity of one acquisition, stored as the lock's value so that only
/// its holder can extend or release it.
///
/// [`Locker`](crate::Locker) sends stores behind I/O a random one (a UUID
/// v4, [`Token::new`]); [`Backend::try_acquire_now`] gets one that is unique
/// within the process (a thread's number and a count), which is all a store
/// inside it needs: such a token tells holders apart, it is not a secret.
///
/// ```
/// use tower_lock::backend::Token;
///
/// let (a, b) = (Token::new(), Token::new());
/// assert_ne!(a, b);
/// assert_eq!(a.to_string().len(), 36);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(Uuid);

impl Token {
    /// A fresh random token.
    pub fn new() -> Self {
        Token(Uuid::new_v4())
    }

    /// A token for a store inside this process, where it only has to be
    /// unique within the process: a number per thread and a count, as a
    /// UUID of version 8 (so never equal to a [`new`](Self::new) one).
    /// Drawing 122 random bits costs an uncontended in-memory lock more than
    /// the rest of making its lease.
    #[inline]
    pub(crate) fn in_process() -> Self {
        /// Numbers threads in the order they first take a token.
        static THREADS: AtomicU64 = AtomicU64::new(0);
        thread_local! {
            static NEXT: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
        }
        let (thread, count) = NEXT.with(|next| {
            let (thread, count) = next
                .get()
                .unwrap_or_else(|| (THREADS.fetch_add(1, Ordering::Relaxed), 0));
            next.set(Some((thread, count.wrapping_add(1))));
            (thread, count)
        });
        // Laid out as a UUID of version 8 (bits 76 to 79 of the big-endian
        // number) and variant 0b10 (bits 62 and 63): the thread's number
        // (below 2^48) above them, the count (below 2^62) below. Built as
        // one number, not byte by byte: reading back bytes just stored
        // would stall the CPU's store forwarding.
        const VERSION_8: u128 = 8 << 76;
        const VARIANT: u128 = 0b10 << 62;
        let count = u128::from(count) & ((1 << 62) - 1);
        let number = (u128::from(thread) << 80) | VERSION_8 | VARIANT | count;
        Token(Uuid::from_u128(number))
    }

    /// The token as a UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for Token {
    fn default() -> Self {
        Token::new()
    }
}

impl From<Uuid> for Token {
    fn from(uuid: Uuid) -> Self {
        Token(uuid)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({self})")
    }
}

/// The outcome of [`Backend::try_acquire`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The key is now held by the caller's token.
    Acquired {
        /// The fencing token: strictly greater than every earlier fence of
        /// the key.
        fence: u64,
        /// A backend-specific version of the stored lease, handed back in
        /// [`Lease::revision`] (the key's revision on NATS; the fence where a
        /// store has no such notion).
        revision: u64,
    },
    /// Somebody else holds the key.
    Busy {
        /// How long the holder's lease still runs, when the store says.
        remaining: Option<Duration>,
    },
    /// Somebody else holds the key, and the store has put the caller in its
    /// queue for it: a wake-up comes when the caller's turn does, so the
    /// waiter has no need to poll. It still tries again once `remaining`
    /// (the holder's lease, or the turn reserved for another waiter) runs
    /// out, and at the longest backoff step at the latest, in case a wake-up
    /// is lost.
    Queued {
        /// How long the holder's lease (or the turn held for the waiter
        /// ahead) still runs, when the store says.
        remaining: Option<Duration>,
    },
}

/// What identifies one holding of a key to its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The token the key was taken with.
    pub token: Token,
    /// The fence returned with the acquisition.
    pub fence: u64,
    /// The lease's current revision (see [`Attempt::Acquired`]); updated by
    /// each successful [`Backend::extend`].
    pub revision: u64,
}

/// Wake-ups for one key, from [`Backend::subscribe`].
///
/// Dropping it unregisters the interest.
#[must_use = "a subscription only wakes while it is kept"]
pub struct Subscription {
    changes: Option<watch::Receiver<()>>,
    _registration: Option<Registration>,
}

impl Subscription {
    /// A subscription that never fires, for backends without wake-ups:
    /// waiters then retry on their backoff timer.
    pub fn never() -> Self {
        Subscription {
            changes: None,
            _registration: None,
        }
    }

    /// Waits for the next wake-up after the subscription was made (or after
    /// the last call returned).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a wake-up that arrives while no call is waiting is kept
    /// for the next call.
    pub async fn changed(&mut self) {
        if let Some(changes) = &mut self.changes
            && changes.changed().await.is_ok()
        {
            return;
        }
        // The source is gone (or there never was one): only the backoff
        // timer can end the wait.
        std::future::pending().await
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("live", &self.changes.is_some())
            .finish()
    }
}

/// Demultiplexes wake-ups by key: one per backend, shared by all waiters.
///
/// A backend receives released keys from its store (an event, a pub/sub
/// message, a watch) and calls [`notify`](Self::notify); waiters get a
/// [`Subscription`] from [`subscribe`](Self::subscribe). A key's entry lives
/// only while somebody is subscribed to it, so the registry never grows with
/// the number of distinct keys.
///
/// ```
/// use tower_lock::backend::WakeRegistry;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let registry = WakeRegistry::default();
/// let mut sub = registry.subscribe("k");
/// registry.notify("k");
/// sub.changed().await; // returns at once: the notify came after subscribe
/// drop(sub);
/// assert_eq!(registry.len(), 0);
/// # }
/// ```
#[derive(Clone, Default)]
pub struct WakeRegistry {
    inner: Arc<RegistryInner>,
}

#[derive(Default)]
struct RegistryInner {
    keys: Mutex<HashMap<Box<str>, Slot>>,
    // Lets `notify` skip the mutex on the release hot path when nobody waits.
    len: AtomicUsize,
}

struct Slot {
    changes: watch::Sender<()>,
    subscribers: usize,
}

impl WakeRegistry {
    /// Registers a waiter for `key`; it is woken by every later
    /// [`notify`](Self::notify) of the key.
    pub fn subscribe(&self, key: &str) -> Subscription {
        let mut keys = self.lock();
        let changes = match keys.get_mut(key) {
            Some(slot) => {
                slot.subscribers += 1;
                slot.changes.subscribe()
            }
            None => {
                let (changes, rx) = watch::channel(());
                keys.insert(
                    key.into(),
                    Slot {
                        changes,
                        subscribers: 1,
                    },
                );
                self.inner.len.store(keys.len(), Ordering::Release);
                rx
            }
        };
        Subscription {
            changes: Some(changes),
            _registration: Some(Registration {
                registry: self.clone(),
                key: key.into(),
            }),
        }
    }

    /// Wakes every current subscriber of `key`.
    pub fn notify(&self, key: &str) {
        if self.inner.len.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Some(slot) = self.lock().get(key) {
            slot.changes.send_replace(());
        }
    }

    /// Wakes every subscriber of every key: for when wake-ups may have been
    /// missed, such as after a reconnect.
    pub fn notify_all(&self) {
        for slot in self.lock().values() {
            slot.changes.send_replace(());
        }
    }

    /// Whether anybody is subscribed to `key`.
    pub fn is_watched(&self, key: &str) -> bool {
        self.inner.len.load(Ordering::Acquire) != 0 && self.lock().contains_key(key)
    }

    /// The keys that have subscribers now.
    pub fn keys(&self) -> Vec<String> {
        self.lock().keys().map(|k| k.to_string()).collect()
    }

    /// How many keys have subscribers.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Acquire)
    }

    /// Whether no key has subscribers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Slot>> {
        crate::sync::lock(&self.inner.keys)
    }
}

impl fmt::Debug for WakeRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WakeRegistry")
            .field("keys", &self.len())
            .finish()
    }
}

struct Registration {
    registry: WakeRegistry,
    key: Box<str>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut keys = self.registry.lock();
        if let Some(slot) = keys.get_mut(&*self.key) {
            slot.subscribers -= 1;
            if slot.subscribers == 0 {
                keys.remove(&*self.key);
                self.registry.inner.len.store(keys.len(), Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_process_tokens_are_unique_across_threads_and_apart_from_random_ones() {
        let per_thread = 1000;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..per_thread)
                        .map(|_| Token::in_process())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for thread in threads {
            for token in thread.join().expect("thread") {
                assert_eq!(token.as_uuid().get_version_num(), 8);
                assert_eq!(token.as_uuid().get_variant(), uuid::Variant::RFC4122);
                assert!(seen.insert(token), "{token} was handed out twice");
            }
        }
        assert_eq!(seen.len(), 4 * per_thread);
        assert_eq!(Token::new().as_uuid().get_version_num(), 4);
    }

    #[tokio::test]
    async fn notify_before_wait_is_not_lost() {
        let registry = WakeRegistry::default();
        let mut sub = registry.subscribe("k");
        registry.notify("k");
        tokio::time::timeout(Duration::from_secs(1), sub.changed())
            .await
            .expect("the wake-up sent after subscribing must be delivered");
    }

    #[tokio::test]
    async fn notify_of_other_key_does_not_wake() {
        let registry = WakeRegistry::default();
        let mut sub = registry.subscribe("k");
        registry.notify("other");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), sub.changed())
                .await
                .is_err()
        );
    }

    #[test]
    fn entries_go_when_the_last_subscriber_does() {
        let registry = WakeRegistry::default();
        let a = registry.subscribe("k");
        let b = registry.subscribe("k");
        assert_eq!(registry.len(), 1);
        drop(a);
        assert!(registry.is_watched("k"));
        drop(b);
        assert!(registry.is_empty());
        assert!(!registry.is_watched("k"));
    }
}
