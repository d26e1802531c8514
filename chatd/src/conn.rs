//! One client connection (SPEC.md section 4), as IO: the WebSocket upgrade,
//! the Noise_IK handshake with the directory lookups it needs, then the
//! driver of the connection's [`ClientSession`] — one `select!` over the
//! client, the tunnels' events, the session's timer and the shutdown
//! signal, carrying out the actions the session queues. What each outcome
//! means is [`crate::admission`]'s and [`crate::session`]'s business.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use protocol_spec::codes::CloseCode;
use protocol_spec::ids::AccountId;
use protocol_spec::keys::{PublicKey, StaticSecret};
use protocol_spec::limits::sealed_len;
use protocol_spec::messages::chatd::{ClientHello, ServerHello};
use protocol_spec::messages::WireMessage;
use protocol_spec::noise::{Responder, Transport};
use service_kit::shutdown::Shutdown;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{self, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::admission::{self, DeviceDecision, Refusal};
use crate::config::ChatdConfig;
use crate::directory::Directory;
use crate::leader::VaultLinks;
use crate::rate_limits::{AccountLimits, ConnectionSlot, SourceLimiter};
use crate::revocations::{RevocationEvent, RevocationFeed};
use crate::session::{ClientSession, ConnAction, DeviceCheck, Inbound, OpBudget, SessionLimits};
use crate::vault_link::{ConnEvent, TunnelHandle};

pub use crate::admission::PATH;

/// The running front-end, as every connection sees it.
pub struct Frontend {
    pub cfg: ChatdConfig,
    pub static_key: StaticSecret,
    pub directory: Arc<dyn Directory>,
    pub links: VaultLinks,
    pub sources: SourceLimiter,
    pub accounts: Arc<AccountLimits>,
    pub revocations: RevocationFeed,
    pub shutdown: watch::Receiver<Shutdown>,
    pub connections: AtomicUsize,
    /// Every session's limits, from `cfg`, shared (see [`session_limits`]).
    pub session_limits: Arc<SessionLimits>,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend")
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

fn http_refusal(r: Refusal) -> ErrorResponse {
    let mut b = http::Response::builder()
        .status(StatusCode::from_u16(r.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE));
    if let Some(s) = r.retry_after_secs {
        b = b.header("Retry-After", s.to_string());
    }
    b.body(Some(r.body.to_owned()))
        .unwrap_or_else(|_| http::Response::new(Some(r.body.to_owned())))
}

/// Serves one accepted TCP connection until it closes.
pub async fn serve(stream: TcpStream, peer: SocketAddr, fe: Arc<Frontend>) {
    // Boxed, so its state (the upgrade's and the handshake's, about
    // 2.3 KiB) is freed on admission instead of staying part of every
    // idle connection's task.
    let Some(conn) = Box::pin(admit(stream, peer, &fe)).await else {
        return;
    };
    run(conn, &fe).await;
}

/// An admitted connection.
struct Connection {
    ws: Ws,
    session: ClientSession<TunnelHandle>,
    revocations: broadcast::Receiver<RevocationEvent>,
    /// Held for the connection's life: it counts toward the account's
    /// connection limit.
    _slot: ConnectionSlot,
}

/// Relays for an admitted connection until it ends, then closes it.
///
/// Not an `async fn`: that would move `c` into a local of its own and hold
/// two copies of it (0.9 KiB each) for the connection's life. The block
/// uses the captured connection in place.
#[allow(clippy::manual_async_fn)] // on purpose, see above
fn run(mut c: Connection, fe: &Arc<Frontend>) -> impl std::future::Future<Output = ()> + '_ {
    async move {
        // The whole connection, its slot too: a block that named only the
        // fields it uses would capture only those and drop the rest here.
        let c = &mut c;
        metrics::gauge!("chatd_connections").increment(1.0);
        let code = drive(&mut c.ws, fe, &mut c.session, &mut c.revocations).await;
        // Every tunnel's vault side is closed before the client's close
        // handshake, which may take seconds.
        c.session.drop_tunnels();
        metrics::gauge!("chatd_connections").decrement(1.0);
        if let Some(code) = code {
            close(&mut c.ws, code).await;
        }
    }
}

/// The WebSocket upgrade and the Noise_IK handshake, within the handshake
/// deadline; `None` when the connection was refused (and closed).
async fn admit(stream: TcpStream, peer: SocketAddr, fe: &Arc<Frontend>) -> Option<Connection> {
    let _ = stream.set_nodelay(true);
    // Before the device is checked, so a revocation in between is heard.
    let revocations = fe.revocations.subscribe();
    let limits = &fe.cfg.limits;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(limits.handshake_timeout_secs);
    let draining = *fe.shutdown.borrow() != Shutdown::Running;
    let allowed = fe.sources.allow(peer.ip(), Instant::now());
    // The callback's signature is tungstenite's; its error type is an HTTP
    // response, large by nature.
    #[allow(clippy::result_large_err)]
    let check = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        admission::check_upgrade(req.uri().path(), draining, allowed).map_err(http_refusal)?;
        Ok(resp)
    };
    let upgrade =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(ws_config(&fe.cfg)));
    let mut ws = match tokio::time::timeout_at(deadline, upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(_)) => {
            metrics::counter!("chatd_handshakes_total", "result" => "http_refused").increment(1);
            return None;
        }
        Err(_) => {
            metrics::counter!("chatd_handshakes_total", "result" => "timeout").increment(1);
            return None;
        }
    };
    let admitted = match tokio::time::timeout_at(deadline, handshake(&mut ws, fe)).await {
        Ok(Ok(a)) => a,
        Ok(Err(code)) => {
            metrics::counter!("chatd_handshakes_total", "result" => code.label()).increment(1);
            close(&mut ws, code).await;
            return None;
        }
        Err(_) => {
            metrics::counter!("chatd_handshakes_total", "result" => "timeout").increment(1);
            close(&mut ws, CloseCode::HandshakeTimeout).await;
            return None;
        }
    };
    metrics::counter!(
        "chatd_handshakes_total",
        "result" => if admitted.enrolled_now { "enrolled" } else { "ok" }
    )
    .increment(1);
    let Admitted {
        account,
        device,
        transport,
        slot,
        ..
    } = admitted;
    let session = ClientSession::new(
        account,
        device,
        transport,
        fe.session_limits.clone(),
        Instant::now(),
    );
    Some(Connection {
        ws,
        session,
        revocations,
        _slot: slot,
    })
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
    slot: ConnectionSlot,
}

