//! Layout-changing operations: truncate, punch hole, fallocate, defragment. Each passes
//! `break_layout` (through `layout_op`), then, under the file lock: zaps every translation of
//! the affected pages, changes the extents, frees or moves blocks, and writes the inode through.

use std::sync::Arc;

use pinwheel_mm::{PAGE_SIZE, Placement, PoolOffset};

use crate::breaking::LayoutReason;
use crate::error::{FsError, FsResult};
use crate::extent::Extent;
use crate::fs::{Filesystem, Shared};
use crate::inode::{Inode, Layout};
use crate::limits::MAX_FILE_SIZE;
use crate::policy::{PinAction, pin_action};
use crate::types::{Caller, Ino};

/// `fallocate` modes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum FallocMode {
    /// Allocate blocks for holes; grow the size unless `keep_size`.
    Allocate {
        /// FALLOC_FL_KEEP_SIZE.
        keep_size: bool,
    },
    /// Zero the range, allocating where needed (FALLOC_FL_ZERO_RANGE).
    ZeroRange,
    /// Free the blocks of the range; the size stays (FALLOC_FL_PUNCH_HOLE).
    PunchHole,
}

/// Options of defragmentation.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DefragOptions {
    /// Prefer 2 MiB-aligned runs (huge-frame-contiguous space).
    pub huge: bool,
}

/// What a defragmentation did.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DefragReport {
    /// Extents before.
    pub extents_before: usize,
    /// Extents after.
    pub extents_after: usize,
    /// Pages moved to new blocks.
    pub pages_moved: u64,
    /// Pages left in place because they are shared with another file.
    pub pages_shared_skipped: u64,
}

impl Shared {
    fn reuse(&self, lay: &Layout) -> bool {
        pin_action(self.policy(), !lay.page_cache()) == PinAction::ReuseUnderDma
    }

    /// Zaps, uncaches and frees pages `[from, to)`.
    pub(crate) fn remove_pages(
        &self,
        inode: &Inode,
        lay: &mut Layout,
        from: u64,
        to: u64,
        reason: LayoutReason,
    ) -> FsResult<()> {
        let _inv = self.zap(inode, from..to, reason);
        self.drop_cache(inode, from..to);
        let reuse = self.reuse(lay);
        for e in lay.extents.remove(from..to) {
            self.deref_blocks(&e, reuse)?;
        }
        Ok(())
    }

    /// Zeroes bytes `[off, off + len)` inside one page, in the block and in the cache.
    fn zero_partial(&self, inode: &Inode, lay: &mut Layout, off: u64, len: u64) -> FsResult<()> {
        if len == 0 {
            return Ok(());
        }
        let page = off / PAGE_SIZE;
        self.unshare(inode, lay, page..page + 1)?;
        if let Some(pfn) = lay.extents.lookup(page) {
            self.mem()
                .pool()
                .fill(PoolOffset::new(pfn.offset().raw() + off % PAGE_SIZE), len, 0)
                .map_err(FsError::Mm)?;
        }
        if let Some(cpfn) = inode.cache.lock().get(&page) {
            self.mem()
                .pool()
                .fill(PoolOffset::new(cpfn.offset().raw() + off % PAGE_SIZE), len, 0)
                .map_err(FsError::Mm)?;
        }
        Ok(())
    }

    /// Zeroes bytes `[from, to)` page by page (no-op if empty).
    fn zero_bytes(&self, inode: &Inode, lay: &mut Layout, from: u64, to: u64) -> FsResult<()> {
        let mut at = from;
        while at < to {
            let n = (PAGE_SIZE - at % PAGE_SIZE).min(to - at);
            self.zero_partial(inode, lay, at, n)?;
            at += n;
        }
        Ok(())
    }

