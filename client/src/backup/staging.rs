//! Where a backup or restored plaintext is written before it has earned
//! its name: a [`StagedFile`] in the destination's directory that becomes
//! the named file only at [`StagedFile::commit`], after the engine
//! succeeded (for a restore: after the final chunk verified).
//!
//! This module owns what is left behind when a run is cut short:
//!
//! - Where the file system supports it (Linux `O_TMPFILE`), the staged file
//!   has no name at all until it is linked into place with `linkat`, so
//!   nothing is left behind however the process ends, `kill -9` included.
//! - Elsewhere it is a hidden `.NAME.PID.XXXXXX.partial` file (mode 0600),
//!   removed on every error and on drop; while one exists, SIGINT, SIGTERM
//!   and SIGHUP first remove it and then end the process as they would
//!   have. The next run into the same name removes such files whose
//!   process is gone, and files of the older `.NAME.XXXXXX.partial` form
//!   (no process id) untouched for [`LEGACY_STALE_AFTER`].
//!
//! `E2EBK_NAMED_TEMP_FILES=1` forces the named form, for file systems
//! whose `O_TMPFILE` misbehaves and for tests of that path.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::error::BackupIoError;

/// Forces named partial files (see the module docs).
pub const NAMED_TEMP_FILES_ENV: &str = "E2EBK_NAMED_TEMP_FILES";

/// A partial file of the older form, which carries no process id, is
/// taken as abandoned once it has not been written to for this long.
pub const LEGACY_STALE_AFTER: Duration = Duration::from_secs(3600);

const SUFFIX: &str = ".partial";

/// A file being written next to `target`, not yet under its name.
#[derive(Debug)]
pub(crate) struct StagedFile {
    target: PathBuf,
    dir: PathBuf,
    file_name: OsString,
    file: File,
    name: Staged,
}

/// How the staged file is (not) named.
#[derive(Debug)]
enum Staged {
    /// An `O_TMPFILE` file: no name until it is linked.
    #[cfg(target_os = "linux")]
    Unnamed,
    /// A named partial file.
    Named(NamedPartial),
}

/// A named partial file: deleted on drop, and listed for removal on a
/// terminating signal while it exists.
#[derive(Debug)]
struct NamedPartial {
    temp: Option<tempfile::TempPath>,
    path: PathBuf,
}

impl NamedPartial {
    /// Renames it to `to` (replacing a file there only if `overwrite`).
    fn persist(mut self, to: &Path, overwrite: bool) -> io::Result<()> {
        let Some(temp) = self.temp.take() else {
            return Err(io::Error::other("the partial file is already gone"));
        };
        let persisted = if overwrite {
            temp.persist(to)
        } else {
            temp.persist_noclobber(to)
        };
        // On failure the error's TempPath deletes the file when dropped.
        persisted.map_err(|e| e.error)
    }
}

impl Drop for NamedPartial {
    fn drop(&mut self) {
        // Delete first, then stop listing it, so a signal in between still
        // finds it.
        drop(self.temp.take());
        unregister_partial(&self.path);
    }
}

impl StagedFile {
    /// Stages a new file (mode 0600) in `target`'s directory, after
    /// removing stale partial files of earlier runs into the same name.
    pub(crate) fn create(target: &Path) -> Result<StagedFile, BackupIoError> {
        let shown = || target.display().to_string();
        let file_name = target
            .file_name()
            .ok_or_else(|| BackupIoError::BadLocation {
                input: shown(),
                reason: "the path does not end with a file name",
            })?
            .to_owned();
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        remove_stale_partials(&dir, &file_name);
        let io_err = |source| BackupIoError::Io {
            action: "create a temporary file next to",
            location: shown(),
            source,
        };
        #[cfg(target_os = "linux")]
        if std::env::var_os(NAMED_TEMP_FILES_ENV).is_none() {
            if let Some(file) = unnamed_file(&dir).map_err(io_err)? {
                return Ok(StagedFile {
                    target: target.to_owned(),
                    dir,
                    file_name,
                    file,
                    name: Staged::Unnamed,
                });
            }
        }
        install_signal_cleanup();
        let (file, temp) = named_file(&dir, &file_name).map_err(io_err)?.into_parts();
        let path = temp.to_path_buf();
        register_partial(&path);
        Ok(StagedFile {
            target: target.to_owned(),
            dir,
            file_name,
            file,
            name: Staged::Named(NamedPartial {
                temp: Some(temp),
                path,
            }),
        })
    }

