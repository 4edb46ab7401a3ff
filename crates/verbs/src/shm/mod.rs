//! The shared-memory data path: what a device keeps in its pool so that client processes on
//! the node execute their transfers themselves (DESIGN.md, "Who executes a transfer";
//! `docs/shm.md` is the long form of this header).
//!
//! **The device region** (allocated from the pool when the device opens, owned by it): a
//! header page (magic, version, where the tables are), the **MR table** (`mr_slot.rs`: per MR
//! key index its key, state, PD, access, bounds and translation table) and the **QP table**
//! (`qp_slot.rs`: per QP its state, access, peer, rings, and its executor's hazard words).
//! Completion queues and receive queues are **rings** (`ring.rs`) in pool blocks of their own;
//! the rings are the only copy of their contents, for the node's engine and the clients alike.
//! The tables are written by the daemon only, in the critical sections where its own state
//! changes; the daemon never reads them back to decide anything (its private state is the
//! same, written at the same time) — so a client scribbling on them can only mislead clients.
//!
//! **States and who waits for whom.** An MR is *valid*, *decoherent*, *revoked* or
//! *destroyed*; the daemon publishes each change in the MR's slot before it drains. A client
//! executing a work request takes its QP's executor word, names the target QP and the MRs in
//! its hazard words, then reads their slots: a valid MR is used, a decoherent one *holds* the
//! work request (the client keeps it queued and retries on its next post or poll), a revoked
//! or destroyed one fails it. An ODP or file page absent from the translation table makes the
//! client leave and ask the daemon to fault it (one request), then retry. The daemon, to
//! invalidate, decohere-then-restore, revoke or deregister: changes the state (or clears the
//! translation entries) first, then **drains**: waits until its own transfers have left (a
//! private count, `mr.rs`) and no live executor names the MR (the hazard words of every QP
//! slot). Destroying a QP drains the executors that name it (its rings) the same way.
//!
//! **Timeouts.** A client that stays inside longer than `SHM_DRAIN_MS` (stalled, or stopped in
//! a debugger) cannot hold the node hostage: the drain gives up waiting, the frames the MR
//! translated to are **quarantined** (`Memory::quarantine`: never reused while the executor
//! may still touch them) and the change proceeds. The quarantine lasts until that executor
//! leaves the MR, dies, or its QP is destroyed ([`Region::reap`], called at every drain and
//! periodically by the daemon). An executor whose process is gone is not waited for at all (its
//! pid is in its executor word). Clients copy in chunks of `SHM_CHUNK` and re-check the MR
//! between chunks, so a healthy client leaves within one chunk.
//!
//! **Trust** (DESIGN.md, "Trust"): a client holds the pool's file descriptor; it is trusted
//! not to scribble on the pool, and the library enforces the verbs rules (key → PD → access →
//! state → bounds) on its behalf. The daemon does not trust what it reads back from shared
//! memory: ring positions are reduced modulo capacities it knows, entries are validated, loops
//! are bounded, hazard words can only make a drain wait up to its deadline. Per-process
//! isolation of the pool is a later goal.

mod entry;
mod mr_slot;
mod qp_slot;
mod ring;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pinwheel_mm::{
    FrameRun, Memory, MmError, Owner, PAGE_SIZE, Pfn, Placement, Pool, PoolOffset, Quarantine,
};

pub use entry::{CQE_WORDS, cqe_decode, cqe_encode, wqe_decode, wqe_encode, wqe_words};
pub use mr_slot::{INLINE_PAGES, Miss, MrView};
pub(crate) use mr_slot::{MrFields, MrSlot, entry as xlat_entry};
pub use qp_slot::{Executor, PeerView, QpView};
pub(crate) use qp_slot::{QpFields, QpSlot};
pub use ring::{PushError, Ring};

use crate::limits::{
    MAX_CQE, MAX_MR, MAX_QP, MAX_QP_WR, SHM_DRAIN_MS, SHM_MR_SLOTS_MIN, SHM_QP_SLOTS_MIN,
};

/// "PWSHMRGN": the first word of a device region.
pub const MAGIC: u64 = 0x4e47_524d_4853_5750;
/// Layout version of the region.
pub const VERSION: u64 = 1;
const H_MAGIC: u64 = 0;
const H_VERSION: u64 = 8;
const H_SIZE: u64 = 16;
const H_MR_TABLE: u64 = 24;
const H_MR_SLOTS: u64 = 32;
const H_QP_TABLE: u64 = 40;
const H_QP_SLOTS: u64 = 48;
const H_POOL: u64 = 56;

