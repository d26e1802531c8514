//! Peak RSS of backing up and restoring a file of N MiB through the engine,
//! to show memory does not grow with the file size.
//!
//! `cargo run --release -p e2ebk-benches --bin backup_rss -- 256 1024`
//!
//! For each size the parent makes the input file, then runs every phase in
//! a fresh child process (so neither earlier phases nor memory the
//! allocator kept count) and prints each child's peak RSS (`VmHWM`):
//! backup to a local path, restore to a local path, backup to a `file://`
//! URL (object-store multipart upload) and restore from it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use backup_client::backup::{
    backup_to, restore_from, BackupOptions, Location, NoProgress, RestoreOptions, RestoreOutput,
};
use e2ebk_benches::backup::{peak_rss_kib, write_pseudo_random_file};
use protocol_spec::root_key::RootKey;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const PHASES: [&str; 4] = ["backup-path", "restore-path", "backup-url", "restore-url"];

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--phase") {
        return child(&args[1..]);
    }
    let sizes: Vec<u64> = args.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![256, 1024]
    } else {
        sizes
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{cores} workers, chunk 1 MiB; peak RSS (VmHWM) of each phase in its own process, MiB"
    );
    println!(
        "{:>9} {:>12} {:>12} {:>12} {:>12} {:>14}",
        "input", PHASES[0], PHASES[1], PHASES[2], PHASES[3], "idle process"
    );
    let exe = std::env::current_exe()?;
    for mib in sizes {
        let dir = tempfile::tempdir()?;
        write_pseudo_random_file(&dir.path().join("input.bin"), mib << 20, mib)?;
        let mut peaks = Vec::new();
        for phase in PHASES.iter().chain(["idle"].iter()) {
            let out = Command::new(&exe)
                .arg("--phase")
                .arg(phase)
                .arg(mib.to_string())
                .arg(dir.path())
                .output()?;
            if !out.status.success() {
                return Err(format!(
                    "phase {phase} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
            let kib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
            peaks.push(kib as f64 / 1024.0);
        }
        println!(
            "{:>5} MiB {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>14.1}",
            mib, peaks[0], peaks[1], peaks[2], peaks[3], peaks[4]
        );
    }
    Ok(())
}

/// Runs one phase and prints this process's peak RSS in KiB.
fn child(args: &[String]) -> Res<()> {
    let [phase, mib, dir] = args else {
        return Err("usage: --phase NAME MIB DIR".into());
    };
    let mib: u64 = mib.parse()?;
    let dir = PathBuf::from(dir);
    let root = RootKey::from_entropy([5; 30]);
    let opts = BackupOptions {
        source_len: Some(mib << 20),
        overwrite: true,
        ..BackupOptions::default()
    };
    let ropts = RestoreOptions {
        overwrite: true,
        ..RestoreOptions::default()
    };
    let input = dir.join("input.bin");
    let restored = RestoreOutput::Path(dir.join("restored.bin"));
    let path = Location::Path(dir.join("b.e2ebk"));
    let url = file_url(&dir.join("u.e2ebk"))?;
    match phase.as_str() {
        "backup-path" => {
            backup_to(&path, File::open(&input)?, &root, &opts, &NoProgress)?;
        }
        "restore-path" => {
            restore_from(&path, &restored, &root, &ropts, &NoProgress)?;
            check_len(&dir, mib)?;
        }
        "backup-url" => {
            backup_to(&url, File::open(&input)?, &root, &opts, &NoProgress)?;
        }
        "restore-url" => {
            restore_from(&url, &restored, &root, &ropts, &NoProgress)?;
            check_len(&dir, mib)?;
        }
        "idle" => {}
        other => return Err(format!("unknown phase {other}").into()),
    }
    println!("{}", peak_rss_kib().ok_or("no VmHWM in /proc/self/status")?);
    Ok(())
}

fn file_url(p: &Path) -> Res<Location> {
    Ok(Location::parse(&format!("file://{}", p.display()))?)
}

fn check_len(dir: &Path, mib: u64) -> Res<()> {
    if std::fs::metadata(dir.join("restored.bin"))?.len() != mib << 20 {
        return Err("restored size differs from the input".into());
    }
    Ok(())
}
