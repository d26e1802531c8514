//! `replica-logins`: counted login attempts per second through real
//! `hsm-vault` processes, for one replica and for a three-replica Raft
//! group side by side in one run, next to the bare opaque-ke server cost.
//! See `replica-logins --help`.

use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use backup_client::vault_flow::{self, PasswordRegistration};
use clap::Parser;
use e2ebk_benches::summary::fmt_duration;
use e2ebk_benches::vault::{fleet_secrets, ke1_messages, memory_log, password, BenchVault};
use hsm_vault::seal::SoftSealer;
use opaque_ke::CredentialRequest;
use protocol_spec::ids::AccountId;
use protocol_spec::keys::StaticSecret;
use protocol_spec::messages::vault::{RegistrationMode, VaultRequest, VaultResponse};
use protocol_spec::opaque::Suite;
use protocol_spec::root_key::RootKey;
use rand_core::OsRng;
use std::net::SocketAddr;
use testkit::cluster::VaultCluster;
use testkit::link::LinkClient;
use testkit::vault::{FleetInfo, RaftTiming, VaultFixture, VaultOptions, VaultProcess};

const LONG_ABOUT: &str = "\
Counted login attempts per second through real hsm-vault processes on loopback, each with its \
own SoftHSM token, for three set-ups measured one after the other in the same run:

  standalone  one replica without Raft ([raft] absent): the attempt is committed to redb with \
fsync before KE2 leaves.
  raft-1      a Raft group of one: the same commit goes through openraft's log.
  raft-3      a Raft group of three (Raft traffic through the test harness's loopback fault \
proxies, which pass bytes through untouched): the attempt is committed by a majority before KE2 \
leaves.

Each attempt is what a client's login start costs the vault: a fresh tunnel (Noise_NK \
handshake), LoginStart with a pre-built KE1 (no Argon2id in the loop), the vault unseals the \
record in the HSM, counts the attempt through the log, seals it back and answers KE2, tunnel \
close. --workers threads each hold one link to the leader and run attempts back to back, each on \
its own accounts, so the figure is the vault's, not one account's lock. The reference is bare \
opaque-ke ServerLogin::start on one core of this machine, measured in the same run.

Full logins (start + finish) are not timed here: the client's Argon2id would share the two cores \
with the vault. The criterion bench vault_login times them in-process.";

const EXAMPLES: &str = "\
Examples:
  cargo build --release --bins
  target/release/replica-logins
  target/release/replica-logins --attempts 2000 --workers 8 --setups raft-1,raft-3";

/// The vault's largest allowed `max_attempts`; accounts are spread so none
/// reaches it.
const MAX_ATTEMPTS: u32 = 1000;
const PER_ACCOUNT: usize = 900;

#[derive(Parser, Debug)]
#[command(name = "replica-logins", version, about = "Counted login attempts per second: one replica vs a three-replica Raft group, same run.", long_about = LONG_ABOUT, after_long_help = EXAMPLES)]
struct Args {
    /// Timed login attempts per set-up.
    #[arg(long, default_value_t = 4000, value_name = "N")]
    attempts: usize,
    /// Concurrent links (threads) driving attempts.
    #[arg(long, default_value_t = 16, value_name = "W")]
    workers: usize,
    /// Untimed attempts per set-up before the clock starts.
    #[arg(long, default_value_t = 200, value_name = "N")]
    warmup: usize,
    /// One-way delay between every pair of replicas of raft-3, in ms (the
    /// test harness's proxies hold every byte that long; this kernel has
    /// no netem). The replicas derive their Raft timings from the round
    /// trip (`raft.peer_round_trip_ms`).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    one_way_delay_ms: u64,
    /// Worker threads (and HSM sessions) of each vault replica.
    #[arg(long, default_value_t = 4, value_name = "N")]
    vault_workers: usize,
    /// Comma-separated set-ups to run, in order.
    #[arg(
        long,
        default_value = "standalone,raft-1,raft-3",
        value_delimiter = ','
    )]
    setups: Vec<String>,
}

