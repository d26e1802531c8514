//! Which escrow this device last saw and accepted, and what changed since
//! (SPEC.md 8.7).
//!
//! Whoever can act for an account can replace its escrow (a
//! forgotten-password `REPLACE`) or, knowing the password, change it; the
//! vault names every registration with an **escrow epoch** and says when
//! and how it was made. This module owns the device's side of that:
//!
//! - what counts as accepting an escrow: this device registered it
//!   (`enable --password`, `change-password`), or a password restore with
//!   it verified (the person knows the current password). Those paths call
//!   [`accept`]; `disable` calls [`forget`];
//! - [`compare`], sans-IO: the remembered escrow against the vault's
//!   `Status`. A device that never saw an epoch (older state, or a new
//!   device) starts tracking the current one quietly; a different epoch is
//!   an [`EscrowChange`], which `backupctl status` reports with exit 11;
//! - how a time and a kind are said to a person ([`utc`], [`described`]).
//!
//! The vault cannot say who made a registration (a tunnel carries no
//! device identity), only when and how; that it was not this device
//! follows from this device remembering every escrow it made. The file
//! lives next to the profile ([`crate::profile`]); nothing in it is secret.

use protocol_spec::messages::vault::{Escrow, RecordState, RegistrationMode, StatusReport};

use crate::error::ClientError;
use crate::profile::Profile;

/// How the vault's escrow compares with the one this device last accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpochCheck {
    /// The vault holds no registration (none, or locked). `remembered` is
    /// the escrow this device last saw, if any: it is gone.
    NoEscrow { remembered: Option<Escrow> },
    /// The vault is registered but does not describe its escrow (it was
    /// built before SPEC.md 8.7), and this device never saw one described:
    /// a replacement cannot be noticed.
    NotReported,
    /// This device saw an escrow described, and the vault that answers now
    /// no longer describes one. Vaults are upgraded after clients and never
    /// downgraded (SPEC.md 11), so an answer from an older or another vault
    /// could hide a replacement: reported, never trusted.
    NoLongerReported { seen: Escrow },
    /// This device had never seen an epoch; it now tracks this one.
    NowTracking(Escrow),
    /// The escrow this device last accepted.
    Unchanged(Escrow),
    /// Another escrow than the one this device last accepted.
    Changed(EscrowChange),
}

/// The vault holds another escrow than the one this device last accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EscrowChange {
    /// What this device last saw and accepted.
    pub seen: Escrow,
    /// What the vault holds now.
    pub now: Escrow,
}

/// Compares what this device remembers with the vault's status. Sans-IO:
/// [`check`] reads and writes the file around it.
pub fn compare(remembered: Option<Escrow>, status: &StatusReport) -> EpochCheck {
    if status.state != RecordState::Registered {
        return EpochCheck::NoEscrow { remembered };
    }
    match (remembered, status.escrow) {
        (None, None) => EpochCheck::NotReported,
        (Some(seen), None) => EpochCheck::NoLongerReported { seen },
        (None, Some(now)) => EpochCheck::NowTracking(now),
        (Some(seen), Some(now)) if seen.epoch == now.epoch => EpochCheck::Unchanged(now),
        (Some(seen), Some(now)) => EpochCheck::Changed(EscrowChange { seen, now }),
    }
}

/// [`compare`] with this profile's remembered escrow; an escrow seen for
/// the first time is remembered now.
pub fn check(profile: &Profile, status: &StatusReport) -> Result<EpochCheck, ClientError> {
    let found = compare(profile.remembered_escrow()?, status);
    if let EpochCheck::NowTracking(escrow) = &found {
        profile.remember_escrow(escrow)?;
    }
    Ok(found)
}

/// What [`accept`] did.
#[derive(Debug)]
pub enum Accepted {
    /// Remembered as the escrow this device last accepted.
    Remembered(Escrow),
    /// The vault did not describe its escrow; nothing to remember.
    NotReported,
    /// The file could not be written. The operation itself succeeded; the
    /// next `status` will report the escrow as changed.
    NotRemembered(ClientError),
}

/// This device made `escrow`, or a password restore with it verified:
/// remember it as the one this device accepted.
pub fn accept(profile: &Profile, escrow: Option<Escrow>) -> Accepted {
    match escrow {
        None => Accepted::NotReported,
        Some(e) => match profile.remember_escrow(&e) {
            Ok(()) => Accepted::Remembered(e),
            Err(err) => Accepted::NotRemembered(err),
        },
    }
}

