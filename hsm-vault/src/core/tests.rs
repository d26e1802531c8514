//! Unit tests of the core, driven without sockets or sleeps: a software
//! sealer, an in-memory log and seeded randomness stand in for the HSM,
//! storage and the OS. (Integration tests run the same flows against real
//! SoftHSM and the real binary.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, ServerSetup,
};
use protocol_spec::codes::VaultErrorCode;
use protocol_spec::ids::{AccountId, FleetId};
use protocol_spec::keywrap;
use protocol_spec::messages::vault::{
    Escrow, RecordState, RegistrationMode, StatusReport, VaultRequest, VaultResponse,
};
use protocol_spec::opaque::{self, Suite};
use protocol_spec::root_key::RootKey;
use rand_core::OsRng;

use super::*;
use crate::entropy::SeededEntropy;
use crate::seal::SoftSealer;
use crate::state::memory::MemoryRecords;
use crate::state::record::{self, RecordBody};

const MAX: u32 = 5;

struct Fixture {
    vault: Vault,
    log: Arc<MemoryRecords>,
    fleet: FleetId,
    now: Now,
}

fn fixture_with(setup: ServerSetup<Suite>, log: Arc<MemoryRecords>) -> Fixture {
    let fleet = FleetId::new("test-fleet").unwrap();
    let vault = Vault::new(
        Platform {
            sealer: Arc::new(SoftSealer::new([7; 32])),
            records: log.clone(),
            entropy: Arc::new(SeededEntropy::new(42)),
        },
        setup,
        VaultParams {
            fleet_id: fleet.clone(),
            max_attempts: MAX,
            login_timeout: Duration::from_secs(60),
            account_limits: super::limits::AccountLimits::off(),
        },
    );
    Fixture {
        vault,
        log,
        fleet,
        now: Now::system(),
    }
}

fn fixture() -> Fixture {
    fixture_with(
        ServerSetup::<Suite>::new(&mut OsRng),
        Arc::new(MemoryRecords::default()),
    )
}

fn account(name: &str) -> AccountId {
    AccountId::new(name).unwrap()
}

fn root_key(seed: u8) -> RootKey {
    RootKey::from_entropy([seed; 30])
}

impl Fixture {
    fn req(&self, s: &mut VaultSession, r: VaultRequest) -> VaultResponse {
        self.vault.handle(self.now, s, r)
    }

    /// Registers `password` escrowing `k` in a fresh tunnel; returns the
    /// response to RegisterFinish.
    fn register(
        &self,
        acct: &AccountId,
        password: &[u8],
        k: &RootKey,
        mode: RegistrationMode,
    ) -> VaultResponse {
        let mut s = VaultSession::new(acct.clone());
        self.register_in(&mut s, password, k, mode)
    }

    fn register_in(
        &self,
        s: &mut VaultSession,
        password: &[u8],
        k: &RootKey,
        mode: RegistrationMode,
    ) -> VaultResponse {
        let acct = s.account().clone();
        let start = ClientRegistration::<Suite>::start(&mut OsRng, password).unwrap();
        let resp = self.req(
            s,
            VaultRequest::RegisterStart {
                mode,
                registration_request: start.message.serialize().to_vec(),
            },
        );
        let VaultResponse::RegisterStarted {
            registration_response,
        } = resp
        else {
            return resp;
        };
        let ksf = opaque::ksf();
        let finish = start
            .state
            .finish(
                &mut OsRng,
                password,
                opaque_ke::RegistrationResponse::deserialize(&registration_response).unwrap(),
                ClientRegistrationFinishParameters::new(
                    opaque::identifiers(&acct, &self.fleet),
                    Some(&ksf),
                ),
            )
            .unwrap();
        let wrapped = keywrap::wrap(&finish.export_key, &acct, k, [1; 12]).unwrap();
        self.req(
            s,
            VaultRequest::RegisterFinish {
                registration_upload: finish.message.serialize().to_vec(),
                wrapped_key: wrapped,
            },
        )
    }

    /// Runs a login in `s`. Returns the final response and, on success, K.
    fn login_in(&self, s: &mut VaultSession, password: &[u8]) -> (VaultResponse, Option<RootKey>) {
        self.login_seeing(s, password, &mut |_| {})
    }

