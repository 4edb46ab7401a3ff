//! The frame table: per 4 KiB frame, who owns it and who refers to it.
//!
//! Per frame, kept apart (the FOLL_PIN point: "is this frame maybe DMA-pinned?" must be
//! answerable, and "false positives are acceptable, false negatives are not"):
//! - `refs`: references of any kind — page-table mappings, pins, transient gets;
//! - `pins`: DMA pins (each pin also holds one ref);
//! - `maps`: page-table entries that map the frame (each also holds one ref).
//!
//! and one word of state: the [`Owner`] (free, anonymous, file block, page cache, device,
//! metadata, orphan) plus flags (movable, dirty, huge head, huge tail).
//!
//! Huge frames (512 aligned frames) are compound, like a folio: counts live on the head frame
//! and tails carry only the `HUGE_TAIL` flag.
//!
//! The arrays are zero-initialised and sparse: an all-zero entry is a free frame, and untouched
//! entries cost no memory, so a 64 GiB pool's table costs only what is used.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::limits::PIN_COUNT_MAX;
use crate::sys;
use crate::types::{FileId, FrameRun, Pfn};

/// Who owns a frame.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// In the allocator.
    Free,
    /// Anonymous memory of an address space; freed when its last reference goes.
    Anonymous,
    /// A block of a file on the DAX filesystem; the filesystem frees it explicitly.
    FileBlock(FileId),
    /// A page-cache copy of a file block (non-DAX files).
    PageCache(FileId),
    /// Device memory (P2P, later).
    Device,
    /// Filesystem metadata.
    Metadata,
    /// Dropped by its owner while still referenced: freed when the last reference goes (a
    /// truncated page-cache page kept alive only by a pin, as on Linux).
    Orphan,
}

const KIND_MASK: u64 = 0xf;
const K_FREE: u64 = 0;
const K_ANON: u64 = 1;
const K_FILE: u64 = 2;
const K_CACHE: u64 = 3;
const K_DEVICE: u64 = 4;
const K_META: u64 = 5;
const K_ORPHAN: u64 = 6;
const FLAGS_SHIFT: u32 = 4;
const FLAGS_MASK: u64 = 0xfff << FLAGS_SHIFT;
const DATA_SHIFT: u32 = 16;

bitflags::bitflags! {
    /// Frame flags.
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
    pub struct FrameFlags: u16 {
        /// May be migrated (anonymous memory; file blocks move only through the filesystem).
        const MOVABLE = 1 << 0;
        /// Written since it was last cleaned (set by write faults and dirty unpins).
        const DIRTY = 1 << 1;
        /// First frame of a huge frame: counts for all 512 live here.
        const HUGE_HEAD = 1 << 2;
        /// Non-first frame of a huge frame.
        const HUGE_TAIL = 1 << 3;
    }
}

impl Owner {
    fn encode(self) -> u64 {
        match self {
            Owner::Free => K_FREE,
            Owner::Anonymous => K_ANON,
            Owner::FileBlock(f) => K_FILE | (f.raw() << DATA_SHIFT),
            Owner::PageCache(f) => K_CACHE | (f.raw() << DATA_SHIFT),
            Owner::Device => K_DEVICE,
            Owner::Metadata => K_META,
            Owner::Orphan => K_ORPHAN,
        }
    }
    fn decode(w: u64) -> Owner {
        let data = FileId::new(w >> DATA_SHIFT);
        match w & KIND_MASK {
            K_ANON => Owner::Anonymous,
            K_FILE => Owner::FileBlock(data),
            K_CACHE => Owner::PageCache(data),
            K_DEVICE => Owner::Device,
            K_META => Owner::Metadata,
            K_ORPHAN => Owner::Orphan,
            _ => Owner::Free,
        }
    }
    /// True for owners whose frames are freed when the last reference drops.
    pub fn freed_on_last_ref(self) -> bool {
        matches!(self, Owner::Anonymous | Owner::Orphan)
    }
}

