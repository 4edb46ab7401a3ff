//! Faults and CPU access through an address space.
//!
//! - Anonymous memory faults in a zeroed frame on first touch (read or write). Huge mappings
//!   fault a whole 2 MiB frame.
//! - File mappings ask the [`crate::FileBacking`], which installs the frame while the file's
//!   layout is stable. A read fault installs a read-only translation, so the first write
//!   faults again and the filesystem hears of it (dirty tracking, `page_mkwrite`).
//! - [`AddressSpace::read`] / [`AddressSpace::write`] copy through the page table with raw
//!   copies under the page-table read lock, which a zap needs for writing: a frame cannot be
//!   freed in the middle of a copy.
//! - [`AddressSpace::range_fault`] is `hmm_range_fault`: fault a range in and report its frames
//!   without pinning them; the caller validates with its notifier's `read_retry`.

use crate::aspace::{AddressSpace, pages_of};
use crate::backing::FileBacking;
use crate::error::{MmError, Result};
use crate::frame::{FrameFlags, Owner};
use crate::pagetable::{Pte, PteFlags, VPN_LIMIT};
use crate::types::{FRAMES_PER_HUGE, FrameRun, PAGE_SIZE, Pfn, PoolOffset, VirtAddr};
use crate::vma::{Prot, Vma, VmaKind, VmaTree};
use crate::{Placement, alloc};

fn check_prot(vma: &Vma, vpn: u64, write: bool) -> Result<()> {
    let addr = VirtAddr::from_vpn(vpn);
    if write && !vma.prot.contains(Prot::WRITE) {
        return Err(MmError::WriteProtected { addr });
    }
    if !write && !vma.prot.contains(Prot::READ) {
        return Err(MmError::ReadProtected { addr });
    }
    Ok(())
}

fn leaf_flags(writable: bool, dirty: bool) -> PteFlags {
    let mut f = PteFlags::empty();
    if writable {
        f |= PteFlags::WRITE;
    }
    if dirty {
        f |= PteFlags::DIRTY;
    }
    f
}

enum Stop {
    Done,
    Missing(u64),
    NextVma,
}

impl AddressSpace {
    /// Makes page `vpn` present with at least the access asked for. `vmas` is held for reading.
    pub(crate) fn fault_locked(&self, vmas: &VmaTree, vpn: u64, write: bool) -> Result<()> {
        let addr = VirtAddr::from_vpn(vpn);
        let vma = vmas.find(vpn).ok_or(MmError::NotMapped { addr })?;
        check_prot(vma, vpn, write)?;
        self.memory().counters.faults.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &vma.kind {
            VmaKind::Anonymous { huge } => self.fault_anon(vma, vpn, write, *huge),
            VmaKind::File { backing, .. } => {
                let pgoff = vma.pgoff_of(vpn).expect("file vma");
                self.fault_file(vma, backing.as_ref(), vpn, pgoff, write).map_err(|e| match e {
                    MmError::BeyondEof { file, .. } => MmError::BeyondEof { addr, file },
                    other => other,
                })
            }
        }
    }

    /// True if `vpn` was already present with the access asked for (upgrading an anonymous
    /// read-only leaf to writable when the VMA allows it).
    fn present_or_upgrade(&self, vma: &Vma, vpn: u64, write: bool, upgrade: bool) -> bool {
        let mut pt = self.mmu.pt.write();
        let Some(m) = pt.lookup(vpn) else { return false };
        if !write || m.pte.flags.contains(PteFlags::WRITE) {
            return true;
        }
        if !upgrade || !vma.prot.contains(Prot::WRITE) {
            return false;
        }
        pt.walk_mut(vpn, vpn + 1, &mut |_, p, _| p.flags |= PteFlags::WRITE | PteFlags::DIRTY);
        self.memory().frames().set_flags(m.pte.pfn, FrameFlags::DIRTY);
        true
    }

