//! The client side of the vault operations (SPEC.md section 8), sans-IO:
//! each flow turns the user's input and the vault's responses into the next
//! request, and says plainly what happened.
//!
//! The transport (chatd connection, tunnel) is someone else's job; these
//! types only build [`VaultRequest`]s and read [`VaultResponse`]s.
//!
//! Every OPAQUE client this crate builds is built here, and only from a
//! [`Password`]: the prepared form of SPEC.md 7.8, so that the same
//! password typed on two devices stretches to the same key.

use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, RegistrationResponse,
};
use protocol_spec::codes::VaultErrorCode;
use protocol_spec::ids::{AccountId, FleetId};
use protocol_spec::keywrap;
use protocol_spec::messages::vault::{
    Escrow, RegistrationMode, StatusReport, VaultRequest, VaultResponse,
};
use protocol_spec::opaque::{self, Suite};
use protocol_spec::password::Password;
use protocol_spec::root_key::RootKey;
use rand_core::OsRng;
use zeroize::Zeroizing;

/// What a vault flow can end in, besides success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// The password did not match. The attempt is spent.
    #[error("wrong password: {attempts_remaining} attempts remain before the escrowed key is erased for good")]
    WrongPassword { attempts_remaining: u32 },
    /// That was the last attempt, or attempts ran out earlier: the vault
    /// erased the escrowed key.
    #[error("the escrowed backup key has been erased after too many wrong passwords; backups protected by it cannot be recovered with a password")]
    Locked,
    #[error("no password-protected backup key is registered for this account")]
    NotRegistered,
    #[error("a backup key is already registered for this account")]
    AlreadyRegistered,
    /// The vault answered with an error code.
    #[error("vault refused: {0}")]
    Vault(VaultErrorCode),
    /// The vault answered something the protocol does not allow here.
    #[error("unexpected answer from the vault: {0}")]
    Unexpected(&'static str),
    /// The vault's OPAQUE messages did not verify: not our vault, or tampered.
    #[error("the vault's answer failed verification (wrong fleet key or tampering)")]
    Verification,
}

impl FlowError {
    /// Whether running the whole flow again may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, FlowError::Vault(c) if c.retryable())
    }
}

fn unexpected(r: &VaultResponse) -> FlowError {
    match r {
        VaultResponse::Error(code) => FlowError::Vault(*code),
        VaultResponse::Locked => FlowError::Locked,
        VaultResponse::NotRegistered => FlowError::NotRegistered,
        VaultResponse::AlreadyRegistered => FlowError::AlreadyRegistered,
        other => FlowError::Unexpected(other.label()),
    }
}

/// Reads a status answer.
pub fn status_from(r: &VaultResponse) -> Result<StatusReport, FlowError> {
    match r {
        VaultResponse::Status(s) => Ok(*s),
        other => Err(unexpected(other)),
    }
}

/// Registering a password that protects `K` (first registration, forgotten
/// password, or password change).
pub struct PasswordRegistration {
    state: ClientRegistration<Suite>,
    password: Password,
}

impl std::fmt::Debug for PasswordRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordRegistration([redacted])")
    }
}

impl PasswordRegistration {
    /// Returns the flow and the `RegisterStart` request to send.
    pub fn start(
        password: &Password,
        mode: RegistrationMode,
    ) -> Result<(Self, VaultRequest), FlowError> {
        let start = ClientRegistration::<Suite>::start(&mut OsRng, password.as_bytes())
            .map_err(|_| FlowError::Unexpected("password cannot be used"))?;
        let req = VaultRequest::RegisterStart {
            mode,
            registration_request: start.message.serialize().to_vec(),
        };
        Ok((
            PasswordRegistration {
                state: start.state,
                password: password.clone(),
            },
            req,
        ))
    }

    /// Reads `RegisterStarted` and returns the `RegisterFinish` request that
    /// escrows `key`. Runs Argon2id (tens of milliseconds).
    pub fn finish(
        self,
        response: &VaultResponse,
        account: &AccountId,
        fleet: &FleetId,
        key: &RootKey,
    ) -> Result<VaultRequest, FlowError> {
        let VaultResponse::RegisterStarted {
            registration_response,
        } = response
        else {
            return Err(unexpected(response));
        };
        let resp = RegistrationResponse::<Suite>::deserialize(registration_response)
            .map_err(|_| FlowError::Verification)?;
        let ksf = opaque::ksf();
        let finish = self
            .state
            .finish(
                &mut OsRng,
                self.password.as_bytes(),
                resp,
                ClientRegistrationFinishParameters::new(
                    opaque::identifiers(account, fleet),
                    Some(&ksf),
                ),
            )
            .map_err(|_| FlowError::Verification)?;
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|_| FlowError::Unexpected("no randomness"))?;
        let wrapped = keywrap::wrap(&finish.export_key, account, key, nonce)
            .map_err(|_| FlowError::Unexpected("key wrap failed"))?;
        Ok(VaultRequest::RegisterFinish {
            registration_upload: finish.message.serialize().to_vec(),
            wrapped_key: wrapped,
        })
    }
}

