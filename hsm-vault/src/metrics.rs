//! Every metric the vault exports, with its HELP text and label values: the
//! one table that `ops/grafana/` and `ops/prometheus/` are checked against
//! (registered at start-up by [`service_kit::admin::install_metrics`]),
//! and the `vault_raft_*` gauges as derived from Raft's view of the group.

use openraft::RaftMetrics;
use protocol_spec::codes::TunnelCloseCode;
use service_kit::metrics::{build_info, MetricDef};

use crate::raft::VaultNode;

const OPS: &[&str] = &[
    "status",
    "register_start",
    "register_finish",
    "login_start",
    "login_finish",
    "delete",
];
const RESULTS: &[&str] = &[
    "status",
    "register_started",
    "registered",
    "login_started",
    "login_succeeded",
    "login_failed",
    "locked",
    "not_registered",
    "already_registered",
    "deleted",
    "error",
];
const LOGIN_RESULTS: &[&str] = &[
    "started",
    "succeeded",
    "failed",
    "locked",
    "not_registered",
    "expired",
    "abandoned",
];
const CONTROL_OPS: &[&str] = &[
    "who_are_you",
    "status",
    "init",
    "add_learner",
    "promote",
    "remove",
    "elect",
];
/// PKCS#11 operations on the serving path (the start-up self-test fails
/// start-up instead).
const HSM_OPS: &[&str] = &["seal", "unseal"];

/// The vault's metrics table.
pub fn table() -> Vec<MetricDef> {
    let tunnel_closes: Vec<&'static str> = TunnelCloseCode::ALL.iter().map(|c| c.label()).collect();
    let mut open_results = vec!["ok", "handshake_failed"];
    open_results.extend(tunnel_closes.iter().filter(|l| **l != "handshake_failed"));
    vec![
        build_info("vault_build_info", env!("CARGO_PKG_VERSION")),
        // The core: requests and what they did to records.
        MetricDef::counter(
            "vault_requests_total",
            "Vault requests answered inside tunnels, by request and response kind.",
        )
        .labels(&[("op", OPS), ("result", RESULTS)]),
        MetricDef::histogram(
            "vault_request_seconds",
            "Seconds to answer one vault request (OPAQUE, HSM calls and the commit), by request.",
        ),
        MetricDef::counter(
            "vault_logins_total",
            "Login steps by outcome: started (an attempt was counted), succeeded, failed, locked, \
             not_registered, expired (no KE3 in time), abandoned (tunnel closed mid-login).",
        )
        .labels(&[("result", LOGIN_RESULTS)]),
        MetricDef::counter(
            "vault_attempts_total",
            "Login attempts counted durably (each before its KE2 went out).",
        ),
        MetricDef::counter(
            "vault_lockouts_total",
            "Escrowed keys erased after max_attempts failed logins.",
        ),
        MetricDef::counter(
            "vault_registrations_total",
            "Registrations committed, by mode.",
        )
        .labels(&[("mode", &["create", "replace", "change_password"])]),
        MetricDef::counter(
            "vault_deletions_total",
            "Registrations deleted by their owner.",
        ),
        MetricDef::counter(
            "vault_rate_limited_total",
            "Requests refused by the vault's per-account limits, by what was limited (login \
             starts per minute, registration replacements per hour).",
        )
        .labels(&[("op", &["login_start", "replace"])]),
        MetricDef::counter(
            "vault_commit_conflicts_total",
            "Commits refused because the record changed since it was read (concurrent operations on one account).",
        ),
        MetricDef::counter(
            "vault_record_integrity_failures_total",
            "Stored records that failed their integrity check: storage was edited, rolled back or is corrupt.",
        ),
        // The HSM.
        MetricDef::counter(
            "vault_seal_operations_total",
            "Records sealed with the master key by this process (each uses one random IV).",
        ),
        MetricDef::histogram(
            "vault_hsm_call_seconds",
            "Seconds per PKCS#11 seal or unseal call.",
        ),
        MetricDef::counter(
            "vault_hsm_errors_total",
            "PKCS#11 calls that failed, by operation.",
        )
        .labels(&[("op", HSM_OPS)]),
        // Work and links.
        MetricDef::gauge(
            "vault_worker_queue_depth",
            "Requests waiting for a worker thread.",
        ),
        MetricDef::counter(
            "vault_overloaded_total",
            "Work refused because its queue was full: requests (max_queued_requests waiting), \
             commits waiting for a log entry, or confirmations waiting for a batch to a peer.",
        ),
        MetricDef::gauge("vault_links", "chatd links open now."),
        MetricDef::counter(
            "vault_link_handshakes_total",
            "chatd link handshakes by result.",
        )
        .labels(&[("result", &["ok", "failed"])]),
        MetricDef::gauge("vault_tunnels", "Client tunnels open now."),
        MetricDef::counter(
            "vault_tunnel_opens_total",
            "Tunnel opens by result: ok, handshake_failed, or the close code refusing it.",
        )
        .labels(&[("result", &open_results)]),
        MetricDef::counter("vault_tunnel_closes_total", "Tunnels closed, by close code.")
            .labels(&[("code", &tunnel_closes)]),
        // Replication.
        MetricDef::gauge("vault_raft_term", "This replica's current Raft term."),
        MetricDef::gauge(
            "vault_raft_is_leader",
            "1 while this replica leads with a quorum that answered within two election \
             timeouts (it serves tunnels), else 0.",
        ),
        MetricDef::gauge(
            "vault_raft_leader",
            "Node id of the leader this replica knows, -1 if none.",
        ),
        MetricDef::gauge(
            "vault_raft_voters",
            "Voters in the group's membership as this replica sees it.",
        ),
        MetricDef::gauge(
            "vault_raft_last_log_index",
            "Index of the last entry in this replica's log.",
        ),
        MetricDef::gauge(
            "vault_raft_last_applied_index",
            "Index of the last entry applied to this replica's records.",
        ),
        MetricDef::gauge(
            "vault_raft_apply_lag",
            "Log entries this replica holds but has not applied yet.",
        ),
        MetricDef::gauge(
            "vault_raft_commit_lag",
            "On the leader: log entries not yet stored by a majority of voters (0 elsewhere).",
        ),
        MetricDef::counter(
            "vault_raft_peer_refused_total",
            "Raft peer connections refused for a wrong identity or group, by which side refused.",
        )
        .labels(&[("side", &["caller", "callee"])]),
        MetricDef::counter(
            "vault_state_divergence_total",
            "Times this replica found its store disagreeing with its group's majority, by who \
             found it (leader, follower told by the leader, or a minority voter; such a replica \
             stops serving and must be rebuilt), or a read the leader did not answer because a \
             majority held another record (read).",
        )
        .labels(&[("side", &["leader", "follower", "minority", "read"])]),
        MetricDef::histogram(
            "vault_commit_batch_size",
            "Record commands per log entry the leader proposed (group commit: concurrent \
             commits share one entry, one log write and one replication round).",
        ),
        MetricDef::histogram(
            "vault_confirm_batch_size",
            "Confirmations (agreement on what a commit wrote) per request to one peer.",
        ),
        MetricDef::counter(
            "vault_raft_snapshots_built_total",
            "Raft snapshots this replica built.",
        ),
        MetricDef::counter(
            "vault_raft_snapshots_installed_total",
            "Raft snapshots this replica installed from the leader.",
        ),
        // The operator control listener.
        MetricDef::counter(
            "vault_control_requests_total",
            "Membership commands on the control listener, by command and outcome.",
        )
        .labels(&[
            ("op", CONTROL_OPS),
            ("outcome", &["done", "refused", "not_leader"]),
        ]),
        MetricDef::counter(
            "vault_control_refused_total",
            "Control connections refused before a command, by reason (not_an_operator: an \
             unknown operator key).",
        )
        .labels(&[(
            "reason",
            &[
                "too_many",
                "handshake",
                "not_an_operator",
                "bad_record",
                "bad_frame",
                "closed",
                "timeout",
                "io",
                "seal",
            ],
        )]),
    ]
}

