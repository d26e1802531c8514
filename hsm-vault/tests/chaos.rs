//! A seeded, bounded chaos run: clients log in with wrong and right
//! passwords through a real chatd while replicas of a real three-replica
//! vault are killed, restarted and cut off at random. Reproduce a run with
//! `E2EBK_CHAOS_SEED=<seed>` (the seed is printed); `E2EBK_CHAOS_SECONDS`
//! sets how long the chaos lasts (20 s for the main test, 8 s for the
//! three extra seeds every CI run also tries). `ops/chaos-seeds N` runs the
//! main test over N seeds and stops at the first that fails.
//!
//! What must hold, checked by the clients from what they observe:
//! - no account ever got more than `max_attempts` KE2 answers between two
//!   successful logins (with unknown outcomes kept as both possibilities);
//! - the vault's count of spent attempts never went below the KE2 answers
//!   seen since the last possible reset (attempts never came back);
//! - a locked record never let the right password through;
//! - every acknowledged registration is still there at the end, with the
//!   key that was registered last.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backup_client::connection::{Connection, Endpoint, VaultTunnel};
use backup_client::vault_flow::{self, FlowError, PasswordLogin, PasswordRegistration};
use backup_client::ClientError;
use protocol_spec::ids::{AccountId, EnrolmentCode};
use protocol_spec::keys::StaticSecret;
use protocol_spec::messages::vault::{RecordState, RegistrationMode, VaultRequest, VaultResponse};
use protocol_spec::password::Password;
use protocol_spec::root_key::RootKey;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use testkit::chatd::{ChatdFixture, ChatdOptions};
use testkit::cluster::VaultCluster;
use testkit::vault::{FleetInfo, VaultOptions};

const MAX: u32 = 4;
const ACCOUNTS: usize = 4;
const CHAOS: Duration = Duration::from_secs(20);
/// The chaos phase of each extra seed: shorter, so three of them add
/// about as much time as the main run.
const SHORT_CHAOS: Duration = Duration::from_secs(8);
const DEFAULT_SEED: u64 = 0xE2EB_2026;

