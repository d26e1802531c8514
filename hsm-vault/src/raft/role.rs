//! Who serves tunnels: this replica's [`Role`], as the link listener needs
//! it, and the task that derives it from Raft's view of the group.
//!
//! A standalone vault is always the leader ([`Role::standalone`]). A Raft
//! replica is the leader only while Raft says so *and* a quorum answered it
//! recently; otherwise it names the leader it knows, so chatd can follow.

use std::sync::Arc;
use std::time::Duration;

use openraft::{Raft, ServerState};
use service_kit::admin::Health;
use tokio::sync::watch;

use super::agreement::Divergence;
use super::VaultRaft;

/// Whether this replica serves tunnels, and where the leader is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub leader: bool,
    /// The leader's link address, when this replica is not the leader and
    /// knows it.
    pub leader_hint: Option<String>,
}

impl Role {
    /// A standalone vault: always the leader.
    pub fn standalone() -> Self {
        Role {
            leader: true,
            leader_hint: None,
        }
    }
}

/// Follows Raft's view of the cluster: publishes this replica's role for
/// the link listener (leader, or the leader's link address), keeps
/// `/readyz` honest (false without a reachable quorum), and exports the
/// `vault_raft_*` metrics ([`crate::metrics::export_raft`]).
pub fn watch_role(
    raft: &Raft<VaultRaft>,
    health: Arc<Health>,
    divergence: Arc<Divergence>,
    election_timeout: Duration,
) -> watch::Receiver<Role> {
    let (tx, rx) = watch::channel(Role {
        leader: false,
        leader_hint: None,
    });
    let mut metrics = raft.metrics();
    tokio::spawn(async move {
        // Also tick: quorum contact ages even when nothing else changes.
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() {
                    // Raft stopped (a diverged store shuts it down).
                    health.set_not_ready("raft stopped");
                    return;
                },
                _ = tick.tick() => {}
            }
            let m = metrics.borrow().clone();
            let leader = m.state == ServerState::Leader;
            let hint = m.current_leader.and_then(|id| {
                m.membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.link_addr.clone())
            });
            let quorum_fresh = match (leader, m.millis_since_quorum_ack) {
                (true, Some(ms)) => Duration::from_millis(ms) < election_timeout * 2,
                (true, None) => false,
                (false, _) => m.current_leader.is_some(),
            };
            // A replica whose store disagrees with its group serves nothing.
            let diverged = divergence.found();
            if diverged {
                health.set_not_ready("store diverged from the group");
            } else if quorum_fresh {
                health.set_ready();
            } else {
                health.set_not_ready("no reachable quorum");
            }
            let role = Role {
                leader: leader && quorum_fresh && !diverged,
                leader_hint: if leader { None } else { hint },
            };
            crate::metrics::export_raft(&m, role.leader);
            tx.send_if_modified(|r| {
                if *r != role {
                    *r = role;
                    true
                } else {
                    false
                }
            });
        }
    });
    rx
}
