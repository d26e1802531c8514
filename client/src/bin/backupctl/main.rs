//! `backupctl`: end-to-end encrypted chat backups from the command line.
//!
//! A thin binary: `cli` holds the arguments and help text, the library's
//! custody, restore, device, profile and terminal modules do the work, and
//! this file words what they report for a person. Results go to standard
//! output (standard error when standard output carries backup or restored
//! data); every failure is one sentence on standard error and a documented
//! exit code.

mod cli;

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use backup_client::backup::{backup_to, BackupIoError, BackupOptions, Location, RestoreOutput};
use backup_client::custody::{self, CachedKey, EscrowCheck, ForgottenKey, KeyOrigin, VaultKeyKept};
use backup_client::device::{Device, Enrolment};
use backup_client::escrow::{self, Accepted, EpochCheck};
use backup_client::exit::{exit_for, explain};
use backup_client::profile::{Profile, PROFILE_ENV};
use backup_client::restore::RestorePlan;
use backup_client::terminal::{self, TerminalConsent, TransferProgress};
use backup_client::ClientError;
use clap::Parser;
use protocol_spec::messages::vault::{RecordState, RegistrationMode};
use protocol_spec::root_key::RootKey;
use zeroize::Zeroizing;

use cli::{
    parse_code, BackupArgs, ChangePasswordArgs, Cli, Command, DisableArgs, EnableArgs, EnrollArgs,
    RestoreArgs,
};

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
        terminal::new_password(&one_stdin_line("new password")?)?
    } else {
        terminal::prompt_new_password("New backup password")?
    };
    let mode = if a.replace {
        RegistrationMode::Replace
    } else {
        RegistrationMode::Create
    };
    let enabled = block_on(custody::enable_password(&device, &password, mode))?;
    let profile = device.profile();
    warn_unremembered(&enabled.escrow);
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
            let check = escrow::check(device.profile(), &s)?;
            print_escrow(&check);
            match check {
                EpochCheck::Changed(change) => Err(ClientError::EscrowChanged(change)),
                EpochCheck::NoLongerReported { seen } => Err(ClientError::EscrowNotDescribed(seen)),
                _ => Ok(()),
            }
        }
        Err(e) => {
            if let ClientError::Closed(c) = &e {
                println!("device key   {}: {}", device_key_file.display(), c.reason());
            }
            Err(e)
        }
    }
}

/// The `escrow` line of `status`: which registration the vault holds, and
/// whether it is the one this device last saw.
fn print_escrow(check: &EpochCheck) {
    match check {
        EpochCheck::Unchanged(e) => println!(
            "escrow       {}: registered {}; the escrow this device last saw",
            e.epoch,
            escrow::described(e)
        ),
        EpochCheck::NowTracking(e) => println!(
            "escrow       {}: registered {}; this device had not seen an escrow epoch before and now tracks this one",
            e.epoch,
            escrow::described(e)
        ),
        EpochCheck::Changed(c) => println!(
            "escrow       {}: registered {}; NOT the escrow this device last saw ({}, registered {})",
            c.now.epoch,
            escrow::described(&c.now),
            c.seen.epoch,
            escrow::described(&c.seen)
        ),
        EpochCheck::NoLongerReported { seen } => println!(
            "escrow       not described by the vault that answered, though the one this device last saw was ({}, registered {})",
            seen.epoch,
            escrow::described(seen)
        ),
        EpochCheck::NotReported => println!(
            "escrow       not described by this vault (it predates escrow epochs), so a replacement from another device cannot be noticed"
        ),
        EpochCheck::NoEscrow {
            remembered: Some(e),
        } => println!(
            "escrow       none; the one this device last saw ({}, registered {}) is gone",
            e.epoch,
            escrow::described(e)
        ),
        EpochCheck::NoEscrow { remembered: None } => {}
    }
}

/// A warning when an escrow this device made or accepted could not be
/// remembered (the operation itself succeeded).
fn warn_unremembered(accepted: &Accepted) {
    if let Accepted::NotRemembered(e) = accepted {
        eprintln!(
            "warning: could not remember the new escrow as this device's ({}); `backupctl status` will report it as made elsewhere (or, if this device remembered none, start tracking whatever the vault then holds) until it can",
            explain(e)
        );
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
        let password = terminal::password(&if a.password_stdin {
            one_stdin_line("password")?
        } else {
            terminal::prompt_secret("Backup password: ", "--password-stdin")?
        })?;
        block_on(plan.with_password(&device, &password, &TerminalConsent))?
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
    if let Some(accepted) = &restored.escrow {
        warn_unremembered(accepted);
    }
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
            (Some(old), Some(new)) => (terminal::password(&old)?, terminal::new_password(&new)?),
            _ => {
                return Err(ClientError::Input(
                    "pipe two lines in: the old password, then the new one".into(),
                ))
            }
        }
    } else {
        let old = terminal::password(&terminal::prompt_secret(
            "Current backup password: ",
            "--password-stdin",
        )?)?;
        (old, terminal::prompt_new_password("New backup password")?)
    };
    // Compared prepared, as the vault would see them.
    if old == new {
        return Err(ClientError::Input(
            "the new password is the same as the old one; choose a different one".into(),
        ));
    }
    let changed = block_on(custody::change_password(
        &device,
        &old,
        &new,
        &TerminalConsent,
    ))?;
    println!(
        "password changed: the same backup key is now protected by the new password ({} wrong passwords in a row erase it); existing backups are unaffected",
        changed.max_attempts
    );
    warn_unremembered(&changed.escrow);
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
    let password = terminal::password(&if a.password_stdin {
        one_stdin_line("password")?
    } else {
        terminal::prompt_secret("Backup password: ", "--password-stdin")?
    })?;
    let disabled = block_on(custody::disable(&device, &password, &TerminalConsent))?;
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
    if let Err(e) = disabled.escrow_forgotten {
        eprintln!(
            "note: could not forget the deleted escrow ({}); `backupctl status` will say it is gone",
            explain(&e)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use backup_client::vault_flow::FlowError;

    #[test]
    fn login_outcomes_are_flow_errors() {
        // The binary relies on FlowError for exit codes 3 and 4.
        let e = ClientError::Flow(FlowError::Locked);
        assert_eq!(exit_for(&e).code(), 4);
    }
}
