//! The relay phase: what chatd costs per relayed frame, next to nginx
//! relaying the same frames in the same run.
//!
//! Path through chatd: loadgen's authenticated connections open one
//! tunnel each and keep `--relay-window` frames of `--relay-frame-bytes`
//! in flight; a real chatd relays them over its Noise_KK links to an echo
//! "vault" in this process (it speaks the link protocol and sends every
//! tunnel frame back), and back to the client. Path through nginx: the
//! same number of WebSocket connections through nginx (the Debian
//! package, one process, `proxy_pass` with the WebSocket upgrade) to a
//! WebSocket echo in this process, same frame size, same window.
//!
//! Measured for each server over the timed part only: its CPU time (from
//! /proc), and when `perf` can count the `raw_syscalls:sys_enter`
//! tracepoint, its system calls. A frame is one payload's round trip, so
//! each server handles it twice (once each way) in both set-ups.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use backup_client::connection::Endpoint;
use e2ebk_benches::latency::Latencies;
use e2ebk_benches::load::{self, connect_authenticated, ws_connect, Held};
use e2ebk_benches::{noise, procfs};
use futures_util::{FutureExt, SinkExt, StreamExt};
use protocol_spec::ids::{AccountId, EnrolmentCode, TunnelId};
use protocol_spec::keys::{PublicKey, StaticSecret};
use protocol_spec::limits::{MAX_FRAME, MAX_LINK_RECORD};
use protocol_spec::messages::chatd::{ClientFrame, ServerFrame};
use protocol_spec::messages::link::{LinkFrame, LinkWelcome, VaultLinkFrame};
use protocol_spec::messages::WireMessage;
use protocol_spec::noise::Responder;
use service_kit::records::{push_record_with, read_record, write_record, RecordReader};
use testkit::chatd::{ChatdFixture, ChatdOptions};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::stack::{enrol, load_limits};
use crate::{progress, Args};

/// One server's share of the relay phase.
#[derive(Debug, Default)]
pub(crate) struct RelayRun {
    pub(crate) frames: usize,
    pub(crate) failures: usize,
    pub(crate) first_error: Option<String>,
    pub(crate) elapsed: Duration,
    pub(crate) cpu: Duration,
    pub(crate) syscalls: Option<u64>,
    /// Each frame's round trip, from its send to its echo.
    pub(crate) latencies: Latencies,
}

impl RelayRun {
    /// `None` when the server used less than one clock tick of CPU (a run
    /// too short to measure).
    pub(crate) fn cpu_per_frame(&self) -> Option<f64> {
        (!self.cpu.is_zero()).then(|| self.cpu.as_secs_f64() / self.frames.max(1) as f64)
    }

    pub(crate) fn per_core_sec(&self) -> Option<f64> {
        self.cpu_per_frame().map(|c| 1.0 / c)
    }

