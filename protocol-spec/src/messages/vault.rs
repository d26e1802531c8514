//! Channel 3, inside the client <-> vault tunnel (SPEC.md section 6 and 8).

use std::fmt;

use super::{missing, wire_message};
use crate::codes::VaultErrorCode;
use crate::frame::check_exact;
use crate::ids::FleetId;
use crate::keywrap::WrappedKey;
use crate::limits::{MAX_HANDSHAKE_PAYLOAD, MAX_VAULT_FRAME};
use crate::opaque::sizes;
use crate::pb;
use crate::Error;

/// Noise_NK message 1 payload. Empty in version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TunnelHello;

impl TunnelHello {
    fn to_pb(self) -> pb::TunnelHello {
        pb::TunnelHello {}
    }

    fn from_pb(_: pb::TunnelHello) -> Result<Self, Error> {
        Ok(TunnelHello)
    }
}
wire_message!(TunnelHello, pb::TunnelHello, MAX_HANDSHAKE_PAYLOAD);

/// Noise_NK message 2 payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultHello {
    pub fleet_id: FleetId,
    pub max_attempts: u32,
}

impl VaultHello {
    fn to_pb(&self) -> pb::VaultHello {
        pb::VaultHello {
            fleet_id: self.fleet_id.as_str().to_owned(),
            max_attempts: self.max_attempts,
        }
    }

    fn from_pb(p: pb::VaultHello) -> Result<Self, Error> {
        if p.max_attempts == 0 {
            return Err(Error::InvalidField {
                field: "max_attempts",
                reason: "must be positive",
            });
        }
        Ok(VaultHello {
            fleet_id: FleetId::new(p.fleet_id)?,
            max_attempts: p.max_attempts,
        })
    }
}
wire_message!(VaultHello, pb::VaultHello, MAX_HANDSHAKE_PAYLOAD);

/// What a registration is for (SPEC.md section 8.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegistrationMode {
    /// First registration; refused if a live record exists.
    Create,
    /// Forgotten password: destroys any existing escrow.
    Replace,
    /// New password, same `K`; needs a successful login in this tunnel.
    ChangePassword,
}

impl RegistrationMode {
    /// Stable label for logs, metrics and files.
    pub fn label(self) -> &'static str {
        match self {
            RegistrationMode::Create => "create",
            RegistrationMode::Replace => "replace",
            RegistrationMode::ChangePassword => "change_password",
        }
    }

    /// The mode a [`RegistrationMode::label`] names.
    pub fn from_label(label: &str) -> Option<Self> {
        [
            RegistrationMode::Create,
            RegistrationMode::Replace,
            RegistrationMode::ChangePassword,
        ]
        .into_iter()
        .find(|m| m.label() == label)
    }

    fn to_pb(self) -> pb::RegistrationMode {
        match self {
            RegistrationMode::Create => pb::RegistrationMode::Create,
            RegistrationMode::Replace => pb::RegistrationMode::Replace,
            RegistrationMode::ChangePassword => pb::RegistrationMode::ChangePassword,
        }
    }

    fn from_pb(v: i32) -> Result<Self, Error> {
        match pb::RegistrationMode::try_from(v) {
            Ok(pb::RegistrationMode::Create) => Ok(RegistrationMode::Create),
            Ok(pb::RegistrationMode::Replace) => Ok(RegistrationMode::Replace),
            Ok(pb::RegistrationMode::ChangePassword) => Ok(RegistrationMode::ChangePassword),
            _ => Err(Error::InvalidField {
                field: "mode",
                reason: "unknown registration mode",
            }),
        }
    }
}

/// Requests inside a tunnel. OPAQUE messages are kept as bytes of their
/// exact suite length; the vault and the client parse them with opaque-ke.
#[derive(Clone, PartialEq, Eq)]
pub enum VaultRequest {
    Status,
    RegisterStart {
        mode: RegistrationMode,
        registration_request: Vec<u8>,
    },
    RegisterFinish {
        registration_upload: Vec<u8>,
        wrapped_key: WrappedKey,
    },
    LoginStart {
        credential_request: Vec<u8>,
    },
    LoginFinish {
        credential_finalization: Vec<u8>,
    },
    Delete,
}

