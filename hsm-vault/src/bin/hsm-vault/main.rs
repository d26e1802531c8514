//! `hsm-vault`: the Backup Key Vault binary. Thin: parses the command line,
//! loads the configuration and calls the library.

mod cluster;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use hsm_vault::config::VaultConfig;
use hsm_vault::entropy::OsEntropy;
use hsm_vault::hsm::{self, Hsm, ImportRequest, WrappedMasterKey};
use hsm_vault::secrets::{FleetParams, FleetPublic, FleetSecrets};
use protocol_spec::ids::FleetId;

const ABOUT: &str = "The E2EBK Backup Key Vault: escrows backup keys behind OPAQUE, counts failed \
attempts durably, erases a key for good after too many, and keeps every secret sealed by an HSM.";

const LONG_ABOUT: &str = "\
The E2EBK Backup Key Vault. It runs OPAQUE so it never learns passwords, keeps each user's \
wrapped backup key behind their password, counts every login attempt durably before answering, \
and erases the escrow for good after max_attempts consecutive failures. Everything it stores is \
sealed by a master key that never leaves the PKCS#11 token (SoftHSM2 by default; any PKCS#11 HSM \
by configuration). chatd instances connect to it over Noise_KK links; clients reach it only \
through tunnels inside those links.

Configuration comes from a TOML file (--config, see ops/config/vault.example.toml) and \
environment variables HSM_VAULT_<SECTION>__<KEY> (for example HSM_VAULT_LINK__LISTEN=0.0.0.0:7100). \
The HSM user PIN is read from the file named by hsm.pin_file or from HSM_VAULT_PIN; it is never a \
command-line argument.";

const EXAMPLES: &str = "\
Examples:
  First replica of a new fleet:
    hsm-vault --config vault.toml init --fleet-id prod-eu
    hsm-vault --config vault.toml serve

  Give a second replica the same master key (four steps, two people):
    replica-2$ hsm-vault --config vault.toml keys import-request --out req.txt
    replica-1$ HSM_VAULT_SO_PIN=... hsm-vault --config vault.toml keys approve --request req.txt
    replica-1$ hsm-vault --config vault.toml keys export --request req.txt --out master.wrapped
    replica-2$ hsm-vault --config vault.toml keys import --wrapped master.wrapped
    then copy <data_dir>/fleet.sealed from replica 1 to replica 2 (it is sealed).
  Once every replica's token holds the key, end exportability for good, on each:
    hsm-vault --config vault.toml keys lock-export

  Form a Raft group of three (each replica's [raft] section names its node_id, and its
  [control] section lists the operator keys it accepts), then check it:
    operator$  hsm-vault keys operator-key --out op.key      # once per operator
    replica-1$ hsm-vault --config vault.toml cluster init
    replica-1$ hsm-vault --config vault.toml cluster add-learner --node 10.0.2.10:7190
    replica-1$ hsm-vault --config vault.toml cluster promote --node-id 2
    (the same for replica 3)
    hsm-vault --config vault.toml cluster status
  Changes go to the leader; a follower's answer names it and the command follows.

Exit status: 0 on success, 1 on any error (one line on stderr says what to fix), 2 on a usage error.";

