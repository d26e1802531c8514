//! The running chatd: listener (optionally SO_REUSEPORT), accept loop with
//! a connection cap, vault links, admin listener, and shutdown in phases:
//! SIGTERM → not ready, new upgrades get 503, connections drain (close
//! 4011 once their in-flight tunnel requests are answered, or at the drain
//! deadline) → exit; SIGINT → close 1001 everywhere → exit.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protocol_spec::keys::PublicKey;
use service_kit::admin::Health;
use service_kit::shutdown::Shutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ChatdConfig;
use crate::conn::{self, Frontend};
use crate::directory::{Directory, Failpoint, SqliteDirectory, FAILPOINT_VAR};
use crate::leader::VaultLinks;
use crate::proxy_protocol::{self, ProxyPolicy, ProxyRefusal};
use crate::rate_limits::{AccountLimits, SourceLimiter};
use crate::revocations::RevocationFeed;
use crate::vault_link::LinkSettings;
use crate::{keys, Error};

fn bind(addr: &str, reuse_port: bool) -> Result<TcpListener, Error> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| Error::Config(format!("listen.addr {addr:?} is not host:port")))?;
    let domain = socket2::Domain::for_address(addr);
    let bind_err = |e: std::io::Error| Error::Bind(format!("{addr}: {e}"));
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(bind_err)?;
    socket.set_reuse_address(true).map_err(bind_err)?;
    if reuse_port {
        socket.set_reuse_port(true).map_err(bind_err)?;
    }
    socket.set_nonblocking(true).map_err(bind_err)?;
    socket.bind(&addr.into()).map_err(bind_err)?;
    socket.listen(4096).map_err(bind_err)?;
    TcpListener::from_std(socket.into()).map_err(bind_err)
}

/// Runs chatd until shutdown.
pub async fn run(cfg: ChatdConfig, shutdown: watch::Receiver<Shutdown>) -> Result<(), Error> {
    let metrics = service_kit::admin::install_metrics(&crate::metrics::table())?;
    let health = Health::new();
    let static_key = keys::load(&cfg.static_key_path())?;
    let link_key = keys::load(&cfg.link_key_path())?;
    let vault_key = PublicKey::from_hex(&cfg.vault.link_key).map_err(|_| {
        Error::Config(
            "vault.link_key must be the vault's 64-hex-digit link key (hsm-vault keys show)".into(),
        )
    })?;
    let dir_path = cfg.directory_path();
    let directory = tokio::task::spawn_blocking(move || SqliteDirectory::open(&dir_path))
        .await
        .map_err(|e| Error::Directory(e.to_string()))??;
    let directory: Arc<dyn Directory> = Arc::new(with_failpoint_from_env(directory)?);
    let revocations = RevocationFeed::start(directory.clone(), shutdown.clone()).await?;
    let links = VaultLinks::start(
        LinkSettings {
            replicas: cfg.vault.replicas.clone(),
            vault_key,
            chatd_key: link_key,
            instance: cfg.instance.clone(),
            links: cfg.vault.links,
            connect_timeout: Duration::from_secs(cfg.vault.connect_timeout_secs),
            open_wait: Duration::from_secs(cfg.vault.open_wait_secs),
        },
        shutdown.clone(),
    );
    let listener = bind(&cfg.listen.addr, cfg.listen.reuse_port)?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Bind(e.to_string()))?;
    let admin = service_kit::admin::bind(&cfg.admin.listen).await?;
    let admin_addr = admin.local_addr().map_err(|e| Error::Bind(e.to_string()))?;
    let frontend = Arc::new(Frontend {
        sources: SourceLimiter::new(
            cfg.limits.handshakes_per_ip_per_sec,
            cfg.limits.handshake_burst,
        ),
        accounts: Arc::new(AccountLimits::new(
            cfg.limits.max_connections_per_account,
            cfg.limits.vault_ops_per_minute,
        )),
        cfg: cfg.clone(),
        static_key,
        directory,
        revocations,
        links: links.clone(),
        shutdown: shutdown.clone(),
        connections: AtomicUsize::new(0),
        session_limits: Arc::new(conn::session_limits(&cfg)),
    });

    let mut admin_shutdown = shutdown.clone();
    let admin_task = tokio::spawn(service_kit::admin::serve(
        admin,
        health.clone(),
        metrics,
        axum::Router::new(),
        async move { service_kit::shutdown::reached(&mut admin_shutdown, Shutdown::Fast).await },
    ));
    health.set_ready();
    println!(
        "{{\"event\":\"listening\",\"instance\":\"{}\",\"listen\":\"{addr}\",\"admin\":\"{admin_addr}\",\"static_key\":\"{}\"}}",
        cfg.instance,
        frontend.static_key.public_key()
    );
    tracing::info!(%addr, %admin_addr, instance = %cfg.instance, "chatd serving");

    // Housekeeping: prune the per-address limiter.
    let pruner = {
        let frontend = frontend.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(30));
            loop {
                t.tick().await;
                frontend.sources.prune(std::time::Instant::now());
            }
        })
    };

    let proxy = cfg.proxy_policy()?.map(Arc::new);
    accept_loop(listener, frontend.clone(), proxy, health, shutdown.clone()).await;

    // Wait for connections to finish: the drain deadline plus the close
    // handshake, or a short grace on a fast shutdown.
    let grace = if *shutdown.borrow() == Shutdown::Fast {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(cfg.limits.drain_deadline_secs + 7)
    };
    let deadline = tokio::time::Instant::now() + grace;
    let mut shutdown = shutdown;
    while frontend.connections.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline
    {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = shutdown.wait_for(|s| *s == Shutdown::Fast) => {}
        }
    }
    pruner.abort();
    admin_task.abort();
    tracing::info!(
        left = frontend.connections.load(Ordering::SeqCst),
        "chatd stopped"
    );
    Ok(())
}

