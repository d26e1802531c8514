//! Membership as operator commands: the `/cluster/*` routes of the admin
//! listener, and the small HTTP client `hsm-vault cluster ...` uses to
//! reach them. The admin listener belongs on a trusted network (loopback
//! by default), like the rest of the admin surface.
//!
//! | route | does |
//! | --- | --- |
//! | `GET /cluster/self` | this replica's id and addresses |
//! | `GET /cluster/status` | term, leader, indices, membership |
//! | `POST /cluster/init` | a new group (new group id), this replica its one voter; once |
//! | `POST /cluster/add-learner` | add a replica (body: its `/cluster/self`, refused if it belongs to another group); it catches up |
//! | `POST /cluster/promote` | `{"node_id": n}`: learner to voter |
//! | `POST /cluster/remove` | `{"node_id": n}`: out of the group |
//!
//! Changes must reach the leader; elsewhere the answer is 409 with the
//! leader's admin address, which the CLI follows.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::{ChangeMembers, Raft};
use serde::{Deserialize, Serialize};

use super::identity::{GroupId, PeerIdentity};
use super::{status, ClusterStatus, VaultNode, VaultRaft};

/// How long `add-learner` waits for the new replica to catch up before
/// answering (it stays a learner and keeps catching up either way; the
/// CLI gives up after 120 s).
const LEARNER_CATCH_UP_WAIT: Duration = Duration::from_secs(60);

/// A replica's identity, as `GET /cluster/self` reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SelfInfo {
    pub node_id: u64,
    #[serde(flatten)]
    pub node: VaultNode,
    /// The group it belongs to; none before `cluster init` or before a
    /// group's leader first reaches it.
    #[serde(default)]
    pub group: Option<GroupId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeIdBody {
    pub node_id: u64,
}

#[derive(Clone)]
struct AdminCtx {
    raft: Raft<VaultRaft>,
    me: SelfInfo,
    identity: Arc<PeerIdentity>,
}

type Answer = (StatusCode, Json<serde_json::Value>);

fn ok(v: serde_json::Value) -> Answer {
    (StatusCode::OK, Json(v))
}

fn fail(code: StatusCode, msg: String) -> Answer {
    (code, Json(serde_json::json!({ "error": msg })))
}

/// The routes, to merge into the admin listener.
pub fn routes(raft: Raft<VaultRaft>, me: SelfInfo, identity: Arc<PeerIdentity>) -> Router {
    Router::new()
        .route("/cluster/self", get(self_info))
        .route("/cluster/status", get(cluster_status))
        .route("/cluster/init", post(init))
        .route("/cluster/add-learner", post(add_learner))
        .route("/cluster/promote", post(promote))
        .route("/cluster/remove", post(remove))
        .with_state(AdminCtx { raft, me, identity })
}

async fn self_info(State(c): State<AdminCtx>) -> Json<SelfInfo> {
    Json(SelfInfo {
        group: c.identity.group(),
        ..c.me.clone()
    })
}

async fn cluster_status(State(c): State<AdminCtx>) -> Json<ClusterStatus> {
    Json(ClusterStatus {
        group: c.identity.group(),
        ..status(&c.raft)
    })
}

/// 409 with the leader's admin address when this replica is not the leader.
fn not_leader(c: &AdminCtx) -> Option<Answer> {
    let s = status(&c.raft);
    if s.leader == Some(s.node_id) {
        return None;
    }
    let leader_admin = s
        .leader
        .and_then(|l| s.nodes.get(&l))
        .map(|n| n.admin_addr.clone());
    Some((
        StatusCode::CONFLICT,
        Json(serde_json::json!({ "error": "not the leader", "leader_admin": leader_admin })),
    ))
}

async fn init(State(c): State<AdminCtx>) -> Answer {
    // The group id first: a replica that already belongs to a group (made
    // here before, or joined by a leader reaching it) must not start a
    // second one.
    let group = match c.identity.create_group() {
        Ok(g) => g,
        Err(e) => return fail(StatusCode::CONFLICT, format!("cannot initialise: {e}")),
    };
    let members = BTreeMap::from([(c.me.node_id, c.me.node.clone())]);
    match c.raft.initialize(members).await {
        Ok(()) => {
            tracing::info!(node = c.me.node_id, %group, "cluster initialised");
            ok(serde_json::json!({ "initialised": c.me.node_id, "group": group }))
        }
        Err(e) => fail(StatusCode::CONFLICT, format!("cannot initialise: {e}")),
    }
}

