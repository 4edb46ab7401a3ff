//! The filesystem's side of memory mapping: [`FileBacking`] for pinwheel-mm. DAX faults
//! resolve through the extent map to the file's blocks themselves; page-cache files map their
//! cache frames. Every mapping holds a reference on the inode (an unlinked file lives while
//! mapped).
//!
//! Faults never wait for a layout break: a write fault on a shared (reflinked) block copies it
//! at once unless long-term pins or an unbreakable lease hold that block, in which case the
//! fault fails (SIGBUS / a failed RDMA operation). A fault in a hole allocates a block, except
//! in a sealed file.

use std::ops::Range;
use std::sync::Arc;

use pinwheel_mm::{
    BackingKind, FileBacking, FileId, FilePinGuard, MmError, Pfn, PinOwner, VirtAddr,
};

use crate::error::{FsError, FsResult};
use crate::fs::{Filesystem, Shared};
use crate::inode::Inode;
use crate::policy::{PinAction, pin_action};
use crate::types::Ino;

/// A mappable view of a file.
#[derive(Debug)]
pub(crate) struct InodeBacking {
    fs: Arc<Shared>,
    inode: Arc<Inode>,
}

impl InodeBacking {
    pub(crate) fn new(fs: Arc<Shared>, inode: Arc<Inode>) -> Arc<InodeBacking> {
        inode.rt.lock().maps += 1;
        Arc::new(InodeBacking { fs, inode })
    }
}

impl Drop for InodeBacking {
    fn drop(&mut self) {
        self.inode.rt.lock().maps -= 1;
        if self.inode.layout.read().rec.nlink == 0 && !self.fs.busy(&self.inode) {
            self.fs.reaper.queue(self.inode.ino);
        }
    }
}

impl Shared {
    fn cow_fault(&self, inode: &Inode, page: u64) -> FsResult<()> {
        {
            // Lock order: layout before runtime (as everywhere).
            let dax = !inode.layout.read().page_cache();
            let rt = inode.rt.lock();
            let lenient = matches!(
                pin_action(self.policy(), dax),
                PinAction::ReuseUnderDma | PinAction::Orphan
            );
            // A pin still being established (its own write fault brought us here) holds no
            // frame yet: copying the block under it is what it is waiting for.
            let pinned = rt.pins_on(&(page..page + 1)).any(|(_, p)| p.established);
            if rt.sealed() || (!lenient && pinned) {
                return Err(FsError::PinRefused {
                    errno: pinwheel_mm::Errno::EFAULT,
                    reason: format!(
                        "{}: write fault on a shared block held by long-term pins or a seal",
                        rt.path
                    ),
                });
            }
        }
        let mut lay = inode.layout.write();
        self.unshare(inode, &mut lay, page..page + 1)?;
        self.persist(&mut lay)
    }

    fn hole_fault(&self, inode: &Inode, page: u64) -> FsResult<()> {
        let mut lay = inode.layout.write();
        if page < lay.size_pages() && lay.extents.lookup(page).is_none() {
            self.fill_holes(inode, &mut lay, page..page + 1)?;
            self.persist(&mut lay)?;
        }
        Ok(())
    }
}

impl FileBacking for InodeBacking {
    fn file_id(&self) -> FileId {
        self.inode.ino.file_id()
    }

    fn name(&self) -> String {
        self.inode.path()
    }

    fn kind(&self) -> BackingKind {
        if self.inode.layout.read().page_cache() {
            BackingKind::PageCache
        } else {
            BackingKind::Dax
        }
    }

    fn fault(
        &self,
        pgoff: u64,
        write: bool,
        install: &mut dyn FnMut(Pfn) -> pinwheel_mm::Result<()>,
    ) -> pinwheel_mm::Result<()> {
        for _ in 0..8 {
            if !self.fs.mounted.load(std::sync::atomic::Ordering::Acquire) {
                return Err(MmError::Refused {
                    errno: pinwheel_mm::Errno::EIO,
                    reason: "filesystem unmounted".into(),
                });
            }
            let lay = self.inode.layout.read();
            if pgoff >= lay.size_pages() {
                return Err(MmError::BeyondEof { addr: VirtAddr::new(0), file: self.inode.path() });
            }
            if lay.page_cache() {
                let pfn = self.fs.cache_frame(&self.inode, &lay, pgoff).map_err(MmError::from)?;
                return install(pfn);
            }
            match lay.extents.lookup(pgoff) {
                Some(pfn) if !(write && self.fs.shared(pfn)) => return install(pfn),
                Some(_) => {
                    drop(lay);
                    self.fs.cow_fault(&self.inode, pgoff)?;
                }
                None => {
                    if self.inode.rt.lock().sealed() {
                        return Err(MmError::Refused {
                            errno: pinwheel_mm::Errno::EFAULT,
                            reason: format!("{}: hole in a sealed file", self.inode.path()),
                        });
                    }
                    drop(lay);
                    self.fs.hole_fault(&self.inode, pgoff)?;
                }
            }
        }
        Err(MmError::Refused {
            errno: pinwheel_mm::Errno::EAGAIN,
            reason: format!("{}: fault kept racing with layout changes", self.inode.path()),
        })
    }

    fn longterm_pin(
        &self,
        pgoffs: Range<u64>,
        write: bool,
        owner: Option<&PinOwner>,
    ) -> pinwheel_mm::Result<Box<dyn FilePinGuard>> {
        Ok(self.fs.file_pin(&self.inode, pgoffs, write, owner)?)
    }
}

impl Filesystem {
    /// A mappable view of the file (for `AddressSpace::mmap`). Holds a reference on the inode
    /// until the last mapping made from it goes.
    pub fn backing(&self, ino: Ino) -> FsResult<Arc<dyn FileBacking>> {
        self.0.check_mounted()?;
        let inode = self.0.inode(ino)?;
        if inode.layout.read().is_dir() {
            return Err(FsError::IsDir { path: inode.path() });
        }
        Ok(InodeBacking::new(Arc::clone(&self.0), inode))
    }
}
