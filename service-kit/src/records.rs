//! Length-prefixed records on a byte stream (SPEC.md section 5.1): a u32
//! big-endian length, then that many bytes. Used by the chatd-vault links
//! and the links between vault replicas.
//!
//! Two ways to use them. [`read_record`] and [`write_record`] move one
//! record with exact-size reads and one write, for handshakes, where no
//! byte past the record may be consumed. Long-lived links use
//! [`RecordReader`], which reads whatever the socket has into one buffer
//! and hands out every complete record in it without another syscall, and
//! [`push_record`] or [`gather_ready`], which append records (everything a
//! writer's queue holds) to one buffer that leaves in a single write: a
//! busy link then costs a read and a write per batch of records, not three
//! reads and two writes per record.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("record of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("zero-length record")]
    Empty,
    #[error("record not completed in time")]
    Timeout,
}

/// The length prefix of a record of `len` bytes.
fn prefix(len: usize) -> std::io::Result<[u8; 4]> {
    u32::try_from(len)
        .map(u32::to_be_bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "record too large"))
}

/// Checks a record's length prefix against the limits.
fn checked_len(prefix: [u8; 4], max: usize) -> Result<usize, RecordError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 {
        return Err(RecordError::Empty);
    }
    if len > max {
        return Err(RecordError::TooLarge { len, max });
    }
    Ok(len)
}

/// Reads one record with exact-size reads, consuming nothing after it.
/// Waits as long as needed for its first byte (links may idle), then gives
/// the rest `body_timeout`. Returns `Ok(None)` on a clean end of stream
/// between records. Cancel-unsafe: use from a task that owns the reader.
pub async fn read_record<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    body_timeout: Duration,
) -> Result<Option<Vec<u8>>, RecordError> {
    let mut first = [0u8; 1];
    if r.read(&mut first).await? == 0 {
        return Ok(None);
    }
    let body = async {
        let mut rest = [0u8; 3];
        r.read_exact(&mut rest).await?;
        let len = checked_len([first[0], rest[0], rest[1], rest[2]], max)?;
        let mut buf = vec![0u8; len];
        r.read_exact(&mut buf).await?;
        Ok(buf)
    };
    match tokio::time::timeout(body_timeout, body).await {
        Ok(res) => res.map(Some),
        Err(_) => Err(RecordError::Timeout),
    }
}

/// Writes one record (length and body) in one write, without flushing.
pub async fn write_record<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4 + body.len());
    push_record(&mut buf, body)?;
    w.write_all(&buf).await
}

/// Appends one record (length and body) to `out`, for a writer that sends
/// several records in one write.
pub fn push_record(out: &mut Vec<u8>, body: &[u8]) -> std::io::Result<()> {
    out.extend_from_slice(&prefix(body.len())?);
    out.extend_from_slice(body);
    Ok(())
}

/// Appends one record whose body `fill` appends to `out` itself (a sealer
/// writing its ciphertext in place), then writes the length in front of
/// it. `fill` must only append; on its error `out` is left as it was.
pub fn push_record_with<E>(
    out: &mut Vec<u8>,
    fill: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<std::io::Error>,
{
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Err(e) = fill(out) {
        out.truncate(start);
        return Err(e);
    }
    match prefix(out.len() - start - 4) {
        Ok(p) => {
            out[start..start + 4].copy_from_slice(&p);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e.into())
        }
    }
}

/// Gathers `first` and whatever else `rx` holds ready into `batch`, one
/// record each, whose body `fill` appends (see [`push_record_with`]),
/// until `max_bytes` are gathered: items queued together then leave in
/// one write, and a writer that falls behind catches up in fewer, larger
/// writes instead of more small ones. Returns how many items it gathered;
/// on an error `batch` holds the records gathered before it.
pub fn gather_ready<T, E>(
    first: T,
    rx: &mut tokio::sync::mpsc::Receiver<T>,
    batch: &mut Vec<u8>,
    max_bytes: usize,
    mut fill: impl FnMut(T, &mut Vec<u8>) -> Result<(), E>,
) -> Result<usize, E>
where
    E: From<std::io::Error>,
{
    let mut next = Some(first);
    let mut gathered = 0;
    while let Some(item) = next.take() {
        push_record_with(batch, |out| fill(item, out))?;
        gathered += 1;
        if batch.len() < max_bytes {
            next = rx.try_recv().ok();
        }
    }
    Ok(gathered)
}

/// Bytes the reader asks the socket for at least, once its buffer is
/// drained: enough for a burst of small records in one read.
const READ_CHUNK: usize = 16 * 1024;

