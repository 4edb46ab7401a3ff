//! Open files and the leases they hold.
//!
//! An [`OpenFile`] is the open file description: leases belong to it, and closing it (dropping
//! it) drops them ("close is OK"). It holds a reference on the inode: an unlinked file lives
//! while open.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use pinwheel_mm::FileBacking;

use crate::backing::InodeBacking;
use crate::error::{FsError, FsResult};
use crate::fs::Filesystem;
use crate::holder::LeaseHolder;
use crate::inode::Inode;
use crate::layout::{DefragOptions, DefragReport, FallocMode};
use crate::lease::{Lease, LeaseInfo, LeaseKind, LeaseState, check_change};
use crate::limits::MAX_LEASES_PER_FILE;
use crate::namei::Stat;
use crate::types::{Caller, Ino, LeaseId, OpenId};

/// An open file.
#[derive(Debug)]
pub struct OpenFile {
    fs: Filesystem,
    inode: Arc<Inode>,
    id: OpenId,
    caller: Caller,
}

impl Filesystem {
    /// Opens a file on behalf of `caller`.
    pub fn open(&self, path: &str, caller: &Caller) -> FsResult<OpenFile> {
        self.0.check_mounted()?;
        let inode = self.0.resolve(path)?;
        self.open_inode(inode, caller)
    }

    /// Opens a file by inode.
    pub fn open_ino(&self, ino: Ino, caller: &Caller) -> FsResult<OpenFile> {
        self.0.check_mounted()?;
        let inode = self.0.inode(ino)?;
        self.open_inode(inode, caller)
    }

    fn open_inode(&self, inode: Arc<Inode>, caller: &Caller) -> FsResult<OpenFile> {
        if inode.layout.read().is_dir() {
            return Err(FsError::IsDir { path: inode.path() });
        }
        inode.rt.lock().opens += 1;
        Ok(OpenFile { fs: self.clone(), id: OpenId(self.0.id()), inode, caller: caller.clone() })
    }
}

impl OpenFile {
    /// The inode.
    pub fn ino(&self) -> Ino {
        self.inode.ino
    }
    /// This open file's id.
    pub fn id(&self) -> OpenId {
        self.id
    }
    /// On whose behalf it was opened.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }
    /// The filesystem.
    pub fn fs(&self) -> &Filesystem {
        &self.fs
    }

    /// Takes, upgrades or downgrades this open file's layout lease. An unbreakable lease is
    /// taken by downgrading a write lease (the LPC 2019 seal sequence). `holder` receives
    /// recall and revoke events.
    pub fn set_lease(
        &self,
        kind: LeaseKind,
        holder: Option<Arc<dyn LeaseHolder>>,
    ) -> FsResult<LeaseId> {
        self.fs.0.check_mounted()?;
        let sh = &self.fs.0;
        let mut rt = self.inode.rt.lock();
        let current = rt.leases.iter().find(|l| l.open == self.id).map(|l| (l.kind, l.state));
        if let Some((_, LeaseState::Breaking { .. })) = current {
            return Err(FsError::LeaseConflict {
                detail: format!("{}: this lease is being recalled; release it", rt.path),
            });
        }
        let breaking = !rt.breaks.is_empty();
        let others: Vec<&Lease> = rt.leases.iter().filter(|l| l.open != self.id).collect();
        check_change(&others, current.map(|c| c.0), kind, breaking)?;
        if current.is_none() && rt.leases.len() >= MAX_LEASES_PER_FILE {
            return Err(FsError::LeaseConflict {
                detail: format!("{}: {MAX_LEASES_PER_FILE} leases already", rt.path),
            });
        }
        let now = sh.clock().now();
        if let Some(l) = rt.leases.iter_mut().find(|l| l.open == self.id) {
            l.kind = kind;
            if holder.is_some() {
                l.holder = holder;
            }
            return Ok(l.id);
        }
        let id = LeaseId(sh.id());
        rt.leases.push(Lease {
            id,
            kind,
            owner: self.caller.owner,
            open: self.id,
            state: LeaseState::Active,
            holder,
            taken_at: now,
            owner_label: self.caller.label.clone(),
        });
        Ok(id)
    }

    /// Releases this open file's lease. `EBUSY` while long-term pins rely on it (deregister
    /// the MRs first). Releasing a recalled lease completes the recall.
    pub fn release_lease(&self) -> FsResult<()> {
        let mut rt = self.inode.rt.lock();
        let Some(pos) = rt.leases.iter().position(|l| l.open == self.id) else {
            return Err(FsError::invalid(format!("{}: no lease held by this open file", rt.path)));
        };
        let id = rt.leases[pos].id;
        let pins = rt.pins.values().filter(|p| p.lease == Some(id)).count();
        if pins > 0 {
            return Err(FsError::LeaseInUse {
                detail: format!(
                    "{}: {pins} long-term pin(s) rely on {id}; deregister them first",
                    rt.path
                ),
            });
        }
        rt.leases.remove(pos);
        drop(rt);
        self.inode.cv.notify_all();
        Ok(())
    }

    /// This open file's lease.
    pub fn lease(&self) -> Option<LeaseInfo> {
        let rt = self.inode.rt.lock();
        self.fs.0.lease_infos(&self.inode, &rt).into_iter().find(|l| l.open == self.id)
    }

    /// Seals the file: write layout lease, allocate every hole up to the size, downgrade to an
    /// unbreakable layout lease (LPC 2019: "take a write lease, fallocate, then downgrade").
    pub fn seal(&self) -> FsResult<LeaseId> {
        self.set_lease(LeaseKind::Write, None)?;
        let size = self.inode.layout.read().rec.size;
        if size > 0
            && let Err(e) = self.fallocate(0, size, FallocMode::Allocate { keep_size: true })
        {
            let _ = self.release_lease();
            return Err(e);
        }
        self.set_lease(LeaseKind::Unbreakable, None)
    }

    /// A mappable view (see [`Filesystem::backing`]).
    pub fn backing(&self) -> Arc<dyn FileBacking> {
        InodeBacking::new(Arc::clone(&self.fs.0), Arc::clone(&self.inode))
    }

    /// Reads at `off`.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> FsResult<usize> {
        self.fs.read(self.ino(), off, buf)
    }
    /// Writes at `off`.
    pub fn write(&self, off: u64, data: &[u8]) -> FsResult<usize> {
        self.fs.write(self.ino(), off, data, &self.caller)
    }
    /// Truncates.
    pub fn truncate(&self, size: u64) -> FsResult<()> {
        self.fs.truncate(self.ino(), size, &self.caller)
    }
    /// fallocate.
    pub fn fallocate(&self, off: u64, len: u64, mode: FallocMode) -> FsResult<()> {
        self.fs.fallocate(self.ino(), off, len, mode, &self.caller)
    }
    /// Defragments.
    pub fn defrag(&self, opts: DefragOptions) -> FsResult<DefragReport> {
        self.fs.defrag(self.ino(), opts, &self.caller)
    }
    /// stat.
    pub fn stat(&self) -> FsResult<Stat> {
        self.fs.stat_ino(self.ino())
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        {
            let mut rt = self.inode.rt.lock();
            rt.leases.retain(|l| l.open != self.id);
            rt.opens -= 1;
        }
        self.inode.cv.notify_all();
        if self.inode.layout.read().rec.nlink == 0
            && self.fs.0.mounted.load(Ordering::Acquire)
            && !self.fs.0.busy(&self.inode)
        {
            self.fs.0.reaper.queue(self.inode.ino);
        }
    }
}
