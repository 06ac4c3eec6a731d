//! How long a request may keep its lock: until its lease is lost, or its
//! longest hold has passed, whichever comes first.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use smol_str::SmolStr;

use super::{LockRejection, held::Holding};

/// Watches one request's lease while its handler and body run.
pub(crate) struct Hold {
    ended: Pin<Box<dyn Future<Output = Ended> + Send>>,
    key: SmolStr,
    fence: u64,
    max_hold: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    Lost,
    HeldTooLong,
}

impl Hold {
    pub(crate) fn new(holding: &Holding, max_hold: Duration) -> Self {
        let lost = holding.lost();
        let deadline = tokio::time::Instant::now() + max_hold;
        let ended = Box::pin(async move {
            tokio::select! {
                biased;
                () = lost => Ended::Lost,
                () = tokio::time::sleep_until(deadline) => Ended::HeldTooLong,
            }
        });
        Hold {
            ended,
            key: holding.label(),
            fence: holding.fence(),
            max_hold,
        }
    }

    /// Ready, with why, once the request must stop; logged then.
    pub(crate) fn poll_ended(&mut self, cx: &mut Context<'_>) -> Poll<LockRejection> {
        let ended = std::task::ready!(self.ended.as_mut().poll(cx));
        let (key, fence) = (&self.key, self.fence);
        Poll::Ready(match ended {
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
        })
    }
}
