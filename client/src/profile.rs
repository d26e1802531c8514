//! The `backupctl` profile and the device's key files.
//!
//! This module owns reading the profile (a TOML file naming chatd, the
//! pinned keys, the vault fleet and the account) and the two secret files
//! that live next to it:
//!
//! - the **device key** (`device_key_file`): the X25519 key chatd enrols to
//!   the account, created by `backupctl enroll`;
//! - the **cached backup key** (`backup_key_file`, default `backup.key`
//!   next to the profile): this device's copy of the root key `K`, written
//!   by `enable` (or a password restore) so that `backup` can run without
//!   asking for a password or the 64-digit key.
//!
//! Both are 64 hex digits and a newline, created with mode 0600 and refused
//! when other users may read them. Their contents never appear in `Debug`
//! or in error messages.
//!
//! One more file, not a secret, lives next to the profile and is named
//! after it (`profile.toml` → `profile.escrow-epoch`): the **escrow this
//! device last saw and accepted** (SPEC.md 8.7), its epoch, time and kind,
//! which [`crate::escrow`] compares with the vault's. It is replaced
//! atomically (a temporary file renamed into place) and holds nothing that
//! opens anything.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use protocol_spec::ids::{AccountId, FleetId};
use protocol_spec::keys::{PublicKey, StaticSecret};
use protocol_spec::messages::vault::{Escrow, EscrowEpoch, RegistrationMode};
use protocol_spec::root_key::{RootKey, ROOT_KEY_LEN};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::connection::Endpoint;
use crate::error::ClientError;

/// Environment variable naming the profile when `--profile` is not given.
pub const PROFILE_ENV: &str = "BACKUPCTL_PROFILE";

/// Default name of the cached backup key, next to the profile.
pub const DEFAULT_BACKUP_KEY_FILE: &str = "backup.key";

/// What the remembered escrow's file name adds to the profile's stem.
pub const ESCROW_EPOCH_EXTENSION: &str = "escrow-epoch";

/// The remembered escrow as written on disk.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EscrowFile {
    /// The account it was remembered for: a profile switched to another
    /// account (or two profiles sharing a file name) must not compare one
    /// account's escrow with another's. Absent in files written before it.
    #[serde(default)]
    account: Option<String>,
    epoch: String,
    registered_at_unix_secs: u64,
    kind: String,
}

/// The remembered escrow is a few lines; anything longer is not one.
const MAX_ESCROW_FILE_BYTES: u64 = 4096;

/// What the remembered escrow's `kind` says when the vault did not know.
const UNKNOWN_KIND: &str = "unknown";

/// The profile as written on disk.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    chatd_url: String,
    chatd_key: String,
    fleet_id: String,
    fleet_key: String,
    account: String,
    device_key_file: PathBuf,
    backup_key_file: Option<PathBuf>,
}

/// A checked profile: every key parsed, every path absolute or relative to
/// the profile's folder.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Where the profile was read from.
    pub path: PathBuf,
    /// chatd's URL, pinned key and the account.
    pub endpoint: Endpoint,
    /// The vault fleet's id, checked against what the vault announces.
    pub fleet_id: FleetId,
    /// The vault fleet's tunnel key, pinned.
    pub fleet_key: PublicKey,
    /// The device key file.
    pub device_key_file: PathBuf,
    /// This device's cached copy of `K`.
    pub backup_key_file: PathBuf,
    /// The escrow this device last saw and accepted (not a secret).
    pub escrow_epoch_file: PathBuf,
}

