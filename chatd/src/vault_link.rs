//! One Noise_KK link to a vault replica (SPEC.md section 5), and the
//! handles client connections hold for their tunnels on it.
//!
//! A link is a TCP connection with a reader task and a writer task around
//! a [`LinkTunnels`] table, which owns the tunnels' ids and routes and
//! decides what each vault frame means. Which links exist, and to which
//! replica, is [`crate::leader`]'s business.
//!
//! Direction vault → client never blocks the shared link: frames are handed
//! to a connection's bounded queue with `try_send`; a connection whose
//! queue is full loses that tunnel (and is closed by its own slow-consumer
//! deadline). Direction client → vault waits for room in the link's queue
//! before the connection reads more from its client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use protocol_spec::codes::TunnelCloseCode;
use protocol_spec::ids::{AccountId, LinkTunnelId, TunnelId};
use protocol_spec::keys::{PublicKey, StaticSecret};
use protocol_spec::limits::{MAX_FRAME, MAX_LINK_RECORD};
use protocol_spec::messages::link::{LinkFrame, LinkHello, LinkWelcome, VaultLinkFrame};
use protocol_spec::messages::WireMessage;
use protocol_spec::noise::{Initiator, Transport};
use service_kit::records::{gather_ready, read_record, write_record, RecordError, RecordReader};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::link_tunnels::{LinkTunnels, TunnelEvent, VaultFrameOutcome};

/// What a connection receives for its tunnels.
#[derive(Debug)]
pub enum ConnEvent {
    Data {
        tunnel: TunnelId,
        payload: Vec<u8>,
        received: Instant,
    },
    Close {
        tunnel: TunnelId,
        code: TunnelCloseCode,
    },
}

/// Why a link could not be made. Each is the vault's (or the network's)
/// side, or a key mismatch the operator must fix; all are retried with
/// backoff.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad record: {0}")]
    Record(#[from] RecordError),
    #[error(
        "closed during the handshake (is this chatd's link key in the vault's link.chatd_keys?)"
    )]
    ClosedInHandshake,
    #[error("handshake failed: check vault.link_key")]
    Handshake,
    #[error("noise: {0}")]
    Noise(#[from] protocol_spec::Error),
    #[error("connect timeout")]
    Timeout,
}

/// What links need to connect.
#[derive(Clone)]
pub struct LinkSettings {
    pub replicas: Vec<String>,
    pub vault_key: PublicKey,
    pub chatd_key: StaticSecret,
    pub instance: String,
    pub links: usize,
    pub connect_timeout: Duration,
    pub open_wait: Duration,
}

impl std::fmt::Debug for LinkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSettings")
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

/// Where a tunnel's vault frames go.
pub(crate) struct Route {
    conn: mpsc::Sender<ConnEvent>,
    tunnel: TunnelId,
}

/// Events that end a link's use, for the leader follower.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    Died,
    NotLeader { hint: Option<String> },
}

