//! When a store may have lost its state, and what that holds back.
//!
//! After a Redis restart without persistence, or a NATS stream created
//! again, an old lease is gone from the store while its holder still counts
//! on it until its next renewal fails. A lock's fence makes a stale writer
//! harmless to a resource; an election's leader, though, acts on its
//! leadership itself. So a backend that can tell the store lost state
//! grants no lease that carries a value (an election's) for one ttl after
//! it noticed: by then every holder of an older lease has counted it lost.

use std::{sync::Mutex, time::Duration};

use tokio::time::Instant;

use super::AcquireRequest;

#[derive(Debug, Default)]
pub(crate) struct StateLoss {
    noticed: Mutex<Option<Instant>>,
}

impl StateLoss {
    /// The store may have lost its state just now.
    pub(crate) fn notice(&self) {
        *crate::sync::lock(&self.noticed) = Some(Instant::now());
    }

    /// How long `request` must still wait before it may be granted; `None`
    /// when it may go ahead (no value, or nothing noticed within its ttl).
    pub(crate) fn holds_back(&self, request: &AcquireRequest<'_>) -> Option<Duration> {
        request.value?;
        let noticed = (*crate::sync::lock(&self.noticed))?;
        let left = request.ttl.checked_sub(noticed.elapsed())?;
        (!left.is_zero()).then_some(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Token;

    #[tokio::test(start_paused = true)]
    async fn valued_leases_wait_one_ttl_after_a_loss_and_plain_ones_never() {
        let loss = StateLoss::default();
        let ttl = Duration::from_millis(100);
        let plain = AcquireRequest::new("k", Token::new(), ttl);
        let valued = plain.value(Some("node-a"));
        assert_eq!(loss.holds_back(&valued), None);
        loss.notice();
        assert_eq!(loss.holds_back(&plain), None);
        assert_eq!(loss.holds_back(&valued), Some(ttl));
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(loss.holds_back(&valued), Some(Duration::from_millis(40)));
        tokio::time::advance(Duration::from_millis(40)).await;
        assert_eq!(loss.holds_back(&valued), None);
    }
}
