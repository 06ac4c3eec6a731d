//! Shared and counted locks: readers share, writers exclude, at most
//! `permits` at once; on every backend.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tower_lock::{LockError, LockGuard, Locker};

use super::{Harness, LONG, PROMPT, assert_store_empties, key};

/// Records every reader's and writer's section, and checks that no writer
/// ever overlapped anyone and that fences rose over both kinds.
#[derive(Default)]
pub struct ReadWriteChecker {
    readers: AtomicUsize,
    writers: AtomicUsize,
    most_readers: AtomicUsize,
    /// (writer?, fence, start, end) of every section.
    sections: Mutex<Vec<(bool, u64, Instant, Instant)>>,
}

impl ReadWriteChecker {
    /// Runs `work` as a reader's (`writer == false`) or writer's section.
    pub async fn section<F: std::future::Future<Output = ()>>(
        &self,
        writer: bool,
        fence: u64,
        work: F,
    ) {
        let start = Instant::now();
        if writer {
            let writers = self.writers.fetch_add(1, Ordering::SeqCst);
            let readers = self.readers.load(Ordering::SeqCst);
            assert_eq!(
                (writers, readers),
                (0, 0),
                "a writer entered alongside others"
            );
        } else {
            let readers = self.readers.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_readers.fetch_max(readers, Ordering::SeqCst);
            assert_eq!(
                self.writers.load(Ordering::SeqCst),
                0,
                "a reader entered alongside a writer"
            );
        }
        work.await;
        let end = Instant::now();
        if writer {
            self.writers.fetch_sub(1, Ordering::SeqCst);
        } else {
            self.readers.fetch_sub(1, Ordering::SeqCst);
        }
        self.sections
            .lock()
            .expect("sections")
            .push((writer, fence, start, end));
    }

    pub fn most_readers(&self) -> usize {
        self.most_readers.load(Ordering::SeqCst)
    }

    /// Panics unless `expected` sections ran, no writer's overlapped any
    /// other, and every section that ended before another began had a lower
    /// fence where either was a writer's.
    pub fn assert_consistent(&self, expected: usize) {
        let sections = self.sections.lock().expect("sections").clone();
        assert_eq!(sections.len(), expected);
        for &(w1, f1, s1, e1) in &sections {
            for &(w2, f2, s2, _) in &sections {
                if (w1 || w2) && f1 != f2 {
                    let (earlier, later) = if s1 <= s2 { (e1, s2) } else { continue };
                    assert!(earlier <= later, "a writer's section overlapped another");
                    assert!(f2 > f1, "fence {f2} entered after fence {f1}");
                }
            }
        }
    }
}