/// One Noise_KK link to a vault replica.
pub(crate) struct Link {
    out: mpsc::Sender<(LinkFrame, Instant)>,
    tunnels: Mutex<LinkTunnels<Route>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Link {
    fn is_retired(&self) -> bool {
        self.tunnels.lock().is_retired()
    }

    /// Closes every tunnel on the link with `code` and stops its tasks.
    pub(crate) fn retire(&self, code: TunnelCloseCode) {
        let routes = self.tunnels.lock().retire();
        for r in routes {
            let _ = r.conn.try_send(ConnEvent::Close {
                tunnel: r.tunnel,
                code,
            });
        }
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }

    /// Opens a tunnel for `account` carrying the client's handshake. Room in
    /// the queue is reserved first, then the id is drawn and the `Open`
    /// queued under the table's lock, so concurrent opens cannot overtake
    /// each other (SPEC 5.3).
    pub(crate) async fn open(
        self: &Arc<Self>,
        account: &AccountId,
        client_tunnel: TunnelId,
        handshake: Vec<u8>,
        conn: mpsc::Sender<ConnEvent>,
        received: Instant,
    ) -> Result<TunnelHandle, TunnelCloseCode> {
        let Ok(permit) = self.out.reserve().await else {
            return Err(TunnelCloseCode::VaultUnavailable);
        };
        let route = Route {
            conn,
            tunnel: client_tunnel,
        };
        let id = self
            .tunnels
            .lock()
            .open(route, account, handshake, |frame| {
                permit.send((frame, received))
            })
            .ok_or(TunnelCloseCode::VaultUnavailable)?;
        Ok(TunnelHandle {
            link: self.clone(),
            id,
            open: true,
        })
    }
}

/// A client tunnel as relayed on a link. Dropping it closes the tunnel.
pub struct TunnelHandle {
    link: Arc<Link>,
    id: LinkTunnelId,
    open: bool,
}

impl std::fmt::Debug for TunnelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TunnelHandle({})", self.id)
    }
}

/// The link under a tunnel is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the vault link is gone")]
pub struct LinkGone;

impl TunnelHandle {
    /// Relays client bytes, waiting for room on the link.
    pub async fn send(&self, payload: Vec<u8>, received: Instant) -> Result<(), LinkGone> {
        if self.link.is_retired() {
            return Err(LinkGone);
        }
        let frame = LinkFrame::Data {
            tunnel: self.id,
            payload,
        };
        self.link
            .out
            .send((frame, received))
            .await
            .map_err(|_| LinkGone)
    }

    /// Ends the tunnel on the vault side (which abandons a pending login).
    pub fn close(mut self, code: TunnelCloseCode) {
        self.close_inner(code);
    }

    fn close_inner(&mut self, code: TunnelCloseCode) {
        if !self.open {
            return;
        }
        self.open = false;
        let Some(frame) = self.link.tunnels.lock().close(self.id, code) else {
            return; // the vault already closed it, or the link is gone
        };
        let frame = (frame, Instant::now());
        if let Err(mpsc::error::TrySendError::Full(frame)) = self.link.out.try_send(frame) {
            // Must reach the vault: a pending login would otherwise wait
            // for its deadline.
            let out = self.link.out.clone();
            tokio::spawn(async move {
                let _ = out.send(frame).await;
            });
        }
    }
}

impl Drop for TunnelHandle {
    fn drop(&mut self) {
        self.close_inner(TunnelCloseCode::Normal);
    }
}

type SharedTransport = Arc<Mutex<Transport>>;

/// Connects and handshakes one link to `addr`; the welcome says whether
/// that replica is the leader.
pub(crate) async fn connect_link(
    s: &LinkSettings,
    addr: &str,
    events: mpsc::UnboundedSender<LinkEvent>,
) -> Result<(Arc<Link>, LinkWelcome), LinkError> {
    let connect = async {
        let mut stream = TcpStream::connect(addr).await.map_err(LinkError::Connect)?;
        stream.set_nodelay(true)?;
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(10))
            .with_interval(Duration::from_secs(5));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let hello = LinkHello {
            chatd_instance: s.instance.clone(),
        };
        let (m1, waiting) =
            Initiator::link(&s.chatd_key, &s.vault_key)?.write_first(&hello.encode())?;
        write_record(&mut stream, &m1).await?;
        stream.flush().await?;
        let m2 = read_record(&mut stream, MAX_LINK_RECORD, s.connect_timeout)
            .await?
            .ok_or(LinkError::ClosedInHandshake)?;
        let (payload, transport) = waiting
            .read_response(&m2)
            .map_err(|_| LinkError::Handshake)?;
        let welcome = LinkWelcome::decode(&payload)?;
        Ok::<_, LinkError>((stream, transport, welcome))
    };
    let (stream, transport, welcome) = tokio::time::timeout(s.connect_timeout, connect)
        .await
        .map_err(|_| LinkError::Timeout)??;
    let transport: SharedTransport = Arc::new(Mutex::new(transport));
    let (read_half, write_half) = stream.into_split();
    let (out_tx, out_rx) = mpsc::channel(1024);
    let link = Arc::new(Link {
        out: out_tx,
        tunnels: Mutex::new(LinkTunnels::new()),
        tasks: Mutex::new(Vec::new()),
    });
    let writer = tokio::spawn(write_frames(write_half, transport.clone(), out_rx));
    let reader = tokio::spawn(read_frames(read_half, transport, link.clone(), events));
    link.tasks
        .lock()
        .extend([writer.abort_handle(), reader.abort_handle()]);
    Ok((link, welcome))
}

