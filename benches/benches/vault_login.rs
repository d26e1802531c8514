//! Vault login throughput through the real core, next to the bare
//! opaque-ke server cost measured in the same run.
//!
//! `cargo bench -p e2ebk-benches --bench vault_login`
//!
//! Every vault here is `hsm_vault::core::Vault` with `max_attempts` so
//! large that counting never locks. The platforms, from bare to real:
//!
//! - `opaque_*`: opaque-ke alone (`ServerLogin::start` / `finish`) on the
//!   same server setup and password file. The reference.
//! - `core_soft_memory_*`: the core over an in-process AES-GCM sealer and an
//!   in-memory log: what the core adds (parsing, record codec, locks,
//!   metrics) without HSM or storage.
//! - `core_soft_redb_*`: the in-process sealer over the real redb store:
//!   adds only the durable commit.
//! - `core_hsm_memory_*`: real SoftHSM (PKCS#11 AES-GCM with the master key
//!   in the token), in-memory log: adds the HSM.
//! - `core_hsm_redb_*`: real SoftHSM and a redb store in a temp folder on
//!   disk, one fsynced transaction per commit: the single-node production
//!   path. A login start is unseal + seal + durable commit + OPAQUE.
//!
//! Full logins (start + finish) run with client messages pre-computed
//! outside the timing: see `e2ebk_benches::vault` for how KE3 can be
//! prepared although it depends on KE2. The `hsm_*` and `redb_*` entries
//! time the parts alone, to show where a login's time goes. After the
//! run, a table of ratios against the bare reference is printed.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{BatchSize, Criterion};
use e2ebk_benches::summary::{fmt_duration, Estimates};
use e2ebk_benches::vault::{
    fleet_secrets, ke1_messages, memory_log, redb_log, redb_store, sample_record_body, BenchVault,
    HsmToken, PrecomputedLogin,
};
use hsm_vault::hsm::Hsm;
use hsm_vault::seal::{random_iv, Sealer, SoftSealer};
use hsm_vault::secrets::FleetSecrets;
use hsm_vault::state::command::Command;
use hsm_vault::state::record::{record_aad, StoredRecord};
use opaque_ke::CredentialRequest;
use protocol_spec::ids::AccountId;
use protocol_spec::opaque::Suite;
use rand_core::OsRng;

const GROUP: &str = "vault_login";
/// Pre-built KE1 messages, cycled.
const KE1S: usize = 256;
/// Pre-computed full logins per vault, cycled (each costs one Argon2id).
const FULL_LOGINS: usize = 16;

struct Fixtures {
    token: HsmToken,
    hsm: Arc<Hsm>,
    ke1s: Vec<Vec<u8>>,
    soft_memory: BenchVault,
    soft_redb: BenchVault,
    hsm_memory: BenchVault,
    hsm_redb: BenchVault,
    hsm_memory_scripted: BenchVault,
    hsm_redb_scripted: BenchVault,
    logins_memory: Vec<PrecomputedLogin>,
    logins_redb: Vec<PrecomputedLogin>,
}

impl Fixtures {
    fn new() -> Self {
        // SoftHSM reads its configuration once per process: the token and
        // its activation come before anything loads the module.
        let token = HsmToken::create(2);
        let hsm = token.open();
        let secrets: FleetSecrets = fleet_secrets();
        let dir = token.dir().to_path_buf();
        let soft: Arc<dyn Sealer> = Arc::new(SoftSealer::new([0x5a; 32]));
        let sealer: Arc<dyn Sealer> = hsm.clone();
        let one = ["bench-0"];
        let two = ["bench-0", "bench-1"];
        let soft_memory = BenchVault::new(&secrets, soft.clone(), memory_log(), false, &one);
        let soft_redb = BenchVault::new(&secrets, soft, redb_log(&dir, "soft"), false, &one);
        let hsm_memory = BenchVault::new(&secrets, sealer.clone(), memory_log(), false, &two);
        let hsm_redb = BenchVault::new(
            &secrets,
            sealer.clone(),
            redb_log(&dir, "starts"),
            false,
            &two,
        );
        let hsm_memory_scripted =
            BenchVault::new(&secrets, sealer.clone(), memory_log(), true, &one);
        let hsm_redb_scripted =
            BenchVault::new(&secrets, sealer, redb_log(&dir, "full"), true, &one);
        let logins_memory = hsm_memory_scripted.precompute_logins(FULL_LOGINS);
        let logins_redb = hsm_redb_scripted.precompute_logins(FULL_LOGINS);
        Fixtures {
            token,
            hsm,
            ke1s: ke1_messages(KE1S),
            soft_memory,
            soft_redb,
            hsm_memory,
            hsm_redb,
            hsm_memory_scripted,
            hsm_redb_scripted,
            logins_memory,
            logins_redb,
        }
    }
}

