//! The record store: the vault's state machine, in an embedded redb file.
//!
//! It holds only sealed records (plus bookkeeping). Every write is one redb
//! transaction committed with `Durability::Immediate` (fsync) before it is
//! acknowledged, so a crash never loses an acknowledged change and never
//! leaves half of one.

use std::path::{Path, PathBuf};

use protocol_spec::ids::AccountId;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};

use super::command::{ApplyOutcome, Command};
use super::disk::{self, DiskHealth, StoreFile};
use super::record::StoredRecord;
use crate::Error;

/// account id -> encoded [`StoredRecord`].
pub(crate) const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// Bookkeeping: store format, and the replicated log's state when used.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const STORE_FORMAT: &[u8] = b"e2ebk-vault-store v1";

/// The redb-backed state machine of sealed records.
pub struct RecordStore {
    db: std::sync::Arc<Database>,
    path: PathBuf,
    disk: std::sync::Arc<DiskHealth>,
}

impl std::fmt::Debug for RecordStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordStore")
            .field("path", &self.path)
            .finish()
    }
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

impl RecordStore {
    /// Opens (or creates) the store at `path`, checking its format.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let store_err = |reason: String| Error::Store {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| store_err(format!("cannot create its folder: {e}")))?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| store_err(e.to_string()))?;
        let health = std::sync::Arc::<DiskHealth>::default();
        let faults = disk::faults_from_env().map_err(store_err)?;
        let backend =
            StoreFile::new(file, health.clone(), faults).map_err(|e| store_err(e.to_string()))?;
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|e| store_err(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| store_err(e.to_string()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| store_err(e.to_string()))?;
            let format = meta
                .get("format")
                .map_err(|e| store_err(e.to_string()))?
                .map(|v| v.value().to_vec());
            match format {
                None => {
                    meta.insert("format", STORE_FORMAT)
                        .map_err(|e| store_err(e.to_string()))?;
                }
                Some(f) if f == STORE_FORMAT => {}
                Some(_) => {
                    return Err(store_err("not an hsm-vault store of a known format".into()))
                }
            }
            txn.open_table(RECORDS)
                .map_err(|e| store_err(e.to_string()))?;
        }
        txn.commit().map_err(|e| store_err(e.to_string()))?;
        Ok(RecordStore {
            db: std::sync::Arc::new(db),
            path: path.to_path_buf(),
            disk: health,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the store's disk has failed ([`disk`]).
    pub fn disk(&self) -> &std::sync::Arc<DiskHealth> {
        &self.disk
    }

    /// Ties the store to how it is served: `standalone`, or `raft node N`.
    /// The first start records it; a later start in another mode is refused,
    /// because records written outside the replicated log (or a log and
    /// vote that belonged to another node id) would make replicas diverge.
    pub fn bind_mode(&self, mode: &str) -> Result<(), Error> {
        let store_err = |reason: String| Error::Store {
            path: self.path.clone(),
            reason,
        };
        let txn = self
            .db
            .begin_write()
            .map_err(|e| store_err(e.to_string()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| store_err(e.to_string()))?;
            let bound = meta
                .get("mode")
                .map_err(|e| store_err(e.to_string()))?
                .map(|v| String::from_utf8_lossy(v.value()).into_owned());
            match bound {
                None => {
                    meta.insert("mode", mode.as_bytes())
                        .map_err(|e| store_err(e.to_string()))?;
                }
                Some(b) if b == mode => {}
                Some(b) => {
                    return Err(store_err(format!(
                        "it was served as {b} and this configuration serves it as {mode}; \
                         a store cannot change mode or node id (to move a replica into a \
                         group, start it with an empty data_dir and add it with \
                         `hsm-vault cluster add-learner`)"
                    )))
                }
            }
        }
        txn.commit().map_err(|e| store_err(e.to_string()))
    }

    /// The underlying database, shared with the replicated log's tables.
    pub(crate) fn db(&self) -> &std::sync::Arc<Database> {
        &self.db
    }

    /// The stored record of `account`, if any.
    pub fn get(&self, account: &AccountId) -> Result<Option<StoredRecord>, Error> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(RECORDS).map_err(storage)?;
        match table.get(account.as_str()).map_err(storage)? {
            Some(v) => Ok(Some(StoredRecord::decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Number of accounts with a row (any state).
    pub fn len(&self) -> Result<u64, Error> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(RECORDS).map_err(storage)?;
        table.len().map_err(storage)
    }

    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }

    /// Applies one command in its own durable transaction.
    pub fn apply(&self, cmd: &Command) -> Result<ApplyOutcome, Error> {
        let txn = self.db.begin_write().map_err(storage)?;
        let outcome = apply_in(&txn, cmd)?;
        txn.commit().map_err(storage)?;
        Ok(outcome)
    }

    /// Every (account, record), for snapshots and tests.
    pub fn all(&self) -> Result<Vec<(String, StoredRecord)>, Error> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(RECORDS).map_err(storage)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            out.push((k.value().to_owned(), StoredRecord::decode(v.value())?));
        }
        Ok(out)
    }

    /// Replaces a row without any check. Only for tests that simulate an
    /// attacker editing storage, and for installing snapshots.
    pub fn overwrite_raw(&self, account: &str, record: &StoredRecord) -> Result<(), Error> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(RECORDS).map_err(storage)?;
            table
                .insert(account, record.encode().as_slice())
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }
}

