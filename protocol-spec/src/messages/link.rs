//! Channel 2, chatd <-> vault replica (SPEC.md section 5).

use std::fmt;

use super::chatd::close_code;
use super::{missing, wire_message};
use crate::codes::TunnelCloseCode;
use crate::frame::check_bytes;
use crate::ids::{check_name, AccountId, LinkTunnelId};
use crate::limits::{
    MAX_FRAME, MAX_HANDSHAKE_PAYLOAD, MAX_LEADER_HINT, MAX_NAME, MAX_TUNNEL_PAYLOAD,
};
use crate::pb;
use crate::Error;

/// Noise_KK message 1 payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkHello {
    pub chatd_instance: String,
}

impl LinkHello {
    fn to_pb(&self) -> pb::LinkHello {
        pb::LinkHello {
            chatd_instance: self.chatd_instance.clone(),
        }
    }

    fn from_pb(p: pb::LinkHello) -> Result<Self, Error> {
        check_name("chatd_instance", &p.chatd_instance, MAX_NAME)?;
        Ok(LinkHello {
            chatd_instance: p.chatd_instance,
        })
    }
}
wire_message!(LinkHello, pb::LinkHello, MAX_HANDSHAKE_PAYLOAD);

/// Noise_KK message 2 payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkWelcome {
    pub replica_id: String,
    pub leader: bool,
    pub leader_hint: Option<String>,
    pub max_tunnels: u32,
}

fn hint_from_pb(h: String) -> Result<Option<String>, Error> {
    check_name("leader_hint", &h, MAX_LEADER_HINT)?;
    Ok(if h.is_empty() { None } else { Some(h) })
}

impl LinkWelcome {
    fn to_pb(&self) -> pb::LinkWelcome {
        pb::LinkWelcome {
            replica_id: self.replica_id.clone(),
            leader: self.leader,
            leader_hint: self.leader_hint.clone().unwrap_or_default(),
            max_tunnels: self.max_tunnels,
        }
    }

    fn from_pb(p: pb::LinkWelcome) -> Result<Self, Error> {
        check_name("replica_id", &p.replica_id, MAX_NAME)?;
        if p.max_tunnels == 0 {
            return Err(Error::InvalidField {
                field: "max_tunnels",
                reason: "must be positive",
            });
        }
        Ok(LinkWelcome {
            replica_id: p.replica_id,
            leader: p.leader,
            leader_hint: hint_from_pb(p.leader_hint)?,
            max_tunnels: p.max_tunnels,
        })
    }
}
wire_message!(LinkWelcome, pb::LinkWelcome, MAX_HANDSHAKE_PAYLOAD);

/// Transport frames from chatd to a vault replica.
#[derive(Clone, PartialEq, Eq)]
pub enum LinkFrame {
    /// Opens a tunnel for an account chatd authenticated. `handshake` is the
    /// client's `TunnelOpen.handshake`, unchanged.
    Open {
        tunnel: LinkTunnelId,
        account: AccountId,
        handshake: Vec<u8>,
    },
    Data {
        tunnel: LinkTunnelId,
        payload: Vec<u8>,
    },
    Close {
        tunnel: LinkTunnelId,
        code: TunnelCloseCode,
    },
}

/// Transport frames from a vault replica to chatd.
#[derive(Clone, PartialEq, Eq)]
pub enum VaultLinkFrame {
    Data {
        tunnel: LinkTunnelId,
        payload: Vec<u8>,
    },
    Close {
        tunnel: LinkTunnelId,
        code: TunnelCloseCode,
    },
    /// The replica's role changed. A replica that stops being the leader
    /// closes every tunnel with `LeaderChanged` before sending this.
    Status {
        leader: bool,
        leader_hint: Option<String>,
    },
}

fn data_pb(tunnel: LinkTunnelId, payload: &[u8]) -> pb::LinkData {
    pb::LinkData {
        tunnel_id: tunnel.0,
        payload: payload.to_vec(),
    }
}

fn data_from_pb(d: pb::LinkData) -> Result<(LinkTunnelId, Vec<u8>), Error> {
    check_bytes("payload", &d.payload, MAX_TUNNEL_PAYLOAD, false)?;
    Ok((LinkTunnelId::new(d.tunnel_id)?, d.payload))
}

fn close_pb(tunnel: LinkTunnelId, code: TunnelCloseCode) -> pb::LinkClose {
    pb::LinkClose {
        tunnel_id: tunnel.0,
        code: code.value(),
    }
}