    fn fault_anon(&self, vma: &Vma, vpn: u64, write: bool, huge: bool) -> Result<()> {
        if self.present_or_upgrade(vma, vpn, write, true) {
            return Ok(());
        }
        let (base, n, placement) = if huge {
            (vpn & !(FRAMES_PER_HUGE - 1), FRAMES_PER_HUGE, Placement::Huge)
        } else {
            (vpn, 1, Placement::Contiguous)
        };
        let mem = self.memory();
        let runs = mem.alloc(n, placement, Owner::Anonymous, true)?;
        debug_assert_eq!(runs.len(), 1);
        let run = runs[0];
        let pte = Pte { pfn: run.pfn, flags: leaf_flags(vma.prot.contains(Prot::WRITE), write) };
        let installed = {
            let mut pt = self.mmu.pt.write();
            let ok = if huge { pt.insert_huge(base, pte) } else { pt.insert(base, pte) };
            if ok {
                mem.frames().map(run.pfn);
            }
            ok
        };
        if !installed {
            // Another fault won the race.
            mem.free(run);
        }
        Ok(())
    }

    fn fault_file(
        &self,
        vma: &Vma,
        backing: &dyn FileBacking,
        vpn: u64,
        pgoff: u64,
        write: bool,
    ) -> Result<()> {
        if self.present_or_upgrade(vma, vpn, write, false) {
            return Ok(());
        }
        let writable = write && vma.prot.contains(Prot::WRITE);
        let frames = self.memory().frames();
        let mut install = |pfn: Pfn| -> Result<()> {
            let mut pt = self.mmu.pt.write();
            match pt.lookup(vpn) {
                Some(m) => {
                    assert_eq!(
                        m.pte.pfn, pfn,
                        "stale translation at {vpn:#x}: a layout change did not zap"
                    );
                    if writable {
                        pt.walk_mut(vpn, vpn + 1, &mut |_, p, _| {
                            p.flags |= PteFlags::WRITE | PteFlags::DIRTY
                        });
                    }
                }
                None => {
                    let ok = pt.insert(vpn, Pte { pfn, flags: leaf_flags(writable, writable) });
                    debug_assert!(ok);
                    frames.map(frames.head(pfn));
                }
            }
            if writable {
                frames.set_flags(pfn, FrameFlags::DIRTY);
            }
            Ok(())
        };
        backing.fault(pgoff, write, &mut install)
    }

