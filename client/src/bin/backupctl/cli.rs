//! `backupctl`'s command line: every command, argument and help text (the
//! golden file `tests/golden/backupctl-help.txt` holds what `--help`
//! prints), and the parsers for arguments that are not plain strings.

use std::path::PathBuf;

use backup_client::profile::PROFILE_ENV;
use clap::{ArgGroup, Args, Parser, Subcommand};
use protocol_spec::ids::EnrolmentCode;

const ABOUT: &str = "End-to-end encrypted chat backups: enrol this device, protect the backup key with a password or a 64-digit key, back up and restore.";

const LONG_ABOUT: &str = "\
End-to-end encrypted chat backups.

Every backup is encrypted on this device with a backup key K of 256 bits: 240
random bits and a 16-bit check value that catches a mistyped 64-digit key.
Nobody else can read a backup: not the chat operator, not the cloud that
stores it.
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
  change-password two lines: old, then new). From standard input, the line
  ending (the LF and CR characters that end the line) is removed and
  nothing else: spaces are part of the password. They are never taken as
  command-line arguments, never printed, and wiped from memory after use.
  A password is the same on every device however it was typed: it is put
  in one Unicode form first (NFC, with no-break and other wide spaces made
  plain spaces). A password holding a tab, another control character or a
  byte-order mark is refused before anything is sent, so no attempt is
  spent on it.
  When only one password attempt is left, a wrong (or interrupted) try
  erases the escrowed key for good: backupctl says so and asks before it
  tries (without a terminal it warns on standard error and goes on).
  The enrolment code may be given with --code (visible to other local users
  in the process list) or piped with --code-stdin.
  Two files next to the profile are secrets, created with mode 0600 and
  refused if other users may read them:
    device.key   this device's identity towards chatd (created by enroll)
    backup.key   this device's copy of the backup key K (created by enable,
                 or by a password restore on a device that has none)
  Anyone who can read backup.key can decrypt your backups: keep it as
  private as the backups' password.
  One more file next to the profile, named after it, is not a secret:
    profile.escrow-epoch   the vault escrow this device last saw and
                           accepted (see `status --help`)

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
  10 object storage refused for good: the bucket or the backup object does
     not exist, access was denied, or the storage settings cannot work (an
     http:// endpoint needs AWS_ALLOW_HTTP=true)
  11 escrow changed (status): the vault holds another escrow than the one
     this device last saw, from a forgotten-password reset, a password
     change or password backups enabled anew on another device

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
pub struct Cli {
    /// The profile file (TOML) naming chatd, the vault fleet and your account.
    #[arg(
        long,
        global = true,
        env = PROFILE_ENV,
        value_name = "FILE",
        display_order = 100
    )]
    pub profile: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
