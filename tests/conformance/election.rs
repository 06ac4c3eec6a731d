//! What elections need of a backend (a value stored with a lease, the
//! holder's fence kept by renewals, wake-ups on valued grants), and the
//! election API on top of it.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::watch;
use tower_lock::{
    LockError, Locker,
    backend::{AcquireRequest, Attempt, Lease, LeaseKind, Token},
    election::{Election, Leader},
};

use super::{Harness, LONG, OverlapChecker, PROMPT, key};

/// Short timings, for checks that wait for a lease to run out.
fn quick(locker: Locker, name: &str) -> Election {
    Election::new(locker, name)
        .ttl(Duration::from_millis(1500))
        .renew_deadline(Duration::from_millis(1000))
        .renew_every(Duration::from_millis(250))
}

/// Waits (at most `within`) until `rx` shows what `wanted` accepts.
pub async fn seen(
    rx: &mut watch::Receiver<Option<Leader>>,
    within: Duration,
    what: &str,
    wanted: impl FnMut(&Option<Leader>) -> bool,
) -> Option<Leader> {
    let found = tokio::time::timeout(within, rx.wait_for(wanted)).await;
    let found = found.unwrap_or_else(|_| panic!("observer never saw {what} within {within:?}"));
    found.expect("observer alive").clone()
}

pub async fn a_value_is_stored_with_its_lease_and_kept_by_renewal<H: Harness>(h: &H) {
    let backend = h.locker().await.backend().clone();
    let k = key("value");
    let token = Token::new();
    let request = AcquireRequest::new(&k, token, LONG).value(Some("node a"));
    let Attempt::Acquired { fence, .. } = backend.try_acquire(&request).await.expect("grant")
    else {
        panic!("a free key was refused");
    };
    let holding = backend.holder(&k).await.expect("holder").expect("held");
    assert_eq!(
        (holding.fence, holding.value.as_deref()),
        (fence, Some("node a"))
    );
    // The holder stores a new value: same fence.
    let again = request.value(Some("node b: 10.0.0.7"));
    let Attempt::Acquired {
        fence: kept,
        revision,
    } = backend.try_acquire(&again).await.expect("regrant")
    else {
        panic!("the holder's own token was refused");
    };
    assert_eq!(kept, fence, "a regrant changed the fence");
    let lease = Lease::granted(token, LeaseKind::Exclusive, fence, revision);
    let renewed = backend.extend(&k, &lease, LONG).await.expect("extend");
    let revision = renewed.expect("the holder's lease was not renewed");
    let holding = backend.holder(&k).await.expect("holder").expect("held");
    assert_eq!(
        (holding.token, holding.fence, holding.value.as_deref()),
        (token, fence, Some("node b: 10.0.0.7")),
        "renewal lost the fence or the value"
    );
    let lease = Lease::granted(token, LeaseKind::Exclusive, fence, revision);
    assert!(backend.release(&k, &lease).await.expect("release"));
    assert_eq!(backend.holder(&k).await.expect("holder"), None);
}

pub async fn a_valued_grant_wakes_subscribers_and_a_plain_one_does_not<H: Harness>(h: &H) {
    let (watcher, taker) = (h.locker().await, h.locker().await);
    let k = key("wake-valued");
    let mut wakeups = watcher.backend().subscribe(&k).await.expect("subscribe");
    let plain = taker
        .try_lock(&k, LONG)
        .await
        .expect("try_lock")
        .expect("free");
    let woken = tokio::time::timeout(Duration::from_millis(300), wakeups.changed()).await;
    assert!(woken.is_err(), "a plain grant woke a subscriber");
    plain.release().await.expect("release");
    // Whether a plain release wakes a subscriber that is not queued for
    // the key is the store's affair: start afresh.
    drop(wakeups);
    let mut wakeups = watcher.backend().subscribe(&k).await.expect("subscribe");
    let token = Token::new();
    let valued = AcquireRequest::new(&k, token, LONG).value(Some("node-a"));
    let granted = taker.backend().try_acquire(&valued).await.expect("grant");
    let Attempt::Acquired { fence, revision } = granted else {
        panic!("a free key was refused: {granted:?}");
    };
    tokio::time::timeout(PROMPT, wakeups.changed())
        .await
        .expect("a grant with a value did not wake the subscriber");
    let lease = Lease::granted(token, LeaseKind::Exclusive, fence, revision);
    assert!(taker.backend().release(&k, &lease).await.expect("release"));
    tokio::time::timeout(PROMPT, wakeups.changed())
        .await
        .expect("the release of a lease with a value did not wake the subscriber");
}

