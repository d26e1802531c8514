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
    /// with this fleet's key, and belongs to this group or to none.
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
    /// Remove NODE_ID (a voter or a learner) from the group.
    ///
    /// Refused if it would leave the last voter out, or leave no answering quorum.
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
            call(&addr, ControlRequest::AddLearner { node })?;
            println!("Node {id} added as a learner and caught up. Make it a voter with `cluster promote --node-id {id}`.");
        }
        ClusterCommand::Promote { node_id } => {
            let v = call(&addr, ControlRequest::Promote { node_id })?;
            println!("Node {node_id} is a voter. Voters now: {}", v["voters"]);
        }
        ClusterCommand::Remove { node_id } => {
            let v = call(&addr, ControlRequest::Remove { node_id })?;
            println!("Node {node_id} removed. Voters now: {}", v["voters"]);
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
            println!(
                "  node {id}: raft {} link {} control {}",
                n["raft_addr"].as_str().unwrap_or("?"),
                n["link_addr"].as_str().unwrap_or("?"),
                n["control_addr"].as_str().unwrap_or("?")
            );
        }
    }
}
