//! What a lock entry holds, and how this backend decides that someone
//! else's lease has run out without trusting anyone's wall clock.
//!
//! NATS 2.9 has no per-key expiry, so the value carries the holder's token
//! and lease length, then the fence and the value stored with the lease
//! when there is one (`v1 <token> <ttl in ms> [<fence> [<value>]]`). A
//! fresh grant writes no fence: its fence comes from its revision, which
//! it learns only from the write; renewals write it, so that the holder's
//! fence stays what it was granted while the revision moves on. A waiter never compares the
//! entry's timestamp with its own clock: it notes *when it first saw* the
//! entry's revision (with the holder's token: a re-created bucket numbers
//! from 1 again, so another holder may come at a revision seen before) on
//! its own monotonic clock, and only once a whole lease
//! length has passed since then does it take the key over, by removing
//! exactly that revision (or, on a bucket with delete markers, by a
//! compare-and-set on it). The holder's own deadline started before the
//! revision was written, so it always runs out first.

use std::{borrow::Cow, collections::HashMap, sync::Mutex, time::Duration};

use bytes::Bytes;
use tokio::time::Instant;
use uuid::Uuid;

use crate::backend::Token;

const VERSION: &str = "v1";

/// A decoded lock entry value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeaseValue<'a> {
    pub(crate) token: Token,
    pub(crate) ttl: Duration,
    /// The holder's fence; `None` for a fresh grant, whose fence comes from
    /// its revision (stored as 0 when a value follows).
    pub(crate) fence: Option<u64>,
    /// What the holder stored with the lease.
    pub(crate) value: Option<Cow<'a, str>>,
}

impl LeaseValue<'_> {
    pub(crate) fn encode(&self) -> Bytes {
        // Rounded up: a waiter never counts a lease shorter than its holder.
        let millis = self.ttl.as_nanos().div_ceil(1_000_000);
        let mut text = format!("{VERSION} {} {millis}", self.token);
        if self.fence.is_some() || self.value.is_some() {
            text.push_str(&format!(" {}", self.fence.unwrap_or(0)));
        }
        if let Some(value) = &self.value {
            text.push(' ');
            text.push_str(value);
        }
        Bytes::from(text)
    }

    /// The holder's fence, given the lease's revision and how fences come
    /// from revisions.
    pub(crate) fn fence_at(&self, revision: u64, of: impl FnOnce(u64) -> u64) -> u64 {
        self.fence.unwrap_or_else(|| of(revision))
    }

    /// `None` for a value this crate did not write.
    pub(crate) fn decode(value: &[u8]) -> Option<LeaseValue<'_>> {
        // The stored value is last, and may hold spaces.
        let mut parts = std::str::from_utf8(value).ok()?.splitn(5, ' ');
        let (version, token, ttl) = (parts.next()?, parts.next()?, parts.next()?);
        if version != VERSION {
            return None;
        }
        // No fence is ever 0: a stored 0 stands for none.
        let fence = match parts.next() {
            Some(fence) => Some(fence.parse::<u64>().ok()?).filter(|&fence| fence != 0),
            None => None,
        };
        Some(LeaseValue {
            token: Token::from(Uuid::parse_str(token).ok()?),
            ttl: Duration::from_millis(ttl.parse().ok()?),
            fence,
            value: parts.next().map(Cow::Borrowed),
        })
    }
}

/// The last state of a key this backend saw, per (encoded) key.
#[derive(Clone, Copy, Debug)]
enum Seen {
    /// A delete or purge marker at this revision; `written`: this backend
    /// wrote it and the store acknowledged it, so the next `create` expects
    /// it (a marker only heard of through the watch is never relied on).
    Free { revision: u64, written: bool },
    /// `token`'s lease at this revision, first seen at `since`. The token
    /// is part of what was seen: a re-created bucket numbers from 1 again,
    /// so another holder's lease may come at a revision seen before.
    Held {
        revision: u64,
        token: Token,
        since: Instant,
        ttl: Duration,
    },
}

