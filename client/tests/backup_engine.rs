//! The parallel engine against the sequential reference codec: round trips
//! at chunk boundaries and thread counts, byte-for-byte compatibility (golden
//! vector included), the same verdict on every kind of damage, bounded
//! read-ahead, and clean failure when the input or output fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use backup_client::backup::{
    decrypt, decrypt_with, encrypt, encrypt_with_header, BackupIoError, BackupOptions, NoProgress,
    Progress, RestoreOptions,
};
use protocol_spec::backup::{BackupDecoder, BackupEncoder, BackupHeader, HEADER_LEN, TAG_LEN};
use protocol_spec::error::BackupError;
use protocol_spec::root_key::RootKey;

const LOG2: u8 = 12;
const CS: usize = 1 << LOG2;
const SEALED: usize = CS + TAG_LEN;

fn key(b: u8) -> RootKey {
    RootKey::from_entropy([b; 30])
}

/// Fast deterministic bytes (xorshift), so tests do not depend on patterns
/// that a chunk-sized period could hide.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn opts(threads: usize) -> BackupOptions {
    BackupOptions {
        chunk_log2: LOG2,
        threads,
        ..BackupOptions::default()
    }
}

fn enc(root: &RootKey, plain: &[u8], threads: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let stats = encrypt(plain, &mut out, root, &opts(threads), &NoProgress).unwrap();
    assert_eq!(stats.backup_bytes, out.len() as u64);
    assert_eq!(stats.plaintext_bytes, plain.len() as u64);
    out
}

fn dec(root: &RootKey, backup: &[u8], threads: usize) -> Result<Vec<u8>, BackupIoError> {
    let mut out = Vec::new();
    let o = RestoreOptions {
        threads,
        ..RestoreOptions::default()
    };
    let stats = decrypt_with(backup, &mut out, root, &o, &NoProgress)?;
    assert_eq!(stats.plaintext_bytes, out.len() as u64);
    assert_eq!(stats.backup_bytes, backup.len() as u64);
    Ok(out)
}

fn seq_enc(root: &RootKey, salt: [u8; 32], plain: &[u8], log2: u8) -> Vec<u8> {
    let mut e = BackupEncoder::new(root, salt, log2).unwrap();
    let mut out = Vec::new();
    for piece in plain.chunks(7777) {
        e.update(piece, &mut out).unwrap();
    }
    e.finish(&mut out).unwrap();
    out
}

fn seq_dec(root: &RootKey, backup: &[u8]) -> Result<Vec<u8>, BackupError> {
    let mut d = BackupDecoder::new(root);
    let mut out = Vec::new();
    for piece in backup.chunks(5000) {
        d.update(piece, &mut out)?;
    }
    d.finish(&mut out)?;
    Ok(out)
}

fn format_err(r: Result<Vec<u8>, BackupIoError>) -> BackupError {
    match r {
        Ok(_) => panic!("a damaged backup decrypted"),
        Err(e) => e
            .format_error()
            .cloned()
            .unwrap_or_else(|| panic!("not a format error: {e}")),
    }
}

fn salt_of(backup: &[u8]) -> [u8; 32] {
    backup[12..44].try_into().unwrap()
}

#[test]
fn round_trips_at_chunk_boundaries_and_thread_counts() {
    let k = key(1);
    for len in [0, 1, CS - 1, CS, CS + 1, 2 * CS, 3 * CS + 7, 17 * CS] {
        let plain = data(len, len as u64 + 3);
        for threads in [1, 2, 3, 8] {
            let b = enc(&k, &plain, threads);
            let chunks = if len == 0 { 1 } else { len.div_ceil(CS) };
            assert_eq!(b.len(), HEADER_LEN + len + chunks * TAG_LEN, "len {len}");
            for dthreads in [1, 4] {
                assert_eq!(dec(&k, &b, dthreads).unwrap(), plain, "len {len}");
            }
        }
    }
}

#[test]
fn default_threads_and_plain_decrypt_round_trip() {
    let k = key(2);
    let plain = data(40 * CS + 5, 9);
    let b = enc(&k, &plain, 0);
    let mut out = Vec::new();
    let stats = decrypt(&b[..], &mut out, &k, &NoProgress).unwrap();
    assert_eq!(out, plain);
    assert_eq!(stats.chunks, 41);
}

