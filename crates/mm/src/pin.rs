//! `pin_user_pages`: pinning a virtual range of an address space for DMA.
//!
//! - Callers compose two flags, [`PinFlags::WRITE`] and [`PinFlags::LONGTERM`]. The mm-internal
//!   flags (`FOLL_PIN`, `FOLL_GET`, `FOLL_TOUCH`...) are [`GupFlags`], a type private to this
//!   crate: a driver cannot pass them, by type rather than by convention (LPC 2019: "those
//!   need to be kept away from the device driver and the device driver should never, ever,
//!   ever be allowed to use those").
//! - A pin is an RAII value: dropping it unpins; [`Pin::unpin_dirty`] marks the frames dirty
//!   first (`unpin_user_pages_dirty_lock`).
//! - A `LONGTERM` pin of file-backed memory first asks the file's backing for permission (the
//!   filesystem applies the node's pin policy and records a file pin); mm knows no policies.
//! - Each pin raises the frame's pin count and reference count; a huge frame is pinned once on
//!   its head, as a folio's `_pincount`.
//! - Errors: `EINVAL` (unaligned, empty, overflowing), `EFAULT` (unmapped, or write to a
//!   read-only mapping), `ENOMEM` (the context's pin limit), or what the backing refuses with.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::aspace::{AddressSpace, PinAccount, pages_of};
use crate::backing::{FilePinGuard, PinOwner};
use crate::error::{MmError, Result};
use crate::frame::{FrameFlags, FrameTable};
use crate::memory::Memory;
use crate::pagetable::PteFlags;
use crate::types::{
    AspaceId, FRAMES_PER_HUGE, FrameRun, PAGE_SIZE, Pfn, PoolOffset, VirtAddr, VirtRange,
};
use crate::vma::{Prot, VmaKind};

bitflags::bitflags! {
    /// Flags a caller of [`pin_user_pages`] may use.
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
    pub struct PinFlags: u32 {
        /// The device will write to the memory (FOLL_WRITE).
        const WRITE = 1 << 0;
        /// Held for an indefinite time, under user-space control (FOLL_LONGTERM).
        const LONGTERM = 1 << 8;
    }
}

impl PinFlags {
    /// Flags from raw bits (a command line, a wire message): unknown bits are `EINVAL`.
    pub fn from_raw(bits: u32) -> Result<PinFlags> {
        PinFlags::from_bits(bits)
            .ok_or_else(|| MmError::invalid(format!("unknown pin flags {bits:#x}")))
    }
}

bitflags::bitflags! {
    /// mm-internal GUP flags. Not reachable from other crates.
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
    pub(crate) struct GupFlags: u32 {
        const WRITE = 1 << 0;
        const GET = 1 << 1;
        const LONGTERM = 1 << 8;
        const PIN = 1 << 19;
    }
}

/// `is_valid_gup_args`: PIN and GET are exclusive; LONGTERM needs PIN.
pub(crate) fn check_gup_flags(f: GupFlags) -> Result<()> {
    if f.contains(GupFlags::PIN | GupFlags::GET) {
        return Err(MmError::invalid("FOLL_PIN and FOLL_GET together"));
    }
    if f.contains(GupFlags::LONGTERM) && !f.contains(GupFlags::PIN) {
        return Err(MmError::invalid("FOLL_LONGTERM without FOLL_PIN"));
    }
    Ok(())
}

/// Identifies a live pin.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PinId(pub(crate) u64);

impl fmt::Display for PinId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pin#{}", self.0)
    }
}

/// A pin, for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinInfo {
    /// Which.
    pub id: PinId,
    /// In which address space.
    pub aspace: AspaceId,
    /// The virtual range.
    pub range: VirtRange,
    /// Its flags.
    pub flags: PinFlags,
    /// Frames whose pin was orphaned by a reuse under DMA (the `unsafe` policy).
    pub orphaned: usize,
}

/// Consecutive pages of a pin backed by consecutive frames.
#[derive(Copy, Clone, Debug)]
struct PinRun {
    /// Index of the first page within the pin.
    page: u64,
    /// Frame of that page.
    pfn: Pfn,
    /// Pages.
    count: u64,
    /// Pinned through huge frames (the heads carry the pins).
    huge: bool,
}

