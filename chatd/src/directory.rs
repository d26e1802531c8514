//! The account directory: which device keys may act for which account, and
//! the one-time enrolment codes that let a new device enrol.
//!
//! [`Directory`] is the trait the connection code uses, so a shared
//! database can back it later. [`SqliteDirectory`] is the embedded
//! implementation: SQLite in WAL mode with full fsync, chosen over a
//! single-process store because several chatd processes can share one port
//! (SO_REUSEPORT) and one directory file, and the `chatd accounts` commands
//! edit it while chatd runs.
//!
//! Enrolment codes are stored only as SHA-256 of their normalised form
//! (codes carry ≥ 100 bits of entropy, so a plain hash suffices); each is
//! single-use and expires.
//!
//! Test builds (the `failpoints` feature) can abort the process at named
//! points inside an enrolment ([`Failpoint`], `CHATD_FAILPOINT`), so tests
//! can prove what a kill -9 there preserves.

use std::ffi::OsStr;
use std::path::Path;

use parking_lot::Mutex;
use protocol_spec::ids::{AccountId, EnrolmentCode};
use protocol_spec::keys::PublicKey;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};

use crate::Error;

/// A device key's standing for an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    Enrolled,
    Revoked,
    Unknown,
}

/// Result of trying an enrolment code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrolment {
    Enrolled,
    /// No such code for this account, used by another device, or expired.
    Rejected,
    /// The device key was revoked for this account; it cannot come back.
    DeviceRevoked,
}

/// A revocation as the directory recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub seq: u64,
    pub account: AccountId,
    /// One device, or (`None`) every device of the account.
    pub device: Option<PublicKey>,
}

/// One account, for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountSummary {
    pub account: String,
    pub created_at: i64,
    pub devices_enrolled: u32,
    pub devices_revoked: u32,
    pub pending_codes: u32,
}

/// One device, for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceSummary {
    pub device_key: String,
    pub enrolled_at: i64,
    pub revoked_at: Option<i64>,
}

use serde::Serialize;

/// What connection handling needs from the directory. Calls block (disk):
/// run them off the async workers.
pub trait Directory: Send + Sync {
    fn device_status(&self, account: &AccountId, device: &PublicKey)
        -> Result<DeviceStatus, Error>;
    /// Revocations recorded after `seq` (0: all), oldest first, at most
    /// `limit`. Every revocation gets a sequence number, so each chatd
    /// process sharing the directory can follow them.
    fn revocations_after(&self, seq: u64, limit: usize) -> Result<Vec<Revocation>, Error>;
    /// The sequence number of the latest revocation (0: none yet).
    fn latest_revocation(&self) -> Result<u64, Error>;
    /// Atomically consumes `code` for `account` and enrols `device`. The
    /// device that consumed a code gets the same answer again when it
    /// retries with it, so a lost answer is not a lost enrolment.
    fn enrol(
        &self,
        account: &AccountId,
        device: &PublicKey,
        code: &EnrolmentCode,
        now: i64,
    ) -> Result<Enrolment, Error>;
}

/// The environment variable naming the fail point a test build aborts at.
pub const FAILPOINT_VAR: &str = "CHATD_FAILPOINT";

/// Points inside [`SqliteDirectory::enrol`] where a test build crashes the
/// process on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    /// The code is marked used and the device inserted, not yet committed.
    EnrolWritten,
    /// The enrolment is committed; the device has not had the answer.
    EnrolCommitted,
}

