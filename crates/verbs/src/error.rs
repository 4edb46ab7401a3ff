//! Errors of the verbs layer (control path). Data-path failures are completion statuses
//! ([`crate::WcStatus`]), never `Err`.

use pinwheel_fs::FsError;
use pinwheel_mm::{Errno, MmError};

use crate::types::QpState;

/// Verbs errors.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum VerbsError {
    /// Bad argument.
    #[error("{0}")]
    Invalid(String),
    /// An illegal QP state transition or attribute mask.
    #[error("modify QP {from:?} -> {to:?}: {detail}")]
    Transition {
        /// Current state.
        from: QpState,
        /// Requested state.
        to: QpState,
        /// What is wrong (missing or unexpected attributes, no such transition).
        detail: String,
    },
    /// Destroying an object others still use.
    #[error("{0}")]
    Busy(String),
    /// A work queue is full.
    #[error("{0}")]
    QueueFull(String),
    /// A device limit was reached.
    #[error("{0}")]
    Limit(String),
    /// Not supported by this device.
    #[error("{0}")]
    Unsupported(String),
    /// A wait ran out.
    #[error("{0}: timed out")]
    TimedOut(String),
    /// Connection setup or transport failure.
    #[error("{what}: {errno}")]
    Transport {
        /// What failed.
        what: String,
        /// The OS error.
        errno: Errno,
    },
    /// From the memory core (registration: pins, faults).
    #[error(transparent)]
    Mm(#[from] MmError),
    /// From the filesystem (file MRs, leases).
    #[error(transparent)]
    Fs(#[from] FsError),
}

impl VerbsError {
    /// The errno at the edge.
    pub fn errno(&self) -> Errno {
        match self {
            VerbsError::Invalid(_) | VerbsError::Transition { .. } => Errno::EINVAL,
            VerbsError::Busy(_) => Errno::EBUSY,
            VerbsError::QueueFull(_) | VerbsError::Limit(_) => Errno::ENOMEM,
            VerbsError::Unsupported(_) => Errno::EOPNOTSUPP,
            VerbsError::TimedOut(_) => Errno::ETIMEDOUT,
            VerbsError::Transport { errno, .. } => *errno,
            VerbsError::Mm(e) => e.errno(),
            VerbsError::Fs(e) => e.errno(),
        }
    }
    /// Shorthand for [`VerbsError::Invalid`].
    pub fn invalid(s: impl Into<String>) -> VerbsError {
        VerbsError::Invalid(s.into())
    }
    /// A transport error from an I/O error.
    pub fn io(what: impl Into<String>, e: &std::io::Error) -> VerbsError {
        VerbsError::Transport { what: what.into(), errno: Errno::from(e) }
    }
}

/// Result alias.
pub type VerbsResult<T> = std::result::Result<T, VerbsError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_error_errno_table() {
        let t: Vec<(VerbsError, Errno)> = vec![
            (VerbsError::invalid("x"), Errno::EINVAL),
            (
                VerbsError::Transition {
                    from: QpState::Reset,
                    to: QpState::Error,
                    detail: "d".into(),
                },
                Errno::EINVAL,
            ),
            (VerbsError::Busy("b".into()), Errno::EBUSY),
            (VerbsError::QueueFull("q".into()), Errno::ENOMEM),
            (VerbsError::Limit("l".into()), Errno::ENOMEM),
            (VerbsError::Unsupported("u".into()), Errno::EOPNOTSUPP),
            (VerbsError::TimedOut("t".into()), Errno::ETIMEDOUT),
            (
                VerbsError::Transport { what: "w".into(), errno: Errno::ECONNRESET },
                Errno::ECONNRESET,
            ),
            (
                VerbsError::Mm(MmError::Refused { errno: Errno::EOPNOTSUPP, reason: "r".into() }),
                Errno::EOPNOTSUPP,
            ),
            (VerbsError::Fs(FsError::Busy { detail: "d".into() }), Errno::ETXTBSY),
        ];
        for (e, want) in t {
            assert_eq!(e.errno(), want, "{e}");
        }
    }
}
