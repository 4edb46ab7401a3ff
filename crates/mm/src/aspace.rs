//! Address spaces: one per application context. VMAs, a page table, notifier subscriptions,
//! and the operations of `mmap(2)`, `munmap(2)`, `mremap(2)`, `mprotect(2)` and
//! `madvise(MADV_DONTNEED)` with Linux's semantics where they matter here:
//! - addresses must be page aligned (`EINVAL`), lengths are rounded up, a zero length is
//!   `EINVAL`;
//! - huge anonymous mappings (MAP_HUGETLB semantics) need 2 MiB alignment for every cut;
//! - `mprotect` and `madvise` over unmapped pages fail with `ENOMEM`;
//! - `mremap` of a range not inside one mapping fails with `EFAULT`; growing without
//!   `MREMAP_MAYMOVE` and no room fails with `ENOMEM`.
//!
//! Locks: `vmas` (the mmap lock) is taken before the reverse map, which is taken before `pt`
//! (the page-table lock). Faults hold `vmas` for reading; changes of the VMA set hold it for
//! writing. A file zap from the filesystem takes only the reverse map and `pt`, through the
//! [`Mmu`] it holds, so it never waits on `vmas` (faults hold `vmas` while calling into the
//! filesystem).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{RwLock, RwLockWriteGuard};

use crate::backing::FileBacking;
use crate::error::{MmError, Result};
use crate::frame::FrameFlags;
use crate::limits::{DEFAULT_PIN_LIMIT_BYTES, MAX_VMAS, VA_END};
use crate::memory::Memory;
use crate::notifier::{IntervalNotifier, InvalidateReason, NotifierHandle, NotifierHub};
use crate::pagetable::{PageTable, PteFlags, VPN_LIMIT};
use crate::types::{
    AspaceId, FRAMES_PER_HUGE, FileOffset, HUGE_PAGE_SIZE, PAGE_SIZE, VirtAddr, VirtRange,
    is_page_aligned,
};
use crate::vma::{Prot, Vma, VmaKind, VmaTree};

bitflags::bitflags! {
    /// `mmap` flags.
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
    pub struct MapFlags: u8 {
        /// Map exactly at the address, replacing what is there (MAP_FIXED).
        const FIXED = 1 << 0;
        /// Map exactly at the address, `EEXIST` if anything is there.
        const FIXED_NOREPLACE = 1 << 1;
        /// Fault every page in now (MAP_POPULATE).
        const POPULATE = 1 << 2;
        /// Back with 2 MiB frames (MAP_HUGETLB; anonymous only).
        const HUGE = 1 << 3;
    }
}

bitflags::bitflags! {
    /// `mremap` flags.
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
    pub struct RemapFlags: u8 {
        /// The mapping may move (MREMAP_MAYMOVE).
        const MAYMOVE = 1 << 0;
        /// Move to the given address (MREMAP_FIXED; needs MAYMOVE).
        const FIXED = 1 << 1;
    }
}

/// What to map.
#[derive(Clone, Debug)]
pub enum MapKind {
    /// Private anonymous memory.
    Anonymous,
    /// A shared mapping of a file from a page-aligned offset.
    File {
        /// The file.
        backing: Arc<dyn FileBacking>,
        /// Where in the file.
        offset: FileOffset,
    },
}

/// An `mmap` request.
#[derive(Clone, Debug)]
pub struct MmapRequest {
    /// Address hint, or the exact address with `FIXED`/`FIXED_NOREPLACE`.
    pub addr: Option<VirtAddr>,
    /// Length in bytes (rounded up to the page or huge-page size).
    pub len: u64,
    /// Protection.
    pub prot: Prot,
    /// Flags.
    pub flags: MapFlags,
    /// What to map.
    pub kind: MapKind,
}

