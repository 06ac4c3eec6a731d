//! The [`Backend`] trait.

use std::{fmt, sync::Arc, time::Duration};

use super::{
    request::{AcquireRequest, Attempt, Holding, Lease},
    wake::Subscription,
};
use crate::LockError;

/// A store that can hold leases on keys.
///
/// Implementations must keep the semantics listed in the crate docs: mutual
/// exclusion, ownership by token, expiry after the ttl decided by one clock,
/// and strictly increasing fences per key. Keys arrive validated (non-empty,
/// at most [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes) but may contain any
/// characters; a store that restricts characters must encode them. Ttls
/// arrive between [`MIN_TTL`](crate::MIN_TTL) and
/// [`MAX_TTL`](crate::MAX_TTL).
///
/// # Who may write what
///
/// Two rules hold against anyone who can reach the store's server, not only
/// against holders that crashed or lag:
///
/// - **The token is the authority.** Every release, extend, claim removal
///   and give-up checks `lease.token` against what the store holds for
///   `key` itself, never a revision, sequence or position alone: those are
///   visible to whoever watches the store, and a store that was re-created
///   numbers from 1 again, so another holder's entry may sit at the very
///   revision an old lease names. A lease whose token does not hold the key
///   changes nothing, whatever its fence and revision.
/// - **Messages only wake.** Nothing that a pub/sub message or announcement
///   carries may grant, create or delete anything: anyone who may publish
///   on the server may send any payload on any channel or subject the
///   backend listens to. A woken waiter decides from what the store itself
///   answers; the only exception is a grant that the store hands over
///   together with proof that only the store and that waiter can compute.
///
/// Five primitives are required. A store inside the process may also answer
/// [`try_acquire_now`](Self::try_acquire_now) and
/// [`release_now`](Self::release_now) on the spot; their defaults ("this
/// needs I/O") are correct on their own, and the two are independent: a
/// store may answer either, both or neither.
///
/// The trait is object-safe; [`Locker`](crate::Locker) holds it as
/// `Arc<dyn Backend>`. See the [module docs](super) for a complete backend.
#[async_trait::async_trait]
pub trait Backend: fmt::Debug + Send + Sync + 'static {
    /// Takes `request.key` for `request.token` for `request.ttl` if nobody
    /// holds it (or its holder's lease has run out).
    ///
    /// Returns [`Attempt::Acquired`] with the new fence, or
    /// [`Attempt::Busy`] with the holder's remaining lease when the store
    /// reports it, so waiters never sleep past an expiry. A store that
    /// queues waiters may queue a caller whose request says
    /// [`waiting`](AcquireRequest::waiting), and answer
    /// [`Attempt::Queued`].
    ///
    /// A key whose live lease already carries `request.token` is granted
    /// again, with the same fence, its lease restarted at `request.ttl` and
    /// its value replaced by `request.value`: that is a retry of a try
    /// whose answer was lost (refusing it would orphan the lock for its
    /// ttl), or a holder changing its stored value.
    ///
    /// Leases of other [kinds](crate::backend::LeaseKind) follow the same
    /// rules per holder: a shared or counted request joins the key's live
    /// holders where its kind allows (and no waiting writer claims the key),
    /// each holder with its own token and fence. A counted request whose
    /// count differs from the one the key's holders took it with fails with
    /// [`LockError::PermitsMismatch`], changing nothing. A store may treat
    /// every kind as exclusive: that shares less, and breaks nothing.
    ///
    /// A store that can tell it lost its state (a restart that dropped its
    /// keys) should not grant a lease that carries a
    /// [`value`](AcquireRequest::value) for one `request.ttl` after it
    /// noticed, answering `Busy` meanwhile: holders of leases it lost count
    /// on them until a renewal fails, and an election must not gain a second
    /// leader meanwhile.
    async fn try_acquire(&self, request: &AcquireRequest<'_>) -> Result<Attempt, LockError>;

    /// Restarts the lease of `lease` on `key` at `ttl` from now.
    ///
    /// Returns the lease's new revision, or `None` when the lease is no
    /// longer held by `lease.token` (expired or taken over, or never held:
    /// a `lease` that names the holder's revision with another token); in
    /// that case nothing is changed.
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
    /// the lease was no longer held by `lease.token`, whatever its revision
    /// and fence.
    ///
    /// The locker also sends a [`Lease::unanswered`] after a try whose
    /// outcome it could not learn: its fence and revision are unknown, and
    /// the key is released if it is held by `lease.token`, as any other.
    async fn release(&self, key: &str, lease: &Lease) -> Result<bool, LockError>;

    /// Registers interest in wake-ups for `key`: every release of it, and
    /// every grant of a lease on it that carries a
    /// [`value`](AcquireRequest::value) (observers of an election learn of a
    /// new leader so; plain locks are not woken by grants).
    ///
    /// Must be registered when the returned future completes: a release that
    /// happens afterwards has to wake the subscription. A backend that can
    /// not deliver wake-ups may return [`Subscription::never`]; waiters then
    /// fall back to their backoff timer.
    ///
    /// A wake-up only tells the waiter to try again: whatever arrives over
    /// the network to cause one (see [who may write what](Self#who-may-write-what))
    /// must not be trusted for more.
    ///
    /// A waiter holds its subscription for as long as it waits. A store that
    /// keeps state for waiters (a queue) learns that one gave up through
    /// [`Subscription::on_give_up`].
    async fn subscribe(&self, key: &str) -> Result<Subscription, LockError>;

    /// Who holds `key` now, with the fence of its acquisition and the value
    /// stored with its lease: `None` when nobody does (never taken,
    /// released, or its lease ran out as far as the store can tell), and
    /// when the key is held by shared or counted leases only: this reports
    /// exclusive holders (an election's leader).
    async fn holder(&self, key: &str) -> Result<Option<Holding>, LockError>;

    /// Answers [`try_acquire`](Self::try_acquire) on the spot, for a store
    /// inside this process; `None` (the default) means "this needs I/O: call
    /// `try_acquire`". A synchronous answer needs no future, and can not be
    /// cancelled half-way.
    fn try_acquire_now(&self, request: &AcquireRequest<'_>) -> Option<Result<Attempt, LockError>> {
        let _ = request;
        None
    }

    /// Answers [`release`](Self::release) on the spot, like
    /// [`try_acquire_now`](Self::try_acquire_now); `None` (the default)
    /// means "call `release`". It also lets a guard dropped outside any
    /// runtime release at once.
    fn release_now(&self, key: &str, lease: &Lease) -> Option<Result<bool, LockError>> {
        let _ = (key, lease);
        None
    }
}

#[async_trait::async_trait]
impl<B: Backend + ?Sized> Backend for Arc<B> {
    async fn try_acquire(&self, request: &AcquireRequest<'_>) -> Result<Attempt, LockError> {
        (**self).try_acquire(request).await
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

    async fn holder(&self, key: &str) -> Result<Option<Holding>, LockError> {
        (**self).holder(key).await
    }

    fn try_acquire_now(&self, request: &AcquireRequest<'_>) -> Option<Result<Attempt, LockError>> {
        (**self).try_acquire_now(request)
    }

    fn release_now(&self, key: &str, lease: &Lease) -> Option<Result<bool, LockError>> {
        (**self).release_now(key, lease)
    }
}
