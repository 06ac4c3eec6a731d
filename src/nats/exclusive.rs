//! The exclusive lease: the lock's own key, created on empty, checked for
//! shared and counted holders, renewed and released by its token.

use std::{borrow::Cow, time::Duration};

use async_nats::jetstream::kv::Operation;
use tokio::time::Instant;

use super::{
    NatsBackend, ROUNDS,
    fence::Sent,
    holders::Holder,
    key::{self},
    lease::{LeaseValue, Verdict},
};
use crate::{
    LockError,
    backend::{AcquireRequest, Attempt, Lease, LeaseKind},
};

impl NatsBackend {
    /// An exclusive lease of `request` was written at `key`: granted unless
    /// a shared or counted holder wrote before it (then withdrawn). A
    /// rewrite of the token's own entry is checked too: it may be left from
    /// a try that found a reader and could not withdraw.
    pub(super) async fn written(
        &self,
        key: &str,
        request: &AcquireRequest<'_>,
        sent: Sent,
        revision: u64,
        fence: Option<u64>,
    ) -> Result<Attempt, LockError> {
        // Shared and counted holders write entries of their own: whoever of
        // them wrote before us is found now.
        if let Holder::Running(remaining) = self.writer_conflict(key).await? {
            self.withdraw(request, key, key).await?;
            return Ok(Attempt::Busy { remaining });
        }
        // Others of this process wait behind: their claim stands.
        if !request.queued_behind {
            self.end_claim(key, false);
        }
        self.granted(key, request, sent, revision, fence).await
    }

    /// The bucket key `lease` of (encoded) `key` is held at, as far as this
    /// backend knows without a read: `None` for a counted lease it did not
    /// grant, or no longer holds (whose slot only the store can tell).
    pub(super) fn entry_of(&self, key: &str, lease: &Lease) -> Option<String> {
        match lease.kind {
            LeaseKind::Shared => Some(key::reader(key, lease.token)),
            LeaseKind::Counted { .. } => self.inner.own.counted_entry(key, lease.token),
            LeaseKind::Exclusive => Some(key.to_owned()),
        }
    }

    /// An exclusive try: the lock's own key, created on empty, then a check
    /// for shared and counted holders.
    pub(super) async fn try_exclusive(
        &self,
        request: &AcquireRequest<'_>,
    ) -> Result<Attempt, LockError> {
        let (token, ttl) = (request.token, request.ttl);
        let key = key::encode(request.key);
        let stored = request.value.map(Cow::Borrowed);
        let value = LeaseValue {
            token,
            ttl,
            fence: None,
            value: stored.clone(),
        }
        .encode();
        let seen = &self.inner.seen;
        let mut expected = seen.expected_free_revision(&key);
        for _ in 0..ROUNDS {
            let sent = self.inner.fences.sent();
            if let Ok(revision) = self.put(&key, value.clone(), expected).await? {
                return self.written(&key, request, sent, revision, None).await;
            }
            // Lost a race for a free key: the winner's lease is usually known
            // from the watch already, which saves a read. Unless the lease
            // is our own: then this is its holder asking again.
            if expected == 0
                && self.inner.own.running(&key, token).is_none()
                && let Some(remaining) = seen.running(&key)
            {
                return Ok(Attempt::Busy {
                    remaining: Some(remaining),
                });
            }
            expected = match self.entry(&key).await? {
                None => 0,
                Some(entry) if entry.operation != Operation::Put => entry.revision,
                Some(entry) => {
                    // A value this crate did not write never expires.
                    let Some(lease) = LeaseValue::decode(&entry.value) else {
                        return Ok(Attempt::Busy { remaining: None });
                    };
                    // Our own token: a retry of a try whose answer was
                    // lost, or the holder storing a new value.
                    if lease.token == token {
                        match self.regrant(&key, request).await? {
                            Some(attempt) => return Ok(attempt),
                            None => continue,
                        }
                    }
                    match seen.judge(&key, entry.revision, lease.token, lease.ttl) {
                        Verdict::Running(remaining) => {
                            return Ok(Attempt::Busy {
                                remaining: Some(remaining),
                            });
                        }
                        Verdict::Expired if self.inner.exact_delete => {
                            tracing::debug!(%key, revision = entry.revision, "lease ran out; taking over");
                            // Remove exactly that lease, then create as on a
                            // free key: creating on an empty key is the one
                            // compare-and-set that replicated streams of
                            // every server version serialise.
                            let _ = self.remove(entry.revision).await?;
                            0
                        }
                        Verdict::Expired => {
                            tracing::debug!(%key, revision = entry.revision, "lease ran out; taking over");
                            entry.revision
                        }
                    }
                }
            };
        }
        // Others kept changing the key under us: it is contended.
        Ok(Attempt::Busy { remaining: None })
    }

    /// Renews the lease `lease` holds at the bucket key `entry`.
    pub(super) async fn extend_entry(
        &self,
        entry: &str,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Option<u64>, LockError> {
        // A lease that ran out on our own clock may be being taken over
        // right now: renewing it could race the takeover.
        let Some(own) = self.inner.own.running(entry, lease.token) else {
            return Ok(None);
        };
        if !self.same_stream(&own).await? {
            self.inner.own.forget(entry, lease.token);
            return Ok(None);
        }
        // The fence is written, so that the holder's stays what it was
        // granted while the revision moves on.
        let value = LeaseValue {
            token: lease.token,
            ttl,
            fence: Some(lease.fence),
            value: own.value.as_deref().map(Cow::Borrowed),
        }
        .encode();
        let sent_at = Instant::now();
        for _ in 0..ROUNDS {
            // The revision to write at is the one that carries our token
            // now: another holder's lease can sit at the revision we knew
            // (a re-created bucket), and a renewal whose reply was lost
            // may have moved ours on.
            let Some(expected) = self.held_by(entry, lease.token).await? else {
                break;
            };
            if let Ok(revision) = self.put(entry, value.clone(), expected).await? {
                let deadline = sent_at + ttl;
                self.inner.own.granted(
                    entry,
                    lease.token,
                    deadline,
                    own.value.as_deref(),
                    own.created,
                );
                return Ok(Some(revision));
            }
        }
        self.inner.own.forget(entry, lease.token);
        Ok(None)
    }

    /// Releases the lease `lease` holds at the bucket key `entry` (of the
    /// lock `key`): by its token, whatever revision the caller knew.
    pub(super) async fn release_entry(
        &self,
        key: &str,
        entry: &str,
        lease: &Lease,
    ) -> Result<bool, LockError> {
        let own = self.inner.own.forget(entry, lease.token);
        if let Some(own) = &own
            && !self.same_stream(own).await?
        {
            return Ok(false);
        }
        // The claim is read beside the proof, on an exclusive release only:
        // a crashed writer's claim is found without a read on the grant path.
        let claim = (entry == key && self.inner.exact_delete).then(|| key::claim(key));
        let claim_read = async {
            match &claim {
                Some(claim) => self.inner.leader.last(claim).await.ok().flatten(),
                None => None,
            }
        };
        let (removed, claim) = tokio::join!(self.remove_held(entry, lease.token), claim_read);
        if !removed? {
            return Ok(false);
        }
        if let Some(claim) = claim {
            self.sweep_claim(key, claim);
        }
        // An election's leader often resigns on its way out.
        let valued = own.is_some_and(|own| own.value.is_some());
        let slot = matches!(key::Entry::of(entry), Some(key::Entry::Slot { .. }));
        self.announce_entry(key, valued, slot.then_some(entry))
            .await;
        Ok(true)
    }
}