impl Failpoint {
    /// Every fail point, by the name `CHATD_FAILPOINT` takes.
    pub const ALL: [(&'static str, Failpoint); 2] = [
        ("enrol-written", Failpoint::EnrolWritten),
        ("enrol-committed", Failpoint::EnrolCommitted),
    ];

    /// The fail point `value` (the variable's value; `None`: unset) names,
    /// in a build that has fail points (`compiled`) or not. A build
    /// without them refuses any value rather than ignore it, and a name
    /// that is not a fail point is refused rather than never reached.
    pub fn from_env_value(value: Option<&OsStr>, compiled: bool) -> Result<Option<Self>, Error> {
        let Some(value) = value else {
            return Ok(None);
        };
        if !compiled {
            return Err(Error::Config(format!(
                "{FAILPOINT_VAR} is set, but this build has no failpoints (they exist only in \
                 test builds); unset it"
            )));
        }
        match Self::ALL
            .iter()
            .find(|(name, _)| value.to_str() == Some(*name))
        {
            Some((_, point)) => Ok(Some(*point)),
            None => {
                let names: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
                Err(Error::Config(format!(
                    "{FAILPOINT_VAR}={value:?} is not a failpoint: use one of {}",
                    names.join(", ")
                )))
            }
        }
    }
}

/// SHA-256 of the normalised code, hex.
pub fn code_hash(code: &EnrolmentCode) -> String {
    hex::encode(Sha256::digest(code.normalized().as_bytes()))
}

/// Crockford base32 without ambiguous letters; 20 symbols = 100 bits.
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A fresh enrolment code: 20 random base32 symbols in groups of four.
pub fn new_code() -> Result<EnrolmentCode, Error> {
    let mut raw = [0u8; 20];
    getrandom::fill(&mut raw).map_err(|e| Error::Directory(format!("no randomness: {e}")))?;
    let symbols: Vec<String> = raw
        .chunks(4)
        .map(|g| {
            g.iter()
                .map(|b| CODE_ALPHABET[(*b & 31) as usize] as char)
                .collect()
        })
        .collect();
    EnrolmentCode::new(symbols.join("-")).map_err(|e| Error::Directory(e.to_string()))
}

/// The SQLite-backed directory.
pub struct SqliteDirectory {
    conn: Mutex<Connection>,
    #[cfg(feature = "failpoints")]
    failpoint: Option<Failpoint>,
}

impl std::fmt::Debug for SqliteDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteDirectory")
    }
}

fn db_err(e: rusqlite::Error) -> Error {
    Error::Directory(e.to_string())
}

