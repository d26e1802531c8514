//! What a failed `backupctl` command means, to a script and to a person.
//!
//! This module owns the table of exit codes (documented in `backupctl
//! --help`) and the one-sentence explanation, with the next step, printed
//! for every [`ClientError`]. Nothing here prints key material: errors
//! never carry any.

use protocol_spec::codes::{CloseCode, TunnelCloseCode, VaultErrorCode};
use protocol_spec::error::PasswordError;
use protocol_spec::messages::vault::RegistrationMode;

use crate::backup::BackupIoError;
use crate::error::ClientError;
use crate::escrow::{self, EscrowChange};
use crate::vault_flow::FlowError;

/// `backupctl`'s exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// Any other error.
    Other = 1,
    /// Bad arguments or unusable input (empty or short password, mistyped
    /// 64-digit key, missing `--yes`, no profile given).
    Usage = 2,
    /// The password was wrong; the attempt is spent.
    WrongPassword = 3,
    /// The escrowed key was erased after too many wrong passwords.
    Locked = 4,
    /// Password backups are not enabled, or this device has no backup key.
    NotEnabled = 5,
    /// chatd or the vault could not be reached or is unavailable: retryable.
    Unavailable = 6,
    /// The backup is unreadable: corrupt, tampered with, truncated, or made
    /// with another key.
    BackupUnreadable = 7,
    /// This device is not enrolled, was revoked, or the enrolment code was
    /// rejected.
    NotEnrolled = 8,
    /// A local file problem: output exists, input not found, permissions,
    /// an unsafe or damaged key file or profile.
    LocalFile = 9,
    /// Object storage refused for good: the bucket or the backup object
    /// does not exist, access was denied, or the storage settings cannot
    /// work (such as a plain http:// endpoint that is not allowed).
    Storage = 10,
    /// `status`: the vault holds another escrow than the one this device
    /// last saw and accepted (a forgotten-password reset, a password change
    /// or password backups enabled anew, from another device).
    EscrowChanged = 11,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The exit code for `e`.
pub fn exit_for(e: &ClientError) -> Exit {
    match e {
        ClientError::Connect { .. } | ClientError::Dropped => Exit::Unavailable,
        ClientError::Refused { .. } => Exit::Other,
        ClientError::Closed(c) => match c {
            CloseCode::NotEnrolled | CloseCode::EnrolmentRejected | CloseCode::DeviceRevoked => {
                Exit::NotEnrolled
            }
            c if c.retryable() => Exit::Unavailable,
            _ => Exit::Other,
        },
        ClientError::TunnelClosed(c) if c.retryable() => Exit::Unavailable,
        ClientError::TunnelClosed(_) | ClientError::Protocol(_) => Exit::Other,
        ClientError::Flow(f) => match f {
            FlowError::WrongPassword { .. } => Exit::WrongPassword,
            FlowError::Locked => Exit::Locked,
            FlowError::NotRegistered => Exit::NotEnabled,
            FlowError::Vault(c) if c.retryable() => Exit::Unavailable,
            FlowError::AlreadyRegistered
            | FlowError::Vault(_)
            | FlowError::Unexpected(_)
            | FlowError::Verification => Exit::Other,
        },
        ClientError::Backup(b) => match b {
            BackupIoError::Format { .. } => Exit::BackupUnreadable,
            BackupIoError::BadLocation { .. } => Exit::Usage,
            BackupIoError::Read { .. }
            | BackupIoError::Write { .. }
            | BackupIoError::Io { .. }
            | BackupIoError::OutputExists { .. }
            | BackupIoError::IsDirectory { .. } => Exit::LocalFile,
            // file:// is a local file, whatever library reads it.
            BackupIoError::ObjectStore {
                source: object_store::Error::NotFound { .. },
                location,
            } if location.starts_with("file:") => Exit::LocalFile,
            BackupIoError::ObjectStore {
                source:
                    object_store::Error::NotFound { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. },
                ..
            }
            | BackupIoError::BucketNotFound { .. }
            | BackupIoError::PlainHttpEndpoint { .. }
            | BackupIoError::ObjectStoreConfig { .. } => Exit::Storage,
            BackupIoError::ObjectStore { .. } => Exit::Unavailable,
            BackupIoError::Random { .. } | BackupIoError::Runtime { .. } => Exit::Other,
        },
        ClientError::Profile(_) => Exit::LocalFile,
        ClientError::NoDeviceKey { .. } => Exit::NotEnrolled,
        ClientError::LoginInterrupted { source, .. } => exit_for(source),
        ClientError::Input(_) | ClientError::KeyText(_) | ClientError::Password(_) => Exit::Usage,
        ClientError::NoBackupKey => Exit::NotEnabled,
        ClientError::RegistrationUnknown => Exit::Unavailable,
        ClientError::Cancelled => Exit::Other,
        ClientError::EscrowChanged(_) | ClientError::EscrowNotDescribed(_) => Exit::EscrowChanged,
    }
}

