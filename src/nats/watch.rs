//! One watch over the whole bucket per backend, fanned out to waiters by key
//! through a [`WakeRegistry`].

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::kv::{Operation, Store};
use futures_util::StreamExt;

use super::lease::{LeaseValue, SeenKeys};
use crate::{LockError, backend::WakeRegistry};

/// The first and the longest pause before re-establishing a failed watch.
const RETRY_START: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Starts watching `store` and returns once the watch is live, so that a
/// waiter registered afterwards misses no change; the task keeps it alive
/// (re-establishing it after errors) until aborted.
pub(crate) async fn start(
    store: Store,
    wakeups: WakeRegistry,
    seen: Arc<SeenKeys>,
) -> Result<tokio::task::JoinHandle<()>, LockError> {
    let watch = store.watch_all().await.map_err(LockError::unavailable)?;
    Ok(tokio::spawn(run(store, watch, wakeups, seen)))
}

async fn run(
    store: Store,
    mut watch: async_nats::jetstream::kv::Watch,
    wakeups: WakeRegistry,
    seen: Arc<SeenKeys>,
) {
    loop {
        while let Some(event) = watch.next().await {
            match event {
                Ok(entry) => observe(&entry, &wakeups, &seen),
                Err(err) => {
                    tracing::warn!(error = %err, "NATS lock watch failed; re-establishing");
                    break;
                }
            }
        }
        let mut pause = RETRY_START;
        watch = loop {
            tokio::time::sleep(pause).await;
            match store.watch_all().await {
                Ok(watch) => break watch,
                Err(err) => {
                    tracing::warn!(error = %err, "NATS lock watch unavailable; retrying");
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        };
        // Changes made while the watch was down were not seen: every waiter
        // tries again.
        wakeups.notify_all();
    }
}

/// Deletes and purges wake the key's waiters. New leases (acquisitions,
/// renewals, takeovers) do not wake them, since the key is still held: they
/// are recorded, so that a waiter measures the new lease from the moment it
/// appeared rather than from its own next look.
fn observe(entry: &async_nats::jetstream::kv::Entry, wakeups: &WakeRegistry, seen: &SeenKeys) {
    // Only keys somebody here waits for are worth remembering.
    if !wakeups.is_watched(&entry.key) {
        return;
    }
    match entry.operation {
        Operation::Delete | Operation::Purge => {
            seen.free(&entry.key, entry.revision);
            wakeups.notify(&entry.key);
        }
        Operation::Put => match LeaseValue::decode(&entry.value) {
            Some(lease) => seen.held(&entry.key, entry.revision, lease.ttl),
            None => wakeups.notify(&entry.key),
        },
    }
}
