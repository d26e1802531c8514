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

// --- the client half: `hsm-vault cluster ...` ---------------------------------

/// Connecting is quick on the networks an admin listener belongs on.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest silence while waiting for an answer: `add-learner` waits up to
/// [`LEARNER_CATCH_UP_WAIT`] before it answers.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a call to an admin listener failed, by whose fault.
#[derive(Debug, thiserror::Error)]
pub enum AdminCallError {
    /// Ours: the address given is not `host:port`.
    #[error("{0:?} is not host:port")]
    BadAddress(String),
    /// The network's or the replica's: nothing answered in time (down,
    /// wrong address, firewalled, or stuck).
    #[error("cannot reach the admin listener at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// The replica answered and refused; `message` is its own reason (or
    /// `HTTP <status>` when it gave none).
    #[error("{message}")]
    Refused { status: u16, message: String },
    /// Something answered, but not like an admin listener does.
    #[error("malformed answer from the admin listener at {addr}: {reason}")]
    Malformed { addr: String, reason: String },
}

impl AdminCallError {
    /// Whether the same call may succeed later without anyone changing
    /// anything: the replica was unreachable, or busy (no leader yet, a
    /// change still catching up).
    pub fn retryable(&self) -> bool {
        match self {
            AdminCallError::Unreachable { .. } => true,
            AdminCallError::Refused { status, .. } => matches!(status, 409 | 503 | 504),
            AdminCallError::BadAddress(_) | AdminCallError::Malformed { .. } => false,
        }
    }
}

/// A blocking request to an admin listener, following one "not the
/// leader" answer to the leader it names. Returns the JSON answer.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, AdminCallError> {
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

fn answer(code: u16, v: serde_json::Value) -> Result<serde_json::Value, AdminCallError> {
    if code == 200 {
        Ok(v)
    } else {
        Err(AdminCallError::Refused {
            status: code,
            message: v
                .get("error")
                .and_then(|e| e.as_str())
                .map_or_else(|| format!("HTTP {code}"), str::to_owned),
        })
    }
}

/// One exchange: the status and the JSON body (`null` when an error
/// answer has none; a 200 must carry JSON).
fn request_once(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value), AdminCallError> {
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| AdminCallError::BadAddress(addr.to_owned()))?;
    let unreachable = |e: ureq::Error| AdminCallError::Unreachable {
        addr: addr.to_owned(),
        reason: match e {
            ureq::Error::Timeout(_) => "no answer in time".to_owned(),
            ureq::Error::Io(e) => e.to_string(),
            other => other.to_string(),
        },
    };
    let malformed = |reason: String| AdminCallError::Malformed {
        addr: addr.to_owned(),
        reason,
    };
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{sock}{path}"))
        .header("content-type", "application/json")
        .body(body.map(|b| b.to_string()).unwrap_or_default())
        .map_err(|e| malformed(format!("cannot form the request: {e}")))?;
    let mut response = agent().run(request).map_err(|e| match e {
        ureq::Error::Protocol(e) => malformed(e.to_string()),
        other => unreachable(other),
    })?;
    let code = response.status().as_u16();
    let text = response.body_mut().read_to_string().map_err(|e| match e {
        ureq::Error::Timeout(_) | ureq::Error::Io(_) => unreachable(e),
        other => malformed(other.to_string()),
    })?;
    let v = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) if code == 200 => return Err(malformed(format!("not JSON: {e}"))),
        Err(_) => serde_json::Value::Null,
    };
    Ok((code, v))
}

/// Plain HTTP as the admin listener speaks it: status codes are answers,
/// not errors; no proxy from the environment (the listener is on a
/// trusted network, often loopback); no redirects beyond the leader hint.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .build()
        .into()
}

#[cfg(test)]
mod client_tests {
    #![allow(clippy::unwrap_used)]

    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    use super::*;

