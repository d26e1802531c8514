//! `hsm-vault cluster ...`: membership through a replica's control listener,
//! as an operator (SPEC.md 5.6).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use hsm_vault::config::VaultConfig;
use hsm_vault::control::client::ControlClient;
use hsm_vault::control::protocol::ControlRequest;
use protocol_spec::keys::{PublicKey, StaticSecret};

use crate::Output;

/// Environment variable naming the operator key file.
pub const OPERATOR_KEY_ENV: &str = "HSM_VAULT_OPERATOR_KEY_FILE";
/// Environment variable holding the fleet control key to pin.
pub const FLEET_CONTROL_KEY_ENV: &str = "HSM_VAULT_FLEET_CONTROL_KEY";

#[derive(Args)]
pub struct ClusterArgs {
    /// Control listener to talk to (default: this config's control.advertise, else
    /// control.listen).
    #[arg(long, value_name = "HOST:PORT", global = true)]
    control: Option<String>,
    /// The operator's private key file (`keys operator-key`); default: control.operator_key_file,
    /// else HSM_VAULT_OPERATOR_KEY_FILE.
    #[arg(long, value_name = "FILE", global = true)]
    operator_key: Option<PathBuf>,
    /// The fleet control key to pin (64 hex digits, from `keys show`); default:
    /// control.fleet_key, else HSM_VAULT_FLEET_CONTROL_KEY.
    #[arg(long, value_name = "HEX", global = true)]
    fleet_control_key: Option<String>,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Start a new group (with a new group id): this replica is its first voter. Once, on one
    /// replica; never on one that is to join a group.
    Init,
    /// Add the replica whose control listener is NODE as a learner; waits (up to 60 s) until
    /// it caught up.
    ///
    /// Refused unless that replica answers on its peer address, as the node id it reports,
    /// with this fleet's key, belongs to this group or to none, and proves a node key the
    /// group does not refuse (a removed node's id or key never comes back). That key is
    /// registered for its node id first.
    AddLearner {
        /// The new replica's control listener (it reports its id and addresses).
        #[arg(long, value_name = "HOST:PORT")]
        node: String,
    },
    /// Make learner NODE_ID a voter.
    ///
    /// Refused unless it has caught up, and unless the voters of the new configuration that
    /// answer now are a quorum of it.
    Promote {
        #[arg(long)]
        node_id: u64,
    },
    /// Remove NODE_ID (a voter or a learner) from the group, and retire its id and node key.
    ///
    /// Refused if it would leave the last voter out, or leave no answering quorum. No replica
    /// serves a retired node again: a replica that comes back is refused, as itself or with
    /// its old key under another id. Re-add a machine under a new node id, with an empty
    /// data folder.
    Remove {
        #[arg(long)]
        node_id: u64,
    },
    /// Make the replica at --control campaign for leadership now (before maintenance of the
    /// current leader, say). It wins only if its log is up to date.
    Elect,
    /// Term, leader, log indices and members.
    Status {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Last resort, on a STOPPED replica: make it the only voter of its group.
    ///
    /// For a group that can never reach a quorum again: a membership change that lost the
    /// replicas it needed, or a majority of voters gone for good. Runs on this replica's own
    /// store (no control listener, no operator key). Without --yes it only shows what the store
    /// holds: run it on every survivor, and recover the one whose last log entry is highest
    /// (term first, then index). Then start that replica alone, wipe the other survivors' data
    /// folders, and add replicas back under new node ids (`cluster remove` the old ids). Never
    /// recover two replicas of one group.
    Recover {
        /// Do it (without it, only show what the store holds).
        #[arg(long)]
        yes: bool,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

fn recover(cfg: &VaultConfig, yes: bool, output: Output) -> anyhow::Result<()> {
    use hsm_vault::raft::recovery;
    let node_id = cfg.raft.node_id.ok_or_else(|| {
        anyhow::anyhow!("raft.node_id is not set: this replica is not a group member")
    })?;
    let path = cfg.store_path();
    if !path.exists() {
        anyhow::bail!("{}: no store here; nothing to recover", path.display());
    }
    let store = hsm_vault::state::RecordStore::open(&path)
        .map_err(|e| anyhow::anyhow!("{e} (is the replica still running? stop it first)"))?;
    store.bind_mode(&format!("raft node {node_id}"))?;
    let view = if yes {
        recovery::make_sole_voter(&store, node_id)?
    } else {
        recovery::inspect(&store, node_id)?
    };
    if output == Output::Json {
        println!("{}", serde_json::to_string(&view)?);
        return Ok(());
    }
    let last = view
        .last_log
        .map_or_else(|| "none".into(), |(t, i)| format!("term {t}, index {i}"));
    println!(
        "node {} of group {}",
        view.node_id,
        view.group.map_or_else(|| "none".into(), |g| g.to_string())
    );
    println!("last log entry    {last}");
    println!("committed index   {:?}", view.committed_index);
    println!(
        "voters            {:?}{}",
        view.voters,
        if view.change_pending {
            " (a change is pending)"
        } else {
            ""
        }
    );
    println!("learners          {:?}", view.learners);
    if yes {
        println!(
            "This replica is now the only voter. Start it; it elects itself and serves. Wipe the \
             other survivors' data folders, then add replicas with new node ids \
             (`cluster add-learner`, `cluster promote`) and retire the old ids (`cluster remove`)."
        );
    } else {
        println!(
            "Nothing changed. Run this on every surviving replica (stopped) and compare their \
             last log entries; on the highest only, run `cluster recover --yes`."
        );
    }
    Ok(())
}

fn credentials(cfg: &VaultConfig, a: &ClusterArgs) -> anyhow::Result<ControlClient> {
    let key_file = a
        .operator_key
        .clone()
        .or_else(|| cfg.control.operator_key_file.clone())
        .or_else(|| std::env::var_os(OPERATOR_KEY_ENV).map(PathBuf::from))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no operator key: give --operator-key FILE, control.operator_key_file or \
                 {OPERATOR_KEY_ENV} (make one with `hsm-vault keys operator-key --out FILE`)"
            )
        })?;
    let text = service_kit::secret::read(Some(&key_file), OPERATOR_KEY_ENV, "operator key")?;
    let operator = StaticSecret::from_hex(text.trim())
        .map_err(|_| anyhow::anyhow!("{}: not an operator key", key_file.display()))?;
    let fleet = a
        .fleet_control_key
        .clone()
        .or_else(|| cfg.control.fleet_key.clone())
        .or_else(|| std::env::var(FLEET_CONTROL_KEY_ENV).ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no fleet control key to pin: give --fleet-control-key, control.fleet_key or \
                 {FLEET_CONTROL_KEY_ENV} (`hsm-vault keys show` prints it)"
            )
        })?;
    let fleet = PublicKey::from_hex(fleet.trim())
        .map_err(|_| anyhow::anyhow!("the fleet control key must be 64 hex digits"))?;
    Ok(ControlClient::new(operator, fleet))
}