    /// The file to write to.
    pub(crate) fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// Puts the data on disk, then gives it its name; with `overwrite` an
    /// existing file is replaced, otherwise the commit fails with
    /// [`BackupIoError::OutputExists`] if one appeared meanwhile. Dropping
    /// a staged file instead leaves nothing behind.
    pub(crate) fn commit(self, overwrite: bool) -> Result<(), BackupIoError> {
        let shown = self.target.display().to_string();
        let io_err = |action, source| BackupIoError::Io {
            action,
            location: shown.clone(),
            source,
        };
        let exists_or = |e: io::Error| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                BackupIoError::OutputExists {
                    location: shown.clone(),
                }
            } else {
                io_err("rename into", e)
            }
        };
        self.file
            .sync_all()
            .map_err(|e| io_err("flush to disk", e))?;
        match self.name {
            #[cfg(target_os = "linux")]
            Staged::Unnamed if overwrite => {
                // linkat never replaces a file: link under a partial name of
                // ours (removed by a later run if we die right here), then
                // rename over the target.
                let temp = partial_name(&self.dir, &self.file_name);
                link_unnamed(&self.file, &temp).map_err(|e| io_err("rename into", e))?;
                if let Err(e) = std::fs::rename(&temp, &self.target) {
                    let _ = std::fs::remove_file(&temp);
                    return Err(io_err("rename into", e));
                }
            }
            #[cfg(target_os = "linux")]
            Staged::Unnamed => link_unnamed(&self.file, &self.target).map_err(exists_or)?,
            Staged::Named(partial) => partial
                .persist(&self.target, overwrite)
                .map_err(exists_or)?,
        }
        // Make the new name itself durable.
        #[cfg(unix)]
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("flush the directory of", e))?;
        Ok(())
    }
}

/// Opens an `O_TMPFILE` file in `dir`, or `None` when this kernel or file
/// system cannot (the named form is used then).
#[cfg(target_os = "linux")]
fn unnamed_file(dir: &Path) -> io::Result<Option<File>> {
    use rustix::fs::{Mode, OFlags};
    use rustix::io::Errno;
    match rustix::fs::openat(
        rustix::fs::CWD,
        dir,
        OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    ) {
        Ok(fd) => Ok(Some(File::from(fd))),
        // EOPNOTSUPP: the file system has no O_TMPFILE; EISDIR: the kernel
        // predates it; EINVAL: it refuses the flag combination.
        Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Gives the unnamed `file` the name `to`. Through `/proc/self/fd`, which
/// needs no privilege; `AT_EMPTY_PATH` (which needs CAP_DAC_READ_SEARCH)
/// only where `/proc` is not mounted.
#[cfg(target_os = "linux")]
fn link_unnamed(file: &File, to: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;

    use rustix::fs::AtFlags;
    use rustix::io::Errno;
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    match rustix::fs::linkat(
        rustix::fs::CWD,
        proc_path.as_str(),
        rustix::fs::CWD,
        to,
        AtFlags::SYMLINK_FOLLOW,
    ) {
        Ok(()) => Ok(()),
        Err(Errno::NOENT) if !Path::new("/proc/self/fd").exists() => {
            rustix::fs::linkat(file, "", rustix::fs::CWD, to, AtFlags::EMPTY_PATH)
                .map_err(io::Error::from)
        }
        Err(e) => Err(e.into()),
    }
}

/// `.NAME.PID.` : the start of every partial file name of this process.
fn partial_prefix(file_name: &OsStr) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(file_name);
    prefix.push(format!(".{}.", std::process::id()));
    prefix
}

/// A fresh partial file name of this process in `dir` (not created).
#[cfg(target_os = "linux")]
fn partial_name(dir: &Path, file_name: &OsStr) -> PathBuf {
    let mut random = [0u8; 6];
    // Uniqueness only; without randomness, fall back to the time.
    if getrandom::fill(&mut random).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        random[..4].copy_from_slice(&nanos.to_le_bytes());
    }
    let mut name = partial_prefix(file_name);
    name.push(hex::encode(random));
    name.push(SUFFIX);
    dir.join(name)
}

/// Creates a named partial file (mode 0600) in `dir`.
fn named_file(dir: &Path, file_name: &OsStr) -> io::Result<tempfile::NamedTempFile> {
    let prefix = partial_prefix(file_name);
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(SUFFIX);
    #[cfg(unix)]
    {
        // Restored plaintext is private; backups need not be world-readable
        // either. (tempfile's default is already 0600; say it explicitly.)
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o600));
    }
    builder.tempfile_in(dir)
}

/// Removes partial files of earlier runs into `file_name` in `dir` whose
/// process is gone (or, for the older form, that have not been written to
/// for [`LEGACY_STALE_AFTER`]). Best effort: a file that cannot be
/// inspected or removed is left alone.
fn remove_stale_partials(dir: &Path, file_name: &OsStr) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let Some(file_name) = file_name.to_str() else {
        return;
    };
    let start = format!(".{file_name}.");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(middle) = name
            .to_str()
            .and_then(|n| n.strip_prefix(start.as_str()))
            .and_then(|n| n.strip_suffix(SUFFIX))
        else {
            continue;
        };
        if is_stale(middle, &entry) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed a partial file an interrupted run left behind")
                }
                Err(e) => {
                    tracing::debug!(file = %entry.path().display(), error = %e, "could not remove a stale partial file")
                }
            }
        }
    }
}

/// Whether a partial file whose name holds `middle` (between `.NAME.` and
/// `.partial`) was left by a run that is over.
fn is_stale(middle: &str, entry: &std::fs::DirEntry) -> bool {
    match middle.split_once('.') {
        // PID.RANDOM: stale once no process has that id.
        Some((pid, _)) => pid.parse::<i32>().ok().is_some_and(process_is_gone),
        // The older RANDOM form: stale once nobody wrote to it for a while.
        None => entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= LEGACY_STALE_AFTER),
    }
}