    /// A one-shot listener on loopback that answers with `raw` and hands
    /// back the request line and body it received.
    fn answer_once(raw: String) -> (String, std::thread::JoinHandle<(String, String)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap();
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            reader.get_mut().write_all(raw.as_bytes()).unwrap();
            (
                request_line.trim_end().to_owned(),
                String::from_utf8(body).unwrap(),
            )
        });
        (addr, handle)
    }

    fn json_answer(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn a_closed_port_is_unreachable_and_retryable() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let e = request(&addr, "GET", "/cluster/status", None).unwrap_err();
        assert!(matches!(e, AdminCallError::Unreachable { .. }), "{e:?}");
        assert!(e.retryable());
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("cannot reach the admin listener at {addr}: ")),
            "{shown}"
        );
    }

    #[test]
    fn an_address_that_is_not_host_port_is_ours_to_fix() {
        let e = request("localhost", "GET", "/cluster/status", None).unwrap_err();
        assert!(matches!(e, AdminCallError::BadAddress(_)), "{e:?}");
        assert_eq!(e.to_string(), "\"localhost\" is not host:port");
        assert!(!e.retryable());
    }

    #[test]
    fn a_refusal_shows_the_replicas_own_message() {
        let (addr, server) = answer_once(json_answer(
            "400 Bad Request",
            r#"{"error":"node 7 is not a learner; add it with add-learner first"}"#,
        ));
        let e = request(
            &addr,
            "POST",
            "/cluster/promote",
            Some(&serde_json::json!({ "node_id": 7 })),
        )
        .unwrap_err();
        assert!(
            matches!(e, AdminCallError::Refused { status: 400, .. }),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "node 7 is not a learner; add it with add-learner first"
        );
        let (line, body) = server.join().unwrap();
        assert_eq!(line, "POST /cluster/promote HTTP/1.1");
        assert_eq!(body, r#"{"node_id":7}"#);
    }

    #[test]
    fn a_refusal_without_a_message_shows_the_status() {
        let (addr, _server) = answer_once(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .into(),
        );
        let e = request(&addr, "GET", "/cluster/status", None).unwrap_err();
        assert_eq!(e.to_string(), "HTTP 503");
        assert!(e.retryable());
    }

    #[test]
    fn not_the_leader_is_followed_once_to_the_leader() {
        let (leader, leader_server) = answer_once(json_answer("200 OK", r#"{"voters":[1,2]}"#));
        let (follower, _follower_server) = answer_once(json_answer(
            "409 Conflict",
            &format!(r#"{{"error":"not the leader","leader_admin":"{leader}"}}"#),
        ));
        let body = serde_json::json!({ "node_id": 2 });
        let v = request(&follower, "POST", "/cluster/promote", Some(&body)).unwrap();
        assert_eq!(v["voters"], serde_json::json!([1, 2]));
        let (line, sent) = leader_server.join().unwrap();
        assert_eq!(line, "POST /cluster/promote HTTP/1.1");
        assert_eq!(sent, body.to_string());
    }

    #[test]
    fn a_second_not_the_leader_is_not_followed() {
        let (elsewhere, _elsewhere_server) = answer_once(json_answer("200 OK", "{}"));
        let (leader, _leader_server) = answer_once(json_answer(
            "409 Conflict",
            &format!(r#"{{"error":"not the leader","leader_admin":"{elsewhere}"}}"#),
        ));
        let (follower, _follower_server) = answer_once(json_answer(
            "409 Conflict",
            &format!(r#"{{"error":"not the leader","leader_admin":"{leader}"}}"#),
        ));
        let e = request(&follower, "POST", "/cluster/init", None).unwrap_err();
        assert!(
            matches!(e, AdminCallError::Refused { status: 409, .. }),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "not the leader");
    }

    #[test]
    fn an_answer_that_is_not_http_or_not_json_is_malformed() {
        let (addr, _server) = answer_once("SSH-2.0-OpenSSH_9.6\r\n\r\n".into());
        let e = request(&addr, "GET", "/cluster/status", None).unwrap_err();
        assert!(matches!(e, AdminCallError::Malformed { .. }), "{e:?}");
        assert!(!e.retryable());

        let (addr, _server) = answer_once(json_answer("200 OK", "<html>"));
        let e = request(&addr, "GET", "/cluster/status", None).unwrap_err();
        assert!(matches!(e, AdminCallError::Malformed { .. }), "{e:?}");
    }
}
