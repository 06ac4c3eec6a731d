//! The wall clock as fences count it: microseconds since the Unix epoch.
//!
//! Fences start from a wall-clock reading so that they keep growing when a
//! store loses its state (the memory table's own clock, a NATS stream's
//! creation time): every such reading goes through here, so no two
//! backends can disagree on the unit or the epoch.

use std::time::{SystemTime, UNIX_EPOCH};

/// `time` in microseconds since the Unix epoch (0 before it, where fences
/// then simply count).
pub(crate) fn micros(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
    })
}

/// This machine's wall clock, as [`micros`].
pub(crate) fn now() -> u64 {
    micros(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_wall_clock_is_in_microseconds_since_the_epoch() {
        // 2026-01-01 and 2255 (2^53 µs) bound any machine running this.
        let now = now();
        assert!((1_767_225_600_000_000..1 << 53).contains(&now), "{now}");
        assert_eq!(micros(UNIX_EPOCH + Duration::from_micros(7)), 7);
        assert_eq!(micros(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
