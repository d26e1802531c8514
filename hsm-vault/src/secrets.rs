//! The fleet's long-term secrets and parameters, which every replica
//! shares: the OPAQUE server setup (OPRF seed and server key pair), the
//! fleet tunnel key that clients pin, the link key chatd talks to, the key
//! replicas use between themselves, the control key operators talk to, and
//! the parameters the attempt rule depends on ([`FleetParams`]), fixed at
//! `init` so that no replica's configuration can change them.
//!
//! They exist on disk only sealed by the HSM master key, in
//! `<data_dir>/fleet.sealed`:
//!
//! ```text
//! magic "E2EBK-FLEET\0" (12) || format u8 = 2 || sealed(aad = magic || format, body)
//! body = lp(fleet_id) || u16be(len) || opaque server setup
//!        || tunnel key (32) || link key (32) || peer key (32) || control key (32)
//!        || params: max_attempts u32be
//! ```
//!
//! Format 1 (no control key, no parameters) is recognised and refused with
//! the command that upgrades it ([`FleetSecrets::upgrade_v1`]).
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
const FORMAT: u8 = 2;
const FORMAT_V1: u8 = 1;

/// Most `max_attempts` a fleet may be initialised with.
pub const MAX_ATTEMPTS_LIMIT: u32 = 1000;

/// The parameters the attempt rule depends on: sealed with the secrets, so
/// every replica holding this `fleet.sealed` applies the same rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetParams {
    /// Consecutive failed logins after which an escrow is erased.
    pub max_attempts: u32,
}

impl FleetParams {
    pub fn new(max_attempts: u32) -> Result<Self, Error> {
        if max_attempts == 0 || max_attempts > MAX_ATTEMPTS_LIMIT {
            return Err(Error::FleetParams(format!(
                "max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, not {max_attempts}"
            )));
        }
        Ok(FleetParams { max_attempts })
    }
}

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
    /// Noise_KK responder key of the control channel; operators' tools pin
    /// its public half.
    pub control_key: StaticSecret,
    pub params: FleetParams,
}

/// What may be shown: ids, public keys, fingerprints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetPublic {
    pub fleet_id: FleetId,
    pub tunnel_key: PublicKey,
    pub link_key: PublicKey,
    pub peer_key: PublicKey,
    pub control_key: PublicKey,
    pub params: FleetParams,
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
    pub fn generate(
        fleet_id: FleetId,
        params: FleetParams,
        entropy: &dyn Entropy,
    ) -> Result<Self, Error> {
        Ok(FleetSecrets {
            fleet_id,
            opaque_setup: ServerSetup::<Suite>::new(&mut RngAdapter(entropy)),
            tunnel_key: random_key(entropy)?,
            link_key: random_key(entropy)?,
            peer_key: random_key(entropy)?,
            control_key: random_key(entropy)?,
            params,
        })
    }

    pub fn public(&self) -> FleetPublic {
        FleetPublic {
            fleet_id: self.fleet_id.clone(),
            tunnel_key: self.tunnel_key.public_key(),
            link_key: self.link_key.public_key(),
            peer_key: self.peer_key.public_key(),
            control_key: self.control_key.public_key(),
            params: self.params,
        }
    }

    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let setup = Zeroizing::new(self.opaque_setup.serialize().to_vec());
        let id = self.fleet_id.as_str().as_bytes();
        let mut out = Zeroizing::new(Vec::with_capacity(1 + id.len() + 2 + setup.len() + 132));
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&(setup.len() as u16).to_be_bytes());
        out.extend_from_slice(&setup);
        out.extend_from_slice(self.tunnel_key.expose_secret());
        out.extend_from_slice(self.link_key.expose_secret());
        out.extend_from_slice(self.peer_key.expose_secret());
        out.extend_from_slice(self.control_key.expose_secret());
        out.extend_from_slice(&self.params.max_attempts.to_be_bytes());
        out
    }

    /// Decodes a body of `format`. A format 1 body has no control key and
    /// no parameters: `upgrade` supplies them (else it is refused).
    fn decode(
        bytes: &[u8],
        format: u8,
        upgrade: Option<(FleetParams, &dyn Entropy)>,
    ) -> Result<Self, Error> {
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
        let (control_key, params) = match (format, upgrade) {
            (FORMAT, _) => {
                let control_key = key()?;
                let max_attempts = r.u32().map_err(corrupt)?;
                let params = FleetParams::new(max_attempts)
                    .map_err(|_| Error::Corrupt("fleet parameters"))?;
                (control_key, params)
            }
            (_, Some((params, entropy))) => (random_key(entropy)?, params),
            (_, None) => return Err(Error::FleetSecrets {
                path: std::path::PathBuf::new(),
                reason: "was made by an older build (format 1: the fleet's max_attempts is not \
                         sealed in it); run `hsm-vault keys upgrade-fleet --max-attempts N` on one \
                         replica (N as the fleet has used), then copy its fleet.sealed to the others"
                    .into(),
            }),
        };
        r.finish().map_err(corrupt)?;
        Ok(FleetSecrets {
            fleet_id,
            opaque_setup,
            tunnel_key,
            link_key,
            peer_key,
            control_key,
            params,
        })
    }

    fn aad() -> Vec<u8> {
        Self::aad_for(FORMAT)
    }

    fn aad_for(format: u8) -> Vec<u8> {
        let mut aad = MAGIC.to_vec();
        aad.push(format);
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
        if path.exists() {
            return Err(Error::FleetSecrets {
                path: path.to_path_buf(),
                reason: "already exists; refusing to overwrite fleet secrets".into(),
            });
        }
        let out = self.seal(sealer, entropy)?;
        write_atomically(path, &out)
    }

    /// Replaces the file at `path` with these secrets, keeping the old one
    /// as `<path>.old` (for `keys upgrade-fleet`).
    pub fn reseal_file(
        &self,
        sealer: &dyn Sealer,
        entropy: &dyn Entropy,
        path: &Path,
    ) -> Result<(), Error> {
        let out = self.seal(sealer, entropy)?;
        let old = path.with_extension("sealed.old");
        std::fs::copy(path, &old).map_err(|e| Error::io(&old, e))?;
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
        write_atomically(path, &out)
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
        Self::unseal_format(sealer, bytes, None)
    }

    /// Opens a format 1 file and gives it what format 2 adds: a new control
    /// key and `params`. The caller seals the result as the new file.
    pub fn upgrade_v1(
        sealer: &dyn Sealer,
        bytes: &[u8],
        params: FleetParams,
        entropy: &dyn Entropy,
    ) -> Result<Self, Error> {
        if bytes.get(MAGIC.len()) != Some(&FORMAT_V1) {
            return Err(Error::FleetSecrets {
                path: std::path::PathBuf::new(),
                reason: "is not a format 1 file; nothing to upgrade".into(),
            });
        }
        Self::unseal_format(sealer, bytes, Some((params, entropy)))
    }

    fn unseal_format(
        sealer: &dyn Sealer,
        bytes: &[u8],
        upgrade: Option<(FleetParams, &dyn Entropy)>,
    ) -> Result<Self, Error> {
        let bad = |reason: &str| Error::FleetSecrets {
            path: std::path::PathBuf::new(),
            reason: reason.to_owned(),
        };
        if bytes.len() < MAGIC.len() + 1 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(bad("not an E2EBK fleet secrets file"));
        }
        let format = bytes[MAGIC.len()];
        if format != FORMAT && format != FORMAT_V1 {
            return Err(bad("unknown format version"));
        }
        let plain = match sealer.unseal(&Self::aad_for(format), &bytes[MAGIC.len() + 1..]) {
            Ok(p) => p,
            Err(Error::Integrity) => return Err(bad(
                "does not open with this token's master key (altered, or sealed by another fleet)",
            )),
            Err(e) => return Err(e),
        };
        Self::decode(&plain, format, upgrade)
    }
}

