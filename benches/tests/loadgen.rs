//! `loadgen` end to end at small sizes: every phase against real hsm-vault
//! and chatd processes, and the relay phase through chatd (to the echo
//! vault) and through nginx (the Debian package nginx-light, which
//! `ops/test` installs). Asserts that every phase ran and nothing failed;
//! the figures themselves are benchmarks, not tested.

use std::process::Command;

use serde_json::Value;

#[test]
#[allow(clippy::unwrap_used)]
fn every_phase_runs_and_the_relay_echoes_every_frame_through_chatd_and_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("loadgen.json");
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("--json")
        .arg(&json_path)
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
    // Lines with their runs of spaces (table alignment) made single.
    let lines: Vec<String> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let line = |start: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{stdout}\n{stderr}"))
            .clone()
    };
    assert!(line("idle authenticated connections:").contains("20 of 20 open (0 failed)"));
    assert!(line("new authenticated connections:").contains("20 ok, 0 failed"));
    assert!(line("tunnel cycles").contains("10 ok, 0 failed"));
    // 4 connections x 100 frames each, every one echoed back whole.
    for server in ["chatd", "nginx"] {
        let expected = format!("{server} 400 frames 0 failed");
        assert!(
            lines.iter().any(|l| l.starts_with(&expected)),
            "no relay row {expected:?} in:\n{stdout}\n{stderr}"
        );
    }
    let ratio = line("ratio chatd / nginx, frames per core-second");
    assert!(
        ratio.ends_with('x') || ratio.contains("under one clock tick"),
        "{ratio}"
    );
    assert!(line("chatd round trip").contains("p99.9"));

    // The JSON report carries the same counts, with latency percentiles
    // that are ordered and counted once per operation.
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(doc["idle"]["held"], 20);
    assert!(doc["idle"]["chatd_kib_per_connection"].as_f64().unwrap() > 0.0);
    assert_eq!(doc["handshake"]["ok"], 20);
    assert_eq!(doc["handshake"]["latency"]["count"], 20);
    assert_eq!(doc["tunnel"]["latency"]["count"], 10);
    for server in ["chatd", "nginx"] {
        let run = &doc["relay"][server];
        assert_eq!(run["frames"], 400, "{server}: {run}");
        let rt = &run["round_trip"];
        assert_eq!(rt["count"], 400, "{server}: {rt}");
        let q: Vec<u64> = ["p50_us", "p90_us", "p99_us", "p99_9_us", "max_us"]
            .iter()
            .map(|k| rt[k].as_u64().unwrap())
            .collect();
        assert!(
            q[0] > 0 && q.windows(2).all(|w| w[0] <= w[1]),
            "{server}: {rt}"
        );
    }
    // At this size a server may use less than one clock tick of CPU: the
    // ratio is then null, never a made-up number.
    let ratio = &doc["relay"]["ratio_per_core_second"];
    assert!(ratio.is_null() || ratio.as_f64().unwrap() > 0.0, "{ratio}");
}
