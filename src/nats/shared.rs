//! Shared leases: one entry per reader, `<key>.r.<token>`, then a check
//! that no writer holds or claims the key and no counted lease holds it.

use super::{
    Conflict, NatsBackend,
    holders::Holder,
    key::{self},
};
use crate::{
    LockError,
    backend::{AcquireRequest, Attempt},
};

impl NatsBackend {
    /// Takes a shared lease: the entry `<key>.r.<token>`, then a check that
    /// no writer holds the key, none claims it, and no counted lease holds it.
    pub(super) async fn try_shared(
        &self,
        request: &AcquireRequest<'_>,
    ) -> Result<Attempt, LockError> {
        self.check_kinds()?;
        let key = key::encode(request.key);
        let entry = key::reader(&key, request.token);
        // A waiting reader that knows of a claim reads it before it writes:
        // its entry, written and withdrawn, would turn away the very writer
        // the claim is for, who would then wait a backoff step for nothing.
        let claim_first = request.waiting
            && (self.inner.claims.written_by(&key).is_some()
                || self.inner.seen.running(&key::claim(&key)).is_some());
        if claim_first && let Holder::Running(remaining) = self.claim_on(request, &key).await? {
            return Ok(Attempt::Busy { remaining });
        }
        let value = self.fresh_value(request);
        let sent = self.inner.fences.sent();
        let revision = match self.put(&entry, value, 0).await? {
            Ok(revision) => revision,
            // Our token's entry is there already. Granted by this backend
            // and still running: a retry of a try whose answer was lost.
            // Otherwise it is what a refused try failed to withdraw, which
            // was never checked against writers: removed, and tried afresh.
            Err(Conflict) if self.inner.own.running(&entry, request.token).is_some() => {
                let again = self.regrant(&entry, request).await?;
                return Ok(again.unwrap_or(Attempt::Busy { remaining: None }));
            }
            Err(Conflict) => {
                self.remove_held(&entry, request.token).await?;
                return Ok(Attempt::Busy { remaining: None });
            }
        };
        let slots = key::slots(&key);
        let claimed = async {
            if claim_first {
                return Ok(Holder::Gone);
            }
            self.claim_on(request, &key).await
        };
        let (writer, claimed, counted) =
            tokio::try_join!(self.live_at(&key), claimed, self.first_live(&slots))?;
        if let Holder::Running(remaining) = writer.and(claimed).and(counted) {
            self.withdraw(request, &key, &entry).await?;
            return Ok(Attempt::Busy { remaining });
        }
        self.granted(&entry, request, sent, revision, None).await
    }
}
