//! The dashboards and alerts against what the real binaries export: a
//! three-replica vault group and chatd on loopback, one registration and
//! one login through them, then every `/metrics` scraped. Fails if a panel
//! or an alert names a metric no process exports, if an exported family
//! has no HELP text or appears in no panel or alert, or if a counter of
//! the binaries' tables is missing at start-up (counters start at zero, so
//! `increase()` sees the first event); and a leader cut off from its
//! majority stops exporting `vault_raft_is_leader = 1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use backup_client::connection::{Connection, Endpoint};
use backup_client::vault_flow::{self, PasswordLogin, PasswordRegistration};
use protocol_spec::ids::{AccountId, EnrolmentCode};
use protocol_spec::keys::StaticSecret;
use protocol_spec::messages::vault::RegistrationMode;
use protocol_spec::root_key::RootKey;
use testkit::chatd::{ChatdFixture, ChatdOptions};
use testkit::cluster::VaultCluster;
use testkit::vault::VaultOptions;

fn ops(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ops")
        .join(path)
}

/// Metric names in a PromQL expression: identifiers with one of our
/// prefixes, outside quoted label values.
fn names_in_expr(expr: &str, out: &mut BTreeSet<String>) {
    let mut unquoted = String::new();
    let mut in_quote = false;
    for c in expr.chars() {
        if c == '"' {
            in_quote = !in_quote;
        } else if !in_quote {
            unquoted.push(c);
        }
    }
    for word in unquoted.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if ["chatd_", "vault_", "process_"]
            .iter()
            .any(|p| word.starts_with(p))
        {
            out.insert(word.to_owned());
        }
    }
}

/// Every `expr` of the Grafana dashboards.
fn dashboard_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(ops("grafana")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let d: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let panels = d["panels"].as_array().unwrap();
            for p in panels {
                for t in p["targets"].as_array().into_iter().flatten() {
                    names_in_expr(t["expr"].as_str().unwrap(), &mut names);
                }
            }
        }
    }
    names
}

/// Every `expr:` of the alert rules (one line, or a `|` block).
fn alert_names() -> BTreeSet<String> {
    let text = std::fs::read_to_string(ops("prometheus/alerts.yml")).unwrap();
    let mut names = BTreeSet::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((indent, rest)) = line.split_once("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest == "|" {
            while let Some(next) = lines.peek() {
                if next.len() - next.trim_start().len() <= indent.len() {
                    break;
                }
                names_in_expr(next, &mut names);
                lines.next();
            }
        } else {
            names_in_expr(rest, &mut names);
        }
    }
    names
}

/// One scrape: family name → (has HELP, sample names).
#[derive(Default)]
struct Families {
    help: BTreeSet<String>,
    samples: BTreeSet<String>,
    series: BTreeSet<String>,
}

impl Families {
    fn add(&mut self, body: &str) {
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                if !text.trim().is_empty() {
                    self.help.insert(name.to_owned());
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
                let name = series.split('{').next().unwrap();
                self.samples.insert(name.to_owned());
                self.series.insert(series.to_owned());
            }
        }
    }

    /// The family a sample name belongs to (`x_bucket` → `x`).
    fn family(&self, sample: &str) -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix) {
                if self.help.contains(base) || self.samples.contains(&format!("{base}_bucket")) {
                    return base.to_owned();
                }
            }
        }
        sample.to_owned()
    }

    fn families(&self) -> BTreeSet<String> {
        self.samples.iter().map(|s| self.family(s)).collect()
    }
}

