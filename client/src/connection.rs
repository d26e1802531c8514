//! A connection to chatd (SPEC.md section 4) and vault tunnels inside it
//! (section 6), for one task at a time: open, request, close.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol_spec::codes::{CloseCode, TunnelCloseCode};
use protocol_spec::ids::{AccountId, EnrolmentCode, FleetId, TunnelId};
use protocol_spec::keys::{PublicKey, StaticSecret};
use protocol_spec::limits::MAX_VAULT_FRAME;
use protocol_spec::messages::chatd::{ClientFrame, ClientHello, ServerFrame, ServerHello};
use protocol_spec::messages::vault::{TunnelHello, VaultHello, VaultRequest, VaultResponse};
use protocol_spec::messages::WireMessage;
use protocol_spec::noise::{Initiator, Transport};
use protocol_spec::tunnel_ids::TunnelIdSequence;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::ClientError;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `ws://host:port` or `wss://host:port` (the path `/v1/connect` is added).
    pub url: String,
    /// chatd's static key, pinned.
    pub chatd_key: PublicKey,
    pub account: AccountId,
}

/// How long to wait for chatd and the vault before giving up (retryable).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An authenticated connection to chatd.
pub struct Connection {
    ws: Ws,
    transport: Transport,
    pub hello: ServerHello,
    account: AccountId,
    tunnel_ids: TunnelIdSequence<TunnelId>,
    pending: HashMap<TunnelId, VecDeque<ServerFrame>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connection({})", self.account)
    }
}

/// A tunnel to the vault fleet, end to end encrypted.
pub struct VaultTunnel {
    id: TunnelId,
    transport: Transport,
    pub hello: VaultHello,
}

impl std::fmt::Debug for VaultTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VaultTunnel({})", self.id)
    }
}

fn url_of(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/connect") {
        base.to_owned()
    } else {
        format!("{base}/v1/connect")
    }
}

impl Connection {
    /// Connects, authenticates the device key and, with `enrolment_code`,
    /// enrols it first.
    pub async fn connect(
        ep: &Endpoint,
        device: &StaticSecret,
        enrolment_code: Option<EnrolmentCode>,
    ) -> Result<Self, ClientError> {
        let url = url_of(&ep.url);
        // Several crypto providers may be linked (object_store brings one);
        // rustls needs the process default named once. Already set is fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .max_message_size(Some(64 * 1024));
        let connect =
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true);
        let (mut ws, _) = tokio::time::timeout(REQUEST_TIMEOUT, connect)
            .await
            .map_err(|_| ClientError::Connect {
                url: url.clone(),
                reason: "timed out".into(),
            })?
            .map_err(|e| {
                let reason = describe_ws_error(&e);
                if refused_for_good(&e) {
                    ClientError::Refused {
                        url: url.clone(),
                        reason,
                    }
                } else {
                    ClientError::Connect {
                        url: url.clone(),
                        reason,
                    }
                }
            })?;
        let hello = ClientHello {
            account: ep.account.clone(),
            enrolment_code,
            client_software: concat!("backupctl/", env!("CARGO_PKG_VERSION")).into(),
        };
        let (m1, waiting) =
            Initiator::client_chatd(device, &ep.chatd_key)?.write_first(&hello.encode())?;
        ws.send(Message::Binary(m1.into()))
            .await
            .map_err(|_| ClientError::Dropped)?;
        let m2 = next_binary(&mut ws).await?;
        let (payload, transport) = waiting.read_response(&m2).map_err(|_| {
            ClientError::Protocol(
                "chatd's handshake did not verify: check the pinned chatd key".into(),
            )
        })?;
        let hello = ServerHello::decode(&payload)?;
        Ok(Connection {
            ws,
            transport,
            hello,
            account: ep.account.clone(),
            tunnel_ids: TunnelIdSequence::new(),
            pending: HashMap::new(),
        })
    }

    async fn send_frame(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        let sealed = self.transport.seal(&frame.encode())?;
        self.ws
            .send(Message::Binary(sealed.into()))
            .await
            .map_err(|_| ClientError::Dropped)
    }

    async fn next_for(&mut self, tunnel: TunnelId) -> Result<ServerFrame, ClientError> {
        if let Some(f) = self.pending.get_mut(&tunnel).and_then(VecDeque::pop_front) {
            return Ok(f);
        }
        loop {
            let bytes = tokio::time::timeout(REQUEST_TIMEOUT, next_binary(&mut self.ws))
                .await
                .map_err(|_| ClientError::Dropped)??;
            let max = self.hello.max_frame_len as usize;
            let plain = self
                .transport
                .open(&bytes, max)
                .map_err(|_| ClientError::Protocol("a frame from chatd did not decrypt".into()))?;
            let frame = ServerFrame::decode(&plain)?;
            if frame.tunnel() == tunnel {
                return Ok(frame);
            }
            self.pending
                .entry(frame.tunnel())
                .or_default()
                .push_back(frame);
        }
    }

    /// Opens a tunnel to the vault fleet whose key is pinned, and checks
    /// the fleet id it announces.
    pub async fn open_tunnel(
        &mut self,
        fleet_key: &PublicKey,
        fleet_id: &FleetId,
    ) -> Result<VaultTunnel, ClientError> {
        // Ids only increase on a connection (SPEC 4.5); four billion
        // tunnels on one connection would need a new connection.
        let id = self.tunnel_ids.next_id().ok_or_else(|| {
            ClientError::Protocol("this connection has used every tunnel id; reconnect".into())
        })?;
        let (m1, waiting) =
            Initiator::tunnel(fleet_key, &self.account)?.write_first(&TunnelHello.encode())?;
        self.send_frame(&ClientFrame::TunnelOpen {
            tunnel: id,
            handshake: m1,
        })
        .await?;
        match self.next_for(id).await? {
            ServerFrame::TunnelData { payload, .. } => {
                let (hello, transport) = waiting.read_response(&payload).map_err(|_| {
                    ClientError::Protocol(
                        "the vault's handshake did not verify: check the pinned fleet key".into(),
                    )
                })?;
                let hello = VaultHello::decode(&hello)?;
                if &hello.fleet_id != fleet_id {
                    let _ = self.close_tunnel_id(id).await;
                    return Err(ClientError::Protocol(format!(
                        "the vault says it is fleet {:?}, not the configured {:?}",
                        hello.fleet_id.as_str(),
                        fleet_id.as_str()
                    )));
                }
                Ok(VaultTunnel {
                    id,
                    transport,
                    hello,
                })
            }
            ServerFrame::TunnelClose { code, .. } => Err(ClientError::TunnelClosed(code)),
        }
    }

    /// Sends one request and waits for its response.
    pub async fn request(
        &mut self,
        t: &mut VaultTunnel,
        req: &VaultRequest,
    ) -> Result<VaultResponse, ClientError> {
        let sealed = t.transport.seal(&req.encode())?;
        self.send_frame(&ClientFrame::TunnelData {
            tunnel: t.id,
            payload: sealed,
        })
        .await?;
        match self.next_for(t.id).await? {
            ServerFrame::TunnelData { payload, .. } => {
                let plain = t
                    .transport
                    .open(&payload, MAX_VAULT_FRAME)
                    .map_err(|_| ClientError::Protocol("a vault frame did not decrypt".into()))?;
                Ok(VaultResponse::decode(&plain)?)
            }
            ServerFrame::TunnelClose { code, .. } => Err(ClientError::TunnelClosed(code)),
        }
    }

    async fn close_tunnel_id(&mut self, id: TunnelId) -> Result<(), ClientError> {
        self.pending.remove(&id);
        self.send_frame(&ClientFrame::TunnelClose {
            tunnel: id,
            code: TunnelCloseCode::Normal,
        })
        .await
    }

    /// Ends a tunnel (the vault abandons any login pending on it).
    pub async fn close_tunnel(&mut self, t: VaultTunnel) -> Result<(), ClientError> {
        self.close_tunnel_id(t.id).await
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}

