//! Where backups go and where restores come from.
//!
//! This module owns parsing a user's location string into a [`Location`]
//! and the crash-safe plumbing around the engine:
//!
//! - local paths: backups and restored plaintext are written to a temporary
//!   file (mode 0600) in the destination's directory, fsynced and renamed
//!   into place only after the engine succeeded (for a restore: after the
//!   final chunk verified). On any error the temporary file is removed, so a
//!   truncated backup or partial plaintext never appears under the final
//!   name.
//! - `-`: standard output for backups, standard input for restores.
//! - object storage (`file://`, `s3://`, `gs://`, `az://`) through the
//!   `object_store` crate, configured from each cloud's standard
//!   environment variables. Uploads stream as multipart uploads with a
//!   bounded number of parts in flight; downloads stream the object body.
//!
//! # Sync API over an async client
//!
//! The engine and the command-line tool are synchronous, `object_store` is
//! async. The object-store paths build a small multi-threaded tokio runtime
//! inside the call and bridge with `Handle::block_on` from the engine's
//! threads: upload parts run on the runtime's workers while the engine keeps
//! encrypting, and back-pressure (`wait_for_capacity`) blocks the writer.
//! So these functions must not be called from inside a tokio runtime's
//! worker thread; async callers should use `spawn_blocking`.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use bytes::{Buf, Bytes};
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{GetResultPayload, ObjectStore, ObjectStoreExt, WriteMultipart};
use protocol_spec::root_key::RootKey;
use tokio::runtime::{Handle, Runtime};
use url::Url;

use super::engine::{self, BackupOptions, BackupStats, Progress, RestoreOptions};
use super::error::BackupIoError;

/// A parsed backup location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `-`: standard output when backing up, standard input when restoring.
    Stdio,
    /// A local file path.
    Path(PathBuf),
    /// An object in object storage (`file://` included, which goes through
    /// `object_store`'s local file system store).
    Object(ObjectLocation),
}

/// Which object store a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `file:///absolute/path`
    LocalFile,
    /// `s3://bucket/key` (AWS S3 and S3-compatible stores via `AWS_*`).
    S3,
    /// `gs://bucket/key` (Google Cloud Storage via `GOOGLE_*`).
    Gcs,
    /// `az://container/key` (Azure Blob Storage via `AZURE_STORAGE_*`).
    Azure,
}

/// An object-storage URL that parsed and names an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLocation {
    kind: StoreKind,
    url: Url,
}

impl ObjectLocation {
    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    pub fn url(&self) -> &Url {
        &self.url
    }
}

impl Location {
    /// Parses what a person typed: `-`, a URL with one of the supported
    /// schemes, or else a local path.
    pub fn parse(input: &str) -> Result<Location, BackupIoError> {
        let bad = |reason| BackupIoError::BadLocation {
            input: redact_userinfo(input),
            reason,
        };
        if input.is_empty() {
            return Err(bad("it is empty"));
        }
        if input == "-" {
            return Ok(Location::Stdio);
        }
        let Some((scheme, rest)) = input.split_once("://") else {
            return Ok(Location::Path(PathBuf::from(input)));
        };
        // URL parsing would silently resolve `a/../b` to `b`; an object key
        // must be exactly what the person typed.
        let raw_path = rest.split(['?', '#']).next().unwrap_or("");
        if raw_path
            .split('/')
            .skip(1)
            .map(str::to_ascii_lowercase)
            .any(|seg| {
                matches!(
                    seg.as_str(),
                    "." | ".." | "%2e" | "%2e." | ".%2e" | "%2e%2e"
                )
            })
        {
            return Err(bad("the object key contains '.' or '..' segments"));
        }
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "file" => StoreKind::LocalFile,
            "s3" => StoreKind::S3,
            "gs" => StoreKind::Gcs,
            "az" => StoreKind::Azure,
            _ => return Err(bad("the URL scheme is not supported")),
        };
        let url = Url::parse(input).map_err(|_| bad("it is not a valid URL"))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("a backup URL takes no '?query' or '#fragment'"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "credentials do not belong in the URL; use the cloud's environment variables",
            ));
        }
        match kind {
            StoreKind::LocalFile => {
                if url.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(bad("a file URL needs an absolute path: file:///dir/name"));
                }
            }
            _ => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(bad("the URL names no bucket or container"));
                }
            }
        }
        let key = url.path().trim_start_matches('/');
        if key.is_empty() || key.ends_with('/') {
            return Err(bad(
                "the URL names no object (it must end with a file name)",
            ));
        }
        // Reject what object_store's path rules would refuse later (empty
        // segments, `.` and `..`), with a clear message now.
        if StorePath::from_url_path(url.path()).is_err() {
            return Err(bad("the object key contains '.', '..' or empty segments"));
        }
        Ok(Location::Object(ObjectLocation { kind, url }))
    }
}