#[derive(Parser)]
#[command(name = "hsm-vault", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = EXAMPLES)]
struct Cli {
    /// Configuration file (TOML). Without it, defaults and HSM_VAULT_* variables apply.
    #[arg(
        short,
        long,
        global = true,
        env = "HSM_VAULT_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the master key in the token and this fleet's sealed secrets (first replica only).
    ///
    /// Creates an AES-256 master key that cannot be read out of the token, generates the
    /// fleet's secrets (OPAQUE server setup, fleet tunnel key, link, peer and control keys),
    /// seals them with the fleet's parameters into <data_dir>/fleet.sealed, and prints the
    /// public keys that clients, chatd and operators need.
    Init {
        /// The fleet's identity, bound into every OPAQUE registration. Never change it later.
        #[arg(long, value_name = "NAME")]
        fleet_id: String,
        /// Consecutive wrong passwords after which an escrowed key is erased, for the whole
        /// fleet, for good (1 to 1000; default: the configuration's max_attempts, else 10).
        #[arg(long, value_name = "N")]
        max_attempts: Option<u32>,
        /// Make the master key non-exportable: no other replica can ever receive it.
        #[arg(long)]
        no_export: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Run the vault: the chatd link listener and the admin listener (/metrics, /livez, /readyz).
    ///
    /// SIGTERM drains (readiness goes false, open tunnels finish their request and close with
    /// code 11, then the process exits); SIGINT exits at once. Every acknowledged change is
    /// already durable either way. If a write to the store fails (disk full, fsync error) the
    /// vault stops at once with exit status 74: start it again once the disk works.
    Serve,
    /// Show the fleet's public keys, and the master key ceremony between replicas.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Replication membership, as an operator: talk to a running replica's control listener.
    ///
    /// A group starts with `init` on one replica; every other replica (same master key and
    /// fleet.sealed, its own raft.node_id) joins with `add-learner`, catches up, and becomes
    /// a voter with `promote`. Changes go to the leader (followed automatically). Every call
    /// needs an operator key that the replicas accept (control.operator_keys) and pins the
    /// fleet control key (`keys show`).
    Cluster(cluster::ClusterArgs),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print the fleet id, the fleet tunnel key (pinned by clients) and the link key (for chatd).
    Show {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Give a fleet.sealed made by an older build (format 1) the sealed parameters and the
    /// control key of format 2. Run on one replica, then copy fleet.sealed to the others.
    ///
    /// The old file is kept as fleet.sealed.old. N must be the max_attempts the fleet has
    /// served with.
    UpgradeFleet {
        #[arg(long, value_name = "N")]
        max_attempts: u32,
    },
    /// Make an operator key for `hsm-vault cluster`: writes the private key to FILE (0600) and
    /// prints the public key to add to every replica's control.operator_keys.
    OperatorKey {
        /// Where to write the private key (created with mode 0600; refused if it exists).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Ceremony step 1, on the NEW replica: create an import key in its token, write a request.
    ImportRequest {
        /// Where to write the request (public data).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Ceremony step 2, on an EXISTING replica, by the security officer: approve a request.
    ///
    /// Compare the printed fingerprint with the one shown on the new replica before approving.
    /// The SO PIN comes from hsm.so_pin_file or HSM_VAULT_SO_PIN.
    Approve {
        #[arg(long, value_name = "FILE")]
        request: PathBuf,
    },
    /// Ceremony step 3, on the EXISTING replica: wrap the master key for an approved request.
    Export {
        #[arg(long, value_name = "FILE")]
        request: PathBuf,
        /// Where to write the wrapped key (only the new replica's token can unwrap it).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Ceremony step 4, on the NEW replica: unwrap the master key into its token.
    Import {
        #[arg(long, value_name = "FILE")]
        wrapped: PathBuf,
    },
    /// After the ceremony, on EVERY replica: make this token's master key non-extractable, for good.
    ///
    /// PKCS#11 only lets a key go from extractable to non-extractable, so after this no token
    /// can give the master key to another: a further replica needs its key copied from a
    /// token that has not run this yet. Until then the vault warns at start-up.
    LockExport,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Output {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hsm-vault: {e:#}");
            match e.downcast_ref::<hsm_vault::Error>() {
                Some(hsm_vault::Error::DiskFailed(_)) => {
                    ExitCode::from(hsm_vault::state::disk::EXIT_DISK_FAILED)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = VaultConfig::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => {
            service_kit::logging::init(cfg.log.format, &cfg.log.level);
            service_kit::shutdown::run_server("vault-io", |shutdown| {
                hsm_vault::server::run(cfg, shutdown)
            })??;
            Ok(())
        }
        Command::Init {
            fleet_id,
            max_attempts,
            no_export,
            output,
        } => {
            service_kit::logging::init(cfg.log.format, "warn");
            let fleet_id = FleetId::new(fleet_id)?;
            let max_attempts = match (max_attempts, cfg.max_attempts) {
                (Some(a), Some(b)) if a != b => anyhow::bail!(
                    "--max-attempts {a} disagrees with max_attempts = {b} in the configuration; \
                     give one of them"
                ),
                (Some(n), _) | (None, Some(n)) => n,
                (None, None) => 10,
            };
            let params = FleetParams::new(max_attempts)?;
            let secrets_path = cfg.fleet_secrets_path();
            if secrets_path.exists() {
                anyhow::bail!(
                    "{} already exists: this replica is initialised (use `keys show`)",
                    secrets_path.display()
                );
            }
            let pin = cfg.user_pin()?;
            hsm::init_master_key(&cfg.hsm, &pin, !no_export)?;
            let hsm = Hsm::open(&cfg.hsm, &pin)?;
            let secrets = FleetSecrets::generate(fleet_id, params, &OsEntropy)?;
            secrets.seal_to_file(&hsm, &OsEntropy, &secrets_path)?;
            print_public(&secrets.public(), output, Some((&cfg, !no_export)));
            Ok(())
        }
        Command::Keys { command } => {
            service_kit::logging::init(cfg.log.format, "warn");
            keys(&cfg, command)
        }
        Command::Cluster(args) => cluster::run(&cfg, args),
    }
}

fn keys(cfg: &VaultConfig, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Show { output } => {
            let hsm = Hsm::open(&cfg.hsm, &cfg.user_pin()?)?;
            let secrets = FleetSecrets::unseal_from_file(&hsm, &cfg.fleet_secrets_path())?;
            print_public(&secrets.public(), output, None);
        }
        KeysCommand::UpgradeFleet { max_attempts } => {
            let params = FleetParams::new(max_attempts)?;
            let hsm = Hsm::open(&cfg.hsm, &cfg.user_pin()?)?;
            let path = cfg.fleet_secrets_path();
            let bytes = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let secrets = FleetSecrets::upgrade_v1(&hsm, &bytes, params, &OsEntropy)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            secrets.reseal_file(&hsm, &OsEntropy, &path)?;
            println!(
                "{} upgraded: max_attempts = {max_attempts} is now sealed in it, with a new control key \
                 (the old file is fleet.sealed.old). Copy it to every other replica of fleet {}.",
                path.display(),
                secrets.fleet_id
            );
            print_public(&secrets.public(), Output::Text, None);
        }
        KeysCommand::OperatorKey { out } => {
            let mut seed = zeroize::Zeroizing::new([0u8; 32]);
            getrandom::fill(seed.as_mut_slice())
                .map_err(|e| anyhow::anyhow!("no randomness from the operating system: {e}"))?;
            let key = protocol_spec::keys::StaticSecret::from_bytes(*seed);
            write_private(&out, key.to_hex().as_bytes())?;
            println!("Operator key written to {} (mode 0600).", out.display());
            println!("operator public key  {}", key.public_key());
            println!("  fingerprint        {}", key.public_key().fingerprint());
            println!("Add the public key to control.operator_keys on every replica, then use `hsm-vault cluster --operator-key {}`.", out.display());
        }
        KeysCommand::ImportRequest { out } => {
            let req = hsm::import_request(&cfg.hsm, &cfg.user_pin()?)?;
            write_new(&out, req.to_text().as_bytes())?;
            println!("Import request written to {}.", out.display());
            println!("Fingerprint: {}", req.fingerprint());
            println!("Have the security officer of an existing replica compare it, then run `keys approve`.");
        }
        KeysCommand::Approve { request } => {
            let req = ImportRequest::from_text(&read_text(&request)?)?;
            hsm::approve_import(&cfg.hsm, &cfg.so_pin()?, &req)?;
            println!(
                "Approved import key {} for token {:?}.",
                req.fingerprint(),
                req.token_label
            );
            println!(
                "Next: `keys export --request {} --out master.wrapped` as the vault user.",
                request.display()
            );
        }
        KeysCommand::Export { request, out } => {
            let req = ImportRequest::from_text(&read_text(&request)?)?;
            let wrapped = hsm::export_master_key(&cfg.hsm, &cfg.user_pin()?, &req)?;
            write_new(&out, wrapped.to_text().as_bytes())?;
            println!(
                "Master key wrapped for {} and written to {}.",
                req.fingerprint(),
                out.display()
            );
            println!("Only the requesting token can unwrap it. Next, on the new replica: `keys import --wrapped {}`.", out.display());
        }
        KeysCommand::Import { wrapped } => {
            let w = WrappedMasterKey::from_text(&read_text(&wrapped)?)?;
            let pin = cfg.user_pin()?;
            hsm::import_master_key(&cfg.hsm, &pin, &w)?;
            println!("Master key imported into token {:?}.", cfg.hsm.token_label);
            // The wrapped key itself is not authenticated: the proof that it
            // is the fleet's master key is that it opens the fleet secrets.
            let secrets_path = cfg.fleet_secrets_path();
            if secrets_path.exists() {
                let hsm = Hsm::open(&cfg.hsm, &pin)?;
                let secrets = FleetSecrets::unseal_from_file(&hsm, &secrets_path)?;
                println!(
                    "Verified: it opens {} (fleet {}).",
                    secrets_path.display(),
                    secrets.fleet_id
                );
            } else {
                println!(
                    "Copy fleet.sealed from an existing replica into {}, then run `keys show`: it only opens with the fleet's master key.",
                    cfg.data_dir.display()
                );
            }
        }
        KeysCommand::LockExport => {
            if hsm::lock_export(&cfg.hsm, &cfg.user_pin()?)? {
                println!(
                    "The master key in token {:?} is now non-extractable, for good.",
                    cfg.hsm.token_label
                );
            } else {
                println!(
                    "The master key in token {:?} was already non-extractable; nothing changed.",
                    cfg.hsm.token_label
                );
            }
        }
    }
    Ok(())
}

fn read_text(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
}

/// Like [`write_new`], readable by the owner only.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn write_new(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn print_public(p: &FleetPublic, output: Output, init: Option<(&VaultConfig, bool)>) {
    match output {
        Output::Json => {
            let v = serde_json::json!({
                "fleet_id": p.fleet_id.as_str(),
                "tunnel_key": p.tunnel_key.to_hex(),
                "tunnel_key_fingerprint": p.tunnel_key.fingerprint(),
                "link_key": p.link_key.to_hex(),
                "link_key_fingerprint": p.link_key.fingerprint(),
                "peer_key": p.peer_key.to_hex(),
                "control_key": p.control_key.to_hex(),
                "max_attempts": p.params.max_attempts,
            });
            println!("{v}");
        }
        Output::Text => {
            if let Some((cfg, exportable)) = init {
                println!("Fleet {:?} initialised.", p.fleet_id.as_str());
                println!(
                    "  master key     {:?} in token {:?}, {}",
                    cfg.hsm.key_label,
                    cfg.hsm.token_label,
                    if exportable {
                        "exportable to other replicas only through the key ceremony"
                    } else {
                        "never exportable"
                    }
                );
                println!(
                    "  fleet secrets  {} (sealed; copy it to every replica)",
                    cfg.fleet_secrets_path().display()
                );
            }
            println!("fleet id           {}", p.fleet_id);
            println!("fleet tunnel key   {}", p.tunnel_key);
            println!(
                "  fingerprint      {}   (clients pin this key)",
                p.tunnel_key.fingerprint()
            );
            println!("vault link key     {}", p.link_key);
            println!(
                "  fingerprint      {}   (chatd's vault.link_key)",
                p.link_key.fingerprint()
            );
            println!("control key        {}", p.control_key);
            println!(
                "  fingerprint      {}   (operators' `cluster --fleet-control-key`)",
                p.control_key.fingerprint()
            );
            println!("max_attempts       {}", p.params.max_attempts);
        }
    }
}
