//! One client connection after its handshake (SPEC.md 4.5 to 4.7), as a
//! sans-IO state machine.
//!
//! [`ClientSession`] makes every decision about an admitted connection:
//! which frames are protocol errors, which tunnel opens are refused, when a
//! budget runs out, when to ping, when the connection idles out, how it
//! drains, when to re-check the device. It does no IO and reads no clock:
//! the driver ([`crate::conn`]) feeds it inputs with the time —
//! [`ClientSession::on_client`], [`ClientSession::on_vault_event`],
//! [`ClientSession::on_tunnel_opened`], [`ClientSession::on_device_status`],
//! [`ClientSession::on_shutdown`], [`ClientSession::handle_timeout`] — and
//! carries out the [`ConnAction`]s it queues, in order, until
//! [`ConnAction::Finish`]. [`ClientSession::poll_timeout`] says when to call
//! [`ClientSession::handle_timeout`] next.
//!
//! `H` is the vault side of a tunnel (a link's tunnel handle in chatd, a
//! plain value in tests); the session holds it and hands it back to be
//! closed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol_spec::codes::{CloseCode, TunnelCloseCode};
use protocol_spec::ids::{AccountId, TunnelId};
use protocol_spec::keys::PublicKey;
use protocol_spec::messages::chatd::{ClientFrame, ServerFrame};
use protocol_spec::messages::WireMessage;
use protocol_spec::noise::Transport;
use protocol_spec::tunnel_ids::TunnelIdSequence;
use protocol_spec::Error as ProtocolError;
use service_kit::shutdown::Shutdown;

use crate::directory::DeviceStatus;
use crate::rate_limits::TokenBucket;
use crate::revocations::RevocationEvent;
use crate::vault_link::ConnEvent;

/// How often a draining connection checks whether it may close.
pub const DRAIN_CHECK: Duration = Duration::from_millis(250);

/// The per-connection limits (from `[limits]`).
#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub max_frame_len: usize,
    pub max_tunnels: usize,
    pub messages_per_sec: f64,
    pub message_burst: f64,
    pub idle_timeout: Duration,
    pub drain_deadline: Duration,
    pub revocation_check: Duration,
}

/// The account's vault-operation budget, shared by its connections.
pub trait OpBudget {
    /// Takes one operation; `false` when the budget is spent.
    fn take_op(&self, account: &AccountId, now: Instant) -> bool;
}

/// What arrived from the client, as the WebSocket layer reports it.
#[derive(Debug)]
pub enum Inbound {
    /// A binary message: one sealed frame.
    Binary(Vec<u8>),
    /// A ping or pong: the client is alive.
    Liveness,
    /// A text (or other non-binary) message.
    NotBinary,
    /// A message over the size limit.
    TooLarge,
    /// The client closed, or the connection broke.
    Gone,
}

/// What the re-check of the device against the directory found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceCheck {
    Status(DeviceStatus),
    /// The directory could not answer.
    Failed,
}

/// What the driver must do, in order.
pub enum ConnAction<H> {
    /// Send this sealed frame to the client (bounded by the slow-consumer
    /// deadline; report a stall with [`ClientSession::on_send_stalled`]).
    ToClient(Vec<u8>),
    /// Send a WebSocket ping.
    Ping,
    /// Open a vault tunnel and report with
    /// [`ClientSession::on_tunnel_opened`].
    OpenTunnel {
        tunnel: TunnelId,
        handshake: Vec<u8>,
        received: Instant,
    },
    /// Relay client bytes on the tunnel ([`ClientSession::handle`]); report
    /// a dead link with [`ClientSession::on_vault_send_failed`].
    ToVault {
        tunnel: TunnelId,
        payload: Vec<u8>,
        received: Instant,
    },
    /// End the vault side of a tunnel.
    CloseVaultSide { handle: H, code: TunnelCloseCode },
    /// Ask the directory whether the device is still enrolled and report
    /// with [`ClientSession::on_device_status`].
    CheckDevice,
    /// End the connection: with this close frame, or none if the client is
    /// gone.
    Finish(Option<CloseCode>),
}

impl<H> std::fmt::Debug for ConnAction<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnAction::ToClient(b) => write!(f, "ToClient({} bytes)", b.len()),
            ConnAction::Ping => f.write_str("Ping"),
            ConnAction::OpenTunnel { tunnel, .. } => write!(f, "OpenTunnel({tunnel})"),
            ConnAction::ToVault { tunnel, .. } => write!(f, "ToVault({tunnel})"),
            ConnAction::CloseVaultSide { code, .. } => write!(f, "CloseVaultSide({code:?})"),
            ConnAction::CheckDevice => f.write_str("CheckDevice"),
            ConnAction::Finish(c) => write!(f, "Finish({c:?})"),
        }
    }
}

