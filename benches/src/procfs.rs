//! What the load generator reads about other processes from `/proc`:
//! resident memory and CPU time consumed, so results can be normalised per
//! connection and per core-second.

use std::path::PathBuf;
use std::time::Duration;

fn proc_file(pid: u32, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{name}"))
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(proc_file(pid, "status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Current resident set of `pid`, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`;
/// 100 on every Linux this runs on, used if `getconf` is missing).
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// User + system CPU time `pid` has consumed so far, all its threads
/// (including ones that have exited), at clock-tick resolution.
pub fn cpu_time(pid: u32, ticks_per_sec: u64) -> Option<Duration> {
    let text = std::fs::read_to_string(proc_file(pid, "stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its
    // closing parenthesis are space-separated: state is field 3, utime 14,
    // stime 15.
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_micros(
        ticks * 1_000_000 / ticks_per_sec.max(1),
    ))
}

/// Number of threads of `pid`.
pub fn threads(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(proc_file(pid, "status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The machine's CPU pressure (`/proc/pressure/cpu`, "some" line): the
/// share of time, in percent over the last 10 and 60 seconds, in which
/// runnable tasks waited for a CPU. Near 0 on a quiet machine; another
/// session's build on the same cores shows up here. `None` without PSI.
pub fn cpu_pressure() -> Option<(f64, f64)> {
    let text = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    let some = text.lines().find(|l| l.starts_with("some "))?;
    let field = |name: &str| -> Option<f64> {
        some.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some((field("avg10")?, field("avg60")?))
}

/// [`cpu_pressure`] as a short phrase for reports.
pub fn cpu_pressure_note() -> String {
    match cpu_pressure() {
        Some((a10, a60)) => format!("CPU pressure {a10:.0}% (10 s) / {a60:.0}% (60 s)"),
        None => "CPU pressure unknown (no /proc/pressure/cpu)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|k| k > 0));
        assert!(cpu_time(me, clock_ticks_per_sec()).is_some());
        assert!(threads(me).is_some_and(|t| t >= 1));
        assert!(rss_kib(u32::MAX).is_none());
    }
}