/// Applies `cmd` inside an open write transaction (so a replicated log can
/// apply a batch and its bookkeeping atomically).
pub(crate) fn apply_in(txn: &WriteTransaction, cmd: &Command) -> Result<ApplyOutcome, Error> {
    let Command::PutRecord {
        account, record, ..
    } = cmd;
    let mut table = txn.open_table(RECORDS).map_err(storage)?;
    let current_version = match table.get(account.as_str()).map_err(storage)? {
        Some(v) => StoredRecord::decode(v.value())?.version,
        None => 0,
    };
    let outcome = cmd.check(current_version);
    if outcome == ApplyOutcome::Applied {
        table
            .insert(account.as_str(), record.encode().as_slice())
            .map_err(storage)?;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(account: &str, expected: u64, sealed: &[u8]) -> Command {
        Command::PutRecord {
            account: AccountId::new(account).unwrap(),
            expected_version: expected,
            record: StoredRecord {
                version: expected + 1,
                sealed: sealed.to_vec(),
            },
        }
    }

    #[test]
    fn compare_and_set_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = RecordStore::open(&path).unwrap();
            assert_eq!(
                s.apply(&put("a", 0, b"one")).unwrap(),
                ApplyOutcome::Applied
            );
            assert_eq!(
                s.apply(&put("a", 0, b"again")).unwrap(),
                ApplyOutcome::Conflict { current_version: 1 }
            );
            assert_eq!(
                s.apply(&put("a", 1, b"two")).unwrap(),
                ApplyOutcome::Applied
            );
            assert_eq!(
                s.apply(&put("a", 5, b"x")).unwrap(),
                ApplyOutcome::Conflict { current_version: 2 }
            );
        }
        let s = RecordStore::open(&path).unwrap();
        let r = s.get(&AccountId::new("a").unwrap()).unwrap().unwrap();
        assert_eq!((r.version, r.sealed.as_slice()), (2, &b"two"[..]));
        assert!(s.get(&AccountId::new("b").unwrap()).unwrap().is_none());
        assert_eq!(s.len().unwrap(), 1);
    }

    #[test]
    fn refuses_a_foreign_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.redb");
        std::fs::write(&path, b"this is not a database").unwrap();
        let e = RecordStore::open(&path).unwrap_err().to_string();
        assert!(e.contains("junk.redb"), "{e}");
    }
}
