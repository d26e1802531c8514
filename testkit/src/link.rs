//! A blocking chatd-side link client, for driving a real vault in tests the
//! way chatd would: Noise_KK link, tunnels with Noise_NK inside.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use protocol_spec::codes::TunnelCloseCode;
use protocol_spec::ids::{AccountId, LinkTunnelId};
use protocol_spec::keys::{PublicKey, StaticSecret};
use protocol_spec::limits::{MAX_FRAME, MAX_VAULT_FRAME};
use protocol_spec::messages::link::{LinkFrame, LinkHello, LinkWelcome, VaultLinkFrame};
use protocol_spec::messages::vault::{TunnelHello, VaultHello, VaultRequest, VaultResponse};
use protocol_spec::messages::WireMessage;
use protocol_spec::noise::{Initiator, Transport};
use protocol_spec::tunnel_ids::TunnelIdSequence;

/// What can end a tunnel request in a test.
#[derive(Debug)]
pub enum TunnelError {
    /// The vault closed the tunnel with this code.
    Closed(TunnelCloseCode),
    /// The link failed (the vault went away, or a protocol error).
    Link(String),
}

impl std::fmt::Display for TunnelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TunnelError::Closed(c) => write!(f, "tunnel closed: {c}"),
            TunnelError::Link(e) => write!(f, "link failed: {e}"),
        }
    }
}

impl std::error::Error for TunnelError {}

/// One tunnel's client end.
pub struct Tunnel {
    pub id: LinkTunnelId,
    pub account: AccountId,
    pub hello: VaultHello,
    transport: Transport,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tunnel({}, {})", self.id, self.account)
    }
}

/// A link to a vault replica, speaking as chatd.
pub struct LinkClient {
    stream: TcpStream,
    transport: Transport,
    pub welcome: LinkWelcome,
    ids: TunnelIdSequence<LinkTunnelId>,
    pending: HashMap<LinkTunnelId, VecDeque<VaultLinkFrame>>,
    pub statuses: Vec<VaultLinkFrame>,
    seen: Vec<u8>,
}

