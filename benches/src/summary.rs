//! Ratios between criterion results of one run.
//!
//! Criterion reports absolute times; our reports are ratios against a
//! reference measured in the same run. After the benchmarks of a binary
//! have run, [`Estimates`] reads the medians criterion just wrote
//! (`<criterion dir>/<group>/<bench>/new/estimates.json`), ignoring any
//! older than the start of this process, so a ratio never mixes runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Where criterion writes its results, found the way criterion finds it:
/// `CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else the target
/// directory `cargo metadata` reports, else `./target/criterion`.
pub fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("criterion");
    }
    let from_metadata = std::env::var_os("CARGO").and_then(|cargo| {
        let out = std::process::Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["target_directory"].as_str().map(PathBuf::from)
    });
    from_metadata
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("criterion")
}

/// Medians of this run's benchmarks.
#[derive(Debug)]
pub struct Estimates {
    dir: PathBuf,
    since: SystemTime,
}

impl Estimates {
    /// Results written after `since` (normally this process's start).
    pub fn new(since: SystemTime) -> Self {
        Estimates {
            dir: criterion_dir(),
            since,
        }
    }

    /// The median of `group/bench` if this run measured it.
    pub fn median(&self, group: &str, bench: &str) -> Option<Duration> {
        let path = self
            .dir
            .join(group)
            .join(bench)
            .join("new")
            .join("estimates.json");
        fresh(&path, self.since)?;
        let text = std::fs::read_to_string(&path).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let ns = v["median"]["point_estimate"].as_f64()?;
        Some(Duration::from_secs_f64(ns / 1e9))
    }
}

fn fresh(path: &Path, since: SystemTime) -> Option<()> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    (modified >= since).then_some(())
}

/// Formats a duration with a unit suited to its size.
pub fn fmt_duration(d: Duration) -> String {
    let ns = d.as_secs_f64() * 1e9;
    if ns < 1e3 {
        format!("{ns:.1} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}
