//! Replica-to-replica transport (SPEC.md section 5.5): TCP, Noise_KK with
//! the fleet peer key on both ends, records of sealed frames carrying
//! Raft RPCs. The handshake payloads carry both ends' node and group ids
//! ([`super::identity`]); a connection between the wrong replicas ends
//! there. Each end then proves its own node key ([`super::peer_keys`]):
//! the responder in its welcome, over the handshake hash after message 1;
//! the initiator in the first record after the handshake, over the final
//! handshake hash. Both check the other's key against the group's table.
//!
//! Frame plaintext: the protocol version byte, then the postcard encoding
//! of a [`PeerRequest`] or [`PeerResponse`]. One request at a time per
//! connection. Healthy connections are pooled per peer and reused by the
//! next client (openraft makes a client per read-index round and per
//! election); a connection that fails is dropped, and a reused one that
//! fails is replaced by a fresh one once.
//!
//! This file is the calling side and what both sides share (the wire
//! types, framing, limits); the listener is [`super::peer_service`].

// openraft's error types are large and fixed by its trait signatures.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::AnyError;
use parking_lot::Mutex;
use protocol_spec::keys::StaticSecret;
use protocol_spec::noise::{Initiator, Transport};
use protocol_spec::PROTOCOL_VERSION;
use serde::{Deserialize, Serialize};
use service_kit::records::{read_record, write_record, RecordError};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::agreement::{ConfirmAnswer, ConfirmRequest};
use super::codec::{self, CodecError};
use super::identity::{check_welcome, IdentityError, PeerIdentity, PeerWelcome, WarnOnce};
use super::peer_keys::{NodeKey, NodeSigner, PeerKeyError, PeerKeys, ProofRole};
use super::{VaultNode, VaultRaft};

type NodeId = u64;

/// Largest peer record (snapshot chunks and append batches fit well under).
pub const MAX_PEER_RECORD: usize = 16 << 20;
/// Largest snapshot a replica accepts. A snapshot is assembled in memory,
/// so a chunk's offset must not be allowed to grow it without bound.
pub const MAX_SNAPSHOT_BYTES: u64 = 4 << 30;

#[derive(Serialize, Deserialize)]
pub(super) enum PeerRequest {
    Append(AppendEntriesRequest<VaultRaft>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<VaultRaft>),
    /// Do you hold this record after this entry? ([`super::agreement`])
    Confirm(ConfirmRequest),
    /// The majority holds another record than you after this entry.
    Diverged(ConfirmRequest),
    /// [`PeerRequest::Confirm`] for several entries at once (at most
    /// [`MAX_CONFIRM_BATCH`]), answered in the same order.
    ConfirmBatch(Vec<ConfirmRequest>),
}

#[derive(Serialize, Deserialize)]
pub(super) enum PeerResponse {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Confirm(ConfirmAnswer),
    Noted,
    ConfirmBatch(Vec<ConfirmAnswer>),
}

