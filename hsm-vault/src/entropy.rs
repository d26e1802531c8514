//! Randomness, as the vault core sees it.

use rand_core::{CryptoRng, RngCore};

use crate::Error;

/// A source of cryptographically secure random bytes.
pub trait Entropy: Send + Sync {
    fn fill(&self, buf: &mut [u8]) -> Result<(), Error>;
}

/// The operating system's CSPRNG (getrandom).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&self, buf: &mut [u8]) -> Result<(), Error> {
        getrandom::fill(buf).map_err(|e| Error::Entropy(e.to_string()))
    }
}

/// Adapts an [`Entropy`] to the `rand_core` 0.6 traits opaque-ke takes.
/// Every draw is exactly one `fill` of the requested length, so a caller
/// that replays an entropy stream (the login benchmark) gets the vault's
/// very draws.
pub struct RngAdapter<'a>(pub &'a dyn Entropy);

impl std::fmt::Debug for RngAdapter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RngAdapter")
    }
}

impl RngCore for RngAdapter<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        // opaque-ke cannot handle a failing RNG; an OS RNG failure is not
        // something the vault can continue through.
        if let Err(e) = self.0.fill(dest) {
            panic!("random number generator failed: {e}");
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for RngAdapter<'_> {}

/// Deterministic entropy from a seed: unit tests, fuzzing and benchmarks
/// only (the login benchmark rewinds it to replay the vault's KE2).
#[cfg(feature = "test-hooks")]
#[derive(Debug)]
pub struct SeededEntropy(parking_lot::Mutex<rand_chacha::ChaCha20Rng>);

#[cfg(feature = "test-hooks")]
impl SeededEntropy {
    pub fn new(seed: u64) -> Self {
        use rand_core::SeedableRng;
        SeededEntropy(parking_lot::Mutex::new(
            rand_chacha::ChaCha20Rng::seed_from_u64(seed),
        ))
    }

    /// Restarts the stream at `seed`.
    pub fn reseed(&self, seed: u64) {
        use rand_core::SeedableRng;
        *self.0.lock() = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    }
}

#[cfg(feature = "test-hooks")]
impl Entropy for SeededEntropy {
    fn fill(&self, buf: &mut [u8]) -> Result<(), Error> {
        self.0.lock().fill_bytes(buf);
        Ok(())
    }
}
