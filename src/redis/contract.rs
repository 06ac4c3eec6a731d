//! [`Backend`] for [`RedisBackend`]: each call one script on the key's
//! slot, and the waiters of this backend woken or withdrawn around it.

use std::time::Duration;

use super::{backend::RedisBackend, scripts, store::lease_millis};
use crate::{
    LockError,
    backend::{AcquireRequest, Attempt, Backend, Holding, Lease, LeaseKind, Subscription},
};

#[async_trait::async_trait]
impl Backend for RedisBackend {
    async fn try_acquire(&self, request: &AcquireRequest<'_>) -> Result<Attempt, LockError> {
        if let Some(left) = self.inner.store.loss.holds_back(request) {
            return Ok(Attempt::Busy {
                remaining: Some(left),
            });
        }
        let store = &self.inner.store;
        // Only a waiting caller (subscribed to the key's wake-ups before it
        // tried) joins the queue: a turn that comes for a key nobody here
        // watches is passed on.
        let ticket = request.waiting.then(|| store.joined.joining(request.key));
        let mut reply: Vec<i64> = store.run(&store.acquire(request, false)).await?;
        if reply.first() == Some(&4) {
            let left = store.epoch_hold_back(request.ttl).await?;
            if !left.is_zero() {
                if let Some(ticket) = ticket {
                    ticket.settle(None);
                }
                return Ok(Attempt::Busy {
                    remaining: Some(left),
                });
            }
            reply = store.run(&store.acquire(request, true)).await?;
        }
        let (outcome, value) = match reply[..] {
            [outcome, value, ..] => (outcome, value),
            _ => (0, -1),
        };
        if let Some(ticket) = ticket {
            // A grant leaves its backend in the queue only for the waiters
            // behind it: an exclusive one always, a shared or counted one
            // unless it wakes the next of them at once.
            let queued = match outcome {
                1 => {
                    request.queued_behind
                        && (request.kind == LeaseKind::Exclusive || reply.get(2) != Some(&1))
                }
                2 => true,
                _ => false,
            };
            ticket.settle(Some(queued));
        }
        if outcome == 1 {
            // Any turn this backend had on the key went to this grant (an
            // exclusive grant leaves none; a shared or counted one says), so
            // no later waiter here is to be woken for it.
            if request.kind == LeaseKind::Exclusive || reply.get(3) == Some(&1) {
                store.handover.cancel(request.key);
            }
            if reply.get(2) == Some(&1) {
                self.inner.wake_next(request.key);
            }
        }
        // Negative PTTL: the holder's key has no expiry (set by hand).
        let remaining = u64::try_from(value).ok().map(Duration::from_millis);
        Ok(match outcome {
            1 => {
                // The server's clock in µs: never below 1.
                let fence = u64::try_from(value).unwrap_or(0);
                Attempt::Acquired {
                    fence,
                    revision: fence,
                }
            }
            2 => Attempt::Queued { remaining },
            3 => {
                let requested = match request.kind {
                    LeaseKind::Counted { permits } => permits,
                    _ => 0,
                };
                return Err(LockError::PermitsMismatch {
                    key: request.key.to_owned(),
                    stored: u32::try_from(value).unwrap_or(u32::MAX),
                    requested,
                });
            }
            _ => Attempt::Busy { remaining },
        })
    }

    async fn extend(
        &self,
        key: &str,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Option<u64>, LockError> {
        let store = &self.inner.store;
        let mut invocation = match lease.kind {
            LeaseKind::Exclusive => store.invocation(&scripts::EXTEND, key),
            LeaseKind::Shared | LeaseKind::Counted { .. } => {
                store.invocation(&scripts::EXTEND_SHARED, key)
            }
        };
        invocation
            .arg(lease.token.to_string())
            .arg(lease_millis(ttl));
        let extended: i64 = store.run(&invocation).await?;
        Ok((extended == 1).then_some(lease.revision))
    }

    async fn release(&self, key: &str, lease: &Lease) -> Result<bool, LockError> {
        let Some(released) = self.inner.store.release(key, lease).await? else {
            return Ok(false);
        };
        // Waiters sharing this backend need not wait for the message's round
        // trip through Redis, when it is their turn.
        if released.frees_for(&self.inner.store.id) {
            self.inner.registry.notify(key);
        }
        Ok(true)
    }

    /// A waiter that gives up takes this backend out of the key's queue,
    /// once no other waiter here is left, and passes on a turn already
    /// reserved for it.
    async fn subscribe(&self, key: &str) -> Result<Subscription, LockError> {
        let (inner, gone) = (self.inner.clone(), key.to_owned());
        let subscription = self.inner.registry.subscribe(key);
        if self.inner.store.handover.claim(key) {
            self.inner.registry.notify(key);
        }
        Ok(subscription.on_give_up(move || inner.withdraw(gone)))
    }

    async fn holder(&self, key: &str) -> Result<Option<Holding>, LockError> {
        let invocation = self.inner.store.invocation(&scripts::HOLDER, key);
        let reply: Vec<redis::Value> = self.inner.store.run(&invocation).await?;
        let [
            redis::Value::Int(1),
            token,
            redis::Value::Int(fence),
            redis::Value::Int(pttl),
            value @ ..,
        ] = &reply[..]
        else {
            return Ok(None);
        };
        let value = match value {
            [redis::Value::BulkString(value)] => Some(String::from_utf8_lossy(value).into_owned()),
            _ => None,
        };
        // A value this crate did not write is a holder all the same.
        let token = match token {
            redis::Value::BulkString(token) => std::str::from_utf8(token)
                .ok()
                .and_then(|token| uuid::Uuid::parse_str(token).ok()),
            _ => None,
        };
        Ok(Some(
            Holding::new(
                token.unwrap_or_default().into(),
                u64::try_from(*fence).unwrap_or(0),
                u64::try_from(*pttl).ok().map(Duration::from_millis),
            )
            .with_value(value),
        ))
    }
}
