//! The chatd link listener (SPEC.md section 5) and the tunnels multiplexed
//! on each link (section 6).
//!
//! Per link: a reader task (records in, Noise open, decode), a writer task
//! (encode, Noise seal, records out, bounded queue) and a main loop that
//! owns the tunnel table. Everything slow (tunnel handshakes, the vault
//! core) runs on the [`WorkerPool`]; a tunnel's state travels into the job
//! and comes back with its reply, so each tunnel has at most one request in
//! flight and needs no lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use protocol_spec::codes::TunnelCloseCode;
use protocol_spec::ids::{AccountId, FleetId, LinkTunnelId};
use protocol_spec::keys::{PublicKey, StaticSecret};
use protocol_spec::limits::{MAX_FRAME, MAX_LINK_RECORD, MAX_VAULT_FRAME};
use protocol_spec::messages::link::{LinkFrame, LinkHello, LinkWelcome, VaultLinkFrame};
use protocol_spec::messages::vault::{TunnelHello, VaultHello, VaultRequest};
use protocol_spec::messages::WireMessage;
use protocol_spec::noise::{Responder, Transport};
use protocol_spec::Error as ProtocolError;
use service_kit::records::{read_record, write_record};
use service_kit::shutdown::Shutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use super::workers::WorkerPool;
use crate::core::{Now, Vault, VaultSession};

/// Whether this replica serves tunnels, and where the leader is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub leader: bool,
    pub leader_hint: Option<String>,
}

/// What worker jobs need (kept apart from [`LinkContext`] because the pool
/// itself lives there).
pub struct JobContext {
    pub vault: Arc<Vault>,
    pub tunnel_key: StaticSecret,
    pub fleet_id: FleetId,
    pub max_attempts: u32,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("fleet_id", &self.fleet_id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for LinkJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkJob({})", self.id)
    }
}

/// Work for the pool. Jobs carry the tunnel they act on, so a refused job
/// gives its tunnel back to the link.
pub struct LinkJob {
    done: mpsc::UnboundedSender<JobDone>,
    id: LinkTunnelId,
    kind: JobKind,
}

enum JobKind {
    Handshake {
        account: AccountId,
        handshake: Vec<u8>,
    },
    Request {
        tunnel: Box<Tunnel>,
        payload: Vec<u8>,
    },
    Expire {
        tunnel: Box<Tunnel>,
    },
    Close {
        tunnel: Box<Tunnel>,
    },
}

/// Builds the worker pool that runs link jobs.
pub fn worker_pool(ctx: Arc<JobContext>, workers: usize, queue: usize) -> WorkerPool<LinkJob> {
    WorkerPool::new(workers, queue, move |job: LinkJob| run_job(&ctx, job))
}

/// Everything a link needs, shared by all links.
pub struct LinkContext {
    pub jobs: Arc<JobContext>,
    pub workers: Arc<WorkerPool<LinkJob>>,
    pub link_key: StaticSecret,
    pub chatd_keys: Vec<PublicKey>,
    pub replica_id: String,
    pub max_tunnels: u32,
    pub tunnel_idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub role: watch::Receiver<Role>,
}

impl std::fmt::Debug for LinkContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkContext")
            .field("replica_id", &self.replica_id)
            .finish_non_exhaustive()
    }
}

/// Accepts links until shutdown. At most `max_links` run at once; more are
/// closed at once.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<LinkContext>,
    max_links: usize,
    mut shutdown: watch::Receiver<Shutdown>,
) {
    let slots = Arc::new(Semaphore::new(max_links));
    let mut links = tokio::task::JoinSet::new();
    let for_links = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "refusing link: max_links reached");
                    drop(stream);
                    continue;
                };
                let ctx = ctx.clone();
                let shutdown = for_links.clone();
                links.spawn(async move {
                    metrics::gauge!("vault_links").increment(1.0);
                    run_link(stream, peer, ctx, shutdown).await;
                    metrics::gauge!("vault_links").decrement(1.0);
                    drop(permit);
                });
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow_and_update() != Shutdown::Running {
                    break;
                }
            }
            Some(_) = links.join_next(), if !links.is_empty() => {}
        }
    }
    // Links drain themselves on the same signal; wait for them.
    while links.join_next().await.is_some() {}
}