    /// [`Fixture::login_in`], showing `seen` every response (the start's
    /// as well as the finish's).
    fn login_seeing(
        &self,
        s: &mut VaultSession,
        password: &[u8],
        seen: &mut dyn FnMut(&VaultResponse),
    ) -> (VaultResponse, Option<RootKey>) {
        let acct = s.account().clone();
        let start = ClientLogin::<Suite>::start(&mut OsRng, password).unwrap();
        let resp = self.req(
            s,
            VaultRequest::LoginStart {
                credential_request: start.message.serialize().to_vec(),
            },
        );
        seen(&resp);
        let VaultResponse::LoginStarted {
            credential_response,
            ..
        } = resp
        else {
            return (resp, None);
        };
        let ksf = opaque::ksf();
        let finish = start.state.finish(
            &mut OsRng,
            password,
            opaque_ke::CredentialResponse::deserialize(&credential_response).unwrap(),
            ClientLoginFinishParameters::new(
                Some(opaque::CONTEXT),
                opaque::identifiers(&acct, &self.fleet),
                Some(&ksf),
            ),
        );
        let Ok(finish) = finish else {
            // Wrong password: the client cannot produce a valid KE3; it sends
            // garbage to learn the count, as a hostile client might.
            let r = self.req(
                s,
                VaultRequest::LoginFinish {
                    credential_finalization: vec![0u8; 64],
                },
            );
            seen(&r);
            return (r, None);
        };
        let r = self.req(
            s,
            VaultRequest::LoginFinish {
                credential_finalization: finish.message.serialize().to_vec(),
            },
        );
        seen(&r);
        let k = match &r {
            VaultResponse::LoginSucceeded { wrapped_key } => {
                Some(keywrap::unwrap(&finish.export_key, &acct, wrapped_key).unwrap())
            }
            _ => None,
        };
        (r, k)
    }

    fn login(&self, acct: &AccountId, password: &[u8]) -> (VaultResponse, Option<RootKey>) {
        let mut s = VaultSession::new(acct.clone());
        self.login_in(&mut s, password)
    }

    fn status(&self, acct: &AccountId) -> StatusReport {
        let mut s = VaultSession::new(acct.clone());
        match self.req(&mut s, VaultRequest::Status) {
            VaultResponse::Status(r) => r,
            other => panic!("status answered {other:?}"),
        }
    }

    /// Sends a login start and returns the session left pending (or the
    /// response if none was started).
    fn start_login(&self, acct: &AccountId) -> Result<(VaultSession, u32), VaultResponse> {
        let mut s = VaultSession::new(acct.clone());
        let start = ClientLogin::<Suite>::start(&mut OsRng, b"whatever").unwrap();
        match self.req(
            &mut s,
            VaultRequest::LoginStart {
                credential_request: start.message.serialize().to_vec(),
            },
        ) {
            VaultResponse::LoginStarted {
                attempts_remaining, ..
            } => Ok((s, attempts_remaining)),
            other => Err(other),
        }
    }

    fn raw_record(&self, acct: &AccountId) -> Option<crate::state::record::StoredRecord> {
        self.log.raw().get(acct).cloned()
    }
}

#[test]
fn register_login_releases_the_escrowed_key() {
    let f = fixture();
    let a = account("alice");
    let k = root_key(1);
    assert_eq!(f.status(&a).state, RecordState::None);
    assert!(matches!(
        f.register(&a, b"correct horse", &k, RegistrationMode::Create),
        VaultResponse::Registered {
            max_attempts: MAX,
            escrow: Some(_)
        }
    ));
    let st = f.status(&a);
    assert_eq!(
        (st.state, st.attempts_remaining),
        (RecordState::Registered, MAX)
    );
    let (r, got) = f.login(&a, b"correct horse");
    assert!(matches!(r, VaultResponse::LoginSucceeded { .. }), "{r:?}");
    assert_eq!(got.unwrap(), k);
    assert_eq!(f.status(&a).attempts_remaining, MAX);
}

#[test]
fn exactly_max_attempts_then_erased_forever() {
    let f = fixture();
    let a = account("bob");
    let k = root_key(2);
    f.register(&a, b"right", &k, RegistrationMode::Create);
    for i in 1..=MAX {
        let (r, _) = f.login(&a, b"wrong");
        if i < MAX {
            assert_eq!(
                r,
                VaultResponse::LoginFailed {
                    attempts_remaining: MAX - i
                }
            );
        } else {
            assert_eq!(
                r,
                VaultResponse::LoginFailed {
                    attempts_remaining: 0
                }
            );
        }
    }
    let st = f.status(&a);
    assert_eq!((st.state, st.attempts_remaining), (RecordState::Locked, 0));
    // The right password no longer works, and nothing secret is left.
    assert_eq!(f.login(&a, b"right").0, VaultResponse::Locked);
    let stored = f.raw_record(&a).unwrap();
    let body = record::unseal(&SoftSealer::new([7; 32]), &a, &stored).unwrap();
    assert!(matches!(body, RecordBody::Locked { .. }));
}

