//! One client connection (SPEC.md section 4): the WebSocket upgrade with
//! its pre-upgrade checks, the Noise_IK handshake and admission against the
//! directory, then the relay loop — one `select!` over the client, the
//! tunnels' events, the liveness timer and the shutdown signal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use protocol_spec::codes::{CloseCode, TunnelCloseCode};
use protocol_spec::ids::{AccountId, TunnelId};
use protocol_spec::keys::{PublicKey, StaticSecret};
use protocol_spec::limits::sealed_len;
use protocol_spec::messages::chatd::{ClientFrame, ClientHello, ServerFrame, ServerHello};
use protocol_spec::messages::WireMessage;
use protocol_spec::noise::{Responder, Transport};
use protocol_spec::Error as ProtocolError;
use service_kit::shutdown::Shutdown;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{self, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::config::ChatdConfig;
use crate::directory::{DeviceStatus, Directory, Enrolment};
use crate::limits::{AccountLimits, SourceLimiter, TokenBucket};
use crate::vault_link::{ConnEvent, TunnelHandle, VaultLinks};

/// The WebSocket path of protocol version 1.
pub const PATH: &str = "/v1/connect";

/// What every connection shares.
pub struct Shared {
    pub cfg: ChatdConfig,
    pub static_key: StaticSecret,
    pub directory: Arc<dyn Directory>,
    pub links: VaultLinks,
    pub sources: SourceLimiter,
    pub accounts: Arc<AccountLimits>,
    pub shutdown: watch::Receiver<Shutdown>,
    pub connections: AtomicUsize,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

type Ws = WebSocketStream<TcpStream>;

fn ws_config(cfg: &ChatdConfig) -> WebSocketConfig {
    let max = sealed_len(cfg.limits.max_frame_len as usize);
    WebSocketConfig::default()
        .read_buffer_size(cfg.listen.ws_read_buffer)
        .write_buffer_size(cfg.listen.ws_write_buffer)
        .max_write_buffer_size(cfg.listen.ws_write_buffer.max(max) * 4)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

fn http_refusal(status: StatusCode, retry_after: Option<u32>, body: &'static str) -> ErrorResponse {
    let mut b = http::Response::builder().status(status);
    if let Some(s) = retry_after {
        b = b.header("Retry-After", s.to_string());
    }
    b.body(Some(body.to_owned()))
        .unwrap_or_else(|_| http::Response::new(Some(body.to_owned())))
}

/// Serves one accepted TCP connection until it closes.
pub async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let limits = &shared.cfg.limits;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(limits.handshake_timeout_secs);
    let draining = *shared.shutdown.borrow() != Shutdown::Running;
    let allowed = shared.sources.allow(peer.ip(), Instant::now());
    // The callback's signature is tungstenite's; its error type is an HTTP
    // response, large by nature.
    #[allow(clippy::result_large_err)]
    let check = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != PATH {
            return Err(http_refusal(
                StatusCode::NOT_FOUND,
                None,
                "unknown path; use /v1/connect\n",
            ));
        }
        if draining {
            return Err(http_refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(5),
                "draining; reconnect\n",
            ));
        }
        if !allowed {
            return Err(http_refusal(
                StatusCode::TOO_MANY_REQUESTS,
                Some(1),
                "too many connections from your address\n",
            ));
        }
        Ok(resp)
    };
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        check,
        Some(ws_config(&shared.cfg)),
    );
    let mut ws = match tokio::time::timeout_at(deadline, upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(_)) => {
            metrics::counter!("chatd_handshakes_total", "result" => "http_refused").increment(1);
            return;
        }
        Err(_) => {
            metrics::counter!("chatd_handshakes_total", "result" => "timeout").increment(1);
            return;
        }
    };
    let admitted = match tokio::time::timeout_at(deadline, handshake(&mut ws, &shared)).await {
        Ok(Ok(a)) => a,
        Ok(Err(code)) => {
            metrics::counter!("chatd_handshakes_total", "result" => code.label()).increment(1);
            close(&mut ws, code).await;
            return;
        }
        Err(_) => {
            metrics::counter!("chatd_handshakes_total", "result" => "timeout").increment(1);
            close(&mut ws, CloseCode::HandshakeTimeout).await;
            return;
        }
    };
    metrics::counter!(
        "chatd_handshakes_total",
        "result" => if admitted.enrolled_now { "enrolled" } else { "ok" }
    )
    .increment(1);
    metrics::gauge!("chatd_connections").increment(1.0);
    let mut conn = Conn::new(shared.clone(), admitted);
    let code = conn.run(&mut ws).await;
    drop(conn); // closes every tunnel on the vault side
    metrics::gauge!("chatd_connections").decrement(1.0);
    if let Some(code) = code {
        close(&mut ws, code).await;
    }
}

