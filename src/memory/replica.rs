//! A node's replica of a lock table shared over a [`Bus`].

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    runtime::Handle,
    sync::{mpsc, oneshot},
    task::AbortHandle,
};

use super::{
    bus::{Bus, Command, Event, Feed, Origin, Outcome, apply},
    table::{Released, Table},
};
use crate::{
    LockError,
    backend::{AcquireRequest, Attempt, Holding, Lease, Subscription, WakeRegistry},
    sync::lock,
};

pub(super) struct Replica {
    bus: Arc<dyn Bus>,
    node: u64,
    requests: AtomicU64,
    state: Arc<ReplicaState>,
    pump: Mutex<Pump>,
}

/// The replica's table, and the stamp of the last event applied to it.
struct Applied {
    table: Table,
    stamp: Duration,
}

/// What the pump task shares with the node's requests.
struct ReplicaState {
    node: u64,
    table: Mutex<Applied>,
    /// Requests of this node that are on the bus and not yet applied.
    pending: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
    /// Set when the pump has ended: nothing will answer requests any more.
    stopped: AtomicBool,
    wakeups: WakeRegistry,
}

/// The task that applies the bus's events: `None` until the node's first
/// operation subscribes and starts it, so a node that never locks buffers
/// nothing.
#[derive(Default)]
struct Pump {
    task: Option<AbortHandle>,
}

impl Replica {
    pub(super) fn new(bus: Arc<dyn Bus>) -> Self {
        let node = uuid::Uuid::new_v4().as_u64_pair().0;
        Replica {
            bus,
            node,
            requests: AtomicU64::new(0),
            state: Arc::new(ReplicaState {
                node,
                table: Mutex::new(Applied {
                    table: Table::default(),
                    stamp: Duration::ZERO,
                }),
                pending: Mutex::default(),
                stopped: AtomicBool::new(false),
                wakeups: WakeRegistry::default(),
            }),
            pump: Mutex::default(),
        }
    }

    pub(super) fn len(&self) -> usize {
        lock(&self.state.table).table.len()
    }

    /// The holder of `key` as of the last event this node applied.
    pub(super) fn holder(&self, key: &str) -> Result<Option<Holding>, LockError> {
        self.start_pump()?;
        let applied = lock(&self.state.table);
        Ok(applied.table.holder(key, applied.stamp))
    }

    /// Wake-ups for `key`, from events this node applies: it joins the bus
    /// if it has not yet, or it would never hear of a release.
    pub(super) fn subscribe(&self, key: &str) -> Result<Subscription, LockError> {
        self.start_pump()?;
        Ok(self.state.wakeups.subscribe(key))
    }

    pub(super) fn wakeups(&self) -> &WakeRegistry {
        &self.state.wakeups
    }

    pub(super) async fn try_acquire(
        &self,
        request: &AcquireRequest<'_>,
    ) -> Result<Attempt, LockError> {
        let outcome = self
            .request(|origin| Command::Acquire {
                origin,
                key: request.key.into(),
                token: request.token,
                ttl: request.ttl,
                value: request.value.map(Box::from),
                kind: request.kind,
                waiting: request.waiting,
            })
            .await?;
        match outcome {
            Outcome::Acquire(attempt) => attempt.map_err(|mismatch| mismatch.into_error(request)),
            _ => Err(mismatch()),
        }
    }

