//! The control listener (SPEC.md 5.6).
//!
//! It faces whatever network an operator's tool comes from, so nothing
//! before the handshake may hold a slot for long: at most
//! [`MAX_CONTROL_CONNS`] connections at once and [`MAX_CONTROL_CONNS_PER_IP`]
//! from one address, [`HANDSHAKE_TIMEOUT`] to complete the handshake and
//! send the request. A connection whose first message does not verify
//! under any accepted operator key is dropped without an answer.

use std::sync::Arc;
use std::time::Duration;

use protocol_spec::keys::{PublicKey, StaticSecret};
use protocol_spec::limits::MAX_HANDSHAKE_MESSAGE;
use protocol_spec::noise::Responder;
use service_kit::records::{read_record, write_record};
use service_kit::shutdown::Shutdown;
use service_kit::slots::AddressSlots;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::membership::Membership;
use super::protocol::{self, ControlAnswer, ControlRequest, MAX_CONTROL_FRAME};

/// Connections served at once, in all and from one address.
pub const MAX_CONTROL_CONNS: usize = 32;
pub const MAX_CONTROL_CONNS_PER_IP: usize = 4;
/// Time from accept to a verified handshake and a complete request.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the listener needs.
pub struct ControlContext {
    pub membership: Membership,
    pub control_key: StaticSecret,
    pub operator_keys: Vec<PublicKey>,
}

impl std::fmt::Debug for ControlContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlContext")
            .field("operators", &self.operator_keys.len())
            .finish_non_exhaustive()
    }
}

/// Serves operators until a fast shutdown.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<ControlContext>,
    mut shutdown: watch::Receiver<Shutdown>,
) {
    if ctx.operator_keys.is_empty() {
        tracing::warn!(
            "control.operator_keys is empty: no operator can change or inspect the group"
        );
    }
    let slots = AddressSlots::new(MAX_CONTROL_CONNS, MAX_CONTROL_CONNS_PER_IP);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = service_kit::shutdown::reached(&mut shutdown, Shutdown::Fast) => return,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(slot) = slots.try_claim(peer.ip()) else {
            metrics::counter!("vault_control_refused_total", "reason" => "too_many").increment(1);
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(reason) = serve_one(stream, &ctx).await {
                metrics::counter!("vault_control_refused_total", "reason" => reason).increment(1);
                tracing::debug!(%peer, reason, "control connection refused");
            }
            drop(slot);
        });
    }
}

async fn serve_one(mut stream: TcpStream, ctx: &ControlContext) -> Result<(), &'static str> {
    let _ = stream.set_nodelay(true);
    let authenticate = async {
        let m1 = read_record(&mut stream, MAX_HANDSHAKE_MESSAGE, HANDSHAKE_TIMEOUT)
            .await
            .map_err(|_| "bad_record")?
            .ok_or("closed")?;
        // Try each accepted operator key; none verifying means the caller
        // is not an operator (or pinned another fleet's control key).
        let mut found = None;
        for key in &ctx.operator_keys {
            let Ok(responder) = Responder::control(&ctx.control_key, key) else {
                continue;
            };
            if let Ok(first) = responder.read_first(&m1) {
                found = Some((first, *key));
                break;
            }
        }
        let (first, operator) = found.ok_or("not_an_operator")?;
        let (m2, transport) = first.state.write_response(&[]).map_err(|_| "handshake")?;
        write_record(&mut stream, &m2).await.map_err(|_| "io")?;
        stream.flush().await.map_err(|_| "io")?;
        let rec = read_record(&mut stream, MAX_CONTROL_FRAME, HANDSHAKE_TIMEOUT)
            .await
            .map_err(|_| "bad_record")?
            .ok_or("closed")?;
        Ok::<_, &'static str>((transport, operator, rec))
    };
    let (mut transport, operator, rec) = tokio::time::timeout(HANDSHAKE_TIMEOUT, authenticate)
        .await
        .map_err(|_| "timeout")??;
    let plain = transport
        .open(&rec, MAX_CONTROL_FRAME)
        .map_err(|_| "bad_frame")?;
    let answer = match protocol::decode::<ControlRequest>(&plain) {
        Ok(req) => ctx.membership.handle(req, &operator.fingerprint()).await,
        Err(e) => ControlAnswer::Refused(e),
    };
    let sealed = transport
        .seal(&protocol::encode(&answer))
        .map_err(|_| "seal")?;
    write_record(&mut stream, &sealed).await.map_err(|_| "io")?;
    stream.flush().await.map_err(|_| "io")?;
    Ok(())
}
