//! Where backups go and where restores come from.
//!
//! This module owns parsing a user's location string into a [`Location`]
//! and the crash-safe plumbing around the engine:
//!
//! - local paths (and `file://` backups): backups and restored plaintext
//!   are written to a staged file (mode 0600) in the destination's
//!   directory, fsynced and named only after the engine succeeded (for a
//!   restore: after the final chunk verified). The staged file has no name
//!   at all where the file system allows, so not even `kill -9` leaves a
//!   decrypted prefix behind; [`super::staging`] owns those rules. A
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
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use bytes::{Buf, Bytes};
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{GetResultPayload, ObjectStore, ObjectStoreExt};
use protocol_spec::root_key::RootKey;
use tokio::runtime::{Handle, Runtime};
use url::Url;

use super::engine::{self, BackupOptions, BackupStats, Progress, RestoreOptions};
use super::error::BackupIoError;
use super::staging::StagedFile;
use super::upload::{MultipartWriter, PartPlan};

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
        // A file:// backup is a local file: written like a path (mode 0600,
        // staged, named once complete), into folders created as needed the
        // way object stores create prefixes.
        Location::Object(obj) if obj.kind == StoreKind::LocalFile => {
            let label = obj.url.to_string();
            let path = obj
                .url
                .to_file_path()
                .map_err(|()| BackupIoError::BadLocation {
                    input: label.clone(),
                    reason: "a file:// URL must name an absolute local path",
                })?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| BackupIoError::Io {
                    action: "create the folder of",
                    location: label.clone(),
                    source,
                })?;
            }
            write_atomically(&path, opts.overwrite, |file| {
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
            let upload = match store.rt.block_on(store.store.put_multipart(&store.path)) {
                Ok(upload) => upload,
                // Starting an upload finds no object to miss: the bucket or
                // container itself is not there.
                Err(source @ object_store::Error::NotFound { .. }) => {
                    return Err(BackupIoError::BucketNotFound {
                        location: label,
                        bucket: obj.url.host_str().unwrap_or_default().to_owned(),
                        source,
                    })
                }
                Err(source) => return Err(store.error(source)),
            };
            let mut writer = MultipartWriter::new(
                store.rt.handle(),
                upload,
                PartPlan::for_len(opts.source_len),
            );
            match engine::encrypt(source, &mut writer, root, opts, progress)
                .map_err(|e| e.relabel(input_label, &label))
            {
                Ok(stats) => {
                    writer.finish().map_err(|source| store.error(source))?;
                    Ok(stats)
                }
                Err(e) => {
                    writer.abort();
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

/// Runs `write` against a fresh staged file next to `path` (see
/// [`super::staging`]: unnamed where the file system allows, so an
/// interrupted run leaves nothing) and gives it the name `path` only if
/// `write` succeeds and the data is on disk. On any error (or panic) the
/// staged file is discarded.
fn write_atomically<T>(
    path: &Path,
    overwrite: bool,
    write: impl FnOnce(&mut File) -> Result<T, BackupIoError>,
) -> Result<T, BackupIoError> {
    check_output_path(path, overwrite)?;
    let mut staged = StagedFile::create(path)?;
    let value = write(staged.file_mut())?;
    staged.commit(overwrite)?;
    Ok(value)
}

/// Refuses an `http://` S3 endpoint unless `AWS_ALLOW_HTTP` allows it,
/// with the fix, before any request: object_store would otherwise fail
/// each request with "builder error", which looks like a network fault
/// worth retrying.
fn refuse_plain_http(
    builder: &object_store::aws::AmazonS3Builder,
    location: &str,
) -> Result<(), BackupIoError> {
    use object_store::aws::AmazonS3ConfigKey as Key;
    use object_store::ClientConfigKey;
    let endpoint = builder
        .get_config_value(&Key::S3Endpoint)
        .or_else(|| builder.get_config_value(&Key::Endpoint));
    let Some(endpoint) = endpoint else {
        return Ok(());
    };
    let allowed = builder
        .get_config_value(&Key::Client(ClientConfigKey::AllowHttp))
        .is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "on" | "yes" | "y"
            )
        });
    if endpoint.to_ascii_lowercase().starts_with("http://") && !allowed {
        return Err(BackupIoError::PlainHttpEndpoint {
            location: location.to_owned(),
            endpoint,
        });
    }
    Ok(())
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
            StoreKind::S3 => {
                let builder = object_store::aws::AmazonS3Builder::from_env().with_url(url);
                refuse_plain_http(&builder, &label)?;
                Box::new(builder.build().map_err(config_err)?)
            }
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
        // Two workers: enough to keep the parts in flight (upload.rs) moving
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
