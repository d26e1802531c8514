//! `backupctl`: end-to-end encrypted chat backups from the command line.
//!
//! A thin binary: argument parsing and help text, then the library's
//! custody, restore, device, profile and terminal modules do the work and
//! this file words what they report for a person. Results
//! go to standard output (standard error when standard output carries
//! backup or restored data); every failure is one sentence on standard
//! error and a documented exit code.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use backup_client::backup::{backup_to, BackupIoError, BackupOptions, Location, RestoreOutput};
use backup_client::custody::{self, CachedKey, EscrowCheck, ForgottenKey, KeyOrigin, VaultKeyKept};
use backup_client::device::{Device, Enrolment};
use backup_client::exit::{exit_for, explain};
use backup_client::profile::{Profile, PROFILE_ENV};
use backup_client::restore::RestorePlan;
use backup_client::terminal::{self, TransferProgress};
use backup_client::ClientError;
use clap::{ArgGroup, Args, Parser, Subcommand};
use protocol_spec::ids::EnrolmentCode;
use protocol_spec::messages::vault::{RecordState, RegistrationMode};
use protocol_spec::root_key::RootKey;
use zeroize::Zeroizing;

const ABOUT: &str = "End-to-end encrypted chat backups: enrol this device, protect the backup key with a password or a 64-digit key, back up and restore.";

const LONG_ABOUT: &str = "\
End-to-end encrypted chat backups.

Every backup is encrypted on this device with a random 256-bit backup key K.
Nobody else can read it: not the chat operator, not the cloud that stores it.
You keep K in one of two ways:

  * a password (`enable --password`): K is escrowed, wrapped, in the
    operator's Backup Key Vault (HSMs). The vault never learns the password;
    after too many wrong passwords in a row it erases K for good.
  * a 64-digit key (`enable --manual`): you write K down yourself.

Either way this device keeps a copy of K (the backup key file, mode 0600),
so `backup` runs unattended. A typical first session:

  backupctl enroll --code K5EF-XRCX-ZC4N-DVWM-JKTC   # once per device
  backupctl enable --password                        # choose a password
  backupctl backup chats.tar --to s3://my-bucket/chats.backup
  backupctl restore s3://my-bucket/chats.backup --to chats.tar --password";

const AFTER_LONG_HELP: &str = "\
PROFILE
  Every command reads a profile (TOML), given with --profile FILE or the
  BACKUPCTL_PROFILE environment variable. `ops/local-stack up` writes one:

    chatd_url = \"ws://127.0.0.1:7000\"   # chatd's WebSocket URL
    chatd_key = \"<64 hex digits>\"       # chatd's static key, pinned
    fleet_id = \"local-dev\"              # the vault fleet's id
    fleet_key = \"<64 hex digits>\"       # the vault fleet's tunnel key, pinned
    account = \"demo\"                    # your account id
    device_key_file = \"device.key\"      # relative to the profile's folder
    backup_key_file = \"backup.key\"      # optional; this is the default

WHERE SECRETS COME FROM
  Passwords and the 64-digit key are typed on the terminal without echo, or
  piped in with --password-stdin / --key-stdin (one line; for
  change-password two lines: old, then new). They are never taken as
  command-line arguments, never printed, and wiped from memory after use.
  The enrolment code may be given with --code (visible to other local users
  in the process list) or piped with --code-stdin.
  Two files next to the profile are secrets, created with mode 0600 and
  refused if other users may read them:
    device.key   this device's identity towards chatd (created by enroll)
    backup.key   this device's copy of the backup key K (created by enable,
                 or by a password restore on a device that has none)
  Anyone who can read backup.key can decrypt your backups: keep it as
  private as the backups' password.

EXIT CODES
  0  success
  1  any other error
  2  usage: bad arguments or unusable input (empty or short password,
     mistyped 64-digit key, missing --yes when not on a terminal)
  3  wrong password (the attempt is spent; the message says how many remain)
  4  locked: the escrowed key was erased after too many wrong passwords
  5  not enabled: the vault holds no key for this account, or this device
     has no backup key
  6  network or server unavailable: retryable, try again
  7  backup unreadable: corrupt, tampered with, truncated, or made with
     another key (nothing is written)
  8  device not enrolled, revoked, or the enrolment code was rejected
  9  local file problem: output exists, input not found, permissions, an
     unsafe or damaged key file or profile