/// The Noise transport of a link, shared by its reader and writer tasks
/// (snow keeps both directions in one state; each lock is one frame).
type SharedTransport = Arc<Mutex<Transport>>;

async fn handshake(
    stream: &mut TcpStream,
    ctx: &LinkContext,
) -> Result<(Transport, LinkHello), &'static str> {
    let msg1 = read_record(stream, MAX_LINK_RECORD, ctx.handshake_timeout);
    let msg1 = match tokio::time::timeout(ctx.handshake_timeout, msg1).await {
        Ok(Ok(Some(m))) => m,
        Ok(Ok(None)) => return Err("closed before the handshake"),
        Ok(Err(_)) => return Err("bad handshake record"),
        Err(_) => return Err("handshake timeout"),
    };
    // Try each accepted chatd key (several allow rotation).
    let mut first = None;
    for key in &ctx.chatd_keys {
        let Ok(responder) = Responder::link(&ctx.link_key, key) else {
            continue;
        };
        if let Ok(f) = responder.read_first(&msg1) {
            first = Some(f);
            break;
        }
    }
    let first = first.ok_or("no accepted chatd key matches")?;
    let hello = LinkHello::decode(&first.payload).map_err(|_| "malformed LinkHello")?;
    let role = ctx.role.borrow().clone();
    let welcome = LinkWelcome {
        replica_id: ctx.replica_id.clone(),
        leader: role.leader,
        leader_hint: role.leader_hint,
        max_tunnels: ctx.max_tunnels,
    };
    let (msg2, transport) = first
        .state
        .write_response(&welcome.encode())
        .map_err(|_| "cannot write handshake response")?;
    write_record(stream, &msg2)
        .await
        .map_err(|_| "cannot send handshake response")?;
    stream
        .flush()
        .await
        .map_err(|_| "cannot send handshake response")?;
    Ok((transport, hello))
}

async fn run_link(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<LinkContext>,
    shutdown: watch::Receiver<Shutdown>,
) {
    let _ = stream.set_nodelay(true);
    let (transport, hello) = match handshake(&mut stream, &ctx).await {
        Ok(x) => x,
        Err(reason) => {
            metrics::counter!("vault_link_handshakes_total", "result" => "failed").increment(1);
            tracing::warn!(%peer, reason, "link handshake failed");
            return;
        }
    };
    metrics::counter!("vault_link_handshakes_total", "result" => "ok").increment(1);
    tracing::info!(%peer, chatd = %hello.chatd_instance, "chatd link established");
    let transport: SharedTransport = Arc::new(Mutex::new(transport));
    let (read_half, write_half) = stream.into_split();

    let (in_tx, in_rx) = mpsc::channel::<Result<LinkFrame, &'static str>>(64);
    let reader = tokio::spawn(read_frames(
        read_half,
        transport.clone(),
        in_tx,
        ctx.handshake_timeout,
    ));
    let (out_tx, out_rx) = mpsc::channel::<VaultLinkFrame>(256);
    let writer = tokio::spawn(write_frames(write_half, transport, out_rx));

    let mut link = Link::new(ctx, out_tx);
    link.run(in_rx, shutdown).await;
    reader.abort();
    drop(link);
    let _ = writer.await;
    tracing::info!(%peer, "chatd link closed");
}

async fn read_frames(
    mut r: tokio::net::tcp::OwnedReadHalf,
    transport: SharedTransport,
    tx: mpsc::Sender<Result<LinkFrame, &'static str>>,
    body_timeout: Duration,
) {
    loop {
        let record = match read_record(&mut r, MAX_LINK_RECORD, body_timeout).await {
            Ok(Some(rec)) => rec,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "link record refused");
                let _ = tx.send(Err("bad record")).await;
                return;
            }
        };
        let frame = transport
            .lock()
            .open(&record, MAX_FRAME)
            .map_err(|_| "frame failed to decrypt")
            .and_then(|plain| LinkFrame::decode(&plain).map_err(|_| "malformed frame"));
        let failed = frame.is_err();
        if tx.send(frame).await.is_err() || failed {
            return;
        }
    }
}

