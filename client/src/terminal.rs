//! Talking to the person at the keyboard: secrets, confirmations and
//! progress bars.
//!
//! This module owns how `backupctl` gets secrets (passwords, the 64-digit
//! key, enrolment codes) from the terminal without echo or from standard
//! input, the rules a new password must meet (counted on its prepared form,
//! SPEC.md 7.8, so every device counts alike), yes/no confirmations (among
//! them the one before a last password attempt, [`TerminalConsent`]), and
//! the progress bar drawn on standard error during backups and restores.
//! Every secret it returns is zeroized on drop.

use std::io::{self, BufRead, IsTerminal, Read, Write};

use protocol_spec::password::Password;
use zeroize::Zeroizing;

use crate::backup::Progress;
use crate::device::LastAttemptConsent;
use crate::error::ClientError;

/// Shortest new password accepted.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// Most bytes read from standard input for a secret (a 64-digit key with
/// separators and line breaks is under 100).
const MAX_SECRET_INPUT: u64 = 4096;

/// Whether someone can be asked questions: standard input is a terminal.
pub fn interactive() -> bool {
    io::stdin().is_terminal()
}

/// Whether standard error is a terminal (progress bars are drawn only then).
pub fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}

/// Reads `n` lines from standard input (the last may lack its newline),
/// without their line endings: every `\n` and `\r` at the end of a line is
/// removed, nothing else (spaces stay part of the secret).
pub fn stdin_lines(n: usize, what: &str) -> Result<Vec<Zeroizing<String>>, ClientError> {
    let stdin = io::stdin();
    let mut input = stdin.lock().take(MAX_SECRET_INPUT);
    let mut lines = Vec::with_capacity(n);
    for i in 0..n {
        let mut line = Zeroizing::new(String::new());
        let read = input.read_line(&mut line).map_err(|e| {
            ClientError::Input(format!("cannot read {what} from standard input: {e}"))
        })?;
        if read == 0 {
            return Err(ClientError::Input(if n == 1 {
                format!("standard input is empty; pipe the {what} in, one line")
            } else {
                format!(
                    "standard input ended after {i} of {n} lines; pipe the {what} in, one per line"
                )
            }));
        }
        while line.ends_with('\n') || line.ends_with('\r') {
            line.pop();
        }
        lines.push(line);
    }
    Ok(lines)
}

/// Reads all of standard input (for a 64-digit key written over several
/// lines).
pub fn stdin_all(what: &str) -> Result<Zeroizing<String>, ClientError> {
    let mut text = Zeroizing::new(String::new());
    io::stdin()
        .lock()
        .take(MAX_SECRET_INPUT)
        .read_to_string(&mut text)
        .map_err(|e| ClientError::Input(format!("cannot read {what} from standard input: {e}")))?;
    Ok(text)
}

/// Asks for a secret on the terminal without echo.
pub fn prompt_secret(prompt: &str, stdin_flag: &str) -> Result<Zeroizing<String>, ClientError> {
    if !interactive() {
        return Err(ClientError::Input(format!(
            "standard input is not a terminal, so nothing can be typed; pipe it in with {stdin_flag}"
        )));
    }
    rpassword::prompt_password(prompt)
        .map(Zeroizing::new)
        .map_err(|e| {
            ClientError::Input(format!(
                "cannot read from the terminal: {e}; use {stdin_flag}"
            ))
        })
}

/// Asks for a new password twice on the terminal and prepares it. The two
/// are compared in their prepared form (SPEC.md 7.8), as the vault will
/// see them.
pub fn prompt_new_password(what: &str) -> Result<Password, ClientError> {
    let first = prompt_secret(&format!("{what}: "), "--password-stdin")?;
    let first = new_password(&first)?;
    let second = prompt_secret(&format!("{what} again: "), "--password-stdin")?;
    if password(&second).ok() != Some(first.clone()) {
        return Err(ClientError::Input(
            "the two passwords differ; run the command again and type the same password twice"
                .into(),
        ));
    }
    Ok(first)
}

/// A password given to log in, prepared (SPEC.md 7.8). Refuses an empty
/// one, and one that preparation refuses, before anything is sent.
pub fn password(input: &str) -> Result<Password, ClientError> {
    if input.is_empty() {
        return Err(ClientError::Input(
            "the password is empty; type the password (or pipe it in, one line)".into(),
        ));
    }
    Ok(Password::prepare(input)?)
}