/// `E2EBK_CHAOS_SECONDS`, if set, else `default`.
fn chaos_time(default: Duration) -> Duration {
    std::env::var("E2EBK_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(default, Duration::from_secs)
}

/// A draw from `range` (non-empty). A named generator and this fixed
/// mapping keep a seed replaying the same run across dependency updates;
/// the modulo bias is irrelevant for choosing actions and sleeps.
fn pick(rng: &mut ChaCha8Rng, range: std::ops::Range<u64>) -> u64 {
    range.start + rng.next_u64() % (range.end - range.start)
}

/// What one account's client knows, kept as every possibility the
/// observations allow.
struct Ledger {
    account: AccountId,
    /// KE2 answers since a reset, one entry per hypothesis about unknown
    /// outcomes.
    since_reset: BTreeSet<u32>,
    /// Keys that may be the registered one (more than one after a
    /// registration whose answer was lost).
    keys: Vec<RootKey>,
    /// An acknowledged registration exists.
    acknowledged: bool,
    /// The record was seen locked and not registered again since.
    locked: bool,
    /// A registration was sent after the record was seen locked (its
    /// answer may have been lost).
    registered_since_lock: bool,
    ke2: u64,
    successes: u64,
    unknown: u64,
}

impl Ledger {
    fn on_ke2(&mut self) {
        self.ke2 += 1;
        self.since_reset = self.since_reset.iter().map(|c| c + 1).collect();
        let smallest = *self.since_reset.iter().next().expect("a hypothesis");
        assert!(
            smallest <= MAX,
            "{}: {smallest} KE2 answers since the last possible reset (max {MAX})",
            self.account
        );
    }

    fn on_status(&mut self, remaining: u32, state: RecordState) {
        if state != RecordState::Registered {
            return;
        }
        if self.locked {
            assert!(
                self.registered_since_lock,
                "{}: a locked record is registered again without a new registration",
                self.account
            );
            self.locked = false;
        }
        let used = MAX - remaining;
        // A hypothesis with more KE2s than the vault counts is impossible.
        self.since_reset.retain(|c| *c <= used);
        assert!(
            !self.since_reset.is_empty(),
            "{}: the vault counts {used} attempts but more KE2 answers were seen since any possible reset: attempts came back",
            self.account
        );
    }

    fn reset(&mut self) {
        self.since_reset = BTreeSet::from([0]);
    }
}

struct Client {
    ep: Endpoint,
    device: StaticSecret,
    fleet: FleetInfo,
    conn: Option<Connection>,
}

impl Client {
    async fn conn(&mut self) -> Result<&mut Connection, ClientError> {
        if self.conn.is_none() {
            self.conn = Some(Connection::connect(&self.ep, &self.device, None).await?);
        }
        Ok(self.conn.as_mut().expect("connected"))
    }

    async fn tunnel(&mut self) -> Result<VaultTunnel, ClientError> {
        let (key, id) = (self.fleet.tunnel_key, self.fleet.fleet_id.clone());
        let r = self.conn().await?.open_tunnel(&key, &id).await;
        if matches!(
            r,
            Err(ClientError::Closed(_) | ClientError::Dropped | ClientError::Connect { .. })
        ) {
            self.conn = None;
        }
        r
    }

    async fn request(
        &mut self,
        t: &mut VaultTunnel,
        req: &VaultRequest,
    ) -> Result<VaultResponse, ClientError> {
        let r = self.conn().await?.request(t, req).await;
        if matches!(r, Err(ClientError::Closed(_) | ClientError::Dropped)) {
            self.conn = None;
        }
        r
    }

    async fn close(&mut self, t: VaultTunnel) {
        if let Some(c) = self.conn.as_mut() {
            let _ = c.close_tunnel(t).await;
        }
    }
}

async fn register(c: &mut Client, led: &mut Ledger, k: RootKey, mode: RegistrationMode) {
    let Ok(mut t) = c.tunnel().await else { return };
    if led.locked {
        led.registered_since_lock = true;
    }
    let password = Password::prepare("right password").unwrap();
    let (flow, start) = PasswordRegistration::start(&password, mode).unwrap();
    let Ok(r) = c.request(&mut t, &start).await else {
        return;
    };
    let Ok(finish) = flow.finish(&r, &led.account, &c.fleet.fleet_id, &k) else {
        c.close(t).await;
        return;
    };
    match c.request(&mut t, &finish).await {
        Ok(r) if vault_flow::registered(&r, mode).is_ok() => {
            led.keys = vec![k];
            led.acknowledged = true;
            led.locked = false;
            led.registered_since_lock = false;
            led.reset();
        }
        // Not committed for sure (busy), or unknown (unavailable, lost).
        Ok(VaultResponse::Error(code)) if code.retryable() => {
            led.unknown += 1;
            led.keys.push(k);
            led.since_reset.insert(0);
        }
        Ok(r) => panic!("{}: registration answered {r:?}", led.account),
        // Lost answer: the registration may or may not have applied.
        Err(_) => {
            led.unknown += 1;
            led.keys.push(k);
            led.since_reset.insert(0);
        }
    }
    c.close(t).await;
}

async fn login(c: &mut Client, led: &mut Ledger, right: bool) {
    let Ok(mut t) = c.tunnel().await else { return };
    let password = Password::prepare(if right {
        "right password"
    } else {
        "wrong password"
    })
    .unwrap();
    let (flow, start) = PasswordLogin::start(&password).unwrap();
    let r = match c.request(&mut t, &start).await {
        Ok(r) => r,
        // No KE2 seen: the attempt may have been counted; nothing to check.
        Err(_) => return,
    };
    match &r {
        VaultResponse::LoginStarted { .. } => led.on_ke2(),
        VaultResponse::Locked => {
            if !led.locked {
                led.registered_since_lock = false;
            }
            led.locked = true;
            c.close(t).await;
            return;
        }
        VaultResponse::Error(code) if code.retryable() => {
            c.close(t).await;
            return;
        }
        other => panic!("{}: login start answered {other:?}", led.account),
    }
    if led.locked && right {
        panic!("{}: a locked record answered a login with KE2", led.account);
    }
    match flow.finish(&r, &led.account, &c.fleet.fleet_id) {
        Ok((finish, verified)) => match c.request(&mut t, &finish).await {
            Ok(resp) => match verified.key(&resp, &led.account) {
                Ok(k) => {
                    assert!(
                        !led.locked,
                        "{}: a locked record released its key",
                        led.account
                    );
                    assert!(
                        led.keys.contains(&k),
                        "{}: released a key that was never registered",
                        led.account
                    );
                    led.keys = vec![k];
                    led.successes += 1;
                    led.reset();
                }
                Err(FlowError::Vault(code)) if code.retryable() => {
                    // The reset may or may not have committed.
                    led.unknown += 1;
                    led.since_reset.insert(0);
                }
                Err(e) => panic!("{}: right password refused: {e}", led.account),
            },
            Err(_) => {
                led.unknown += 1;
                led.since_reset.insert(0);
            }
        },
        Err(FlowError::WrongPassword { .. }) if !right => {}
        Err(FlowError::Locked) if !right => {
            if !led.locked {
                led.registered_since_lock = false;
            }
            led.locked = true;
        }
        Err(e) => panic!("{}: unexpected login outcome: {e}", led.account),
    }
    c.close(t).await;
}

async fn status(c: &mut Client, led: &mut Ledger) -> Option<(RecordState, u32)> {
    status_or_why(c, led).await.ok()
}

/// A status request, or what stopped it (for the message of a failed run).
async fn status_or_why(c: &mut Client, led: &mut Ledger) -> Result<(RecordState, u32), String> {
    let mut t = c.tunnel().await.map_err(|e| format!("tunnel: {e}"))?;
    let r = c.request(&mut t, &VaultRequest::Status).await;
    c.close(t).await;
    let r = r.map_err(|e| format!("request: {e}"))?;
    let st = vault_flow::status_from(&r).map_err(|e| format!("answer {r:?}: {e}"))?;
    led.on_status(st.attempts_remaining, st.state);
    if st.state == RecordState::Locked && !led.locked {
        led.locked = true;
        led.registered_since_lock = false;
    }
    Ok((st.state, st.attempts_remaining))
}

async fn run_client(
    mut c: Client,
    mut led: Ledger,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> (Client, Ledger) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut fresh = || {
        let mut e = [0u8; 30];
        rng.fill_bytes(&mut e);
        RootKey::from_entropy(e)
    };
    register(&mut c, &mut led, fresh(), RegistrationMode::Replace).await;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xA5A5);
    while !stop.load(Ordering::SeqCst) {
        if led.locked || !led.acknowledged {
            register(&mut c, &mut led, fresh(), RegistrationMode::Replace).await;
            continue;
        }
        match pick(&mut rng, 0..10) {
            0..=5 => login(&mut c, &mut led, false).await,
            6..=8 => login(&mut c, &mut led, true).await,
            _ => {
                status(&mut c, &mut led).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(pick(&mut rng, 0..50))).await;
    }
    (c, led)
}

#[test]
fn seeded_chaos_never_grants_extra_guesses_or_loses_a_registration() {
    let seed: u64 = std::env::var("E2EBK_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    run_chaos(seed, chaos_time(CHAOS));
}

// Three more seeds on every run, shorter: schedules the default seed never
// makes. A failure names its seed; `E2EBK_CHAOS_SEED=<seed>
// E2EBK_CHAOS_SECONDS=8` on the main test replays it.

/// The soak: `ops/soak` runs it (10 minutes unless `E2EBK_SOAK_SECONDS`
/// says otherwise; `ops/test` runs 2). The chaos run above, longer, with
/// idle devices connecting all the time, one replica never killed; at the
/// end chatd's and that replica's open files are back where they started,
/// their memory did not keep growing (the slopes are printed), and the
/// three replicas hold identical records.
#[test]
#[ignore = "minutes long: run it with ops/soak"]
fn soak_leaks_nothing_and_every_replica_ends_identical() {
    let seconds = std::env::var("E2EBK_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let seed = std::env::var("E2EBK_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    run(
        seed,
        Duration::from_secs(seconds),
        Some(&Soak {
            idle_accounts: 8,
            per_device: 8,
        }),
    );
}

#[test]
fn chaos_seed_1_short() {
    run_chaos(1, chaos_time(SHORT_CHAOS));
}

#[test]
fn chaos_seed_2_short() {
    run_chaos(2, chaos_time(SHORT_CHAOS));
}

#[test]
fn chaos_seed_3_short() {
    run_chaos(3, chaos_time(SHORT_CHAOS));
}

fn run_chaos(seed: u64, chaos: Duration) {
    run(seed, chaos, None);
}

/// What a soak adds to a chaos run: connections that come and go without
/// asking anything, and measurements of what the long-lived processes hold.
struct Soak {
    /// Accounts whose devices only hold connections.
    idle_accounts: usize,
    /// Connections each of those devices holds.
    per_device: usize,
}

/// The replica a soak never kills (it is only cut off and healed, which
/// moves it between leader and follower), so its memory and open files
/// can be followed for the whole run.
const STEADY: usize = 2;

fn run(seed: u64, chaos: Duration, soak: Option<&Soak>) {
    println!(
        "chaos seed {seed} for {} s (rerun with E2EBK_CHAOS_SEED={seed} E2EBK_CHAOS_SECONDS={})",
        chaos.as_secs(),
        chaos.as_secs()
    );
    let mut cluster = VaultCluster::new(
        3,
        VaultOptions {
            max_attempts: MAX,
            ..VaultOptions::default()
        },
    );
    cluster.start_all();
    cluster.form();
    let chatd = ChatdFixture::with_keys(
        &cluster.chatd_key,
        &cluster.fleet.link_key,
        &cluster.link_addrs(),
        ChatdOptions {
            // A soak's idle devices reconnect all the time, all from
            // 127.0.0.1.
            extra_limits: format!(
                "vault_ops_per_minute = 100000\nmessages_per_sec = 10000.0\nmessage_burst = 10000.0{}",
                if soak.is_some() {
                    "\nhandshakes_per_ip_per_sec = 10000.0\nhandshake_burst = 10000.0\nmax_connections_per_account = 64"
                } else {
                    ""
                }
            ),
            ..Default::default()
        },
    );
    let chatd_proc = chatd.spawn();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Enrol one device per account.
    let mut clients = Vec::new();
    for i in 0..ACCOUNTS {
        let name = format!("chaos{i}");
        let account = AccountId::new(&name).unwrap();
        let mut b = [0u8; 32];
        testkit::fill_random(&mut b);
        let device = StaticSecret::from_bytes(b);
        let ep = Endpoint {
            url: chatd_proc.url(),
            chatd_key: chatd.static_key,
            account: account.clone(),
        };
        let code = EnrolmentCode::new(chatd.invite(&name)).unwrap();
        let conn = rt
            .block_on(Connection::connect(&ep, &device, Some(code)))
            .unwrap();
        clients.push((
            Client {
                ep,
                device,
                fleet: cluster.fleet.clone(),
                conn: Some(conn),
            },
            Ledger {
                account,
                since_reset: BTreeSet::from([0]),
                keys: Vec::new(),
                acknowledged: false,
                locked: false,
                registered_since_lock: false,
                ke2: 0,
                successes: 0,
                unknown: 0,
            },
        ));
    }

    let stop = Arc::new(AtomicBool::new(false));
    // A soak: the idle devices, the first measurement, the sampler.
    let soaking = soak.map(|soak| {
        let before = Usage::of(chatd_proc.pid());
        let steady_before = Usage::of(cluster.procs[STEADY].as_ref().expect("steady").pid());
        let devices: Vec<(Endpoint, StaticSecret, EnrolmentCode)> = (0..soak.idle_accounts)
            .map(|i| {
                let name = format!("idle{i}");
                let mut b = [0u8; 32];
                testkit::fill_random(&mut b);
                let ep = Endpoint {
                    url: chatd_proc.url(),
                    chatd_key: chatd.static_key,
                    account: AccountId::new(&name).unwrap(),
                };
                let code = EnrolmentCode::new(chatd.invite(&name)).unwrap();
                (ep, StaticSecret::from_bytes(b), code)
            })
            .collect();
        let idle = rt.spawn(hold_idle(devices, soak.per_device, stop.clone()));
        let pids = [
            chatd_proc.pid(),
            cluster.procs[STEADY].as_ref().expect("steady").pid(),
        ];
        let sampling = stop.clone();
        let sampler = std::thread::spawn(move || {
            let started = Instant::now();
            let mut samples = Vec::new();
            while !sampling.load(Ordering::SeqCst) {
                samples.push((started.elapsed(), pids.map(Usage::of)));
                std::thread::sleep(Duration::from_secs(2));
            }
            samples
        });
        (before, steady_before, idle, sampler)
    });
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, (c, l))| rt.spawn(run_client(c, l, seed.wrapping_add(i as u64), stop.clone())))
        .collect();

    // The chaos monkey: kill, restart, cut off and heal replicas at random.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cut: Option<usize> = None;
    let started = Instant::now();
    let mut actions = Vec::new();
    while started.elapsed() < chaos {
        std::thread::sleep(Duration::from_millis(pick(&mut rng, 300..1200)));
        let i = pick(&mut rng, 0..3) as usize;
        let action = match pick(&mut rng, 0..5) {
            0 => match cluster.leader() {
                Some(l) if soak.is_some() && l == STEADY => {
                    "the leader is the steady replica".into()
                }
                Some(l) => {
                    cluster.kill9(l);
                    format!("kill leader {}", l + 1)
                }
                None => "no leader to kill".into(),
            },
            1 if soak.is_some() && i == STEADY => "the steady replica stays".into(),
            1 => {
                cluster.kill9(i);
                format!("kill {}", i + 1)
            }
            2 | 3 => {
                let dead: Vec<usize> = (0..3).filter(|&j| !cluster.is_running(j)).collect();
                if dead.is_empty() {
                    "nothing to restart".into()
                } else {
                    let j = dead[pick(&mut rng, 0..dead.len() as u64) as usize];
                    cluster.start(j);
                    format!("restart {}", j + 1)
                }
            }
            _ => match cut.take() {
                Some(j) => {
                    cluster.partition(j, false);
                    format!("heal {}", j + 1)
                }
                None => {
                    cluster.partition(i, true);
                    cut = Some(i);
                    format!("cut off {}", i + 1)
                }
            },
        };
        actions.push(action);
    }
    println!("chaos actions: {actions:?}");
    stop.store(true, Ordering::SeqCst);
    // Back to health before the final checks.
    if let Some(j) = cut {
        cluster.partition(j, false);
    }
    for j in 0..3 {
        if !cluster.is_running(j) {
            cluster.start(j);
        }
    }
    let results: Vec<(Client, Ledger)> = rt.block_on(async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("client task"));
        }
        out
    });
    cluster.wait_leader(Duration::from_secs(30));

    let mut total_ke2 = 0;
    for (mut c, mut led) in results {
        total_ke2 += led.ke2;
        // Every acknowledged registration survived: the state is never
        // "none", and the right password yields a registered key unless
        // the record was legitimately erased.
        let deadline = Instant::now() + Duration::from_secs(30);
        let (state, _) = loop {
            let why = match rt.block_on(status_or_why(&mut c, &mut led)) {
                Ok(s) => break s,
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                let replicas: Vec<String> = (0..3)
                    .map(|i| match cluster.status(i) {
                        Some(s) => format!(
                            "replica {}: {} term {} leader {} applied {} quorum ack {} ms ago",
                            i + 1,
                            s["state"],
                            s["term"],
                            s["leader"],
                            s["last_applied_index"],
                            s["millis_since_quorum_ack"]
                        ),
                        None => format!("replica {}: no status", i + 1),
                    })
                    .collect();
                let tail = |log: String| {
                    let lines: Vec<&str> = log.lines().collect();
                    lines[lines.len().saturating_sub(15)..].join("\n")
                };
                panic!(
                    "{}: no status 30 s after healing; last: {why}\n{}\nchatd log:\n{}\nleader's log:\n{}",
                    led.account,
                    replicas.join("\n"),
                    tail(chatd_proc.log()),
                    tail(cluster.leader().map_or_else(String::new, |l| cluster.log(l)))
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if led.acknowledged {
            assert_ne!(
                state,
                RecordState::None,
                "{}: an acknowledged registration was lost",
                led.account
            );
        }
        if state == RecordState::Registered {
            rt.block_on(login(&mut c, &mut led, true));
        }
        println!(
            "{}: {} KE2, {} successes, {} unknown outcomes, final {state:?}",
            led.account, led.ke2, led.successes, led.unknown
        );
    }
    assert!(total_ke2 > 0, "the run exercised no logins");
    if let Some((before, steady_before, idle, sampler)) = soaking {
        let made = rt.block_on(idle).expect("idle task");
        let samples = sampler.join().expect("sampler");
        // Settle: connections closed, links to the healed group re-made.
        std::thread::sleep(Duration::from_secs(3));
        let after = Usage::of(chatd_proc.pid());
        let steady_after = Usage::of(cluster.procs[STEADY].as_ref().expect("steady").pid());
        println!(
            "soak: {made} idle connections made and dropped, {} samples",
            samples.len()
        );
        for (k, (name, b, a)) in [
            ("chatd", before, after),
            ("steady replica", steady_before, steady_after),
        ]
        .into_iter()
        .enumerate()
        {
            let series: Vec<(f64, f64, f64)> = samples
                .iter()
                .map(|(t, u)| (t.as_secs_f64() / 60.0, u[k].rss_kib as f64, u[k].fds as f64))
                .collect();
            // Past the first fifth: warming up is not leaking.
            let warm = &series[series.len() / 5..];
            let rss_slope = slope(warm.iter().map(|(t, r, _)| (*t, *r)));
            let fd_slope = slope(warm.iter().map(|(t, _, f)| (*t, *f)));
            println!(
                "soak: {name}: RSS {} KiB -> {} KiB ({rss_slope:+.0} KiB/min), open files {} -> {} ({fd_slope:+.2}/min)",
                b.rss_kib, a.rss_kib, b.fds, a.fds
            );
            assert!(
                a.fds <= b.fds + 8,
                "{name} holds {} open files after the soak, {} before: a leak",
                a.fds,
                b.fds
            );
            let quarter = series[series.len() / 4].1 as u64;
            assert!(
                a.rss_kib <= 2 * quarter.max(b.rss_kib) + 32 * 1024,
                "{name}'s memory kept growing: {} KiB at a quarter of the run, {} KiB at the end",
                quarter,
                a.rss_kib
            );
        }
        drop(chatd_proc);
        assert_replicas_identical(&mut cluster);
        return;
    }
    drop(chatd_proc);
}

/// What a process holds: resident memory and open files (from /proc).
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    rss_kib: u64,
    fds: u64,
}

impl Usage {
    fn of(pid: u32) -> Usage {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
        Usage { rss_kib, fds }
    }
}

/// The least-squares slope of `points`, per unit of their first value.
fn slope(points: impl Iterator<Item = (f64, f64)>) -> f64 {
    let p: Vec<(f64, f64)> = points.collect();
    let n = p.len() as f64;
    if p.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (
        p.iter().map(|q| q.0).sum::<f64>() / n,
        p.iter().map(|q| q.1).sum::<f64>() / n,
    );
    let var: f64 = p.iter().map(|q| (q.0 - mx).powi(2)).sum();
    if var == 0.0 {
        return 0.0;
    }
    p.iter().map(|q| (q.0 - mx) * (q.1 - my)).sum::<f64>() / var
}

/// Devices that connect and hold connections without asking anything,
/// each replaced in turn (about every ten seconds), until `stop`. Returns
/// how many connections were made.
async fn hold_idle(
    devices: Vec<(Endpoint, StaticSecret, EnrolmentCode)>,
    per_device: usize,
    stop: Arc<AtomicBool>,
) -> usize {
    let mut held: Vec<Option<Connection>> = Vec::new();
    let mut made = 0;
    for (ep, device, code) in &devices {
        let first = Connection::connect(ep, device, Some(code.clone()))
            .await
            .ok();
        made += usize::from(first.is_some());
        held.push(first);
        for _ in 1..per_device {
            held.push(None);
        }
    }
    let slots = held.len().max(1);
    let mut next = 0;
    while !stop.load(Ordering::SeqCst) {
        let (ep, device, _) = &devices[(next / per_device) % devices.len()];
        if let Some(old) = held[next].take() {
            old.close().await;
        }
        held[next] = Connection::connect(ep, device, None).await.ok();
        made += usize::from(held[next].is_some());
        next = (next + 1) % slots;
        tokio::time::sleep(Duration::from_millis(10_000 / slots as u64)).await;
    }
    for c in held.into_iter().flatten() {
        c.close().await;
    }
    made
}

/// Once every replica has applied the same entries, stops them and
/// compares their stores record by record.
fn assert_replicas_identical(cluster: &mut VaultCluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let applied: Vec<Option<u64>> = (0..3)
            .map(|i| {
                cluster
                    .status(i)
                    .and_then(|s| s["last_applied_index"].as_u64())
            })
            .collect();
        if applied[0].is_some() && applied.iter().all(|a| *a == applied[0]) {
            println!("soak: every replica applied up to {:?}", applied[0]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas did not converge: applied {applied:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 0..3 {
        cluster.signal(i, 15);
    }
    for p in cluster.procs.iter_mut().flatten() {
        p.wait_exit(Duration::from_secs(20));
    }
    let stores: Vec<Vec<(String, hsm_vault::state::StoredRecord)>> = (0..3)
        .map(|i| {
            hsm_vault::state::store::RecordStore::open(&cluster.store_path(i))
                .unwrap()
                .all()
                .unwrap()
        })
        .collect();
    for i in 1..3 {
        assert_eq!(
            stores[i].len(),
            stores[0].len(),
            "replica {} holds {} records, replica 1 {}",
            i + 1,
            stores[i].len(),
            stores[0].len()
        );
        for ((a, ra), (b, rb)) in stores[0].iter().zip(&stores[i]) {
            assert!(
                a == b && ra.version == rb.version && ra.sealed == rb.sealed,
                "replica {} differs from replica 1 at {a} / {b}",
                i + 1
            );
        }
    }
    println!(
        "soak: the three replicas hold the same {} records",
        stores[0].len()
    );
}