impl PinRun {
    fn heads(&self) -> impl Iterator<Item = Pfn> + use<> {
        let first = self.pfn.huge_head().raw();
        let last = self.pfn.raw() + self.count - 1;
        (first..=last).step_by(FRAMES_PER_HUGE as usize).map(Pfn::new)
    }
    fn frames(&self) -> FrameRun {
        FrameRun::new(self.pfn, self.count)
    }
}

struct PinState {
    released: bool,
    orphaned: HashSet<Pfn>,
    guards: Vec<Box<dyn FilePinGuard>>,
}

pub(crate) struct PinInner {
    id: PinId,
    mem: Arc<Memory>,
    aspace: AspaceId,
    range: VirtRange,
    flags: PinFlags,
    account: Arc<PinAccount>,
    runs: OnceLock<Vec<PinRun>>,
    state: Mutex<PinState>,
}

impl PinInner {
    fn runs(&self) -> &[PinRun] {
        self.runs.get().map(Vec::as_slice).unwrap_or(&[])
    }

    /// The reuse-under-DMA path: moves this pin's hold on `pfn` off the frame.
    pub(crate) fn orphan_frame(&self, pfn: Pfn, frames: &FrameTable) {
        let mut st = self.state.lock();
        if st.released || st.orphaned.contains(&pfn) {
            return;
        }
        let n =
            self.runs().iter().filter(|r| !r.huge && r.frames().iter().any(|p| p == pfn)).count();
        if n > 0 {
            st.orphaned.insert(pfn);
            frames.strip_pins(pfn, n as u32);
        }
    }

    pub(crate) fn overlaps_frames(&self, run: FrameRun) -> bool {
        self.runs().iter().any(|r| r.pfn < run.end() && run.pfn < r.frames().end())
    }

    pub(crate) fn count_pins(&self, frames: &FrameTable, out: &mut HashMap<Pfn, u32>) {
        let st = self.state.lock();
        if st.released {
            return;
        }
        for r in self.runs() {
            if r.huge {
                for h in r.heads() {
                    *out.entry(frames.head(h)).or_default() += 1;
                }
            } else {
                for p in r.frames().iter().filter(|p| !st.orphaned.contains(p)) {
                    *out.entry(p).or_default() += 1;
                }
            }
        }
    }

    pub(crate) fn info(&self) -> PinInfo {
        PinInfo {
            id: self.id,
            aspace: self.aspace,
            range: self.range,
            flags: self.flags,
            orphaned: self.state.lock().orphaned.len(),
        }
    }

    fn release(&self, dirty: bool) {
        let guards = {
            let mut st = self.state.lock();
            if st.released {
                return;
            }
            st.released = true;
            let frames = self.mem.frames();
            let mut heads = Vec::new();
            for r in self.runs() {
                if r.huge {
                    heads.extend(r.heads());
                } else {
                    heads.extend(
                        r.frames()
                            .iter()
                            .filter(|p| st.orphaned.is_empty() || !st.orphaned.contains(p)),
                    );
                }
            }
            if dirty {
                for h in &heads {
                    frames.set_flags(*h, FrameFlags::DIRTY);
                }
            }
            self.mem.unpin_heads(heads);
            std::mem::take(&mut st.guards)
        };
        let pages = self.range.len() / PAGE_SIZE;
        self.account.pinned.fetch_sub(self.range.len(), Ordering::AcqRel);
        self.mem.counters.pins_released.fetch_add(pages, Ordering::Relaxed);
        // File pins go last: releasing one may let a waiting layout change proceed, and the
        // frames must be unpinned by then.
        drop(guards);
        self.mem.unregister_pin(self.id);
    }
}

/// A pinned range. Dropping it unpins.
pub struct Pin {
    inner: Arc<PinInner>,
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pin")
            .field("id", &self.inner.id)
            .field("range", &self.inner.range)
            .field("flags", &self.inner.flags)
            .field("runs", &self.inner.runs().len())
            .finish()
    }
}