fn describe_ws_error(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Http(resp) => match resp.status().as_u16() {
            429 => "too many connections from this address; wait and retry".into(),
            503 => "chatd is draining or unavailable; retry shortly".into(),
            404 => "chatd does not serve protocol v1 at this URL".into(),
            s => format!("HTTP {s}"),
        },
        E::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// Whether an upgrade failure will repeat on retry: a client error status
/// (the wrong path, host or proxy) or a URL that cannot be used. Timeouts
/// (408), rate limits (429), server errors and network failures are worth
/// another try.
fn refused_for_good(e: &tokio_tungstenite::tungstenite::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Http(resp) => {
            let s = resp.status().as_u16();
            (400..500).contains(&s) && s != 408 && s != 429
        }
        E::Url(_) => true,
        _ => false,
    }
}

/// The next binary message; a close frame becomes [`ClientError::Closed`].
async fn next_binary(ws: &mut Ws) -> Result<Vec<u8>, ClientError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(b.to_vec()),
            Some(Ok(Message::Close(Some(frame)))) => {
                return Err(match CloseCode::from_value(u16::from(frame.code)) {
                    Some(c) => ClientError::Closed(c),
                    None => ClientError::Dropped,
                })
            }
            Some(Ok(Message::Close(None))) | None => return Err(ClientError::Dropped),
            Some(Ok(_)) => continue, // pings are answered by the library
            Some(Err(_)) => return Err(ClientError::Dropped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_the_v1_path_once() {
        assert_eq!(url_of("ws://h:1"), "ws://h:1/v1/connect");
        assert_eq!(url_of("wss://h/"), "wss://h/v1/connect");
        assert_eq!(url_of("ws://h:1/v1/connect"), "ws://h:1/v1/connect");
    }

    /// wss:// really goes through TLS: a server that does not speak TLS is
    /// reported as a connection failure, not as "TLS not supported".
    #[tokio::test]
    async fn wss_uses_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            if let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(b"HTTP/1.1 400 not tls\r\n\r\n").await;
            }
        });
        let ep = Endpoint {
            url: format!("wss://{addr}"),
            chatd_key: PublicKey([1; 32]),
            account: AccountId::new("a").unwrap(),
        };
        let err = Connection::connect(&ep, &StaticSecret::from_bytes([2; 32]), None)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ClientError::Connect { .. }), "{msg}");
        assert!(!msg.to_lowercase().contains("not supported"), "{msg}");
    }

    /// A server that answers the upgrade with 404 is a wrong URL, reported
    /// as such and not retried; 503 (draining) is worth a retry.
    #[tokio::test]
    async fn http_refusals_are_final_only_when_they_will_repeat() {
        for (status, final_) in [("404 Not Found", true), ("503 Service Unavailable", false)] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                if let Ok((mut s, _)) = listener.accept().await {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    let _ = s.write_all(reply.as_bytes()).await;
                }
            });
            let ep = Endpoint {
                url: format!("ws://{addr}"),
                chatd_key: PublicKey([1; 32]),
                account: AccountId::new("a").unwrap(),
            };
            let err = Connection::connect(&ep, &StaticSecret::from_bytes([2; 32]), None)
                .await
                .unwrap_err();
            assert_eq!(err.retryable(), !final_, "{status}: {err}");
            assert_eq!(
                matches!(err, ClientError::Refused { .. }),
                final_,
                "{status}: {err}"
            );
        }
    }
}
