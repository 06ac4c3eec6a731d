//! An ordered event bus that lets several [`MemoryBackend`]s ("nodes") share
//! one lock table.
//!
//! Each node keeps a replica of the table and applies the bus's events in
//! the bus's order; a node's request is decided when it comes back to the
//! node in that order. Because every replica applies the same events in the
//! same order, judging expiry by each event's [`stamp`](Event::stamp), every
//! replica reaches the same decision, and nodes keep mutual exclusion.
//!
//! [`LocalBus`] is the in-process bus. Another transport can implement
//! [`Bus`] as long as it keeps the contract written there.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use tower_lock::{bus::LocalBus, memory::MemoryBackend, Locker};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_lock::LockError> {
//! let bus = LocalBus::new();
//! let node_a = Locker::new(MemoryBackend::with_bus(bus.clone()));
//! let node_b = Locker::new(MemoryBackend::with_bus(bus));
//!
//! let guard = node_a.acquire("report", Duration::from_secs(5)).await?;
//! assert!(node_b.try_lock("report", Duration::from_secs(5)).await?.is_none());
//! guard.release().await?;
//! assert!(node_b.try_lock("report", Duration::from_secs(5)).await?.is_some());
//! # Ok(())
//! # }
//! ```
//!
//! [`MemoryBackend`]: super::MemoryBackend

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::mpsc, time::Instant};

use super::{
    clock::next_fence,
    table::{PermitsMismatch, Released, Table},
};
use crate::{
    LockError,
    backend::{AcquireRequest, Attempt, Lease, LeaseKind, Token, wall_clock},
};

/// A totally ordered broadcast of [`Command`]s.
///
/// # Contract
///
/// - Every subscriber receives every event published after it subscribed,
///   exactly once, in one total order shared by all subscribers, numbered by
///   a [`seq`](Event::seq) that increases by one per event.
/// - A subscriber that falls behind is never skipped ahead: the channel is
///   unbounded, so a slow replica costs memory, never a divergent table.
/// - Each event carries a [`stamp`](Event::stamp) from one monotonic clock
///   (the bus's), non-decreasing in bus order. Replicas judge expiry by it,
///   never by their own clocks.
/// - Each event carries a [`wall_micros`](Event::wall_micros) from the
///   bus's wall clock, which fences granted by the event never fall below,
///   so that a bus started again later (a restart) grants greater fences
///   than every earlier one. It need not increase; [`LocalBus`] makes it
///   increase by at least one per event, running at most 1 ms ahead of the
///   clock.
#[async_trait::async_trait]
pub trait Bus: fmt::Debug + Send + Sync + 'static {
    /// Appends `command` to the bus.
    async fn publish(&self, command: Command) -> Result<(), LockError>;

    /// Joins the bus: the table as of the last event ordered so far, and
    /// every event ordered after it.
    fn subscribe(&self) -> Feed;
}

/// What a node receives when it joins a [`Bus`]: the state so far, then the
/// stream that continues it.
#[derive(Debug)]
pub struct Feed {
    /// The leases granted by every event up to [`Snapshot::seq`].
    pub snapshot: Snapshot,
    /// Every event after the snapshot, in bus order, starting at
    /// `snapshot.seq() + 1`.
    pub events: mpsc::UnboundedReceiver<Arc<Event>>,
}

/// The lock table as of one point in a bus's order, so that a node joining
/// late knows the leases granted before it came.
///
/// A [`Bus`] keeps one and [`apply`](Self::apply)s every event it orders, in
/// order; expired and released leases leave it, so it stays as small as the
/// set of live leases.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    table: Table,
    seq: u64,
}

impl Snapshot {
    /// An empty table, before the first event.
    pub fn new() -> Self {
        Snapshot::default()
    }

    /// Applies the next event in bus order.
    pub fn apply(&mut self, event: &Event) {
        apply(&mut self.table, event);
        self.seq = event.seq;
    }

    /// The last event applied (0 before the first).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// How many leases the snapshot holds, including expired ones not yet
    /// swept.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the snapshot holds no lease.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn into_table(self) -> Table {
        self.table
    }
}

/// What applying a bus event decided.
pub(crate) enum Outcome {
    Acquire(Result<Attempt, PermitsMismatch>),
    Extend(Option<u64>),
    Release(Released),
}