    pub(super) async fn extend(
        &self,
        key: &str,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Option<u64>, LockError> {
        let outcome = self
            .request(|origin| Command::Extend {
                origin,
                key: key.into(),
                lease: *lease,
                ttl,
            })
            .await?;
        match outcome {
            Outcome::Extend(revision) => Ok(revision),
            _ => Err(mismatch()),
        }
    }

    pub(super) async fn release(&self, key: &str, lease: &Lease) -> Result<bool, LockError> {
        let outcome = self
            .request(|origin| Command::Release {
                origin,
                key: key.into(),
                lease: *lease,
            })
            .await?;
        match outcome {
            Outcome::Release(released) => Ok(matches!(released, Released::Held { .. })),
            _ => Err(mismatch()),
        }
    }

    /// Publishes a command and waits until this node applies it in bus
    /// order: the outcome is what every replica decided.
    async fn request(&self, command: impl FnOnce(Origin) -> Command) -> Result<Outcome, LockError> {
        self.start_pump()?;
        let request = self.requests.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.state.pending);
            // Checked under the lock the pump clears on its way out.
            if self.state.stopped.load(Ordering::Acquire) {
                return Err(pump_stopped());
            }
            pending.insert(request, tx);
        }
        let pending = PendingRequest {
            state: &self.state,
            request,
        };
        self.bus
            .publish(command(Origin {
                node: self.node,
                request,
            }))
            .await?;
        let outcome = rx.await.map_err(|_| pump_stopped());
        drop(pending);
        outcome
    }

    /// Joins the bus and starts applying its events on the current runtime,
    /// unless that already runs. A pump whose runtime shut down is started
    /// again, from a fresh snapshot, on this one.
    fn start_pump(&self) -> Result<(), LockError> {
        let mut pump = lock(&self.pump);
        if pump.task.is_some() && !self.state.stopped.load(Ordering::Acquire) {
            return Ok(());
        }
        let handle = Handle::try_current().map_err(LockError::unavailable)?;
        // The snapshot holds every lease granted before this node joined;
        // the events continue exactly where it ends.
        let Feed { snapshot, events } = self.bus.subscribe();
        *lock(&self.state.table) = Applied {
            table: snapshot.into_table(),
            stamp: Duration::ZERO,
        };
        {
            // Under the lock the old pump cleared on its way out.
            let _pending = lock(&self.state.pending);
            self.state.stopped.store(false, Ordering::Release);
        }
        let task = handle.spawn(apply_events(events, self.state.clone()));
        pump.task = Some(task.abort_handle());
        Ok(())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(task) = &lock(&self.pump).task {
            task.abort();
        }
    }
}

fn pump_stopped() -> LockError {
    LockError::unavailable(
        "the bus node's event task has stopped (the runtime it started on shut down)",
    )
}

/// Runs when the pump ends, however it ends (its runtime may shut down):
/// the requests still waiting for it fail instead of waiting forever.
struct PumpStopped(Arc<ReplicaState>);

impl Drop for PumpStopped {
    fn drop(&mut self) {
        let mut pending = lock(&self.0.pending);
        self.0.stopped.store(true, Ordering::Release);
        pending.clear();
    }
}

/// Removes a request's entry if its caller stops waiting before the outcome.
struct PendingRequest<'a> {
    state: &'a ReplicaState,
    request: u64,
}

impl Drop for PendingRequest<'_> {
    fn drop(&mut self) {
        lock(&self.state.pending).remove(&self.request);
    }
}

fn mismatch() -> LockError {
    LockError::unavailable("the bus answered a request with another command's outcome")
}

async fn apply_events(mut events: mpsc::UnboundedReceiver<Arc<Event>>, state: Arc<ReplicaState>) {
    let _stopped = PumpStopped(state.clone());
    while let Some(event) = events.recv().await {
        let outcome = apply_event(&state, &event);
        let origin = event.command.origin();
        if origin.node == state.node
            && let Some(tx) = lock(&state.pending).remove(&origin.request)
        {
            // The caller may have stopped waiting; `Locker` then releases
            // an acquisition it no longer wants.
            let _ = tx.send(outcome);
        }
    }
}

fn apply_event(state: &ReplicaState, event: &Event) -> Outcome {
    let outcome = {
        let mut applied = lock(&state.table);
        applied.stamp = event.stamp;
        apply(&mut applied.table, event)
    };
    match (&outcome, &event.command) {
        (Outcome::Release(Released::Held { wake: true }), Command::Release { key, .. }) => {
            state.wakeups.notify(key);
        }
        // Observers of an election learn of its new leader.
        (
            Outcome::Acquire(Ok(Attempt::Acquired { .. })),
            Command::Acquire {
                key,
                value: Some(_),
                ..
            },
        ) => state.wakeups.notify(key),
        _ => {}
    }
    outcome
}
