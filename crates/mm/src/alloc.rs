//! The frame allocator: a binary buddy allocator over the pool's frames.
//!
//! - Free blocks of 2^k frames (k ≤ `MAX_ORDER`), naturally aligned, sit on one intrusive
//!   doubly linked list per order; the links live in sparse arrays indexed by frame, so every
//!   operation is O(MAX_ORDER), independent of the pool size (no scans on the hot path).
//! - A huge frame is an order-9 block, aligned by construction.
//! - A contiguous run of n frames is a block of order ⌈log2 n⌉ with its tail given back.
//! - "Anywhere" allocations decompose n into power-of-two blocks and take what exists, so they
//!   succeed on a fragmented pool as long as n frames are free.
//! - Lists are LIFO: a frame just freed is the next one handed out. The demo relies on this
//!   ("frames freed by a layout change are reused at once").
//! - A second bitmap records which frames may hold old data (`dirty`); frames never written
//!   since creation or discarded read as zero and need no zeroing.
//!
//! Not thread safe on its own: [`crate::Memory`] keeps it behind a mutex.

use crate::limits::MAX_ORDER;
use crate::types::{FrameRun, Pfn};

/// Where an allocation's frames may lie.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Placement {
    /// Any frames; the result may be several runs.
    Anywhere,
    /// One physically contiguous run.
    Contiguous,
    /// Whole huge frames (count must be a multiple of 512), each 2 MiB aligned; the result
    /// may be several runs of whole huge frames.
    Huge,
}

const NIL: u32 = 0;

/// The buddy allocator's state.
#[derive(Debug)]
pub(crate) struct Buddy {
    nframes: u64,
    max_order: u32,
    heads: [u32; MAX_ORDER as usize + 1],
    next: Box<[u32]>,
    prev: Box<[u32]>,
    /// 0: not the head of a free block; k + 1: head of a free block of order k.
    order: Box<[u8]>,
    /// Bit set: the frame may hold old data.
    dirty: Box<[u64]>,
    free_frames: u64,
    free_blocks: [u64; MAX_ORDER as usize + 1],
}

fn enc(p: u64) -> u32 {
    (p + 1) as u32
}
fn dec(v: u32) -> u64 {
    u64::from(v) - 1
}
fn floor_log2(n: u64) -> u32 {
    63 - n.leading_zeros()
}
fn ceil_log2(n: u64) -> u32 {
    if n <= 1 { 0 } else { 64 - (n - 1).leading_zeros() }
}

/// Free-space figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocStats {
    /// Frames in the pool.
    pub total_frames: u64,
    /// Frames free.
    pub free_frames: u64,
    /// Free blocks per order (index = order).
    pub free_blocks: Vec<u64>,
    /// The largest order with a free block, if any.
    pub largest_free_order: Option<u32>,
}

impl Buddy {
    /// An allocator for `nframes` frames, all in use; give frames with [`Buddy::free_range`].
    pub(crate) fn new(nframes: u64) -> Buddy {
        assert!(nframes < u64::from(u32::MAX), "pool too large for 32-bit frame links");
        let n = nframes as usize;
        let max_order = floor_log2(nframes.max(1)).min(MAX_ORDER);
        Buddy {
            nframes,
            max_order,
            heads: [NIL; MAX_ORDER as usize + 1],
            next: vec![NIL; n].into_boxed_slice(),
            prev: vec![NIL; n].into_boxed_slice(),
            order: vec![0u8; n].into_boxed_slice(),
            dirty: vec![0u64; n.div_ceil(64)].into_boxed_slice(),
            free_frames: 0,
            free_blocks: [0; MAX_ORDER as usize + 1],
        }
    }

    fn push(&mut self, pfn: u64, k: u32) {
        let i = pfn as usize;
        debug_assert_eq!(self.order[i], 0);
        let head = self.heads[k as usize];
        self.next[i] = head;
        self.prev[i] = NIL;
        if head != NIL {
            self.prev[dec(head) as usize] = enc(pfn);
        }
        self.heads[k as usize] = enc(pfn);
        self.order[i] = k as u8 + 1;
        self.free_frames += 1 << k;
        self.free_blocks[k as usize] += 1;
    }