#[test]
fn success_resets_the_count() {
    let f = fixture();
    let a = account("carol");
    let k = root_key(3);
    f.register(&a, b"pw", &k, RegistrationMode::Create);
    for _ in 0..MAX - 1 {
        f.login(&a, b"nope");
    }
    assert_eq!(f.status(&a).attempts_remaining, 1);
    let (r, got) = f.login(&a, b"pw");
    assert!(matches!(r, VaultResponse::LoginSucceeded { .. }));
    assert_eq!(got.unwrap(), k);
    assert_eq!(f.status(&a).attempts_remaining, MAX);
}

#[test]
fn abandoned_logins_count_and_ke2_never_exceeds_the_limit() {
    let f = fixture();
    let a = account("dave");
    f.register(&a, b"pw", &root_key(4), RegistrationMode::Create);
    let mut ke2 = 0;
    for _ in 0..3 * MAX {
        match f.start_login(&a) {
            Ok((mut s, _)) => {
                ke2 += 1;
                f.vault.close(f.now, &mut s); // the client just goes away
            }
            Err(r) => assert_eq!(r, VaultResponse::Locked),
        }
    }
    assert_eq!(ke2, MAX);
    assert_eq!(f.status(&a).state, RecordState::Locked);
}

#[test]
fn last_attempt_in_flight_blocks_others_and_can_still_succeed() {
    let f = fixture();
    let a = account("erin");
    let k = root_key(5);
    f.register(&a, b"pw", &k, RegistrationMode::Create);
    for _ in 0..MAX - 1 {
        f.login(&a, b"nope");
    }
    // The last attempt: start it in one tunnel and leave it pending.
    let mut pending = VaultSession::new(a.clone());
    let start = ClientLogin::<Suite>::start(&mut OsRng, b"pw").unwrap();
    let VaultResponse::LoginStarted {
        credential_response,
        attempts_remaining,
    } = f.req(
        &mut pending,
        VaultRequest::LoginStart {
            credential_request: start.message.serialize().to_vec(),
        },
    )
    else {
        panic!("no KE2")
    };
    assert_eq!(attempts_remaining, 0);
    // Others cannot start, and status does not erase it meanwhile.
    assert_eq!(
        f.start_login(&a).err(),
        Some(VaultResponse::Error(VaultErrorCode::Busy))
    );
    let st = f.status(&a);
    assert_eq!(
        (st.state, st.attempts_remaining),
        (RecordState::Registered, 0)
    );
    // The pending login succeeds and resets.
    let ksf = opaque::ksf();
    let finish = start
        .state
        .finish(
            &mut OsRng,
            b"pw",
            opaque_ke::CredentialResponse::deserialize(&credential_response).unwrap(),
            ClientLoginFinishParameters::new(
                Some(opaque::CONTEXT),
                opaque::identifiers(&a, &f.fleet),
                Some(&ksf),
            ),
        )
        .unwrap();
    let r = f.req(
        &mut pending,
        VaultRequest::LoginFinish {
            credential_finalization: finish.message.serialize().to_vec(),
        },
    );
    assert!(matches!(r, VaultResponse::LoginSucceeded { .. }));
    assert_eq!(f.status(&a).attempts_remaining, MAX);
}

#[test]
fn last_attempt_expiring_or_abandoned_erases() {
    let f = fixture();
    let a = account("frank");
    f.register(&a, b"pw", &root_key(6), RegistrationMode::Create);
    for _ in 0..MAX - 1 {
        f.login(&a, b"nope");
    }
    let (mut s, remaining) = f.start_login(&a).unwrap();
    assert_eq!(remaining, 0);
    let later = f.now.after(Duration::from_secs(61));
    assert_eq!(
        f.vault.handle(
            later,
            &mut s,
            VaultRequest::LoginFinish {
                credential_finalization: vec![1; 64]
            }
        ),
        VaultResponse::Error(VaultErrorCode::LoginExpired)
    );
    assert_eq!(f.status(&a).state, RecordState::Locked);

    // Same through the driver's timer.
    let b = account("grace");
    f.register(&b, b"pw", &root_key(7), RegistrationMode::Create);
    for _ in 0..MAX - 1 {
        f.login(&b, b"nope");
    }
    let (mut s, _) = f.start_login(&b).unwrap();
    assert!(s.login_deadline().is_some());
    f.vault.expire(f.now.after(Duration::from_secs(61)), &mut s);
    assert_eq!(s.state_label(), "idle");
    assert_eq!(f.status(&b).state, RecordState::Locked);
    // The KE3 that comes after the timer fired is told why (SPEC 8.2).
    assert_eq!(
        f.req(
            &mut s,
            VaultRequest::LoginFinish {
                credential_finalization: vec![1; 64]
            }
        ),
        VaultResponse::Error(VaultErrorCode::LoginExpired)
    );

    // And by any other request in the pending session.
    let c = account("heidi");
    f.register(&c, b"pw", &root_key(8), RegistrationMode::Create);
    for _ in 0..MAX - 1 {
        f.login(&c, b"nope");
    }
    let (mut s, _) = f.start_login(&c).unwrap();
    assert_eq!(
        f.req(&mut s, VaultRequest::Status),
        VaultResponse::Error(VaultErrorCode::UnexpectedRequest)
    );
    assert_eq!(f.status(&c).state, RecordState::Locked);
}

