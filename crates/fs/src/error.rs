//! Errors of the filesystem. One enum, variants carrying context, one `errno()` mapping.
//! `ETXTBSY`, `EDEADLK`, `EOPNOTSUPP` and `EPERM` are part of the contract.

use pinwheel_mm::{Errno, MmError};

/// Filesystem errors.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum FsError {
    /// No such file or directory.
    #[error("{path}: no such file or directory")]
    NotFound {
        /// The path or name.
        path: String,
    },
    /// Already exists.
    #[error("{path}: already exists")]
    Exists {
        /// The path.
        path: String,
    },
    /// A path component is not a directory.
    #[error("{path}: not a directory")]
    NotDir {
        /// The path.
        path: String,
    },
    /// A directory where a file was expected.
    #[error("{path}: is a directory")]
    IsDir {
        /// The path.
        path: String,
    },
    /// Removing a directory that has entries.
    #[error("{path}: directory not empty")]
    NotEmpty {
        /// The path.
        path: String,
    },
    /// A name longer than `NAME_MAX` or a path longer than `PATH_MAX`.
    #[error("{name}: name too long")]
    NameTooLong {
        /// The name.
        name: String,
    },
    /// Bad argument.
    #[error("{0}")]
    Invalid(String),
    /// Out of space.
    #[error("no space: {needed} blocks needed, {free} free")]
    NoSpace {
        /// Blocks asked for.
        needed: u64,
        /// Blocks free.
        free: u64,
    },
    /// Every inode is in use.
    #[error("all {total} inodes are in use (mkfs with more inodes)")]
    NoInodes {
        /// Inodes of the filesystem.
        total: u64,
    },
    /// Beyond the largest file size.
    #[error("file would exceed {max} bytes")]
    FileTooBig {
        /// The limit.
        max: u64,
    },
    /// A layout change refused because the layout is held (an unbreakable lease, live pins
    /// under a policy that refuses). The detail names the holders.
    #[error("{detail}")]
    Busy {
        /// Who holds it.
        detail: String,
    },
    /// The caller holds the unbreakable lease it is trying to break (LPC 2019: "likely a
    /// programming bug").
    #[error("{detail}")]
    Deadlock {
        /// Which lease.
        detail: String,
    },
    /// The pin policy refused a long-term pin.
    #[error("{reason}")]
    PinRefused {
        /// `EOPNOTSUPP`, `EPERM` or `EFAULT`.
        errno: Errno,
        /// Why, naming the file and policy.
        reason: String,
    },
    /// A lease request conflicts with other leases or opens.
    #[error("{detail}")]
    LeaseConflict {
        /// With what.
        detail: String,
    },
    /// Releasing a lease that live pins still rely on.
    #[error("{detail}")]
    LeaseInUse {
        /// Which pins.
        detail: String,
    },
    /// The image is damaged.
    #[error("corrupted filesystem: {what}")]
    Corrupt {
        /// What is wrong.
        what: String,
    },
    /// A wait ran out (a killed holder that did not go away, a layout change that never
    /// finished).
    #[error("{what}: timed out")]
    TimedOut {
        /// What was waited for.
        what: String,
    },
    /// The open file was closed or the filesystem unmounted.
    #[error("{what}: not open")]
    BadFile {
        /// What.
        what: String,
    },
    /// From the memory core.
    #[error(transparent)]
    Mm(#[from] MmError),
}

impl FsError {
    /// The errno this error maps to at the edge.
    pub fn errno(&self) -> Errno {
        match self {
            FsError::NotFound { .. } => Errno::ENOENT,
            FsError::Exists { .. } => Errno::EEXIST,
            FsError::NotDir { .. } => Errno::ENOTDIR,
            FsError::IsDir { .. } => Errno::EISDIR,
            FsError::NotEmpty { .. } => Errno::ENOTEMPTY,
            FsError::NameTooLong { .. } => Errno::ENAMETOOLONG,
            FsError::Invalid(_) => Errno::EINVAL,
            FsError::NoSpace { .. } | FsError::NoInodes { .. } => Errno::ENOSPC,
            FsError::FileTooBig { .. } => Errno::EFBIG,
            FsError::Busy { .. } => Errno::ETXTBSY,
            FsError::Deadlock { .. } => Errno::EDEADLK,
            FsError::PinRefused { errno, .. } => *errno,
            FsError::LeaseConflict { .. } => Errno::EAGAIN,
            FsError::LeaseInUse { .. } => Errno::EBUSY,
            FsError::Corrupt { .. } => Errno::EUCLEAN,
            FsError::TimedOut { .. } => Errno::ETIMEDOUT,
            FsError::BadFile { .. } => Errno::EBADF,
            FsError::Mm(e) => e.errno(),
        }
    }

    /// Shorthand for [`FsError::Invalid`].
    pub fn invalid(what: impl Into<String>) -> FsError {
        FsError::Invalid(what.into())
    }
}

impl From<FsError> for MmError {
    /// How a filesystem refusal reaches mm (a fault or a long-term pin): with its errno.
    fn from(e: FsError) -> MmError {
        match e {
            FsError::Mm(m) => m,
            other => MmError::Refused { errno: other.errno(), reason: other.to_string() },
        }
    }
}

/// Result alias of the filesystem.
pub type FsResult<T> = std::result::Result<T, FsError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_error_errno_table() {
        let t: Vec<(FsError, Errno)> = vec![
            (FsError::NotFound { path: "p".into() }, Errno::ENOENT),
            (FsError::Exists { path: "p".into() }, Errno::EEXIST),
            (FsError::NotDir { path: "p".into() }, Errno::ENOTDIR),
            (FsError::IsDir { path: "p".into() }, Errno::EISDIR),
            (FsError::NotEmpty { path: "p".into() }, Errno::ENOTEMPTY),
            (FsError::NameTooLong { name: "n".into() }, Errno::ENAMETOOLONG),
            (FsError::invalid("x"), Errno::EINVAL),
            (FsError::NoSpace { needed: 1, free: 0 }, Errno::ENOSPC),
            (FsError::NoInodes { total: 256 }, Errno::ENOSPC),
            (FsError::FileTooBig { max: 1 }, Errno::EFBIG),
            (FsError::Busy { detail: "d".into() }, Errno::ETXTBSY),
            (FsError::Deadlock { detail: "d".into() }, Errno::EDEADLK),
            (
                FsError::PinRefused { errno: Errno::EOPNOTSUPP, reason: "r".into() },
                Errno::EOPNOTSUPP,
            ),
            (FsError::PinRefused { errno: Errno::EPERM, reason: "r".into() }, Errno::EPERM),
            (FsError::LeaseConflict { detail: "d".into() }, Errno::EAGAIN),
            (FsError::LeaseInUse { detail: "d".into() }, Errno::EBUSY),
            (FsError::Corrupt { what: "w".into() }, Errno::EUCLEAN),
            (FsError::TimedOut { what: "w".into() }, Errno::ETIMEDOUT),
            (FsError::BadFile { what: "w".into() }, Errno::EBADF),
            (FsError::Mm(MmError::invalid("m")), Errno::EINVAL),
        ];
        for (e, want) in t {
            assert_eq!(e.errno(), want, "{e}");
            assert_eq!(MmError::from(e.clone()).errno(), want, "through mm: {e}");
        }
    }
}
