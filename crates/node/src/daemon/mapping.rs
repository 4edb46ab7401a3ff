//! File mappings of client processes: their loads and stores go straight to pool frames, so a
//! layout change must take those frames back from them before the filesystem reuses them.
//!
//! ```text
//!  client fault thread          daemon                          client notify thread
//!  Fault{map, page} ─────────▶  read_begin; range_fault; record
//!                   ◀──────────  Frame{offset, seq}              (page -> frame in `mapped`)
//!  mmap(pool fd @ offset) if no later invalidation was acknowledged (its seq)
//!                               layout change ─▶ invalidate(range):
//!                                 set_seq; take the mapped pages of the range;
//!                                 Notice::Invalidate{pages, seq+1} ────────────▶ unmap pages
//!                                 wait for the ack (deadline)  ◀──────────────── NoticeAck
//!                                 no ack in time: quarantine the frames (never reused while
//!                                 the handle lives), then return: the change proceeds
//! ```
//!
//! A fault computed while an invalidation runs waits for it (`read_begin`) and retries if one
//! overlapped (`read_retry`), so `mapped` never records a stale frame. A client's dead
//! notification socket counts as an acknowledgement: its mappings died with it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pinwheel_mm::{
    AddressSpace, Errno, IntervalNotifier, Invalidation, Memory, NotifierHandle, PAGE_SIZE, Pfn,
    Quarantine, Subscription, VirtAddr,
};

use crate::channel;
use crate::proto::{self, Notice, NoticeAck, ObjId, WireError};

/// A client process's notification socket.
#[derive(Debug)]
pub(crate) struct NotifyChan {
    pub(crate) pid: u32,
    sock: OwnedFd,
    /// One notice at a time: acknowledgements come back in order.
    lock: Mutex<()>,
    dead: AtomicBool,
}

impl NotifyChan {
    pub(crate) fn new(pid: u32, sock: OwnedFd) -> NotifyChan {
        NotifyChan { pid, sock, lock: Mutex::new(()), dead: AtomicBool::new(false) }
    }

    /// Sends `n` and waits for its acknowledgement until `deadline`. True if acknowledged, or
    /// if the process is gone (its mappings with it); false if it is alive but silent.
    fn notify(&self, n: &Notice, seq: u64, wait: Duration) -> bool {
        if self.dead.load(Ordering::Acquire) {
            return true;
        }
        let _g = self.lock.lock();
        let Ok(bytes) = proto::encode(n) else { return false };
        if channel::send(self.sock.as_fd(), &bytes, &[]).is_err() {
            self.dead.store(true, Ordering::Release);
            return true;
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match channel::wait_readable(self.sock.as_fd(), left) {
                Ok(true) => {}
                Ok(false) | Err(_) => return false,
            }
            match channel::recv(self.sock.as_fd()) {
                Ok(None) => {
                    self.dead.store(true, Ordering::Release);
                    return true;
                }
                Ok(Some(got)) => match proto::decode::<NoticeAck>(&got.bytes) {
                    Ok(a) if a.seq == seq => return true,
                    Ok(_) => {} // an old acknowledgement that came late
                    Err(e) => {
                        tracing::warn!(pid = self.pid, error = %e, "garbage on a notify socket");
                        return false;
                    }
                },
                Err(_) => return false,
            }
        }
    }
}

/// One client mapping, watched for invalidations.
#[derive(Debug)]
pub(crate) struct MapWatch {
    map: OnceLock<ObjId>,
    addr: u64,
    pages: u64,
    chan: Arc<NotifyChan>,
    aspace: Arc<AddressSpace>,
    mem: Arc<Memory>,
    /// Invalidations sent so far.
    seq: AtomicU64,
    /// Pages the client was given frames for (it may have them mapped).
    mapped: Mutex<BTreeMap<u64, Pfn>>,
    /// Frames held back from reuse for a client that did not acknowledge in time; lifted
    /// when the handle closes.
    quarantine: Arc<Mutex<Vec<Quarantine>>>,
    ack_wait: Duration,
    handle: OnceLock<NotifierHandle>,
}

