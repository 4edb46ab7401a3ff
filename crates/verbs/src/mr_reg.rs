//! Registration: `reg_mr` (pinned or ODP) and `reg_file_mr`, and the MR's slot in the
//! region's MR table (published with its state, PD, access, bounds and an empty translation
//! table before the key is handed out).

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::{Condvar, Mutex};
use pinwheel_fs::{Filesystem, Ino};
use pinwheel_mm::{AddressSpace, IntervalNotifier, PAGE_SIZE, PinFlags, VirtAddr, pin_user_pages};

use crate::context::ProtectionDomain;
use crate::error::{VerbsError, VerbsResult};
use crate::limits::MAX_MR_SIZE;
use crate::mr::{Backing, MemoryRegion, MrInner, MrKind, MrState};
use crate::odp::OdpTable;
use crate::pinned::PinnedMap;
use crate::shm::{Block, INLINE_PAGES, MrFields};
use crate::types::Access;

fn check_access(access: Access, len: u64) -> VerbsResult<()> {
    if len == 0 || len > MAX_MR_SIZE {
        return Err(VerbsError::invalid(format!("MR length {len} outside 1..={MAX_MR_SIZE}")));
    }
    if access.intersects(Access::REMOTE_WRITE | Access::REMOTE_ATOMIC)
        && !access.contains(Access::LOCAL_WRITE)
    {
        return Err(VerbsError::invalid("REMOTE_WRITE and REMOTE_ATOMIC require LOCAL_WRITE"));
    }
    Ok(())
}

fn writable(access: Access) -> bool {
    access.intersects(Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_ATOMIC)
}

impl ProtectionDomain {
    fn new_mr(
        &self,
        addr: u64,
        len: u64,
        base: u64,
        access: Access,
        kind: MrKind,
        backing: Backing,
    ) -> VerbsResult<Arc<MrInner>> {
        let dev = &self.0.ctx.dev;
        let key = dev.mrs.reserve().ok_or_else(|| {
            VerbsError::Limit(format!("{} MRs registered (max_mr)", dev.mrs.max() - 1))
        })?;
        let pages = (base + len).div_ceil(PAGE_SIZE);
        let shared = match &dev.region {
            None => None,
            Some(r) => {
                let block = if pages > INLINE_PAGES {
                    match Block::alloc(&dev.mem, pages * 8) {
                        Ok(b) => Some(b),
                        Err(e) => {
                            dev.mrs.release(key);
                            return Err(VerbsError::Limit(format!(
                                "the translation table of a {len}-byte MR ({pages} pages): {e}"
                            )));
                        }
                    }
                } else {
                    None
                };
                let slot = r.mr_slot(key >> 8, block.as_ref().map(Block::off));
                let f = MrFields {
                    key,
                    kind,
                    pd: self.0.id,
                    access,
                    addr,
                    len,
                    base,
                    pages,
                    handle: self.0.ctx.handle,
                };
                slot.publish(dev.mem.pool(), &f);
                Some((slot, block))
            }
        };
        Ok(Arc::new_cyclic(|me| MrInner {
            key,
            pd: Arc::clone(&self.0),
            access,
            addr,
            len,
            base,
            pages,
            kind,
            state: AtomicU8::new(MrState::Valid as u8),
            map_gen: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            waiters: AtomicU32::new(0),
            gate: Mutex::new(()),
            cv: Condvar::new(),
            held: Mutex::new(Vec::new()),
            backing,
            me: me.clone(),
            restores: AtomicU64::new(0),
            decohere_requests: AtomicU64::new(0),
            shared,
        }))
    }

