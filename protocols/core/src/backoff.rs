//! Exponential back-off with jitter, so that many gateways (or many devices
//! on one gateway) that lost the same peer do not retry in lock-step.

use std::time::Duration;

/// Delays that double from `initial` up to `max`, each drawn uniformly from
/// the upper half of the current step ("equal jitter").
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Self {
            initial,
            max: max.max(initial),
            step: initial,
        }
    }

    /// The delay to wait before the next attempt; each call grows the step.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        let jitter_nanos = fastrand::u64(0..=half.as_nanos().min(u64::MAX as u128) as u64);
        half + Duration::from_nanos(jitter_nanos)
    }

    /// Back to the initial step, after a success.
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_within_bounds_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let expected_steps = [100u64, 200, 400, 800, 1000, 1000];
        for step in expected_steps {
            let delay = backoff.next_delay();
            assert!(
                delay >= Duration::from_millis(step / 2),
                "{delay:?} < half of {step}"
            );
            assert!(delay <= Duration::from_millis(step), "{delay:?} > {step}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
