//! The per-connection memory reference: a bare tokio-tungstenite server
//! with chatd's buffer sizes, run as a child process of loadgen itself
//! (`--bare-ws-server`) so its RSS is its own.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The bare tokio-tungstenite server, in its own process so its RSS is
/// its own.
pub(crate) struct BareWsChild {
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl BareWsChild {
    pub(crate) fn spawn(timeout_secs: u64) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("own executable")?;
        let mut child = Command::new(exe)
            .arg("--bare-ws-server")
            .arg("--phase-timeout-secs")
            .arg(timeout_secs.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn the bare WebSocket server")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("read the bare server's port")?;
        let port: u16 = line
            .trim()
            .parse()
            .with_context(|| format!("bare server printed {line:?}, not a port"))?;
        Ok(BareWsChild {
            child,
            addr: SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn stop(&mut self) {
        // Closing its stdin tells it to exit; kill is the fallback.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BareWsChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Child mode: a plain tokio-tungstenite server with chatd's buffer sizes
/// that accepts WebSocket connections on 127.0.0.1 and reads them until
/// they close. Exits when its stdin closes or after `max_secs`.
pub(crate) fn bare_ws_server(max_secs: u64) -> anyhow::Result<()> {
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind 127.0.0.1:0")?;
        let port = listener.local_addr().context("local address")?.port();
        let mut out = std::io::stdout();
        writeln!(out, "{port}").context("print the port")?;
        out.flush().context("flush stdout")?;
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(4096);
        let accept = async {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    if let Ok(mut ws) =
                        tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
                    {
                        while let Some(Ok(_)) = ws.next().await {}
                    }
                });
            }
        };
        tokio::select! {
            () = accept => {}
            () = tokio::time::sleep(Duration::from_secs(max_secs.max(1))) => {}
        }
        anyhow::Ok(())
    })?;
    std::process::exit(0);
}
