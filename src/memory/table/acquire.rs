//! Granting a lease: the holder's retry, the kinds that may join the live
//! holders, and a waiting writer's claim.

use smallvec::smallvec;
use smol_str::SmolStr;

use super::{
    MIN_SWEEP, PermitsMismatch, Stamp, Table,
    entry::{Admits, Entry, Held},
};
use crate::{
    backend::{AcquireRequest, Attempt, LeaseKind, WRITER_CLAIM},
    key::owned_key,
};

impl<T: Stamp> Table<T> {
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{
        super::{
            Released,
            tests::{TTL, at, fence_of, lease, of},
        },
        *,
    };
    use crate::backend::Token;

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
}
