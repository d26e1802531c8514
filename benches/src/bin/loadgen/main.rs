//! `loadgen`: drives a real `hsm-vault` and a real `chatd` on loopback and
//! reports, next to references measured in the same run, what chatd costs
//! per idle authenticated connection, how fast it admits new ones, and
//! how fast tunnels reach the vault. See `loadgen --help`.

mod bare_ws;
mod phases;
mod relay;
mod report;
mod stack;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use e2ebk_benches::load::{self, connect_authenticated, open_many, ws_connect};
use e2ebk_benches::noise::{self, Pattern};
use e2ebk_benches::procfs;

use bare_ws::{bare_ws_server, BareWsChild};
use phases::{hold_and_measure, tunnel_phase, RateResult};
use report::{print_report, Report};
use stack::{print_log_problems, Stack};

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
  relay      --relay-frames frames of --relay-frame-bytes echoed through a second chatd, whose \
links go to an echo vault in this process (it speaks the link protocol and sends every tunnel \
frame back), over --relay-connections connections with --relay-window frames in flight each; \
then the same frames through nginx (the Debian package nginx-light, one process, WebSocket \
proxy_pass) to a WebSocket echo in this process. Reports each server's CPU per frame, frames per \
core-second and, where `perf stat` can count the raw_syscalls:sys_enter tracepoint, system calls \
per frame; the ratio is chatd's frames per core-second to nginx's. Without nginx the phase \
reports chatd alone.

Latencies (connect to authenticated, each tunnel cycle, each relayed frame's round trip) are \
HDR histograms, reported as p50 / p90 / p99 / p99.9 / max. --json FILE also writes every figure, \
its same-run reference and the ratio as one JSON document. loadgen exits with status 1 when any \
operation failed.

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
pub(crate) struct Args {
    /// Idle authenticated connections to hold for the memory phase (0 skips it).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub(crate) connections: usize,

    /// New authenticated connections to open, timed, in the handshake phase (0 skips it).
    #[arg(long, default_value_t = 5_000, value_name = "N")]
    pub(crate) handshakes: usize,

    /// Concurrent connectors in the idle and handshake phases.
    #[arg(long, default_value_t = 64, value_name = "C")]
    pub(crate) concurrency: usize,

    /// Tunnel cycles (open + Status + close) in the tunnel phase (0 skips it).
    #[arg(long, default_value_t = 2_000, value_name = "N")]
    pub(crate) tunnel_ops: usize,

    /// Connections running tunnel cycles at the same time.
    #[arg(long, default_value_t = 8, value_name = "C")]
    pub(crate) tunnel_concurrency: usize,

    /// Frames echoed through chatd (to an echo vault) and through nginx (to a WebSocket echo) in
    /// the relay phase (0 skips it).
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub(crate) relay_frames: usize,

    /// Connections in the relay phase, one tunnel each.
    #[arg(long, default_value_t = 32, value_name = "C")]
    pub(crate) relay_connections: usize,

    /// Frames each relay connection keeps in flight.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub(crate) relay_window: usize,

    /// Payload bytes per relayed frame.
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub(crate) relay_frame_bytes: usize,

    /// Seconds to wait after opening the idle connections before reading RSS; chatd's idle CPU
    /// is then sampled over as many seconds again.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pub(crate) settle_secs: u64,

    /// Also write the results as one JSON document to FILE (`-` for stdout, after the table).
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<std::path::PathBuf>,

    /// Skip the bare tokio-tungstenite server (the per-connection memory reference).
    #[arg(long)]
    pub(crate) no_bare_ws: bool,

    /// Rounds of 1,000 handshakes for each in-process responder reference; the fastest counts.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub(crate) bare_rounds: usize,

    /// Spread client sockets over this many source addresses, 127.0.0.2 upwards.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub(crate) source_ips: usize,

    /// Hard limit on each phase, in seconds; a phase cut short reports what it did.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub(crate) phase_timeout_secs: u64,

    /// Internal: run as the bare WebSocket server child process.
    #[arg(long, hide = true)]
    pub(crate) bare_ws_server: bool,
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

pub(crate) fn progress(msg: &str) {
    eprintln!("[loadgen] {msg}");
}

pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
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
        let mut opened = opened;
        let latencies = std::mem::take(&mut opened.latencies);
        report.handshake = Some(RateResult {
            ok: opened.held.len(),
            failures: opened.failures,
            first_error: opened.first_error.clone(),
            elapsed: opened.elapsed,
            chatd_cpu: c1.saturating_sub(c0),
            loadgen_cpu: l1.saturating_sub(l0),
            latencies,
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

    if args.relay_frames > 0 {
        report.relay = Some(relay::relay_phase(args, &rt, phase_limit, ticks)?);
    }

    print_report(args, &report, &stack);
    if let Some(path) = &args.json {
        let doc = report::to_json(args, &report, &procfs::cpu_pressure_note());
        let text = serde_json::to_string_pretty(&doc).context("encode the JSON report")?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text + "\n")
                .with_context(|| format!("write the JSON report to {}", path.display()))?;
        }
    }
    let failed = report.idle.as_ref().map_or(0, |i| i.failures)
        + report.handshake.as_ref().map_or(0, |h| h.failures)
        + report.tunnel.as_ref().map_or(0, |t| t.failures)
        + report.relay.as_ref().map_or(0, |r| {
            r.chatd.failures + r.nginx.as_ref().map_or(0, |n| n.failures)
        });
    if failed > 0 {
        print_log_problems("chatd", &stack.chatd_proc.log());
        print_log_problems("hsm-vault", &stack.vault_proc.log());
        bail!("{failed} operations failed (the table above says where, with the first error)");
    }
    Ok(())
}