/// This device deleted the escrow (`disable`): there is none to watch.
pub fn forget(profile: &Profile) -> Result<(), ClientError> {
    profile.forget_escrow().map(drop)
}

/// How a registration was made, as a person would say it.
pub fn kind_described(kind: Option<RegistrationMode>) -> &'static str {
    match kind {
        Some(RegistrationMode::Create) => "password backups enabled",
        Some(RegistrationMode::Replace) => "forgotten-password reset",
        Some(RegistrationMode::ChangePassword) => "password change",
        None => "made before the vault recorded how",
    }
}

/// `"2026-12-01 14:03 UTC (forgotten-password reset)"`: when and how.
pub fn described(escrow: &Escrow) -> String {
    format!(
        "{} ({})",
        utc(escrow.registered_at_unix_secs),
        kind_described(escrow.kind)
    )
}

/// A vault time as `2026-12-01 14:03 UTC`; 0 is "at an unknown time".
pub fn utc(unix_secs: u64) -> String {
    if unix_secs == 0 {
        return "at an unknown time".into();
    }
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for days ≥ 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use protocol_spec::messages::vault::EscrowEpoch;

    use super::*;

    fn escrow(seed: u8, kind: RegistrationMode) -> Escrow {
        Escrow {
            epoch: EscrowEpoch::of_registration(&[seed; 32]),
            registered_at_unix_secs: 1_796_133_780,
            kind: Some(kind),
        }
    }

    fn status(state: RecordState, escrow: Option<Escrow>) -> StatusReport {
        StatusReport {
            state,
            attempts_remaining: if state == RecordState::Registered {
                5
            } else {
                0
            },
            max_attempts: 5,
            escrow,
        }
    }

    #[test]
    fn times_read_as_utc_dates_checked_against_independent_values() {
        // python3: datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
        for (t, text) in [
            (1_796_133_780, "2026-12-01 14:03 UTC"),
            (1, "1970-01-01 00:00 UTC"),
            (951_825_599, "2000-02-29 11:59 UTC"),
            (4_102_444_800, "2100-01-01 00:00 UTC"),
            (1_709_251_199, "2024-02-29 23:59 UTC"),
        ] {
            assert_eq!(utc(t), text, "{t}");
        }
        assert_eq!(utc(0), "at an unknown time");
    }

    #[test]
    fn a_device_that_never_saw_an_epoch_starts_tracking_without_alarm() {
        let now = escrow(1, RegistrationMode::Create);
        let st = status(RecordState::Registered, Some(now));
        assert_eq!(compare(None, &st), EpochCheck::NowTracking(now));
        assert_eq!(compare(Some(now), &st), EpochCheck::Unchanged(now));
    }

    #[test]
    fn another_epoch_is_a_change_whatever_made_it() {
        let seen = escrow(1, RegistrationMode::Create);
        for kind in [
            RegistrationMode::Replace,
            RegistrationMode::ChangePassword,
            RegistrationMode::Create,
        ] {
            let now = escrow(2, kind);
            assert_eq!(
                compare(Some(seen), &status(RecordState::Registered, Some(now))),
                EpochCheck::Changed(EscrowChange { seen, now })
            );
        }
    }

    #[test]
    fn no_escrow_is_never_a_change_and_an_escrow_no_longer_described_is_reported() {
        let seen = escrow(1, RegistrationMode::Create);
        for state in [RecordState::None, RecordState::Locked] {
            assert_eq!(
                compare(Some(seen), &status(state, None)),
                EpochCheck::NoEscrow {
                    remembered: Some(seen)
                }
            );
            assert_eq!(
                compare(None, &status(state, None)),
                EpochCheck::NoEscrow { remembered: None }
            );
        }
        // A vault that never described its escrow to this device: nothing
        // to compare. One that did and no longer does is not trusted.
        assert_eq!(
            compare(None, &status(RecordState::Registered, None)),
            EpochCheck::NotReported
        );
        assert_eq!(
            compare(Some(seen), &status(RecordState::Registered, None)),
            EpochCheck::NoLongerReported { seen }
        );
    }

    #[test]
    fn a_profile_named_like_the_remembered_escrow_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = Profile::for_tests(dir.path());
        let path = dir.path().join("p.escrow-epoch");
        std::fs::copy(&good.path, &path).unwrap();
        let err = Profile::load(&path).unwrap_err().to_string();
        assert!(err.contains("rename the profile"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_remembered_escrow_others_could_edit_or_of_another_account_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let profile = Profile::for_tests(dir.path());
        let file = dir.path().join("profile.escrow-epoch");
        let e = escrow(1, RegistrationMode::Create);
        profile.remember_escrow(&e).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("account = \"alice\""), "{text}");

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o620)).unwrap();
        let err = profile.remembered_escrow().unwrap_err().to_string();
        assert!(err.contains("may be changed by other users"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(profile.remembered_escrow().unwrap(), Some(e));

        std::fs::write(&file, text.replace("alice", "mallory")).unwrap();
        let err = profile.remembered_escrow().unwrap_err().to_string();
        assert!(err.contains("of account mallory"), "{err}");
        // Written before the account was kept: still read.
        let old: String = text
            .lines()
            .filter(|l| !l.starts_with("account"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&file, old).unwrap();
        assert_eq!(profile.remembered_escrow().unwrap(), Some(e));

        for (bytes, why) in [
            (vec![0xff, 0xfe, b'\n'], "not UTF-8"),
            (vec![b'#'; 5000], "far longer"),
        ] {
            std::fs::write(&file, bytes).unwrap();
            let err = profile.remembered_escrow().unwrap_err().to_string();
            assert!(err.contains(why) && err.contains("damaged"), "{err}");
        }
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir(&file).unwrap();
        let err = profile.remembered_escrow().unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn the_profile_remembers_and_replaces_the_escrow_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let profile = Profile::for_tests(dir.path());
        assert_eq!(
            profile.escrow_epoch_file,
            dir.path().join("profile.escrow-epoch")
        );
        let first = escrow(1, RegistrationMode::Create);
        let st = status(RecordState::Registered, Some(first));
        assert_eq!(
            check(&profile, &st).unwrap(),
            EpochCheck::NowTracking(first)
        );
        assert_eq!(profile.remembered_escrow().unwrap(), Some(first));
        assert_eq!(check(&profile, &st).unwrap(), EpochCheck::Unchanged(first));

        // Status alone never accepts a change: it keeps reporting it.
        let second = Escrow {
            registered_at_unix_secs: 0,
            kind: None,
            ..escrow(2, RegistrationMode::Replace)
        };
        let st2 = status(RecordState::Registered, Some(second));
        for _ in 0..2 {
            assert_eq!(
                check(&profile, &st2).unwrap(),
                EpochCheck::Changed(EscrowChange {
                    seen: first,
                    now: second
                })
            );
        }
        assert!(matches!(
            accept(&profile, Some(second)),
            Accepted::Remembered(_)
        ));
        assert_eq!(profile.remembered_escrow().unwrap(), Some(second));
        assert_eq!(
            check(&profile, &st2).unwrap(),
            EpochCheck::Unchanged(second)
        );
        assert!(matches!(accept(&profile, None), Accepted::NotReported));
        assert_eq!(profile.remembered_escrow().unwrap(), Some(second));

        // Nothing is left behind but the file, and it is plain text.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let text = std::fs::read_to_string(&profile.escrow_epoch_file).unwrap();
        assert!(text.contains(&second.epoch.to_hex()), "{text}");
        assert!(text.contains("kind = \"unknown\""), "{text}");

        forget(&profile).unwrap();
        assert_eq!(profile.remembered_escrow().unwrap(), None);
        forget(&profile).unwrap();
    }

    #[test]
    fn a_damaged_file_says_how_to_recover() {
        let dir = tempfile::tempdir().unwrap();
        let profile = Profile::for_tests(dir.path());
        for bad in [
            "epoch = \"zz\"\nregistered_at_unix_secs = 1\nkind = \"create\"\n",
            "epoch = \"00000000000000000000000000000000\"\nregistered_at_unix_secs = 1\nkind = \"sideways\"\n",
            "epoch = \"00000000000000000000000000000000\"\n",
            "colour = \"blue\"\n",
        ] {
            std::fs::write(&profile.escrow_epoch_file, bad).unwrap();
            let e = profile.remembered_escrow().unwrap_err();
            assert!(e.to_string().contains("delete it"), "{e}");
        }
    }
}