/// Returns at most a few bytes per call and sometimes `Interrupted`, to
/// exercise the read loops.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
    calls: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.calls % 5 == 0 {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = buf
            .len()
            .min(self.data.len())
            .min(1 + (self.calls * 31) % self.step);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn short_reads_and_interrupts_do_not_change_the_output() {
    let k = key(3);
    let plain = data(5 * CS + 3, 4);
    let b = enc(&k, &plain, 2);
    let salt = salt_of(&b);

    let header = BackupHeader::new(&k, salt, LOG2).unwrap();
    let mut again = Vec::new();
    let src = Trickle {
        data: &plain,
        step: 3000,
        calls: 0,
    };
    encrypt_with_header(src, &mut again, &header, &k, &opts(3), &NoProgress).unwrap();
    assert_eq!(again, b);

    let mut out = Vec::new();
    let src = Trickle {
        data: &b,
        step: 700,
        calls: 0,
    };
    decrypt(src, &mut out, &k, &NoProgress).unwrap();
    assert_eq!(out, plain);
}

#[test]
fn byte_for_byte_compatible_with_the_sequential_codec() {
    let k = key(4);
    for len in [0, 5, CS, 2 * CS, 9 * CS + 100] {
        let plain = data(len, 77);
        // Ours -> sequential decoder, and the sequential encoder with our
        // salt reproduces our bytes exactly.
        let ours = enc(&k, &plain, 4);
        assert_eq!(seq_dec(&k, &ours).unwrap(), plain);
        assert_eq!(seq_enc(&k, salt_of(&ours), &plain, LOG2), ours);
        // Sequential encoder -> ours.
        let theirs = seq_enc(&k, [0x33; 32], &plain, LOG2);
        assert_eq!(dec(&k, &theirs, 3).unwrap(), plain);
        let header = BackupHeader::new(&k, [0x33; 32], LOG2).unwrap();
        let mut mine = Vec::new();
        encrypt_with_header(&plain[..], &mut mine, &header, &k, &opts(2), &NoProgress).unwrap();
        assert_eq!(mine, theirs);
    }
}

fn golden() -> (RootKey, Vec<u8>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../protocol-spec/vectors/backup_v1.txt"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let field = |name: &str| {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} = ")))
            .unwrap();
        hex::decode(line.split_once(" = ").unwrap().1.trim()).unwrap()
    };
    let root = RootKey::from_bytes(field("root_key").try_into().unwrap()).unwrap();
    (root, field("backup"))
}

#[test]
fn golden_vector_in_both_directions() {
    let (root, backup) = golden();
    let plain: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    for threads in [1, 2, 5] {
        assert_eq!(dec(&root, &backup, threads).unwrap(), plain);
        let header = BackupHeader::new(&root, [0xa5; 32], 12).unwrap();
        let mut out = Vec::new();
        let o = opts(threads);
        encrypt_with_header(&plain[..], &mut out, &header, &root, &o, &NoProgress).unwrap();
        assert_eq!(out, backup, "threads {threads}");
    }
}