impl Profile {
    /// Reads and checks the profile at `path`.
    pub fn load(path: &Path) -> Result<Profile, ClientError> {
        let shown = path.display();
        let text = fs::read_to_string(path).map_err(|e| {
            ClientError::Profile(match e.kind() {
                io::ErrorKind::NotFound => format!(
                    "profile {shown} does not exist; check the path given with --profile or {PROFILE_ENV}"
                ),
                _ => format!("cannot read profile {shown}: {e}; check its permissions"),
            })
        })?;
        let file: ProfileFile = toml::from_str(&text).map_err(|e| {
            ClientError::Profile(format!(
                "profile {shown} is not valid: {}; fix it (fields: chatd_url, chatd_key, fleet_id, fleet_key, account, device_key_file, backup_key_file)",
                e.message()
            ))
        })?;
        let field = |name: &str, why: String| {
            ClientError::Profile(format!("profile {shown}: {name} {why}; fix that field"))
        };
        let chatd_key = PublicKey::from_hex(file.chatd_key.trim())
            .map_err(|_| field("chatd_key", "must be 64 hex digits".into()))?;
        let fleet_key = PublicKey::from_hex(file.fleet_key.trim())
            .map_err(|_| field("fleet_key", "must be 64 hex digits".into()))?;
        let fleet_id = FleetId::new(file.fleet_id)
            .map_err(|e| field("fleet_id", format!("is invalid ({e})")))?;
        let account = AccountId::new(file.account)
            .map_err(|e| field("account", format!("is invalid ({e})")))?;
        if !(file.chatd_url.starts_with("ws://") || file.chatd_url.starts_with("wss://")) {
            return Err(field("chatd_url", "must start with ws:// or wss://".into()));
        }
        let folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let backup_key_file = file
            .backup_key_file
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BACKUP_KEY_FILE));
        // Named after the profile, so two profiles in one folder keep apart.
        let escrow_epoch_file = path.with_extension(ESCROW_EPOCH_EXTENSION);
        if escrow_epoch_file == path {
            return Err(ClientError::Profile(format!(
                "profile {} ends in .{ESCROW_EPOCH_EXTENSION}, the name backupctl gives the escrow it remembers next to the profile; rename the profile (for example to profile.toml)",
                path.display()
            )));
        }
        Ok(Profile {
            path: path.to_owned(),
            endpoint: Endpoint {
                url: file.chatd_url,
                chatd_key,
                account,
            },
            fleet_id,
            fleet_key,
            device_key_file: folder.join(file.device_key_file),
            backup_key_file: folder.join(backup_key_file),
            escrow_epoch_file,
        })
    }

    /// The account this profile acts for.
    pub fn account(&self) -> &AccountId {
        &self.endpoint.account
    }

    /// Whether a device key file exists (it may still be unusable).
    pub fn has_device_key(&self) -> bool {
        self.device_key_file.exists()
    }

    /// Reads the device key; a missing file means the device was never
    /// enrolled.
    pub fn device_key(&self) -> Result<StaticSecret, ClientError> {
        match read_key_file(&self.device_key_file)? {
            Some(bytes) => Ok(StaticSecret::from_bytes(*bytes)),
            None => Err(ClientError::NoDeviceKey {
                path: self.device_key_file.clone(),
            }),
        }
    }

    /// Reads the device key, creating it (mode 0600) if it does not exist.
    /// Returns the key and whether it was created now.
    pub fn device_key_or_create(&self) -> Result<(StaticSecret, bool), ClientError> {
        if let Some(bytes) = read_key_file(&self.device_key_file)? {
            return Ok((StaticSecret::from_bytes(*bytes), false));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        fill_random(seed.as_mut_slice())?;
        let key = StaticSecret::from_bytes(*seed);
        write_key_file(&self.device_key_file, &key.to_hex())?;
        Ok((key, true))
    }

    /// This device's cached backup key, if it has one.
    pub fn cached_backup_key(&self) -> Result<Option<RootKey>, ClientError> {
        let Some(bytes) = read_key_file(&self.backup_key_file)? else {
            return Ok(None);
        };
        RootKey::from_bytes(*bytes).map(Some).map_err(|_| {
            ClientError::Profile(format!(
                "{} is damaged (its check digits do not match); restore it from a copy, or delete it and run `backupctl restore --password` or `--key` to cache the key again",
                self.backup_key_file.display()
            ))
        })
    }

    /// The cached backup key, or [`ClientError::NoBackupKey`].
    pub fn require_backup_key(&self) -> Result<RootKey, ClientError> {
        self.cached_backup_key()?.ok_or(ClientError::NoBackupKey)
    }

    /// Caches `key` as this device's backup key. Refuses to replace an
    /// existing file: losing a cached key can lose backups.
    pub fn cache_backup_key(&self, key: &RootKey) -> Result<(), ClientError> {
        let hexed = Zeroizing::new(hex::encode(key.expose()));
        write_key_file(&self.backup_key_file, &hexed)
    }

    /// Deletes the cached backup key. Returns whether there was one.
    pub fn forget_backup_key(&self) -> Result<bool, ClientError> {
        remove_file(&self.backup_key_file)
    }

    /// The escrow this device last saw and accepted, if it remembers one.
    pub fn remembered_escrow(&self) -> Result<Option<Escrow>, ClientError> {
        let path = &self.escrow_epoch_file;
        let shown = path.display();
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ClientError::Profile(format!(
                    "cannot read {shown}: {e}; check its permissions"
                )))
            }
        };
        let damaged = |why: &str| {
            ClientError::Profile(format!(
                "{shown} is damaged ({why}); delete it, then verify the vault's escrow with `backupctl restore --password` of a recent backup: the next `backupctl status` trusts whatever the vault holds then"
            ))
        };
        if !meta.is_file() {
            return Err(damaged("it is not a regular file"));
        }
        if meta.len() > MAX_ESCROW_FILE_BYTES {
            return Err(damaged("it is far longer than what backupctl writes"));
        }
        // Whoever can write it can silence the report of a replacement.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o022 != 0 {
                return Err(ClientError::Profile(format!(
                    "{shown} may be changed by other users, who could hide a replaced escrow; run `chmod 600 {shown}`"
                )));
            }
        }
        let bytes = fs::read(path).map_err(|e| {
            ClientError::Profile(format!("cannot read {shown}: {e}; check its permissions"))
        })?;
        let text = String::from_utf8(bytes).map_err(|_| damaged("it is not UTF-8 text"))?;
        let file: EscrowFile = toml::from_str(&text).map_err(|e| damaged(e.message()))?;
        if let Some(account) = &file.account {
            if account != self.account().as_str() {
                return Err(ClientError::Profile(format!(
                    "{shown} remembers an escrow of account {account}, but this profile is for account {}; move it away if the profile was switched to another account",
                    self.account()
                )));
            }
        }
        let epoch = EscrowEpoch::from_hex(&file.epoch)
            .ok_or_else(|| damaged("its epoch is not 32 hex digits"))?;
        let kind = match file.kind.as_str() {
            UNKNOWN_KIND => None,
            label => Some(
                RegistrationMode::from_label(label)
                    .ok_or_else(|| damaged("its kind is not one backupctl writes"))?,
            ),
        };
        Ok(Some(Escrow {
            epoch,
            registered_at_unix_secs: file.registered_at_unix_secs,
            kind,
        }))
    }

    /// Remembers `escrow` as the one this device last saw and accepted,
    /// replacing what it remembered before, atomically.
    pub fn remember_escrow(&self, escrow: &Escrow) -> Result<(), ClientError> {
        let text = format!(
            "# The vault escrow this device last saw and accepted (SPEC 8.7), kept by\n\
             # backupctl to notice a replacement from another device. Not a secret.\n\
             account = \"{}\"\nepoch = \"{}\"\nregistered_at_unix_secs = {}\nkind = \"{}\"\n",
            self.account(),
            escrow.epoch.to_hex(),
            escrow.registered_at_unix_secs,
            escrow.kind.map_or(UNKNOWN_KIND, RegistrationMode::label)
        );
        write_file(
            &self.escrow_epoch_file,
            "escrow epoch file",
            text.as_bytes(),
            Replace::Yes,
        )
    }

    /// Forgets the remembered escrow. Returns whether there was one.
    pub fn forget_escrow(&self) -> Result<bool, ClientError> {
        remove_file(&self.escrow_epoch_file)
    }
}