/// A new password, prepared, that meets the rules: those of [`password`],
/// and at least [`MIN_PASSWORD_CHARS`] characters once prepared.
pub fn new_password(input: &str) -> Result<Password, ClientError> {
    let prepared = password(input)?;
    let chars = prepared.chars();
    if chars < MIN_PASSWORD_CHARS {
        return Err(ClientError::Input(format!(
            "the new password has {chars} characters; use at least {MIN_PASSWORD_CHARS} (several unrelated words make a strong one): guessing is limited by the vault, but only a long password resists an attacker who steals the vault's data"
        )));
    }
    Ok(prepared)
}

/// Refuses a password [`password`] would refuse (any password given to
/// log in).
pub fn check_password(input: &str) -> Result<(), ClientError> {
    password(input).map(drop)
}

/// Refuses a new password [`new_password`] would refuse.
pub fn check_new_password(input: &str) -> Result<(), ClientError> {
    new_password(input).map(drop)
}

/// The person at this terminal, asked before a last password attempt
/// (standard input must be a terminal to ask; otherwise the warning goes
/// to standard error and the login goes on).
#[derive(Debug, Clone, Copy, Default)]
pub struct TerminalConsent;

impl LastAttemptConsent for TerminalConsent {
    fn can_ask(&self) -> bool {
        interactive()
    }

    fn ask(&self, question: &str) -> Result<bool, ClientError> {
        confirm(question)
    }

    fn warn(&self, warning: &str) {
        eprintln!("warning: {warning}");
    }
}

/// Asks a yes/no question on the terminal; only `y` or `yes` count.
pub fn confirm(question: &str) -> Result<bool, ClientError> {
    if !interactive() {
        return Err(ClientError::Input(
            "standard input is not a terminal, so nothing can be confirmed; pass --yes".into(),
        ));
    }
    eprint!("{question} [y/N] ");
    let _ = io::stderr().flush();
    let mut answer = String::new();
    io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| ClientError::Input(format!("cannot read the answer: {e}")))?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// A progress bar on standard error, or nothing when standard error is not
/// a terminal (scripts and logs stay quiet).
#[derive(Debug)]
pub struct TransferProgress {
    bar: Option<indicatif::ProgressBar>,
}

impl TransferProgress {
    /// A bar labelled `verb` ("encrypting", "restoring") if standard error
    /// is a terminal.
    pub fn new(verb: &'static str) -> Self {
        if !stderr_is_terminal() {
            return TransferProgress { bar: None };
        }
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        bar.set_message(verb);
        TransferProgress { bar: Some(bar) }
    }

    /// Removes the bar (after an error, so the message is readable).
    pub fn abandon(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress for TransferProgress {
    fn total(&self, bytes: Option<u64>) {
        let Some(bar) = &self.bar else { return };
        let style = match bytes {
            Some(total) => {
                bar.set_length(total);
                indicatif::ProgressStyle::with_template(
                    "{msg:>10} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
            }
            None => indicatif::ProgressStyle::with_template(
                "{msg:>10} {spinner} {bytes} {binary_bytes_per_sec} {elapsed}",
            ),
        };
        if let Ok(style) = style {
            bar.set_style(style.progress_chars("=> "));
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_password_rules() {
        assert!(check_new_password("").is_err());
        let e = check_new_password("short").unwrap_err().to_string();
        assert!(
            e.contains("5 characters") && e.contains("at least 8"),
            "{e}"
        );
        assert!(check_new_password("correct horse").is_ok());
        // Characters, not bytes.
        assert!(check_new_password("ééééééé").is_err());
        assert!(check_password("x").is_ok());
    }

    #[test]
    fn new_passwords_are_counted_and_compared_prepared() {
        // Eight characters typed as NFD are seven once prepared.
        assert!(check_new_password("cafe\u{301}123").is_err());
        assert!(check_new_password("cafe\u{301}1234").is_ok());
        assert_eq!(
            new_password("cafe\u{301} 1234").unwrap(),
            new_password("caf\u{e9}\u{a0}1234").unwrap()
        );
        let e = password("tab\there").unwrap_err();
        assert!(matches!(e, ClientError::Password(_)), "{e:?}");
    }
}
