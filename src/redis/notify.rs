//! Wake-ups: one pub/sub connection per backend, shared by every waiter and
//! demultiplexed by key through a [`WakeRegistry`].
//!
//! It listens to the backend's own turn channel (published by the release
//! script when it hands a lock to this backend), to the channel that hears
//! of grants and releases of leases with a value (elections) and, where the server's `notify-keyspace-events` enables them,
//! to the `expired` and `del` key events of the database in use. After
//! every (re)connect it subscribes again and wakes every waiter, since
//! releases may have been missed while it was away; a waiter that misses a
//! wake-up anyway retries on its backoff timer. A reconnect (not the first
//! connect) also counts as a possible loss of the server's state: the
//! server may have restarted, or failed over, without the keys.
//!
//! Anyone who may publish on the server may send anything on these
//! channels, so a message only wakes: it names a key whose waiters then
//! try, and the scripts decide from what Redis holds. The one write a
//! message may lead to, passing on a turn nobody here picks up, happens
//! only for a key this backend queued for ([`Joined`]).

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use redis::aio::ConnectionLike;
use tokio::{sync::oneshot, task::JoinHandle};

use super::{Store, client::PubSubSource};
use crate::backend::WakeRegistry;

const RECONNECT_START: Duration = Duration::from_millis(20);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// How often an idle subscription checks that its connection still works: a
/// half-open connection would otherwise go unnoticed.
const PING_EVERY: Duration = Duration::from_secs(15);
/// How long a turn for a key nobody here watches waits for a waiter to
/// subscribe before it is passed on.
pub(super) const TURN_PICKUP: Duration = Duration::from_millis(20);

/// The listening task; stopped when dropped.
#[derive(Debug)]
pub(crate) struct Notifier {
    task: JoinHandle<()>,
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) struct Listener {
    pub(crate) source: PubSubSource,
    /// Its `id` names the backend in turn messages: those are ours.
    pub(crate) store: Store,
    pub(crate) registry: WakeRegistry,
}

impl Notifier {
    /// Starts listening; returns once the first subscription is in place (or
    /// has failed, after which it keeps trying in the background).
    pub(crate) async fn start(listener: Listener) -> Notifier {
        let (ready, first) = oneshot::channel();
        let task = tokio::spawn(listener.run(ready));
        let _ = first.await;
        Notifier { task }
    }
}

impl Listener {
    async fn run(self, ready: oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let mut connected_before = false;
        let mut pause = RECONNECT_START;
        // Warn once per outage, not at every retry.
        let mut warned = false;
        loop {
            // The one deadline bounds the wake-up connection's requests too.
            let deadline = self.store.conn.deadline();
            let subscribed = tokio::time::timeout(deadline, self.subscribe()).await;
            let subscribed = subscribed.unwrap_or_else(|_| Err(super::client::timed_out(deadline)));
            match subscribed {
                Ok(pubsub) => {
                    pause = RECONNECT_START;
                    if std::mem::replace(&mut connected_before, true) {
                        self.store.loss.notice();
                    }
                    if std::mem::take(&mut warned) {
                        tracing::info!("lock wake-ups from Redis are back");
                    }
                    // Whatever was released while we were not listening.
                    self.registry.notify_all();
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    self.listen(pubsub).await;
                    // The server may be restarting without its keys: from
                    // now, not only from the reconnect, since requests may
                    // reach it again before this connection does.
                    self.store.loss.notice();
                    tracing::debug!("lock wake-up connection lost; reconnecting");
                }
                Err(err) if !warned => {
                    warned = true;
                    tracing::warn!(error = %err, "no lock wake-ups from Redis; waiters poll until it is back");
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %err, "lock wake-ups still unavailable");
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RECONNECT_MAX);
        }
    }

    async fn subscribe(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let mut pubsub = self.source.open().await?;
        let mut channels = vec![self.store.channel.clone(), self.store.changed.clone()];
        channels.extend(self.key_event_channels().await);
        pubsub.subscribe(&channels).await?;
        tracing::debug!(?channels, "listening for lock wake-ups");
        Ok(pubsub)
    }

    /// The key event channels worth listening to, by what
    /// `notify-keyspace-events` enables. Where `CONFIG` is refused (managed
    /// services often rename it) they are subscribed anyway: a channel with
    /// no events costs nothing.
    async fn key_event_channels(&self) -> Vec<String> {
        let mut conn = self.store.conn.clone();
        let db = conn.get_db();
        let config: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async(&mut conn)
            .await;
        let (expired, deleted) = match config.as_deref() {
            Ok([_, flags]) => key_events_enabled(flags),
            Ok(_) => (false, false),
            Err(err) => {
                tracing::debug!(error = %err, "CONFIG GET refused; subscribing to key events blindly");
                (true, true)
            }
        };
        let mut channels = Vec::new();
        if expired {
            channels.push(format!("__keyevent@{db}__:expired"));
        }
        if deleted {
            channels.push(format!("__keyevent@{db}__:del"));
        }
        channels
    }