/// Deletes `path`; returns whether it existed.
fn remove_file(path: &Path) -> Result<bool, ClientError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ClientError::Profile(format!(
            "cannot delete {}: {e}; delete it by hand",
            path.display()
        ))),
    }
}

/// A profile in `dir`, for unit tests that need real key files next to it
/// but no network: nothing listens at its chatd URL.
#[cfg(test)]
impl Profile {
    #[allow(clippy::unwrap_used)]
    pub(crate) fn for_tests(dir: &Path) -> Profile {
        let path = dir.join("profile.toml");
        fs::write(
            &path,
            format!(
                "chatd_url = \"ws://127.0.0.1:1\"\nchatd_key = \"{k}\"\nfleet_id = \"f\"\nfleet_key = \"{k}\"\naccount = \"alice\"\ndevice_key_file = \"device.key\"\n",
                k = "11".repeat(32)
            ),
        )
        .unwrap();
        Profile::load(&path).unwrap()
    }
}

/// Fills `buf` from the operating system's random number generator.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), ClientError> {
    getrandom::fill(buf)
        .map_err(|source| ClientError::Backup(crate::backup::BackupIoError::Random { source }))
}

/// Reads a key file: `Ok(None)` if it does not exist; an error if it is
/// readable by group or others, or is not 64 hex digits.
fn read_key_file(path: &Path) -> Result<Option<Zeroizing<[u8; ROOT_KEY_LEN]>>, ClientError> {
    let shown = path.display();
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ClientError::Profile(format!(
                "cannot read key file {shown}: {e}; check its permissions"
            )))
        }
    };
    if !meta.is_file() {
        return Err(ClientError::Profile(format!(
            "key file {shown} is not a regular file; point the profile at the key file"
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(ClientError::Profile(format!(
                "key file {shown} may be read by other users; run `chmod 600 {shown}` (and consider the key exposed if others could read it)"
            )));
        }
    }
    let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| {
        ClientError::Profile(format!(
            "cannot read key file {shown}: {e}; check its permissions"
        ))
    })?);
    let mut out = Zeroizing::new([0u8; ROOT_KEY_LEN]);
    hex::decode_to_slice(text.trim(), out.as_mut_slice()).map_err(|_| {
        ClientError::Profile(format!(
            "key file {shown} is not a key (expected 64 hex digits); restore it from a copy"
        ))
    })?;
    Ok(Some(out))
}