    fn unlink(&mut self, pfn: u64, k: u32) {
        let i = pfn as usize;
        debug_assert_eq!(self.order[i], k as u8 + 1);
        let (n, p) = (self.next[i], self.prev[i]);
        if p == NIL {
            self.heads[k as usize] = n;
        } else {
            self.next[dec(p) as usize] = n;
        }
        if n != NIL {
            self.prev[dec(n) as usize] = p;
        }
        self.order[i] = 0;
        self.free_frames -= 1 << k;
        self.free_blocks[k as usize] -= 1;
    }

    fn is_free_block(&self, pfn: u64, k: u32) -> bool {
        pfn < self.nframes && self.order[pfn as usize] == k as u8 + 1
    }

    /// Takes one block of order `k`, splitting a larger one if needed.
    fn alloc_block(&mut self, k: u32) -> Option<u64> {
        let j = (k..=self.max_order).find(|&j| self.heads[j as usize] != NIL)?;
        let pfn = dec(self.heads[j as usize]);
        self.unlink(pfn, j);
        let mut j = j;
        while j > k {
            j -= 1;
            self.push(pfn + (1 << j), j);
        }
        Some(pfn)
    }

    /// Returns one naturally aligned block, merging with free buddies.
    fn free_block(&mut self, mut pfn: u64, mut k: u32) {
        while k < self.max_order {
            let buddy = pfn ^ (1 << k);
            if buddy + (1 << k) > self.nframes || !self.is_free_block(buddy, k) {
                break;
            }
            self.unlink(buddy, k);
            pfn = pfn.min(buddy);
            k += 1;
        }
        self.push(pfn, k);
    }

    /// Returns any run of frames (split into aligned blocks). The caller guarantees the frames
    /// are allocated (the frame table asserts double frees before this is reached).
    pub(crate) fn free_range(&mut self, run: FrameRun) {
        let (mut pfn, mut count) = (run.pfn.raw(), run.count);
        assert!(pfn + count <= self.nframes, "freeing {run:?} beyond the pool");
        while count > 0 {
            let align = if pfn == 0 { self.max_order } else { pfn.trailing_zeros() };
            let k = align.min(floor_log2(count)).min(self.max_order);
            self.free_block(pfn, k);
            pfn += 1 << k;
            count -= 1 << k;
        }
    }

    /// One contiguous run of `n` frames (n ≤ 2^max_order).
    pub(crate) fn alloc_contig(&mut self, n: u64) -> Option<FrameRun> {
        if n == 0 || n > 1 << self.max_order {
            return None;
        }
        let k = ceil_log2(n);
        let pfn = self.alloc_block(k)?;
        if (1 << k) > n {
            self.free_range(FrameRun::new(Pfn::new(pfn + n), (1 << k) - n));
        }
        Some(FrameRun::new(Pfn::new(pfn), n))
    }

    /// `n` frames in as few runs as the free lists allow; all or nothing.
    pub(crate) fn alloc_anywhere(&mut self, n: u64, min_order: u32) -> Option<Vec<FrameRun>> {
        if n == 0 || n > self.free_frames || !n.is_multiple_of(1 << min_order) {
            return None;
        }
        let mut out: Vec<FrameRun> = Vec::new();
        let mut left = n;
        while left > 0 {
            let want = floor_log2(left).min(self.max_order);
            // Prefer one block of the wanted order (splitting a larger one if need be): fewer
            // runs. Fall back to the largest smaller block when nothing that big is left.
            let nonempty = |j: &u32| self.heads[*j as usize] != NIL;
            let k = if (want..=self.max_order).any(|j| nonempty(&j)) {
                Some(want)
            } else {
                (min_order..want).rev().find(nonempty)
            };
            let Some(k) = k else {
                for r in out {
                    self.free_range(r);
                }
                return None;
            };
            let pfn = self.alloc_block(k).expect("an order with a free block was found above");
            left -= 1 << k;
            match out.last_mut() {
                Some(last) if last.end().raw() == pfn => last.count += 1 << k,
                _ => out.push(FrameRun::new(Pfn::new(pfn), 1 << k)),
            }
        }
        Some(out)
    }

