//! Ours vs `age` vs raw AEAD on the same file, in one run.
//!
//! `cargo run --release -p e2ebk-benches --bin backup_compare [MiB]`
//! (default 256). Makes a pseudo-random input file, then reports:
//! - raw AEAD: ring AES-256-GCM over 1 MiB buffers, one core;
//! - the engine in memory (encrypt into a preallocated Vec, decrypt into
//!   a sink);
//! - the engine and `age -r` / `age -d` on the same file, encrypting to
//!   /dev/null and to a file, decrypting to /dev/null (best of three
//!   wall-clock runs each; neither side fsyncs).

use std::fs::File;
use std::io;
use std::time::{Duration, Instant};

use backup_client::backup::{decrypt, encrypt, BackupOptions, NoProgress};
use e2ebk_benches::backup::{
    mb_per_s, measure_age, pseudo_random, raw_aead_throughput, write_pseudo_random_file,
};
use protocol_spec::root_key::RootKey;

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> Duration {
    (0..n)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(256);
    let bytes = mib << 20;
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("input.bin");
    let backup = dir.path().join("input.e2ebk");
    write_pseudo_random_file(&input, bytes, 3)?;
    let root = RootKey::from_entropy([9; 30]);
    let opts = BackupOptions::default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let raw = raw_aead_throughput(1 << 30) / 1e6;

    let plain = pseudo_random(bytes as usize, 4);
    let mut in_memory_backup = Vec::with_capacity(plain.len() + (plain.len() >> 16) + 64);
    let mem_enc = best_of(3, || {
        in_memory_backup.clear();
        encrypt(&plain[..], &mut in_memory_backup, &root, &opts, &NoProgress)
    });
    let mem_dec = best_of(3, || {
        decrypt(&in_memory_backup[..], io::sink(), &root, &NoProgress)
    });
    drop(plain);
    drop(in_memory_backup);

    let null_enc = best_of(3, || -> Result<_, Box<dyn std::error::Error>> {
        let src = File::open(&input)?;
        Ok(encrypt(
            src,
            File::create("/dev/null")?,
            &root,
            &opts,
            &NoProgress,
        )?)
    });
    let file_enc = best_of(3, || -> Result<_, Box<dyn std::error::Error>> {
        let src = File::open(&input)?;
        let dst = File::create(&backup)?;
        Ok(encrypt(src, dst, &root, &opts, &NoProgress)?)
    });
    let file_dec = best_of(3, || -> Result<_, Box<dyn std::error::Error>> {
        let src = File::open(&backup)?;
        Ok(decrypt(
            src,
            File::create("/dev/null")?,
            &root,
            &NoProgress,
        )?)
    });
    // Check the timed runs actually succeeded.
    decrypt(File::open(&backup)?, io::sink(), &root, &NoProgress)?;

    let mut age_null = Duration::MAX;
    let mut age_enc = Duration::MAX;
    let mut age_dec = Duration::MAX;
    let mut age_error = None;
    for _ in 0..3 {
        match measure_age(&input, dir.path()) {
            Ok(t) => {
                age_null = age_null.min(t.encrypt_to_null);
                age_enc = age_enc.min(t.encrypt);
                age_dec = age_dec.min(t.decrypt);
            }
            Err(e) => {
                age_error = Some(e);
                break;
            }
        }
    }

    let rate = |d: Duration| mb_per_s(bytes, d);
    println!("input: {mib} MiB pseudo-random, {cores} cores, chunk 1 MiB");
    println!("{:<44} {:>10}  {:>8}", "", "MB/s", "x raw");
    let row = |name: &str, v: f64| println!("{name:<44} {v:>10.0}  {:>8.2}", v / raw);
    row("raw AEAD (ring AES-256-GCM, 1 MiB, 1 core)", raw);
    row("engine encrypt, memory -> memory", rate(mem_enc));
    row("engine decrypt, memory -> sink", rate(mem_dec));
    row("engine encrypt, file -> /dev/null", rate(null_enc));
    row("engine encrypt, file -> file", rate(file_enc));
    row("engine decrypt, file -> /dev/null", rate(file_dec));
    match age_error {
        None => {
            row("age -r encrypt, file -> /dev/null", rate(age_null));
            row("age -r encrypt, file -> file", rate(age_enc));
            row("age -d decrypt, file -> /dev/null", rate(age_dec));
            println!(
                "engine / age: encrypt to /dev/null {:.2}x, to a file {:.2}x, decrypt {:.2}x",
                rate(null_enc) / rate(age_null),
                rate(file_enc) / rate(age_enc),
                rate(file_dec) / rate(age_dec)
            );
        }
        Some(e) => println!("age not measured: {e} (install with `apt-get install -y age`)"),
    }
    Ok(())
}
