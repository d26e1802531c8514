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

/// Runs the vault until shutdown: single-node, or a member of a Raft
/// group when `raft.node_id` is set.
pub async fn run(cfg: VaultConfig, shutdown: watch::Receiver<Shutdown>) -> Result<(), Error> {
    let metrics = service_kit::admin::install_metrics()?;
    let health = Health::new();
    let cfg2 = cfg.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let opened = open(&cfg2)?;
        opened.store.bind_mode(&match cfg2.raft.node_id {
            None => "standalone".to_string(),
            Some(n) => format!("raft node {n}"),
        })?;
        Ok::<_, Error>(opened)
    })
    .await
    .map_err(|e| Error::Startup(format!("the start-up task failed: {e}")))??;
    let listeners = Listeners::bind(&cfg).await?;
    match cfg.raft.node_id {
        None => {
            let log: Arc<dyn RecordLog> = Arc::new(LocalLog::new(opened.store.clone()));
            let vault = Arc::new(build_vault(&cfg, &opened, log));
            let (_role_tx, role_rx) = watch::channel(Role {
                leader: true,
                leader_hint: None,
            });
            health.set_ready();
            listeners.announce(&cfg, None);
            serve_links(
                &cfg,
                &opened,
                vault,
                role_rx,
                health,
                metrics,
                axum::Router::new(),
                listeners,
                shutdown,
            )
            .await
        }
        Some(node_id) => {
            run_replicated(cfg, opened, node_id, health, metrics, listeners, shutdown).await
        }
    }
}

/// The link and admin listeners, bound before anything announces them.
pub struct Listeners {
    link: tokio::net::TcpListener,
    admin: tokio::net::TcpListener,
    pub link_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Listeners(link {}, admin {})",
            self.link_addr, self.admin_addr
        )
    }
}

impl Listeners {
    async fn bind(cfg: &VaultConfig) -> Result<Self, Error> {
        let link = tokio::net::TcpListener::bind(&cfg.link.listen)
            .await
            .map_err(|e| Error::io(format!("link listener {}", cfg.link.listen), e))?;
        let link_addr = link
            .local_addr()
            .map_err(|e| Error::io("link listener", e))?;
        let admin = service_kit::admin::bind(&cfg.admin.listen).await?;
        let admin_addr = admin
            .local_addr()
            .map_err(|e| Error::io("admin listener", e))?;
        Ok(Listeners {
            link,
            admin,
            link_addr,
            admin_addr,
        })
    }

    /// One machine-readable line on stdout, so scripts and tests learn the
    /// bound ports (port 0 in the config picks a free one).
    fn announce(&self, cfg: &VaultConfig, raft: Option<SocketAddr>) {
        let raft = raft
            .map(|r| format!(",\"raft\":\"{r}\""))
            .unwrap_or_default();
        println!(
            "{{\"event\":\"listening\",\"replica\":\"{}\",\"link\":\"{}\",\"admin\":\"{}\"{raft}}}",
            cfg.replica_id, self.link_addr, self.admin_addr
        );
    }
}

async fn run_replicated(
    cfg: VaultConfig,
    opened: Opened,
    node_id: u64,
    health: Arc<Health>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    listeners: Listeners,
    shutdown: watch::Receiver<Shutdown>,
) -> Result<(), Error> {
    use crate::raft::{self, admin, network, store};
    let r = &cfg.raft;
    let raft_config = openraft::Config {
        cluster_name: opened.secrets.fleet_id.to_string(),
        heartbeat_interval: r.heartbeat_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_every),
        max_in_snapshot_log_to_keep: r.snapshot_every.min(1000),
        // openraft's 200 ms default covers a whole chunk and, for the last
        // one, the follower's install: far too short for a large store or
        // a link between sites, and a timed-out install restarts from 0.
        install_snapshot_timeout: 30_000,
        snapshot_max_chunk_size: 1 << 20,
        ..Default::default()
    }
    .validate()
    .map_err(|e| Error::Service(service_kit::Error::Config(format!("raft: {e}"))))?;
    let bind_source = match &r.bind_source {
        Some(s) => Some(s.parse().map_err(|_| {
            Error::Service(service_kit::Error::Config(format!(
                "raft.bind_source {s:?} is not an IP address"
            )))
        })?),
        None => None,
    };
    let peer_listener = tokio::net::TcpListener::bind(&r.listen)
        .await
        .map_err(|e| Error::io(format!("raft listener {}", r.listen), e))?;
    let raft_addr = peer_listener
        .local_addr()
        .map_err(|e| Error::io("raft listener", e))?;
    let log_store = store::LogStore::new(&opened.store)?;
    let state_machine = store::StateMachine::new(opened.store.clone());
    let identity = raft::identity::PeerIdentity::load(node_id, &opened.store)?;
    let network = network::PeerNetwork::new(
        opened.secrets.peer_key.clone(),
        identity.clone(),
        bind_source,
    );
    let raft = openraft::Raft::new(
        node_id,
        Arc::new(raft_config),
        network,
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| Error::Startup(format!("raft: {e}")))?;
    tokio::spawn(network::serve(
        peer_listener,
        raft.clone(),
        opened.secrets.peer_key.clone(),
        identity.clone(),
    ));
    let log: Arc<dyn RecordLog> = Arc::new(raft::RaftLog::new(
        raft.clone(),
        opened.store.clone(),
        tokio::runtime::Handle::current(),
        Duration::from_secs(r.commit_timeout_secs),
    ));
    let vault = Arc::new(build_vault(&cfg, &opened, log));
    let role = raft::watch_role(
        &raft,
        health.clone(),
        Duration::from_millis(r.election_timeout_max_ms),
    );
    let me = admin::SelfInfo {
        node_id,
        node: raft::VaultNode {
            raft_addr: r.advertise.clone().unwrap_or_else(|| raft_addr.to_string()),
            link_addr: cfg
                .link
                .advertise
                .clone()
                .unwrap_or_else(|| listeners.link_addr.to_string()),
            admin_addr: listeners.admin_addr.to_string(),
        },
        group: None,
    };
    let extra = admin::routes(raft.clone(), me, identity);
    listeners.announce(&cfg, Some(raft_addr));
    tracing::info!(node_id, %raft_addr, "raft replica started");
    let result = serve_links(
        &cfg, &opened, vault, role, health, metrics, extra, listeners, shutdown,
    )
    .await;
    let _ = raft.shutdown().await;
    result
}

/// Serves the link and admin listeners until shutdown. Shared by the
/// single-node and replicated modes.
#[allow(clippy::too_many_arguments)]
pub async fn serve_links(
    cfg: &VaultConfig,
    opened: &Opened,
    vault: Arc<Vault>,
    role: watch::Receiver<Role>,
    health: Arc<Health>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    extra: axum::Router,
    listeners: Listeners,
    shutdown: watch::Receiver<Shutdown>,
) -> Result<(), Error> {
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
    let Listeners {
        link: listener,
        admin,
        link_addr,
        admin_addr,
    } = listeners;
    let mut admin_shutdown = shutdown.clone();
    let admin_task = tokio::spawn(service_kit::admin::serve(
        admin,
        health.clone(),
        metrics,
        extra,
        async move { service_kit::shutdown::reached(&mut admin_shutdown, Shutdown::Fast).await },
    ));
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
    Ok(())
}