/// Sends a close frame with the code's static reason, then lets the client
/// close (bounded).
async fn close(ws: &mut Ws, code: CloseCode) {
    metrics::counter!("chatd_closes_total", "code" => code.label()).increment(1);
    let frame = CloseFrame {
        code: WsCloseCode::from(code.value()),
        reason: code.reason().into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = ws.close(Some(frame)).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

struct Admitted {
    account: AccountId,
    device: PublicKey,
    transport: Transport,
    enrolled_now: bool,
    slot: crate::limits::ConnectionSlot,
}

async fn handshake(ws: &mut Ws, shared: &Arc<Shared>) -> Result<Admitted, CloseCode> {
    let first = match ws.next().await {
        Some(Ok(Message::Binary(b))) => b,
        Some(Ok(Message::Close(_))) | None => return Err(CloseCode::Normal),
        Some(Ok(_)) => return Err(CloseCode::ProtocolError),
        Some(Err(WsError::Capacity(_))) => return Err(CloseCode::FrameTooLarge),
        Some(Err(_)) => return Err(CloseCode::ProtocolError),
    };
    let responder =
        Responder::client_chatd(&shared.static_key).map_err(|_| CloseCode::InternalError)?;
    let msg = match responder.read_first(&first) {
        Ok(m) => m,
        Err(ProtocolError::UnsupportedVersion(_)) => return Err(CloseCode::UnsupportedVersion),
        Err(ProtocolError::TooLarge { .. }) => return Err(CloseCode::FrameTooLarge),
        Err(_) => return Err(CloseCode::HandshakeFailed),
    };
    let hello = ClientHello::decode(&msg.payload).map_err(|_| CloseCode::ProtocolError)?;
    let device = msg.remote_static.ok_or(CloseCode::HandshakeFailed)?;
    let dir = shared.directory.clone();
    let (account, code) = (hello.account.clone(), hello.enrolment_code.clone());
    let decision = tokio::task::spawn_blocking(move || -> Result<bool, CloseCode> {
        match dir.device_status(&account, &device) {
            Ok(DeviceStatus::Enrolled) => Ok(false),
            Ok(DeviceStatus::Revoked) => Err(CloseCode::DeviceRevoked),
            Ok(DeviceStatus::Unknown) => match code {
                None => Err(CloseCode::NotEnrolled),
                Some(code) => match dir.enrol(&account, &device, &code, unix_now()) {
                    Ok(Enrolment::Enrolled) => Ok(true),
                    Ok(Enrolment::Rejected) => Err(CloseCode::EnrolmentRejected),
                    Ok(Enrolment::DeviceRevoked) => Err(CloseCode::DeviceRevoked),
                    Err(e) => {
                        tracing::error!(error = %e, "directory failed during enrolment");
                        Err(CloseCode::InternalError)
                    }
                },
            },
            Err(e) => {
                tracing::error!(error = %e, "directory lookup failed");
                Err(CloseCode::InternalError)
            }
        }
    })
    .await
    .map_err(|_| CloseCode::InternalError)?;
    let enrolled_now = decision?;
    if enrolled_now {
        metrics::counter!("chatd_enrolments_total").increment(1);
        tracing::info!(account = %hello.account, device = %device.fingerprint(), "device enrolled");
    }
    let slot = shared
        .accounts
        .connect(&hello.account, Instant::now())
        .ok_or(CloseCode::TooManyConnections)?;
    let limits = &shared.cfg.limits;
    let server_hello = ServerHello {
        enrolled_now,
        max_frame_len: limits.max_frame_len,
        max_tunnels: limits.max_tunnels_per_connection,
        idle_timeout_secs: limits.idle_timeout_secs as u32,
    };
    let (m2, transport) = msg
        .state
        .write_response(&server_hello.encode())
        .map_err(|_| CloseCode::InternalError)?;
    ws.send(Message::Binary(m2.into()))
        .await
        .map_err(|_| CloseCode::Normal)?;
    Ok(Admitted {
        account: hello.account,
        device,
        transport,
        enrolled_now,
        slot,
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

struct Tunnel {
    handle: TunnelHandle,
    /// A client frame went to the vault and its answer has not come back.
    awaiting: bool,
}

struct Conn {
    shared: Arc<Shared>,
    account: AccountId,
    device: PublicKey,
    transport: Transport,
    tunnels: HashMap<TunnelId, Tunnel>,
    highest: u32,
    events_tx: mpsc::Sender<ConnEvent>,
    events_rx: mpsc::Receiver<ConnEvent>,
    messages: TokenBucket,
    last_rx: Instant,
    last_ping: Instant,
    draining_since: Option<Instant>,
    _slot: crate::limits::ConnectionSlot,
}

enum Step {
    Continue,
    Close(CloseCode),
    /// The client went away; nothing to send.
    Gone,
}

impl Conn {
    fn new(shared: Arc<Shared>, a: Admitted) -> Self {
        let (events_tx, events_rx) = mpsc::channel(shared.cfg.limits.outbound_queue);
        let l = &shared.cfg.limits;
        let now = Instant::now();
        Conn {
            messages: TokenBucket::new(l.messages_per_sec, l.message_burst, now),
            shared,
            account: a.account,
            device: a.device,
            transport: a.transport,
            tunnels: HashMap::new(),
            highest: 0,
            events_tx,
            events_rx,
            last_rx: now,
            last_ping: now,
            draining_since: None,
            _slot: a.slot,
        }
    }

    /// The relay loop. Returns the close code to send, if any.
    async fn run(&mut self, ws: &mut Ws) -> Option<CloseCode> {
        let l = self.shared.cfg.limits.clone();
        let idle = Duration::from_secs(l.idle_timeout_secs);
        let mut shutdown = self.shared.shutdown.clone();
        let mut recheck =
            tokio::time::interval(Duration::from_secs(l.revocation_check_secs.max(1)));
        recheck.tick().await;
        loop {
            let wake = tokio::time::Instant::from_std(self.next_wake(idle));
            let step = tokio::select! {
                msg = ws.next() => self.on_client(ws, msg).await,
                Some(ev) = self.events_rx.recv() => self.on_event(ws, ev).await,
                _ = tokio::time::sleep_until(wake) => self.on_tick(ws, idle).await,
                _ = recheck.tick() => self.recheck().await,
                changed = shutdown.changed() => {
                    let level = if changed.is_err() { Shutdown::Fast } else { *shutdown.borrow_and_update() };
                    match level {
                        Shutdown::Running => Step::Continue,
                        Shutdown::Fast => Step::Close(CloseCode::GoingAway),
                        Shutdown::Drain => {
                            self.draining_since.get_or_insert_with(Instant::now);
                            self.drain_step()
                        }
                    }
                }
            };
            match step {
                Step::Continue => {}
                Step::Close(code) => return Some(code),
                Step::Gone => return None,
            }
        }
    }

    fn drain_step(&self) -> Step {
        let Some(since) = self.draining_since else {
            return Step::Continue;
        };
        let waiting = self.tunnels.values().any(|t| t.awaiting);
        let deadline = Duration::from_secs(self.shared.cfg.limits.drain_deadline_secs);
        if !waiting || since.elapsed() >= deadline {
            Step::Close(CloseCode::Draining)
        } else {
            Step::Continue
        }
    }

    async fn send_frame(&mut self, ws: &mut Ws, frame: ServerFrame) -> Step {
        let sealed = match self.transport.seal(&frame.encode()) {
            Ok(s) => s,
            Err(_) => return Step::Close(CloseCode::InternalError),
        };
        let wait = Duration::from_secs(self.shared.cfg.limits.slow_consumer_secs);
        match tokio::time::timeout(wait, ws.send(Message::Binary(sealed.into()))).await {
            Ok(Ok(())) => Step::Continue,
            Ok(Err(_)) => Step::Gone,
            Err(_) => Step::Close(CloseCode::SlowConsumer),
        }
    }

    async fn on_client(&mut self, ws: &mut Ws, msg: Option<Result<Message, WsError>>) -> Step {
        let now = Instant::now();
        let bytes = match msg {
            None | Some(Ok(Message::Close(_))) => return Step::Gone,
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Pong(_))) | Some(Ok(Message::Ping(_))) => {
                self.last_rx = now;
                return Step::Continue;
            }
            Some(Ok(_)) => return Step::Close(CloseCode::ProtocolError),
            Some(Err(WsError::Capacity(_))) => return Step::Close(CloseCode::FrameTooLarge),
            Some(Err(_)) => return Step::Gone,
        };
        self.last_rx = now;
        if !self.messages.try_take(now) {
            return Step::Close(CloseCode::RateLimited);
        }
        let max = self.shared.cfg.limits.max_frame_len as usize;
        let frame = match self.transport.open(&bytes, max) {
            Ok(plain) => ClientFrame::decode(&plain),
            Err(ProtocolError::TooLarge { .. }) => return Step::Close(CloseCode::FrameTooLarge),
            Err(_) => return Step::Close(CloseCode::ProtocolError),
        };
        let Ok(frame) = frame else {
            return Step::Close(CloseCode::ProtocolError);
        };
        metrics::counter!("chatd_relay_frames_total", "direction" => "from_client").increment(1);
        match frame {
            ClientFrame::TunnelOpen { tunnel, handshake } => {
                self.open(ws, tunnel, handshake, now).await
            }
            ClientFrame::TunnelData { tunnel, payload } => {
                if !self.tunnels.contains_key(&tunnel) {
                    // Never opened: protocol error. Opened and closed since:
                    // the close crossed this frame; ignore it.
                    return if tunnel.0 > self.highest {
                        Step::Close(CloseCode::ProtocolError)
                    } else {
                        Step::Continue
                    };
                }
                if !self.shared.accounts.take_op(&self.account, now) {
                    return self
                        .end_tunnel(ws, tunnel, TunnelCloseCode::RateLimited)
                        .await;
                }
                let sent = match self.tunnels.get_mut(&tunnel) {
                    Some(t) => {
                        t.awaiting = true;
                        t.handle.send(payload, now).await
                    }
                    None => Ok(()),
                };
                if sent.is_err() {
                    return self
                        .end_tunnel(ws, tunnel, TunnelCloseCode::VaultUnavailable)
                        .await;
                }
                Step::Continue
            }
            ClientFrame::TunnelClose { tunnel, .. } => {
                if let Some(t) = self.tunnels.remove(&tunnel) {
                    t.handle.close(TunnelCloseCode::Normal);
                } else if tunnel.0 > self.highest {
                    return Step::Close(CloseCode::ProtocolError);
                }
                self.drain_step()
            }
        }
    }

    async fn open(
        &mut self,
        ws: &mut Ws,
        tunnel: TunnelId,
        handshake: Vec<u8>,
        now: Instant,
    ) -> Step {
        if tunnel.0 <= self.highest {
            return Step::Close(CloseCode::ProtocolError);
        }
        self.highest = tunnel.0;
        let refuse = if self.draining_since.is_some() {
            Some(TunnelCloseCode::Draining)
        } else if self.tunnels.len() >= self.shared.cfg.limits.max_tunnels_per_connection as usize {
            Some(TunnelCloseCode::TooManyTunnels)
        } else if !self.shared.accounts.take_op(&self.account, now) {
            Some(TunnelCloseCode::RateLimited)
        } else {
            None
        };
        if let Some(code) = refuse {
            metrics::counter!("chatd_tunnel_opens_total", "result" => code.label()).increment(1);
            return self
                .send_frame(ws, ServerFrame::TunnelClose { tunnel, code })
                .await;
        }
        match self
            .shared
            .links
            .open(
                &self.account,
                tunnel,
                handshake,
                self.events_tx.clone(),
                now,
            )
            .await
        {
            Ok(handle) => {
                self.tunnels.insert(
                    tunnel,
                    Tunnel {
                        handle,
                        awaiting: true,
                    },
                );
                Step::Continue
            }
            Err(code) => {
                self.send_frame(ws, ServerFrame::TunnelClose { tunnel, code })
                    .await
            }
        }
    }

    /// Ends a tunnel on both sides with `code`.
    async fn end_tunnel(&mut self, ws: &mut Ws, tunnel: TunnelId, code: TunnelCloseCode) -> Step {
        if let Some(t) = self.tunnels.remove(&tunnel) {
            t.handle.close(code);
        }
        self.send_frame(ws, ServerFrame::TunnelClose { tunnel, code })
            .await
    }

    async fn on_event(&mut self, ws: &mut Ws, ev: ConnEvent) -> Step {
        match ev {
            ConnEvent::Data {
                tunnel,
                payload,
                received,
            } => {
                let Some(t) = self.tunnels.get_mut(&tunnel) else {
                    return Step::Continue;
                };
                t.awaiting = false;
                let step = self
                    .send_frame(ws, ServerFrame::TunnelData { tunnel, payload })
                    .await;
                metrics::counter!("chatd_relay_frames_total", "direction" => "to_client")
                    .increment(1);
                metrics::histogram!("chatd_relay_seconds", "direction" => "to_client")
                    .record(received.elapsed().as_secs_f64());
                match step {
                    Step::Continue => self.drain_step(),
                    other => other,
                }
            }
            ConnEvent::Close { tunnel, code } => {
                if self.tunnels.remove(&tunnel).is_none() {
                    return Step::Continue;
                }
                match self
                    .send_frame(ws, ServerFrame::TunnelClose { tunnel, code })
                    .await
                {
                    Step::Continue => self.drain_step(),
                    other => other,
                }
            }
        }
    }

    /// When [`Conn::on_tick`] next has something to do: the ping at half
    /// the idle time, the idle close, or (while draining) the drain check.
    /// Sleeping until then, rather than ticking every second, keeps ten
    /// thousand idle connections from waking chatd ten thousand times a
    /// second.
    fn next_wake(&self, idle: Duration) -> Instant {
        let now = Instant::now();
        if self.draining_since.is_some() {
            return now + Duration::from_millis(250);
        }
        let ping_due = (self.last_rx + idle / 2).max(self.last_ping + idle / 2);
        let close_due = self.last_rx + idle;
        ping_due.min(close_due).max(now + Duration::from_millis(10))
    }

    async fn on_tick(&mut self, ws: &mut Ws, idle: Duration) -> Step {
        let quiet = self.last_rx.elapsed();
        if quiet >= idle {
            return Step::Close(CloseCode::IdleTimeout);
        }
        if quiet >= idle / 2 && self.last_ping.elapsed() >= idle / 2 {
            self.last_ping = Instant::now();
            let wait = Duration::from_secs(self.shared.cfg.limits.slow_consumer_secs);
            match tokio::time::timeout(wait, ws.send(Message::Ping(Vec::new().into()))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Step::Gone,
                Err(_) => return Step::Close(CloseCode::SlowConsumer),
            }
        }
        self.drain_step()
    }

    async fn recheck(&mut self) -> Step {
        let dir = self.shared.directory.clone();
        let (account, device) = (self.account.clone(), self.device);
        match tokio::task::spawn_blocking(move || dir.device_status(&account, &device)).await {
            Ok(Ok(DeviceStatus::Enrolled)) => Step::Continue,
            Ok(Ok(_)) => {
                tracing::info!(account = %self.account, "device revoked; closing its connection");
                Step::Close(CloseCode::DeviceRevoked)
            }
            // A directory hiccup is not the client's fault; check again later.
            _ => Step::Continue,
        }
    }
}