#[test]
fn a_crash_after_counting_keeps_the_attempt_and_the_next_touch_erases() {
    let log = Arc::new(MemoryRecords::default());
    let setup = ServerSetup::<Suite>::new(&mut OsRng);
    let a = account("ivan");
    {
        let f = fixture_with(setup.clone(), log.clone());
        f.register(&a, b"pw", &root_key(9), RegistrationMode::Create);
    }
    // Each login start "crashes" right after its increment is durable.
    for _ in 0..MAX {
        let f = fixture_with(setup.clone(), log.clone());
        let vault = f.vault.with_failpoint(Box::new(|p| {
            if p == Failpoint::AttemptCommitted {
                panic!("simulated crash");
            }
        }));
        let f = Fixture { vault, ..f };
        let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.start_login(&a)));
        assert!(crashed.is_err());
    }
    // A fresh process (no login in flight) sees every attempt spent and
    // erases the record at the first touch.
    let f = fixture_with(setup, log);
    let st = f.status(&a);
    assert_eq!((st.state, st.attempts_remaining), (RecordState::Locked, 0));
    assert_eq!(f.login(&a, b"pw").0, VaultResponse::Locked);
}

#[test]
fn no_commit_no_ke2() {
    let f = fixture();
    let a = account("judy");
    f.register(&a, b"pw", &root_key(10), RegistrationMode::Create);
    f.log.set_unavailable(true);
    assert_eq!(
        f.start_login(&a).err(),
        Some(VaultResponse::Error(VaultErrorCode::Unavailable))
    );
    f.log.set_unavailable(false);
    assert_eq!(f.status(&a).attempts_remaining, MAX);
}

#[test]
fn concurrent_wrong_logins_never_exceed_the_limit() {
    let f = Arc::new(fixture());
    let a = account("mallory");
    f.register(&a, b"pw", &root_key(11), RegistrationMode::Create);
    let ke2 = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for _ in 0..8 {
            let (f, a, ke2) = (f.clone(), a.clone(), ke2.clone());
            scope.spawn(move || {
                for _ in 0..4 {
                    if let Ok((mut s, _)) = f.start_login(&a) {
                        ke2.fetch_add(1, Ordering::SeqCst);
                        f.vault.close(f.now, &mut s);
                    }
                }
            });
        }
    });
    assert_eq!(ke2.load(Ordering::SeqCst), MAX as usize);
    assert_eq!(f.status(&a).state, RecordState::Locked);
}

#[test]
fn change_password_keeps_k_and_needs_a_login_in_the_same_tunnel() {
    let f = fixture();
    let a = account("ken");
    let k = root_key(12);
    f.register(&a, b"old", &k, RegistrationMode::Create);
    // Not logged in: refused, nothing changes.
    let before = f.raw_record(&a);
    assert_eq!(
        f.register(&a, b"new", &k, RegistrationMode::ChangePassword),
        VaultResponse::Error(VaultErrorCode::NotLoggedIn)
    );
    assert_eq!(f.raw_record(&a), before);
    // Logged in, same tunnel: allowed.
    let mut s = VaultSession::new(a.clone());
    let (r, got) = f.login_in(&mut s, b"old");
    assert!(matches!(r, VaultResponse::LoginSucceeded { .. }));
    let got = got.unwrap();
    assert!(matches!(
        f.register_in(&mut s, b"new", &got, RegistrationMode::ChangePassword),
        VaultResponse::Registered {
            max_attempts: MAX,
            escrow: Some(_)
        }
    ));
    assert_eq!(f.login(&a, b"new").1.unwrap(), k);
    assert!(matches!(
        f.login(&a, b"old").0,
        VaultResponse::LoginFailed { .. }
    ));
}

