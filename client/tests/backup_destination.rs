//! Destinations: location parsing, local paths and `file://` (through
//! object_store's LocalFileSystem) for real, the no-partial-output rule on
//! every kind of damage, refusing to overwrite, and a 64 MiB round trip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use backup_client::backup::{
    backup_to, restore_from, BackupIoError, BackupOptions, Location, NoProgress, RestoreOptions,
    RestoreOutput, StoreKind,
};
use protocol_spec::backup::{HEADER_LEN, TAG_LEN};
use protocol_spec::error::BackupError;
use protocol_spec::root_key::RootKey;

fn key(b: u8) -> RootKey {
    RootKey::from_entropy([b; 30])
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn small(threads: usize) -> BackupOptions {
    BackupOptions {
        chunk_log2: 12,
        threads,
        ..BackupOptions::default()
    }
}

fn restore_opts() -> RestoreOptions {
    RestoreOptions::default()
}

fn file_url(p: &Path) -> String {
    format!("file://{}", p.display())
}

/// Names in `dir`, sorted (temporary files included: they start with '.').
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn parses_locations() {
    assert_eq!(Location::parse("-").unwrap(), Location::Stdio);
    for p in [
        "backup.e2ebk",
        "./a/b",
        "/abs/file",
        "dir/with:colon",
        "C:\\x",
    ] {
        assert_eq!(
            Location::parse(p).unwrap(),
            Location::Path(PathBuf::from(p))
        );
    }
    let kinds = [
        ("file:///tmp/x.bin", StoreKind::LocalFile),
        ("s3://bucket/dir/key.bin", StoreKind::S3),
        ("gs://bucket/key", StoreKind::Gcs),
        ("az://container/dir/key", StoreKind::Azure),
        ("S3://bucket/key", StoreKind::S3),
    ];
    for (s, kind) in kinds {
        match s.parse::<Location>().unwrap() {
            Location::Object(o) => assert_eq!(o.kind(), kind, "{s}"),
            other => panic!("{s} parsed as {other:?}"),
        }
    }
    for bad in [
        "",
        "ftp://host/x",
        "http://example.com/x",
        "s3://bucket",
        "s3://bucket/",
        "s3://bucket/dir/",
        "s3:///key",
        "file://host/x",
        "file:///",
        "s3://user:secret@bucket/key",
        "s3://bucket/key?versionId=1",
        "gs://bucket/a/../b",
        "az://container/./b",
        "s3://bucket/a/%2E%2e/b",
        "s3://bucket//key",
    ] {
        let err = Location::parse(bad).unwrap_err();
        assert!(
            matches!(err, BackupIoError::BadLocation { .. }),
            "{bad}: {err}"
        );
        let text = err.to_string();
        assert!(text.contains("s3://bucket/key"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}

#[test]
fn local_path_round_trip_refuses_to_overwrite_and_keeps_files_private() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(1);
    let plain = data(100_000, 1);
    let backup = dir.path().join("b.e2ebk");
    let dest = Location::Path(backup.clone());
    let stats = backup_to(&dest, &plain[..], &k, &small(2), &NoProgress).unwrap();
    assert_eq!(stats.backup_bytes, fs::metadata(&backup).unwrap().len());
    assert_eq!(stats.plaintext_bytes, plain.len() as u64);

    // A second backup to the same name is refused and leaves the first one.
    let before = fs::read(&backup).unwrap();
    let err = backup_to(&dest, &b"other"[..], &k, &small(2), &NoProgress).unwrap_err();
    assert!(matches!(err, BackupIoError::OutputExists { .. }), "{err}");
    assert_eq!(fs::read(&backup).unwrap(), before);

    let out = dir.path().join("restored.bin");
    let target = RestoreOutput::Path(out.clone());
    restore_from(&dest, &target, &k, &restore_opts(), &NoProgress).unwrap();
    assert_eq!(fs::read(&out).unwrap(), plain);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // Restoring over an existing file is refused without overwrite...
    fs::write(&out, b"keep me").unwrap();
    let err = restore_from(&dest, &target, &k, &restore_opts(), &NoProgress).unwrap_err();
    assert!(matches!(err, BackupIoError::OutputExists { .. }), "{err}");
    assert_eq!(fs::read(&out).unwrap(), b"keep me");
    // ...and allowed with it.
    let o = RestoreOptions {
        overwrite: true,
        ..RestoreOptions::default()
    };
    restore_from(&dest, &target, &k, &o, &NoProgress).unwrap();
    assert_eq!(fs::read(&out).unwrap(), plain);

    // Overwriting a backup when asked to.
    let o = BackupOptions {
        overwrite: true,
        ..small(1)
    };
    backup_to(&dest, &b"new"[..], &k, &o, &NoProgress).unwrap();
    assert_ne!(fs::read(&backup).unwrap(), before);

    // A directory as output is refused clearly.
    let err = restore_from(
        &dest,
        &RestoreOutput::Path(dir.path().to_owned()),
        &k,
        &o_restore_overwrite(),
        &NoProgress,
    )
    .unwrap_err();
    assert!(matches!(err, BackupIoError::IsDirectory { .. }), "{err}");
    assert_eq!(listing(dir.path()), ["b.e2ebk", "restored.bin"]);
}

fn o_restore_overwrite() -> RestoreOptions {
    RestoreOptions {
        overwrite: true,
        ..RestoreOptions::default()
    }
}

#[test]
fn file_url_round_trip_through_object_store() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(2);
    // Several 8 MiB upload parts, and a short last part.
    let plain = data(20 << 20, 2);
    let backup = dir.path().join("nested").join("b.e2ebk");
    let dest = Location::parse(&file_url(&backup)).unwrap();
    let opts = BackupOptions {
        threads: 2,
        ..BackupOptions::default()
    };
    let stats = backup_to(&dest, &plain[..], &k, &opts, &NoProgress).unwrap();
    assert_eq!(stats.chunks, 20);
    assert_eq!(
        fs::metadata(&backup).unwrap().len(),
        (HEADER_LEN + plain.len() + 20 * TAG_LEN) as u64
    );
    // No staging files left behind by the multipart upload.
    assert_eq!(listing(backup.parent().unwrap()), ["b.e2ebk"]);

    // The local store is readable as a plain path too, and vice versa.
    let out = dir.path().join("out.bin");
    restore_from(
        &Location::Path(backup.clone()),
        &RestoreOutput::Path(out.clone()),
        &k,
        &restore_opts(),
        &NoProgress,
    )
    .unwrap();
    assert!(fs::read(&out).unwrap() == plain);
    fs::remove_file(&out).unwrap();
    restore_from(
        &dest,
        &RestoreOutput::Path(out.clone()),
        &k,
        &restore_opts(),
        &NoProgress,
    )
    .unwrap();
    assert!(fs::read(&out).unwrap() == plain);

    // Refuses to overwrite an existing object.
    let err = backup_to(&dest, &b"x"[..], &k, &small(1), &NoProgress).unwrap_err();
    assert!(matches!(err, BackupIoError::OutputExists { .. }), "{err}");

    // A missing object is an object-store error naming the URL.
    let missing = Location::parse(&file_url(&dir.path().join("nope"))).unwrap();
    let err = restore_from(
        &missing,
        &RestoreOutput::Path(dir.path().join("never")),
        &k,
        &restore_opts(),
        &NoProgress,
    )
    .unwrap_err();
    assert!(matches!(err, BackupIoError::ObjectStore { .. }), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(!dir.path().join("never").exists());
}

#[test]
fn damaged_backups_never_leave_an_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(3);
    let cs = 1usize << 12;
    let sealed = cs + TAG_LEN;
    let c = |i: usize| HEADER_LEN + i * sealed;
    let plain = data(5 * cs + 10, 3);

    let make = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        let _ = fs::remove_file(&p);
        backup_to(
            &Location::Path(p.clone()),
            bytes,
            &k,
            &small(2),
            &NoProgress,
        )
        .unwrap();
        fs::read(p).unwrap()
    };
    let b = make("good", &plain);
    let other = make("other", &plain);
    let exact = make("exact", &data(3 * cs, 4));

    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut t = b.clone();
        f(&mut t);
        t
    };
    let cases: Vec<(&str, Vec<u8>, BackupError)> = vec![
        ("empty", Vec::new(), BackupError::Truncated),
        ("truncated", b[..c(3)].to_vec(), BackupError::Truncated),
        (
            "truncated mid-chunk",
            b[..c(3) + 100].to_vec(),
            BackupError::Corrupt { chunk: 3 },
        ),
        ("header byte", edit(&|t| t[30] ^= 1), BackupError::WrongKey),
        (
            "body byte",
            edit(&|t| t[c(2) + 3] ^= 1),
            BackupError::Corrupt { chunk: 2 },
        ),
        (
            "last byte",
            edit(&|t| {
                let n = t.len();
                t[n - 1] ^= 1
            }),
            BackupError::Corrupt { chunk: 5 },
        ),
        (
            "reordered",
            edit(&|t| {
                let (a, z) = (b[c(0)..c(1)].to_vec(), b[c(1)..c(2)].to_vec());
                t[c(0)..c(1)].copy_from_slice(&z);
                t[c(1)..c(2)].copy_from_slice(&a);
            }),
            BackupError::Corrupt { chunk: 0 },
        ),
        (
            "swapped in from another backup",
            edit(&|t| t[c(4)..c(5)].copy_from_slice(&other[c(4)..c(5)])),
            BackupError::Corrupt { chunk: 4 },
        ),
        (
            "trailing garbage",
            {
                let mut t = exact.clone();
                t.extend_from_slice(b"garbage that is long enough to look like a chunk");
                t
            },
            BackupError::TrailingData,
        ),
    ];
    let out = dir.path().join("restored");
    for (name, bytes, expected) in cases {
        let src = dir.path().join("damaged");
        fs::write(&src, &bytes).unwrap();
        for threads in [1, 3] {
            let o = RestoreOptions {
                threads,
                ..RestoreOptions::default()
            };
            let err = restore_from(
                &Location::Path(src.clone()),
                &RestoreOutput::Path(out.clone()),
                &k,
                &o,
                &NoProgress,
            )
            .unwrap_err();
            assert_eq!(err.format_error(), Some(&expected), "{name}: {err}");
            assert!(!out.exists(), "{name}: output left behind");
            assert_eq!(
                listing(dir.path()),
                ["damaged", "exact", "good", "other"],
                "{name}: temporary file left behind"
            );
        }
    }
    // Wrong key, through a file:// URL.
    let err = restore_from(
        &Location::parse(&file_url(&dir.path().join("good"))).unwrap(),
        &RestoreOutput::Path(out.clone()),
        &key(9),
        &restore_opts(),
        &NoProgress,
    )
    .unwrap_err();
    assert_eq!(err.format_error(), Some(&BackupError::WrongKey));
    assert!(!out.exists());
}

