//! [`Memory`]: one node's memory — the pool, its frame table, the allocator, the reverse map and
//! the registry of live pins. Address spaces and the filesystem share it behind an `Arc`.
//!
//! Freeing, three ways (invariant 1):
//! - [`Memory::free`]: the owner frees frames nobody refers to; anything else is a bug and
//!   asserts.
//! - [`Memory::drop_owner`]: the owner lets go (a truncated page-cache page); the frame is freed
//!   now, or when its last reference (a pin) goes — Linux's page-cache behaviour.
//! - [`Memory::free_reuse_under_dma`]: the one explicit, counted path that frees frames still
//!   pinned for DMA. Only the `unsafe` pin policy takes it; the pins are orphaned (their
//!   holders keep DMA-ing into frames that now belong to someone else — the corruption the
//!   2019 debate was about) and the count is reported.
//!
//! **Quarantine** ([`Memory::quarantine`]): frames that a client process may still be copying
//! into (it stalled inside a transfer past the device's drain deadline) are held back from
//! reuse while the [`Quarantine`] lives, *without* holding up their owner: a frame freed while
//! quarantined is parked (free in the frame table, absent from the allocator) and given back
//! when its last quarantine is lifted. DESIGN.md: "after the deadline its old frames are
//! quarantined (never reused while it lives) and the layout change proceeds".

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::alloc::{AllocStats, Buddy, Placement};
use crate::clock::Clock;
use crate::error::{MmError, Result};
use crate::frame::{FrameFlags, FrameTable, Owner};
use crate::limits::DISCARD_MIN_FRAMES;
use crate::notifier::InvalidateReason;
use crate::pin::{PinId, PinInfo, PinInner};
use crate::pool::Pool;
use crate::rmap::{FileMapping, Rmap, ZapReport};
use crate::types::{AspaceId, FRAMES_PER_HUGE, FileId, FrameRun, HUGE_ORDER, PAGE_SIZE, Pfn};

/// Which reference a put drops.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Release {
    /// A plain reference.
    Put,
    /// A page-table mapping.
    Unmap,
    /// A DMA pin.
    Unpin,
}

/// Counters of the memory core (`/proc/vmstat` style).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) pins_acquired: AtomicU64,
    pub(crate) pins_released: AtomicU64,
    pub(crate) reused_under_dma: AtomicU64,
    pub(crate) faults: AtomicU64,
    pub(crate) frames_zeroed: AtomicU64,
    pub(crate) frames_discarded: AtomicU64,
}

/// A snapshot of the memory core's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemStats {
    /// Allocator figures.
    pub alloc: AllocStats,
    /// Frames pinned since start (`nr_foll_pin_acquired`; a huge frame counts 512).
    pub pins_acquired: u64,
    /// Frames unpinned since start (`nr_foll_pin_released`).
    pub pins_released: u64,
    /// Frames freed while pinned for DMA (the `unsafe` policy's corruption count).
    pub reused_under_dma: u64,
    /// Page faults handled.
    pub faults: u64,
    /// Frames zeroed on allocation.
    pub frames_zeroed: u64,
    /// Frames returned to the OS by [`Memory::trim`].
    pub frames_discarded: u64,
    /// Live pins.
    pub live_pins: usize,
}

/// One node's memory.
pub struct Memory {
    pool: Pool,
    frames: FrameTable,
    buddy: Mutex<Buddy>,
    pub(crate) rmap: Rmap,
    pins: Mutex<HashMap<PinId, Weak<PinInner>>>,
    quarantine: Mutex<QuarantineSet>,
    /// Frames quarantined or parked: lets `give_back` skip the set's lock when it is empty.
    quarantined: AtomicU64,
    clock: Arc<dyn Clock>,
    next_aspace: AtomicU64,
    next_pin: AtomicU64,
    pub(crate) counters: Counters,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory").field("pool", &self.pool).finish_non_exhaustive()
    }
}

