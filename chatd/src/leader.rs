//! Following the vault leader: a small pool of links to the current leader,
//! replaced when it stops being one.
//!
//! The follower task finds the leader among the configured replicas (a
//! follower's `LinkWelcome` says so and names the leader), opens the pool,
//! and watches it: when a link drops or the vault reports a leader change,
//! it retires the pool, which closes the affected tunnels with a retryable
//! code, and finds the leader again with jittered backoff. Connections
//! open tunnels through [`VaultLinks`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol_spec::codes::TunnelCloseCode;
use protocol_spec::ids::{AccountId, TunnelId};
use service_kit::backoff::Backoff;
use service_kit::shutdown::Shutdown;
use tokio::sync::{mpsc, watch};

use crate::vault_link::{connect_link, ConnEvent, Link, LinkEvent, LinkSettings, TunnelHandle};

/// The links to the current leader.
pub(crate) struct LinkPool {
    links: Vec<Arc<Link>>,
    next: AtomicUsize,
    pub replica: String,
}

/// Handle for opening tunnels; cheap to clone.
#[derive(Clone)]
pub struct VaultLinks {
    active: watch::Receiver<Option<Arc<LinkPool>>>,
    open_wait: Duration,
}

impl std::fmt::Debug for VaultLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultLinks")
    }
}

impl VaultLinks {
    /// Starts the leader follower.
    pub fn start(settings: LinkSettings, shutdown: watch::Receiver<Shutdown>) -> Self {
        let (tx, rx) = watch::channel(None);
        let open_wait = settings.open_wait;
        tokio::spawn(follow_leader(settings, tx, shutdown));
        VaultLinks {
            active: rx,
            open_wait,
        }
    }

    /// Whether a leader link is up now.
    pub fn is_up(&self) -> bool {
        self.active.borrow().is_some()
    }

    /// Opens a tunnel for `account` carrying the client's handshake. Waits
    /// up to `open_wait` for a leader link.
    pub async fn open(
        &self,
        account: &AccountId,
        client_tunnel: TunnelId,
        handshake: Vec<u8>,
        conn: mpsc::Sender<ConnEvent>,
        received: Instant,
    ) -> Result<TunnelHandle, TunnelCloseCode> {
        let mut active = self.active.clone();
        let pool =
            match tokio::time::timeout(self.open_wait, active.wait_for(Option::is_some)).await {
                Ok(Ok(p)) => p.clone(),
                _ => None,
            };
        let Some(pool) = pool else {
            metrics::counter!("chatd_tunnel_opens_total", "result" => "vault_unavailable")
                .increment(1);
            return Err(TunnelCloseCode::VaultUnavailable);
        };
        let link = pool.links[pool.next.fetch_add(1, Ordering::Relaxed) % pool.links.len()].clone();
        let handle = link
            .open(account, client_tunnel, handshake, conn, received)
            .await?;
        metrics::counter!("chatd_tunnel_opens_total", "result" => "relayed").increment(1);
        Ok(handle)
    }
}

/// The follower task: finds the leader, publishes its pool, and replaces
/// it when a link dies or the leader changes.
async fn follow_leader(
    s: LinkSettings,
    active: watch::Sender<Option<Arc<LinkPool>>>,
    mut shutdown: watch::Receiver<Shutdown>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut hint: Option<String> = None;
    metrics::gauge!("chatd_vault_link_up").set(0.0);
    loop {
        if *shutdown.borrow() == Shutdown::Fast {
            return;
        }
        let (events_tx, mut events_rx) = mpsc::unbounded_channel::<LinkEvent>();
        let pool = tokio::select! {
            p = find_leader(&s, hint.take(), &events_tx) => p,
            _ = shutdown.wait_for(|l| *l == Shutdown::Fast) => return,
        };
        let Some(pool) = pool else {
            metrics::counter!("chatd_vault_link_failures_total").increment(1);
            let delay = service_kit::backoff::next_delay(&mut backoff);
            tokio::select! {
                _ = tokio::time::sleep(delay) => continue,
                _ = shutdown.wait_for(|l| *l == Shutdown::Fast) => return,
            }
        };
        backoff.reset();
        let pool = Arc::new(pool);
        tracing::info!(replica = %pool.replica, links = pool.links.len(), "vault leader links up");
        metrics::gauge!("chatd_vault_link_up").set(1.0);
        let _ = active.send(Some(pool.clone()));
        let (code, next_hint) = tokio::select! {
            ev = events_rx.recv() => match ev {
                Some(LinkEvent::NotLeader { hint }) => (TunnelCloseCode::LeaderChanged, hint),
                _ => (TunnelCloseCode::VaultUnavailable, None),
            },
            _ = shutdown.wait_for(|l| *l == Shutdown::Fast) => (TunnelCloseCode::Draining, None),
        };
        let _ = active.send(None);
        metrics::gauge!("chatd_vault_link_up").set(0.0);
        tracing::warn!(replica = %pool.replica, reason = code.label(), "vault links retired");
        for l in &pool.links {
            l.retire(code);
        }
        hint = next_hint;
        if code == TunnelCloseCode::Draining {
            return;
        }
    }
}

/// Tries the hinted replica, then every configured one; returns a pool to
/// the first that says it is the leader.
async fn find_leader(
    s: &LinkSettings,
    hint: Option<String>,
    events: &mpsc::UnboundedSender<LinkEvent>,
) -> Option<LinkPool> {
    let mut candidates: Vec<String> = hint.into_iter().collect();
    for r in &s.replicas {
        if !candidates.contains(r) {
            candidates.push(r.clone());
        }
    }
    let mut i = 0;
    while i < candidates.len() {
        let addr = candidates[i].clone();
        i += 1;
        match connect_link(s, &addr, events.clone()).await {
            Ok((link, welcome)) if welcome.leader => {
                let mut links = vec![link];
                while links.len() < s.links {
                    match connect_link(s, &addr, events.clone()).await {
                        Ok((l, w)) if w.leader => links.push(l),
                        Ok((l, _)) => {
                            l.retire(TunnelCloseCode::LeaderChanged);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                return Some(LinkPool {
                    links,
                    next: AtomicUsize::new(0),
                    replica: addr,
                });
            }
            Ok((link, welcome)) => {
                link.retire(TunnelCloseCode::NotLeader);
                tracing::info!(replica = %addr, hint = ?welcome.leader_hint, "replica is not the leader");
                if let Some(h) = welcome.leader_hint {
                    if !candidates[i..].contains(&h) {
                        candidates.insert(i, h);
                    }
                }
            }
            Err(e) => tracing::warn!(replica = %addr, error = %e, "vault link failed"),
        }
    }
    None
}
