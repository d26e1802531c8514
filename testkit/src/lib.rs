//! # testkit
//!
//! Harness for integration tests and benchmarks: SoftHSM tokens in
//! temporary folders, locating the workspace's built binaries, spawning real
//! processes on loopback, free ports, and scanning files for secret bytes.

#![allow(missing_debug_implementations, clippy::unwrap_used)]

pub mod softhsm;

use std::path::PathBuf;

/// The folder holding the workspace's built binaries (`target/debug` or
/// `target/release`), found from the running test executable, which lives in
/// `<target>/<profile>/deps/`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("E2EBK_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe has a parent").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary, with a clear panic if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: build it first (`cargo build --bins`, or run the tests through cargo, which builds them)",
        p.display()
    );
    p
}

/// Finds `needle` in `haystack`, for scanning files and logs for secrets.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

pub mod chatd;
pub mod cluster;
pub mod faults;
pub mod golden;
pub mod help;
pub mod link;
pub mod secrets;
pub mod servers;
pub mod tap;
pub mod vault;

/// A value unique within this machine, for file names.
pub fn unique() -> u128 {
    vault::unique_impl()
}

/// Random bytes from the OS.
pub fn fill_random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("OS randomness");
}

/// Writes a secret file readable by its owner only (the servers refuse
/// group- or world-readable key files).
pub fn write_private(path: &std::path::Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    f.write_all(bytes).expect("write secret file");
}

/// A TCP port free right now on 127.0.0.1 (for servers that must restart on
/// the same port), reserved for this test process until it exits.
///
/// Chosen below the kernel's ephemeral range: a port handed out by
/// `bind(0)` is also what `connect()` picks as a local port, so under load
/// an outgoing connection could take it before the server binds it.
///
/// A port that is free when checked can still be picked by another test
/// process (nextest runs each test in its own) before our server binds it:
/// with a few dozen ports per cluster test that birthday collision failed
/// about one CI run in twenty ("Address already in use" from a replica's
/// listener). So every port handed out is also locked, with `flock`, through
/// a file named after it in a folder all test processes share; the lock
/// lives as long as this process (the kernel drops it even on kill -9), and a
/// port another process holds is never handed out here.
pub fn free_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u16, ephemeral_low.max(10_001));
    let mut seed = [0u8; 2];
    for _ in 0..1000 {
        fill_random(&mut seed);
        let port = lo + u16::from_le_bytes(seed) % (hi - lo);
        if reserve_port(port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free port reservable in {lo}..{hi} after 1000 tries (locks in {})",
        port_lock_dir().display()
    );
}

/// Where the per-port lock files of [`free_port`] live: one folder for every
/// test process of this machine.
fn port_lock_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("e2ebk-test-ports")
}

/// Takes the cross-process lock on `port`; false if another process (or an
/// earlier call in this one) holds it.
fn reserve_port(port: u16) -> bool {
    use std::sync::Mutex;
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let dir = port_lock_dir();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("cannot create the port lock folder {}: {e}", dir.display());
    }
    let path = dir.join(port.to_string());
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => panic!("cannot open the port lock {}: {e}", path.display()),
    };
    // A second open file description of the same file conflicts with the
    // first, so this also refuses a port this process already holds.
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            HELD.lock().unwrap_or_else(|p| p.into_inner()).push(file);
            true
        }
        Err(rustix::io::Errno::WOULDBLOCK) => false,
        Err(e) => panic!("cannot lock the port lock {}: {e}", path.display()),
    }
}

/// A GET on an admin listener; returns (status, body) whatever the status.
/// Panics if nothing answers (5 s to connect, 10 s of silence).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::time::Duration;
    // Status codes are answers here, and a proxy from the environment
    // must not come between a test and loopback.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_per_read(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .build()
        .into();
    let mut response = agent
        .get(format!("http://{addr}{path}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {path} from the admin listener at {addr}: {e}"));
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("read the answer to GET {path} from {addr}: {e}"));
    (status, body)
}

/// Value of an unlabelled Prometheus metric (or a labelled one, given the
/// full `name{labels}` prefix) in a `/metrics` body; 0 if absent.
pub fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(k, _)| *k == name)
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod port_tests {
    use super::*;

    /// Without the locks, a thousand picks from ~22,000 ports repeat one
    /// almost surely (the birthday bound gives ~22 repeats expected); with
    /// them, none may.
    #[test]
    fn a_port_is_handed_out_once_and_its_lock_is_seen_by_others() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let port = free_port();
            assert!(seen.insert(port), "port {port} was handed out twice");
        }
        // Another process opens the same lock file as a new open file
        // description, exactly as done here: it must find the lock taken.
        let port = *seen.iter().next().unwrap();
        let other = std::fs::OpenOptions::new()
            .write(true)
            .open(port_lock_dir().join(port.to_string()))
            .unwrap();
        assert_eq!(
            rustix::fs::flock(&other, rustix::fs::FlockOperation::NonBlockingLockExclusive),
            Err(rustix::io::Errno::WOULDBLOCK)
        );
    }
}
