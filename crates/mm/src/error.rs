//! Errors of the memory core, and [`Errno`], the errno vocabulary every pinwheel crate maps its
//! errors to at the edge (`fn errno(&self)`). The errno values are part of the contract: they
//! are what upstream Linux returns in the same situation (`reference/kernel-semantics.md`).

use std::fmt;

use crate::types::{PoolOffset, VirtAddr};

macro_rules! errnos {
    ($($name:ident = $libc:ident, $text:literal;)*) => {
        /// A Unix error number, named as in `<errno.h>`.
        #[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
        #[allow(clippy::upper_case_acronyms)]
        pub enum Errno {
            $(
                #[doc = $text]
                $name,
            )*
        }

        impl Errno {
            /// Every errno pinwheel uses.
            pub const ALL: &'static [Errno] = &[$(Errno::$name),*];

            /// The numeric value on Linux.
            pub const fn code(self) -> i32 {
                match self {
                    $(Errno::$name => libc::$libc,)*
                }
            }
            /// The symbolic name, e.g. `"ETXTBSY"`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Errno::$name => stringify!($name),)*
                }
            }
            /// The `strerror` text, e.g. `"Text file busy"`.
            pub const fn description(self) -> &'static str {
                match self {
                    $(Errno::$name => $text,)*
                }
            }
            /// The errno with this numeric value, if pinwheel uses it.
            pub fn from_code(code: i32) -> Option<Errno> {
                Errno::ALL.iter().copied().find(|e| e.code() == code)
            }
            /// The errno with this symbolic name, if pinwheel uses it.
            pub fn from_name(name: &str) -> Option<Errno> {
                Errno::ALL.iter().copied().find(|e| e.name() == name)
            }
        }
    };
}

errnos! {
    EPERM = EPERM, "Operation not permitted";
    ENOENT = ENOENT, "No such file or directory";
    EINTR = EINTR, "Interrupted system call";
    EIO = EIO, "Input/output error";
    ENXIO = ENXIO, "No such device or address";
    EBADF = EBADF, "Bad file descriptor";
    EAGAIN = EAGAIN, "Resource temporarily unavailable";
    ENOMEM = ENOMEM, "Cannot allocate memory";
    EACCES = EACCES, "Permission denied";
    EFAULT = EFAULT, "Bad address";
    EBUSY = EBUSY, "Device or resource busy";
    EEXIST = EEXIST, "File exists";
    ENODEV = ENODEV, "No such device";
    ENOTDIR = ENOTDIR, "Not a directory";
    EISDIR = EISDIR, "Is a directory";
    EINVAL = EINVAL, "Invalid argument";
    EMFILE = EMFILE, "Too many open files";
    ETXTBSY = ETXTBSY, "Text file busy";
    EFBIG = EFBIG, "File too large";
    ENOSPC = ENOSPC, "No space left on device";
    EROFS = EROFS, "Read-only file system";
    ERANGE = ERANGE, "Numerical result out of range";
    EDEADLK = EDEADLK, "Resource deadlock avoided";
    ENAMETOOLONG = ENAMETOOLONG, "File name too long";
    ENOSYS = ENOSYS, "Function not implemented";
    ENOTEMPTY = ENOTEMPTY, "Directory not empty";
    ENODATA = ENODATA, "No data available";
    EOVERFLOW = EOVERFLOW, "Value too large for defined data type";
    EBADMSG = EBADMSG, "Bad message";
    EPROTO = EPROTO, "Protocol error";
    EOPNOTSUPP = EOPNOTSUPP, "Operation not supported";
    ECONNRESET = ECONNRESET, "Connection reset by peer";
    ENOTCONN = ENOTCONN, "Transport endpoint is not connected";
    ETIMEDOUT = ETIMEDOUT, "Connection timed out";
    ECONNREFUSED = ECONNREFUSED, "Connection refused";
    EADDRINUSE = EADDRINUSE, "Address already in use";
    EADDRNOTAVAIL = EADDRNOTAVAIL, "Cannot assign requested address";
    ENETUNREACH = ENETUNREACH, "Network is unreachable";
    EHOSTUNREACH = EHOSTUNREACH, "No route to host";
    ECANCELED = ECANCELED, "Operation canceled";
    ESTALE = ESTALE, "Stale file handle";
    EUCLEAN = EUCLEAN, "Structure needs cleaning";
    ESRCH = ESRCH, "No such process";
    E2BIG = E2BIG, "Argument list too long";
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.description(), self.name())
    }
}

