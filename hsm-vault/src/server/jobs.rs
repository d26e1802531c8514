//! What the worker pool runs for the links' tunnels (SPEC.md 6): the
//! Noise_NK handshake of a new tunnel, one sealed request through the vault
//! core, the expiry of a pending login, and the end of a session.
//!
//! Each job carries the tunnel it acts on and hands it back with its result
//! to the link that submitted it ([`super::tunnels::TunnelTable`] decides
//! what happens next). If that link is gone, nobody will end the tunnel's
//! session, so the job ends it here: [`end_session`] is the one place a
//! session ends.

use std::sync::Arc;
use std::time::Instant;

use protocol_spec::codes::TunnelCloseCode;
use protocol_spec::ids::{AccountId, LinkTunnelId};
use protocol_spec::keys::StaticSecret;
use protocol_spec::limits::MAX_VAULT_FRAME;
use protocol_spec::messages::vault::{TunnelHello, VaultHello, VaultRequest};
use protocol_spec::messages::WireMessage;
use protocol_spec::noise::{Responder, Transport};
use protocol_spec::Error as ProtocolError;
use tokio::sync::mpsc;

use super::tunnels::{Job, JobDone, Reply, TunnelState};
use super::workers::WorkerPool;
use crate::core::{Now, Vault, VaultSession};

/// A tunnel's state between requests.
pub struct Tunnel {
    transport: Transport,
    session: VaultSession,
}

impl TunnelState for Tunnel {
    fn login_deadline(&self) -> Option<Instant> {
        self.session.login_deadline()
    }
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tunnel({:?})", self.session)
    }
}

/// What jobs need: the core, and the fleet's tunnel key (the core's own
/// parameters give the fleet id and `max_attempts` for `VaultHello`).
pub struct JobContext {
    pub vault: Arc<Vault>,
    pub tunnel_key: StaticSecret,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("vault", &self.vault)
            .finish_non_exhaustive()
    }
}

/// Where a job's result goes: the link that submitted it.
pub type DoneSender = mpsc::UnboundedSender<JobDone<Tunnel>>;

/// Work for the pool.
pub enum LinkJob {
    /// A tunnel's job, answered to its link.
    Tunnel { done: DoneSender, job: Job<Tunnel> },
    /// End this session (abandoning its pending login).
    EndSession(Box<Tunnel>),
}

impl std::fmt::Debug for LinkJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkJob::Tunnel { job, .. } => write!(f, "LinkJob({job:?})"),
            LinkJob::EndSession(_) => f.write_str("LinkJob(EndSession)"),
        }
    }
}

/// The pool that runs link jobs.
pub fn worker_pool(ctx: Arc<JobContext>, workers: usize, queue: usize) -> WorkerPool<LinkJob> {
    WorkerPool::new(workers, queue, move |job: LinkJob| run(&ctx, job))
}

/// Ends a session: a pending login is abandoned, which on a record's last
/// attempt erases the record. This must never be skipped, or an exhausted
/// record would wait for a login that can no longer come.
pub fn end_session(vault: &Vault, tunnel: &mut Tunnel) {
    vault.close(Now::system(), &mut tunnel.session);
}

fn run(ctx: &JobContext, job: LinkJob) {
    let (done, job) = match job {
        LinkJob::EndSession(mut t) => return end_session(&ctx.vault, &mut t),
        LinkJob::Tunnel { done, job } => (done, job),
    };
    let result = match job {
        Job::Handshake {
            id,
            account,
            handshake,
        } => tunnel_handshake(ctx, id, account, &handshake),
        Job::Request {
            id,
            mut tunnel,
            payload,
        } => match handle_request(ctx, &mut tunnel, &payload) {
            reply @ Reply::Close(_) => {
                // A tunnel closed for its request ends its session before
                // the close goes out, so the next tunnel sees the outcome.
                end_session(&ctx.vault, &mut tunnel);
                JobDone {
                    id,
                    tunnel: None,
                    reply,
                }
            }
            reply => JobDone {
                id,
                tunnel: Some(tunnel),
                reply,
            },
        },
        Job::Expire { id, mut tunnel } => {
            ctx.vault.expire(Now::system(), &mut tunnel.session);
            JobDone {
                id,
                tunnel: Some(tunnel),
                reply: Reply::Nothing,
            }
        }
    };
    // If the link is gone, nobody will end this session: do it here.
    if let Err(mpsc::error::SendError(done)) = done.send(result) {
        if let Some(mut t) = done.tunnel {
            end_session(&ctx.vault, &mut t);
        }
    }
}

fn tunnel_handshake(
    ctx: &JobContext,
    id: LinkTunnelId,
    account: AccountId,
    handshake: &[u8],
) -> JobDone<Tunnel> {
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
    let params = ctx.vault.params();
    let hello = VaultHello {
        fleet_id: params.fleet_id.clone(),
        max_attempts: params.max_attempts,
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