/// What the WebSocket layer delivered, as the session sees it.
fn inbound(msg: Option<Result<Message, WsError>>) -> Inbound {
    match msg {
        None | Some(Ok(Message::Close(_))) => Inbound::Gone,
        Some(Ok(Message::Binary(b))) => Inbound::Binary(b.into()),
        Some(Ok(Message::Pong(_))) | Some(Ok(Message::Ping(_))) => Inbound::Liveness,
        Some(Ok(_)) => Inbound::NotBinary,
        Some(Err(WsError::Capacity(_))) => Inbound::TooLarge,
        Some(Err(_)) => Inbound::Gone,
    }
}

async fn handshake(ws: &mut Ws, fe: &Arc<Frontend>) -> Result<Admitted, CloseCode> {
    let first = match ws.next().await {
        Some(Ok(Message::Binary(b))) => b,
        Some(Ok(Message::Close(_))) | None => return Err(CloseCode::Normal),
        Some(Ok(_)) => return Err(CloseCode::ProtocolError),
        Some(Err(WsError::Capacity(_))) => return Err(CloseCode::FrameTooLarge),
        Some(Err(_)) => return Err(CloseCode::ProtocolError),
    };
    let responder =
        Responder::client_chatd(&fe.static_key).map_err(|_| CloseCode::InternalError)?;
    let msg = responder
        .read_first(&first)
        .map_err(|e| admission::handshake_refusal(&e))?;
    let hello = ClientHello::decode(&msg.payload).map_err(|_| CloseCode::ProtocolError)?;
    let device = msg.remote_static.ok_or(CloseCode::HandshakeFailed)?;
    let dir = fe.directory.clone();
    let (account, code) = (hello.account.clone(), hello.enrolment_code.clone());
    let decision = tokio::task::spawn_blocking(move || -> Result<bool, CloseCode> {
        match admission::device_decision(dir.device_status(&account, &device), code) {
            DeviceDecision::Admit => Ok(false),
            DeviceDecision::Refuse(c) => Err(c),
            DeviceDecision::Enrol(code) => {
                admission::enrolment_decision(dir.enrol(&account, &device, &code, unix_now()))
                    .map(|()| true)
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
    let slot = fe
        .accounts
        .connect(&hello.account, Instant::now())
        .ok_or(CloseCode::TooManyConnections)?;
    let limits = &fe.cfg.limits;
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

impl OpBudget for AccountLimits {
    fn take_op(&self, account: &AccountId, now: Instant) -> bool {
        AccountLimits::take_op(self, account, now)
    }
}

/// A session's limits, from the configuration.
pub fn session_limits(cfg: &ChatdConfig) -> SessionLimits {
    let l = &cfg.limits;
    SessionLimits {
        max_frame_len: l.max_frame_len as usize,
        max_tunnels: l.max_tunnels_per_connection as usize,
        messages_per_sec: l.messages_per_sec,
        message_burst: l.message_burst,
        idle_timeout: Duration::from_secs(l.idle_timeout_secs),
        drain_deadline: Duration::from_secs(l.drain_deadline_secs),
        revocation_check: Duration::from_secs(l.revocation_check_secs.max(1)),
    }
}

/// The connection's loop. Returns the close code to send, if any. Every
/// tunnel's vault side is closed before it returns.
async fn drive(
    ws: &mut Ws,
    fe: &Arc<Frontend>,
    session: &mut ClientSession<TunnelHandle>,
    revocations: &mut broadcast::Receiver<RevocationEvent>,
) -> Option<CloseCode> {
    let mut events = VaultEvents::new(fe.cfg.limits.outbound_queue);
    let slow = Duration::from_secs(fe.cfg.limits.slow_consumer_secs);
    let mut shutdown = fe.shutdown.clone();
    // Messages to the client are queued in the WebSocket's buffer and
    // flushed once nothing else is ready, so frames that are ready
    // together leave in one write.
    let mut unflushed = false;
    let mut coalesced = 0;
    loop {
        while let Some(action) = session.poll_action() {
            match action {
                ConnAction::ToClient(bytes) => {
                    let queued = ws.feed(Message::Binary(bytes.into()));
                    unflushed |= client_write(session, tokio::time::timeout(slow, queued).await);
                }
                ConnAction::Ping => {
                    let queued = ws.feed(Message::Ping(Vec::new().into()));
                    unflushed |= client_write(session, tokio::time::timeout(slow, queued).await);
                }
                ConnAction::OpenTunnel {
                    tunnel,
                    handshake,
                    received,
                } => {
                    // What is queued for the client must not wait on the link.
                    flush_to_client(ws, slow, session, &mut unflushed).await;
                    let opened = fe
                        .links
                        .open(
                            session.account(),
                            tunnel,
                            handshake,
                            events.sender(),
                            received,
                        )
                        .await;
                    session.on_tunnel_opened(tunnel, opened);
                }
                ConnAction::ToVault {
                    tunnel,
                    payload,
                    received,
                } => {
                    flush_to_client(ws, slow, session, &mut unflushed).await;
                    let sent = match session.handle(tunnel) {
                        Some(h) => h.send(payload, received).await,
                        None => Ok(()),
                    };
                    if sent.is_err() {
                        session.on_vault_send_failed(tunnel);
                    }
                }
                ConnAction::CloseVaultSide { handle, code } => handle.close(code),
                ConnAction::CheckDevice => {
                    flush_to_client(ws, slow, session, &mut unflushed).await;
                    let dir = fe.directory.clone();
                    let account = session.account().clone();
                    let device = *session.device();
                    let status =
                        tokio::task::spawn_blocking(move || dir.device_status(&account, &device))
                            .await;
                    session.on_device_status(match status {
                        Ok(Ok(s)) => DeviceCheck::Status(s),
                        _ => DeviceCheck::Failed,
                    });
                }
                // Dropping the session closes every tunnel's vault side.
                ConnAction::Finish(code) => return code,
            }
        }
        if unflushed {
            // Vault frames already waiting join this write (a bounded
            // number, so a busy tunnel cannot hold the flush back).
            if coalesced < MAX_COALESCED {
                if let Some(ev) = events.try_recv() {
                    coalesced += 1;
                    session.on_vault_event(Instant::now(), ev);
                    continue;
                }
            }
            coalesced = 0;
            flush_to_client(ws, slow, session, &mut unflushed).await;
            continue;
        }
        events.release_if_unused();
        let wake = session.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            msg = ws.next() => session.on_client(Instant::now(), inbound(msg), fe.accounts.as_ref()),
            ev = events.recv() => session.on_vault_event(Instant::now(), ev),
            _ = sleep_until(wake) => session.handle_timeout(Instant::now()),
            heard = revocations.recv() => match heard {
                Ok(event) => session.on_revocation(&event),
                Err(broadcast::error::RecvError::Lagged(_)) => session.recheck_now(),
                Err(broadcast::error::RecvError::Closed) => session.on_revocation(&RevocationEvent::DirectoryDown),
            },
            changed = shutdown.changed() => {
                let level = if changed.is_err() { Shutdown::Fast } else { *shutdown.borrow_and_update() };
                session.on_shutdown(Instant::now(), level);
            }
        }
    }
}

/// The queue of a connection's vault frames, there only while it has
/// tunnels: the channel's first block (32 events) and its shared state are
/// about 2 KiB, a fifth of what an idle authenticated connection costs,
/// and most connections never open a tunnel.
struct VaultEvents {
    capacity: usize,
    chan: Option<(mpsc::Sender<ConnEvent>, mpsc::Receiver<ConnEvent>)>,
}

impl VaultEvents {
    fn new(capacity: usize) -> Self {
        VaultEvents {
            capacity: capacity.max(1),
            chan: None,
        }
    }

    /// A sender for a tunnel's route, creating the queue if need be.
    fn sender(&mut self) -> mpsc::Sender<ConnEvent> {
        let capacity = self.capacity;
        self.chan
            .get_or_insert_with(|| mpsc::channel(capacity))
            .0
            .clone()
    }

    fn try_recv(&mut self) -> Option<ConnEvent> {
        self.chan.as_mut()?.1.try_recv().ok()
    }

    /// The next event; never ready while there is no queue.
    async fn recv(&mut self) -> ConnEvent {
        match self.chan.as_mut() {
            // Our own sender keeps the channel open: `None` cannot come.
            Some((_, rx)) => match rx.recv().await {
                Some(ev) => ev,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Frees the queue once no route holds a sender and nothing waits in
    /// it.
    fn release_if_unused(&mut self) {
        if let Some((_, rx)) = &self.chan {
            if rx.sender_strong_count() == 1 && rx.is_empty() {
                self.chan = None;
            }
        }
    }
}

/// Most vault frames gathered into one write to the client.
const MAX_COALESCED: usize = 64;

/// Writes out what is queued for the client, if anything, within the
/// slow-consumer deadline.
async fn flush_to_client(
    ws: &mut Ws,
    slow: Duration,
    session: &mut ClientSession<TunnelHandle>,
    unflushed: &mut bool,
) {
    if std::mem::take(unflushed) {
        client_write(session, tokio::time::timeout(slow, ws.flush()).await);
    }
}

/// Tells the session how a write to the client within the slow-consumer
/// deadline went; true when it went through.
fn client_write(
    session: &mut ClientSession<TunnelHandle>,
    outcome: Result<Result<(), WsError>, tokio::time::error::Elapsed>,
) -> bool {
    match outcome {
        Ok(Ok(())) => true,
        Ok(Err(_)) => {
            session.on_client_gone();
            false
        }
        Err(_) => {
            session.on_send_stalled();
            false
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
