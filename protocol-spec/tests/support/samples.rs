//! One sample of every message type, shared by the golden-vector and
//! property tests.

use protocol_spec::codes::{TunnelCloseCode, VaultErrorCode};
use protocol_spec::ids::{AccountId, EnrolmentCode, FleetId, LinkTunnelId, TunnelId};
use protocol_spec::keywrap::WrappedKey;
use protocol_spec::messages::chatd::{ClientFrame, ClientHello, ServerFrame, ServerHello};
use protocol_spec::messages::link::{LinkFrame, LinkHello, LinkWelcome, VaultLinkFrame};
use protocol_spec::messages::vault::{
    Escrow, EscrowEpoch, RecordState, RegistrationMode, StatusReport, TunnelHello, VaultHello,
    VaultRequest, VaultResponse,
};
use protocol_spec::messages::WireMessage;
use protocol_spec::opaque::sizes;

pub fn account() -> AccountId {
    AccountId::new("+15551234567").unwrap()
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

/// The escrow of a registration whose nonce is 32 × 0x09, made by a
/// forgotten-password replacement at 2026-12-01 14:03:00 UTC.
pub fn escrow() -> Escrow {
    Escrow {
        epoch: EscrowEpoch::of_registration(&[0x09; 32]),
        registered_at_unix_secs: 1_796_133_780,
        kind: Some(RegistrationMode::Replace),
    }
}

pub fn wrapped() -> WrappedKey {
    let mut b = bytes(61, 0x40);
    b[0] = 1;
    WrappedKey::from_slice(&b).unwrap()
}

type DecodeMatches = dyn Fn(&[u8]) -> Result<bool, protocol_spec::Error>;

/// A sample message: its name, its encoding, and a check that decoding the
/// given bytes yields the same message.
pub struct Sample {
    pub name: String,
    pub encoded: Vec<u8>,
    pub max_len: usize,
    pub decode_matches: Box<DecodeMatches>,
}

fn sample<T: WireMessage + PartialEq + 'static>(name: &str, msg: T) -> Sample {
    let encoded = msg.encode();
    Sample {
        name: name.to_owned(),
        encoded,
        max_len: T::MAX_LEN,
        decode_matches: Box::new(move |b| T::decode(b).map(|d| d == msg)),
    }
}