Run `backupctl <command> --help` for each command's details and examples.";

#[derive(Debug, Parser)]
#[command(
    name = "backupctl",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP,
    after_help = "Run `backupctl --help` for the profile format, where secrets come from, and the exit codes."
)]
struct Cli {
    /// The profile file (TOML) naming chatd, the vault fleet and your account.
    #[arg(
        long,
        global = true,
        env = PROFILE_ENV,
        value_name = "FILE",
        display_order = 100
    )]
    profile: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enrol this device for the account with a one-time code from your operator.
    #[command(
        long_about = "Enrol this device for the profile's account.\n\n\
Creates the device key file (mode 0600) if it does not exist, then connects to chatd with \
the one-time enrolment code. chatd remembers the device key; later commands connect without a \
code. Running it again on an enrolled device just says so (the code is not used).",
        after_help = "Examples:\n  backupctl enroll --code K5EF-XRCX-ZC4N-DVWM-JKTC\n  cat code.txt | backupctl enroll --code-stdin\n\n\
Exit codes: 0 enrolled or already enrolled, 8 code rejected (invalid, expired, used) or device revoked, 6 chatd unreachable."
    )]
    Enroll(EnrollArgs),

    /// Turn on backups: escrow the backup key under a password, or show it as a 64-digit key.
    #[command(
        long_about = "Turn on backups for this account.\n\n\
--password escrows the backup key K in the vault under a password you choose (typed twice, \
at least 8 characters). The vault allows a limited number of wrong passwords in a row, then \
erases K for good. If this device already has a backup key (from --manual or a restore), that \
key is escrowed, so existing backups stay restorable; otherwise a new one is generated.\n\n\
--manual shows this device's backup key (generating one if there is none) as 64 digits to \
write down. It is then the way to restore without a password.\n\n\
Either way the key is cached on this device (backup_key_file, mode 0600) so `backup` runs \
without asking for anything.",
        after_help = "Examples:\n  backupctl enable --password\n  printf '%s\\n' \"$PASSWORD\" | backupctl enable --password-stdin\n  \
backupctl enable --password --replace     # forgotten password: start over\n  backupctl enable --manual\n\n\
Exit codes: 0 enabled, 1 already enabled (see change-password, --replace), 2 password refused, 6 vault unreachable, 8 not enrolled."
    )]
    Enable(EnableArgs),

    /// Show this device's state and the vault's record for the account.
    #[command(
        long_about = "Show this device's state (device key, enrolment, cached backup key) and \
the vault's record for the account: registered (with password attempts remaining), locked \
(erased after too many wrong passwords), or none.",
        after_help = "Example:\n  backupctl status\n\nExit codes: 0 reported, 8 device not enrolled, 6 chatd or vault unreachable."
    )]
    Status,

    /// Encrypt a file (or standard input) into a backup.
    #[command(
        long_about = "Encrypt SOURCE (a file, or - for standard input) with this device's \
backup key into a backup at --to. The backup appears under its name only once it is complete. \
Encryption runs on all cores in bounded memory.\n\n\
Destinations: a file path, - (standard output), file:///absolute/path, s3://bucket/key, \
gs://bucket/key, az://container/key (cloud credentials from the cloud's usual environment \
variables: AWS_*, GOOGLE_*, AZURE_STORAGE_*).",
        after_help = "Examples:\n  backupctl backup chats.tar --to chats.backup\n  tar c chats | backupctl backup - --to s3://my-bucket/chats.backup\n  \
backupctl backup chats.tar --to chats.backup --overwrite --chunk-size 4MiB\n\n\
Exit codes: 0 done, 5 no backup key on this device (run enable), 9 source missing or destination exists."
    )]
    Backup(BackupArgs),

    /// Decrypt and verify a backup with the password, the 64-digit key, or this device's key.
    #[command(
        long_about = "Decrypt SOURCE (a path, -, or a URL as for backup) into --to, verifying every \
chunk. The output file appears only after the whole backup verified: a corrupt, truncated, \
reordered or tampered backup, or one made with another key, leaves nothing behind. (With \
--to - the data streams out as it verifies; on failure the exit code is the only signal that \
what was printed is incomplete.)\n\n\
With --password the vault checks the password and releases the backup key. A wrong password \
spends one of the limited attempts, so it is never retried automatically. After a successful \
password restore, the key is cached on this device if it has none.",
        after_help = "Examples:\n  backupctl restore chats.backup --to chats.tar --password\n  \
backupctl restore s3://my-bucket/chats.backup --to - --key > chats.tar\n  \
printf '%s\\n' \"$KEY\" | backupctl restore chats.backup --to chats.tar --key-stdin\n\n\
Exit codes: 0 restored, 2 mistyped key, 3 wrong password, 4 locked, 5 no key in the vault, \
6 unreachable, 7 backup unreadable, 8 not enrolled (--password), 9 output exists or source missing."
    )]
    Restore(RestoreArgs),

    /// Change the password that protects the backup key (the key itself stays the same).
    #[command(
        long_about = "Change the password: logs in with the old password, then, in the same \
vault session, escrows the same backup key under the new one. Existing backups are unaffected. \
A wrong old password spends an attempt.",
        after_help = "Examples:\n  backupctl change-password\n  printf '%s\\n%s\\n' \"$OLD\" \"$NEW\" | backupctl change-password --password-stdin\n\n\
Exit codes: 0 changed, 2 new password refused, 3 wrong old password, 4 locked, 5 not enabled, 6 unreachable."
    )]
    ChangePassword(ChangePasswordArgs),

    /// Turn off password backups: delete the escrowed key from the vault and this device's copy.
    #[command(
        long_about = "Turn off password backups: logs in with the password, deletes the escrowed \
backup key from the vault, and deletes this device's cached copy (if it is the same key). \
Backups made with that key can then be restored only with its 64-digit key, if you wrote it \
down. Asks for confirmation on a terminal; elsewhere requires --yes.",
        after_help = "Examples:\n  backupctl disable\n  printf '%s\\n' \"$PASSWORD\" | backupctl disable --password-stdin --yes\n\n\
Exit codes: 0 disabled, 2 not confirmed, 3 wrong password, 4 locked, 5 not enabled, 6 unreachable."
    )]
    Disable(DisableArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("code_source").required(true).args(["code", "code_stdin"])))]