/// A closure-friendly cycling index.
struct Cycle(usize);

impl Cycle {
    fn next(&mut self, len: usize) -> usize {
        self.0 = (self.0 + 1) % len;
        self.0
    }
}

fn bare(c: &mut Criterion, fx: &Fixtures) {
    let mut g = c.benchmark_group(GROUP);
    let v = &fx.hsm_redb;
    let ke1s: Vec<CredentialRequest<Suite>> = fx
        .ke1s
        .iter()
        .map(|b| CredentialRequest::deserialize(b).expect("KE1 parses"))
        .collect();
    let mut i = Cycle(0);
    g.bench_function("opaque_login_start", |b| {
        b.iter(|| black_box(v.bare_start(&mut OsRng, ke1s[i.next(ke1s.len())].clone())))
    });
    let s = &fx.hsm_redb_scripted;
    let mut i = Cycle(0);
    g.bench_function("opaque_login_start_finish", |b| {
        b.iter(|| s.bare_full_login(&fx.logins_redb[i.next(fx.logins_redb.len())]))
    });
    g.finish();
}

fn core_starts(c: &mut Criterion, fx: &Fixtures) {
    let mut g = c.benchmark_group(GROUP);
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(8));
    for (name, v) in [
        ("core_soft_memory_login_start", &fx.soft_memory),
        ("core_soft_redb_login_start", &fx.soft_redb),
        ("core_hsm_memory_login_start", &fx.hsm_memory),
        ("core_hsm_redb_login_start", &fx.hsm_redb),
    ] {
        let mut i = Cycle(0);
        g.bench_function(name, |b| {
            b.iter(|| black_box(v.login_start(&fx.ke1s[i.next(fx.ke1s.len())])))
        });
    }
    // Two threads, two accounts, one vault: login starts per second of the
    // whole (2-core) machine. Criterion's "time per iteration" here is
    // elapsed / total logins.
    for (name, v) in [
        ("core_hsm_memory_login_start_2_threads", &fx.hsm_memory),
        ("core_hsm_redb_login_start_2_threads", &fx.hsm_redb),
    ] {
        let accounts: Vec<AccountId> = std::iter::once(v.account.clone())
            .chain(v.extra_accounts.iter().cloned())
            .collect();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                std::thread::scope(|s| {
                    for (t, account) in accounts.iter().enumerate() {
                        let n = iters / 2 + if t == 0 { iters % 2 } else { 0 };
                        s.spawn(move || {
                            for k in 0..n as usize {
                                black_box(v.login_start_as(
                                    account,
                                    &fx.ke1s[(k + t * 7) % fx.ke1s.len()],
                                ));
                            }
                        });
                    }
                });
                t0.elapsed()
            })
        });
    }
    g.finish();
}

fn core_full(c: &mut Criterion, fx: &Fixtures) {
    let mut g = c.benchmark_group(GROUP);
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(8));
    for (name, v, logins) in [
        (
            "core_hsm_memory_full_login",
            &fx.hsm_memory_scripted,
            &fx.logins_memory,
        ),
        (
            "core_hsm_redb_full_login",
            &fx.hsm_redb_scripted,
            &fx.logins_redb,
        ),
    ] {
        let mut i = Cycle(0);
        g.bench_function(name, |b| {
            b.iter(|| v.full_login(&logins[i.next(logins.len())]))
        });
    }
    g.finish();
}