async fn write_frames(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    transport: SharedTransport,
    mut rx: mpsc::Receiver<VaultLinkFrame>,
) {
    while let Some(frame) = rx.recv().await {
        let sealed = match transport.lock().seal(&frame.encode()) {
            Ok(s) => s,
            Err(_) => return,
        };
        if write_record(&mut w, &sealed).await.is_err() {
            return;
        }
        if rx.is_empty() && w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// A tunnel's state while no job holds it.
struct Tunnel {
    transport: Transport,
    session: VaultSession,
}

struct Slot {
    /// `None` while a worker job holds the tunnel.
    tunnel: Option<Box<Tunnel>>,
    last_activity: Instant,
    /// Close once the job in flight returns.
    closing: Option<TunnelCloseCode>,
}

enum Reply {
    Data(Vec<u8>),
    Close(TunnelCloseCode),
    Nothing,
}

struct JobDone {
    id: LinkTunnelId,
    tunnel: Option<Box<Tunnel>>,
    reply: Reply,
}

struct Link {
    ctx: Arc<LinkContext>,
    tunnels: HashMap<LinkTunnelId, Slot>,
    highest_id: u64,
    out: mpsc::Sender<VaultLinkFrame>,
    done_tx: mpsc::UnboundedSender<JobDone>,
    done_rx: mpsc::UnboundedReceiver<JobDone>,
    draining: bool,
}

impl Link {
    fn new(ctx: Arc<LinkContext>, out: mpsc::Sender<VaultLinkFrame>) -> Self {
        // Unbounded is bounded in practice: one job per tunnel at most.
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Link {
            ctx,
            tunnels: HashMap::new(),
            highest_id: 0,
            out,
            done_tx,
            done_rx,
            draining: false,
        }
    }

    async fn run(
        &mut self,
        mut inbound: mpsc::Receiver<Result<LinkFrame, &'static str>>,
        mut shutdown: watch::Receiver<Shutdown>,
    ) {
        let mut role = self.ctx.role.clone();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        loop {
            if self.draining && self.tunnels.is_empty() {
                break;
            }
            if !self.draining {
                let level = *shutdown.borrow_and_update();
                match level {
                    Shutdown::Running => {}
                    Shutdown::Fast => break,
                    Shutdown::Drain => {
                        self.draining = true;
                        drain_deadline =
                            Some(tokio::time::Instant::now() + Duration::from_secs(10));
                        self.close_idle(TunnelCloseCode::Draining).await;
                        continue;
                    }
                }
            }
            tokio::select! {
                frame = inbound.recv(), if !self.draining => match frame {
                    Some(Ok(f)) => {
                        if !self.on_frame(f).await {
                            break;
                        }
                    }
                    Some(Err(reason)) => {
                        tracing::warn!(reason, "closing link after a protocol error");
                        break;
                    }
                    None => break,
                },
                Some(done) = self.done_rx.recv() => self.on_done(done).await,
                _ = tick.tick() => self.sweep().await,
                changed = role.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let r = role.borrow_and_update().clone();
                    if !r.leader {
                        self.close_all(TunnelCloseCode::LeaderChanged).await;
                    }
                    let _ = self.out.send(VaultLinkFrame::Status { leader: r.leader, leader_hint: r.leader_hint }).await;
                }
                changed = shutdown.changed(), if !self.draining => {
                    // The new level is handled at the top of the loop.
                    if changed.is_err() {
                        break;
                    }
                }
                _ = async { match drain_deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
            }
        }
        // Every remaining tunnel is closed: pending logins are abandoned
        // (and exhausted records erased) on a worker.
        let slots: Vec<(LinkTunnelId, Slot)> = self.tunnels.drain().collect();
        for (id, slot) in slots {
            if let Some(t) = slot.tunnel {
                self.close_session(id, t);
            }
        }
    }

    /// Handles one inbound frame. `false` ends the link.
    async fn on_frame(&mut self, frame: LinkFrame) -> bool {
        match frame {
            LinkFrame::Open {
                tunnel,
                account,
                handshake,
            } => {
                if tunnel.0 <= self.highest_id {
                    tracing::warn!(tunnel = tunnel.0, "tunnel id reused; closing link");
                    return false;
                }
                self.highest_id = tunnel.0;
                let refuse = if !self.ctx.role.borrow().leader {
                    Some(TunnelCloseCode::NotLeader)
                } else if self.tunnels.len() >= self.ctx.max_tunnels as usize {
                    Some(TunnelCloseCode::TooManyTunnels)
                } else {
                    None
                };
                if let Some(code) = refuse {
                    metrics::counter!("vault_tunnel_opens_total", "result" => code.label())
                        .increment(1);
                    self.send(VaultLinkFrame::Close { tunnel, code }).await;
                    return true;
                }
                self.tunnels.insert(
                    tunnel,
                    Slot {
                        tunnel: None,
                        last_activity: Instant::now(),
                        closing: None,
                    },
                );
                metrics::gauge!("vault_tunnels").increment(1.0);
                self.submit(tunnel, JobKind::Handshake { account, handshake })
                    .await;
            }
            LinkFrame::Data { tunnel, payload } => {
                let Some(slot) = self.tunnels.get_mut(&tunnel) else {
                    return true; // closed already; the close crossed this frame
                };
                slot.last_activity = Instant::now();
                let Some(t) = slot.tunnel.take() else {
                    // One request at a time per tunnel (SPEC.md 6.3).
                    slot.closing = Some(TunnelCloseCode::ProtocolError);
                    return true;
                };
                self.submit(tunnel, JobKind::Request { tunnel: t, payload })
                    .await;
            }
            LinkFrame::Close { tunnel, .. } => {
                if let Some(slot) = self.tunnels.remove(&tunnel) {
                    metrics::gauge!("vault_tunnels").decrement(1.0);
                    // With a job in flight, the job's result finds no slot
                    // and closes the session then.
                    if let Some(t) = slot.tunnel {
                        self.close_session(tunnel, t);
                    }
                }
            }
        }
        true
    }

    async fn on_done(&mut self, done: JobDone) {
        let Some(slot) = self.tunnels.get_mut(&done.id) else {
            // Closed while the job ran.
            if let Some(t) = done.tunnel {
                self.close_session(done.id, t);
            }
            return;
        };
        slot.last_activity = Instant::now();
        if let Some(code) = slot.closing.take() {
            if let Some(t) = done.tunnel {
                self.close_session(done.id, t);
            }
            self.remove_and_close(done.id, code).await;
            return;
        }
        match done.reply {
            Reply::Data(bytes) => {
                self.send(VaultLinkFrame::Data {
                    tunnel: done.id,
                    payload: bytes,
                })
                .await;
            }
            Reply::Close(code) => {
                self.remove_and_close(done.id, code).await;
                return;
            }
            Reply::Nothing => {}
        }
        match done.tunnel {
            Some(t) => {
                if let Some(slot) = self.tunnels.get_mut(&done.id) {
                    slot.tunnel = Some(t);
                }
                if self.draining {
                    self.remove_and_close(done.id, TunnelCloseCode::Draining)
                        .await;
                }
            }
            None => {
                self.remove_and_close(done.id, TunnelCloseCode::InternalError)
                    .await
            }
        }
    }

    /// Closes idle tunnels and expires pending logins that ran out of time.
    async fn sweep(&mut self) {
        let now = Instant::now();
        let idle: Vec<LinkTunnelId> = self
            .tunnels
            .iter()
            .filter(|(_, s)| {
                s.tunnel.is_some()
                    && now.duration_since(s.last_activity) >= self.ctx.tunnel_idle_timeout
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            if let Some(t) = self.tunnels.get_mut(&id).and_then(|s| s.tunnel.take()) {
                self.close_session(id, t);
            }
            self.remove_and_close(id, TunnelCloseCode::IdleTimeout)
                .await;
        }
        let due: Vec<LinkTunnelId> = self
            .tunnels
            .iter()
            .filter(|(_, s)| {
                s.tunnel
                    .as_ref()
                    .and_then(|t| t.session.login_deadline())
                    .is_some_and(|d| d <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(t) = self.tunnels.get_mut(&id).and_then(|s| s.tunnel.take()) else {
                continue;
            };
            self.submit(id, JobKind::Expire { tunnel: t }).await;
        }
    }

    async fn close_all(&mut self, code: TunnelCloseCode) {
        let ids: Vec<LinkTunnelId> = self.tunnels.keys().copied().collect();
        for id in ids {
            match self.tunnels.get_mut(&id).and_then(|s| s.tunnel.take()) {
                Some(t) => {
                    self.close_session(id, t);
                    self.remove_and_close(id, code).await;
                }
                None => {
                    if let Some(s) = self.tunnels.get_mut(&id) {
                        s.closing = Some(code);
                    }
                }
            }
        }
    }

    async fn close_idle(&mut self, code: TunnelCloseCode) {
        let idle: Vec<LinkTunnelId> = self
            .tunnels
            .iter()
            .filter(|(_, s)| s.tunnel.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            if let Some(t) = self.tunnels.get_mut(&id).and_then(|s| s.tunnel.take()) {
                self.close_session(id, t);
            }
            self.remove_and_close(id, code).await;
        }
    }

    async fn remove_and_close(&mut self, id: LinkTunnelId, code: TunnelCloseCode) {
        if self.tunnels.remove(&id).is_some() {
            metrics::gauge!("vault_tunnels").decrement(1.0);
        }
        metrics::counter!("vault_tunnel_closes_total", "code" => code.label()).increment(1);
        self.send(VaultLinkFrame::Close { tunnel: id, code }).await;
    }

    async fn send(&self, frame: VaultLinkFrame) {
        // Waits for room: a chatd that stops reading stops us reading it.
        let _ = self.out.send(frame).await;
    }

    /// Queues a job; if the pool is full the tunnel is closed as
    /// overloaded, and a tunnel the job carried is closed properly anyway.
    async fn submit(&mut self, id: LinkTunnelId, kind: JobKind) {
        let job = LinkJob {
            done: self.done_tx.clone(),
            id,
            kind,
        };
        if let Err(refused) = self.ctx.workers.submit(job) {
            match refused.kind {
                JobKind::Request { tunnel, .. }
                | JobKind::Expire { tunnel }
                | JobKind::Close { tunnel } => {
                    close_blocking(&self.ctx.jobs, tunnel);
                }
                JobKind::Handshake { .. } => {}
            }
            self.remove_and_close(id, TunnelCloseCode::Overloaded).await;
        }
    }

    /// Closes a session (abandoning a pending login, which may erase an
    /// exhausted record). This must never be skipped, or an exhausted record
    /// would wait for a login that can no longer come.
    fn close_session(&self, id: LinkTunnelId, tunnel: Box<Tunnel>) {
        if tunnel.session.login_deadline().is_none() {
            return; // nothing to abandon
        }
        let job = LinkJob {
            done: self.done_tx.clone(),
            id,
            kind: JobKind::Close { tunnel },
        };
        if let Err(LinkJob {
            kind: JobKind::Close { tunnel },
            ..
        }) = self.ctx.workers.submit(job)
        {
            close_blocking(&self.ctx.jobs, tunnel);
        }
    }
}

/// Fallback when the workers are saturated: tokio's blocking pool.
fn close_blocking(ctx: &Arc<JobContext>, mut tunnel: Box<Tunnel>) {
    let vault = ctx.vault.clone();
    tokio::task::spawn_blocking(move || vault.close(Now::system(), &mut tunnel.session));
}

fn run_job(ctx: &JobContext, job: LinkJob) {
    let LinkJob { done, id, kind } = job;
    let result = match kind {
        JobKind::Handshake { account, handshake } => tunnel_handshake(ctx, id, account, &handshake),
        JobKind::Request {
            mut tunnel,
            payload,
        } => {
            let reply = handle_request(ctx, &mut tunnel, &payload);
            let keep = !matches!(reply, Reply::Close(_));
            if !keep {
                ctx.vault.close(Now::system(), &mut tunnel.session);
            }
            JobDone {
                id,
                tunnel: keep.then_some(tunnel),
                reply,
            }
        }
        JobKind::Expire { mut tunnel } => {
            ctx.vault.expire(Now::system(), &mut tunnel.session);
            JobDone {
                id,
                tunnel: Some(tunnel),
                reply: Reply::Nothing,
            }
        }
        JobKind::Close { mut tunnel } => {
            ctx.vault.close(Now::system(), &mut tunnel.session);
            return;
        }
    };
    // If the link is gone, nobody will close this tunnel: do it here.
    if let Err(mpsc::error::SendError(done)) = done.send(result) {
        if let Some(mut t) = done.tunnel {
            ctx.vault.close(Now::system(), &mut t.session);
        }
    }
}

fn tunnel_handshake(
    ctx: &JobContext,
    id: LinkTunnelId,
    account: AccountId,
    handshake: &[u8],
) -> JobDone {
    let close = |code| JobDone {
        id,
        tunnel: None,
        reply: Reply::Close(code),
    };
    let Ok(responder) = Responder::tunnel(&ctx.tunnel_key, &account) else {
        return close(TunnelCloseCode::InternalError);
    };
    let first = match responder.read_first(handshake) {
        Ok(f) => f,
        Err(ProtocolError::UnsupportedVersion(_)) => {
            metrics::counter!("vault_tunnel_opens_total", "result" => "unsupported_version")
                .increment(1);
            return close(TunnelCloseCode::UnsupportedVersion);
        }
        Err(_) => {
            metrics::counter!("vault_tunnel_opens_total", "result" => "handshake_failed")
                .increment(1);
            return close(TunnelCloseCode::HandshakeFailed);
        }
    };
    if TunnelHello::decode(&first.payload).is_err() {
        metrics::counter!("vault_tunnel_opens_total", "result" => "handshake_failed").increment(1);
        return close(TunnelCloseCode::HandshakeFailed);
    }
    let hello = VaultHello {
        fleet_id: ctx.fleet_id.clone(),
        max_attempts: ctx.max_attempts,
    };
    let Ok((msg2, transport)) = first.state.write_response(&hello.encode()) else {
        return close(TunnelCloseCode::InternalError);
    };
    metrics::counter!("vault_tunnel_opens_total", "result" => "ok").increment(1);
    JobDone {
        id,
        tunnel: Some(Box::new(Tunnel {
            transport,
            session: VaultSession::new(account),
        })),
        reply: Reply::Data(msg2),
    }
}

fn handle_request(ctx: &JobContext, t: &mut Tunnel, payload: &[u8]) -> Reply {
    let plain = match t.transport.open(payload, MAX_VAULT_FRAME) {
        Ok(p) => p,
        Err(ProtocolError::TooLarge { .. }) => return Reply::Close(TunnelCloseCode::FrameTooLarge),
        Err(_) => return Reply::Close(TunnelCloseCode::ProtocolError),
    };
    let request = match VaultRequest::decode(&plain) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "undecodable vault request");
            return Reply::Close(TunnelCloseCode::ProtocolError);
        }
    };
    let response = ctx.vault.handle(Now::system(), &mut t.session, request);
    match t.transport.seal(&response.encode()) {
        Ok(sealed) => Reply::Data(sealed),
        Err(_) => Reply::Close(TunnelCloseCode::InternalError),
    }
}