pub async fn one_candidate_leads_at_a_time_with_rising_terms<H: Harness>(h: &H) {
    const ROUNDS: usize = 4;
    let name = key("one-leader");
    let checker = Arc::new(OverlapChecker::default());
    let lost_mid_term = Arc::new(Mutex::new(0));
    let mut candidates = Vec::new();
    for n in 0..3 {
        let election = quick(h.locker().await, &name);
        let (checker, lost_mid_term) = (checker.clone(), lost_mid_term.clone());
        candidates.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let leadership = election
                    .campaign(&format!("candidate-{n}-{round}"))
                    .await
                    .expect("campaign");
                {
                    let _term = checker.enter(leadership.term());
                    // Lead for a while, by this candidate's own judgement.
                    for _ in 0..5 {
                        if leadership.is_lost() {
                            *lost_mid_term.lock().expect("count") += 1;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                let _ = leadership.resign().await;
            }
        }));
    }
    for candidate in candidates {
        candidate.await.expect("candidate");
    }
    checker.assert_exclusive(3 * ROUNDS);
    assert_eq!(
        *lost_mid_term.lock().expect("count"),
        0,
        "a healthy leader lost its lease"
    );
}

pub async fn observers_see_every_change_of_leader<H: Harness>(h: &H) {
    let name = key("observe");
    let observer = Election::new(h.locker().await, &name).ttl(LONG);
    let (a, b) = (
        Election::new(h.locker().await, &name).ttl(LONG),
        Election::new(h.locker().await, &name).ttl(LONG),
    );
    assert_eq!(observer.name(), name);
    assert!(format!("{observer:?}").contains(&name));
    // An observer that went away leaves nothing a later one would share.
    drop(observer.observe().await.expect("observe"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut rx = observer.observe().await.expect("observe");
    assert_eq!(observer.leader().await.expect("leader"), None);
    let mut first = a.campaign("node-a").await.expect("campaign");
    let term = first.term();
    assert_eq!(first.id(), "node-a");
    assert!(format!("{first:?}").contains(&format!("term: {term}")));
    let led = seen(&mut rx, PROMPT, "node-a lead", |now| now.is_some()).await;
    assert_eq!(led, Some(Leader::new("node-a", term)));
    first.proclaim("node-a:9090").await.expect("proclaim");
    assert_eq!(first.term(), term, "proclaim changed the term");
    assert_eq!(first.id(), "node-a:9090");
    let renamed = seen(&mut rx, PROMPT, "the new id", |now| {
        now.as_ref().is_some_and(|leader| leader.id != "node-a")
    })
    .await;
    assert_eq!(renamed, Some(Leader::new("node-a:9090", term)));
    assert_eq!(b.leader().await.expect("leader"), renamed);
    let started = Instant::now();
    first.resign().await.expect("resign");
    seen(&mut rx, PROMPT, "no leader", Option::is_none).await;
    assert!(started.elapsed() < PROMPT);
    let second = b.campaign("node-b").await.expect("campaign");
    let next = seen(&mut rx, PROMPT, "node-b lead", |now| now.is_some()).await;
    assert_eq!(next, Some(Leader::new("node-b", second.term())));
    assert!(second.term() > term, "terms must rise");
    second.resign().await.expect("resign");
    seen(&mut rx, PROMPT, "no leader", Option::is_none).await;
}

/// A receiver starts from what the store says, never from a guess: with
/// nobody leading it holds `None` because the store said so, and with a
/// leader it names that leader before any change.
pub async fn an_observer_starts_from_a_read_of_the_store<H: Harness>(h: &H) {
    let name = key("observed-first");
    let observer = quick(h.locker().await, &name);
    let nobody = observer.observe().await.expect("observe");
    assert_eq!(*nobody.borrow(), None);
    drop(nobody);
    let leadership = quick(h.locker().await, &name)
        .campaign("node-a")
        .await
        .expect("campaign");
    // A new observer (the last receiver went, and with it the task): its
    // first value is the leader, read before it was handed out.
    let fresh = quick(h.locker().await, &name);
    let rx = fresh.observe().await.expect("observe");
    let first = rx
        .borrow()
        .clone()
        .expect("the leader is there from the first value");
    assert_eq!(
        (first.id.as_str(), first.term),
        ("node-a", leadership.term())
    );
    // A second receiver of the running observer starts from its latest read.
    let again = fresh.observe().await.expect("observe");
    assert_eq!(
        again.borrow().as_ref().map(|l| l.term),
        Some(leadership.term())
    );
    leadership.resign().await.expect("resign");
    let invalid = Election::new(h.locker().await, "");
    assert!(matches!(
        invalid.observe().await,
        Err(LockError::InvalidKey { .. })
    ));
}

pub async fn a_crashed_leader_is_replaced_after_its_ttl<H: Harness>(h: &H) {
    let name = key("crash");
    let ttl = Duration::from_millis(1500);
    let (term, crashed_at) = std::thread::scope(|scope| {
        // The leader runs on a runtime of its own; dropping that runtime
        // stops everything it does, as a crash would: no renewal, no
        // release.
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Runtime::new().expect("runtime");
                let (locker, leadership) = runtime.block_on(async {
                    let locker = h.locker().await;
                    let leadership = quick(locker.clone(), &name)
                        .campaign("doomed")
                        .await
                        .expect("campaign");
                    // Renewed at least once before the crash.
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    assert!(!leadership.is_lost());
                    (locker, leadership)
                });
                let term = leadership.term();
                drop(runtime);
                let crashed_at = Instant::now();
                std::mem::forget(leadership);
                h.crashed(&locker);
                (term, crashed_at)
            })
            .join()
            .expect("the leader thread")
    });
    let observer = quick(h.locker().await, &name);
    let mut rx = observer.observe().await.expect("observe");
    let next = quick(h.locker().await, &name);
    let leadership = tokio::time::timeout(ttl + PROMPT, next.campaign("heir"))
        .await
        .expect("no new leader within ttl and the bound")
        .expect("campaign");
    let took = crashed_at.elapsed();
    assert!(leadership.term() > term, "the heir's term must be higher");
    let now = seen(&mut rx, PROMPT, "the heir", |now| {
        now.as_ref().is_some_and(|leader| leader.id == "heir")
    })
    .await;
    assert_eq!(now.map(|leader| leader.term), Some(leadership.term()));
    assert!(took < ttl + PROMPT, "takeover took {took:?}");
    leadership.resign().await.expect("resign");
}

