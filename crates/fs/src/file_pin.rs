//! File pins: every long-term pin of file frames, recorded with its file, byte range, holder
//! and owner (Ira Weiny's file pin objects), so a layout change can act on it and an
//! administrator can find out why `truncate` fails.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use pinwheel_mm::{FilePinGuard, PAGE_SIZE, PinOwner};

use crate::error::{FsError, FsResult};
use crate::fs::{Filesystem, Shared};
use crate::holder::{HolderInfo, PinContext};
use crate::inode::{FilePin, Inode, Runtime};
use crate::lease::{LeaseInfo, LeaseState};
use crate::limits::{MAX_FILE_PINS_PER_FILE, PIN_WAIT_MARGIN_MS};
use crate::policy::{PinDecision, PinRequest, decide_pin};
use crate::types::{FilePinId, Ino, LeaseId, OwnerId};

/// A file pin, for listings.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilePinInfo {
    /// Which.
    pub id: FilePinId,
    /// File.
    pub ino: Ino,
    /// Its path.
    pub path: String,
    /// First byte pinned.
    pub offset: u64,
    /// Bytes pinned.
    pub len: u64,
    /// Pinned for writing.
    pub write: bool,
    /// Who holds it.
    pub holder: HolderInfo,
    /// On whose behalf.
    pub owner: OwnerId,
    /// The lease it relies on.
    pub lease: Option<LeaseId>,
    /// When taken (clock time).
    pub taken_at: Duration,
    /// Told to decohere or revoke by a layout change in progress.
    pub notified: bool,
}

/// Releases a file pin when the mm pin that owns it is dropped.
#[derive(Debug)]
pub(crate) struct FilePinHandle {
    inode: Arc<Inode>,
    id: FilePinId,
    fs: Weak<Shared>,
}

impl FilePinGuard for FilePinHandle {
    fn established(&self) {
        if let Some(p) = self.inode.rt.lock().pins.get_mut(&self.id) {
            p.established = true;
        }
    }
}

impl Drop for FilePinHandle {
    fn drop(&mut self) {
        self.inode.rt.lock().pins.remove(&self.id);
        self.inode.cv.notify_all();
        if let Some(fs) = self.fs.upgrade()
            && self.inode.layout.read().rec.nlink == 0
            && !fs.busy(&self.inode)
        {
            fs.reaper.queue(self.inode.ino);
        }
    }
}

impl Shared {
    /// Decides and records a long-term pin of file pages `pages` (called by pinwheel-mm through
    /// the file's backing). Waits first for a layout change in progress on the range.
    pub(crate) fn file_pin(
        &self,
        inode: &Arc<Inode>,
        pages: Range<u64>,
        write: bool,
        owner: Option<&PinOwner>,
    ) -> FsResult<Box<dyn FilePinGuard>> {
        let ctx = owner.and_then(|o| o.downcast::<PinContext>());
        let owner_id = ctx.as_ref().map_or(OwnerId::ADMIN, |c| c.owner);
        let info = ctx.as_ref().map(|c| c.holder.info()).unwrap_or_default();
        let holder = ctx.as_ref().map(|c| Arc::downgrade(&c.holder));
        let deadline =
            self.clock().now() + self.lease_break() + Duration::from_millis(PIN_WAIT_MARGIN_MS);
        loop {
            {
                let mut rt = inode.rt.lock();
                while rt.breaking(&pages) {
                    let Some(b) = self.clock().real_wait_budget(deadline) else {
                        return Err(FsError::TimedOut {
                            what: format!(
                                "long-term pin of {}: a layout change in progress",
                                rt.path
                            ),
                        });
                    };
                    inode.cv.wait_for(&mut rt, b);
                }
            }
            let lay = inode.layout.read();
            let mut rt = inode.rt.lock();
            if rt.breaking(&pages) {
                continue;
            }
            let own = rt.lease_of(owner_id).filter(|l| l.state == LeaseState::Active);
            let req = PinRequest {
                dax: !lay.page_cache(),
                write,
                fully_allocated: lay.extents.holes(0..lay.size_pages()).is_empty(),
                shared: lay.extents.iter().any(|e| self.shared_count(&e) > 0),
                sealed: rt.sealed(),
                requester_lease: own.map(|l| l.kind),
            };
            let policy = self.policy();
            if let PinDecision::Refuse(errno, why) = decide_pin(policy, req) {
                self.counters.pins_refused.fetch_add(1, Ordering::Relaxed);
                return Err(FsError::PinRefused {
                    errno,
                    reason: format!("long-term pin of {}: {why}", rt.path),
                });
            }
            if rt.pins.len() >= MAX_FILE_PINS_PER_FILE {
                return Err(FsError::invalid(format!(
                    "{}: more than {MAX_FILE_PINS_PER_FILE} long-term pins",
                    rt.path
                )));
            }
            let lease = own.map(|l| l.id);
            let id = FilePinId(self.id());
            rt.pins.insert(
                id,
                FilePin {
                    pages,
                    write,
                    holder,
                    info,
                    owner: owner_id,
                    lease,
                    taken_at: self.clock().now(),
                    notified: false,
                    established: false,
                },
            );
            self.counters.pins_taken.fetch_add(1, Ordering::Relaxed);
            return Ok(Box::new(FilePinHandle {
                inode: Arc::clone(inode),
                id,
                fs: self.me.clone(),
            }));
        }
    }

    pub(crate) fn pin_infos(&self, inode: &Inode, rt: &Runtime) -> Vec<FilePinInfo> {
        rt.pins
            .iter()
            .map(|(id, p)| FilePinInfo {
                id: *id,
                ino: inode.ino,
                path: rt.path.clone(),
                offset: p.pages.start * PAGE_SIZE,
                len: (p.pages.end - p.pages.start) * PAGE_SIZE,
                write: p.write,
                // Asked afresh: who holds the pinning handle changes (fork, SCM_RIGHTS, exit).
                holder: p
                    .holder
                    .as_ref()
                    .and_then(Weak::upgrade)
                    .map_or_else(|| p.info.clone(), |h| h.info()),
                owner: p.owner,
                lease: p.lease,
                taken_at: p.taken_at,
                notified: p.notified,
            })
            .collect()
    }

    pub(crate) fn lease_infos(&self, inode: &Inode, rt: &Runtime) -> Vec<LeaseInfo> {
        rt.leases
            .iter()
            .map(|l| LeaseInfo {
                id: l.id,
                ino: inode.ino,
                kind: l.kind,
                owner: l.owner,
                owner_label: l.owner_label.clone(),
                open: l.open,
                state: l.state,
                pins: rt.pins.values().filter(|p| p.lease == Some(l.id)).count(),
                taken_at: l.taken_at,
            })
            .collect()
    }
}

impl Filesystem {
    /// Every long-term file pin, by file.
    pub fn file_pins(&self) -> Vec<FilePinInfo> {
        let inodes: Vec<Arc<Inode>> = self.0.inodes.read().values().cloned().collect();
        let mut out: Vec<FilePinInfo> =
            inodes.iter().flat_map(|i| self.0.pin_infos(i, &i.rt.lock())).collect();
        out.sort_by_key(|p| (p.ino, p.id));
        out
    }

    /// Every layout lease.
    pub fn leases(&self) -> Vec<LeaseInfo> {
        let inodes: Vec<Arc<Inode>> = self.0.inodes.read().values().cloned().collect();
        let mut out: Vec<LeaseInfo> =
            inodes.iter().flat_map(|i| self.0.lease_infos(i, &i.rt.lock())).collect();
        out.sort_by_key(|l| (l.ino, l.id));
        out
    }
}
