//! Backups to object storage against real local servers: an S3-compatible
//! server (moto), Azurite for Azure Blob Storage, and fake-gcs-server for
//! Google Cloud Storage, each started by the test on loopback. For each: a
//! multi-part backup and a byte-identical restore, refusing to overwrite an
//! existing object, and a missing bucket failing without leaving output.
//!
//! The GCS emulator speaks the JSON API only; object_store uploads through
//! the XML API's multipart uploads, which it lacks, so for GCS the restore
//! side is tested on an object put there through the JSON API, and the
//! backup side is tested as far as refusing to overwrite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use backup_client::backup::{
    backup_to, restore_from, BackupIoError, BackupOptions, Location, NoProgress, RestoreOptions,
    RestoreOutput,
};
use protocol_spec::root_key::RootKey;
use testkit::servers::{self, ServerProcess};

fn key() -> RootKey {
    RootKey::from_entropy([9; 30])
}

/// 20 MiB of a seeded sequence: several 8 MiB upload parts and a short one.
fn plaintext() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(20 << 20);
    while out.len() < 20 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn options() -> BackupOptions {
    BackupOptions {
        threads: 2,
        ..BackupOptions::default()
    }
}

/// Points object_store at the server. Each test runs in its own process
/// (nextest), so the environment is this test's alone.
fn use_env(env: Vec<(&'static str, String)>) {
    for (k, v) in env {
        std::env::set_var(k, v);
    }
}

fn restore(location: &str, out: &Path) -> Result<(), BackupIoError> {
    restore_from(
        &Location::parse(location).unwrap(),
        &RestoreOutput::Path(out.to_owned()),
        &key(),
        &RestoreOptions::default(),
        &NoProgress,
    )
    .map(|_| ())
}

/// The round trip, overwrite refusal and missing bucket, for one store.
fn round_trip(scheme: &str, bucket: &str) {
    let dir = tempfile::tempdir().unwrap();
    let plain = plaintext();
    let url = format!("{scheme}://{bucket}/backups/chats.e2ebk");
    let dest = Location::parse(&url).unwrap();
    let stats = backup_to(&dest, &plain[..], &key(), &options(), &NoProgress)
        .unwrap_or_else(|e| panic!("backup to {url}: {e}"));
    assert!(stats.chunks > 1);

    let out = dir.path().join("restored");
    restore(&url, &out).unwrap_or_else(|e| panic!("restore from {url}: {e}"));
    assert!(
        std::fs::read(&out).unwrap() == plain,
        "{url} restored other bytes"
    );

    // A second backup to the same object is refused; the first one stays.
    let err = backup_to(&dest, &b"other"[..], &key(), &options(), &NoProgress).unwrap_err();
    assert!(matches!(err, BackupIoError::OutputExists { .. }), "{err}");
    let again = dir.path().join("again");
    restore(&url, &again).unwrap();
    assert!(std::fs::read(&again).unwrap() == plain);

    missing_bucket(scheme, dir.path());
}

fn missing_bucket(scheme: &str, dir: &Path) {
    let url = format!("{scheme}://no-such-bucket/chats.e2ebk");
    let err = backup_to(
        &Location::parse(&url).unwrap(),
        &b"data"[..],
        &key(),
        &options(),
        &NoProgress,
    )
    .unwrap_err();
    if scheme == "az" {
        // Known gap, for the client: an Azure multipart upload starts
        // without a request, so a missing container surfaces only when the
        // first block is put, as a generic object-store error rather than
        // BucketNotFound (and so with another exit code). When that is
        // fixed, this branch goes.
        assert!(matches!(err, BackupIoError::ObjectStore { .. }), "{err}");
    } else {
        assert!(
            matches!(&err, BackupIoError::BucketNotFound { bucket, .. } if bucket == "no-such-bucket"),
            "{err}"
        );
    }
    let out = dir.join("from-missing");
    let err = restore(&url, &out).unwrap_err();
    assert!(matches!(err, BackupIoError::ObjectStore { .. }), "{err}");
    assert!(!out.exists(), "a failed restore left {}", out.display());
}

#[test]
fn s3_round_trip_refuses_overwrite_and_reports_a_missing_bucket() {
    let s3: ServerProcess = servers::s3_server();
    servers::s3_create_bucket(&s3, "e2ebk-backups");
    use_env(servers::s3_env(&s3));
    round_trip("s3", "e2ebk-backups");
}

#[test]
fn azure_round_trip_refuses_overwrite_and_reports_a_missing_container() {
    let azurite = servers::azurite_blob();
    servers::azurite_create_container(&azurite, "e2ebk-backups");
    use_env(servers::azurite_env(&azurite));
    round_trip("az", "e2ebk-backups");
}

#[test]
fn gcs_restores_refuses_overwrite_and_reports_a_missing_bucket() {
    let gcs = servers::gcs_emulator();
    servers::gcs_create_bucket(&gcs, "e2ebkgcs");
    use_env(servers::gcs_env(&gcs));
    // A backup made locally, put in the bucket through the JSON API.
    let dir = tempfile::tempdir().unwrap();
    let plain = plaintext();
    let local = dir.path().join("local.e2ebk");
    backup_to(
        &Location::Path(local.clone()),
        &plain[..],
        &key(),
        &options(),
        &NoProgress,
    )
    .unwrap();
    servers::gcs_upload(&gcs, "e2ebkgcs", "chats", &std::fs::read(&local).unwrap());

    let url = "gs://e2ebkgcs/chats";
    let out = dir.path().join("restored");
    restore(url, &out).unwrap_or_else(|e| panic!("restore from {url}: {e}\n{}", gcs.log()));
    assert!(
        std::fs::read(&out).unwrap() == plain,
        "{url} restored other bytes"
    );
    let err = backup_to(
        &Location::parse(url).unwrap(),
        &b"other"[..],
        &key(),
        &options(),
        &NoProgress,
    )
    .unwrap_err();
    assert!(matches!(err, BackupIoError::OutputExists { .. }), "{err}");
    missing_bucket("gs", dir.path());
}