impl SqliteDirectory {
    pub fn open(path: &Path) -> Result<Self, Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Directory(format!("{}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| Error::Directory(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             CREATE TABLE IF NOT EXISTS accounts (
                 account    TEXT PRIMARY KEY,
                 created_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS devices (
                 account     TEXT NOT NULL REFERENCES accounts(account),
                 device_key  TEXT NOT NULL,
                 enrolled_at INTEGER NOT NULL,
                 revoked_at  INTEGER,
                 PRIMARY KEY (account, device_key)
             );
             CREATE TABLE IF NOT EXISTS revocations (
                 seq        INTEGER PRIMARY KEY AUTOINCREMENT,
                 account    TEXT NOT NULL,
                 device_key TEXT,
                 at         INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS enrolment_codes (
                 code_hash  TEXT PRIMARY KEY,
                 account    TEXT NOT NULL REFERENCES accounts(account),
                 created_at INTEGER NOT NULL,
                 expires_at INTEGER NOT NULL,
                 used_at    INTEGER,
                 used_by    TEXT
             );",
        )
        .map_err(|e| Error::Directory(format!("{}: {e}", path.display())))?;
        Ok(SqliteDirectory {
            conn: Mutex::new(conn),
            #[cfg(feature = "failpoints")]
            failpoint: None,
        })
    }

    /// Makes this process abort when an enrolment reaches `point` (tests
    /// of crash behaviour only: the method exists only in builds with the
    /// `failpoints` feature).
    #[cfg(feature = "failpoints")]
    pub fn with_failpoint(mut self, point: Failpoint) -> Self {
        self.failpoint = Some(point);
        self
    }

    /// Aborts the process here if `point` is armed; nothing in a build
    /// without fail points.
    fn failpoint(&self, _point: Failpoint) {
        #[cfg(feature = "failpoints")]
        if self.failpoint == Some(_point) {
            std::process::abort();
        }
    }

    /// Creates an account; `false` if it existed.
    pub fn add_account(&self, account: &AccountId, now: i64) -> Result<bool, Error> {
        let n = self
            .conn
            .lock()
            .execute(
                "INSERT OR IGNORE INTO accounts (account, created_at) VALUES (?1, ?2)",
                params![account.as_str(), now],
            )
            .map_err(db_err)?;
        Ok(n == 1)
    }

    /// Issues a one-time code for `account` (creating the account if
    /// needed), valid for `ttl_secs`. Only its hash is stored.
    pub fn invite(
        &self,
        account: &AccountId,
        now: i64,
        ttl_secs: i64,
    ) -> Result<EnrolmentCode, Error> {
        let code = new_code()?;
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(db_err)?;
        tx.execute(
            "INSERT OR IGNORE INTO accounts (account, created_at) VALUES (?1, ?2)",
            params![account.as_str(), now],
        )
        .map_err(db_err)?;
        tx.execute(
            "INSERT INTO enrolment_codes (code_hash, account, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![code_hash(&code), account.as_str(), now, now + ttl_secs],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(code)
    }

    /// Revokes one device, or every device of the account; returns how many
    /// were revoked now. Unused codes of the account are cancelled too when
    /// revoking every device.
    pub fn revoke(
        &self,
        account: &AccountId,
        device: Option<&PublicKey>,
        now: i64,
    ) -> Result<usize, Error> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(db_err)?;
        let n = match device {
            Some(d) => tx
                .execute(
                    "UPDATE devices SET revoked_at = ?3 WHERE account = ?1 AND device_key = ?2 AND revoked_at IS NULL",
                    params![account.as_str(), d.to_hex(), now],
                )
                .map_err(db_err)?,
            None => {
                tx.execute(
                    "UPDATE enrolment_codes SET expires_at = ?2 WHERE account = ?1 AND used_at IS NULL AND expires_at > ?2",
                    params![account.as_str(), now],
                )
                .map_err(db_err)?;
                tx.execute(
                    "UPDATE devices SET revoked_at = ?2 WHERE account = ?1 AND revoked_at IS NULL",
                    params![account.as_str(), now],
                )
                .map_err(db_err)?
            }
        };
        // Connected chatd processes follow this table and close the
        // connections of what was revoked.
        tx.execute(
            "INSERT INTO revocations (account, device_key, at) VALUES (?1, ?2, ?3)",
            params![account.as_str(), device.map(|d| d.to_hex()), now],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(n)
    }

    pub fn accounts(&self, now: i64) -> Result<Vec<AccountSummary>, Error> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare(
                "SELECT a.account, a.created_at,
                   (SELECT COUNT(*) FROM devices d WHERE d.account = a.account AND d.revoked_at IS NULL),
                   (SELECT COUNT(*) FROM devices d WHERE d.account = a.account AND d.revoked_at IS NOT NULL),
                   (SELECT COUNT(*) FROM enrolment_codes c WHERE c.account = a.account AND c.used_at IS NULL AND c.expires_at > ?1)
                 FROM accounts a ORDER BY a.account",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![now], |r| {
                Ok(AccountSummary {
                    account: r.get(0)?,
                    created_at: r.get(1)?,
                    devices_enrolled: r.get(2)?,
                    devices_revoked: r.get(3)?,
                    pending_codes: r.get(4)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }

    pub fn devices(&self, account: &AccountId) -> Result<Vec<DeviceSummary>, Error> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare("SELECT device_key, enrolled_at, revoked_at FROM devices WHERE account = ?1 ORDER BY enrolled_at")
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![account.as_str()], |r| {
                Ok(DeviceSummary {
                    device_key: r.get(0)?,
                    enrolled_at: r.get(1)?,
                    revoked_at: r.get(2)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }
}

impl Directory for SqliteDirectory {
    fn revocations_after(&self, seq: u64, limit: usize) -> Result<Vec<Revocation>, Error> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, account, device_key FROM revocations WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![seq as i64, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })
            .map_err(db_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, account, device) = row.map_err(db_err)?;
            let corrupt = || Error::Directory(format!("revocation {seq} is malformed"));
            out.push(Revocation {
                seq: seq as u64,
                account: AccountId::new(account).map_err(|_| corrupt())?,
                device: match device {
                    Some(d) => Some(PublicKey::from_hex(&d).map_err(|_| corrupt())?),
                    None => None,
                },
            });
        }
        Ok(out)
    }

    fn latest_revocation(&self) -> Result<u64, Error> {
        let conn = self.conn.lock();
        let seq: Option<i64> = conn
            .query_row("SELECT MAX(seq) FROM revocations", [], |r| r.get(0))
            .map_err(db_err)?;
        Ok(seq.unwrap_or(0) as u64)
    }

    fn device_status(
        &self,
        account: &AccountId,
        device: &PublicKey,
    ) -> Result<DeviceStatus, Error> {
        let conn = self.conn.lock();
        let row: Option<Option<i64>> = conn
            .query_row(
                "SELECT revoked_at FROM devices WHERE account = ?1 AND device_key = ?2",
                params![account.as_str(), device.to_hex()],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        Ok(match row {
            None => DeviceStatus::Unknown,
            Some(None) => DeviceStatus::Enrolled,
            Some(Some(_)) => DeviceStatus::Revoked,
        })
    }

    fn enrol(
        &self,
        account: &AccountId,
        device: &PublicKey,
        code: &EnrolmentCode,
        now: i64,
    ) -> Result<Enrolment, Error> {
        let mut conn = self.conn.lock();
        // IMMEDIATE takes the write lock up front, so two processes cannot
        // both see the code unused.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let hash = code_hash(code);
        let device_hex = device.to_hex();
        let row: Option<(String, i64, Option<i64>, Option<String>)> = tx
            .query_row(
                "SELECT account, expires_at, used_at, used_by FROM enrolment_codes WHERE code_hash = ?1",
                params![hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(db_err)?;
        let revoked: Option<Option<i64>> = tx
            .query_row(
                "SELECT revoked_at FROM devices WHERE account = ?1 AND device_key = ?2",
                params![account.as_str(), device_hex],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        match row {
            // The device that used this code, retrying because the answer
            // to its enrolment was lost (chatd died after the commit, or
            // two of its attempts raced): the answer it should have had.
            // Past the code's expiry too: this grants nothing the device
            // does not hold already (an enrolled device is admitted without
            // any code), while refusing would tell it a lie, for good
            // (4003 is not retryable).
            Some((acct, _, Some(_), Some(used_by)))
                if acct == account.as_str() && used_by == device_hex =>
            {
                return Ok(match revoked {
                    Some(None) => Enrolment::Enrolled,
                    Some(Some(_)) => Enrolment::DeviceRevoked,
                    None => Enrolment::Rejected,
                });
            }
            Some((acct, expires_at, None, _)) if acct == account.as_str() && expires_at > now => {}
            _ => return Ok(Enrolment::Rejected),
        }
        if let Some(Some(_)) = revoked {
            return Ok(Enrolment::DeviceRevoked);
        }
        tx.execute(
            "UPDATE enrolment_codes SET used_at = ?2, used_by = ?3 WHERE code_hash = ?1",
            params![hash, now, device_hex],
        )
        .map_err(db_err)?;
        tx.execute(
            "INSERT OR IGNORE INTO devices (account, device_key, enrolled_at) VALUES (?1, ?2, ?3)",
            params![account.as_str(), device_hex, now],
        )
        .map_err(db_err)?;
        self.failpoint(Failpoint::EnrolWritten);
        tx.commit().map_err(db_err)?;
        self.failpoint(Failpoint::EnrolCommitted);
        Ok(Enrolment::Enrolled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol_spec::keys::StaticSecret;

    fn dev(b: u8) -> PublicKey {
        StaticSecret::from_bytes([b; 32]).public_key()
    }

    #[test]
    fn codes_are_single_use_scoped_and_expiring() {
        let dir = tempfile::tempdir().unwrap();
        let d = SqliteDirectory::open(&dir.path().join("d.sqlite")).unwrap();
        let alice = AccountId::new("alice").unwrap();
        let bob = AccountId::new("bob").unwrap();
        let code = d.invite(&alice, 1000, 60).unwrap();
        assert_eq!(code.expose().len(), 24);
        assert_eq!(
            d.device_status(&alice, &dev(1)).unwrap(),
            DeviceStatus::Unknown
        );
        // Wrong account, then right account, then reuse.
        d.add_account(&bob, 1000).unwrap();
        assert_eq!(
            d.enrol(&bob, &dev(1), &code, 1001).unwrap(),
            Enrolment::Rejected
        );
        let typed = EnrolmentCode::new(code.expose().to_lowercase().replace('-', " ")).unwrap();
        assert_eq!(
            d.enrol(&alice, &dev(1), &typed, 1001).unwrap(),
            Enrolment::Enrolled
        );
        assert_eq!(
            d.device_status(&alice, &dev(1)).unwrap(),
            DeviceStatus::Enrolled
        );
        assert_eq!(
            d.enrol(&alice, &dev(2), &code, 1002).unwrap(),
            Enrolment::Rejected
        );
        // Expiry.
        let late = d.invite(&alice, 1000, 60).unwrap();
        assert_eq!(
            d.enrol(&alice, &dev(3), &late, 1061).unwrap(),
            Enrolment::Rejected
        );
        // Revocation sticks, even with a fresh code.
        assert_eq!(d.revoke(&alice, Some(&dev(1)), 2000).unwrap(), 1);
        assert_eq!(
            d.device_status(&alice, &dev(1)).unwrap(),
            DeviceStatus::Revoked
        );
        let again = d.invite(&alice, 2000, 60).unwrap();
        assert_eq!(
            d.enrol(&alice, &dev(1), &again, 2001).unwrap(),
            Enrolment::DeviceRevoked
        );
        let list = d.accounts(2001).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].devices_revoked, 1);
        assert_eq!(d.devices(&alice).unwrap().len(), 1);
        // Nothing but the hash is stored.
        let raw = std::fs::read(dir.path().join("d.sqlite")).unwrap();
        let wal = std::fs::read(dir.path().join("d.sqlite-wal")).unwrap_or_default();
        for bytes in [raw, wal] {
            assert!(!testkit::contains_bytes(
                &bytes,
                code.normalized().as_bytes()
            ));
        }
    }

    fn open(dir: &tempfile::TempDir) -> SqliteDirectory {
        SqliteDirectory::open(&dir.path().join("d.sqlite")).unwrap()
    }

    /// Its answer lost (chatd died after the commit), a device tries the
    /// same code again: it is enrolled, and told so, within the code's
    /// validity and after it.
    #[test]
    fn the_device_that_used_a_code_is_enrolled_again_by_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = open(&dir);
        let alice = AccountId::new("alice").unwrap();
        let code = d.invite(&alice, 1000, 60).unwrap();
        assert_eq!(
            d.enrol(&alice, &dev(1), &code, 1001).unwrap(),
            Enrolment::Enrolled
        );
        for now in [1002, 1061, 100_000] {
            assert_eq!(
                d.enrol(&alice, &dev(1), &code, now).unwrap(),
                Enrolment::Enrolled,
                "retry at {now}"
            );
        }
        // Nothing changed: one device, enrolled when it first enrolled.
        let devices = d.devices(&alice).unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].enrolled_at, 1001);
        assert_eq!(d.accounts(1002).unwrap()[0].pending_codes, 0);
    }

    /// Only the device that used a code, for the code's account, gets
    /// that answer: for anyone else the code is spent.
    #[test]
    fn a_used_code_still_rejects_every_other_device_and_account() {
        let dir = tempfile::tempdir().unwrap();
        let d = open(&dir);
        let (alice, bob) = (
            AccountId::new("alice").unwrap(),
            AccountId::new("bob").unwrap(),
        );
        d.add_account(&bob, 1000).unwrap();
        let code = d.invite(&alice, 1000, 60).unwrap();
        assert_eq!(
            d.enrol(&alice, &dev(1), &code, 1001).unwrap(),
            Enrolment::Enrolled
        );
        // Another device, new or already enrolled with a code of its own.
        let other = d.invite(&alice, 1000, 60).unwrap();
        assert_eq!(
            d.enrol(&alice, &dev(2), &other, 1001).unwrap(),
            Enrolment::Enrolled
        );
        for device in [dev(2), dev(3)] {
            assert_eq!(
                d.enrol(&alice, &device, &code, 1002).unwrap(),
                Enrolment::Rejected
            );
        }
        assert_eq!(
            d.device_status(&alice, &dev(3)).unwrap(),
            DeviceStatus::Unknown
        );
        // The same device for another account.
        assert_eq!(
            d.enrol(&bob, &dev(1), &code, 1002).unwrap(),
            Enrolment::Rejected
        );
        assert_eq!(
            d.device_status(&bob, &dev(1)).unwrap(),
            DeviceStatus::Unknown
        );
    }

    /// Revocation sticks through a retry with the code that enrolled the
    /// device, whether that device alone or the whole account was revoked.
    #[test]
    fn a_revoked_device_retrying_its_code_is_told_it_is_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let d = open(&dir);
        let alice = AccountId::new("alice").unwrap();
        let (one, all) = (
            d.invite(&alice, 1000, 60).unwrap(),
            d.invite(&alice, 1000, 60).unwrap(),
        );
        assert_eq!(
            d.enrol(&alice, &dev(1), &one, 1001).unwrap(),
            Enrolment::Enrolled
        );
        assert_eq!(
            d.enrol(&alice, &dev(2), &all, 1001).unwrap(),
            Enrolment::Enrolled
        );
        assert_eq!(d.revoke(&alice, Some(&dev(1)), 1002).unwrap(), 1);
        assert_eq!(
            d.enrol(&alice, &dev(1), &one, 1003).unwrap(),
            Enrolment::DeviceRevoked
        );
        assert_eq!(d.revoke(&alice, None, 1004).unwrap(), 1);
        assert_eq!(
            d.enrol(&alice, &dev(2), &all, 1005).unwrap(),
            Enrolment::DeviceRevoked
        );
        for device in [dev(1), dev(2)] {
            assert_eq!(
                d.device_status(&alice, &device).unwrap(),
                DeviceStatus::Revoked
            );
        }
    }

    /// `CHATD_FAILPOINT` names one of [`Failpoint::ALL`] in a build that
    /// has them; anything else is refused, saying what to do.
    #[test]
    fn failpoint_names_are_refused_unless_known_and_compiled_in() {
        fn name(s: &str) -> Option<&OsStr> {
            Some(OsStr::new(s))
        }
        assert_eq!(Failpoint::from_env_value(None, true).unwrap(), None);
        assert_eq!(Failpoint::from_env_value(None, false).unwrap(), None);
        for (n, point) in Failpoint::ALL {
            assert_eq!(
                Failpoint::from_env_value(name(n), true).unwrap(),
                Some(point)
            );
            let e = Failpoint::from_env_value(name(n), false)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("this build has no failpoints") && e.contains("unset it"),
                "{e}"
            );
        }
        let e = Failpoint::from_env_value(name("enrol-comitted"), true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CHATD_FAILPOINT=\"enrol-comitted\" is not a failpoint")
                && e.contains("enrol-written, enrol-committed"),
            "{e}"
        );
    }
}
