//! One try at the store, and what its answer comes to: a guard over a new
//! lease record, or a refusal the wait strategy acts on.

use std::time::Duration;

use smol_str::SmolStr;
use tokio::{runtime::Handle, time::Instant};

use super::Locker;
use crate::{
    LockError, LockGuard,
    backend::{AcquireRequest, Attempt, Lease, LeaseKind, Token},
    lease::Record,
    run_to_end::RunToEnd,
};

/// How a try asks the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Asking {
    /// A one-off try, never queued.
    Once,
    /// A waiting caller's try; `behind`: others of this locker wait behind
    /// it (see [`AcquireRequest::queued_behind`]).
    Waiting { behind: bool },
}

impl Asking {
    fn request<'a>(
        self,
        key: &'a str,
        token: Token,
        ttl: Duration,
        value: Option<&'a str>,
        kind: LeaseKind,
    ) -> AcquireRequest<'a> {
        let request = AcquireRequest::new(key, token, ttl).value(value).kind(kind);
        match self {
            Asking::Once => request,
            Asking::Waiting { behind } => request.waiting(true).queued_behind(behind),
        }
    }
}

/// A try that found the key busy.
pub(super) struct Refused {
    /// The holder's remaining lease, when the store said.
    pub(super) remaining: Option<Duration>,
    /// Whether the store queued the caller (see [`Attempt::Queued`]).
    pub(super) queued: bool,
}

pub(super) fn current_runtime() -> Result<Handle, LockError> {
    Handle::try_current().map_err(LockError::unavailable)
}

impl Locker {
    /// One try at the store, asking as `asking` says. `Err` inside `Ok` is
    /// "busy".
    pub(super) async fn attempt(
        &self,
        key: &SmolStr,
        ttl: Duration,
        asking: Asking,
    ) -> Result<Result<LockGuard, Refused>, LockError> {
        if self.owner.is_closed() {
            return Err(LockError::ShutDown);
        }
        // Renewal needs a runtime: refused before the store grants anything.
        let runtime = self.auto_renew.then(current_runtime).transpose()?;
        let token = Token::unique();
        let request = asking.request(key, token, ttl, self.value.as_deref(), self.kind);
        // Read before the request: the holder's lease never outlasts the
        // store's.
        let sent_at = Instant::now();
        let outcome = match self.backend().try_acquire_now(&request) {
            Some(answer) => self.settle(key, token, ttl, answer?, runtime, sent_at),
            // Boxed: the on-the-spot path should not carry (and move) the
            // state of a request it never makes.
            None => Box::pin(self.attempt_remote(key, token, ttl, asking, runtime)).await?,
        };
        // A grant that crossed a shutdown is given back (the guard's drop):
        // the shutdown saw it among the held leases, or this sees the flag.
        if outcome.is_ok() && self.owner.is_closed() {
            return Err(LockError::ShutDown);
        }
        Ok(outcome)
    }

    /// A try that needs I/O, on `runtime` if renewal already asked for it.
    async fn attempt_remote(
        &self,
        key: &SmolStr,
        token: Token,
        ttl: Duration,
        asking: Asking,
        runtime: Option<Handle>,
    ) -> Result<Result<LockGuard, Refused>, LockError> {
        let runtime = runtime.map_or_else(current_runtime, Ok)?;
        let sent_at = Instant::now();
        let outcome = self.request(&runtime, key, token, ttl, asking).await?;
        Ok(self.settle(key, token, ttl, outcome, Some(runtime), sent_at))
    }

    /// What a try came to: a guard over a new lease, or the refusal.
    fn settle(
        &self,
        key: &SmolStr,
        token: Token,
        ttl: Duration,
        outcome: Attempt,
        runtime: Option<Handle>,
        sent_at: Instant,
    ) -> Result<LockGuard, Refused> {
        let (remaining, queued) = match outcome {
            Attempt::Acquired { fence, revision } => {
                let granted = (fence, revision);
                let owned = (token, self.kind);
                let record = Record::new(key.clone(), owned, granted, ttl, self.timing, sent_at);
                self.owner.hold(&record);
                if let Some(runtime) = runtime.as_ref().filter(|_| self.auto_renew) {
                    self.owner.renew(&record, runtime, sent_at);
                }
                tracing::debug!(?key, fence, "lock acquired");
                return Ok(LockGuard::new(record, self.owner.clone(), runtime));
            }
            Attempt::Busy { remaining } => (remaining, false),
            Attempt::Queued { remaining } => (remaining, true),
        };
        Err(Refused { remaining, queued })
    }

    /// A try through I/O. If the caller goes away mid-request, a lock it was
    /// granted is nobody's: it is given back. So is one the try may have
    /// been granted when its answer was lost (an I/O error, a request
    /// deadline): the release checks the token, so it frees only what this
    /// try took, and the lock is not orphaned for a whole ttl.
    async fn request(
        &self,
        runtime: &Handle,
        key: &SmolStr,
        token: Token,
        ttl: Duration,
        asking: Asking,
    ) -> Result<Attempt, LockError> {
        let kind = self.kind;
        let request = {
            let (backend, key, value) = (self.backend().clone(), key.clone(), self.value.clone());
            async move {
                let request = asking.request(&key, token, ttl, value.as_deref(), kind);
                backend.try_acquire(&request).await
            }
        };
        let cleanup = {
            let (backend, key) = (self.backend().clone(), key.clone());
            // A shutdown waits for a grant nobody will hold to be given back.
            let running = self.owner.running();
            move |outcome: Result<Attempt, LockError>| async move {
                let _running = running;
                if let Some(lease) = unclaimed(&outcome, token, kind) {
                    let _ = backend.release(&key, &lease).await;
                }
            }
        };
        let outcome = RunToEnd::new(runtime.clone(), request, cleanup).await;
        if let (Err(_), Some(lease)) = (&outcome, unclaimed(&outcome, token, kind)) {
            let (backend, key) = (self.backend().clone(), key.clone());
            let running = self.owner.running();
            runtime.spawn(async move {
                let _running = running;
                if let Err(err) = backend.release(&key, &lease).await {
                    tracing::debug!(?key, error = %err, "could not give back a try whose answer was lost");
                }
            });
        }
        outcome
    }
}

/// The lease a try's caller will not hold, if the store may have granted
/// one: a grant (when the caller has gone), or an answer lost in transit.
fn unclaimed(outcome: &Result<Attempt, LockError>, token: Token, kind: LeaseKind) -> Option<Lease> {
    match outcome {
        Ok(Attempt::Acquired { fence, revision }) => {
            Some(Lease::granted(token, kind, *fence, *revision))
        }
        Err(LockError::Unavailable { .. }) => Some(Lease::unanswered(token, kind)),
        _ => None,
    }
}