impl VaultRequest {
    /// Stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            VaultRequest::Status => "status",
            VaultRequest::RegisterStart { .. } => "register_start",
            VaultRequest::RegisterFinish { .. } => "register_finish",
            VaultRequest::LoginStart { .. } => "login_start",
            VaultRequest::LoginFinish { .. } => "login_finish",
            VaultRequest::Delete => "delete",
        }
    }

    fn to_pb(&self) -> pb::VaultRequest {
        use pb::vault_request::Request;
        let r = match self {
            VaultRequest::Status => Request::Status(pb::StatusRequest {}),
            VaultRequest::RegisterStart {
                mode,
                registration_request,
            } => Request::RegisterStart(pb::RegisterStart {
                mode: mode.to_pb() as i32,
                registration_request: registration_request.clone(),
            }),
            VaultRequest::RegisterFinish {
                registration_upload,
                wrapped_key,
            } => Request::RegisterFinish(pb::RegisterFinish {
                registration_upload: registration_upload.clone(),
                wrapped_key: wrapped_key.as_bytes().to_vec(),
            }),
            VaultRequest::LoginStart { credential_request } => {
                Request::LoginStart(pb::LoginStart {
                    credential_request: credential_request.clone(),
                })
            }
            VaultRequest::LoginFinish {
                credential_finalization,
            } => Request::LoginFinish(pb::LoginFinish {
                credential_finalization: credential_finalization.clone(),
            }),
            VaultRequest::Delete => Request::Delete(pb::DeleteRequest {}),
        };
        pb::VaultRequest { request: Some(r) }
    }

    fn from_pb(p: pb::VaultRequest) -> Result<Self, Error> {
        use pb::vault_request::Request;
        Ok(
            match p.request.ok_or(missing("VaultRequest: no request"))? {
                Request::Status(_) => VaultRequest::Status,
                Request::RegisterStart(r) => {
                    check_exact(
                        "registration_request",
                        &r.registration_request,
                        sizes::REGISTRATION_REQUEST,
                    )?;
                    VaultRequest::RegisterStart {
                        mode: RegistrationMode::from_pb(r.mode)?,
                        registration_request: r.registration_request,
                    }
                }
                Request::RegisterFinish(r) => {
                    check_exact(
                        "registration_upload",
                        &r.registration_upload,
                        sizes::REGISTRATION_UPLOAD,
                    )?;
                    VaultRequest::RegisterFinish {
                        registration_upload: r.registration_upload,
                        wrapped_key: WrappedKey::from_slice(&r.wrapped_key)?,
                    }
                }
                Request::LoginStart(r) => {
                    check_exact(
                        "credential_request",
                        &r.credential_request,
                        sizes::CREDENTIAL_REQUEST,
                    )?;
                    VaultRequest::LoginStart {
                        credential_request: r.credential_request,
                    }
                }
                Request::LoginFinish(r) => {
                    check_exact(
                        "credential_finalization",
                        &r.credential_finalization,
                        sizes::CREDENTIAL_FINALIZATION,
                    )?;
                    VaultRequest::LoginFinish {
                        credential_finalization: r.credential_finalization,
                    }
                }
                Request::Delete(_) => VaultRequest::Delete,
            },
        )
    }
}
wire_message!(VaultRequest, pb::VaultRequest, MAX_VAULT_FRAME);

impl fmt::Debug for VaultRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VaultRequest::RegisterStart { mode, .. } => write!(f, "RegisterStart({mode:?})"),
            other => f.write_str(other.label()),
        }
    }
}

