//! The chatd link listener (SPEC.md section 5): accepting links, the
//! Noise_KK handshake, and the driver of each link's
//! [`TunnelTable`](super::tunnels::TunnelTable).
//!
//! Per link: a reader task (records in, Noise open, decode), a writer task
//! (encode, Noise seal, records out, bounded queue) and the driver loop,
//! which feeds the table frames, job results, role changes, the shutdown
//! signal and its timer, and carries out the actions it queues. Every
//! decision about tunnels is the table's; this file only moves bytes and
//! jobs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use protocol_spec::keys::{PublicKey, StaticSecret};
use protocol_spec::limits::{MAX_FRAME, MAX_LINK_RECORD};
use protocol_spec::messages::link::{LinkFrame, LinkHello, LinkWelcome, VaultLinkFrame};
use protocol_spec::messages::WireMessage;
use protocol_spec::noise::{Responder, Transport};
use service_kit::records::{gather_ready, read_record, write_record, RecordReader};
use service_kit::shutdown::Shutdown;
use service_kit::slots::{AddressSlots, SlotGuard};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use super::jobs::{end_session, JobContext, LinkJob, Tunnel};
use super::tunnels::{Action, TableSettings, TunnelTable};
use super::workers::WorkerPool;
use crate::raft::role::Role;