/// Replaces `user:password@` in a URL-looking string, so a refused
/// location never echoes a secret into a terminal or a log.
fn redact_userinfo(input: &str) -> String {
    let Some((scheme, rest)) = input.split_once("://") else {
        return input.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => input.to_owned(),
    }
}

impl FromStr for Location {
    type Err = BackupIoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Location::parse(s)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Stdio => f.write_str("standard input/output"),
            Location::Path(p) => write!(f, "{}", p.display()),
            Location::Object(o) => f.write_str(o.url.as_str()),
        }
    }
}

/// Where restored plaintext goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreOutput {
    /// Standard output. Plaintext streams out as chunks verify, so a failed
    /// restore may already have printed a verified prefix; the error return
    /// (non-zero exit) is the only signal. Prefer a path.
    Stdout,
    /// A file, created only once the whole backup has verified.
    Path(PathBuf),
}

/// Object-store upload shape: part size and parts in flight bound the
/// memory an upload uses (`(MAX_PARTS_IN_FLIGHT + 1) * part size`).
const MIN_PART_SIZE: usize = 8 << 20;
const MAX_PARTS_IN_FLIGHT: usize = 4;
/// S3 allows 10,000 parts per upload; leave headroom for the estimate.
const MAX_PARTS: u64 = 9_000;

