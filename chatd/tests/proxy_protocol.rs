//! PROXY protocol v2 through a real sender: HAProxy in TCP mode with
//! `send-proxy-v2` in front of the real chatd, clients on distinct
//! loopback addresses. chatd's per-address handshake limit must apply to
//! each client's own address, not to the balancer's; a header from an
//! untrusted source, or no header from the balancer, is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use protocol_spec::keys::{PublicKey, StaticSecret};
use testkit::chatd::{ChatdFixture, ChatdOptions, ChatdProcess};

/// chatd with PROXY protocol on, trusting only 127.0.0.1 (where HAProxy
/// connects from), and a per-address budget of two handshakes.
fn chatd() -> (ChatdFixture, ChatdProcess) {
    let mut seed = [0u8; 32];
    testkit::fill_random(&mut seed);
    let link = StaticSecret::from_bytes(seed);
    // No vault: the limit is checked before the upgrade, and chatd stays up
    // without one.
    let nowhere = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let fixture = ChatdFixture::with_keys(
        &link,
        &PublicKey([7; 32]),
        &[nowhere],
        ChatdOptions {
            extra_listen: "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]".into(),
            extra_limits: "handshakes_per_ip_per_sec = 0.001\nhandshake_burst = 2.0".into(),
            ..ChatdOptions::default()
        },
    );
    let proc = fixture.spawn();
    (fixture, proc)
}

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(from, 0).into())
        .expect("bind a loopback source address");
    socket.connect(&to.into()).expect("connect");
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends a WebSocket upgrade request and returns the HTTP status, or None
/// if the connection closed without an answer.
fn upgrade(mut s: TcpStream, prefix: &[u8]) -> Option<u16> {
    let request = "GET /v1/connect HTTP/1.1\r\nHost: chatd\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Version: 13\r\n\r\n";
    s.write_all(prefix).unwrap();
    let _ = s.write_all(request.as_bytes());
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// The log without terminal colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn behind_haproxy_the_per_address_limit_sees_each_client() {
    let (_fixture, chatd) = chatd();
    let haproxy = testkit::servers::haproxy_send_proxy_v2(chatd.addr);

    // Client A spends its budget of two, and the third is refused.
    let a = ip("127.0.0.2");
    assert_eq!(upgrade(connect_from(a, haproxy.addr), b""), Some(101));
    assert_eq!(upgrade(connect_from(a, haproxy.addr), b""), Some(101));
    assert_eq!(upgrade(connect_from(a, haproxy.addr), b""), Some(429));
    // Client B, through the same balancer, has a budget of its own: with
    // the balancer's address as the source, it would get 429 too.
    let b = ip("127.0.0.3");
    assert_eq!(upgrade(connect_from(b, haproxy.addr), b""), Some(101));

    // chatd's log names the clients, not the balancer.
    let log = plain(&chatd.log());
    assert!(log.contains("client=127.0.0.2:"), "{log}");
    assert!(log.contains("client=127.0.0.3:"), "{log}");
}

#[test]
fn a_proxy_header_is_believed_only_from_a_trusted_balancer() {
    let (_fixture, chatd) = chatd();
    // A client that connects directly and names someone else's address is
    // refused before anything is read, and so is one without a header.
    let forged = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        ("127.0.0.9:4000".parse::<SocketAddr>().unwrap(), chatd.addr),
    )
    .build()
    .unwrap();
    assert_eq!(
        upgrade(connect_from(ip("127.0.0.5"), chatd.addr), &forged),
        None
    );
    assert_eq!(
        upgrade(connect_from(ip("127.0.0.5"), chatd.addr), b""),
        None
    );
    // The trusted balancer's address without a header is refused as well.
    assert_eq!(
        upgrade(connect_from(ip("127.0.0.1"), chatd.addr), b""),
        None
    );
    // With one, from the trusted address, chatd answers.
    assert_eq!(
        upgrade(connect_from(ip("127.0.0.1"), chatd.addr), &forged),
        Some(101)
    );
    let (_, metrics) = chatd.admin_get("/metrics");
    assert_eq!(
        testkit::metric(
            &metrics,
            "chatd_connections_refused_total{reason=\"proxy_header\"}"
        ),
        3.0,
        "{metrics}"
    );
    let log = plain(&chatd.log());
    assert!(log.contains("client=127.0.0.9:4000"), "{log}");
}