struct EnrollArgs {
    /// The one-time enrolment code from your operator (dashes and spaces are ignored).
    #[arg(long, value_name = "CODE", value_parser = parse_code)]
    code: Option<EnrolmentCode>,
    /// Read the enrolment code from standard input (one line).
    #[arg(long)]
    code_stdin: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").required(true).multiple(true).args(["password", "password_stdin", "manual"])))]
struct EnableArgs {
    /// Escrow the backup key in the vault under a new password, typed twice without echo.
    #[arg(long)]
    password: bool,
    /// Like --password, but read the new password from standard input (one line).
    #[arg(long)]
    password_stdin: bool,
    /// Show the backup key as 64 digits to write down instead of escrowing it.
    #[arg(long, conflicts_with_all = ["password", "password_stdin", "replace"])]
    manual: bool,
    /// With --password: replace whatever the vault holds for this account (forgotten
    /// password). This device's backup key (or a new one) is escrowed under the new
    /// password; a different key the vault held, and backups made only with it, become
    /// unrecoverable through the vault.
    #[arg(long)]
    replace: bool,
}

#[derive(Debug, Args)]
struct BackupArgs {
    /// The data to back up: a file, or - for standard input.
    #[arg(value_name = "SOURCE")]
    source: String,
    /// Where to write the backup: a path, -, file://, s3://, gs:// or az:// URL.
    #[arg(long, value_name = "DEST")]
    to: String,
    /// Replace an existing backup at DEST.
    #[arg(long)]
    overwrite: bool,
    /// Chunk size, a power of two from 4KiB to 16MiB (default 1MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_chunk_size)]
    chunk_size: Option<u8>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("secret").required(true).args(["password", "password_stdin", "key", "key_stdin", "cached_key"])))]
