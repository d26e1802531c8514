//! Links to the vault (SPEC.md section 5): a small pool of Noise_KK links
//! to the current leader, multiplexing every client tunnel.
//!
//! A manager task finds the leader among the configured replicas (a
//! follower's `LinkWelcome` says so and names the leader), opens the pool,
//! and watches it: when a link drops or the vault reports a leader change,
//! it retires the pool, closes the affected tunnels with a retryable code,
//! and finds the leader again with jittered backoff.
//!
//! Direction vault → client never blocks the shared link: frames are handed
//! to a connection's bounded queue with `try_send`; a connection whose
//! queue is full loses that tunnel (and is closed by its own slow-consumer
//! deadline). Direction client → vault waits for room in the link's queue
//! before the connection reads more from its client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
use service_kit::backoff::Backoff;
use service_kit::records::{read_record, write_record};
use service_kit::shutdown::Shutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

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

/// Settings for the links.
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

struct Route {
    conn: mpsc::Sender<ConnEvent>,
    tunnel: TunnelId,
}

/// One Noise_KK link to a vault replica.
pub(crate) struct Link {
    out: mpsc::Sender<(LinkFrame, Instant)>,
    routes: Mutex<HashMap<LinkTunnelId, Route>>,
    next_id: AtomicU64,
    dead: AtomicBool,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Link {
    /// Closes every tunnel on the link with `code` and stops its tasks.
    fn retire(&self, code: TunnelCloseCode) {
        self.dead.store(true, Ordering::SeqCst);
        let routes: Vec<Route> = self.routes.lock().drain().map(|(_, r)| r).collect();
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
}

/// The links to the current leader.
pub(crate) struct LinkPool {
    links: Vec<Arc<Link>>,
    next: AtomicUsize,
    pub replica: String,
}

/// A client tunnel as relayed on a link.
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

impl TunnelHandle {
    /// Relays client bytes, waiting for room on the link. `Err` if the link
    /// is gone (the connection answers `vault_unavailable`).
    pub async fn send(&self, payload: Vec<u8>, received: Instant) -> Result<(), ()> {
        if self.link.dead.load(Ordering::SeqCst) {
            return Err(());
        }
        self.link
            .out
            .send((
                LinkFrame::Data {
                    tunnel: self.id,
                    payload,
                },
                received,
            ))
            .await
            .map_err(|_| ())
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
        let had_route = self.link.routes.lock().remove(&self.id).is_some();
        if !had_route || self.link.dead.load(Ordering::SeqCst) {
            return; // the vault already closed it, or the link is gone
        }
        let frame = (
            LinkFrame::Close {
                tunnel: self.id,
                code,
            },
            Instant::now(),
        );
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

/// Handle for opening tunnels; cheap to clone.
#[derive(Clone)]
pub struct VaultLinks {
    active: watch::Receiver<Option<Arc<LinkPool>>>,
    open_wait: Duration,
}

impl std::fmt::Debug for VaultLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultLinks")
    }
}

impl VaultLinks {
    /// Starts the manager task.
    pub fn start(settings: LinkSettings, shutdown: watch::Receiver<Shutdown>) -> Self {
        let (tx, rx) = watch::channel(None);
        let open_wait = settings.open_wait;
        tokio::spawn(manage(settings, tx, shutdown));
        VaultLinks {
            active: rx,
            open_wait,
        }
    }

    /// Whether a leader link is up now.
    pub fn is_up(&self) -> bool {
        self.active.borrow().is_some()
    }

    /// Opens a tunnel for `account` carrying the client's handshake. Waits
    /// up to `open_wait` for a leader link.
    pub async fn open(
        &self,
        account: &AccountId,
        client_tunnel: TunnelId,
        handshake: Vec<u8>,
        conn: mpsc::Sender<ConnEvent>,
        received: Instant,
    ) -> Result<TunnelHandle, TunnelCloseCode> {
        let mut active = self.active.clone();
        let pool =
            match tokio::time::timeout(self.open_wait, active.wait_for(Option::is_some)).await {
                Ok(Ok(p)) => p.clone(),
                _ => None,
            };
        let Some(pool) = pool else {
            metrics::counter!("chatd_tunnel_opens_total", "result" => "vault_unavailable")
                .increment(1);
            return Err(TunnelCloseCode::VaultUnavailable);
        };
        let link = pool.links[pool.next.fetch_add(1, Ordering::Relaxed) % pool.links.len()].clone();
        // The vault requires ids to increase along the link (SPEC 5.3), so
        // the id is drawn and the frame queued under one lock, after room in
        // the queue is reserved: concurrent opens can never overtake each
        // other between the two.
        let permit = match link.out.reserve().await {
            Ok(p) if !link.dead.load(Ordering::SeqCst) => p,
            _ => return Err(TunnelCloseCode::VaultUnavailable),
        };
        let id = {
            let mut routes = link.routes.lock();
            let id = LinkTunnelId(link.next_id.fetch_add(1, Ordering::Relaxed));
            routes.insert(
                id,
                Route {
                    conn,
                    tunnel: client_tunnel,
                },
            );
            permit.send((
                LinkFrame::Open {
                    tunnel: id,
                    account: account.clone(),
                    handshake,
                },
                received,
            ));
            id
        };
        metrics::counter!("chatd_tunnel_opens_total", "result" => "relayed").increment(1);
        Ok(TunnelHandle {
            link,
            id,
            open: true,
        })
    }
}

enum LinkEvent {
    Died,
    NotLeader { hint: Option<String> },
}

async fn manage(
    s: LinkSettings,
    active: watch::Sender<Option<Arc<LinkPool>>>,
    mut shutdown: watch::Receiver<Shutdown>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut hint: Option<String> = None;
    metrics::gauge!("chatd_vault_link_up").set(0.0);
    loop {
        if *shutdown.borrow() == Shutdown::Fast {
            return;
        }
        let (events_tx, mut events_rx) = mpsc::unbounded_channel::<LinkEvent>();
        let pool = tokio::select! {
            p = find_leader(&s, hint.take(), &events_tx) => p,
            _ = shutdown.wait_for(|l| *l == Shutdown::Fast) => return,
        };
        let Some(pool) = pool else {
            metrics::counter!("chatd_vault_link_failures_total").increment(1);
            let delay = service_kit::backoff::next_delay(&mut backoff);
            tokio::select! {
                _ = tokio::time::sleep(delay) => continue,
                _ = shutdown.wait_for(|l| *l == Shutdown::Fast) => return,
            }
        };
        backoff.reset();
        let pool = Arc::new(pool);
        tracing::info!(replica = %pool.replica, links = pool.links.len(), "vault leader links up");
        metrics::gauge!("chatd_vault_link_up").set(1.0);
        let _ = active.send(Some(pool.clone()));
        let (code, next_hint) = tokio::select! {
            ev = events_rx.recv() => match ev {
                Some(LinkEvent::NotLeader { hint }) => (TunnelCloseCode::LeaderChanged, hint),
                _ => (TunnelCloseCode::VaultUnavailable, None),
            },
            _ = shutdown.wait_for(|l| *l == Shutdown::Fast) => (TunnelCloseCode::Draining, None),
        };
        let _ = active.send(None);
        metrics::gauge!("chatd_vault_link_up").set(0.0);
        tracing::warn!(replica = %pool.replica, reason = code.label(), "vault links retired");
        for l in &pool.links {
            l.retire(code);
        }
        hint = next_hint;
        if code == TunnelCloseCode::Draining {
            return;
        }
    }
}

/// Tries the hinted replica, then every configured one; returns a pool to
/// the first that says it is the leader.
async fn find_leader(
    s: &LinkSettings,
    hint: Option<String>,
    events: &mpsc::UnboundedSender<LinkEvent>,
) -> Option<LinkPool> {
    let mut candidates: Vec<String> = hint.into_iter().collect();
    for r in &s.replicas {
        if !candidates.contains(r) {
            candidates.push(r.clone());
        }
    }
    let mut i = 0;
    while i < candidates.len() {
        let addr = candidates[i].clone();
        i += 1;
        match connect_link(s, &addr, events.clone()).await {
            Ok((link, welcome)) if welcome.leader => {
                let mut links = vec![link];
                while links.len() < s.links {
                    match connect_link(s, &addr, events.clone()).await {
                        Ok((l, w)) if w.leader => links.push(l),
                        Ok((l, _)) => {
                            l.retire(TunnelCloseCode::LeaderChanged);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                return Some(LinkPool {
                    links,
                    next: AtomicUsize::new(0),
                    replica: addr,
                });
            }
            Ok((link, welcome)) => {
                link.retire(TunnelCloseCode::NotLeader);
                tracing::info!(replica = %addr, hint = ?welcome.leader_hint, "replica is not the leader");
                if let Some(h) = welcome.leader_hint {
                    if !candidates[i..].contains(&h) {
                        candidates.insert(i, h);
                    }
                }
            }
            Err(e) => tracing::warn!(replica = %addr, error = %e, "vault link failed"),
        }
    }
    None
}

type SharedTransport = Arc<Mutex<Transport>>;

async fn connect_link(
    s: &LinkSettings,
    addr: &str,
    events: mpsc::UnboundedSender<LinkEvent>,
) -> Result<(Arc<Link>, LinkWelcome), String> {
    let connect = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(10))
            .with_interval(Duration::from_secs(5));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let hello = LinkHello {
            chatd_instance: s.instance.clone(),
        };
        let (m1, waiting) = Initiator::link(&s.chatd_key, &s.vault_key)
            .and_then(|i| i.write_first(&hello.encode()))
            .map_err(|e| e.to_string())?;
        write_record(&mut stream, &m1)
            .await
            .map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let m2 = read_record(&mut stream, MAX_LINK_RECORD, s.connect_timeout)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("closed during the handshake (is this chatd's link key in the vault's link.chatd_keys?)")?;
        let (payload, transport) = waiting
            .read_response(&m2)
            .map_err(|_| "handshake failed: check vault.link_key".to_string())?;
        let welcome = LinkWelcome::decode(&payload).map_err(|e| e.to_string())?;
        Ok::<_, String>((stream, transport, welcome))
    };
    let (stream, transport, welcome) = tokio::time::timeout(s.connect_timeout, connect)
        .await
        .map_err(|_| "connect timeout".to_string())??;
    let transport: SharedTransport = Arc::new(Mutex::new(transport));
    let (read_half, write_half) = stream.into_split();
    let (out_tx, out_rx) = mpsc::channel(1024);
    let link = Arc::new(Link {
        out: out_tx,
        routes: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        dead: AtomicBool::new(false),
        tasks: Mutex::new(Vec::new()),
    });
    let writer = tokio::spawn(write_frames(write_half, transport.clone(), out_rx));
    let reader = tokio::spawn(read_frames(read_half, transport, link.clone(), events));
    link.tasks
        .lock()
        .extend([writer.abort_handle(), reader.abort_handle()]);
    Ok((link, welcome))
}

async fn write_frames(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    transport: SharedTransport,
    mut rx: mpsc::Receiver<(LinkFrame, Instant)>,
) {
    while let Some((frame, received)) = rx.recv().await {
        let (bytes, direction_label) = match &frame {
            LinkFrame::Data { payload, .. } => (payload.len(), "data"),
            LinkFrame::Open { handshake, .. } => (handshake.len(), "open"),
            LinkFrame::Close { .. } => (0, "close"),
        };
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
        metrics::counter!("chatd_relay_frames_total", "direction" => "to_vault", "kind" => direction_label).increment(1);
        metrics::counter!("chatd_relay_bytes_total", "direction" => "to_vault")
            .increment(bytes as u64);
        metrics::histogram!("chatd_relay_seconds", "direction" => "to_vault")
            .record(received.elapsed().as_secs_f64());
    }
}

async fn read_frames(
    mut r: tokio::net::tcp::OwnedReadHalf,
    transport: SharedTransport,
    link: Arc<Link>,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    loop {
        let record = match read_record(&mut r, MAX_LINK_RECORD, Duration::from_secs(10)).await {
            Ok(Some(rec)) => rec,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "vault link record refused");
                break;
            }
        };
        let received = Instant::now();
        let frame = match transport.lock().open(&record, MAX_FRAME) {
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
        match frame {
            VaultLinkFrame::Data { tunnel, payload } => {
                metrics::counter!("chatd_relay_bytes_total", "direction" => "to_client")
                    .increment(payload.len() as u64);
                let routes = link.routes.lock();
                let Some(route) = routes.get(&tunnel) else {
                    continue; // the tunnel closed meanwhile
                };
                let ev = ConnEvent::Data {
                    tunnel: route.tunnel,
                    payload,
                    received,
                };
                if route.conn.try_send(ev).is_err() {
                    // The connection is not reading: drop this tunnel rather
                    // than stall the link for everyone.
                    metrics::counter!("chatd_queue_drops_total").increment(1);
                    drop(routes);
                    link.routes.lock().remove(&tunnel);
                    let _ = link.out.try_send((
                        LinkFrame::Close {
                            tunnel,
                            code: TunnelCloseCode::InternalError,
                        },
                        received,
                    ));
                }
            }
            VaultLinkFrame::Close { tunnel, code } => {
                if let Some(route) = link.routes.lock().remove(&tunnel) {
                    let _ = route.conn.try_send(ConnEvent::Close {
                        tunnel: route.tunnel,
                        code,
                    });
                }
            }
            VaultLinkFrame::Status {
                leader,
                leader_hint,
            } => {
                if !leader {
                    let _ = events.send(LinkEvent::NotLeader { hint: leader_hint });
                }
            }
        }
    }
    link.retire(TunnelCloseCode::VaultUnavailable);
    let _ = events.send(LinkEvent::Died);
}