pub fn run(cfg: &VaultConfig, a: ClusterArgs) -> anyhow::Result<()> {
    if let ClusterCommand::Recover { yes, output } = a.command {
        return recover(cfg, yes, output);
    }
    let client = credentials(cfg, &a)?;
    let addr = a
        .control
        .clone()
        .or_else(|| cfg.control.advertise.clone())
        .unwrap_or_else(|| cfg.control.listen.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let call = |at: &str, req: ControlRequest| {
        rt.block_on(client.call(at, &req))
            .map_err(|e| anyhow::anyhow!("{e}"))
    };
    match a.command {
        ClusterCommand::Init => {
            let v = call(&addr, ControlRequest::Init)?;
            println!(
                "Group {} initialised with this replica as its only voter. Add others with `cluster add-learner`.",
                v["group"].as_str().unwrap_or("?")
            );
        }
        ClusterCommand::AddLearner { node } => {
            let who = call(&node, ControlRequest::WhoAreYou)
                .map_err(|e| anyhow::anyhow!("cannot ask {node} who it is: {e}"))?;
            let id = who["node_id"].as_u64().unwrap_or(0);
            let node = serde_json::from_value(who)
                .map_err(|e| anyhow::anyhow!("{node} described itself oddly: {e}"))?;
            let v = call(&addr, ControlRequest::AddLearner { node })?;
            let key = v["node_key"]
                .as_str()
                .and_then(|k| k.parse::<NodeKeyText>().ok())
                .map_or_else(|| "?".into(), |k| k.0);
            println!("Node {id} added as a learner and caught up; its node key {key} is registered. Make it a voter with `cluster promote --node-id {id}`.");
        }
        ClusterCommand::Promote { node_id } => {
            let v = call(&addr, ControlRequest::Promote { node_id })?;
            println!("Node {node_id} is a voter. Voters now: {}", v["voters"]);
        }
        ClusterCommand::Remove { node_id } => {
            let v = call(&addr, ControlRequest::Remove { node_id })?;
            println!(
                "Node {node_id} removed and its node key retired. Voters now: {}",
                v["voters"]
            );
        }
        ClusterCommand::Elect => {
            call(&addr, ControlRequest::Elect)?;
            println!("The replica at {addr} is campaigning; `cluster status` shows the outcome.");
        }
        ClusterCommand::Status { output } => {
            let v = call(&addr, ControlRequest::Status)?;
            match output {
                Output::Json => println!("{v}"),
                Output::Text => print_status(&v),
            }
        }
        ClusterCommand::Recover { .. } => unreachable!("handled above"),
    }
    Ok(())
}

fn print_status(v: &serde_json::Value) {
    println!(
        "node {} is {} in term {}",
        v["node_id"],
        v["state"].as_str().unwrap_or("?"),
        v["term"]
    );
    println!(
        "group             {}",
        v["group"].as_str().unwrap_or("none")
    );
    println!("leader            {}", v["leader"]);
    println!("last log index    {}", v["last_log_index"]);
    println!("last applied      {}", v["last_applied_index"]);
    println!("voters            {}", v["voters"]);
    println!("learners          {}", v["learners"]);
    if let Some(nodes) = v["nodes"].as_object() {
        for (id, n) in nodes {
            let key = v["node_keys"][id]
                .as_str()
                .and_then(|k| k.parse::<NodeKeyText>().ok())
                .map_or_else(|| "not registered yet".into(), |k| k.0);
            println!(
                "  node {id}: raft {} link {} control {} key {key}",
                n["raft_addr"].as_str().unwrap_or("?"),
                n["link_addr"].as_str().unwrap_or("?"),
                n["control_addr"].as_str().unwrap_or("?")
            );
        }
    }
    println!("retired           {}", v["retired"]);
}

/// A node key from JSON, shown as its fingerprint.
struct NodeKeyText(String);

impl std::str::FromStr for NodeKeyText {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let key: hsm_vault::raft::peer_keys::NodeKey =
            serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| ())?;
        Ok(NodeKeyText(key.fingerprint()))
    }
}