/// Takes the section in `locker`'s next try, retried until `PROMPT` passes.
async fn eventually<F, Fut>(what: &str, mut take: F) -> LockGuard
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<LockGuard>, LockError>>,
{
    let deadline = Instant::now() + PROMPT;
    loop {
        if let Some(guard) = take().await.expect("try") {
            return guard;
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn shared_holders_coexist_and_an_exclusive_holder_excludes_all<H: Harness>(h: &H) {
    let (a, b, c) = (h.locker().await, h.locker().await, h.locker().await);
    let k = key("shared");
    let first = a.acquire_shared(&k, LONG).await.expect("shared");
    let second = b.try_lock_shared(&k, LONG).await.expect("try shared");
    let second = second.expect("a second reader must share the key");
    let third = a.try_lock_shared(&k, LONG).await.expect("try shared");
    let third = third.expect("one locker may hold the key shared twice");
    assert!(
        c.try_lock(&k, LONG).await.expect("try").is_none(),
        "a writer got in with readers"
    );
    assert!(
        c.try_lock_permit(&k, 4, LONG)
            .await
            .expect("try permit")
            .is_none(),
        "a counted lease got in with readers"
    );
    let fences = [first.fence(), second.fence(), third.fence()];
    for guard in [first, second, third] {
        guard.release().await.expect("release");
    }
    let writer = c
        .try_lock(&k, LONG)
        .await
        .expect("try")
        .expect("free once the readers left");
    assert!(
        fences.iter().all(|f| writer.fence() > *f),
        "the writer's fence is not above the readers'"
    );
    assert!(
        a.try_lock_shared(&k, LONG)
            .await
            .expect("try shared")
            .is_none(),
        "a reader got in with a writer"
    );
    assert!(
        b.try_lock_permit(&k, 4, LONG)
            .await
            .expect("try permit")
            .is_none()
    );
    let waiting =
        tokio::time::timeout(Duration::from_millis(100), b.acquire_shared(&k, LONG)).await;
    assert!(
        waiting.is_err(),
        "acquire_shared returned while a writer held the key"
    );
    let reader = tokio::spawn({
        let (b, k) = (b.clone(), k.clone());
        async move { b.acquire_shared(&k, LONG).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fence = writer.fence();
    writer.release().await.expect("release");
    let reader = tokio::time::timeout(PROMPT, reader)
        .await
        .expect("a waiting reader was not woken by the writer's release")
        .expect("task")
        .expect("shared");
    assert!(reader.fence() > fence);
    reader.release().await.expect("release");
    assert_store_empties(h).await;
}

pub async fn readers_share_and_writers_exclude_under_contention<H: Harness>(h: &H) {
    const LOCKERS: usize = 4;
    const TASKS: usize = 32;
    const ROUNDS: usize = 4;
    let mut lockers = Vec::new();
    for _ in 0..LOCKERS {
        lockers.push(h.locker().await);
    }
    let k = key("read-write");
    let checker = Arc::new(ReadWriteChecker::default());
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (locker, k, checker) =
                (lockers[task % LOCKERS].clone(), k.clone(), checker.clone());
            // One task in four writes.
            let writer = task % 4 == 1;
            tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let guard = if writer {
                        locker.acquire(&k, LONG).await
                    } else {
                        locker.acquire_shared(&k, LONG).await
                    };
                    let guard = guard.expect("acquire");
                    let work = tokio::time::sleep(Duration::from_millis(3));
                    checker.section(writer, guard.fence(), work).await;
                    guard.release().await.expect("release");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    checker.assert_consistent(TASKS * ROUNDS);
    assert!(checker.most_readers() > 1, "readers never shared the key");
    for locker in &lockers {
        assert_eq!((locker.held_count(), locker.queued_keys()), (0, 0));
    }
    assert_store_empties(h).await;
}

pub async fn a_stream_of_readers_does_not_starve_a_writer<H: Harness>(h: &H) {
    let (readers, writer) = (h.locker().await, h.locker().await);
    let k = key("starve");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let inside = Arc::new(AtomicUsize::new(0));
    let hold = Duration::from_millis(40);
    // Four readers, staggered, each taking the key again as it leaves: some
    // reader holds it at every moment.
    let mut stream = Vec::new();
    for i in 0..4u32 {
        let (readers, k, stop) = (readers.clone(), k.clone(), stop.clone());
        let inside = inside.clone();
        tokio::time::sleep(hold / 4).await;
        stream.push(tokio::spawn(async move {
            let mut rounds = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let guard = readers.acquire_shared(&k, LONG).await.expect("shared");
                inside.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(hold + Duration::from_millis(u64::from(i))).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                guard.release().await.expect("release");
                rounds += 1;
            }
            rounds
        }));
    }
    tokio::time::sleep(hold * 3).await;
    let started = Instant::now();
    let bound = PROMPT * 2;
    let taken = writer.acquire_timeout(&k, LONG, bound).await;
    let waited = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let guard = taken.unwrap_or_else(|err| panic!("the writer starved for {waited:?}: {err}"));
    assert_eq!(
        inside.load(Ordering::SeqCst),
        0,
        "a reader held the key alongside the writer"
    );
    guard.release().await.expect("release");
    let mut rounds = 0;
    for reader in stream {
        rounds += reader.await.expect("reader");
    }
    assert!(rounds >= 4, "the readers did not run");
    assert_store_empties(h).await;
}

pub async fn permits_are_never_exceeded_and_are_all_used<H: Harness>(h: &H) {
    const LOCKERS: usize = 4;
    const TASKS: usize = 32;
    const ROUNDS: usize = 3;
    const PERMITS: u32 = 4;
    let mut lockers = Vec::new();
    for _ in 0..LOCKERS {
        lockers.push(h.locker().await);
    }
    let k = key("permits");
    let (inside, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let fences = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (locker, k) = (lockers[task % LOCKERS].clone(), k.clone());
            let (inside, most, fences) = (inside.clone(), most.clone(), fences.clone());
            tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let guard = locker
                        .acquire_permit(&k, PERMITS, LONG)
                        .await
                        .expect("permit");
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    fences.lock().expect("fences").push(guard.fence());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    guard.release().await.expect("release");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        PERMITS as usize,
        "most holders at once"
    );
    let mut fences = fences.lock().expect("fences").clone();
    let all = fences.len();
    fences.sort_unstable();
    fences.dedup();
    assert_eq!(fences.len(), all, "two holders shared a fence");
    for locker in &lockers {
        assert_eq!((locker.held_count(), locker.queued_keys()), (0, 0));
    }
    assert_store_empties(h).await;
}

pub async fn another_permit_count_is_refused_naming_both<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await, h.locker().await);
    let k = key("mismatch");
    let held = a.acquire_permit(&k, 2, LONG).await.expect("permit");
    for refused in [
        b.try_lock_permit(&k, 3, LONG).await.map(|_| ()),
        b.acquire_permit(&k, 3, LONG).await.map(|_| ()),
    ] {
        match refused {
            Err(LockError::PermitsMismatch {
                stored: 2,
                requested: 3,
                key,
            }) => assert_eq!(key, k),
            other => panic!("another count was not refused: {other:?}"),
        }
    }
    for permits in [0, tower_lock::MAX_PERMITS + 1] {
        let refused = b.try_lock_permit(&k, permits, LONG).await;
        assert!(
            matches!(
                refused,
                Err(LockError::InvalidSetting {
                    setting: "permits",
                    ..
                })
            ),
            "{refused:?}"
        );
    }
    let second = b
        .try_lock_permit(&k, 2, LONG)
        .await
        .expect("try")
        .expect("the second permit");
    assert!(
        b.try_lock_permit(&k, 2, LONG).await.expect("try").is_none(),
        "a third holder of two permits"
    );
    assert_eq!(a.held_count(), 1, "a refusal changed what was held");
    held.release().await.expect("release");
    second.release().await.expect("release");
    // Two waiters with different counts behind a writer: the one that meets
    // the other's count is told of the mismatch at once, not kept waiting.
    let writer = a.acquire(&k, LONG).await.expect("acquire");
    let waiters: Vec<_> = [2, 3]
        .into_iter()
        .map(|permits| {
            let (b, k) = (b.clone(), k.clone());
            tokio::spawn(async move { b.acquire_permit(&k, permits, LONG).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    writer.release().await.expect("release");
    let mut outcomes = Vec::new();
    for waiter in waiters {
        let outcome = tokio::time::timeout(PROMPT, waiter).await;
        outcomes.push(
            outcome
                .expect("a waiter with another count was kept waiting")
                .expect("task"),
        );
    }
    let granted = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    let refused = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Err(LockError::PermitsMismatch { .. })))
        .count();
    // A store that decides by writing first and reading after (NATS) may
    // refuse both, each having seen the other; it never grants both.
    assert!(granted <= 1 && granted + refused == 2, "{outcomes:?}");
    for guard in outcomes.into_iter().flatten() {
        guard.release().await.expect("release");
    }
    // The count goes with the last holder.
    let counted = eventually("the count outlived its last holder", || {
        b.try_lock_permit(&k, 3, LONG)
    })
    .await;
    counted.release().await.expect("release");
    assert_store_empties(h).await;
}

pub async fn a_locker_holding_several_leases_on_a_key_releases_them_all<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await, h.locker().await);
    let k = key("several");
    let guards = [
        a.acquire_shared(&k, LONG).await.expect("shared"),
        a.acquire_shared(&k, LONG).await.expect("shared"),
    ];
    assert_ne!(
        guards[0].fence(),
        guards[1].fence(),
        "two leases shared a fence"
    );
    assert_eq!(a.held_count(), 2);
    a.release(&k).await.expect("release by key");
    assert_eq!(a.held_count(), 0);
    assert!(matches!(a.release(&k).await, Err(LockError::NotHeld)));
    let writer = eventually("release by key left a reader", || b.try_lock(&k, LONG)).await;
    writer.release().await.expect("release");
    let k = key("several-permits");
    for _ in 0..3 {
        std::mem::forget(a.acquire_permit(&k, 3, LONG).await.expect("permit"));
    }
    assert!(b.try_lock_permit(&k, 3, LONG).await.expect("try").is_none());
    a.release(&k).await.expect("release by key");
    let permit = eventually("release by key left a permit", || {
        b.try_lock_permit(&k, 3, LONG)
    })
    .await;
    permit.release().await.expect("release");
    drop(guards);
    assert_store_empties(h).await;
}

pub async fn abandoned_shared_and_counted_leases_expire_after_their_ttl<H: Harness>(h: &H) {
    let (a, b) = (h.locker().await, h.locker().await);
    let ttl = Duration::from_millis(400);
    let most = if h.measures_from_first_sight() {
        ttl * 2
    } else {
        ttl
    } + PROMPT;
    for shared in [true, false] {
        let k = key("abandoned-kind");
        let start = Instant::now();
        let abandoned = if shared {
            a.acquire_shared(&k, ttl).await
        } else {
            a.acquire_permit(&k, 1, ttl).await
        };
        // A crashed holder: the guard never releases.
        std::mem::forget(abandoned.expect("acquire"));
        let guard = tokio::time::timeout(most, b.acquire(&k, LONG))
            .await
            .expect("an abandoned lease must free the key after its ttl")
            .expect("acquire");
        assert!(
            start.elapsed() >= ttl - Duration::from_millis(50),
            "taken over after {:?}, before the {ttl:?} lease ran out",
            start.elapsed()
        );
        guard.release().await.expect("release");
    }
    assert_store_empties(h).await;
}

pub async fn dropped_shared_and_counted_futures_leave_nothing<H: Harness>(h: &H) {
    let (a, b, c) = (h.locker().await, h.locker().await, h.locker().await);
    let k = key("dropped-kinds");
    // Waiting readers and permit takers behind a writer, dropped.
    let writer = a.acquire(&k, LONG).await.expect("acquire");
    for _ in 0..3 {
        let reader =
            tokio::time::timeout(Duration::from_millis(50), b.acquire_shared(&k, LONG)).await;
        assert!(reader.is_err(), "a reader got in with a writer");
        let permit =
            tokio::time::timeout(Duration::from_millis(50), b.acquire_permit(&k, 2, LONG)).await;
        assert!(permit.is_err(), "a permit was taken with a writer");
    }
    writer.release().await.expect("release");
    // A waiting writer behind a reader, dropped: its claim lapses.
    let reader = a.acquire_shared(&k, LONG).await.expect("shared");
    let waited = tokio::time::timeout(Duration::from_millis(100), b.acquire(&k, LONG)).await;
    assert!(waited.is_err(), "a writer got in with a reader");
    let late = eventually("a dropped writer kept readers out", || {
        c.try_lock_shared(&k, LONG)
    })
    .await;
    late.release().await.expect("release");
    reader.release().await.expect("release");
    // Cut off at every point of their requests.
    for step in 0..20u64 {
        let cut = Duration::from_micros(step * 150);
        if let Ok(Ok(guard)) = tokio::time::timeout(cut, b.acquire_shared(&k, LONG)).await {
            guard.release().await.expect("release");
        }
        if let Ok(Ok(guard)) = tokio::time::timeout(cut, b.acquire_permit(&k, 2, LONG)).await {
            guard.release().await.expect("release");
        }
    }
    let writer = eventually("a cancelled request left the key held", || {
        c.try_lock(&k, LONG)
    })
    .await;
    writer.release().await.expect("release");
    for locker in [&a, &b, &c] {
        assert_eq!((locker.held_count(), locker.queued_keys()), (0, 0));
    }
    assert_store_empties(h).await;
}

/// Every kind renews, and counts its lease lost, like an exclusive one.
pub async fn shared_and_counted_leases_renew_and_report_loss<H: Harness>(h: &H) {
    let a = h.locker().await.auto_renew(true);
    let b = h.locker().await;
    let ttl = Duration::from_millis(300);
    let k = key("renew-kinds");
    let shared = a.acquire_shared(&k, ttl).await.expect("shared");
    let k2 = key("renew-kinds");
    let permit = a.acquire_permit(&k2, 1, ttl).await.expect("permit");
    tokio::time::sleep(ttl * 3).await;
    assert!(
        !shared.is_lost() && !permit.is_lost(),
        "renewed leases were lost"
    );
    assert!(
        b.try_lock(&k, LONG).await.expect("try").is_none(),
        "a renewed reader lost the key"
    );
    assert!(
        b.try_lock_permit(&k2, 1, LONG)
            .await
            .expect("try")
            .is_none(),
        "a renewed permit was taken"
    );
    shared.release().await.expect("release");
    permit.release().await.expect("release");
    let _ = Locker::clone(&b);
    assert_store_empties(h).await;
}

/// A shared or counted try whose answer was lost is given back by its token
/// alone ([`Lease::unanswered`](tower_lock::backend::Lease::unanswered)),
/// from any backend of the store, not only the one that took it: the
/// locker's lost-answer release must not orphan a permit for its ttl.
pub async fn an_unanswered_shared_or_counted_lease_is_released_by_its_token<H: Harness>(h: &H) {
    use tower_lock::backend::{AcquireRequest, Attempt, Lease, LeaseKind, Token};

    for kind in [LeaseKind::Shared, LeaseKind::Counted { permits: 2 }] {
        let (taker, releaser) = (h.locker().await, h.locker().await);
        let k = key("unanswered");
        let token = Token::new();
        let request = AcquireRequest::new(&k, token, LONG).kind(kind);
        let attempt = taker.backend().try_acquire(&request).await.expect("try");
        assert!(
            matches!(attempt, Attempt::Acquired { .. }),
            "{kind:?}: a free key was refused: {attempt:?}"
        );
        let lost = Lease::unanswered(token, kind);
        assert!(
            releaser
                .backend()
                .release(&k, &lost)
                .await
                .expect("release"),
            "{kind:?}: a release by token alone found nothing"
        );
        let writer = h.locker().await.try_lock(&k, LONG).await.expect("try_lock");
        writer
            .unwrap_or_else(|| panic!("{kind:?}: the lease released by token still holds the key"))
            .release()
            .await
            .expect("release");
    }
}
