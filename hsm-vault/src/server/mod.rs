//! The running vault: wires the HSM, the fleet secrets, the store and the
//! core to the chatd link listener and the admin listener.

pub mod link;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol_spec::keys::PublicKey;
use service_kit::admin::Health;
use service_kit::shutdown::Shutdown;
use tokio::sync::watch;

use crate::config::VaultConfig;
use crate::core::{Failpoint, Platform, Vault, VaultParams};
use crate::entropy::OsEntropy;
use crate::hsm::Hsm;
use crate::log::{LocalLog, RecordLog};
use crate::secrets::FleetSecrets;
use crate::store::RecordStore;
use crate::Error;
use link::{JobContext, LinkContext, Role};

/// What start-up opened, before any listener exists.
pub struct Opened {
    pub hsm: Arc<Hsm>,
    pub secrets: FleetSecrets,
    pub store: Arc<RecordStore>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened").finish_non_exhaustive()
    }
}

/// Opens the HSM, unseals the fleet secrets and opens the store, in that
/// order, stopping at the first problem with its message. Blocking.
pub fn open(cfg: &VaultConfig) -> Result<Opened, Error> {
    let pin = cfg.user_pin()?;
    let hsm = Arc::new(Hsm::open(&cfg.hsm, &pin)?);
    let secrets = FleetSecrets::unseal_from_file(hsm.as_ref(), &cfg.fleet_secrets_path())?;
    let store = Arc::new(RecordStore::open(&cfg.store_path())?);
    Ok(Opened {
        hsm,
        secrets,
        store,
    })
}

/// Builds the vault core over the opened HSM and a log.
pub fn build_vault(cfg: &VaultConfig, opened: &Opened, log: Arc<dyn RecordLog>) -> Vault {
    let vault = Vault::new(
        Platform {
            sealer: opened.hsm.clone(),
            log,
            entropy: Arc::new(OsEntropy),
        },
        opened.secrets.opaque_setup.clone(),
        VaultParams {
            fleet_id: opened.secrets.fleet_id.clone(),
            max_attempts: cfg.max_attempts,
            login_timeout: Duration::from_secs(cfg.login_timeout_secs),
        },
    );
    match failpoint_from_env() {
        Some(point) => {
            tracing::warn!(
                ?point,
                "HSM_VAULT_FAILPOINT set: this process will abort there (testing only)"
            );
            vault.with_failpoint(Box::new(move |p| {
                if p == point {
                    std::process::abort();
                }
            }))
        }
        None => vault,
    }
}

/// `HSM_VAULT_FAILPOINT=attempt-committed|reset-committed` makes the process
/// abort at that point, so tests can prove what a crash there preserves.
fn failpoint_from_env() -> Option<Failpoint> {
    match std::env::var("HSM_VAULT_FAILPOINT").ok()?.as_str() {
        "attempt-committed" => Some(Failpoint::AttemptCommitted),
        "reset-committed" => Some(Failpoint::ResetCommitted),
        _ => None,
    }
}

/// Runs a single-node vault until shutdown.
pub async fn run(cfg: VaultConfig, shutdown: watch::Receiver<Shutdown>) -> Result<(), Error> {
    let metrics = service_kit::admin::install_metrics()?;
    let health = Health::new();
    let cfg2 = cfg.clone();
    let opened = tokio::task::spawn_blocking(move || open(&cfg2))
        .await
        .map_err(|e| Error::Storage(format!("start-up task failed: {e}")))??;
    let log: Arc<dyn RecordLog> = Arc::new(LocalLog::new(opened.store.clone()));
    let vault = Arc::new(build_vault(&cfg, &opened, log));
    let (_role_tx, role_rx) = watch::channel(Role {
        leader: true,
        leader_hint: None,
    });
    let link_addr = serve_links(
        &cfg,
        &opened,
        vault,
        role_rx,
        health.clone(),
        metrics,
        shutdown,
    )
    .await?;
    let _ = link_addr;
    Ok(())
}

/// Binds the link and admin listeners, announces them, and serves until
/// shutdown. Shared by the single-node and replicated modes.
pub async fn serve_links(
    cfg: &VaultConfig,
    opened: &Opened,
    vault: Arc<Vault>,
    role: watch::Receiver<Role>,
    health: Arc<Health>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    shutdown: watch::Receiver<Shutdown>,
) -> Result<SocketAddr, Error> {
    let chatd_keys = cfg
        .link
        .chatd_keys
        .iter()
        .map(|k| PublicKey::from_hex(k))
        .collect::<Result<Vec<_>, _>>()?;
    if chatd_keys.is_empty() {
        tracing::warn!("link.chatd_keys is empty: no chatd can connect");
    }
    let jobs = Arc::new(JobContext {
        vault,
        tunnel_key: opened.secrets.tunnel_key.clone(),
        fleet_id: opened.secrets.fleet_id.clone(),
        max_attempts: cfg.max_attempts,
    });
    let workers = Arc::new(link::worker_pool(
        jobs.clone(),
        cfg.workers,
        cfg.max_queued_requests,
    ));
    let ctx = Arc::new(LinkContext {
        jobs,
        workers: workers.clone(),
        link_key: opened.secrets.link_key.clone(),
        chatd_keys,
        replica_id: cfg.replica_id.clone(),
        max_tunnels: cfg.link.max_tunnels_per_link,
        tunnel_idle_timeout: Duration::from_secs(cfg.link.tunnel_idle_timeout_secs),
        handshake_timeout: Duration::from_secs(cfg.link.handshake_timeout_secs),
        role,
    });
    let listener = tokio::net::TcpListener::bind(&cfg.link.listen)
        .await
        .map_err(|e| Error::io(format!("link listener {}", cfg.link.listen), e))?;
    let link_addr = listener
        .local_addr()
        .map_err(|e| Error::io("link listener", e))?;
    let admin = service_kit::admin::bind(&cfg.admin.listen).await?;
    let admin_addr = admin
        .local_addr()
        .map_err(|e| Error::io("admin listener", e))?;

    let mut admin_shutdown = shutdown.clone();
    let admin_task = tokio::spawn(service_kit::admin::serve(
        admin,
        health.clone(),
        metrics,
        async move { service_kit::shutdown::reached(&mut admin_shutdown, Shutdown::Fast).await },
    ));
    health.set_ready();
    // One machine-readable line on stdout, so scripts and tests learn the
    // bound ports (port 0 in the config picks a free one).
    println!(
        "{{\"event\":\"listening\",\"replica\":\"{}\",\"link\":\"{link_addr}\",\"admin\":\"{admin_addr}\"}}",
        cfg.replica_id
    );
    tracing::info!(%link_addr, %admin_addr, replica = %cfg.replica_id, fleet = %opened.secrets.fleet_id, "vault serving");

    let mut drain_watch = shutdown.clone();
    let health_drain = health.clone();
    tokio::spawn(async move {
        service_kit::shutdown::reached(&mut drain_watch, Shutdown::Drain).await;
        health_drain.set_not_ready("draining");
    });
    link::serve(listener, ctx, cfg.link.max_links, shutdown).await;
    admin_task.abort();
    // Let queued work finish; every commit it makes is durable anyway.
    if let Ok(pool) = Arc::try_unwrap(workers) {
        let _ = tokio::task::spawn_blocking(move || pool.shutdown()).await;
    }
    tracing::info!("vault stopped");
    Ok(link_addr)
}