/// A snapshot of one frame's entry.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// The owner.
    pub owner: Owner,
    /// The flags.
    pub flags: FrameFlags,
    /// All references.
    pub refs: u32,
    /// DMA pins.
    pub pins: u32,
    /// Page-table mappings.
    pub maps: u32,
}

/// The frame table.
#[derive(Debug)]
pub struct FrameTable {
    state: Box<[AtomicU64]>,
    refs: Box<[AtomicU32]>,
    pins: Box<[AtomicU32]>,
    maps: Box<[AtomicU32]>,
}

/// File ids must fit the owner word.
pub const FILE_ID_MAX: u64 = (1 << (64 - DATA_SHIFT)) - 1;

impl FrameTable {
    /// A table for `n` frames, all free.
    pub(crate) fn new(n: u64) -> FrameTable {
        let n = usize::try_from(n).expect("frame count bounded by POOL_SIZE_MAX fits usize");
        FrameTable {
            state: sys::zeroed_atomic_u64(n),
            refs: sys::zeroed_atomic_u32(n),
            pins: sys::zeroed_atomic_u32(n),
            maps: sys::zeroed_atomic_u32(n),
        }
    }

    /// Number of frames.
    pub fn len(&self) -> u64 {
        self.state.len() as u64
    }

    /// True if the table has no frames.
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    fn idx(&self, pfn: Pfn) -> usize {
        let i = pfn.raw() as usize;
        assert!(i < self.state.len(), "{pfn} outside the frame table ({} frames)", self.len());
        i
    }

    /// The head frame that carries the counts for `pfn` (itself unless a huge tail).
    pub fn head(&self, pfn: Pfn) -> Pfn {
        let w = self.state[self.idx(pfn)].load(Ordering::Acquire);
        if flags_of(w).contains(FrameFlags::HUGE_TAIL) { pfn.huge_head() } else { pfn }
    }

    /// A snapshot of `pfn`'s entry (counts are those of the entry itself, not of its head).
    pub fn info(&self, pfn: Pfn) -> FrameInfo {
        let i = self.idx(pfn);
        let w = self.state[i].load(Ordering::Acquire);
        FrameInfo {
            owner: Owner::decode(w),
            flags: flags_of(w),
            refs: self.refs[i].load(Ordering::Acquire),
            pins: self.pins[i].load(Ordering::Acquire),
            maps: self.maps[i].load(Ordering::Acquire),
        }
    }

    /// The owner of `pfn`.
    pub fn owner(&self, pfn: Pfn) -> Owner {
        Owner::decode(self.state[self.idx(pfn)].load(Ordering::Acquire))
    }

    /// `folio_maybe_dma_pinned`: true if the frame (or its huge frame) has a DMA pin.
    pub fn maybe_dma_pinned(&self, pfn: Pfn) -> bool {
        let h = self.head(pfn);
        self.pins[self.idx(h)].load(Ordering::Acquire) > 0
    }

    /// Hands free frames to `owner`. `huge` marks each 512-frame block as a compound frame.
    pub(crate) fn claim(&self, run: FrameRun, owner: Owner, flags: FrameFlags, huge: bool) {
        assert!(owner != Owner::Free, "claiming {run:?} for nobody");
        for pfn in run.iter() {
            let i = self.idx(pfn);
            let mut f = flags;
            if huge {
                f |= if pfn.is_huge_aligned() {
                    FrameFlags::HUGE_HEAD
                } else {
                    FrameFlags::HUGE_TAIL
                };
            }
            let w = owner.encode() | (u64::from(f.bits()) << FLAGS_SHIFT);
            let old = self.state[i].swap(w, Ordering::AcqRel);
            assert_eq!(
                Owner::decode(old),
                Owner::Free,
                "{pfn} claimed for {owner:?} while not free"
            );
            assert_eq!(self.refs[i].load(Ordering::Acquire), 0, "{pfn} claimed with references");
            assert_eq!(self.pins[i].load(Ordering::Acquire), 0, "{pfn} claimed while pinned");
        }
    }