/// Why a call to another replica, or a connection from one, failed. The
/// other replica (or the network to it) is at fault in every case; to
/// Raft each is an unreachable peer, retried at the next heartbeat.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot resolve the address: {0}")]
    Resolve(#[source] std::io::Error),
    #[error("the address resolves to nothing")]
    NoAddress,
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad record: {0}")]
    Record(#[from] RecordError),
    #[error("the peer closed the connection")]
    Closed,
    #[error("peer handshake failed (not our fleet?)")]
    Handshake,
    #[error("noise: {0}")]
    Noise(#[from] protocol_spec::Error),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    NodeKey(#[from] PeerKeyError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("unsupported peer protocol version {0}")]
    Version(u8),
    #[error("empty peer frame")]
    Empty,
    #[error("no answer in time")]
    Timeout,
    #[error("no request for {} s", PEER_IDLE_TIMEOUT.as_secs())]
    Idle,
    #[error("snapshot chunk at offset {offset} would pass the {MAX_SNAPSHOT_BYTES}-byte limit")]
    SnapshotTooLarge { offset: u64 },
    #[error("a blocking task failed: {0}")]
    Task(String),
    #[error("the peer answered a different request")]
    Mismatch,
    #[error("{0} confirmations in one batch; at most {MAX_CONFIRM_BATCH}")]
    TooManyConfirms(usize),
}

/// A frame's plaintext: the version byte, then one postcard value.
pub(super) fn frame<T: Serialize>(v: &T) -> Result<Vec<u8>, PeerError> {
    let mut out = vec![PROTOCOL_VERSION];
    out.extend(codec::encode("peer frame", v)?);
    Ok(out)
}

/// Strictly: a frame with bytes after its value is refused, as on disk.
pub(super) fn unframe<T: for<'a> Deserialize<'a>>(b: &[u8]) -> Result<T, PeerError> {
    match b.split_first() {
        Some((&PROTOCOL_VERSION, rest)) => Ok(codec::decode("peer frame", rest)?),
        Some((v, _)) => Err(PeerError::Version(*v)),
        None => Err(PeerError::Empty),
    }
}

/// Established connections kept for reuse, per peer address.
type Pool = Arc<Mutex<HashMap<String, Vec<PeerConn>>>>;

/// Connections kept idle per peer. openraft asks for a new client for every
/// read-index round and every election; without reuse each would cost a
/// TCP connect and a Noise_KK handshake inside the heartbeat interval.
const POOL_PER_PEER: usize = 4;
/// A pooled connection idle longer than this is dropped rather than reused
/// (the serving side closes connections idle for [`PEER_IDLE_TIMEOUT`]).
const POOL_MAX_IDLE: Duration = Duration::from_secs(20);
/// The serving side closes a connection with no request for this long.
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time an incoming connection has to complete its handshake.
pub(super) const PEER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once, in all and from one address.
pub(super) const MAX_PEER_CONNS: usize = 256;
pub(super) const MAX_PEER_CONNS_PER_IP: usize = 16;

/// Makes clients for Raft to reach other replicas.
#[derive(Clone)]
pub struct PeerNetwork {
    key: Arc<StaticSecret>,
    identity: Arc<PeerIdentity>,
    node: Arc<NodeSigner>,
    keys: Arc<PeerKeys>,
    warn: Arc<WarnOnce>,
    /// Optional source address for outgoing connections (lets tests and
    /// operators filter replica traffic by address).
    bind_source: Option<std::net::IpAddr>,
    pool: Pool,
    /// Confirmations waiting for a batch, per peer address.
    confirm_queues: Arc<Mutex<HashMap<String, mpsc::Sender<PendingConfirm>>>>,
}

/// Confirmation batches ([`super::agreement`]) in flight to one peer at
/// once. Each holds a connection, and a peer serves at most
/// [`MAX_PEER_CONNS_PER_IP`] from one address, so Raft's own connections
/// always fit; as many as the pool keeps, so each batch reuses one.
pub(super) const CONFIRMS_PER_PEER: usize = POOL_PER_PEER;
/// Most confirmations one batch carries (each about 100 bytes).
pub const MAX_CONFIRM_BATCH: usize = 512;
/// Confirmations waiting for a batch to one peer; past that a commit's
/// question to that peer is answered `NotYet` at once (backpressure, not
/// an unbounded queue).
const CONFIRM_QUEUE: usize = 8 * MAX_CONFIRM_BATCH;

/// A question to one peer, waiting for the next batch.
pub(super) struct PendingConfirm {
    req: ConfirmRequest,
    deadline: tokio::time::Instant,
    answer: oneshot::Sender<ConfirmAnswer>,
}

impl std::fmt::Debug for PeerNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerNetwork")
            .field("bind_source", &self.bind_source)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerClient(node {} at {})", self.target, self.addr)
    }
}

impl PeerNetwork {
    pub fn new(
        key: StaticSecret,
        identity: Arc<PeerIdentity>,
        node: Arc<NodeSigner>,
        keys: Arc<PeerKeys>,
        bind_source: Option<std::net::IpAddr>,
    ) -> Self {
        PeerNetwork {
            key: Arc::new(key),
            identity,
            node,
            keys,
            warn: Arc::default(),
            bind_source,
            pool: Arc::default(),
            confirm_queues: Arc::default(),
        }
    }

