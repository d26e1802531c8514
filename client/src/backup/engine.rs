//! The parallel streaming engine: plaintext in, backup file out (and back).
//!
//! This module owns the pipeline that spreads [`ChunkCipher`] work over all
//! cores while keeping memory bounded and the output byte-for-byte what the
//! sequential [`protocol_spec::backup::BackupEncoder`] would produce:
//!
//! ```text
//!  reader thread ──jobs──▶ N worker threads ──results──▶ calling thread
//!  (reads chunks,          (seal / open chunk i)          (reorders, writes
//!   one chunk lookahead)                                   in index order)
//!        ▲                                                        │
//!        └──────────────── buffer pool (2N + 1 buffers) ◀─────────┘
//! ```
//!
//! Every chunk buffer comes from a fixed pool and goes back to it only after
//! the writer has written it, so at most `2N + 1` chunks exist at any time no
//! matter how large the input is, and buffers are reused instead of
//! reallocated. The writer runs on the calling thread, so the output needs no
//! `Send` bound and progress callbacks happen on the caller's thread.
//!
//! Errors are reported in chunk order, as the sequential decoder would: a
//! corrupt chunk 3 is reported even if chunk 7 failed first on another core.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use protocol_spec::backup::{
    BackupHeader, ChunkCipher, DEFAULT_CHUNK_LOG2, HEADER_LEN, MAGIC, SALT_LEN, TAG_LEN,
};
use protocol_spec::error::BackupError;
use protocol_spec::root_key::RootKey;

use super::error::{BackupIoError, INPUT, OUTPUT};

/// How to write a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupOptions {
    /// Chunk size as a power of two, 12..=24 (4 KiB .. 16 MiB). Default 20
    /// (1 MiB).
    pub chunk_log2: u8,
    /// Worker threads; 0 means one per available core.
    pub threads: usize,
    /// Replace an existing backup at the destination (used by
    /// [`super::backup_to`]; the engine itself only writes to a `Write`).
    pub overwrite: bool,
    /// Length of the plaintext, if known: the progress total, and the part
    /// size of object-store uploads (so very large backups stay within the
    /// stores' part-count limits).
    pub source_len: Option<u64>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            chunk_log2: DEFAULT_CHUNK_LOG2,
            threads: 0,
            overwrite: false,
            source_len: None,
        }
    }
}

/// How to restore a backup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Worker threads; 0 means one per available core.
    pub threads: usize,
    /// Replace an existing output file (used by [`super::restore_from`]).
    pub overwrite: bool,
}

/// What a finished backup or restore processed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackupStats {
    /// Plaintext bytes (read when encrypting, written when decrypting).
    pub plaintext_bytes: u64,
    /// Backup file bytes, header included (written when encrypting, read
    /// when decrypting).
    pub backup_bytes: u64,
    /// Chunks sealed or opened, the final one included.
    pub chunks: u64,
}