impl Memory {
    /// Memory over `pool` with every frame free. A memfd this process created is known to
    /// read as zeros; any other pool (a file, a received fd) may hold old data, so its frames
    /// are zeroed when handed out.
    pub fn new(pool: Pool, clock: Arc<dyn Clock>) -> Arc<Memory> {
        let n = pool.frames();
        let mut buddy = Buddy::new(n);
        buddy.free_range(FrameRun::new(Pfn::new(0), n));
        if !pool.fresh() {
            buddy.set_dirty(FrameRun::new(Pfn::new(0), n), true);
        }
        Arc::new(Memory {
            frames: FrameTable::new(n),
            pool,
            buddy: Mutex::new(buddy),
            rmap: Rmap::default(),
            pins: Mutex::new(HashMap::new()),
            clock,
            next_aspace: AtomicU64::new(1),
            next_pin: AtomicU64::new(1),
            quarantine: Mutex::new(QuarantineSet::default()),
            quarantined: AtomicU64::new(0),
            counters: Counters::default(),
        })
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
    /// The frame table.
    pub fn frames(&self) -> &FrameTable {
        &self.frames
    }
    /// The node's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub(crate) fn next_aspace_id(&self) -> AspaceId {
        AspaceId::new(self.next_aspace.fetch_add(1, Ordering::Relaxed))
    }
    pub(crate) fn next_pin_id(&self) -> PinId {
        PinId(self.next_pin.fetch_add(1, Ordering::Relaxed))
    }

    /// Allocates `n` frames for `owner`. `zero` guarantees they read as zeros. Huge placement
    /// needs `n` to be a multiple of 512 and makes compound frames.
    pub fn alloc(
        &self,
        n: u64,
        placement: Placement,
        owner: Owner,
        zero: bool,
    ) -> Result<Vec<FrameRun>> {
        if n == 0 {
            return Err(MmError::invalid("allocation of 0 frames"));
        }
        if placement == Placement::Huge && !n.is_multiple_of(FRAMES_PER_HUGE) {
            return Err(MmError::invalid(format!(
                "huge allocation of {n} frames: not whole huge frames"
            )));
        }
        let (runs, dirty) = {
            let mut b = self.buddy.lock();
            let got = match placement {
                Placement::Contiguous => b.alloc_contig(n).map(|r| vec![r]),
                Placement::Anywhere => b.alloc_anywhere(n, 0),
                Placement::Huge => b.alloc_anywhere(n, HUGE_ORDER),
            };
            let Some(runs) = got else {
                return Err(MmError::OutOfFrames { requested: n, free: b.free_frames() });
            };
            let dirty: Vec<FrameRun> = if zero {
                runs.iter().flat_map(|r| b.dirty_runs(*r)).collect()
            } else {
                Vec::new()
            };
            for r in &runs {
                b.set_dirty(*r, true);
            }
            (runs, dirty)
        };
        for d in dirty {
            self.zero_run(d)?;
        }
        let movable =
            if owner == Owner::Anonymous { FrameFlags::MOVABLE } else { FrameFlags::empty() };
        for r in &runs {
            self.frames.claim(*r, owner, movable, placement == Placement::Huge);
        }
        Ok(runs)
    }

    fn zero_run(&self, r: FrameRun) -> Result<()> {
        // memset, not a hole punch: the host kernel takes ~2 µs a page to populate a memfd
        // page again after a punch, ten times the cost of zeroing one that is resident.
        self.counters.frames_zeroed.fetch_add(r.count, Ordering::Relaxed);
        self.pool.fill(r.pfn.offset(), r.bytes(), 0)
    }

    /// Treats every free frame as possibly holding old data (mounting an existing image: its
    /// free blocks held files once).
    pub fn assume_dirty(&self) {
        let mut b = self.buddy.lock();
        let n = self.pool.frames();
        b.set_dirty(FrameRun::new(Pfn::new(0), n), true);
    }

    /// Claims specific free frames for `owner` (mounting a filesystem). `EEXIST` if any is in
    /// use (two files claiming one block: a corrupted image).
    pub fn claim(&self, run: FrameRun, owner: Owner) -> Result<()> {
        if run.count == 0 || run.end().raw() > self.pool.frames() {
            return Err(MmError::invalid(format!("claim of {run:?} outside the pool")));
        }
        if !self.buddy.lock().reserve(run) {
            return Err(MmError::Refused {
                errno: crate::Errno::EEXIST,
                reason: format!("frames {run:?} are already in use"),
            });
        }
        self.frames.claim(run, owner, FrameFlags::empty(), false);
        Ok(())
    }