    /// Asks node `id` at `node` to confirm `req` ([`super::agreement`]);
    /// `NotYet` if no answer comes within `ttl`.
    ///
    /// Questions to one peer travel in batches: while
    /// [`CONFIRMS_PER_PEER`] batches are in flight, new questions wait and
    /// leave together in the next one, so a burst of concurrent commits
    /// costs a few round trips, not one connection each.
    pub async fn confirm_with(
        &self,
        id: NodeId,
        node: &VaultNode,
        req: &ConfirmRequest,
        ttl: Duration,
    ) -> ConfirmAnswer {
        let deadline = tokio::time::Instant::now() + ttl;
        let (answer, answered) = oneshot::channel();
        let pending = PendingConfirm {
            req: req.clone(),
            deadline,
            answer,
        };
        if self
            .confirm_queue(id, &node.raft_addr)
            .try_send(pending)
            .is_err()
        {
            metrics::counter!("vault_overloaded_total").increment(1);
            return ConfirmAnswer::NotYet;
        }
        match tokio::time::timeout_at(deadline, answered).await {
            Ok(Ok(a)) => a,
            _ => ConfirmAnswer::NotYet,
        }
    }

    /// The queue of questions to the peer at `addr`, and its batching task
    /// the first time.
    fn confirm_queue(&self, id: NodeId, addr: &str) -> mpsc::Sender<PendingConfirm> {
        let mut queues = self.confirm_queues.lock();
        if let Some(q) = queues.get(addr).filter(|q| !q.is_closed()) {
            return q.clone();
        }
        let (tx, rx) = mpsc::channel(CONFIRM_QUEUE);
        tokio::spawn(confirm_batches(self.clone(), id, addr.to_owned(), rx));
        queues.insert(addr.to_owned(), tx.clone());
        tx
    }
}

impl PeerNetwork {
    /// Connects to `addr` as Raft would and completes the handshake: proves
    /// that a replica of this fleet answers there as node `target`, in this
    /// group (a replica in no group joins it), with a node key the group
    /// does not refuse. Returns that key; the connection is dropped.
    pub async fn probe(
        &self,
        target: NodeId,
        addr: &str,
        ttl: Duration,
    ) -> Result<NodeKey, PeerError> {
        let client = self.client(target, addr, Pool::default());
        tokio::time::timeout(ttl, client.connect())
            .await
            .map_err(|_| PeerError::Timeout)?
            .map(|c| c.remote_key)
    }

    /// This replica's node key.
    pub fn node_key(&self) -> NodeKey {
        self.node.public()
    }

    fn client(&self, target: NodeId, addr: &str, pool: Pool) -> PeerClient {
        PeerClient {
            target,
            addr: addr.to_owned(),
            key: self.key.clone(),
            identity: self.identity.clone(),
            node: self.node.clone(),
            keys: self.keys.clone(),
            warn: self.warn.clone(),
            bind_source: self.bind_source,
            conn: None,
            pool,
        }
    }
}

impl RaftNetworkFactory<VaultRaft> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &VaultNode) -> PeerClient {
        self.client(target, &node.raft_addr, self.pool.clone())
    }
}

struct PeerConn {
    stream: TcpStream,
    transport: Transport,
    /// The node key the other end proved.
    remote_key: NodeKey,
    last_used: std::time::Instant,
}

/// One replica's connection to another.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    key: Arc<StaticSecret>,
    identity: Arc<PeerIdentity>,
    node: Arc<NodeSigner>,
    keys: Arc<PeerKeys>,
    warn: Arc<WarnOnce>,
    bind_source: Option<std::net::IpAddr>,
    conn: Option<PeerConn>,
    pool: Pool,
}

impl Drop for PeerClient {
    /// A client's healthy connection goes back to the pool for the next
    /// client of the same peer.
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            let mut pool = self.pool.lock();
            let idle = pool.entry(self.addr.clone()).or_default();
            if idle.len() < POOL_PER_PEER {
                idle.push(c);
            }
        }
    }
}

