//! Encrypted backup file format, version 1 (SPEC.md section 10).
//!
//! ```text
//! header (60 bytes, authenticated as the associated data of every chunk)
//!   magic        8  "E2EBKUP\0"
//!   version      1  0x01
//!   chunk_log2   1  12..=24 (chunk size 4 KiB .. 16 MiB; 20 = 1 MiB default)
//!   reserved     2  zero
//!   salt        32  random per backup
//!   key_check   16  HKDF-SHA256(salt, K, "E2EBK backup v1 key check")
//! chunks
//!   AES-256-GCM(data_key, nonce_i, chunk_i, ad = header) || tag (16)
//!   data_key = HKDF-SHA256(salt, K, "E2EBK backup v1 data key")
//!   nonce_i  = 0x00 * 7 || u32be(i) || (0x01 if final else 0x00)
//! ```
//!
//! Every chunk but the last holds exactly `2^chunk_log2` plaintext bytes;
//! the last holds 0 to `2^chunk_log2` bytes and is sealed with the final
//! flag (STREAM construction). So truncation, reordering, duplication,
//! chunks moved between backups (different salt, so different data key) and
//! header edits all fail to decrypt.
//!
//! [`ChunkCipher`] seals and opens single chunks by index and is `Sync`, so
//! callers can spread chunks over threads; [`BackupEncoder`] and
//! [`BackupDecoder`] are sequential streaming conveniences over it.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::BackupError;
use crate::frame::Reader;
use crate::kdf::hkdf_sha256;
use crate::root_key::RootKey;

pub const MAGIC: [u8; 8] = *b"E2EBKUP\0";
pub const FORMAT_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 60;
pub const SALT_LEN: usize = 32;
pub const KEY_CHECK_LEN: usize = 16;
pub const TAG_LEN: usize = 16;
pub const MIN_CHUNK_LOG2: u8 = 12;
pub const MAX_CHUNK_LOG2: u8 = 24;
pub const DEFAULT_CHUNK_LOG2: u8 = 20;
/// Chunk indices are 32-bit.
pub const MAX_CHUNKS: u64 = 1 << 32;

/// The parsed header of a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupHeader {
    chunk_log2: u8,
    salt: [u8; SALT_LEN],
    key_check: [u8; KEY_CHECK_LEN],
}

fn key_check(root: &RootKey, salt: &[u8; SALT_LEN]) -> [u8; KEY_CHECK_LEN] {
    let mut out = [0u8; KEY_CHECK_LEN];
    hkdf_sha256(salt, root.expose(), b"E2EBK backup v1 key check", &mut out);
    out
}

impl BackupHeader {
    /// A header for a new backup under `root`, with a fresh random `salt`
    /// supplied by the caller.
    pub fn new(root: &RootKey, salt: [u8; SALT_LEN], chunk_log2: u8) -> Result<Self, BackupError> {
        if !(MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&chunk_log2) {
            return Err(BackupError::BadHeader("chunk size out of range"));
        }
        Ok(BackupHeader {
            chunk_log2,
            key_check: key_check(root, &salt),
            salt,
        })
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8] = FORMAT_VERSION;
        out[9] = self.chunk_log2;
        // out[10..12] reserved, zero.
        out[12..44].copy_from_slice(&self.salt);
        out[44..60].copy_from_slice(&self.key_check);
        out
    }

    /// Parses exactly [`HEADER_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, BackupError> {
        let mut r = Reader::new(bytes);
        let magic: [u8; 8] = r.array().map_err(|_| BackupError::Truncated)?;
        if magic != MAGIC {
            return Err(BackupError::BadMagic);
        }
        let version = r.u8().map_err(|_| BackupError::Truncated)?;
        if version != FORMAT_VERSION {
            return Err(BackupError::UnsupportedVersion(version));
        }
        let chunk_log2 = r.u8().map_err(|_| BackupError::Truncated)?;
        if !(MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&chunk_log2) {
            return Err(BackupError::BadHeader("chunk size out of range"));
        }
        let reserved = r.u16().map_err(|_| BackupError::Truncated)?;
        if reserved != 0 {
            return Err(BackupError::BadHeader("reserved bytes are not zero"));
        }
        let salt = r.array().map_err(|_| BackupError::Truncated)?;
        let key_check = r.array().map_err(|_| BackupError::Truncated)?;
        r.finish()
            .map_err(|_| BackupError::BadHeader("header too long"))?;
        Ok(BackupHeader {
            chunk_log2,
            salt,
            key_check,
        })
    }

    pub fn chunk_size(&self) -> usize {
        1usize << self.chunk_log2
    }

    /// Derives the chunk cipher, refusing a key whose check value does not
    /// match (so a wrong key is reported as such, not as corruption).
    pub fn cipher(&self, root: &RootKey) -> Result<ChunkCipher, BackupError> {
        let expected = key_check(root, &self.salt);
        if !bool::from(expected.ct_eq(&self.key_check)) {
            return Err(BackupError::WrongKey);
        }
        let mut data_key = Zeroizing::new([0u8; 32]);
        hkdf_sha256(
            &self.salt,
            root.expose(),
            b"E2EBK backup v1 data key",
            &mut data_key[..],
        );
        let unbound = UnboundKey::new(&AES_256_GCM, &data_key[..])
            .unwrap_or_else(|_| unreachable!("32-byte key for AES-256-GCM"));
        Ok(ChunkCipher {
            key: LessSafeKey::new(unbound),
            aad: self.encode(),
            chunk_size: self.chunk_size(),
        })
    }
}