impl MmapRequest {
    /// Anonymous read-write memory.
    pub fn anonymous(len: u64) -> MmapRequest {
        MmapRequest {
            addr: None,
            len,
            prot: Prot::READ | Prot::WRITE,
            flags: MapFlags::empty(),
            kind: MapKind::Anonymous,
        }
    }
    /// A read-write shared mapping of a file.
    pub fn file(backing: Arc<dyn FileBacking>, offset: FileOffset, len: u64) -> MmapRequest {
        MmapRequest {
            addr: None,
            len,
            prot: Prot::READ | Prot::WRITE,
            flags: MapFlags::empty(),
            kind: MapKind::File { backing, offset },
        }
    }
    /// With this protection.
    pub fn prot(mut self, prot: Prot) -> MmapRequest {
        self.prot = prot;
        self
    }
    /// With these flags added.
    pub fn flags(mut self, flags: MapFlags) -> MmapRequest {
        self.flags |= flags;
        self
    }
    /// At this address (a hint unless `FIXED` or `FIXED_NOREPLACE`).
    pub fn at(mut self, addr: VirtAddr) -> MmapRequest {
        self.addr = Some(addr);
        self
    }
}

/// A mapping, for listings.
#[derive(Clone, Debug)]
pub struct MappingInfo {
    /// Where.
    pub range: VirtRange,
    /// Protection.
    pub prot: Prot,
    /// What.
    pub kind: VmaKind,
}

/// Pinned-memory accounting of a context (the RLIMIT_MEMLOCK analogue), shared with its pins
/// so they can uncharge after the address space is gone.
#[derive(Debug)]
pub(crate) struct PinAccount {
    pub(crate) pinned: AtomicU64,
    pub(crate) limit: AtomicU64,
}

/// The translation half of an address space: page table and notifiers. Held by the address
/// space and by the reverse map, so a file zap can always reach the translations, even while
/// the address space is being torn down.
#[derive(Debug)]
pub struct Mmu {
    id: AspaceId,
    pub(crate) mem: Arc<Memory>,
    pub(crate) pt: RwLock<PageTable>,
    pub(crate) hub: Arc<NotifierHub>,
}

impl Mmu {
    pub(crate) fn id(&self) -> AspaceId {
        self.id
    }

    /// Invalidates subscribers of pages `[lo, hi)`, then removes the translations and drops
    /// their frame references. Returns the number of leaves removed.
    pub(crate) fn zap(&self, lo: u64, hi: u64, reason: InvalidateReason) -> u64 {
        let range = page_range(lo, hi);
        let _inv = self.hub.invalidate(range, reason);
        let mut heads = Vec::new();
        {
            let mut pt = self.pt.write();
            pt.remove_range(lo, hi, &mut |_, pte, _| {
                if pte.flags.contains(PteFlags::DIRTY) {
                    self.mem.frames().set_flags(pte.pfn, FrameFlags::DIRTY);
                }
                heads.push(pte.pfn);
            });
        }
        let n = heads.len() as u64;
        self.mem.put_heads(heads, crate::memory::Release::Unmap);
        n
    }
}

pub(crate) fn page_range(lo: u64, hi: u64) -> VirtRange {
    VirtRange::from_bounds(VirtAddr::from_vpn(lo), VirtAddr::from_vpn(hi))
        .expect("page numbers below VPN_LIMIT convert without overflow")
}

/// An address space.
#[derive(Debug)]
pub struct AddressSpace {
    me: Weak<AddressSpace>,
    pub(crate) mmu: Arc<Mmu>,
    pub(crate) vmas: RwLock<VmaTree>,
    pub(crate) account: Arc<PinAccount>,
}

/// Validates `addr`/`len` of an operation and returns its pages `[lo, hi)`; `unit` is the page
/// or huge-page size the length rounds up to.
pub(crate) fn pages_of(addr: VirtAddr, len: u64, unit: u64, op: &str) -> Result<(u64, u64)> {
    if len == 0 {
        return Err(MmError::invalid(format!("{op}: zero length")));
    }
    if !addr.raw().is_multiple_of(unit) {
        return Err(MmError::invalid(format!("{op}: address {addr} not aligned to {unit}")));
    }
    let len = len
        .checked_next_multiple_of(unit)
        .ok_or_else(|| MmError::invalid(format!("{op}: length overflows")))?;
    let end = addr.raw().checked_add(len).filter(|e| *e <= VA_END);
    let Some(end) = end else {
        return Err(MmError::invalid(format!("{op}: {addr}+{len} beyond the user address space")));
    };
    Ok((addr.vpn(), end / PAGE_SIZE))
}

