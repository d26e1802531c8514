//! The running vault: one [`Replica`], opened from its configuration and
//! then served.
//!
//! [`Replica::open`] opens the HSM, unseals the fleet secrets, opens the
//! store and binds the listeners, in that order, stopping at the first
//! problem with its message; it then builds the core over the replica's way
//! of committing — its own fsynced store ([`Commits::Standalone`]) or a Raft
//! group ([`Commits::Raft`]). [`Replica::serve`] runs the chatd link
//! listener ([`link`]), whose tunnels ([`tunnels`]) hand work to the worker
//! pool ([`workers`], [`jobs`]), and the admin listener, until shutdown.

pub mod jobs;
pub mod link;
pub mod tunnels;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use openraft::Raft;
use protocol_spec::keys::PublicKey;
use service_kit::admin::Health;
use service_kit::shutdown::Shutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::VaultConfig;
use crate::control::{self, membership::Membership, protocol::SelfInfo, server::ControlContext};
use crate::core::{Failpoint, Platform, Vault, VaultParams};
use crate::entropy::{Entropy, OsEntropy};
use crate::hsm::Hsm;
use crate::raft::role::{self, Role};
use crate::raft::{self, network, peer_service, storage, VaultRaft};
use crate::secrets::FleetSecrets;
use crate::state::disk::DiskHealth;
use crate::state::{LocalRecords, RecordStore, Records};
use crate::Error;
use jobs::JobContext;
use link::LinkContext;
use tunnels::TableSettings;

/// Runs the vault until shutdown: opens the replica, then serves it.
pub async fn run(cfg: VaultConfig, shutdown: watch::Receiver<Shutdown>) -> Result<(), Error> {
    Replica::open(cfg).await?.serve(shutdown).await
}

/// How this replica makes commands durable.
pub enum Commits {
    /// Its own fsynced store; always the leader. (The sender keeps the
    /// role's channel open: links end when it closes.)
    Standalone { _role: watch::Sender<Role> },
    /// A member of a Raft group: commits need a majority.
    Raft {
        raft: Raft<VaultRaft>,
        /// Where openraft's tasks run; stopped when this is dropped.
        _thread: raft::thread::RaftThread,
        /// The operators' control plane, and its bound listener.
        control: Arc<ControlContext>,
        /// Taken when serving starts.
        control_listener: Option<TcpListener>,
        /// Where the peer listener is bound.
        peer_addr: SocketAddr,
    },
}

impl std::fmt::Debug for Commits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Commits::Standalone { .. } => f.write_str("Standalone"),
            Commits::Raft { peer_addr, .. } => write!(f, "Raft(peers on {peer_addr})"),
        }
    }
}

/// One opened replica, ready to serve.
pub struct Replica {
    cfg: VaultConfig,
    secrets: FleetSecrets,
    vault: Arc<Vault>,
    commits: Commits,
    role: watch::Receiver<Role>,
    health: Arc<Health>,
    metrics: PrometheusHandle,
    link: TcpListener,
    admin: TcpListener,
    /// Whether the store's disk failed (the replica then stops).
    disk: Arc<DiskHealth>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("replica_id", &self.cfg.replica_id)
            .field("commits", &self.commits)
            .finish_non_exhaustive()
    }
}

/// What the blocking part of start-up opened.
struct Opened {
    hsm: Arc<Hsm>,
    secrets: FleetSecrets,
    store: Arc<RecordStore>,
}

/// Opens the HSM, unseals the fleet secrets and opens the store, in that
/// order, and ties the store to this configuration's mode. Blocking.
fn open_blocking(cfg: &VaultConfig) -> Result<Opened, Error> {
    let pin = cfg.user_pin()?;
    let hsm = Arc::new(Hsm::open(&cfg.hsm, &pin)?);
    let secrets = FleetSecrets::unseal_from_file(hsm.as_ref(), &cfg.fleet_secrets_path())?;
    cfg.check_fleet_params(&secrets.params)?;
    let store = Arc::new(RecordStore::open(&cfg.store_path())?);
    store.bind_mode(&match cfg.raft.node_id {
        None => "standalone".to_string(),
        Some(n) => format!("raft node {n}"),
    })?;
    Ok(Opened {
        hsm,
        secrets,
        store,
    })
}