/// Most bytes one batch gathers before it is written: frames queued
/// together leave in one write, without letting one write grow unbounded.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Writes frames to the vault: everything queued when the writer wakes is
/// sealed into one buffer, under one lock of the transport, and leaves in
/// one write.
async fn write_frames<W: AsyncWrite + Unpin>(
    mut w: W,
    transport: SharedTransport,
    mut rx: mpsc::Receiver<(LinkFrame, Instant)>,
) {
    let m = crate::metrics::relay();
    let mut batch = Vec::with_capacity(16 * 1024);
    let mut received_at = Vec::new();
    while let Some(first) = rx.recv().await {
        let gathered = {
            let mut transport = transport.lock();
            gather_ready(
                first,
                &mut rx,
                &mut batch,
                WRITE_BATCH_BYTES,
                |(frame, received), out| {
                    transport
                        .seal_into(&frame.encode(), out)
                        .map_err(std::io::Error::other)?;
                    let (bytes, kind) = match &frame {
                        LinkFrame::Data { payload, .. } => (payload.len(), &m.to_vault_data),
                        LinkFrame::Open { handshake, .. } => (handshake.len(), &m.to_vault_opens),
                        LinkFrame::Close { .. } => (0, &m.to_vault_closes),
                    };
                    kind.increment(1);
                    m.to_vault_bytes.increment(bytes as u64);
                    received_at.push(received);
                    Ok::<_, std::io::Error>(())
                },
            )
        };
        if gathered.is_err() || w.write_all(&batch).await.is_err() {
            return;
        }
        batch.clear();
        for received in received_at.drain(..) {
            m.to_vault_seconds.record(received.elapsed().as_secs_f64());
        }
    }
}