/// Seals and opens individual chunks of one backup. `Send + Sync`.
pub struct ChunkCipher {
    key: LessSafeKey,
    aad: [u8; HEADER_LEN],
    chunk_size: usize,
}

impl std::fmt::Debug for ChunkCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCipher")
            .field("chunk_size", &self.chunk_size)
            .finish_non_exhaustive()
    }
}

fn nonce(index: u64, last: bool) -> Result<Nonce, BackupError> {
    let index = u32::try_from(index).map_err(|_| BackupError::TooManyChunks)?;
    let mut n = [0u8; 12];
    n[7..11].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    Ok(Nonce::assume_unique_for_key(n))
}

impl ChunkCipher {
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// The header bytes this cipher authenticates (write them first).
    pub fn header_bytes(&self) -> &[u8; HEADER_LEN] {
        &self.aad
    }

    /// Encrypts `buf` in place as chunk `index` and appends the tag. A
    /// non-final chunk must be exactly `chunk_size` bytes; a final one at
    /// most that.
    pub fn seal_chunk(&self, index: u64, last: bool, buf: &mut Vec<u8>) -> Result<(), BackupError> {
        let ok_len = if last {
            buf.len() <= self.chunk_size
        } else {
            buf.len() == self.chunk_size
        };
        if !ok_len {
            return Err(BackupError::BadHeader(
                "chunk length does not match the chunk size",
            ));
        }
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(index, last)?, Aad::from(&self.aad), buf)
            .map_err(|_| BackupError::TooManyChunks)?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Decrypts chunk `index` (ciphertext and tag) in place; on success
    /// `buf` holds the plaintext.
    pub fn open_chunk(&self, index: u64, last: bool, buf: &mut Vec<u8>) -> Result<(), BackupError> {
        let max = self.chunk_size + TAG_LEN;
        if buf.len() < TAG_LEN || buf.len() > max || (!last && buf.len() != max) {
            return Err(BackupError::Corrupt { chunk: index });
        }
        let n = self
            .key
            .open_in_place(nonce(index, last)?, Aad::from(&self.aad), buf)
            .map_err(|_| BackupError::Corrupt { chunk: index })?
            .len();
        buf.truncate(n);
        Ok(())
    }
}

/// Streams plaintext in, backup bytes out, one chunk at a time.
#[derive(Debug)]
pub struct BackupEncoder {
    cipher: ChunkCipher,
    pending: Vec<u8>,
    index: u64,
    header_written: bool,
}

impl BackupEncoder {
    pub fn new(root: &RootKey, salt: [u8; SALT_LEN], chunk_log2: u8) -> Result<Self, BackupError> {
        let header = BackupHeader::new(root, salt, chunk_log2)?;
        let cipher = header.cipher(root)?;
        Ok(BackupEncoder {
            pending: Vec::with_capacity(cipher.chunk_size() + TAG_LEN),
            cipher,
            index: 0,
            header_written: false,
        })
    }

    fn write_header(&mut self, out: &mut Vec<u8>) {
        if !self.header_written {
            out.extend_from_slice(self.cipher.header_bytes());
            self.header_written = true;
        }
    }

    /// Consumes `input`, appending the header and any completed chunks to
    /// `out`. A chunk is only emitted once more input proves it is not the
    /// last.
    pub fn update(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), BackupError> {
        self.write_header(out);
        let size = self.cipher.chunk_size();
        while !input.is_empty() {
            if self.pending.len() == size {
                let mut chunk =
                    std::mem::replace(&mut self.pending, Vec::with_capacity(size + TAG_LEN));
                self.cipher.seal_chunk(self.index, false, &mut chunk)?;
                self.index += 1;
                out.extend_from_slice(&chunk);
            }
            let take = (size - self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
        }
        Ok(())
    }

    /// Seals the final chunk.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), BackupError> {
        self.write_header(out);
        let mut chunk = std::mem::take(&mut self.pending);
        self.cipher.seal_chunk(self.index, true, &mut chunk)?;
        out.extend_from_slice(&chunk);
        Ok(())
    }
}