    /// `ibv_reg_mr`: registers `[addr, addr + len)` of `aspace`. Pinned unless `access`
    /// contains `ON_DEMAND`. A pinned registration of file memory is decided by the
    /// filesystem's pin policy (`EOPNOTSUPP`, `EPERM`, `EFAULT` are its answers).
    pub fn reg_mr(
        &self,
        aspace: &Arc<AddressSpace>,
        addr: VirtAddr,
        len: u64,
        access: Access,
    ) -> VerbsResult<MemoryRegion> {
        check_access(access, len)?;
        let start = addr.page_down();
        let end = addr
            .raw()
            .checked_add(len)
            .and_then(pinwheel_mm::page_align_up)
            .ok_or_else(|| VerbsError::invalid("MR range overflows"))?;
        let base = addr.raw() - start.raw();
        let dev = Arc::clone(&self.0.ctx.dev);
        let mr = if access.contains(Access::ON_DEMAND) {
            let table = OdpTable::new((end - start.raw()) / PAGE_SIZE);
            let mr = self.new_mr(
                addr.raw(),
                len,
                base,
                access,
                MrKind::Odp,
                Backing::Odp { aspace: Arc::clone(aspace), start, table, handle: OnceLock::new() },
            )?;
            let weak: Weak<dyn IntervalNotifier> =
                Arc::downgrade(&mr) as Weak<dyn IntervalNotifier>;
            match aspace.subscribe(start, end - start.raw(), weak) {
                Ok(h) => {
                    let Backing::Odp { handle, .. } = &mr.backing else {
                        unreachable!("just built")
                    };
                    let _ = handle.set(h);
                }
                Err(e) => {
                    mr.forget();
                    return Err(e.into());
                }
            }
            mr
        } else {
            let mut flags = PinFlags::LONGTERM;
            if writable(access) {
                flags |= PinFlags::WRITE;
            }
            let map = Mutex::new(Arc::new(PinnedMap::empty()));
            let mr = self.new_mr(
                addr.raw(),
                len,
                base,
                access,
                MrKind::Pinned,
                Backing::Pinned { aspace: Arc::clone(aspace), start, flags, map },
            )?;
            let owner = match mr.owner() {
                Ok(o) => o,
                Err(e) => {
                    mr.forget();
                    return Err(e);
                }
            };
            match pin_user_pages(aspace, start, end - start.raw(), flags, Some(&owner)) {
                Ok(pin) => {
                    mr.set_map(PinnedMap::new(vec![(0, pin)], (end - start.raw()) / PAGE_SIZE))
                }
                Err(e) => {
                    mr.forget();
                    return Err(e.into());
                }
            }
            mr
        };
        dev.mrs.install(mr.key, Arc::clone(&mr));
        Ok(MemoryRegion(mr))
    }

    /// Registers `[offset, offset + len)` of a file by file and offset (no virtual address):
    /// a file MR, translated through the extent map and following layout changes like ODP.
    /// Remote addresses of this MR are file offsets.
    pub fn reg_file_mr(
        &self,
        fs: &Filesystem,
        ino: Ino,
        offset: u64,
        len: u64,
        access: Access,
    ) -> VerbsResult<MemoryRegion> {
        check_access(access, len)?;
        let first_page = offset / PAGE_SIZE;
        let end = offset
            .checked_add(len)
            .and_then(pinwheel_mm::page_align_up)
            .ok_or_else(|| VerbsError::invalid("file MR range overflows"))?;
        let base = offset % PAGE_SIZE;
        let table = OdpTable::new(end / PAGE_SIZE - first_page);
        let file = fs.backing(ino)?;
        let mr = self.new_mr(
            offset,
            len,
            base,
            access,
            MrKind::File,
            Backing::File { ino, file, first_page, table, handle: OnceLock::new() },
        )?;
        let weak: Weak<dyn IntervalNotifier> = Arc::downgrade(&mr) as Weak<dyn IntervalNotifier>;
        match fs.subscribe(ino, first_page * PAGE_SIZE, end - first_page * PAGE_SIZE, weak) {
            Ok(h) => {
                let Backing::File { handle, .. } = &mr.backing else { unreachable!("just built") };
                let _ = handle.set(h);
            }
            Err(e) => {
                mr.forget();
                return Err(e.into());
            }
        }
        self.0.ctx.dev.mrs.install(mr.key, Arc::clone(&mr));
        Ok(MemoryRegion(mr))
    }
}