/// Writes `hex_text` and a newline to a new file at `path` with mode 0600,
/// refusing to replace an existing file.
fn write_key_file(path: &Path, hex_text: &str) -> Result<(), ClientError> {
    let mut contents = Zeroizing::new(Vec::with_capacity(hex_text.len() + 1));
    contents.extend_from_slice(hex_text.as_bytes());
    contents.push(b'\n');
    write_file(path, "key file", &contents, Replace::No)
}

/// Whether [`write_file`] may replace an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    Yes,
    No,
}

/// Writes `contents` to `path` (a `noun`, for messages) with mode 0600,
/// atomically: a temporary file in the same folder, synced, then renamed
/// into place (and the folder synced), so a crash leaves the old file or
/// the new one, never part of either.
fn write_file(
    path: &Path,
    noun: &str,
    contents: &[u8],
    replace: Replace,
) -> Result<(), ClientError> {
    let shown = path.display();
    let fail = |what: &str, e: io::Error| {
        ClientError::Profile(format!(
            "cannot {what} {noun} {shown}: {e}; check that its folder exists and is writable"
        ))
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".key-").suffix(".partial");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o600));
    }
    let mut temp = builder.tempfile_in(dir).map_err(|e| fail("create", e))?;
    temp.write_all(contents)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| fail("write", e))?;
    match replace {
        Replace::Yes => temp
            .persist(path)
            .map(drop)
            .map_err(|e| fail("replace", e.error))?,
        Replace::No => temp.persist_noclobber(path).map(drop).map_err(|e| {
            if e.error.kind() == io::ErrorKind::AlreadyExists {
                ClientError::Profile(format!(
                    "{noun} {shown} appeared while it was being written; run the command again"
                ))
            } else {
                fail("create", e.error)
            }
        })?,
    }
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn profile(dir: &Path, extra: &str) -> PathBuf {
        let p = dir.join("profile.toml");
        fs::write(
            &p,
            format!(
                "chatd_url = \"ws://127.0.0.1:1\"\nchatd_key = \"{k}\"\nfleet_id = \"f\"\nfleet_key = \"{k}\"\naccount = \"alice\"\ndevice_key_file = \"device.key\"\n{extra}",
                k = "11".repeat(32)
            ),
        )
        .unwrap();
        p
    }

    #[test]
    fn paths_are_relative_to_the_profile() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::load(&profile(dir.path(), "")).unwrap();
        assert_eq!(p.device_key_file, dir.path().join("device.key"));
        assert_eq!(p.backup_key_file, dir.path().join("backup.key"));
        let p = Profile::load(&profile(dir.path(), "backup_key_file = \"/abs/k\"\n")).unwrap();
        assert_eq!(p.backup_key_file, PathBuf::from("/abs/k"));
    }

    #[test]
    fn unknown_fields_and_bad_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = Profile::load(&profile(dir.path(), "colour = \"blue\"\n")).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let p = dir.path().join("bad.toml");
        fs::write(
            &p,
            fs::read_to_string(profile(dir.path(), ""))
                .unwrap()
                .replace(&"11".repeat(32), "zz"),
        )
        .unwrap();
        let e = Profile::load(&p).unwrap_err();
        assert!(e.to_string().contains("chatd_key"), "{e}");
    }

    #[test]
    fn key_files_are_private_and_never_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::load(&profile(dir.path(), "")).unwrap();
        assert!(p.cached_backup_key().unwrap().is_none());
        let (k1, created) = p.device_key_or_create().unwrap();
        assert!(created);
        let mode = fs::metadata(&p.device_key_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (k2, created) = p.device_key_or_create().unwrap();
        assert!(!created);
        assert_eq!(k1.public_key(), k2.public_key());

        let key = RootKey::from_entropy([7u8; 30]);
        p.cache_backup_key(&key).unwrap();
        assert_eq!(p.require_backup_key().unwrap(), key);
        assert!(p.cache_backup_key(&key).is_err(), "never replaced");

        fs::set_permissions(&p.backup_key_file, fs::Permissions::from_mode(0o644)).unwrap();
        let e = p.require_backup_key().unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert!(p.forget_backup_key().unwrap());
        assert!(matches!(
            p.require_backup_key(),
            Err(ClientError::NoBackupKey)
        ));
    }
}