struct Outcome {
    setup: String,
    attempts: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replica-logins: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress(msg: &str) {
    eprintln!("[replica-logins] {msg}");
}

fn run(args: &Args) -> anyhow::Result<()> {
    if args.workers == 0 || args.attempts < args.workers {
        bail!("--attempts must be at least --workers, and --workers at least 1");
    }
    for s in &args.setups {
        if !matches!(s.as_str(), "standalone" | "raft-1" | "raft-3") {
            bail!("unknown set-up {s:?}: choose from standalone, raft-1, raft-3");
        }
    }
    progress("reference: bare opaque-ke ServerLogin::start");
    let bare = bare_starts_per_sec();
    let mut results = Vec::new();
    for setup in &args.setups {
        progress(&format!("{setup}: starting"));
        results.push(run_setup(setup, args)?);
    }
    println!();
    println!(
        "Counted login attempts through real hsm-vault processes ({} workers, {} attempts each set-up, {} vault workers, raft-3 {} ms one way)",
        args.workers, args.attempts, args.vault_workers, args.one_way_delay_ms
    );
    println!(
        "{:<12} {:>12} {:>10} {:>10} {:>14}",
        "set-up", "attempts/s", "p50", "p99", "vs bare core"
    );
    println!(
        "{:<12} {:>12.0} {:>10} {:>10} {:>14}",
        "bare (1 core)", bare, "-", "-", "1.00"
    );
    let mut first = None;
    for r in &results {
        let rate = r.attempts as f64 / r.elapsed.as_secs_f64();
        first.get_or_insert(rate);
        println!(
            "{:<12} {:>12.0} {:>10} {:>10} {:>14.3}",
            r.setup,
            rate,
            fmt_duration(r.p50),
            fmt_duration(r.p99),
            rate / bare
        );
    }
    let rate = |name: &str| {
        results
            .iter()
            .find(|r| r.setup == name)
            .map(|r| r.attempts as f64 / r.elapsed.as_secs_f64())
    };
    for (a, b) in [("raft-3", "raft-1"), ("raft-3", "standalone")] {
        if let (Some(x), Some(y)) = (rate(a), rate(b)) {
            println!("{a} / {b} = {:.3}", x / y);
        }
    }
    Ok(())
}

/// Bare `ServerLogin::start` per second on one thread, best of 3 rounds.
fn bare_starts_per_sec() -> f64 {
    let secrets = fleet_secrets();
    let bv = BenchVault::new(
        &secrets,
        Arc::new(SoftSealer::new([3; 32])),
        memory_log(),
        false,
        &["bare"],
    );
    let ke1s: Vec<CredentialRequest<Suite>> = ke1_messages(256)
        .iter()
        .map(|b| CredentialRequest::deserialize(b).expect("KE1 parses"))
        .collect();
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let n = 1000;
        for i in 0..n {
            std::hint::black_box(bv.bare_start(&mut OsRng, ke1s[i % ke1s.len()].clone()));
        }
        best = best.max(n as f64 / t.elapsed().as_secs_f64());
    }
    best
}

/// Holds whichever set-up is running so its processes live until measured.
enum Stack {
    Standalone(VaultFixture, VaultProcess),
    Cluster(VaultCluster),
}

impl Stack {
    fn start(setup: &str, args: &Args) -> Self {
        let delay = Duration::from_millis(args.one_way_delay_ms);
        let opts = VaultOptions {
            max_attempts: MAX_ATTEMPTS,
            workers: args.vault_workers,
            max_queued_requests: 4096,
            raft_timing: if delay.is_zero() {
                RaftTiming::Loopback
            } else {
                RaftTiming::Distance {
                    round_trip_ms: 2 * args.one_way_delay_ms,
                }
            },
            ..VaultOptions::default()
        };
        match setup {
            "standalone" => {
                let f = VaultFixture::init(opts);
                let p = f.spawn();
                Stack::Standalone(f, p)
            }
            _ => {
                let n = if setup == "raft-3" { 3 } else { 1 };
                let mut c = VaultCluster::new(n, opts);
                if n > 1 {
                    for i in 0..n {
                        c.delay(i, delay);
                    }
                }
                c.start_all();
                c.form();
                c.wait_leader(Duration::from_secs(30));
                Stack::Cluster(c)
            }
        }
    }

    /// (link address of the replica that serves, chatd key, fleet facts)
    fn serving(&self) -> (SocketAddr, StaticSecret, FleetInfo) {
        match self {
            Stack::Standalone(f, p) => (p.link_addr, f.chatd_key.clone(), f.fleet.clone()),
            Stack::Cluster(c) => {
                let l = c.wait_leader(Duration::from_secs(30));
                (
                    c.replicas[l].link_addr,
                    c.chatd_key.clone(),
                    c.fleet.clone(),
                )
            }
        }
    }
}