/// Whether an account has an escrowed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordState {
    /// Never registered, or deleted.
    None,
    /// A live record: the key can be released with the right password.
    Registered,
    /// Attempts ran out; the escrowed key was erased for good.
    Locked,
}

impl RecordState {
    pub fn label(self) -> &'static str {
        match self {
            RecordState::None => "none",
            RecordState::Registered => "registered",
            RecordState::Locked => "locked",
        }
    }
}

/// Answer to a status request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusReport {
    pub state: RecordState,
    /// Login starts still allowed (0 unless `Registered`).
    pub attempts_remaining: u32,
    pub max_attempts: u32,
}

/// Responses inside a tunnel. Expected outcomes are variants; `Error` is for
/// misuse and faults.
#[derive(Clone, PartialEq, Eq)]
pub enum VaultResponse {
    Status(StatusReport),
    RegisterStarted {
        registration_response: Vec<u8>,
    },
    Registered {
        max_attempts: u32,
    },
    LoginStarted {
        credential_response: Vec<u8>,
        attempts_remaining: u32,
    },
    LoginSucceeded {
        wrapped_key: WrappedKey,
    },
    LoginFailed {
        attempts_remaining: u32,
    },
    Locked,
    NotRegistered,
    AlreadyRegistered,
    Deleted,
    Error(VaultErrorCode),
}