#[test]
fn a_failed_backup_leaves_nothing_under_the_final_name() {
    struct Broken(usize);
    impl std::io::Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("source vanished"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(7);
            self.0 -= n;
            Ok(n)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let k = key(4);
    for dest in [
        Location::Path(dir.path().join("b")),
        Location::parse(&file_url(&dir.path().join("b"))).unwrap(),
    ] {
        let err = backup_to(&dest, Broken(50_000), &k, &small(2), &NoProgress).unwrap_err();
        assert!(matches!(err, BackupIoError::Read { .. }), "{err}");
        assert!(err.to_string().contains("the data to back up"), "{err}");
        assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
    }
}

#[test]
fn sixty_four_mib_round_trip_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(5);
    let plain = data(64 << 20, 64);
    let backup = dir.path().join("big.e2ebk");
    let dest = Location::Path(backup.clone());
    let opts = BackupOptions {
        source_len: Some(plain.len() as u64),
        ..BackupOptions::default()
    };
    let stats = backup_to(&dest, &plain[..], &k, &opts, &NoProgress).unwrap();
    assert_eq!(stats.chunks, 64);
    let out = dir.path().join("big.out");
    let stats = restore_from(
        &dest,
        &RestoreOutput::Path(out.clone()),
        &k,
        &restore_opts(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(stats.plaintext_bytes, plain.len() as u64);
    let restored = fs::read(&out).unwrap();
    assert!(restored == plain, "64 MiB round trip differs");
}