/// The largest CQ ring a client accepts, in entries.
pub const CQ_RING_MAX: u64 = MAX_CQE as u64;
/// The largest receive ring a client accepts, in entries.
pub const RQ_RING_MAX: u64 = MAX_QP_WR as u64;

/// The device region as any process mapping the pool sees it: where the tables are.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RegionView {
    base: u64,
    mr_table: u64,
    mr_slots: u32,
    qp_table: u64,
    qp_slots: u32,
}

impl RegionView {
    /// The region at `base` of `pool` (the offset a daemon's `Welcome` gives): checks its
    /// header and that its tables lie in the pool.
    pub fn attach(pool: &Pool, base: PoolOffset) -> Option<RegionView> {
        let r = |at: u64| pool.load_u64(PoolOffset::new(base.raw().checked_add(at)?)).ok();
        if r(H_MAGIC)? != MAGIC || r(H_VERSION)? != VERSION || r(H_POOL)? != pool.size() {
            return None;
        }
        let v = RegionView {
            base: base.raw(),
            mr_table: r(H_MR_TABLE)?,
            mr_slots: u32::try_from(r(H_MR_SLOTS)?).ok()?,
            qp_table: r(H_QP_TABLE)?,
            qp_slots: u32::try_from(r(H_QP_SLOTS)?).ok()?,
        };
        let fits = |at: u64, n: u32, slot: u64| {
            at.checked_add(u64::from(n) * slot).is_some_and(|e| e <= pool.size())
        };
        (fits(v.mr_table, v.mr_slots, mr_slot::SLOT) && fits(v.qp_table, v.qp_slots, qp_slot::SLOT))
            .then_some(v)
    }

    /// Pool offset of the region.
    pub fn base(&self) -> PoolOffset {
        PoolOffset::new(self.base)
    }

    /// The MR of `key` (name its slot, `key >> 8`, in a hazard word first).
    pub fn mr(&self, pool: &Pool, key: u32) -> Option<MrView> {
        MrView::read(pool, self.mr_table, self.mr_slots, key)
    }

    /// The QP in `slot` (name it in a hazard word first, unless it is the caller's own).
    pub fn qp(&self, pool: &Pool, slot: u32) -> Option<QpView> {
        QpView::read(pool, self.qp_table, self.qp_slots, slot)
    }

    /// The executor words of the QP in `slot`.
    pub fn executor(&self, slot: u32) -> Executor {
        Executor::new(self.qp_table, slot)
    }

    fn qp_off(&self, slot: u32) -> u64 {
        self.qp_table + u64::from(slot) * qp_slot::SLOT
    }
}

/// What a drain waits for: executors inside an MR (its key index) or using a QP (its slot).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Hazard {
    Mr(u32),
    Qp(u32),
}

/// An executor found inside: its QP slot and its pid.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Holder {
    slot: u32,
    pid: u64,
}

/// Frames quarantined for holders that did not leave in time.
#[derive(Debug)]
struct Held {
    _q: Quarantine,
    what: Hazard,
    holders: Vec<Holder>,
}

/// True if process `pid` may still run (it exists, or we may not signal it).
fn alive(pid: u64) -> bool {
    let Some(p) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else {
        return false;
    };
    !matches!(rustix::process::test_kill_process(p), Err(rustix::io::Errno::SRCH))
}

/// A block of pool memory owned by the device (a ring, a translation table): zeroed when
/// allocated, freed when dropped.
#[derive(Debug)]
pub(crate) struct Block {
    mem: Arc<Memory>,
    run: FrameRun,
}

impl Block {
    pub(crate) fn alloc(mem: &Arc<Memory>, bytes: u64) -> Result<Block, MmError> {
        let n = bytes.div_ceil(PAGE_SIZE).max(1);
        let runs = mem.alloc(n, Placement::Contiguous, Owner::Device, true)?;
        let run = runs.first().copied().ok_or_else(|| MmError::invalid("empty allocation"))?;
        Ok(Block { mem: Arc::clone(mem), run })
    }
    pub(crate) fn off(&self) -> PoolOffset {
        self.run.pfn.offset()
    }
    pub(crate) fn frames(&self) -> Vec<Pfn> {
        self.run.iter().collect()
    }
    pub(crate) fn pool(&self) -> &Pool {
        self.mem.pool()
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.mem.free(self.run);
    }
}