/// Exports Raft's view as the `vault_raft_*` gauges. `serving` is whether
/// this replica leads with a fresh quorum: a leader cut off from its
/// majority still calls itself leader until it learns otherwise, and must
/// not count as one.
pub fn export_raft(m: &RaftMetrics<u64, VaultNode>, serving: bool) {
    let last_log = m.last_log_index.unwrap_or(0);
    let applied = m.last_applied.map_or(0, |l| l.index);
    metrics::gauge!("vault_raft_term").set(m.current_term as f64);
    metrics::gauge!("vault_raft_is_leader").set(if serving { 1.0 } else { 0.0 });
    metrics::gauge!("vault_raft_leader").set(m.current_leader.map_or(-1.0, |l| l as f64));
    metrics::gauge!("vault_raft_last_log_index").set(last_log as f64);
    metrics::gauge!("vault_raft_last_applied_index").set(applied as f64);
    metrics::gauge!("vault_raft_apply_lag").set(last_log.saturating_sub(applied) as f64);
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    metrics::gauge!("vault_raft_voters").set(voters.len() as f64);
    let lag = m.replication.as_ref().map_or(0, |matched| {
        let stored = voters.iter().map(|id| {
            if *id == m.id {
                last_log
            } else {
                matched.get(id).copied().flatten().map_or(0, |l| l.index)
            }
        });
        last_log.saturating_sub(majority_index(stored.collect()))
    });
    metrics::gauge!("vault_raft_commit_lag").set(lag as f64);
}

/// The highest log index that a majority of `stored` (one index per voter)
/// has reached.
fn majority_index(mut stored: Vec<u64>) -> u64 {
    if stored.is_empty() {
        return 0;
    }
    stored.sort_unstable_by(|a, b| b.cmp(a));
    stored[stored.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_exactly_the_metrics_the_vault_emits() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        if let Err(e) = service_kit::metrics::check_table(&table(), &src, "vault_") {
            panic!("{e}");
        }
    }

    #[test]
    fn commit_lag_counts_what_a_majority_lacks() {
        assert_eq!(majority_index(vec![10, 10, 10]), 10);
        // One follower behind: the majority (leader + one) has 10.
        assert_eq!(majority_index(vec![10, 4, 10]), 10);
        // Both followers behind: the majority reaches only the better one.
        assert_eq!(majority_index(vec![10, 4, 7]), 7);
        assert_eq!(majority_index(vec![10, 4, 7, 9, 1]), 7);
        assert_eq!(majority_index(vec![10]), 10);
        assert_eq!(majority_index(vec![]), 0);
    }
}
