//! The clock that leases in this process's stores are judged by.
//!
//! A lease needs two clock readings: one when it starts, and one when its
//! release (or the next try on its key) asks whether it has run out. The
//! precise monotonic clock costs 20 to 40 ns a reading on a virtual machine,
//! as much as the rest of an uncontended lock. On Linux the coarse one (the
//! kernel's last tick, `CLOCK_MONOTONIC_COARSE`, read through `coarsetime`)
//! costs a few ns and is just as monotonic; what it gives up is resolution:
//! it moves in kernel ticks (1 to 10 ms, 4 ms on most distributions'
//! kernels), and how far a reading runs behind real time varies by up to
//! about two ticks. Leases allow for that *lag*. Elsewhere the precise clock
//! is used, with no lag.

use std::{sync::OnceLock, time::Duration};

/// A reading of the clock that leases in stores inside this process are
/// judged by: the kernel's coarse monotonic clock on Linux
/// (`CLOCK_MONOTONIC_COARSE`, a few ns a reading), the precise monotonic
/// clock elsewhere.
///
/// Judged by two coarse readings, a span of real time can look up to the
/// clock's [`lag`](Self::lag) shorter than it is. [`after`](Self::after)
/// allows for it, so a lease judged by these readings lasts at least its
/// ttl. A store that answers
/// [`Backend::try_acquire_now`](crate::backend::Backend::try_acquire_now)
/// judges its leases by this clock: the holder counts its lease from a
/// reading taken before the call, so it never counts on a lease the store
/// has ended.
///
/// ```
/// use std::time::Duration;
/// use tower_lock::backend::Tick;
///
/// let start = Tick::now();
/// let end = start.after(Duration::from_secs(5)).expect("in range");
/// assert!(start.until(end) >= Duration::from_secs(5));
/// assert!(Tick::now() < end);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(u64);

impl Tick {
    /// The clock now.
    #[inline]
    pub fn now() -> Self {
        Tick(source::read())
    }

    /// The reading at which a lease of `ttl` that started at `self` has run
    /// for at least `ttl` of real time: `ttl` plus the clock's lag later.
    /// `None` past what the clock can hold (about 136 years of uptime).
    pub fn after(self, ttl: Duration) -> Option<Self> {
        let span = source::units(ttl.checked_add(Tick::lag())?)?;
        self.0.checked_add(span).map(Tick)
    }

    /// How long from `self` until `later`; zero when `later` is not later.
    pub fn until(self, later: Self) -> Duration {
        source::duration(later.0.saturating_sub(self.0))
    }

    /// How long from now until `self`; zero once it has passed.
    pub fn remaining(self) -> Duration {
        Tick::now().until(self)
    }

    /// How much a lease judged by two readings may lose against real time,
    /// which [`after`](Self::after) adds: two ticks of the coarse clock and
    /// a millisecond (9 ms on most Linux kernels), zero for the precise
    /// clock.
    pub fn lag() -> Duration {
        static LAG: OnceLock<Duration> = OnceLock::new();
        *LAG.get_or_init(source::lag)
    }
}

/// Linux: readings of `CLOCK_MONOTONIC_COARSE` through `coarsetime` (which
/// calls the C library, and so the vDSO, in fixed point: 2^-32 s units), its
/// resolution through `nix` (once).
#[cfg(any(target_os = "linux", target_os = "android"))]
mod source {
    use std::time::Duration;

    use nix::time::{ClockId, clock_getres};

    /// The longest kernel tick (100 Hz): the lag assumed should the kernel
    /// not tell.
    const LONGEST_TICK: Duration = Duration::from_millis(10);

    #[inline]
    pub(super) fn read() -> u64 {
        // Not `now()`, which also writes a process-wide cache of the last
        // reading that every thread would contend on.
        coarsetime::Instant::now_without_cache_update().as_ticks()
    }

    pub(super) fn units(span: Duration) -> Option<u64> {
        // coarsetime saturates rather than fail: a span it cannot hold is
        // refused here instead.
        (span.as_secs() < 1 << 32).then(|| coarsetime::Duration::from(span).as_ticks())
    }

    pub(super) fn duration(units: u64) -> Duration {
        coarsetime::Duration::from_ticks(units).into()
    }

    /// Two ticks and a millisecond. The kernel moves the coarse clock in
    /// whole ticks, out of step with real time, and a CPU waking from
    /// tickless idle brings it up to date at once: on a 4 ms kernel its lag
    /// was seen anywhere between 0.02 and 7.2 ms, so a lease judged by two
    /// readings can lose up to about two ticks against real time. The
    /// millisecond is for a tick that comes late.
    pub(super) fn lag() -> Duration {
        let tick = clock_getres(ClockId::CLOCK_MONOTONIC_COARSE).map_or(LONGEST_TICK, |tick| {
            let seconds = u64::try_from(tick.tv_sec()).unwrap_or(0);
            let nanos = u32::try_from(tick.tv_nsec()).unwrap_or(0);
            Duration::new(seconds, nanos).min(LONGEST_TICK)
        });
        2 * tick + Duration::from_millis(1)
    }
}

/// Elsewhere: the precise monotonic clock, in nanoseconds from the first
/// reading in the process.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod source {
    use std::{
        sync::LazyLock,
        time::{Duration, Instant},
    };

    static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

    pub(super) fn read() -> u64 {
        u64::try_from(ORIGIN.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(super) fn units(span: Duration) -> Option<u64> {
        u64::try_from(span.as_nanos()).ok()
    }

    pub(super) fn duration(units: u64) -> Duration {
        Duration::from_nanos(units)
    }

    pub(super) fn lag() -> Duration {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_never_go_back_and_a_lease_allows_for_the_lag() {
        let a = Tick::now();
        let b = Tick::now();
        assert!(b >= a);
        let ttl = Duration::from_secs(3);
        let end = a.after(ttl).expect("in range");
        // The clock's fixed point may lose a nanosecond each way.
        let span = a.until(end);
        assert!(
            span.abs_diff(ttl + Tick::lag()) <= Duration::from_nanos(2),
            "{span:?}"
        );
        assert_eq!(end.until(a), Duration::ZERO);
        assert!(a.after(Duration::MAX).is_none());
        // Two of the longest ticks (100 Hz) and a millisecond at most.
        assert!(
            Tick::lag() <= Duration::from_millis(21),
            "{:?}",
            Tick::lag()
        );
    }
}