impl AddressSpace {
    /// A new, empty address space in `mem`.
    pub fn new(mem: &Arc<Memory>) -> Arc<AddressSpace> {
        let mmu = Arc::new(Mmu {
            id: mem.next_aspace_id(),
            mem: Arc::clone(mem),
            pt: RwLock::new(PageTable::new()),
            hub: NotifierHub::new(),
        });
        Arc::new_cyclic(|me| AddressSpace {
            me: me.clone(),
            mmu,
            vmas: RwLock::new(VmaTree::default()),
            account: Arc::new(PinAccount {
                pinned: AtomicU64::new(0),
                limit: AtomicU64::new(DEFAULT_PIN_LIMIT_BYTES),
            }),
        })
    }

    /// This address space's id.
    pub fn id(&self) -> AspaceId {
        self.mmu.id
    }
    /// The memory it lives in.
    pub fn memory(&self) -> &Arc<Memory> {
        &self.mmu.mem
    }
    /// Bytes pinned by this context.
    pub fn pinned_bytes(&self) -> u64 {
        self.account.pinned.load(Ordering::Acquire)
    }
    /// Sets the pin limit (bytes); pins beyond it fail with `ENOMEM`.
    pub fn set_pin_limit(&self, bytes: u64) {
        self.account.limit.store(bytes, Ordering::Release);
    }
    /// Resident translations: (4 KiB leaves, huge leaves).
    pub fn resident(&self) -> (u64, u64) {
        self.mmu.pt.read().leaf_counts()
    }
    /// Notifier subscriptions.
    pub fn notifier_count(&self) -> usize {
        self.mmu.hub.len()
    }
    /// The current notifier sequence (even when idle).
    pub fn notifier_seq(&self) -> u64 {
        self.mmu.hub.current_seq()
    }

    /// Subscribes `ops` to `[addr, addr + len)`: every change of a translation there calls it
    /// first. Dropping the handle unsubscribes.
    pub fn subscribe(
        &self,
        addr: VirtAddr,
        len: u64,
        ops: Weak<dyn IntervalNotifier>,
    ) -> Result<NotifierHandle> {
        let range = VirtRange::new(addr, len)
            .ok_or_else(|| MmError::invalid("notifier range overflows"))?;
        self.mmu.hub.subscribe(range, ops)
    }