/// Applies one event of a bus to a replica's table, judging expiry by the
/// event's stamp and fencing by its wall clock (or one more than the
/// table's last fence): the same on every replica.
pub(crate) fn apply(table: &mut Table, event: &Event) -> Outcome {
    let now = event.stamp;
    let fence = |last: &mut u64| {
        *last = event.wall_micros.max(*last + 1);
        *last
    };
    match &event.command {
        Command::Acquire {
            key,
            token,
            ttl,
            value,
            kind,
            waiting,
            ..
        } => {
            let request = AcquireRequest::new(key, *token, *ttl)
                .value(value.as_deref())
                .kind(*kind)
                .waiting(*waiting);
            Outcome::Acquire(table.try_acquire(&request, now, fence))
        }
        Command::Extend {
            key, lease, ttl, ..
        } => Outcome::Extend(table.extend(key, lease, *ttl, now)),
        Command::Release { key, lease, .. } => Outcome::Release(table.release(key, lease, now)),
    }
}

/// One command in bus order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The position in the bus's total order.
    pub seq: u64,
    /// The bus's monotonic time when the command was ordered (tokio's
    /// clock for [`LocalBus`], so paused test time moves it too).
    pub stamp: Duration,
    /// The bus's wall clock when the command was ordered, in microseconds
    /// since the Unix epoch: a fence this event grants is at least this.
    pub wall_micros: u64,
    /// What a node asked for.
    pub command: Command,
}

/// Which node sent a command, and which of its requests it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The sending node's random id.
    pub node: u64,
    /// The request's number on that node.
    pub request: u64,
}

/// A request to the replicated lock table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Take `key` for `token` if it is free at the event's stamp.
    Acquire {
        /// Who asked.
        origin: Origin,
        /// The lock key.
        key: Box<str>,
        /// The acquiring token.
        token: Token,
        /// The lease length.
        ttl: Duration,
        /// The value stored with the lease
        /// ([`AcquireRequest::value`](crate::backend::AcquireRequest::value)).
        value: Option<Box<str>>,
        /// The kind of lease asked for.
        kind: LeaseKind,
        /// Whether the caller waits for the key
        /// ([`AcquireRequest::waiting`](crate::backend::AcquireRequest::waiting)):
        /// a waiting writer claims a busy key.
        waiting: bool,
    },
    /// Restart `lease` at `ttl` from the event's stamp.
    Extend {
        /// Who asked.
        origin: Origin,
        /// The lock key.
        key: Box<str>,
        /// The lease to extend.
        lease: Lease,
        /// The new lease length.
        ttl: Duration,
    },
    /// Release `lease`; wakes waiters on every node.
    Release {
        /// Who asked.
        origin: Origin,
        /// The lock key.
        key: Box<str>,
        /// The lease to release.
        lease: Lease,
    },
}

impl Command {
    /// Who sent the command.
    pub fn origin(&self) -> Origin {
        match self {
            Command::Acquire { origin, .. }
            | Command::Extend { origin, .. }
            | Command::Release { origin, .. } => *origin,
        }
    }
}

/// The in-process [`Bus`]: cheap to clone, every clone is the same bus.
///
/// Publishing stamps and delivers the event to every subscriber under one
/// mutex, which is what makes the order total.
#[derive(Clone)]
pub struct LocalBus {
    inner: Arc<Mutex<LocalBusState>>,
}

struct LocalBusState {
    /// Also the source of sequence numbers: its `seq` is the last one used.
    snapshot: Snapshot,
    epoch: Instant,
    /// The last event's `wall_micros`.
    wall_micros: u64,
    subscribers: Vec<mpsc::UnboundedSender<Arc<Event>>>,
}

impl LocalBus {
    /// A new bus with no subscribers.
    ///
    /// ```
    /// let bus = tower_lock::bus::LocalBus::new();
    /// assert_eq!(bus.subscribers(), 0);
    /// ```
    pub fn new() -> Self {
        LocalBus {
            inner: Arc::new(Mutex::new(LocalBusState {
                snapshot: Snapshot::new(),
                epoch: Instant::now(),
                wall_micros: 0,
                subscribers: Vec::new(),
            })),
        }
    }

