//! The clock in-memory fences never fall below, so that a fence handed out
//! after the process restarts (or a bus is recreated) is greater than every
//! fence handed out before.
//!
//! A fence is the wall clock in microseconds since the Unix epoch, or one
//! more than the last fence when that is greater. Counting on lets a burst
//! of grants run ahead of the clock, but only by [`AHEAD`]: past it, a grant
//! waits for the clock's next microsecond (under a microsecond; so a shard
//! of the table grants at most one lock per microsecond in a long burst).
//! A restart then never repeats a fence as long as it takes longer than
//! [`AHEAD`] and the clock does not step back across it by more than the
//! restart took beyond that.
//!
//! Microseconds keep every fence below 2^53 (exact as a JSON number, and an
//! `i64` column holds it) until the year 2255.

use std::time::Duration;

use crate::backend::wall_clock;

/// How far fences may run ahead of the wall clock in a burst: 1 ms.
pub(crate) const AHEAD: Duration = Duration::from_millis(1);

/// The fence after `last`, by the rule in the [module docs](self), reading
/// the clock through `clock`.
pub(crate) fn next_fence(last: u64, mut clock: impl FnMut() -> u64) -> u64 {
    let ahead = AHEAD.as_micros() as u64;
    let now = clock();
    if last.saturating_sub(now) == ahead {
        // At the bound: wait for the clock to tick. Any change ends the
        // wait, so a clock that steps back meanwhile cannot prolong it.
        let later = loop {
            let read = clock();
            if read != now {
                break read;
            }
            std::hint::spin_loop();
        };
        return later.max(last + 1);
    }
    // Further ahead than the bound only if the clock stepped back: waiting
    // could take as long as the step, so the count goes on.
    now.max(last + 1)
}

/// The fence source of a standalone table: the next fence by the wall
/// clock, recorded as the last.
pub(crate) fn clock_fence(last: &mut u64) -> u64 {
    *last = next_fence(*last, wall_clock::now);
    *last
}

#[cfg(test)]
mod tests {
    use super::*;

    const AHEAD_US: u64 = AHEAD.as_micros() as u64;

    #[test]
    fn fences_follow_the_clock_when_it_is_ahead() {
        assert_eq!(next_fence(0, || 1_000_000), 1_000_000);
        assert_eq!(next_fence(999_999, || 1_000_000), 1_000_000);
    }

    #[test]
    fn a_burst_counts_on_past_the_clock_up_to_the_bound() {
        let mut last = 0;
        for _ in 0..AHEAD_US + 1 {
            last = next_fence(last, || 500);
        }
        assert_eq!(last, 500 + AHEAD_US, "one per grant until the bound");
    }

    #[test]
    fn at_the_bound_a_grant_waits_for_the_clock_to_tick() {
        let mut reads = [500, 500, 500, 501].into_iter();
        let fence = next_fence(500 + AHEAD_US, || reads.next().unwrap_or(501));
        assert_eq!(fence, 501 + AHEAD_US);
        assert_eq!(reads.next(), None, "it read the clock until it moved");
    }

    #[test]
    fn a_clock_that_stepped_back_far_does_not_stall_grants() {
        let calls = std::cell::Cell::new(0);
        let fence = next_fence(10_000_000, || {
            calls.set(calls.get() + 1);
            5
        });
        assert_eq!(fence, 10_000_001);
        assert_eq!(calls.get(), 1);
    }
}
