//! axum extractors for locks (feature `axum`).
//!
//! - [`HeldLock`]: the lock [`LockLayer`](crate::LockLayer) took for this
//!   request. `Option<HeldLock>` is `None` where no lock was taken.
//! - [`Locked<K>`]: takes the lock inside the handler instead of a layer,
//!   with the [`Locker`] from the router's state and the key that
//!   [`K: LockKey`](LockKey) derives from the request. The lock is held while
//!   the extractor value lives, i.e. for the handler's run.
//! - [`LockedAll<K>`]: the same for several keys that
//!   [`K: LockKeys`](LockKeys) derives (a transfer's two accounts), taken
//!   together, all or nothing, in the one order every process uses.
//!
//! Keys in the request body (a JSON transfer) cannot come from an
//! extractor that runs before the body is read: parse the body, then take
//! the keys with [`Locker::acquire_all`] and the `Locker` from the state
//! (`State<Locker>`).
//!
//! # Examples
//!
//! ```
//! use axum::{Router, extract::{FromRequestParts, Path}, http::request::Parts, routing::post};
//! use tower_lock::{Locker, extract::{LockKey, Locked}};
//!
//! /// One transfer at a time per account, keyed by the `{id}` path parameter.
//! struct Account;
//!
//! impl<S: Send + Sync> LockKey<S> for Account {
//!     type Rejection = axum::extract::rejection::PathRejection;
//!
//!     async fn lock_key(parts: &mut Parts, state: &S) -> Result<String, Self::Rejection> {
//!         let Path(id) = Path::<u64>::from_request_parts(parts, state).await?;
//!         Ok(format!("account:{id}"))
//!     }
//! }
//!
//! async fn transfer(lock: Locked<Account>) -> String {
//!     format!("transferring under fence {}", lock.fence())
//! }
//!
//! let app: Router = Router::new()
//!     .route("/accounts/{id}/transfer", post(transfer))
//!     .with_state(Locker::in_memory());
//! ```

use std::{convert::Infallible, fmt, marker::PhantomData, ops::Deref, time::Duration};

use axum::{
    extract::{FromRef, FromRequestParts, OptionalFromRequestParts},
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
};

pub use crate::middleware::HeldLock;
use crate::{LockGuard, LockSet, Locker, backend::LeaseKind, middleware::LockRejection};

impl<S: Send + Sync> FromRequestParts<S> for HeldLock {
    type Rejection = MissingHeldLock;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<HeldLock>()
            .cloned()
            .ok_or(MissingHeldLock { _private: () })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for HeldLock {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<HeldLock>().cloned())
    }
}

/// Rejection of the [`HeldLock`] extractor when the request holds no lock:
/// the handler is not behind a [`LockLayer`](crate::LockLayer), or the
/// layer let the request through without a key. `500`, because it is a
/// server bug.
#[derive(Debug)]
#[non_exhaustive]
pub struct MissingHeldLock {
    _private: (),
}

impl MissingHeldLock {
    /// `500 Internal Server Error`.
    pub fn status(&self) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }

    /// The response text.
    pub fn body_text(&self) -> &'static str {
        "Missing request extension: `HeldLock` was not found. Is the handler behind a \
         `tower_lock::LockLayer`, and did the layer find a key? Use `Option<HeldLock>` \
         where the lock is optional."
    }
}

impl fmt::Display for MissingHeldLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.body_text())
    }
}

impl std::error::Error for MissingHeldLock {}

impl IntoResponse for MissingHeldLock {
    fn into_response(self) -> Response {
        (self.status(), self.body_text()).into_response()
    }
}

impl IntoResponse for LockRejection {
    fn into_response(self) -> Response {
        self.into_http_response().map(axum::body::Body::from)
    }
}

