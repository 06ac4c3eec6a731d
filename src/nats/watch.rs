//! Where a backend's wake-ups come from: one watch over the whole bucket and
//! one subscription to release announcements, fanned out to waiters by key
//! through a [`WakeRegistry`].

use std::{sync::Arc, time::Duration};

use async_nats::{
    Client, Subscriber,
    jetstream::kv::{Entry, Operation, Store, Watch},
};
use futures_util::StreamExt;

use super::{
    counted::Freed,
    fence::Fences,
    key,
    lease::{LeaseValue, SeenKeys},
};
use crate::{LockError, backend::WakeRegistry};

/// The first and the longest pause before re-establishing a failed watch.
const RETRY_START: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Starts watching and returns once both sources are live, so that a waiter
/// registered afterwards misses no change; the task keeps them alive
/// (re-establishing the watch after errors) until aborted.
pub(crate) async fn start(
    client: Client,
    store: Store,
    released_prefix: &str,
    wakeups: WakeRegistry,
    seen: Arc<SeenKeys>,
    fences: Arc<Fences>,
    freed: Arc<Freed>,
) -> Result<tokio::task::JoinHandle<()>, LockError> {
    let announcements = client
        .subscribe(format!("{released_prefix}>"))
        .await
        .map_err(LockError::unavailable)?;
    // The server has the subscription once it answered a ping sent after it.
    client.flush().await.map_err(LockError::unavailable)?;
    let watch = store.watch_all().await.map_err(LockError::unavailable)?;
    let sources = Sources {
        store,
        released_prefix: released_prefix.to_owned(),
        wakeups,
        seen,
        fences,
        freed,
    };
    Ok(tokio::spawn(sources.run(watch, announcements)))
}

struct Sources {
    store: Store,
    released_prefix: String,
    wakeups: WakeRegistry,
    seen: Arc<SeenKeys>,
    fences: Arc<Fences>,
    freed: Arc<Freed>,
}

impl Sources {
    async fn run(self, mut watch: Watch, mut announcements: Subscriber) {
        loop {
            tokio::select! {
                event = watch.next() => match event {
                    Some(Ok(entry)) => self.observe(&entry),
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "NATS lock watch failed; re-establishing");
                        watch = self.rewatch().await;
                    }
                    None => watch = self.rewatch().await,
                },
                announcement = announcements.next() => match announcement {
                    Some(message) => {
                        // Anyone allowed to publish here can send one, so it
                        // only wakes: waiters read the key again, and what
                        // they measured of a lease stays as it was.
                        if let Some(key) = message.subject.strip_prefix(self.released_prefix.as_str()) {
                            // The slot a counted holder freed: a hint where
                            // to try first among the slots it would try
                            // anyway (see `Freed`), never longer than a
                            // slot name can be.
                            if !message.payload.is_empty()
                                && message.payload.len() <= key.len() + 32
                                && self.wakeups.is_watched(key)
                                && let Ok(entry) = std::str::from_utf8(&message.payload)
                            {
                                self.freed.note(key, entry);
                            }
                            self.wakeups.notify(key);
                        }
                    }
                    // The client is gone for good: only backoff is left.
                    None => return,
                },
            }
        }
    }

    async fn rewatch(&self) -> Watch {
        let mut pause = RETRY_START;
        let watch = loop {
            tokio::time::sleep(pause).await;
            match self.store.watch_all().await {
                Ok(watch) => break watch,
                Err(err) => {
                    tracing::warn!(error = %err, "NATS lock watch unavailable; retrying");
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        };
        // Changes made while the watch was down were not seen: every waiter
        // tries again. The stream itself may be a new one (a watch also
        // fails when its stream is deleted).
        self.fences.suspect();
        self.wakeups.notify_all();
        watch
    }

    /// Deletes and purges (markers, on buckets that forbid deleting
    /// messages) wake the key's waiters. New leases (acquisitions, renewals,
    /// takeovers) do not, since the key is still held: they are recorded, so
    /// that a waiter measures a new lease from the moment it appeared rather
    /// than from its own next look.
    fn observe(&self, entry: &Entry) {
        // Any key's revision tells whether the stream is new.
        self.fences.saw(entry.revision);
        // Only keys somebody here waits for are worth remembering; the
        // entries of shared and counted holders and of claims count for
        // their lock's key.
        let lock = key::lock_of(&entry.key);
        if !self.wakeups.is_watched(lock) {
            return;
        }
        match entry.operation {
            // Recorded as the key's end, never as the revision the next
            // create would be a compare-and-set on: an event is nothing the
            // store answered to this backend (anyone who learns the watch's
            // inbox can send one).
            Operation::Delete | Operation::Purge => {
                self.seen.ended(&entry.key, entry.revision);
                self.wakeups.notify(lock);
            }
            Operation::Put => match LeaseValue::decode(&entry.value) {
                Some(lease) => {
                    self.seen
                        .held(&entry.key, entry.revision, lease.token, lease.ttl);
                }
                None => self.wakeups.notify(lock),
            },
        }
    }
}