#[test]
fn replace_create_and_delete() {
    let f = fixture();
    let a = account("leo");
    f.register(&a, b"one", &root_key(13), RegistrationMode::Create);
    assert_eq!(
        f.register(&a, b"two", &root_key(14), RegistrationMode::Create),
        VaultResponse::AlreadyRegistered
    );
    // Forgotten password: replace without logging in.
    assert!(matches!(
        f.register(&a, b"two", &root_key(14), RegistrationMode::Replace),
        VaultResponse::Registered {
            max_attempts: MAX,
            escrow: Some(_)
        }
    ));
    assert!(matches!(
        f.login(&a, b"one").0,
        VaultResponse::LoginFailed { .. }
    ));
    assert_eq!(f.login(&a, b"two").1.unwrap(), root_key(14));
    // Delete needs a login in the tunnel.
    let mut s = VaultSession::new(a.clone());
    assert_eq!(
        f.req(&mut s, VaultRequest::Delete),
        VaultResponse::Error(VaultErrorCode::NotLoggedIn)
    );
    f.login_in(&mut s, b"two");
    assert_eq!(f.req(&mut s, VaultRequest::Delete), VaultResponse::Deleted);
    assert_eq!(f.status(&a).state, RecordState::None);
    assert_eq!(f.login(&a, b"two").0, VaultResponse::NotRegistered);
    // Create works again after delete, and after a lockout.
    assert!(matches!(
        f.register(&a, b"three", &root_key(15), RegistrationMode::Create),
        VaultResponse::Registered { .. }
    ));
    for _ in 0..MAX {
        f.login(&a, b"x");
    }
    assert_eq!(f.status(&a).state, RecordState::Locked);
    assert!(matches!(
        f.register(&a, b"four", &root_key(16), RegistrationMode::Create),
        VaultResponse::Registered { .. }
    ));
    assert_eq!(f.login(&a, b"four").1.unwrap(), root_key(16));
}

/// The escrow a `Registered` names (panics on anything else).
fn registered_escrow(r: VaultResponse) -> Escrow {
    match r {
        VaultResponse::Registered {
            escrow: Some(e), ..
        } => e,
        other => panic!("expected Registered with an escrow, got {other:?}"),
    }
}

#[test]
fn every_registration_is_a_new_escrow_epoch_with_its_time_and_kind() {
    let mut f = fixture();
    let a = account("epoch");
    assert_eq!(f.status(&a).escrow, None, "none: no escrow");
    let created = registered_escrow(f.register(&a, b"one", &root_key(1), RegistrationMode::Create));
    assert_eq!(created.kind, Some(RegistrationMode::Create));
    assert_eq!(created.registered_at_unix_secs, f.now.unix_secs);
    assert_eq!(
        f.status(&a).escrow,
        Some(created),
        "Status names what Registered did"
    );

    // Logins, failed or not, and their resets keep the epoch.
    f.now = f.now.after(Duration::from_secs(3600));
    f.login(&a, b"wrong");
    assert_eq!(f.login(&a, b"one").1.unwrap(), root_key(1));
    assert_eq!(f.status(&a).escrow, Some(created));

    // A password change keeps K but is a new epoch, made now.
    let mut s = VaultSession::new(a.clone());
    f.login_in(&mut s, b"one");
    let changed = registered_escrow(f.register_in(
        &mut s,
        b"two",
        &root_key(1),
        RegistrationMode::ChangePassword,
    ));
    assert_ne!(changed.epoch, created.epoch);
    assert_eq!(changed.kind, Some(RegistrationMode::ChangePassword));
    assert_eq!(changed.registered_at_unix_secs, f.now.unix_secs);
    assert_eq!(f.status(&a).escrow, Some(changed));

    // A forgotten-password replacement from anywhere: a new epoch again.
    f.now = f.now.after(Duration::from_secs(60));
    let replaced =
        registered_escrow(f.register(&a, b"three", &root_key(2), RegistrationMode::Replace));
    assert_ne!(replaced.epoch, changed.epoch);
    assert_ne!(replaced.epoch, created.epoch);
    assert_eq!(replaced.kind, Some(RegistrationMode::Replace));
    assert_eq!(replaced.registered_at_unix_secs, f.now.unix_secs);
    assert_eq!(f.status(&a).escrow, Some(replaced));

    // Locked: no escrow to name; created again afterwards: a new one.
    for _ in 0..MAX {
        f.login(&a, b"x");
    }
    let st = f.status(&a);
    assert_eq!((st.state, st.escrow), (RecordState::Locked, None));
    let again = registered_escrow(f.register(&a, b"four", &root_key(3), RegistrationMode::Create));
    assert_eq!(again.kind, Some(RegistrationMode::Create));
    for seen in [created, changed, replaced] {
        assert_ne!(again.epoch, seen.epoch);
    }
    assert_eq!(f.status(&a).escrow, Some(again));
}

