//! Shared and counted leases, and what the exclusive lease checks besides
//! its own key: each holder is an entry of its own, created only on an empty
//! key, then checked against the others by reads the stream leader answers.
//! See the module docs ([Shared and counted
//! locks](super#shared-and-counted-locks)) for the layout and the argument.

use std::{borrow::Cow, collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

use super::{
    Conflict, NatsBackend, ROUNDS,
    fence::Sent,
    key::{self, Entry},
    leader::Stored,
    lease::{LeaseValue, Verdict},
};
use crate::{
    LockError,
    backend::{AcquireRequest, Attempt, LeaseKind, Token, WRITER_CLAIM},
};

/// How often a waiting writer renews its claim at most: well within the
/// claim's second, so that a writer that keeps trying keeps it, and far
/// less often than a contended writer tries.
const CLAIM_RENEWAL: Duration = Duration::from_millis(250);

/// How many entries one check reads past (expired ones it removes) before
/// it counts the key as contended.
const SCAN_LIMIT: usize = 64;

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
    fn and(self, other: Holder) -> Holder {
        match (self, other) {
            (Holder::Gone, other) | (other, Holder::Gone) => other,
            (Holder::Running(Some(a)), Holder::Running(Some(b))) => Holder::Running(Some(a.max(b))),
            _ => Holder::Running(None),
        }
    }
}

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
enum Claim {
    /// On its way to the server; `cancelled` once its waiters were served
    /// or gave up meanwhile, so that its writer removes it at once.
    Writing { cancelled: bool, at: Instant },
    /// Written with `token`, the one its removal must find there.
    Written { token: Token, at: Instant },
}

