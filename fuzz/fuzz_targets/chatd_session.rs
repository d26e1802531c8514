//! chatd's handling of one authenticated client connection
//! (`chatd::session::ClientSession`) after a real Noise_IK handshake,
//! driven by an input-chosen schedule: frames sealed by the client (well
//! formed tunnel opens, data and closes for any tunnel id, or arbitrary
//! plaintext), unsealed garbage, pings, oversized and text messages, the
//! vault's answers and closes, tunnel opens that succeed or fail, dead
//! links, directory answers, revocations, shutdowns, stalls, and clock
//! jumps of any size.
//!
//! What must hold: no panic; every frame sent to the client opens with the
//! client's transport and decodes as a `ServerFrame`; tunnel opens reach
//! the vault in increasing id order and data only for tunnels opened
//! there; after `Finish` nothing more happens but the return of tunnel
//! handles to be closed.
#![no_main]

use std::cell::Cell;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chatd::directory::DeviceStatus;
use chatd::revocations::RevocationEvent;
use chatd::session::{ClientSession, ConnAction, DeviceCheck, Inbound, OpBudget, SessionLimits};
use chatd::vault_link::ConnEvent;
use e2ebk_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use protocol_spec::codes::TunnelCloseCode;
use protocol_spec::ids::{AccountId, TunnelId};
use protocol_spec::keys::StaticSecret;
use protocol_spec::messages::chatd::{ClientFrame, ServerFrame};
use protocol_spec::messages::WireMessage;
use protocol_spec::noise::{Initiator, Responder, Transport};
use service_kit::shutdown::Shutdown;

/// The account's budget: `n` operations, then none.
struct Budget(Cell<u32>);

impl OpBudget for Budget {
    fn take_op(&self, _: &AccountId, _: Instant) -> bool {
        let n = self.0.get();
        self.0.set(n.saturating_sub(1));
        n > 0
    }
}

fn pair() -> (Transport, Transport, StaticSecret) {
    let chatd = StaticSecret::from_bytes([2; 32]);
    let device = StaticSecret::from_bytes([1; 32]);
    let (m1, waiting) = Initiator::client_chatd(&device, &chatd.public_key())
        .unwrap()
        .write_first(b"")
        .unwrap();
    let first = Responder::client_chatd(&chatd)
        .unwrap()
        .read_first(&m1)
        .unwrap();
    let (m2, server) = first.state.write_response(b"").unwrap();
    let (_, client) = waiting.read_response(&m2).unwrap();
    (client, server, device)
}

