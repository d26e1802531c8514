//! HKDF-SHA256 (RFC 5869), the one KDF the protocol uses outside OPAQUE.

use ring::hkdf;

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256 extract-then-expand of `ikm` with `salt` and `info` into
/// `out` (at most 255 * 32 bytes; callers use 16 or 32).
pub(crate) fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let info = [info];
    let okm = prk
        .expand(&info, Len(out.len()))
        .unwrap_or_else(|_| unreachable!("output lengths are constants well under the limit"));
    okm.fill(out)
        .unwrap_or_else(|_| unreachable!("fill length equals the requested length"));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5869 appendix A, test case 1.
    #[test]
    fn rfc5869_case_1() {
        let ikm = [0x0bu8; 22];
        let salt = hex::decode("000102030405060708090a0b0c").unwrap();
        let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
        let mut okm = [0u8; 42];
        hkdf_sha256(&salt, &ikm, &info, &mut okm);
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }
}