    /// Frees frames nobody refers to. Invariant 1: asserts if any is mapped, pinned or
    /// referenced.
    pub fn free(&self, run: FrameRun) {
        self.frames.release(run);
        self.give_back(&[run]);
    }

    fn give_back(&self, runs: &[FrameRun]) {
        if self.quarantined.load(Ordering::SeqCst) > 0 {
            let mut q = self.quarantine.lock();
            let mut b = self.buddy.lock();
            for r in runs {
                for p in r.iter() {
                    if q.counts.contains_key(&p) {
                        q.parked.insert(p);
                    } else {
                        b.free_range(FrameRun::new(p, 1));
                    }
                }
            }
            return;
        }
        let mut b = self.buddy.lock();
        for r in runs {
            b.free_range(*r);
        }
    }

    /// Holds `frames` back from reuse until the returned [`Quarantine`] is dropped: their owner
    /// may still free them (they are parked, not given back to the allocator).
    pub fn quarantine(self: &Arc<Self>, frames: Vec<Pfn>) -> Quarantine {
        let mut q = self.quarantine.lock();
        for p in &frames {
            *q.counts.entry(*p).or_insert(0) += 1;
        }
        self.quarantined.store((q.counts.len() + q.parked.len()) as u64, Ordering::SeqCst);
        drop(q);
        Quarantine { mem: Arc::clone(self), frames }
    }

    fn lift(&self, frames: &[Pfn]) {
        let mut q = self.quarantine.lock();
        let mut back = Vec::new();
        for p in frames {
            let Some(c) = q.counts.get_mut(p) else { continue };
            *c -= 1;
            if *c == 0 {
                q.counts.remove(p);
                if q.parked.remove(p) {
                    back.push(*p);
                }
            }
        }
        self.quarantined.store((q.counts.len() + q.parked.len()) as u64, Ordering::SeqCst);
        let mut b = self.buddy.lock();
        for p in back {
            b.free_range(FrameRun::new(p, 1));
        }
    }

    /// Frames held back by quarantines now (in use or parked).
    pub fn quarantined_frames(&self) -> u64 {
        let q = self.quarantine.lock();
        q.counts.len() as u64
    }

    /// Returns the memory of free runs of at least [`DISCARD_MIN_FRAMES`] frames to the OS
    /// (holes punched in the pool file); they read as zeros afterwards and cost nothing until
    /// used again. Freed frames are otherwise kept resident and zeroed when next handed out,
    /// as the kernel does. Returns the bytes returned.
    pub fn trim(&self) -> Result<u64> {
        let mut b = self.buddy.lock();
        let mut bytes = 0;
        for r in b.free_blocks().into_iter().filter(|r| r.count >= DISCARD_MIN_FRAMES) {
            self.pool.discard(r.pfn.offset(), r.bytes())?;
            b.set_dirty(r, false);
            bytes += r.bytes();
            self.counters.frames_discarded.fetch_add(r.count, Ordering::Relaxed);
        }
        Ok(bytes)
    }

    /// Drops references to head frames; frames whose owner is gone (anonymous, orphan) and
    /// whose last reference this was are freed, in one allocator critical section.
    pub(crate) fn put_heads(&self, heads: impl IntoIterator<Item = Pfn>, how: Release) {
        let mut free: Vec<FrameRun> = Vec::new();
        for h in heads {
            let left = match how {
                Release::Put => self.frames.put(h),
                Release::Unmap => self.frames.unmap(h),
                Release::Unpin => self.frames.unpin(h),
            };
            if left == 0 && self.frames.owner(h).freed_on_last_ref() {
                let n = if self.frames.info(h).flags.contains(FrameFlags::HUGE_HEAD) {
                    FRAMES_PER_HUGE
                } else {
                    1
                };
                let run = FrameRun::new(h, n);
                self.frames.release(run);
                match free.last_mut() {
                    Some(l) if l.end() == h => l.count += n,
                    _ => free.push(run),
                }
            }
        }
        if !free.is_empty() {
            self.give_back(&free);
        }
    }

