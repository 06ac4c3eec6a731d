//! The lock table: a deterministic state machine over lease commands.
//!
//! Time is an argument, never read here. The standalone backend passes
//! tokio's clock (so that paused test time moves its leases); replicas on a
//! [`Bus`](super::bus::Bus) pass the stamp of the event being applied, so
//! every replica decides every expiry the same way.

use std::{fmt, hash::BuildHasher, time::Duration};

use hashbrown::HashTable;
use smol_str::SmolStr;
use tokio::time::Instant;

use crate::{
    backend::{AcquireRequest, Attempt, Holding, Lease, LeaseKind, Token},
    key::{KeyHasher, owned_key},
};

/// A point in time as a table judges it: the bus's stamps for replicas,
/// tokio's clock for the standalone table.
pub(crate) trait Stamp: Copy + Ord + fmt::Debug {
    /// `ttl` later; `None` past what the type can hold.
    fn after(self, ttl: Duration) -> Option<Self>;
    /// How long from `self` until `later`.
    fn until(self, later: Self) -> Duration;
}

impl Stamp for Duration {
    fn after(self, ttl: Duration) -> Option<Self> {
        self.checked_add(ttl)
    }

    fn until(self, later: Self) -> Duration {
        later.saturating_sub(self)
    }
}

impl Stamp for Instant {
    fn after(self, ttl: Duration) -> Option<Self> {
        self.checked_add(ttl)
    }

    fn until(self, later: Self) -> Duration {
        later.saturating_duration_since(self)
    }
}

#[derive(Clone, Debug)]
struct Entry<T> {
    key: SmolStr,
    hash: u64,
    token: Token,
    fence: u64,
    expires_at: T,
    /// The value stored with the lease (an election's leader id).
    value: Option<SmolStr>,
}

/// Keys with their current lease. Expired leases count as absent; they are
/// swept out lazily, so the table holds at most about twice the live leases.
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

pub(crate) enum Released {
    Held,
    Lost,
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

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

impl<T: Stamp> Table<T> {
    pub(crate) fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(crate) fn try_acquire(
        &mut self,
        request: &AcquireRequest<'_>,
        now: T,
        fence: impl FnOnce(&mut u64) -> u64,
    ) -> Attempt {
        self.try_acquire_hashed(request, self.hash(request.key), now, fence)
    }

    pub(crate) fn try_acquire_hashed(
        &mut self,
        request: &AcquireRequest<'_>,
        hash: u64,
        now: T,
        fence: impl FnOnce(&mut u64) -> u64,
    ) -> Attempt {
        let (key, token) = (request.key, request.token);
        // Callers bound the ttl (`validate_ttl`), so this holds; were it
        // not to, refusing is the answer that cannot break exclusion.
        let Some(expires_at) = now.after(request.ttl) else {
            return Attempt::Busy { remaining: None };
        };
        let value = request.value.map(SmolStr::new);
        if let Some(entry) = self.entries.find_mut(hash, |e| &*e.key == key) {
            // The holder's own token again: a retry of a try whose answer
            // was lost, or a new value. It is the same grant, renewed from
            // now.
            if entry.token == token && entry.expires_at > now {
                (entry.expires_at, entry.value) = (expires_at, value);
                return Attempt::Acquired {
                    fence: entry.fence,
                    revision: entry.fence,
                };
            }
            if entry.expires_at > now {
                return Attempt::Busy {
                    remaining: Some(now.until(entry.expires_at)),
                };
            }
            let fence = fence(&mut self.fences);
            (entry.token, entry.fence, entry.expires_at) = (token, fence, expires_at);
            entry.value = value;
            return Attempt::Acquired {
                fence,
                revision: fence,
            };
        }
        if self.entries.len() >= self.sweep_at.max(MIN_SWEEP) {
            self.sweep(now);
        }
        let fence = fence(&mut self.fences);
        let entry = Entry {
            key: owned_key(key),
            hash,
            token,
            fence,
            expires_at,
            value,
        };
        self.entries.insert_unique(hash, entry, |e| e.hash);
        Attempt::Acquired {
            fence,
            revision: fence,
        }
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
        if entry.token != lease.token || entry.expires_at <= now {
            return None;
        }
        entry.expires_at = now.after(ttl)?;
        Some(entry.fence)
    }

    /// Who holds `key` at `now`.
    pub(crate) fn holder(&self, key: &str, now: T) -> Option<Holding> {
        self.holder_hashed(key, self.hash(key), now)
    }

