//! The page cache of non-DAX files: data lives in cache frames (owned `PageCache`), copied from
//! and written back to the file's blocks. Mappings and pins reach the cache frames, not the
//! blocks.
//!
//! This reproduces the other failure of thread 000, which Linux 6.1 still shows
//! (`reference/linux-behaviour.md`, experiment 2): truncating or punching under a pinned MR
//! drops the cache frames from the cache, but the pin keeps them alive for the MR alone; DMA
//! into them completes successfully and is silently lost, and re-growing the file shows zeros.
//! No other file is corrupted: the frames are never reused while pinned.
//!
//! Writeback copies every cached page to its block at `fsync` and unmount (allocating blocks
//! for holes then; that allocation does not recall leases).

use std::ops::Range;
use std::sync::Arc;

use pinwheel_mm::{FrameRun, Owner, PAGE_SIZE, Pfn, Placement, PoolOffset};

use crate::breaking::LayoutReason;
use crate::error::{FsError, FsResult};
use crate::fs::Shared;
use crate::inode::{Inode, Layout};
use crate::types::Caller;

impl Shared {
    /// The cache frame of `page`, filled from its block (or zeros) on first use.
    pub(crate) fn cache_frame(&self, inode: &Inode, lay: &Layout, page: u64) -> FsResult<Pfn> {
        let mut c = inode.cache.lock();
        if let Some(p) = c.get(&page) {
            return Ok(*p);
        }
        let run = self
            .mem()
            .alloc(1, Placement::Contiguous, Owner::PageCache(inode.ino.file_id()), true)
            .map_err(|e| match e.errno() {
                pinwheel_mm::Errno::ENOMEM => {
                    FsError::NoSpace { needed: 1, free: self.mem().free_bytes() / PAGE_SIZE }
                }
                _ => FsError::Mm(e),
            })?;
        let pfn = run[0].pfn;
        if let Some(b) = lay.extents.lookup(page) {
            self.mem().pool().copy_frame(b, pfn).map_err(FsError::Mm)?;
        }
        c.insert(page, pfn);
        Ok(pfn)
    }

    pub(crate) fn cache_read(
        &self,
        inode: &Inode,
        lay: &Layout,
        off: u64,
        buf: &mut [u8],
    ) -> FsResult<()> {
        // The cached page if there is one, else the block.
        self.read_frames(off, buf, |page| {
            let cached = inode.cache.lock().get(&page).copied();
            cached.or_else(|| lay.extents.lookup(page))
        })
    }

    fn cache_store(&self, inode: &Inode, lay: &Layout, off: u64, data: &[u8]) -> FsResult<()> {
        let pool = self.mem().pool();
        let mut done = 0usize;
        while done < data.len() {
            let at = off + done as u64;
            let n = ((PAGE_SIZE - at % PAGE_SIZE) as usize).min(data.len() - done);
            let pfn = self.cache_frame(inode, lay, at / PAGE_SIZE)?;
            pool.write(PoolOffset::new(pfn.offset().raw() + at % PAGE_SIZE), &data[done..done + n])
                .map_err(FsError::Mm)?;
            done += n;
        }
        Ok(())
    }

    pub(crate) fn cache_write(
        &self,
        inode: &Arc<Inode>,
        off: u64,
        data: &[u8],
        caller: &Caller,
    ) -> FsResult<usize> {
        let end = off + data.len() as u64;
        {
            let lay = inode.layout.read();
            if end <= lay.rec.size {
                self.cache_store(inode, &lay, off, data)?;
                return Ok(data.len());
            }
        }
        let old = inode.layout.read().rec.size;
        let pages = old.div_ceil(PAGE_SIZE)..end.div_ceil(PAGE_SIZE);
        self.layout_op(inode, pages, LayoutReason::Resize, caller, |lay| {
            self.cache_store(inode, lay, off, data)?;
            lay.rec.size = lay.rec.size.max(end);
            lay.rec.mtime_ns = self.now_ns();
            self.persist(lay)?;
            Ok(data.len())
        })
    }

    /// Drops cached pages of `pages` (already zapped). A pinned page lives on for its pin only.
    pub(crate) fn drop_cache(&self, inode: &Inode, pages: Range<u64>) {
        let dropped: Vec<Pfn> = {
            let mut c = inode.cache.lock();
            let keys: Vec<u64> = c.range(pages).map(|(k, _)| *k).collect();
            keys.into_iter().filter_map(|k| c.remove(&k)).collect()
        };
        for p in dropped {
            self.mem().drop_owner(FrameRun::new(p, 1));
        }
    }

    /// Copies every cached page inside the file to its block.
    pub(crate) fn writeback(&self, inode: &Arc<Inode>) -> FsResult<()> {
        if inode.cache.lock().is_empty() {
            return Ok(());
        }
        let mut lay = inode.layout.write();
        let limit = lay.size_pages();
        let cached: Vec<(u64, Pfn)> =
            inode.cache.lock().range(..limit).map(|(k, v)| (*k, *v)).collect();
        for (page, cpfn) in cached {
            self.fill_holes(inode, &mut lay, page..page + 1)?;
            self.unshare(inode, &mut lay, page..page + 1)?;
            let b = lay.extents.lookup(page).expect("just allocated");
            self.mem().pool().copy_frame(cpfn, b).map_err(FsError::Mm)?;
        }
        self.persist(&mut lay)
    }
}