pub fn all() -> Vec<Sample> {
    let t = TunnelId::new(7).unwrap();
    let lt = LinkTunnelId::new(1_000_000_007).unwrap();
    vec![
        sample(
            "client_hello",
            ClientHello {
                account: account(),
                enrolment_code: None,
                client_software: "backupctl/0.1.0".into(),
            },
        ),
        sample(
            "client_hello_enrolling",
            ClientHello {
                account: account(),
                enrolment_code: Some(EnrolmentCode::new("ABCD-EFGH-JKLM-NPQR").unwrap()),
                client_software: "backupctl/0.1.0".into(),
            },
        ),
        sample(
            "server_hello",
            ServerHello {
                enrolled_now: true,
                max_frame_len: 4096,
                max_tunnels: 4,
                idle_timeout_secs: 60,
            },
        ),
        sample(
            "client_frame_tunnel_open",
            ClientFrame::TunnelOpen {
                tunnel: t,
                handshake: bytes(49, 1),
            },
        ),
        sample(
            "client_frame_tunnel_data",
            ClientFrame::TunnelData {
                tunnel: t,
                payload: bytes(120, 2),
            },
        ),
        sample(
            "client_frame_tunnel_close",
            ClientFrame::TunnelClose {
                tunnel: t,
                code: TunnelCloseCode::Normal,
            },
        ),
        sample(
            "server_frame_tunnel_data",
            ServerFrame::TunnelData {
                tunnel: t,
                payload: bytes(80, 3),
            },
        ),
        sample(
            "server_frame_tunnel_close",
            ServerFrame::TunnelClose {
                tunnel: t,
                code: TunnelCloseCode::LeaderChanged,
            },
        ),
        sample(
            "link_hello",
            LinkHello {
                chatd_instance: "chatd-eu-1".into(),
            },
        ),
        sample(
            "link_welcome_leader",
            LinkWelcome {
                replica_id: "vault-1".into(),
                leader: true,
                leader_hint: None,
                max_tunnels: 10_000,
            },
        ),
        sample(
            "link_welcome_follower",
            LinkWelcome {
                replica_id: "vault-2".into(),
                leader: false,
                leader_hint: Some("127.0.0.1:7101".into()),
                max_tunnels: 10_000,
            },
        ),
        sample(
            "link_frame_open",
            LinkFrame::Open {
                tunnel: lt,
                account: account(),
                handshake: bytes(49, 4),
            },
        ),
        sample(
            "link_frame_data",
            LinkFrame::Data {
                tunnel: lt,
                payload: bytes(64, 5),
            },
        ),
        sample(
            "link_frame_close",
            LinkFrame::Close {
                tunnel: lt,
                code: TunnelCloseCode::IdleTimeout,
            },
        ),
        sample(
            "vault_link_frame_data",
            VaultLinkFrame::Data {
                tunnel: lt,
                payload: bytes(64, 6),
            },
        ),
        sample(
            "vault_link_frame_close",
            VaultLinkFrame::Close {
                tunnel: lt,
                code: TunnelCloseCode::VaultUnavailable,
            },
        ),
        sample(
            "vault_link_frame_status",
            VaultLinkFrame::Status {
                leader: false,
                leader_hint: Some("127.0.0.1:7102".into()),
            },
        ),
        sample("tunnel_hello", TunnelHello),
        sample(
            "vault_hello",
            VaultHello {
                fleet_id: FleetId::new("e2ebk-test-fleet").unwrap(),
                max_attempts: 10,
            },
        ),
        sample("request_status", VaultRequest::Status),
        sample(
            "request_register_start",
            VaultRequest::RegisterStart {
                mode: RegistrationMode::Create,
                registration_request: bytes(sizes::REGISTRATION_REQUEST, 7),
            },
        ),
        sample(
            "request_register_start_change",
            VaultRequest::RegisterStart {
                mode: RegistrationMode::ChangePassword,
                registration_request: bytes(sizes::REGISTRATION_REQUEST, 7),
            },
        ),
        sample(
            "request_register_finish",
            VaultRequest::RegisterFinish {
                registration_upload: bytes(sizes::REGISTRATION_UPLOAD, 8),
                wrapped_key: wrapped(),
            },
        ),
        sample(
            "request_login_start",
            VaultRequest::LoginStart {
                credential_request: bytes(sizes::CREDENTIAL_REQUEST, 9),
            },
        ),
        sample(
            "request_login_finish",
            VaultRequest::LoginFinish {
                credential_finalization: bytes(sizes::CREDENTIAL_FINALIZATION, 10),
            },
        ),
        sample("request_delete", VaultRequest::Delete),
        sample(
            "response_status",
            VaultResponse::Status(StatusReport {
                state: RecordState::Registered,
                attempts_remaining: 7,
                max_attempts: 10,
                escrow: Some(escrow()),
            }),
        ),
        // A record registered before the vault kept the time and kind.
        sample(
            "response_status_escrow_unknown_time",
            VaultResponse::Status(StatusReport {
                state: RecordState::Registered,
                attempts_remaining: 7,
                max_attempts: 10,
                escrow: Some(Escrow {
                    registered_at_unix_secs: 0,
                    kind: None,
                    ..escrow()
                }),
            }),
        ),
        // What a vault built before SPEC 8.7 sends.
        sample(
            "response_status_without_escrow",
            VaultResponse::Status(StatusReport {
                state: RecordState::Registered,
                attempts_remaining: 7,
                max_attempts: 10,
                escrow: None,
            }),
        ),
        sample(
            "response_status_locked",
            VaultResponse::Status(StatusReport {
                state: RecordState::Locked,
                attempts_remaining: 0,
                max_attempts: 10,
                escrow: None,
            }),
        ),
        sample(
            "response_register_started",
            VaultResponse::RegisterStarted {
                registration_response: bytes(sizes::REGISTRATION_RESPONSE, 11),
            },
        ),
        sample(
            "response_registered",
            VaultResponse::Registered {
                max_attempts: 10,
                escrow: Some(escrow()),
            },
        ),
        sample(
            "response_registered_without_escrow",
            VaultResponse::Registered {
                max_attempts: 10,
                escrow: None,
            },
        ),
        sample(
            "response_login_started",
            VaultResponse::LoginStarted {
                credential_response: bytes(sizes::CREDENTIAL_RESPONSE, 12),
                attempts_remaining: 9,
            },
        ),
        sample(
            "response_login_succeeded",
            VaultResponse::LoginSucceeded {
                wrapped_key: wrapped(),
            },
        ),
        sample(
            "response_login_failed",
            VaultResponse::LoginFailed {
                attempts_remaining: 3,
            },
        ),
        sample("response_locked", VaultResponse::Locked),
        sample("response_not_registered", VaultResponse::NotRegistered),
        sample(
            "response_already_registered",
            VaultResponse::AlreadyRegistered,
        ),
        sample("response_deleted", VaultResponse::Deleted),
        sample(
            "response_error",
            VaultResponse::Error(VaultErrorCode::Unavailable),
        ),
    ]
}
