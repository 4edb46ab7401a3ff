//! pinwheel-fs: an XFS/ext4-style FS-DAX filesystem stored in the pool, with the lease
//! machinery of fs/locks.c extended as the 2019 debate designed it — layout leases (read,
//! write, unbreakable), file pins, and the node's pin policy.
//!
//! **Owns**: the on-pool format (superblock, reference-count table, inode table, extent
//! blocks, directories; `format.rs`), files as extent maps over pool frames, the operations
//! (create, read, write, fallocate, truncate, punch, reflink clone with copy-on-write,
//! defragment, unlink, rename, mkdir, readdir, stat), DAX mappings ([`pinwheel_mm::FileBacking`]),
//! page-cache files, `break_layout` (the single gate of every layout change), layout leases,
//! file pins and the pin policies, and fsck.
//!
//! **Does not own**: frames, address spaces and pins (pinwheel-mm); memory regions and DMA
//! (pinwheel-verbs), which it reaches only through [`PinHolder`] and [`LeaseHolder`].
//!
//! **Invariants** (numbered as in DESIGN.md):
//! 1. A block is freed only when its reference count reaches 0, after every translation of it
//!    was zapped; a pinned block is freed only by the counted reuse-under-DMA path of the
//!    `unsafe` policy.
//! 3. No layout change completes while an unbreakable lease or a live file pin covers its
//!    range — the break fails it, or recalls, decoheres or revokes first — `unsafe` (and the
//!    page-cache orphaning of `deny`) excepted.
//! 6. Data written and acknowledged stays at its offset unless a later layout change removed
//!    that range.
//!
//! **Crash consistency**: metadata is written in place as operations happen; a journal will
//! log each multi-record update (extent chain, inode record, reference counts) in the reserved
//! region after the superblock before applying it, without moving anything else.
//!
//! **Thread safety**: everything is `Send + Sync`. Per inode, `layout` (the file lock) before
//! `rt` (leases, pins, breaks); the namespace lock before directory layouts. Holders are
//! called with no filesystem lock held.
//!
//! **Limits**: `limits.rs`.

mod backing;
mod breaking;
mod error;
mod extent;
mod file_pin;
pub mod format;
mod fs;
mod fsck;
mod holder;
mod inode;
mod io;
mod layout;
mod lease;
pub mod limits;
mod namei;
mod open;
mod pagecache;
mod policy;
mod reaper;
mod reflink;
mod store;
mod types;

pub use breaking::LayoutReason;
pub use error::{FsError, FsResult};
pub use extent::Extent;
pub use file_pin::FilePinInfo;
pub use fs::{Filesystem, FsStats, MkfsOptions, MountOptions};
pub use fsck::{FsckReport, fsck};
pub use holder::{HolderInfo, LeaseEvent, LeaseHolder, PinContext, PinHolder};
pub use layout::{DefragOptions, DefragReport, FallocMode};
pub use lease::{LeaseInfo, LeaseKind, LeaseState};
pub use namei::{CreateOptions, DirEntry, FileKind, Stat};
pub use open::OpenFile;
pub use policy::{PinAction, PinDecision, PinPolicy, PinRequest, decide_pin, pin_action};
pub use types::{Caller, FilePinId, Ino, LeaseId, OpenId, OwnerId};

impl Filesystem {
    /// fsck of the mounted filesystem (namespace changes are held off while it runs; run it
    /// on a quiet filesystem for an exact block count).
    pub fn fsck(&self) -> FsckReport {
        let _ns = self.0.ns.lock();
        fsck::fsck(self.memory().pool())
    }

    /// The extents of a file (for tools and tests).
    pub fn extents(&self, ino: Ino) -> FsResult<Vec<Extent>> {
        Ok(self.0.inode(ino)?.layout.read().extents.iter().collect())
    }

    /// Subscribes to layout changes of the byte range `[off, off + len)` of a file: every
    /// change of the block behind a page there invalidates the subscriber first (file MRs).
    pub fn subscribe(
        &self,
        ino: Ino,
        off: u64,
        len: u64,
        ops: std::sync::Weak<dyn pinwheel_mm::IntervalNotifier>,
    ) -> FsResult<pinwheel_mm::NotifierHandle> {
        let inode = self.0.inode(ino)?;
        let range = pinwheel_mm::VirtRange::new(pinwheel_mm::VirtAddr::new(off), len)
            .ok_or_else(|| FsError::invalid("range overflows"))?;
        Ok(inode.hub.subscribe(range, ops)?)
    }
}
