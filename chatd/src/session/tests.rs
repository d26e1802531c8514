//! The connection state machine driven by hand: a real Noise_IK pair (so
//! frames are sealed as on the wire), a fake budget, tunnel handles that are
//! plain numbers, and a clock that moves only when a test says so.

#![allow(clippy::unwrap_used)]

use std::cell::Cell;

use protocol_spec::keys::StaticSecret;
use protocol_spec::noise::{Initiator, Responder};

use super::*;

const IDLE: Duration = Duration::from_secs(60);
const DRAIN: Duration = Duration::from_secs(20);
const RECHECK: Duration = Duration::from_secs(30);

fn limits() -> SessionLimits {
    SessionLimits {
        max_frame_len: 4096,
        max_tunnels: 2,
        messages_per_sec: 50.0,
        message_burst: 100.0,
        idle_timeout: IDLE,
        drain_deadline: DRAIN,
        revocation_check: RECHECK,
    }
}

/// The account's budget: `n` operations, then none.
struct Budget(Cell<u32>);

impl Budget {
    fn of(n: u32) -> Budget {
        Budget(Cell::new(n))
    }
}

impl OpBudget for Budget {
    fn take_op(&self, _: &AccountId, _: Instant) -> bool {
        let n = self.0.get();
        self.0.set(n.saturating_sub(1));
        n > 0
    }
}

struct Harness {
    client: Transport,
    s: ClientSession<u32>,
    t0: Instant,
    budget: Budget,
}

fn harness_with(limits: SessionLimits) -> Harness {
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
    let t0 = Instant::now();
    Harness {
        client,
        s: ClientSession::new(
            AccountId::new("alice").unwrap(),
            device.public_key(),
            server,
            std::sync::Arc::new(limits),
            t0,
        ),
        t0,
        budget: Budget::of(1000),
    }
}

fn harness() -> Harness {
    harness_with(limits())
}

/// What the session asked for, with client frames opened and decoded.
#[derive(Debug, Default)]
struct Out {
    to_client: Vec<ServerFrame>,
    pings: usize,
    opens: Vec<TunnelId>,
    to_vault: Vec<TunnelId>,
    vault_closes: Vec<(u32, TunnelCloseCode)>,
    checks: usize,
    finish: Option<Option<CloseCode>>,
}

impl Harness {
    fn send(&mut self, at: Duration, frame: ClientFrame) {
        let sealed = self.client.seal(&frame.encode()).unwrap();
        self.s
            .on_client(self.t0 + at, Inbound::Binary(sealed), &self.budget);
    }

    fn open(&mut self, at: Duration, id: u32) {
        self.send(
            at,
            ClientFrame::TunnelOpen {
                tunnel: TunnelId(id),
                handshake: vec![1, 2],
            },
        );
    }

    fn data(&mut self, at: Duration, id: u32) {
        self.send(
            at,
            ClientFrame::TunnelData {
                tunnel: TunnelId(id),
                payload: vec![3],
            },
        );
    }

    /// Opens tunnel `id` with vault handle `id * 10`.
    fn opened(&mut self, at: Duration, id: u32) {
        self.open(at, id);
        let out = self.drain();
        assert_eq!(out.opens, vec![TunnelId(id)]);
        self.s.on_tunnel_opened(TunnelId(id), Ok(id * 10));
    }

    fn drain(&mut self) -> Out {
        let mut out = Out::default();
        while let Some(a) = self.s.poll_action() {
            assert!(out.finish.is_none(), "an action after Finish: {a:?}");
            match a {
                ConnAction::ToClient(b) => {
                    let plain = self.client.open(&b, 1 << 16).unwrap();
                    out.to_client.push(ServerFrame::decode(&plain).unwrap());
                }
                ConnAction::Ping => out.pings += 1,
                ConnAction::OpenTunnel { tunnel, .. } => out.opens.push(tunnel),
                ConnAction::ToVault { tunnel, .. } => out.to_vault.push(tunnel),
                ConnAction::CloseVaultSide { handle, code } => {
                    out.vault_closes.push((handle, code))
                }
                ConnAction::CheckDevice => out.checks += 1,
                ConnAction::Finish(c) => out.finish = Some(c),
            }
        }
        out
    }
}