impl Claims {
    /// Whether a claim of `key` should be written now (none written within
    /// [`CLAIM_RENEWAL`]); if so, it counts as written from now.
    fn start(&self, key: &str) -> bool {
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
    fn written(&self, key: &str, token: Token) -> bool {
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
    fn written_by(&self, key: &str) -> Option<Token> {
        match self.lock().get(key) {
            Some(Claim::Written { token, .. }) => Some(*token),
            _ => None,
        }
    }

    /// Ends the claim of `key`: its token when it is written, for its
    /// removal; one still being written is removed by its writer.
    fn take(&self, key: &str) -> Option<Token> {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Claim>> {
        crate::sync::lock(&self.claims)
    }
}

/// The slot each lock's last release announcement named, per encoded lock
/// key: where this backend's next waiter for it tries first.
///
/// Anyone may publish an announcement, so a hint is only ever a slot name
/// this backend would have tried anyway: one of the lock's own slots, of
/// a count and an index below it as [`key::slot`] writes them. The waiter
/// still takes it only by creating it empty, for its own count, and then
/// checks as after any other create.
#[derive(Debug, Default)]
pub(super) struct Freed {
    slots: Mutex<HashMap<String, String>>,
}

impl Freed {
    pub(super) fn note(&self, key: &str, entry: &str) {
        if !matches!(Entry::of(entry), Some(Entry::Slot { .. })) || key::lock_of(entry) != key {
            return;
        }
        let mut slots = crate::sync::lock(&self.slots);
        if slots.len() >= 4096 {
            slots.clear();
        }
        slots.insert(key.to_owned(), entry.to_owned());
    }

    /// The slot named last for `key`, if it is one of `permits`.
    fn take(&self, key: &str, permits: u32) -> Option<String> {
        let entry = crate::sync::lock(&self.slots).remove(key)?;
        let index = entry.rsplit('.').next()?.parse().ok()?;
        let slot = key::slot(key, permits, index);
        (index < permits && slot == entry).then_some(slot)
    }
}

impl NatsBackend {
    /// Refuses shared and counted leases on a bucket that forbids deleting
    /// single messages: every reader's entry would leave a delete marker
    /// behind, and a slot's next holder would have to compare-and-set on a
    /// marker, which replicated streams before 2.9.21 do not serialise.
    fn check_kinds(&self) -> Result<(), LockError> {
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
    async fn live_at(&self, key: &str) -> Result<Holder, LockError> {
        let stored = self.inner.leader.last(key).await?;
        self.live(stored).await
    }

    /// The claim on `key` (encoded) that `request` must respect.
    ///
    /// A waiting request is subscribed to the key, so the watch records
    /// every claim written on it: when none was seen, none is read. A claim
    /// only ever delays, so this read decides nothing about exclusion.
    async fn claim_on(&self, request: &AcquireRequest<'_>, key: &str) -> Result<Holder, LockError> {
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

    /// The first live lease among the entries matching `filter`.
    async fn first_live(&self, filter: &str) -> Result<Holder, LockError> {
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

    /// Runs `work` on the current runtime without waiting for it; drops it
    /// outside any runtime (what it does is then left to lapse).
    fn in_background(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(work);
        }
    }

    /// A waiting writer was refused: it claims `key` for
    /// [`WRITER_CLAIM`](crate::backend::WRITER_CLAIM), keeping new shared
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

    async fn write_claim(&self, key: &str, token: Token) {
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

    /// Takes one of `permits` slots: the first free entry
    /// `<key>.p.<permits>.<slot>`, then a check that no writer and no shared
    /// holder holds the key, and no holder took it with another count.
    pub(super) async fn try_counted(
        &self,
        request: &AcquireRequest<'_>,
        permits: u32,
    ) -> Result<Attempt, LockError> {
        self.check_kinds()?;
        let key = key::encode(request.key);
        if let Some(entry) = self.inner.own.counted_entry(&key, request.token)
            && self.inner.own.running(&entry, request.token).is_some()
            && let Some(again) = self.regrant(&entry, request).await?
        {
            return Ok(again);
        }
        if let Some(attempt) = self.try_freed_slot(request, permits, &key).await? {
            return Ok(attempt);
        }
        let slots = key::slots(&key);
        let (listed, claimed) =
            tokio::try_join!(self.inner.leader.keys(&slots), self.claim_on(request, &key),)?;
        let (taken, others) = by_count(listed, permits);
        self.refuse_mismatch(request.key, permits, &others).await?;
        if let Holder::Running(remaining) = claimed {
            return Ok(Attempt::Busy { remaining });
        }
        let mut free = self.free_slots(permits, &taken).await?;
        let value = self.fresh_value(request);
        for _ in 0..ROUNDS {
            let slot = match free {
                Ok(ref mut free) if !free.is_empty() => {
                    let pick = pick(free.len());
                    free.swap_remove(pick)
                }
                Ok(_) => return Ok(Attempt::Busy { remaining: None }),
                Err(remaining) => return Ok(Attempt::Busy { remaining }),
            };
            let entry = key::slot(&key, permits, slot);
            let sent = self.inner.fences.sent();
            if let Ok(revision) = self.put(&entry, value.clone(), 0).await? {
                return self
                    .check_counted(request, permits, &key, &entry, revision, sent)
                    .await;
            }
        }
        Ok(Attempt::Busy { remaining: None })
    }

    /// A waiting counted try first tries the slot the last release
    /// announcement named: the winner of the slot saves the listing. `None`
    /// when there is no such slot, or somebody else took it: the try then
    /// goes on as if there had been no hint, since a hint is anyone's word.
    async fn try_freed_slot(
        &self,
        request: &AcquireRequest<'_>,
        permits: u32,
        key: &str,
    ) -> Result<Option<Attempt>, LockError> {
        if !request.waiting {
            return Ok(None);
        }
        let Some(entry) = self.inner.freed.take(key, permits) else {
            return Ok(None);
        };
        let sent = self.inner.fences.sent();
        match self.put(&entry, self.fresh_value(request), 0).await? {
            Ok(revision) => self
                .check_counted(request, permits, key, &entry, revision, sent)
                .await
                .map(Some),
            Err(Conflict) => Ok(None),
        }
    }

    /// The checks after `request` created the slot `entry` of `key`: no
    /// writer, no shared holder, no holder of another count.
    async fn check_counted(
        &self,
        request: &AcquireRequest<'_>,
        permits: u32,
        key: &str,
        entry: &str,
        revision: u64,
        sent: Sent,
    ) -> Result<Attempt, LockError> {
        let (readers, slots) = (key::readers(key), key::slots(key));
        let (writer, shared, listed) = tokio::try_join!(
            self.live_at(key),
            self.first_live(&readers),
            self.inner.leader.keys(&slots),
        )?;
        let (_, others) = by_count(listed, permits);
        if let Err(err) = self.refuse_mismatch(request.key, permits, &others).await {
            self.withdraw(request, key, entry).await?;
            return Err(err);
        }
        if let Holder::Running(remaining) = writer.and(shared) {
            self.withdraw(request, key, entry).await?;
            return Ok(Attempt::Busy { remaining });
        }
        self.granted(entry, request, sent, revision, None).await
    }

    /// `Err(PermitsMismatch)` when one of `others` (slots taken with
    /// another count) is live.
    async fn refuse_mismatch(
        &self,
        lock: &str,
        permits: u32,
        others: &[(String, u32)],
    ) -> Result<(), LockError> {
        for (entry, stored) in others {
            if let Holder::Running(_) = self.live_at(entry).await? {
                return Err(LockError::PermitsMismatch {
                    key: lock.to_owned(),
                    stored: *stored,
                    requested: permits,
                });
            }
        }
        Ok(())
    }

    /// The slots not among `taken`; when there are none, the
    /// slots whose leases ran out (removed now), or else
    /// `Err(remaining)`: how long until the first of them ends, when known.
    async fn free_slots(
        &self,
        permits: u32,
        taken: &[String],
    ) -> Result<Result<Vec<u32>, Option<Duration>>, LockError> {
        let index = |entry: &str| entry.rsplit('.').next().and_then(|i| i.parse::<u32>().ok());
        let taken_slots: std::collections::HashSet<u32> =
            taken.iter().filter_map(|entry| index(entry)).collect();
        let free: Vec<u32> = (0..permits)
            .filter(|slot| !taken_slots.contains(slot))
            .collect();
        if !free.is_empty() {
            return Ok(Ok(free));
        }
        // Every slot holds a lease: known ones still run, unknown ones are
        // read (and removed if they ran out).
        let mut soonest: Option<Duration> = None;
        let mut unknown = false;
        let mut freed = Vec::new();
        for entry in taken {
            let holder = match self.inner.seen.running(entry) {
                Some(left) => Holder::Running(Some(left)),
                None => self.live_at(entry).await?,
            };
            match holder {
                Holder::Gone => freed.extend(index(entry)),
                Holder::Running(Some(left)) => {
                    soonest = Some(soonest.map_or(left, |soonest| soonest.min(left)));
                }
                Holder::Running(None) => unknown = true,
            }
        }
        if !freed.is_empty() {
            return Ok(Ok(freed));
        }
        Ok(Err(if unknown { None } else { soonest }))
    }

    /// The value of a fresh shared or counted lease.
    fn fresh_value(&self, request: &AcquireRequest<'_>) -> bytes::Bytes {
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

    /// The entry `token` holds a counted lease of `key` (encoded) with,
    /// found by reading every slot.
    pub(super) async fn find_counted(
        &self,
        key: &str,
        token: Token,
    ) -> Result<Option<String>, LockError> {
        for entry in self.inner.leader.keys(&key::slots(key)).await? {
            if matches!(Entry::of(&entry), Some(Entry::Slot { .. }))
                && self.held_by(&entry, token).await?.is_some()
            {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }
}

/// The slots `listed` for one key, parted into those of `permits` and those
/// of other counts (with their count); anything else listed is left out.
fn by_count(listed: Vec<String>, permits: u32) -> (Vec<String>, Vec<(String, u32)>) {
    let (mut same, mut others) = (Vec::new(), Vec::new());
    for listed in listed {
        match Entry::of(&listed) {
            Some(Entry::Slot { permits: stored }) if stored == permits => same.push(listed),
            Some(Entry::Slot { permits: stored }) => others.push((listed, stored)),
            _ => {}
        }
    }
    (same, others)
}

/// A random index below `len` (not 0): contenders for a counted key spread
/// over its free slots instead of all racing for the first.
fn pick(len: usize) -> usize {
    let random = Token::new().as_uuid().as_u128();
    usize::try_from(random % len.max(1) as u128).unwrap_or(0)
}