/// Encrypts `source` into a new backup at `dest`.
///
/// Local paths (and `file://`) get the backup only after it is complete;
/// an existing backup is refused unless `opts.overwrite`. For other object
/// stores the existence check is best-effort (checked before uploading), and
/// the object appears only when the multipart upload completes.
pub fn backup_to(
    dest: &Location,
    source: impl Read + Send,
    root: &RootKey,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupStats, BackupIoError> {
    progress.total(opts.source_len);
    let input_label = "the data to back up";
    match dest {
        Location::Stdio => {
            let out = io::stdout();
            engine::encrypt(source, out.lock(), root, opts, progress)
                .map_err(|e| e.relabel(input_label, "standard output"))
        }
        Location::Path(path) => {
            let label = path.display().to_string();
            write_atomically(path, opts.overwrite, |file| {
                engine::encrypt(source, file, root, opts, progress)
                    .map_err(|e| e.relabel(input_label, &label))
            })
        }
        Location::Object(obj) => {
            let label = obj.url.to_string();
            let store = ObjectTarget::open(obj)?;
            if !opts.overwrite {
                store.refuse_existing()?;
            }
            let upload = store
                .rt
                .block_on(store.store.put_multipart(&store.path))
                .map_err(|source| store.error(source))?;
            let mut writer = MultipartWriter {
                handle: store.rt.handle(),
                upload: Some(WriteMultipart::new_with_chunk_size(
                    upload,
                    part_size(opts.source_len),
                )),
                part_size: part_size(opts.source_len),
                written: 0,
            };
            let result = engine::encrypt(source, &mut writer, root, opts, progress)
                .map_err(|e| e.relabel(input_label, &label));
            let Some(upload) = writer.upload.take() else {
                return result;
            };
            match result {
                Ok(stats) => {
                    store
                        .rt
                        .block_on(upload.finish())
                        .map_err(|source| store.error(source))?;
                    Ok(stats)
                }
                Err(e) => {
                    // Best effort: the stores also expire abandoned uploads.
                    let _ = store.rt.block_on(upload.abort());
                    Err(e)
                }
            }
        }
    }
}

/// Restores the backup at `src` into `out`, verifying every chunk.
///
/// With [`RestoreOutput::Path`] nothing appears under the output name unless
/// the whole backup verified; an existing file is refused unless
/// `opts.overwrite`.
pub fn restore_from(
    src: &Location,
    out: &RestoreOutput,
    root: &RootKey,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<BackupStats, BackupIoError> {
    // Fail before touching the source (or the network) if the output is
    // unusable; write_atomically checks again right before writing.
    if let RestoreOutput::Path(path) = out {
        check_output_path(path, opts.overwrite)?;
    }
    // Keeps the runtime (and so the object stream) alive for the restore.
    let mut _object_target = None;
    let input_label = match src {
        Location::Stdio => "standard input".to_owned(),
        other => other.to_string(),
    };
    let (reader, len): (Box<dyn Read + Send>, Option<u64>) = match src {
        Location::Stdio => (Box::new(io::stdin()), None),
        Location::Path(path) => {
            let file = File::open(path).map_err(|source| BackupIoError::Io {
                action: "open",
                location: path.display().to_string(),
                source,
            })?;
            let len = file.metadata().ok().map(|m| m.len());
            (Box::new(file), len)
        }
        Location::Object(obj) => {
            let target = ObjectTarget::open(obj)?;
            let got = target
                .rt
                .block_on(target.store.get(&target.path))
                .map_err(|source| target.error(source))?;
            let len = Some(got.meta.size);
            let reader: Box<dyn Read + Send> = match got.payload {
                // The local store hands back the open file: read it directly
                // instead of through an 8 KiB async stream.
                GetResultPayload::File(file, _) => Box::new(file),
                GetResultPayload::Stream(stream) => Box::new(StreamReader {
                    handle: target.rt.handle().clone(),
                    stream,
                    current: Bytes::new(),
                }),
            };
            _object_target = Some(target);
            (reader, len)
        }
    };
    progress.total(len);

    match out {
        RestoreOutput::Stdout => {
            let stdout = io::stdout();
            engine::decrypt_with(reader, stdout.lock(), root, opts, progress)
                .map_err(|e| e.relabel(&input_label, "standard output"))
        }
        RestoreOutput::Path(path) => {
            let label = path.display().to_string();
            write_atomically(path, opts.overwrite, |file| {
                engine::decrypt_with(reader, file, root, opts, progress)
                    .map_err(|e| e.relabel(&input_label, &label))
            })
        }
    }
}

fn part_size(source_len: Option<u64>) -> usize {
    let Some(len) = source_len else {
        return MIN_PART_SIZE;
    };
    // Round up to whole MiB so parts stay aligned and readable in logs.
    let needed = len.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    usize::try_from(needed)
        .unwrap_or(usize::MAX)
        .max(MIN_PART_SIZE)
}

/// Refuses an output path that is a directory, or that exists when
/// overwriting was not allowed.
fn check_output_path(path: &Path, overwrite: bool) -> Result<(), BackupIoError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(BackupIoError::IsDirectory {
            path: path.to_owned(),
        }),
        Ok(_) if !overwrite => Err(BackupIoError::OutputExists {
            location: path.display().to_string(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BackupIoError::Io {
            action: "inspect",
            location: path.display().to_string(),
            source,
        }),
    }
}

/// Runs `write` against a fresh temporary file next to `path` and renames it
/// to `path` only if `write` succeeds and the data is on disk. Dropping the
/// temporary file on any error (or panic) deletes it.
fn write_atomically<T>(
    path: &Path,
    overwrite: bool,
    write: impl FnOnce(&mut File) -> Result<T, BackupIoError>,
) -> Result<T, BackupIoError> {
    let shown = || path.display().to_string();
    let io_err = |action, source| BackupIoError::Io {
        action,
        location: shown(),
        source,
    };
    check_output_path(path, overwrite)?;
    let file_name = path.file_name().ok_or_else(|| BackupIoError::BadLocation {
        input: shown(),
        reason: "the path does not end with a file name",
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(file_name);
    prefix.push(".");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".partial");
    #[cfg(unix)]
    {
        // Restored plaintext is private; backups need not be world-readable
        // either. (tempfile's default is already 0600; say it explicitly.)
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o600));
    }
    let mut temp = builder
        .tempfile_in(&dir)
        .map_err(|e| io_err("create a temporary file next to", e))?;

    let value = write(temp.as_file_mut())?;
    temp.as_file()
        .sync_all()
        .map_err(|e| io_err("flush to disk", e))?;
    let persisted = if overwrite {
        temp.persist(path)
    } else {
        // Refuse to replace a file that appeared while we were working.
        temp.persist_noclobber(path)
    };
    if let Err(e) = persisted {
        // Dropping e.file deletes the temporary file.
        if e.error.kind() == io::ErrorKind::AlreadyExists {
            return Err(BackupIoError::OutputExists { location: shown() });
        }
        return Err(io_err("rename into", e.error));
    }
    // Make the rename itself durable.
    #[cfg(unix)]
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("flush the directory of", e))?;
    Ok(value)
}