    /// The owner lets go of frames: each is freed now if unreferenced, or when its last
    /// reference goes (a page-cache page truncated while pinned lives on for the pin only).
    pub fn drop_owner(&self, run: FrameRun) {
        let mut free = Vec::new();
        for p in run.iter() {
            // Hold a reference across the owner change so exactly one put observes zero with
            // the new owner: a racing final put either ran before (saw the old owner, freed
            // nothing) or runs after ours.
            self.frames.get(p);
            self.frames.set_owner(p, Owner::Orphan);
            free.push(p);
        }
        self.put_heads(free, Release::Put);
    }

    /// Unpins head frames (freeing those whose owner is gone and whose last reference this
    /// was).
    pub(crate) fn unpin_heads(&self, heads: Vec<Pfn>) {
        self.put_heads(heads, Release::Unpin);
    }

    /// Frees frames that may still be pinned for DMA: the pins are orphaned (their holders
    /// keep their translations to these frames), the count is recorded, and the frames go back
    /// to the allocator to be reused. Only the `unsafe` pin policy calls this. Returns the
    /// number of frames that were pinned.
    pub fn free_reuse_under_dma(&self, run: FrameRun) -> u64 {
        let pins: Vec<Arc<PinInner>> =
            self.pins.lock().values().filter_map(Weak::upgrade).collect();
        let mut reused = 0;
        for pfn in run.iter() {
            if self.frames.info(pfn).pins == 0 {
                continue;
            }
            for p in &pins {
                p.orphan_frame(pfn, &self.frames);
            }
            let left = self.frames.info(pfn);
            assert_eq!(left.pins, 0, "{pfn} pinned by a pin missing from the registry");
            reused += 1;
        }
        self.counters.reused_under_dma.fetch_add(reused, Ordering::Relaxed);
        self.free(run);
        reused
    }

    pub(crate) fn register_pin(&self, id: PinId, p: &Arc<PinInner>) {
        self.pins.lock().insert(id, Arc::downgrade(p));
    }
    pub(crate) fn unregister_pin(&self, id: PinId) {
        self.pins.lock().remove(&id);
    }

    /// Live pins that hold any frame of `run` (admin views: who pins this block?).
    pub fn pins_on(&self, run: FrameRun) -> Vec<PinInfo> {
        let pins: Vec<Arc<PinInner>> =
            self.pins.lock().values().filter_map(Weak::upgrade).collect();
        pins.iter().filter(|p| p.overlaps_frames(run)).map(|p| p.info()).collect()
    }

    /// Zaps every mapping of file pages `pages` in every address space; subscribers are
    /// invalidated before this returns (the filesystem calls it under its file lock, before
    /// it frees or moves blocks).
    pub fn zap_file_range(
        &self,
        file: FileId,
        pages: Range<u64>,
        reason: InvalidateReason,
    ) -> ZapReport {
        self.rmap.zap(file, pages, reason)
    }

    /// Every mapping of a file.
    pub fn file_mappings(&self, file: FileId) -> Vec<FileMapping> {
        self.rmap.mappings(file)
    }

    /// Counters and allocator figures.
    pub fn stats(&self) -> MemStats {
        let c = &self.counters;
        MemStats {
            alloc: self.buddy.lock().stats(),
            pins_acquired: c.pins_acquired.load(Ordering::Relaxed),
            pins_released: c.pins_released.load(Ordering::Relaxed),
            reused_under_dma: c.reused_under_dma.load(Ordering::Relaxed),
            faults: c.faults.load(Ordering::Relaxed),
            frames_zeroed: c.frames_zeroed.load(Ordering::Relaxed),
            frames_discarded: c.frames_discarded.load(Ordering::Relaxed),
            live_pins: self.pins.lock().len(),
        }
    }

