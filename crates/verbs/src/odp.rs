//! ODP and file MRs: their per-page translations, faults (the `hmm_range_fault` loop) and
//! MMU interval notifier invalidations. An invalidation clears the entries (here and in the
//! MR's shared slot) and then drains the MR (`mr.rs`): invariant 4.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use pinwheel_mm::{
    Errno, IntervalNotifier, Invalidation, MmError, PAGE_SIZE, Pfn, PoolOffset, Subscription,
    VirtAddr,
};

use crate::error::{VerbsError, VerbsResult};
use crate::mr::{Backing, FAULT_RETRY_TIME, MrInner, MrKind};

pub(crate) const ODP_VALID: u64 = 1 << 63;
pub(crate) const ODP_WRITE: u64 = 1 << 62;

/// Per-page translations of an ODP or file MR: `ODP_VALID | [ODP_WRITE] | pfn`, 0 if absent.
pub(crate) struct OdpTable {
    pub(crate) pages: Box<[AtomicU64]>,
    pub(crate) lock: Mutex<()>,
}

impl OdpTable {
    pub(crate) fn new(n: u64) -> OdpTable {
        OdpTable { pages: (0..n).map(|_| AtomicU64::new(0)).collect(), lock: Mutex::new(()) }
    }
    fn present(&self, pages: Range<u64>, write: bool) -> bool {
        pages.into_iter().all(|p| {
            let e = self.pages[p as usize].load(Ordering::Acquire);
            e & ODP_VALID != 0 && (!write || e & ODP_WRITE != 0)
        })
    }
    /// Segments of `[b, b + len)` (bytes from the first page), or `Err(())` if a page is
    /// missing. Every page is checked before `f` sees any byte, so a retry never repeats part
    /// of a transfer (a socket payload cannot be read twice).
    pub(crate) fn for_each<E>(
        &self,
        b: u64,
        len: u64,
        write: bool,
        f: &mut dyn FnMut(PoolOffset, u64) -> Result<(), E>,
    ) -> Result<Result<(), E>, ()> {
        let mut segs: Vec<(u64, u64)> = Vec::new();
        let mut at = b;
        let end = b + len;
        while at < end {
            let e = self.pages[(at / PAGE_SIZE) as usize].load(Ordering::Acquire);
            if e & ODP_VALID == 0 || (write && e & ODP_WRITE == 0) {
                return Err(());
            }
            let pfn = e & !(ODP_VALID | ODP_WRITE);
            let n = (PAGE_SIZE - at % PAGE_SIZE).min(end - at);
            let po = pfn * PAGE_SIZE + at % PAGE_SIZE;
            match segs.last_mut() {
                Some((p, l)) if *p + *l == po => *l += n,
                _ => segs.push((po, n)),
            }
            at += n;
        }
        for (p, l) in segs {
            if let Err(e) = f(PoolOffset::new(p), l) {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }
}

impl MrInner {
    /// ODP / file fault of `pages` (page indices of the MR), the `hmm_range_fault` loop.
    pub(crate) fn fault(&self, pages: Range<u64>, write: bool) -> Result<(), String> {
        let (table, handle) = match &self.backing {
            Backing::Odp { table, handle, .. } | Backing::File { table, handle, .. } => {
                (table, handle)
            }
            Backing::Pinned { .. } => return Ok(()),
        };
        if table.present(pages.clone(), write) {
            return Ok(());
        }
        let Some(handle) = handle.get() else { return Err("MR not set up".into()) };
        self.dev().counters.odp_faults.fetch_add(1, Ordering::Relaxed);
        // As hmm_range_fault's callers: retry while invalidations race the fault, for up to a
        // second (HMM_RANGE_DEFAULT_TIMEOUT), not a number of attempts a busy file can exhaust.
        let deadline = Instant::now() + FAULT_RETRY_TIME;
        while Instant::now() <= deadline {
            let seq = handle.read_begin();
            let mut pfns: Vec<Pfn> = Vec::with_capacity((pages.end - pages.start) as usize);
            match &self.backing {
                Backing::Odp { aspace, start, .. } => {
                    let va = VirtAddr::new(start.raw() + pages.start * PAGE_SIZE);
                    aspace
                        .range_fault(va, (pages.end - pages.start) * PAGE_SIZE, write, &mut pfns)
                        .map_err(|e| e.to_string())?;
                }
                Backing::File { file, first_page, .. } => {
                    for p in first_page + pages.start..first_page + pages.end {
                        file.fault(p, write, &mut |pfn| {
                            pfns.push(pfn);
                            Ok(())
                        })
                        .map_err(|e| e.to_string())?;
                    }
                }
                Backing::Pinned { .. } => return Ok(()),
            }
            let _g = table.lock.lock();
            if handle.read_retry(seq) {
                continue;
            }
            let w = if write { ODP_WRITE } else { 0 };
            for (i, p) in pfns.iter().enumerate() {
                let page = pages.start + i as u64;
                let slot = &table.pages[page as usize];
                let keep_w = slot.load(Ordering::Relaxed) & ODP_WRITE;
                let e = ODP_VALID | w | keep_w | p.raw();
                slot.store(e, Ordering::Release);
                self.publish_entry(page, e);
            }
            return Ok(());
        }
        Err(format!("fault kept racing with invalidations for {} ms", FAULT_RETRY_TIME.as_millis()))
    }

    /// `ibv_advise_mr(PREFETCH[_WRITE])`: faults the range in now.
    pub(crate) fn prefetch(&self, off: u64, len: u64, write: bool) -> VerbsResult<()> {
        let end = off
            .checked_add(len)
            .filter(|e| *e <= self.len)
            .ok_or_else(|| VerbsError::invalid("advise_mr: range outside the MR"))?;
        match self.kind {
            MrKind::Pinned => Ok(()),
            _ => self
                .fault((self.base + off) / PAGE_SIZE..(self.base + end).div_ceil(PAGE_SIZE), write)
                .map_err(|e| VerbsError::Mm(MmError::Refused { errno: Errno::EFAULT, reason: e })),
        }
    }
}

impl IntervalNotifier for MrInner {
    fn invalidate(&self, sub: &Subscription, inv: &Invalidation, cur_seq: u64) {
        let (table, lo_byte) = match &self.backing {
            Backing::Odp { table, start, .. } => (table, start.raw()),
            Backing::File { table, first_page, .. } => (table, first_page * PAGE_SIZE),
            Backing::Pinned { .. } => return,
        };
        let span_end = lo_byte + self.pages * PAGE_SIZE;
        let s = inv.range.start().raw().max(lo_byte);
        let e = inv.range.end().raw().min(span_end);
        let mut old = Vec::new();
        {
            let _g = table.lock.lock();
            sub.set_seq(cur_seq);
            if s < e {
                for p in (s - lo_byte) / PAGE_SIZE..(e - lo_byte).div_ceil(PAGE_SIZE) {
                    let was = table.pages[p as usize].swap(0, Ordering::AcqRel);
                    if was & ODP_VALID != 0 {
                        old.push(Pfn::new(was & !(ODP_VALID | ODP_WRITE)));
                        self.publish_entry(p, 0);
                    }
                }
            }
        }
        // Invariant 4: no DMA reaches the old frames once this returns (a client stalled
        // inside past the deadline: they are quarantined until it leaves).
        self.drain_with(&mut || std::mem::take(&mut old));
    }
}
