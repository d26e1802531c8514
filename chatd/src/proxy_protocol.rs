//! PROXY protocol v2 on the client listener (`listen.proxy_protocol`).
//!
//! Behind a TCP load balancer every connection comes from the balancer's
//! address, so per-address limits would throttle every client as one and
//! logs would name the balancer. With PROXY protocol on, the balancer
//! sends a binary header before the client's bytes naming the client's
//! address, and chatd uses that address instead.
//!
//! The header is believed only from `listen.trusted_proxies`: a connection
//! from anywhere else is refused before a byte is read, header or not, so
//! a client cannot name its own address. From a trusted proxy, a missing
//! or malformed header refuses the connection too (a balancer that
//! forgets to send one would otherwise make every client its address
//! again). A `LOCAL` header (the balancer's own health check) keeps the
//! TCP peer's address. Only version 2 is accepted: its fixed 16-byte
//! prefix says how long the rest is, so the header is read exactly and no
//! client byte is consumed with it.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use ppp::v2::{Addresses, Command, Header};
use tokio::io::AsyncReadExt;

/// The fixed part of a v2 header: signature, version/command, family, length.
const PREFIX_LEN: usize = 16;
/// The v2 signature.
const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Largest header accepted (addresses of the largest family, Unix at 216
/// bytes, plus room for TLVs a balancer may add).
const MAX_HEADER_LEN: usize = 1024;

/// Why a connection was refused before its WebSocket upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyRefusal {
    #[error("connection from an address not in listen.trusted_proxies")]
    Untrusted,
    #[error("no PROXY protocol v2 header")]
    NotProxy,
    #[error("malformed PROXY protocol v2 header")]
    Malformed,
    #[error("the PROXY protocol header did not arrive in time")]
    Timeout,
}

/// Which peers may send a PROXY header.
#[derive(Debug, Clone)]
pub struct ProxyPolicy {
    trusted: Vec<IpNet>,
}

impl ProxyPolicy {
    /// Parses `listen.trusted_proxies` (addresses or CIDR ranges).
    pub fn new(trusted: &[String]) -> Result<Self, String> {
        let trusted = trusted
            .iter()
            .map(|t| {
                t.parse::<IpNet>()
                    .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!("listen.trusted_proxies: {t:?} is not an address or CIDR range")
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ProxyPolicy { trusted })
    }

    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.trusted.iter().any(|net| net.contains(&peer))
    }

