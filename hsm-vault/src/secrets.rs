//! The fleet's long-term secrets, which every replica shares: the OPAQUE
//! server setup (OPRF seed and server key pair), the fleet tunnel key that
//! clients pin, the link key chatd talks to, and the key replicas use
//! between themselves.
//!
//! They exist on disk only sealed by the HSM master key, in
//! `<data_dir>/fleet.sealed`:
//!
//! ```text
//! magic "E2EBK-FLEET\0" (12) || format u8 = 1 || sealed(aad = magic || format, body)
//! body = lp(fleet_id) || u16be(len) || opaque server setup || tunnel key (32) || link key (32) || peer key (32)
//! ```
//!
//! Because the file is sealed, copying it to another replica is safe; only a
//! token holding the same master key (see the key ceremony) can open it.

use std::fmt;
use std::path::Path;

use opaque_ke::ServerSetup;
use protocol_spec::frame::Reader;
use protocol_spec::ids::FleetId;
use protocol_spec::keys::{PublicKey, StaticSecret};
use protocol_spec::opaque::Suite;
use zeroize::Zeroizing;

use crate::entropy::{Entropy, RngAdapter};
use crate::seal::{draw_iv, Sealer};
use crate::Error;

const MAGIC: &[u8; 12] = b"E2EBK-FLEET\0";
const FORMAT: u8 = 1;

/// The unsealed fleet secrets. `Debug` prints only public parts.
pub struct FleetSecrets {
    pub fleet_id: FleetId,
    pub opaque_setup: ServerSetup<Suite>,
    /// Noise_NK responder key of channel 3; clients pin its public half.
    pub tunnel_key: StaticSecret,
    /// Noise_KK responder key of channel 2; chatd is configured with its
    /// public half.
    pub link_key: StaticSecret,
    /// Noise_KK key between replicas.
    pub peer_key: StaticSecret,
}

/// What may be shown: ids, public keys, fingerprints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetPublic {
    pub fleet_id: FleetId,
    pub tunnel_key: PublicKey,
    pub link_key: PublicKey,
    pub peer_key: PublicKey,
}

impl fmt::Debug for FleetSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetSecrets")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

fn random_key(entropy: &dyn Entropy) -> Result<StaticSecret, Error> {
    let mut b = Zeroizing::new([0u8; 32]);
    entropy.fill(&mut b[..])?;
    Ok(StaticSecret::from_bytes(*b))
}

impl FleetSecrets {
    /// Fresh secrets for a new fleet.
    pub fn generate(fleet_id: FleetId, entropy: &dyn Entropy) -> Result<Self, Error> {
        Ok(FleetSecrets {
            fleet_id,
            opaque_setup: ServerSetup::<Suite>::new(&mut RngAdapter(entropy)),
            tunnel_key: random_key(entropy)?,
            link_key: random_key(entropy)?,
            peer_key: random_key(entropy)?,
        })
    }