fn closed(id: u32, code: TunnelCloseCode) -> ServerFrame {
    ServerFrame::TunnelClose {
        tunnel: TunnelId(id),
        code,
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn a_tunnel_opens_relays_and_its_answer_comes_back_sealed() {
    let mut h = harness();
    h.opened(secs(0), 1);
    h.data(secs(1), 1);
    let out = h.drain();
    assert_eq!(out.to_vault, vec![TunnelId(1)]);
    assert_eq!(h.s.handle(TunnelId(1)), Some(&10));
    h.s.on_vault_event(
        h.t0 + secs(1),
        ConnEvent::Data {
            tunnel: TunnelId(1),
            payload: b"answer".to_vec(),
            received: h.t0,
        },
    );
    let out = h.drain();
    assert_eq!(
        out.to_client,
        vec![ServerFrame::TunnelData {
            tunnel: TunnelId(1),
            payload: b"answer".to_vec()
        }]
    );
    // The client closes it: the vault side closes too.
    h.send(
        secs(2),
        ClientFrame::TunnelClose {
            tunnel: TunnelId(1),
            code: TunnelCloseCode::Normal,
        },
    );
    assert_eq!(h.drain().vault_closes, vec![(10, TunnelCloseCode::Normal)]);
}

#[test]
fn tunnel_ids_that_do_not_increase_close_the_connection() {
    let mut h = harness();
    h.opened(secs(0), 5);
    h.open(secs(0), 5);
    assert_eq!(h.drain().finish, Some(Some(CloseCode::ProtocolError)));
    let mut h = harness();
    h.opened(secs(0), 5);
    h.open(secs(0), 3);
    assert_eq!(h.drain().finish, Some(Some(CloseCode::ProtocolError)));
}

#[test]
fn frames_for_tunnels_never_opened_are_errors_and_for_closed_ones_are_ignored() {
    let mut h = harness();
    h.opened(secs(0), 2);
    h.s.on_vault_event(
        h.t0,
        ConnEvent::Close {
            tunnel: TunnelId(2),
            code: TunnelCloseCode::IdleTimeout,
        },
    );
    let out = h.drain();
    assert_eq!(out.to_client, vec![closed(2, TunnelCloseCode::IdleTimeout)]);
    h.data(secs(1), 2);
    h.data(secs(1), 1); // skipped ids count as opened before
    let out = h.drain();
    assert!(out.to_vault.is_empty() && out.finish.is_none(), "{out:?}");
    h.data(secs(1), 3);
    assert_eq!(h.drain().finish, Some(Some(CloseCode::ProtocolError)));

    let mut h = harness();
    h.send(
        secs(0),
        ClientFrame::TunnelClose {
            tunnel: TunnelId(1),
            code: TunnelCloseCode::Normal,
        },
    );
    assert_eq!(h.drain().finish, Some(Some(CloseCode::ProtocolError)));
}

#[test]
fn opens_beyond_the_limits_are_refused_with_their_codes() {
    let mut h = harness();
    h.opened(secs(0), 1);
    h.opened(secs(0), 2);
    h.open(secs(0), 3);
    let out = h.drain();
    assert_eq!(
        out.to_client,
        vec![closed(3, TunnelCloseCode::TooManyTunnels)]
    );
    assert!(out.opens.is_empty());

    let mut h = harness();
    h.budget = Budget::of(1);
    h.opened(secs(0), 1);
    h.open(secs(0), 2);
    assert_eq!(
        h.drain().to_client,
        vec![closed(2, TunnelCloseCode::RateLimited)]
    );
    // A tunnel's first request over the budget ends it on both sides.
    h.data(secs(0), 1);
    let out = h.drain();
    assert_eq!(out.to_client, vec![closed(1, TunnelCloseCode::RateLimited)]);
    assert_eq!(out.vault_closes, vec![(10, TunnelCloseCode::RateLimited)]);
    assert!(out.to_vault.is_empty());
}

/// A LoginFinish must get through even when the budget ran out after its
/// LoginStart: the attempt is already counted, and refusing the right
/// password would waste it. chatd cannot tell a LoginFinish from other
/// requests, so no request after a tunnel's first is refused by the
/// budget.
#[test]
fn the_request_that_finishes_a_counted_attempt_is_never_refused_by_the_budget() {
    let mut h = harness();
    h.budget = Budget::of(2); // the open and the LoginStart
    h.opened(secs(0), 1);
    h.data(secs(0), 1); // LoginStart
    h.s.on_vault_event(
        h.t0,
        ConnEvent::Data {
            tunnel: TunnelId(1),
            payload: b"ke2".to_vec(),
            received: h.t0,
        },
    );
    let _ = h.drain();
    h.data(secs(1), 1); // LoginFinish, past the budget
    let out = h.drain();
    assert_eq!(out.to_vault, vec![TunnelId(1)], "relayed");
    assert!(out.to_client.is_empty() && out.finish.is_none(), "{out:?}");
    // A new tunnel is refused, as is a new tunnel's first request.
    h.open(secs(1), 2);
    assert_eq!(
        h.drain().to_client,
        vec![closed(2, TunnelCloseCode::RateLimited)]
    );
}

#[test]
fn a_failed_open_or_a_dead_link_closes_the_tunnel_retryably() {
    let mut h = harness();
    h.open(secs(0), 1);
    let _ = h.drain();
    h.s.on_tunnel_opened(TunnelId(1), Err(TunnelCloseCode::VaultUnavailable));
    assert_eq!(
        h.drain().to_client,
        vec![closed(1, TunnelCloseCode::VaultUnavailable)]
    );
    h.opened(secs(0), 2);
    h.data(secs(0), 2);
    let _ = h.drain();
    h.s.on_vault_send_failed(TunnelId(2));
    let out = h.drain();
    assert_eq!(
        out.to_client,
        vec![closed(2, TunnelCloseCode::VaultUnavailable)]
    );
    assert_eq!(
        out.vault_closes,
        vec![(20, TunnelCloseCode::VaultUnavailable)]
    );
}

#[test]
fn bad_messages_close_the_connection_with_their_codes() {
    let cases: Vec<(Inbound, Option<CloseCode>)> = vec![
        (Inbound::Binary(vec![0; 40]), Some(CloseCode::ProtocolError)),
        (Inbound::NotBinary, Some(CloseCode::ProtocolError)),
        (Inbound::TooLarge, Some(CloseCode::FrameTooLarge)),
        (Inbound::Gone, None),
    ];
    for (inbound, code) in cases {
        let mut h = harness();
        h.s.on_client(h.t0, inbound, &h.budget);
        assert_eq!(h.drain().finish, Some(code));
    }
    // A sealed frame that does not decode.
    let mut h = harness();
    let sealed = h.client.seal(b"\x01not a frame").unwrap();
    h.s.on_client(h.t0, Inbound::Binary(sealed), &h.budget);
    assert_eq!(h.drain().finish, Some(Some(CloseCode::ProtocolError)));
}

#[test]
fn a_flood_of_frames_is_rate_limited() {
    let mut h = harness_with(SessionLimits {
        messages_per_sec: 1.0,
        message_burst: 3.0,
        ..limits()
    });
    h.opened(secs(0), 1);
    h.data(secs(0), 1);
    h.data(secs(0), 1);
    assert!(h.drain().finish.is_none());
    h.data(secs(0), 1);
    assert_eq!(h.drain().finish, Some(Some(CloseCode::RateLimited)));
}

#[test]
fn a_quiet_client_is_pinged_at_half_the_idle_time_then_closed() {
    let mut h = harness();
    assert_eq!(h.s.poll_timeout(), Some(h.t0 + IDLE / 2));
    h.s.handle_timeout(h.t0 + IDLE / 2);
    assert_eq!(h.drain().pings, 1);
    // Next: the idle close and the second re-check, both at 60 s.
    assert_eq!(h.s.poll_timeout(), Some(h.t0 + IDLE));
    // A pong moves everything on.
    h.s.on_client(h.t0 + secs(40), Inbound::Liveness, &h.budget);
    h.s.handle_timeout(h.t0 + secs(59));
    assert_eq!(h.drain().pings, 0);
    h.s.handle_timeout(h.t0 + secs(100));
    assert_eq!(h.drain().finish, Some(Some(CloseCode::IdleTimeout)));
    assert_eq!(h.s.poll_timeout(), None);
}

#[test]
fn the_device_is_rechecked_and_a_revoked_one_is_closed() {
    let mut h = harness();
    h.s.on_client(h.t0 + RECHECK, Inbound::Liveness, &h.budget);
    h.s.handle_timeout(h.t0 + RECHECK);
    assert_eq!(h.drain().checks, 1);
    h.s.on_device_status(DeviceCheck::Status(DeviceStatus::Enrolled));
    assert!(h.drain().finish.is_none());
    h.s.on_device_status(DeviceCheck::Status(DeviceStatus::Revoked));
    assert_eq!(h.drain().finish, Some(Some(CloseCode::DeviceRevoked)));
    // A device that cannot be checked may be revoked: fail closed,
    // retryably.
    let mut h = harness();
    h.s.on_device_status(DeviceCheck::Failed);
    assert_eq!(h.drain().finish, Some(Some(CloseCode::InternalError)));
}

/// Found by the `chatd_session` fuzz target: a failed open or a dead link
/// reported after the connection ended still sealed a TunnelClose for the
/// client. After the end only tunnel handles come back, to be closed.
#[test]
fn after_the_end_late_vault_outcomes_only_return_handles() {
    let mut h = harness();
    h.open(secs(0), 1);
    h.open(secs(0), 2);
    h.open(secs(0), 3);
    assert_eq!(h.drain().opens.len(), 2, "max_tunnels is 2");
    h.s.on_device_status(DeviceCheck::Status(DeviceStatus::Revoked));
    assert_eq!(h.drain().finish, Some(Some(CloseCode::DeviceRevoked)));
    h.s.on_tunnel_opened(TunnelId(1), Err(TunnelCloseCode::VaultUnavailable));
    h.s.on_vault_send_failed(TunnelId(1));
    h.s.on_tunnel_opened(TunnelId(2), Ok(20));
    let mut late = Vec::new();
    while let Some(a) = h.s.poll_action() {
        late.push(format!("{a:?}"));
    }
    assert_eq!(late, vec!["CloseVaultSide(Normal)".to_owned()]);
}

#[test]
fn a_revocation_heard_closes_only_the_connection_it_names() {
    let mine = StaticSecret::from_bytes([1; 32]).public_key();
    let alice = AccountId::new("alice").unwrap();
    let mut h = harness();
    h.s.on_revocation(&RevocationEvent::Revoked {
        account: AccountId::new("bob").unwrap(),
        device: None,
    });
    h.s.on_revocation(&RevocationEvent::Revoked {
        account: alice.clone(),
        device: Some(StaticSecret::from_bytes([3; 32]).public_key()),
    });
    assert!(h.drain().finish.is_none());
    h.s.on_revocation(&RevocationEvent::Revoked {
        account: alice,
        device: Some(mine),
    });
    assert_eq!(h.drain().finish, Some(Some(CloseCode::DeviceRevoked)));
    let mut h = harness();
    h.s.on_revocation(&RevocationEvent::DirectoryDown);
    assert_eq!(h.drain().finish, Some(Some(CloseCode::InternalError)));
    let mut h = harness();
    h.s.recheck_now();
    assert_eq!(h.drain().checks, 1);
}

#[test]
fn a_drain_waits_for_answers_in_flight_up_to_its_deadline() {
    // Nothing in flight: closes at once.
    let mut h = harness();
    h.opened(secs(0), 1);
    h.data(secs(0), 1);
    h.s.on_vault_event(
        h.t0,
        ConnEvent::Data {
            tunnel: TunnelId(1),
            payload: vec![4],
            received: h.t0,
        },
    );
    let _ = h.drain();
    h.s.on_shutdown(h.t0 + secs(1), Shutdown::Drain);
    assert_eq!(h.drain().finish, Some(Some(CloseCode::Draining)));

    // A request in flight: new opens are refused, the answer is relayed,
    // then the connection closes.
    let mut h = harness();
    h.opened(secs(0), 1);
    h.data(secs(0), 1);
    let _ = h.drain();
    h.s.on_shutdown(h.t0 + secs(1), Shutdown::Drain);
    h.open(secs(1), 2);
    let out = h.drain();
    assert_eq!(out.to_client, vec![closed(2, TunnelCloseCode::Draining)]);
    assert!(out.finish.is_none());
    assert_eq!(h.s.poll_timeout(), Some(h.t0 + DRAIN_CHECK));
    h.s.on_vault_event(
        h.t0 + secs(2),
        ConnEvent::Data {
            tunnel: TunnelId(1),
            payload: b"last".to_vec(),
            received: h.t0,
        },
    );
    let out = h.drain();
    assert_eq!(out.to_client.len(), 1);
    assert_eq!(out.finish, Some(Some(CloseCode::Draining)));

    // An answer that never comes: closed at the deadline.
    let mut h = harness();
    h.opened(secs(0), 1);
    h.data(secs(0), 1);
    let _ = h.drain();
    h.s.on_shutdown(h.t0, Shutdown::Drain);
    h.s.handle_timeout(h.t0 + DRAIN - Duration::from_millis(1));
    assert!(h.drain().finish.is_none());
    h.s.handle_timeout(h.t0 + DRAIN);
    assert_eq!(h.drain().finish, Some(Some(CloseCode::Draining)));
}

#[test]
fn a_fast_shutdown_closes_going_away() {
    let mut h = harness();
    h.s.on_shutdown(h.t0, Shutdown::Fast);
    assert_eq!(h.drain().finish, Some(Some(CloseCode::GoingAway)));
}

#[test]
fn a_stalled_send_drops_what_was_queued_behind_it() {
    let mut h = harness();
    h.opened(secs(0), 1);
    h.open(secs(0), 2);
    h.open(secs(0), 3);
    // The refusal of tunnel 3 is queued; the driver's send of it stalls.
    h.s.on_send_stalled();
    let out = h.drain();
    assert!(out.to_client.is_empty());
    assert_eq!(out.finish, Some(Some(CloseCode::SlowConsumer)));
    // Nothing after the end.
    h.data(secs(1), 1);
    assert!(h.s.poll_action().is_none());
}
