//! [`NatsBackend`]'s [`Backend`] impl: each call goes to the store logic of
//! its lease kind.

use std::{borrow::Cow, time::Duration};

use async_nats::jetstream::kv::Operation;

use super::{
    NatsBackend,
    key::{self},
    lease::{LeaseValue, Verdict},
};
use crate::{
    LockError,
    backend::{AcquireRequest, Attempt, Backend, Holding, Lease, LeaseKind, Subscription, Token},
};

#[async_trait::async_trait]
impl Backend for NatsBackend {
    async fn try_acquire(&self, request: &AcquireRequest<'_>) -> Result<Attempt, LockError> {
        self.check_ttl(request.ttl)?;
        if let Some(left) = self.inner.fences.holds_back(request) {
            return Ok(Attempt::Busy {
                remaining: Some(left),
            });
        }
        if request.value.is_some()
            && let Some(left) = self.young_stream(request.ttl).await?
        {
            return Ok(Attempt::Busy {
                remaining: Some(left),
            });
        }
        match request.kind {
            LeaseKind::Shared => return self.try_shared(request).await,
            LeaseKind::Counted { permits } => return self.try_counted(request, permits).await,
            LeaseKind::Exclusive => {}
        }
        let attempt = self.try_exclusive(request).await?;
        if request.waiting && matches!(attempt, Attempt::Busy { .. }) {
            self.claim(&key::encode(request.key), request.token);
        }
        Ok(attempt)
    }

    async fn extend(
        &self,
        key: &str,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Option<u64>, LockError> {
        self.check_ttl(ttl)?;
        // A counted lease this backend does not hold here is not renewed
        // (`extend_entry` would refuse it): no need to look for its slot.
        match self.entry_of(&key::encode(key), lease) {
            Some(entry) => self.extend_entry(&entry, lease, ttl).await,
            None => Ok(None),
        }
    }

    async fn release(&self, key: &str, lease: &Lease) -> Result<bool, LockError> {
        let key = key::encode(key);
        // A grant whose answer was lost: its slot is found by its token.
        let entry = match self.entry_of(&key, lease) {
            Some(entry) => Some(entry),
            None => self.find_counted(&key, lease.token).await?,
        };
        match entry {
            Some(entry) => self.release_entry(&key, &entry, lease).await,
            None => Ok(false),
        }
    }

    async fn subscribe(&self, key: &str) -> Result<Subscription, LockError> {
        // The watch is live from construction (and re-established with a
        // wake-up for everyone after failures), so registering is enough.
        let key = key::encode(key);
        let backend = self.clone();
        let subscription = self.inner.wakeups.subscribe(&key);
        Ok(subscription.on_give_up(move || backend.give_up(&key)))
    }

    /// The lease stored at the key, with its remaining time as this backend
    /// measures it (from when it first saw the lease's revision).
    async fn holder(&self, key: &str) -> Result<Option<Holding>, LockError> {
        let key = key::encode(key);
        let Some(entry) = self
            .entry(&key)
            .await?
            .filter(|entry| entry.operation == Operation::Put)
        else {
            return Ok(None);
        };
        // A value this crate did not write is a holder that never expires.
        let Some(lease) = LeaseValue::decode(&entry.value) else {
            return Ok(Some(Holding::new(
                Token::from(uuid::Uuid::nil()),
                self.inner.fences.of(entry.revision),
                None,
            )));
        };
        Ok(
            match self
                .inner
                .seen
                .judge(&key, entry.revision, lease.token, lease.ttl)
            {
                Verdict::Running(remaining) => {
                    let fence = lease.fence_at(entry.revision, |at| self.inner.fences.of(at));
                    let value = lease.value.map(Cow::into_owned);
                    Some(Holding::new(lease.token, fence, Some(remaining)).with_value(value))
                }
                Verdict::Expired => None,
            },
        )
    }
}

impl NatsBackend {
    /// Refuses a lease longer than the bucket's `max_age`, which the
    /// server would drop while it runs.
    pub(super) fn check_ttl(&self, ttl: Duration) -> Result<(), LockError> {
        match self.inner.max_age {
            Some(max_age) if ttl > max_age => Err(LockError::Misconfigured {
                setting: "max_age",
                reason: format!(
                    "a lease of {ttl:?} is longer than the max_age of bucket {:?} ({max_age:?}), \
                     which would drop it while it runs",
                    self.inner.store.name
                ),
            }),
            _ => Ok(()),
        }
    }
}