async fn exercise(url: String, chatd: &ChatdFixture, cluster: &VaultCluster) {
    let account = AccountId::new("metrics").unwrap();
    let mut seed = [0u8; 32];
    testkit::fill_random(&mut seed);
    let device = StaticSecret::from_bytes(seed);
    let endpoint = Endpoint {
        url,
        chatd_key: chatd.static_key,
        account: account.clone(),
    };
    let code = EnrolmentCode::new(chatd.invite("metrics")).unwrap();
    let mut c = Connection::connect(&endpoint, &device, Some(code))
        .await
        .unwrap();
    let fleet = &cluster.fleet;
    let k = RootKey::from_entropy([3; 30]);
    let mut t = c
        .open_tunnel(&fleet.tunnel_key, &fleet.fleet_id)
        .await
        .unwrap();
    let password = protocol_spec::password::Password::prepare("metrics password").unwrap();
    let (flow, start) = PasswordRegistration::start(&password, RegistrationMode::Create).unwrap();
    let r = c.request(&mut t, &start).await.unwrap();
    let finish = flow.finish(&r, &account, &fleet.fleet_id, &k).unwrap();
    let r = c.request(&mut t, &finish).await.unwrap();
    vault_flow::registered(&r, RegistrationMode::Create).unwrap();
    let (flow, start) = PasswordLogin::start(&password).unwrap();
    let r = c.request(&mut t, &start).await.unwrap();
    let (finish, verified) = flow.finish(&r, &account, &fleet.fleet_id).unwrap();
    let r = c.request(&mut t, &finish).await.unwrap();
    assert!(verified.key(&r, &account).unwrap() == k);
    c.close_tunnel(t).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_name_only_exported_metrics_and_every_family_has_help() {
    let mut cluster = VaultCluster::new(3, VaultOptions::default());
    cluster.start_all();
    cluster.form();
    let chatd = ChatdFixture::with_keys(
        &cluster.chatd_key,
        &cluster.fleet.link_key,
        &cluster.link_addrs(),
        ChatdOptions::default(),
    );
    let chatd_proc = chatd.spawn();

    // Right after start-up: every counter of both tables is there, at 0.
    let mut first = Families::default();
    first.add(&chatd_proc.admin_get("/metrics").1);
    first.add(&testkit::http_get(cluster.replicas[0].admin_addr, "/metrics").1);
    for (table, prefix) in [
        (chatd::metrics::table(), "chatd"),
        (hsm_vault_table(), "vault"),
    ] {
        for def in table {
            if def.kind != service_kit::metrics::MetricKind::Counter {
                continue;
            }
            for set in def.label_sets() {
                let labels: Vec<String> = set.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                let series = if labels.is_empty() {
                    def.name.to_owned()
                } else {
                    format!("{}{{{}}}", def.name, labels.join(","))
                };
                assert!(
                    first.series.contains(&series),
                    "{prefix}: {series} is not exported at start-up"
                );
            }
        }
    }

    // Leadership can move right after forming; wait until chatd follows.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while testkit::metric(&chatd_proc.admin_get("/metrics").1, "chatd_vault_link_up") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "chatd never linked to the leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    exercise(chatd_proc.url(), &chatd, &cluster).await;
    // Histograms reach the exporter at its upkeep (every 5 s).
    tokio::time::sleep(Duration::from_secs(6)).await;

    let mut exported = Families::default();
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    let (_, body) = chatd_proc.admin_get("/metrics");
    exported.add(&body);
    sources.insert("chatd".into(), body);
    for (i, r) in cluster.replicas.iter().enumerate() {
        let (_, body) = testkit::http_get(r.admin_addr, "/metrics");
        exported.add(&body);
        sources.insert(format!("vault-{}", i + 1), body);
    }

    let families = exported.families();
    for family in &families {
        assert!(
            exported.help.contains(family),
            "{family} is exported without HELP text"
        );
    }
    let dashboard = dashboard_names();
    let alerts = alert_names();
    for (what, names) in [("the dashboard", &dashboard), ("alerts.yml", &alerts)] {
        for name in names {
            assert!(
                exported.samples.contains(name),
                "{what} names {name}, which no process exports"
            );
        }
    }
    let used: BTreeSet<String> = dashboard
        .iter()
        .chain(&alerts)
        .map(|n| exported.family(n))
        .collect();
    for family in &families {
        assert!(
            used.contains(family),
            "{family} is exported but in no panel or alert"
        );
    }
}

fn hsm_vault_table() -> Vec<service_kit::metrics::MetricDef> {
    hsm_vault::metrics::table()
}

/// With two of three replicas gone, the ex-leader still calls itself
/// leader in Raft's view, but it has no quorum and serves nothing: it must
/// not export `vault_raft_is_leader = 1`, or VaultNoLeader never fires.
#[test]
fn a_leader_without_its_majority_is_not_counted_as_leader() {
    let mut cluster = VaultCluster::new(3, VaultOptions::default());
    cluster.start_all();
    cluster.form();
    let leader = cluster.wait_serving(Duration::from_secs(20));
    let is_leader = |c: &VaultCluster| {
        testkit::metric(
            &testkit::http_get(c.replicas[leader].admin_addr, "/metrics").1,
            "vault_raft_is_leader",
        )
    };
    assert_eq!(is_leader(&cluster), 1.0);
    for i in 0..3 {
        if i != leader {
            cluster.kill9(i);
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while is_leader(&cluster) != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the ex-leader still exports vault_raft_is_leader = 1 without a quorum"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