/// A buffer above this size is given back once it is empty again, so one
/// large record does not pin its memory for the life of a link.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Reads records from a stream through one buffer (see the module docs).
///
/// Limits as [`read_record`]: a record may not exceed `max` bytes, and
/// once its first byte is here the rest must arrive within
/// `body_timeout`; between records the stream may idle for ever. Unlike
/// [`read_record`], [`RecordReader::next`] is cancel-safe: every byte read
/// stays in the buffer, and so does the deadline of a record begun.
pub struct RecordReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Where the next record starts in `buf`.
    start: usize,
    max: usize,
    body_timeout: Duration,
    /// When the record now partly in the buffer must be complete.
    deadline: Option<tokio::time::Instant>,
}

impl<R> std::fmt::Debug for RecordReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordReader")
            .field("buffered", &(self.buf.len() - self.start))
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin> RecordReader<R> {
    pub fn new(inner: R, max: usize, body_timeout: Duration) -> Self {
        RecordReader {
            inner,
            buf: Vec::new(),
            start: 0,
            max,
            body_timeout,
            deadline: None,
        }
    }

    /// The next record, borrowed from the buffer until the next call.
    /// `Ok(None)` is a clean end of stream between records; an end of
    /// stream inside a record is an `UnexpectedEof` error.
    pub async fn next(&mut self) -> Result<Option<&[u8]>, RecordError> {
        loop {
            if let Some(len) = self.complete()? {
                let at = self.start + 4;
                self.start = at + len;
                // Bytes after this record began the next one just now.
                self.deadline = (self.start < self.buf.len())
                    .then(|| tokio::time::Instant::now() + self.body_timeout);
                return Ok(Some(&self.buf[at..at + len]));
            }
            self.make_room();
            let read = self.inner.read_buf(&mut self.buf);
            let n = match self.deadline {
                None => read.await?,
                Some(at) => tokio::time::timeout_at(at, read)
                    .await
                    .map_err(|_| RecordError::Timeout)??,
            };
            if n == 0 {
                return if self.start == self.buf.len() {
                    Ok(None)
                } else {
                    Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into())
                };
            }
            if self.deadline.is_none() {
                self.deadline = Some(tokio::time::Instant::now() + self.body_timeout);
            }
        }
    }

    /// The length of the record at `start` if all of it is buffered.
    fn complete(&self) -> Result<Option<usize>, RecordError> {
        let have = &self.buf[self.start..];
        let Some(prefix) = have.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = checked_len(*prefix, self.max)?;
        Ok((have.len() >= 4 + len).then_some(len))
    }

    /// Moves a partial record to the front and reserves room for the rest
    /// of it, or for at least [`READ_CHUNK`] more bytes.
    fn make_room(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
        } else if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // The prefix, when here, was checked against `max` by `complete`.
        let wanted = match self.buf.first_chunk::<4>() {
            Some(p) => 4 + u32::from_be_bytes(*p) as usize,
            None => 4,
        };
        let spare = wanted.saturating_sub(self.buf.len()).max(READ_CHUNK);
        self.buf.reserve(spare);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn round_trip_and_limits() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_record(&mut a, b"hello").await.unwrap();
        write_record(&mut a, &[7u8; 100]).await.unwrap();
        let t = Duration::from_secs(1);
        assert_eq!(read_record(&mut b, 64, t).await.unwrap().unwrap(), b"hello");
        assert!(matches!(
            read_record(&mut b, 64, t).await,
            Err(RecordError::TooLarge { len: 100, max: 64 })
        ));
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0, 0, 0]).await.unwrap();
        assert!(matches!(
            read_record(&mut b, 64, t).await,
            Err(RecordError::Empty)
        ));
        // A record that starts but never finishes times out.
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0, 0, 9, 1]).await.unwrap();
        assert!(matches!(
            read_record(&mut b, 64, Duration::from_millis(50)).await,
            Err(RecordError::Timeout)
        ));
        // Clean end of stream between records.
        drop(a);
        let (a2, mut b2) = tokio::io::duplex(8);
        drop(a2);
        assert!(read_record(&mut b2, 64, t).await.unwrap().is_none());
    }

    /// Counts the reads that reach the stream under a reader.
    struct CountingReads<R> {
        inner: R,
        reads: usize,
    }

    impl<R: AsyncRead + Unpin> AsyncRead for CountingReads<R> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
            if r.is_ready() && buf.filled().len() > before {
                self.reads += 1;
            }
            r
        }
    }

    #[tokio::test]
    async fn a_burst_of_records_is_read_in_one_read() {
        let mut batch = Vec::new();
        for i in 0..50u8 {
            push_record(&mut batch, &[i; 100]).unwrap();
        }
        let (mut a, b) = tokio::io::duplex(64 * 1024);
        a.write_all(&batch).await.unwrap();
        let mut r = RecordReader::new(
            CountingReads { inner: b, reads: 0 },
            1024,
            Duration::from_secs(1),
        );
        for i in 0..50u8 {
            assert_eq!(r.next().await.unwrap().unwrap(), &[i; 100][..]);
        }
        assert_eq!(
            r.inner.reads, 1,
            "50 buffered records took more than one read"
        );
        drop(a);
        assert!(r.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn gather_ready_takes_what_is_queued_up_to_its_bound() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u8>(64);
        for i in 1..=20u8 {
            tx.try_send(i).unwrap();
        }
        let body = |i: u8, out: &mut Vec<u8>| -> std::io::Result<()> {
            out.extend_from_slice(&[i; 10]);
            Ok(())
        };
        // Everything queued is gathered behind the first item.
        let mut batch = Vec::new();
        let first = rx.recv().await.unwrap();
        assert_eq!(
            gather_ready(first, &mut rx, &mut batch, 1 << 20, body).unwrap(),
            20
        );
        let mut expected = Vec::new();
        for i in 1..=20u8 {
            push_record(&mut expected, &[i; 10]).unwrap();
        }
        assert_eq!(batch, expected);
        // The bound stops gathering once reached (14 bytes a record).
        for i in 1..=20u8 {
            tx.try_send(i).unwrap();
        }
        batch.clear();
        let first = rx.recv().await.unwrap();
        assert_eq!(
            gather_ready(first, &mut rx, &mut batch, 30, body).unwrap(),
            3
        );
        assert_eq!(rx.len(), 17);
        // A failing item ends the batch with the records before it.
        batch.clear();
        let first = rx.recv().await.unwrap();
        let failing = |i: u8, out: &mut Vec<u8>| -> std::io::Result<()> {
            if i == 6 {
                return Err(std::io::Error::other("seal failed"));
            }
            out.push(i);
            Ok(())
        };
        assert!(gather_ready(first, &mut rx, &mut batch, 1 << 20, failing).is_err());
        assert_eq!(batch.len(), 2 * 5);
    }

    #[tokio::test]
    async fn records_split_anywhere_arrive_whole() {
        let mut bytes = Vec::new();
        let bodies: Vec<Vec<u8>> = (1..40u8).map(|i| vec![i; i as usize * 37]).collect();
        for b in &bodies {
            push_record(&mut bytes, b).unwrap();
        }
        // Delivered in pieces of 1, 2, 3, ... bytes, with the reader
        // cancelled and resumed between pieces.
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut r = RecordReader::new(b, 4096, Duration::from_secs(5));
        let mut got = Vec::new();
        let mut sent = 0;
        let mut step = 1;
        while got.len() < bodies.len() {
            if sent < bytes.len() {
                let end = (sent + step).min(bytes.len());
                a.write_all(&bytes[sent..end]).await.unwrap();
                sent = end;
                step += 1;
            }
            let next = tokio::time::timeout(Duration::from_millis(5), r.next()).await;
            if let Ok(rec) = next {
                got.push(rec.unwrap().unwrap().to_vec());
            }
        }
        assert_eq!(got, bodies);
    }

    #[tokio::test]
    async fn limits_hold_for_the_buffered_reader() {
        let t = Duration::from_secs(1);
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0, 0, 100]).await.unwrap();
        let mut r = RecordReader::new(b, 64, t);
        assert!(matches!(
            r.next().await,
            Err(RecordError::TooLarge { len: 100, max: 64 })
        ));
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0, 0, 0]).await.unwrap();
        assert!(matches!(
            RecordReader::new(b, 64, t).next().await,
            Err(RecordError::Empty)
        ));
        // A record begun and never finished: the body timeout, even though
        // the reader is polled afresh (cancelled) in between.
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0, 0, 9, 1]).await.unwrap();
        let mut r = RecordReader::new(b, 64, Duration::from_millis(100));
        for _ in 0..3 {
            assert!(tokio::time::timeout(Duration::from_millis(20), r.next())
                .await
                .is_err());
        }
        assert!(matches!(
            tokio::time::timeout(Duration::from_secs(2), r.next()).await,
            Ok(Err(RecordError::Timeout))
        ));
        // An end of stream inside a record is an error, not a clean end.
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0, 0, 9, 1]).await.unwrap();
        drop(a);
        assert!(matches!(
            RecordReader::new(b, 64, t).next().await,
            Err(RecordError::Io(_))
        ));
        // An idle stream between records is not timed out.
        let (_a, b) = tokio::io::duplex(1024);
        let mut r = RecordReader::new(b, 64, Duration::from_millis(10));
        assert!(tokio::time::timeout(Duration::from_millis(100), r.next())
            .await
            .is_err());
    }

    #[test]
    fn push_record_with_writes_the_length_it_filled_and_undoes_a_failure() {
        let mut out = vec![9];
        push_record_with(&mut out, |o| {
            o.extend_from_slice(b"abc");
            Ok::<_, std::io::Error>(())
        })
        .unwrap();
        assert_eq!(out, [9, 0, 0, 0, 3, b'a', b'b', b'c']);
        let failed = push_record_with(&mut out, |o| {
            o.push(1);
            Err(std::io::Error::other("sealing failed"))
        });
        assert!(failed.is_err());
        assert_eq!(out, [9, 0, 0, 0, 3, b'a', b'b', b'c']);
    }
}
