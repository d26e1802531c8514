//! The one retry helper: [`protocol_spec::retry::Backoff`] (SPEC.md 9.4),
//! fed with OS randomness for the servers' own reconnects.

use std::time::Duration;

pub use protocol_spec::retry::Backoff;
use rand::Rng;

/// The next delay of `b`, jittered with thread-local randomness.
pub fn next_delay(b: &mut Backoff) -> Duration {
    b.next_delay(rand::rng().random())
}