    async fn listen(&self, pubsub: redis::aio::PubSub) {
        let (mut sink, mut messages) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let deadline = self.store.conn.deadline();
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { return };
                    self.deliver(message.get_channel_name(), message.get_payload_bytes());
                }
                _ = ping.tick() => {
                    let alive = tokio::time::timeout(deadline, sink.ping::<()>()).await;
                    if !matches!(alive, Ok(Ok(()))) {
                        return;
                    }
                }
            }
        }
    }
}

impl Listener {
    /// Wakes the waiters a message is for. A key event (an expiry, a
    /// deletion) wakes every waiter of the key; a turn (the lock key, on
    /// this backend's own channel) those waiting here, and a turn that
    /// nobody here picks up is passed on, if this backend queued for the
    /// key. Anything else (not a lock key of this prefix) is dropped.
    fn deliver(&self, channel: &str, payload: &[u8]) {
        let Some(key) = self.store.keys.user_key(payload) else {
            return;
        };
        if channel != self.store.channel {
            self.registry.notify(&key);
            return;
        }
        // Messages are read on the runtime the backend was built on.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.registry.notify(&key);
            return;
        };
        // The turn is also held for the next waiter to subscribe: the one
        // watching may be a head returning with a lease it got otherwise (a
        // free permit), and the next of its locker subscribes a moment
        // later. A grant that takes the turn drops what is held.
        let (store, claimed) = (self.store.clone(), self.store.handover.hold(&key));
        if self.registry.is_watched(&key) {
            self.registry.notify(&key);
            runtime.spawn(claimed);
            return;
        }
        // Nobody here waits for the key just now: give the next waiter that
        // moment before passing the turn on. Only a backend that queued for
        // the key has a turn to pass on: a message about any other key
        // (forged, or a replay) writes nothing.
        runtime.clone().spawn(async move {
            if !claimed.await && store.joined.has(&key) {
                store.withdraw(&runtime, key);
            }
        });
    }
}

/// Wake-ups held for the next waiter to subscribe to a key.
///
/// The next waiter of a locker subscribes a moment after its head returned
/// with a lease, and a waiter misses a wake-up sent before it subscribed:
/// so a turn that comes for this backend, or room for one more shared or
/// counted lease that the head's grant leaves, is held here until a waiter
/// subscribes (and claims it), for [`TURN_PICKUP`] at most, or until a
/// grant takes the turn.
#[derive(Debug, Default)]
pub(crate) struct Handover {
    /// Keys with a wake-up held, with the ticket of the latest.
    held: Arc<Mutex<HashMap<String, u64>>>,
    next: AtomicU64,
}

impl Handover {
    /// Holds a wake-up for the next subscriber of `key`, at once; the
    /// returned future waits [`TURN_PICKUP`] for it to be claimed, and says
    /// whether it was.
    pub(crate) fn hold(&self, key: &str) -> impl Future<Output = bool> + Send + 'static + use<> {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        crate::sync::lock(&self.held).insert(key.to_owned(), ticket);
        let (held, key) = (Arc::clone(&self.held), key.to_owned());
        async move {
            tokio::time::sleep(TURN_PICKUP).await;
            let mut held = crate::sync::lock(&held);
            // Claimed, or held again since (that one's own wait decides).
            if held.get(&key) != Some(&ticket) {
                return true;
            }
            held.remove(&key);
            false
        }
    }

    /// Drops the wake-up held for `key`: a grant took the turn it was for.
    pub(crate) fn cancel(&self, key: &str) {
        let held = &mut *crate::sync::lock(&self.held);
        if !held.is_empty() {
            held.remove(key);
        }
    }

    /// Claims the wake-up held for `key`, if there is one.
    pub(crate) fn claim(&self, key: &str) -> bool {
        let held = &mut *crate::sync::lock(&self.held);
        !held.is_empty() && held.remove(key).is_some()
    }
}

/// The keys whose queue this backend may be in: it sent a waiting try (or
/// one is on its way), and has not left since.
///
/// A message is no evidence of anything, so only this decides whether a
/// turn that nobody here picks up, or a waiter that gives up, is worth the
/// `WITHDRAW` script: a forged turn for a key this backend never queued for
/// writes nothing. Entries go when the backend leaves the queue (a grant
/// that took it out, a withdrawal), so they last as long as a wait does.
#[derive(Debug, Default)]
pub(crate) struct Joined {
    keys: Mutex<HashMap<String, Membership>>,
}

