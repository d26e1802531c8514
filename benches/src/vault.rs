//! Fixtures for the vault-login benchmark (`benches/vault_login.rs`): the
//! real vault core over a real SoftHSM token and a real redb store (or an
//! in-memory log), one registered account, pre-built KE1 messages, and
//! pre-computed full logins so the timed loop holds only server work.
//!
//! ## Full logins without client work in the timed loop
//!
//! KE3 depends on KE2, and KE2 on the server's randomness. The vault takes
//! its randomness from [`Platform::entropy`], so a benchmark vault can run
//! on a [`SeededEntropy`]: before login `i` the loop reseeds it with
//! `seed_i`. Outside the timing, the same seed drives a bare
//! `ServerLogin::start` on the same setup, record and KE1, which yields
//! the very KE2 the vault will send; the client finishes against it
//! (Argon2id, ~20 ms) and the resulting KE3 is stored. In the timed loop
//! the vault computes that KE2 again and accepts the stored KE3. Nothing
//! but the randomness source differs from production (`OsEntropy`), and
//! HSM IVs still come from the OS.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use backup_client::vault_flow::{self, PasswordLogin, PasswordRegistration};
use hsm_vault::config::HsmConfig;
use hsm_vault::core::{Now, Platform, Vault, VaultParams, VaultSession};
use hsm_vault::entropy::{Entropy, OsEntropy, RngAdapter, SeededEntropy};
use hsm_vault::hsm::{init_master_key, Hsm};
use hsm_vault::seal::Sealer;
use hsm_vault::secrets::FleetSecrets;
use hsm_vault::state::record::{self, RecordBody, Registration, RegistrationNonce};
use hsm_vault::state::store::RecordStore;
use hsm_vault::state::{LocalRecords, MemoryRecords, Records};
use opaque_ke::{
    CredentialFinalization, CredentialRequest, ServerLogin, ServerLoginParameters,
    ServerRegistration, ServerSetup,
};
use protocol_spec::ids::{AccountId, FleetId};
use protocol_spec::keywrap::WRAPPED_KEY_LEN;
use protocol_spec::messages::vault::{RegistrationMode, VaultRequest, VaultResponse};
use protocol_spec::opaque::{self, Suite, REGISTRATION_NONCE_LEN};
use protocol_spec::password::Password;
use protocol_spec::root_key::RootKey;
use rand_core::{CryptoRng, RngCore};
use testkit::softhsm::{module_path, SoftHsm};

/// The password every benchmark account registers.
pub const PASSWORD: &str = "correct horse battery staple";

/// [`PASSWORD`], prepared (SPEC 7.8) as every client flow takes it.
pub fn password() -> Password {
    Password::prepare(PASSWORD).expect("the benchmark password prepares")
}

/// A SoftHSM token in a temporary folder with a fresh master key. SoftHSM
/// reads its configuration once per process, so create this before
/// anything loads the module, and only once per process.
pub struct HsmToken {
    pub softhsm: SoftHsm,
    pub config: HsmConfig,
    pub pin: String,
}

impl std::fmt::Debug for HsmToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmToken")
            .field("softhsm", &self.softhsm)
            .field("token", &self.config.token_label)
            .finish_non_exhaustive()
    }
}

impl HsmToken {
    /// Initialises a token, points this process at it and creates the
    /// master key (`init_master_key`, as `hsm-vault init` does).
    pub fn create(sessions: usize) -> Self {
        let softhsm = SoftHsm::new();
        let token = softhsm.init_token("bench-vault");
        softhsm.activate();
        let config = HsmConfig {
            module: module_path(),
            token_label: token.label.clone(),
            key_label: "e2ebk-master-v1".into(),
            pin_file: None,
            so_pin_file: None,
            sessions,
            require_hardware: false,
        };
        init_master_key(&config, &token.pin, false).expect("create the master key in SoftHSM");
        HsmToken {
            softhsm,
            config,
            pin: token.pin,
        }
    }

    /// Logs in and opens the session pool (`Hsm::open`, as `hsm-vault
    /// serve` does).
    pub fn open(&self) -> Arc<Hsm> {
        Arc::new(Hsm::open(&self.config, &self.pin).expect("open the SoftHSM token"))
    }

    /// A scratch folder that lives as long as the token (for redb stores).
    pub fn dir(&self) -> &Path {
        self.softhsm.dir()
    }
}

/// A redb record store in `dir`: every commit is an fsynced transaction.
pub fn redb_store(dir: &Path, name: &str) -> Arc<RecordStore> {
    Arc::new(RecordStore::open(&dir.join(format!("{name}.redb"))).expect("open redb store"))
}

/// The single-node durable log over a fresh redb store in `dir`.
pub fn redb_log(dir: &Path, name: &str) -> Arc<LocalRecords> {
    Arc::new(LocalRecords::new(redb_store(dir, name)))
}

/// An in-memory log (no IO at all).
pub fn memory_log() -> Arc<MemoryRecords> {
    Arc::new(MemoryRecords::default())
}