/// Derives the lock key of a request for [`Locked<Self>`](Locked), and the
/// lock's options. Implemented by a marker type per kind of lock.
///
/// `lock_key` may run other extractors (`Path`, `TypedHeader`, ...); their
/// rejections become the request's response.
///
/// See the [module docs](self) for an example.
pub trait LockKey<S>: Send + Sync + 'static {
    /// The response when no key can be derived.
    type Rejection: IntoResponse;

    /// The lease of the lock; renewed while the extractor lives.
    const TTL: Duration = crate::middleware::DEFAULT_TTL;

    /// How long to wait for a busy key before `423 Locked`; zero to fail
    /// fast.
    const WAIT: Duration = crate::middleware::DEFAULT_WAIT;

    /// The kind of lock: exclusive (the default), shared (readers of a
    /// document side by side, never alongside a writer; see
    /// [`Locker::acquire_shared`]) or counted (at most `permits` handlers of
    /// a key at once; see [`Locker::acquire_permit`]).
    ///
    /// ```
    /// use axum::{extract::{FromRequestParts, Path}, http::request::Parts};
    /// use tower_lock::{backend::LeaseKind, extract::LockKey};
    ///
    /// /// Reads of `/documents/{id}`: they share the document's lock.
    /// struct DocumentRead;
    ///
    /// impl<S: Send + Sync> LockKey<S> for DocumentRead {
    ///     type Rejection = axum::extract::rejection::PathRejection;
    ///     const KIND: LeaseKind = LeaseKind::Shared;
    ///
    ///     async fn lock_key(parts: &mut Parts, state: &S) -> Result<String, Self::Rejection> {
    ///         let Path(id) = Path::<u64>::from_request_parts(parts, state).await?;
    ///         Ok(format!("document:{id}"))
    ///     }
    /// }
    ///
    /// /// Exports of a tenant: two at once.
    /// struct Export;
    ///
    /// impl<S: Send + Sync> LockKey<S> for Export {
    ///     type Rejection = axum::extract::rejection::PathRejection;
    ///     const KIND: LeaseKind = LeaseKind::Counted { permits: 2 };
    ///
    ///     async fn lock_key(parts: &mut Parts, state: &S) -> Result<String, Self::Rejection> {
    ///         let Path(tenant) = Path::<String>::from_request_parts(parts, state).await?;
    ///         Ok(format!("export:{tenant}"))
    ///     }
    /// }
    /// ```
    const KIND: LeaseKind = LeaseKind::Exclusive;

    /// The key of the request's lock.
    fn lock_key(
        parts: &mut Parts,
        state: &S,
    ) -> impl Future<Output = Result<String, Self::Rejection>> + Send;
}

/// A lock taken by the handler's extractor: the key and the kind of lock
/// (exclusive, shared or counted: [`LockKey::KIND`]) come from
/// [`K: LockKey`](LockKey), the [`Locker`] from the state
/// ([`FromRef`]). The lock is held, its lease renewed, until the value is
/// dropped: at the end of the handler unless it is moved elsewhere.
///
/// Unlike [`LockLayer`](crate::LockLayer), the lock is released when the
/// handler returns, before a streamed response body is sent.
///
/// Rejections: [`LockedRejection`]. See the [module docs](self) for an
/// example.
#[must_use = "the lock is released when this is dropped"]
pub struct Locked<K> {
    guard: LockGuard,
    _key: PhantomData<fn() -> K>,
}

impl<K> Locked<K> {
    /// The guard, to release early or watch [`LockGuard::lost`].
    pub fn into_guard(self) -> LockGuard {
        self.guard
    }
}

impl<K> Deref for Locked<K> {
    type Target = LockGuard;

    fn deref(&self) -> &LockGuard {
        &self.guard
    }
}

impl<K> fmt::Debug for Locked<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Locked").field(&self.guard).finish()
    }
}

impl<S, K> FromRequestParts<S> for Locked<K>
where
    S: Send + Sync,
    K: LockKey<S>,
    Locker: FromRef<S>,
{
    type Rejection = LockedRejection<K::Rejection>;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let key = K::lock_key(parts, state)
            .await
            .map_err(LockedRejection::Key)?;
        let locker = Locker::from_ref(state).auto_renew(true);
        let locker = locker
            .of_kind(K::KIND)
            .map_err(|error| refused(key.clone(), error))?;
        match locker.acquire_timeout(&key, K::TTL, K::WAIT).await {
            Ok(guard) => Ok(Locked {
                guard,
                _key: PhantomData,
            }),
            Err(error) => Err(refused(key, error)),
        }
    }
}