    /// How many subscribers are attached (dropped ones are counted until the
    /// next publish notices).
    pub fn subscribers(&self) -> usize {
        self.lock().subscribers.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LocalBusState> {
        // Every step leaves the state consistent, so a poisoned lock is safe.
        crate::sync::lock(&self.inner)
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        LocalBus::new()
    }
}

impl fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("LocalBus")
            .field("seq", &state.snapshot.seq())
            .field("leases", &state.snapshot.len())
            .field("subscribers", &state.subscribers.len())
            .finish()
    }
}

#[async_trait::async_trait]
impl Bus for LocalBus {
    async fn publish(&self, command: Command) -> Result<(), LockError> {
        let mut state = self.lock();
        state.wall_micros = next_fence(state.wall_micros, wall_clock::now);
        let event = Arc::new(Event {
            seq: state.snapshot.seq() + 1,
            stamp: state.epoch.elapsed(),
            wall_micros: state.wall_micros,
            command,
        });
        state.snapshot.apply(&event);
        state
            .subscribers
            .retain(|subscriber| subscriber.send(event.clone()).is_ok());
        Ok(())
    }

    fn subscribe(&self) -> Feed {
        let (tx, events) = mpsc::unbounded_channel();
        let mut state = self.lock();
        state.subscribers.push(tx);
        Feed {
            snapshot: state.snapshot.clone(),
            events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(node: u64, request: u64) -> Command {
        Command::Release {
            origin: Origin { node, request },
            key: "k".into(),
            lease: Lease::granted(Token::new(), LeaseKind::Exclusive, 1, 1),
        }
    }

    #[tokio::test]
    async fn every_subscriber_sees_every_event_in_one_order() {
        let bus = LocalBus::new();
        let mut subs: Vec<_> = (0..3).map(|_| bus.subscribe().events).collect();
        let publishers: Vec<_> = (0..4)
            .map(|node| {
                let bus = bus.clone();
                tokio::spawn(async move {
                    for request in 0..250 {
                        bus.publish(release(node, request)).await.expect("publish");
                    }
                })
            })
            .collect();
        for publisher in publishers {
            publisher.await.expect("publisher task");
        }
        let mut orders = Vec::new();
        for sub in &mut subs {
            let mut order = Vec::new();
            let (mut last_stamp, mut last_wall) = (Duration::ZERO, 0);
            while let Ok(event) = sub.try_recv() {
                assert!(event.stamp >= last_stamp, "stamps go backwards");
                assert!(event.wall_micros > last_wall, "wall stamps repeat");
                (last_stamp, last_wall) = (event.stamp, event.wall_micros);
                order.push((event.seq, event.command.origin()));
            }
            assert_eq!(order.len(), 1000);
            assert!(
                order
                    .iter()
                    .enumerate()
                    .all(|(i, (seq, _))| *seq == i as u64 + 1)
            );
            orders.push(order);
        }
        assert_eq!(orders[0], orders[1]);
        assert_eq!(orders[1], orders[2]);
    }

    /// A bus whose wall stamps repeat (the contract allows it) still gets
    /// strictly increasing fences: one more than the last.
    #[test]
    fn fences_grow_even_when_wall_stamps_repeat() {
        let mut table = Table::default();
        let mut fences = Vec::new();
        for seq in 1..=3 {
            let event = Event {
                seq,
                stamp: Duration::from_secs(seq),
                wall_micros: 1_000,
                command: Command::Acquire {
                    origin: Origin {
                        node: 1,
                        request: seq,
                    },
                    key: "k".into(),
                    token: Token::new(),
                    ttl: Duration::from_millis(1),
                    value: None,
                    kind: LeaseKind::Exclusive,
                    waiting: false,
                },
            };
            match apply(&mut table, &event) {
                Outcome::Acquire(Ok(Attempt::Acquired { fence, .. })) => fences.push(fence),
                _ => panic!("not granted"),
            }
        }
        assert_eq!(fences, [1_000, 1_001, 1_002]);
    }

    #[tokio::test]
    async fn dropped_subscribers_are_forgotten() {
        let bus = LocalBus::new();
        let feed = bus.subscribe();
        drop(feed);
        bus.publish(release(1, 1)).await.expect("publish");
        assert_eq!(bus.subscribers(), 0);
    }
}
