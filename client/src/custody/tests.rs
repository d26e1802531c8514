//! The custody rules against real key files in a temporary profile folder.
//! Nothing here needs a vault: the network half of each operation is
//! replaced by the answer it would give.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;

use protocol_spec::codes::CloseCode;

use super::*;
use crate::vault_flow::FlowError;

fn key(byte: u8) -> RootKey {
    RootKey::from_entropy([byte; 30])
}

/// Makes the cached key file unreadable for the profile's rules (readable
/// by others), which the key-file reader refuses whoever runs the test.
fn expose(profile: &Profile) {
    fs::set_permissions(&profile.backup_key_file, fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn enable_manual_caches_a_new_key_once_then_shows_that_key() {
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::for_tests(dir.path());
    let first = enable_manual(&profile).unwrap();
    assert_eq!(first.origin, KeyOrigin::New);
    assert_eq!(profile.require_backup_key().unwrap(), first.key);
    let mode = fs::metadata(&profile.backup_key_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = enable_manual(&profile).unwrap();
    assert_eq!(again.origin, KeyOrigin::Existing);
    assert_eq!(again.key, first.key);
}

#[test]
fn a_cached_key_that_cannot_be_read_is_never_replaced_by_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::for_tests(dir.path());
    profile.cache_backup_key(&key(1)).unwrap();
    expose(&profile);
    let before = fs::read(&profile.backup_key_file).unwrap();
    assert!(key_to_protect(&profile).is_err());
    assert!(enable_manual(&profile).is_err());
    assert!(EscrowCandidate::prepare(&profile).is_err());
    assert_eq!(fs::read(&profile.backup_key_file).unwrap(), before);
}

#[test]
fn a_new_key_is_cached_before_it_is_escrowed() {
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::for_tests(dir.path());
    let candidate = EscrowCandidate::prepare(&profile).unwrap();
    assert_eq!(candidate.origin, KeyOrigin::New);
    // On disk before the registration goes out.
    assert_eq!(profile.require_backup_key().unwrap(), candidate.key);
    let enabled = candidate
        .settle(Ok(NewRegistration {
            max_attempts: 7,
            escrow: None,
        }))
        .unwrap();
    assert_eq!((enabled.max_attempts, enabled.key), (7, KeyOrigin::New));
    assert!(matches!(enabled.escrow, Accepted::NotReported));
    assert!(profile.cached_backup_key().unwrap().is_some());
}

#[test]
fn the_escrow_this_device_registers_is_the_one_it_remembers() {
    use protocol_spec::messages::vault::{Escrow, EscrowEpoch};
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::for_tests(dir.path());
    let made = Escrow {
        epoch: EscrowEpoch::of_registration(&[4; 32]),
        registered_at_unix_secs: 1_796_133_780,
        kind: Some(RegistrationMode::Replace),
    };
    let enabled = EscrowCandidate::prepare(&profile)
        .unwrap()
        .settle(Ok(NewRegistration {
            max_attempts: 5,
            escrow: Some(made),
        }))
        .unwrap();
    assert!(matches!(enabled.escrow, Accepted::Remembered(e) if e == made));
    assert_eq!(profile.remembered_escrow().unwrap(), Some(made));
    // A refused registration remembers nothing new.
    let other = tempfile::tempdir().unwrap();
    let fresh = Profile::for_tests(other.path());
    let _ = EscrowCandidate::prepare(&fresh)
        .unwrap()
        .settle(Err(ClientError::RegistrationUnknown));
    assert_eq!(fresh.remembered_escrow().unwrap(), None);
}

#[test]
fn the_existing_key_is_escrowed_and_survives_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::for_tests(dir.path());
    profile.cache_backup_key(&key(2)).unwrap();
    let candidate = EscrowCandidate::prepare(&profile).unwrap();
    assert_eq!(candidate.origin, KeyOrigin::Existing);
    assert_eq!(candidate.key, key(2));
    let e = candidate
        .settle(Err(ClientError::Flow(FlowError::AlreadyRegistered)))
        .unwrap_err();
    assert!(matches!(e, ClientError::Flow(FlowError::AlreadyRegistered)));
    assert_eq!(profile.require_backup_key().unwrap(), key(2));
}

#[test]
fn a_refused_escrow_undoes_the_cache_of_a_new_key() {
    for refusal in [
        ClientError::Flow(FlowError::AlreadyRegistered),
        ClientError::Closed(CloseCode::NotEnrolled),
        ClientError::Dropped,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let profile = Profile::for_tests(dir.path());
        let candidate = EscrowCandidate::prepare(&profile).unwrap();
        let shown = format!("{refusal:?}");
        let e = candidate.settle(Err(refusal)).unwrap_err();
        // The caller sees the vault's answer, untouched.
        assert_eq!(format!("{e:?}"), shown);
        assert!(!profile.backup_key_file.exists(), "{shown}");
    }
}

#[test]
fn an_escrow_that_may_have_landed_keeps_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::for_tests(dir.path());
    let candidate = EscrowCandidate::prepare(&profile).unwrap();
    let escrowed = candidate.key.clone();
    let e = candidate
        .settle(Err(ClientError::RegistrationUnknown))
        .unwrap_err();
    assert!(matches!(e, ClientError::RegistrationUnknown));
    // A retry (or --replace) must escrow this same key.
    assert_eq!(profile.require_backup_key().unwrap(), escrowed);
    let (next, origin) = key_to_protect(&profile).unwrap();
    assert_eq!((next, origin), (escrowed, KeyOrigin::Existing));
}

