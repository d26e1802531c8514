//! Identifiers that cross the wire, validated at construction so the rest of
//! the code never sees an invalid one.

use std::fmt;

use crate::limits::{MAX_ACCOUNT_ID, MAX_ENROLMENT_CODE, MAX_NAME};
use crate::Error;

/// An account: 1 to 64 bytes of `[A-Za-z0-9+._@-]` (phone numbers in E.164
/// form, e-mail-like names and opaque ids all fit). Compared byte for byte.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(String);

impl AccountId {
    pub fn new(s: impl Into<String>) -> Result<Self, Error> {
        let s = s.into();
        if s.is_empty() {
            return Err(Error::InvalidField {
                field: "account_id",
                reason: "empty",
            });
        }
        if s.len() > MAX_ACCOUNT_ID {
            return Err(Error::InvalidField {
                field: "account_id",
                reason: "longer than 64 bytes",
            });
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+._@-".contains(&b))
        {
            return Err(Error::InvalidField {
                field: "account_id",
                reason: "only A-Z a-z 0-9 + . _ @ - are allowed",
            });
        }
        Ok(AccountId(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// `len(id) as u8 || id`, the unambiguous form used inside prologues,
    /// associated data and credential identifiers.
    pub fn length_prefixed(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.0.len());
        out.push(self.0.len() as u8);
        out.extend_from_slice(self.0.as_bytes());
        out
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({})", self.0)
    }
}

impl std::str::FromStr for AccountId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        AccountId::new(s)
    }
}

/// A tunnel on one client connection (channel 1), chosen by the client:
/// at least 1 and strictly increasing on the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelId(pub u32);

impl TunnelId {
    pub fn new(v: u32) -> Result<Self, Error> {
        if v == 0 {
            return Err(Error::InvalidField {
                field: "tunnel_id",
                reason: "must be at least 1",
            });
        }
        Ok(TunnelId(v))
    }
}

impl fmt::Display for TunnelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A tunnel on one chatd-vault link (channel 2), chosen by chatd: at least
/// 1 and never reused on the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkTunnelId(pub u64);

impl LinkTunnelId {
    pub fn new(v: u64) -> Result<Self, Error> {
        if v == 0 {
            return Err(Error::InvalidField {
                field: "tunnel_id",
                reason: "must be at least 1",
            });
        }
        Ok(LinkTunnelId(v))
    }
}

impl fmt::Display for LinkTunnelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Short informational text (software names, instance and replica names,
/// fleet ids): at most 64 bytes of printable ASCII.
pub(crate) fn check_name(field: &'static str, s: &str, max: usize) -> Result<(), Error> {
    if s.len() > max {
        return Err(Error::InvalidField {
            field,
            reason: "too long",
        });
    }
    if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Error::InvalidField {
            field,
            reason: "must be printable ASCII",
        });
    }
    Ok(())
}

/// The vault fleet's identity, bound into OPAQUE as the server identity.
/// 1 to 64 bytes of printable ASCII, fixed when the fleet is initialised.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FleetId(String);

impl FleetId {
    pub fn new(s: impl Into<String>) -> Result<Self, Error> {
        let s = s.into();
        if s.is_empty() {
            return Err(Error::InvalidField {
                field: "fleet_id",
                reason: "empty",
            });
        }
        check_name("fleet_id", &s, MAX_NAME)?;
        Ok(FleetId(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FleetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for FleetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FleetId({})", self.0)
    }
}

/// A one-time enrolment code as typed. Treated as a secret: it prints as
/// `[redacted]` and is stored only hashed by chatd.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrolmentCode(String);

impl EnrolmentCode {
    pub fn new(s: impl Into<String>) -> Result<Self, Error> {
        let s = s.into();
        if s.is_empty() {
            return Err(Error::InvalidField {
                field: "enrolment_code",
                reason: "empty",
            });
        }
        check_name("enrolment_code", &s, MAX_ENROLMENT_CODE)?;
        Ok(EnrolmentCode(s))
    }

    /// The code with spaces and dashes removed and letters upper-cased, the
    /// form chatd hashes. People may type codes in groups.
    pub fn normalized(&self) -> String {
        self.0
            .chars()
            .filter(|c| *c != ' ' && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect()
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EnrolmentCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnrolmentCode([redacted])")
    }
}

impl Drop for EnrolmentCode {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids() {
        assert!(AccountId::new("+15551234567").is_ok());
        assert!(AccountId::new("alice@example.org").is_ok());
        assert!(AccountId::new("").is_err());
        assert!(AccountId::new("a".repeat(64)).is_ok());
        assert!(AccountId::new("a".repeat(65)).is_err());
        assert!(AccountId::new("bad id").is_err());
        assert!(AccountId::new("é").is_err());
        assert_eq!(
            AccountId::new("ab").unwrap().length_prefixed(),
            vec![2, b'a', b'b']
        );
    }

    #[test]
    fn enrolment_code_is_redacted_and_normalized() {
        let c = EnrolmentCode::new("abcd-efgh ijkl").unwrap();
        assert_eq!(format!("{c:?}"), "EnrolmentCode([redacted])");
        assert_eq!(c.normalized(), "ABCDEFGHIJKL");
    }

    #[test]
    fn tunnel_ids_start_at_one() {
        assert!(TunnelId::new(0).is_err());
        assert!(LinkTunnelId::new(0).is_err());
        assert_eq!(TunnelId::new(7).unwrap().0, 7);
    }
}