struct RestoreArgs {
    /// The backup: a path, - for standard input, or a file://, s3://, gs://, az:// URL.
    #[arg(value_name = "SOURCE")]
    source: String,
    /// Where to write the restored data: a path, or - for standard output.
    #[arg(long, value_name = "PATH")]
    to: String,
    /// Replace an existing file at --to.
    #[arg(long)]
    overwrite: bool,
    /// Get the backup key from the vault with the password (typed without echo).
    #[arg(long)]
    password: bool,
    /// Like --password, reading the password from standard input (one line).
    #[arg(long)]
    password_stdin: bool,
    /// Use the 64-digit key, typed without echo on one line (spaces and dashes ignored).
    #[arg(long)]
    key: bool,
    /// Read the 64-digit key from standard input (line breaks allowed).
    #[arg(long)]
    key_stdin: bool,
    /// Use the backup key cached on this device.
    #[arg(long)]
    cached_key: bool,
}

#[derive(Debug, Args)]
struct ChangePasswordArgs {
    /// Read the old and the new password from standard input, one line each.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Debug, Args)]
struct DisableArgs {
    /// Read the password from standard input (one line).
    #[arg(long)]
    password_stdin: bool,
    /// Do not ask for confirmation (required when not on a terminal).
    #[arg(long)]
    yes: bool,
}

/// Parses an enrolment code straight into its redacting type, so it never
/// shows in `Debug` output.
fn parse_code(s: &str) -> Result<EnrolmentCode, String> {
    EnrolmentCode::new(s.trim()).map_err(|e| format!("not an enrolment code ({e})"))
}

fn parse_chunk_size(s: &str) -> Result<u8, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size; write e.g. 64KiB, 1MiB or 4194304"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        _ => return Err(format!("unknown unit in '{s}'; use KiB or MiB")),
    };
    let bytes = n.saturating_mul(scale);
    if !bytes.is_power_of_two() || !((1 << 12)..=(1 << 24)).contains(&bytes) {
        return Err(format!(
            "'{s}' is not a power of two from 4KiB to 16MiB (e.g. 64KiB, 1MiB, 4MiB)"
        ));
    }
    Ok(bytes.trailing_zeros() as u8)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", explain(&e));
            ExitCode::from(exit_for(&e).code())
        }
    }
}

fn run(cli: Cli) -> Result<(), ClientError> {
    let path = cli.profile.ok_or_else(|| {
        ClientError::Input(format!(
            "no profile given; pass --profile FILE or set {PROFILE_ENV} (`ops/local-stack up` writes one to .local-stack/client/profile.toml)"
        ))
    })?;
    let profile = Profile::load(&path)?;
    match cli.command {
        Command::Enroll(a) => enroll(profile, a),
        Command::Enable(a) if a.manual => enable_manual(profile),
        Command::Enable(a) => enable_password(profile, a),
        Command::Status => status(profile),
        Command::Backup(a) => backup(&profile, a),
        Command::Restore(a) => restore(profile, a),
        Command::ChangePassword(a) => change_password(profile, a),
        Command::Disable(a) => disable(profile, a),
    }
}

/// The async runtime for network operations. Backups and restores run
/// outside it (the engine and object stores bring their own threads).
fn block_on<T>(
    f: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ClientError::Backup(BackupIoError::Runtime { source }))?;
    rt.block_on(f)
}

fn device(profile: Profile) -> Result<Device, ClientError> {
    let key = profile.device_key()?;
    Ok(Device::new(profile, key))
}

fn one_stdin_line(what: &str) -> Result<Zeroizing<String>, ClientError> {
    let mut lines = terminal::stdin_lines(1, what)?;
    lines
        .pop()
        .ok_or_else(|| ClientError::Input(format!("no {what} on standard input")))
}

fn enroll(profile: Profile, a: EnrollArgs) -> Result<(), ClientError> {
    let code = match a.code {
        Some(code) => code,
        None => parse_code(&one_stdin_line("enrolment code")?).map_err(|e| {
            ClientError::Input(format!("{e}; copy the code your operator gave you"))
        })?,
    };
    let (key, created) = profile.device_key_or_create()?;
    if created {
        eprintln!(
            "created device key {} (mode 0600)",
            profile.device_key_file.display()
        );
    }
    let account = profile.account().clone();
    let device = Device::new(profile, key);
    match block_on(device.enroll(&code))? {
        Enrolment::EnrolledNow => println!("enrolled: this device is now enrolled for account {account}"),
        Enrolment::AlreadyEnrolled => println!(
            "already enrolled: this device was already enrolled for account {account}; the code was not used"
        ),
    }
    Ok(())
}