    /// Checks the allocator, the frame table, that free frames and `Owner::Free` agree, and
    /// that every frame's pin count equals the live pins holding it. O(pool frames): for
    /// tests, the simulator and fsck.
    pub fn check_invariants(&self) -> Vec<String> {
        let mut bad = self.frames.check_invariants();
        let b = self.buddy.lock();
        bad.extend(b.check_invariants());
        let mut expect_pins: HashMap<Pfn, u32> = HashMap::new();
        for p in self.pins.lock().values().filter_map(Weak::upgrade) {
            p.count_pins(&self.frames, &mut expect_pins);
        }
        for i in 0..self.frames.len() {
            let pfn = Pfn::new(i);
            let info = self.frames.info(pfn);
            let parked = self.quarantine.lock().parked.contains(&pfn);
            if !parked && b.is_free(i) != (info.owner == Owner::Free) {
                bad.push(format!(
                    "{pfn}: allocator free={} but owner {:?}",
                    b.is_free(i),
                    info.owner
                ));
            }
            let want = expect_pins.get(&pfn).copied().unwrap_or(0);
            if info.pins != want {
                bad.push(format!(
                    "{pfn}: pin count {} but live pins hold it {want} times",
                    info.pins
                ));
            }
            if bad.len() > 32 {
                break;
            }
        }
        bad
    }

    /// Free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.buddy.lock().free_frames() * PAGE_SIZE
    }

    /// Largest contiguous run an allocation can return, in frames.
    pub fn max_contiguous_frames(&self) -> u64 {
        1 << self.buddy.lock().max_order()
    }
}

/// Quarantine bookkeeping: how many quarantines hold each frame, and which of them were freed
/// meanwhile (parked until the last quarantine goes).
#[derive(Debug, Default)]
struct QuarantineSet {
    counts: HashMap<Pfn, u32>,
    parked: HashSet<Pfn>,
}

/// Frames held back from reuse ([`Memory::quarantine`]); dropping it lifts the quarantine.
pub struct Quarantine {
    mem: Arc<Memory>,
    frames: Vec<Pfn>,
}

impl std::fmt::Debug for Quarantine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Quarantine of {} frame(s)", self.frames.len())
    }
}

impl Quarantine {
    /// The frames held back.
    pub fn frames(&self) -> &[Pfn] {
        &self.frames
    }
}

impl Drop for Quarantine {
    fn drop(&mut self) {
        self.mem.lift(&self.frames);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::RealClock;

    #[test]
    fn memory_quarantined_frames_are_not_reused_until_lifted() {
        let mem = Memory::new(Pool::memfd("q", 16 << 20).unwrap(), RealClock::new());
        let runs = mem.alloc(4, Placement::Contiguous, Owner::Device, true).unwrap();
        let run = runs[0];
        let frames: Vec<Pfn> = run.iter().collect();
        let q = mem.quarantine(frames[..2].to_vec());
        assert_eq!(mem.quarantined_frames(), 2);
        let free_before = mem.free_bytes();
        // The owner frees all four: two go back, two are parked.
        mem.free(run);
        assert_eq!(mem.free_bytes(), free_before + 2 * PAGE_SIZE);
        assert!(mem.check_invariants().is_empty(), "{:?}", mem.check_invariants());
        // LIFO allocation would hand the last frames freed out first: never the parked ones.
        let mut got = Vec::new();
        while let Ok(r) = mem.alloc(1, Placement::Anywhere, Owner::Device, false) {
            got.push(r[0].pfn);
        }
        assert!(!got.contains(&frames[0]) && !got.contains(&frames[1]));
        for p in got {
            mem.free(FrameRun::new(p, 1));
        }
        drop(q);
        assert_eq!(mem.quarantined_frames(), 0);
        assert_eq!(mem.free_bytes(), free_before + 4 * PAGE_SIZE);
        assert!(mem.check_invariants().is_empty());
        // A quarantine of frames nobody frees meanwhile changes nothing when lifted.
        let r2 = mem.alloc(1, Placement::Anywhere, Owner::Device, false).unwrap()[0];
        drop(mem.quarantine(vec![r2.pfn]));
        mem.free(r2);
        assert!(mem.check_invariants().is_empty());
    }
}