impl Seen {
    /// Whether both are the same sighting: the same marker, or the same
    /// holder's lease at the same revision.
    fn same(&self, other: &Seen) -> bool {
        match (*self, *other) {
            (Seen::Free { revision: a, .. }, Seen::Free { revision: b, .. }) => a == b,
            (
                Seen::Held {
                    revision: a,
                    token: t,
                    ..
                },
                Seen::Held {
                    revision: b,
                    token: u,
                    ..
                },
            ) => a == b && t == u,
            _ => false,
        }
    }

    fn revision(&self) -> u64 {
        match *self {
            Seen::Free { revision, .. } | Seen::Held { revision, .. } => revision,
        }
    }
}

/// What is left at `now` of a lease of `ttl` first seen at `since`; `None`
/// once it ran out.
fn left(since: Instant, ttl: Duration, now: Instant) -> Option<Duration> {
    ttl.checked_sub(now.saturating_duration_since(since))
        .filter(|left| !left.is_zero())
}

/// Beyond this many remembered keys, the memory is pruned. Forgetting a
/// lease only restarts its measurement (a later takeover, never an earlier
/// one); forgetting a marker only costs one extra round trip.
const CAPACITY: usize = 4096;

/// What this backend last saw of each key it touched or waits for.
#[derive(Debug, Default)]
pub(crate) struct SeenKeys {
    keys: Mutex<HashMap<String, Seen>>,
}

/// Whether another holder's lease may be taken over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Its lease has run out on our clock: compare-and-set at this revision.
    Expired,
    /// Still running for at least this long.
    Running(Duration),
}

impl SeenKeys {
    /// The revision `create` should expect for `key`: its last marker when
    /// known, else 0 (no message at all).
    pub(crate) fn expected_free_revision(&self, key: &str) -> u64 {
        match self.lock().get(key) {
            Some(Seen::Free {
                revision,
                written: true,
            }) => *revision,
            _ => 0,
        }
    }

    /// Notes the delete marker this backend wrote.
    pub(crate) fn free(&self, key: &str, revision: u64) {
        self.record(
            key,
            Seen::Free {
                revision,
                written: true,
            },
        );
    }

    /// Notes a delete or purge marker the watch reported.
    pub(crate) fn ended(&self, key: &str, revision: u64) {
        self.record(
            key,
            Seen::Free {
                revision,
                written: false,
            },
        );
    }

    /// Forgets `key` (we hold it now, or nobody waits for it).
    pub(crate) fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Notes `token`'s lease at `revision` seen now, keeping the earlier
    /// sighting if this lease was already seen.
    pub(crate) fn held(&self, key: &str, revision: u64, token: Token, ttl: Duration) {
        self.record(
            key,
            Seen::Held {
                revision,
                token,
                since: Instant::now(),
                ttl,
            },
        );
    }

    /// Judges `token`'s lease at `revision` (seen just now) by how long this
    /// backend has been seeing it.
    pub(crate) fn judge(&self, key: &str, revision: u64, token: Token, ttl: Duration) -> Verdict {
        let now = Instant::now();
        let mut keys = self.lock();
        let since = match keys.get(key) {
            Some(Seen::Held {
                revision: seen,
                token: seen_token,
                since,
                ..
            }) if *seen == revision && *seen_token == token => *since,
            // A stale read (direct get may answer from a lagging replica)
            // must not restart the measurement of the newer lease we saw,
            // while that one runs. Once it ran out, the lower revision is
            // measured from now like any first sight: it may be a lease of
            // a re-created bucket, which numbers from 1 again, and would
            // otherwise look stale, and held, forever.
            Some(Seen::Held {
                revision: seen,
                since,
                ttl: seen_ttl,
                ..
            }) if *seen > revision && left(*since, *seen_ttl, now).is_some() => {
                return Verdict::Running(left(*since, *seen_ttl, now).unwrap_or_default());
            }
            _ => {
                Self::make_room(&mut keys, now);
                keys.insert(
                    key.to_owned(),
                    Seen::Held {
                        revision,
                        token,
                        since: now,
                        ttl,
                    },
                );
                now
            }
        };
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= ttl {
            Verdict::Expired
        } else {
            Verdict::Running(ttl - elapsed)
        }
    }