    pub(crate) fn wall_rate(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(crate) fn syscalls_per_frame(&self) -> Option<f64> {
        self.syscalls.map(|s| s as f64 / self.frames.max(1) as f64)
    }
}

/// Both runs; nginx's is an error text when it could not run.
#[derive(Debug)]
pub(crate) struct RelayResult {
    pub(crate) chatd: RelayRun,
    pub(crate) nginx: Result<RelayRun, String>,
}

pub(crate) fn relay_phase(
    args: &Args,
    rt: &Runtime,
    limit: Duration,
    ticks: u64,
) -> anyhow::Result<RelayResult> {
    let payload = vec![0x5a; args.relay_frame_bytes.clamp(1, 60 * 1024)];
    let conns = args.relay_connections.clamp(1, 1000);
    let per_conn = args.relay_frames.div_ceil(conns);

    // chatd, linked to the echo vault instead of the real one.
    let vault_key = noise::random_static();
    let chatd_link_key = noise::random_static();
    let echo = EchoVault::start(vault_key.clone(), chatd_link_key.public_key())?;
    let fixture = ChatdFixture::with_keys(
        &chatd_link_key,
        &vault_key.public_key(),
        &[echo.addr],
        ChatdOptions {
            extra_limits: load_limits(),
            extra_listen: format!("max_connections = {}", conns + 64),
            port: 0,
        },
    );
    let chatd = fixture.spawn();
    let account = AccountId::new("relay-0").context("account id")?;
    let device = noise::random_static();
    let code = EnrolmentCode::new(fixture.invite(account.as_str())).context("enrolment code")?;
    let ep = Endpoint {
        url: chatd.url(),
        chatd_key: fixture.static_key,
        account: account.clone(),
    };
    rt.block_on(enrol(&ep, &device, code))?;
    let prepared =
        load::prepare(conns, &device, &fixture.static_key, &account).map_err(|e| anyhow!(e))?;
    let addr = chatd.addr;
    let held: Vec<Held> = rt.block_on(async {
        let mut held = Vec::with_capacity(conns);
        for p in prepared {
            held.push(
                connect_authenticated(IpAddr::V4(Ipv4Addr::LOCALHOST), addr, p)
                    .await
                    .map_err(|e| anyhow!("connect to chatd: {e}"))?,
            );
        }
        anyhow::Ok(held)
    })?;
    progress(&format!(
        "relay: {} frames of {} bytes through chatd ({conns} connections, {} in flight each)",
        per_conn * conns,
        payload.len(),
        args.relay_window
    ));
    let chatd_run = measure(rt, chatd.pid(), ticks, limit, |deadline| {
        let mut tasks = Vec::new();
        for h in held {
            let payload = payload.clone();
            let window = args.relay_window;
            tasks.push(
                async move { echo_through_chatd(h, per_conn, window, &payload, deadline).await },
            );
        }
        tasks
    });
    drop(chatd);
    drop(echo);

    let nginx_run = match Nginx::start(rt) {
        Ok(nginx) => {
            progress(&format!(
                "relay reference: the same frames through nginx {} to a WebSocket echo",
                nginx.version
            ));
            let nginx_addr = nginx.addr;
            let sockets = rt.block_on(async {
                let mut ws = Vec::with_capacity(conns);
                for _ in 0..conns {
                    ws.push(
                        ws_connect(IpAddr::V4(Ipv4Addr::LOCALHOST), nginx_addr)
                            .await
                            .map_err(|e| format!("connect through nginx: {e}"))?,
                    );
                }
                Ok::<_, String>(ws)
            });
            match sockets {
                Ok(sockets) => Ok(measure(rt, nginx.pid(), ticks, limit, |deadline| {
                    let mut tasks = Vec::new();
                    for ws in sockets {
                        let payload = payload.clone();
                        let window = args.relay_window;
                        tasks.push(async move {
                            echo_through_nginx(ws, per_conn, window, &payload, deadline).await
                        });
                    }
                    tasks
                })),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(format!("{e:#}")),
    };
    Ok(RelayResult {
        chatd: chatd_run,
        nginx: nginx_run,
    })
}

/// Runs the clients `start` makes, all at once, and measures the server
/// `pid` while they run.
fn measure<F, Fut>(rt: &Runtime, pid: u32, ticks: u64, limit: Duration, start: F) -> RelayRun
where
    F: FnOnce(Instant) -> Vec<Fut>,
    Fut: std::future::Future<Output = Result<Latencies, String>> + Send + 'static,
{
    let deadline = Instant::now() + limit;
    let tasks = start(deadline);
    let syscalls = SyscallCount::attach(pid);
    let cpu0 = procfs::cpu_time(pid, ticks).unwrap_or_default();
    let t0 = Instant::now();
    let outcomes = rt.block_on(async {
        let handles: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();
        let mut outcomes = Vec::with_capacity(handles.len());
        for h in handles {
            outcomes.push(h.await.unwrap_or_else(|e| Err(format!("client task: {e}"))));
        }
        outcomes
    });
    let elapsed = t0.elapsed();
    let cpu = procfs::cpu_time(pid, ticks)
        .unwrap_or_default()
        .saturating_sub(cpu0);
    let syscalls = syscalls.and_then(SyscallCount::finish);
    let mut run = RelayRun {
        elapsed,
        cpu,
        syscalls,
        ..RelayRun::default()
    };
    for o in outcomes {
        match o {
            Ok(l) => {
                run.frames += l.count() as usize;
                run.latencies.merge(&l);
            }
            Err(e) => {
                run.failures += 1;
                run.first_error.get_or_insert(e);
            }
        }
    }
    run
}

/// One connection's frames through chatd: opens tunnel 1, then keeps
/// `window` frames in flight until `frames` came back.
async fn echo_through_chatd(
    h: Held,
    frames: usize,
    window: usize,
    payload: &[u8],
    deadline: Instant,
) -> Result<Latencies, String> {
    let Held {
        mut ws,
        mut transport,
        ..
    } = h;
    let tunnel = TunnelId(1);
    let open = ClientFrame::TunnelOpen {
        tunnel,
        handshake: vec![1; 49],
    };
    let sealed = transport.seal(&open.encode()).map_err(|e| e.to_string())?;
    ws.send(Message::Binary(sealed.into()))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let deadline = tokio::time::Instant::from_std(deadline);
    // The echo of the tunnel's handshake.
    loop {
        if let Some(b) = recv_binary(&mut ws, deadline).await? {
            let plain = transport.open(&b, MAX_FRAME).map_err(|e| e.to_string())?;
            match ServerFrame::decode(&plain).map_err(|e| e.to_string())? {
                ServerFrame::TunnelData { .. } => break,
                ServerFrame::TunnelClose { code, .. } => {
                    return Err(format!("tunnel closed: {}", code.label()))
                }
            }
        }
    }
    let (mut sent, mut got) = (0, 0);
    let mut latencies = Latencies::new();
    // Echoes come back in order on one tunnel: the oldest send is theirs.
    let mut in_flight = std::collections::VecDeque::with_capacity(window.max(1));
    while got < frames {
        while sent < frames && sent - got < window.max(1) {
            in_flight.push_back(Instant::now());
            let frame = ClientFrame::TunnelData {
                tunnel,
                payload: payload.to_vec(),
            };
            let sealed = transport.seal(&frame.encode()).map_err(|e| e.to_string())?;
            ws.feed(Message::Binary(sealed.into()))
                .await
                .map_err(|e| format!("send: {e}"))?;
            sent += 1;
        }
        ws.flush().await.map_err(|e| format!("send: {e}"))?;
        let Some(b) = recv_binary(&mut ws, deadline).await? else {
            continue;
        };
        let plain = transport.open(&b, MAX_FRAME).map_err(|e| e.to_string())?;
        match ServerFrame::decode(&plain).map_err(|e| e.to_string())? {
            ServerFrame::TunnelData { payload: p, .. } if p.len() == payload.len() => {
                got += 1;
                if let Some(at) = in_flight.pop_front() {
                    latencies.record(at.elapsed());
                }
            }
            ServerFrame::TunnelData { payload: p, .. } => {
                return Err(format!("echo of {} bytes, sent {}", p.len(), payload.len()))
            }
            ServerFrame::TunnelClose { code, .. } => {
                return Err(format!("tunnel closed: {}", code.label()))
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(latencies)
}

/// The next binary message from chatd (`None` for other kinds).
async fn recv_binary(
    ws: &mut load::Ws,
    deadline: tokio::time::Instant,
) -> Result<Option<tokio_tungstenite::tungstenite::Bytes>, String> {
    match tokio::time::timeout_at(deadline, ws.next()).await {
        Ok(Some(Ok(Message::Binary(b)))) => Ok(Some(b)),
        Ok(Some(Ok(Message::Close(c)))) => Err(format!("chatd closed: {c:?}")),
        Ok(Some(Ok(_))) => Ok(None),
        Ok(Some(Err(e))) => Err(format!("read: {e}")),
        Ok(None) => Err("chatd dropped the connection".to_string()),
        Err(_) => Err("the phase's time limit came first".to_string()),
    }
}

/// One connection's frames through nginx, as [`echo_through_chatd`].
async fn echo_through_nginx(
    mut ws: load::Ws,
    frames: usize,
    window: usize,
    payload: &[u8],
    deadline: Instant,
) -> Result<Latencies, String> {
    let deadline = tokio::time::Instant::from_std(deadline);
    let (mut sent, mut got) = (0, 0);
    let mut latencies = Latencies::new();
    let mut in_flight = std::collections::VecDeque::with_capacity(window.max(1));
    while got < frames {
        while sent < frames && sent - got < window.max(1) {
            in_flight.push_back(Instant::now());
            ws.feed(Message::Binary(payload.to_vec().into()))
                .await
                .map_err(|e| format!("send: {e}"))?;
            sent += 1;
        }
        ws.flush().await.map_err(|e| format!("send: {e}"))?;
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) if b.len() == payload.len() => {
                got += 1;
                if let Some(at) = in_flight.pop_front() {
                    latencies.record(at.elapsed());
                }
            }
            Ok(Some(Ok(Message::Binary(b)))) => {
                return Err(format!("echo of {} bytes, sent {}", b.len(), payload.len()))
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(format!("read: {e}")),
            Ok(None) => return Err("nginx dropped the connection".into()),
            Err(_) => return Err("the phase's time limit came first".into()),
        }
    }
    let _ = ws.close(None).await;
    Ok(latencies)
}

/// A stand-in vault replica on 127.0.0.1: answers chatd's Noise_KK link
/// handshake as the leader and sends every tunnel's frames back (the
/// `Open` handshake as the tunnel's first data). It batches its writes as
/// the real vault's link writer does. Runs on a thread of its own until
/// dropped.
struct EchoVault {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoVault {
    fn start(key: StaticSecret, chatd: PublicKey) -> anyhow::Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind the echo vault")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let thread = std::thread::Builder::new()
            .name("echo-vault".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    let accept = async {
                        while let Ok((stream, _)) = listener.accept().await {
                            tokio::spawn(echo_link(stream, key.clone(), chatd));
                        }
                    };
                    tokio::select! {
                        () = accept => {}
                        _ = stopped => {}
                    }
                });
            })
            .context("spawn the echo vault thread")?;
        Ok(EchoVault {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for EchoVault {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn echo_link(mut stream: TcpStream, key: StaticSecret, chatd: PublicKey) {
    let _ = stream.set_nodelay(true);
    let Ok(Some(m1)) = read_record(&mut stream, MAX_LINK_RECORD, Duration::from_secs(5)).await
    else {
        return;
    };
    let Ok(first) = Responder::link(&key, &chatd).and_then(|r| r.read_first(&m1)) else {
        return;
    };
    let welcome = LinkWelcome {
        replica_id: "echo".into(),
        leader: true,
        leader_hint: None,
        max_tunnels: 100_000,
    };
    let Ok((m2, mut transport)) = first.state.write_response(&welcome.encode()) else {
        return;
    };
    if write_record(&mut stream, &m2).await.is_err() {
        return;
    }
    let (r, mut w) = stream.into_split();
    let mut records = RecordReader::new(r, MAX_LINK_RECORD, Duration::from_secs(10));
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        let Ok(Some(record)) = records.next().await else {
            return;
        };
        let mut record = Some(record.to_vec());
        // Everything already buffered is answered in the same write.
        while let Some(rec) = record.take() {
            let Ok(plain) = transport.open(&rec, MAX_FRAME) else {
                return;
            };
            let reply = match LinkFrame::decode(&plain) {
                Ok(LinkFrame::Open {
                    tunnel, handshake, ..
                }) => Some(VaultLinkFrame::Data {
                    tunnel,
                    payload: handshake,
                }),
                Ok(LinkFrame::Data { tunnel, payload }) => {
                    Some(VaultLinkFrame::Data { tunnel, payload })
                }
                Ok(LinkFrame::Close { .. }) => None,
                Err(_) => return,
            };
            if let Some(reply) = reply {
                let sealed = push_record_with(&mut out, |o| {
                    transport
                        .seal_into(&reply.encode(), o)
                        .map_err(std::io::Error::other)
                });
                if sealed.is_err() {
                    return;
                }
            }
            if let Some(Ok(Some(next))) = records.next().now_or_never() {
                record = Some(next.to_vec());
            }
        }
        if !out.is_empty() {
            if w.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// nginx (the Debian package) as one process on a free loopback port,
/// proxying WebSocket upgrades to a WebSocket echo on a thread of this
/// process.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    version: String,
    _dir: tempfile::TempDir,
    _echo: WsEcho,
}

impl Nginx {
    fn start(rt: &Runtime) -> anyhow::Result<Self> {
        let bin = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| {
                anyhow!("nginx not found: install the Debian package nginx-light (apt-get install nginx-light)")
            })?;
        let version = Command::new(bin)
            .arg("-v")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stderr)
                    .trim()
                    .replace("nginx version: ", "")
            })
            .unwrap_or_default();
        let echo = WsEcho::start(rt)?;
        let dir = tempfile::Builder::new()
            .prefix("e2ebk-nginx-")
            .tempdir()
            .context("temporary folder for nginx")?;
        let port = free_port()?;
        let d = dir.path().display();
        let conf = format!(
            "worker_processes 1;\n\
             master_process off;\n\
             daemon off;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               tcp_nodelay on;\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 location / {{\n\
                   proxy_pass http://{echo};\n\
                   proxy_http_version 1.1;\n\
                   proxy_set_header Upgrade $http_upgrade;\n\
                   proxy_set_header Connection \"upgrade\";\n\
                   proxy_read_timeout 3600s;\n\
                   proxy_send_timeout 3600s;\n\
                 }}\n\
               }}\n\
             }}\n",
            echo = echo.addr
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).context("write nginx.conf")?;
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {bin}"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut nginx = Nginx {
            child,
            addr,
            version,
            _dir: dir,
            _echo: echo,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let log = std::fs::read_to_string(nginx._dir.path().join("error.log"))
                    .unwrap_or_default();
                bail!("nginx exited ({status}): {}", log.trim());
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on {addr} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago (nginx must be told its port).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(l.local_addr()?.port())
}

/// The WebSocket echo behind nginx: every binary message goes back, and
/// messages already read leave in one write, as the echo vault does.
struct WsEcho {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl WsEcho {
    fn start(rt: &Runtime) -> anyhow::Result<Self> {
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .context("bind the WebSocket echo")?;
        let addr = listener.local_addr()?;
        let task = rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let config = WebSocketConfig::default()
                        .read_buffer_size(64 * 1024)
                        .max_message_size(Some(64 * 1024));
                    let Ok(mut ws) =
                        tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
                    else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        let mut msg = Some(msg);
                        while let Some(m) = msg.take() {
                            if m.is_binary() && ws.feed(m).await.is_err() {
                                return;
                            }
                            if let Some(Some(Ok(next))) = ws.next().now_or_never() {
                                msg = Some(next);
                            }
                        }
                        if ws.flush().await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(WsEcho { addr, task })
    }
}

impl Drop for WsEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `perf stat` counting a process's system calls, when perf can.
struct SyscallCount {
    child: Child,
    out: tempfile::NamedTempFile,
}

impl SyscallCount {
    fn attach(pid: u32) -> Option<Self> {
        let out = tempfile::NamedTempFile::new().ok()?;
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(out.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        // perf needs a moment to attach to every thread.
        std::thread::sleep(Duration::from_millis(300));
        Some(SyscallCount { child, out })
    }

    fn finish(mut self) -> Option<u64> {
        // perf prints its counts on SIGINT.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let text = std::fs::read_to_string(self.out.path()).ok()?;
        text.lines()
            .find(|l| l.contains("raw_syscalls:sys_enter"))
            .and_then(|l| l.split(',').next())
            .and_then(|n| n.trim().parse().ok())
    }
}
