//! Multipart uploads of a backup to object storage, in bounded memory.
//!
//! This module owns how a backup is cut into upload parts ([`PartPlan`])
//! and the `Write` adapter that uploads them ([`MultipartWriter`]). The
//! stores allow 10,000 parts per object (S3, GCS; Azure allows more) and
//! at most 5 GiB per part, and S3 refuses objects over 5 TiB. Each part is
//! held in memory while it uploads, so the part size is also the unit of
//! memory:
//!
//! - when the backup's length is known (a file), every part has the same
//!   size, just large enough that the parts stay under [`MAX_PARTS`];
//! - when it is not (standard input), parts start at [`BASE_PART_SIZE`]
//!   and double every [`PARTS_PER_STEP`] parts up to [`MAX_PART_SIZE`]:
//!   10,000 parts then hold about 6.8 TiB, so S3's 5 TiB object limit is
//!   reached before the part limit, while a backup of a few GiB still uses
//!   8 MiB parts. (Stores that demand equal part sizes, such as Cloudflare
//!   R2, need the length known: back up from a file.)
//!
//! Parts in flight shrink as parts grow ([`PartPlan::in_flight`]), so an
//! upload holds at most `in_flight + 1` parts: 40 MiB with 8 MiB parts,
//! never more than 2 GiB.

use std::io::{self, Write};

use object_store::{MultipartUpload, PutPayload};
use tokio::runtime::Handle;
use tokio::task::JoinSet;

/// The first (and smallest) part; S3 needs at least 5 MiB per part.
pub const BASE_PART_SIZE: usize = 8 << 20;
/// The largest part (S3 allows 5 GiB).
pub const MAX_PART_SIZE: usize = 1 << 30;
/// Parts of one size before the size doubles, for an unknown length.
pub const PARTS_PER_STEP: u64 = 500;
/// S3 allows 10,000 parts per upload; leave headroom.
pub const MAX_PARTS: u64 = 9_000;
/// Most parts uploading at once.
pub const MAX_PARTS_IN_FLIGHT: usize = 4;
/// Bytes uploading at once, when parts are large.
pub const IN_FLIGHT_BYTES: usize = 32 << 20;

/// How an upload is cut into parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlan {
    /// `Some(size)`: every part (but the last) has this size.
    fixed: Option<usize>,
    base: usize,
    max: usize,
    per_step: u64,
}

impl PartPlan {
    /// The plan for a backup of `len` bytes, or of unknown length.
    pub fn for_len(len: Option<u64>) -> PartPlan {
        let grow = PartPlan {
            fixed: None,
            base: BASE_PART_SIZE,
            max: MAX_PART_SIZE,
            per_step: PARTS_PER_STEP,
        };
        let Some(len) = len else { return grow };
        // Round up to whole MiB so parts stay aligned and readable in logs.
        let needed = len.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
        let size = usize::try_from(needed)
            .unwrap_or(usize::MAX)
            .max(BASE_PART_SIZE);
        PartPlan {
            fixed: Some(size),
            ..grow
        }
    }

    /// A growing plan with other sizes (tests of the writer use small ones).
    pub fn growing(base: usize, max: usize, per_step: u64) -> PartPlan {
        PartPlan {
            fixed: None,
            base: base.max(1),
            max: max.max(base.max(1)),
            per_step: per_step.max(1),
        }
    }

    /// The size of part `index` (0-based); the last part may be shorter.
    pub fn part_size(&self, index: u64) -> usize {
        if let Some(size) = self.fixed {
            return size;
        }
        let mut size = self.base;
        for _ in 0..index / self.per_step {
            if size >= self.max {
                break;
            }
            size = size.saturating_mul(2);
        }
        size.min(self.max)
    }

    /// How many parts of `part_size` may upload at once: up to
    /// [`MAX_PARTS_IN_FLIGHT`], fewer as parts grow, at least one.
    pub fn in_flight(&self, part_size: usize) -> usize {
        (IN_FLIGHT_BYTES / part_size.max(1)).clamp(1, MAX_PARTS_IN_FLIGHT)
    }

    /// The parts a backup of `len` bytes takes, and the largest memory the
    /// upload holds for them (parts in flight plus the one filling).
    pub fn parts_and_memory(&self, len: u64) -> (u64, u64) {
        let (mut parts, mut covered, mut memory) = (0u64, 0u64, 0u64);
        while covered < len {
            let size = self.part_size(parts);
            covered = covered.saturating_add(size as u64);
            memory = memory.max((self.in_flight(size) as u64 + 1) * size as u64);
            parts += 1;
        }
        (parts, memory)
    }
}

/// `Write` over a multipart upload: fills one part at a time, uploads it
/// on the runtime, and waits while [`PartPlan::in_flight`] parts are
/// uploading, so memory stays bounded however fast the engine writes.
pub(crate) struct MultipartWriter<'a> {
    handle: &'a Handle,
    upload: Box<dyn MultipartUpload>,
    plan: PartPlan,
    part: Vec<u8>,
    /// Index of the part being filled.
    index: u64,
    uploading: JoinSet<object_store::Result<()>>,
}

