//! How long a request may keep its lock: until its lease is lost, or its
//! longest hold has passed, whichever comes first.
//!
//! Both are checked on every poll of what runs under the lock: a body that
//! is always ready never waits, so a watch alone would never see them. The
//! watch that wakes a waiting handler or body is armed only once it has to
//! wait: a request that is answered in one go never arms a timer. And since
//! nothing may poll at all (hyper stops polling the body of a client that
//! does not read), the lease is renewed no longer than the longest hold.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;

use super::{LockRejection, held::Holding};

type Watch = Pin<Box<dyn Future<Output = Ended> + Send>>;

/// What stands in for a longest hold past the clock's range: about
/// thirty years.
const FOREVER: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// Watches one request's lease while its handler and body run.
pub(crate) struct Hold {
    /// When the request must have let go: its acquisition plus `max_hold`.
    deadline: Instant,
    max_hold: Duration,
    watch: Option<Watch>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    Lost,
    HeldTooLong,
}

impl Hold {
    /// The hold of what `holding` took just now: its leases renew until
    /// `max_hold` from now, and no longer.
    pub(crate) fn new(max_hold: Duration, holding: &Holding) -> Self {
        let now = Instant::now();
        let deadline = now.checked_add(max_hold).unwrap_or_else(|| now + FOREVER);
        holding.renew_until(deadline);
        Hold {
            deadline,
            max_hold,
            watch: None,
        }
    }

    /// Before polling what runs under `holding`: ready once the request
    /// must stop.
    pub(crate) fn poll_ended(&mut self, holding: &Holding) -> Poll<LockRejection> {
        let now = Instant::now();
        let ended = if holding.is_lost_at(now) {
            Ended::Lost
        } else if now >= self.deadline {
            Ended::HeldTooLong
        } else {
            return Poll::Pending;
        };
        Poll::Ready(self.rejection(holding, ended))
    }

    /// After what runs under `holding` said it has to wait: arms the watch
    /// (so this task wakes when the request must stop), and polls it.
    pub(crate) fn poll_armed(
        &mut self,
        holding: &Holding,
        cx: &mut Context<'_>,
    ) -> Poll<LockRejection> {
        let deadline = self.deadline;
        let watch = self.watch.get_or_insert_with(|| {
            let lost = holding.lost();
            Box::pin(async move {
                tokio::select! {
                    biased;
                    () = lost => Ended::Lost,
                    () = tokio::time::sleep_until(deadline) => Ended::HeldTooLong,
                }
            })
        });
        let ended = std::task::ready!(watch.as_mut().poll(cx));
        Poll::Ready(self.rejection(holding, ended))
    }

    /// Why the request stops; logged here, with the key and fence.
    fn rejection(&self, holding: &Holding, ended: Ended) -> LockRejection {
        let (key, fence) = (holding.label(), holding.fence());
        match ended {
            Ended::Lost => {
                tracing::warn!(?key, fence, "lease lost while the request ran: stopping it");
                LockRejection::Lost {
                    key: key.to_string(),
                    fence,
                }
            }
            Ended::HeldTooLong => {
                let max_hold = self.max_hold;
                tracing::warn!(
                    ?key,
                    fence,
                    ?max_hold,
                    "request held its lock too long: stopping it"
                );
                LockRejection::HeldTooLong {
                    key: key.to_string(),
                    max_hold,
                }
            }
        }
    }
}

/// Ready once what `guard` holds must be let go, if the request holds a
/// lock at all; `arm` as for [`Hold::poll_armed`], else as for
/// [`Hold::poll_ended`].
pub(crate) fn poll_stop(
    guard: &Option<Holding>,
    hold: &mut Option<Hold>,
    arm: bool,
    cx: &mut Context<'_>,
) -> Poll<LockRejection> {
    let (Some(holding), Some(hold)) = (guard.as_ref(), hold.as_mut()) else {
        return Poll::Pending;
    };
    match arm {
        true => hold.poll_armed(holding, cx),
        false => hold.poll_ended(holding),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Locker, memory::MemoryBackend};

    #[tokio::test]
    async fn leases_renew_until_the_longest_hold_and_then_run_out() {
        const TTL: Duration = Duration::from_millis(300);
        const MAX_HOLD: Duration = Duration::from_millis(900);
        let memory = MemoryBackend::new();
        let mine = Locker::new(memory.clone()).auto_renew(true);
        let other = Locker::new(memory);
        let holding = Holding::One(mine.acquire("k", TTL).await.expect("lock"));
        let start = Instant::now();
        let mut hold = Hold::new(MAX_HOLD, &holding);
        // Twice the ttl in: only renewal kept the lease.
        tokio::time::sleep(2 * TTL).await;
        assert!(other.try_lock("k", TTL).await.expect("try").is_none());
        assert!(hold.poll_ended(&holding).is_pending());
        // Nobody looks at the hold again: the lease runs out on its own.
        let theirs = tokio::time::timeout_at(start + MAX_HOLD + TTL + TTL, async {
            loop {
                if let Some(guard) = other.try_lock("k", TTL).await.expect("try") {
                    return guard;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("renewed past the longest hold");
        assert!(holding.is_lost_at(Instant::now()));
        assert!(hold.poll_ended(&holding).is_ready());
        drop(theirs);
    }
}
