//! OPAQUE (RFC 9807) parameters shared by the vault and every client
//! (SPEC.md section 7).
//!
//! - Cipher suite: ristretto255 OPRF, `TripleDh<Ristretto255, SHA-512>` key
//!   exchange, Argon2id as the key-stretching function.
//! - Identities: client = account id, server = fleet id.
//! - Context: `"E2EBK OPAQUE v1"`.
//! - Credential identifier: a per-registration value (see
//!   [`credential_identifier`]), so that a registration start can never be
//!   used as an unmetered oracle for a live record's OPRF key.

use opaque_ke::argon2::{Algorithm, Argon2, Params, Version};
use opaque_ke::{CipherSuite, Identifiers};

use crate::ids::{AccountId, FleetId};

/// The protocol's OPAQUE cipher suite.
#[derive(Debug, Clone, Copy)]
pub struct Suite;

impl CipherSuite for Suite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::TripleDh<opaque_ke::Ristretto255, sha2::Sha512>;
    type Ksf = Argon2<'static>;
}

/// Argon2id memory cost in KiB (19 MiB).
pub const ARGON2_M_COST_KIB: u32 = 19_456;
/// Argon2id passes.
pub const ARGON2_T_COST: u32 = 2;
/// Argon2id lanes.
pub const ARGON2_P_COST: u32 = 1;

/// The key-stretching function with the protocol's fixed parameters
/// (Argon2id, version 0x13, m = 19 MiB, t = 2, p = 1). Changing any of them
/// changes every client's derived keys, so they are versioned with the
/// protocol.
pub fn ksf() -> Argon2<'static> {
    let params = Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, None)
        .unwrap_or_else(|_| unreachable!("constant Argon2 parameters are valid"));
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// OPAQUE context string; both sides must agree on it.
pub const CONTEXT: &[u8] = b"E2EBK OPAQUE v1";

/// Random value the vault picks at every registration start; it makes each
/// registration's OPRF key fresh and unrelated to any live record's key.
pub const REGISTRATION_NONCE_LEN: usize = 32;

/// `"E2EBK credential v1" || len(account) || account || registration_nonce`.
pub fn credential_identifier(account: &AccountId, nonce: &[u8; REGISTRATION_NONCE_LEN]) -> Vec<u8> {
    let mut out = Vec::with_capacity(19 + 1 + account.as_bytes().len() + REGISTRATION_NONCE_LEN);
    out.extend_from_slice(b"E2EBK credential v1");
    out.extend_from_slice(&account.length_prefixed());
    out.extend_from_slice(nonce);
    out
}

/// OPAQUE identities: the client is the account, the server is the fleet.
pub fn identifiers<'a>(account: &'a AccountId, fleet: &'a FleetId) -> Identifiers<'a> {
    Identifiers {
        client: Some(account.as_bytes()),
        server: Some(fleet.as_str().as_bytes()),
    }
}

/// Serialized sizes of the OPAQUE messages in this suite. Vault and client
/// refuse any other length before calling into opaque-ke.
pub mod sizes {
    /// `RegistrationRequest`: blinded element.
    pub const REGISTRATION_REQUEST: usize = 32;
    /// `RegistrationResponse`: evaluated element + server public key.
    pub const REGISTRATION_RESPONSE: usize = 64;
    /// `RegistrationUpload`: client public key + masking key + envelope.
    pub const REGISTRATION_UPLOAD: usize = 192;
    /// `CredentialRequest` (KE1): blinded element + client nonce + client
    /// ephemeral key.
    pub const CREDENTIAL_REQUEST: usize = 96;
    /// `CredentialResponse` (KE2).
    pub const CREDENTIAL_RESPONSE: usize = 320;
    /// `CredentialFinalization` (KE3): client MAC.
    pub const CREDENTIAL_FINALIZATION: usize = 64;
    /// Export key (SHA-512 output).
    pub const EXPORT_KEY: usize = 64;
}

#[cfg(test)]
mod tests {
    use super::*;
    use opaque_ke::{
        ClientLogin, ClientLoginFinishParameters, ClientRegistration,
        ClientRegistrationFinishParameters, ServerLogin, ServerLoginParameters, ServerRegistration,
        ServerSetup,
    };
    use rand_core::OsRng;