fn run_setup(setup: &str, args: &Args) -> anyhow::Result<Outcome> {
    let stack = Stack::start(setup, args);
    let (addr, chatd_key, fleet) = stack.serving();
    let per_worker = args.attempts / args.workers;
    let warm_per_worker = args.warmup.div_ceil(args.workers);
    let accounts_per_worker = (per_worker + warm_per_worker).div_ceil(PER_ACCOUNT);
    progress(&format!(
        "{setup}: registering {} accounts (client Argon2id each)",
        accounts_per_worker * args.workers
    ));
    let mut link = LinkClient::connect(addr, &chatd_key, &fleet.link_key)
        .context("link to the serving replica")?;
    let mut worker_accounts = Vec::new();
    for w in 0..args.workers {
        let mut mine = Vec::new();
        for a in 0..accounts_per_worker {
            let account = AccountId::new(format!("bench-{w}-{a}")).context("account id")?;
            register(&mut link, &fleet, &account)?;
            mine.push(account);
        }
        worker_accounts.push(mine);
    }
    drop(link);
    let ke1s = Arc::new(ke1_messages(256));
    let barrier = Arc::new(Barrier::new(args.workers + 1));
    let mut handles = Vec::new();
    for accounts in worker_accounts {
        // Links are made here, one after another: the vault lets one
        // address hold only a few handshakes at once.
        let link = LinkClient::connect(addr, &chatd_key, &fleet.link_key).context("worker link")?;
        let (ke1s, barrier, fleet) = (ke1s.clone(), barrier.clone(), fleet.clone());
        handles.push(std::thread::spawn(
            move || -> anyhow::Result<Vec<Duration>> {
                // Reaches the barrier even when the warm-up fails, so the
                // run ends with the error instead of waiting for ever.
                let mut link = link;
                let mut warm = || -> anyhow::Result<()> {
                    for n in 0..warm_per_worker {
                        attempt(
                            &mut link,
                            &fleet,
                            &accounts[n / PER_ACCOUNT],
                            &ke1s[n % ke1s.len()],
                        )
                        .context("warm-up attempt")?;
                    }
                    Ok(())
                };
                let warmed = warm();
                barrier.wait();
                warmed?;
                let mut lat = Vec::with_capacity(per_worker);
                for n in warm_per_worker..warm_per_worker + per_worker {
                    let t = Instant::now();
                    attempt(
                        &mut link,
                        &fleet,
                        &accounts[n / PER_ACCOUNT],
                        &ke1s[n % ke1s.len()],
                    )?;
                    lat.push(t.elapsed());
                }
                Ok(lat)
            },
        ));
    }
    progress(&format!(
        "{setup}: warm-up done when all workers reach the barrier"
    ));
    barrier.wait();
    let t = Instant::now();
    let mut lat = Vec::new();
    for h in handles {
        match h.join() {
            Ok(r) => lat.extend(r?),
            Err(_) => bail!("a worker thread panicked"),
        }
    }
    let elapsed = t.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    progress(&format!(
        "{setup}: {} attempts in {}",
        lat.len(),
        fmt_duration(elapsed)
    ));
    let out = Outcome {
        setup: setup.to_string(),
        attempts: lat.len(),
        elapsed,
        p50: pct(0.5),
        p99: pct(0.99),
    };
    drop(stack);
    Ok(out)
}

fn register(link: &mut LinkClient, fleet: &FleetInfo, account: &AccountId) -> anyhow::Result<()> {
    let mut t = link.open_tunnel(account, &fleet.tunnel_key)?;
    let (flow, start) = PasswordRegistration::start(&password(), RegistrationMode::Create)?;
    let r = link.request(&mut t, &start)?;
    let finish = flow.finish(
        &r,
        account,
        &fleet.fleet_id,
        &RootKey::from_entropy([7; 30]),
    )?;
    let r = link.request(&mut t, &finish)?;
    vault_flow::registered(&r, RegistrationMode::Create)?;
    link.close_tunnel(t)?;
    Ok(())
}

/// One counted attempt: tunnel, LoginStart, KE2, close.
fn attempt(
    link: &mut LinkClient,
    fleet: &FleetInfo,
    account: &AccountId,
    ke1: &[u8],
) -> anyhow::Result<()> {
    let mut t = link.open_tunnel(account, &fleet.tunnel_key)?;
    let r = link.request(
        &mut t,
        &VaultRequest::LoginStart {
            credential_request: ke1.to_vec(),
        },
    )?;
    if !matches!(r, VaultResponse::LoginStarted { .. }) {
        bail!("login start for {account} answered {r:?}");
    }
    link.close_tunnel(t)?;
    Ok(())
}