fn parts(c: &mut Criterion, fx: &Fixtures) {
    let mut g = c.benchmark_group(GROUP);
    let account = AccountId::new("parts").expect("account id");
    let body = sample_record_body();
    let aad = record_aad(&account, 42);
    g.bench_function("hsm_seal_record", |b| {
        b.iter(|| {
            black_box(
                fx.hsm
                    .seal(&aad, random_iv().expect("iv"), &body)
                    .expect("seal"),
            )
        })
    });
    let sealed = fx
        .hsm
        .seal(&aad, random_iv().expect("iv"), &body)
        .expect("seal");
    g.bench_function("hsm_unseal_record", |b| {
        b.iter(|| black_box(fx.hsm.unseal(&aad, &sealed).expect("unseal")))
    });
    let store = redb_store(fx.token.dir(), "parts");
    let mut version = 0u64;
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("redb_commit_record", |b| {
        b.iter_batched(
            || {
                let cmd = Command::PutRecord {
                    account: account.clone(),
                    expected_version: version,
                    record: StoredRecord {
                        version: version + 1,
                        sealed: sealed.clone(),
                    },
                };
                version += 1;
                cmd
            },
            |cmd| store.apply(&cmd).expect("commit"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("redb_read_record", |b| {
        b.iter(|| black_box(store.get(&account).expect("read")))
    });
    g.finish();
}

fn report(since: SystemTime) {
    let e = Estimates::new(since);
    let get = |b: &str| e.median(GROUP, b);
    println!("\nvault_login: medians of this run and ratios to bare opaque-ke");
    println!("({})", e2ebk_benches::procfs::cpu_pressure_note());
    println!(
        "{:<40} {:>10} {:>12} {:>9}",
        "benchmark", "median", "per second", "ratio"
    );
    let line = |name: &str, reference: Option<Duration>| {
        if let Some(t) = get(name) {
            let ratio = reference
                .map(|r| format!("{:.2}x", t.as_secs_f64() / r.as_secs_f64()))
                .unwrap_or_else(|| "ref".into());
            println!(
                "{:<40} {:>10} {:>12.0} {:>9}",
                name,
                fmt_duration(t),
                1.0 / t.as_secs_f64(),
                ratio
            );
        }
    };
    let start = get("opaque_login_start");
    let full = get("opaque_login_start_finish");
    line("opaque_login_start", None);
    for n in [
        "core_soft_memory_login_start",
        "core_soft_redb_login_start",
        "core_hsm_memory_login_start",
        "core_hsm_redb_login_start",
        "core_hsm_memory_login_start_2_threads",
        "core_hsm_redb_login_start_2_threads",
    ] {
        line(n, start);
    }
    line("opaque_login_start_finish", None);
    for n in ["core_hsm_memory_full_login", "core_hsm_redb_full_login"] {
        line(n, full);
    }
    for n in [
        "hsm_seal_record",
        "hsm_unseal_record",
        "redb_commit_record",
        "redb_read_record",
    ] {
        line(n, None);
    }
    // Where a login start's time goes, from the 2x2 grid of platforms.
    if let (Some(o), Some(sm), Some(sr), Some(hm), Some(hr)) = (
        start,
        get("core_soft_memory_login_start"),
        get("core_soft_redb_login_start"),
        get("core_hsm_memory_login_start"),
        get("core_hsm_redb_login_start"),
    ) {
        let diff = |a: Duration, b: Duration| {
            let d = a.as_secs_f64() - b.as_secs_f64();
            format!("{:+.1} µs", d * 1e6)
        };
        println!(
            "login start: opaque-ke {}; core without HSM or IO {}; HSM (2 AES-GCM calls) {} \
             (soft+memory -> hsm+memory) / {} (soft+redb -> hsm+redb); durable commit {} \
             (soft+memory -> soft+redb) / {} (hsm+memory -> hsm+redb)",
            fmt_duration(o),
            diff(sm, o),
            diff(hm, sm),
            diff(hr, sr),
            diff(sr, sm),
            diff(hr, hm),
        );
    }
    // A login start is: read + unseal, seal + commit, OPAQUE start.
    if let (Some(o), Some(s), Some(u), Some(c), Some(r), Some(real)) = (
        start,
        get("hsm_seal_record"),
        get("hsm_unseal_record"),
        get("redb_commit_record"),
        get("redb_read_record"),
        get("core_hsm_redb_login_start"),
    ) {
        let parts = o + s + u + c + r;
        println!(
            "login start, sum of parts (opaque {} + unseal {} + seal {} + read {} + commit {}) = {}; measured {}",
            fmt_duration(o),
            fmt_duration(u),
            fmt_duration(s),
            fmt_duration(r),
            fmt_duration(c),
            fmt_duration(parts),
            fmt_duration(real),
        );
    }
}

fn main() {
    let since = SystemTime::now();
    let fx = Fixtures::new();
    let mut c = Criterion::default().configure_from_args();
    bare(&mut c, &fx);
    core_starts(&mut c, &fx);
    core_full(&mut c, &fx);
    parts(&mut c, &fx);
    c.final_summary();
    report(since);
}