    /// Maps memory; returns its address.
    pub fn mmap(&self, req: MmapRequest) -> Result<VirtAddr> {
        let huge = req.flags.contains(MapFlags::HUGE);
        let kind = match &req.kind {
            MapKind::Anonymous => VmaKind::Anonymous { huge },
            MapKind::File { backing, offset } => {
                if huge {
                    return Err(MmError::invalid("mmap: MAP_HUGETLB on a file mapping"));
                }
                if !is_page_aligned(offset.raw()) {
                    return Err(MmError::invalid(format!(
                        "mmap: file offset {offset} not page aligned"
                    )));
                }
                if offset.raw().checked_add(req.len).is_none() {
                    return Err(MmError::invalid("mmap: file offset + length overflows"));
                }
                VmaKind::File { backing: Arc::clone(backing), pgoff: offset.raw() / PAGE_SIZE }
            }
        };
        let unit = if huge { HUGE_PAGE_SIZE } else { PAGE_SIZE };
        let fixed = req.flags.intersects(MapFlags::FIXED | MapFlags::FIXED_NOREPLACE);
        let mut vmas = self.vmas.write();
        if vmas.len() >= MAX_VMAS {
            return Err(MmError::TooManyMappings { count: vmas.len() });
        }
        let pages =
            req.len.checked_next_multiple_of(unit).filter(|l| *l > 0).map(|l| l / PAGE_SIZE);
        let Some(pages) = pages else {
            return Err(MmError::invalid("mmap: zero or overflowing length"));
        };
        let lo = match req.addr {
            Some(a) if fixed => {
                let (lo, hi) = pages_of(a, req.len, unit, "mmap")?;
                if req.flags.contains(MapFlags::FIXED_NOREPLACE) {
                    if !vmas.is_free(lo, hi) {
                        return Err(MmError::AlreadyMapped { addr: a });
                    }
                } else {
                    self.unmap_locked(&mut vmas, lo, hi, InvalidateReason::Unmap)?;
                }
                lo
            }
            Some(a)
                if a.raw() % unit == 0
                    && pages_of(a, req.len, unit, "mmap")
                        .is_ok_and(|(lo, hi)| vmas.is_free(lo, hi)) =>
            {
                a.vpn()
            }
            _ => vmas
                .find_free(pages, unit / PAGE_SIZE)
                .ok_or(MmError::NoVirtualSpace { len: req.len })?,
        };
        let vma = Vma { start: lo, end: lo + pages, prot: req.prot, kind };
        vmas.insert(vma.clone());
        self.mmu.mem.rmap.replace(&self.mmu, &[], &[&vma], || {});
        if req.flags.contains(MapFlags::POPULATE) {
            let vmas = RwLockWriteGuard::downgrade(vmas);
            // MAP_POPULATE is best effort, as on Linux: the mapping stands either way.
            let _ = self.populate_locked(&vmas, lo, lo + pages, req.prot.contains(Prot::WRITE));
        }
        Ok(VirtAddr::from_vpn(lo))
    }

    /// Anonymous read-write memory of `len` bytes.
    pub fn mmap_anonymous(&self, len: u64) -> Result<VirtAddr> {
        self.mmap(MmapRequest::anonymous(len))
    }

    /// Unmaps `[addr, addr + len)`; unmapped parts are ignored, as on Linux.
    pub fn munmap(&self, addr: VirtAddr, len: u64) -> Result<()> {
        let (lo, hi) = pages_of(addr, len, PAGE_SIZE, "munmap")?;
        let mut vmas = self.vmas.write();
        self.unmap_locked(&mut vmas, lo, hi, InvalidateReason::Unmap)
    }

    fn check_huge_cuts(vmas: &VmaTree, lo: u64, hi: u64) -> Result<()> {
        for v in vmas.overlapping(lo, hi).filter(|v| v.is_huge()) {
            for cut in [lo, hi] {
                if v.start < cut && cut < v.end && cut % FRAMES_PER_HUGE != 0 {
                    return Err(MmError::invalid(format!(
                        "cut at {} inside a huge mapping is not 2 MiB aligned",
                        VirtAddr::from_vpn(cut)
                    )));
                }
            }
        }
        Ok(())
    }

    /// Splits the VMA straddling `at`, keeping the reverse map in step.
    fn split_locked(&self, vmas: &mut VmaTree, at: u64) {
        let Some(old) = vmas.find(at).filter(|v| v.start < at).cloned() else { return };
        vmas.split_at(at);
        let head = vmas.find(old.start).expect("head of split").clone();
        let tail = vmas.find(at).expect("tail of split").clone();
        self.mmu.mem.rmap.replace(&self.mmu, &[&old], &[&head, &tail], || {});
    }

    fn unmap_locked(
        &self,
        vmas: &mut VmaTree,
        lo: u64,
        hi: u64,
        reason: InvalidateReason,
    ) -> Result<()> {
        Self::check_huge_cuts(vmas, lo, hi)?;
        self.split_locked(vmas, lo);
        self.split_locked(vmas, hi);
        let removed = vmas.take_inside(lo, hi);
        // Zap before dropping the reverse-map entries: until the translations are gone, a
        // layout change must still find them.
        self.mmu.zap(lo, hi, reason);
        for v in &removed {
            self.mmu.mem.rmap.replace(&self.mmu, &[v], &[], || {});
        }
        Ok(())
    }