impl Replica {
    /// Opens everything start-up needs, stopping at the first problem with
    /// its message; nothing is announced or served yet.
    pub async fn open(cfg: VaultConfig) -> Result<Replica, Error> {
        let metrics = service_kit::admin::install_metrics(&crate::metrics::table())?;
        let health = Health::new();
        let for_open = cfg.clone();
        let opened = tokio::task::spawn_blocking(move || open_blocking(&for_open))
            .await
            .map_err(|e| Error::Startup(format!("the start-up task failed: {e}")))??;
        let link = TcpListener::bind(&cfg.link.listen)
            .await
            .map_err(|e| Error::io(format!("link listener {}", cfg.link.listen), e))?;
        let admin = service_kit::admin::bind(&cfg.admin.listen).await?;
        let entropy: Arc<dyn Entropy> = Arc::new(OsEntropy);
        let (records, commits, role): (Arc<dyn Records>, _, _) = match cfg.raft.node_id {
            None => {
                let (tx, role) = watch::channel(Role::standalone());
                health.set_ready();
                let records = Arc::new(LocalRecords::new(opened.store.clone()));
                (records, Commits::Standalone { _role: tx }, role)
            }
            Some(node_id) => {
                let member = join_group(&cfg, &opened, node_id, &link, &health).await?;
                (member.records, member.commits, member.role)
            }
        };
        let vault = Vault::new(
            Platform {
                sealer: opened.hsm.clone(),
                records,
                entropy,
            },
            opened.secrets.opaque_setup.clone(),
            VaultParams {
                fleet_id: opened.secrets.fleet_id.clone(),
                max_attempts: opened.secrets.params.max_attempts,
                login_timeout: Duration::from_secs(cfg.login_timeout_secs),
                account_limits: crate::core::limits::AccountLimits {
                    login_starts_per_minute: cfg.limits.login_starts_per_minute,
                    replacements_per_hour: cfg.limits.replacements_per_hour,
                },
            },
        );
        Ok(Replica {
            disk: opened.store.disk().clone(),
            vault: Arc::new(with_failpoint_from_env(vault)?),
            secrets: opened.secrets,
            cfg,
            commits,
            role,
            health,
            metrics,
            link,
            admin,
        })
    }

    /// Serves the link and admin listeners until shutdown.
    pub async fn serve(self, shutdown: watch::Receiver<Shutdown>) -> Result<(), Error> {
        let Replica {
            cfg,
            secrets,
            vault,
            mut commits,
            role,
            health,
            metrics,
            link,
            admin,
            disk,
        } = self;
        let shutdown = stop_when_the_disk_fails(shutdown, disk.clone(), health.clone());
        let local =
            |l: &TcpListener, what: &'static str| l.local_addr().map_err(|e| Error::io(what, e));
        let link_addr = local(&link, "link listener")?;
        let admin_addr = local(&admin, "admin listener")?;
        let (raft, peer_addr) = match &mut commits {
            Commits::Standalone { .. } => (None, None),
            Commits::Raft {
                raft,
                control,
                control_listener,
                peer_addr,
                ..
            } => {
                if let Some(listener) = control_listener.take() {
                    let serving =
                        control::server::serve(listener, control.clone(), shutdown.clone());
                    tokio::spawn(serving);
                }
                (Some(raft.clone()), Some(*peer_addr))
            }
        };
        announce(&cfg.replica_id, link_addr, admin_addr, peer_addr);
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
            tunnel_key: secrets.tunnel_key.clone(),
        });
        let workers = Arc::new(jobs::worker_pool(
            jobs.clone(),
            cfg.workers,
            cfg.max_queued_requests,
        ));
        let ctx = Arc::new(LinkContext {
            jobs,
            workers: workers.clone(),
            link_key: secrets.link_key.clone(),
            chatd_keys,
            replica_id: cfg.replica_id.clone(),
            table: TableSettings {
                max_tunnels: cfg.link.max_tunnels_per_link,
                idle_timeout: Duration::from_secs(cfg.link.tunnel_idle_timeout_secs),
                drain_deadline: Duration::from_secs(cfg.link.drain_deadline_secs),
            },
            handshake_timeout: Duration::from_secs(cfg.link.handshake_timeout_secs),
            role,
        });
        let mut admin_shutdown = shutdown.clone();
        let admin_task = tokio::spawn(service_kit::admin::serve(
            admin,
            health.clone(),
            metrics,
            axum::Router::new(),
            async move { service_kit::shutdown::reached(&mut admin_shutdown, Shutdown::Fast).await },
        ));
        tracing::info!(%link_addr, %admin_addr, replica = %cfg.replica_id, fleet = %secrets.fleet_id, "vault serving");

        let mut drain_watch = shutdown.clone();
        let health_drain = health.clone();
        tokio::spawn(async move {
            service_kit::shutdown::reached(&mut drain_watch, Shutdown::Drain).await;
            health_drain.set_not_ready("draining");
        });
        link::serve(link, ctx, cfg.link.max_links, shutdown).await;
        admin_task.abort();
        // Let queued work finish; every commit it makes is durable anyway.
        if let Ok(pool) = Arc::try_unwrap(workers) {
            let _ = tokio::task::spawn_blocking(move || pool.shutdown()).await;
        }
        if let Some(raft) = raft {
            let _ = raft.shutdown().await;
        }
        drop(commits);
        if let Some(what) = disk.failure() {
            return Err(Error::DiskFailed(what));
        }
        tracing::info!("vault stopped");
        Ok(())
    }
}