    pub(crate) fn truncate(&self, inode: &Arc<Inode>, size: u64, caller: &Caller) -> FsResult<()> {
        if size > MAX_FILE_SIZE {
            return Err(FsError::FileTooBig { max: MAX_FILE_SIZE });
        }
        let old = inode.layout.read().rec.size;
        if size >= old {
            let pages = old.div_ceil(PAGE_SIZE)..size.div_ceil(PAGE_SIZE);
            return self.layout_op(inode, pages, LayoutReason::Resize, caller, |lay| {
                lay.rec.size = size;
                lay.rec.mtime_ns = self.now_ns();
                self.persist(lay)
            });
        }
        let keep = size.div_ceil(PAGE_SIZE);
        // Zeroing the tail of a shared last page copies it: then that page changes layout too.
        let tail_shared = !size.is_multiple_of(PAGE_SIZE)
            && inode.layout.read().extents.lookup(size / PAGE_SIZE).is_some_and(|p| self.shared(p));
        let first = if tail_shared { size / PAGE_SIZE } else { keep };
        self.layout_op(inode, first..u64::MAX, LayoutReason::Truncate, caller, |lay| {
            self.remove_pages(inode, lay, keep, u64::MAX, LayoutReason::Truncate)?;
            if !size.is_multiple_of(PAGE_SIZE) {
                self.zero_partial(inode, lay, size, PAGE_SIZE - size % PAGE_SIZE)?;
            }
            lay.rec.size = size;
            lay.rec.mtime_ns = self.now_ns();
            self.persist(lay)
        })
    }

    pub(crate) fn punch(
        &self,
        inode: &Arc<Inode>,
        off: u64,
        len: u64,
        caller: &Caller,
    ) -> FsResult<()> {
        Shared::check_io(off, len)?;
        let end = off + len;
        let first = off.div_ceil(PAGE_SIZE);
        let last = end / PAGE_SIZE;
        self.layout_op(
            inode,
            off / PAGE_SIZE..end.div_ceil(PAGE_SIZE),
            LayoutReason::Punch,
            caller,
            |lay| {
                let size = lay.rec.size;
                let end = end.min(size.max(off));
                if first < last {
                    self.remove_pages(inode, lay, first, last, LayoutReason::Punch)?;
                    // Partial pages at both ends are zeroed in place.
                    self.zero_bytes(inode, lay, off, (first * PAGE_SIZE).min(end))?;
                    self.zero_bytes(inode, lay, last * PAGE_SIZE, end)?;
                } else {
                    self.zero_bytes(inode, lay, off, end)?;
                }
                lay.rec.mtime_ns = self.now_ns();
                self.persist(lay)
            },
        )
    }

    pub(crate) fn allocate(
        &self,
        inode: &Arc<Inode>,
        off: u64,
        len: u64,
        keep_size: bool,
        caller: &Caller,
    ) -> FsResult<()> {
        Shared::check_io(off, len)?;
        let pages = off / PAGE_SIZE..(off + len).div_ceil(PAGE_SIZE);
        self.layout_op(inode, pages.clone(), LayoutReason::Allocate, caller, |lay| {
            if !lay.page_cache() {
                self.fill_holes(inode, lay, pages.clone())?;
            }
            if !keep_size {
                lay.rec.size = lay.rec.size.max(off + len);
            }
            self.persist(lay)
        })
    }