/// The device region, as the device owns it.
#[derive(Debug)]
pub(crate) struct Region {
    mem: Arc<Memory>,
    block: Block,
    pub(crate) view: RegionView,
    /// Free QP slots (slot 0 is never used: hazard words store slot + 1).
    free_qps: Mutex<Vec<u32>>,
    /// Slots below this have been used: scans stop there.
    hwm: AtomicU32,
    held: Mutex<Vec<Held>>,
}

impl Region {
    /// Allocates and formats the region: table sizes follow the pool (one MR slot per 8 frames,
    /// one QP slot per 32, within the device's limits). `None` if the pool has no room.
    pub(crate) fn new(mem: &Arc<Memory>) -> Option<Region> {
        let pool = mem.pool();
        let frames = pool.frames();
        let clamp = |n: u64, lo: u32, hi: u32| n.clamp(u64::from(lo), u64::from(hi)) as u32;
        let mr_slots = clamp(frames / 8, SHM_MR_SLOTS_MIN, MAX_MR);
        let qp_slots = clamp(frames / 32, SHM_QP_SLOTS_MIN, MAX_QP);
        let mr_bytes = u64::from(mr_slots) * mr_slot::SLOT;
        let qp_bytes = u64::from(qp_slots) * qp_slot::SLOT;
        let size = PAGE_SIZE + mr_bytes + qp_bytes;
        let block = Block::alloc(mem, size).ok()?;
        let base = block.off().raw();
        let view = RegionView {
            base,
            mr_table: base + PAGE_SIZE,
            mr_slots,
            qp_table: base + PAGE_SIZE + mr_bytes,
            qp_slots,
        };
        for (at, v) in [
            (H_VERSION, VERSION),
            (H_SIZE, size),
            (H_MR_TABLE, view.mr_table),
            (H_MR_SLOTS, u64::from(mr_slots)),
            (H_QP_TABLE, view.qp_table),
            (H_QP_SLOTS, u64::from(qp_slots)),
            (H_POOL, pool.size()),
            (H_MAGIC, MAGIC),
        ] {
            pool.store_u64_with(PoolOffset::new(base + at), v, Ordering::SeqCst).ok()?;
        }
        Some(Region {
            mem: Arc::clone(mem),
            block,
            view,
            free_qps: Mutex::new((1..qp_slots).rev().collect()),
            hwm: AtomicU32::new(1),
            held: Mutex::new(Vec::new()),
        })
    }

    fn pool(&self) -> &Pool {
        self.mem.pool()
    }

    /// MR slots (the device's MR limit).
    pub(crate) fn mr_slots(&self) -> u32 {
        self.view.mr_slots
    }

    /// QP slots (the device's QP limit).
    pub(crate) fn qp_slots(&self) -> u32 {
        self.view.qp_slots
    }

    /// The slot of MR key index `index`, its translation table at `xlat` (a block's, or the
    /// slot's inline table when `xlat` is `None`).
    pub(crate) fn mr_slot(&self, index: u32, xlat: Option<PoolOffset>) -> MrSlot {
        let off = self.view.mr_table + u64::from(index) * mr_slot::SLOT;
        MrSlot { off, xlat: xlat.map_or(off + mr_slot::INLINE, |x| x.raw()) }
    }

    /// A free QP slot.
    pub(crate) fn alloc_qp(&self) -> Option<QpSlot> {
        let index = self.free_qps.lock().pop()?;
        self.hwm.fetch_max(index + 1, Ordering::SeqCst);
        let s = QpSlot { index, off: self.view.qp_off(index) };
        s.clear_executor(self.pool());
        Some(s)
    }

    /// Gives a QP slot back (after [`Region::drain`] of it).
    pub(crate) fn free_qp(&self, s: QpSlot) {
        s.unpublish(self.pool());
        s.clear_executor(self.pool());
        self.free_qps.lock().push(s.index);
        self.reap();
    }

    /// Does the executor of `slot` still hold `what`?
    fn holds(&self, slot: u32, what: Hazard) -> Option<Holder> {
        let pool = self.pool();
        let off = self.view.qp_off(slot);
        let r = |at: u64| pool.load_u64_with(PoolOffset::new(off + at), Ordering::SeqCst);
        let word = r(qp_slot::HAZARD).ok()?;
        let [qp, a, b] = qp_slot::hazards(word);
        let named = match what {
            Hazard::Mr(i) => a == u64::from(i) + 1 || b == u64::from(i) + 1,
            // A QP is used by executors naming it, and by its own while it executes (an
            // executor names its target whenever it executes: the word is not zero).
            Hazard::Qp(s) => (s == slot && word != 0) || qp == u64::from(s) + 1,
        };
        if !named {
            return None;
        }
        let pid = r(qp_slot::EXEC).ok()?;
        (pid != 0 && alive(pid)).then_some(Holder { slot, pid })
    }

