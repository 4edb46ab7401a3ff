//! Reading and writing file data.
//!
//! DAX files: data lives in the file's blocks; a write to allocated, unshared blocks inside the
//! file is a plain store under the shared file lock. A write that must allocate (holes, growth)
//! or copy a shared block (reflink copy-on-write) is a layout change and goes through
//! `break_layout` first. Page-cache files go through their cache (`pagecache.rs`).

use std::ops::Range;
use std::sync::Arc;

use pinwheel_mm::{PAGE_SIZE, Pfn, PoolOffset};

use crate::breaking::LayoutReason;
use crate::error::{FsError, FsResult};
use crate::fs::{Filesystem, Shared};
use crate::inode::{Inode, Layout};
use crate::limits::MAX_FILE_SIZE;
use crate::types::{Caller, Ino};

fn pages_of(off: u64, len: u64) -> Range<u64> {
    off / PAGE_SIZE..(off + len).div_ceil(PAGE_SIZE)
}

impl Shared {
    /// Copies file bytes `[off, off + buf.len())` (inside the file) out of the blocks.
    pub(crate) fn read_blocks(&self, lay: &Layout, off: u64, buf: &mut [u8]) -> FsResult<()> {
        self.read_frames(off, buf, |page| lay.extents.lookup(page))
    }