struct TunnelEntry<H> {
    /// `None` while the open is under way.
    handle: Option<H>,
    /// A client frame went to the vault and its answer has not come back.
    awaiting: bool,
    /// Client frames relayed on this tunnel so far.
    requests: u32,
}

/// One admitted connection.
pub struct ClientSession<H> {
    account: AccountId,
    device: PublicKey,
    transport: Transport,
    /// Shared by every connection of the process.
    limits: Arc<SessionLimits>,
    tunnels: HashMap<TunnelId, TunnelEntry<H>>,
    ids: TunnelIdSequence<TunnelId>,
    messages: TokenBucket,
    last_rx: Instant,
    last_ping: Instant,
    next_recheck: Instant,
    draining_since: Option<Instant>,
    last_tick: Instant,
    finished: bool,
    actions: VecDeque<ConnAction<H>>,
}

impl<H> std::fmt::Debug for ClientSession<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("account", &self.account)
            .field("tunnels", &self.tunnels.len())
            .field("draining", &self.draining_since.is_some())
            .finish_non_exhaustive()
    }
}

impl<H> ClientSession<H> {
    pub fn new(
        account: AccountId,
        device: PublicKey,
        transport: Transport,
        limits: Arc<SessionLimits>,
        now: Instant,
    ) -> Self {
        ClientSession {
            messages: TokenBucket::new(limits.messages_per_sec, limits.message_burst, now),
            next_recheck: now + limits.revocation_check,
            account,
            device,
            transport,
            limits,
            tunnels: HashMap::new(),
            ids: TunnelIdSequence::new(),
            last_rx: now,
            last_ping: now,
            draining_since: None,
            last_tick: now,
            finished: false,
            actions: VecDeque::new(),
        }
    }

    pub fn account(&self) -> &AccountId {
        &self.account
    }

    /// The device key the connection authenticated with.
    pub fn device(&self) -> &PublicKey {
        &self.device
    }

    /// Drops every tunnel, which closes its vault side: for a connection
    /// that has ended, before its close handshake.
    pub fn drop_tunnels(&mut self) {
        self.tunnels.clear();
    }

    /// The vault side of an open tunnel.
    pub fn handle(&self, tunnel: TunnelId) -> Option<&H> {
        self.tunnels.get(&tunnel).and_then(|t| t.handle.as_ref())
    }

    /// The next action, in order.
    pub fn poll_action(&mut self) -> Option<ConnAction<H>> {
        self.actions.pop_front()
    }