impl PeerClient {
    /// A pooled connection to this peer that has not idled too long.
    fn pooled(&self) -> Option<PeerConn> {
        let mut pool = self.pool.lock();
        let idle = pool.get_mut(&self.addr)?;
        while let Some(c) = idle.pop() {
            if c.last_used.elapsed() < POOL_MAX_IDLE {
                return Some(c);
            }
        }
        None
    }

    async fn connect(&self) -> Result<PeerConn, PeerError> {
        let addr: std::net::SocketAddr = tokio::net::lookup_host(&self.addr)
            .await
            .map_err(PeerError::Resolve)?
            .next()
            .ok_or(PeerError::NoAddress)?;
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }?;
        if let Some(ip) = self.bind_source {
            socket.bind(std::net::SocketAddr::new(ip, 0))?;
        }
        let mut stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let hello = self.identity.hello(self.target)?;
        let payload = codec::encode("peer hello", &hello)?;
        let (m1, waiting) =
            Initiator::peer(&self.key, &self.key.public_key())?.write_first(&payload)?;
        let after_first = waiting.handshake_hash();
        write_record(&mut stream, &m1).await?;
        stream.flush().await?;
        let m2 = read_record(&mut stream, MAX_PEER_RECORD, Duration::from_secs(5))
            .await?
            .ok_or(PeerError::Closed)?;
        let (payload, mut transport) = waiting
            .read_response(&m2)
            .map_err(|_| PeerError::Handshake)?;
        let welcome: PeerWelcome = codec::decode("peer welcome", &payload)?;
        let checked = check_welcome(&hello, &welcome, &self.addr)
            .map_err(PeerError::from)
            .and_then(|()| {
                let key = welcome.proof.verify(
                    ProofRole::Responder,
                    hello.group,
                    hello.to,
                    &after_first,
                )?;
                self.keys.admit(hello.to, key)?;
                Ok(key)
            });
        let remote_key = match checked {
            Ok(k) => k,
            Err(e) => {
                metrics::counter!("vault_raft_peer_refused_total", "side" => "caller").increment(1);
                if self.warn.due(&self.addr) {
                    tracing::warn!(target_node = self.target, addr = %self.addr, "{e}; not talking to it");
                }
                return Err(e);
            }
        };
        // Our own proof, over the whole handshake, before any request.
        let proof = self.node.prove(
            ProofRole::Initiator,
            hello.group,
            hello.from,
            transport.handshake_hash(),
        );
        let sealed = transport.seal(&frame(&proof)?)?;
        write_record(&mut stream, &sealed).await?;
        Ok(PeerConn {
            stream,
            transport,
            remote_key,
            last_used: std::time::Instant::now(),
        })
    }

    async fn call(&mut self, req: PeerRequest, ttl: Duration) -> Result<PeerResponse, PeerError> {
        let body = frame(&req)?;
        let result = tokio::time::timeout(ttl, async {
            // A reused connection may have been closed by the peer while it
            // idled: then try once more on a fresh one (every Raft RPC is
            // safe to repeat).
            let mut use_pool = true;
            loop {
                let reused = self
                    .conn
                    .take()
                    .or_else(|| if use_pool { self.pooled() } else { None });
                let is_reused = reused.is_some();
                let mut c = match reused {
                    Some(c) => c,
                    None => self.connect().await?,
                };
                match Self::round_trip(&mut c, &body, ttl).await {
                    Ok(r) => {
                        c.last_used = std::time::Instant::now();
                        self.conn = Some(c);
                        return Ok(r);
                    }
                    Err(e) if is_reused => {
                        tracing::debug!(target = self.target, error = %e, "reused peer connection failed; connecting afresh");
                        use_pool = false;
                    }
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .unwrap_or(Err(PeerError::Timeout));
        result.and_then(|plain| unframe(&plain))
    }

    /// Sends one framed request on `c` and returns the answer's plaintext.
    async fn round_trip(
        c: &mut PeerConn,
        body: &[u8],
        ttl: Duration,
    ) -> Result<Vec<u8>, PeerError> {
        let sealed = c.transport.seal(body)?;
        write_record(&mut c.stream, &sealed).await?;
        c.stream.flush().await?;
        let rec = read_record(&mut c.stream, MAX_PEER_RECORD, ttl)
            .await?
            .ok_or(PeerError::Closed)?;
        Ok(c.transport.open(&rec, MAX_PEER_RECORD)?)
    }

    /// Asks about several committed entries at once; one answer each, in
    /// order.
    pub async fn confirm_batch(
        &mut self,
        reqs: Vec<ConfirmRequest>,
        ttl: Duration,
    ) -> Result<Vec<ConfirmAnswer>, PeerError> {
        let n = reqs.len();
        match self.call(PeerRequest::ConfirmBatch(reqs), ttl).await? {
            PeerResponse::ConfirmBatch(a) if a.len() == n => Ok(a),
            _ => Err(PeerError::Mismatch),
        }
    }

    /// Tells the peer that the majority holds another record than it does.
    pub async fn notify_diverged(
        &mut self,
        req: &ConfirmRequest,
        ttl: Duration,
    ) -> Result<(), PeerError> {
        match self.call(PeerRequest::Diverged(req.clone()), ttl).await? {
            PeerResponse::Noted => Ok(()),
            _ => Err(PeerError::Mismatch),
        }
    }

    fn unreachable<E: std::error::Error>(&self, e: PeerError) -> RPCError<NodeId, VaultNode, E> {
        tracing::debug!(target = self.target, error = %e, "peer rpc failed");
        RPCError::Unreachable(Unreachable::new(&e))
    }
}

/// Sends the questions queued for one peer in batches, at most
/// [`CONFIRMS_PER_PEER`] in flight: a batch leaves as soon as a slot is
/// free and takes everything queued by then. Ends with the queue.
async fn confirm_batches(
    network: PeerNetwork,
    id: NodeId,
    addr: String,
    mut queue: mpsc::Receiver<PendingConfirm>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONFIRMS_PER_PEER));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_CONFIRM_BATCH {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // A commit that gave up waits for no answer.
        batch.retain(|p| !p.answer.is_closed());
        let Some(deadline) = batch.iter().map(|p| p.deadline).max() else {
            continue;
        };
        metrics::histogram!("vault_confirm_batch_size").record(batch.len() as f64);
        let mut client = network.client(id, &addr, network.pool.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let ttl = deadline.saturating_duration_since(tokio::time::Instant::now());
            let (reqs, answers): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.req, p.answer)).unzip();
            match client.confirm_batch(reqs, ttl).await {
                Ok(got) => {
                    for (answer, a) in answers.into_iter().zip(got) {
                        let _ = answer.send(a);
                    }
                }
                // Dropped senders: each commit hears `NotYet`.
                Err(e) => tracing::debug!(target = id, error = %e, "confirmation batch failed"),
            }
        });
    }
}

fn mismatch<E: std::error::Error>() -> RPCError<NodeId, VaultNode, E> {
    RPCError::Network(NetworkError::new(&AnyError::error(
        "peer answered a different rpc",
    )))
}

impl RaftNetwork<VaultRaft> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<VaultRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, VaultNode, RaftError<NodeId>>> {
        match self.call(PeerRequest::Append(rpc), option.hard_ttl()).await {
            Ok(PeerResponse::Append(r)) => r.map_err(|e| {
                RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e))
            }),
            Ok(_) => Err(mismatch()),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<VaultRaft>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, VaultNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .call(PeerRequest::Snapshot(rpc), option.hard_ttl())
            .await
        {
            Ok(PeerResponse::Snapshot(r)) => r.map_err(|e| {
                RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e))
            }),
            Ok(_) => Err(mismatch()),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, VaultNode, RaftError<NodeId>>> {
        match self.call(PeerRequest::Vote(rpc), option.hard_ttl()).await {
            Ok(PeerResponse::Vote(r)) => r.map_err(|e| {
                RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e))
            }),
            Ok(_) => Err(mismatch()),
            Err(e) => Err(self.unreachable(e)),
        }
    }
}
