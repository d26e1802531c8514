//! The one retry helper: [`protocol_spec::retry::Backoff`] (SPEC.md 9.4),
//! fed with OS randomness for the servers' own reconnects.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use protocol_spec::retry::Backoff;

/// The next delay of `b`, jittered with OS randomness.
pub fn next_delay(b: &mut Backoff) -> Duration {
    b.next_delay(jitter_bits())
}

/// Jitter only has to differ between processes, not be secret: should the
/// OS refuse randomness, the clock's nanoseconds still spread retries
/// (where a panic would take the reconnect loop down with it).
fn jitter_bits() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_the_cap_and_vary() {
        let cap = Duration::from_millis(100);
        let delays: Vec<Duration> = (0..16)
            .map(|_| next_delay(&mut Backoff::new(cap, cap)))
            .collect();
        assert!(delays.iter().all(|d| *d <= cap), "{delays:?}");
        // 16 draws from 100,000,001 nanosecond values are never all equal
        // unless the jitter is constant.
        assert!(delays.iter().any(|d| *d != delays[0]), "{delays:?}");
    }
}