impl Pin {
    /// This pin's id.
    pub fn id(&self) -> PinId {
        self.inner.id
    }
    /// The pinned virtual range.
    pub fn range(&self) -> VirtRange {
        self.inner.range
    }
    /// Its flags.
    pub fn flags(&self) -> PinFlags {
        self.inner.flags
    }
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.inner.range.len()
    }
    /// Always false: pins are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Snapshot for listings.
    pub fn info(&self) -> PinInfo {
        self.inner.info()
    }

    /// The pool offset of byte `off` of the pinned range.
    pub fn translate(&self, off: u64) -> Option<PoolOffset> {
        if off >= self.len() {
            return None;
        }
        let page = off / PAGE_SIZE;
        let runs = self.inner.runs();
        let i = runs.partition_point(|r| r.page + r.count <= page);
        let r = runs.get(i)?;
        Some(PoolOffset::new((r.pfn.raw() + (page - r.page)) * PAGE_SIZE + off % PAGE_SIZE))
    }

    /// Physically contiguous pieces of `[off, off + len)`: `(pool offset, length)` pairs, in
    /// order. `None` if the range is outside the pin.
    pub fn segments(&self, off: u64, len: u64) -> Option<Vec<(PoolOffset, u64)>> {
        let end = off.checked_add(len).filter(|e| *e <= self.len())?;
        let runs = self.inner.runs();
        let mut out: Vec<(PoolOffset, u64)> = Vec::new();
        let mut at = off;
        let mut i = runs.partition_point(|r| r.page + r.count <= at / PAGE_SIZE);
        while at < end {
            let r = runs.get(i)?;
            let run_end = (r.page + r.count) * PAGE_SIZE;
            let n = run_end.min(end) - at;
            let po = (r.pfn.raw() + (at / PAGE_SIZE - r.page)) * PAGE_SIZE + at % PAGE_SIZE;
            match out.last_mut() {
                Some((p, l)) if PoolOffset::new(p.raw() + *l) == PoolOffset::new(po) => *l += n,
                _ => out.push((PoolOffset::new(po), n)),
            }
            at += n;
            i += 1;
        }
        Some(out)
    }

    /// Calls `f(pool offset, length)` for each physically contiguous piece of
    /// `[off, off + len)`, in order, without allocating (the DMA engine's path). `None` if the
    /// range is outside the pin; otherwise the first error of `f`, or `Ok`.
    pub fn for_each_segment<E>(
        &self,
        off: u64,
        len: u64,
        mut f: impl FnMut(PoolOffset, u64) -> std::result::Result<(), E>,
    ) -> Option<std::result::Result<(), E>> {
        let end = off.checked_add(len).filter(|e| *e <= self.len())?;
        let runs = self.inner.runs();
        let mut at = off;
        let mut i = runs.partition_point(|r| r.page + r.count <= at / PAGE_SIZE);
        let mut pending: Option<(u64, u64)> = None;
        while at < end {
            let r = runs.get(i)?;
            let n = ((r.page + r.count) * PAGE_SIZE).min(end) - at;
            let po = (r.pfn.raw() + (at / PAGE_SIZE - r.page)) * PAGE_SIZE + at % PAGE_SIZE;
            pending = match pending {
                Some((p, l)) if p + l == po => Some((p, l + n)),
                Some((p, l)) => {
                    if let Err(e) = f(PoolOffset::new(p), l) {
                        return Some(Err(e));
                    }
                    Some((po, n))
                }
                None => Some((po, n)),
            };
            at += n;
            i += 1;
        }
        Some(match pending {
            Some((p, l)) => f(PoolOffset::new(p), l),
            None => Ok(()),
        })
    }

    /// The frames, as `(byte offset in the pin, frames)` pieces.
    pub fn runs(&self) -> impl Iterator<Item = (u64, FrameRun)> + '_ {
        self.inner.runs().iter().map(|r| (r.page * PAGE_SIZE, r.frames()))
    }

    /// True if some of this pin's frames were freed and reused under it (the `unsafe` policy).
    pub fn has_orphans(&self) -> bool {
        !self.inner.state.lock().orphaned.is_empty()
    }

    /// Unpins, marking the frames dirty (`unpin_user_pages_dirty_lock(.., true)`).
    pub fn unpin_dirty(self) {
        self.inner.release(true);
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.inner.release(false);
    }
}

