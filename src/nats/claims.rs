//! A waiting writer's claim (`<key>.w`): it keeps new shared and counted
//! holders out while the writer waits, and only ever delays them.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

use super::{
    NatsBackend,
    holders::Holder,
    key::{self},
    leader::Stored,
    lease::LeaseValue,
};
use crate::{
    LockError,
    backend::{AcquireRequest, Token, WRITER_CLAIM},
};

/// How often a waiting writer renews its claim at most: well within the
/// claim's second, so that a writer that keeps trying keeps it, and far
/// less often than a contended writer tries.
pub(super) const CLAIM_RENEWAL: Duration = Duration::from_millis(250);

/// The claims this backend's waiting writers made, per encoded key.
#[derive(Debug, Default)]
pub(super) struct Claims {
    claims: Mutex<HashMap<String, Claim>>,
    /// The keys whose claim, left by somebody else, this backend looks at
    /// again once it has stood for a claim period (see `sweep_claim`).
    sweeps: Mutex<std::collections::HashSet<String>>,
}

/// One claim of this backend, and when it was (last) written.
#[derive(Clone, Copy, Debug)]
pub(super) enum Claim {
    /// On its way to the server; `cancelled` once its waiters were served
    /// or gave up meanwhile, so that its writer removes it at once.
    Writing { cancelled: bool, at: Instant },
    /// Written with `token`, the one its removal must find there.
    Written { token: Token, at: Instant },
}

impl Claims {
    /// Whether a claim of `key` should be written now (none written within
    /// [`CLAIM_RENEWAL`]); if so, it counts as written from now.
    pub(super) fn start(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut claims = self.lock();
        if let Some(Claim::Writing { at, .. } | Claim::Written { at, .. }) = claims.get(key)
            && now.saturating_duration_since(*at) < CLAIM_RENEWAL
        {
            return false;
        }
        if claims.len() >= 4096 {
            claims.retain(|_, claim| match claim {
                Claim::Writing { at, .. } | Claim::Written { at, .. } => {
                    now.saturating_duration_since(*at) < WRITER_CLAIM
                }
            });
        }
        claims.insert(
            key.to_owned(),
            Claim::Writing {
                cancelled: false,
                at: now,
            },
        );
        true
    }

    /// The claim of `key` was written with `token`: `false` when it is no
    /// longer wanted and must be removed.
    pub(super) fn written(&self, key: &str, token: Token) -> bool {
        let mut claims = self.lock();
        match claims.get(key).copied() {
            Some(Claim::Writing {
                cancelled: false,
                at,
            }) => {
                claims.insert(key.to_owned(), Claim::Written { token, at });
                true
            }
            Some(Claim::Writing {
                cancelled: true, ..
            }) => {
                claims.remove(key);
                false
            }
            _ => false,
        }
    }

    /// The token this backend's claim of `key` was written with.
    pub(super) fn written_by(&self, key: &str) -> Option<Token> {
        match self.lock().get(key) {
            Some(Claim::Written { token, .. }) => Some(*token),
            _ => None,
        }
    }