    /// The client's address from a whole header sent by `peer`.
    pub fn client_address(
        &self,
        peer: SocketAddr,
        header: &[u8],
    ) -> Result<SocketAddr, ProxyRefusal> {
        if !self.trusts(peer.ip()) {
            return Err(ProxyRefusal::Untrusted);
        }
        let header = Header::try_from(header).map_err(|_| ProxyRefusal::Malformed)?;
        if header.command == Command::Local {
            return Ok(peer);
        }
        match header.addresses {
            Addresses::IPv4(a) => Ok(SocketAddr::from((a.source_address, a.source_port))),
            Addresses::IPv6(a) => Ok(SocketAddr::from((a.source_address, a.source_port))),
            // A proxied connection must name an IP source: per-address
            // limits need one.
            Addresses::Unix(_) | Addresses::Unspecified => Err(ProxyRefusal::Malformed),
        }
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener's view of IPv4 peers)
/// compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// How many bytes follow the fixed prefix, if `prefix` starts a v2 header.
pub fn remaining_len(prefix: &[u8; PREFIX_LEN]) -> Result<usize, ProxyRefusal> {
    if &prefix[..12] != SIGNATURE {
        return Err(ProxyRefusal::NotProxy);
    }
    if prefix[12] >> 4 != 2 {
        return Err(ProxyRefusal::Malformed);
    }
    let len = usize::from(u16::from_be_bytes([prefix[14], prefix[15]]));
    if PREFIX_LEN + len > MAX_HEADER_LEN {
        return Err(ProxyRefusal::Malformed);
    }
    Ok(len)
}

/// Reads the header from `stream` (the caller bounds the time) and returns
/// the client's address. Reads exactly the header's bytes.
pub async fn read_client_address(
    stream: &mut tokio::net::TcpStream,
    peer: SocketAddr,
    policy: &ProxyPolicy,
) -> Result<SocketAddr, ProxyRefusal> {
    if !policy.trusts(peer.ip()) {
        return Err(ProxyRefusal::Untrusted);
    }
    let mut header = vec![0u8; PREFIX_LEN];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|_| ProxyRefusal::NotProxy)?;
    let prefix: [u8; PREFIX_LEN] = header[..].try_into().map_err(|_| ProxyRefusal::Malformed)?;
    let rest = remaining_len(&prefix)?;
    header.resize(PREFIX_LEN + rest, 0);
    stream
        .read_exact(&mut header[PREFIX_LEN..])
        .await
        .map_err(|_| ProxyRefusal::Malformed)?;
    policy.client_address(peer, &header)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ppp::v2::{Builder, Protocol, Version};

    fn header(command: Command, src: &str, dst: &str) -> Vec<u8> {
        let src: SocketAddr = src.parse().unwrap();
        let dst: SocketAddr = dst.parse().unwrap();
        Builder::with_addresses(Version::Two | command, Protocol::Stream, (src, dst))
            .build()
            .unwrap()
    }

    fn policy() -> ProxyPolicy {
        ProxyPolicy::new(&["127.0.0.1".into(), "10.0.0.0/8".into(), "fd00::/8".into()]).unwrap()
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let h = header(Command::Proxy, "203.0.113.7:5555", "10.1.1.1:7000");
        let lb: SocketAddr = "10.2.3.4:40000".parse().unwrap();
        assert_eq!(
            policy().client_address(lb, &h),
            Ok("203.0.113.7:5555".parse().unwrap())
        );
        let h6 = header(Command::Proxy, "[2001:db8::1]:443", "[fd00::1]:7000");
        let lb6: SocketAddr = "[fd00::2]:1".parse().unwrap();
        assert_eq!(
            policy().client_address(lb6, &h6),
            Ok("[2001:db8::1]:443".parse().unwrap())
        );
        // The prefix says how much more to read: exactly the rest.
        let prefix: [u8; PREFIX_LEN] = h[..PREFIX_LEN].try_into().unwrap();
        assert_eq!(remaining_len(&prefix), Ok(h.len() - PREFIX_LEN));
    }

    #[test]
    fn a_header_from_anyone_else_is_refused() {
        let h = header(Command::Proxy, "203.0.113.7:5555", "10.1.1.1:7000");
        for peer in ["192.0.2.1:1", "127.0.0.2:1", "[2001:db8::5]:1"] {
            assert_eq!(
                policy().client_address(peer.parse().unwrap(), &h),
                Err(ProxyRefusal::Untrusted),
                "{peer}"
            );
        }
        // An IPv4 proxy seen through a dual-stack socket is still trusted.
        assert!(policy().trusts("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!ProxyPolicy::new(&[])
            .unwrap()
            .trusts("127.0.0.1".parse().unwrap()));
        assert!(ProxyPolicy::new(&["not-an-address".into()]).is_err());
    }

    #[test]
    fn local_keeps_the_peer_and_junk_is_refused() {
        let lb: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let local = header(Command::Local, "127.0.0.1:1", "127.0.0.1:2");
        assert_eq!(policy().client_address(lb, &local), Ok(lb));
        let mut prefix = [0u8; PREFIX_LEN];
        prefix[..14].copy_from_slice(b"GET /v1/connec");
        assert_eq!(remaining_len(&prefix), Err(ProxyRefusal::NotProxy));
        let h = header(Command::Proxy, "203.0.113.7:5555", "10.1.1.1:7000");
        let mut v1 = h.clone();
        v1[12] = 0x11;
        let p: [u8; PREFIX_LEN] = v1[..PREFIX_LEN].try_into().unwrap();
        assert_eq!(remaining_len(&p), Err(ProxyRefusal::Malformed));
        let mut long = h.clone();
        long[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        let p: [u8; PREFIX_LEN] = long[..PREFIX_LEN].try_into().unwrap();
        assert_eq!(remaining_len(&p), Err(ProxyRefusal::Malformed));
        assert_eq!(
            policy().client_address(lb, &h[..h.len() - 1]),
            Err(ProxyRefusal::Malformed)
        );
    }
}