/// What the vault said about a registration it committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewRegistration {
    /// Wrong passwords in a row that erase the escrow.
    pub max_attempts: u32,
    /// The new escrow (SPEC.md 8.7); `None` from a vault that does not
    /// describe it.
    pub escrow: Option<Escrow>,
}

/// Reads the answer to the `RegisterFinish` of a registration in `mode`.
/// A vault that names another mode than the one asked for is refused.
pub fn registered(
    response: &VaultResponse,
    mode: RegistrationMode,
) -> Result<NewRegistration, FlowError> {
    match response {
        VaultResponse::Registered {
            escrow: Some(Escrow { kind, .. }),
            ..
        } if *kind != Some(mode) => Err(FlowError::Unexpected(
            "a registration of another mode than the one asked for",
        )),
        VaultResponse::Registered {
            max_attempts,
            escrow,
        } => Ok(NewRegistration {
            max_attempts: *max_attempts,
            escrow: *escrow,
        }),
        other => Err(unexpected(other)),
    }
}

/// Logging in with a password to get `K` back. A login start spends an
/// attempt: never retry one without the user asking.
pub struct PasswordLogin {
    state: ClientLogin<Suite>,
    password: Password,
}

impl std::fmt::Debug for PasswordLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordLogin([redacted])")
    }
}

/// A verified login waiting for the vault to release `wrapped_K`.
pub struct LoginVerified {
    export_key: Zeroizing<Vec<u8>>,
    /// Attempts left had this login failed (the count is reset on success).
    pub attempts_remaining_before: u32,
}

impl std::fmt::Debug for LoginVerified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginVerified([redacted])")
    }
}

impl PasswordLogin {
    /// Returns the flow and the `LoginStart` request to send.
    pub fn start(password: &Password) -> Result<(Self, VaultRequest), FlowError> {
        let start = ClientLogin::<Suite>::start(&mut OsRng, password.as_bytes())
            .map_err(|_| FlowError::Unexpected("password cannot be used"))?;
        let req = VaultRequest::LoginStart {
            credential_request: start.message.serialize().to_vec(),
        };
        Ok((
            PasswordLogin {
                state: start.state,
                password: password.clone(),
            },
            req,
        ))
    }

    /// Reads `LoginStarted`. With the right password returns the
    /// `LoginFinish` request to send; with a wrong one returns
    /// [`FlowError::WrongPassword`] (or `Locked` if that was the last
    /// attempt) and the caller closes the tunnel with `TunnelClose(0)`:
    /// a client that cannot build a valid KE3 sends none (SPEC.md 6.4).
    /// The attempt was counted when `LoginStarted` was sent, so the count
    /// in it is already the one that remains. Runs Argon2id.
    pub fn finish(
        self,
        response: &VaultResponse,
        account: &AccountId,
        fleet: &FleetId,
    ) -> Result<(VaultRequest, LoginVerified), FlowError> {
        let VaultResponse::LoginStarted {
            credential_response,
            attempts_remaining,
        } = response
        else {
            return Err(unexpected(response));
        };
        let resp = CredentialResponse::<Suite>::deserialize(credential_response)
            .map_err(|_| FlowError::Verification)?;
        let ksf = opaque::ksf();
        let finished = self.state.finish(
            &mut OsRng,
            self.password.as_bytes(),
            resp,
            ClientLoginFinishParameters::new(
                Some(opaque::CONTEXT),
                opaque::identifiers(account, fleet),
                Some(&ksf),
            ),
        );
        match finished {
            Ok(f) => Ok((
                VaultRequest::LoginFinish {
                    credential_finalization: f.message.serialize().to_vec(),
                },
                LoginVerified {
                    export_key: Zeroizing::new(f.export_key.to_vec()),
                    attempts_remaining_before: *attempts_remaining,
                },
            )),
            // OPAQUE does not tell a wrong password from a vault that is not
            // ours; with a pinned fleet key it is the password.
            Err(_) if *attempts_remaining == 0 => Err(FlowError::Locked),
            Err(_) => Err(FlowError::WrongPassword {
                attempts_remaining: *attempts_remaining,
            }),
        }
    }
}

impl LoginVerified {
    /// Reads `LoginSucceeded` and unwraps `K`.
    pub fn key(&self, response: &VaultResponse, account: &AccountId) -> Result<RootKey, FlowError> {
        match response {
            VaultResponse::LoginSucceeded { wrapped_key } => {
                keywrap::unwrap(&self.export_key, account, wrapped_key)
                    .map_err(|_| FlowError::Verification)
            }
            VaultResponse::LoginFailed {
                attempts_remaining: 0,
            } => Err(FlowError::Locked),
            VaultResponse::LoginFailed { attempts_remaining } => Err(FlowError::WrongPassword {
                attempts_remaining: *attempts_remaining,
            }),
            other => Err(unexpected(other)),
        }
    }
}

/// Reads the answer to `Delete`.
pub fn deleted(response: &VaultResponse) -> Result<(), FlowError> {
    match response {
        VaultResponse::Deleted => Ok(()),
        other => Err(unexpected(other)),
    }
}