    /// Copies bytes `[off, off + buf.len())` of a file out of the frame `frame(page)` names
    /// for each of its pages; a page with none (a hole) reads as zeros.
    pub(crate) fn read_frames(
        &self,
        off: u64,
        buf: &mut [u8],
        frame: impl Fn(u64) -> Option<Pfn>,
    ) -> FsResult<()> {
        let pool = self.mem().pool();
        let mut done = 0usize;
        while done < buf.len() {
            let at = off + done as u64;
            let n = ((PAGE_SIZE - at % PAGE_SIZE) as usize).min(buf.len() - done);
            match frame(at / PAGE_SIZE) {
                Some(pfn) => pool
                    .read(
                        PoolOffset::new(pfn.offset().raw() + at % PAGE_SIZE),
                        &mut buf[done..done + n],
                    )
                    .map_err(FsError::Mm)?,
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// Copies `data` into allocated blocks at file offset `off`.
    pub(crate) fn write_blocks(&self, lay: &Layout, off: u64, data: &[u8]) -> FsResult<()> {
        let pool = self.mem().pool();
        let mut done = 0usize;
        while done < data.len() {
            let at = off + done as u64;
            let n = ((PAGE_SIZE - at % PAGE_SIZE) as usize).min(data.len() - done);
            let pfn = lay.extents.lookup(at / PAGE_SIZE).ok_or_else(|| {
                FsError::invalid(format!("write to unallocated page {}", at / PAGE_SIZE))
            })?;
            pool.write(PoolOffset::new(pfn.offset().raw() + at % PAGE_SIZE), &data[done..done + n])
                .map_err(FsError::Mm)?;
            done += n;
        }
        Ok(())
    }

    /// Allocates blocks for every hole of `pages`, all or nothing.
    pub(crate) fn fill_holes(
        &self,
        inode: &Inode,
        lay: &mut Layout,
        pages: Range<u64>,
    ) -> FsResult<()> {
        let holes = lay.extents.holes(pages);
        let total: u64 = holes.iter().map(|h| h.end - h.start).sum();
        if total == 0 {
            return Ok(());
        }
        let runs = self.alloc_for(inode.ino, total)?;
        let mut frames = runs.iter().flat_map(|r| r.iter()).peekable();
        for h in holes {
            let mut page = h.start;
            while page < h.end {
                let first = frames.next().expect("allocated one frame per hole page");
                let mut count = 1;
                while page + count < h.end
                    && frames.peek().is_some_and(|f| f.raw() == first.raw() + count)
                {
                    frames.next();
                    count += 1;
                }
                lay.extents.insert(page, first, count);
                page += count;
            }
        }
        Ok(())
    }

    /// Copies every shared block of `pages` to a block of its own (the translations of those
    /// pages are zapped first). The caller passed the layout break for `CowBreak`.
    pub(crate) fn unshare(
        &self,
        inode: &Inode,
        lay: &mut Layout,
        pages: Range<u64>,
    ) -> FsResult<()> {
        let shared: Vec<crate::extent::Extent> = lay
            .extents
            .within(pages.clone())
            .into_iter()
            .flat_map(|e| {
                (0..e.count).map(move |i| crate::extent::Extent {
                    page: e.page + i,
                    pfn: pinwheel_mm::Pfn::new(e.pfn.raw() + i),
                    count: 1,
                })
            })
            .filter(|e| self.shared(e.pfn))
            .collect();
        if shared.is_empty() {
            return Ok(());
        }
        let first = shared.first().map(|e| e.page).unwrap_or(pages.start);
        let last = shared.last().map(|e| e.end()).unwrap_or(pages.end);
        let _inv = self.zap(inode, first..last, LayoutReason::CowBreak);
        let pool = self.mem().pool();
        // All or nothing: a failed allocation leaves the file as it was.
        let fresh = self.alloc_for(inode.ino, shared.len() as u64)?;
        for (e, new) in shared.into_iter().zip(fresh.iter().flat_map(|r| r.iter())) {
            pool.copy_frame(e.pfn, new).map_err(FsError::Mm)?;
            lay.extents.remove(e.page..e.end());
            lay.extents.insert(e.page, new, 1);
            self.deref_blocks(&e, false)?;
            self.counters.cow_breaks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    pub(crate) fn check_io(off: u64, len: u64) -> FsResult<()> {
        match off.checked_add(len) {
            Some(end) if end <= MAX_FILE_SIZE => Ok(()),
            _ => Err(FsError::FileTooBig { max: MAX_FILE_SIZE }),
        }
    }

    pub(crate) fn write_dax(
        &self,
        inode: &Arc<Inode>,
        off: u64,
        data: &[u8],
        caller: &Caller,
    ) -> FsResult<usize> {
        let len = data.len() as u64;
        let pages = pages_of(off, len);
        {
            // Fast path: a store into allocated, unshared blocks inside the file.
            let lay = inode.layout.read();
            let inside = off + len <= lay.rec.size;
            let plain = inside
                && lay.extents.holes(pages.clone()).is_empty()
                && lay.extents.within(pages.clone()).iter().all(|e| self.shared_count(e) == 0);
            if plain {
                self.write_blocks(&lay, off, data)?;
                return Ok(data.len());
            }
        }
        let cow = {
            let lay = inode.layout.read();
            lay.extents.within(pages.clone()).iter().any(|e| self.shared_count(e) > 0)
        };
        let reason = if cow { LayoutReason::CowBreak } else { LayoutReason::Allocate };
        self.layout_op(inode, pages.clone(), reason, caller, |lay| {
            self.fill_holes(inode, lay, pages.clone())?;
            self.unshare(inode, lay, pages.clone())?;
            lay.rec.size = lay.rec.size.max(off + len);
            lay.rec.mtime_ns = self.now_ns();
            self.persist(lay)?;
            self.write_blocks(lay, off, data)?;
            Ok(data.len())
        })
    }
}

impl Filesystem {
    /// Reads up to `buf.len()` bytes at `off`; returns the bytes read (0 at or beyond EOF).
    pub fn read(&self, ino: Ino, off: u64, buf: &mut [u8]) -> FsResult<usize> {
        self.0.check_mounted()?;
        let inode = self.0.inode(ino)?;
        let lay = inode.layout.read();
        if lay.is_dir() {
            return Err(FsError::IsDir { path: inode.path() });
        }
        if off >= lay.rec.size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(lay.rec.size - off) as usize;
        if lay.page_cache() {
            self.0.cache_read(&inode, &lay, off, &mut buf[..n])?;
        } else {
            self.0.read_blocks(&lay, off, &mut buf[..n])?;
        }
        Ok(n)
    }

    /// Writes `data` at `off`, allocating and extending as needed.
    pub fn write(&self, ino: Ino, off: u64, data: &[u8], caller: &Caller) -> FsResult<usize> {
        self.0.check_mounted()?;
        Shared::check_io(off, data.len() as u64)?;
        if data.is_empty() {
            return Ok(0);
        }
        let inode = self.0.inode(ino)?;
        if inode.layout.read().is_dir() {
            return Err(FsError::IsDir { path: inode.path() });
        }
        if inode.layout.read().page_cache() {
            return self.0.cache_write(&inode, off, data, caller);
        }
        self.0.write_dax(&inode, off, data, caller)
    }

    /// Writes back the page cache and makes the file's blocks durable.
    pub fn fsync(&self, ino: Ino) -> FsResult<()> {
        self.0.check_mounted()?;
        let inode = self.0.inode(ino)?;
        self.0.writeback(&inode)?;
        let lay = inode.layout.read();
        for e in lay.extents.iter() {
            self.0.mem().pool().flush(e.pfn.offset(), e.count * PAGE_SIZE).map_err(FsError::Mm)?;
        }
        Ok(())
    }
}
