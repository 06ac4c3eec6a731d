//! The task behind [`Election::observe`](super::Election::observe): one
//! per election and process, while anybody watches.

use std::{sync::Arc, time::Duration};

use smol_str::SmolStr;
use tokio::sync::watch;

use super::Leader;
use crate::backend::{Backend, Holding, Subscription};

/// The first pause after the store failed a read; doubles to `RETRY_MAX`.
const RETRY_START: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Reads the election's holder after every wake-up of its key, and when
/// the holder's lease may have run out; publishes every change until the
/// last receiver is gone.
pub(super) async fn run(
    backend: Arc<dyn Backend>,
    key: SmolStr,
    ttl: Duration,
    leader: watch::Sender<Option<Leader>>,
) {
    let mut wakeups: Option<Subscription> = None;
    let mut retry = RETRY_START;
    loop {
        // Subscribed before the read: a change after it wakes us.
        if wakeups.is_none() {
            match backend.subscribe(&key).await {
                Ok(subscription) => wakeups = Some(subscription),
                Err(err) => {
                    tracing::debug!(?key, error = %err, "no wake-ups for an election observer")
                }
            }
        }
        let pause = match backend.holder(&key).await {
            Ok(holding) => {
                retry = RETRY_START;
                let next = recheck_after(holding.as_ref(), ttl, wakeups.is_some());
                let now = holding.map(Leader::of);
                leader.send_if_modified(|current| {
                    let changed = *current != now;
                    *current = now;
                    changed
                });
                next
            }
            Err(err) => {
                tracing::debug!(?key, error = %err, "election observer could not read the leader");
                let pause = retry;
                retry = (retry * 2).min(RETRY_MAX);
                pause
            }
        };
        let woken = async {
            match wakeups.as_mut() {
                Some(subscription) => subscription.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = leader.closed() => break,
            () = woken => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
    if let Some(mut subscription) = wakeups {
        // An observer never queued for the key: nothing to give up.
        subscription.done();
    }
}

/// When to read again with no wake-up: just after the holder's lease may
/// have run out, one ttl at most (a new leader wakes us sooner), and
/// sooner without wake-ups.
fn recheck_after(holding: Option<&Holding>, ttl: Duration, woken: bool) -> Duration {
    let longest = if woken { ttl } else { ttl / 4 };
    holding
        .and_then(|holding| holding.remaining)
        .map_or(longest, |left| left.min(longest))
        + Duration::from_millis(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Token;

    #[test]
    fn a_reading_is_due_when_the_lease_may_have_run_out() {
        let ttl = Duration::from_secs(4);
        let ms = Duration::from_millis;
        let held = Holding::new(Token::new(), 7, Some(ms(1500)));
        assert_eq!(recheck_after(Some(&held), ttl, true), ms(1501));
        assert_eq!(recheck_after(None, ttl, true), ms(4001));
        assert_eq!(recheck_after(None, ttl, false), ms(1001));
        let forever = Holding::new(Token::new(), 7, None);
        assert_eq!(recheck_after(Some(&forever), ttl, true), ms(4001));
    }
}