#[test]
fn the_cached_key_is_compared_with_the_vault_key() {
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::for_tests(dir.path());
    assert!(matches!(
        compare_cached_key(&profile, &key(1)),
        CachedKey::Absent
    ));
    profile.cache_backup_key(&key(1)).unwrap();
    assert!(matches!(
        compare_cached_key(&profile, &key(1)),
        CachedKey::Same
    ));
    assert!(matches!(
        compare_cached_key(&profile, &key(2)),
        CachedKey::Different
    ));
    expose(&profile);
    assert!(matches!(
        compare_cached_key(&profile, &key(1)),
        CachedKey::Unreadable(ClientError::Profile(_))
    ));
}

#[test]
fn disabling_forgets_only_the_vault_key() {
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::for_tests(dir.path());
    assert!(matches!(
        forget_if_vault_key(&profile, &key(1)),
        Ok(ForgottenKey::NoneCached)
    ));

    profile.cache_backup_key(&key(1)).unwrap();
    // A different key may be the only copy of a 64-digit key.
    assert!(matches!(
        forget_if_vault_key(&profile, &key(2)),
        Ok(ForgottenKey::KeptDifferent)
    ));
    assert_eq!(profile.require_backup_key().unwrap(), key(1));

    assert!(matches!(
        forget_if_vault_key(&profile, &key(1)),
        Ok(ForgottenKey::Deleted)
    ));
    assert!(!profile.backup_key_file.exists());

    // Unreadable: nobody knows whose key it is, so it stays.
    profile.cache_backup_key(&key(1)).unwrap();
    expose(&profile);
    assert!(matches!(
        forget_if_vault_key(&profile, &key(1)),
        Ok(ForgottenKey::LeftAlone(ClientError::Profile(_)))
    ));
    assert!(profile.backup_key_file.exists());
}

#[test]
fn a_password_restore_caches_the_vault_key_only_on_a_device_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::for_tests(dir.path());
    assert!(matches!(
        keep_vault_key(&profile, &key(1)),
        VaultKeyKept::CachedNow
    ));
    assert_eq!(profile.require_backup_key().unwrap(), key(1));
    assert!(matches!(
        keep_vault_key(&profile, &key(1)),
        VaultKeyKept::AlreadyCached
    ));
    // Never replaced: the device's own key may be the only copy.
    assert!(matches!(
        keep_vault_key(&profile, &key(2)),
        VaultKeyKept::KeptDifferent
    ));
    assert_eq!(profile.require_backup_key().unwrap(), key(1));
    expose(&profile);
    let before = fs::read(&profile.backup_key_file).unwrap();
    assert!(matches!(
        keep_vault_key(&profile, &key(2)),
        VaultKeyKept::NotCached(ClientError::Profile(_))
    ));
    assert_eq!(fs::read(&profile.backup_key_file).unwrap(), before);
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn the_escrow_check_is_skipped_on_a_device_that_is_not_enrolled() {
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::for_tests(dir.path());
    assert!(matches!(
        block_on(check_password_escrow(&profile)),
        Ok(EscrowCheck::NotEnrolled)
    ));
}

#[test]
fn the_escrow_check_is_a_note_when_chatd_is_unreachable_but_an_unusable_device_key_fails() {
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::for_tests(dir.path());
    profile.device_key_or_create().unwrap();
    // Nothing listens at the profile's chatd URL: one try, then a note.
    assert!(matches!(
        block_on(check_password_escrow(&profile)),
        Ok(EscrowCheck::Unknown(ClientError::Connect { .. }))
    ));
    fs::set_permissions(&profile.device_key_file, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        block_on(check_password_escrow(&profile)),
        Err(ClientError::Profile(_))
    ));
}