    pub fn public(&self) -> FleetPublic {
        FleetPublic {
            fleet_id: self.fleet_id.clone(),
            tunnel_key: self.tunnel_key.public_key(),
            link_key: self.link_key.public_key(),
            peer_key: self.peer_key.public_key(),
        }
    }

    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let setup = Zeroizing::new(self.opaque_setup.serialize().to_vec());
        let id = self.fleet_id.as_str().as_bytes();
        let mut out = Zeroizing::new(Vec::with_capacity(1 + id.len() + 2 + setup.len() + 96));
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&(setup.len() as u16).to_be_bytes());
        out.extend_from_slice(&setup);
        out.extend_from_slice(self.tunnel_key.expose_secret());
        out.extend_from_slice(self.link_key.expose_secret());
        out.extend_from_slice(self.peer_key.expose_secret());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let corrupt = |_| Error::Corrupt("fleet secrets");
        let mut r = Reader::new(bytes);
        let id_len = r.u8().map_err(corrupt)? as usize;
        let id = std::str::from_utf8(r.take(id_len).map_err(corrupt)?)
            .map_err(|_| Error::Corrupt("fleet id"))?;
        let fleet_id = FleetId::new(id).map_err(|_| Error::Corrupt("fleet id"))?;
        let setup_len = r.u16().map_err(corrupt)? as usize;
        let opaque_setup = ServerSetup::<Suite>::deserialize(r.take(setup_len).map_err(corrupt)?)
            .map_err(|_| Error::Corrupt("opaque server setup"))?;
        let mut key = || -> Result<StaticSecret, Error> {
            let b = Zeroizing::new(r.array::<32>().map_err(corrupt)?);
            Ok(StaticSecret::from_bytes(*b))
        };
        let tunnel_key = key()?;
        let link_key = key()?;
        let peer_key = key()?;
        r.finish().map_err(corrupt)?;
        Ok(FleetSecrets {
            fleet_id,
            opaque_setup,
            tunnel_key,
            link_key,
            peer_key,
        })
    }

    fn aad() -> Vec<u8> {
        let mut aad = MAGIC.to_vec();
        aad.push(FORMAT);
        aad
    }

    /// The sealed file's bytes, with an IV from `entropy`.
    pub fn seal(&self, sealer: &dyn Sealer, entropy: &dyn Entropy) -> Result<Vec<u8>, Error> {
        let sealed = sealer.seal(&Self::aad(), draw_iv(entropy)?, &self.encode())?;
        let mut out = MAGIC.to_vec();
        out.push(FORMAT);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Seals the secrets and writes them to `path` atomically (temporary
    /// file, fsync, rename), owner-only permissions. Refuses to overwrite.
    pub fn seal_to_file(
        &self,
        sealer: &dyn Sealer,
        entropy: &dyn Entropy,
        path: &Path,
    ) -> Result<(), Error> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if path.exists() {
            return Err(Error::FleetSecrets {
                path: path.to_path_buf(),
                reason: "already exists; refusing to overwrite fleet secrets".into(),
            });
        }
        let out = self.seal(sealer, entropy)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let tmp = path.with_extension("sealed.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        f.write_all(&out).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        if let Some(dir) = path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Reads and unseals `path`.
    pub fn unseal_from_file(sealer: &dyn Sealer, path: &Path) -> Result<Self, Error> {
        let bad = |reason: &str| Error::FleetSecrets {
            path: path.to_path_buf(),
            reason: reason.to_owned(),
        };
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                bad("not found; run `hsm-vault init` on the first replica and copy the file to the others")
            }
            _ => bad(&format!("cannot read: {e}")),
        })?;
        Self::unseal(sealer, &bytes).map_err(|e| match e {
            Error::FleetSecrets { reason, .. } => bad(&reason),
            other => other,
        })
    }

    /// Unseals the bytes of a fleet secrets file. Errors about the file
    /// itself name no path; [`FleetSecrets::unseal_from_file`] adds it.
    pub fn unseal(sealer: &dyn Sealer, bytes: &[u8]) -> Result<Self, Error> {
        let bad = |reason: &str| Error::FleetSecrets {
            path: std::path::PathBuf::new(),
            reason: reason.to_owned(),
        };
        if bytes.len() < MAGIC.len() + 1 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(bad("not an E2EBK fleet secrets file"));
        }
        if bytes[MAGIC.len()] != FORMAT {
            return Err(bad("unknown format version"));
        }
        let plain = match sealer.unseal(&Self::aad(), &bytes[MAGIC.len() + 1..]) {
            Ok(p) => p,
            Err(Error::Integrity) => return Err(bad(
                "does not open with this token's master key (altered, or sealed by another fleet)",
            )),
            Err(e) => return Err(e),
        };
        Self::decode(&plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::{OsEntropy, SeededEntropy};
    use crate::seal::SoftSealer;

    #[test]
    fn sealed_file_round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.sealed");
        let s = SoftSealer::new([1; 32]);
        let secrets =
            FleetSecrets::generate(FleetId::new("f1").unwrap(), &SeededEntropy::new(1)).unwrap();
        secrets.seal_to_file(&s, &OsEntropy, &path).unwrap();
        let again = FleetSecrets::unseal_from_file(&s, &path).unwrap();
        assert_eq!(again.public(), secrets.public());
        assert_eq!(
            again.opaque_setup.serialize(),
            secrets.opaque_setup.serialize()
        );
        // Never in plaintext on disk.
        let raw = std::fs::read(&path).unwrap();
        for k in [&secrets.tunnel_key, &secrets.link_key, &secrets.peer_key] {
            assert!(!raw.windows(32).any(|w| w == k.expose_secret()));
        }
        assert!(
            secrets.seal_to_file(&s, &OsEntropy, &path).is_err(),
            "must not overwrite"
        );
        let other = SoftSealer::new([2; 32]);
        let e = FleetSecrets::unseal_from_file(&other, &path).unwrap_err();
        assert!(e.to_string().contains("another fleet"), "{e}");
        assert!(!format!("{secrets:?}").contains(&hex::encode(secrets.tunnel_key.expose_secret())));
    }
}
