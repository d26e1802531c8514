//! Every metric chatd exports, with its HELP text and label values: the one
//! table that `ops/grafana/` and `ops/prometheus/` are checked against.
//! Registered at start-up by [`service_kit::admin::install_metrics`].

use std::sync::OnceLock;

use metrics::{Counter, Histogram};
use protocol_spec::codes::{CloseCode, TunnelCloseCode};
use service_kit::metrics::{build_info, MetricDef};

/// The relay's per-frame metrics as handles, looked up once: finding a
/// metric by name and labels hashes the key and takes the registry's lock,
/// which on every frame was a visible part of the relay's cost.
pub(crate) struct RelayMetrics {
    pub(crate) from_client_frames: Counter,
    pub(crate) to_client_frames: Counter,
    pub(crate) to_client_bytes: Counter,
    pub(crate) to_client_seconds: Histogram,
    pub(crate) to_vault_opens: Counter,
    pub(crate) to_vault_data: Counter,
    pub(crate) to_vault_closes: Counter,
    pub(crate) to_vault_bytes: Counter,
    pub(crate) to_vault_seconds: Histogram,
}

/// The relay's handles. The first call resolves them against the
/// recorder installed then: `chatd` installs its recorder before it
/// accepts a connection or opens a link.
pub(crate) fn relay() -> &'static RelayMetrics {
    static RELAY: OnceLock<RelayMetrics> = OnceLock::new();
    RELAY.get_or_init(|| RelayMetrics {
        from_client_frames: metrics::counter!("chatd_relay_frames_total", "direction" => "from_client"),
        to_client_frames: metrics::counter!("chatd_relay_frames_total", "direction" => "to_client"),
        to_client_bytes: metrics::counter!("chatd_relay_bytes_total", "direction" => "to_client"),
        to_client_seconds: metrics::histogram!("chatd_relay_seconds", "direction" => "to_client"),
        to_vault_opens: metrics::counter!("chatd_relay_frames_total", "direction" => "to_vault", "kind" => "open"),
        to_vault_data: metrics::counter!("chatd_relay_frames_total", "direction" => "to_vault", "kind" => "data"),
        to_vault_closes: metrics::counter!("chatd_relay_frames_total", "direction" => "to_vault", "kind" => "close"),
        to_vault_bytes: metrics::counter!("chatd_relay_bytes_total", "direction" => "to_vault"),
        to_vault_seconds: metrics::histogram!("chatd_relay_seconds", "direction" => "to_vault"),
    })
}

fn close_labels() -> Vec<&'static str> {
    CloseCode::ALL.iter().map(|c| c.label()).collect()
}

fn tunnel_close_labels() -> Vec<&'static str> {
    TunnelCloseCode::ALL.iter().map(|c| c.label()).collect()
}

/// chatd's metrics table.
pub fn table() -> Vec<MetricDef> {
    let closes = close_labels();
    let tunnel_closes = tunnel_close_labels();
    let mut handshake_results = vec!["ok", "enrolled", "http_refused", "timeout"];
    handshake_results.extend(&closes);
    let mut tunnel_open_results = vec!["relayed", "vault_unavailable"];
    tunnel_open_results.extend(&tunnel_closes);
    vec![
        build_info("chatd_build_info", env!("CARGO_PKG_VERSION")),
        MetricDef::gauge(
            "chatd_connections",
            "Client connections past the Noise handshake, open now.",
        ),
        MetricDef::counter(
            "chatd_connections_refused_total",
            "TCP connections dropped before the WebSocket upgrade, by reason (max_connections: \
             listen.max_connections reached; proxy_header: a missing, malformed or untrusted \
             PROXY protocol header).",
        )
        .labels(&[("reason", &["max_connections", "proxy_header"])]),
        MetricDef::counter(
            "chatd_handshakes_total",
            "Client handshakes by result: ok, enrolled (a new device joined), http_refused \
             (bad path, draining or per-address rate limit), timeout, or the close code sent.",
        )
        .labels(&[("result", &handshake_results)]),
        MetricDef::counter(
            "chatd_enrolments_total",
            "Devices enrolled with a one-time code.",
        ),
        MetricDef::counter(
            "chatd_directory_errors_total",
            "Account directory (SQLite) operations that failed, by operation.",
        )
        .labels(&[("op", &["revocations"])]),
        MetricDef::counter(
            "chatd_closes_total",
            "Close frames chatd sent to clients, by close code (SPEC 9).",
        )
        .labels(&[("code", &closes)]),
        MetricDef::counter(
            "chatd_tunnel_opens_total",
            "Tunnel opens from clients by result: relayed to the vault leader, \
             vault_unavailable (no leader link in time), or the tunnel close code chatd \
             answered with.",
        )
        .labels(&[("result", &tunnel_open_results)]),
        MetricDef::counter(
            "chatd_relay_frames_total",
            "Frames relayed, by direction (and, towards the vault, by link frame kind).",
        )
        .labels(&[("direction", &["from_client", "to_client"])])
        .labels(&[
            ("direction", &["to_vault"]),
            ("kind", &["open", "data", "close"]),
        ]),
        MetricDef::counter(
            "chatd_relay_bytes_total",
            "Tunnel payload bytes relayed, by direction.",
        )
        .labels(&[("direction", &["to_vault", "to_client"])]),
        MetricDef::histogram(
            "chatd_relay_seconds",
            "Seconds from receiving a tunnel frame to writing it on, by direction.",
        ),
        MetricDef::counter(
            "chatd_queue_drops_total",
            "Vault frames dropped because a connection's outgoing queue was full.",
        ),
        MetricDef::gauge(
            "chatd_vault_link_up",
            "1 while chatd holds at least one link to the vault leader, else 0.",
        ),
        MetricDef::counter(
            "chatd_vault_link_failures_total",
            "Attempts to reach a vault leader that failed (connect, handshake, or no leader).",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metric emitted anywhere in chatd's source is in the table, and the
    /// table lists nothing chatd never emits.
    #[test]
    fn the_table_lists_exactly_the_metrics_chatd_emits() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        if let Err(e) = service_kit::metrics::check_table(&table(), &src, "chatd_") {
            panic!("{e}");
        }
    }
}
