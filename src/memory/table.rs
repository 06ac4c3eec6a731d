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

use smallvec::{SmallVec, smallvec};

use crate::{
    LockError,
    backend::{AcquireRequest, Attempt, Holding, Lease, LeaseKind, Token, WRITER_CLAIM},
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

/// One holder of a key.
#[derive(Clone, Debug)]
struct Held<T> {
    token: Token,
    fence: u64,
    expires_at: T,
    /// The value stored with the lease (an election's leader id).
    value: Option<SmolStr>,
}

#[derive(Clone, Debug)]
struct Entry<T> {
    key: SmolStr,
    hash: u64,
    /// What the holders hold: one exclusive lease, or shared or counted
    /// ones.
    kind: LeaseKind,
    /// The holders, expired ones included until the entry is next used.
    /// Most keys have one, kept inline.
    holders: SmallVec<[Held<T>; 1]>,
    /// Until when a waiting writer keeps new shared and counted leases out
    /// ([`WRITER_CLAIM`]).
    claimed_until: Option<T>,
}

/// Whether an entry lets a request of some kind in now.
enum Admits {
    Yes,
    /// Not now; the store's best guess of how long until it might.
    No(Option<Duration>),
    /// Counted holders took the key with this many permits, not the
    /// request's.
    Mismatch(u32),
}

impl<T: Stamp> Entry<T> {
    fn is_live(&self, now: T) -> bool {
        self.holders.iter().any(|held| held.expires_at > now)
            || self.claimed_until.is_some_and(|until| until > now)
    }

    /// Whether a request for a lease of `kind` may join the live holders.
    fn admits(&self, kind: LeaseKind, now: T) -> Admits {
        // How long until the last holder leaves (or, `first`, the first):
        // read only for a refusal, never on a grant.
        let left = |first: bool| {
            let lefts = self.holders.iter().map(|held| now.until(held.expires_at));
            if first { lefts.min() } else { lefts.max() }
        };
        let claimed = self
            .claimed_until
            .filter(|until| *until > now && kind != LeaseKind::Exclusive)
            .map(|until| now.until(until));
        let empty = self.holders.is_empty();
        match (self.kind, kind) {
            (LeaseKind::Counted { permits: stored }, LeaseKind::Counted { permits })
                if !empty && stored != permits =>
            {
                Admits::Mismatch(stored)
            }
            _ if claimed.is_some() => Admits::No(claimed.max(left(false))),
            _ if empty => Admits::Yes,
            (LeaseKind::Shared, LeaseKind::Shared) => Admits::Yes,
            (LeaseKind::Counted { permits }, LeaseKind::Counted { .. })
                if self.holders.len() < permits as usize =>
            {
                Admits::Yes
            }
            // A full count frees a place when its first holder leaves.
            (LeaseKind::Counted { .. }, LeaseKind::Counted { .. }) => Admits::No(left(true)),
            _ => Admits::No(left(false)),
        }
    }
}

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

    pub(crate) fn try_acquire(
        &mut self,
        request: &AcquireRequest<'_>,
        now: T,
        fence: impl FnOnce(&mut u64) -> u64,
    ) -> Result<Attempt, PermitsMismatch> {
        self.try_acquire_hashed(request, self.hash(request.key), now, fence)
    }

    pub(crate) fn try_acquire_hashed(
        &mut self,
        request: &AcquireRequest<'_>,
        hash: u64,
        now: T,
        fence: impl FnOnce(&mut u64) -> u64,
    ) -> Result<Attempt, PermitsMismatch> {
        let (key, token) = (request.key, request.token);
        // Callers bound the ttl (`validate_ttl`), so this holds; were it
        // not to, refusing is the answer that cannot break exclusion.
        let Some(expires_at) = now.after(request.ttl) else {
            return Ok(Attempt::Busy { remaining: None });
        };
        let value = request.value.map(SmolStr::new);
        let exclusive = request.kind == LeaseKind::Exclusive;
        if let Some(entry) = self.entries.find_mut(hash, |e| &*e.key == key) {
            entry.holders.retain(|held| held.expires_at > now);
            // The holder's own token again: a retry of a try whose answer
            // was lost, or a new value. It is the same grant, renewed from
            // now.
            if let Some(mine) = entry.holders.iter_mut().find(|held| held.token == token) {
                (mine.expires_at, mine.value) = (expires_at, value);
                return Ok(Attempt::Acquired {
                    fence: mine.fence,
                    revision: mine.fence,
                });
            }
            match entry.admits(request.kind, now) {
                Admits::Yes => {}
                Admits::Mismatch(stored) => return Err(PermitsMismatch { stored }),
                Admits::No(remaining) => {
                    if exclusive && request.waiting {
                        entry.claimed_until = now.after(WRITER_CLAIM);
                    }
                    return Ok(Attempt::Busy { remaining });
                }
            }
            if exclusive {
                entry.claimed_until = None;
            }
            if entry.holders.is_empty() {
                entry.kind = request.kind;
            }
            let fence = fence(&mut self.fences);
            entry.holders.push(Held {
                token,
                fence,
                expires_at,
                value,
            });
            return Ok(Attempt::Acquired {
                fence,
                revision: fence,
            });
        }
        if self.entries.len() >= self.sweep_at.max(MIN_SWEEP) {
            self.sweep(now);
        }
        let fence = fence(&mut self.fences);
        let held = Held {
            token,
            fence,
            expires_at,
            value,
        };
        let entry = Entry {
            key: owned_key(key),
            hash,
            kind: request.kind,
            holders: smallvec![held],
            claimed_until: None,
        };
        self.entries.insert_unique(hash, entry, |e| e.hash);
        Ok(Attempt::Acquired {
            fence,
            revision: fence,
        })
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

    const TTL: Duration = Duration::from_millis(100);

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn fence_of(attempt: Result<Attempt, PermitsMismatch>) -> u64 {
        match attempt {
            Ok(Attempt::Acquired { fence, .. }) => fence,
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
            Ok(Attempt::Busy {
                remaining: Some(at(60))
            })
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
            Ok(Attempt::Busy { .. })
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

    fn of(kind: LeaseKind, token: Token) -> AcquireRequest<'static> {
        AcquireRequest::new("k", token, TTL).kind(kind)
    }

    fn lease(token: Token, fence: u64, kind: LeaseKind) -> Lease {
        Lease::granted(token, kind, fence, fence)
    }

    #[test]
    fn shared_leases_coexist_and_keep_an_exclusive_one_out_until_the_last_leaves() {
        let mut table = Table::default();
        let (a, b, w) = (Token::new(), Token::new(), Token::new());
        let fa = fence_of(table.try_acquire(&of(LeaseKind::Shared, a), at(0), |f| *f + 1));
        let fb = fence_of(table.try_acquire(&of(LeaseKind::Shared, b), at(10), |_| 2));
        assert_eq!(
            table.holder("k", at(11)),
            None,
            "shared holders are not reported"
        );
        assert_eq!(
            table.try_acquire(&of(LeaseKind::Exclusive, w), at(20), |_| 3),
            Ok(Attempt::Busy {
                remaining: Some(at(90))
            }),
            "a writer waits for the last reader's lease"
        );
        let shared = LeaseKind::Shared;
        assert_eq!(
            table.release("k", &lease(a, fa, shared), at(30)),
            Released::Held { wake: false },
            "a reader leaving another behind lets nobody in"
        );
        assert_eq!(
            table.release("k", &lease(b, fb, shared), at(40)),
            Released::Held { wake: true }
        );
        assert_eq!(table.len(), 0);
        let fw = fence_of(table.try_acquire(&of(LeaseKind::Exclusive, w), at(50), |_| 4));
        assert!(fw > fb);
        assert!(matches!(
            table.try_acquire(&of(LeaseKind::Shared, a), at(60), |_| 5),
            Ok(Attempt::Busy { .. })
        ));
    }

    #[test]
    fn a_waiting_writer_keeps_new_readers_out_until_its_claim_lapses_or_it_is_served() {
        let mut table = Table::default();
        let (r, w) = (Token::new(), Token::new());
        let long =
            |kind, token| AcquireRequest::new("k", token, Duration::from_secs(10)).kind(kind);
        fence_of(table.try_acquire(&long(LeaseKind::Shared, r), at(0), |_| 1));
        // A one-off try claims nothing.
        let once = table.try_acquire(&long(LeaseKind::Exclusive, w), at(1), |_| 2);
        assert!(matches!(once, Ok(Attempt::Busy { .. })));
        fence_of(table.try_acquire(&long(LeaseKind::Shared, Token::new()), at(2), |_| 3));
        let waiting = long(LeaseKind::Exclusive, w).waiting(true);
        assert!(matches!(
            table.try_acquire(&waiting, at(3), |_| 4),
            Ok(Attempt::Busy { .. })
        ));
        let reader = long(LeaseKind::Shared, Token::new());
        assert_eq!(
            table.try_acquire(&reader, at(4), |_| 5),
            Ok(Attempt::Busy {
                remaining: Some(Duration::from_millis(9_998))
            }),
            "a new reader waits behind the claim, as long as the holders' leases"
        );
        let lapsed = Duration::from_millis(3) + WRITER_CLAIM;
        fence_of(table.try_acquire(&reader, lapsed, |_| 6));
        // Claimed again, then served: the grant ends the claim.
        let mut table = Table::default();
        let fr = fence_of(table.try_acquire(&long(LeaseKind::Shared, r), at(0), |_| 1));
        assert!(matches!(
            table.try_acquire(&waiting, at(1), |_| 2),
            Ok(Attempt::Busy { .. })
        ));
        let shared = LeaseKind::Shared;
        assert_eq!(
            table.release("k", &lease(r, fr, shared), at(2)),
            Released::Held { wake: true }
        );
        assert_eq!(table.len(), 1, "the claim outlives the last reader");
        let fw = fence_of(table.try_acquire(&waiting, at(3), |_| 3));
        assert_eq!(
            table.release("k", &lease(w, fw, LeaseKind::Exclusive), at(4)),
            Released::Held { wake: true }
        );
        assert_eq!(table.len(), 0, "the writer's grant ended its claim");
        fence_of(table.try_acquire(&reader, at(5), |_| 4));
    }

    #[test]
    fn counted_leases_stop_at_their_permits_and_refuse_another_count() {
        let mut table = Table::default();
        let two = LeaseKind::Counted { permits: 2 };
        let (a, b) = (Token::new(), Token::new());
        let fa = fence_of(table.try_acquire(&of(two, a), at(0), |_| 1));
        fence_of(table.try_acquire(&of(two, b), at(10), |_| 2));
        assert_eq!(
            table.try_acquire(&of(two, Token::new()), at(20), |_| 3),
            Ok(Attempt::Busy {
                remaining: Some(at(80))
            }),
            "a full count frees its first place when the first lease ends"
        );
        let three = LeaseKind::Counted { permits: 3 };
        assert_eq!(
            table.try_acquire(&of(three, Token::new()), at(20), |_| 3),
            Err(PermitsMismatch { stored: 2 })
        );
        assert!(matches!(
            table.try_acquire(&of(LeaseKind::Shared, Token::new()), at(20), |_| 3),
            Ok(Attempt::Busy { .. })
        ));
        assert_eq!(
            table.release("k", &lease(a, fa, two), at(30)),
            Released::Held { wake: true },
            "a freed permit lets a waiter in"
        );
        fence_of(table.try_acquire(&of(two, Token::new()), at(31), |_| 4));
        // The count goes with the last holder.
        let later = at(200);
        fence_of(table.try_acquire(&of(three, Token::new()), later, |_| 5));
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
