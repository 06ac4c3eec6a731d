//! The lock table: a deterministic state machine over lease commands.
//!
//! Time is an argument, never read here. The standalone backend passes its
//! own monotonic clock; replicas on a [`Bus`](crate::bus::Bus) pass the
//! stamp of the event being applied, so every replica decides every expiry
//! the same way.

use std::{fmt, hash::BuildHasher, time::Duration};

use hashbrown::HashTable;
use smol_str::SmolStr;

use crate::{
    backend::{Attempt, Holder, Lease, Token},
    bus::{Command, Event},
    clock::Tick,
    key::owned_key,
};

/// Keys may come from HTTP requests, so the hasher is seeded per process;
/// foldhash's quality variant is that at a fraction of SipHash's cost.
pub(crate) type KeyHasher = foldhash::quality::RandomState;

/// A point in time as a table judges it: the bus's stamps for replicas, the
/// process's coarse monotonic clock ([`Tick`]) for the standalone table.
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

impl Stamp for Tick {
    fn after(self, ttl: Duration) -> Option<Self> {
        Tick::after(self, ttl)
    }

    fn until(self, later: Self) -> Duration {
        Tick::until(self, later)
    }
}

#[derive(Clone, Debug)]
struct Entry<T> {
    keeper: Keeper,
    hash: u64,
    token: Token,
    fence: u64,
    expires_at: T,
}

/// Who keeps an entry's key.
#[derive(Clone, Debug)]
enum Keeper {
    /// The lease's holder, kept for its owner when the lease was granted on
    /// the spot: its copy of the key serves, with no second one.
    Holder(Holder),
    /// The entry itself (keys up to 23 bytes inline: no allocation).
    Key(SmolStr),
}

impl Keeper {
    fn new(key: &str, holder: Option<Holder>) -> Self {
        match holder {
            Some(holder) => Keeper::Holder(holder),
            None => Keeper::Key(owned_key(key)),
        }
    }
}

impl<T> Entry<T> {
    fn key(&self) -> &str {
        match &self.keeper {
            Keeper::Holder(holder) => &holder.0.key,
            Keeper::Key(key) => key,
        }
    }

    fn holder(&self) -> Option<&Holder> {
        match &self.keeper {
            Keeper::Holder(holder) => Some(holder),
            Keeper::Key(_) => None,
        }
    }
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
    /// The last fence handed out by [`count_fence`](Self::count_fence).
    fences: u64,
}

const MIN_SWEEP: usize = 1024;

/// The fence source of a table that numbers its own grants.
pub(crate) fn count_fence(last: &mut u64) -> u64 {
    *last += 1;
    *last
}

pub(crate) enum Released {
    Held,
    Lost,
}

/// What applying a bus event decided.
pub(crate) enum Outcome {
    Acquire(Attempt),
    Extend(Option<u64>),
    Release(bool),
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

impl Table<Duration> {
    /// Applies one event of a bus, judging expiry by the event's stamp and
    /// fencing by its sequence number: the same on every replica.
    pub(crate) fn apply(&mut self, event: &Event) -> Outcome {
        let now = event.stamp;
        match &event.command {
            Command::Acquire {
                key, token, ttl, ..
            } => Outcome::Acquire(self.try_acquire(key, *token, *ttl, now, |_| event.seq)),
            Command::Extend {
                key, lease, ttl, ..
            } => Outcome::Extend(self.extend(key, lease, *ttl, now)),
            Command::Release { key, lease, .. } => {
                Outcome::Release(matches!(self.release(key, lease, now), Released::Held))
            }
        }
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

    /// How many entries keep a holder that satisfies `counted`.
    pub(crate) fn count_holders(&self, counted: &dyn Fn(&Holder) -> bool) -> usize {
        let kept = self.entries.iter().filter_map(Entry::holder);
        kept.filter(|holder| counted(holder)).count()
    }

    /// The holder kept with the lease on `key`, live or run out.
    pub(crate) fn holder_hashed(&self, key: &str, hash: u64) -> Option<Holder> {
        self.entries
            .find(hash, |e| e.key() == key)?
            .holder()
            .cloned()
    }
}

impl<T: Stamp> Table<T> {
    pub(crate) fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(crate) fn try_acquire(
        &mut self,
        key: &str,
        token: Token,
        ttl: Duration,
        now: T,
        fence: impl FnOnce(&mut u64) -> u64,
    ) -> Attempt {
        self.try_acquire_hashed(key, self.hash(key), token, ttl, now, fence, None)
    }

    #[allow(clippy::too_many_arguments)] // the hashed twin of `try_acquire`
    pub(crate) fn try_acquire_hashed(
        &mut self,
        key: &str,
        hash: u64,
        token: Token,
        ttl: Duration,
        now: T,
        fence: impl FnOnce(&mut u64) -> u64,
        holder: Option<Holder>,
    ) -> Attempt {
        // Callers bound the ttl (`validate_ttl`), so this holds; were it
        // not to, refusing is the answer that cannot break exclusion.
        let Some(expires_at) = now.after(ttl) else {
            return Attempt::Busy { remaining: None };
        };
        if let Some(entry) = self.entries.find_mut(hash, |e| e.key() == key) {
            if entry.expires_at > now {
                return Attempt::Busy {
                    remaining: Some(now.until(entry.expires_at)),
                };
            }
            let fence = fence(&mut self.fences);
            (entry.token, entry.fence, entry.expires_at) = (token, fence, expires_at);
            entry.keeper = Keeper::new(key, holder);
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
            keeper: Keeper::new(key, holder),
            hash,
            token,
            fence,
            expires_at,
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
        let entry = self.entries.find_mut(hash, |e| e.key() == key)?;
        if entry.token != lease.token || entry.expires_at <= now {
            return None;
        }
        entry.expires_at = now.after(ttl)?;
        Some(entry.fence)
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
            .find_entry(hash, |e| e.token == lease.token && e.key() == key)
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
        fence_of(table.try_acquire("k", a, TTL, at(0), |_| 1));
        assert_eq!(
            table.try_acquire("k", b, TTL, at(40), |_| 2),
            Attempt::Busy {
                remaining: Some(at(60))
            }
        );
        assert_eq!(fence_of(table.try_acquire("k", b, TTL, at(100), |_| 3)), 3);
    }

    #[test]
    fn only_the_holder_releases_and_an_expired_release_is_lost() {
        let mut table = Table::default();
        let (a, b) = (Token::new(), Token::new());
        let fence = fence_of(table.try_acquire("k", a, TTL, at(0), |_| 7));
        let stranger = Lease {
            token: b,
            fence,
            revision: fence,
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
        };
        assert!(table.extend("k", &holder, TTL, at(50)).is_some());
        assert!(matches!(
            table.release("k", &holder, at(149)),
            Released::Held
        ));
        assert_eq!(table.len(), 0);
        fence_of(table.try_acquire("k", a, TTL, at(200), |_| 8));
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
            fence_of(table.try_acquire(&key, Token::new(), TTL, at(i * 1000), |_| i));
        }
        assert!(
            table.len() <= MIN_SWEEP,
            "table kept {} leases",
            table.len()
        );
    }
}