/// Writes `out` to `path` through a temporary file (fsync, rename, fsync
/// of the folder), owner-only, refusing to overwrite.
fn write_atomically(path: &Path, out: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
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
    f.write_all(out).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
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
        let secrets = FleetSecrets::generate(
            FleetId::new("f1").unwrap(),
            FleetParams::new(7).unwrap(),
            &SeededEntropy::new(1),
        )
        .unwrap();
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

    #[test]
    fn max_attempts_is_sealed_and_a_format_1_file_is_refused_until_upgraded() {
        let s = SoftSealer::new([1; 32]);
        let secrets = FleetSecrets::generate(
            FleetId::new("f1").unwrap(),
            FleetParams::new(7).unwrap(),
            &SeededEntropy::new(1),
        )
        .unwrap();
        let sealed = secrets.seal(&s, &OsEntropy).unwrap();
        let again = FleetSecrets::unseal(&s, &sealed).unwrap();
        assert_eq!(again.params, FleetParams::new(7).unwrap());
        assert_eq!(again.public(), secrets.public());
        // A format 1 file: the body without the control key and the
        // parameters, sealed under format 1's associated data.
        let body = secrets.encode();
        let v1_body = &body[..body.len() - 36];
        let mut v1 = MAGIC.to_vec();
        v1.push(FORMAT_V1);
        v1.extend(
            s.seal(
                &FleetSecrets::aad_for(FORMAT_V1),
                crate::seal::random_iv().unwrap(),
                v1_body,
            )
            .unwrap(),
        );
        let e = FleetSecrets::unseal(&s, &v1).unwrap_err().to_string();
        assert!(e.contains("keys upgrade-fleet --max-attempts"), "{e}");
        let up =
            FleetSecrets::upgrade_v1(&s, &v1, FleetParams::new(10).unwrap(), &OsEntropy).unwrap();
        assert_eq!(up.params.max_attempts, 10);
        assert_eq!(up.tunnel_key.public_key(), secrets.tunnel_key.public_key());
        let resealed = up.seal(&s, &OsEntropy).unwrap();
        assert_eq!(
            FleetSecrets::unseal(&s, &resealed)
                .unwrap()
                .params
                .max_attempts,
            10
        );
        assert!(
            FleetSecrets::upgrade_v1(&s, &resealed, FleetParams::new(3).unwrap(), &OsEntropy)
                .is_err()
        );
        assert!(FleetParams::new(0).is_err() && FleetParams::new(1001).is_err());
    }
}