fn enable_password(profile: Profile, a: EnableArgs) -> Result<(), ClientError> {
    // Device key first: no point asking for a password on a device that
    // cannot reach the vault.
    let device = device(profile)?;
    let password = if a.password_stdin {
        let p = one_stdin_line("new password")?;
        terminal::check_new_password(&p)?;
        p
    } else {
        terminal::prompt_new_password("New backup password")?
    };
    let mode = if a.replace {
        RegistrationMode::Replace
    } else {
        RegistrationMode::Create
    };
    let enabled = block_on(custody::enable_password(&device, password.as_bytes(), mode))?;
    let profile = device.profile();
    println!(
        "password backups enabled for account {}: the backup key is escrowed in the vault under your password ({} wrong passwords in a row erase it for good)",
        profile.account(),
        enabled.max_attempts
    );
    match enabled.key {
        KeyOrigin::New => println!(
            "this device keeps a copy of the new backup key in {} (mode 0600) so `backupctl backup` runs without asking",
            profile.backup_key_file.display()
        ),
        KeyOrigin::Existing => println!(
            "the escrowed key is this device's existing backup key ({}), so backups made with it can now be restored with the password",
            profile.backup_key_file.display()
        ),
    }
    Ok(())
}

fn enable_manual(profile: Profile) -> Result<(), ClientError> {
    let manual = custody::enable_manual(&profile)?;
    let lines = manual.key.to_lines();
    let mut shown = Zeroizing::new(String::new());
    for line in lines.lines() {
        shown.push_str("    ");
        shown.push_str(line);
        shown.push('\n');
    }
    println!(
        "{} 64-digit backup key:\n\n{}",
        match manual.origin {
            KeyOrigin::New => "Your new",
            KeyOrigin::Existing => "This device's",
        },
        shown.as_str()
    );
    println!(
        "Write it down and keep it somewhere safe: it is the only way to restore your backups without a password. \
This device keeps a copy in {} (mode 0600) so `backupctl backup` runs without asking.",
        profile.backup_key_file.display()
    );
    // Tell the person about a password escrow they may want gone.
    match block_on(custody::check_password_escrow(&profile))? {
        EscrowCheck::Checked(RecordState::Registered) => eprintln!(
            "note: the vault also holds a password-protected backup key for this account; `backupctl disable` removes it if you want the 64-digit key to be the only way"
        ),
        EscrowCheck::NotEnrolled | EscrowCheck::Checked(_) => {}
        EscrowCheck::Unknown(e) => eprintln!(
            "note: could not check whether the vault holds a password escrow for this account ({}); `backupctl status` shows it",
            explain(&e)
        ),
    }
    Ok(())
}

fn status(profile: Profile) -> Result<(), ClientError> {
    println!(
        "account      {} (profile {})",
        profile.account(),
        profile.path.display()
    );
    match profile.cached_backup_key() {
        Ok(Some(_)) => println!(
            "backup key   cached in {}",
            profile.backup_key_file.display()
        ),
        Ok(None) => {
            println!("backup key   none on this device (run `backupctl enable`, or restore first)")
        }
        Err(e) => println!("backup key   unusable: {}", explain(&e)),
    }
    if !profile.has_device_key() {
        println!(
            "device key   missing ({}): run `backupctl enroll --code CODE`",
            profile.device_key_file.display()
        );
        return Err(ClientError::NoDeviceKey {
            path: profile.device_key_file.clone(),
        });
    }
    let device_key_file = profile.device_key_file.clone();
    let device = device(profile)?;
    match block_on(device.status()) {
        Ok(s) => {
            println!("device key   {}: enrolled", device_key_file.display());
            match s.state {
                RecordState::Registered => println!(
                    "vault        registered: {} of {} password attempts remaining",
                    s.attempts_remaining, s.max_attempts
                ),
                RecordState::Locked => println!(
                    "vault        locked: the escrowed key was erased after too many wrong passwords"
                ),
                RecordState::None => println!(
                    "vault        none: password backups are not enabled for this account"
                ),
            }
            Ok(())
        }
        Err(e) => {
            if let ClientError::Closed(c) = &e {
                println!("device key   {}: {}", device_key_file.display(), c.reason());
            }
            Err(e)
        }
    }
}

