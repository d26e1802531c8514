//! Backup engine throughput on a 256 MiB in-memory input, next to the raw
//! AEAD speed (ring AES-256-GCM over 1 MiB buffers on one core) measured in
//! the same run.
//!
//! `cargo bench -p e2ebk-benches --bench backup_throughput`. The output goes
//! to `io::sink()` so the numbers are the engine's, not the allocator's or
//! the page cache's; `backup-compare` measures file-to-file against `age`.

use std::hint::black_box;
use std::io;
use std::time::Duration;

use backup_client::backup::{decrypt_with, encrypt, BackupOptions, NoProgress, RestoreOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use e2ebk_benches::backup::{pseudo_random, RawAead};
use protocol_spec::root_key::RootKey;

const INPUT: usize = 256 << 20;

fn raw_aead(c: &mut Criterion) {
    let mut g = c.benchmark_group("raw_aead");
    g.throughput(Throughput::Bytes(1 << 20));
    let mut aead = RawAead::new();
    let mut buf = pseudo_random(1 << 20, 1);
    g.bench_function("aes256gcm_seal_1MiB_one_core", |b| {
        b.iter(|| black_box(aead.seal(black_box(&mut buf))))
    });
    g.finish();
}

fn engine(c: &mut Criterion) {
    let root = RootKey::from_entropy([7; 30]);
    let plain = pseudo_random(INPUT, 2);
    let mut backup = Vec::with_capacity(INPUT + (INPUT >> 16) + 64);
    encrypt(
        &plain[..],
        &mut backup,
        &root,
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let mut g = c.benchmark_group("backup_engine_256MiB");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(15));
    g.throughput(Throughput::Bytes(INPUT as u64));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for t in [1, threads] {
        let opts = BackupOptions {
            threads: t,
            ..BackupOptions::default()
        };
        g.bench_function(format!("encrypt_{t}_workers"), |b| {
            b.iter(|| {
                encrypt(&plain[..], io::sink(), &root, &opts, &NoProgress)
                    .unwrap_or_else(|e| panic!("{e}"))
            })
        });
        let ropts = RestoreOptions {
            threads: t,
            ..RestoreOptions::default()
        };
        g.bench_function(format!("decrypt_{t}_workers"), |b| {
            b.iter(|| {
                decrypt_with(&backup[..], io::sink(), &root, &ropts, &NoProgress)
                    .unwrap_or_else(|e| panic!("{e}"))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, raw_aead, engine);
criterion_main!(benches);
