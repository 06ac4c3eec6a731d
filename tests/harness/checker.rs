//! The oracle: which histories no correct lock can produce.
//!
//! DESIGN semantic 13 says which rule holds under which fault:
//!
//! - **Belief** (faults that lose no acknowledged write): no two exclusive
//!   holders believe they hold a key at one instant, no writer while a
//!   reader believes, at most N believing permit holders, at most one
//!   believing leader. Leaders are held to it under every fault (the
//!   hold-back after a state loss is what protects them).
//! - **Fences** (every fault): a holding granted after another was
//!   granted has the greater fence, and no two holdings share one; the
//!   resource, which accepts a write only with a fence above the last it
//!   accepted, never refuses one under faults that lose no write.

use std::collections::{BTreeMap, HashMap};

use super::history::{Event, Kind};

/// One holding, rebuilt from its events: believed from `began` to `last`.
#[derive(Clone, Debug)]
struct Holding {
    holder: String,
    key: String,
    kind: Kind,
    fence: u64,
    asked: u64,
    began: u64,
    last: u64,
    writes: Vec<u64>,
}

impl Holding {
    fn overlaps(&self, other: &Holding) -> bool {
        self.began <= other.last && other.began <= self.last
    }

    fn describe(&self) -> String {
        format!(
            "{} {:?} fence {} believed {:.3}..{:.3} s",
            self.holder,
            self.kind,
            self.fence,
            self.began as f64 / 1e9,
            self.last as f64 / 1e9
        )
    }
}

/// When the store lost acknowledged writes: each fault's `(from, to)`.
pub type Losses = [(u64, u64)];

/// Whether a loss of writes explains why holdings asked for by `first` met
/// until `until`: the earlier may have been granted before a loss ended
/// (it was asked for before; its answer may arrive long after, from a
/// paused server), and they met after the loss began. Holdings asked for
/// after every loss are held to the belief rule again.
fn excused(losses: &Losses, first: u64, until: u64) -> bool {
    losses
        .iter()
        .any(|&(from, to)| first <= to && until >= from)
}

/// What the history broke, one line per violation.
pub fn check(events: &[Event], losses: &Losses) -> Vec<String> {
    let holdings = holdings(events);
    let mut by_key: BTreeMap<&str, Vec<&Holding>> = BTreeMap::new();
    for holding in &holdings {
        by_key.entry(&holding.key).or_default().push(holding);
    }
    let mut violations = Vec::new();
    for (key, held) in &by_key {
        belief(key, held, losses, &mut violations);
        fences(key, held, &mut violations);
        resource(key, held, losses, &mut violations);
    }
    violations
}

fn holdings(events: &[Event]) -> Vec<Holding> {
    let mut holdings: HashMap<(&str, &str), Holding> = HashMap::new();
    for event in events {
        match event {
            Event::Began {
                holder,
                key,
                kind,
                fence,
                asked,
                at,
            } => {
                holdings.insert(
                    (holder, key),
                    Holding {
                        holder: holder.clone(),
                        key: key.clone(),
                        kind: *kind,
                        fence: *fence,
                        asked: *asked,
                        began: *at,
                        last: *at,
                        writes: Vec::new(),
                    },
                );
            }
            Event::Held {
                holder,
                key,
                at,
                wrote,
            } => {
                if let Some(holding) = holdings.get_mut(&(holder.as_str(), key.as_str())) {
                    holding.last = holding.last.max(*at);
                    if *wrote {
                        holding.writes.push(*at);
                    }
                }
            }
            Event::Fault { .. } => {}
        }
    }
    let mut holdings: Vec<Holding> = holdings.into_values().collect();
    holdings.sort_by_key(|holding| holding.began);
    holdings
}

fn belief(key: &str, held: &[&Holding], losses: &Losses, out: &mut Vec<String>) {
    for (i, a) in held.iter().enumerate() {
        for b in &held[i + 1..] {
            if !a.overlaps(b) {
                continue;
            }
            let leaders = a.kind == Kind::Leader || b.kind == Kind::Leader;
            if !leaders && excused(losses, a.asked.min(b.asked), a.last.min(b.last)) {
                continue;
            }
            let shareable = match (a.kind, b.kind) {
                (Kind::Shared, Kind::Shared) => true,
                (Kind::Counted(m), Kind::Counted(n)) => m == n,
                _ => false,
            };
            if !shareable {
                out.push(format!(
                    "belief: two holders of {key} at once: {} and {}",
                    a.describe(),
                    b.describe()
                ));
            }
        }
    }
    // At most N permit holders: count at every holding's start.
    for a in held {
        let Kind::Counted(permits) = a.kind else {
            continue;
        };
        let at_once: Vec<&&Holding> = held
            .iter()
            .filter(|b| b.kind == a.kind && b.began <= a.began && a.began <= b.last)
            .collect();
        let first = at_once.iter().map(|b| b.asked).min().unwrap_or(a.asked);
        if at_once.len() > permits as usize && !excused(losses, first, a.began) {
            let who: Vec<String> = at_once.iter().map(|b| b.describe()).collect();
            out.push(format!(
                "belief: {} holders of {key}'s {permits} permits at once: {}",
                at_once.len(),
                who.join("; ")
            ));
        }
    }
}

