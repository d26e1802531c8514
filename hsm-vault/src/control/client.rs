//! The operator tool's side of the control channel (`hsm-vault cluster
//! ...`): one request per connection, following one "not the leader"
//! answer to the leader it names.

use std::time::Duration;

use protocol_spec::keys::{PublicKey, StaticSecret};
use protocol_spec::limits::MAX_HANDSHAKE_MESSAGE;
use protocol_spec::noise::Initiator;
use service_kit::records::{read_record, write_record, RecordError};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::membership::LEARNER_CATCH_UP_WAIT;
use super::protocol::{self, ControlAnswer, ControlRequest, MAX_CONTROL_FRAME};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a control call failed, by whose fault.
#[derive(Debug, thiserror::Error)]
pub enum ControlCallError {
    /// The network's or the replica's: nothing answered in time.
    #[error("cannot reach the control listener at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// Ours, usually: the replica dropped the handshake.
    #[error(
        "the control listener at {addr} refused the handshake: check that this operator key is \
         in the replica's control.operator_keys and that the fleet control key given is the \
         fleet's (`hsm-vault keys show`)"
    )]
    NotAuthorised { addr: String },
    /// The replica answered and refused; its reason says what to do.
    #[error("{0}")]
    Refused(String),
    /// A follower answered and did not know the leader.
    #[error("{addr} is not the leader and knows no leader; try again once the group has one")]
    NoLeader { addr: String },
    /// Something answered, but not like a control listener does.
    #[error("malformed answer from {addr}: {reason}")]
    Malformed { addr: String, reason: String },
}

impl ControlCallError {
    /// Whether the same call may succeed later without anyone changing
    /// anything.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ControlCallError::Unreachable { .. } | ControlCallError::NoLeader { .. }
        )
    }
}

/// An operator's credentials: its key, and the fleet control key it pins.
pub struct ControlClient {
    operator: StaticSecret,
    fleet_control: PublicKey,
}

impl std::fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ControlClient(operator {})",
            self.operator.public_key().fingerprint()
        )
    }
}

impl ControlClient {
    pub fn new(operator: StaticSecret, fleet_control: PublicKey) -> Self {
        ControlClient {
            operator,
            fleet_control,
        }
    }

    /// Sends `req` to `addr`; a membership change that reaches a follower
    /// is sent again to the leader it names.
    pub async fn call(
        &self,
        addr: &str,
        req: &ControlRequest,
    ) -> Result<serde_json::Value, ControlCallError> {
        match self.call_once(addr, req).await? {
            ControlAnswer::NotLeader(Some(leader)) if leader != addr => {
                match self.call_once(&leader, req).await? {
                    ControlAnswer::NotLeader(_) => Err(ControlCallError::NoLeader { addr: leader }),
                    other => answer(other, addr),
                }
            }
            other => answer(other, addr),
        }
    }

    async fn call_once(
        &self,
        addr: &str,
        req: &ControlRequest,
    ) -> Result<ControlAnswer, ControlCallError> {
        let unreachable = |reason: String| ControlCallError::Unreachable {
            addr: addr.to_owned(),
            reason,
        };
        let malformed = |reason: String| ControlCallError::Malformed {
            addr: addr.to_owned(),
            reason,
        };
        let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| unreachable("no answer in time".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (m1, waiting) = Initiator::control(&self.operator, &self.fleet_control)
            .and_then(|i| i.write_first(&[]))
            .map_err(|e| malformed(e.to_string()))?;
        send(&mut stream, &m1)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let m2 = tokio::time::timeout(
            CONNECT_TIMEOUT,
            read_record(&mut stream, MAX_HANDSHAKE_MESSAGE, CONNECT_TIMEOUT),
        )
        .await
        .map_err(|_| unreachable("no handshake answer in time".into()))?
        .map_err(|e| unreachable(e.to_string()))?
        .ok_or_else(|| ControlCallError::NotAuthorised {
            addr: addr.to_owned(),
        })?;
        let (_, mut transport) =
            waiting
                .read_response(&m2)
                .map_err(|_| ControlCallError::NotAuthorised {
                    addr: addr.to_owned(),
                })?;
        let sealed = transport
            .seal(&protocol::encode(req))
            .map_err(|e| malformed(e.to_string()))?;
        send(&mut stream, &sealed)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        // add-learner answers once the learner caught up.
        let wait = LEARNER_CATCH_UP_WAIT + Duration::from_secs(30);
        let rec = tokio::time::timeout(wait, read_record(&mut stream, MAX_CONTROL_FRAME, wait))
            .await
            .map_err(|_| unreachable("no answer in time".into()))?
            .map_err(|e| unreachable(e.to_string()))?
            .ok_or_else(|| unreachable("closed before answering".into()))?;
        let plain = transport
            .open(&rec, MAX_CONTROL_FRAME)
            .map_err(|e| malformed(e.to_string()))?;
        protocol::decode(&plain).map_err(malformed)
    }
}

/// One record, flushed.
async fn send(stream: &mut TcpStream, body: &[u8]) -> Result<(), RecordError> {
    write_record(stream, body).await?;
    stream.flush().await.map_err(RecordError::from)
}

fn answer(a: ControlAnswer, addr: &str) -> Result<serde_json::Value, ControlCallError> {
    match a {
        ControlAnswer::Done(v) => Ok(v),
        ControlAnswer::Refused(reason) => Err(ControlCallError::Refused(reason)),
        ControlAnswer::NotLeader(_) => Err(ControlCallError::NoLeader {
            addr: addr.to_owned(),
        }),
    }
}