/// Everything a link needs, shared by all links.
pub struct LinkContext {
    pub jobs: Arc<JobContext>,
    pub workers: Arc<WorkerPool<LinkJob>>,
    pub link_key: StaticSecret,
    pub chatd_keys: Vec<PublicKey>,
    pub replica_id: String,
    pub table: TableSettings,
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

/// Connections waiting for their handshake, in all and from one address.
/// Nothing before the handshake may hold a link slot: connections that
/// never authenticate would lock chatd out (it shares no address with them
/// in production, so the per-address bound keeps one source from taking
/// every pre-authentication slot).
pub const MAX_PRE_AUTH: usize = 128;
pub const MAX_PRE_AUTH_PER_ADDRESS: usize = 8;
/// The longest a connection may take to complete its handshake, whatever
/// `link.handshake_timeout_secs` says.
pub const MAX_PRE_AUTH_TIME: Duration = Duration::from_secs(5);

/// Accepts links until shutdown. At most `max_links` authenticated links
/// run at once; a link slot is taken only after the handshake.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<LinkContext>,
    max_links: usize,
    mut shutdown: watch::Receiver<Shutdown>,
) {
    let slots = Arc::new(Semaphore::new(max_links));
    let pre_auth = AddressSlots::new(MAX_PRE_AUTH, MAX_PRE_AUTH_PER_ADDRESS);
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
                let Some(waiting) = pre_auth.try_claim(peer.ip()) else {
                    metrics::counter!("vault_link_handshakes_total", "result" => "refused_pre_auth").increment(1);
                    drop(stream);
                    continue;
                };
                let (ctx, slots) = (ctx.clone(), slots.clone());
                let shutdown = for_links.clone();
                links.spawn(async move {
                    run_link(stream, peer, ctx, slots, waiting, shutdown).await;
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
        max_tunnels: ctx.table.max_tunnels,
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
    slots: Arc<Semaphore>,
    waiting: SlotGuard,
    shutdown: watch::Receiver<Shutdown>,
) {
    let _ = stream.set_nodelay(true);
    let deadline = ctx.handshake_timeout.min(MAX_PRE_AUTH_TIME);
    let shaken = tokio::time::timeout(deadline, handshake(&mut stream, &ctx)).await;
    drop(waiting);
    let (transport, hello) = match shaken {
        Ok(Ok(x)) => x,
        Ok(Err(reason)) => {
            metrics::counter!("vault_link_handshakes_total", "result" => "failed").increment(1);
            tracing::warn!(%peer, reason, "link handshake failed");
            return;
        }
        Err(_) => {
            metrics::counter!("vault_link_handshakes_total", "result" => "timeout").increment(1);
            tracing::debug!(%peer, "link handshake not completed in time");
            return;
        }
    };
    let Ok(_permit) = slots.try_acquire_owned() else {
        metrics::counter!("vault_link_handshakes_total", "result" => "max_links").increment(1);
        tracing::warn!(%peer, chatd = %hello.chatd_instance, "refusing link: max_links reached");
        return;
    };
    metrics::counter!("vault_link_handshakes_total", "result" => "ok").increment(1);
    metrics::gauge!("vault_links").increment(1.0);
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

    drive(&ctx, in_rx, out_tx, shutdown).await;
    reader.abort();
    let _ = writer.await;
    metrics::gauge!("vault_links").decrement(1.0);
    tracing::info!(%peer, "chatd link closed");
}

/// The link's loop: inputs into the table, the table's actions out.
async fn drive(
    ctx: &Arc<LinkContext>,
    mut inbound: mpsc::Receiver<Result<LinkFrame, &'static str>>,
    out: mpsc::Sender<VaultLinkFrame>,
    mut shutdown: watch::Receiver<Shutdown>,
) {
    let mut role = ctx.role.clone();
    let leader = role.borrow_and_update().leader;
    let mut table = TunnelTable::<Tunnel>::new(ctx.table.clone(), leader);
    // Unbounded is bounded in practice: one job per tunnel at most.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    match *shutdown.borrow_and_update() {
        Shutdown::Running => {}
        Shutdown::Drain => table.start_drain(Instant::now()),
        Shutdown::Fast => return,
    }
    loop {
        while let Some(action) = table.poll_action() {
            match action {
                // Waits for room: a chatd that stops reading stops us
                // reading it.
                Action::Send(frame) => {
                    let _ = out.send(frame).await;
                }
                Action::Submit(job) => {
                    let submitted = ctx.workers.submit(LinkJob::Tunnel {
                        done: done_tx.clone(),
                        job,
                    });
                    if let Err(LinkJob::Tunnel { job, .. }) = submitted {
                        table.on_job_refused(job);
                    }
                }
                Action::EndSession(t) => end_session_off_runtime(ctx, t),
            }
        }
        if table.is_finished() {
            break;
        }
        let wake = table.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            frame = inbound.recv(), if table.accepts_frames() => match frame {
                Some(Ok(f)) => {
                    // A role change that raced this frame applies first, so
                    // an open is judged by the current role.
                    if role.has_changed().unwrap_or(false) {
                        let r = role.borrow_and_update().clone();
                        table.on_role(r.leader, r.leader_hint);
                    }
                    if let Err(e) = table.on_frame(Instant::now(), f) {
                        tracing::warn!(error = %e, "closing link after a protocol error");
                        break;
                    }
                }
                Some(Err(reason)) => {
                    tracing::warn!(reason, "closing link after a protocol error");
                    break;
                }
                None => break,
            },
            Some(done) = done_rx.recv() => table.on_job_done(Instant::now(), done),
            _ = sleep_until(wake) => {
                if table.handle_timeout(Instant::now()).is_err() {
                    break;
                }
            }
            changed = role.changed() => {
                if changed.is_err() {
                    break;
                }
                let r = role.borrow_and_update().clone();
                table.on_role(r.leader, r.leader_hint);
            }
            changed = shutdown.changed() => {
                let level = if changed.is_err() { Shutdown::Fast } else { *shutdown.borrow_and_update() };
                match level {
                    Shutdown::Running => {}
                    Shutdown::Drain => table.start_drain(Instant::now()),
                    Shutdown::Fast => break,
                }
            }
        }
    }
    // Every remaining session ends: pending logins are abandoned (and
    // exhausted records erased). Jobs still running find the link gone and
    // end theirs; results that arrived before it closed are ended here.
    done_rx.close();
    while let Ok(done) = done_rx.try_recv() {
        if let Some(t) = done.tunnel {
            end_session_off_runtime(ctx, t);
        }
    }
    table.close_link();
    while let Some(action) = table.poll_action() {
        if let Action::EndSession(t) = action {
            end_session_off_runtime(ctx, t);
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Ends a session on a worker, or, when the pool is full, on tokio's
/// blocking pool: it must not be skipped, and it must not block the link.
fn end_session_off_runtime(ctx: &Arc<LinkContext>, tunnel: Box<Tunnel>) {
    if let Err(LinkJob::EndSession(mut tunnel)) = ctx.workers.submit(LinkJob::EndSession(tunnel)) {
        let vault = ctx.jobs.vault.clone();
        tokio::task::spawn_blocking(move || end_session(&vault, &mut tunnel));
    }
}

async fn read_frames(
    r: tokio::net::tcp::OwnedReadHalf,
    transport: SharedTransport,
    tx: mpsc::Sender<Result<LinkFrame, &'static str>>,
    body_timeout: Duration,
) {
    let mut records = RecordReader::new(r, MAX_LINK_RECORD, body_timeout);
    loop {
        let record = match records.next().await {
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
            .open(record, MAX_FRAME)
            .map_err(|_| "frame failed to decrypt")
            .and_then(|plain| LinkFrame::decode(&plain).map_err(|_| "malformed frame"));
        let failed = frame.is_err();
        if tx.send(frame).await.is_err() || failed {
            return;
        }
    }
}

/// Most bytes one batch of frames to chatd gathers before it is written.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Writes frames to chatd: everything queued when the writer wakes is
/// sealed into one buffer and leaves in one write.
async fn write_frames<W: AsyncWrite + Unpin>(
    mut w: W,
    transport: SharedTransport,
    mut rx: mpsc::Receiver<VaultLinkFrame>,
) {
    let mut batch = Vec::with_capacity(16 * 1024);
    while let Some(first) = rx.recv().await {
        let gathered = {
            let mut transport = transport.lock();
            gather_ready(
                first,
                &mut rx,
                &mut batch,
                WRITE_BATCH_BYTES,
                |frame, out| {
                    transport
                        .seal_into(&frame.encode(), out)
                        .map_err(std::io::Error::other)
                },
            )
        };
        if gathered.is_err() || w.write_all(&batch).await.is_err() {
            return;
        }
        batch.clear();
    }
    let _ = w.shutdown().await;
}