    /// Runs a full registration and login with the protocol's parameters and
    /// checks every message size against [`sizes`].
    #[test]
    fn suite_round_trip_and_sizes() {
        let mut rng = OsRng;
        let account = AccountId::new("+15550001").unwrap();
        let fleet = FleetId::new("test-fleet").unwrap();
        let cred_id = credential_identifier(&account, &[3u8; 32]);
        let setup = ServerSetup::<Suite>::new(&mut rng);
        let ksf = ksf();

        let c_start = ClientRegistration::<Suite>::start(&mut rng, b"hunter2").unwrap();
        assert_eq!(
            c_start.message.serialize().len(),
            sizes::REGISTRATION_REQUEST
        );
        let s_start =
            ServerRegistration::<Suite>::start(&setup, c_start.message, &cred_id).unwrap();
        assert_eq!(
            s_start.message.serialize().len(),
            sizes::REGISTRATION_RESPONSE
        );
        let c_finish = c_start
            .state
            .finish(
                &mut rng,
                b"hunter2",
                s_start.message,
                ClientRegistrationFinishParameters::new(identifiers(&account, &fleet), Some(&ksf)),
            )
            .unwrap();
        assert_eq!(
            c_finish.message.serialize().len(),
            sizes::REGISTRATION_UPLOAD
        );
        assert_eq!(c_finish.export_key.len(), sizes::EXPORT_KEY);
        let record = ServerRegistration::<Suite>::finish(c_finish.message);

        let l_start = ClientLogin::<Suite>::start(&mut rng, b"hunter2").unwrap();
        assert_eq!(l_start.message.serialize().len(), sizes::CREDENTIAL_REQUEST);
        let params = ServerLoginParameters {
            context: Some(CONTEXT),
            identifiers: identifiers(&account, &fleet),
        };
        let s_login = ServerLogin::start(
            &mut rng,
            &setup,
            Some(record),
            l_start.message,
            &cred_id,
            params.clone(),
        )
        .unwrap();
        assert_eq!(
            s_login.message.serialize().len(),
            sizes::CREDENTIAL_RESPONSE
        );
        let l_finish = l_start
            .state
            .finish(
                &mut rng,
                b"hunter2",
                s_login.message,
                ClientLoginFinishParameters::new(
                    Some(CONTEXT),
                    identifiers(&account, &fleet),
                    Some(&ksf),
                ),
            )
            .unwrap();
        assert_eq!(
            l_finish.message.serialize().len(),
            sizes::CREDENTIAL_FINALIZATION
        );
        assert_eq!(l_finish.export_key, c_finish.export_key);
        s_login.state.finish(l_finish.message, params).unwrap();
    }

    #[test]
    fn wrong_password_fails_on_the_client() {
        let mut rng = OsRng;
        let account = AccountId::new("bob").unwrap();
        let fleet = FleetId::new("f").unwrap();
        let cred_id = credential_identifier(&account, &[1u8; 32]);
        let setup = ServerSetup::<Suite>::new(&mut rng);
        let ksf = ksf();
        let c = ClientRegistration::<Suite>::start(&mut rng, b"right").unwrap();
        let s = ServerRegistration::<Suite>::start(&setup, c.message, &cred_id).unwrap();
        let f = c
            .state
            .finish(
                &mut rng,
                b"right",
                s.message,
                ClientRegistrationFinishParameters::new(identifiers(&account, &fleet), Some(&ksf)),
            )
            .unwrap();
        let record = ServerRegistration::<Suite>::finish(f.message);
        let l = ClientLogin::<Suite>::start(&mut rng, b"wrong").unwrap();
        let params = ServerLoginParameters {
            context: Some(CONTEXT),
            identifiers: identifiers(&account, &fleet),
        };
        let sl = ServerLogin::start(&mut rng, &setup, Some(record), l.message, &cred_id, params)
            .unwrap();
        let res = l.state.finish(
            &mut rng,
            b"wrong",
            sl.message,
            ClientLoginFinishParameters::new(
                Some(CONTEXT),
                identifiers(&account, &fleet),
                Some(&ksf),
            ),
        );
        assert!(res.is_err());
    }

    #[test]
    fn credential_identifiers_differ_per_nonce_and_account() {
        let a = AccountId::new("a").unwrap();
        let b = AccountId::new("b").unwrap();
        assert_ne!(
            credential_identifier(&a, &[0; 32]),
            credential_identifier(&a, &[1; 32])
        );
        assert_ne!(
            credential_identifier(&a, &[0; 32]),
            credential_identifier(&b, &[0; 32])
        );
    }
}