#[test]
fn a_record_written_before_the_epoch_reports_one_with_unknown_time_and_kind() {
    let f = fixture();
    let a = account("older");
    let made = registered_escrow(f.register(&a, b"pw", &root_key(5), RegistrationMode::Create));
    // Rewrite the stored record as the previous build did: a format 1
    // body (no time, no kind) sealed at the same version.
    let sealer = SoftSealer::new([7; 32]);
    let stored = f.raw_record(&a).unwrap();
    let RecordBody::Registered(reg) = record::unseal(&sealer, &a, &stored).unwrap() else {
        panic!("registered")
    };
    let mut old = vec![1, 1];
    old.extend_from_slice(&reg.attempts_used.to_be_bytes());
    old.extend_from_slice(&reg.registration_nonce);
    old.extend_from_slice(&reg.opaque_record);
    old.extend_from_slice(&reg.wrapped_key);
    let sealed = crate::seal::Sealer::seal(
        &sealer,
        &record::record_aad(&a, stored.version),
        [0x5a; crate::seal::SEAL_IV_LEN],
        &old,
    )
    .unwrap();
    f.log.raw().insert(
        a.clone(),
        record::StoredRecord {
            version: stored.version,
            sealed,
        },
    );
    let unknown = Escrow {
        registered_at_unix_secs: 0,
        kind: None,
        ..made
    };
    assert_eq!(f.status(&a).escrow, Some(unknown), "same epoch: same nonce");
    // It still logs in, and the write that resets the count keeps the
    // epoch and the unknowns.
    assert_eq!(f.login(&a, b"pw").1.unwrap(), root_key(5));
    assert_eq!(f.status(&a).escrow, Some(unknown));
    let rewritten = f.raw_record(&a).unwrap();
    assert!(rewritten.version > stored.version);
}

#[test]
fn out_of_order_and_malformed_requests_change_nothing() {
    let f = fixture();
    let a = account("mia");
    f.register(&a, b"pw", &root_key(17), RegistrationMode::Create);
    let before = f.raw_record(&a);
    let mut s = VaultSession::new(a.clone());
    let unexpected = VaultResponse::Error(VaultErrorCode::UnexpectedRequest);
    assert_eq!(
        f.req(
            &mut s,
            VaultRequest::LoginFinish {
                credential_finalization: vec![0; 64]
            }
        ),
        unexpected
    );
    assert_eq!(
        f.req(
            &mut s,
            VaultRequest::RegisterFinish {
                registration_upload: vec![0; 192],
                wrapped_key: keywrap::wrap(&[0; 64], &a, &root_key(1), [0; 12]).unwrap()
            }
        ),
        unexpected
    );
    // Not a ristretto255 point: bad request, and no attempt spent.
    assert_eq!(
        f.req(
            &mut s,
            VaultRequest::LoginStart {
                credential_request: vec![0xff; 96]
            }
        ),
        VaultResponse::Error(VaultErrorCode::BadRequest)
    );
    assert_eq!(
        f.req(
            &mut s,
            VaultRequest::RegisterStart {
                mode: RegistrationMode::Replace,
                registration_request: vec![0xff; 32]
            }
        ),
        VaultResponse::Error(VaultErrorCode::BadRequest)
    );
    assert_eq!(s.state_label(), "idle");
    assert_eq!(f.raw_record(&a), before);
    assert_eq!(f.status(&a).attempts_remaining, MAX);
}

#[test]
fn registration_starts_use_a_fresh_oprf_key_each_time() {
    let f = fixture();
    let a = account("nina");
    let req = ClientRegistration::<Suite>::start(&mut OsRng, b"pw").unwrap();
    let bytes = req.message.serialize().to_vec();
    let mut responses = Vec::new();
    for _ in 0..2 {
        let mut s = VaultSession::new(a.clone());
        let r = f.req(
            &mut s,
            VaultRequest::RegisterStart {
                mode: RegistrationMode::Create,
                registration_request: bytes.clone(),
            },
        );
        let VaultResponse::RegisterStarted {
            registration_response,
        } = r
        else {
            panic!()
        };
        responses.push(registration_response);
    }
    // Same blinded element, different evaluations: the OPRF key differs, so
    // registration starts are no oracle for any live record's key.
    assert_ne!(responses[0][..32], responses[1][..32]);
}

