//! The retry policy of SPEC.md section 9.4 as code: exponential backoff
//! with full jitter. Pure: the caller supplies the random bits, so this
//! crate stays free of IO and global randomness.

use std::time::Duration;

/// Delays for successive retries: a uniformly random duration in
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

    /// The client policy of SPEC.md 9.4: 250 ms doubling, capped at 10 s.
    pub fn client_default() -> Self {
        Backoff::new(Duration::from_millis(250), Duration::from_secs(10))
    }

    /// Retries made so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next retry, given 64 random bits.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let nanos = cap.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(if nanos == u64::MAX {
            random
        } else {
            random % (nanos + 1)
        })
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
    fn grows_caps_and_jitters() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut seen_small = false;
        for i in 0..30u64 {
            let d = b.next_delay(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let cap = Duration::from_millis(100 * (1u64 << i.min(20))).min(Duration::from_secs(1));
            assert!(d <= cap, "{d:?} > {cap:?}");
            seen_small |= d < cap / 2;
        }
        assert!(seen_small, "delays must be jittered");
        assert_eq!(b.attempts(), 30);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert!(
            b.next_delay(u64::MAX) <= Duration::from_millis(100),
            "reset restarts at base"
        );
    }
}
