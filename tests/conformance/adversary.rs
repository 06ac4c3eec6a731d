//! What someone who is not the holder can do: nothing. A token other than
//! the holder's changes nothing, whatever revision or fence it names
//! (DESIGN semantic 11), and a forged message only wakes (semantic 12).

use std::time::Duration;

use tower_lock::{
    LockGuard, Locker,
    backend::{AcquireRequest, Attempt, Lease, LeaseKind, Token},
};

use super::{Harness, LONG, PROMPT, acquire_kind, assert_kind_hand_off_is_woken, key};

/// Takes a fresh key with a lease of `kind` straight from the store, then
/// sends the holder's own revision and fence with another token: no extend
/// or release may touch the lease, nor a lost-answer release (fence and
/// revision 0) with another token. The holder's own lease still works.
async fn a_foreign_token_changes_nothing<H: Harness>(h: &H, kind: LeaseKind) {
    let (locker, other) = (h.locker().await, h.locker().await);
    let store = locker.backend().clone();
    let k = key("foreign-token");
    let token = Token::new();
    let request = AcquireRequest::new(&k, token, LONG).kind(kind);
    let Attempt::Acquired { fence, revision } = store.try_acquire(&request).await.expect("try")
    else {
        panic!("a fresh key is free");
    };
    let held = Lease::granted(token, kind, fence, revision);
    let forged = Lease::granted(Token::new(), kind, fence, revision);
    let lost_answer = Lease::unanswered(Token::new(), kind);
    for lease in [forged, lost_answer] {
        assert_eq!(
            store.extend(&k, &lease, LONG).await.expect("extend"),
            None,
            "{kind:?}: another token extended the holder's lease ({lease:?})"
        );
        assert!(
            !store.release(&k, &lease).await.expect("release"),
            "{kind:?}: another token released the holder's lease ({lease:?})"
        );
    }
    // Read from another backend too: a store whose release went through
    // would let it in.
    let taken = match kind {
        LeaseKind::Counted { permits } => other.try_lock_permit(&k, permits, LONG).await,
        _ => other.try_lock(&k, LONG).await,
    };
    assert!(
        taken.expect("try").is_none(),
        "{kind:?}: the key was free after another token's release"
    );
    if kind == LeaseKind::Exclusive {
        let holding = store.holder(&k).await.expect("holder").expect("held");
        assert_eq!((holding.token, holding.fence), (token, fence));
    }
    let revision = store
        .extend(&k, &held, LONG)
        .await
        .expect("extend")
        .expect("the holder's own lease extends");
    assert!(
        store
            .release(&k, &Lease::granted(token, kind, fence, revision))
            .await
            .expect("release"),
        "the holder's own lease releases"
    );
}

pub async fn another_token_with_the_holders_revision_changes_nothing<H: Harness>(h: &H) {
    a_foreign_token_changes_nothing(h, LeaseKind::Exclusive).await;
}

pub async fn another_token_with_a_shared_or_counted_holders_revision_changes_nothing<H: Harness>(
    h: &H,
) {
    a_foreign_token_changes_nothing(h, LeaseKind::Shared).await;
    a_foreign_token_changes_nothing(h, LeaseKind::Counted { permits: 1 }).await;
}

/// Forged messages on every channel the backends listen to, while a key is
/// held exclusively and another's only permit is held, each with a waiter,
/// and about a key nobody uses: no waiter is granted, no holder loses its
/// lease, nothing is created or deleted; the real releases still hand over.
pub async fn forged_messages_grant_create_and_delete_nothing<H: Harness>(h: &H) {
    let (holder, waiter) = (h.locker().await, h.locker().await);
    let exclusive = key("forged");
    let counted = key("forged-permit");
    let one_permit = LeaseKind::Counted { permits: 1 };
    let held = holder.acquire(&exclusive, LONG).await.expect("acquire");
    let permit = acquire_kind(&holder, &counted, one_permit)
        .await
        .expect("permit");
    let waiting = |k: &str, kind: LeaseKind| {
        let (waiter, k) = (waiter.clone(), k.to_owned());
        tokio::spawn(async move { acquire_kind(&waiter, &k, kind).await })
    };
    let waiting_exclusive = waiting(&exclusive, LeaseKind::Exclusive);
    let waiting_counted = waiting(&counted, one_permit);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = h.stored_locks().await;
    let mut sent = 0;
    for k in [&exclusive, &counted, &key("forged-unused")] {
        sent += h.forge(k).await;
    }
    // Long enough for anything a message could set off (a withdrawal is
    // sent tens of milliseconds after a wake-up).
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !waiting_exclusive.is_finished() && !waiting_counted.is_finished(),
        "{sent} forged messages let a waiter in while the key was held"
    );
    assert!(
        !held.is_lost() && !permit.is_lost(),
        "a forged message ended a holder's lease"
    );
    assert_eq!(
        h.stored_locks().await,
        stored,
        "{sent} forged messages created or deleted entries"
    );
    let holding = holder.backend().holder(&exclusive).await.expect("holder");
    assert_eq!(holding.map(|held| held.fence), Some(held.fence()));
    assert!(
        Locker::try_lock(&h.locker().await, &exclusive, LONG)
            .await
            .expect("try")
            .is_none(),
        "a forged message freed a held key"
    );
    for (guard, waiting) in [(held, waiting_exclusive), (permit, waiting_counted)] {
        guard.release().await.expect("the holder's lease is intact");
        let next: LockGuard = tokio::time::timeout(PROMPT, waiting)
            .await
            .expect("a real release still wakes the waiter")
            .expect("task")
            .expect("acquire");
        next.release().await.expect("release");
    }
}

/// Every switch between two kinds of lease on a key is won by the try the
/// release's wake-up caused, as a hand-off between two writers is (DESIGN
/// semantic 4), never by a backoff step.
pub async fn a_switch_between_kinds_is_woken<H: Harness>(h: &H) {
    let kinds = [
        LeaseKind::Exclusive,
        LeaseKind::Shared,
        LeaseKind::Counted { permits: 2 },
    ];
    let holder = h.locker().await;
    for held in kinds {
        for waiting in kinds.into_iter().filter(|kind| *kind != held) {
            let store = h.locker().await.backend().clone();
            let k = key("switch");
            assert_kind_hand_off_is_woken(&holder, held, store, waiting, &k).await;
        }
    }
}