/// Streams backup bytes in, verified plaintext out. Plaintext is released
/// chunk by chunk; only [`BackupDecoder::finish`] proves the backup was
/// complete, so callers must not treat output as final before it returns.
#[derive(Debug)]
pub struct BackupDecoder {
    root: RootKey,
    header: Option<(BackupHeader, ChunkCipher)>,
    buf: Vec<u8>,
    index: u64,
}

impl BackupDecoder {
    pub fn new(root: &RootKey) -> Self {
        BackupDecoder {
            root: root.clone(),
            header: None,
            buf: Vec::new(),
            index: 0,
        }
    }

    /// The header, once it has been read.
    pub fn header(&self) -> Option<&BackupHeader> {
        self.header.as_ref().map(|(h, _)| h)
    }

    pub fn update(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), BackupError> {
        self.buf.extend_from_slice(input);
        if self.header.is_none() {
            if self.buf.len() < HEADER_LEN {
                // Reject a wrong file early, before buffering more of it.
                let n = self.buf.len().min(MAGIC.len());
                if self.buf[..n] != MAGIC[..n] {
                    return Err(BackupError::BadMagic);
                }
                return Ok(());
            }
            let header = BackupHeader::decode(&self.buf[..HEADER_LEN])?;
            let cipher = header.cipher(&self.root)?;
            self.buf.drain(..HEADER_LEN);
            self.header = Some((header, cipher));
        }
        let Some((_, cipher)) = &self.header else {
            return Ok(());
        };
        let sealed = cipher.chunk_size() + TAG_LEN;
        let mut consumed = 0;
        // A full-size chunk is non-final only if more bytes follow it.
        while self.buf.len() - consumed > sealed {
            let mut chunk = self.buf[consumed..consumed + sealed].to_vec();
            if let Err(e) = cipher.open_chunk(self.index, false, &mut chunk) {
                let mut as_final = self.buf[consumed..consumed + sealed].to_vec();
                if cipher.open_chunk(self.index, true, &mut as_final).is_ok() {
                    return Err(BackupError::TrailingData);
                }
                return Err(e);
            }
            out.extend_from_slice(&chunk);
            consumed += sealed;
            self.index += 1;
        }
        self.buf.drain(..consumed);
        Ok(())
    }