fn code(b: u8) -> TunnelCloseCode {
    TunnelCloseCode::from_value(u32::from(b % 12)).unwrap_or(TunnelCloseCode::Normal)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let budget = Budget(Cell::new(u32::from(input.byte().unwrap_or(8))));
    let (mut client, server, device) = pair();
    let t0 = Instant::now();
    let mut now = t0;
    let account = AccountId::new("alice").unwrap();
    let mut s: ClientSession<u32> = ClientSession::new(
        account.clone(),
        device.public_key(),
        server,
        std::sync::Arc::new(SessionLimits {
            max_frame_len: 4096,
            max_tunnels: 3,
            messages_per_sec: 50.0,
            message_burst: 20.0,
            idle_timeout: Duration::from_secs(60),
            drain_deadline: Duration::from_secs(20),
            revocation_check: Duration::from_secs(30),
        }),
        t0,
    );
    let mut highest = 0u32;
    let mut opened_at_vault = BTreeSet::new();
    let mut last_open = 0u32;
    let mut finished = false;
    while let Some(op) = input.byte() {
        let arg = input.byte().unwrap_or(0);
        let id = TunnelId((highest + u32::from(arg % 4)).saturating_sub(1).max(1));
        match op % 17 {
            0..=2 => {
                let frame = match op % 17 {
                    0 => {
                        highest = highest.max(id.0);
                        ClientFrame::TunnelOpen {
                            tunnel: id,
                            handshake: input.bytes(usize::from(arg % 8)),
                        }
                    }
                    1 => ClientFrame::TunnelData {
                        tunnel: id,
                        payload: input.bytes(usize::from(arg % 16)),
                    },
                    _ => ClientFrame::TunnelClose {
                        tunnel: id,
                        code: code(arg),
                    },
                };
                let sealed = client.seal(&frame.encode()).unwrap();
                s.on_client(now, Inbound::Binary(sealed), &budget);
            }
            3 => {
                let plain = input.bytes(usize::from(arg));
                let sealed = client.seal(&plain).unwrap();
                s.on_client(now, Inbound::Binary(sealed), &budget);
            }
            4 => s.on_client(now, Inbound::Binary(input.bytes(usize::from(arg))), &budget),
            5 => s.on_client(
                now,
                match arg % 8 {
                    0 => Inbound::NotBinary,
                    1 => Inbound::TooLarge,
                    2 => Inbound::Gone,
                    _ => Inbound::Liveness,
                },
                &budget,
            ),
            6 => s.on_vault_event(
                now,
                ConnEvent::Data {
                    tunnel: id,
                    // What the link decoder lets through: 1 byte or more.
                    payload: [&[0xEE][..], &input.bytes(usize::from(arg % 16))].concat(),
                    received: now,
                },
            ),
            7 => s.on_vault_event(
                now,
                ConnEvent::Close {
                    tunnel: id,
                    code: code(arg),
                },
            ),
            8 => s.on_tunnel_opened(
                id,
                if arg % 3 == 0 {
                    Err(code(arg / 3))
                } else {
                    Ok(id.0)
                },
            ),
            9 => s.on_vault_send_failed(id),
            10 => s.on_device_status(match arg % 4 {
                0 => DeviceCheck::Status(DeviceStatus::Enrolled),
                1 => DeviceCheck::Status(DeviceStatus::Revoked),
                2 => DeviceCheck::Status(DeviceStatus::Unknown),
                _ => DeviceCheck::Failed,
            }),
            11 => s.on_revocation(&match arg % 3 {
                0 => RevocationEvent::Revoked {
                    account: account.clone(),
                    device: Some(device.public_key()),
                },
                1 => RevocationEvent::Revoked {
                    account: AccountId::new("bob").unwrap(),
                    device: None,
                },
                _ => RevocationEvent::DirectoryDown,
            }),
            12 => s.recheck_now(),
            13 => s.on_shutdown(
                now,
                if arg % 2 == 0 {
                    Shutdown::Drain
                } else {
                    Shutdown::Fast
                },
            ),
            14 => s.on_send_stalled(),
            15 => {
                now += Duration::from_millis(u64::from(arg) * u64::from(arg) * 11);
                s.handle_timeout(now);
            }
            _ => {
                // Sleep until the session's own next deadline.
                if let Some(at) = s.poll_timeout() {
                    now = now.max(at);
                    s.handle_timeout(now);
                }
            }
        }
        while let Some(action) = s.poll_action() {
            // After Finish only tunnel handles may still come back, to be
            // closed.
            assert!(
                !finished || matches!(action, ConnAction::CloseVaultSide { .. }),
                "{action:?} after Finish"
            );
            match action {
                ConnAction::ToClient(sealed) => {
                    let plain = client
                        .open(&sealed, 1 << 20)
                        .expect("chatd sealed a frame the client cannot open");
                    ServerFrame::decode(&plain)
                        .expect("chatd sent a frame that is not a ServerFrame");
                }
                ConnAction::OpenTunnel { tunnel, .. } => {
                    assert!(
                        tunnel.0 > last_open,
                        "tunnel {tunnel} opened at the vault out of order"
                    );
                    last_open = tunnel.0;
                    opened_at_vault.insert(tunnel.0);
                }
                ConnAction::ToVault { tunnel, .. } => {
                    assert!(
                        opened_at_vault.contains(&tunnel.0),
                        "data for tunnel {tunnel}, never opened at the vault"
                    );
                }
                ConnAction::Finish(_) => finished = true,
                ConnAction::Ping | ConnAction::CloseVaultSide { .. } | ConnAction::CheckDevice => {}
            }
        }
        if finished {
            assert!(
                s.poll_timeout().is_none(),
                "a finished session still wants a timer"
            );
        }
    }
});