    /// `mremap`: shrinks, grows in place, or moves `[old, old + old_len)`.
    pub fn mremap(
        &self,
        old: VirtAddr,
        old_len: u64,
        new_len: u64,
        flags: RemapFlags,
        new_addr: Option<VirtAddr>,
    ) -> Result<VirtAddr> {
        if old_len == 0 {
            return Err(MmError::invalid(
                "mremap: old length 0 (duplicating shared mappings) is not supported",
            ));
        }
        if new_len == 0 {
            return Err(MmError::invalid("mremap: new length 0"));
        }
        if flags.contains(RemapFlags::FIXED) && !flags.contains(RemapFlags::MAYMOVE) {
            return Err(MmError::invalid("mremap: MREMAP_FIXED without MREMAP_MAYMOVE"));
        }
        if !old.is_page_aligned() {
            return Err(MmError::invalid(format!("mremap: address {old} not page aligned")));
        }
        let mut vmas = self.vmas.write();
        let vma = vmas.find(old.vpn()).cloned().ok_or(MmError::NotMapped { addr: old })?;
        let unit = if vma.is_huge() { HUGE_PAGE_SIZE } else { PAGE_SIZE };
        let (olo, ohi) = pages_of(old, old_len, unit, "mremap")?;
        let new_pages = new_len
            .checked_next_multiple_of(unit)
            .ok_or_else(|| MmError::invalid("mremap: length overflows"))?
            / PAGE_SIZE;
        if ohi > vma.end {
            return Err(MmError::NotMapped { addr: VirtAddr::from_vpn(vma.end) });
        }
        if flags.contains(RemapFlags::FIXED) {
            let to = new_addr
                .ok_or_else(|| MmError::invalid("mremap: MREMAP_FIXED without an address"))?;
            let (nlo, nhi) = pages_of(to, new_len, unit, "mremap")?;
            if nlo < ohi && olo < nhi {
                return Err(MmError::invalid("mremap: new range overlaps the old one"));
            }
            self.unmap_locked(&mut vmas, nlo, nhi, InvalidateReason::Unmap)?;
            self.move_locked(&mut vmas, olo, ohi, nlo, new_pages)?;
            return Ok(VirtAddr::from_vpn(nlo));
        }
        let old_pages = ohi - olo;
        if new_pages <= old_pages {
            if new_pages < old_pages {
                self.unmap_locked(&mut vmas, olo + new_pages, ohi, InvalidateReason::Remap)?;
            }
            return Ok(old);
        }
        let grow_to = olo + new_pages;
        if ohi == vma.end && grow_to <= VA_END / PAGE_SIZE && vmas.is_free(ohi, grow_to) {
            let mut grown = vma.clone();
            grown.end = grow_to;
            vmas.get_mut(vma.start).expect("vma found above").end = grow_to;
            self.mmu.mem.rmap.replace(&self.mmu, &[&vma], &[&grown], || {});
            return Ok(old);
        }
        if !flags.contains(RemapFlags::MAYMOVE) {
            return Err(MmError::NoVirtualSpace { len: new_len });
        }
        let nlo = vmas
            .find_free(new_pages, unit / PAGE_SIZE)
            .ok_or(MmError::NoVirtualSpace { len: new_len })?;
        self.move_locked(&mut vmas, olo, ohi, nlo, new_pages)?;
        Ok(VirtAddr::from_vpn(nlo))
    }

