//! Whether another holder stands in the way: the reads the checks between
//! lease kinds are made of, and taking back an entry that met one.

use std::{borrow::Cow, time::Duration};

use super::{
    NatsBackend, ROUNDS,
    key::{self},
    leader::Stored,
    lease::{LeaseValue, Verdict},
};
use crate::{
    LockError,
    backend::{AcquireRequest, Attempt, LeaseKind},
};

/// How many entries one check reads past (expired ones it removes) before
/// it counts the key as contended.
pub(super) const SCAN_LIMIT: usize = 64;

/// Whether another holder stands in the way, as a read found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Holder {
    /// Nobody (or a lease that ran out, now removed).
    Gone,
    /// A live holder, for this long when known (a value this crate did not
    /// write never ends).
    Running(Option<Duration>),
}

impl Holder {
    /// Both findings together: running if either is, for as long as the
    /// longer one says.
    pub(super) fn and(self, other: Holder) -> Holder {
        match (self, other) {
            (Holder::Gone, other) | (other, Holder::Gone) => other,
            (Holder::Running(Some(a)), Holder::Running(Some(b))) => Holder::Running(Some(a.max(b))),
            _ => Holder::Running(None),
        }
    }
}

impl NatsBackend {
    /// Refuses shared and counted leases on a bucket that forbids deleting
    /// single messages: every reader's entry would leave a delete marker
    /// behind, and a slot's next holder would have to compare-and-set on a
    /// marker, which replicated streams before 2.9.21 do not serialise.
    pub(super) fn check_kinds(&self) -> Result<(), LockError> {
        if self.inner.exact_delete {
            return Ok(());
        }
        Err(LockError::Misconfigured {
            setting: "deny_delete",
            reason: format!(
                "bucket {:?} forbids deleting single messages (a bucket made by `nats kv add`): \
                 shared and counted locks need it; create the bucket with NatsBackend",
                self.inner.store.name
            ),
        })
    }

    /// Whether the lease stored in `stored` still runs, as this backend
    /// measures it; one that ran out is removed (exactly its message).
    pub(super) async fn live(&self, stored: Option<Stored>) -> Result<Holder, LockError> {
        let Some(stored) = stored.filter(|stored| !stored.marker) else {
            return Ok(Holder::Gone);
        };
        let Some(lease) = LeaseValue::decode(&stored.value) else {
            return Ok(Holder::Running(None));
        };
        match self
            .inner
            .seen
            .judge(&stored.key, stored.revision, lease.token, lease.ttl)
        {
            Verdict::Running(left) => Ok(Holder::Running(Some(left))),
            Verdict::Expired => {
                tracing::debug!(key = %stored.key, revision = stored.revision, "lease ran out; removing it");
                if self.remove(stored.revision).await?.is_ok() {
                    self.inner.seen.forget(&stored.key);
                }
                Ok(Holder::Gone)
            }
        }
    }

    /// The lease at `key`, as the leader has it.
    pub(super) async fn live_at(&self, key: &str) -> Result<Holder, LockError> {
        let stored = self.inner.leader.last(key).await?;
        self.live(stored).await
    }

    /// The first live lease among the entries matching `filter`.
    pub(super) async fn first_live(&self, filter: &str) -> Result<Holder, LockError> {
        let mut from = 1;
        for _ in 0..SCAN_LIMIT {
            let Some(stored) = self.inner.leader.first(filter, from).await? else {
                return Ok(Holder::Gone);
            };
            from = stored.revision + 1;
            if let running @ Holder::Running(_) = self.live(Some(stored)).await? {
                return Ok(running);
            }
        }
        Ok(Holder::Running(None))
    }

    /// Takes back an entry written by `request`'s try, which found itself in
    /// somebody's way.
    ///
    /// A one-off try wakes whoever its entry may have turned away meanwhile.
    /// A waiting one does not: waiters that turn each other away and wake
    /// each other would retry at the pace of round trips for as long as
    /// they wait. The holders they met wake them when they leave.
    pub(super) async fn withdraw(
        &self,
        request: &AcquireRequest<'_>,
        key: &str,
        entry: &str,
    ) -> Result<(), LockError> {
        // Proven ours first: a re-created bucket may hold somebody else's
        // entry at the revision our write got.
        self.remove_held(entry, request.token).await?;
        if !request.waiting {
            self.announce(key, false).await;
        }
        Ok(())
    }

    /// What stands in the way of the writer that has just created `key`
    /// (encoded): shared holders and counted ones. The filter does not
    /// reach the claim (`K.w` has one token fewer than `K.*.>` needs):
    /// claims only keep shared and counted requests out.
    pub(super) async fn writer_conflict(&self, key: &str) -> Result<Holder, LockError> {
        if !self.inner.exact_delete {
            // No shared or counted lease can be taken on such a bucket.
            return Ok(Holder::Gone);
        }
        self.first_live(&key::holders(key)).await
    }

    /// Runs `work` on the current runtime without waiting for it; drops it
    /// outside any runtime (what it does is then left to lapse).
    pub(super) fn in_background(
        &self,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(work);
        }
    }

    /// The value of a fresh shared or counted lease.
    pub(super) fn fresh_value(&self, request: &AcquireRequest<'_>) -> bytes::Bytes {
        LeaseValue {
            token: request.token,
            ttl: request.ttl,
            fence: None,
            value: None,
        }
        .encode()
    }

    /// The request's token holds `entry` already: granted again, with the
    /// same fence, its lease restarted from now (and its value the
    /// request's). `None` when the entry is not the token's (any more).
    /// An exclusive entry is checked against readers first, as after any
    /// write ([`written`](NatsBackend::written)).
    pub(super) async fn regrant(
        &self,
        entry: &str,
        request: &AcquireRequest<'_>,
    ) -> Result<Option<Attempt>, LockError> {
        for _ in 0..ROUNDS {
            let Some(stored) = self.inner.leader.last(entry).await? else {
                return Ok(None);
            };
            let lease = match LeaseValue::decode(&stored.value) {
                Some(lease) if stored.carries(request.token) => lease,
                _ => return Ok(None),
            };
            let fence = lease.fence_at(stored.revision, |at| self.inner.fences.of(at));
            let again = LeaseValue {
                token: request.token,
                ttl: request.ttl,
                fence: Some(fence),
                value: request.value.map(Cow::Borrowed),
            }
            .encode();
            let sent = self.inner.fences.sent();
            if let Ok(revision) = self.put(entry, again, stored.revision).await? {
                let fence = Some(fence);
                let attempt = if matches!(request.kind, LeaseKind::Exclusive) {
                    self.written(entry, request, sent, revision, fence).await?
                } else {
                    self.granted(entry, request, sent, revision, fence).await?
                };
                return Ok(Some(attempt));
            }
        }
        Ok(Some(Attempt::Busy { remaining: None }))
    }
}
