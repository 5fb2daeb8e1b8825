//! The clocks a plug-in reads through WASI: the wall clock and a monotonic
//! clock, both at [`CLOCK_RESOLUTION`], the resolution of the host's
//! `now-ms`. Untrusted code gets no finer clock: a nanosecond clock would
//! let it time the gateway's and other plug-ins' work (timing side channels).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

pub(crate) const CLOCK_RESOLUTION: Duration = Duration::from_millis(1);

/// Unix time in whole milliseconds, as `kite_core::now_ms` tells it.
pub(crate) struct CoarseWallClock;

impl HostWallClock for CoarseWallClock {
    fn resolution(&self) -> Duration {
        CLOCK_RESOLUTION
    }

    fn now(&self) -> Duration {
        truncated(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        )
    }
}

/// Time since the clock was made (with the plug-in's store), in whole
/// milliseconds.
pub(crate) struct CoarseMonotonicClock {
    start: Instant,
}

impl Default for CoarseMonotonicClock {
    fn default() -> Self {
        Self {
            start: Instant::now(),
        }
    }
}

impl HostMonotonicClock for CoarseMonotonicClock {
    fn resolution(&self) -> u64 {
        nanos(CLOCK_RESOLUTION)
    }

    fn now(&self) -> u64 {
        nanos(truncated(self.start.elapsed()))
    }
}

/// `time` rounded down to a multiple of [`CLOCK_RESOLUTION`].
fn truncated(time: Duration) -> Duration {
    let resolution = CLOCK_RESOLUTION.as_nanos();
    let nanos = time.as_nanos();
    Duration::from_nanos(u64::try_from(nanos - nanos % resolution).unwrap_or(u64::MAX))
}

fn nanos(time: Duration) -> u64 {
    u64::try_from(time.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_cut_to_whole_milliseconds() {
        let cases = [
            (Duration::ZERO, Duration::ZERO),
            (Duration::from_nanos(999_999), Duration::ZERO),
            (Duration::from_millis(1), Duration::from_millis(1)),
            (Duration::from_nanos(1_999_999), Duration::from_millis(1)),
            (
                Duration::new(1_763_852_400, 123_456_789),
                Duration::new(1_763_852_400, 123_000_000),
            ),
        ];
        for (time, expected) in cases {
            assert_eq!(truncated(time), expected, "{time:?}");
        }
    }

    #[test]
    fn the_clocks_tell_whole_milliseconds_like_now_ms() {
        let wall = CoarseWallClock;
        let monotonic = CoarseMonotonicClock::default();
        assert_eq!(wall.resolution(), Duration::from_millis(1));
        assert_eq!(monotonic.resolution(), 1_000_000);
        for _ in 0..1_000 {
            let before = kite_core::now_ms();
            let now = wall.now();
            let after = kite_core::now_ms();
            assert_eq!(now.subsec_nanos() % 1_000_000, 0, "{now:?}");
            let ms = i64::try_from(now.as_millis()).unwrap();
            assert!(
                (before..=after).contains(&ms),
                "{before} <= {ms} <= {after}"
            );
            assert_eq!(monotonic.now() % 1_000_000, 0);
        }
    }
}