impl From<rustix::io::Errno> for Errno {
    fn from(e: rustix::io::Errno) -> Errno {
        Errno::from_code(e.raw_os_error()).unwrap_or(Errno::EIO)
    }
}

impl From<&std::io::Error> for Errno {
    fn from(e: &std::io::Error) -> Errno {
        e.raw_os_error().and_then(Errno::from_code).unwrap_or(Errno::EIO)
    }
}

/// Errors of the memory core.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum MmError {
    /// The address is not covered by any mapping.
    #[error("address {addr} is not mapped")]
    NotMapped {
        /// The first unmapped address met.
        addr: VirtAddr,
    },
    /// Access to a file mapping beyond the end of the file: SIGBUS on Linux.
    #[error("access at {addr} is beyond the end of {file} (SIGBUS)")]
    BeyondEof {
        /// The faulting address.
        addr: VirtAddr,
        /// The file's name.
        file: String,
    },
    /// Part of a range given to mprotect or madvise is not mapped (`ENOMEM`, as on Linux).
    #[error("range at {addr} includes unmapped pages")]
    RangeNotMapped {
        /// Start of the range.
        addr: VirtAddr,
    },
    /// A write to a mapping without write permission.
    #[error("write at {addr} to a mapping without PROT_WRITE")]
    WriteProtected {
        /// The faulting address.
        addr: VirtAddr,
    },
    /// A read of a mapping without read permission.
    #[error("read at {addr} from a mapping without PROT_READ")]
    ReadProtected {
        /// The faulting address.
        addr: VirtAddr,
    },
    /// Bad arguments: unaligned, overflowing, zero-length, unknown flags.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No free frames for the request.
    #[error("out of memory: {requested} frames requested, {free} free")]
    OutOfFrames {
        /// Frames asked for.
        requested: u64,
        /// Frames free at the time.
        free: u64,
    },
    /// The per-context limit on pinned memory (the RLIMIT_MEMLOCK analogue) would be exceeded.
    #[error(
        "pin limit: {pinned} bytes pinned + {requested} requested exceeds the limit of {limit}"
    )]
    PinLimit {
        /// Bytes already pinned by the context.
        pinned: u64,
        /// Bytes asked for.
        requested: u64,
        /// The context's limit.
        limit: u64,
    },
    /// Too many mappings in one address space (`vm.max_map_count`).
    #[error("too many mappings ({count}) in one address space")]
    TooManyMappings {
        /// Mappings present.
        count: usize,
    },
    /// No free virtual range big enough.
    #[error("no free virtual range of {len} bytes")]
    NoVirtualSpace {
        /// Length asked for.
        len: u64,
    },
    /// `MAP_FIXED_NOREPLACE` hit an existing mapping.
    #[error("range at {addr} is already mapped")]
    AlreadyMapped {
        /// Start of the request.
        addr: VirtAddr,
    },
    /// The file backing refused (a pin policy, a lease, a missing block...).
    #[error("{reason}")]
    Refused {
        /// What the backing answered.
        errno: Errno,
        /// Why, naming the file and the holder where known.
        reason: String,
    },
    /// A system call on the pool failed.
    #[error("pool {op} at {offset}: {errno}")]
    Pool {
        /// What was attempted.
        op: &'static str,
        /// Where.
        offset: PoolOffset,
        /// The OS error.
        errno: Errno,
    },
    /// A pool could not be created or opened.
    #[error("pool {path}: {what}: {errno}")]
    PoolSetup {
        /// memfd name or file path.
        path: String,
        /// The failing step.
        what: String,
        /// The OS error.
        errno: Errno,
    },
}

