//! The vault core (`hsm_vault::core::Vault::handle`) driven by someone who
//! does not know the password: sequences of requests on several sessions,
//! some decoded from raw wire bytes, some with OPAQUE messages of the right
//! length but arbitrary content, some well-formed first messages from a
//! client with a wrong password, with the clock moving between them.
//!
//! One account ("alice") is registered up front with a real client (the
//! client's Argon2id runs once per process). Whatever the input, the
//! target asserts what SPEC.md 8 promises about her:
//! - the core never panics;
//! - no login succeeds and no wrapped key is released;
//! - at most `MAX` KE2 answers (counted attempts) are given, and every
//!   `attempts_remaining` she is shown agrees with that count;
//! - her record is never replaced or deleted: at the end it is still her
//!   registration (same OPAQUE record and `wrapped_K`, attempts used equal
//!   to the KE2s given) or, only if every attempt was spent, a tombstone.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hsm_vault::core::{Now, Platform, Vault, VaultParams, VaultSession};
use hsm_vault::entropy::SeededEntropy;
use hsm_vault::seal::SoftSealer;
use hsm_vault::state::record::{self, RecordBody, Registration, StoredRecord};
use hsm_vault::state::{MemoryRecords, Records};
use libfuzzer_sys::fuzz_target;
use opaque_ke::{ClientLogin, ClientRegistration, ClientRegistrationFinishParameters, ServerSetup};
use protocol_spec::ids::{AccountId, FleetId};
use protocol_spec::keywrap;
use protocol_spec::messages::vault::{RecordState, RegistrationMode, VaultRequest, VaultResponse};
use protocol_spec::messages::WireMessage;
use protocol_spec::opaque::{self, sizes, Suite};
use protocol_spec::root_key::RootKey;
use rand_core::OsRng;

const MAX: u32 = 4;
const SEAL_KEY: [u8; 32] = [7; 32];

struct Template {
    setup: ServerSetup<Suite>,
    fleet: FleetId,
    alice: AccountId,
    stored: StoredRecord,
    registration: Registration,
}

fn params(fleet: &FleetId) -> VaultParams {
    VaultParams {
        fleet_id: fleet.clone(),
        max_attempts: MAX,
        login_timeout: Duration::from_secs(60),
        account_limits: hsm_vault::core::limits::AccountLimits::off(),
    }
}

fn vault(setup: ServerSetup<Suite>, fleet: &FleetId, log: Arc<MemoryRecords>) -> Vault {
    Vault::new(
        Platform {
            sealer: Arc::new(SoftSealer::new(SEAL_KEY)),
            records: log,
            entropy: Arc::new(SeededEntropy::new(1)),
        },
        setup,
        params(fleet),
    )
}

/// Registers alice once, with the real client flow.
fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let setup = ServerSetup::<Suite>::new(&mut OsRng);
        let fleet = FleetId::new("fuzz-fleet").expect("fleet id");
        let alice = AccountId::new("alice").expect("account id");
        let log = Arc::new(MemoryRecords::default());
        let v = vault(setup.clone(), &fleet, log.clone());
        let now = Now::system();
        let mut s = VaultSession::new(alice.clone());
        let start = ClientRegistration::<Suite>::start(&mut OsRng, b"the password").expect("start");
        let VaultResponse::RegisterStarted {
            registration_response,
        } = v.handle(
            now,
            &mut s,
            VaultRequest::RegisterStart {
                mode: RegistrationMode::Create,
                registration_request: start.message.serialize().to_vec(),
            },
        )
        else {
            panic!("template registration did not start")
        };
        let ksf = opaque::ksf();
        let finish = start
            .state
            .finish(
                &mut OsRng,
                b"the password",
                opaque_ke::RegistrationResponse::deserialize(&registration_response)
                    .expect("response"),
                ClientRegistrationFinishParameters::new(
                    opaque::identifiers(&alice, &fleet),
                    Some(&ksf),
                ),
            )
            .expect("finish");
        let k = RootKey::from_entropy([3; 30]);
        let wrapped = keywrap::wrap(&finish.export_key, &alice, &k, [1; 12]).expect("wrap");
        let r = v.handle(
            now,
            &mut s,
            VaultRequest::RegisterFinish {
                registration_upload: finish.message.serialize().to_vec(),
                wrapped_key: wrapped,
            },
        );
        assert!(matches!(r, VaultResponse::Registered { .. }), "{r:?}");
        let stored = log.read(&alice).expect("read").expect("alice stored");
        let RecordBody::Registered(registration) =
            record::unseal(&SoftSealer::new(SEAL_KEY), &alice, &stored).expect("unseal")
        else {
            panic!("alice not registered")
        };
        Template {
            setup,
            fleet,
            alice,
            stored,
            registration,
        }
    })
}