    fn holders(&self, what: Hazard) -> Vec<Holder> {
        let hwm = self.hwm.load(Ordering::SeqCst).min(self.view.qp_slots);
        (1..hwm).filter_map(|s| self.holds(s, what)).collect()
    }

    /// Waits until no live client executor names `what` (the state change that requires it
    /// was published before, `SeqCst`). After `SHM_DRAIN_MS` the frames `frames()` names are
    /// quarantined until the executors still inside leave, and the drain returns false.
    pub(crate) fn drain(&self, what: Hazard, frames: &mut dyn FnMut() -> Vec<Pfn>) -> bool {
        let deadline = Instant::now() + Duration::from_millis(SHM_DRAIN_MS);
        let mut nap = Duration::from_micros(20);
        for round in 0u32.. {
            let holders = self.holders(what);
            if holders.is_empty() {
                if round > 0 {
                    self.reap();
                }
                return true;
            }
            if Instant::now() >= deadline {
                let q = self.mem.quarantine(frames());
                tracing::warn!(
                    ?what,
                    ?holders,
                    frames = q.frames().len(),
                    "client executors did not leave within the drain deadline: frames quarantined"
                );
                self.held.lock().push(Held { _q: q, what, holders });
                return false;
            }
            if round < 64 {
                std::hint::spin_loop();
            } else if round < 96 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(1));
            }
        }
        true
    }

    /// Lifts the quarantines whose holders have all left (or died).
    pub(crate) fn reap(&self) {
        let mut held = self.held.lock();
        if held.is_empty() {
            return;
        }
        held.retain(|h| h.holders.iter().any(|x| self.holds(x.slot, h.what) == Some(*x)));
    }

    /// Frames quarantined now.
    pub(crate) fn quarantines(&self) -> usize {
        self.held.lock().len()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let _ = self.pool().store_u64(self.block.off(), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinwheel_mm::RealClock;

    #[test]
    fn shm_region_attaches_and_drains_hazards() {
        let mem = Memory::new(Pool::memfd("region", 16 << 20).unwrap(), RealClock::new());
        let r = Region::new(&mem).unwrap();
        let pool = mem.pool();
        let v = RegionView::attach(pool, r.view.base()).unwrap();
        assert_eq!(v, r.view);
        assert!(RegionView::attach(pool, PoolOffset::new(r.view.base + 8)).is_none());
        let a = r.alloc_qp().unwrap();
        let b = r.alloc_qp().unwrap();
        assert_ne!(a.index, b.index);
        // An executor of `a` inside MR 5 and using QP `b`.
        let e = v.executor(a.index);
        e.lock(pool, std::process::id()).unwrap();
        e.enter(pool, b.index, None, Some(5));
        assert_eq!(r.holders(Hazard::Mr(5)).len(), 1);
        assert_eq!(r.holders(Hazard::Qp(b.index)).len(), 1);
        assert!(r.holders(Hazard::Mr(6)).is_empty());
        // It stays: the drain gives up at the deadline and quarantines.
        let frame = mem.alloc(1, Placement::Anywhere, Owner::Device, false).unwrap()[0];
        let t0 = Instant::now();
        assert!(!r.drain(Hazard::Mr(5), &mut || vec![frame.pfn]));
        assert!(t0.elapsed() >= Duration::from_millis(SHM_DRAIN_MS));
        assert_eq!(mem.quarantined_frames(), 1);
        r.reap();
        assert_eq!(r.quarantines(), 1, "still inside");
        e.unlock(pool);
        r.reap();
        assert_eq!((r.quarantines(), mem.quarantined_frames()), (0, 0));
        assert!(r.drain(Hazard::Mr(5), &mut Vec::new));
        // A dead executor is not waited for.
        e.lock(pool, 0x7fff_fff0).unwrap();
        e.enter(pool, a.index, Some(5), None);
        let t0 = Instant::now();
        assert!(r.drain(Hazard::Mr(5), &mut Vec::new));
        assert!(t0.elapsed() < Duration::from_millis(SHM_DRAIN_MS));
        r.free_qp(a);
        r.free_qp(b);
        mem.free(frame);
    }
}