    /// Changes the owner of owned frames, keeping flags (page cache → orphan).
    pub(crate) fn set_owner(&self, pfn: Pfn, owner: Owner) {
        let i = self.idx(pfn);
        let mut cur = self.state[i].load(Ordering::Acquire);
        loop {
            assert_ne!(Owner::decode(cur), Owner::Free, "{pfn}: set_owner on a free frame");
            let new = (cur & FLAGS_MASK) | owner.encode();
            match self.state[i].compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(w) => cur = w,
            }
        }
    }

    /// Marks frames free. Invariant 1: a frame is never freed while referenced.
    pub(crate) fn release(&self, run: FrameRun) {
        for pfn in run.iter() {
            let i = self.idx(pfn);
            let refs = self.refs[i].load(Ordering::Acquire);
            let pins = self.pins[i].load(Ordering::Acquire);
            let maps = self.maps[i].load(Ordering::Acquire);
            assert!(
                refs == 0 && pins == 0 && maps == 0,
                "invariant 1: freeing {pfn} ({:?}) with refs={refs} pins={pins} maps={maps}",
                self.owner(pfn)
            );
            let old = self.state[i].swap(0, Ordering::AcqRel);
            assert_ne!(Owner::decode(old), Owner::Free, "double free of {pfn}");
        }
    }

    /// Sets flags on a frame.
    pub fn set_flags(&self, pfn: Pfn, f: FrameFlags) {
        let i = self.idx(pfn);
        self.state[i].fetch_or(u64::from(f.bits()) << FLAGS_SHIFT, Ordering::AcqRel);
    }

    /// Clears flags on a frame.
    pub fn clear_flags(&self, pfn: Pfn, f: FrameFlags) {
        let i = self.idx(pfn);
        self.state[i].fetch_and(!(u64::from(f.bits()) << FLAGS_SHIFT), Ordering::AcqRel);
    }

    /// Takes a transient reference on a head frame.
    pub(crate) fn get(&self, head: Pfn) {
        let i = self.idx(head);
        let old = self.refs[i].fetch_add(1, Ordering::AcqRel);
        assert!(old < u32::MAX, "refcount overflow on {head}");
    }

    /// Drops a reference; returns the remaining count.
    pub(crate) fn put(&self, head: Pfn) -> u32 {
        let i = self.idx(head);
        let old = self.refs[i].fetch_sub(1, Ordering::AcqRel);
        assert!(old > 0, "invariant 2: refcount underflow on {head}");
        old - 1
    }

    /// Records a page-table mapping of a head frame (takes a reference).
    pub(crate) fn map(&self, head: Pfn) {
        self.get(head);
        self.maps[self.idx(head)].fetch_add(1, Ordering::AcqRel);
    }

    /// Removes a page-table mapping; returns the remaining reference count.
    pub(crate) fn unmap(&self, head: Pfn) -> u32 {
        let old = self.maps[self.idx(head)].fetch_sub(1, Ordering::AcqRel);
        assert!(old > 0, "mapcount underflow on {head}");
        self.put(head)
    }

    /// Pins a head frame for DMA (takes a reference).
    pub(crate) fn pin(&self, head: Pfn) {
        let i = self.idx(head);
        let old = self.pins[i].fetch_add(1, Ordering::AcqRel);
        assert!(old < PIN_COUNT_MAX, "pin count of {head} reached {PIN_COUNT_MAX}: leaked pins");
        self.get(head);
    }

    /// Unpins a head frame; returns the remaining reference count. Invariant 2: pin counts
    /// never go negative.
    pub(crate) fn unpin(&self, head: Pfn) -> u32 {
        let old = self.pins[self.idx(head)].fetch_sub(1, Ordering::AcqRel);
        assert!(old > 0, "invariant 2: pin count underflow on {head}");
        self.put(head)
    }

    /// Removes `pins` pins (and their references) from a frame that is being reused under
    /// DMA; its pinners were told their pins are orphaned.
    pub(crate) fn strip_pins(&self, head: Pfn, pins: u32) {
        let i = self.idx(head);
        let old = self.pins[i].fetch_sub(pins, Ordering::AcqRel);
        assert!(old >= pins, "stripping {pins} pins from {head} which has {old}");
        let old_refs = self.refs[i].fetch_sub(pins, Ordering::AcqRel);
        assert!(old_refs >= pins, "stripping {pins} refs from {head} which has {old_refs}");
    }

    /// Checks every entry: free frames carry nothing, tails carry no counts, pins and maps are
    /// within refs. Returns the problems found.
    pub fn check_invariants(&self) -> Vec<String> {
        let mut bad = Vec::new();
        for i in 0..self.state.len() {
            let pfn = Pfn::new(i as u64);
            let info = self.info(pfn);
            if info.owner == Owner::Free && (info.refs | info.pins | info.maps) != 0 {
                bad.push(format!(
                    "free {pfn} has refs={} pins={} maps={}",
                    info.refs, info.pins, info.maps
                ));
            }
            if info.flags.contains(FrameFlags::HUGE_TAIL)
                && (info.refs | info.pins | info.maps) != 0
            {
                bad.push(format!("huge tail {pfn} carries counts"));
            }
            if u64::from(info.pins) + u64::from(info.maps) > u64::from(info.refs) {
                bad.push(format!(
                    "{pfn}: pins {} + maps {} > refs {}",
                    info.pins, info.maps, info.refs
                ));
            }
            if bad.len() > 32 {
                break;
            }
        }
        bad
    }
}

