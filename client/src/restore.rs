//! A restore on this device, as typed steps in the order that wastes
//! nothing:
//!
//! 1. [`RestorePlan::check`] refuses what the restore would refuse anyway
//!    (a missing local backup, an existing output) before anyone types a
//!    secret or spends a password attempt on it;
//! 2. the plan gets its key: this device's cached key
//!    ([`RestorePlan::with_cached_key`]), a typed 64-digit key
//!    ([`RestorePlan::with_key`]), or the vault's after a password login
//!    ([`RestorePlan::with_password`], which may spend an attempt);
//! 3. [`KeyedRestore::run`] decrypts and verifies; after a password restore
//!    that verified, a device with no key keeps the vault's
//!    ([`crate::custody`]'s rule), the escrow it came from is the one this
//!    device accepts ([`crate::escrow`]: the person knows its password),
//!    and [`Restored`] says what it did.
//!
//! Decrypting, verifying and writing the output only once it verified are
//! [`crate::backup`]'s business.

use std::path::Path;

use protocol_spec::messages::vault::Escrow;
use protocol_spec::password::Password;
use protocol_spec::root_key::RootKey;

use crate::backup::{
    restore_from, BackupIoError, BackupStats, Location, Progress, RestoreOptions, RestoreOutput,
};
use crate::custody::{keep_vault_key, VaultKeyKept};
use crate::device::{Device, LastAttemptConsent, Released};
use crate::error::ClientError;
use crate::escrow::{self, Accepted};
use crate::profile::Profile;

/// A restore whose source and output passed the early checks; it has no
/// key yet.
#[derive(Debug)]
pub struct RestorePlan {
    source: Location,
    output: RestoreOutput,
    overwrite: bool,
}

impl RestorePlan {
    /// Checks what can be checked before a key is needed: a local source
    /// must exist, and a local output must not be a directory, nor exist
    /// unless `overwrite`. Object stores are checked when the restore runs
    /// (asking them may need credentials and the network).
    pub fn check(
        source: Location,
        output: RestoreOutput,
        overwrite: bool,
    ) -> Result<RestorePlan, ClientError> {
        if let Location::Path(p) = &source {
            std::fs::metadata(p).map_err(|e| {
                ClientError::Backup(BackupIoError::Io {
                    action: "open",
                    location: p.display().to_string(),
                    source: e,
                })
            })?;
        }
        if let RestoreOutput::Path(p) = &output {
            check_output(p, overwrite)?;
        }
        Ok(RestorePlan {
            source,
            output,
            overwrite,
        })
    }

    /// Where the backup is read from.
    pub fn source(&self) -> &Location {
        &self.source
    }

    /// Where the restored data goes.
    pub fn output(&self) -> &RestoreOutput {
        &self.output
    }

    /// Restores with this device's cached key.
    pub fn with_cached_key(self, profile: &Profile) -> Result<KeyedRestore, ClientError> {
        let key = profile.require_backup_key()?;
        Ok(self.with_key(key))
    }

    /// Restores with a key the caller has (a typed 64-digit key). The
    /// device's cache is left alone.
    pub fn with_key(self, key: RootKey) -> KeyedRestore {
        KeyedRestore {
            plan: self,
            key,
            vault: None,
        }
    }

    /// Logs in with `password` and restores with the key the vault
    /// releases. A wrong password spends an attempt and is never retried;
    /// `consent` is asked before the last one.
    pub async fn with_password(
        self,
        device: &Device,
        password: &Password,
        consent: &dyn LastAttemptConsent,
    ) -> Result<KeyedRestore, ClientError> {
        let Released { key, escrow } = device.recover_key(password, consent).await?;
        Ok(KeyedRestore {
            plan: self,
            key,
            vault: Some(FromVault {
                profile: device.profile().clone(),
                escrow,
            }),
        })
    }
}

/// An existing output is refused here only when it certainly would be
/// later; anything unclear is left to the restore, which checks again.
fn check_output(path: &Path, overwrite: bool) -> Result<(), ClientError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(BackupIoError::IsDirectory {
            path: path.to_owned(),
        }
        .into()),
        Ok(_) if !overwrite => Err(BackupIoError::OutputExists {
            location: path.display().to_string(),
        }
        .into()),
        _ => Ok(()),
    }
}

/// A checked restore with its key, ready to run.
#[derive(Debug)]
pub struct KeyedRestore {
    plan: RestorePlan,
    key: RootKey,
    /// Set when the key came from the vault.
    vault: Option<FromVault>,
}

/// Where a key the vault released came from.
#[derive(Debug)]
struct FromVault {
    /// The profile whose device may keep the key.
    profile: Profile,
    /// The escrow that released it.
    escrow: Option<Escrow>,
}

/// What a finished restore did.
#[derive(Debug)]
pub struct Restored {
    /// What was decrypted and verified.
    pub stats: BackupStats,
    /// After a password restore: what this device did with the vault's
    /// key. `None` when the key did not come from the vault.
    pub vault_key: Option<VaultKeyKept>,
    /// After a password restore: whether the escrow it came from is now
    /// the one this device remembers as accepted.
    pub escrow: Option<Accepted>,
}