/// Every kind of damage: the engine refuses it, with the same verdict as
/// the sequential decoder, whatever the thread count.
#[test]
fn same_verdict_as_the_sequential_decoder_on_damage() {
    let k = key(5);
    let plain = data(6 * CS + 100, 5);
    let b = enc(&k, &plain, 2);
    let other = enc(&k, &plain, 2);
    let exact = enc(&k, &data(3 * CS, 6), 2);

    let flip = |v: &[u8], pos: usize| {
        let mut t = v.to_vec();
        t[pos] ^= 0x01;
        t
    };
    let c = |i: usize| HEADER_LEN + i * SEALED;
    let mut reordered = b.clone();
    reordered[c(1)..c(2)].copy_from_slice(&b[c(2)..c(3)]);
    reordered[c(2)..c(3)].copy_from_slice(&b[c(1)..c(2)]);
    let mut swapped = b.clone();
    swapped[c(3)..c(4)].copy_from_slice(&other[c(3)..c(4)]);
    let mut dup = b.clone();
    dup[c(2)..c(3)].copy_from_slice(&b[c(1)..c(2)]);
    let mut trailing_full = exact.clone();
    trailing_full.extend_from_slice(&[0u8; 40]);
    let mut trailing_short = b.clone();
    trailing_short.push(0);
    let mut header_reserved = b.clone();
    header_reserved[11] = 1;
    let mut header_log2 = b.clone();
    header_log2[9] = 13;
    let mut version = b.clone();
    version[8] = 2;
    let mut dropped_middle = b[..c(2)].to_vec();
    dropped_middle.extend_from_slice(&b[c(3)..]);

    let cases: Vec<(&str, Vec<u8>, Option<BackupError>)> = vec![
        ("empty file", Vec::new(), Some(BackupError::Truncated)),
        (
            "half a header",
            b[..30].to_vec(),
            Some(BackupError::Truncated),
        ),
        (
            "header only",
            b[..HEADER_LEN].to_vec(),
            Some(BackupError::Truncated),
        ),
        (
            "cut at a chunk boundary",
            b[..c(3)].to_vec(),
            Some(BackupError::Truncated),
        ),
        ("cut mid-chunk", b[..c(3) + 100].to_vec(), None),
        ("cut one byte short", b[..b.len() - 1].to_vec(), None),
        ("magic", flip(&b, 0), Some(BackupError::BadMagic)),
        ("version", version, Some(BackupError::UnsupportedVersion(2))),
        (
            "chunk size",
            header_log2,
            Some(BackupError::Corrupt { chunk: 0 }),
        ),
        ("reserved", header_reserved, None),
        ("salt", flip(&b, 20), Some(BackupError::WrongKey)),
        ("key check", flip(&b, 50), Some(BackupError::WrongKey)),
        (
            "first body byte",
            flip(&b, HEADER_LEN),
            Some(BackupError::Corrupt { chunk: 0 }),
        ),
        (
            "middle chunk",
            flip(&b, c(4) + 9),
            Some(BackupError::Corrupt { chunk: 4 }),
        ),
        (
            "a tag",
            flip(&b, c(2) - 1),
            Some(BackupError::Corrupt { chunk: 1 }),
        ),
        (
            "last byte",
            flip(&b, b.len() - 1),
            Some(BackupError::Corrupt { chunk: 6 }),
        ),
        (
            "two chunks reordered",
            reordered,
            Some(BackupError::Corrupt { chunk: 1 }),
        ),
        (
            "chunk from another backup",
            swapped,
            Some(BackupError::Corrupt { chunk: 3 }),
        ),
        (
            "duplicated chunk",
            dup,
            Some(BackupError::Corrupt { chunk: 2 }),
        ),
        (
            "dropped chunk",
            dropped_middle,
            Some(BackupError::Corrupt { chunk: 2 }),
        ),
        (
            "garbage after a full final chunk",
            trailing_full,
            Some(BackupError::TrailingData),
        ),
        ("garbage after a short final chunk", trailing_short, None),
        (
            "not a backup",
            b"PK\x03\x04 a zip file".to_vec(),
            Some(BackupError::BadMagic),
        ),
    ];
    for (name, bytes, expected) in cases {
        let reference = seq_dec(&k, &bytes).expect_err(name);
        if let Some(expected) = &expected {
            assert_eq!(&reference, expected, "{name}: reference decoder");
        }
        for threads in [1, 2, 7] {
            assert_eq!(format_err(dec(&k, &bytes, threads)), reference, "{name}");
        }
    }
    assert_eq!(format_err(dec(&key(6), &b, 2)), BackupError::WrongKey);
}

#[test]
fn reports_the_first_bad_chunk_with_many_threads() {
    let k = key(7);
    let b = enc(&k, &data(64 * CS, 8), 4);
    let mut t = b.clone();
    for chunk in [40, 3, 60] {
        t[HEADER_LEN + chunk * SEALED + 5] ^= 0x40;
    }
    for _ in 0..5 {
        assert_eq!(
            format_err(dec(&k, &t, 8)),
            BackupError::Corrupt { chunk: 3 }
        );
    }
}

/// Counts bytes handed out, so the test can see how far ahead of the
/// writer the reader gets.
struct Counting<'a> {
    data: &'a [u8],
    consumed: Arc<AtomicU64>,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.consumed.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

/// A slow writer that records the largest read-ahead it ever saw.
struct SlowWriter {
    consumed: Arc<AtomicU64>,
    written: u64,
    max_ahead: u64,
}

impl Write for SlowWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        std::thread::sleep(std::time::Duration::from_micros(200));
        // The engine writes the header once, then one whole sealed chunk
        // per call; count plaintext only.
        let ahead = self.consumed.load(Ordering::SeqCst) - self.written;
        self.max_ahead = self.max_ahead.max(ahead);
        if buf.len() > HEADER_LEN || buf.len() == TAG_LEN {
            self.written += (buf.len() - TAG_LEN) as u64;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn read_ahead_is_bounded_by_the_buffer_pool() {
    let k = key(8);
    let plain = data(300 * CS, 10);
    for threads in [1, 3] {
        let consumed = Arc::new(AtomicU64::new(0));
        let src = Counting {
            data: &plain,
            consumed: consumed.clone(),
        };
        let mut sink = SlowWriter {
            consumed,
            written: 0,
            max_ahead: 0,
        };
        encrypt(src, &mut sink, &k, &opts(threads), &NoProgress).unwrap();
        // The pool holds 2N + 1 buffers; a chunk being written is still
        // counted as consumed-but-not-written, hence +1 more.
        let bound = ((2 * threads + 2) * CS) as u64;
        assert!(
            sink.max_ahead <= bound,
            "threads {threads}: read {} bytes ahead (bound {bound})",
            sink.max_ahead
        );
    }
}

struct FailingReader<'a> {
    data: &'a [u8],
    fail_after: usize,
}