fn flags_of(w: u64) -> FrameFlags {
    FrameFlags::from_bits_truncate(((w & FLAGS_MASK) >> FLAGS_SHIFT) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_counts_kept_apart() {
        let t = FrameTable::new(1024);
        let p = Pfn::new(3);
        t.claim(FrameRun::new(p, 1), Owner::Anonymous, FrameFlags::MOVABLE, false);
        t.map(p);
        assert!(!t.maybe_dma_pinned(p));
        t.pin(p);
        assert!(t.maybe_dma_pinned(p));
        let i = t.info(p);
        assert_eq!((i.refs, i.pins, i.maps), (2, 1, 1));
        assert_eq!(t.unpin(p), 1);
        assert_eq!(t.unmap(p), 0);
        t.release(FrameRun::new(p, 1));
        assert_eq!(t.owner(p), Owner::Free);
        assert!(t.check_invariants().is_empty());
    }

    #[test]
    fn frame_huge_counts_on_head() {
        let t = FrameTable::new(2048);
        let run = FrameRun::new(Pfn::new(512), 512);
        t.claim(run, Owner::Anonymous, FrameFlags::empty(), true);
        assert_eq!(t.head(Pfn::new(700)), Pfn::new(512));
        assert_eq!(t.head(Pfn::new(512)), Pfn::new(512));
        t.pin(Pfn::new(512));
        assert!(t.maybe_dma_pinned(Pfn::new(1023)));
        t.unpin(Pfn::new(512));
        t.release(run);
    }

    #[test]
    fn frame_owner_encoding_round_trips() {
        for o in [
            Owner::Free,
            Owner::Anonymous,
            Owner::FileBlock(FileId::new(FILE_ID_MAX)),
            Owner::PageCache(FileId::new(7)),
            Owner::Device,
            Owner::Metadata,
            Owner::Orphan,
        ] {
            assert_eq!(Owner::decode(o.encode()), o);
        }
    }

    #[test]
    #[should_panic(expected = "invariant 1")]
    fn frame_free_while_pinned_is_a_violation() {
        let t = FrameTable::new(16);
        t.claim(
            FrameRun::new(Pfn::new(1), 1),
            Owner::FileBlock(FileId::new(1)),
            FrameFlags::empty(),
            false,
        );
        t.pin(Pfn::new(1));
        t.release(FrameRun::new(Pfn::new(1), 1));
    }

    #[test]
    #[should_panic(expected = "invariant 2")]
    fn frame_unpin_underflow_is_a_violation() {
        let t = FrameTable::new(16);
        t.claim(FrameRun::new(Pfn::new(1), 1), Owner::Anonymous, FrameFlags::empty(), false);
        t.unpin(Pfn::new(1));
    }
}