/// A configured object store, the object's path in it, and the runtime that
/// drives its requests.
struct ObjectTarget {
    rt: Runtime,
    store: Box<dyn ObjectStore>,
    path: StorePath,
    label: String,
}

impl ObjectTarget {
    fn open(obj: &ObjectLocation) -> Result<Self, BackupIoError> {
        let label = obj.url.to_string();
        let config_err = |source| BackupIoError::ObjectStoreConfig {
            location: label.clone(),
            source,
        };
        let path = StorePath::from_url_path(obj.url.path()).map_err(|e| config_err(e.into()))?;
        let url = obj.url.as_str();
        let store: Box<dyn ObjectStore> = match obj.kind {
            StoreKind::LocalFile => Box::new(object_store::local::LocalFileSystem::new()),
            StoreKind::S3 => Box::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(config_err)?,
            ),
            StoreKind::Gcs => Box::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(config_err)?,
            ),
            StoreKind::Azure => Box::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(config_err)?,
            ),
        };
        // Two workers: enough to keep MAX_PARTS_IN_FLIGHT uploads moving
        // while the engine's threads own the CPU-bound work.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("backup-io")
            .enable_all()
            .build()
            .map_err(|source| BackupIoError::Runtime { source })?;
        Ok(ObjectTarget {
            rt,
            store,
            path,
            label,
        })
    }

    fn error(&self, source: object_store::Error) -> BackupIoError {
        BackupIoError::ObjectStore {
            location: self.label.clone(),
            source,
        }
    }

    fn refuse_existing(&self) -> Result<(), BackupIoError> {
        match self.rt.block_on(self.store.head(&self.path)) {
            Ok(_) => Err(BackupIoError::OutputExists {
                location: self.label.clone(),
            }),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(self.error(source)),
        }
    }
}

/// `Write` over a multipart upload. Writes never cross a part boundary and
/// wait until fewer than [`MAX_PARTS_IN_FLIGHT`] parts are uploading, so
/// memory stays bounded however fast the engine produces data.
struct MultipartWriter<'a> {
    handle: &'a Handle,
    upload: Option<WriteMultipart>,
    part_size: usize,
    written: u64,
}

impl Write for MultipartWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(upload) = self.upload.as_mut() else {
            return Err(io::Error::other("the upload has already finished"));
        };
        if buf.is_empty() {
            return Ok(0);
        }
        // `written % part_size` is below part_size, so this fits in usize.
        let filled = usize::try_from(self.written % self.part_size as u64).unwrap_or(0);
        let n = buf.len().min(self.part_size - filled);
        self.handle
            .block_on(upload.wait_for_capacity(MAX_PARTS_IN_FLIGHT))
            .map_err(io::Error::other)?;
        // `write` spawns a part upload when the part fills, which needs the
        // runtime's context.
        let _ctx = self.handle.enter();
        upload.write(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Parts go out when full; the rest goes out in `finish`.
        Ok(())
    }
}

/// `Read` over an object's body stream.
struct StreamReader {
    handle: Handle,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    current: Bytes,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}