    /// Verifies the final chunk and appends its plaintext.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), BackupError> {
        let Some((_, cipher)) = self.header.take() else {
            let n = self.buf.len().min(MAGIC.len());
            if self.buf[..n] != MAGIC[..n] {
                return Err(BackupError::BadMagic);
            }
            return Err(BackupError::Truncated);
        };
        if self.buf.len() < TAG_LEN {
            return Err(BackupError::Truncated);
        }
        let mut last = std::mem::take(&mut self.buf);
        let copy = last.clone();
        match cipher.open_chunk(self.index, true, &mut last) {
            Ok(()) => {
                out.extend_from_slice(&last);
                Ok(())
            }
            Err(e) => {
                // A complete non-final chunk at the end means the stream was
                // cut at a chunk boundary.
                let mut again = copy;
                if cipher.open_chunk(self.index, false, &mut again).is_ok() {
                    Err(BackupError::Truncated)
                } else {
                    Err(e)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(b: u8) -> RootKey {
        RootKey::from_entropy([b; 30])
    }

    fn encrypt(root: &RootKey, salt: u8, data: &[u8], log2: u8, step: usize) -> Vec<u8> {
        let mut enc = BackupEncoder::new(root, [salt; 32], log2).unwrap();
        let mut out = Vec::new();
        for piece in data.chunks(step.max(1)) {
            enc.update(piece, &mut out).unwrap();
        }
        enc.finish(&mut out).unwrap();
        out
    }

    fn decrypt(root: &RootKey, backup: &[u8], step: usize) -> Result<Vec<u8>, BackupError> {
        let mut dec = BackupDecoder::new(root);
        let mut out = Vec::new();
        for piece in backup.chunks(step.max(1)) {
            dec.update(piece, &mut out)?;
        }
        dec.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trips_at_every_boundary() {
        let k = root(1);
        let cs = 1 << MIN_CHUNK_LOG2;
        for len in [0, 1, cs - 1, cs, cs + 1, 2 * cs, 3 * cs + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            for step in [1, 1000, cs, 100_000] {
                let b = encrypt(&k, 9, &data, MIN_CHUNK_LOG2, step);
                let chunks = if len == 0 { 1 } else { len.div_ceil(cs) };
                assert_eq!(b.len(), HEADER_LEN + len + chunks * TAG_LEN);
                assert_eq!(
                    decrypt(&k, &b, step).unwrap(),
                    data,
                    "len {len} step {step}"
                );
            }
        }
    }

    #[test]
    fn refuses_every_kind_of_damage() {
        let k = root(1);
        let cs = 1usize << MIN_CHUNK_LOG2;
        let data: Vec<u8> = (0..3 * cs + 100).map(|i| i as u8).collect();
        let b = encrypt(&k, 9, &data, MIN_CHUNK_LOG2, 5000);
        let sealed = cs + TAG_LEN;

        assert_eq!(decrypt(&root(2), &b, 999), Err(BackupError::WrongKey));

        // Truncation at a chunk boundary and mid-chunk.
        assert_eq!(
            decrypt(&k, &b[..HEADER_LEN + 2 * sealed], 999),
            Err(BackupError::Truncated)
        );
        assert!(decrypt(&k, &b[..b.len() - 1], 999).is_err());
        assert_eq!(
            decrypt(&k, &b[..HEADER_LEN], 999),
            Err(BackupError::Truncated)
        );
        assert_eq!(decrypt(&k, &b[..10], 999), Err(BackupError::Truncated));

        // One flipped bit anywhere in the body.
        for pos in [HEADER_LEN, HEADER_LEN + sealed + 5, b.len() - 1] {
            let mut t = b.clone();
            t[pos] ^= 0x80;
            assert!(
                matches!(decrypt(&k, &t, 999), Err(BackupError::Corrupt { .. })),
                "{pos}"
            );
        }

        // Header edits.
        let mut t = b.clone();
        t[0] ^= 1;
        assert_eq!(decrypt(&k, &t, 999), Err(BackupError::BadMagic));
        let mut t = b.clone();
        t[8] = 2;
        assert_eq!(
            decrypt(&k, &t, 999),
            Err(BackupError::UnsupportedVersion(2))
        );
        let mut t = b.clone();
        t[9] = 13;
        assert_eq!(decrypt(&k, &t, 999), Err(BackupError::Corrupt { chunk: 0 }));
        let mut t = b.clone();
        t[20] ^= 1; // salt
        assert_eq!(decrypt(&k, &t, 999), Err(BackupError::WrongKey));
        let mut t = b.clone();
        t[11] = 1;
        assert!(matches!(
            decrypt(&k, &t, 999),
            Err(BackupError::BadHeader(_))
        ));

        // Reordered chunks.
        let mut t = b.clone();
        let (c0, c1) = (HEADER_LEN, HEADER_LEN + sealed);
        let first: Vec<u8> = t[c0..c0 + sealed].to_vec();
        let second: Vec<u8> = t[c1..c1 + sealed].to_vec();
        t[c0..c0 + sealed].copy_from_slice(&second);
        t[c1..c1 + sealed].copy_from_slice(&first);
        assert_eq!(decrypt(&k, &t, 999), Err(BackupError::Corrupt { chunk: 0 }));

        // A chunk from another backup under the same key.
        let other = encrypt(&k, 10, &data, MIN_CHUNK_LOG2, 5000);
        let mut t = b.clone();
        t[c1..c1 + sealed].copy_from_slice(&other[c1..c1 + sealed]);
        assert_eq!(decrypt(&k, &t, 999), Err(BackupError::Corrupt { chunk: 1 }));

        // Data appended after a full-size final chunk.
        let exact: Vec<u8> = vec![7u8; 2 * cs];
        let b2 = encrypt(&k, 9, &exact, MIN_CHUNK_LOG2, 5000);
        let mut t = b2.clone();
        t.extend_from_slice(&[0u8; 40]);
        assert_eq!(decrypt(&k, &t, 999), Err(BackupError::TrailingData));
        // Appended to a short final chunk: still refused.
        let mut t = b.clone();
        t.push(0);
        assert!(decrypt(&k, &t, 999).is_err());

        // Not a backup at all.
        assert_eq!(
            decrypt(&k, b"PK\x03\x04 zip file", 3),
            Err(BackupError::BadMagic)
        );
    }

    #[test]
    fn chunk_sizes_are_bounded() {
        let k = root(1);
        assert!(BackupHeader::new(&k, [0; 32], 11).is_err());
        assert!(BackupHeader::new(&k, [0; 32], 25).is_err());
        assert!(BackupHeader::new(&k, [0; 32], 24).is_ok());
    }
}
