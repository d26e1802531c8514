//! The one retry helper: exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

/// Delays for successive retries: a random duration in
/// `[0, min(max, base * 2^attempt)]` ("full jitter"), so many clients that
/// failed together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// Retries made so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let nanos = cap.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }

    /// Call after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for i in 0..30 {
            let d = b.next_delay();
            let cap = Duration::from_millis(100 * (1u64 << i.min(20))).min(Duration::from_secs(1));
            assert!(d <= cap, "{d:?} > {cap:?}");
        }
        assert_eq!(b.attempts(), 30);
        b.reset();
        assert_eq!(b.attempts(), 0);
    }
}