(erased after too many wrong passwords), or none.\n\n\
The vault names every registration with an escrow epoch and says when it was made and how \
(password backups enabled, a forgotten-password reset, a password change). This device \
remembers the escrow it last saw and accepted: the one it registered, changed the password \
of, or restored a backup with the password of. If the vault now holds another one, status \
says when and how it was made and exits 11: another device reset or changed the password \
(the vault cannot say which device, only that it was not this one). A device that never saw \
an epoch starts tracking the current one.",
        after_help = "Example:\n  backupctl status\n\nExit codes: 0 reported, 8 device not enrolled, 6 chatd or vault unreachable, \
9 the remembered escrow file is damaged or cannot be written, 11 escrow changed by another device."
    )]
    Status,

    /// Encrypt a file (or standard input) into a backup.
    #[command(
        long_about = "Encrypt SOURCE (a file, or - for standard input) with this device's \
backup key into a backup at --to. The backup appears under its name only once it is complete. \
Encryption runs on all cores in bounded memory.\n\n\
Destinations: a file path, - (standard output), file:///absolute/path, s3://bucket/key, \
gs://bucket/key, az://container/key (cloud credentials from the cloud's usual environment \
variables: AWS_*, GOOGLE_*, AZURE_STORAGE_*). An S3-compatible server elsewhere is named \
with AWS_ENDPOINT; a plain http:// one also needs AWS_ALLOW_HTTP=true. Local and file:// \
backups are created with mode 0600. Backups from standard input to object storage can \
grow to the store's own object limit (5 TiB on S3); upload memory grows with them, to \
at most 2 GiB.",
        after_help = "Examples:\n  backupctl backup chats.tar --to chats.backup\n  tar c chats | backupctl backup - --to s3://my-bucket/chats.backup\n  \
backupctl backup chats.tar --to chats.backup --overwrite --chunk-size 4MiB\n\n\
Exit codes: 0 done, 5 no backup key on this device (run enable), 6 object storage \
unreachable, 9 source missing or destination exists, 10 no such bucket, access denied or \
http:// without AWS_ALLOW_HTTP=true."
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
spends one of the limited attempts, so it is never retried automatically; before the last \
one, backupctl asks. After a successful password restore, the key is cached on this device \
if it has none.\n\n\
An interrupted restore (Ctrl-C, kill) leaves no file behind: the output is written without \
a name until the last chunk verified (or, where the file system cannot do that, as a hidden \
partial file that is removed on SIGINT/SIGTERM and by the next run).",
        after_help = "Examples:\n  backupctl restore chats.backup --to chats.tar --password\n  \
backupctl restore s3://my-bucket/chats.backup --to - --key > chats.tar\n  \
printf '%s\\n' \"$KEY\" | backupctl restore chats.backup --to chats.tar --key-stdin\n\n\
Exit codes: 0 restored, 2 mistyped key, 3 wrong password, 4 locked, 5 no key in the vault, \
6 unreachable, 7 backup unreadable, 8 not enrolled (--password), 9 output exists or source missing, \
10 no such backup object or bucket, or access denied."
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
pub struct EnrollArgs {
    /// The one-time enrolment code from your operator (dashes and spaces are ignored).
    #[arg(long, value_name = "CODE", value_parser = parse_code)]
    pub code: Option<EnrolmentCode>,
    /// Read the enrolment code from standard input (one line).
    #[arg(long)]
    pub code_stdin: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").required(true).multiple(true).args(["password", "password_stdin", "manual"])))]
pub struct EnableArgs {
    /// Escrow the backup key in the vault under a new password, typed twice without echo.
    #[arg(long)]
    pub password: bool,
    /// Like --password, but read the new password from standard input (one line).
    #[arg(long)]
    pub password_stdin: bool,
    /// Show the backup key as 64 digits to write down instead of escrowing it.
    #[arg(long, conflicts_with_all = ["password", "password_stdin", "replace"])]
    pub manual: bool,
    /// With --password: replace whatever the vault holds for this account (forgotten
    /// password). This device's backup key (or a new one) is escrowed under the new
    /// password; a different key the vault held, and backups made only with it, become
    /// unrecoverable through the vault.
    #[arg(long)]
    pub replace: bool,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The data to back up: a file, or - for standard input.
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// Where to write the backup: a path, -, file://, s3://, gs:// or az:// URL.
    #[arg(long, value_name = "DEST")]
    pub to: String,
    /// Replace an existing backup at DEST.
    #[arg(long)]
    pub overwrite: bool,
    /// Chunk size, a power of two from 4KiB to 16MiB (default 1MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_chunk_size)]
    pub chunk_size: Option<u8>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("secret").required(true).args(["password", "password_stdin", "key", "key_stdin", "cached_key"])))]
pub struct RestoreArgs {
    /// The backup: a path, - for standard input, or a file://, s3://, gs://, az:// URL.
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// Where to write the restored data: a path, or - for standard output.
    #[arg(long, value_name = "PATH")]
    pub to: String,
    /// Replace an existing file at --to.
    #[arg(long)]
    pub overwrite: bool,
    /// Get the backup key from the vault with the password (typed without echo).
    #[arg(long)]
    pub password: bool,
    /// Like --password, reading the password from standard input (one line).
    #[arg(long)]
    pub password_stdin: bool,
    /// Use the 64-digit key, typed without echo on one line (spaces and dashes ignored).
    #[arg(long)]
    pub key: bool,
    /// Read the 64-digit key from standard input (line breaks allowed).
    #[arg(long)]
    pub key_stdin: bool,
    /// Use the backup key cached on this device.
    #[arg(long)]
    pub cached_key: bool,
}

#[derive(Debug, Args)]
pub struct ChangePasswordArgs {
    /// Read the old and the new password from standard input, one line each.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct DisableArgs {
    /// Read the password from standard input (one line).
    #[arg(long)]
    pub password_stdin: bool,
    /// Do not ask for confirmation (required when not on a terminal).
    #[arg(long)]
    pub yes: bool,
}

/// Parses an enrolment code straight into its redacting type, so it never
/// shows in `Debug` output.
pub fn parse_code(s: &str) -> Result<EnrolmentCode, String> {
    EnrolmentCode::new(s.trim()).map_err(|e| format!("not an enrolment code ({e})"))
}

pub fn parse_chunk_size(s: &str) -> Result<u8, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