/// Pins `[addr, addr + len)` of `aspace` (page aligned) for DMA.
pub fn pin_user_pages(
    aspace: &AddressSpace,
    addr: VirtAddr,
    len: u64,
    flags: PinFlags,
    owner: Option<&PinOwner>,
) -> Result<Pin> {
    let mut g = GupFlags::PIN;
    if flags.contains(PinFlags::WRITE) {
        g |= GupFlags::WRITE;
    }
    if flags.contains(PinFlags::LONGTERM) {
        g |= GupFlags::LONGTERM;
    }
    gup_pin(aspace, addr, len, g, owner)
}

/// The internal entry point: any GUP flags, validated as upstream.
pub(crate) fn gup_pin(
    aspace: &AddressSpace,
    addr: VirtAddr,
    len: u64,
    g: GupFlags,
    owner: Option<&PinOwner>,
) -> Result<Pin> {
    check_gup_flags(g)?;
    if !g.contains(GupFlags::PIN) {
        return Err(MmError::invalid("gup_pin without FOLL_PIN"));
    }
    if !addr.is_page_aligned() || !len.is_multiple_of(PAGE_SIZE) {
        return Err(MmError::invalid(format!(
            "pin_user_pages: {addr}+{len:#x} is not page aligned"
        )));
    }
    let (lo, hi) = pages_of(addr, len, PAGE_SIZE, "pin_user_pages")?;
    let acct = &aspace.account;
    let before = acct.pinned.fetch_add(len, Ordering::AcqRel);
    let limit = acct.limit.load(Ordering::Acquire);
    if before.saturating_add(len) > limit {
        acct.pinned.fetch_sub(len, Ordering::AcqRel);
        return Err(MmError::PinLimit { pinned: before, requested: len, limit });
    }
    let r = pin_charged(aspace, lo, hi, g, owner);
    if r.is_err() {
        acct.pinned.fetch_sub(len, Ordering::AcqRel);
    }
    r
}

fn pin_charged(
    aspace: &AddressSpace,
    lo: u64,
    hi: u64,
    g: GupFlags,
    owner: Option<&PinOwner>,
) -> Result<Pin> {
    let write = g.contains(GupFlags::WRITE);
    let mem = aspace.memory();
    let vmas = aspace.vmas.read();
    let mut at = lo;
    let mut guards: Vec<Box<dyn FilePinGuard>> = Vec::new();
    for v in vmas.overlapping(lo, hi) {
        if v.start > at {
            return Err(MmError::NotMapped { addr: VirtAddr::from_vpn(at) });
        }
        let first = lo.max(v.start);
        if write && !v.prot.contains(Prot::WRITE) {
            return Err(MmError::WriteProtected { addr: VirtAddr::from_vpn(first) });
        }
        if !v.prot.intersects(Prot::READ | Prot::WRITE) {
            return Err(MmError::ReadProtected { addr: VirtAddr::from_vpn(first) });
        }
        if let (true, VmaKind::File { backing, .. }) = (g.contains(GupFlags::LONGTERM), &v.kind) {
            let (a, b) = (first, hi.min(v.end));
            let pages = v.pgoff_of(a).expect("file vma")..v.pgoff_of(b - 1).expect("file vma") + 1;
            guards.push(backing.longterm_pin(pages, write, owner)?);
        }
        at = v.end;
    }
    if at < hi {
        return Err(MmError::NotMapped { addr: VirtAddr::from_vpn(at) });
    }
    aspace.populate_locked(&vmas, lo, hi, write)?;
    let mut flags = PinFlags::empty();
    flags.set(PinFlags::WRITE, write);
    flags.set(PinFlags::LONGTERM, g.contains(GupFlags::LONGTERM));
    let inner = Arc::new(PinInner {
        id: mem.next_pin_id(),
        mem: Arc::clone(mem),
        aspace: aspace.id(),
        range: crate::aspace::page_range(lo, hi),
        flags,
        account: Arc::clone(&aspace.account),
        runs: OnceLock::new(),
        state: Mutex::new(PinState {
            released: false,
            orphaned: HashSet::new(),
            guards: Vec::new(),
        }),
    });
    // Registered before any frame is pinned, and filled under its state lock, so the
    // reuse-under-DMA path always finds every pin of a frame.
    mem.register_pin(inner.id, &inner);
    let mut st = inner.state.lock();
    for _attempt in 0..64 {
        match pin_walk(aspace, lo, hi, write) {
            Ok(runs) => {
                mem.counters.pins_acquired.fetch_add(hi - lo, Ordering::Relaxed);
                inner.runs.set(runs).expect("runs are set once");
                for g in &guards {
                    g.established();
                }
                st.guards = guards;
                drop(st);
                return Ok(Pin { inner });
            }
            Err(vpn) => {
                // A translation went away between faulting and pinning (a zap): fault again.
                if let Err(e) = aspace.fault_locked(&vmas, vpn, write) {
                    st.released = true;
                    drop(st);
                    mem.unregister_pin(inner.id);
                    return Err(e);
                }
            }
        }
    }
    st.released = true;
    drop(st);
    mem.unregister_pin(inner.id);
    Err(MmError::invalid("pin_user_pages: the range kept changing (64 attempts)"))
}

