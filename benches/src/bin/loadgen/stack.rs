//! The stack under load: a real hsm-vault and a real chatd on loopback
//! with their limits raised, one enrolled device, and what the phases
//! read from the servers (pids, connection gauge, logged problems).

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use backup_client::connection::{Connection, Endpoint};
use e2ebk_benches::noise;
use protocol_spec::ids::{AccountId, EnrolmentCode};
use protocol_spec::keys::StaticSecret;
use testkit::chatd::{ChatdFixture, ChatdOptions, ChatdProcess};
use testkit::vault::{VaultFixture, VaultOptions, VaultProcess};
use tokio::runtime::Runtime;

use crate::{progress, Args};

/// The running stack and what the phases need from it.
pub(crate) struct Stack {
    pub(crate) vault: VaultFixture,
    pub(crate) vault_proc: VaultProcess,
    pub(crate) chatd: ChatdFixture,
    pub(crate) chatd_proc: ChatdProcess,
    pub(crate) account: AccountId,
    pub(crate) device: StaticSecret,
}

impl Stack {
    pub(crate) fn start(args: &Args, rt: &Runtime) -> anyhow::Result<Self> {
        let vault = VaultFixture::init(VaultOptions::default());
        let vault_proc = vault.spawn();
        let max_connections = args.connections.max(args.handshakes) + 256;
        let chatd = ChatdFixture::new(
            &vault,
            &[vault_proc.link_addr],
            ChatdOptions {
                extra_limits: load_limits(),
                extra_listen: format!("max_connections = {max_connections}"),
                port: 0,
            },
        );
        let chatd_proc = chatd.spawn();
        let account = AccountId::new("load-0").context("account id")?;
        let device = noise::random_static();
        let code = EnrolmentCode::new(chatd.invite(account.as_str())).context("enrolment code")?;
        let ep = Endpoint {
            url: chatd_proc.url(),
            chatd_key: chatd.static_key,
            account: account.clone(),
        };
        rt.block_on(enrol(&ep, &device, code))?;
        Ok(Stack {
            vault,
            vault_proc,
            chatd,
            chatd_proc,
            account,
            device,
        })
    }

    pub(crate) fn endpoint(&self) -> Endpoint {
        Endpoint {
            url: self.chatd_proc.url(),
            chatd_key: self.chatd.static_key,
            account: self.account.clone(),
        }
    }

    pub(crate) fn chatd_pid(&self) -> u32 {
        self.chatd_proc.pid()
    }

    /// chatd's open-connection gauge, from its admin listener.
    pub(crate) fn chatd_connections(&self) -> f64 {
        let (_, body) = self.chatd_proc.admin_get("/metrics");
        testkit::metric(&body, "chatd_connections")
    }

    /// Waits (bounded) until chatd has let go of every load connection.
    pub(crate) fn wait_drained(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.chatd_connections() <= 0.0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        progress("chatd still reports open connections; continuing");
    }
}

/// chatd's `[limits]` raised for load: one source range, one account, many
/// connections, many frames; idle connections must not time out (pings
/// are only answered when a client reads).
pub(crate) fn load_limits() -> String {
    "handshakes_per_ip_per_sec = 1000000.0\n\
     handshake_burst = 1000000.0\n\
     max_connections_per_account = 100000\n\
     messages_per_sec = 100000.0\n\
     message_burst = 100000.0\n\
     vault_ops_per_minute = 100000000\n\
     idle_timeout_secs = 3600\n"
        .into()
}

/// Enrols `device` at the chatd of `ep` with a one-time code.
pub(crate) async fn enrol(
    ep: &Endpoint,
    device: &StaticSecret,
    code: EnrolmentCode,
) -> anyhow::Result<()> {
    let c = Connection::connect(ep, device, Some(code))
        .await
        .map_err(|e| anyhow!("enrolling the load device: {e}"))?;
    c.close().await;
    Ok(())
}

/// Shows the warnings and errors a server logged (the first few), to
/// explain failures in a phase.
pub(crate) fn print_log_problems(name: &str, log: &str) {
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    if problems.is_empty() {
        return;
    }
    println!();
    println!(
        "{name} logged {} warnings or errors; the first:",
        problems.len()
    );
    for l in problems.iter().take(10) {
        println!("  {}", strip_ansi(l));
    }
}

/// Removes terminal colour sequences (`ESC [ ... m`) from a log line.
pub(crate) fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