impl std::fmt::Debug for MultipartWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultipartWriter")
            .field("plan", &self.plan)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl<'a> MultipartWriter<'a> {
    pub(crate) fn new(
        handle: &'a Handle,
        upload: Box<dyn MultipartUpload>,
        plan: PartPlan,
    ) -> Self {
        MultipartWriter {
            handle,
            upload,
            plan,
            part: Vec::new(),
            index: 0,
            uploading: JoinSet::new(),
        }
    }

    /// Waits until fewer than `limit` parts are uploading.
    fn wait_below(&mut self, limit: usize) -> object_store::Result<()> {
        while self.uploading.len() >= limit.max(1) {
            match self.handle.block_on(self.uploading.join_next()) {
                Some(Ok(done)) => done?,
                Some(Err(join)) => return Err(join_error(join)),
                None => break,
            }
        }
        Ok(())
    }

    /// Starts uploading the filled part.
    fn send_part(&mut self) -> object_store::Result<()> {
        let size = self.plan.part_size(self.index);
        self.wait_below(self.plan.in_flight(size))?;
        let payload = PutPayload::from(std::mem::take(&mut self.part));
        let upload = self.upload.put_part(payload);
        let _ctx = self.handle.enter();
        self.uploading.spawn(upload);
        self.index += 1;
        Ok(())
    }

    /// Uploads what is left and completes the upload: only then does the
    /// object appear.
    pub(crate) fn finish(mut self) -> object_store::Result<()> {
        if !self.part.is_empty() || self.index == 0 {
            self.send_part()?;
        }
        self.wait_below(1)?;
        self.handle.block_on(self.upload.complete()).map(drop)
    }

    /// Stops the upload and asks the store to drop its parts (best effort:
    /// the stores also expire abandoned uploads).
    pub(crate) fn abort(mut self) {
        self.uploading.abort_all();
        while self.handle.block_on(self.uploading.join_next()).is_some() {}
        let _ = self.handle.block_on(self.upload.abort());
    }
}

fn join_error(e: tokio::task::JoinError) -> object_store::Error {
    object_store::Error::Generic {
        store: "upload",
        source: Box::new(e),
    }
}

impl Write for MultipartWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let size = self.plan.part_size(self.index);
        if self.part.capacity() == 0 {
            self.part.reserve_exact(size);
        }
        let n = buf.len().min(size - self.part.len());
        self.part.extend_from_slice(&buf[..n]);
        if self.part.len() == size {
            self.send_part().map_err(io::Error::other)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Parts go out when full; the rest goes out in `finish`.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GIB: u64 = 1 << 30;
    const TIB: u64 = 1 << 40;

    #[test]
    fn a_stdin_backup_reaches_the_5_tib_object_limit_before_the_part_limit() {
        let plan = PartPlan::for_len(None);
        // S3: at most 10,000 parts, 5 MiB to 5 GiB each, 5 TiB in all.
        let (parts, memory) = plan.parts_and_memory(5 * TIB);
        assert!(parts <= 10_000, "{parts} parts for 5 TiB");
        for i in 0..parts {
            let s = plan.part_size(i) as u64;
            assert!((5 << 20..=5 * GIB).contains(&s), "part {i}: {s}");
        }
        // The 10,000 parts hold more than S3 stores in one object.
        let held: u64 = (0..10_000).map(|i| plan.part_size(i) as u64).sum();
        assert!(held > 5 * TIB, "{held}");
        // Memory stays bounded, and small where backups are small.
        assert!(memory <= 2 * GIB, "{memory}");
        assert_eq!(plan.parts_and_memory(GIB), (128, 40 << 20));
        assert_eq!(plan.part_size(0), BASE_PART_SIZE);
        assert_eq!(plan.part_size(PARTS_PER_STEP), 2 * BASE_PART_SIZE);
        assert_eq!(plan.part_size(9_999), MAX_PART_SIZE);
        // 8 MiB parts alone held 78 GiB; now 100 GiB takes a quarter of
        // the parts, with 128 MiB parts at the end.
        let (parts, memory) = plan.parts_and_memory(100 * GIB);
        assert!(parts < 2_500, "{parts}");
        assert_eq!(memory, 256 << 20);
    }

    #[test]
    fn a_known_length_uses_equal_parts_under_the_limit() {
        let plan = PartPlan::for_len(Some(GIB));
        assert_eq!(plan.part_size(0), BASE_PART_SIZE);
        assert_eq!(plan.part_size(5_000), BASE_PART_SIZE);
        let plan = PartPlan::for_len(Some(5 * TIB));
        let (parts, memory) = plan.parts_and_memory(5 * TIB);
        assert!(parts <= MAX_PARTS, "{parts}");
        assert_eq!(plan.part_size(0), plan.part_size(parts - 1));
        assert!(memory <= 2 * GIB, "{memory}");
    }

    #[test]
    fn the_writer_grows_its_parts_and_the_object_is_whole() {
        use object_store::memory::InMemory;
        use object_store::path::Path;
        use object_store::ObjectStoreExt;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let store = InMemory::new();
        let path = Path::from("b");
        let upload = rt.block_on(store.put_multipart(&path)).unwrap();
        // 1 KiB parts doubling every 4 parts up to 16 KiB.
        let plan = PartPlan::growing(1 << 10, 16 << 10, 4);
        let mut w = MultipartWriter::new(rt.handle(), upload, plan);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(777) {
            w.write_all(piece).unwrap();
        }
        assert!(w.index > 20, "{} parts so far", w.index);
        w.finish().unwrap();
        let got = rt
            .block_on(async { store.get(&path).await.unwrap().bytes().await.unwrap() })
            .to_vec();
        assert!(got == data);
        let sizes: Vec<usize> = (0..20).map(|i| plan.part_size(i)).collect();
        assert_eq!(&sizes[..5], &[1024, 1024, 1024, 1024, 2048]);
        assert_eq!(sizes[19], 16 << 10);
    }
}