    /// Takes specific frames out of the free lists (mounting a filesystem claims its blocks).
    /// Returns false, changing nothing, if any frame of the run is not free.
    pub(crate) fn reserve(&mut self, run: FrameRun) -> bool {
        if run.count == 0 || run.end().raw() > self.nframes {
            return false;
        }
        if !run.iter().all(|p| self.containing_free_block(p.raw()).is_some()) {
            return false;
        }
        for p in run.iter() {
            let (head, k) =
                self.containing_free_block(p.raw()).expect("checked above that the frame is free");
            self.unlink(head, k);
            // Give back everything of the block except frame p.
            if p.raw() > head {
                self.free_range(FrameRun::new(Pfn::new(head), p.raw() - head));
            }
            let end = head + (1 << k);
            if end > p.raw() + 1 {
                self.free_range(FrameRun::new(Pfn::new(p.raw() + 1), end - p.raw() - 1));
            }
        }
        true
    }

    fn containing_free_block(&self, pfn: u64) -> Option<(u64, u32)> {
        (0..=self.max_order).find_map(|k| {
            let head = pfn & !((1u64 << k) - 1);
            self.is_free_block(head, k).then_some((head, k))
        })
    }

    /// True if frame `pfn` is free.
    pub(crate) fn is_free(&self, pfn: u64) -> bool {
        pfn < self.nframes && self.containing_free_block(pfn).is_some()
    }

    /// Every free block, as runs.
    pub(crate) fn free_blocks(&self) -> Vec<FrameRun> {
        let mut out = Vec::new();
        for k in 0..=self.max_order {
            let mut cur = self.heads[k as usize];
            while cur != NIL {
                let p = dec(cur);
                out.push(FrameRun::new(Pfn::new(p), 1 << k));
                cur = self.next[p as usize];
            }
        }
        out
    }

    pub(crate) fn free_frames(&self) -> u64 {
        self.free_frames
    }

    pub(crate) fn max_order(&self) -> u32 {
        self.max_order
    }

    /// Marks a run as possibly holding old data (or, with `false`, as known zero).
    pub(crate) fn set_dirty(&mut self, run: FrameRun, dirty: bool) {
        for p in run.iter() {
            let (w, b) = ((p.raw() / 64) as usize, p.raw() % 64);
            if dirty {
                self.dirty[w] |= 1 << b;
            } else {
                self.dirty[w] &= !(1 << b);
            }
        }
    }

    /// The sub-runs of `run` that may hold old data.
    pub(crate) fn dirty_runs(&self, run: FrameRun) -> Vec<FrameRun> {
        let mut out: Vec<FrameRun> = Vec::new();
        for p in run.iter() {
            let (w, b) = ((p.raw() / 64) as usize, p.raw() % 64);
            if self.dirty[w] & (1 << b) != 0 {
                match out.last_mut() {
                    Some(l) if l.end() == p => l.count += 1,
                    _ => out.push(FrameRun::new(p, 1)),
                }
            }
        }
        out
    }

    pub(crate) fn stats(&self) -> AllocStats {
        AllocStats {
            total_frames: self.nframes,
            free_frames: self.free_frames,
            free_blocks: self.free_blocks[..=self.max_order as usize].to_vec(),
            largest_free_order: (0..=self.max_order).rev().find(|&k| self.heads[k as usize] != NIL),
        }
    }

