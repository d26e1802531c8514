//! The closed tables of codes that reach clients (SPEC.md section 9). Each
//! code has a static reason and says whether retrying can help; nothing else
//! about an internal failure ever crosses the wire.

macro_rules! code_table {
    (
        $(#[$meta:meta])*
        $name:ident : $repr:ty {
            $( $variant:ident = $value:literal, $label:literal, $retry:literal, $reason:literal; )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( #[doc = $reason] $variant, )+
        }

        impl $name {
            /// Every code, in table order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];

            pub fn value(self) -> $repr {
                match self { $( $name::$variant => $value, )+ }
            }

            pub fn from_value(v: $repr) -> Option<Self> {
                match v { $( $value => Some($name::$variant), )+ _ => None }
            }

            /// Static, human-readable reason (the WebSocket close reason).
            pub fn reason(self) -> &'static str {
                match self { $( $name::$variant => $reason, )+ }
            }

            /// Stable snake_case label for metrics and logs.
            pub fn label(self) -> &'static str {
                match self { $( $name::$variant => $label, )+ }
            }

            /// Whether the same request may succeed if retried later, on a
            /// new connection or tunnel.
            pub fn retryable(self) -> bool {
                match self { $( $name::$variant => $retry, )+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{} ({})", self.reason(), self.value())
            }
        }
    };
}

code_table! {
    /// WebSocket close codes chatd sends on channel 1.
    CloseCode: u16 {
        Normal = 1000, "normal", false, "closed normally";
        GoingAway = 1001, "going_away", true, "server is going away";
        ProtocolError = 4000, "protocol_error", false, "protocol error";
        HandshakeFailed = 4001, "handshake_failed", false, "handshake failed";
        NotEnrolled = 4002, "not_enrolled", false, "device key is not enrolled for this account";
        EnrolmentRejected = 4003, "enrolment_rejected", false, "enrolment code is invalid, expired or already used";
        DeviceRevoked = 4004, "device_revoked", false, "device key has been revoked";
        UnsupportedVersion = 4005, "unsupported_version", false, "unsupported protocol version";
        HandshakeTimeout = 4006, "handshake_timeout", true, "handshake not completed in time";
        RateLimited = 4007, "rate_limited", true, "too many requests; retry later";
        FrameTooLarge = 4008, "frame_too_large", false, "frame exceeds the size limit";
        TooManyConnections = 4009, "too_many_connections", true, "too many connections for this account";
        IdleTimeout = 4010, "idle_timeout", true, "connection idle or peer unresponsive";
        Draining = 4011, "draining", true, "server is draining; reconnect";
        InternalError = 4012, "internal_error", true, "internal server error";
        SlowConsumer = 4013, "slow_consumer", true, "client is not reading its messages";
    }
}

code_table! {
    /// Tunnel close codes, in `TunnelClose.code` (channel 1) and
    /// `LinkClose.code` (channel 2).
    TunnelCloseCode: u32 {
        Normal = 0, "normal", false, "tunnel closed normally";
        VaultUnavailable = 1, "vault_unavailable", true, "vault unavailable";
        LeaderChanged = 2, "leader_changed", true, "vault leader changed";
        HandshakeFailed = 3, "handshake_failed", false, "tunnel handshake failed";
        ProtocolError = 4, "protocol_error", false, "tunnel protocol error";
        IdleTimeout = 5, "idle_timeout", true, "tunnel idle too long";
        TooManyTunnels = 6, "too_many_tunnels", true, "too many tunnels";
        RateLimited = 7, "rate_limited", true, "too many vault operations for this account; retry later";
        Overloaded = 8, "overloaded", true, "vault overloaded";
        FrameTooLarge = 9, "frame_too_large", false, "tunnel frame exceeds the size limit";
        UnsupportedVersion = 10, "unsupported_version", false, "unsupported tunnel protocol version";
        Draining = 11, "draining", true, "server is draining";
        InternalError = 12, "internal_error", true, "internal error";
        NotLeader = 13, "not_leader", true, "vault replica is not the leader";
        UnknownTunnel = 14, "unknown_tunnel", false, "no such tunnel";
    }
}

code_table! {
    /// Error codes in `VaultError.code`, inside the tunnel. Expected
    /// outcomes (wrong password, locked, not registered) are not errors but
    /// response variants.
    VaultErrorCode: u32 {
        BadRequest = 1, "bad_request", false, "request is malformed";
        UnexpectedRequest = 2, "unexpected_request", false, "request not allowed in this session state";
        NotLoggedIn = 3, "not_logged_in", false, "operation requires a successful login in this tunnel";
        LoginExpired = 4, "login_expired", false, "login took too long; start again";
        Unavailable = 5, "unavailable", true, "vault cannot commit right now; retry";
        Busy = 6, "busy", true, "too many concurrent operations on this account; retry";
        Internal = 7, "internal", true, "internal vault error";
        RecordChanged = 8, "record_changed", false, "the registration changed during this operation; start again";
        IntegrityFailure = 9, "integrity_failure", false, "stored record failed its integrity check";
        RateLimited = 10, "rate_limited", true, "too many operations on this account; retry later";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip_and_are_unique() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_value(c.value()), Some(*c));
            // RFC 6455: application codes live in 4000..=4999; 1000 and 1001
            // are the two standard ones we use.
            assert!(c.value() == 1000 || c.value() == 1001 || (4000..5000).contains(&c.value()));
            // Close reasons must fit a control frame (123 bytes).
            assert!(c.reason().len() <= 123);
        }
        for c in TunnelCloseCode::ALL {
            assert_eq!(TunnelCloseCode::from_value(c.value()), Some(*c));
        }
        for c in VaultErrorCode::ALL {
            assert_eq!(VaultErrorCode::from_value(c.value()), Some(*c));
        }
        assert_eq!(CloseCode::from_value(4999), None);
        assert_eq!(TunnelCloseCode::from_value(999), None);
        assert_eq!(VaultErrorCode::from_value(0), None);
    }
}
