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
/// the same port).
///
/// Chosen below the kernel's ephemeral range: a port handed out by
/// `bind(0)` is also what `connect()` picks as a local port, so under load
/// an outgoing connection could take it before the server binds it.
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
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
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
