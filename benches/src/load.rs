//! The load generator's client side: many WebSocket connections to one
//! loopback server, opened by a bounded number of concurrent tasks, with
//! the client's own Noise work split so that the expensive half (message 1)
//! is done before the clock starts.
//!
//! A chatd connection here is exactly what `backup_client::connection`
//! does at connect time (WebSocket upgrade to `/v1/connect`, Noise_IK
//! message 1 carrying a `ClientHello`, message 2 carrying a `ServerHello`),
//! without the tunnel machinery and with a small read buffer, so that one
//! process can hold ten thousand of them cheaply.

use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use protocol_spec::ids::AccountId;
use protocol_spec::keys::{PublicKey, StaticSecret};
use protocol_spec::messages::chatd::{ClientHello, ServerHello};
use protocol_spec::messages::WireMessage;
use protocol_spec::noise::{AwaitingResponse, Initiator, Transport};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::latency::Latencies;

/// A client WebSocket over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;

/// The client's WebSocket settings: 4 KiB buffers (the loadgen holds many
/// idle connections; this is its memory, not the server's).
pub fn client_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .max_message_size(Some(64 * 1024))
}

/// Source addresses to spread client sockets over: `127.0.0.2`,
/// `127.0.0.3`, ... (`count` of them), so that tens of thousands of
/// connections to one port never run out of ephemeral ports, even with
/// earlier runs' sockets in TIME_WAIT.
pub fn source_ips(count: usize) -> Vec<IpAddr> {
    (0..count.clamp(1, 250))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
        .collect()
}

/// A TCP connection from `src` (port chosen by the kernel) to `dst`.
pub async fn tcp_from(src: IpAddr, dst: SocketAddr) -> Result<TcpStream, String> {
    let sock = match dst {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    sock.bind(SocketAddr::new(src, 0))
        .map_err(|e| format!("bind {src}: {e}"))?;
    let stream = sock
        .connect(dst)
        .await
        .map_err(|e| format!("connect {dst}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A WebSocket upgrade to `ws://dst/v1/connect` from `src`.
pub async fn ws_connect(src: IpAddr, dst: SocketAddr) -> Result<Ws, String> {
    let stream = tcp_from(src, dst).await?;
    let url = format!("ws://{dst}/v1/connect");
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(client_ws_config()))
            .await
            .map_err(|e| format!("WebSocket upgrade: {e}"))?;
    Ok(ws)
}

/// Noise_IK message 1 and the state that reads message 2, built before the
/// timed part.
pub struct Prepared {
    pub first: Vec<u8>,
    pub waiting: AwaitingResponse,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("first_len", &self.first.len())
            .finish_non_exhaustive()
    }
}

/// `n` prepared handshakes of `device` for `account` to `chatd_key`.
pub fn prepare(
    n: usize,
    device: &StaticSecret,
    chatd_key: &PublicKey,
    account: &AccountId,
) -> Result<Vec<Prepared>, String> {
    let hello = ClientHello {
        account: account.clone(),
        enrolment_code: None,
        client_software: "e2ebk-loadgen".into(),
    }
    .encode();
    (0..n)
        .map(|_| {
            let (first, waiting) = Initiator::client_chatd(device, chatd_key)
                .and_then(|i| i.write_first(&hello))
                .map_err(|e| format!("Noise message 1: {e}"))?;
            Ok(Prepared { first, waiting })
        })
        .collect()
}

/// An authenticated connection, held open and never read (idle).
pub struct Held {
    pub ws: Ws,
    pub transport: Transport,
    pub hello: ServerHello,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").finish_non_exhaustive()
    }
}

/// Connects to chatd and completes the Noise_IK handshake of `p`.
pub async fn connect_authenticated(
    src: IpAddr,
    dst: SocketAddr,
    p: Prepared,
) -> Result<Held, String> {
    let mut ws = ws_connect(src, dst).await?;
    ws.send(Message::Binary(p.first.into()))
        .await
        .map_err(|e| format!("send message 1: {e}"))?;
    let m2 = loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => break b,
            Some(Ok(Message::Close(c))) => {
                return Err(format!(
                    "chatd closed the connection: {}",
                    c.map_or_else(|| "no code".into(), |f| format!("{} {}", f.code, f.reason))
                ))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("read message 2: {e}")),
            None => return Err("connection dropped before message 2".into()),
        }
    };
    let (payload, transport) = p
        .waiting
        .read_response(&m2)
        .map_err(|e| format!("message 2 did not verify: {e}"))?;
    let hello = ServerHello::decode(&payload).map_err(|e| format!("ServerHello: {e}"))?;
    Ok(Held {
        ws,
        transport,
        hello,
    })
}

/// What [`open_many`] achieved.
#[derive(Debug)]
pub struct Opened<T> {
    pub held: Vec<T>,
    pub failures: usize,
    pub first_error: Option<String>,
    /// From the first attempt to the last completion.
    pub elapsed: Duration,
    /// How long each successful connect took.
    pub latencies: Latencies,
}

/// Runs `connect` once for every item with at most `concurrency` in flight
/// (no retries), stopping early at `deadline`. Item `i` gets the source
/// address `sources[i % sources.len()]`.
pub async fn open_many<I, T, F, Fut>(
    items: Vec<I>,
    sources: &[IpAddr],
    concurrency: usize,
    deadline: Instant,
    connect: F,
) -> Opened<T>
where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(IpAddr, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, String>> + Send,
{
    let total = items.len();
    let queue: Arc<Mutex<VecDeque<(usize, I)>>> =
        Arc::new(Mutex::new(items.into_iter().enumerate().collect()));
    let held: Arc<Mutex<Vec<T>>> = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let errors: Arc<Mutex<(usize, Option<String>)>> = Arc::new(Mutex::new((0, None)));
    let latencies: Arc<Mutex<Latencies>> = Arc::default();
    let connect = Arc::new(connect);
    let sources: Arc<Vec<IpAddr>> = Arc::new(if sources.is_empty() {
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
    } else {
        sources.to_vec()
    });
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut tasks = Vec::new();
    for _ in 0..concurrency.clamp(1, total.max(1)) {
        let (queue, held, errors, connect, sources, all_latencies) = (
            queue.clone(),
            held.clone(),
            errors.clone(),
            connect.clone(),
            sources.clone(),
            latencies.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::new();
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some((i, item)) = next else { break };
                let src = sources[i % sources.len()];
                let began = Instant::now();
                let outcome = match tokio::time::timeout_at(deadline, connect(src, item)).await {
                    Ok(r) => r,
                    Err(_) => Err("deadline reached".into()),
                };
                match outcome {
                    Ok(t) => {
                        latencies.record(began.elapsed());
                        held.lock().unwrap_or_else(|p| p.into_inner()).push(t);
                    }
                    Err(e) => {
                        let mut errs = errors.lock().unwrap_or_else(|p| p.into_inner());
                        errs.0 += 1;
                        errs.1.get_or_insert(e);
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            all_latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .merge(&latencies);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    let held = std::mem::take(&mut *held.lock().unwrap_or_else(|p| p.into_inner()));
    let (mut failures, first_error) =
        std::mem::take(&mut *errors.lock().unwrap_or_else(|p| p.into_inner()));
    // Items never attempted because the deadline came first.
    failures += queue.lock().unwrap_or_else(|p| p.into_inner()).len();
    let latencies = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    Opened {
        held,
        failures,
        first_error,
        elapsed,
        latencies,
    }
}
