//! How long a request may keep its lock: until its lease is lost, or its
//! longest hold has passed, whichever comes first.
//!
//! The watch is armed only once the handler or the body has to wait: a
//! request that is answered in one go never arms a timer.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;

use super::{LockRejection, held::Holding};

type Watch = Pin<Box<dyn Future<Output = Ended> + Send>>;

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
    /// The hold of a lock taken just now.
    pub(crate) fn new(max_hold: Duration) -> Self {
        Hold {
            deadline: Instant::now() + max_hold,
            max_hold,
            watch: None,
        }
    }

    /// Before polling what runs under `holding`: ready once the request
    /// must stop, if the watch is armed.
    pub(crate) fn poll_ended(
        &mut self,
        holding: &Holding,
        cx: &mut Context<'_>,
    ) -> Poll<LockRejection> {
        match self.watch.as_mut() {
            Some(watch) => watch
                .as_mut()
                .poll(cx)
                .map(|ended| self.rejection(holding, ended)),
            None => Poll::Pending,
        }
    }

    /// After what runs under `holding` said it has to wait: arms the watch
    /// (so this task wakes when the request must stop), and polls it.
    pub(crate) fn poll_armed(
        &mut self,
        holding: &Holding,
        cx: &mut Context<'_>,
    ) -> Poll<LockRejection> {
        if self.watch.is_none() {
            let (lost, deadline) = (holding.lost(), self.deadline);
            self.watch = Some(Box::pin(async move {
                tokio::select! {
                    biased;
                    () = lost => Ended::Lost,
                    () = tokio::time::sleep_until(deadline) => Ended::HeldTooLong,
                }
            }));
        }
        self.poll_ended(holding, cx)
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
        false => hold.poll_ended(holding, cx),
    }
}
