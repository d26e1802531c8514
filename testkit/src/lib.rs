//! # testkit
//!
//! Harness for integration tests and benchmarks: SoftHSM tokens in
//! temporary folders, locating the workspace's built binaries, spawning real
//! processes on loopback, free ports, and scanning files for secret bytes.

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
        "{} not found: build it first (`cargo build --bins`; ops/test does this)",
        p.display()
    );
    p
}

/// Finds `needle` in `haystack`, for scanning files and logs for secrets.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