    pub(crate) fn holder_hashed(&self, key: &str, hash: u64, now: T) -> Option<Holding> {
        let entry = self.entries.find(hash, |e| &*e.key == key)?;
        (entry.expires_at > now).then(|| {
            let remaining = Some(now.until(entry.expires_at));
            Holding::new(entry.token, entry.fence, remaining)
                .with_value(entry.value.as_ref().map(SmolStr::to_string))
        })
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
        let Ok(entry) = self
            .entries
            .find_entry(hash, |e| e.token == lease.token && &*e.key == key)
        else {
            return Released::Lost;
        };
        let live = entry.get().expires_at > now;
        entry.remove();
        if live { Released::Held } else { Released::Lost }
    }

    fn sweep(&mut self, now: T) {
        self.entries.retain(|entry| entry.expires_at > now);
        self.entries.shrink_to(self.entries.len() * 2, |e| e.hash);
        self.sweep_at = self.entries.len() * 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_millis(100);

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn fence_of(attempt: Attempt) -> u64 {
        match attempt {
            Attempt::Acquired { fence, .. } => fence,
            _ => panic!("expected an acquisition, got {attempt:?}"),
        }
    }

    #[test]
    fn a_live_lease_excludes_until_it_expires() {
        let mut table = Table::default();
        let (a, b) = (Token::new(), Token::new());
        fence_of(table.try_acquire(&AcquireRequest::new("k", a, TTL), at(0), |_| 1));
        assert_eq!(
            table.try_acquire(&AcquireRequest::new("k", b, TTL), at(40), |_| 2),
            Attempt::Busy {
                remaining: Some(at(60))
            }
        );
        assert_eq!(
            fence_of(table.try_acquire(&AcquireRequest::new("k", b, TTL), at(100), |_| 3)),
            3
        );
    }

    #[test]
    fn only_the_holder_releases_and_an_expired_release_is_lost() {
        let mut table = Table::default();
        let (a, b) = (Token::new(), Token::new());
        let fence = fence_of(table.try_acquire(&AcquireRequest::new("k", a, TTL), at(0), |_| 7));
        let stranger = Lease {
            token: b,
            fence,
            revision: fence,
            kind: LeaseKind::Exclusive,
        };
        assert!(matches!(
            table.release("k", &stranger, at(1)),
            Released::Lost
        ));
        assert_eq!(table.len(), 1);
        let holder = Lease {
            token: a,
            fence,
            revision: fence,
            kind: LeaseKind::Exclusive,
        };
        assert!(table.extend("k", &holder, TTL, at(50)).is_some());
        assert!(matches!(
            table.release("k", &holder, at(149)),
            Released::Held
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
    fn a_retry_with_the_holders_token_is_the_same_grant_renewed() {
        let mut table = Table::default();
        let (a, b) = (Token::new(), Token::new());
        let fence = fence_of(table.try_acquire(&AcquireRequest::new("k", a, TTL), at(0), |_| 5));
        assert_eq!(
            fence_of(table.try_acquire(&AcquireRequest::new("k", a, TTL), at(90), |_| 6)),
            fence
        );
        assert!(matches!(
            table.try_acquire(&AcquireRequest::new("k", b, TTL), at(150), |_| 7),
            Attempt::Busy { .. }
        ));
        assert_eq!(
            fence_of(table.try_acquire(&AcquireRequest::new("k", b, TTL), at(190), |_| 8)),
            8
        );
    }

    #[test]
    fn a_value_is_stored_with_the_lease_and_replaced_by_its_holder() {
        let mut table = Table::default();
        let a = Token::new();
        let first = AcquireRequest::new("k", a, TTL).value(Some("node-a"));
        let fence = fence_of(table.try_acquire(&first, at(0), |_| 5));
        let holder = table.holder("k", at(1)).expect("held");
        assert_eq!(
            (holder.fence, holder.value.as_deref()),
            (fence, Some("node-a"))
        );
        let renamed = first.value(Some("node-b"));
        assert_eq!(fence_of(table.try_acquire(&renamed, at(2), |_| 6)), fence);
        let holder = table.holder("k", at(3)).expect("held");
        assert_eq!(
            (holder.fence, holder.value.as_deref()),
            (fence, Some("node-b"))
        );
        let plain = AcquireRequest::new("k", Token::new(), TTL);
        fence_of(table.try_acquire(&plain, at(200), |_| 7));
        assert_eq!(table.holder("k", at(201)).expect("held").value, None);
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
}