    /// When [`ClientSession::handle_timeout`] must be called next: the ping
    /// at half the idle time, the idle close, the device re-check, or
    /// (while draining) the drain check. Sleeping until then, rather than
    /// ticking, keeps ten thousand idle connections from waking chatd ten
    /// thousand times a second.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        if self.draining_since.is_some() {
            return Some(self.last_tick + DRAIN_CHECK);
        }
        let half = self.limits.idle_timeout / 2;
        let ping_due = (self.last_rx + half).max(self.last_ping + half);
        let close_due = self.last_rx + self.limits.idle_timeout;
        Some(ping_due.min(close_due).min(self.next_recheck))
    }

    /// A message from the client.
    pub fn on_client(&mut self, now: Instant, inbound: Inbound, budget: &dyn OpBudget) {
        if self.finished {
            return;
        }
        let bytes = match inbound {
            Inbound::Gone => return self.finish(None),
            Inbound::Liveness => {
                self.last_rx = now;
                return;
            }
            Inbound::NotBinary => return self.finish(Some(CloseCode::ProtocolError)),
            Inbound::TooLarge => return self.finish(Some(CloseCode::FrameTooLarge)),
            Inbound::Binary(b) => b,
        };
        self.last_rx = now;
        if !self.messages.try_take(now) {
            return self.finish(Some(CloseCode::RateLimited));
        }
        let frame = match self.transport.open(&bytes, self.limits.max_frame_len) {
            Ok(plain) => ClientFrame::decode(&plain),
            Err(ProtocolError::TooLarge { .. }) => {
                return self.finish(Some(CloseCode::FrameTooLarge))
            }
            Err(_) => return self.finish(Some(CloseCode::ProtocolError)),
        };
        let Ok(frame) = frame else {
            return self.finish(Some(CloseCode::ProtocolError));
        };
        crate::metrics::relay().from_client_frames.increment(1);
        match frame {
            ClientFrame::TunnelOpen { tunnel, handshake } => {
                self.open(now, tunnel, handshake, budget)
            }
            ClientFrame::TunnelData { tunnel, payload } => {
                let Some(entry) = self.tunnels.get_mut(&tunnel) else {
                    // Never opened: protocol error. Opened and closed since:
                    // the close crossed this frame; ignore it.
                    if !self.ids.opened_before(tunnel) {
                        self.finish(Some(CloseCode::ProtocolError));
                    }
                    return;
                };
                entry.requests += 1;
                // The budget is charged for every request, but only a
                // tunnel's first request is refused when it is spent: a
                // later one may finish an operation whose attempt the vault
                // has already counted (a LoginFinish with the right
                // password must never be turned away). What that lets
                // through is bounded by the connection's frame rate, and
                // what matters most (login starts, replacements) by the
                // vault's own per-account limits.
                let within = budget.take_op(&self.account, now);
                if !within && entry.requests == 1 {
                    return self.end_tunnel(tunnel, TunnelCloseCode::RateLimited);
                }
                entry.awaiting = true;
                self.actions.push_back(ConnAction::ToVault {
                    tunnel,
                    payload,
                    received: now,
                });
            }
            ClientFrame::TunnelClose { tunnel, .. } => {
                match self.tunnels.remove(&tunnel) {
                    Some(entry) => self.close_vault_side(entry, TunnelCloseCode::Normal),
                    None if !self.ids.opened_before(tunnel) => {
                        return self.finish(Some(CloseCode::ProtocolError))
                    }
                    None => {}
                }
                self.drain_step(now);
            }
        }
    }

    fn open(&mut self, now: Instant, tunnel: TunnelId, handshake: Vec<u8>, budget: &dyn OpBudget) {
        if self.ids.open(tunnel).is_err() {
            return self.finish(Some(CloseCode::ProtocolError));
        }
        let refuse = if self.draining_since.is_some() {
            Some(TunnelCloseCode::Draining)
        } else if self.tunnels.len() >= self.limits.max_tunnels {
            Some(TunnelCloseCode::TooManyTunnels)
        } else if !budget.take_op(&self.account, now) {
            Some(TunnelCloseCode::RateLimited)
        } else {
            None
        };
        if let Some(code) = refuse {
            metrics::counter!("chatd_tunnel_opens_total", "result" => code.label()).increment(1);
            return self.send(ServerFrame::TunnelClose { tunnel, code });
        }
        self.tunnels.insert(
            tunnel,
            TunnelEntry {
                handle: None,
                awaiting: true,
                requests: 0,
            },
        );
        self.actions.push_back(ConnAction::OpenTunnel {
            tunnel,
            handshake,
            received: now,
        });
    }

    /// How [`ConnAction::OpenTunnel`] went.
    pub fn on_tunnel_opened(&mut self, tunnel: TunnelId, opened: Result<H, TunnelCloseCode>) {
        match opened {
            Ok(handle) => match self.tunnels.get_mut(&tunnel) {
                Some(entry) if !self.finished => entry.handle = Some(handle),
                _ => self.actions.push_back(ConnAction::CloseVaultSide {
                    handle,
                    code: TunnelCloseCode::Normal,
                }),
            },
            Err(code) => {
                self.tunnels.remove(&tunnel);
                self.send(ServerFrame::TunnelClose { tunnel, code });
            }
        }
    }

    /// The link under a tunnel is gone: the tunnel ends as
    /// `vault_unavailable`.
    pub fn on_vault_send_failed(&mut self, tunnel: TunnelId) {
        self.end_tunnel(tunnel, TunnelCloseCode::VaultUnavailable);
    }

    /// Something the vault side sent for one of this connection's tunnels.
    pub fn on_vault_event(&mut self, now: Instant, event: ConnEvent) {
        if self.finished {
            return;
        }
        match event {
            ConnEvent::Data {
                tunnel,
                payload,
                received,
            } => {
                let Some(entry) = self.tunnels.get_mut(&tunnel) else {
                    return;
                };
                entry.awaiting = false;
                self.send(ServerFrame::TunnelData { tunnel, payload });
                let m = crate::metrics::relay();
                m.to_client_frames.increment(1);
                m.to_client_seconds
                    .record(now.saturating_duration_since(received).as_secs_f64());
            }
            ConnEvent::Close { tunnel, code } => {
                let Some(entry) = self.tunnels.remove(&tunnel) else {
                    return;
                };
                // The vault side is closed already; letting go of the
                // handle sends nothing more.
                self.close_vault_side(entry, code);
                self.send(ServerFrame::TunnelClose { tunnel, code });
            }
        }
        self.drain_step(now);
    }

    /// What the directory says about the device now.
    pub fn on_device_status(&mut self, check: DeviceCheck) {
        match check {
            DeviceCheck::Status(DeviceStatus::Enrolled) => {}
            DeviceCheck::Status(_) => {
                tracing::info!(account = %self.account, "device revoked; closing its connection");
                self.finish(Some(CloseCode::DeviceRevoked));
            }
            // Fail closed: a device that cannot be checked may have been
            // revoked. The close is retryable; the handshake checks again.
            DeviceCheck::Failed => self.finish(Some(CloseCode::InternalError)),
        }
    }

    /// A revocation this process heard of (any account's).
    pub fn on_revocation(&mut self, event: &RevocationEvent) {
        if !event.ends(&self.account, &self.device) {
            return;
        }
        match event {
            RevocationEvent::Revoked { .. } => {
                self.on_device_status(DeviceCheck::Status(DeviceStatus::Revoked))
            }
            RevocationEvent::DirectoryDown => self.on_device_status(DeviceCheck::Failed),
        }
    }

    /// Revocations were missed (the feed overflowed): check the device now.
    pub fn recheck_now(&mut self) {
        if !self.finished {
            self.actions.push_back(ConnAction::CheckDevice);
        }
    }

    /// The process's shutdown level changed.
    pub fn on_shutdown(&mut self, now: Instant, level: Shutdown) {
        match level {
            Shutdown::Running => {}
            Shutdown::Fast => self.finish(Some(CloseCode::GoingAway)),
            Shutdown::Drain => {
                self.draining_since.get_or_insert(now);
                self.drain_step(now);
            }
        }
    }

    /// A send to the client did not complete within the slow-consumer
    /// deadline: nothing queued behind it matters any more.
    pub fn on_send_stalled(&mut self) {
        self.actions.clear();
        self.finish(Some(CloseCode::SlowConsumer));
    }

    /// The client went away (a send failed).
    pub fn on_client_gone(&mut self) {
        self.actions.clear();
        self.finish(None);
    }

    /// The timer from [`ClientSession::poll_timeout`] fired.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        self.last_tick = now;
        if now >= self.next_recheck {
            self.next_recheck = now + self.limits.revocation_check;
            self.actions.push_back(ConnAction::CheckDevice);
        }
        let idle = self.limits.idle_timeout;
        let quiet = now.saturating_duration_since(self.last_rx);
        if quiet >= idle {
            return self.finish(Some(CloseCode::IdleTimeout));
        }
        if quiet >= idle / 2 && now.saturating_duration_since(self.last_ping) >= idle / 2 {
            self.last_ping = now;
            self.actions.push_back(ConnAction::Ping);
        }
        self.drain_step(now);
    }

    /// While draining: close once no tunnel awaits an answer, or at the
    /// drain deadline.
    fn drain_step(&mut self, now: Instant) {
        let Some(since) = self.draining_since else {
            return;
        };
        let waiting = self.tunnels.values().any(|t| t.awaiting);
        if !waiting || now.saturating_duration_since(since) >= self.limits.drain_deadline {
            self.finish(Some(CloseCode::Draining));
        }
    }

    /// Ends a tunnel on both sides with `code`.
    fn end_tunnel(&mut self, tunnel: TunnelId, code: TunnelCloseCode) {
        if let Some(entry) = self.tunnels.remove(&tunnel) {
            self.close_vault_side(entry, code);
        }
        self.send(ServerFrame::TunnelClose { tunnel, code });
    }

    fn close_vault_side(&mut self, entry: TunnelEntry<H>, code: TunnelCloseCode) {
        if let Some(handle) = entry.handle {
            self.actions
                .push_back(ConnAction::CloseVaultSide { handle, code });
        }
    }

    fn send(&mut self, frame: ServerFrame) {
        // An ended connection says nothing more: a vault answer or a failed
        // open that arrives after the end only lets go of its tunnel.
        if self.finished {
            return;
        }
        match self.transport.seal(&frame.encode()) {
            Ok(sealed) => self.actions.push_back(ConnAction::ToClient(sealed)),
            Err(_) => self.finish(Some(CloseCode::InternalError)),
        }
    }

    fn finish(&mut self, code: Option<CloseCode>) {
        if !self.finished {
            self.finished = true;
            self.actions.push_back(ConnAction::Finish(code));
        }
    }
}

#[cfg(test)]
mod tests;