/// One sentence saying what happened and what to do next.
pub fn explain(e: &ClientError) -> String {
    const AGAIN: &str = "try again in a moment";
    match e {
        ClientError::Refused { url, reason } => format!(
            "chatd at {url} refused the connection ({reason}); check chatd_url in the profile"
        ),
        ClientError::Connect { url, reason } => format!(
            "cannot reach chatd at {url} ({reason}); check the network and chatd_url in the profile, then try again"
        ),
        ClientError::Dropped => format!("the connection to chatd dropped; {AGAIN}"),
        ClientError::Closed(c) => match c {
            CloseCode::NotEnrolled => "chatd does not know this device for this account: it is not enrolled; run `backupctl enroll --code CODE` with a code from your operator".into(),
            CloseCode::EnrolmentRejected => "chatd rejected the enrolment code: it is invalid, expired or already used; ask your operator for a new code".into(),
            CloseCode::DeviceRevoked => "this device's key has been revoked for this account; ask your operator for a new enrolment code, delete the device key file and run `backupctl enroll` again".into(),
            CloseCode::HandshakeFailed => "chatd refused the handshake; check chatd_key and account in the profile".into(),
            c if c.retryable() => format!("chatd closed the connection ({}); {AGAIN}", c.reason()),
            c => format!("chatd closed the connection ({}); check the profile, or upgrade backupctl if this persists", c.reason()),
        },
        ClientError::TunnelClosed(c) if c.retryable() => {
            format!("the vault is unavailable right now ({}); {AGAIN}", c.reason())
        }
        ClientError::TunnelClosed(c) => match c {
            TunnelCloseCode::HandshakeFailed => "the vault refused the tunnel handshake; check fleet_key in the profile".into(),
            c => format!("the vault closed the tunnel ({}); check fleet_key and fleet_id in the profile, or upgrade backupctl", c.reason()),
        },
        ClientError::Protocol(why) => format!(
            "protocol error: {why}; check the keys in the profile, or upgrade backupctl if this persists"
        ),
        ClientError::Flow(f) => explain_flow(f),
        ClientError::Backup(b) => b.to_string(),
        ClientError::Profile(why) | ClientError::Input(why) => why.clone(),
        ClientError::NoDeviceKey { .. } | ClientError::NoBackupKey | ClientError::Cancelled => {
            e.to_string()
        }
        ClientError::KeyText(k) => format!(
            "{k}; type the 64-digit key again exactly as written down (spaces and dashes are ignored)"
        ),
        ClientError::LoginInterrupted {
            source,
            last_attempt: false,
        } => format!(
            "{} (it happened during the password check, so one password attempt may have been used)",
            explain(source)
        ),
        // Not "try again": the key may be gone, and if it is not, the next
        // try is the last attempt again.
        ClientError::LoginInterrupted {
            source,
            last_attempt: true,
        } => format!(
            "{source} during the password check on the last password attempt, so the vault may now have erased the escrowed backup key: run `backupctl status` to see whether it is still registered (the attempt was not counted) or locked (the key is gone for good)"
        ),
        ClientError::Password(PasswordError::Empty) => {
            "the password is empty; type the password (or pipe it in, one line)".into()
        }
        ClientError::Password(p) => format!(
            "{p}; nothing was sent and no password attempt was used: a password must be one line of characters every device can type, so type it again without that character"
        ),
        ClientError::RegistrationUnknown => format!(
            "{e}; run `backupctl status`: if it says registered, run `backupctl enable --password --replace` to make sure the vault holds this device's key, otherwise try again"
        ),
        ClientError::EscrowChanged(change) => explain_escrow_change(change),
        ClientError::EscrowNotDescribed(seen) => format!(
            "the vault no longer says which escrow it holds, though it did before (this device last saw one registered {}): an older or another vault answered, and a replacement would not show; ask your operator whether the vault was downgraded or chatd reaches the wrong vault, and do not trust `status` until it describes the escrow again",
            escrow::described(seen)
        ),
    }
}

