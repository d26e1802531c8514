//! Registrations (SPEC.md 8.1 and 8.5): creating one, replacing one
//! (forgotten password), changing the password after a login in the same
//! tunnel, and deleting after a login.

use opaque_ke::{RegistrationRequest, RegistrationUpload, ServerRegistration};
use protocol_spec::codes::VaultErrorCode;
use protocol_spec::keywrap::WrappedKey;
use protocol_spec::messages::vault::{RegistrationMode, VaultResponse};
use protocol_spec::opaque::{self, Suite, REGISTRATION_NONCE_LEN};

use super::access::{vault_error, Commit, Current, Pass};
use super::limits::Limited;
use super::session::{PendingRegistration, SessionState};
use super::{Now, Vault, VaultSession};
use crate::state::record::{RecordBody, Registration};
use crate::Error;

impl Vault {
    pub(super) fn register_start(
        &self,
        now: Now,
        session: &mut VaultSession,
        mode: RegistrationMode,
        registration_request: &[u8],
    ) -> Result<VaultResponse, Error> {
        let logged_in = match session.state {
            SessionState::Idle => None,
            SessionState::LoggedIn { nonce } => Some(nonce),
            _ => return Ok(vault_error(VaultErrorCode::UnexpectedRequest)),
        };
        let Ok(request) = RegistrationRequest::<Suite>::deserialize(registration_request) else {
            return Ok(vault_error(VaultErrorCode::BadRequest));
        };
        let replaces = match mode {
            RegistrationMode::ChangePassword => match logged_in {
                Some(n) => Some(n),
                None => return Ok(vault_error(VaultErrorCode::NotLoggedIn)),
            },
            RegistrationMode::Create => {
                let _guard = self.lock(&session.account);
                let settled = self.with_retries(|_| {
                    Ok(match self.load_settled(now, &session.account)? {
                        Some(cur) => Pass::Done(cur),
                        None => Pass::Again,
                    })
                })?;
                match settled {
                    None => return Ok(vault_error(VaultErrorCode::Busy)),
                    Some(Current {
                        body: RecordBody::Registered(_),
                        ..
                    }) => return Ok(VaultResponse::AlreadyRegistered),
                    Some(_) => None,
                }
            }
            RegistrationMode::Replace => {
                if !self
                    .limiter
                    .allow(&session.account, Limited::Replace, now.instant)
                {
                    return Ok(vault_error(VaultErrorCode::RateLimited));
                }
                None
            }
        };
        let mut nonce = [0u8; REGISTRATION_NONCE_LEN];
        self.platform.entropy.fill(&mut nonce)?;
        let cred_id = opaque::credential_identifier(&session.account, &nonce);
        let Ok(started) = ServerRegistration::<Suite>::start(&self.setup, request, &cred_id) else {
            return Ok(vault_error(VaultErrorCode::BadRequest));
        };
        session.state = SessionState::RegistrationPending(PendingRegistration {
            mode,
            nonce,
            replaces,
        });
        Ok(VaultResponse::RegisterStarted {
            registration_response: started.message.serialize().to_vec(),
        })
    }

    pub(super) fn register_finish(
        &self,
        now: Now,
        session: &mut VaultSession,
        registration_upload: &[u8],
        wrapped_key: WrappedKey,
    ) -> Result<VaultResponse, Error> {
        let SessionState::RegistrationPending(pending) = &session.state else {
            return Ok(vault_error(VaultErrorCode::UnexpectedRequest));
        };
        let Ok(upload) = RegistrationUpload::<Suite>::deserialize(registration_upload) else {
            return Ok(vault_error(VaultErrorCode::BadRequest));
        };
        let (mode, nonce, replaces) = (pending.mode, pending.nonce, pending.replaces);
        let account = session.account.clone();
        let opaque_record = ServerRegistration::<Suite>::finish(upload)
            .serialize()
            .to_vec();
        // Every registration is a new escrow epoch (its nonce is new), made
        // now and in this mode (SPEC 8.7); a password change is one too.
        let registration = Registration {
            attempts_used: 0,
            registration_nonce: nonce,
            registered_at_unix_secs: now.unix_secs,
            kind: Some(mode),
            opaque_record,
            wrapped_key: *wrapped_key.as_bytes(),
        };
        let escrow = registration.escrow();
        let fresh = RecordBody::Registered(registration);
        let _guard = self.lock(&account);
        self.answer_with_retries(|_| {
            let Some(cur) = self.load_settled(now, &account)? else {
                return Ok(Pass::Again);
            };
            match (mode, &cur.body) {
                (RegistrationMode::Create, RecordBody::Registered(_)) => {
                    session.state = SessionState::Idle;
                    return Ok(Pass::Done(VaultResponse::AlreadyRegistered));
                }
                (RegistrationMode::ChangePassword, RecordBody::Registered(r))
                    if Some(r.registration_nonce) == replaces => {}
                (RegistrationMode::ChangePassword, _) => {
                    session.state = SessionState::Idle;
                    return Ok(Pass::Done(vault_error(VaultErrorCode::RecordChanged)));
                }
                _ => {}
            }
            if let Commit::Conflict = self.commit(&account, cur.version, &fresh)? {
                return Ok(Pass::Again);
            }
            session.state = SessionState::Idle;
            let mode_label = mode.label();
            metrics::counter!("vault_registrations_total", "mode" => mode_label).increment(1);
            tracing::info!(%account, mode = mode_label, epoch = %escrow.epoch, "registration committed");
            Ok(Pass::Done(VaultResponse::Registered {
                max_attempts: self.params.max_attempts,
                escrow: Some(escrow),
            }))
        })
    }

    pub(super) fn delete(
        &self,
        now: Now,
        session: &mut VaultSession,
    ) -> Result<VaultResponse, Error> {
        let nonce = match session.state {
            SessionState::LoggedIn { nonce } => nonce,
            SessionState::Idle => return Ok(vault_error(VaultErrorCode::NotLoggedIn)),
            _ => return Ok(vault_error(VaultErrorCode::UnexpectedRequest)),
        };
        let account = session.account.clone();
        let _guard = self.lock(&account);
        self.answer_with_retries(|_| {
            let Some(cur) = self.load_settled(now, &account)? else {
                return Ok(Pass::Again);
            };
            match &cur.body {
                RecordBody::Registered(r) if r.registration_nonce == nonce => {}
                _ => {
                    session.state = SessionState::Idle;
                    return Ok(Pass::Done(vault_error(VaultErrorCode::RecordChanged)));
                }
            }
            if let Commit::Conflict = self.commit(&account, cur.version, &RecordBody::Deleted)? {
                return Ok(Pass::Again);
            }
            session.state = SessionState::Idle;
            metrics::counter!("vault_deletions_total").increment(1);
            tracing::info!(%account, "registration deleted by its owner");
            Ok(Pass::Done(VaultResponse::Deleted))
        })
    }
}