    pub(crate) fn defrag(
        &self,
        inode: &Arc<Inode>,
        opts: DefragOptions,
        caller: &Caller,
    ) -> FsResult<DefragReport> {
        self.layout_op(inode, 0..u64::MAX, LayoutReason::Migrate, caller, |lay| {
            let mut report =
                DefragReport { extents_before: lay.extents.len(), ..DefragReport::default() };
            let all: Vec<Extent> = lay.extents.iter().collect();
            let movable: Vec<Extent> =
                all.iter().copied().filter(|e| self.shared_count(e) == 0).collect();
            report.pages_shared_skipped = all.iter().map(|e| e.count).sum::<u64>()
                - movable.iter().map(|e| e.count).sum::<u64>();
            if movable.is_empty() {
                report.extents_after = lay.extents.len();
                return Ok(report);
            }
            let _inv = self.zap(inode, 0..u64::MAX, LayoutReason::Migrate);
            let reuse = self.reuse(lay);
            // Merge logically adjacent movable extents into runs moved as one block run.
            let mut runs: Vec<(u64, Vec<Extent>)> = Vec::new();
            for e in movable {
                match runs.last_mut() {
                    Some((start, v))
                        if *start + v.iter().map(|x| x.count).sum::<u64>() == e.page =>
                    {
                        v.push(e)
                    }
                    _ => runs.push((e.page, vec![e])),
                }
            }
            let pool = self.mem().pool();
            for (start, pieces) in runs {
                let count: u64 = pieces.iter().map(|e| e.count).sum();
                let want_huge = opts.huge
                    && count >= pinwheel_mm::FRAMES_PER_HUGE
                    && count.is_multiple_of(pinwheel_mm::FRAMES_PER_HUGE);
                let new = if want_huge {
                    self.alloc_blocks(inode.ino, count, Placement::Huge)
                        .or_else(|_| self.alloc_for(inode.ino, count))?
                } else {
                    self.alloc_for(inode.ino, count)?
                };
                // Copy page by page from the old pieces into the new runs.
                let olds: Vec<pinwheel_mm::Pfn> =
                    pieces.iter().flat_map(|e| e.frames().iter()).collect();
                let news: Vec<pinwheel_mm::Pfn> = new.iter().flat_map(|r| r.iter()).collect();
                let mut i = 0;
                while i < olds.len() {
                    // Copy contiguous stretches in one call.
                    let mut n = 1;
                    while i + n < olds.len()
                        && olds[i + n].raw() == olds[i].raw() + n as u64
                        && news[i + n].raw() == news[i].raw() + n as u64
                    {
                        n += 1;
                    }
                    pool.copy(olds[i].offset(), news[i].offset(), n as u64 * PAGE_SIZE)
                        .map_err(FsError::Mm)?;
                    i += n;
                }
                lay.extents.remove(start..start + count);
                let mut at = start;
                for r in &new {
                    lay.extents.insert(at, r.pfn, r.count);
                    at += r.count;
                }
                for e in &pieces {
                    self.deref_blocks(e, reuse)?;
                }
                report.pages_moved += count;
            }
            self.persist(lay)?;
            report.extents_after = lay.extents.len();
            Ok(report)
        })
    }
}

impl Filesystem {
    /// Sets the size: shrinking frees the blocks beyond it (a layout change), growing leaves a
    /// hole.
    pub fn truncate(&self, ino: Ino, size: u64, caller: &Caller) -> FsResult<()> {
        self.0.check_mounted()?;
        let inode = self.0.inode(ino)?;
        if inode.layout.read().is_dir() {
            return Err(FsError::IsDir { path: inode.path() });
        }
        self.0.truncate(&inode, size, caller)
    }

    /// `fallocate`.
    pub fn fallocate(
        &self,
        ino: Ino,
        off: u64,
        len: u64,
        mode: FallocMode,
        caller: &Caller,
    ) -> FsResult<()> {
        self.0.check_mounted()?;
        if len == 0 {
            return Err(FsError::invalid("fallocate: zero length"));
        }
        let inode = self.0.inode(ino)?;
        if inode.layout.read().is_dir() {
            return Err(FsError::IsDir { path: inode.path() });
        }
        match mode {
            FallocMode::Allocate { keep_size } => {
                self.0.allocate(&inode, off, len, keep_size, caller)
            }
            FallocMode::PunchHole => self.0.punch(&inode, off, len, caller),
            FallocMode::ZeroRange => {
                Shared::check_io(off, len)?;
                let chunk = vec![0u8; (PAGE_SIZE * 256) as usize];
                let mut at = off;
                while at < off + len {
                    let n = (off + len - at).min(chunk.len() as u64) as usize;
                    self.write(ino, at, &chunk[..n], caller)?;
                    at += n as u64;
                }
                Ok(())
            }
        }
    }

    /// Moves every unshared extent of the file to new blocks, content unchanged: a pure layout
    /// change.
    pub fn defrag(&self, ino: Ino, opts: DefragOptions, caller: &Caller) -> FsResult<DefragReport> {
        self.0.check_mounted()?;
        let inode = self.0.inode(ino)?;
        if inode.layout.read().is_dir() {
            return Err(FsError::IsDir { path: inode.path() });
        }
        self.0.defrag(&inode, opts, caller)
    }
}
