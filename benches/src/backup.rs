//! Helpers for the backup-engine benchmarks: test data, the raw AEAD
//! baseline, timing the `age` tool on the same input, and peak RSS.
//!
//! Shared by `benches/backup_throughput.rs` (criterion) and the
//! `backup-compare` and `backup-rss` binaries, so every number in a report
//! is measured the same way.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

/// Incompressible, reproducible bytes (xorshift64), fast enough to make
/// gigabytes of input without dominating a run.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `len` pseudo-random bytes to `path`, 1 MiB at a time (so making
/// the input does not raise the process's peak RSS).
pub fn write_pseudo_random_file(path: &Path, len: u64, seed: u64) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut left = len;
    let mut s = seed;
    while left > 0 {
        let n = left.min(1 << 20);
        let piece = pseudo_random(n as usize, s);
        w.write_all(&piece)?;
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        left -= n;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// The raw AEAD baseline: ring AES-256-GCM `seal_in_place_separate_tag` on
/// one core, with the same key size and associated-data length as a backup
/// chunk.
#[derive(Debug)]
pub struct RawAead {
    key: LessSafeKey,
    counter: u32,
}

impl RawAead {
    pub fn new() -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, &[0x42; 32])
            .unwrap_or_else(|_| unreachable!("32-byte key"));
        RawAead {
            key: LessSafeKey::new(unbound),
            counter: 0,
        }
    }

    /// Seals `buf` in place (a fresh nonce per call, as chunks have).
    pub fn seal(&mut self, buf: &mut [u8]) -> [u8; 16] {
        self.counter = self.counter.wrapping_add(1);
        let mut n = [0u8; 12];
        n[7..11].copy_from_slice(&self.counter.to_be_bytes());
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::from(&[0u8; 60]), buf)
            .unwrap_or_else(|_| unreachable!("buffer far below the GCM limit"));
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

impl Default for RawAead {
    fn default() -> Self {
        Self::new()
    }
}

/// Single-core raw AEAD throughput over `total` bytes in 1 MiB buffers.
pub fn raw_aead_throughput(total: usize) -> f64 {
    let mut aead = RawAead::new();
    let mut buf = pseudo_random(1 << 20, 1);
    let rounds = total.div_ceil(buf.len());
    let start = Instant::now();
    let mut sink = 0u8;
    for _ in 0..rounds {
        sink ^= aead.seal(&mut buf)[0];
    }
    let secs = start.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    (rounds * buf.len()) as f64 / secs
}

/// Wall-clock times of the `age` tool on one input file.
#[derive(Debug, Clone, Copy)]
pub struct AgeTimes {
    /// `age -r` writing the encrypted file to /dev/null.
    pub encrypt_to_null: Duration,
    /// `age -r` writing the encrypted file to `workdir`.
    pub encrypt: Duration,
    /// `age -d` reading that file, plaintext to /dev/null.
    pub decrypt: Duration,
}

/// Times `age -r <recipient>` encrypting `input` to /dev/null and to a file
/// in `workdir`, then `age -d` decrypting that file to /dev/null, with a fresh X25519 identity
/// from `age-keygen` (no passphrase). Fails if `age` is not installed
/// (Debian: `apt-get install -y age`).
pub fn measure_age(input: &Path, workdir: &Path) -> io::Result<AgeTimes> {
    let identity = workdir.join("age-identity.txt");
    let _ = std::fs::remove_file(&identity);
    run(Command::new("age-keygen").arg("-o").arg(&identity))?;
    let out = Command::new("age-keygen")
        .arg("-y")
        .arg(&identity)
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other("age-keygen -y failed"));
    }
    let recipient = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let encrypted: PathBuf = workdir.join("input.age");

    let encrypt_to = |out: &Path| -> io::Result<Duration> {
        let start = Instant::now();
        run(Command::new("age")
            .arg("-r")
            .arg(&recipient)
            .arg("-o")
            .arg(out)
            .arg(input))?;
        Ok(start.elapsed())
    };
    let encrypt_to_null = encrypt_to(Path::new("/dev/null"))?;
    let encrypt = encrypt_to(&encrypted)?;

    let start = Instant::now();
    run(Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&identity)
        .arg("-o")
        .arg("/dev/null")
        .arg(&encrypted))?;
    let decrypt = start.elapsed();
    let _ = std::fs::remove_file(&encrypted);
    Ok(AgeTimes {
        encrypt_to_null,
        encrypt,
        decrypt,
    })
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("{cmd:?} exited with {status}")))
    }
}

/// Peak resident set size of this process in KiB (`VmHWM`).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Bytes per second as MB/s (10^6).
pub fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}
