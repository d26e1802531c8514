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
pub mod tap;
pub mod vault;

/// A value unique within this machine, for file names.
pub fn unique() -> u128 {
    vault::unique_impl()
}

/// Random bytes from the OS.
pub fn fill_random(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("/dev/urandom");
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

/// A minimal HTTP/1.1 GET for admin endpoints; returns (status, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        .expect("connect to admin listener");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
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
