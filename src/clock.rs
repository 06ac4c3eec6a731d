//! The clock that leases in this process's stores are judged by.
//!
//! A lease needs two clock readings: one when it starts, and one when its
//! release (or the next try on its key) asks whether it has run out. The
//! precise monotonic clock costs 20 to 40 ns a reading on a virtual machine,
//! as much as the rest of an uncontended lock. The coarse one (the kernel's
//! last tick: `CLOCK_MONOTONIC_COARSE` on Linux, read through `coarsetime`)
//! costs about 5 ns and is just as monotonic; what it gives up is
//! resolution: it lags real time by up to one kernel tick (1 to 10 ms,
//! 4 ms on most distributions' kernels).
//!
//! For a store in this process that lag is harmless, because the store and
//! the holder read the same clock: the holder reads it before the store
//! does, so the holder's lease never ends after the store's, and both see
//! the lease run out at the same reading. The cost is that a lease may last
//! up to one tick past its ttl. Stores behind I/O are judged on the precise
//! clock, as before.

use std::time::Duration;

/// A reading of the coarse monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Tick(coarsetime::Instant);

impl Tick {
    /// The clock now. Does not touch `coarsetime`'s process-wide cache of
    /// the last reading, which every thread would otherwise write to.
    #[inline]
    pub(crate) fn now() -> Self {
        Tick(coarsetime::Instant::now_without_cache_update())
    }

    /// `ttl` later; `None` past what the clock can hold (about 136 years of
    /// uptime).
    pub(crate) fn after(self, ttl: Duration) -> Option<Self> {
        self.0.checked_add(ttl.into()).map(Tick)
    }

    /// How long from `self` until `later`; zero when `later` is not later.
    pub(crate) fn until(self, later: Self) -> Duration {
        if later <= self {
            return Duration::ZERO;
        }
        Duration::from(later.0.duration_since(self.0))
    }

    /// How long from now until `self`; zero once it has passed.
    pub(crate) fn remaining(self) -> Duration {
        Tick::now().until(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_never_go_back_and_add_up() {
        let a = Tick::now();
        let b = Tick::now();
        assert!(b >= a);
        let later = a.after(Duration::from_secs(3)).expect("in range");
        let gap = a.until(later);
        // The clock's fixed point is finer than a nanosecond, so a round
        // trip through it may lose one.
        assert!(
            gap.abs_diff(Duration::from_secs(3)) <= Duration::from_nanos(1),
            "{gap:?}"
        );
        assert_eq!(later.until(a), Duration::ZERO);
        assert!(a.after(Duration::MAX).is_none());
    }
}