/// Whether no process has id `pid` (a process of another user counts as
/// alive: the file may be its).
fn process_is_gone(pid: i32) -> bool {
    #[cfg(unix)]
    {
        match rustix::process::Pid::from_raw(pid) {
            Some(pid) => matches!(
                rustix::process::test_kill_process(pid),
                Err(rustix::io::Errno::SRCH)
            ),
            None => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        false
    }
}

/// Named partial files this process is writing, for the signal cleanup.
fn partials() -> &'static Mutex<Vec<PathBuf>> {
    static PARTIALS: OnceLock<Mutex<Vec<PathBuf>>> = OnceLock::new();
    PARTIALS.get_or_init(|| Mutex::new(Vec::new()))
}

fn register_partial(path: &Path) {
    if let Ok(mut list) = partials().lock() {
        list.push(path.to_owned());
    }
}

fn unregister_partial(path: &Path) {
    if let Ok(mut list) = partials().lock() {
        list.retain(|p| p != path);
    }
}

/// Once per process: a thread that, on SIGINT, SIGTERM or SIGHUP, removes
/// the registered partial files and then ends the process the way the
/// signal's default action would. It stays installed for the process's
/// life, because removing a signal-hook action leaves the signal ignored;
/// so after the first named partial file these signals end the process
/// exactly as before, only after the cleanup. Only the named form needs
/// this; unnamed files leave nothing to clean.
fn install_signal_cleanup() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        #[cfg(unix)]
        {
            use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
            let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch for SIGINT/SIGTERM; an interrupted run may leave a partial file, removed by the next run");
                    return;
                }
            };
            let spawned = std::thread::Builder::new()
                .name("partial-cleanup".into())
                .spawn(move || {
                    if let Some(signal) = signals.forever().next() {
                        let list = match partials().lock() {
                            Ok(list) => list.clone(),
                            Err(poisoned) => poisoned.into_inner().clone(),
                        };
                        for path in list {
                            let _ = std::fs::remove_file(path);
                        }
                        let _ = signal_hook::low_level::emulate_default_handler(signal);
                        // The default action of these three ends the
                        // process; should it not, end it anyway.
                        std::process::exit(128 + signal);
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the partial-file cleanup thread");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_dropped_staged_file_leaves_nothing_and_a_committed_one_is_private() {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        let mut staged = StagedFile::create(&target).unwrap();
        staged.file_mut().write_all(b"half").unwrap();
        drop(staged);
        assert!(names(dir.path()).is_empty());
        let mut staged = StagedFile::create(&target).unwrap();
        staged.file_mut().write_all(b"whole").unwrap();
        staged.commit(false).unwrap();
        assert_eq!(names(dir.path()), ["out"]);
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Without overwrite an existing file is kept; with it, replaced.
        let mut staged = StagedFile::create(&target).unwrap();
        staged.file_mut().write_all(b"new").unwrap();
        assert!(matches!(
            staged.commit(false),
            Err(BackupIoError::OutputExists { .. })
        ));
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        let mut staged = StagedFile::create(&target).unwrap();
        staged.file_mut().write_all(b"new").unwrap();
        staged.commit(true).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(names(dir.path()), ["out"]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn where_o_tmpfile_works_the_staged_file_has_no_name() {
        let dir = tempfile::tempdir().unwrap();
        if unnamed_file(dir.path()).unwrap().is_none() {
            eprintln!("this file system has no O_TMPFILE; nothing to check");
            return;
        }
        let staged = StagedFile::create(&dir.path().join("out")).unwrap();
        assert!(matches!(staged.name, Staged::Unnamed));
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn stale_partials_of_dead_processes_are_removed_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // A process id no process has: above the kernel's pid_max limit.
        let dead = dir.path().join(".out.2147483646.abcdef.partial");
        let live = dir
            .path()
            .join(format!(".out.{}.abcdef.partial", std::process::id()));
        let other_name = dir.path().join(".other.2147483646.abcdef.partial");
        let fresh_legacy = dir.path().join(".out.Ab3xYz.partial");
        let mine = dir.path().join("out.partial");
        for p in [&dead, &live, &other_name, &fresh_legacy, &mine] {
            std::fs::write(p, b"x").unwrap();
        }
        remove_stale_partials(dir.path(), OsStr::new("out"));
        assert!(!dead.exists());
        assert!(live.exists(), "a running process's file stays");
        assert!(other_name.exists(), "only partials of this name");
        assert!(
            fresh_legacy.exists(),
            "a recently written old-form file stays"
        );
        assert!(mine.exists(), "not a partial file of ours");
        // An old-form file nobody wrote to for long enough goes.
        let old = std::time::SystemTime::now() - LEGACY_STALE_AFTER - Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&fresh_legacy)
            .unwrap()
            .set_modified(old)
            .unwrap();
        remove_stale_partials(dir.path(), OsStr::new("out"));
        assert!(!fresh_legacy.exists());
    }
}
