//! Latency distributions for the load generator: an HDR histogram of
//! microseconds (three significant digits, up to an hour), reported as
//! p50 / p90 / p99 / p99.9 / max in the table and in the JSON report.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// One phase's operation latencies.
#[derive(Clone)]
pub struct Latencies(Histogram<u64>);

impl std::fmt::Debug for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Latencies({})", self.summary())
    }
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

/// The longest latency recorded as itself; longer ones count as this.
const MAX_US: u64 = 3_600_000_000;

impl Latencies {
    pub fn new() -> Self {
        // Three significant digits over 1 µs .. 1 h: the bounds are
        // constants, so this cannot fail.
        let h = Histogram::new_with_bounds(1, MAX_US, 3).expect("histogram bounds");
        Latencies(h)
    }

    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(us.clamp(1, MAX_US));
    }

    /// Adds another phase task's latencies to these.
    pub fn merge(&mut self, other: &Latencies) {
        // Both have the same bounds (`new`), which is all `add` checks.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The latency at `quantile` (0.5 is the median); zero when empty.
    pub fn at(&self, quantile: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_micros(self.0.value_at_quantile(quantile))
    }

    pub fn max(&self) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_micros(self.0.max())
    }

    /// `p50 1.20 ms  p90 …  p99 …  p99.9 …  max …`, for the table.
    pub fn summary(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            fmt(self.at(0.5)),
            fmt(self.at(0.9)),
            fmt(self.at(0.99)),
            fmt(self.at(0.999)),
            fmt(self.max())
        )
    }

    /// The same figures in microseconds, for the JSON report.
    pub fn to_json(&self) -> Value {
        let us = |d: Duration| d.as_micros() as u64;
        json!({
            "count": self.count(),
            "p50_us": us(self.at(0.5)),
            "p90_us": us(self.at(0.9)),
            "p99_us": us(self.at(0.99)),
            "p99_9_us": us(self.at(0.999)),
            "max_us": us(self.max()),
        })
    }
}

fn fmt(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        // 1..=1000 ms, split over two tasks' histograms.
        for ms in 1..=1000u64 {
            let h = if ms % 2 == 0 { &mut a } else { &mut b };
            h.record(Duration::from_millis(ms));
        }
        a.merge(&b);
        assert_eq!(a.count(), 1000);
        let near = |d: Duration, ms: u64| {
            let got = d.as_secs_f64() * 1e3;
            assert!(
                (got - ms as f64).abs() <= ms as f64 * 0.002,
                "{got} ms, expected {ms}"
            );
        };
        near(a.at(0.5), 500);
        near(a.at(0.9), 900);
        near(a.at(0.99), 990);
        near(a.at(0.999), 999);
        near(a.max(), 1000);
        assert_eq!(a.to_json()["count"], 1000);
        assert_eq!(Latencies::new().at(0.99), Duration::ZERO);
    }
}
