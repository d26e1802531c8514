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

mod escrow;
pub use escrow::{Escrow, EscrowEpoch, ESCROW_EPOCH_LEN};

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
    /// The live registration; `None` unless `Registered`, and `None` from
    /// a vault that does not describe it (SPEC.md 8.7, 11).
    pub escrow: Option<Escrow>,
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
        /// The new registration; its `kind` is the mode registered with.
        /// `None` only from a vault that does not describe it (SPEC.md 8.7).
        escrow: Option<Escrow>,
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
            VaultResponse::Status(s) => {
                let (escrow_epoch, registered_at_unix_secs, registration_kind) =
                    Escrow::to_pb(s.escrow.as_ref());
                Response::Status(pb::Status {
                    state: match s.state {
                        RecordState::None => pb::RecordState::None,
                        RecordState::Registered => pb::RecordState::Registered,
                        RecordState::Locked => pb::RecordState::Locked,
                    } as i32,
                    attempts_remaining: s.attempts_remaining,
                    max_attempts: s.max_attempts,
                    escrow_epoch,
                    registered_at_unix_secs,
                    registration_kind,
                })
            }
            VaultResponse::RegisterStarted {
                registration_response,
            } => Response::RegisterStarted(pb::RegisterStarted {
                registration_response: registration_response.clone(),
            }),
            VaultResponse::Registered {
                max_attempts,
                escrow,
            } => {
                let (escrow_epoch, registered_at_unix_secs, registration_kind) =
                    Escrow::to_pb(escrow.as_ref());
                Response::Registered(pb::Registered {
                    max_attempts: *max_attempts,
                    escrow_epoch,
                    registered_at_unix_secs,
                    registration_kind,
                })
            }
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
                    let escrow = Escrow::from_pb(
                        &s.escrow_epoch,
                        s.registered_at_unix_secs,
                        s.registration_kind,
                    )?;
                    if escrow.is_some() && state != RecordState::Registered {
                        return Err(Error::InvalidField {
                            field: "escrow_epoch",
                            reason: "only a registered record has one",
                        });
                    }
                    VaultResponse::Status(StatusReport {
                        state,
                        attempts_remaining: s.attempts_remaining,
                        max_attempts: s.max_attempts,
                        escrow,
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
                    let escrow = Escrow::from_pb(
                        &r.escrow_epoch,
                        r.registered_at_unix_secs,
                        r.registration_kind,
                    )?;
                    // A registration just made knows how it was made.
                    if matches!(escrow, Some(Escrow { kind: None, .. })) {
                        return Err(Error::InvalidField {
                            field: "registration_kind",
                            reason: "a new registration names its mode",
                        });
                    }
                    VaultResponse::Registered {
                        max_attempts: r.max_attempts,
                        escrow,
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
            VaultResponse::Registered {
                max_attempts,
                escrow,
            } => {
                write!(f, "Registered(max_attempts={max_attempts}, {escrow:?})")
            }
            VaultResponse::Error(code) => write!(f, "Error({})", code.label()),
            other => f.write_str(other.label()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::frame::{encode_frame, WireMessage};

    const EPOCH_OF_NINES: &str = "c4237f8ec0cfba4497dac54322a406b5";

    fn status_pb(state: pb::RecordState, epoch: Vec<u8>, at: u64, kind: i32) -> Vec<u8> {
        encode_frame(&pb::VaultResponse {
            response: Some(pb::vault_response::Response::Status(pb::Status {
                state: state as i32,
                attempts_remaining: 0,
                max_attempts: 10,
                escrow_epoch: epoch,
                registered_at_unix_secs: at,
                registration_kind: kind,
            })),
        })
    }

    fn registered_pb(epoch: Vec<u8>, at: u64, kind: i32) -> Vec<u8> {
        encode_frame(&pb::VaultResponse {
            response: Some(pb::vault_response::Response::Registered(pb::Registered {
                max_attempts: 10,
                escrow_epoch: epoch,
                registered_at_unix_secs: at,
                registration_kind: kind,
            })),
        })
    }

    fn invalid(field: &'static str, r: Result<VaultResponse, Error>) {
        assert!(
            matches!(r, Err(Error::InvalidField { field: f, .. }) if f == field),
            "expected invalid {field}: {r:?}"
        );
    }

    #[test]
    fn the_epoch_is_a_labelled_hash_of_the_nonce_never_the_nonce() {
        // Computed independently: python3 -c "import hashlib; print(hashlib.sha256(
        // b'E2EBK escrow epoch v1' + bytes([9] * 32)).hexdigest()[:32])"
        let e = EscrowEpoch::of_registration(&[9; 32]);
        assert_eq!(e.to_hex(), EPOCH_OF_NINES);
        assert_eq!(EscrowEpoch::from_hex(EPOCH_OF_NINES), Some(e));
        assert_ne!(EscrowEpoch::of_registration(&[8; 32]), e);
        assert_eq!(EscrowEpoch::from_hex("c423"), None);
        assert_eq!(format!("{e}"), EPOCH_OF_NINES);
    }

    #[test]
    fn status_describes_an_escrow_only_when_registered_and_exactly() {
        let replace = pb::RegistrationMode::Replace as i32;
        let epoch = || vec![0xab; ESCROW_EPOCH_LEN];
        let registered = pb::RecordState::Registered;
        let ok = VaultResponse::decode(&status_pb(registered, epoch(), 5, replace)).unwrap();
        let VaultResponse::Status(s) = ok else {
            panic!("{ok:?}")
        };
        assert_eq!(
            s.escrow,
            Some(Escrow {
                epoch: EscrowEpoch::from_bytes([0xab; 16]),
                registered_at_unix_secs: 5,
                kind: Some(RegistrationMode::Replace),
            })
        );
        // Time and kind unknown (a record from before the vault kept them).
        let VaultResponse::Status(s) =
            VaultResponse::decode(&status_pb(registered, epoch(), 0, 0)).unwrap()
        else {
            panic!()
        };
        assert_eq!(s.escrow.unwrap().kind, None);
        // A vault that does not describe it.
        let VaultResponse::Status(s) =
            VaultResponse::decode(&status_pb(registered, vec![], 0, 0)).unwrap()
        else {
            panic!()
        };
        assert_eq!(s.escrow, None);

        for len in [1, 15, 17, 32] {
            invalid(
                "escrow_epoch",
                VaultResponse::decode(&status_pb(registered, vec![1; len], 5, replace)),
            );
        }
        for state in [pb::RecordState::None, pb::RecordState::Locked] {
            invalid(
                "escrow_epoch",
                VaultResponse::decode(&status_pb(state, epoch(), 5, replace)),
            );
            invalid(
                "escrow_epoch",
                VaultResponse::decode(&status_pb(state, vec![], 5, 0)),
            );
        }
        invalid(
            "escrow_epoch",
            VaultResponse::decode(&status_pb(registered, vec![], 0, replace)),
        );
        invalid(
            "escrow_epoch",
            VaultResponse::decode(&status_pb(registered, vec![], 7, 0)),
        );
        invalid(
            "registration_kind",
            VaultResponse::decode(&status_pb(registered, epoch(), 5, 4)),
        );
    }

    #[test]
    fn registered_names_its_new_escrow_and_how_it_was_made() {
        let change = pb::RegistrationMode::ChangePassword as i32;
        let r = VaultResponse::decode(&registered_pb(vec![7; 16], 9, change)).unwrap();
        assert_eq!(
            r,
            VaultResponse::Registered {
                max_attempts: 10,
                escrow: Some(Escrow {
                    epoch: EscrowEpoch::from_bytes([7; 16]),
                    registered_at_unix_secs: 9,
                    kind: Some(RegistrationMode::ChangePassword),
                }),
            }
        );
        assert!(!format!("{r:?}").is_empty());
        invalid(
            "registration_kind",
            VaultResponse::decode(&registered_pb(vec![7; 16], 9, 0)),
        );
        invalid(
            "escrow_epoch",
            VaultResponse::decode(&registered_pb(vec![7; 15], 9, change)),
        );
        invalid(
            "escrow_epoch",
            VaultResponse::decode(&registered_pb(vec![], 9, 0)),
        );
        assert_eq!(
            VaultResponse::decode(&registered_pb(vec![], 0, 0)).unwrap(),
            VaultResponse::Registered {
                max_attempts: 10,
                escrow: None,
            }
        );
    }

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