/// A vault core, an account registered in it, and what is needed to drive
/// logins against it.
pub struct BenchVault {
    pub vault: Vault,
    pub account: AccountId,
    pub fleet: FleetId,
    pub setup: ServerSetup<Suite>,
    /// The account's OPAQUE password file and registration nonce, as the
    /// vault stored them (read back through the sealer).
    pub password_file: ServerRegistration<Suite>,
    pub nonce: RegistrationNonce,
    /// Set when the vault runs on scripted randomness.
    pub scripted: Option<Arc<SeededEntropy>>,
    /// Further registered accounts (for concurrent logins).
    pub extra_accounts: Vec<AccountId>,
}

impl std::fmt::Debug for BenchVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchVault")
            .field("account", &self.account)
            .field("scripted", &self.scripted.is_some())
            .finish_non_exhaustive()
    }
}

/// Registers `account` in `vault` with [`PASSWORD`], as a client would.
fn register(vault: &Vault, account: &AccountId, fleet: &FleetId) {
    let now = Now::system();
    let mut session = VaultSession::new(account.clone());
    let (flow, start) = PasswordRegistration::start(&password(), RegistrationMode::Create)
        .expect("registration start");
    let resp = vault.handle(now, &mut session, start);
    let k = RootKey::from_entropy([9; 30]);
    let finish = flow
        .finish(&resp, account, fleet, &k)
        .expect("registration finish");
    let resp = vault.handle(now, &mut session, finish);
    vault_flow::registered(&resp, RegistrationMode::Create)
        .expect("the vault registered the account");
}

/// Fleet secrets for a benchmark fleet (the OPAQUE server setup is the part
/// that matters here).
pub fn fleet_secrets() -> FleetSecrets {
    FleetSecrets::generate(
        FleetId::new("bench-fleet").expect("fleet id"),
        hsm_vault::secrets::FleetParams::new(10).expect("params"),
        &OsEntropy,
    )
    .expect("generate fleet secrets")
}

impl BenchVault {
    /// Builds the core over `sealer` and `log` with `max_attempts` so large
    /// that counting never locks, and registers `accounts` through it (one
    /// Argon2id run on the client side each). The first account is the one
    /// [`BenchVault::login_start`] and the bare reference use.
    pub fn new(
        secrets: &FleetSecrets,
        sealer: Arc<dyn Sealer>,
        log: Arc<dyn Records>,
        scripted: bool,
        accounts: &[&str],
    ) -> Self {
        let scripted = scripted.then(|| Arc::new(SeededEntropy::new(1)));
        let entropy: Arc<dyn Entropy> = match &scripted {
            Some(s) => s.clone(),
            None => Arc::new(OsEntropy),
        };
        let fleet = secrets.fleet_id.clone();
        let vault = Vault::new(
            Platform {
                sealer: sealer.clone(),
                records: log.clone(),
                entropy,
            },
            secrets.opaque_setup.clone(),
            VaultParams {
                fleet_id: fleet.clone(),
                max_attempts: u32::MAX,
                login_timeout: Duration::from_secs(3600),
                account_limits: hsm_vault::core::limits::AccountLimits::off(),
            },
        );
        let mut registered = accounts.iter().map(|name| {
            let account = AccountId::new(*name).expect("account id");
            register(&vault, &account, &fleet);
            account
        });
        let account = registered.next().expect("at least one account");
        let extra_accounts = registered.collect();
        let stored = log
            .read(&account)
            .expect("read the record back")
            .expect("a record exists after registering");
        let RecordBody::Registered(reg) =
            record::unseal(sealer.as_ref(), &account, &stored).expect("unseal the record")
        else {
            panic!("the record is not in the registered state");
        };
        let password_file = ServerRegistration::<Suite>::deserialize(&reg.opaque_record)
            .expect("stored OPAQUE record parses");
        BenchVault {
            vault,
            account,
            fleet,
            setup: secrets.opaque_setup.clone(),
            password_file,
            nonce: reg.registration_nonce,
            scripted,
            extra_accounts,
        }
    }

    pub fn credential_identifier(&self) -> Vec<u8> {
        opaque::credential_identifier(&self.account, &self.nonce)
    }

    pub fn login_params(&self) -> ServerLoginParameters<'_, '_> {
        ServerLoginParameters {
            context: Some(opaque::CONTEXT),
            identifiers: opaque::identifiers(&self.account, &self.fleet),
        }
    }

    /// One login start through the core; panics unless KE2 comes back.
    pub fn login_start(&self, ke1: &[u8]) -> VaultSession {
        self.login_start_as(&self.account, ke1)
    }

    /// [`BenchVault::login_start`] for another registered account.
    pub fn login_start_as(&self, account: &AccountId, ke1: &[u8]) -> VaultSession {
        let mut session = VaultSession::new(account.clone());
        let resp = self.vault.handle(
            Now::system(),
            &mut session,
            VaultRequest::LoginStart {
                credential_request: ke1.to_vec(),
            },
        );
        assert!(
            matches!(resp, VaultResponse::LoginStarted { .. }),
            "login start answered {resp:?}"
        );
        session
    }