/// The shutdown the listeners follow: the operator's, or a fast one as
/// soon as the store's disk fails (readiness goes false first). Nothing
/// more is answered after a failed write: redb refuses every operation
/// after one, and the commit that failed has returned its error.
fn stop_when_the_disk_fails(
    mut outer: watch::Receiver<Shutdown>,
    disk: Arc<DiskHealth>,
    health: Arc<Health>,
) -> watch::Receiver<Shutdown> {
    let (tx, rx) = watch::channel(*outer.borrow());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = outer.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = *outer.borrow_and_update();
                    let _ = tx.send(now);
                }
                what = disk.failed() => {
                    health.set_not_ready("the store's disk failed");
                    tracing::error!(
                        "{what}: stopping (exit status {}); start the vault again once the disk works",
                        crate::state::disk::EXIT_DISK_FAILED
                    );
                    let _ = tx.send(Shutdown::Fast);
                    return;
                }
            }
        }
    });
    rx
}

/// What joining a Raft group produced.
struct Member {
    records: Arc<dyn Records>,
    commits: Commits,
    role: watch::Receiver<Role>,
}

/// Starts this replica's Raft node over the store, its peer listener and
/// the admin routes, and follows its role.
async fn join_group(
    cfg: &VaultConfig,
    opened: &Opened,
    node_id: u64,
    link: &TcpListener,
    health: &Arc<Health>,
) -> Result<Member, Error> {
    let r = &cfg.raft;
    let timing = r.timing();
    tracing::info!(
        ?timing,
        peer_round_trip_ms = r.peer_round_trip_ms,
        "raft timings"
    );
    let bad_config = |m: String| Error::Service(service_kit::Error::Config(m));
    let raft_config = openraft::Config {
        cluster_name: opened.secrets.fleet_id.to_string(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_timeout_min_ms,
        election_timeout_max: timing.election_timeout_max_ms,
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
    .map_err(|e| bad_config(format!("raft: {e}")))?;
    let bind_source = match &r.bind_source {
        Some(s) => Some(
            s.parse()
                .map_err(|_| bad_config(format!("raft.bind_source {s:?} is not an IP address")))?,
        ),
        None => None,
    };
    let peer_listener = TcpListener::bind(&r.listen)
        .await
        .map_err(|e| Error::io(format!("raft listener {}", r.listen), e))?;
    let peer_addr = peer_listener
        .local_addr()
        .map_err(|e| Error::io("raft listener", e))?;
    let log_store = storage::RaftLogStore::new(&opened.store)?;
    let peer_keys = Arc::new(raft::peer_keys::PeerKeys::new(storage::load_peer_keys(
        &opened.store,
    )?));
    let state_machine = storage::RecordStateMachine::new(opened.store.clone(), peer_keys.clone());
    let recent_writes = state_machine.recent_writes();
    let identity = raft::identity::PeerIdentity::load(node_id, &opened.store)?;
    let node_signer = {
        let (store, hsm) = (opened.store.clone(), opened.hsm.clone());
        tokio::task::spawn_blocking(move || {
            raft::peer_keys::load_or_create_signer(&store, node_id, hsm.as_ref(), &OsEntropy)
        })
        .await
        .map_err(|e| Error::Startup(format!("the node key task failed: {e}")))??
    };
    let node_signer = Arc::new(node_signer);
    let network = network::PeerNetwork::new(
        opened.secrets.peer_key.clone(),
        identity.clone(),
        node_signer.clone(),
        peer_keys.clone(),
        bind_source,
    );
    let membership_network = network.clone();
    // openraft's own tasks run on a thread of their own (see why there).
    let raft_thread = raft::thread::RaftThread::start()?;
    let raft = raft_thread
        .run(Raft::new(
            node_id,
            Arc::new(raft_config),
            network.clone(),
            log_store,
            state_machine,
        ))
        .await?
        .map_err(|e| Error::Startup(format!("raft: {e}")))?;
    let divergence = Arc::new(raft::agreement::Divergence::default());
    tokio::spawn(peer_service::serve(
        peer_listener,
        peer_service::PeerService {
            raft: raft.clone(),
            store: opened.store.clone(),
            recent: recent_writes,
            divergence: divergence.clone(),
            key: Arc::new(opened.secrets.peer_key.clone()),
            identity: identity.clone(),
            node: node_signer.clone(),
            keys: peer_keys.clone(),
        },
    ));
    let records: Arc<dyn Records> = Arc::new(raft::ReplicatedRecords::new(
        raft.clone(),
        opened.store.clone(),
        network,
        divergence.clone(),
        tokio::runtime::Handle::current(),
        Duration::from_secs(timing.commit_timeout_secs),
    ));
    let role = role::watch_role(
        &raft,
        health.clone(),
        divergence,
        Duration::from_millis(timing.election_timeout_max_ms),
    );
    let link_addr = link
        .local_addr()
        .map_err(|e| Error::io("link listener", e))?;
    let control_listener = TcpListener::bind(&cfg.control.listen)
        .await
        .map_err(|e| Error::io(format!("control listener {}", cfg.control.listen), e))?;
    let control_addr = control_listener
        .local_addr()
        .map_err(|e| Error::io("control listener", e))?;
    let me = SelfInfo {
        node_id,
        node: raft::VaultNode {
            raft_addr: r.advertise.clone().unwrap_or_else(|| peer_addr.to_string()),
            link_addr: cfg
                .link
                .advertise
                .clone()
                .unwrap_or_else(|| link_addr.to_string()),
            control_addr: cfg
                .control
                .advertise
                .clone()
                .unwrap_or_else(|| control_addr.to_string()),
        },
        group: None,
    };
    let operator_keys = cfg
        .control
        .operator_keys
        .iter()
        .map(|k| PublicKey::from_hex(k))
        .collect::<Result<Vec<_>, _>>()?;
    let control = Arc::new(ControlContext {
        membership: Membership {
            raft: raft.clone(),
            me,
            identity,
            network: membership_network,
            keys: peer_keys,
        },
        control_key: opened.secrets.control_key.clone(),
        operator_keys,
    });
    let registrar = control.clone();
    tokio::spawn(async move { registrar.membership.keep_keys_registered().await });
    tracing::info!(node_id, %peer_addr, %control_addr, node_key = %node_signer.public().fingerprint(), "raft replica started");
    Ok(Member {
        records,
        commits: Commits::Raft {
            raft,
            _thread: raft_thread,
            control,
            control_listener: Some(control_listener),
            peer_addr,
        },
        role,
    })
}

/// One machine-readable line on stdout, so scripts and tests learn the
/// bound ports (port 0 in the config picks a free one).
fn announce(replica: &str, link: SocketAddr, admin: SocketAddr, raft: Option<SocketAddr>) {
    let raft = raft
        .map(|r| format!(",\"raft\":\"{r}\""))
        .unwrap_or_default();
    println!(
        "{{\"event\":\"listening\",\"replica\":\"{replica}\",\"link\":\"{link}\",\"admin\":\"{admin}\"{raft}}}"
    );
}

/// `HSM_VAULT_FAILPOINT=NAME` makes the process abort at that point
/// ([`Failpoint::ALL`]), so tests can prove what a crash there preserves.
/// Only builds with the `failpoints` feature (the crate's tests) know it; any
/// other build refuses to start with it set rather than ignore it.
fn with_failpoint_from_env(vault: Vault) -> Result<Vault, Error> {
    let Some(value) = std::env::var_os("HSM_VAULT_FAILPOINT") else {
        return Ok(vault);
    };
    if !cfg!(feature = "failpoints") {
        return Err(Error::Startup(
            "HSM_VAULT_FAILPOINT is set, but this build has no failpoints (they exist only in \
             test builds); unset it"
                .into(),
        ));
    }
    let Some(point) = Failpoint::ALL
        .iter()
        .find(|(name, _)| value.to_str() == Some(*name))
        .map(|(_, p)| *p)
    else {
        let names: Vec<&str> = Failpoint::ALL.iter().map(|(n, _)| *n).collect();
        return Err(Error::Startup(format!(
            "HSM_VAULT_FAILPOINT={value:?} is not a failpoint: use one of {}",
            names.join(", ")
        )));
    };
    tracing::warn!(
        ?point,
        "HSM_VAULT_FAILPOINT set: this process will abort there (testing only)"
    );
    Ok(install_failpoint(vault, point))
}

#[cfg(feature = "failpoints")]
fn install_failpoint(vault: Vault, point: Failpoint) -> Vault {
    crate::core::arm_failpoint(point);
    vault.with_failpoint(Box::new(move |p| {
        if p == point {
            std::process::abort();
        }
    }))
}

#[cfg(not(feature = "failpoints"))]
fn install_failpoint(vault: Vault, _point: Failpoint) -> Vault {
    vault
}