fn read_record(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let n = u32::from_be_bytes(len) as usize;
    if n == 0 || n > 1 << 20 {
        return Err(std::io::Error::other("bad record length"));
    }
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

fn write_record(s: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    s.write_all(&out)
}

impl LinkClient {
    /// Connects and completes the Noise_KK handshake.
    pub fn connect(
        addr: SocketAddr,
        chatd_key: &StaticSecret,
        vault_link_key: &PublicKey,
    ) -> anyhow::Result<Self> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        let hello = LinkHello {
            chatd_instance: "testkit".into(),
        };
        let (m1, waiting) =
            Initiator::link(chatd_key, vault_link_key)?.write_first(&hello.encode())?;
        write_record(&mut stream, &m1)?;
        let m2 = read_record(&mut stream)?;
        let (payload, transport) = waiting.read_response(&m2)?;
        let welcome = LinkWelcome::decode(&payload)?;
        let seen = [m1, m2, payload].concat();
        Ok(LinkClient {
            stream,
            transport,
            welcome,
            ids: TunnelIdSequence::new(),
            pending: HashMap::new(),
            statuses: Vec::new(),
            seen,
        })
    }

    /// Every byte this link client has seen, as chatd would see it: each
    /// record sent and received, and the plaintext of each link frame (the
    /// tunnel payloads inside are still the tunnel's ciphertext). Tests of
    /// a dishonest front-end scan it for secrets.
    pub fn seen(&self) -> &[u8] {
        &self.seen
    }

    /// Sends raw bytes as one record (for hostile-input tests).
    pub fn send_raw_record(&mut self, body: &[u8]) -> std::io::Result<()> {
        self.seen.extend_from_slice(body);
        write_record(&mut self.stream, body)
    }

    /// Sends one link frame.
    pub fn send(&mut self, frame: &LinkFrame) -> anyhow::Result<()> {
        let plain = frame.encode();
        let sealed = self.transport.seal(&plain)?;
        self.seen.extend_from_slice(&plain);
        self.seen.extend_from_slice(&sealed);
        write_record(&mut self.stream, &sealed)?;
        Ok(())
    }

    fn read_frame(&mut self) -> Result<VaultLinkFrame, TunnelError> {
        let rec = read_record(&mut self.stream).map_err(|e| TunnelError::Link(e.to_string()))?;
        self.seen.extend_from_slice(&rec);
        let plain = self
            .transport
            .open(&rec, MAX_FRAME)
            .map_err(|e| TunnelError::Link(e.to_string()))?;
        self.seen.extend_from_slice(&plain);
        VaultLinkFrame::decode(&plain).map_err(|e| TunnelError::Link(e.to_string()))
    }

    /// The next frame for tunnel `id`, buffering frames for other tunnels.
    pub fn next_for(&mut self, id: LinkTunnelId) -> Result<VaultLinkFrame, TunnelError> {
        if let Some(f) = self.pending.get_mut(&id).and_then(VecDeque::pop_front) {
            return Ok(f);
        }
        loop {
            let f = self.read_frame()?;
            let target = match &f {
                VaultLinkFrame::Data { tunnel, .. } | VaultLinkFrame::Close { tunnel, .. } => {
                    *tunnel
                }
                VaultLinkFrame::Status { .. } => {
                    self.statuses.push(f);
                    continue;
                }
            };
            if target == id {
                return Ok(f);
            }
            self.pending.entry(target).or_default().push_back(f);
        }
    }

    /// Allocates the next tunnel id.
    pub fn next_tunnel_id(&mut self) -> LinkTunnelId {
        self.ids.next_id().expect("a test never opens 2^64 tunnels")
    }

    /// Opens a tunnel for `account` to the fleet key, as a client would.
    pub fn open_tunnel(
        &mut self,
        account: &AccountId,
        fleet_key: &PublicKey,
    ) -> Result<Tunnel, TunnelError> {
        self.open_tunnel_as(account, account, fleet_key)
    }

    /// Opens a tunnel whose client binds `client_account` while chatd
    /// claims `link_account` (they differ only in tests of a lying chatd).
    pub fn open_tunnel_as(
        &mut self,
        client_account: &AccountId,
        link_account: &AccountId,
        fleet_key: &PublicKey,
    ) -> Result<Tunnel, TunnelError> {
        let id = self.next_tunnel_id();
        let (m1, waiting) = Initiator::tunnel(fleet_key, client_account)
            .and_then(|i| i.write_first(&TunnelHello.encode()))
            .map_err(|e| TunnelError::Link(e.to_string()))?;
        self.send(&LinkFrame::Open {
            tunnel: id,
            account: link_account.clone(),
            handshake: m1,
        })
        .map_err(|e| TunnelError::Link(e.to_string()))?;
        match self.next_for(id)? {
            VaultLinkFrame::Data { payload, .. } => {
                let (hello, transport) = waiting
                    .read_response(&payload)
                    .map_err(|e| TunnelError::Link(e.to_string()))?;
                let hello =
                    VaultHello::decode(&hello).map_err(|e| TunnelError::Link(e.to_string()))?;
                Ok(Tunnel {
                    id,
                    account: client_account.clone(),
                    hello,
                    transport,
                })
            }
            VaultLinkFrame::Close { code, .. } => Err(TunnelError::Closed(code)),
            VaultLinkFrame::Status { .. } => Err(TunnelError::Link("unexpected status".into())),
        }
    }

    /// Sends a request on a tunnel and waits for its response.
    pub fn request(
        &mut self,
        t: &mut Tunnel,
        req: &VaultRequest,
    ) -> Result<VaultResponse, TunnelError> {
        let sealed = t
            .transport
            .seal(&req.encode())
            .map_err(|e| TunnelError::Link(e.to_string()))?;
        self.send(&LinkFrame::Data {
            tunnel: t.id,
            payload: sealed,
        })
        .map_err(|e| TunnelError::Link(e.to_string()))?;
        match self.next_for(t.id)? {
            VaultLinkFrame::Data { payload, .. } => {
                let plain = t
                    .transport
                    .open(&payload, MAX_VAULT_FRAME)
                    .map_err(|e| TunnelError::Link(e.to_string()))?;
                VaultResponse::decode(&plain).map_err(|e| TunnelError::Link(e.to_string()))
            }
            VaultLinkFrame::Close { code, .. } => Err(TunnelError::Closed(code)),
            VaultLinkFrame::Status { .. } => Err(TunnelError::Link("unexpected status".into())),
        }
    }

    /// Sends raw tunnel bytes (not sealed by the tunnel) and returns what
    /// comes back for that tunnel.
    pub fn send_tunnel_bytes(
        &mut self,
        t: &Tunnel,
        payload: Vec<u8>,
    ) -> Result<VaultLinkFrame, TunnelError> {
        self.send(&LinkFrame::Data {
            tunnel: t.id,
            payload,
        })
        .map_err(|e| TunnelError::Link(e.to_string()))?;
        self.next_for(t.id)
    }

    /// Closes a tunnel (the vault abandons a pending login on it).
    pub fn close_tunnel(&mut self, t: Tunnel) -> anyhow::Result<()> {
        self.send(&LinkFrame::Close {
            tunnel: t.id,
            code: TunnelCloseCode::Normal,
        })
    }
}
