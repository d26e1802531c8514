//! Who gets in (SPEC.md 4.1 to 4.3): the checks before the WebSocket
//! upgrade, and what each outcome of the Noise_IK handshake and the
//! directory lookup means, as close codes. Pure decisions;
//! [`crate::conn`] does the IO around them.

use protocol_spec::codes::CloseCode;
use protocol_spec::ids::EnrolmentCode;
use protocol_spec::Error as ProtocolError;

use crate::directory::{DeviceStatus, Enrolment};

/// The WebSocket path of protocol version 1.
pub const PATH: &str = "/v1/connect";

/// Why an upgrade is refused, as the HTTP answer says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub retry_after_secs: Option<u32>,
    pub body: &'static str,
}

/// The checks before the upgrade: the path, draining, the per-address
/// handshake budget (in that order).
pub fn check_upgrade(path: &str, draining: bool, address_allowed: bool) -> Result<(), Refusal> {
    if path != PATH {
        return Err(Refusal {
            status: 404,
            retry_after_secs: None,
            body: "unknown path; use /v1/connect\n",
        });
    }
    if draining {
        return Err(Refusal {
            status: 503,
            retry_after_secs: Some(5),
            body: "draining; reconnect\n",
        });
    }
    if !address_allowed {
        return Err(Refusal {
            status: 429,
            retry_after_secs: Some(1),
            body: "too many connections from your address\n",
        });
    }
    Ok(())
}

/// The close code for a first handshake message that did not verify.
pub fn handshake_refusal(e: &ProtocolError) -> CloseCode {
    match e {
        ProtocolError::UnsupportedVersion(_) => CloseCode::UnsupportedVersion,
        ProtocolError::TooLarge { .. } => CloseCode::FrameTooLarge,
        _ => CloseCode::HandshakeFailed,
    }
}

/// What to do with a device, given what the directory says about it.
#[derive(Debug, PartialEq, Eq)]
pub enum DeviceDecision {
    /// Enrolled already: admit.
    Admit,
    /// Unknown, with a code: try to enrol it with the code.
    Enrol(EnrolmentCode),
    Refuse(CloseCode),
}

/// Decides on a device from its directory status and the code its hello
/// carried. A directory failure refuses (the client may retry).
pub fn device_decision<E: std::fmt::Display>(
    status: Result<DeviceStatus, E>,
    code: Option<EnrolmentCode>,
) -> DeviceDecision {
    match status {
        Ok(DeviceStatus::Enrolled) => DeviceDecision::Admit,
        Ok(DeviceStatus::Revoked) => DeviceDecision::Refuse(CloseCode::DeviceRevoked),
        Ok(DeviceStatus::Unknown) => match code {
            None => DeviceDecision::Refuse(CloseCode::NotEnrolled),
            Some(code) => DeviceDecision::Enrol(code),
        },
        Err(e) => {
            tracing::error!(error = %e, "directory lookup failed");
            DeviceDecision::Refuse(CloseCode::InternalError)
        }
    }
}

/// Whether an enrolment attempt admits the device.
pub fn enrolment_decision<E: std::fmt::Display>(
    outcome: Result<Enrolment, E>,
) -> Result<(), CloseCode> {
    match outcome {
        Ok(Enrolment::Enrolled) => Ok(()),
        Ok(Enrolment::Rejected) => Err(CloseCode::EnrolmentRejected),
        Ok(Enrolment::DeviceRevoked) => Err(CloseCode::DeviceRevoked),
        Err(e) => {
            tracing::error!(error = %e, "directory failed during enrolment");
            Err(CloseCode::InternalError)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn upgrades_are_checked_path_first() {
        assert_eq!(check_upgrade("/v1/connect", false, true), Ok(()));
        assert_eq!(check_upgrade("/", true, false).unwrap_err().status, 404);
        assert_eq!(check_upgrade(PATH, true, false).unwrap_err().status, 503);
        assert_eq!(check_upgrade(PATH, false, false).unwrap_err().status, 429);
    }

    #[test]
    fn devices_are_admitted_enrolled_or_refused() {
        let code = || Some(EnrolmentCode::new("ABCD").unwrap());
        let ok = |s| Ok::<_, &str>(s);
        assert_eq!(
            device_decision(ok(DeviceStatus::Enrolled), code()),
            DeviceDecision::Admit
        );
        assert_eq!(
            device_decision(ok(DeviceStatus::Revoked), code()),
            DeviceDecision::Refuse(CloseCode::DeviceRevoked)
        );
        assert_eq!(
            device_decision(ok(DeviceStatus::Unknown), None),
            DeviceDecision::Refuse(CloseCode::NotEnrolled)
        );
        assert!(matches!(
            device_decision(ok(DeviceStatus::Unknown), code()),
            DeviceDecision::Enrol(_)
        ));
        assert_eq!(
            device_decision(Err::<DeviceStatus, _>("disk"), None),
            DeviceDecision::Refuse(CloseCode::InternalError)
        );
        assert_eq!(
            enrolment_decision(Ok::<_, &str>(Enrolment::Enrolled)),
            Ok(())
        );
        assert_eq!(
            enrolment_decision(Ok::<_, &str>(Enrolment::Rejected)),
            Err(CloseCode::EnrolmentRejected)
        );
        assert_eq!(
            enrolment_decision(Ok::<_, &str>(Enrolment::DeviceRevoked)),
            Err(CloseCode::DeviceRevoked)
        );
    }

    #[test]
    fn a_bad_first_message_gets_its_code() {
        assert_eq!(
            handshake_refusal(&ProtocolError::UnsupportedVersion(9)),
            CloseCode::UnsupportedVersion
        );
        assert_eq!(
            handshake_refusal(&ProtocolError::Handshake),
            CloseCode::HandshakeFailed
        );
    }
}