    /// Moves pages `[olo, ohi)` (inside one VMA) to a new VMA at `nlo` of `new_pages` pages
    /// (≥ the old size; the tail faults in fresh).
    fn move_locked(
        &self,
        vmas: &mut VmaTree,
        olo: u64,
        ohi: u64,
        nlo: u64,
        new_pages: u64,
    ) -> Result<()> {
        Self::check_huge_cuts(vmas, olo, ohi)?;
        self.split_locked(vmas, olo);
        self.split_locked(vmas, ohi);
        let mut moving = vmas.take_inside(olo, ohi);
        let m = moving.pop().expect("the range lies inside one vma");
        debug_assert!(moving.is_empty());
        let mut nv = m.clone();
        nv.start = nlo;
        nv.end = nlo + new_pages.max(ohi - olo);
        vmas.insert(nv.clone());
        let mmu = &self.mmu;
        mmu.mem.rmap.replace(mmu, &[&m], &[&nv], || {
            let _inv = mmu.hub.invalidate(page_range(olo, ohi), InvalidateReason::Remap);
            let mut pt = mmu.pt.write();
            let mut moved = Vec::new();
            pt.remove_range(olo, ohi, &mut |vpn, pte, huge| moved.push((vpn, pte, huge)));
            for (vpn, pte, huge) in moved {
                let to = nlo + (vpn - olo);
                let ok = if huge { pt.insert_huge(to, pte) } else { pt.insert(to, pte) };
                assert!(ok, "mremap target {to:#x} was not empty");
            }
        });
        Ok(())
    }

    /// `mprotect`: changes the protection of `[addr, addr + len)`; every page must be mapped
    /// (`ENOMEM` otherwise). Removing a permission invalidates subscribers first.
    pub fn mprotect(&self, addr: VirtAddr, len: u64, prot: Prot) -> Result<()> {
        let (lo, hi) = pages_of(addr, len, PAGE_SIZE, "mprotect")?;
        let mut vmas = self.vmas.write();
        if !vmas.covers(lo, hi) {
            return Err(MmError::RangeNotMapped { addr });
        }
        Self::check_huge_cuts(&vmas, lo, hi)?;
        self.split_locked(&mut vmas, lo);
        self.split_locked(&mut vmas, hi);
        let starts: Vec<u64> = vmas.overlapping(lo, hi).map(|v| v.start).collect();
        let mut downgrade = false;
        for s in starts {
            let v = vmas.get_mut(s).expect("listed above");
            downgrade |= !prot.contains(v.prot);
            v.prot = prot;
        }
        if downgrade {
            let _inv = self.mmu.hub.invalidate(page_range(lo, hi), InvalidateReason::Protection);
            if !prot.contains(Prot::WRITE) {
                self.mmu
                    .pt
                    .write()
                    .walk_mut(lo, hi, &mut |_, pte, _| pte.flags.remove(PteFlags::WRITE));
            }
        }
        Ok(())
    }

    /// `madvise(MADV_DONTNEED)`: drops the translations of `[addr, addr + len)`. Anonymous
    /// pages read as zeros afterwards (a pinned page lives on for its pin only); file pages
    /// fault back in from the file.
    pub fn madvise_dontneed(&self, addr: VirtAddr, len: u64) -> Result<()> {
        let (lo, hi) = pages_of(addr, len, PAGE_SIZE, "madvise")?;
        let vmas = self.vmas.read();
        if !vmas.covers(lo, hi) {
            return Err(MmError::RangeNotMapped { addr });
        }
        Self::check_huge_cuts(&vmas, lo, hi)?;
        self.mmu.zap(lo, hi, InvalidateReason::DontNeed);
        Ok(())
    }

    /// The mappings, in address order.
    pub fn mappings(&self) -> Vec<MappingInfo> {
        self.vmas
            .read()
            .iter()
            .map(|v| MappingInfo {
                range: page_range(v.start, v.end),
                prot: v.prot,
                kind: v.kind.clone(),
            })
            .collect()
    }

    /// A strong reference to this address space.
    pub fn arc(&self) -> Arc<AddressSpace> {
        self.me.upgrade().expect("an address space in use is alive")
    }
}

impl Drop for AddressSpace {
    fn drop(&mut self) {
        let vmas = std::mem::take(self.vmas.get_mut());
        self.mmu.zap(0, VPN_LIMIT, InvalidateReason::Release);
        let all: Vec<&Vma> = vmas.iter().collect();
        for v in all {
            self.mmu.mem.rmap.replace(&self.mmu, &[v], &[], || {});
        }
    }
}