/// Reads the fuzz input front to back; past the end, zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }

    /// The next `n` bytes, padded with zeros past the end (so sized
    /// messages keep their size).
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let (a, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        let mut v = a.to_vec();
        v.resize(n, 0);
        v
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What alice has been shown so far.
#[derive(Default)]
struct Seen {
    ke2: u32,
}

impl Seen {
    fn check(&mut self, r: &VaultResponse) {
        match r {
            VaultResponse::LoginSucceeded { .. } => {
                panic!("a login succeeded without the password")
            }
            VaultResponse::LoginStarted {
                attempts_remaining, ..
            } => {
                self.ke2 += 1;
                assert!(
                    self.ke2 <= MAX,
                    "KE2 number {} with a limit of {MAX}",
                    self.ke2
                );
                assert_eq!(*attempts_remaining, MAX - self.ke2, "remaining after a KE2");
            }
            VaultResponse::LoginFailed { attempts_remaining } => {
                assert_eq!(
                    *attempts_remaining,
                    MAX - self.ke2,
                    "remaining after a failure"
                );
            }
            VaultResponse::Status(st) => match st.state {
                RecordState::Registered => {
                    assert_eq!(st.attempts_remaining, MAX - self.ke2, "status remaining");
                }
                RecordState::Locked => assert_eq!(self.ke2, MAX, "locked early"),
                RecordState::None => panic!("alice's registration vanished"),
            },
            VaultResponse::Deleted => panic!("alice deleted without logging in"),
            VaultResponse::Registered { .. } => panic!("alice's registration replaced"),
            VaultResponse::NotRegistered => panic!("alice reported not registered"),
            _ => {}
        }
    }
}

fn arbitrary_request(inp: &mut Input) -> Option<VaultRequest> {
    let kind = inp.byte();
    Some(match kind % 9 {
        0 => VaultRequest::Status,
        1 => VaultRequest::RegisterStart {
            mode: if kind & 0x80 == 0 {
                RegistrationMode::Create
            } else {
                RegistrationMode::Replace
            },
            registration_request: inp.bytes(sizes::REGISTRATION_REQUEST),
        },
        2 => VaultRequest::RegisterFinish {
            registration_upload: inp.bytes(sizes::REGISTRATION_UPLOAD),
            wrapped_key: keywrap::WrappedKey::from_slice(&inp.bytes(keywrap::WRAPPED_KEY_LEN))
                .ok()?,
        },
        3 => VaultRequest::LoginStart {
            credential_request: inp.bytes(sizes::CREDENTIAL_REQUEST),
        },
        4 => VaultRequest::LoginFinish {
            credential_finalization: inp.bytes(sizes::CREDENTIAL_FINALIZATION),
        },
        5 => VaultRequest::Delete,
        // Well-formed OPAQUE first messages (cheap: no Argon2id before the
        // client's finish), so the limit and the erasure are reached.
        6 => VaultRequest::LoginStart {
            credential_request: ClientLogin::<Suite>::start(&mut OsRng, &inp.bytes(4))
                .ok()?
                .message
                .serialize()
                .to_vec(),
        },
        7 => VaultRequest::RegisterStart {
            mode: RegistrationMode::Create,
            registration_request: ClientRegistration::<Suite>::start(&mut OsRng, &inp.bytes(4))
                .ok()?
                .message
                .serialize()
                .to_vec(),
        },
        _ => {
            // Raw wire bytes, as a tunnel would deliver them.
            let n = usize::from(inp.byte()) * 4;
            VaultRequest::decode(&inp.bytes(n)).ok()?
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let t = template();
    let log = Arc::new(MemoryRecords::default());
    log.raw().insert(t.alice.clone(), t.stored.clone());
    let v = vault(t.setup.clone(), &t.fleet, log.clone());
    let bob = AccountId::new("bob").expect("account id");
    let accounts = [t.alice.clone(), t.alice.clone(), bob];
    let mut sessions: Vec<VaultSession> = accounts
        .iter()
        .map(|a| VaultSession::new(a.clone()))
        .collect();
    let mut now = Now::system();
    let mut seen = Seen::default();
    let mut inp = Input(data);
    let mut steps = 0;
    while !inp.is_empty() && steps < 64 {
        steps += 1;
        let op = inp.byte();
        let i = usize::from(op >> 4) % sessions.len();
        match op % 4 {
            0 => {
                if let Some(req) = arbitrary_request(&mut inp) {
                    let r = v.handle(now, &mut sessions[i], req);
                    if sessions[i].account() == &t.alice {
                        seen.check(&r);
                    }
                }
            }
            1 => now = now.after(Duration::from_secs(u64::from(inp.byte()))),
            2 => v.expire(now, &mut sessions[i]),
            _ => {
                v.close(now, &mut sessions[i]);
                sessions[i] = VaultSession::new(accounts[i].clone());
            }
        }
    }
    let stored = log
        .read(&t.alice)
        .expect("read")
        .expect("alice's record kept");
    match record::unseal(&SoftSealer::new(SEAL_KEY), &t.alice, &stored).expect("unseal") {
        RecordBody::Registered(r) => {
            assert!(
                r.opaque_record == t.registration.opaque_record
                    && r.wrapped_key == t.registration.wrapped_key,
                "alice's registration was replaced"
            );
            assert_eq!(r.attempts_used, seen.ke2, "attempts used vs KE2s given");
        }
        RecordBody::Locked { .. } => assert_eq!(seen.ke2, MAX, "locked before the limit"),
        RecordBody::Deleted => panic!("alice's record deleted"),
    }
});
