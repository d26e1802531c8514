//! Channel 1, client <-> chatd (SPEC.md section 4).

use std::fmt;

use super::{missing, wire_message};
use crate::codes::TunnelCloseCode;
use crate::frame::check_bytes;
use crate::ids::{check_name, AccountId, EnrolmentCode, TunnelId};
use crate::limits::{MAX_FRAME, MAX_HANDSHAKE_PAYLOAD, MAX_NAME, MAX_TUNNEL_PAYLOAD};
use crate::pb;
use crate::Error;

/// Noise_IK message 1 payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    pub account: AccountId,
    pub enrolment_code: Option<EnrolmentCode>,
    pub client_software: String,
}

impl ClientHello {
    fn to_pb(&self) -> pb::ClientHello {
        pb::ClientHello {
            account_id: self.account.as_str().to_owned(),
            enrolment_code: self
                .enrolment_code
                .as_ref()
                .map(|c| c.expose().to_owned())
                .unwrap_or_default(),
            client_software: self.client_software.clone(),
        }
    }

    fn from_pb(p: pb::ClientHello) -> Result<Self, Error> {
        check_name("client_software", &p.client_software, MAX_NAME)?;
        let enrolment_code = if p.enrolment_code.is_empty() {
            None
        } else {
            Some(EnrolmentCode::new(p.enrolment_code)?)
        };
        Ok(ClientHello {
            account: AccountId::new(p.account_id)?,
            enrolment_code,
            client_software: p.client_software,
        })
    }
}
wire_message!(ClientHello, pb::ClientHello, MAX_HANDSHAKE_PAYLOAD);

/// Noise_IK message 2 payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    pub enrolled_now: bool,
    pub max_frame_len: u32,
    pub max_tunnels: u32,
    pub idle_timeout_secs: u32,
}

impl ServerHello {
    fn to_pb(&self) -> pb::ServerHello {
        pb::ServerHello {
            enrolled_now: self.enrolled_now,
            max_frame_len: self.max_frame_len,
            max_tunnels: self.max_tunnels,
            idle_timeout_secs: self.idle_timeout_secs,
        }
    }

    fn from_pb(p: pb::ServerHello) -> Result<Self, Error> {
        if p.max_frame_len == 0 || p.max_tunnels == 0 || p.idle_timeout_secs == 0 {
            return Err(Error::InvalidField {
                field: "server_hello",
                reason: "limits must be positive",
            });
        }
        Ok(ServerHello {
            enrolled_now: p.enrolled_now,
            max_frame_len: p.max_frame_len,
            max_tunnels: p.max_tunnels,
            idle_timeout_secs: p.idle_timeout_secs,
        })
    }
}
wire_message!(ServerHello, pb::ServerHello, MAX_HANDSHAKE_PAYLOAD);

/// Transport frames from the client.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Opens a tunnel; `handshake` is the version byte + Noise_NK message 1.
    TunnelOpen {
        tunnel: TunnelId,
        handshake: Vec<u8>,
    },
    TunnelData {
        tunnel: TunnelId,
        payload: Vec<u8>,
    },
    TunnelClose {
        tunnel: TunnelId,
        code: TunnelCloseCode,
    },
}

/// Transport frames from chatd.
#[derive(Clone, PartialEq, Eq)]
pub enum ServerFrame {
    TunnelData {
        tunnel: TunnelId,
        payload: Vec<u8>,
    },
    TunnelClose {
        tunnel: TunnelId,
        code: TunnelCloseCode,
    },
}

pub(crate) fn close_code(v: u32) -> Result<TunnelCloseCode, Error> {
    TunnelCloseCode::from_value(v).ok_or(Error::InvalidField {
        field: "code",
        reason: "unknown tunnel close code",
    })
}

fn data_from_pb(d: pb::TunnelData) -> Result<(TunnelId, Vec<u8>), Error> {
    check_bytes("payload", &d.payload, MAX_TUNNEL_PAYLOAD, false)?;
    Ok((TunnelId::new(d.tunnel_id)?, d.payload))
}

fn close_from_pb(c: pb::TunnelClose) -> Result<(TunnelId, TunnelCloseCode), Error> {
    Ok((TunnelId::new(c.tunnel_id)?, close_code(c.code)?))
}

