//! What a written lease comes to: its fence, a hold-back, its record.

use std::time::Duration;

use super::{NatsBackend, fence::Sent};
use crate::{
    LockError,
    backend::{AcquireRequest, Attempt},
};

impl NatsBackend {
    /// What a write of `request`'s lease at `revision` comes to; `fence`
    /// when the write kept the holder's fence, else the fence of the
    /// revision.
    pub(super) async fn granted(
        &self,
        key: &str,
        request: &AcquireRequest<'_>,
        sent: Sent,
        revision: u64,
        fence: Option<u64>,
    ) -> Result<Attempt, LockError> {
        self.inner.seen.forget(key);
        let stream = &self.inner.store.stream;
        let fences = &self.inner.fences;
        let Some(of_revision) = fences.fence(stream, revision, sent).await? else {
            return self.give_back(key, request, None).await;
        };
        // This very grant may be the one that showed the stream is new.
        if let Some(left) = fences.holds_back(request) {
            return self.give_back(key, request, Some(left)).await;
        }
        let created = fences.base();
        self.inner.own.granted(
            key,
            request.token,
            sent.at + request.ttl,
            request.value,
            created,
        );
        if request.value.is_some() {
            self.announce(key, false).await;
        }
        Ok(Attempt::Acquired {
            fence: fence.unwrap_or(of_revision),
            revision,
        })
    }

    /// Takes back a write of `request` at `key` that must not be granted:
    /// busy, for `remaining`.
    pub(super) async fn give_back(
        &self,
        key: &str,
        request: &AcquireRequest<'_>,
        remaining: Option<Duration>,
    ) -> Result<Attempt, LockError> {
        if let Err(err) = self.remove_held(key, request.token).await {
            tracing::debug!(%key, error = %err, "could not give back a grant held back");
        }
        Ok(Attempt::Busy { remaining })
    }
}