/// Progress reporting, so a command-line tool can draw a bar.
///
/// All calls happen on the thread that called [`encrypt`] or [`decrypt`]
/// (or the destination functions). Units are *input* bytes: plaintext when
/// backing up, backup-file bytes when restoring; a chunk counts once its
/// output has been written.
pub trait Progress {
    /// The total number of input bytes, when known. The destination
    /// functions call this once before any `advance`.
    fn total(&self, bytes: Option<u64>);
    /// `bytes` more input bytes are done.
    fn advance(&self, bytes: u64);
    /// The engine has written all output (called only on success; a
    /// destination may still be committing it: fsync and rename, or
    /// completing a multipart upload).
    fn finish(&self);
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn total(&self, _bytes: Option<u64>) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// Encrypts everything `reader` yields into a new backup under `root`,
/// written to `writer`. Uses a fresh random salt.
///
/// The output is complete only when this returns `Ok`; the caller decides
/// what to do with a partly written output on error (the destination
/// functions discard it).
pub fn encrypt<R: Read + Send, W: Write>(
    reader: R,
    writer: W,
    root: &RootKey,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupStats, BackupIoError> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(|source| BackupIoError::Random { source })?;
    let header = BackupHeader::new(root, salt, opts.chunk_log2)?;
    encrypt_with_header(reader, writer, &header, root, opts, progress)
}

/// [`encrypt`] under a header the caller built. For golden vectors and
/// conformance tests: real backups must use [`encrypt`], because reusing a
/// salt with the same key reuses the data key and nonces.
/// `opts.chunk_log2` is ignored; the header's chunk size applies.
pub fn encrypt_with_header<R: Read + Send, W: Write>(
    reader: R,
    mut writer: W,
    header: &BackupHeader,
    root: &RootKey,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupStats, BackupIoError> {
    let cipher = header.cipher(root)?;
    writer.write_all(cipher.header_bytes()).map_err(write_err)?;
    let stats = run_pipeline(
        reader,
        &mut writer,
        &cipher,
        cipher.chunk_size(),
        opts.threads,
        progress,
        seal,
    )?;
    writer.flush().map_err(write_err)?;
    progress.finish();
    Ok(BackupStats {
        plaintext_bytes: stats.input_bytes,
        backup_bytes: stats.output_bytes + HEADER_LEN as u64,
        chunks: stats.chunks,
    })
}

/// Decrypts a backup from `reader` into `writer`, verifying every chunk.
///
/// Plaintext is written chunk by chunk as it verifies, so on error the
/// writer may hold a verified prefix: callers must discard it (the
/// destination functions write to a temporary file and rename it only on
/// success). Reports wrong key, corrupt at chunk i, truncated and trailing
/// data exactly as [`protocol_spec::backup::BackupDecoder`] does.
pub fn decrypt<R: Read + Send, W: Write>(
    reader: R,
    writer: W,
    root: &RootKey,
    progress: &dyn Progress,
) -> Result<BackupStats, BackupIoError> {
    decrypt_with(reader, writer, root, &RestoreOptions::default(), progress)
}

/// [`decrypt`] with explicit options (thread count).
pub fn decrypt_with<R: Read + Send, W: Write>(
    mut reader: R,
    mut writer: W,
    root: &RootKey,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<BackupStats, BackupIoError> {
    let mut header = [0u8; HEADER_LEN];
    let n = read_full(&mut reader, &mut header).map_err(read_err)?;
    if n < HEADER_LEN {
        // Same verdict as the sequential decoder: a short file that starts
        // like a backup is truncated, anything else is not a backup.
        let m = n.min(MAGIC.len());
        return Err(if header[..m] == MAGIC[..m] {
            BackupError::Truncated
        } else {
            BackupError::BadMagic
        }
        .into());
    }
    let cipher = BackupHeader::decode(&header)?.cipher(root)?;
    progress.advance(HEADER_LEN as u64);

    let stats = run_pipeline(
        reader,
        &mut writer,
        &cipher,
        cipher.chunk_size() + TAG_LEN,
        opts.threads,
        progress,
        open,
    )?;
    writer.flush().map_err(write_err)?;
    progress.finish();
    Ok(BackupStats {
        plaintext_bytes: stats.output_bytes,
        backup_bytes: stats.input_bytes + HEADER_LEN as u64,
        chunks: stats.chunks,
    })
}

fn read_err(source: io::Error) -> BackupIoError {
    BackupIoError::Read {
        location: INPUT.to_owned(),
        source,
    }
}

fn write_err(source: io::Error) -> BackupIoError {
    BackupIoError::Write {
        location: OUTPUT.to_owned(),
        source,
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// One chunk travelling through the pipeline.
struct Job {
    index: u64,
    last: bool,
    /// Input bytes this chunk consumed (for progress and stats).
    input_len: u64,
    buf: Vec<u8>,
}

/// Per-worker scratch space (decryption keeps the ciphertext intact in it).
type Scratch = Vec<u8>;

/// Transforms one chunk in place (`job.buf`).
type Work = fn(&ChunkCipher, &mut Job, &mut Scratch) -> Result<(), BackupError>;

fn seal(cipher: &ChunkCipher, job: &mut Job, _scratch: &mut Scratch) -> Result<(), BackupError> {
    cipher.seal_chunk(job.index, job.last, &mut job.buf)
}

/// Opens one chunk with the sequential decoder's exact error semantics.
fn open(cipher: &ChunkCipher, job: &mut Job, scratch: &mut Scratch) -> Result<(), BackupError> {
    if job.last && job.buf.len() < TAG_LEN {
        return Err(BackupError::Truncated);
    }
    // ring zeroes the buffer when a tag fails, and telling "trailing data"
    // and "truncated" apart from plain corruption needs a second try on the
    // original ciphertext, so open a copy and keep the original.
    scratch.clear();
    scratch.extend_from_slice(&job.buf);
    match cipher.open_chunk(job.index, job.last, scratch) {
        Ok(()) => {
            // The plaintext moves on; the old ciphertext buffer becomes
            // this worker's scratch, so no allocation happens per chunk.
            std::mem::swap(&mut job.buf, scratch);
            Ok(())
        }
        Err(e) => {
            let sealed = cipher.chunk_size() + TAG_LEN;
            if !job.last {
                // A full chunk that opens only as final, with bytes after it.
                if cipher.open_chunk(job.index, true, &mut job.buf).is_ok() {
                    return Err(BackupError::TrailingData);
                }
            } else if job.buf.len() == sealed
                && cipher.open_chunk(job.index, false, &mut job.buf).is_ok()
            {
                // The stream was cut exactly at a chunk boundary.
                return Err(BackupError::Truncated);
            }
            Err(e)
        }
    }
}

/// Counters filled in by the pipeline (chunk bytes only, no header).
#[derive(Debug, Default)]
struct PipelineStats {
    input_bytes: u64,
    output_bytes: u64,
    chunks: u64,
}

fn worker_count(requested: usize) -> usize {
    let n = if requested == 0 {
        thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        requested
    };
    // More threads than this only costs memory (two buffers each).
    n.clamp(1, 256)
}

/// What a worker reports to the writer.
enum Done {
    Chunk(Job, Result<(), BackupError>),
    /// A worker panicked; the writer must stop so the pool cannot starve.
    Panicked,
}

/// Runs reader, workers and the in-order writer until the final chunk is
/// written or something fails.
fn run_pipeline<R: Read + Send, W: Write>(
    reader: R,
    writer: &mut W,
    cipher: &ChunkCipher,
    unit: usize,
    threads: usize,
    progress: &dyn Progress,
    work: Work,
) -> Result<PipelineStats, BackupIoError> {
    let workers = worker_count(threads);
    let pool_size = 2 * workers + 1;
    // Room for a sealed chunk, so sealing never reallocates.
    let capacity = cipher.chunk_size() + TAG_LEN;
    let stop = AtomicBool::new(false);

    thread::scope(|s| {
        let (pool_tx, pool_rx) = bounded::<Vec<u8>>(pool_size);
        let (job_tx, job_rx) = bounded::<Job>(pool_size);
        let (done_tx, done_rx) = unbounded::<Done>();
        for _ in 0..pool_size {
            // Cannot fail: the channel has room for exactly pool_size items
            // and its receiver is alive.
            let _ = pool_tx.send(Vec::with_capacity(capacity));
        }

        let stop = &stop;
        let reader_handle = s.spawn(move || read_chunks(reader, unit, &pool_rx, job_tx, stop));
        let mut worker_handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            worker_handles
                .push(s.spawn(move || run_worker(cipher, capacity, &job_rx, &done_tx, work)));
        }
        // Only the threads hold these now, so the writer sees the result
        // channel close once every worker has finished.
        drop(job_rx);
        drop(done_tx);

        // If the writer stops early, joining below waits for the reader's
        // current `read` call to return (it checks `stop` between chunks);
        // for a pipe that means until more input or EOF arrives.
        let outcome = write_in_order(writer, &done_rx, &pool_tx, progress);
        if outcome.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        // Unblock every thread: the reader waits on the pool, workers send
        // to the writer.
        drop(pool_tx);
        drop(done_rx);

        let read_result = match reader_handle.join() {
            Ok(r) => r,
            Err(payload) => panic::resume_unwind(payload),
        };
        for h in worker_handles {
            if let Err(payload) = h.join() {
                panic::resume_unwind(payload);
            }
        }
        match outcome {
            Ok(Some(stats)) => Ok(stats),
            Err(e) => Err(e),
            // The results ended without a final chunk: the reader stopped
            // early, which only an input error explains.
            Ok(None) => match read_result {
                Err(e) => Err(read_err(e)),
                Ok(()) => Err(read_err(io::Error::other(
                    "the reader stopped before the end of the input",
                ))),
            },
        }
    })
}

/// The reader thread: fills pool buffers with `unit`-sized chunks. A chunk
/// is final only when the input ends right after it (one chunk of
/// lookahead); an empty input, or nothing after a header, is one empty
/// final chunk.
fn read_chunks<R: Read>(
    mut reader: R,
    unit: usize,
    pool: &Receiver<Vec<u8>>,
    jobs: Sender<Job>,
    stop: &AtomicBool,
) -> io::Result<()> {
    // A closed pool or job channel means the writer has given up; just
    // stop quietly, the writer reports why.
    let fill = |reader: &mut R, buf: &mut Vec<u8>| -> io::Result<usize> {
        buf.resize(unit, 0);
        let n = read_full(reader, &mut buf[..unit])?;
        buf.truncate(n);
        Ok(n)
    };
    let Ok(mut current) = pool.recv() else {
        return Ok(());
    };
    let mut len = fill(&mut reader, &mut current)?;
    let mut index = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let last = if len < unit {
            true
        } else {
            let Ok(mut next) = pool.recv() else {
                return Ok(());
            };
            let next_len = fill(&mut reader, &mut next)?;
            if next_len == 0 {
                true
            } else {
                let job = Job {
                    index,
                    last: false,
                    input_len: len as u64,
                    buf: std::mem::replace(&mut current, next),
                };
                if jobs.send(job).is_err() {
                    return Ok(());
                }
                index += 1;
                len = next_len;
                continue;
            }
        };
        debug_assert!(last);
        let _ = jobs.send(Job {
            index,
            last,
            input_len: len as u64,
            buf: current,
        });
        return Ok(());
    }
}

fn run_worker(
    cipher: &ChunkCipher,
    capacity: usize,
    jobs: &Receiver<Job>,
    done: &Sender<Done>,
    work: Work,
) {
    let mut scratch: Scratch = Vec::with_capacity(capacity);
    for mut job in jobs.iter() {
        let result = panic::catch_unwind(AssertUnwindSafe(|| work(cipher, &mut job, &mut scratch)));
        match result {
            Ok(r) => {
                if done.send(Done::Chunk(job, r)).is_err() {
                    return;
                }
            }
            Err(payload) => {
                // Tell the writer first, or it would wait forever for this
                // chunk while the reader waits for a pool buffer.
                let _ = done.send(Done::Panicked);
                panic::resume_unwind(payload);
            }
        }
    }
}

/// The writer: puts results back in index order, writes them, returns
/// buffers to the pool. `Ok(None)` means the results ended before the final
/// chunk (the reader failed).
fn write_in_order<W: Write>(
    writer: &mut W,
    done: &Receiver<Done>,
    pool: &Sender<Vec<u8>>,
    progress: &dyn Progress,
) -> Result<Option<PipelineStats>, BackupIoError> {
    let mut stats = PipelineStats::default();
    let mut waiting: BTreeMap<u64, (Job, Result<(), BackupError>)> = BTreeMap::new();
    for msg in done.iter() {
        let (job, result) = match msg {
            Done::Chunk(job, result) => (job, result),
            Done::Panicked => return Ok(None),
        };
        waiting.insert(job.index, (job, result));
        while let Some(entry) = waiting.first_entry() {
            if *entry.key() != stats.chunks {
                break;
            }
            let (job, result) = entry.remove();
            result?;
            writer.write_all(&job.buf).map_err(write_err)?;
            stats.chunks += 1;
            stats.input_bytes += job.input_len;
            stats.output_bytes += job.buf.len() as u64;
            progress.advance(job.input_len);
            if job.last {
                return Ok(Some(stats));
            }
            // The reader may have stopped already; a closed pool is fine.
            let _ = pool.send(job.buf);
        }
    }
    Ok(None)
}
