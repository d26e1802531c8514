//! The peer listener (SPEC.md section 5.5): the responder side of
//! [`super::network`]'s transport. It admits a replica of this group (or
//! lets this replica join the first group that reaches it), checks the
//! caller's node key proof, and serves Raft RPCs and the confirmations of
//! [`super::agreement`], one request at a time per connection.

use std::sync::Arc;
use std::time::Duration;

use openraft::raft::InstallSnapshotRequest;
use openraft::Raft;
use protocol_spec::keys::StaticSecret;
use protocol_spec::noise::Responder;
use service_kit::records::{read_record, write_record};
use service_kit::slots::AddressSlots;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::agreement::{self, Divergence, RecentWrites};
use super::codec;
use super::identity::{PeerHello, PeerIdentity, WarnOnce};
use super::network::{
    frame, unframe, PeerError, PeerRequest, PeerResponse, MAX_CONFIRM_BATCH, MAX_PEER_CONNS,
    MAX_PEER_CONNS_PER_IP, MAX_PEER_RECORD, MAX_SNAPSHOT_BYTES, PEER_HANDSHAKE_TIMEOUT,
    PEER_IDLE_TIMEOUT,
};
use super::peer_keys::{NodeProof, NodeSigner, PeerKeys, ProofRole};
use super::VaultRaft;
use crate::state::RecordStore;

/// What the peer listener serves: the Raft node, and for confirmations
/// ([`super::agreement`]) the store and this replica's divergence flag.
#[derive(Clone)]
pub struct PeerService {
    pub raft: Raft<VaultRaft>,
    pub store: Arc<RecordStore>,
    /// Which accounts recent entries wrote (a record from a later entry
    /// is no evidence either way).
    pub recent: Arc<RecentWrites>,
    pub divergence: Arc<Divergence>,
    pub key: Arc<StaticSecret>,
    pub identity: Arc<PeerIdentity>,
    pub node: Arc<NodeSigner>,
    pub keys: Arc<PeerKeys>,
}

impl std::fmt::Debug for PeerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerService")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Most a confirmation waits for this replica to apply the entry.
const MAX_CONFIRM_WAIT: Duration = Duration::from_secs(10);

/// Serves other replicas' RPCs until the listener is dropped.
///
/// The listener faces the network, so nothing before the handshake may hold
/// a slot for long: the handshake must complete within 5 s, one address may
/// hold at most 16 connections, and a connection with no request for
/// [`PEER_IDLE_TIMEOUT`] is closed (which also reaps connections whose peer
/// vanished without a FIN).
pub async fn serve(listener: TcpListener, svc: PeerService) {
    let warn = Arc::new(WarnOnce::default());
    let slots = AddressSlots::new(MAX_PEER_CONNS, MAX_PEER_CONNS_PER_IP);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(slot) = slots.try_claim(peer.ip()) else {
            tracing::debug!(%peer, "peer connection refused: too many connections");
            continue;
        };
        let (svc, warn) = (svc.clone(), warn.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_peer(stream, &svc, &warn).await {
                tracing::debug!(%peer, error = %e, "peer connection ended");
            }
            drop(slot);
        });
    }
}

