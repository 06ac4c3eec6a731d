//! The lock table: a deterministic state machine over lease commands.
//!
//! Time is an argument, never read here. The standalone backend passes
//! tokio's clock (so that paused test time moves its leases); replicas on a
//! [`Bus`](super::bus::Bus) pass the stamp of the event being applied, so
//! every replica decides every expiry the same way.

mod acquire;
mod entry;
mod stamp;

use std::{fmt, hash::BuildHasher, time::Duration};

use hashbrown::HashTable;
use smol_str::SmolStr;

use self::entry::Entry;
pub(crate) use self::stamp::Stamp;
use crate::{
    LockError,
    backend::{AcquireRequest, Holding, Lease, LeaseKind},
    key::KeyHasher,
};

/// Keys with their current leases. Expired leases count as absent; they are
/// swept out lazily, so the table holds at most about twice the live keys.
///
/// Every operation comes in two forms: one that hashes the key, and one
/// (`*_hashed`) for a caller that already did, with [`Table::hash`], to pick
/// the shard.
#[derive(Clone)]
pub(crate) struct Table<T = Duration> {
    entries: HashTable<Entry<T>>,
    hasher: KeyHasher,
    // Sweep when the table grows past this: amortised O(1) per insert.
    sweep_at: usize,
    /// The last fence handed out: the fence source's memory.
    fences: u64,
}

const MIN_SWEEP: usize = 1024;

/// What a release came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Released {
    /// The lease was live and is released; `wake`: waiters may now get in
    /// (the last holder left, or a permit is free), so they are worth waking.
    Held {
        wake: bool,
    },
    Lost,
}

/// A counted request met holders that took the key with `stored` permits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PermitsMismatch {
    pub(crate) stored: u32,
}

impl PermitsMismatch {
    pub(crate) fn into_error(self, request: &AcquireRequest<'_>) -> LockError {
        let requested = match request.kind {
            LeaseKind::Counted { permits } => permits,
            _ => 0,
        };
        LockError::PermitsMismatch {
            key: request.key.to_owned(),
            stored: self.stored,
            requested,
        }
    }
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table::with_hasher(KeyHasher::default())
    }
}

impl<T> fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table").field("len", &self.len()).finish()
    }
}

impl<T> Table<T> {
    /// An empty table hashing with `hasher` (shards of one store share it).
    pub(crate) fn with_hasher(hasher: KeyHasher) -> Self {
        Table {
            entries: HashTable::new(),
            hasher,
            sweep_at: 0,
            fences: 0,
        }
    }

    /// How many keys have an entry (with holders, or a writer's claim).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

impl<T: Stamp> Table<T> {
    pub(crate) fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(crate) fn extend(
        &mut self,
        key: &str,
        lease: &Lease,
        ttl: Duration,
        now: T,
    ) -> Option<u64> {
        self.extend_hashed(key, self.hash(key), lease, ttl, now)
    }

    pub(crate) fn extend_hashed(
        &mut self,
        key: &str,
        hash: u64,
        lease: &Lease,
        ttl: Duration,
        now: T,
    ) -> Option<u64> {
        let entry = self.entries.find_mut(hash, |e| &*e.key == key)?;
        let held = entry
            .holders
            .iter_mut()
            .find(|held| held.token == lease.token && held.expires_at > now)?;
        held.expires_at = now.after(ttl)?;
        Some(held.fence)
    }

    /// Who holds `key` exclusively at `now`.
    pub(crate) fn holder(&self, key: &str, now: T) -> Option<Holding> {
        self.holder_hashed(key, self.hash(key), now)
    }

    pub(crate) fn holder_hashed(&self, key: &str, hash: u64, now: T) -> Option<Holding> {
        let entry = self.entries.find(hash, |e| &*e.key == key)?;
        if entry.kind != LeaseKind::Exclusive {
            return None;
        }
        let held = entry.holders.iter().find(|held| held.expires_at > now)?;
        let remaining = Some(now.until(held.expires_at));
        Some(
            Holding::new(held.token, held.fence, remaining)
                .with_value(held.value.as_ref().map(SmolStr::to_string)),
        )
    }

    pub(crate) fn release(&mut self, key: &str, lease: &Lease, now: T) -> Released {
        self.release_hashed(key, self.hash(key), lease, now)
    }

    pub(crate) fn release_hashed(
        &mut self,
        key: &str,
        hash: u64,
        lease: &Lease,
        now: T,
    ) -> Released {
        let Ok(mut found) = self.entries.find_entry(hash, |e| &*e.key == key) else {
            return Released::Lost;
        };
        let entry = found.get_mut();
        let Some(at) = entry
            .holders
            .iter()
            .position(|held| held.token == lease.token)
        else {
            return Released::Lost;
        };
        let live = entry.holders.swap_remove(at).expires_at > now;
        // Waiters can get in once the last holder has left, or a permit is
        // free; a reader leaving others behind lets nobody in.
        let wake = match entry.kind {
            LeaseKind::Counted { .. } => true,
            _ => !entry.holders.iter().any(|held| held.expires_at > now),
        };
        if !entry.is_live(now) {
            found.remove();
        }
        if live {
            Released::Held { wake }
        } else {
            Released::Lost
        }
    }

