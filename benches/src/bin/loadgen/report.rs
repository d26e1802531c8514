//! The results table loadgen prints: each phase next to its reference
//! measured in the same run.

use e2ebk_benches::noise::BareCost;
use e2ebk_benches::procfs;
use serde_json::{json, Value};

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

/// What a CPU figure says when the run used less than one clock tick.
const UNMEASURED: &str = "n/a (under one clock tick of CPU: run more operations)";

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
            "  latency, connect to authenticated   {}",
            h.latencies.summary()
        );
        match h.per_chatd_cpu_sec() {
            Some(rate) => println!(
                "  chatd CPU                           {:>8.2} s = {rate:.0} handshakes per chatd core-second ({:.0} µs each)",
                h.chatd_cpu.as_secs_f64(),
                1e6 / rate
            ),
            None => println!("  chatd CPU                           {UNMEASURED}"),
        }
        println!(
            "  loadgen CPU (client side)           {:>8.2} s",
            h.loadgen_cpu.as_secs_f64()
        );
        if let (Some(ik), Some(rate)) = (r.ik, h.per_chatd_cpu_sec()) {
            println!(
                "  ratio chatd per-core / bare IK      {:>8.2}x",
                rate / ik.per_core_sec()
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
        println!(
            "  latency per cycle                   {}",
            t.latencies.summary()
        );
        match t.per_vault_cpu_sec() {
            Some(rate) => println!(
                "  hsm-vault CPU                       {:>8.1} µs per cycle ({rate:.0} cycles per vault core-second)",
                1e6 / rate
            ),
            None => println!("  hsm-vault CPU                       {UNMEASURED}"),
        }
        println!(
            "  chatd CPU                           {:>8.1} µs per cycle",
            t.chatd_cpu.as_secs_f64() / ok * 1e6
        );
        if let (Some(nk), Some(rate)) = (r.nk, t.per_vault_cpu_sec()) {
            println!(
                "  ratio vault per-core / bare NK      {:>8.2}x",
                rate / nk.per_core_sec()
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
            "  {name:<8} {:>8} frames {:>3} failed {:>8.0} frames/s {:>7} µs CPU/frame {:>8} frames/core-s {:>7} syscalls/frame{}",
            run.frames,
            run.failures,
            run.wall_rate(),
            run.cpu_per_frame()
                .map_or_else(|| "n/a".to_string(), |c| format!("{:.1}", c * 1e6)),
            run.per_core_sec()
                .map_or_else(|| "n/a".to_string(), |r| format!("{r:.0}")),
            run.syscalls_per_frame()
                .map_or_else(|| "n/a".to_string(), |s| format!("{s:.2}")),
            run.first_error
                .as_deref()
                .map(|e| format!(" (first failure: {e})"))
                .unwrap_or_default()
        );
    };
    row("chatd", &r.chatd);
    if let Ok(n) = &r.nginx {
        row("nginx", n);
    }
    println!("  chatd    round trip {}", r.chatd.latencies.summary());
    match &r.nginx {
        Ok(n) => {
            println!("  nginx    round trip {}", n.latencies.summary());
            if let (Some(c), Some(n)) = (r.chatd.per_core_sec(), n.per_core_sec()) {
                println!(
                    "  ratio chatd / nginx, frames per core-second {:>6.2}x",
                    c / n
                );
            } else {
                println!("  ratio chatd / nginx, frames per core-second {UNMEASURED}");
            }
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

/// The same report as one JSON document (`--json`): every figure, its
/// same-run reference and the ratio, for scripts and for comparing runs.
pub(crate) fn to_json(args: &Args, r: &Report, pressure_end: &str) -> Value {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_core = |c: Option<BareCost>| c.map(|c| c.per_core_sec());
    let idle = r.idle.as_ref().map(|i| {
        let bare = r.bare_ws.as_ref().map(IdleResult::per_conn_kib);
        json!({
            "requested": i.requested,
            "held": i.held,
            "failures": i.failures,
            "first_error": i.first_error,
            "chatd_kib_per_connection": i.per_conn_kib(),
            "bare_kib_per_connection": bare,
            "ratio_to_bare": bare.map(|b| i.per_conn_kib() / b.max(1e-9)),
            "chatd_idle_cpu_fraction": i.idle_cpu,
        })
    });
    let handshake = r.handshake.as_ref().map(|h| {
        json!({
            "ok": h.ok,
            "failures": h.failures,
            "first_error": h.first_error,
            "concurrency": args.concurrency,
            "per_second": h.wall_rate(),
            "per_chatd_core_second": h.per_chatd_cpu_sec(),
            "ratio_to_bare_ik": per_core(r.ik).zip(h.per_chatd_cpu_sec()).map(|(ik, h)| h / ik),
            "latency": h.latencies.to_json(),
        })
    });
    let tunnel = r.tunnel.as_ref().map(|t| {
        let per_vault_core = t.per_vault_cpu_sec();
        json!({
            "ok": t.ok,
            "failures": t.failures,
            "first_error": t.first_error,
            "concurrency": args.tunnel_concurrency,
            "per_second": t.ok as f64 / t.elapsed.as_secs_f64().max(1e-9),
            "per_vault_core_second": per_vault_core,
            "chatd_cpu_us_per_cycle": t.chatd_cpu.as_secs_f64() / t.ok.max(1) as f64 * 1e6,
            "ratio_to_bare_nk": per_core(r.nk).zip(per_vault_core).map(|(nk, v)| v / nk),
            "latency": t.latencies.to_json(),
        })
    });
    let run = |run: &RelayRun| {
        json!({
            "frames": run.frames,
            "failures": run.failures,
            "first_error": run.first_error,
            "frames_per_second": run.wall_rate(),
            "cpu_us_per_frame": run.cpu_per_frame().map(|c| c * 1e6),
            "frames_per_core_second": run.per_core_sec(),
            "syscalls_per_frame": run.syscalls_per_frame(),
            "round_trip": run.latencies.to_json(),
        })
    };
    let relay = r.relay.as_ref().map(|rel| {
        let (nginx, ratio, syscall_ratio) = match &rel.nginx {
            Ok(n) => (
                run(n),
                rel.chatd
                    .per_core_sec()
                    .zip(n.per_core_sec())
                    .map(|(c, n)| c / n),
                rel.chatd
                    .syscalls_per_frame()
                    .zip(n.syscalls_per_frame())
                    .map(|(c, n)| c / n.max(1e-12)),
            ),
            Err(e) => (json!({ "error": e }), None, None),
        };
        json!({
            "frame_bytes": args.relay_frame_bytes,
            "connections": args.relay_connections,
            "window": args.relay_window,
            "chatd": run(&rel.chatd),
            "nginx": nginx,
            "ratio_per_core_second": ratio,
            "ratio_syscalls_per_frame": syscall_ratio,
        })
    });
    json!({
        "tool": "loadgen",
        "version": env!("CARGO_PKG_VERSION"),
        "cores": cores,
        "cpu_pressure_start": r.pressure_start,
        "cpu_pressure_end": pressure_end,
        "reference": {
            "noise_ik_per_core_second": per_core(r.ik),
            "noise_nk_per_core_second": per_core(r.nk),
        },
        "idle": idle,
        "handshake": handshake,
        "tunnel": tunnel,
        "relay": relay,
    })
}