#[derive(Debug, Default)]
struct Membership {
    /// Waiting tries sent and not yet answered.
    in_flight: u32,
    /// The last answer (or a lost one) may have left the backend queued.
    queued: bool,
}

impl Joined {
    /// A waiting try on `key` is about to be sent; settle what it did with
    /// [`JoinTicket::settle`]. A ticket dropped unsettled (the try failed,
    /// or was cancelled) counts as joined: it may have been.
    pub(crate) fn joining(self: &Arc<Self>, key: &str) -> JoinTicket {
        let mut keys = crate::sync::lock(&self.keys);
        keys.entry(key.to_owned()).or_default().in_flight += 1;
        JoinTicket {
            joined: Arc::clone(self),
            key: Some(key.to_owned()),
        }
    }

    /// Whether this backend may be in `key`'s queue.
    pub(crate) fn has(&self, key: &str) -> bool {
        crate::sync::lock(&self.keys).contains_key(key)
    }

    /// The backend left `key`'s queue (a withdrawal ran), unless a try now
    /// on its way joins it again.
    pub(crate) fn left(&self, key: &str) {
        self.set(key, false, Some(false));
    }

    /// `queued`: what the backend's place in the queue now is (`None`: as
    /// before).
    fn set(&self, key: &str, answered: bool, queued: Option<bool>) {
        let mut keys = crate::sync::lock(&self.keys);
        let Some(membership) = keys.get_mut(key) else {
            return;
        };
        if answered {
            membership.in_flight = membership.in_flight.saturating_sub(1);
        }
        if let Some(queued) = queued {
            membership.queued = queued;
        }
        if membership.in_flight == 0 && !membership.queued {
            keys.remove(key);
        }
    }
}

/// One waiting try in flight; see [`Joined::joining`].
#[derive(Debug)]
pub(crate) struct JoinTicket {
    joined: Arc<Joined>,
    key: Option<String>,
}

impl JoinTicket {
    /// The try was answered: `queued` says whether the backend is now in
    /// the key's queue, or (`None`) that the try did not touch the queue.
    pub(crate) fn settle(mut self, queued: Option<bool>) {
        if let Some(key) = self.key.take() {
            self.joined.set(&key, true, queued);
        }
    }
}

impl Drop for JoinTicket {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.joined.set(&key, true, Some(true));
        }
    }
}

/// Which of (`expired`, `del`) key events the server publishes, from its
/// `notify-keyspace-events` flags: `E` turns key events on, `x` expiries,
/// `g` generic commands such as `DEL`, and `A` stands for all classes.
fn key_events_enabled(flags: &str) -> (bool, bool) {
    if !flags.contains('E') {
        return (false, false);
    }
    let all = flags.contains('A');
    (all || flags.contains('x'), all || flags.contains('g'))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Joined, key_events_enabled};

    #[test]
    fn a_key_is_joined_from_its_waiting_try_until_the_backend_leaves() {
        let joined = Arc::new(Joined::default());
        assert!(!joined.has("k"), "a key never tried is not joined");
        let ticket = joined.joining("k");
        assert!(joined.has("k"), "a try on its way may join");
        ticket.settle(Some(true));
        assert!(joined.has("k"));
        // A held-back try leaves the place as it was.
        joined.joining("k").settle(None);
        assert!(joined.has("k"));
        joined.joining("k").settle(Some(false));
        assert!(!joined.has("k"), "a grant that took it out");
        drop(joined.joining("k"));
        assert!(joined.has("k"), "a lost answer may have joined");
        joined.left("k");
        assert!(!joined.has("k"), "a withdrawal");
        // A withdrawal while another try is on its way keeps the key until
        // that try's answer says where the backend is.
        let ticket = joined.joining("k");
        joined.left("k");
        assert!(joined.has("k"));
        ticket.settle(Some(false));
        assert!(!joined.has("k"));
    }

    #[test]
    fn flags_are_read_as_redis_documents_them() {
        assert_eq!(key_events_enabled(""), (false, false));
        assert_eq!(key_events_enabled("Kx"), (false, false));
        assert_eq!(key_events_enabled("Ex"), (true, false));
        assert_eq!(key_events_enabled("Eg"), (false, true));
        assert_eq!(key_events_enabled("AKE"), (true, true));
        assert_eq!(key_events_enabled("xgE"), (true, true));
    }
}
