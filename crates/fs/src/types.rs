//! Typed ids of the filesystem.

use std::fmt;

use pinwheel_mm::FileId;

macro_rules! id {
    ($(#[$m:meta])* $name:ident, $fmt:literal) => {
        $(#[$m])*
        #[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[derive(serde::Serialize, serde::Deserialize)]
        pub struct $name(pub u64);
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, $fmt, self.0)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, $fmt, self.0)
            }
        }
    };
}

id!(
    /// An inode number (1-based).
    Ino,
    "ino {}"
);
id!(
    /// A layout lease.
    LeaseId,
    "lease {}"
);
id!(
    /// A long-term file pin.
    FilePinId,
    "file pin {}"
);
id!(
    /// Who acts: a process or client. Lease ownership (EDEADLK vs ETXTBSY) compares these.
    OwnerId,
    "owner {}"
);
id!(
    /// An open file.
    OpenId,
    "open {}"
);

impl Ino {
    /// The memory core's name for this file (reverse map, frame owners).
    pub fn file_id(self) -> FileId {
        FileId::new(self.0)
    }
}

impl OwnerId {
    /// The administrator (CLI, admin thread).
    pub const ADMIN: OwnerId = OwnerId(0);
}

/// Who performs an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Identity for lease ownership.
    pub owner: OwnerId,
    /// For messages ("pid 4121 (fio)", "admin").
    pub label: String,
}

impl Caller {
    /// The administrator.
    pub fn admin() -> Caller {
        Caller { owner: OwnerId::ADMIN, label: "admin".into() }
    }
    /// An owner with a label.
    pub fn new(owner: OwnerId, label: impl Into<String>) -> Caller {
        Caller { owner, label: label.into() }
    }
}
