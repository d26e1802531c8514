//! The measured phases' shared parts: holding idle connections while
//! reading a server's RSS and CPU, and the tunnel phase's cycles through
//! chatd to the vault; with the results each phase reports.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use backup_client::connection::Connection;
use backup_client::vault_flow::{self, PasswordRegistration};
use e2ebk_benches::latency::Latencies;
use e2ebk_benches::load::Opened;
use e2ebk_benches::procfs;
use protocol_spec::messages::vault::{RegistrationMode, VaultRequest, VaultResponse};
use protocol_spec::password::Password;
use protocol_spec::root_key::RootKey;
use tokio::runtime::Runtime;

use crate::stack::Stack;
use crate::{progress, Args};

#[derive(Debug)]
pub(crate) struct IdleResult {
    pub(crate) requested: usize,
    pub(crate) held: usize,
    pub(crate) failures: usize,
    pub(crate) first_error: Option<String>,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_after_kib: u64,
    /// Server CPU while the connections idled, fraction of one core.
    pub(crate) idle_cpu: Option<f64>,
}

impl IdleResult {
    pub(crate) fn per_conn_kib(&self) -> f64 {
        (self.rss_after_kib.saturating_sub(self.rss_before_kib)) as f64 / self.held.max(1) as f64
    }
}

#[derive(Debug)]
pub(crate) struct RateResult {
    pub(crate) ok: usize,
    pub(crate) failures: usize,
    pub(crate) first_error: Option<String>,
    pub(crate) elapsed: Duration,
    pub(crate) chatd_cpu: Duration,
    pub(crate) loadgen_cpu: Duration,
    /// Each connection's TCP connect, upgrade and Noise handshake.
    pub(crate) latencies: Latencies,
}

impl RateResult {
    pub(crate) fn wall_rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// `None` when chatd used less than one clock tick of CPU.
    pub(crate) fn per_chatd_cpu_sec(&self) -> Option<f64> {
        (!self.chatd_cpu.is_zero()).then(|| self.ok as f64 / self.chatd_cpu.as_secs_f64())
    }
}

#[derive(Debug)]
pub(crate) struct TunnelResult {
    pub(crate) ok: usize,
    pub(crate) failures: usize,
    pub(crate) first_error: Option<String>,
    pub(crate) elapsed: Duration,
    pub(crate) vault_cpu: Duration,
    pub(crate) chatd_cpu: Duration,
    /// Each whole cycle: open, Status, close.
    pub(crate) latencies: Latencies,
}

impl TunnelResult {
    /// Cycles per CPU-second of the vault; `None` under one clock tick.
    pub(crate) fn per_vault_cpu_sec(&self) -> Option<f64> {
        (!self.vault_cpu.is_zero()).then(|| self.ok as f64 / self.vault_cpu.as_secs_f64())
    }
}

/// Waits for the connections to settle, reads the server's RSS, samples
/// its idle CPU, then drops the connections.
pub(crate) fn hold_and_measure<T: Send + 'static>(
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

pub(crate) fn tunnel_phase(
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
        vault_flow::registered(&r, RegistrationMode::Create)
            .map_err(|e| anyhow!("register: {e}"))?;
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
    let latencies = rt.block_on(async {
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
                let mut latencies = Latencies::new();
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
                    let began = Instant::now();
                    let outcome = match tokio::time::timeout(Duration::from_secs(30), cycle).await {
                        Ok(r) => r,
                        Err(_) => Err("a cycle took over 30 s".into()),
                    };
                    match outcome {
                        Ok(()) => {
                            latencies.record(began.elapsed());
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
                latencies
            }));
        }
        let mut all = Latencies::new();
        for t in tasks {
            if let Ok(l) = t.await {
                all.merge(&l);
            }
        }
        all
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
        latencies,
    })
}