    /// One full login (start + finish) through the core with a pre-computed
    /// KE3; panics unless `wrapped_K` comes back.
    pub fn full_login(&self, p: &PrecomputedLogin) {
        let scripted = self
            .scripted
            .as_ref()
            .expect("full logins need a vault on scripted entropy");
        scripted.reseed(p.seed);
        let now = Now::system();
        let mut session = VaultSession::new(self.account.clone());
        let resp = self.vault.handle(
            now,
            &mut session,
            VaultRequest::LoginStart {
                credential_request: p.ke1.clone(),
            },
        );
        assert!(
            matches!(resp, VaultResponse::LoginStarted { .. }),
            "login start answered {resp:?}"
        );
        let resp = self.vault.handle(
            now,
            &mut session,
            VaultRequest::LoginFinish {
                credential_finalization: p.ke3.clone(),
            },
        );
        assert!(
            matches!(resp, VaultResponse::LoginSucceeded { .. }),
            "login finish answered {resp:?} (the pre-computed KE2 did not match the vault's)"
        );
    }

    /// Bare opaque-ke: `ServerLogin::start` on this vault's setup and
    /// record, with `rng`.
    pub fn bare_start<R: RngCore + CryptoRng>(
        &self,
        rng: &mut R,
        ke1: CredentialRequest<Suite>,
    ) -> ServerLogin<Suite> {
        ServerLogin::start(
            rng,
            &self.setup,
            Some(self.password_file.clone()),
            ke1,
            &self.credential_identifier(),
            self.login_params(),
        )
        .expect("bare ServerLogin::start")
        .state
    }

    /// Bare opaque-ke start + finish for a pre-computed login (its seed
    /// reproduces the KE2 the KE3 answers).
    pub fn bare_full_login(&self, p: &PrecomputedLogin) {
        let entropy = SeededEntropy::new(p.seed);
        let ke1 = CredentialRequest::<Suite>::deserialize(&p.ke1).expect("KE1 parses");
        let state = self.bare_start(&mut RngAdapter(&entropy), ke1);
        let ke3 = CredentialFinalization::<Suite>::deserialize(&p.ke3).expect("KE3 parses");
        state
            .finish(ke3, self.login_params())
            .expect("bare ServerLogin::finish accepts the pre-computed KE3");
    }

    /// Pre-computes `n` full logins (client work: Argon2id each).
    pub fn precompute_logins(&self, n: usize) -> Vec<PrecomputedLogin> {
        (0..n as u64)
            .map(|i| {
                let seed = 0x5eed_0000 + i;
                let (flow, start) = PasswordLogin::start(&password()).expect("login start");
                let VaultRequest::LoginStart { credential_request } = start else {
                    unreachable!("PasswordLogin::start builds a LoginStart");
                };
                let entropy = SeededEntropy::new(seed);
                let ke1 =
                    CredentialRequest::<Suite>::deserialize(&credential_request).expect("KE1");
                let started = ServerLogin::start(
                    &mut RngAdapter(&entropy),
                    &self.setup,
                    Some(self.password_file.clone()),
                    ke1,
                    &self.credential_identifier(),
                    self.login_params(),
                )
                .expect("bare login start");
                let ke2 = VaultResponse::LoginStarted {
                    credential_response: started.message.serialize().to_vec(),
                    attempts_remaining: u32::MAX,
                };
                let (finish, _) = flow
                    .finish(&ke2, &self.account, &self.fleet)
                    .expect("client accepts the pre-computed KE2");
                let VaultRequest::LoginFinish {
                    credential_finalization,
                } = finish
                else {
                    unreachable!("PasswordLogin::finish builds a LoginFinish");
                };
                PrecomputedLogin {
                    seed,
                    ke1: credential_request,
                    ke3: credential_finalization,
                }
            })
            .collect()
    }
}

/// Client messages of one full login, valid for a vault reseeded with
/// `seed` right before the login start.
#[derive(Debug, Clone)]
pub struct PrecomputedLogin {
    pub seed: u64,
    pub ke1: Vec<u8>,
    pub ke3: Vec<u8>,
}

/// `n` fresh KE1 messages (client login starts, cheap: no Argon2id).
pub fn ke1_messages(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let (_, start) = PasswordLogin::start(&password()).expect("login start");
            match start {
                VaultRequest::LoginStart { credential_request } => credential_request,
                _ => unreachable!("PasswordLogin::start builds a LoginStart"),
            }
        })
        .collect()
}

/// A registered record body of the real size (300 bytes), for timing
/// seal and unseal alone.
pub fn sample_record_body() -> Vec<u8> {
    RecordBody::Registered(Registration {
        attempts_used: 3,
        registration_nonce: [7; REGISTRATION_NONCE_LEN],
        registered_at_unix_secs: 1_700_000_000,
        kind: Some(RegistrationMode::Create),
        opaque_record: vec![5; opaque::sizes::REGISTRATION_UPLOAD],
        wrapped_key: [6; WRAPPED_KEY_LEN],
    })
    .encode()
    .to_vec()
}