pub async fn a_job_that_resigns_ends_its_run<H: Harness>(h: &H) {
    let election = quick(h.locker().await, &key("run"));
    let runs = Arc::new(Mutex::new(0));
    let outcome = tokio::time::timeout(
        PROMPT,
        election.run_while_leader("node-a", |leadership| {
            let runs = runs.clone();
            async move {
                *runs.lock().expect("runs") += 1;
                let term = leadership.term();
                leadership.resign().await.expect("resign");
                term
            }
        }),
    )
    .await
    .expect("the run did not end with its job");
    let term = outcome.expect("run");
    assert!(term > 0);
    assert_eq!(
        *runs.lock().expect("runs"),
        1,
        "a resignation counted as a loss"
    );
    assert_eq!(election.leader().await.expect("leader"), None);
}

pub async fn election_names_never_meet_lock_keys<H: Harness>(h: &H) {
    let locker = h.locker().await;
    let name = key("namespace");
    let reserved = format!("\0election:{name}");
    assert!(matches!(
        locker.try_lock(&reserved, LONG).await,
        Err(LockError::InvalidKey { .. })
    ));
    let plain = locker.acquire(&name, LONG).await.expect("acquire");
    let prefixed = locker
        .acquire(&format!("election:{name}"), LONG)
        .await
        .expect("acquire");
    let election = Election::new(h.locker().await, &name).ttl(LONG);
    let leadership = tokio::time::timeout(PROMPT, election.campaign("node-a"))
        .await
        .expect("a lock key blocked an election of the same name")
        .expect("campaign");
    assert!(
        locker
            .try_lock(&name, LONG)
            .await
            .expect("try_lock")
            .is_none(),
        "the election freed a lock key"
    );
    leadership.resign().await.expect("resign");
    plain.release().await.expect("release");
    prefixed.release().await.expect("release");
    for bad in ["", "\0x"] {
        let err = Election::new(locker.clone(), bad)
            .campaign("a")
            .await
            .unwrap_err();
        assert!(
            matches!(err, LockError::InvalidKey { .. }),
            "{bad:?}: {err}"
        );
    }
    super::assert_store_empties(h).await;
}