    /// Ends the claim of `key`: its token when it is written, for its
    /// removal; one still being written is removed by its writer.
    pub(super) fn take(&self, key: &str) -> Option<Token> {
        let mut claims = self.lock();
        match claims.get_mut(key) {
            Some(Claim::Writing { cancelled, .. }) => {
                *cancelled = true;
                None
            }
            Some(Claim::Written { token, .. }) => {
                let token = *token;
                claims.remove(key);
                Some(token)
            }
            None => None,
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Claim>> {
        crate::sync::lock(&self.claims)
    }
}

impl NatsBackend {
    /// The claim on `key` (encoded) that `request` must respect.
    ///
    /// A waiting request is subscribed to the key, so the watch records
    /// every claim written on it: when none was seen, none is read. A claim
    /// only ever delays, so this read decides nothing about exclusion.
    pub(super) async fn claim_on(
        &self,
        request: &AcquireRequest<'_>,
        key: &str,
    ) -> Result<Holder, LockError> {
        let claim = key::claim(key);
        let ours = self.inner.claims.written_by(key);
        if request.waiting && ours.is_none() && self.inner.seen.running(&claim).is_none() {
            return Ok(Holder::Gone);
        }
        let stored = self.inner.leader.last(&claim).await?;
        // This backend's own claim: the writer it was made for has had its
        // turn, since a locker queues its waiters in order and this try
        // comes from the head of its queue (a writer of this process still
        // waiting claims again when it is next refused). Standing, it would
        // keep this very reader out, and with it everyone, until it lapses.
        if let (Some(token), Some(stored)) = (ours, &stored)
            && stored.carries(token)
        {
            self.end_claim(key, true);
            return Ok(Holder::Gone);
        }
        if stored.is_none() {
            // Removed by its writer (a delete the watch does not report).
            self.inner.seen.forget(&claim);
        }
        self.live(stored).await
    }

    /// The writer of `key` was granted: its claim, if it made one, is over.
    /// Removed in the background: the grant need not wait for it, and the
    /// key is held meanwhile anyway.
    ///
    /// `announce`: wake the waiters of the key everywhere once it is gone,
    /// for whom it is the last thing in the way.
    pub(super) fn end_claim(&self, key: &str, announce: bool) {
        let Some(token) = self.inner.claims.take(key) else {
            return;
        };
        let (backend, key) = (self.clone(), key.to_owned());
        self.in_background(async move {
            // Another writer's claim in its place stands.
            match backend.remove_held(&key::claim(&key), token).await {
                Ok(removed) => {
                    backend.inner.seen.forget(&key::claim(&key));
                    if removed && announce {
                        backend.announce(&key, false).await;
                    }
                }
                Err(err) => tracing::debug!(%key, error = %err, "claim not removed; it lapses"),
            }
        });
    }

    /// After an exclusive release of `key` (encoded), what its claim read
    /// found: a claim left by a writer that crashed while it waited, which
    /// nothing on the exclusive path would remove otherwise. It goes once
    /// it has stood unchanged for a whole claim period since this backend
    /// first saw it: removed now if that is already so, else looked at
    /// again in the background when the period ends (one look per key at a
    /// time). A live writer's claim is renewed meanwhile, and stays.
    pub(super) fn sweep_claim(&self, key: &str, stored: Stored) {
        let ours = self.inner.claims.written_by(key);
        let lease = LeaseValue::decode(&stored.value);
        if stored.marker || lease.is_none_or(|lease| Some(lease.token) == ours) {
            return;
        }
        {
            let mut sweeps = crate::sync::lock(&self.inner.claims.sweeps);
            if sweeps.len() >= 4096 || !sweeps.insert(key.to_owned()) {
                return;
            }
        }
        let (backend, key) = (self.clone(), key.to_owned());
        self.in_background(async move {
            // The first look measures from now (or removes it), the second
            // removes what stood unchanged since.
            if let Ok(Holder::Running(Some(left))) = backend.live(Some(stored)).await {
                tokio::time::sleep(left + Duration::from_millis(10)).await;
                if let Ok(found) = backend.inner.leader.last(&key::claim(&key)).await
                    && let Err(err) = backend.live(found).await
                {
                    tracing::debug!(%key, error = %err, "left claim not removed");
                }
            }
            crate::sync::lock(&backend.inner.claims.sweeps).remove(&key);
        });
    }

    /// A waiting writer was refused: it claims `key` for
    /// [`WRITER_CLAIM`], keeping new shared
    /// and counted holders out. A claim only ever delays those, so it is a
    /// plain write, and a failed one is only logged.
    ///
    /// Written in the background: the refused try answers at once.
    pub(super) fn claim(&self, key: &str, token: Token) {
        if !self.inner.exact_delete || !self.inner.claims.start(key) {
            return;
        }
        let (backend, key) = (self.clone(), key.to_owned());
        self.in_background(async move { backend.write_claim(&key, token).await });
    }

    pub(super) async fn write_claim(&self, key: &str, token: Token) {
        let value = LeaseValue {
            token,
            ttl: WRITER_CLAIM,
            fence: None,
            value: None,
        }
        .encode();
        match self.inner.store.put(key::claim(key), value).await {
            Ok(_) => {
                // Its waiters may have been served or have given up while
                // it was on its way.
                if !self.inner.claims.written(key, token) {
                    if let Ok(true) = self.remove_held(&key::claim(key), token).await {
                        self.announce(key, false).await;
                    }
                    return;
                }
                self.give_up(key);
            }
            Err(err) => tracing::debug!(%key, error = %err, "claim not written"),
        }
    }

    /// The waiters of `key` here gave up: a claim they made is withdrawn,
    /// so that readers need not wait for it to lapse.
    pub(super) fn give_up(&self, key: &str) {
        if self.inner.wakeups.is_watched(key) {
            return;
        }
        self.end_claim(key, true);
    }
}
