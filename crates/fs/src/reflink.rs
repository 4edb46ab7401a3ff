//! Reflink: cloning a range shares its blocks between files (reference counts in the on-pool
//! table); the first write to a shared block in either file copies it (`io.rs`, `unshare`).
//!
//! Sharing is a layout change of the source (Ira Weiny's lease text: the layout includes
//! "block sharing"): the source's leases are broken (an unbreakable lease fails the clone), its
//! long-term pins are handled by the policy (a write pin on a block that becomes shared would
//! let DMA change the clone), and every translation of the range is zapped, so the next write
//! through a mapping, an ODP or file MR faults and copies on write. The destination range is
//! replaced: a layout change that frees blocks.

use std::sync::Arc;

use parking_lot::RwLockWriteGuard;
use pinwheel_mm::PAGE_SIZE;

use crate::breaking::LayoutReason;
use crate::error::{FsError, FsResult};
use crate::fs::{Filesystem, Shared};
use crate::inode::{Inode, Layout};
use crate::limits::BREAK_RETRIES;
use crate::namei::CreateOptions;
use crate::types::{Caller, Ino};

fn lock2<'a>(
    a: &'a Inode,
    b: &'a Inode,
) -> (RwLockWriteGuard<'a, Layout>, RwLockWriteGuard<'a, Layout>) {
    if a.ino < b.ino {
        let la = a.layout.write();
        (la, b.layout.write())
    } else {
        let lb = b.layout.write();
        (a.layout.write(), lb)
    }
}

impl Shared {
    pub(crate) fn clone_range(
        &self,
        src: &Arc<Inode>,
        src_off: u64,
        dst: &Arc<Inode>,
        dst_off: u64,
        len: u64,
        caller: &Caller,
    ) -> FsResult<()> {
        if src.ino == dst.ino {
            return Err(FsError::invalid("clone: source and destination are the same file"));
        }
        if src.layout.read().is_dir() || dst.layout.read().is_dir() {
            return Err(FsError::IsDir { path: format!("{} or {}", src.path(), dst.path()) });
        }
        if !src_off.is_multiple_of(PAGE_SIZE) || !dst_off.is_multiple_of(PAGE_SIZE) {
            return Err(FsError::invalid("clone: offsets must be multiples of 4096"));
        }
        let src_size = src.layout.read().rec.size;
        let len = if len == 0 { src_size.saturating_sub(src_off) } else { len };
        Shared::check_io(src_off, len)?;
        Shared::check_io(dst_off, len)?;
        if src_off + len > src_size {
            return Err(FsError::invalid("clone: range beyond the source's end of file"));
        }
        if len == 0 {
            return Ok(());
        }
        if len % PAGE_SIZE != 0 {
            // The last block is shared whole: allowed only where its tail is beyond both ends of
            // file, as Linux's remap rules require.
            if src_off + len != src_size {
                return Err(FsError::invalid(
                    "clone: length must be a multiple of 4096 unless the range ends at the source's end of file",
                ));
            }
            if dst_off + len < dst.layout.read().rec.size {
                return Err(FsError::invalid(
                    "clone: a range ending inside a block at the source's end of file must end at or beyond the destination's end of file",
                ));
            }
        }
        self.writeback(src)?;
        let n = len.div_ceil(PAGE_SIZE);
        let (sp, dp) = (src_off / PAGE_SIZE, dst_off / PAGE_SIZE);
        for _ in 0..BREAK_RETRIES {
            let gs = self.break_layout(src, sp..sp + n, LayoutReason::Share, caller)?;
            let gd = self.break_layout(dst, dp..dp + n, LayoutReason::Punch, caller)?;
            let (ls, mut ld) = lock2(src, dst);
            if src.rt.lock().sealed() || dst.rt.lock().sealed() {
                drop((ls, ld, gs, gd));
                continue;
            }
            let r = (|| -> FsResult<()> {
                // Every translation of the source range goes first: afterwards its blocks are
                // shared, and a write must fault and copy rather than land in the clone.
                let _inv = self.zap(src, sp..sp + n, LayoutReason::Share);
                self.remove_pages(dst, &mut ld, dp, dp + n, LayoutReason::Punch)?;
                for e in ls.extents.within(sp..sp + n) {
                    self.ref_blocks(&e)?;
                    ld.extents.insert(e.page - sp + dp, e.pfn, e.count);
                }
                ld.rec.size = ld.rec.size.max(dst_off + len);
                ld.rec.mtime_ns = self.now_ns();
                Ok(())
            })();
            // Persist what was done even on failure: reference counts already moved.
            self.persist(&mut ld)?;
            r?;
            self.counters.layout_changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        Err(FsError::TimedOut {
            what: format!("clone {}: kept racing with new leases", src.path()),
        })
    }
}

impl Filesystem {
    /// Clones `len` bytes (0: to the end of the source) of `src` at `src_off` into `dst` at
    /// `dst_off`, sharing blocks.
    pub fn clone_range(
        &self,
        src: Ino,
        src_off: u64,
        dst: Ino,
        dst_off: u64,
        len: u64,
        caller: &Caller,
    ) -> FsResult<()> {
        self.0.check_mounted()?;
        let (s, d) = (self.0.inode(src)?, self.0.inode(dst)?);
        self.0.clone_range(&s, src_off, &d, dst_off, len, caller)
    }

    /// Creates `dst` as a reflink copy of `src` (`cp --reflink=always`).
    pub fn clone_file(&self, src: &str, dst: &str, caller: &Caller) -> FsResult<Ino> {
        self.0.check_mounted()?;
        let s = self.0.resolve(src)?;
        let page_cache = s.layout.read().page_cache();
        let d = self.create(dst, CreateOptions { page_cache })?;
        let di = self.0.inode(d)?;
        let size = s.layout.read().rec.size;
        if size > 0
            && let Err(e) = self.0.clone_range(&s, 0, &di, 0, 0, caller)
        {
            let _ = self.unlink(dst, caller);
            return Err(e);
        }
        Ok(d)
    }
}