/// Pins every frame of `[lo, hi)` under the page-table read lock. On a missing (or, for a
/// write pin, read-only) page, undoes this attempt and returns that page.
fn pin_walk(
    aspace: &AddressSpace,
    lo: u64,
    hi: u64,
    write: bool,
) -> std::result::Result<Vec<PinRun>, u64> {
    let frames = aspace.memory().frames();
    let pt = aspace.mmu.pt.read();
    let mut runs: Vec<PinRun> = Vec::new();
    let mut next = lo;
    let mut missing = None;
    pt.walk(lo, hi, &mut |base, m| {
        if missing.is_some() {
            return;
        }
        let span = if m.huge { FRAMES_PER_HUGE } else { 1 };
        let s = base.max(lo);
        if s != next || (write && !m.pte.flags.contains(PteFlags::WRITE)) {
            missing = Some(next.min(s));
            return;
        }
        let e = (base + span).min(hi);
        let pfn = m.pfn_for(s);
        if m.huge {
            frames.pin(m.pte.pfn);
            runs.push(PinRun { page: s - lo, pfn, count: e - s, huge: true });
        } else {
            frames.pin(pfn);
            match runs.last_mut() {
                Some(r) if !r.huge && r.pfn.raw() + r.count == pfn.raw() => r.count += 1,
                _ => runs.push(PinRun { page: s - lo, pfn, count: 1, huge: false }),
            }
        }
        next = e;
    });
    if missing.is_none() && next < hi {
        missing = Some(next);
    }
    match missing {
        None => Ok(runs),
        Some(vpn) => {
            drop(pt);
            let mut heads = Vec::new();
            for r in &runs {
                if r.huge {
                    heads.extend(r.heads());
                } else {
                    heads.extend(r.frames().iter());
                }
            }
            aspace.memory().unpin_heads(heads);
            Err(vpn)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gup_flags_validated_as_upstream() {
        assert!(check_gup_flags(GupFlags::PIN | GupFlags::LONGTERM).is_ok());
        assert!(check_gup_flags(GupFlags::GET | GupFlags::LONGTERM).is_err());
        assert!(check_gup_flags(GupFlags::PIN | GupFlags::GET).is_err());
    }

    #[test]
    fn pin_flags_reject_unknown_bits() {
        assert_eq!(PinFlags::from_raw(1 << 19).unwrap_err().errno(), crate::Errno::EINVAL);
        assert_eq!(PinFlags::from_raw(0x101).unwrap(), PinFlags::WRITE | PinFlags::LONGTERM);
    }
}