#[test]
fn tampered_and_swapped_records_are_refused() {
    let f = fixture();
    let a = account("oscar");
    let b = account("peggy");
    f.register(&a, b"pw-a", &root_key(18), RegistrationMode::Create);
    f.register(&b, b"pw-b", &root_key(19), RegistrationMode::Create);
    let ra = f.raw_record(&a).unwrap();
    let rb = f.raw_record(&b).unwrap();
    // Swap the two accounts' records.
    f.log.raw().insert(a.clone(), rb.clone());
    let integrity = VaultResponse::Error(VaultErrorCode::IntegrityFailure);
    let mut s = VaultSession::new(a.clone());
    assert_eq!(f.req(&mut s, VaultRequest::Status), integrity);
    assert_eq!(f.login(&a, b"pw-b").0, integrity);
    // Flip one byte of the sealed body.
    let mut t = ra.clone();
    let n = t.sealed.len();
    t.sealed[n / 2] ^= 1;
    f.log.raw().insert(a.clone(), t);
    assert_eq!(f.login(&a, b"pw-a").0, integrity);
    // Nothing was written while refusing.
    assert_eq!(f.raw_record(&b), Some(rb));
}

/// The core's first read of a login may be stale (a replica's local state,
/// no quorum round). A stale "not registered" must be re-read before it is
/// answered, and a count built on a stale version must conflict, never
/// apply: with every optimistic read one commit behind, logins still work
/// and every attempt is counted exactly once.
#[test]
fn stale_optimistic_reads_are_confirmed_before_answering() {
    let f = fixture();
    f.log.set_stale_reads(true);
    let a = account("lagging");
    f.register(&a, b"pw", &root_key(12), RegistrationMode::Create);
    let (r, k) = f.login(&a, b"pw");
    assert!(matches!(r, VaultResponse::LoginSucceeded { .. }), "{r:?}");
    assert_eq!(k, Some(root_key(12)));
    for used in 1..=MAX {
        let (r, _) = f.login(&a, b"wrong");
        assert_eq!(
            r,
            VaultResponse::LoginFailed {
                attempts_remaining: MAX - used
            }
        );
        assert_eq!(f.status(&a).attempts_remaining, MAX - used);
    }
    assert_eq!(f.status(&a).state, RecordState::Locked);
    assert_eq!(f.login(&a, b"pw").0, VaultResponse::Locked);
    let b = account("never-registered");
    assert_eq!(f.login(&b, b"pw").0, VaultResponse::NotRegistered);
}

