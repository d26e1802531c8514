//! Length-prefixed records on a byte stream (SPEC.md section 5.1): a u32
//! big-endian length, then that many bytes. Used by the chatd-vault links
//! and the links between vault replicas.

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

/// Reads one record. Waits as long as needed for its first byte (links may
/// idle), then gives the rest `body_timeout`. Returns `Ok(None)` on a clean
/// end of stream between records. Cancel-unsafe: use from a task that owns
/// the reader.
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
        let len = u32::from_be_bytes([first[0], rest[0], rest[1], rest[2]]) as usize;
        if len == 0 {
            return Err(RecordError::Empty);
        }
        if len > max {
            return Err(RecordError::TooLarge { len, max });
        }
        let mut buf = vec![0u8; len];
        r.read_exact(&mut buf).await?;
        Ok(buf)
    };
    match tokio::time::timeout(body_timeout, body).await {
        Ok(res) => res.map(Some),
        Err(_) => Err(RecordError::Timeout),
    }
}

/// Writes one record (length and body) without flushing.
pub async fn write_record<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "record too large"))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(body).await
}

#[cfg(test)]
mod tests {
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
}
