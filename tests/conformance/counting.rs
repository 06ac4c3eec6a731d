//! A backend wrapper that counts what reaches the store, when each try was
//! made, and can run a step of the test between a busy answer and the
//! caller's wait.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tower_lock::{
    LockError,
    backend::{AcquireRequest, Attempt, Backend, Holding, Lease, Subscription},
};

type Hook = Box<dyn FnOnce() + Send>;

/// Wraps any backend; every call is forwarded unchanged.
pub struct Counting {
    inner: Arc<dyn Backend>,
    /// Every try (on the spot or through I/O): when, and what it came to.
    tries: Mutex<Vec<(Instant, bool)>>,
    /// Calls other than tries: extend, release, subscribe, holder.
    others: AtomicUsize,
    /// Runs once, after the next busy answer of a waiting try and before the
    /// answer is returned: a release there lands between the try and the
    /// wait.
    after_busy: Mutex<Option<Hook>>,
}

impl std::fmt::Debug for Counting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counting")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Counting {
    pub fn new(inner: Arc<dyn Backend>) -> Arc<Self> {
        Arc::new(Counting {
            inner,
            tries: Mutex::default(),
            others: AtomicUsize::new(0),
            after_busy: Mutex::default(),
        })
    }

    /// How many tries reached the store.
    pub fn tries(&self) -> usize {
        self.tries.lock().expect("tries").len()
    }

    /// How many calls of any kind reached the store.
    pub fn calls(&self) -> usize {
        self.tries() + self.others.load(Ordering::SeqCst)
    }

    /// The time between the winning try and the try before it.
    pub fn last_gap(&self) -> Duration {
        let tries = self.tries.lock().expect("tries");
        let [.., (before, false), (won, true)] = tries[..] else {
            panic!("no busy try followed by a winning one: {:?}", *tries);
        };
        won - before
    }

    /// Waits until `n` tries have reached the store.
    pub async fn until_tries(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.tries() < n {
            assert!(Instant::now() < deadline, "only {} tries", self.tries());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Runs `hook` after the next busy answer to a waiting try.
    pub fn after_next_busy(&self, hook: impl FnOnce() + Send + 'static) {
        *self.after_busy.lock().expect("hook") = Some(Box::new(hook));
    }

    fn record(&self, request: &AcquireRequest<'_>, attempt: &Result<Attempt, LockError>) {
        let won = matches!(attempt, Ok(Attempt::Acquired { .. }));
        self.tries
            .lock()
            .expect("tries")
            .push((Instant::now(), won));
        if !won && request.waiting {
            let hook = self.after_busy.lock().expect("hook").take();
            if let Some(hook) = hook {
                hook();
            }
        }
    }
}

#[async_trait::async_trait]
impl Backend for Counting {
    async fn try_acquire(&self, request: &AcquireRequest<'_>) -> Result<Attempt, LockError> {
        let attempt = self.inner.try_acquire(request).await;
        self.record(request, &attempt);
        attempt
    }

    async fn extend(
        &self,
        key: &str,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Option<u64>, LockError> {
        self.others.fetch_add(1, Ordering::SeqCst);
        self.inner.extend(key, lease, ttl).await
    }

    async fn release(&self, key: &str, lease: &Lease) -> Result<bool, LockError> {
        self.others.fetch_add(1, Ordering::SeqCst);
        self.inner.release(key, lease).await
    }

    async fn subscribe(&self, key: &str) -> Result<Subscription, LockError> {
        self.others.fetch_add(1, Ordering::SeqCst);
        self.inner.subscribe(key).await
    }

    async fn holder(&self, key: &str) -> Result<Option<Holding>, LockError> {
        self.others.fetch_add(1, Ordering::SeqCst);
        self.inner.holder(key).await
    }

    fn try_acquire_now(&self, request: &AcquireRequest<'_>) -> Option<Result<Attempt, LockError>> {
        let attempt = self.inner.try_acquire_now(request)?;
        self.record(request, &attempt);
        Some(attempt)
    }

    fn release_now(&self, key: &str, lease: &Lease) -> Option<Result<bool, LockError>> {
        let released = self.inner.release_now(key, lease)?;
        self.others.fetch_add(1, Ordering::SeqCst);
        Some(released)
    }
}