/// `CHATD_FAILPOINT=NAME` makes this process abort at that point of an
/// enrolment ([`Failpoint::ALL`]), so tests can prove what a crash there
/// preserves. Only builds with the `failpoints` feature (the crate's tests)
/// know it; any other build refuses to start with it set rather than
/// ignore it.
fn with_failpoint_from_env(directory: SqliteDirectory) -> Result<SqliteDirectory, Error> {
    let value = std::env::var_os(FAILPOINT_VAR);
    let Some(point) = Failpoint::from_env_value(value.as_deref(), cfg!(feature = "failpoints"))?
    else {
        return Ok(directory);
    };
    tracing::warn!(
        ?point,
        "{FAILPOINT_VAR} set: this process will abort there (testing only)"
    );
    #[cfg(feature = "failpoints")]
    let directory = directory.with_failpoint(point);
    Ok(directory)
}

/// The client's address: the TCP peer's, or with PROXY protocol on, the one
/// its header names (read within the handshake deadline). `None` refuses
/// the connection.
async fn client_address(
    stream: &mut tokio::net::TcpStream,
    peer: SocketAddr,
    proxy: Option<&ProxyPolicy>,
    frontend: &Frontend,
) -> Option<SocketAddr> {
    let Some(policy) = proxy else {
        tracing::debug!(client = %peer, "connection");
        return Some(peer);
    };
    let deadline = Duration::from_secs(frontend.cfg.limits.handshake_timeout_secs);
    let read = proxy_protocol::read_client_address(stream, peer, policy);
    let outcome = tokio::time::timeout(deadline, read)
        .await
        .unwrap_or(Err(ProxyRefusal::Timeout));
    match outcome {
        Ok(client) => {
            tracing::debug!(client = %client, proxy = %peer, "connection");
            Some(client)
        }
        Err(refusal) => {
            metrics::counter!("chatd_connections_refused_total", "reason" => "proxy_header")
                .increment(1);
            tracing::warn!(%peer, error = %refusal, "connection refused");
            None
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    frontend: Arc<Frontend>,
    proxy: Option<Arc<ProxyPolicy>>,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<Shutdown>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (mut stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, usually: back off briefly.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                if frontend.connections.load(Ordering::SeqCst) >= frontend.cfg.listen.max_connections {
                    metrics::counter!("chatd_connections_refused_total", "reason" => "max_connections").increment(1);
                    drop(stream);
                    continue;
                }
                frontend.connections.fetch_add(1, Ordering::SeqCst);
                let frontend = frontend.clone();
                let proxy = proxy.clone();
                tokio::spawn(async move {
                    if let Some(client) = client_address(&mut stream, peer, proxy.as_deref(), &frontend).await {
                        conn::serve(stream, client, frontend.clone()).await;
                    }
                    frontend.connections.fetch_sub(1, Ordering::SeqCst);
                });
            }
            changed = shutdown.changed() => {
                let level = if changed.is_err() { Shutdown::Fast } else { *shutdown.borrow_and_update() };
                match level {
                    Shutdown::Running => {}
                    Shutdown::Drain => {
                        // Keep accepting so new upgrades get a clear 503.
                        health.set_not_ready("draining");
                    }
                    Shutdown::Fast => return,
                }
                if level == Shutdown::Drain && frontend.connections.load(Ordering::SeqCst) == 0 {
                    return;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(100)), if *shutdown.borrow() == Shutdown::Drain => {
                if frontend.connections.load(Ordering::SeqCst) == 0 {
                    return;
                }
            }
        }
    }
}