    /// Faults in every page of `[lo, hi)` (all mapped: the caller checked).
    pub(crate) fn populate_locked(
        &self,
        vmas: &VmaTree,
        lo: u64,
        hi: u64,
        write: bool,
    ) -> Result<()> {
        let parts: Vec<Vma> = vmas.overlapping(lo, hi).cloned().collect();
        for v in parts {
            let (a, b) = (lo.max(v.start), hi.min(v.end));
            check_prot(&v, a, write)?;
            match v.kind {
                VmaKind::Anonymous { huge: false } => self.populate_anon(&v, a, b, write)?,
                VmaKind::Anonymous { huge: true } => {
                    let mut base = a & !(FRAMES_PER_HUGE - 1);
                    while base < b {
                        self.fault_locked(vmas, base.max(a), write)?;
                        base += FRAMES_PER_HUGE;
                    }
                }
                VmaKind::File { .. } => {
                    for vpn in self.missing(a, b, write) {
                        self.fault_locked(vmas, vpn, write)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Pages of `[a, b)` not present with the access asked for.
    fn missing(&self, a: u64, b: u64, write: bool) -> Vec<u64> {
        let mut ok = vec![false; (b - a) as usize];
        self.mmu.pt.read().walk(a, b, &mut |base, m| {
            if write && !m.pte.flags.contains(PteFlags::WRITE) {
                return;
            }
            let span = if m.huge { FRAMES_PER_HUGE } else { 1 };
            for v in base.max(a)..(base + span).min(b) {
                ok[(v - a) as usize] = true;
            }
        });
        (a..b).filter(|v| !ok[(v - a) as usize]).collect()
    }

    /// Populates anonymous 4 KiB pages in bulk: one allocation, one page-table critical section.
    fn populate_anon(&self, vma: &Vma, a: u64, b: u64, write: bool) -> Result<()> {
        let todo = self.missing(a, b, write);
        let mut absent = Vec::with_capacity(todo.len());
        for vpn in todo {
            if !self.present_or_upgrade(vma, vpn, write, true) {
                absent.push(vpn);
            }
        }
        if absent.is_empty() {
            return Ok(());
        }
        let mem = self.memory();
        let runs =
            mem.alloc(absent.len() as u64, alloc::Placement::Anywhere, Owner::Anonymous, true)?;
        let flags = leaf_flags(vma.prot.contains(Prot::WRITE), write);
        let mut spare = Vec::new();
        {
            let mut pt = self.mmu.pt.write();
            let mut frames_iter = runs.iter().flat_map(|r| r.iter());
            for vpn in absent {
                let pfn = frames_iter.next().expect("allocated one frame per absent page");
                if pt.insert(vpn, Pte { pfn, flags }) {
                    mem.frames().map(pfn);
                } else {
                    spare.push(pfn);
                }
            }
        }
        for p in spare {
            mem.free(FrameRun::new(p, 1));
        }
        Ok(())
    }

    /// Copies `[addr, addr + len)` through the page table, faulting as needed; `f(pool_offset,
    /// buffer_offset, n)` moves the bytes of each piece.
    fn access(
        &self,
        addr: VirtAddr,
        len: u64,
        write: bool,
        f: &mut dyn FnMut(PoolOffset, usize, usize) -> Result<()>,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if addr.checked_add(len).is_none() {
            return Err(MmError::invalid(format!("access at {addr}+{len} overflows")));
        }
        let vmas = self.vmas.read();
        let mut done = 0u64;
        while done < len {
            let vpn = addr.checked_add(done).expect("checked above").vpn();
            let vma = vmas.find(vpn).ok_or(MmError::NotMapped { addr: VirtAddr::from_vpn(vpn) })?;
            check_prot(vma, vpn, write)?;
            let stop = {
                let pt = self.mmu.pt.read();
                loop {
                    if done == len {
                        break Stop::Done;
                    }
                    let va = VirtAddr::new(addr.raw() + done);
                    let vpn = va.vpn();
                    if vpn >= vma.end {
                        break Stop::NextVma;
                    }
                    let Some(m) = pt.lookup(vpn) else { break Stop::Missing(vpn) };
                    if write && !m.pte.flags.contains(PteFlags::WRITE) {
                        break Stop::Missing(vpn);
                    }
                    let mut n = (PAGE_SIZE - va.page_offset()).min(len - done);
                    // Copy the following pages in the same call while they map the following
                    // frames (one copy per physically contiguous stretch).
                    let (mut next_vpn, mut next_pfn) = (vpn + 1, m.pfn_for(vpn).raw() + 1);
                    while done + n < len && next_vpn < vma.end {
                        match pt.lookup(next_vpn) {
                            Some(m2)
                                if m2.pfn_for(next_vpn).raw() == next_pfn
                                    && (!write || m2.pte.flags.contains(PteFlags::WRITE)) =>
                            {
                                n += PAGE_SIZE.min(len - done - n);
                                next_vpn += 1;
                                next_pfn += 1;
                            }
                            _ => break,
                        }
                    }
                    let at = PoolOffset::new(m.pfn_for(vpn).offset().raw() + va.page_offset());
                    f(at, done as usize, n as usize)?;
                    done += n;
                }
            };
            match stop {
                Stop::Done | Stop::NextVma => {}
                Stop::Missing(vpn) => self.fault_locked(&vmas, vpn, write)?,
            }
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `addr` (CPU load semantics: faults in, `EFAULT` on unmapped,
    /// SIGBUS-equivalent beyond the end of a mapped file).
    pub fn read(&self, addr: VirtAddr, buf: &mut [u8]) -> Result<()> {
        let pool = self.memory().pool();
        self.access(addr, buf.len() as u64, false, &mut |at, off, n| {
            pool.read(at, &mut buf[off..off + n])
        })
    }

    /// Writes `data` at `addr` (CPU store semantics).
    pub fn write(&self, addr: VirtAddr, data: &[u8]) -> Result<()> {
        let pool = self.memory().pool();
        self.access(addr, data.len() as u64, true, &mut |at, off, n| {
            pool.write(at, &data[off..off + n])
        })
    }

    /// The frame mapped at `addr`, without faulting.
    pub fn translate(&self, addr: VirtAddr) -> Option<Pfn> {
        let vpn = addr.vpn();
        (vpn < VPN_LIMIT).then(|| self.mmu.pt.read().lookup(vpn).map(|m| m.pfn_for(vpn))).flatten()
    }

    /// `hmm_range_fault`: faults `[addr, addr + len)` in (for writing if `write`) and appends
    /// the frame of every page to `out`, without pinning. Callers must validate the result
    /// with their notifier subscription (`read_begin` before, `read_retry` after).
    pub fn range_fault(
        &self,
        addr: VirtAddr,
        len: u64,
        write: bool,
        out: &mut Vec<Pfn>,
    ) -> Result<()> {
        if !addr.is_page_aligned() || !len.is_multiple_of(PAGE_SIZE) {
            return Err(MmError::invalid("range_fault: unaligned range"));
        }
        let (lo, hi) = pages_of(addr, len, PAGE_SIZE, "range_fault")?;
        let vmas = self.vmas.read();
        if !vmas.covers(lo, hi) {
            let hole = (lo..hi).find(|v| vmas.find(*v).is_none()).unwrap_or(lo);
            return Err(MmError::NotMapped { addr: VirtAddr::from_vpn(hole) });
        }
        for _attempt in 0..64 {
            self.populate_locked(&vmas, lo, hi, write)?;
            let start = out.len();
            let mut next = lo;
            let mut complete = true;
            self.mmu.pt.read().walk(lo, hi, &mut |base, m| {
                let span = if m.huge { FRAMES_PER_HUGE } else { 1 };
                let (s, e) = (base.max(lo), (base + span).min(hi));
                if s != next || (write && !m.pte.flags.contains(PteFlags::WRITE)) {
                    complete = false;
                }
                out.extend((s..e).map(|v| m.pfn_for(v)));
                next = e;
            });
            if complete && next == hi {
                return Ok(());
            }
            out.truncate(start);
        }
        Err(MmError::invalid("range_fault: the range kept changing (64 attempts)"))
    }

    /// Checks that every translation lies inside a mapping of its kind, names a frame owned
    /// accordingly, and that the frame records being mapped. Returns the problems found.
    pub fn check_invariants(&self) -> Vec<String> {
        let vmas = self.vmas.read();
        let pt = self.mmu.pt.read();
        let frames = self.memory().frames();
        let mut bad = Vec::new();
        pt.walk(0, VPN_LIMIT, &mut |vpn, m| {
            let Some(v) = vmas.find(vpn) else {
                bad.push(format!("translation at {} outside any mapping", VirtAddr::from_vpn(vpn)));
                return;
            };
            if m.huge != v.is_huge() {
                bad.push(format!(
                    "leaf size at {} does not match its mapping",
                    VirtAddr::from_vpn(vpn)
                ));
            }
            let info = frames.info(m.pte.pfn);
            let owner_ok = match &v.kind {
                VmaKind::Anonymous { .. } => info.owner == Owner::Anonymous,
                // A DAX block may be shared between files (reflink), so any file may own it; a
                // page-cache frame belongs to its own file.
                VmaKind::File { backing, .. } => match info.owner {
                    Owner::FileBlock(_) => true,
                    Owner::PageCache(f) => f == backing.file_id(),
                    _ => false,
                },
            };
            if !owner_ok {
                bad.push(format!(
                    "{} maps {} owned by {:?}",
                    VirtAddr::from_vpn(vpn),
                    m.pte.pfn,
                    info.owner
                ));
            }
            if info.maps == 0 {
                bad.push(format!(
                    "{} mapped at {} but its map count is 0",
                    m.pte.pfn,
                    VirtAddr::from_vpn(vpn)
                ));
            }
        });
        bad
    }
}
