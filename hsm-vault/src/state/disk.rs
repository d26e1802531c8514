//! The store's file, as redb sees it: a [`redb::StorageBackend`] over the
//! file that notices the first failed write, resize or fsync and says so
//! ([`DiskHealth`]), so the server stops instead of answering on.
//!
//! After a failed fsync the kernel may already have dropped the dirty pages
//! it could not write, and a later fsync can succeed without them (the
//! PostgreSQL "fsyncgate" lesson): retrying is not safe. redb refuses every
//! operation after an I/O error anyway (`PreviousIo`). So a replica whose
//! disk failed stops (SPEC.md 5.5, "Disk faults"): it reports not ready,
//! logs why and exits with [`EXIT_DISK_FAILED`]; its supervisor starts it
//! again, and the start reopens the store from what is durable once the
//! disk works. Nothing is answered from a write that did not reach the disk:
//! the commit that failed returns its error first.
//!
//! Test builds (feature `test-hooks`) can make the disk fail on demand:
//! `HSM_VAULT_TEST_DISK_FAULTS=FILE` names a file whose content, read on
//! every write, is `full` (writes and growth fail with "No space left on
//! device"), `fsync` (fsync fails with an I/O error) or nothing (healthy).

use std::fs::File;
use std::io;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use tokio::sync::watch;

/// The exit status of a vault that stopped because its disk failed
/// (`EX_IOERR` of sysexits.h).
pub const EXIT_DISK_FAILED: u8 = 74;

/// The environment variable naming the fault-control file (test builds).
pub const TEST_DISK_FAULTS_ENV: &str = "HSM_VAULT_TEST_DISK_FAULTS";

/// Whether the store's disk has failed, and how. Shared by the backend and
/// whoever must stop when it does.
#[derive(Debug)]
pub struct DiskHealth {
    failed: watch::Sender<Option<String>>,
}

impl Default for DiskHealth {
    fn default() -> Self {
        DiskHealth {
            failed: watch::channel(None).0,
        }
    }
}

impl DiskHealth {
    /// The first failure, as a sentence; `None` while the disk works.
    pub fn failure(&self) -> Option<String> {
        self.failed.borrow().clone()
    }

    /// Waits until the disk fails; returns what failed.
    pub async fn failed(&self) -> String {
        let mut rx = self.failed.subscribe();
        loop {
            if let Some(what) = rx.borrow_and_update().clone() {
                return what;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as `self`.
                std::future::pending::<()>().await;
            }
        }
    }

    fn report(&self, op: &str, e: &io::Error) {
        self.failed.send_if_modified(|f| {
            if f.is_some() {
                return false;
            }
            let what = format!("the store's {op} failed: {e}");
            tracing::error!("{what}");
            *f = Some(what);
            true
        });
    }
}

/// What the test hook asks the disk to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Full,
    Fsync,
}

/// The store file, with failures noticed (and, in test builds, injected).
#[derive(Debug)]
pub struct StoreFile {
    inner: FileBackend,
    health: Arc<DiskHealth>,
    faults: Option<PathBuf>,
    /// Last fault read from the control file (for its log line).
    last: Mutex<Fault>,
}

impl StoreFile {
    /// Wraps an opened store file. `faults`: the test hook's control file.
    pub fn new(
        file: File,
        health: Arc<DiskHealth>,
        faults: Option<PathBuf>,
    ) -> Result<Self, redb::DatabaseError> {
        Ok(StoreFile {
            inner: FileBackend::new(file)?,
            health,
            faults,
            last: Mutex::new(Fault::None),
        })
    }

    fn fault(&self) -> Fault {
        let Some(path) = &self.faults else {
            return Fault::None;
        };
        let f = match std::fs::read_to_string(path) {
            Ok(s) => match s.trim() {
                "full" => Fault::Full,
                "fsync" => Fault::Fsync,
                _ => Fault::None,
            },
            Err(_) => Fault::None,
        };
        let mut last = self.last.lock();
        if *last != f {
            tracing::warn!(fault = ?f, "test disk fault changed");
            *last = f;
        }
        f
    }

