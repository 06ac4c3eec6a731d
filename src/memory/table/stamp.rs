//! Time as a table judges it ([`Stamp`]): an argument, so that replicas
//! judge expiry by the stamp of the event they apply.

use std::{fmt, time::Duration};

use tokio::time::Instant;

/// A point in time as a table judges it: the bus's stamps for replicas,
/// tokio's clock for the standalone table.
pub(crate) trait Stamp: Copy + Ord + fmt::Debug {
    /// `ttl` later; `None` past what the type can hold.
    fn after(self, ttl: Duration) -> Option<Self>;
    /// How long from `self` until `later`.
    fn until(self, later: Self) -> Duration;
}

impl Stamp for Duration {
    fn after(self, ttl: Duration) -> Option<Self> {
        self.checked_add(ttl)
    }

    fn until(self, later: Self) -> Duration {
        later.saturating_sub(self)
    }
}

impl Stamp for Instant {
    fn after(self, ttl: Duration) -> Option<Self> {
        self.checked_add(ttl)
    }

    fn until(self, later: Self) -> Duration {
        later.saturating_duration_since(self)
    }
}