fn close_from_pb(c: pb::LinkClose) -> Result<(LinkTunnelId, TunnelCloseCode), Error> {
    Ok((LinkTunnelId::new(c.tunnel_id)?, close_code(c.code)?))
}

impl LinkFrame {
    fn to_pb(&self) -> pb::LinkFrame {
        use pb::link_frame::Frame;
        let frame = match self {
            LinkFrame::Open {
                tunnel,
                account,
                handshake,
            } => Frame::Open(pb::LinkOpen {
                tunnel_id: tunnel.0,
                account_id: account.as_str().to_owned(),
                handshake: handshake.clone(),
            }),
            LinkFrame::Data { tunnel, payload } => Frame::Data(data_pb(*tunnel, payload)),
            LinkFrame::Close { tunnel, code } => Frame::Close(close_pb(*tunnel, *code)),
        };
        pb::LinkFrame { frame: Some(frame) }
    }

    fn from_pb(p: pb::LinkFrame) -> Result<Self, Error> {
        use pb::link_frame::Frame;
        match p.frame.ok_or(missing("LinkFrame: no frame"))? {
            Frame::Open(o) => {
                check_bytes("handshake", &o.handshake, MAX_TUNNEL_PAYLOAD, false)?;
                Ok(LinkFrame::Open {
                    tunnel: LinkTunnelId::new(o.tunnel_id)?,
                    account: AccountId::new(o.account_id)?,
                    handshake: o.handshake,
                })
            }
            Frame::Data(d) => {
                let (tunnel, payload) = data_from_pb(d)?;
                Ok(LinkFrame::Data { tunnel, payload })
            }
            Frame::Close(c) => {
                let (tunnel, code) = close_from_pb(c)?;
                Ok(LinkFrame::Close { tunnel, code })
            }
        }
    }
}
wire_message!(LinkFrame, pb::LinkFrame, MAX_FRAME);

impl VaultLinkFrame {
    fn to_pb(&self) -> pb::VaultLinkFrame {
        use pb::vault_link_frame::Frame;
        let frame = match self {
            VaultLinkFrame::Data { tunnel, payload } => Frame::Data(data_pb(*tunnel, payload)),
            VaultLinkFrame::Close { tunnel, code } => Frame::Close(close_pb(*tunnel, *code)),
            VaultLinkFrame::Status {
                leader,
                leader_hint,
            } => Frame::Status(pb::LinkStatus {
                leader: *leader,
                leader_hint: leader_hint.clone().unwrap_or_default(),
            }),
        };
        pb::VaultLinkFrame { frame: Some(frame) }
    }

    fn from_pb(p: pb::VaultLinkFrame) -> Result<Self, Error> {
        use pb::vault_link_frame::Frame;
        match p.frame.ok_or(missing("VaultLinkFrame: no frame"))? {
            Frame::Data(d) => {
                let (tunnel, payload) = data_from_pb(d)?;
                Ok(VaultLinkFrame::Data { tunnel, payload })
            }
            Frame::Close(c) => {
                let (tunnel, code) = close_from_pb(c)?;
                Ok(VaultLinkFrame::Close { tunnel, code })
            }
            Frame::Status(s) => Ok(VaultLinkFrame::Status {
                leader: s.leader,
                leader_hint: hint_from_pb(s.leader_hint)?,
            }),
        }
    }
}
wire_message!(VaultLinkFrame, pb::VaultLinkFrame, MAX_FRAME);

impl fmt::Debug for LinkFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkFrame::Open {
                tunnel,
                account,
                handshake,
            } => write!(f, "Open({tunnel}, {account}, {} bytes)", handshake.len()),
            LinkFrame::Data { tunnel, payload } => {
                write!(f, "Data({tunnel}, {} bytes)", payload.len())
            }
            LinkFrame::Close { tunnel, code } => write!(f, "Close({tunnel}, {})", code.label()),
        }
    }
}

impl fmt::Debug for VaultLinkFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VaultLinkFrame::Data { tunnel, payload } => {
                write!(f, "Data({tunnel}, {} bytes)", payload.len())
            }
            VaultLinkFrame::Close { tunnel, code } => {
                write!(f, "Close({tunnel}, {})", code.label())
            }
            VaultLinkFrame::Status {
                leader,
                leader_hint,
            } => write!(f, "Status(leader={leader}, hint={leader_hint:?})"),
        }
    }
}