    fn checked<T>(&self, op: &str, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r {
            self.health.report(op, e);
        }
        r
    }

    fn injected(&self, op: &str, when: Fault) -> io::Result<()> {
        if self.fault() != when {
            return Ok(());
        }
        let e = match when {
            Fault::Full => io::Error::from_raw_os_error(28), // ENOSPC
            _ => io::Error::from_raw_os_error(5),            // EIO
        };
        self.checked(op, Err(e))
    }
}

impl StorageBackend for StoreFile {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.injected("resize", Fault::Full)?;
        let r = self.inner.set_len(len);
        self.checked("resize", r)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.injected("fsync", Fault::Fsync)?;
        let r = self.inner.sync_data();
        self.checked("fsync", r)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.injected("write", Fault::Full)?;
        let r = self.inner.write(offset, data);
        self.checked("write", r)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

/// The fault-control file from the environment, in test builds; `Err` if
/// it is set in a build without the hook (refused rather than ignored).
pub fn faults_from_env() -> Result<Option<PathBuf>, String> {
    let Some(v) = std::env::var_os(TEST_DISK_FAULTS_ENV) else {
        return Ok(None);
    };
    if cfg!(feature = "test-hooks") {
        tracing::warn!(
            file = ?v,
            "{TEST_DISK_FAULTS_ENV} set: the store's disk fails on demand (testing only)"
        );
        Ok(Some(PathBuf::from(v)))
    } else {
        Err(format!(
            "{TEST_DISK_FAULTS_ENV} is set, but this build has no test hooks (they exist only \
             in test builds); unset it"
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn open(dir: &std::path::Path, faults: &std::path::Path) -> (redb::Database, Arc<DiskHealth>) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("s.redb"))
            .unwrap();
        let health = Arc::<DiskHealth>::default();
        let backend = StoreFile::new(file, health.clone(), Some(faults.to_path_buf())).unwrap();
        let db = redb::Database::builder()
            .create_with_backend(backend)
            .unwrap();
        (db, health)
    }

    const T: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("t");

    fn put(db: &redb::Database, v: u64) -> Result<(), redb::Error> {
        let txn = db.begin_write()?;
        txn.open_table(T)?.insert("k", v)?;
        txn.commit()?;
        Ok(())
    }

    fn get(db: &redb::Database) -> Option<u64> {
        use redb::ReadableDatabase;
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(T).unwrap();
        t.get("k").unwrap().map(|v| v.value())
    }

    #[test]
    fn a_failed_fsync_fails_the_commit_is_reported_and_the_reopened_store_has_the_last_durable_value(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let faults = dir.path().join("faults");
        {
            let (db, health) = open(dir.path(), &faults);
            put(&db, 1).unwrap();
            assert_eq!(health.failure(), None);
            std::fs::write(&faults, "fsync").unwrap();
            assert!(
                put(&db, 2).is_err(),
                "a commit whose fsync failed must fail"
            );
            let what = health.failure().expect("reported");
            assert!(
                what.contains("fsync") && what.contains("os error 5"),
                "{what}"
            );
            // redb refuses to go on after an I/O error, even once the disk works.
            std::fs::write(&faults, "").unwrap();
            assert!(put(&db, 3).is_err());
        }
        let (db, health) = open(dir.path(), &faults);
        let v = get(&db);
        assert!(v == Some(1) || v == Some(2), "{v:?}");
        put(&db, 4).unwrap();
        assert_eq!(get(&db), Some(4));
        assert_eq!(health.failure(), None);
    }

    #[test]
    fn a_full_disk_fails_the_commit_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let faults = dir.path().join("faults");
        let (db, health) = open(dir.path(), &faults);
        put(&db, 1).unwrap();
        std::fs::write(&faults, "full").unwrap();
        assert!(put(&db, 2).is_err());
        let what = health.failure().expect("reported");
        assert!(what.contains("No space left on device"), "{what}");
    }
}
