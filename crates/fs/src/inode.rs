//! In-memory inodes.
//!
//! Each inode has two locks and a condition variable:
//! - `layout` (RwLock): the file lock — the inode record, extents, size, directory entries.
//!   Faults and reads hold it shared while they use a translation; layout changes hold it
//!   exclusively while they zap mappings, change extents and free blocks.
//! - `rt` (Mutex): runtime state that does not survive a remount — leases, file pins, pending
//!   layout breaks, open and map counts. Waiting (lease breaks, pin releases) happens on `cv`
//!   with `rt` held and `layout` not held.
//!
//! Lock order: `layout` → `rt` → `cache`. A layout break takes only `rt`, and calls pin and
//! lease holders with no lock held.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};
use pinwheel_mm::{NotifierHub, PAGE_SIZE, Pfn};

use crate::extent::ExtentMap;
use crate::format::{IFLAG_PAGE_CACHE, InodeKind, InodeRecord};
use crate::holder::{HolderInfo, PinHolder};
use crate::lease::{Lease, LeaseKind};
use crate::types::{FilePinId, Ino, LeaseId, OwnerId};

/// A directory's entries, cached from its blocks.
#[derive(Debug, Default)]
pub(crate) struct DirState {
    /// name → (inode, slot).
    pub(crate) entries: BTreeMap<String, (Ino, u64)>,
    pub(crate) free_slots: BTreeSet<u64>,
    pub(crate) nslots: u64,
}

/// The persistent part of an inode, as loaded.
#[derive(Debug)]
pub(crate) struct Layout {
    pub(crate) rec: InodeRecord,
    pub(crate) extents: ExtentMap,
    pub(crate) chain: Vec<u64>,
    pub(crate) dir: Option<DirState>,
}

impl Layout {
    pub(crate) fn size_pages(&self) -> u64 {
        self.rec.size.div_ceil(PAGE_SIZE)
    }
    pub(crate) fn page_cache(&self) -> bool {
        self.rec.flags & IFLAG_PAGE_CACHE != 0
    }
    pub(crate) fn is_dir(&self) -> bool {
        self.rec.kind == InodeKind::Dir
    }
}

/// A long-term pin of file pages.
#[derive(Debug)]
pub(crate) struct FilePin {
    pub(crate) pages: Range<u64>,
    pub(crate) write: bool,
    pub(crate) holder: Option<Weak<dyn PinHolder>>,
    pub(crate) info: HolderInfo,
    pub(crate) owner: OwnerId,
    pub(crate) lease: Option<LeaseId>,
    pub(crate) taken_at: Duration,
    /// Told to decohere / revoke by the current break.
    pub(crate) notified: bool,
    /// The mm pin holds its frames (false while `pin_user_pages` is still faulting them in).
    pub(crate) established: bool,
}

/// A layout change in progress on pages `pages`; new long-term pins of those pages wait.
#[derive(Debug, Clone)]
pub(crate) struct PendingBreak {
    pub(crate) id: u64,
    pub(crate) pages: Range<u64>,
}

/// Runtime state.
#[derive(Debug, Default)]
pub(crate) struct Runtime {
    pub(crate) leases: Vec<Lease>,
    pub(crate) pins: BTreeMap<FilePinId, FilePin>,
    pub(crate) breaks: Vec<PendingBreak>,
    pub(crate) opens: u32,
    pub(crate) maps: u32,
    /// Path at last lookup, for messages.
    pub(crate) path: String,
}

pub(crate) fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

impl Runtime {
    pub(crate) fn lease_of(&self, owner: OwnerId) -> Option<&Lease> {
        self.leases.iter().find(|l| l.owner == owner)
    }
    pub(crate) fn sealed(&self) -> bool {
        self.leases.iter().any(|l| l.kind == LeaseKind::Unbreakable)
    }
    pub(crate) fn pins_on(
        &self,
        pages: &Range<u64>,
    ) -> impl Iterator<Item = (&FilePinId, &FilePin)> {
        self.pins.iter().filter(move |(_, p)| overlaps(&p.pages, pages))
    }
    pub(crate) fn breaking(&self, pages: &Range<u64>) -> bool {
        self.breaks.iter().any(|b| overlaps(&b.pages, pages))
    }
    /// True while something keeps the file alive: an open file, a mapping, or — when
    /// `pins_hold` (the coordinating policies, where a file pin references its file as Ira
    /// Weiny's `vaddr_pin` carried the owning file) — a long-term pin.
    pub(crate) fn referenced(&self, pins_hold: bool) -> bool {
        self.opens > 0 || self.maps > 0 || (pins_hold && !self.pins.is_empty())
    }
}

/// An inode.
#[derive(Debug)]
pub(crate) struct Inode {
    pub(crate) ino: Ino,
    pub(crate) layout: RwLock<Layout>,
    pub(crate) rt: Mutex<Runtime>,
    pub(crate) cv: Condvar,
    /// File-range subscriptions (file MRs); ranges are file byte offsets.
    pub(crate) hub: Arc<NotifierHub>,
    /// Page-cache pages of a non-DAX file: page → frame.
    pub(crate) cache: Mutex<BTreeMap<u64, Pfn>>,
}

impl Inode {
    pub(crate) fn new(ino: Ino, layout: Layout, path: String) -> Arc<Inode> {
        Arc::new(Inode {
            ino,
            layout: RwLock::new(layout),
            rt: Mutex::new(Runtime { path, ..Runtime::default() }),
            cv: Condvar::new(),
            hub: NotifierHub::new(),
            cache: Mutex::new(BTreeMap::new()),
        })
    }

    /// Path for messages.
    pub(crate) fn path(&self) -> String {
        self.rt.lock().path.clone()
    }
}
