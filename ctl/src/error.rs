//! What can go wrong, and the exit code each failure maps to.

use std::fmt::Write as _;

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code for invalid input or a request the server refused (4xx).
pub const EXIT_INVALID: u8 = 1;
/// Exit code for a server that cannot be reached or failed (5xx).
pub const EXIT_UNAVAILABLE: u8 = 2;
/// Exit code of `apply --wait` when not every zone and Envoy confirmed the
/// change in time (offline zones included).
pub const EXIT_TIMEOUT: u8 = 3;

/// One field-level reason from the server's error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldReason {
    pub field: String,
    pub reason: String,
}

/// A failure of one command (or of one resource within `apply`).
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Bad flags, unreadable or invalid files, unknown types.
    #[error("{0}")]
    Input(String),

    /// The server answered 4xx: `details` and the field reasons of its body.
    #[error("{details}")]
    Refused { status: u16, details: String, fields: Vec<FieldReason> },

    /// No answer: connection refused, DNS, TLS, timeout.
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },

    /// The server answered 5xx.
    #[error("the server failed (HTTP {status}): {details}")]
    Server { status: u16, details: String },
}

impl CtlError {
    pub fn input(msg: impl Into<String>) -> CtlError {
        CtlError::Input(msg.into())
    }

    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Input(_) | CtlError::Refused { .. } => EXIT_INVALID,
            CtlError::Unreachable { .. } | CtlError::Server { .. } => EXIT_UNAVAILABLE,
        }
    }

    /// The HTTP status, for failures the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            CtlError::Refused { status, .. } | CtlError::Server { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The text for stderr: `error: [what: ]message`, then one
    /// `  field: reason` line per field the server named.
    pub fn report(&self, what: Option<&str>) -> String {
        let mut out = String::from("error: ");
        if let Some(w) = what {
            out.push_str(w);
            out.push_str(": ");
        }
        out.push_str(&self.to_string());
        if let CtlError::Refused { fields, .. } = self {
            for f in fields {
                let field = if f.field.is_empty() { "(resource)" } else { &f.field };
                let _ = write!(out, "\n  {field}: {}", f.reason);
            }
        }
        out
    }
}

/// The most severe of two exit codes (2 over 1 over 0).
pub fn worst(a: u8, b: u8) -> u8 {
    a.max(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_report() {
        let e = CtlError::Refused {
            status: 400,
            details: "MeshGateway gw: conf: cannot be empty".into(),
            fields: vec![FieldReason { field: "conf".into(), reason: "cannot be empty".into() }],
        };
        assert_eq!(e.exit_code(), EXIT_INVALID);
        assert_eq!(
            e.report(Some("MeshGateway default/gw")),
            "error: MeshGateway default/gw: MeshGateway gw: conf: cannot be empty\n  conf: cannot be empty"
        );
        let e = CtlError::Unreachable { url: "http://x".into(), reason: "refused".into() };
        assert_eq!(e.exit_code(), EXIT_UNAVAILABLE);
        assert_eq!(CtlError::Server { status: 503, details: "x".into() }.exit_code(), EXIT_UNAVAILABLE);
        assert_eq!(worst(EXIT_INVALID, EXIT_UNAVAILABLE), EXIT_UNAVAILABLE);
    }
}