    /// Walks every free list and checks links, alignment, bounds, and the free count.
    pub(crate) fn check_invariants(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let mut total = 0u64;
        for k in 0..=self.max_order {
            let mut cur = self.heads[k as usize];
            let mut prev = NIL;
            let mut n = 0u64;
            while cur != NIL {
                let p = dec(cur);
                if !p.is_multiple_of(1 << k) || p + (1 << k) > self.nframes {
                    bad.push(format!("order {k} block at {p} misaligned or out of range"));
                    break;
                }
                if self.order[p as usize] != k as u8 + 1 || self.prev[p as usize] != prev {
                    bad.push(format!("order {k} block at {p} has bad order/prev links"));
                    break;
                }
                n += 1;
                total += 1 << k;
                prev = cur;
                cur = self.next[p as usize];
                if n > self.nframes {
                    bad.push(format!("order {k} list loops"));
                    break;
                }
            }
            if n != self.free_blocks[k as usize] {
                bad.push(format!(
                    "order {k}: {n} blocks listed, {} counted",
                    self.free_blocks[k as usize]
                ));
            }
        }
        if total != self.free_frames {
            bad.push(format!("free frames listed {total} != counted {}", self.free_frames));
        }
        bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn full(n: u64) -> Buddy {
        let mut b = Buddy::new(n);
        b.free_range(FrameRun::new(Pfn::new(0), n));
        b
    }

    #[test]
    fn buddy_merges_back_to_one_block() {
        let mut b = full(1024);
        assert_eq!(b.stats().largest_free_order, Some(10));
        let r = b.alloc_contig(3).unwrap();
        assert_eq!(b.free_frames(), 1021);
        b.free_range(r);
        assert_eq!(b.stats().free_blocks[10], 1);
        assert!(b.check_invariants().is_empty());
    }

    #[test]
    fn buddy_huge_blocks_are_aligned() {
        let mut b = full(4096 + 7);
        b.alloc_contig(1).unwrap();
        let runs = b.alloc_anywhere(1024, 9).unwrap();
        for r in &runs {
            assert!(r.pfn.is_huge_aligned() && r.count % 512 == 0, "{r:?}");
        }
        assert_eq!(runs.iter().map(|r| r.count).sum::<u64>(), 1024);
    }

    #[test]
    fn buddy_anywhere_succeeds_when_fragmented() {
        let mut b = full(64);
        let singles: Vec<_> = (0..64).map(|_| b.alloc_contig(1).unwrap()).collect();
        for r in singles.iter().step_by(2) {
            b.free_range(*r);
        }
        assert_eq!(b.alloc_contig(2), None);
        let runs = b.alloc_anywhere(32, 0).unwrap();
        assert_eq!(runs.iter().map(|r| r.count).sum::<u64>(), 32);
        assert_eq!(b.alloc_anywhere(1, 0), None);
        assert!(b.check_invariants().is_empty());
    }

    #[test]
    fn buddy_reserve_specific_frames() {
        let mut b = full(1024);
        assert!(b.reserve(FrameRun::new(Pfn::new(100), 10)));
        assert!(!b.is_free(105));
        assert!(b.is_free(99) && b.is_free(110));
        assert!(!b.reserve(FrameRun::new(Pfn::new(105), 1)), "already reserved");
        assert_eq!(b.free_frames(), 1014);
        b.free_range(FrameRun::new(Pfn::new(100), 10));
        assert_eq!(b.stats().free_blocks[10], 1);
        assert!(b.check_invariants().is_empty());
    }

    #[test]
    fn buddy_lifo_reuses_just_freed_frame() {
        let mut b = full(256);
        let a = b.alloc_contig(1).unwrap();
        let _c = b.alloc_contig(1).unwrap();
        b.free_range(a);
        assert_eq!(b.alloc_contig(1).unwrap(), a);
    }

    #[test]
    fn buddy_dirty_tracking() {
        let mut b = full(128);
        b.set_dirty(FrameRun::new(Pfn::new(3), 4), true);
        assert_eq!(
            b.dirty_runs(FrameRun::new(Pfn::new(0), 10)),
            vec![FrameRun::new(Pfn::new(3), 4)]
        );
        b.set_dirty(FrameRun::new(Pfn::new(4), 1), false);
        assert_eq!(b.dirty_runs(FrameRun::new(Pfn::new(0), 10)).len(), 2);
    }

    proptest! {
        /// Random alloc/free sequences against a set model: no frame handed out twice, free
        /// counts exact, lists consistent.
        #[test]
        fn buddy_matches_model(ops in prop::collection::vec((0u8..3, 1u64..40), 1..200)) {
            let n = 1000;
            let mut b = full(n);
            let mut used = std::collections::BTreeSet::new();
            let mut held: Vec<FrameRun> = Vec::new();
            for (op, sz) in ops {
                match op {
                    0 => if let Some(r) = b.alloc_contig(sz) {
                        for p in r.iter() { prop_assert!(used.insert(p.raw())); }
                        held.push(r);
                    },
                    1 => if let Some(rs) = b.alloc_anywhere(sz, 0) {
                        for r in rs { for p in r.iter() { prop_assert!(used.insert(p.raw())); } held.push(r); }
                    },
                    _ => if !held.is_empty() {
                        let r = held.swap_remove((sz as usize) % held.len());
                        for p in r.iter() { used.remove(&p.raw()); }
                        b.free_range(r);
                    },
                }
                prop_assert_eq!(b.free_frames(), n - used.len() as u64);
            }
            prop_assert!(b.check_invariants().is_empty());
            for r in held { b.free_range(r); }
            prop_assert_eq!(b.free_frames(), n);
        }
    }
}