impl KeyedRestore {
    /// Decrypts and verifies the backup into the output, using every core.
    /// Only a restore that verified lets the device keep the vault's key
    /// and accept the escrow it came from.
    pub fn run(self, progress: &dyn Progress) -> Result<Restored, ClientError> {
        let opts = RestoreOptions {
            threads: 0,
            overwrite: self.plan.overwrite,
        };
        let stats = restore_from(
            &self.plan.source,
            &self.plan.output,
            &self.key,
            &opts,
            progress,
        )?;
        let (vault_key, escrow) = match &self.vault {
            None => (None, None),
            Some(v) => (
                Some(keep_vault_key(&v.profile, &self.key)),
                Some(escrow::accept(&v.profile, v.escrow)),
            ),
        };
        Ok(Restored {
            stats,
            vault_key,
            escrow,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::fs;

    use super::*;
    use crate::backup::{encrypt, BackupOptions, NoProgress};

    /// A real backup of `data` under `key` at `path`.
    fn backup_file(path: &Path, key: &RootKey, data: &[u8]) {
        let file = fs::File::create(path).unwrap();
        encrypt(data, file, key, &BackupOptions::default(), &NoProgress).unwrap();
    }

    fn key(byte: u8) -> RootKey {
        RootKey::from_entropy([byte; 30])
    }

    fn escrow() -> Escrow {
        Escrow {
            epoch: protocol_spec::messages::vault::EscrowEpoch::of_registration(&[6; 32]),
            registered_at_unix_secs: 1_796_133_780,
            kind: Some(protocol_spec::messages::vault::RegistrationMode::Replace),
        }
    }

    #[test]
    fn a_missing_local_backup_is_refused_before_any_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.backup");
        let e = RestorePlan::check(
            Location::Path(missing.clone()),
            RestoreOutput::Path(dir.path().join("out")),
            false,
        )
        .unwrap_err();
        assert!(
            matches!(&e, ClientError::Backup(BackupIoError::Io { action: "open", location, .. })
                if *location == missing.display().to_string()),
            "{e:?}"
        );
        // Standard input cannot be checked ahead, so it is not refused.
        RestorePlan::check(Location::Stdio, RestoreOutput::Stdout, false).unwrap();
    }

    #[test]
    fn an_existing_output_is_refused_before_any_key_unless_overwriting() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("b");
        fs::write(&source, b"not read by the check").unwrap();
        let out = dir.path().join("out");
        fs::write(&out, b"keep me").unwrap();
        let e = RestorePlan::check(
            Location::Path(source.clone()),
            RestoreOutput::Path(out.clone()),
            false,
        )
        .unwrap_err();
        assert!(
            matches!(e, ClientError::Backup(BackupIoError::OutputExists { .. })),
            "{e:?}"
        );
        assert_eq!(fs::read(&out).unwrap(), b"keep me");
        RestorePlan::check(
            Location::Path(source.clone()),
            RestoreOutput::Path(out),
            true,
        )
        .unwrap();
        // A directory is never a usable output, even when overwriting.
        let e = RestorePlan::check(
            Location::Path(source),
            RestoreOutput::Path(dir.path().to_owned()),
            true,
        )
        .unwrap_err();
        assert!(
            matches!(e, ClientError::Backup(BackupIoError::IsDirectory { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn a_verified_password_restore_caches_the_vault_key_on_a_device_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let profile = Profile::for_tests(dir.path());
        let vault_key = key(3);
        let source = dir.path().join("b");
        backup_file(&source, &vault_key, b"chats");
        let out = dir.path().join("out");
        let plan = RestorePlan::check(
            Location::Path(source),
            RestoreOutput::Path(out.clone()),
            false,
        )
        .unwrap();
        // What with_password builds once the vault released the key.
        let keyed = KeyedRestore {
            plan,
            key: vault_key.clone(),
            vault: Some(FromVault {
                profile: profile.clone(),
                escrow: Some(escrow()),
            }),
        };
        let restored = keyed.run(&NoProgress).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"chats");
        assert_eq!(restored.stats.plaintext_bytes, 5);
        assert!(
            matches!(restored.vault_key, Some(VaultKeyKept::CachedNow)),
            "{restored:?}"
        );
        assert_eq!(profile.require_backup_key().unwrap(), vault_key);
        // The person knows the escrow's password: this device accepts it.
        assert!(
            matches!(restored.escrow, Some(Accepted::Remembered(e)) if e == escrow()),
            "{restored:?}"
        );
        assert_eq!(profile.remembered_escrow().unwrap(), Some(escrow()));
    }

    #[test]
    fn a_failed_password_restore_caches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let profile = Profile::for_tests(dir.path());
        let source = dir.path().join("b");
        // Made with another key: the vault's key does not open it.
        backup_file(&source, &key(4), b"chats");
        let out = dir.path().join("out");
        let plan = RestorePlan::check(
            Location::Path(source),
            RestoreOutput::Path(out.clone()),
            false,
        )
        .unwrap();
        let keyed = KeyedRestore {
            plan,
            key: key(3),
            vault: Some(FromVault {
                profile: profile.clone(),
                escrow: Some(escrow()),
            }),
        };
        let e = keyed.run(&NoProgress).unwrap_err();
        assert!(
            matches!(e, ClientError::Backup(BackupIoError::Format { .. })),
            "{e:?}"
        );
        assert!(!out.exists());
        assert!(profile.cached_backup_key().unwrap().is_none());
        // Nor does it accept the escrow: its key did not open this backup.
        assert_eq!(profile.remembered_escrow().unwrap(), None);
    }

    #[test]
    fn a_typed_key_restore_leaves_the_device_cache_alone() {
        let dir = tempfile::tempdir().unwrap();
        let profile = Profile::for_tests(dir.path());
        let typed = key(5);
        let source = dir.path().join("b");
        backup_file(&source, &typed, b"chats");
        let out = dir.path().join("out");
        let restored = RestorePlan::check(
            Location::Path(source),
            RestoreOutput::Path(out.clone()),
            false,
        )
        .unwrap()
        .with_key(typed)
        .run(&NoProgress)
        .unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"chats");
        assert!(restored.vault_key.is_none());
        assert!(restored.escrow.is_none());
        assert!(profile.cached_backup_key().unwrap().is_none());
        assert_eq!(profile.remembered_escrow().unwrap(), None);
    }
}