impl VaultResponse {
    /// Stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            VaultResponse::Status(_) => "status",
            VaultResponse::RegisterStarted { .. } => "register_started",
            VaultResponse::Registered { .. } => "registered",
            VaultResponse::LoginStarted { .. } => "login_started",
            VaultResponse::LoginSucceeded { .. } => "login_succeeded",
            VaultResponse::LoginFailed { .. } => "login_failed",
            VaultResponse::Locked => "locked",
            VaultResponse::NotRegistered => "not_registered",
            VaultResponse::AlreadyRegistered => "already_registered",
            VaultResponse::Deleted => "deleted",
            VaultResponse::Error(_) => "error",
        }
    }

    fn to_pb(&self) -> pb::VaultResponse {
        use pb::vault_response::Response;
        let r = match self {
            VaultResponse::Status(s) => Response::Status(pb::Status {
                state: match s.state {
                    RecordState::None => pb::RecordState::None,
                    RecordState::Registered => pb::RecordState::Registered,
                    RecordState::Locked => pb::RecordState::Locked,
                } as i32,
                attempts_remaining: s.attempts_remaining,
                max_attempts: s.max_attempts,
            }),
            VaultResponse::RegisterStarted {
                registration_response,
            } => Response::RegisterStarted(pb::RegisterStarted {
                registration_response: registration_response.clone(),
            }),
            VaultResponse::Registered { max_attempts } => Response::Registered(pb::Registered {
                max_attempts: *max_attempts,
            }),
            VaultResponse::LoginStarted {
                credential_response,
                attempts_remaining,
            } => Response::LoginStarted(pb::LoginStarted {
                credential_response: credential_response.clone(),
                attempts_remaining: *attempts_remaining,
            }),
            VaultResponse::LoginSucceeded { wrapped_key } => {
                Response::LoginSucceeded(pb::LoginSucceeded {
                    wrapped_key: wrapped_key.as_bytes().to_vec(),
                })
            }
            VaultResponse::LoginFailed { attempts_remaining } => {
                Response::LoginFailed(pb::LoginFailed {
                    attempts_remaining: *attempts_remaining,
                })
            }
            VaultResponse::Locked => Response::Locked(pb::Locked {}),
            VaultResponse::NotRegistered => Response::NotRegistered(pb::NotRegistered {}),
            VaultResponse::AlreadyRegistered => {
                Response::AlreadyRegistered(pb::AlreadyRegistered {})
            }
            VaultResponse::Deleted => Response::Deleted(pb::Deleted {}),
            VaultResponse::Error(code) => Response::Error(pb::VaultError { code: code.value() }),
        };
        pb::VaultResponse { response: Some(r) }
    }

    fn from_pb(p: pb::VaultResponse) -> Result<Self, Error> {
        use pb::vault_response::Response;
        Ok(
            match p.response.ok_or(missing("VaultResponse: no response"))? {
                Response::Status(s) => {
                    let state = match pb::RecordState::try_from(s.state) {
                        Ok(pb::RecordState::None) => RecordState::None,
                        Ok(pb::RecordState::Registered) => RecordState::Registered,
                        Ok(pb::RecordState::Locked) => RecordState::Locked,
                        _ => {
                            return Err(Error::InvalidField {
                                field: "state",
                                reason: "unknown record state",
                            })
                        }
                    };
                    if s.max_attempts == 0 || s.attempts_remaining > s.max_attempts {
                        return Err(Error::InvalidField {
                            field: "status",
                            reason: "attempt counts out of range",
                        });
                    }
                    VaultResponse::Status(StatusReport {
                        state,
                        attempts_remaining: s.attempts_remaining,
                        max_attempts: s.max_attempts,
                    })
                }
                Response::RegisterStarted(r) => {
                    check_exact(
                        "registration_response",
                        &r.registration_response,
                        sizes::REGISTRATION_RESPONSE,
                    )?;
                    VaultResponse::RegisterStarted {
                        registration_response: r.registration_response,
                    }
                }
                Response::Registered(r) => {
                    if r.max_attempts == 0 {
                        return Err(Error::InvalidField {
                            field: "max_attempts",
                            reason: "must be positive",
                        });
                    }
                    VaultResponse::Registered {
                        max_attempts: r.max_attempts,
                    }
                }
                Response::LoginStarted(r) => {
                    check_exact(
                        "credential_response",
                        &r.credential_response,
                        sizes::CREDENTIAL_RESPONSE,
                    )?;
                    VaultResponse::LoginStarted {
                        credential_response: r.credential_response,
                        attempts_remaining: r.attempts_remaining,
                    }
                }
                Response::LoginSucceeded(r) => VaultResponse::LoginSucceeded {
                    wrapped_key: WrappedKey::from_slice(&r.wrapped_key)?,
                },
                Response::LoginFailed(r) => VaultResponse::LoginFailed {
                    attempts_remaining: r.attempts_remaining,
                },
                Response::Locked(_) => VaultResponse::Locked,
                Response::NotRegistered(_) => VaultResponse::NotRegistered,
                Response::AlreadyRegistered(_) => VaultResponse::AlreadyRegistered,
                Response::Deleted(_) => VaultResponse::Deleted,
                Response::Error(e) => VaultResponse::Error(
                    VaultErrorCode::from_value(e.code).ok_or(Error::InvalidField {
                        field: "code",
                        reason: "unknown vault error code",
                    })?,
                ),
            },
        )
    }
}
wire_message!(VaultResponse, pb::VaultResponse, MAX_VAULT_FRAME);

impl fmt::Debug for VaultResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VaultResponse::Status(s) => write!(f, "Status({s:?})"),
            VaultResponse::LoginStarted {
                attempts_remaining, ..
            } => write!(f, "LoginStarted(attempts_remaining={attempts_remaining})"),
            VaultResponse::LoginFailed { attempts_remaining } => {
                write!(f, "LoginFailed(attempts_remaining={attempts_remaining})")
            }
            VaultResponse::Registered { max_attempts } => {
                write!(f, "Registered(max_attempts={max_attempts})")
            }
            VaultResponse::Error(code) => write!(f, "Error({})", code.label()),
            other => f.write_str(other.label()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_mode_labels_round_trip() {
        for m in [
            RegistrationMode::Create,
            RegistrationMode::Replace,
            RegistrationMode::ChangePassword,
        ] {
            assert_eq!(RegistrationMode::from_label(m.label()), Some(m));
        }
        assert_eq!(RegistrationMode::from_label("unknown"), None);
    }
}
