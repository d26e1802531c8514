//! `loadgen` end to end at small sizes: every phase against real hsm-vault
//! and chatd processes, and the relay phase through chatd (to the echo
//! vault) and through nginx (the Debian package nginx-light, which
//! `ops/test` installs). Asserts that every phase ran and nothing failed;
//! the figures themselves are benchmarks, not tested.

use std::process::Command;

#[test]
fn every_phase_runs_and_the_relay_echoes_every_frame_through_chatd_and_nginx() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--connections",
            "20",
            "--handshakes",
            "20",
            "--concurrency",
            "4",
            "--tunnel-ops",
            "10",
            "--tunnel-concurrency",
            "2",
            "--relay-frames",
            "400",
            "--relay-connections",
            "4",
            "--relay-window",
            "4",
            "--settle-secs",
            "0",
            "--bare-rounds",
            "1",
            "--phase-timeout-secs",
            "120",
        ])
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadgen failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let line = |start: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{stdout}\n{stderr}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(line("idle authenticated connections:").contains("20 of 20 open (0 failed)"));
    assert!(line("new authenticated connections:").contains("20 ok, 0 failed"));
    assert!(line("tunnel cycles").contains("10 ok, 0 failed"));
    // 4 connections x 100 frames each, every one echoed back whole.
    for server in ["chatd", "nginx"] {
        let expected = format!("{server} 400 frames 0 failed");
        assert!(
            stdout
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .any(|l| l.starts_with(&expected)),
            "no relay row {expected:?} in:\n{stdout}\n{stderr}"
        );
    }
    assert!(line("ratio chatd / nginx, frames per core-second").ends_with('x'));
}
