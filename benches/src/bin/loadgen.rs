//! `loadgen`: drives a real `hsm-vault` and a real `chatd` on loopback and
//! reports, next to references measured in the same run, what chatd costs
//! per idle authenticated connection, how fast it admits new ones, and
//! how fast tunnels reach the vault. See `loadgen --help`.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use backup_client::connection::{Connection, Endpoint};
use backup_client::vault_flow::{self, PasswordRegistration};
use clap::Parser;
use e2ebk_benches::load::{self, connect_authenticated, open_many, ws_connect, Opened};
use e2ebk_benches::noise::{self, BareCost, Pattern};
use e2ebk_benches::procfs;
use futures_util::StreamExt;
use protocol_spec::ids::{AccountId, EnrolmentCode};
use protocol_spec::keys::StaticSecret;
use protocol_spec::messages::vault::{RegistrationMode, VaultRequest, VaultResponse};
use protocol_spec::password::Password;
use protocol_spec::root_key::RootKey;
use testkit::chatd::{ChatdFixture, ChatdOptions, ChatdProcess};
use testkit::vault::{VaultFixture, VaultOptions, VaultProcess};
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const ABOUT: &str = "Load generator: real hsm-vault and chatd processes on loopback, measured \
against references taken in the same run.";

const LONG_ABOUT: &str = "\
Load generator: starts a real hsm-vault (SoftHSM token in a temporary folder) and a real chatd \
on 127.0.0.1 with their rate limits raised for load, enrols one device, and runs these phases:

  reference  In-process, one thread: the bare Noise_IK responder (chatd's handshake) and the bare \
Noise_NK responder (the vault's tunnel handshake), read_first + write_response only.
  idle       Opens --connections authenticated connections and holds them idle; reports chatd's \
RSS growth per connection (VmRSS from /proc) and chatd's CPU use while they idle. The same number \
of plain WebSocket connections to a bare tokio-tungstenite server (a child process, 4 KiB \
buffers like chatd's) gives the reference per-connection cost, measured the same way.
  handshake  Opens --handshakes new authenticated connections with --concurrency concurrent \
connectors; reports the wall-clock rate and chatd's handshakes per CPU-second of chatd, as a \
ratio to the bare Noise_IK responder's handshakes per core-second. Noise message 1 is built \
before the clock starts, so the client's half of the work in the timed part is small.
  tunnel     --tunnel-ops cycles of tunnel open + Status + tunnel close through chatd to the \
vault (the account has a registered password, so Status unseals a record in the HSM), with \
--tunnel-concurrency connections at once; reports the rate and the vault's and chatd's CPU per \
cycle, and the vault's cycles per CPU-second as a ratio to the bare Noise_NK responder.

Every phase is bounded: a fixed number of connections or operations, and --phase-timeout-secs. \
All traffic stays on 127.0.0.0/8; client sockets are spread over 127.0.0.2.. (--source-ips) so \
ephemeral ports never run out. One process holds at most one phase's connections at a time; the \
open-file limit (20,000 per process here) caps --connections and --handshakes at 18,000.

Build the servers first: the load generator runs the hsm-vault and chatd binaries next to its own \
executable.";

const EXAMPLES: &str = "\
Examples:
  cargo build --release --bins
  target/release/loadgen
  target/release/loadgen --connections 2000 --handshakes 2000 --tunnel-ops 500
  target/release/loadgen --connections 0 --tunnel-ops 0 --concurrency 16

Exit status: 0 when every phase ran (failures inside a phase are reported in its table), 1 when \
the stack could not start or a phase could not run.";

/// Largest number of sockets one phase holds in this process.
const MAX_HELD: usize = 18_000;

#[derive(Parser, Debug)]
#[command(name = "loadgen", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = EXAMPLES)]
struct Args {
    /// Idle authenticated connections to hold for the memory phase (0 skips it).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    connections: usize,

    /// New authenticated connections to open, timed, in the handshake phase (0 skips it).
    #[arg(long, default_value_t = 5_000, value_name = "N")]
    handshakes: usize,

    /// Concurrent connectors in the idle and handshake phases.
    #[arg(long, default_value_t = 64, value_name = "C")]
    concurrency: usize,

    /// Tunnel cycles (open + Status + close) in the tunnel phase (0 skips it).
    #[arg(long, default_value_t = 2_000, value_name = "N")]
    tunnel_ops: usize,

    /// Connections running tunnel cycles at the same time.
    #[arg(long, default_value_t = 8, value_name = "C")]
    tunnel_concurrency: usize,

    /// Seconds to wait after opening the idle connections before reading RSS; chatd's idle CPU
    /// is then sampled over as many seconds again.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    settle_secs: u64,

    /// Skip the bare tokio-tungstenite server (the per-connection memory reference).
    #[arg(long)]
    no_bare_ws: bool,

    /// Rounds of 1,000 handshakes for each in-process responder reference; the fastest counts.
    #[arg(long, default_value_t = 5, value_name = "N")]
    bare_rounds: usize,

    /// Spread client sockets over this many source addresses, 127.0.0.2 upwards.
    #[arg(long, default_value_t = 8, value_name = "N")]
    source_ips: usize,

    /// Hard limit on each phase, in seconds; a phase cut short reports what it did.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    phase_timeout_secs: u64,

    /// Internal: run as the bare WebSocket server child process.
    #[arg(long, hide = true)]
    bare_ws_server: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.bare_ws_server {
        bare_ws_server(args.phase_timeout_secs.saturating_mul(4))
    } else {
        run(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress(msg: &str) {
    eprintln!("[loadgen] {msg}");
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The running stack and what the phases need from it.
struct Stack {
    vault: VaultFixture,
    vault_proc: VaultProcess,
    chatd: ChatdFixture,
    chatd_proc: ChatdProcess,
    account: AccountId,
    device: StaticSecret,
}

impl Stack {
    fn start(args: &Args, rt: &Runtime) -> anyhow::Result<Self> {
        let vault = VaultFixture::init(VaultOptions::default());
        let vault_proc = vault.spawn();
        let max_connections = args.connections.max(args.handshakes) + 256;
        // Limits raised for load: one source range, one account, many
        // connections, many frames; idle connections must not time out
        // (pings are only answered when a client reads).
        let limits = "handshakes_per_ip_per_sec = 1000000.0\n\
                      handshake_burst = 1000000.0\n\
                      max_connections_per_account = 100000\n\
                      messages_per_sec = 100000.0\n\
                      message_burst = 100000.0\n\
                      vault_ops_per_minute = 100000000\n\
                      idle_timeout_secs = 3600\n";
        let chatd = ChatdFixture::new(
            &vault,
            &[vault_proc.link_addr],
            ChatdOptions {
                extra_limits: limits.into(),
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
        rt.block_on(async {
            let c = Connection::connect(&ep, &device, Some(code))
                .await
                .map_err(|e| anyhow!("enrolling the load device: {e}"))?;
            c.close().await;
            anyhow::Ok(())
        })?;
        Ok(Stack {
            vault,
            vault_proc,
            chatd,
            chatd_proc,
            account,
            device,
        })
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            url: self.chatd_proc.url(),
            chatd_key: self.chatd.static_key,
            account: self.account.clone(),
        }
    }

    fn chatd_pid(&self) -> u32 {
        self.chatd_proc.pid()
    }

    /// chatd's open-connection gauge, from its admin listener.
    fn chatd_connections(&self) -> f64 {
        let (_, body) = self.chatd_proc.admin_get("/metrics");
        testkit::metric(&body, "chatd_connections")
    }

    /// Waits (bounded) until chatd has let go of every load connection.
    fn wait_drained(&self, limit: Duration) {
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

#[derive(Debug, Default)]
struct Report {
    pressure_start: String,
    ik: Option<BareCost>,
    nk: Option<BareCost>,
    idle: Option<IdleResult>,
    bare_ws: Option<IdleResult>,
    handshake: Option<RateResult>,
    tunnel: Option<TunnelResult>,
}

#[derive(Debug)]
struct IdleResult {
    requested: usize,
    held: usize,
    failures: usize,
    first_error: Option<String>,
    rss_before_kib: u64,
    rss_after_kib: u64,
    /// Server CPU while the connections idled, fraction of one core.
    idle_cpu: Option<f64>,
}

impl IdleResult {
    fn per_conn_kib(&self) -> f64 {
        (self.rss_after_kib.saturating_sub(self.rss_before_kib)) as f64 / self.held.max(1) as f64
    }
}

#[derive(Debug)]
struct RateResult {
    ok: usize,
    failures: usize,
    first_error: Option<String>,
    elapsed: Duration,
    chatd_cpu: Duration,
    loadgen_cpu: Duration,
}

impl RateResult {
    fn wall_rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn per_chatd_cpu_sec(&self) -> f64 {
        self.ok as f64 / self.chatd_cpu.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug)]
struct TunnelResult {
    ok: usize,
    failures: usize,
    first_error: Option<String>,
    elapsed: Duration,
    vault_cpu: Duration,
    chatd_cpu: Duration,
}

fn run(args: &Args) -> anyhow::Result<()> {
    if args.connections > MAX_HELD || args.handshakes > MAX_HELD {
        bail!(
            "--connections and --handshakes are capped at {MAX_HELD} (the open-file limit is 20,000 \
             per process); run several load generators for more"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("loadgen")
        .build()
        .context("tokio runtime")?;
    let ticks = procfs::clock_ticks_per_sec();
    let sources = load::source_ips(args.source_ips);
    let phase_limit = Duration::from_secs(args.phase_timeout_secs.max(1));
    let mut report = Report {
        pressure_start: procfs::cpu_pressure_note(),
        ..Report::default()
    };

    progress("reference: bare Noise responders in-process");
    report.ik = Some(noise::bare_responder(Pattern::Ik, args.bare_rounds, 1000));
    report.nk = Some(noise::bare_responder(Pattern::Nk, args.bare_rounds, 1000));

    progress("starting hsm-vault and chatd");
    let stack = Stack::start(args, &rt)?;
    progress(&format!(
        "chatd pid {}, hsm-vault pid {}",
        stack.chatd_pid(),
        stack.vault_proc.pid()
    ));
    let cpu = |pid: u32| procfs::cpu_time(pid, ticks).unwrap_or_default();

    if args.connections > 0 {
        progress(&format!(
            "idle: opening {} authenticated connections",
            args.connections
        ));
        let pid = stack.chatd_pid();
        let before = procfs::rss_kib(pid).context("chatd VmRSS")?;
        let prepared = load::prepare(
            args.connections,
            &stack.device,
            &stack.chatd.static_key,
            &stack.account,
        )
        .map_err(|e| anyhow!(e))?;
        let addr = stack.chatd_proc.addr;
        let opened = rt.block_on(open_many(
            prepared,
            &sources,
            args.concurrency,
            Instant::now() + phase_limit,
            move |src, p| connect_authenticated(src, addr, p),
        ));
        report.idle = Some(hold_and_measure(
            &rt,
            opened,
            args.connections,
            pid,
            before,
            args.settle_secs,
            ticks,
        )?);
        stack.wait_drained(Duration::from_secs(60));
    }

    if args.connections > 0 && !args.no_bare_ws {
        progress(&format!(
            "idle reference: {} WebSocket connections to a bare tokio-tungstenite server",
            args.connections
        ));
        let mut child = BareWsChild::spawn(args.phase_timeout_secs)?;
        let pid = child.pid();
        let before = procfs::rss_kib(pid).context("bare server VmRSS")?;
        let addr = child.addr;
        let opened = rt.block_on(open_many(
            vec![(); args.connections],
            &sources,
            args.concurrency,
            Instant::now() + phase_limit,
            move |src, ()| ws_connect(src, addr),
        ));
        report.bare_ws = Some(hold_and_measure(
            &rt,
            opened,
            args.connections,
            pid,
            before,
            args.settle_secs,
            ticks,
        )?);
        child.stop();
    }

    if args.handshakes > 0 {
        progress(&format!(
            "handshake: {} new connections, {} concurrent connectors",
            args.handshakes, args.concurrency
        ));
        let pid = stack.chatd_pid();
        let prepared = load::prepare(
            args.handshakes,
            &stack.device,
            &stack.chatd.static_key,
            &stack.account,
        )
        .map_err(|e| anyhow!(e))?;
        let addr = stack.chatd_proc.addr;
        let (c0, l0) = (cpu(pid), cpu(std::process::id()));
        let opened = rt.block_on(open_many(
            prepared,
            &sources,
            args.concurrency,
            Instant::now() + phase_limit,
            move |src, p| connect_authenticated(src, addr, p),
        ));
        let (c1, l1) = (cpu(pid), cpu(std::process::id()));
        report.handshake = Some(RateResult {
            ok: opened.held.len(),
            failures: opened.failures,
            first_error: opened.first_error.clone(),
            elapsed: opened.elapsed,
            chatd_cpu: c1.saturating_sub(c0),
            loadgen_cpu: l1.saturating_sub(l0),
        });
        rt.block_on(async move { drop(opened) });
        stack.wait_drained(Duration::from_secs(60));
    }

    if args.tunnel_ops > 0 {
        progress(&format!(
            "tunnel: {} cycles of open + Status + close over {} connections",
            args.tunnel_ops, args.tunnel_concurrency
        ));
        report.tunnel = Some(tunnel_phase(args, &rt, &stack, phase_limit, ticks)?);
    }

    print_report(args, &report, &stack);
    let failed = report.idle.as_ref().is_some_and(|i| i.failures > 0)
        || report.handshake.as_ref().is_some_and(|h| h.failures > 0)
        || report.tunnel.as_ref().is_some_and(|t| t.failures > 0);
    if failed {
        print_log_problems("chatd", &stack.chatd_proc.log());
        print_log_problems("hsm-vault", &stack.vault_proc.log());
    }
    Ok(())
}

/// Shows the warnings and errors a server logged (the first few), to
/// explain failures in a phase.
fn print_log_problems(name: &str, log: &str) {
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
fn strip_ansi(line: &str) -> String {
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

/// Waits for the connections to settle, reads the server's RSS, samples
/// its idle CPU, then drops the connections.
fn hold_and_measure<T: Send + 'static>(
    rt: &Runtime,
    opened: Opened<T>,
    requested: usize,
    pid: u32,
    rss_before_kib: u64,
    settle_secs: u64,
    ticks: u64,
) -> anyhow::Result<IdleResult> {
    progress(&format!(
        "  {} open ({} failed) in {:.1} s; settling {settle_secs} s",
        opened.held.len(),
        opened.failures,
        opened.elapsed.as_secs_f64()
    ));
    std::thread::sleep(Duration::from_secs(settle_secs));
    let rss_after_kib = procfs::rss_kib(pid).context("server VmRSS")?;
    let cpu0 = procfs::cpu_time(pid, ticks);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(settle_secs.max(1)));
    let idle_cpu = match (cpu0, procfs::cpu_time(pid, ticks)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64() / t0.elapsed().as_secs_f64()),
        _ => None,
    };
    let result = IdleResult {
        requested,
        held: opened.held.len(),
        failures: opened.failures,
        first_error: opened.first_error.clone(),
        rss_before_kib,
        rss_after_kib,
        idle_cpu,
    };
    rt.block_on(async move { drop(opened) });
    Ok(result)
}

fn tunnel_phase(
    args: &Args,
    rt: &Runtime,
    stack: &Stack,
    limit: Duration,
    ticks: u64,
) -> anyhow::Result<TunnelResult> {
    let ep = stack.endpoint();
    let fleet = stack.vault.fleet.clone();
    let account = stack.account.clone();
    let device = stack.device.clone();
    let workers = args.tunnel_concurrency.clamp(1, 256);
    let total = args.tunnel_ops;
    let conns = rt.block_on(async {
        // Register a password so Status reads and unseals a real record.
        let mut c = Connection::connect(&ep, &device, None)
            .await
            .map_err(|e| anyhow!("connect: {e}"))?;
        let mut t = c
            .open_tunnel(&fleet.tunnel_key, &fleet.fleet_id)
            .await
            .map_err(|e| anyhow!("open tunnel: {e}"))?;
        let (flow, start) = PasswordRegistration::start(
            &Password::prepare("loadgen password").map_err(|e| anyhow!("{e}"))?,
            RegistrationMode::Create,
        )
        .map_err(|e| anyhow!("{e}"))?;
        let r = c
            .request(&mut t, &start)
            .await
            .map_err(|e| anyhow!("register start: {e}"))?;
        let finish = flow
            .finish(
                &r,
                &account,
                &fleet.fleet_id,
                &RootKey::from_entropy([4; 30]),
            )
            .map_err(|e| anyhow!("register finish: {e}"))?;
        let r = c
            .request(&mut t, &finish)
            .await
            .map_err(|e| anyhow!("register: {e}"))?;
        vault_flow::registered(&r).map_err(|e| anyhow!("register: {e}"))?;
        c.close_tunnel(t)
            .await
            .map_err(|e| anyhow!("close tunnel: {e}"))?;
        c.close().await;
        let mut conns = Vec::with_capacity(workers);
        for _ in 0..workers {
            conns.push(
                Connection::connect(&ep, &device, None)
                    .await
                    .map_err(|e| anyhow!("connect: {e}"))?,
            );
        }
        anyhow::Ok(conns)
    })?;
    let (vpid, cpid) = (stack.vault_proc.pid(), stack.chatd_pid());
    let cpu = |pid: u32| procfs::cpu_time(pid, ticks).unwrap_or_default();
    let (v0, c0) = (cpu(vpid), cpu(cpid));
    let claimed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let first_error: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let deadline = Instant::now() + limit;
    let t0 = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for mut c in conns {
            let (claimed, done, failed, first_error, fleet) = (
                claimed.clone(),
                done.clone(),
                failed.clone(),
                first_error.clone(),
                fleet.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut consecutive_failures = 0;
                while claimed.fetch_add(1, Ordering::SeqCst) < total && Instant::now() < deadline {
                    let cycle = async {
                        let mut t = c
                            .open_tunnel(&fleet.tunnel_key, &fleet.fleet_id)
                            .await
                            .map_err(|e| format!("open tunnel: {e}"))?;
                        let r = c
                            .request(&mut t, &VaultRequest::Status)
                            .await
                            .map_err(|e| format!("status: {e}"))?;
                        if !matches!(r, VaultResponse::Status(_)) {
                            return Err(format!("status answered {}", r.label()));
                        }
                        c.close_tunnel(t)
                            .await
                            .map_err(|e| format!("close tunnel: {e}"))
                    };
                    let outcome = match tokio::time::timeout(Duration::from_secs(30), cycle).await {
                        Ok(r) => r,
                        Err(_) => Err("a cycle took over 30 s".into()),
                    };
                    match outcome {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::SeqCst);
                            consecutive_failures = 0;
                        }
                        Err(e) => {
                            // A tunnel can fail while the connection is
                            // fine (the vault link dropped): go on, unless
                            // the connection itself seems gone.
                            failed.fetch_add(1, Ordering::SeqCst);
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            consecutive_failures += 1;
                            if consecutive_failures >= 3 {
                                break;
                            }
                        }
                    }
                }
                c.close().await;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let elapsed = t0.elapsed();
    let (v1, c1) = (cpu(vpid), cpu(cpid));
    let first_error = first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(TunnelResult {
        ok: done.load(Ordering::SeqCst),
        failures: failed.load(Ordering::SeqCst),
        first_error,
        elapsed,
        vault_cpu: v1.saturating_sub(v0),
        chatd_cpu: c1.saturating_sub(c0),
    })
}

fn print_report(args: &Args, r: &Report, stack: &Stack) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!();
    println!(
        "loadgen results ({cores} cores; chatd pid {}, hsm-vault pid {}; all on 127.0.0.0/8)",
        stack.chatd_pid(),
        stack.vault_proc.pid()
    );
    println!(
        "noise: at start {}; at end {}",
        r.pressure_start,
        procfs::cpu_pressure_note()
    );
    println!();
    println!(
        "reference, in-process, one thread (fastest of {} rounds of 1,000)",
        args.bare_rounds
    );
    for (name, c) in [
        ("Noise_IK responder (chatd handshake)", r.ik),
        ("Noise_NK responder (vault tunnel)", r.nk),
    ] {
        if let Some(c) = c {
            println!(
                "  {name:<40} {:>8.1} µs/handshake {:>9.0} per core-second",
                c.cpu.as_secs_f64() * 1e6,
                c.per_core_sec()
            );
        }
    }
    if let Some(i) = &r.idle {
        println!();
        println!(
            "idle authenticated connections: {} of {} open ({} failed{})",
            i.held,
            i.requested,
            i.failures,
            i.first_error
                .as_deref()
                .map(|e| format!("; first: {e}"))
                .unwrap_or_default()
        );
        println!(
            "  chatd RSS before / after            {:>8.1} / {:.1} MiB",
            mib(i.rss_before_kib),
            mib(i.rss_after_kib)
        );
        println!(
            "  chatd RSS per connection            {:>8.2} KiB",
            i.per_conn_kib()
        );
        if let Some(b) = &r.bare_ws {
            println!(
                "  bare tokio-tungstenite, 4 KiB bufs  {:>8.2} KiB per connection ({} held; RSS {:.1} -> {:.1} MiB)",
                b.per_conn_kib(),
                b.held,
                mib(b.rss_before_kib),
                mib(b.rss_after_kib)
            );
            println!(
                "  ratio chatd / bare                  {:>8.2}x",
                i.per_conn_kib() / b.per_conn_kib().max(1e-9)
            );
        }
        println!("  DESIGN.md reference (bare, 4 KiB)      ~6.8 KB");
        if let Some(cpu) = i.idle_cpu {
            println!(
                "  chatd CPU while idle                {:>8.1} % of one core",
                cpu * 100.0
            );
        }
        if let Some(cpu) = r.bare_ws.as_ref().and_then(|b| b.idle_cpu) {
            println!(
                "  bare server CPU while idle          {:>8.1} % of one core",
                cpu * 100.0
            );
        }
    }
    if let Some(h) = &r.handshake {
        println!();
        println!(
            "new authenticated connections: {} ok, {} failed{} ({} concurrent connectors)",
            h.ok,
            h.failures,
            h.first_error
                .as_deref()
                .map(|e| format!("; first: {e}"))
                .unwrap_or_default(),
            args.concurrency
        );
        println!(
            "  wall-clock rate                     {:>8.0} connections/s ({:.2} s)",
            h.wall_rate(),
            h.elapsed.as_secs_f64()
        );
        println!(
            "  chatd CPU                           {:>8.2} s = {:.0} handshakes per chatd core-second ({:.0} µs each)",
            h.chatd_cpu.as_secs_f64(),
            h.per_chatd_cpu_sec(),
            1e6 / h.per_chatd_cpu_sec()
        );
        println!(
            "  loadgen CPU (client side)           {:>8.2} s",
            h.loadgen_cpu.as_secs_f64()
        );
        if let Some(ik) = r.ik {
            println!(
                "  ratio chatd per-core / bare IK      {:>8.2}x",
                h.per_chatd_cpu_sec() / ik.per_core_sec()
            );
        }
    }
    if let Some(t) = &r.tunnel {
        println!();
        println!(
            "tunnel cycles (open + Status + close): {} ok, {} failed{} ({} connections)",
            t.ok,
            t.failures,
            t.first_error
                .as_deref()
                .map(|e| format!("; first: {e}"))
                .unwrap_or_default(),
            args.tunnel_concurrency
        );
        let ok = t.ok.max(1) as f64;
        println!(
            "  wall-clock rate                     {:>8.0} cycles/s ({:.2} s)",
            t.ok as f64 / t.elapsed.as_secs_f64().max(1e-9),
            t.elapsed.as_secs_f64()
        );
        let vault_per_cycle = t.vault_cpu.as_secs_f64() / ok;
        println!(
            "  hsm-vault CPU                       {:>8.1} µs per cycle ({:.0} cycles per vault core-second)",
            vault_per_cycle * 1e6,
            1.0 / vault_per_cycle.max(1e-12)
        );
        println!(
            "  chatd CPU                           {:>8.1} µs per cycle",
            t.chatd_cpu.as_secs_f64() / ok * 1e6
        );
        if let Some(nk) = r.nk {
            println!(
                "  ratio vault per-core / bare NK      {:>8.2}x",
                (1.0 / vault_per_cycle.max(1e-12)) / nk.per_core_sec()
            );
        }
    }
}

/// The bare tokio-tungstenite server, in its own process so its RSS is
/// its own.
struct BareWsChild {
    child: Child,
    addr: SocketAddr,
}

impl BareWsChild {
    fn spawn(timeout_secs: u64) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("own executable")?;
        let mut child = Command::new(exe)
            .arg("--bare-ws-server")
            .arg("--phase-timeout-secs")
            .arg(timeout_secs.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn the bare WebSocket server")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("read the bare server's port")?;
        let port: u16 = line
            .trim()
            .parse()
            .with_context(|| format!("bare server printed {line:?}, not a port"))?;
        Ok(BareWsChild {
            child,
            addr: SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        // Closing its stdin tells it to exit; kill is the fallback.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BareWsChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Child mode: a plain tokio-tungstenite server with chatd's buffer sizes
/// that accepts WebSocket connections on 127.0.0.1 and reads them until
/// they close. Exits when its stdin closes or after `max_secs`.
fn bare_ws_server(max_secs: u64) -> anyhow::Result<()> {
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind 127.0.0.1:0")?;
        let port = listener.local_addr().context("local address")?.port();
        let mut out = std::io::stdout();
        writeln!(out, "{port}").context("print the port")?;
        out.flush().context("flush stdout")?;
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(4096);
        let accept = async {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    if let Ok(mut ws) =
                        tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
                    {
                        while let Some(Ok(_)) = ws.next().await {}
                    }
                });
            }
        };
        tokio::select! {
            () = accept => {}
            () = tokio::time::sleep(Duration::from_secs(max_secs.max(1))) => {}
        }
        anyhow::Ok(())
    })?;
    std::process::exit(0);
}
