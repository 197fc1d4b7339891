//! The one place where engine errors become protocol codes: `Errno` for
//! transmission replies, `NBD_REP_ERR_*` for handshake option replies.

use crate::protocol::{rep, Errno};
use cowvol::Error;

/// The reply error for an engine error during transmission.
pub(crate) fn errno(e: &Error) -> Errno {
    match e {
        Error::OutOfRange { .. } | Error::InvalidArgument(_) => Errno::Inval,
        Error::ReadOnly { .. } => Errno::Perm,
        Error::NoSpace { .. } => Errno::NoSpc,
        // A deleted volume, a corrupt block, a failed sync, or anything a
        // newer engine adds: the client can only treat it as a media error.
        _ => Errno::Io,
    }
}

/// Whether an engine error is worth a log line: the client's own mistakes
/// (ranges, read-only) are answered, not logged.
pub(crate) fn worth_logging(e: &Error) -> bool {
    !matches!(e, Error::OutOfRange { .. } | Error::ReadOnly { .. } | Error::InvalidArgument(_))
}

/// The option reply error when an export cannot be opened.
pub(crate) fn option_error(e: &Error) -> u32 {
    match e {
        Error::NotFound { .. } => rep::ERR_UNKNOWN,
        Error::Busy { .. } | Error::ReadOnly { .. } | Error::Locked { .. } => rep::ERR_POLICY,
        Error::InvalidArgument(_) => rep::ERR_INVALID,
        _ => rep::ERR_PLATFORM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_protocol_codes() {
        let range = Error::OutOfRange { what: "volume vol-1".into(), offset: 1, len: 2, size: 1 };
        assert_eq!(errno(&range), Errno::Inval);
        assert_eq!(errno(&Error::ReadOnly { what: "snapshot".into() }), Errno::Perm);
        assert_eq!(errno(&Error::NoSpace { during: "writing".into() }), Errno::NoSpc);
        assert_eq!(errno(&Error::NotFound { what: "volume vol-1".into() }), Errno::Io);
        assert_eq!(option_error(&Error::NotFound { what: "x".into() }), rep::ERR_UNKNOWN);
    }
}
