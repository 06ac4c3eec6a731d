//! One key's entry in the table: its holders, a waiting writer's claim, and
//! which kind of lease they let in now.

use std::time::Duration;

use smallvec::SmallVec;
use smol_str::SmolStr;

use super::Stamp;
use crate::backend::{LeaseKind, Token};

/// One holder of a key.
#[derive(Clone, Debug)]
pub(super) struct Held<T> {
    pub(super) token: Token,
    pub(super) fence: u64,
    pub(super) expires_at: T,
    /// The value stored with the lease (an election's leader id).
    pub(super) value: Option<SmolStr>,
}

#[derive(Clone, Debug)]
pub(super) struct Entry<T> {
    pub(super) key: SmolStr,
    pub(super) hash: u64,
    /// What the holders hold: one exclusive lease, or shared or counted
    /// ones.
    pub(super) kind: LeaseKind,
    /// The holders, expired ones included until the entry is next used.
    /// Most keys have one, kept inline.
    pub(super) holders: SmallVec<[Held<T>; 1]>,
    /// Until when a waiting writer keeps new shared and counted leases out
    /// ([`WRITER_CLAIM`](crate::backend::WRITER_CLAIM)).
    pub(super) claimed_until: Option<T>,
}

/// Whether an entry lets a request of some kind in now.
pub(super) enum Admits {
    Yes,
    /// Not now; the store's best guess of how long until it might.
    No(Option<Duration>),
    /// Counted holders took the key with this many permits, not the
    /// request's.
    Mismatch(u32),
}

impl<T: Stamp> Entry<T> {
    pub(super) fn is_live(&self, now: T) -> bool {
        self.holders.iter().any(|held| held.expires_at > now)
            || self.claimed_until.is_some_and(|until| until > now)
    }

    /// Whether a request for a lease of `kind` may join the live holders.
    pub(super) fn admits(&self, kind: LeaseKind, now: T) -> Admits {
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
