//! `chatd`: the E2EBK connection front-end binary. Thin: parses the command
//! line, loads the configuration and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use chatd::config::ChatdConfig;
use chatd::directory::SqliteDirectory;
use clap::{Parser, Subcommand, ValueEnum};
use protocol_spec::ids::AccountId;
use protocol_spec::keys::PublicKey;

const ABOUT: &str = "The E2EBK connection front-end: authenticates clients and relays their vault \
tunnels, which it cannot read.";

const LONG_ABOUT: &str = "\
chatd holds every client's WebSocket connection. Clients authenticate with Noise_IK: their \
device key must be enrolled for the account they name (a one-time enrolment code enrols a new \
device). chatd then relays each client's end-to-end encrypted tunnel to the Backup Key Vault over \
a pool of Noise_KK links to the vault leader, following leader changes. It never holds a key that \
could open a tunnel.

Configuration comes from a TOML file (--config, see ops/config/chatd.example.toml) and environment \
variables CHATD_<SECTION>__<KEY> (for example CHATD_LISTEN__ADDR=0.0.0.0:7000). Several chatd \
processes can share one port with listen.reuse_port = true and one data_dir.";

const EXAMPLES: &str = "\
Examples:
  chatd --config chatd.toml init                      # create chatd.key and link.key
  chatd --config chatd.toml accounts invite +15551234567
  chatd --config chatd.toml serve
  chatd --config chatd.toml accounts revoke +15551234567 --device <hex>

Signals: SIGTERM drains (readiness false, new upgrades get 503, connections close with 4011 once \
their in-flight requests are answered or at limits.drain_deadline_secs); SIGINT closes at once (1001).

Exit status: 0 on success, 1 on any error (one line on stderr says what to fix), 2 on a usage error.";

#[derive(Parser)]
#[command(name = "chatd", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = EXAMPLES)]
struct Cli {
    /// Configuration file (TOML). Without it, defaults and CHATD_* variables apply.
    #[arg(short, long, global = true, env = "CHATD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create chatd's static key (pinned by clients) and link key (accepted by the vault).
    Init {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Run chatd: the WebSocket listener and the admin listener (/metrics, /livez, /readyz).
    Serve,
    /// Print chatd's public keys.
    Keys {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Manage the account directory (works while chatd runs).
    Accounts {
        #[command(subcommand)]
        command: AccountsCommand,
    },
}

#[derive(Subcommand)]
enum AccountsCommand {
    /// Create an account (no device can use it until one enrols with a code).
    Add { account: String },
    /// Issue a one-time enrolment code for a new device of ACCOUNT (creating it if needed).
    ///
    /// The code is shown once; only its hash is stored. It expires after --ttl-hours and
    /// works for one device only.
    Invite {
        account: String,
        #[arg(long, default_value_t = 24)]
        ttl_hours: u32,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Revoke one device key of ACCOUNT, or all of them (and its unused codes).
    ///
    /// Revoked devices cannot connect or enrol again; a connected one is closed with 4004
    /// within limits.revocation_check_secs.
    Revoke {
        account: String,
        /// The device's public key (hex); without it, every device of the account.
        #[arg(long, value_name = "HEX")]
        device: Option<String>,
    },
    /// List accounts with their device and pending-code counts.
    List {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// List the device keys of ACCOUNT.
    Devices {
        account: String,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = ChatdConfig::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => {
            service_kit::logging::init(cfg.log.format, &cfg.log.level);
            service_kit::shutdown::run_server("chatd-io", |shutdown| {
                chatd::server::run(cfg, shutdown)
            })??;
            Ok(())
        }
        Command::Init { output } => {
            let s = chatd::keys::generate(&cfg.static_key_path())?;
            let l = chatd::keys::generate(&cfg.link_key_path())?;
            print_keys(&s.public_key(), &l.public_key(), output);
            Ok(())
        }
        Command::Keys { output } => {
            let s = chatd::keys::load(&cfg.static_key_path())?;
            let l = chatd::keys::load(&cfg.link_key_path())?;
            print_keys(&s.public_key(), &l.public_key(), output);
            Ok(())
        }
        Command::Accounts { command } => accounts(&cfg, command),
    }
}

fn print_keys(static_key: &PublicKey, link_key: &PublicKey, output: Output) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "static_key": static_key.to_hex(),
                "static_key_fingerprint": static_key.fingerprint(),
                "link_key": link_key.to_hex(),
            })
        ),
        Output::Text => {
            println!("chatd static key   {static_key}");
            println!(
                "  fingerprint      {}   (clients pin this key)",
                static_key.fingerprint()
            );
            println!("chatd link key     {link_key}");
            println!(
                "  fingerprint      {}   (add to the vault's link.chatd_keys)",
                link_key.fingerprint()
            );
        }
    }
}

fn accounts(cfg: &ChatdConfig, command: AccountsCommand) -> anyhow::Result<()> {
    let dir = SqliteDirectory::open(&cfg.directory_path())?;
    match command {
        AccountsCommand::Add { account } => {
            let a = AccountId::new(account)?;
            if dir.add_account(&a, now())? {
                println!(
                    "Account {a} created. Next: `chatd accounts invite {a}` for its first device."
                );
            } else {
                println!("Account {a} already exists.");
            }
        }
        AccountsCommand::Invite {
            account,
            ttl_hours,
            output,
        } => {
            let a = AccountId::new(account)?;
            let ttl = i64::from(ttl_hours.max(1)) * 3600;
            let code = dir.invite(&a, now(), ttl)?;
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"account": a.as_str(), "code": code.expose(), "expires_in_secs": ttl})
                ),
                Output::Text => {
                    println!("Enrolment code for {a}: {}", code.expose());
                    println!("It works once, for one device, within {ttl_hours} hours. It is not stored; copy it now.");
                }
            }
        }
        AccountsCommand::Revoke { account, device } => {
            let a = AccountId::new(account)?;
            let device = device.map(|d| PublicKey::from_hex(&d)).transpose()?;
            let n = dir.revoke(&a, device.as_ref(), now())?;
            println!("Revoked {n} device key(s) of {a}.");
        }
        AccountsCommand::List { output } => {
            let list = dir.accounts(now())?;
            match output {
                Output::Json => println!("{}", serde_json::to_string(&list)?),
                Output::Text => {
                    println!(
                        "{:<40} {:>8} {:>8} {:>8}",
                        "ACCOUNT", "DEVICES", "REVOKED", "CODES"
                    );
                    for a in list {
                        println!(
                            "{:<40} {:>8} {:>8} {:>8}",
                            a.account, a.devices_enrolled, a.devices_revoked, a.pending_codes
                        );
                    }
                }
            }
        }
        AccountsCommand::Devices { account, output } => {
            let a = AccountId::new(account)?;
            let list = dir.devices(&a)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string(&list)?),
                Output::Text => {
                    for d in list {
                        let state = match d.revoked_at {
                            Some(t) => format!("revoked at {t}"),
                            None => "enrolled".to_owned(),
                        };
                        println!("{}  enrolled at {}  {state}", d.device_key, d.enrolled_at);
                    }
                }
            }
        }
    }
    Ok(())
}