/// What replaced the escrow, when, what it means for this device, and what
/// to do. Who did it the vault cannot know; that it was not this device
/// follows from this device remembering every escrow it made.
fn explain_escrow_change(change: &EscrowChange) -> String {
    let when = escrow::utc(change.now.registered_at_unix_secs);
    let seen = escrow::described(&change.seen);
    let key_may_differ = "the vault may now hold another backup key than this device's, so backups made here may not restore with a password";
    let what = match change.now.kind {
        Some(RegistrationMode::Replace) => format!(
            "escrow replaced {when} by another device (a forgotten-password reset): the escrow this device last saw (registered {seen}) is gone and its password no longer works; {key_may_differ}"
        ),
        Some(RegistrationMode::ChangePassword) => format!(
            "password changed {when} by another device: the escrow this device last saw (registered {seen}) is replaced by one under a new password, and the old password no longer works (a password change keeps the backup key)"
        ),
        Some(RegistrationMode::Create) => format!(
            "password backups enabled anew {when} by another device, after the escrow this device last saw (registered {seen}) was erased or disabled; {key_may_differ}"
        ),
        None => format!(
            "the vault holds another escrow than the one this device last saw (registered {seen}), registered {when} by another device; {key_may_differ}"
        ),
    };
    format!(
        "{what}. If that was you, accept it here with `backupctl restore --password` and the current password: after a password change any backup will do; after a reset or a new enable, only a backup made since then opens with the new key. \
If it was not, someone who can act for your account did it: run `backupctl enable --password --replace` to escrow this device's key under a new password, and ask your operator which devices are enrolled"
    )
}

