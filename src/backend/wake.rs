//! Wake-ups for released keys: what a backend hands waiters
//! ([`Subscription`]) and the per-key demultiplexer most backends use to
//! make them ([`WakeRegistry`]).

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::watch;

/// Wake-ups for one key, from [`Backend::subscribe`](super::Backend::subscribe).
///
/// It is also how a backend hears that a waiter gave up: a subscription is
/// held by one waiter for as long as it waits, and dropped when it stops;
/// the hook set with [`on_give_up`](Self::on_give_up) runs when that waiter
/// stops without having acquired the key (it timed out, its future was
/// dropped, or the store kept failing), and when no other waiter of the
/// same [`Locker`](crate::Locker) goes on waiting for the key.
///
/// Dropping it unregisters the interest.
#[must_use = "a subscription only wakes while it is kept"]
pub struct Subscription {
    changes: Option<watch::Receiver<()>>,
    registration: Option<Registration>,
    /// Runs on drop unless the waiter acquired (or handed its wait on).
    gave_up: Option<Box<dyn FnOnce() + Send>>,
}

impl Subscription {
    /// A subscription that never fires, for backends without wake-ups:
    /// waiters then retry on their backoff timer.
    pub fn never() -> Self {
        Subscription {
            changes: None,
            registration: None,
            gave_up: None,
        }
    }

    /// Runs `hook` if the waiter gives up (see the type's docs), after the
    /// subscription has left its [`WakeRegistry`], so that the hook can ask
    /// the registry whether anybody else still waits for the key.
    ///
    /// It runs in a destructor, possibly outside any runtime: it must not
    /// block, and should spawn what needs I/O.
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
    /// use tower_lock::backend::WakeRegistry;
    ///
    /// let registry = WakeRegistry::default();
    /// let gave_up = Arc::new(AtomicBool::new(false));
    /// let subscription = registry.subscribe("k").on_give_up({
    ///     let (gave_up, registry) = (gave_up.clone(), registry.clone());
    ///     move || gave_up.store(!registry.is_watched("k"), Ordering::SeqCst)
    /// });
    /// drop(subscription);
    /// assert!(gave_up.load(Ordering::SeqCst));
    /// ```
    pub fn on_give_up(mut self, hook: impl FnOnce() + Send + 'static) -> Self {
        self.gave_up = Some(Box::new(hook));
        self
    }

    /// The waiter is done without having given up: it acquired the key, or
    /// another waiter of its locker goes on waiting for it.
    pub(crate) fn done(&mut self) {
        self.gave_up = None;
    }

    /// Waits for the next wake-up after the subscription was made (or after
    /// the last call returned).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a wake-up that arrives while no call is waiting is kept
    /// for the next call.
    pub async fn changed(&mut self) {
        if let Some(changes) = &mut self.changes
            && changes.changed().await.is_ok()
        {
            return;
        }
        // The source is gone (or there never was one): only the backoff
        // timer can end the wait.
        std::future::pending().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.registration.take());
        if let Some(hook) = self.gave_up.take() {
            hook();
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("live", &self.changes.is_some())
            .finish()
    }
}

/// Demultiplexes wake-ups by key: one per backend, shared by all waiters.
///
/// A backend receives released keys from its store (an event, a pub/sub
/// message, a watch) and calls [`notify`](Self::notify); waiters get a
/// [`Subscription`] from [`subscribe`](Self::subscribe). A key's entry lives
/// only while somebody is subscribed to it, so the registry never grows with
/// the number of distinct keys.
///
/// ```
/// use tower_lock::backend::WakeRegistry;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let registry = WakeRegistry::default();
/// let mut sub = registry.subscribe("k");
/// registry.notify("k");
/// sub.changed().await; // returns at once: the notify came after subscribe
/// drop(sub);
/// assert_eq!(registry.len(), 0);
/// # }
/// ```
#[derive(Clone, Default)]
pub struct WakeRegistry {
    inner: Arc<RegistryInner>,
}

#[derive(Default)]
struct RegistryInner {
    keys: Mutex<HashMap<Box<str>, Slot>>,
    // Lets `notify` skip the mutex on the release hot path when nobody waits.
    len: AtomicUsize,
}

struct Slot {
    changes: watch::Sender<()>,
    subscribers: usize,
}

impl WakeRegistry {
    /// Registers a waiter for `key`; it is woken by every later
    /// [`notify`](Self::notify) of the key.
    pub fn subscribe(&self, key: &str) -> Subscription {
        let mut keys = self.lock();
        let changes = match keys.get_mut(key) {
            Some(slot) => {
                slot.subscribers += 1;
                slot.changes.subscribe()
            }
            None => {
                let (changes, rx) = watch::channel(());
                keys.insert(
                    key.into(),
                    Slot {
                        changes,
                        subscribers: 1,
                    },
                );
                self.inner.len.store(keys.len(), Ordering::Release);
                rx
            }
        };
        Subscription {
            changes: Some(changes),
            registration: Some(Registration {
                registry: self.clone(),
                key: key.into(),
            }),
            gave_up: None,
        }
    }

    /// Wakes every current subscriber of `key`.
    pub fn notify(&self, key: &str) {
        if self.inner.len.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Some(slot) = self.lock().get(key) {
            slot.changes.send_replace(());
        }
    }

    /// Wakes every subscriber of every key: for when wake-ups may have been
    /// missed, such as after a reconnect.
    pub fn notify_all(&self) {
        for slot in self.lock().values() {
            slot.changes.send_replace(());
        }
    }

    /// Whether anybody is subscribed to `key`.
    pub fn is_watched(&self, key: &str) -> bool {
        self.inner.len.load(Ordering::Acquire) != 0 && self.lock().contains_key(key)
    }

    /// The keys that have subscribers now.
    pub fn keys(&self) -> Vec<String> {
        self.lock().keys().map(|k| k.to_string()).collect()
    }

    /// How many keys have subscribers.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Acquire)
    }

    /// Whether no key has subscribers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Slot>> {
        crate::sync::lock(&self.inner.keys)
    }
}

impl fmt::Debug for WakeRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WakeRegistry")
            .field("keys", &self.len())
            .finish()
    }
}

struct Registration {
    registry: WakeRegistry,
    key: Box<str>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut keys = self.registry.lock();
        if let Some(slot) = keys.get_mut(&*self.key) {
            slot.subscribers -= 1;
            if slot.subscribers == 0 {
                keys.remove(&*self.key);
                self.registry.inner.len.store(keys.len(), Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn notify_before_wait_is_not_lost() {
        let registry = WakeRegistry::default();
        let mut sub = registry.subscribe("k");
        registry.notify("k");
        tokio::time::timeout(Duration::from_secs(1), sub.changed())
            .await
            .expect("the wake-up sent after subscribing must be delivered");
    }

    #[tokio::test]
    async fn notify_of_other_key_does_not_wake() {
        let registry = WakeRegistry::default();
        let mut sub = registry.subscribe("k");
        registry.notify("other");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), sub.changed())
                .await
                .is_err()
        );
    }

    #[test]
    fn entries_go_when_the_last_subscriber_does() {
        let registry = WakeRegistry::default();
        let a = registry.subscribe("k");
        let b = registry.subscribe("k");
        assert_eq!(registry.len(), 1);
        drop(a);
        assert!(registry.is_watched("k"));
        drop(b);
        assert!(registry.is_empty());
        assert!(!registry.is_watched("k"));
    }
}