async fn read_frames(
    r: tokio::net::tcp::OwnedReadHalf,
    transport: SharedTransport,
    link: Arc<Link>,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    let m = crate::metrics::relay();
    let mut records = RecordReader::new(r, MAX_LINK_RECORD, Duration::from_secs(10));
    loop {
        let record = match records.next().await {
            Ok(Some(rec)) => rec,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "vault link record refused");
                break;
            }
        };
        let received = Instant::now();
        let frame = match transport.lock().open(record, MAX_FRAME) {
            Ok(plain) => VaultLinkFrame::decode(&plain),
            Err(e) => Err(e),
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "vault link frame refused");
                break;
            }
        };
        if let VaultLinkFrame::Data { payload, .. } = &frame {
            m.to_client_bytes.increment(payload.len() as u64);
        }
        let outcome = link.tunnels.lock().on_vault_frame(frame, |route, event| {
            let ev = match event {
                TunnelEvent::Data(payload) => ConnEvent::Data {
                    tunnel: route.tunnel,
                    payload,
                    received,
                },
                TunnelEvent::Closed(code) => ConnEvent::Close {
                    tunnel: route.tunnel,
                    code,
                },
            };
            route.conn.try_send(ev).is_ok()
        });
        match outcome {
            VaultFrameOutcome::Done => {}
            VaultFrameOutcome::Send(frame) => {
                let _ = link.out.try_send((frame, received));
            }
            VaultFrameOutcome::NotLeader { hint } => {
                let _ = events.send(LinkEvent::NotLeader { hint });
            }
        }
    }
    link.retire(TunnelCloseCode::VaultUnavailable);
    let _ = events.send(LinkEvent::Died);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The race loadgen found, without sockets: many connections open
    /// tunnels on one link at once, from several threads. The `Open` frames
    /// must leave in increasing id order (the vault drops a link that
    /// breaks it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_opens_leave_the_link_in_id_order() {
        let (out_tx, mut out_rx) = mpsc::channel(16);
        let link = Arc::new(Link {
            out: out_tx,
            tunnels: Mutex::new(LinkTunnels::new()),
            tasks: Mutex::new(Vec::new()),
        });
        let account = AccountId::new("alice").unwrap();
        let mut opens = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            let (link, account) = (link.clone(), account.clone());
            opens.spawn(async move {
                let (conn, _events) = mpsc::channel(4);
                let h = link
                    .open(&account, TunnelId(i + 1), vec![1], conn, Instant::now())
                    .await
                    .unwrap();
                std::mem::forget(h); // keep the tunnel open
            });
        }
        let reader = tokio::spawn(async move {
            let mut ids = Vec::new();
            while ids.len() < 200 {
                match out_rx.recv().await {
                    Some((LinkFrame::Open { tunnel, .. }, _)) => ids.push(tunnel.0),
                    Some(_) => {}
                    None => break,
                }
            }
            ids
        });
        while opens.join_next().await.is_some() {}
        let ids = reader.await.unwrap();
        assert_eq!(ids, (1..=200).collect::<Vec<u64>>());
    }
    /// Counts the writes that reach the "socket".
    #[derive(Default)]
    struct CountingWriter {
        bytes: Vec<u8>,
        writes: usize,
    }

    impl AsyncWrite for CountingWriter {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.writes += 1;
            self.bytes.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Both ends of a link's Noise_KK transport.
    fn link_pair() -> (Transport, Transport) {
        let chatd = StaticSecret::from_bytes([1; 32]);
        let vault = StaticSecret::from_bytes([2; 32]);
        let (m1, awaiting) = Initiator::link(&chatd, &vault.public_key())
            .unwrap()
            .write_first(b"")
            .unwrap();
        let first = protocol_spec::noise::Responder::link(&vault, &chatd.public_key())
            .unwrap()
            .read_first(&m1)
            .unwrap();
        let (m2, vault_side) = first.state.write_response(b"").unwrap();
        let (_, chatd_side) = awaiting.read_response(&m2).unwrap();
        (chatd_side, vault_side)
    }

    /// Frames queued while the writer was busy leave in one write (each
    /// record used to take two writes of its own), and the vault opens
    /// them in order from the one buffer.
    #[tokio::test]
    async fn frames_queued_together_leave_in_one_write() {
        let (chatd_side, mut vault_side) = link_pair();
        let frames: Vec<LinkFrame> = (0..20u64)
            .map(|i| LinkFrame::Data {
                tunnel: LinkTunnelId(i + 1),
                payload: vec![i as u8; 100 + i as usize],
            })
            .collect();
        let (tx, rx) = mpsc::channel(64);
        for f in &frames {
            tx.try_send((f.clone(), Instant::now())).unwrap();
        }
        drop(tx);
        let mut w = CountingWriter::default();
        write_frames(&mut w, Arc::new(Mutex::new(chatd_side)), rx).await;
        assert_eq!(w.writes, 1, "20 queued frames took {} writes", w.writes);
        let mut records = RecordReader::new(&w.bytes[..], MAX_LINK_RECORD, Duration::from_secs(1));
        for f in &frames {
            let record = records.next().await.unwrap().unwrap();
            let plain = vault_side.open(record, MAX_FRAME).unwrap();
            assert!(LinkFrame::decode(&plain).unwrap() == *f);
        }
        assert!(records.next().await.unwrap().is_none());
    }
}