impl MapWatch {
    /// Watches `[addr, addr + pages·4 KiB)` of `aspace` for the process behind `chan`.
    pub(crate) fn start(
        addr: u64,
        pages: u64,
        chan: Arc<NotifyChan>,
        aspace: Arc<AddressSpace>,
        mem: Arc<Memory>,
        quarantine: Arc<Mutex<Vec<Quarantine>>>,
        ack_wait: Duration,
    ) -> Result<Arc<MapWatch>, WireError> {
        let w = Arc::new(MapWatch {
            map: OnceLock::new(),
            addr,
            pages,
            chan,
            aspace: Arc::clone(&aspace),
            mem,
            seq: AtomicU64::new(0),
            mapped: Mutex::new(BTreeMap::new()),
            quarantine,
            ack_wait,
            handle: OnceLock::new(),
        });
        let weak = Arc::downgrade(&w) as std::sync::Weak<dyn IntervalNotifier>;
        let h = aspace
            .subscribe(VirtAddr::new(addr), pages * PAGE_SIZE, weak)
            .map_err(|e| WireError::new(e.errno(), e.to_string()))?;
        let _ = w.handle.set(h);
        Ok(w)
    }

    pub(crate) fn set_id(&self, id: ObjId) {
        let _ = self.map.set(id);
    }

    /// Serves a fault of page `page`: the frame and the invalidation number it is valid for.
    pub(crate) fn fault(&self, page: u64, write: bool) -> Result<(u64, u64, bool), WireError> {
        if page >= self.pages {
            return Err(WireError::new(
                Errno::EFAULT,
                format!("page {page} is outside the {}-page mapping", self.pages),
            ));
        }
        let Some(h) = self.handle.get() else {
            return Err(WireError::new(Errno::EIO, "mapping not watched"));
        };
        let va = VirtAddr::new(self.addr + page * PAGE_SIZE);
        for _ in 0..64 {
            let s = h.subscription().read_begin();
            let mut pfns = Vec::with_capacity(1);
            self.aspace
                .range_fault(va, PAGE_SIZE, write, &mut pfns)
                .map_err(|e| WireError::new(e.errno(), e.to_string()))?;
            let Some(&pfn) = pfns.first() else {
                return Err(WireError::new(Errno::EFAULT, "no frame"));
            };
            let mut mapped = self.mapped.lock();
            if h.subscription().read_retry(s) {
                continue;
            }
            mapped.insert(page, pfn);
            return Ok((pfn.raw() * PAGE_SIZE, self.seq.load(Ordering::Acquire), write));
        }
        Err(WireError::new(Errno::EAGAIN, "the mapping kept being invalidated"))
    }

    fn pages_of(&self, inv: &Invalidation) -> Range<u64> {
        let lo = self.addr;
        let hi = self.addr + self.pages * PAGE_SIZE;
        let s = inv.range.start().raw().max(lo);
        let e = inv.range.end().raw().min(hi);
        if s >= e { 0..0 } else { (s - lo) / PAGE_SIZE..(e - lo).div_ceil(PAGE_SIZE) }
    }
}

impl IntervalNotifier for MapWatch {
    fn invalidate(&self, sub: &Subscription, inv: &Invalidation, cur_seq: u64) {
        let pages = self.pages_of(inv);
        let frames: Vec<Pfn> = {
            let mut mapped = self.mapped.lock();
            sub.set_seq(cur_seq);
            let keys: Vec<u64> = mapped.range(pages.clone()).map(|(k, _)| *k).collect();
            keys.iter().filter_map(|k| mapped.remove(k)).collect()
        };
        if frames.is_empty() {
            return; // the client was given no frame of the range: nothing to take back
        }
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        let map = self.map.get().copied().unwrap_or(ObjId(0));
        let n = Notice::Invalidate {
            map,
            first_page: pages.start,
            pages: pages.end - pages.start,
            seq,
        };
        if !self.chan.notify(&n, seq, self.ack_wait) {
            let q = self.mem.quarantine(frames);
            tracing::warn!(
                pid = self.chan.pid,
                map = %map,
                frames = q.frames().len(),
                "client did not acknowledge an invalidation in time: frames quarantined"
            );
            self.quarantine.lock().push(q);
        }
    }
}