/// Derives the lock keys of a request for [`LockedAll<Self>`](LockedAll),
/// and the locks' options; like [`LockKey`] for several keys.
///
/// ```
/// use axum::{Router, extract::{FromRequestParts, Path}, http::request::Parts, routing::post};
/// use tower_lock::{Locker, extract::{LockKeys, LockedAll}};
///
/// /// Both accounts of `/transfers/{from}/{to}`.
/// struct Transfer;
///
/// impl<S: Send + Sync> LockKeys<S> for Transfer {
///     type Rejection = axum::extract::rejection::PathRejection;
///
///     async fn lock_keys(parts: &mut Parts, state: &S) -> Result<Vec<String>, Self::Rejection> {
///         let Path((from, to)) = Path::<(u64, u64)>::from_request_parts(parts, state).await?;
///         Ok(vec![format!("account:{from}"), format!("account:{to}")])
///     }
/// }
///
/// async fn transfer(locks: LockedAll<Transfer>) -> String {
///     format!("moving under {:?}", locks.fences().collect::<Vec<_>>())
/// }
///
/// let app: Router = Router::new()
///     .route("/transfers/{from}/{to}", post(transfer))
///     .with_state(Locker::in_memory());
/// ```
pub trait LockKeys<S>: Send + Sync + 'static {
    /// The response when no keys can be derived.
    type Rejection: IntoResponse;

    /// The lease of each lock; renewed while the extractor lives.
    const TTL: Duration = crate::middleware::DEFAULT_TTL;

    /// How long to wait, in all, for busy keys before `423 Locked`.
    const WAIT: Duration = crate::middleware::DEFAULT_WAIT;

    /// The keys of the request's locks.
    fn lock_keys(
        parts: &mut Parts,
        state: &S,
    ) -> impl Future<Output = Result<Vec<String>, Self::Rejection>> + Send;
}

/// Several locks taken by the handler's extractor, all or nothing: the keys
/// come from [`K: LockKeys`](LockKeys), the [`Locker`] from the state. Held,
/// and renewed, until the value is dropped. Derefs to the [`LockSet`].
///
/// Rejections: [`LockedRejection`], as for [`Locked`].
#[must_use = "the locks are released when this is dropped"]
pub struct LockedAll<K> {
    set: LockSet,
    _keys: PhantomData<fn() -> K>,
}

impl<K> LockedAll<K> {
    /// The set, to release early or watch [`LockSet::lost`].
    pub fn into_set(self) -> LockSet {
        self.set
    }
}

impl<K> Deref for LockedAll<K> {
    type Target = LockSet;

    fn deref(&self) -> &LockSet {
        &self.set
    }
}

impl<K> fmt::Debug for LockedAll<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LockedAll").field(&self.set).finish()
    }
}

impl<S, K> FromRequestParts<S> for LockedAll<K>
where
    S: Send + Sync,
    K: LockKeys<S>,
    Locker: FromRef<S>,
{
    type Rejection = LockedRejection<K::Rejection>;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let keys = K::lock_keys(parts, state)
            .await
            .map_err(LockedRejection::Key)?;
        let locker = Locker::from_ref(state).auto_renew(true);
        match locker.acquire_all_timeout(&keys, K::TTL, K::WAIT).await {
            Ok(set) => Ok(LockedAll {
                set,
                _keys: PhantomData,
            }),
            Err(error) => Err(refused(keys.join(", "), error)),
        }
    }
}

/// The rejection of a lock the extractor could not take; logged when the
/// store or the setup is at fault.
fn refused<R>(key: String, error: crate::LockError) -> LockedRejection<R> {
    let rejection = LockRejection::from_error(key, error);
    if matches!(
        rejection,
        LockRejection::Unavailable { .. } | LockRejection::Failed { .. }
    ) {
        tracing::error!(error = %rejection, "Locked extractor refused the request");
    }
    LockedRejection::Lock(rejection)
}

/// Rejection of [`Locked<K>`] and [`LockedAll<K>`].
#[derive(Debug)]
#[non_exhaustive]
pub enum LockedRejection<R> {
    /// [`LockKey::lock_key`] found no key; its own rejection.
    Key(R),
    /// The lock was not taken: `423` with `Retry-After` when busy, `503`
    /// when the store is unreachable, `400` for an invalid key.
    Lock(LockRejection),
}

impl<R: IntoResponse> IntoResponse for LockedRejection<R> {
    fn into_response(self) -> Response {
        match self {
            LockedRejection::Key(rejection) => rejection.into_response(),
            LockedRejection::Lock(rejection) => IntoResponse::into_response(rejection),
        }
    }
}

impl<R: fmt::Display> fmt::Display for LockedRejection<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockedRejection::Key(rejection) => write!(f, "no lock key: {rejection}"),
            LockedRejection::Lock(rejection) => rejection.fmt(f),
        }
    }
}

impl<R: std::error::Error + 'static> std::error::Error for LockedRejection<R> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LockedRejection::Key(rejection) => Some(rejection),
            LockedRejection::Lock(rejection) => Some(rejection),
        }
    }
}