    fn sweep(&mut self, now: T) {
        self.entries.retain(|entry| entry.is_live(now));
        self.entries.shrink_to(self.entries.len() * 2, |e| e.hash);
        self.sweep_at = self.entries.len() * 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Attempt, Token, WRITER_CLAIM};

    pub(super) const TTL: Duration = Duration::from_millis(100);

    pub(super) fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    pub(super) fn fence_of(attempt: Result<Attempt, PermitsMismatch>) -> u64 {
        match attempt {
            Ok(Attempt::Acquired { fence, .. }) => fence,
            _ => panic!("expected an acquisition, got {attempt:?}"),
        }
    }

    pub(super) fn of(kind: LeaseKind, token: Token) -> AcquireRequest<'static> {
        AcquireRequest::new("k", token, TTL).kind(kind)
    }

    pub(super) fn lease(token: Token, fence: u64, kind: LeaseKind) -> Lease {
        Lease::granted(token, kind, fence, fence)
    }

    #[test]
    fn only_the_holder_releases_and_an_expired_release_is_lost() {
        let mut table = Table::default();
        let (a, b) = (Token::new(), Token::new());
        let fence = fence_of(table.try_acquire(&AcquireRequest::new("k", a, TTL), at(0), |_| 7));
        let stranger = Lease::granted(b, LeaseKind::Exclusive, fence, fence);
        assert!(matches!(
            table.release("k", &stranger, at(1)),
            Released::Lost
        ));
        assert_eq!(table.len(), 1);
        let holder = Lease::granted(a, LeaseKind::Exclusive, fence, fence);
        assert!(table.extend("k", &holder, TTL, at(50)).is_some());
        assert!(matches!(
            table.release("k", &holder, at(149)),
            Released::Held { .. }
        ));
        assert_eq!(table.len(), 0);
        fence_of(table.try_acquire(&AcquireRequest::new("k", a, TTL), at(200), |_| 8));
        assert!(matches!(
            table.release("k", &holder, at(400)),
            Released::Lost
        ));
        assert_eq!(table.len(), 0, "an expired lease is removed on release");
    }

    #[test]
    fn abandoned_leases_are_swept_as_the_table_grows() {
        let mut table = Table::default();
        for i in 0..10 * MIN_SWEEP as u64 {
            let key = format!("k{i}");
            fence_of(table.try_acquire(
                &AcquireRequest::new(&key, Token::new(), TTL),
                at(i * 1000),
                |_| i,
            ));
        }
        assert!(
            table.len() <= MIN_SWEEP,
            "table kept {} leases",
            table.len()
        );
    }

    #[test]
    fn a_release_removes_the_entry_once_nothing_in_it_lives_on() {
        let mut table = Table::default();
        let shared = LeaseKind::Shared;
        let (a, b) = (Token::new(), Token::new());
        fence_of(table.try_acquire(&of(shared, a), at(0), |_| 1));
        let fb = fence_of(table.try_acquire(&of(shared, b), at(50), |_| 2));
        // `a`'s lease ends at 100, the moment `b` leaves: nothing is left.
        table.release("k", &lease(b, fb, shared), at(100));
        assert_eq!(table.len(), 0, "an entry outlived its last lease");
        // A claim that ends at the release's moment keeps nothing either.
        let reader = Token::new();
        let fr = fence_of(table.try_acquire(&of(shared, reader), at(200), |_| 3));
        let writer = of(LeaseKind::Exclusive, Token::new()).waiting(true);
        assert!(matches!(
            table.try_acquire(&writer, at(250), |_| 4),
            Ok(Attempt::Busy { .. })
        ));
        table.release("k", &lease(reader, fr, shared), at(250) + WRITER_CLAIM);
        assert_eq!(table.len(), 0, "an entry outlived its writer's claim");
    }

    #[test]
    fn a_lease_ends_at_its_expiry_for_extension_and_for_readers_of_its_holder() {
        let mut table = Table::default();
        let a = Token::new();
        let fence = fence_of(table.try_acquire(&AcquireRequest::new("k", a, TTL), at(0), |_| 1));
        let held = lease(a, fence, LeaseKind::Exclusive);
        assert!(table.holder("k", at(99)).is_some());
        assert_eq!(
            table.holder("k", at(100)),
            None,
            "a lease outlived its expiry"
        );
        assert_eq!(
            table.extend("k", &held, TTL, at(100)),
            None,
            "an ended lease was extended"
        );
        let mut table = Table::default();
        fence_of(table.try_acquire(&AcquireRequest::new("k", a, TTL), at(0), |_| 1));
        assert_eq!(table.extend("k", &held, TTL, at(99)), Some(fence));
    }
}