/// Opens the data to back up, with its length when known.
fn open_source(source: &str) -> Result<(Box<dyn Read + Send>, Option<u64>), ClientError> {
    if source == "-" {
        return Ok((Box::new(io::stdin()), None));
    }
    let file = File::open(source).map_err(|e| {
        ClientError::Backup(BackupIoError::Io {
            action: "open",
            location: source.to_owned(),
            source: e,
        })
    })?;
    let meta = file.metadata().map_err(|e| {
        ClientError::Backup(BackupIoError::Io {
            action: "inspect",
            location: source.to_owned(),
            source: e,
        })
    })?;
    if meta.is_dir() {
        return Err(ClientError::Input(format!(
            "{source} is a directory; back up a file (for example a tar archive: `tar c {source} | backupctl backup - --to ...`)"
        )));
    }
    Ok((Box::new(file), Some(meta.len())))
}

fn backup(profile: &Profile, a: BackupArgs) -> Result<(), ClientError> {
    let key = profile.require_backup_key()?;
    let dest = Location::parse(&a.to)?;
    let (reader, len) = open_source(&a.source)?;
    let mut opts = BackupOptions {
        overwrite: a.overwrite,
        source_len: len,
        ..BackupOptions::default()
    };
    if let Some(log2) = a.chunk_size {
        opts.chunk_log2 = log2;
    }
    let progress = TransferProgress::new("encrypting");
    let stats =
        backup_to(&dest, reader, &key, &opts, &progress).inspect_err(|_| progress.abandon())?;
    report(
        dest == Location::Stdio,
        &format!(
            "backed up {} bytes to {dest} ({} bytes, {})",
            stats.plaintext_bytes,
            stats.backup_bytes,
            chunks(stats.chunks)
        ),
    );
    Ok(())
}

fn chunks(n: u64) -> String {
    if n == 1 {
        "1 chunk".into()
    } else {
        format!("{n} chunks")
    }
}