impl Read for FailingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.fail_after == 0 {
            return Err(io::Error::other("disk on fire"));
        }
        let n = buf.len().min(self.data.len()).min(self.fail_after);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.fail_after -= n;
        Ok(n)
    }
}

struct FailingWriter {
    room: usize,
}

impl Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.room == 0 {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn input_and_output_failures_end_cleanly() {
    let k = key(9);
    let plain = data(50 * CS, 11);
    for threads in [1, 4] {
        let src = FailingReader {
            data: &plain,
            fail_after: 20 * CS + 3,
        };
        let err = encrypt(src, Vec::new(), &k, &opts(threads), &NoProgress).unwrap_err();
        assert!(matches!(err, BackupIoError::Read { .. }), "{err}");
        assert!(err.to_string().contains("disk on fire"), "{err}");

        let err = encrypt(
            &plain[..],
            FailingWriter { room: 7 * CS },
            &k,
            &opts(threads),
            &NoProgress,
        )
        .unwrap_err();
        assert!(matches!(err, BackupIoError::Write { .. }), "{err}");

        let b = enc(&k, &plain, threads);
        let src = FailingReader {
            data: &b,
            fail_after: 10 * SEALED,
        };
        let mut out = Vec::new();
        let err = decrypt(src, &mut out, &k, &NoProgress).unwrap_err();
        assert!(matches!(err, BackupIoError::Read { .. }), "{err}");
    }
}

#[derive(Default)]
struct Recorder {
    total: Cell<Option<Option<u64>>>,
    advanced: Cell<u64>,
    calls: Cell<u64>,
    finished: Cell<u32>,
    log: RefCell<Vec<u64>>,
}

impl Progress for Recorder {
    fn total(&self, bytes: Option<u64>) {
        self.total.set(Some(bytes));
    }
    fn advance(&self, bytes: u64) {
        self.advanced.set(self.advanced.get() + bytes);
        self.calls.set(self.calls.get() + 1);
        self.log.borrow_mut().push(bytes);
    }
    fn finish(&self) {
        self.finished.set(self.finished.get() + 1);
    }
}

#[test]
fn progress_counts_input_bytes_and_finishes_once() {
    let k = key(10);
    let plain = data(10 * CS + 1, 12);
    let p = Recorder::default();
    let mut b = Vec::new();
    encrypt(&plain[..], &mut b, &k, &opts(2), &p).unwrap();
    assert_eq!(p.advanced.get(), plain.len() as u64);
    assert_eq!(p.calls.get(), 11);
    assert_eq!(p.finished.get(), 1);

    let p = Recorder::default();
    decrypt(&b[..], Vec::new(), &k, &p).unwrap();
    assert_eq!(p.advanced.get(), b.len() as u64);
    assert_eq!(p.finished.get(), 1);

    let p = Recorder::default();
    let mut t = b.clone();
    t[HEADER_LEN + 3 * SEALED] ^= 1;
    assert!(decrypt(&t[..], Vec::new(), &k, &p).is_err());
    assert_eq!(p.finished.get(), 0);
    assert_eq!(p.advanced.get(), (HEADER_LEN + 3 * SEALED) as u64);
}

#[test]
fn messages_say_what_to_do_and_never_show_the_key() {
    let k = key(11);
    let b = enc(&k, b"hello", 1);
    let err = dec(&key(12), &b, 1).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("different key"), "{text}");
    assert!(text.contains("use the 64-digit key or password"), "{text}");
    let dbg = format!("{err:?} {k:?}");
    assert!(!dbg.contains(&hex::encode(k.expose())), "{dbg}");
}

#[test]
fn rejects_a_chunk_size_out_of_range() {
    let k = key(13);
    for log2 in [11, 25] {
        let o = BackupOptions {
            chunk_log2: log2,
            ..BackupOptions::default()
        };
        let err = encrypt(&b"x"[..], Vec::new(), &k, &o, &NoProgress).unwrap_err();
        assert!(matches!(
            err.format_error(),
            Some(BackupError::BadHeader(_))
        ));
    }
}