fn explain_flow(f: &FlowError) -> String {
    match f {
        FlowError::WrongPassword { attempts_remaining } => {
            let n = attempts_remaining;
            let attempts = if *n == 1 { "attempt remains" } else { "attempts remain" };
            format!("wrong password: {n} {attempts}; at 0 the escrowed key is erased for good")
        }
        FlowError::Locked => "the escrowed backup key was erased after too many wrong passwords; backups protected by it cannot be recovered with a password (use the 64-digit key if you kept one)".into(),
        FlowError::NotRegistered => "password backups are not enabled for this account (the vault holds no key for it); run `backupctl enable --password`, or restore with --key".into(),
        FlowError::AlreadyRegistered => "password backups are already enabled; use change-password, or enable --password --replace to start over with a new key (the old escrowed key and backups made with it become unrecoverable through the vault)".into(),
        FlowError::Vault(c) if c.retryable() => {
            format!("the vault is busy or unavailable ({}); try again in a moment", c.reason())
        }
        FlowError::Vault(c) => match c {
            VaultErrorCode::LoginExpired => "the password check took too long and counted as a failed attempt; run the command again".into(),
            VaultErrorCode::RecordChanged => "the password backup was changed from another device during this operation; run `backupctl status`, then run the command again".into(),
            VaultErrorCode::IntegrityFailure => "the vault's stored record for this account failed its integrity check; contact your operator".into(),
            c => format!("the vault refused the request ({}); upgrade backupctl, or report this if it persists", c.reason()),
        },
        FlowError::Unexpected(what) => format!(
            "unexpected answer from the vault ({what}); upgrade backupctl, or report this if it persists"
        ),
        FlowError::Verification => "the vault's answer failed verification; check fleet_key and fleet_id in the profile (or the connection is being tampered with)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_failures_say_try_again_and_exit_6() {
        for e in [
            ClientError::Dropped,
            ClientError::Closed(CloseCode::Draining),
            ClientError::TunnelClosed(TunnelCloseCode::VaultUnavailable),
            ClientError::Flow(FlowError::Vault(VaultErrorCode::Unavailable)),
            ClientError::LoginInterrupted {
                source: Box::new(ClientError::Dropped),
                last_attempt: false,
            },
        ] {
            assert_eq!(exit_for(&e), Exit::Unavailable, "{e:?}");
            assert!(explain(&e).contains("try again"), "{}", explain(&e));
        }
    }

    #[test]
    fn an_interrupted_last_attempt_says_the_key_may_be_erased_and_how_to_check() {
        let e = ClientError::LoginInterrupted {
            source: Box::new(ClientError::Dropped),
            last_attempt: true,
        };
        assert_eq!(exit_for(&e), Exit::Unavailable);
        let text = explain(&e);
        assert!(text.contains("may now have erased"), "{text}");
        assert!(text.contains("backupctl status"), "{text}");
        assert!(
            !text.contains("one password attempt may have been used"),
            "{text}"
        );
    }

    #[test]
    fn a_refused_password_is_a_usage_error_that_spent_nothing() {
        let e = ClientError::Password(PasswordError::ControlCharacter);
        assert_eq!(exit_for(&e), Exit::Usage);
        assert!(explain(&e).contains("no password attempt was used"));
    }

    #[test]
    fn object_storage_refusals_are_final_and_not_local_file_problems() {
        let not_found = || object_store::Error::NotFound {
            path: "b/k".into(),
            source: "404".into(),
        };
        let bucket = ClientError::Backup(BackupIoError::BucketNotFound {
            location: "s3://b/k".into(),
            bucket: "b".into(),
            source: not_found(),
        });
        assert_eq!(exit_for(&bucket), Exit::Storage);
        assert!(!bucket.retryable());
        assert!(
            explain(&bucket).contains("bucket 'b'"),
            "{}",
            explain(&bucket)
        );
        let http = ClientError::Backup(BackupIoError::PlainHttpEndpoint {
            location: "s3://b/k".into(),
            endpoint: "http://127.0.0.1:9000".into(),
        });
        assert_eq!(exit_for(&http), Exit::Storage);
        assert!(explain(&http).contains("AWS_ALLOW_HTTP=true"));
        let missing = |location: &str| {
            exit_for(&ClientError::Backup(BackupIoError::ObjectStore {
                location: location.into(),
                source: not_found(),
            }))
        };
        assert_eq!(missing("s3://b/k"), Exit::Storage);
        assert_eq!(missing("file:///tmp/k"), Exit::LocalFile);
    }

    #[test]
    fn a_changed_escrow_exits_11_and_says_when_how_and_what_to_do() {
        use protocol_spec::messages::vault::{Escrow, EscrowEpoch};
        let seen = Escrow {
            epoch: EscrowEpoch::of_registration(&[1; 32]),
            registered_at_unix_secs: 1_764_000_000,
            kind: Some(RegistrationMode::Create),
        };
        let changed = |kind| {
            ClientError::EscrowChanged(EscrowChange {
                seen,
                now: Escrow {
                    epoch: EscrowEpoch::of_registration(&[2; 32]),
                    registered_at_unix_secs: 1_796_133_780,
                    kind,
                },
            })
        };
        for (kind, says, not) in [
            (
                Some(RegistrationMode::Replace),
                "escrow replaced 2026-12-01 14:03 UTC by another device (a forgotten-password reset)",
                "keeps the backup key",
            ),
            (
                Some(RegistrationMode::ChangePassword),
                "password changed 2026-12-01 14:03 UTC by another device",
                "forgotten-password",
            ),
            (
                Some(RegistrationMode::Create),
                "password backups enabled anew 2026-12-01 14:03 UTC by another device, after the escrow this device last saw",
                "forgotten-password",
            ),
            (None, "registered 2026-12-01 14:03 UTC by another device", "forgotten-password"),
        ] {
            let e = changed(kind);
            assert_eq!(exit_for(&e), Exit::EscrowChanged);
            assert_eq!(exit_for(&e).code(), 11);
            assert!(!e.retryable());
            let text = explain(&e);
            assert!(text.contains(says), "{kind:?}: {text}");
            assert!(!text.contains(not), "{kind:?}: {text}");
            assert!(text.contains("2025-11-24 16:00 UTC (password backups enabled)"), "{text}");
            assert!(text.contains("`backupctl restore --password`"), "{text}");
            assert!(text.contains("`backupctl enable --password --replace`"), "{text}");
            assert!(!text.contains('\n'), "one line: {text}");
        }
    }

    #[test]
    fn password_outcomes() {
        let e = ClientError::Flow(FlowError::WrongPassword {
            attempts_remaining: 2,
        });
        assert_eq!(exit_for(&e), Exit::WrongPassword);
        assert_eq!(
            explain(&e),
            "wrong password: 2 attempts remain; at 0 the escrowed key is erased for good"
        );
        assert_eq!(
            exit_for(&ClientError::Flow(FlowError::Locked)),
            Exit::Locked
        );
        assert_eq!(exit_for(&ClientError::NoBackupKey), Exit::NotEnabled);
        assert_eq!(
            exit_for(&ClientError::Closed(CloseCode::EnrolmentRejected)),
            Exit::NotEnrolled
        );
    }
}