impl ClientFrame {
    pub fn tunnel(&self) -> TunnelId {
        match self {
            ClientFrame::TunnelOpen { tunnel, .. }
            | ClientFrame::TunnelData { tunnel, .. }
            | ClientFrame::TunnelClose { tunnel, .. } => *tunnel,
        }
    }

    fn to_pb(&self) -> pb::ClientFrame {
        use pb::client_frame::Frame;
        let frame = match self {
            ClientFrame::TunnelOpen { tunnel, handshake } => Frame::TunnelOpen(pb::TunnelOpen {
                tunnel_id: tunnel.0,
                handshake: handshake.clone(),
            }),
            ClientFrame::TunnelData { tunnel, payload } => Frame::TunnelData(pb::TunnelData {
                tunnel_id: tunnel.0,
                payload: payload.clone(),
            }),
            ClientFrame::TunnelClose { tunnel, code } => Frame::TunnelClose(pb::TunnelClose {
                tunnel_id: tunnel.0,
                code: code.value(),
            }),
        };
        pb::ClientFrame { frame: Some(frame) }
    }

    fn from_pb(p: pb::ClientFrame) -> Result<Self, Error> {
        use pb::client_frame::Frame;
        match p.frame.ok_or(missing("ClientFrame: no frame"))? {
            Frame::TunnelOpen(o) => {
                check_bytes("handshake", &o.handshake, MAX_TUNNEL_PAYLOAD, false)?;
                Ok(ClientFrame::TunnelOpen {
                    tunnel: TunnelId::new(o.tunnel_id)?,
                    handshake: o.handshake,
                })
            }
            Frame::TunnelData(d) => {
                let (tunnel, payload) = data_from_pb(d)?;
                Ok(ClientFrame::TunnelData { tunnel, payload })
            }
            Frame::TunnelClose(c) => {
                let (tunnel, code) = close_from_pb(c)?;
                Ok(ClientFrame::TunnelClose { tunnel, code })
            }
        }
    }
}
wire_message!(ClientFrame, pb::ClientFrame, MAX_FRAME);

impl ServerFrame {
    pub fn tunnel(&self) -> TunnelId {
        match self {
            ServerFrame::TunnelData { tunnel, .. } | ServerFrame::TunnelClose { tunnel, .. } => {
                *tunnel
            }
        }
    }

    fn to_pb(&self) -> pb::ServerFrame {
        use pb::server_frame::Frame;
        let frame = match self {
            ServerFrame::TunnelData { tunnel, payload } => Frame::TunnelData(pb::TunnelData {
                tunnel_id: tunnel.0,
                payload: payload.clone(),
            }),
            ServerFrame::TunnelClose { tunnel, code } => Frame::TunnelClose(pb::TunnelClose {
                tunnel_id: tunnel.0,
                code: code.value(),
            }),
        };
        pb::ServerFrame { frame: Some(frame) }
    }

    fn from_pb(p: pb::ServerFrame) -> Result<Self, Error> {
        use pb::server_frame::Frame;
        match p.frame.ok_or(missing("ServerFrame: no frame"))? {
            Frame::TunnelData(d) => {
                let (tunnel, payload) = data_from_pb(d)?;
                Ok(ServerFrame::TunnelData { tunnel, payload })
            }
            Frame::TunnelClose(c) => {
                let (tunnel, code) = close_from_pb(c)?;
                Ok(ServerFrame::TunnelClose { tunnel, code })
            }
        }
    }
}
wire_message!(ServerFrame, pb::ServerFrame, MAX_FRAME);

// Tunnel payloads are ciphertext, but Debug still prints only their length:
// logs should never carry payload bytes.
impl fmt::Debug for ClientFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientFrame::TunnelOpen { tunnel, handshake } => {
                write!(f, "TunnelOpen({tunnel}, {} bytes)", handshake.len())
            }
            ClientFrame::TunnelData { tunnel, payload } => {
                write!(f, "TunnelData({tunnel}, {} bytes)", payload.len())
            }
            ClientFrame::TunnelClose { tunnel, code } => {
                write!(f, "TunnelClose({tunnel}, {})", code.label())
            }
        }
    }
}

impl fmt::Debug for ServerFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerFrame::TunnelData { tunnel, payload } => {
                write!(f, "TunnelData({tunnel}, {} bytes)", payload.len())
            }
            ServerFrame::TunnelClose { tunnel, code } => {
                write!(f, "TunnelClose({tunnel}, {})", code.label())
            }
        }
    }
}