    /// The remaining lease of the last lease seen on `key` (by a read or
    /// the watch), if it still runs: enough to answer "busy" after a lost
    /// create without reading the key again. Judging a lease *expired*
    /// always takes a fresh read ([`judge`](Self::judge)).
    pub(crate) fn running(&self, key: &str) -> Option<Duration> {
        match self.lock().get(key) {
            Some(Seen::Held { since, ttl, .. }) => left(*since, *ttl, Instant::now()),
            _ => None,
        }
    }

    /// How many keys are remembered (for tests and `Debug`).
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn record(&self, key: &str, seen: Seen) {
        let now = Instant::now();
        let mut keys = self.lock();
        match keys.get_mut(key) {
            // Events may arrive after a newer read: never go back in time,
            // and never restart the measurement of a revision already seen.
            // One revision holds one message: at an equal revision, only
            // another holder's lease (a re-created bucket) replaces one.
            Some(old)
                if old.revision() > seen.revision()
                    || (old.revision() == seen.revision()
                        && !matches!((*old, seen), (Seen::Held { .. }, Seen::Held { .. })))
                    || old.same(&seen) => {}
            Some(old) => *old = seen,
            None => {
                Self::make_room(&mut keys, now);
                keys.insert(key.to_owned(), seen);
            }
        }
    }