impl MmError {
    /// The errno this error maps to at the edge.
    pub fn errno(&self) -> Errno {
        match self {
            MmError::NotMapped { .. }
            | MmError::BeyondEof { .. }
            | MmError::WriteProtected { .. }
            | MmError::ReadProtected { .. } => Errno::EFAULT,
            MmError::InvalidArgument(_) => Errno::EINVAL,
            MmError::OutOfFrames { .. } | MmError::PinLimit { .. } => Errno::ENOMEM,
            MmError::RangeNotMapped { .. } => Errno::ENOMEM,
            MmError::TooManyMappings { .. } | MmError::NoVirtualSpace { .. } => Errno::ENOMEM,
            MmError::AlreadyMapped { .. } => Errno::EEXIST,
            MmError::Refused { errno, .. } => *errno,
            MmError::Pool { errno, .. } | MmError::PoolSetup { errno, .. } => *errno,
        }
    }

    /// Shorthand for [`MmError::InvalidArgument`].
    pub fn invalid(what: impl Into<String>) -> MmError {
        MmError::InvalidArgument(what.into())
    }
}

/// Result alias of the memory core.
pub type Result<T, E = MmError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_table_matches_linux_values() {
        // The contract values from reference/kernel-semantics.md and linux-behaviour.md.
        let table = [
            (Errno::EPERM, 1),
            (Errno::ENOMEM, 12),
            (Errno::EFAULT, 14),
            (Errno::EINVAL, 22),
            (Errno::ETXTBSY, 26),
            (Errno::EDEADLK, 35),
            (Errno::EOPNOTSUPP, 95),
        ];
        for (e, code) in table {
            assert_eq!(e.code(), code, "{}", e.name());
            assert_eq!(Errno::from_code(code), Some(e));
            assert_eq!(Errno::from_name(e.name()), Some(e));
        }
        assert_eq!(Errno::ETXTBSY.to_string(), "Text file busy (ETXTBSY)");
    }

    #[test]
    fn errno_names_and_codes_unique() {
        for (i, a) in Errno::ALL.iter().enumerate() {
            for b in &Errno::ALL[i + 1..] {
                assert_ne!(a.code(), b.code(), "{} vs {}", a.name(), b.name());
            }
        }
    }

    #[test]
    fn mm_error_errno_mapping() {
        let v = VirtAddr::new(0x1000);
        let table: Vec<(MmError, Errno)> = vec![
            (MmError::NotMapped { addr: v }, Errno::EFAULT),
            (MmError::BeyondEof { addr: v, file: "f".into() }, Errno::EFAULT),
            (MmError::WriteProtected { addr: v }, Errno::EFAULT),
            (MmError::ReadProtected { addr: v }, Errno::EFAULT),
            (MmError::invalid("x"), Errno::EINVAL),
            (MmError::OutOfFrames { requested: 1, free: 0 }, Errno::ENOMEM),
            (MmError::PinLimit { pinned: 1, requested: 1, limit: 1 }, Errno::ENOMEM),
            (MmError::TooManyMappings { count: 1 }, Errno::ENOMEM),
            (MmError::NoVirtualSpace { len: 1 }, Errno::ENOMEM),
            (MmError::AlreadyMapped { addr: v }, Errno::EEXIST),
            (MmError::RangeNotMapped { addr: v }, Errno::ENOMEM),
            (MmError::Refused { errno: Errno::EOPNOTSUPP, reason: "r".into() }, Errno::EOPNOTSUPP),
        ];
        for (e, want) in table {
            assert_eq!(e.errno(), want, "{e}");
        }
    }
}