/// Prints a result on standard output, or standard error when standard
/// output carries data.
fn report(stdout_busy: bool, line: &str) {
    if stdout_busy {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// The warning for a device whose cached key is not the vault's.
fn warn_cached_differs(profile: &Profile) {
    eprintln!(
        "warning: this device's backup key ({}) is not the key escrowed in the vault, so backups made on this device cannot be restored with the password; \
to switch this device to the vault's key, move that file away (keep it while its backups matter) and run `backupctl restore --password` again",
        profile.backup_key_file.display()
    );
}

fn restore(profile: Profile, a: RestoreArgs) -> Result<(), ClientError> {
    let src = Location::parse(&a.source)?;
    let out = if a.to == "-" {
        RestoreOutput::Stdout
    } else {
        RestoreOutput::Path(PathBuf::from(&a.to))
    };
    if src == Location::Stdio && (a.password_stdin || a.key_stdin) {
        return Err(ClientError::Input(
            "the backup and the secret cannot both come from standard input; give the backup as a path or URL, or type the secret (--password or --key)".into(),
        ));
    }
    let plan = RestorePlan::check(src, out, a.overwrite)?;
    let shown = match plan.output() {
        RestoreOutput::Stdout => "standard output".to_owned(),
        RestoreOutput::Path(p) => p.display().to_string(),
    };
    let stdout_busy = *plan.output() == RestoreOutput::Stdout;

    let keyed = if a.cached_key {
        plan.with_cached_key(&profile)?
    } else if a.key || a.key_stdin {
        let text = if a.key_stdin {
            terminal::stdin_all("64-digit key")?
        } else {
            terminal::prompt_secret("64-digit backup key (one line): ", "--key-stdin")?
        };
        plan.with_key(RootKey::parse_text(&text)?)
    } else {
        let device = device(profile.clone())?;
        let password = if a.password_stdin {
            one_stdin_line("password")?
        } else {
            terminal::prompt_secret("Backup password: ", "--password-stdin")?
        };
        terminal::check_password(&password)?;
        block_on(plan.with_password(&device, password.as_bytes()))?
    };

    let progress = TransferProgress::new("restoring");
    let restored = keyed.run(&progress).inspect_err(|_| progress.abandon())?;
    report(
        stdout_busy,
        &format!(
            "restored {} bytes to {shown} ({} verified)",
            restored.stats.plaintext_bytes,
            chunks(restored.stats.chunks)
        ),
    );
    // After a password restore; the restore already succeeded, so problems
    // here are warnings.
    match restored.vault_key {
        None | Some(VaultKeyKept::AlreadyCached) => {}
        Some(VaultKeyKept::CachedNow) => report(
            stdout_busy,
            &format!(
                "cached the backup key in {} (mode 0600) so `backupctl backup` runs on this device without asking",
                profile.backup_key_file.display()
            ),
        ),
        Some(VaultKeyKept::KeptDifferent) => warn_cached_differs(&profile),
        Some(VaultKeyKept::NotCached(e)) => {
            eprintln!("warning: did not cache the backup key: {}", explain(&e))
        }
    }
    Ok(())
}

fn change_password(profile: Profile, a: ChangePasswordArgs) -> Result<(), ClientError> {
    let device = device(profile)?;
    let (old, new) = if a.password_stdin {
        let mut lines = terminal::stdin_lines(2, "old and new password")?.into_iter();
        match (lines.next(), lines.next()) {
            (Some(old), Some(new)) => (old, new),
            _ => {
                return Err(ClientError::Input(
                    "pipe two lines in: the old password, then the new one".into(),
                ))
            }
        }
    } else {
        let old = terminal::prompt_secret("Current backup password: ", "--password-stdin")?;
        terminal::check_password(&old)?;
        (old, terminal::prompt_new_password("New backup password")?)
    };
    terminal::check_password(&old)?;
    terminal::check_new_password(&new)?;
    if *old == *new {
        return Err(ClientError::Input(
            "the new password is the same as the old one; choose a different one".into(),
        ));
    }
    let changed = block_on(custody::change_password(
        &device,
        old.as_bytes(),
        new.as_bytes(),
    ))?;
    println!(
        "password changed: the same backup key is now protected by the new password ({} wrong passwords in a row erase it); existing backups are unaffected",
        changed.max_attempts
    );
    if matches!(changed.cached_key, CachedKey::Different) {
        warn_cached_differs(device.profile());
    }
    Ok(())
}

fn disable(profile: Profile, a: DisableArgs) -> Result<(), ClientError> {
    let device = device(profile)?;
    let profile = device.profile();
    if !a.yes {
        if !terminal::interactive() {
            return Err(ClientError::Input(
                "disable deletes the escrowed backup key; standard input is not a terminal, so confirm with --yes".into(),
            ));
        }
        let question = format!(
            "Delete the password-protected backup key of account {} from the vault, and this device's copy in {}? \
Backups made with it can then be restored only with its 64-digit key, if you wrote it down.",
            profile.account(),
            profile.backup_key_file.display()
        );
        if !terminal::confirm(&question)? {
            return Err(ClientError::Cancelled);
        }
    }
    let password = if a.password_stdin {
        one_stdin_line("password")?
    } else {
        terminal::prompt_secret("Backup password: ", "--password-stdin")?
    };
    terminal::check_password(&password)?;
    let disabled = block_on(custody::disable(&device, password.as_bytes()))?;
    println!(
        "password backups disabled: the vault no longer holds a backup key for account {}",
        profile.account()
    );
    let file = profile.backup_key_file.display();
    match disabled.cached_key? {
        ForgottenKey::Deleted => println!("deleted this device's copy of the backup key ({file})"),
        ForgottenKey::KeptDifferent => eprintln!(
            "note: kept {file}: it holds a different backup key than the one the vault had, and may be the only copy of it"
        ),
        ForgottenKey::NoneCached => {}
        ForgottenKey::LeftAlone(e) => eprintln!("note: left {file} alone: {}", explain(&e)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use backup_client::vault_flow::FlowError;

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size("4KiB"), Ok(12));
        assert_eq!(parse_chunk_size("1MiB"), Ok(20));
        assert_eq!(parse_chunk_size("16m"), Ok(24));
        assert_eq!(parse_chunk_size("65536"), Ok(16));
        assert!(parse_chunk_size("3KiB").is_err());
        assert!(parse_chunk_size("32MiB").is_err());
        assert!(parse_chunk_size("lots").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn login_outcomes_are_flow_errors() {
        // The binary relies on FlowError for exit codes 3 and 4.
        let e = ClientError::Flow(FlowError::Locked);
        assert_eq!(exit_for(&e).code(), 4);
    }
}
