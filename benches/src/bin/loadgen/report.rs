//! The results table loadgen prints: each phase next to its reference
//! measured in the same run.

use e2ebk_benches::noise::BareCost;
use e2ebk_benches::procfs;

use crate::phases::{IdleResult, RateResult, TunnelResult};
use crate::relay::{RelayResult, RelayRun};
use crate::stack::Stack;
use crate::{mib, Args};

#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) pressure_start: String,
    pub(crate) ik: Option<BareCost>,
    pub(crate) nk: Option<BareCost>,
    pub(crate) idle: Option<IdleResult>,
    pub(crate) bare_ws: Option<IdleResult>,
    pub(crate) handshake: Option<RateResult>,
    pub(crate) tunnel: Option<TunnelResult>,
    pub(crate) relay: Option<RelayResult>,
}

pub(crate) fn print_report(args: &Args, r: &Report, stack: &Stack) {
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
    if let Some(r) = &r.relay {
        print_relay(args, r);
    }
}

fn print_relay(args: &Args, r: &RelayResult) {
    println!();
    println!(
        "relay: {}-byte frames echoed, {} connections, {} in flight each (a frame is one round trip)",
        args.relay_frame_bytes, args.relay_connections, args.relay_window
    );
    let row = |name: &str, run: &RelayRun| {
        println!(
            "  {name:<8} {:>8} frames {:>3} failed {:>8.0} frames/s {:>7.1} µs CPU/frame {:>8.0} frames/core-s {:>7} syscalls/frame{}",
            run.frames,
            run.failures,
            run.wall_rate(),
            run.cpu_per_frame() * 1e6,
            run.per_core_sec(),
            run.syscalls_per_frame()
                .map_or_else(|| "n/a".to_string(), |s| format!("{s:.2}")),
            run.first_error
                .as_deref()
                .map(|e| format!(" (first failure: {e})"))
                .unwrap_or_default()
        );
    };
    row("chatd", &r.chatd);
    match &r.nginx {
        Ok(n) => {
            row("nginx", n);
            println!(
                "  ratio chatd / nginx, frames per core-second {:>6.2}x",
                r.chatd.per_core_sec() / n.per_core_sec().max(1e-12)
            );
            if let (Some(c), Some(n)) = (r.chatd.syscalls_per_frame(), n.syscalls_per_frame()) {
                println!(
                    "  ratio chatd / nginx, syscalls per frame     {:>6.2}x",
                    c / n.max(1e-12)
                );
            }
        }
        Err(e) => println!("  nginx    not measured: {e}"),
    }
}