async fn add_learner(State(c): State<AdminCtx>, Json(who): Json<SelfInfo>) -> Answer {
    if let Some(a) = not_leader(&c) {
        return a;
    }
    let mine = c.identity.group();
    if let Some(theirs) = who.group.filter(|g| Some(*g) != mine) {
        return fail(
            StatusCode::CONFLICT,
            format!(
                "node {} belongs to another group ({theirs}; this group is {}). \
                 It was initialised on its own or serves another group: stop it, \
                 move its data folder aside, start it empty and add it again",
                who.node_id,
                mine.map_or_else(|| "none".into(), |g| g.to_string())
            ),
        );
    }
    let added = tokio::time::timeout(
        LEARNER_CATCH_UP_WAIT,
        c.raft.add_learner(who.node_id, who.node.clone(), true),
    )
    .await;
    let Ok(added) = added else {
        return fail(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "node {} is a learner now but has not caught up within {} s; check that it \
                 is reachable from this replica (`cluster status`, and both replicas' logs)",
                who.node_id,
                LEARNER_CATCH_UP_WAIT.as_secs()
            ),
        );
    };
    match added {
        Ok(_) => {
            tracing::info!(node = who.node_id, "learner added and caught up");
            ok(serde_json::json!({ "learner": who.node_id }))
        }
        Err(e) => fail(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot add learner: {e}"),
        ),
    }
}

/// Validates a voter change against the current membership with `f`, then
/// applies it as a delta (`change`), not as a replacement of the whole
/// voter set, so two concurrent changes cannot undo each other.
async fn change_voters(
    c: &AdminCtx,
    change: ChangeMembers<u64, VaultNode>,
    f: impl FnOnce(&mut BTreeSet<u64>) -> Result<(), String>,
) -> Answer {
    if let Some(a) = not_leader(c) {
        return a;
    }
    let s = status(&c.raft);
    let mut voters: BTreeSet<u64> = s.voters.iter().copied().collect();
    if let Err(e) = f(&mut voters) {
        return fail(StatusCode::BAD_REQUEST, e);
    }
    match c.raft.change_membership(change, false).await {
        Ok(r) => {
            let voters: BTreeSet<u64> = r
                .membership()
                .as_ref()
                .map(|m| m.voter_ids().collect())
                .unwrap_or(voters);
            ok(serde_json::json!({ "voters": voters }))
        }
        Err(e) => fail(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("membership change failed: {e}"),
        ),
    }
}

async fn promote(State(c): State<AdminCtx>, Json(b): Json<NodeIdBody>) -> Answer {
    let learners = status(&c.raft).learners;
    let change = ChangeMembers::AddVoterIds(BTreeSet::from([b.node_id]));
    change_voters(&c, change, |v| {
        if v.contains(&b.node_id) {
            return Err(format!("node {} is already a voter", b.node_id));
        }
        if !learners.contains(&b.node_id) {
            return Err(format!(
                "node {} is not a learner; add it with add-learner first",
                b.node_id
            ));
        }
        v.insert(b.node_id);
        Ok(())
    })
    .await
}

async fn remove(State(c): State<AdminCtx>, Json(b): Json<NodeIdBody>) -> Answer {
    let change = ChangeMembers::RemoveVoters(BTreeSet::from([b.node_id]));
    change_voters(&c, change, |v| {
        if !v.remove(&b.node_id) {
            return Err(format!("node {} is not a voter", b.node_id));
        }
        if v.is_empty() {
            return Err("cannot remove the last voter".into());
        }
        Ok(())
    })
    .await
}

/// A minimal blocking HTTP/1.1 request to an admin listener, following one
/// "not the leader" redirect. Returns the JSON answer or an error message.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, String> {
    let (code, v) = request_once(addr, method, path, body)?;
    if code == 409 {
        if let Some(leader) = v.get("leader_admin").and_then(|l| l.as_str()) {
            if leader != addr {
                let (code, v) = request_once(leader, method, path, body)?;
                return answer(code, v);
            }
        }
    }
    answer(code, v)
}

fn answer(code: u16, v: serde_json::Value) -> Result<serde_json::Value, String> {
    if code == 200 {
        Ok(v)
    } else {
        Err(v
            .get("error")
            .and_then(|e| e.as_str())
            .map_or_else(|| format!("HTTP {code}"), str::to_owned))
    }
}

fn request_once(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value), String> {
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not host:port"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(5))
        .map_err(|e| format!("cannot reach the admin listener at {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120))).ok();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    Ok((code, v))
}