    fn make_room(keys: &mut HashMap<String, Seen>, now: Instant) {
        if keys.len() < CAPACITY {
            return;
        }
        // Markers and leases long past their ttl go first.
        keys.retain(|_, seen| match *seen {
            Seen::Free { .. } => false,
            Seen::Held { since, ttl, .. } => now.saturating_duration_since(since) <= ttl * 2,
        });
        if keys.len() >= CAPACITY {
            keys.clear();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        // Every update leaves the map consistent.
        crate::sync::lock(&self.keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: u128) -> Token {
        Token::from(Uuid::from_u128(n))
    }

    #[test]
    fn values_round_trip() {
        let plain = LeaseValue {
            token: Token::new(),
            ttl: Duration::from_millis(1500),
            fence: None,
            value: None,
        };
        let renewed = LeaseValue {
            fence: Some(42),
            ..plain.clone()
        };
        let valued = LeaseValue {
            value: Some(Cow::Borrowed("node a: 10.0.0.7")),
            ..renewed.clone()
        };
        let fresh_valued = LeaseValue {
            fence: None,
            ..valued.clone()
        };
        for value in [plain, renewed, valued, fresh_valued] {
            let encoded = value.encode();
            assert_eq!(LeaseValue::decode(&encoded), Some(value));
        }
    }

    #[test]
    fn a_fresh_grant_takes_its_fence_from_its_revision() {
        let mut value = LeaseValue {
            token: Token::new(),
            ttl: Duration::from_secs(1),
            fence: None,
            value: None,
        };
        assert_eq!(value.fence_at(7, |revision| revision + 100), 107);
        value.fence = Some(9);
        assert_eq!(value.fence_at(7, |revision| revision + 100), 9);
    }

    #[test]
    fn ttls_are_stored_rounded_up_to_whole_milliseconds() {
        let value = LeaseValue {
            token: Token::new(),
            ttl: Duration::from_micros(10_900),
            fence: None,
            value: None,
        };
        let encoded = value.encode();
        let decoded = LeaseValue::decode(&encoded).expect("decode");
        assert_eq!(decoded.ttl, Duration::from_millis(11));
    }

    #[test]
    fn foreign_values_are_refused() {
        for bad in [
            &b""[..],
            b"v1",
            b"v1 nope 10",
            b"v2 67e55044-10b1-426f-9247-bb680e5fe0c8 10",
            b"v1 67e55044-10b1-426f-9247-bb680e5fe0c8 -1",
            b"v1 67e55044-10b1-426f-9247-bb680e5fe0c8 10 x",
            b"\xff",
        ] {
            assert_eq!(LeaseValue::decode(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_expires_one_ttl_after_it_was_first_seen() {
        let seen = SeenKeys::default();
        let ttl = Duration::from_millis(100);
        assert_eq!(seen.judge("k", 7, token(7), ttl), Verdict::Running(ttl));
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(
            seen.judge("k", 7, token(7), ttl),
            Verdict::Running(Duration::from_millis(40))
        );
        tokio::time::advance(Duration::from_millis(40)).await;
        assert_eq!(seen.judge("k", 7, token(7), ttl), Verdict::Expired);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_revision_restarts_the_measurement() {
        let seen = SeenKeys::default();
        let ttl = Duration::from_millis(100);
        seen.judge("k", 7, token(7), ttl);
        tokio::time::advance(ttl).await;
        // Renewed (or taken over) meanwhile: a full ttl again.
        assert_eq!(seen.judge("k", 9, token(7), ttl), Verdict::Running(ttl));
        // A late event for the old revision changes nothing.
        seen.held("k", 7, token(7), ttl);
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(
            seen.judge("k", 9, token(7), ttl),
            Verdict::Running(Duration::from_millis(50))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_revision_is_measured_once_the_seen_lease_ran_out() {
        let seen = SeenKeys::default();
        let ttl = Duration::from_millis(100);
        seen.judge("k", 9, token(7), ttl);
        tokio::time::advance(ttl / 2).await;
        // A stale read while the newer lease runs: what that one has left.
        assert_eq!(seen.judge("k", 3, token(8), ttl), Verdict::Running(ttl / 2));
        tokio::time::advance(ttl / 2).await;
        // Then a re-created bucket's lease at a lower revision: measured from
        // now, and over after a whole ttl.
        assert_eq!(seen.judge("k", 3, token(8), ttl), Verdict::Running(ttl));
        tokio::time::advance(ttl).await;
        assert_eq!(seen.judge("k", 3, token(8), ttl), Verdict::Expired);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sighting_tells_how_long_a_lease_still_runs() {
        let seen = SeenKeys::default();
        let ttl = Duration::from_millis(100);
        assert_eq!(seen.running("k"), None);
        seen.judge("k", 7, token(7), ttl);
        tokio::time::advance(ttl / 4).await;
        assert_eq!(seen.running("k"), Some(ttl * 3 / 4));
        tokio::time::advance(ttl).await;
        assert_eq!(seen.running("k"), None);
        seen.ended("k", 8);
        assert_eq!(seen.running("k"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn another_holder_at_a_revision_seen_before_is_measured_afresh() {
        let seen = SeenKeys::default();
        let ttl = Duration::from_millis(100);
        seen.judge("k", 1, token(7), ttl);
        tokio::time::advance(ttl / 2).await;
        // Even while the first still runs: a lease first seen now.
        assert_eq!(seen.judge("k", 1, token(9), ttl), Verdict::Running(ttl));
        tokio::time::advance(ttl).await;
        // A re-created bucket: another holder's first write is revision 1 too.
        let other = token(8);
        assert_eq!(seen.judge("k", 1, other, ttl), Verdict::Running(ttl));
        tokio::time::advance(ttl / 2).await;
        // The watch's event for it keeps the measurement as it is.
        seen.held("k", 1, other, ttl);
        tokio::time::advance(ttl / 2).await;
        assert_eq!(seen.judge("k", 1, other, ttl), Verdict::Expired);
    }

    #[test]
    fn markers_give_the_expected_revision() {
        let seen = SeenKeys::default();
        assert_eq!(seen.expected_free_revision("k"), 0);
        seen.free("k", 12);
        assert_eq!(seen.expected_free_revision("k"), 12);
        seen.forget("k");
        assert_eq!(seen.expected_free_revision("k"), 0);
    }

    #[test]
    fn memory_stays_bounded() {
        let seen = SeenKeys::default();
        for n in 0..(CAPACITY as u64 * 3) {
            seen.free(&format!("k{n}"), n + 1);
        }
        assert!(seen.len() <= CAPACITY);
    }
}
