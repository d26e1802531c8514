//! Length-prefixed link records (SPEC 5.1) read from hostile bytes that
//! arrive in arbitrary pieces: the buffered `RecordReader` chatd's and the
//! vault's links use must hand out exactly the records, and stop with
//! exactly the error, that the exact-read `read_record` gives for the same
//! stream, whatever the piece sizes, and never panic or exceed its limit.
#![no_main]

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use service_kit::records::{read_record, RecordError, RecordReader};
use tokio::io::{AsyncRead, ReadBuf};

/// A stream that hands its bytes out in pieces of the sizes in `steps`
/// (cycled), as a socket does.
struct Pieces<'a> {
    data: &'a [u8],
    at: usize,
    steps: &'a [u8],
    step: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let size = match self.steps.get(self.step % self.steps.len().max(1)) {
            Some(&s) => usize::from(s).max(1),
            None => usize::MAX,
        };
        self.step += 1;
        let n = size.min(self.data.len() - self.at).min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

/// What reading ended with, comparable across the two readers.
#[derive(Debug, PartialEq)]
enum End {
    Clean,
    TooLarge { len: usize, max: usize },
    Empty,
    Eof,
    Other(String),
}

fn end(e: RecordError) -> End {
    match e {
        RecordError::TooLarge { len, max } => End::TooLarge { len, max },
        RecordError::Empty => End::Empty,
        RecordError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => End::Eof,
        other => End::Other(other.to_string()),
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the limit, the next eight the piece sizes.
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    let max = usize::from(limit) * 64 + 1;
    let (steps, stream) = rest.split_at(rest.len().min(8));
    let timeout = Duration::from_secs(60);
    runtime().block_on(async {
        let mut exact = Pieces { data: stream, at: 0, steps: &[], step: 0 };
        let mut expected = Vec::new();
        let expected_end = loop {
            match read_record(&mut exact, max, timeout).await {
                Ok(Some(r)) => expected.push(r),
                Ok(None) => break End::Clean,
                Err(e) => break end(e),
            }
        };
        let mut reader = RecordReader::new(
            Pieces { data: stream, at: 0, steps, step: 0 },
            max,
            timeout,
        );
        let mut got = Vec::new();
        let got_end = loop {
            match reader.next().await {
                Ok(Some(r)) => {
                    assert!(!r.is_empty() && r.len() <= max, "a record of {} bytes", r.len());
                    got.push(r.to_vec());
                }
                Ok(None) => break End::Clean,
                Err(e) => break end(e),
            }
        };
        assert_eq!(got, expected, "records differ");
        assert_eq!(got_end, expected_end, "the streams ended differently");
    });
});
