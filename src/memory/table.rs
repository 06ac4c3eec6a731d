//! The lock table: a deterministic state machine over lease commands.
//!
//! Time is an argument, never read here. The standalone backend passes its
//! own monotonic clock; replicas on a [`Bus`](crate::bus::Bus) pass the
//! stamp of the event being applied, so every replica decides every expiry
//! the same way.

use std::{collections::HashMap, time::Duration};

use crate::{
    backend::{Attempt, Lease, Token},
    bus::{Command, Event},
};

/// Keys may come from HTTP requests, so the hasher is seeded per process;
/// foldhash's quality variant is that at a fraction of SipHash's cost.
pub(crate) type KeyHasher = foldhash::quality::RandomState;

#[derive(Clone, Debug)]
struct Entry {
    token: Token,
    fence: u64,
    expires_at: Duration,
}

/// Keys with their current lease. Expired leases count as absent; they are
/// swept out lazily, so the table holds at most about twice the live leases.
#[derive(Clone, Debug, Default)]
pub(crate) struct Table {
    entries: HashMap<Box<str>, Entry, KeyHasher>,
    // Sweep when the table grows past this: amortised O(1) per insert.
    sweep_at: usize,
}

const MIN_SWEEP: usize = 1024;

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

impl Table {
    /// Applies one event of a bus, judging expiry by the event's stamp and
    /// fencing by its sequence number: the same on every replica.
    pub(crate) fn apply(&mut self, event: &Event) -> Outcome {
        let now = event.stamp;
        match &event.command {
            Command::Acquire {
                key, token, ttl, ..
            } => Outcome::Acquire(self.try_acquire(key, *token, *ttl, now, || event.seq)),
            Command::Extend {
                key, lease, ttl, ..
            } => Outcome::Extend(self.extend(key, lease, *ttl, now)),
            Command::Release { key, lease, .. } => {
                Outcome::Release(matches!(self.release(key, lease, now), Released::Held))
            }
        }
    }

    pub(crate) fn try_acquire(
        &mut self,
        key: &str,
        token: Token,
        ttl: Duration,
        now: Duration,
        fence: impl FnOnce() -> u64,
    ) -> Attempt {
        if let Some(entry) = self.entries.get_mut(key) {
            if entry.expires_at > now {
                return Attempt::Busy {
                    remaining: Some(entry.expires_at - now),
                };
            }
            let fence = fence();
            *entry = Entry {
                token,
                fence,
                expires_at: now + ttl,
            };
            return Attempt::Acquired {
                fence,
                revision: fence,
            };
        }
        if self.entries.len() >= self.sweep_at.max(MIN_SWEEP) {
            self.sweep(now);
        }
        let fence = fence();
        self.entries.insert(
            key.into(),
            Entry {
                token,
                fence,
                expires_at: now + ttl,
            },
        );
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
        now: Duration,
    ) -> Option<u64> {
        match self.entries.get_mut(key) {
            Some(entry) if entry.token == lease.token && entry.expires_at > now => {
                entry.expires_at = now + ttl;
                Some(entry.fence)
            }
            _ => None,
        }
    }

    pub(crate) fn release(&mut self, key: &str, lease: &Lease, now: Duration) -> Released {
        match self.entries.get(key) {
            Some(entry) if entry.token == lease.token => {
                let live = entry.expires_at > now;
                self.entries.remove(key);
                if live { Released::Held } else { Released::Lost }
            }
            _ => Released::Lost,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn sweep(&mut self, now: Duration) {
        self.entries.retain(|_, entry| entry.expires_at > now);
        self.entries.shrink_to(self.entries.len() * 2);
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
            Attempt::Busy { .. } => panic!("expected an acquisition, got {attempt:?}"),
        }
    }

    #[test]
    fn a_live_lease_excludes_until_it_expires() {
        let mut table = Table::default();
        let (a, b) = (Token::new(), Token::new());
        fence_of(table.try_acquire("k", a, TTL, at(0), || 1));
        assert_eq!(
            table.try_acquire("k", b, TTL, at(40), || 2),
            Attempt::Busy {
                remaining: Some(at(60))
            }
        );
        assert_eq!(fence_of(table.try_acquire("k", b, TTL, at(100), || 3)), 3);
    }

    #[test]
    fn only_the_holder_releases_and_an_expired_release_is_lost() {
        let mut table = Table::default();
        let (a, b) = (Token::new(), Token::new());
        let fence = fence_of(table.try_acquire("k", a, TTL, at(0), || 7));
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
        fence_of(table.try_acquire("k", a, TTL, at(200), || 8));
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
            fence_of(table.try_acquire(&key, Token::new(), TTL, at(i * 1000), || i));
        }
        assert!(
            table.len() <= MIN_SWEEP,
            "table kept {} leases",
            table.len()
        );
    }
}