fn fences(key: &str, held: &[&Holding], out: &mut Vec<String>) {
    for a in held {
        for b in held {
            if a.holder == b.holder {
                continue;
            }
            if a.fence == b.fence && a.holder < b.holder {
                out.push(format!(
                    "fence: two holdings of {key} share fence {}: {} and {}",
                    a.fence,
                    a.describe(),
                    b.describe()
                ));
            }
            // `b` asked after `a` was granted: it must have the greater fence.
            if a.began < b.asked && b.fence <= a.fence {
                out.push(format!(
                    "fence: {key} was granted after {} with a fence not above it: {}",
                    a.describe(),
                    b.describe()
                ));
            }
        }
    }
}

/// The resource: writes in time order, each accepted only with a fence
/// above the last accepted.
fn resource(key: &str, held: &[&Holding], losses: &Losses, out: &mut Vec<String>) {
    let mut writes: Vec<(u64, &Holding)> = held
        .iter()
        .filter(|h| matches!(h.kind, Kind::Exclusive | Kind::Leader))
        .flat_map(|h| h.writes.iter().map(move |at| (*at, *h)))
        .collect();
    writes.sort_by_key(|(at, _)| *at);
    let mut last: Option<&Holding> = None;
    for (at, holding) in writes {
        match last {
            Some(accepted) if holding.fence < accepted.fence => {
                let leaders = holding.kind == Kind::Leader;
                if leaders || !excused(losses, holding.asked.min(accepted.asked), at) {
                    out.push(format!(
                        "resource: {key} refused a write at {:.3} s by a believing holder, {}, after {}",
                        at as f64 / 1e9,
                        holding.describe(),
                        accepted.describe()
                    ));
                }
            }
            _ => last = Some(holding),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn began(holder: &str, kind: Kind, fence: u64, asked: u64, at: u64) -> Event {
        Event::Began {
            holder: holder.into(),
            key: "k".into(),
            kind,
            fence,
            asked,
            at,
        }
    }

    fn held(holder: &str, at: u64) -> Event {
        Event::Held {
            holder: holder.into(),
            key: "k".into(),
            at,
            wrote: true,
        }
    }

    #[test]
    fn the_oracle_finds_each_kind_of_violation() {
        let ok = [
            began("a", Kind::Exclusive, 1, 0, 1),
            held("a", 5),
            began("b", Kind::Exclusive, 2, 2, 6),
            held("b", 9),
        ];
        assert!(check(&ok, &[]).is_empty(), "{:?}", check(&ok, &[]));
        let overlap = [
            began("a", Kind::Exclusive, 1, 0, 1),
            held("a", 5),
            began("b", Kind::Exclusive, 2, 2, 4),
        ];
        assert!(check(&overlap, &[])[0].starts_with("belief"));
        // Lost writes excuse the overlap of plain leases granted before the
        // loss, not of leaders, and not of leases granted after it.
        assert!(check(&overlap, &[(3, 3)]).is_empty());
        let asked_after = [
            began("a", Kind::Exclusive, 1, 1, 2),
            held("a", 5),
            began("b", Kind::Exclusive, 2, 2, 4),
        ];
        assert!(check(&asked_after, &[(0, 0)])[0].starts_with("belief"));
        assert!(check(&overlap, &[(6, 7)])[0].starts_with("belief"));
        let leaders = [
            began("a", Kind::Leader, 1, 0, 1),
            held("a", 5),
            began("b", Kind::Leader, 2, 2, 4),
        ];
        assert!(check(&leaders, &[(3, 3)])[0].starts_with("belief"));
        let stale = [
            began("a", Kind::Exclusive, 5, 0, 1),
            began("b", Kind::Exclusive, 3, 2, 4),
        ];
        assert!(check(&stale, &[(3, 3)])[0].starts_with("fence"));
        let shared = [
            began("a", Kind::Shared, 1, 0, 1),
            held("a", 5),
            began("b", Kind::Shared, 2, 0, 2),
            held("b", 6),
        ];
        assert!(check(&shared, &[]).is_empty());
        let permits = [
            began("a", Kind::Counted(1), 1, 0, 1),
            held("a", 5),
            began("b", Kind::Counted(1), 2, 0, 2),
        ];
        assert!(check(&permits, &[])[0].contains("permits"));
        let refused = [
            began("a", Kind::Exclusive, 4, 0, 1),
            held("a", 5),
            began("b", Kind::Exclusive, 2, 0, 6),
            held("b", 7),
            held("a", 9),
        ];
        let found = check(&refused, &[]);
        assert!(found.iter().any(|v| v.starts_with("resource")), "{found:?}");
    }
}
