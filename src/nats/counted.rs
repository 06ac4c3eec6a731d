//! Counted leases: one of `permits` slots, `<key>.p.<permits>.<slot>`, then
//! a check that no writer and no reader holds the key, nor a holder of
//! another count.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use super::{
    Conflict, NatsBackend, ROUNDS,
    fence::Sent,
    holders::Holder,
    key::{self, Entry},
};
use crate::{
    LockError,
    backend::{AcquireRequest, Attempt, Token},
};

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
    pub(super) fn take(&self, key: &str, permits: u32) -> Option<String> {
        let entry = crate::sync::lock(&self.slots).remove(key)?;
        let index = entry.rsplit('.').next()?.parse().ok()?;
        let slot = key::slot(key, permits, index);
        (index < permits && slot == entry).then_some(slot)
    }
}

/// The slots `listed` for one key, parted into those of `permits` and those
/// of other counts (with their count); anything else listed is left out.
pub(super) fn by_count(listed: Vec<String>, permits: u32) -> (Vec<String>, Vec<(String, u32)>) {
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
pub(super) fn pick(len: usize) -> usize {
    let random = Token::new().as_uuid().as_u128();
    usize::try_from(random % len.max(1) as u128).unwrap_or(0)
}

impl NatsBackend {
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
    pub(super) async fn try_freed_slot(
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
    pub(super) async fn check_counted(
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
    pub(super) async fn refuse_mismatch(
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
    pub(super) async fn free_slots(
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