async fn serve_peer(
    mut stream: TcpStream,
    svc: &PeerService,
    warn: &WarnOnce,
) -> Result<(), PeerError> {
    let (raft, key, identity) = (&svc.raft, svc.key.as_ref(), &svc.identity);
    let _ = stream.set_nodelay(true);
    let handshake = async {
        let m1 = read_record(
            &mut stream,
            protocol_spec::limits::MAX_HANDSHAKE_MESSAGE,
            PEER_HANDSHAKE_TIMEOUT,
        )
        .await?
        .ok_or(PeerError::Closed)?;
        let first = Responder::peer(key, &key.public_key())
            .and_then(|r| r.read_first(&m1))
            .map_err(|_| PeerError::Handshake)?;
        let hello: PeerHello = codec::decode("peer hello", &first.payload)?;
        // Answer with who we are even when refusing, so the caller can say
        // whom it reached instead.
        let admitted = if identity.group().is_some() {
            identity.admit(&hello)
        } else {
            // Joining a group writes (fsyncs) the group id: off the async
            // workers, which keep the heartbeats going.
            let (id, h) = (identity.clone(), hello.clone());
            tokio::task::spawn_blocking(move || id.admit(&h))
                .await
                .map_err(|e| PeerError::Task(e.to_string()))?
        };
        let proof = svc.node.prove(
            ProofRole::Responder,
            hello.group,
            identity.node_id(),
            &first.state.handshake_hash(),
        );
        let (m2, mut transport) = first
            .state
            .write_response(&codec::encode("peer welcome", &identity.welcome(proof))?)?;
        write_record(&mut stream, &m2).await?;
        stream.flush().await?;
        let refuse = |e: PeerError| {
            metrics::counter!("vault_raft_peer_refused_total", "side" => "callee").increment(1);
            if warn.due(&format!("{}/{}", hello.from, hello.group)) {
                tracing::warn!("{e}; connection refused");
            }
            e
        };
        if let Err(e) = admitted {
            return Err(refuse(e.into()));
        }
        // The caller's proof of its node key comes first.
        let rec = read_record(&mut stream, MAX_PEER_RECORD, PEER_HANDSHAKE_TIMEOUT)
            .await?
            .ok_or(PeerError::Closed)?;
        let plain = transport.open(&rec, MAX_PEER_RECORD)?;
        let proven = unframe::<NodeProof>(&plain).and_then(|p| {
            let key = p.verify(
                ProofRole::Initiator,
                hello.group,
                hello.from,
                transport.handshake_hash(),
            )?;
            svc.keys.admit(hello.from, key)?;
            Ok(())
        });
        if let Err(e) = proven {
            return Err(refuse(e));
        }
        Ok::<_, PeerError>((transport, hello.from))
    };
    let (mut transport, caller) = tokio::time::timeout(PEER_HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| PeerError::Timeout)??;
    loop {
        let next = tokio::time::timeout(
            PEER_IDLE_TIMEOUT,
            read_record(&mut stream, MAX_PEER_RECORD, Duration::from_secs(30)),
        )
        .await
        .map_err(|_| PeerError::Idle)?;
        let Some(rec) = next? else {
            return Ok(());
        };
        let plain = transport.open(&rec, MAX_PEER_RECORD)?;
        let resp = match unframe::<PeerRequest>(&plain)? {
            PeerRequest::Append(r) => PeerResponse::Append(raft.append_entries(r).await),
            PeerRequest::Vote(r) => PeerResponse::Vote(raft.vote(r).await),
            PeerRequest::Snapshot(r) => {
                check_snapshot_chunk(&r)?;
                PeerResponse::Snapshot(raft.install_snapshot(r).await)
            }
            PeerRequest::Confirm(r) => {
                let answers =
                    agreement::answer(raft, &svc.store, &svc.recent, &[r], MAX_CONFIRM_WAIT).await;
                PeerResponse::Confirm(answers[0])
            }
            PeerRequest::ConfirmBatch(reqs) => {
                if reqs.len() > MAX_CONFIRM_BATCH {
                    return Err(PeerError::TooManyConfirms(reqs.len()));
                }
                PeerResponse::ConfirmBatch(
                    agreement::answer(raft, &svc.store, &svc.recent, &reqs, MAX_CONFIRM_WAIT).await,
                )
            }
            PeerRequest::Diverged(r) => {
                // Only the leader speaks for the majority; anyone else
                // telling this replica it diverged is ignored.
                if raft.metrics().borrow().current_leader == Some(caller) {
                    svc.divergence.report(
                        "follower",
                        format!(
                            "the leader (node {caller}) reports that a majority of the group \
                             holds a different record of account {} after log entry {} than this \
                             replica: this replica's store has been edited or rolled back; \
                             rebuild it (remove it, wipe its data folder, add it again under a \
                             new node id)",
                            r.account, r.index
                        ),
                    );
                    // A replica that serves nothing must not be elected:
                    // leading, it would hold the group without answering.
                    let raft = raft.clone();
                    tokio::spawn(async move {
                        let _ = raft.shutdown().await;
                    });
                }
                PeerResponse::Noted
            }
        };
        let sealed = transport.seal(&frame(&resp)?)?;
        write_record(&mut stream, &sealed).await?;
        stream.flush().await?;
    }
}

/// Refuses a snapshot chunk that would grow the snapshot past
/// [`MAX_SNAPSHOT_BYTES`] (an absurd offset would otherwise make the
/// in-memory snapshot allocate it).
fn check_snapshot_chunk(r: &InstallSnapshotRequest<VaultRaft>) -> Result<(), PeerError> {
    let end = r.offset.checked_add(r.data.len() as u64);
    if end.is_none_or(|end| end > MAX_SNAPSHOT_BYTES) {
        return Err(PeerError::SnapshotTooLarge { offset: r.offset });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use openraft::{LogId, SnapshotMeta, Vote};

    use super::*;

    fn chunk(offset: u64, len: usize) -> InstallSnapshotRequest<VaultRaft> {
        InstallSnapshotRequest {
            vote: Vote::new(1, 1),
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), 5)),
                last_membership: Default::default(),
                snapshot_id: "s".into(),
            },
            offset,
            data: vec![0; len],
            done: false,
        }
    }

    #[test]
    fn snapshot_chunks_beyond_the_limit_are_refused() {
        assert!(check_snapshot_chunk(&chunk(0, 1024)).is_ok());
        assert!(check_snapshot_chunk(&chunk(MAX_SNAPSHOT_BYTES - 10, 10)).is_ok());
        assert!(check_snapshot_chunk(&chunk(MAX_SNAPSHOT_BYTES - 10, 11)).is_err());
        assert!(check_snapshot_chunk(&chunk(u64::MAX, 1)).is_err());
    }
}