/// Model-based: random interleavings of right and wrong logins, abandoned
/// and pending starts, garbage finishes, tunnel closes, clock jumps past the
/// login timeout and crashes (a new core over the same log), on one
/// account. Whatever the order, the vault never answers more than `MAX`
/// KE2s between successes, reports exactly the attempts spent, and once it
/// has said the record is locked the right password never works again.
/// Half the runs give the core stale optimistic reads.
mod model {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Right(usize),
        Wrong(usize),
        StartOnly(usize),
        GarbageFinish(usize, Vec<u8>),
        Close(usize),
        Status,
        Advance(u64),
        Crash,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (0..3usize).prop_map(Op::Right),
            4 => (0..3usize).prop_map(Op::Wrong),
            3 => (0..3usize).prop_map(Op::StartOnly),
            2 => (0..3usize, proptest::collection::vec(any::<u8>(), 0..80))
                .prop_map(|(s, b)| Op::GarbageFinish(s, b)),
            2 => (0..3usize).prop_map(Op::Close),
            2 => Just(Op::Status),
            1 => (1..120u64).prop_map(Op::Advance),
            1 => Just(Op::Crash),
        ]
    }

    struct Model {
        /// KE2 answers since the last success (pending ones included).
        spent: u32,
        locked_seen: bool,
    }

    impl Model {
        fn saw(&mut self, r: &VaultResponse) {
            match r {
                VaultResponse::LoginStarted { .. } => {
                    self.spent += 1;
                    assert!(
                        self.spent <= MAX,
                        "KE2 number {} between successes",
                        self.spent
                    );
                }
                VaultResponse::LoginSucceeded { .. } => {
                    assert!(
                        !self.locked_seen,
                        "a login succeeded after the record was locked"
                    );
                    self.spent = 0;
                }
                VaultResponse::Locked => self.locked_seen = true,
                _ => {}
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 64, ..ProptestConfig::default() })]
        #[test]
        fn attempt_limit_holds_under_any_interleaving(
            ops in proptest::collection::vec(op(), 1..24),
            stale in any::<bool>(),
        ) {
            let log = Arc::new(MemoryRecords::default());
            // Half the runs serve the core's optimistic reads one commit
            // late, as a replica whose state machine lags would.
            log.set_stale_reads(stale);
            let setup = ServerSetup::<Suite>::new(&mut OsRng);
            let a = account("eve");
            let mut f = fixture_with(setup.clone(), log.clone());
            f.register(&a, b"pw", &root_key(1), RegistrationMode::Create);
            let mut sessions: Vec<VaultSession> = (0..3).map(|_| VaultSession::new(a.clone())).collect();
            let mut m = Model { spent: 0, locked_seen: false };
            for op in ops {
                match op {
                    Op::Right(i) => {
                        let (_, k) = f.login_seeing(&mut sessions[i], b"pw", &mut |r| m.saw(r));
                        if let Some(k) = k {
                            prop_assert_eq!(k, root_key(1));
                        }
                        sessions[i] = VaultSession::new(a.clone());
                    }
                    Op::Wrong(i) => {
                        let (r, _) = f.login_seeing(&mut sessions[i], b"not the password", &mut |r| m.saw(r));
                        prop_assert!(!matches!(r, VaultResponse::LoginSucceeded { .. }), "a wrong password logged in");
                        sessions[i] = VaultSession::new(a.clone());
                    }
                    Op::StartOnly(i) => {
                        let start = ClientLogin::<Suite>::start(&mut OsRng, b"pw").unwrap();
                        let r = f.req(&mut sessions[i], VaultRequest::LoginStart {
                            credential_request: start.message.serialize().to_vec(),
                        });
                        m.saw(&r);
                    }
                    Op::GarbageFinish(i, bytes) => {
                        let r = f.req(&mut sessions[i], VaultRequest::LoginFinish { credential_finalization: bytes });
                        prop_assert!(!matches!(r, VaultResponse::LoginSucceeded { .. }), "a garbage KE3 logged in");
                        m.saw(&r);
                    }
                    Op::Close(i) => {
                        f.vault.close(f.now, &mut sessions[i]);
                        sessions[i] = VaultSession::new(a.clone());
                    }
                    Op::Status => {
                        let st = f.status(&a);
                        match st.state {
                            RecordState::Registered => {
                                prop_assert!(!m.locked_seen);
                                prop_assert_eq!(st.attempts_remaining, MAX - m.spent);
                            }
                            RecordState::Locked => m.locked_seen = true,
                            RecordState::None => prop_assert!(false, "the record vanished without a lock"),
                        }
                    }
                    Op::Advance(secs) => {
                        f.now = Now {
                            instant: f.now.instant + Duration::from_secs(secs),
                            unix_secs: f.now.unix_secs + secs,
                        };
                    }
                    Op::Crash => {
                        let now = f.now;
                        f = fixture_with(setup.clone(), log.clone());
                        f.now = now;
                        sessions = (0..3).map(|_| VaultSession::new(a.clone())).collect();
                    }
                }
            }
            // Whatever happened, a final status agrees with the model.
            let st = f.status(&a);
            if m.locked_seen {
                prop_assert_eq!(st.state, RecordState::Locked);
                prop_assert!(f.login(&a, b"pw").1.is_none());
            } else if st.state == RecordState::Registered {
                prop_assert_eq!(st.attempts_remaining, MAX - m.spent);
            }
        }
    }
}

/// SPEC 8.2 names the error a late `LoginFinish` gets; the core must give
/// that one whether the deadline is found by the driver's timer or by the
/// `LoginFinish` itself. Reads the code from SPEC.md, so the two cannot
/// drift apart again.
#[test]
fn a_late_login_finish_gets_the_error_spec_8_2_names() {
    let spec = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../protocol-spec/SPEC.md"
    ))
    .unwrap();
    let sentence = spec
        .split("a `LoginFinish` after that gets")
        .nth(1)
        .expect("SPEC 8.2 says what a late LoginFinish gets");
    let named: u32 = sentence
        .trim_start()
        .trim_start_matches("`Error(")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("an error code");
    let f = fixture();
    let a = account("ivan");
    f.register(&a, b"pw", &root_key(9), RegistrationMode::Create);
    let late = f.now.after(Duration::from_secs(61));
    let finish = || VaultRequest::LoginFinish {
        credential_finalization: vec![1; 64],
    };
    let (mut by_request, _) = f.start_login(&a).unwrap();
    let (mut by_timer, _) = f.start_login(&a).unwrap();
    f.vault.expire(late, &mut by_timer);
    for s in [&mut by_request, &mut by_timer] {
        match f.vault.handle(late, s, finish()) {
            VaultResponse::Error(code) => assert_eq!(code.value(), named, "{code:?}"),
            other => panic!("expected Error({named}), got {other:?}"),
        }
    }
}
