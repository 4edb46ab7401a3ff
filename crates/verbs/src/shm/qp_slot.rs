//! The QP table: one 128-byte slot per QP, in the device region. The first cache line is the
//! daemon's (what the QP is: read by clients), the second its executor's (a client process
//! executing the QP's work requests: its hazard words).
//!
//! | word | contents | written by |
//! |---|---|---|
//! | 0 | QP number (u32), `IN_USE` << 32; 0: free | daemon |
//! | 1 | state (u8), access flags << 8 (u32), rnr_retry << 40, peer kind << 48 | daemon |
//! | 2 | PD number (u32), owning device handle << 32 | daemon |
//! | 3 | peer's slot (u32), peer's QP number << 32 | daemon |
//! | 4, 5 | receive ring (pool offset; 0: none), its SGEs per receive (u32) | daemon |
//! | 6, 7 | send CQ ring, receive CQ ring (pool offsets) | daemon |
//! | 8 | executor: pid of the process executing this QP's work now; 0: none | executor |
//! | 9 | hazards, 21 bits each: slot + 1 of the target QP whose rings the executor uses, and of the two MRs it is inside (source, destination); 0: none | executor |
//! | 12, 13 | work requests posted, completed by the executor (for listings) | executor |
//!
//! The executor protocol (the "in-flight count" of DESIGN.md, one per executing QP instead of
//! one shared counter: nothing of it is written by two processes, and a dead executor is
//! recognised by its pid): a process takes word 8 (CAS 0 → pid) before it first executes the
//! QP's work and keeps it until it lets the QP go (one process drives a QP's data path at a
//! time, as with a verbs QP after `fork`); to execute, it names the target QP and the MRs in
//! the hazard word (one `SeqCst` store), *then* reads their slots and states; it leaves with a
//! release store (what was copied is ordered before it), down to 0 when it stops executing.
//! The daemon changes a state first (`SeqCst`), then scans the hazard words (`mod.rs`): either
//! the executor sees the new state, or the daemon sees the hazard. Only a non-zero hazard word
//! of a live pid is waited for.

use std::sync::atomic::Ordering;

use pinwheel_mm::{Pool, PoolOffset};

use crate::types::{Access, QpState, Qpn};

/// Bytes of a slot.
pub(crate) const SLOT: u64 = 128;
const ID: u64 = 0;
const STATE: u64 = 8;
const PD: u64 = 16;
const PEER: u64 = 24;
const RQ: u64 = 32;
const RQ_SGE: u64 = 40;
const SEND_CQ: u64 = 48;
const RECV_CQ: u64 = 56;
pub(crate) const EXEC: u64 = 64;
pub(crate) const HAZARD: u64 = 72;
const HZ_BITS: u32 = 21;
const HZ_MASK: u64 = (1 << HZ_BITS) - 1;
const POSTED: u64 = 96;
const COMPLETED: u64 = 104;
const IN_USE: u64 = 1 << 32;

/// Where a QP's peer is, as published.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PeerView {
    /// Not connected.
    None,
    /// A QP of this node: its slot and number.
    Local {
        /// Its slot.
        slot: u32,
        /// Its number.
        qpn: Qpn,
    },
    /// A QP of another node, over TCP (the node's engine executes).
    Remote,
}

/// What the daemon publishes about a QP.
#[derive(Copy, Clone, Debug)]
pub(crate) struct QpFields {
    pub(crate) qpn: u32,
    pub(crate) pd: u32,
    pub(crate) handle: u64,
    pub(crate) rq: u64,
    pub(crate) rq_sge: u32,
    pub(crate) send_cq: u64,
    pub(crate) recv_cq: u64,
}

fn w(pool: &Pool, off: u64, v: u64) {
    let _ = pool.store_u64_with(PoolOffset::new(off), v, Ordering::SeqCst);
}
fn r(pool: &Pool, off: u64) -> u64 {
    pool.load_u64_with(PoolOffset::new(off), Ordering::SeqCst).unwrap_or(0)
}

/// One QP's slot as the daemon writes it (offsets of its own allocation).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct QpSlot {
    pub(crate) index: u32,
    pub(crate) off: u64,
}

impl QpSlot {
    /// Writes the slot of a new QP (in RESET); the id goes last.
    pub(crate) fn publish(&self, pool: &Pool, f: &QpFields) {
        for at in (0..SLOT).step_by(8) {
            w(pool, self.off + at, 0);
        }
        w(pool, self.off + PD, u64::from(f.pd) | (f.handle & 0xffff_ffff) << 32);
        w(pool, self.off + RQ, f.rq);
        w(pool, self.off + RQ_SGE, u64::from(f.rq_sge));
        w(pool, self.off + SEND_CQ, f.send_cq);
        w(pool, self.off + RECV_CQ, f.recv_cq);
        w(pool, self.off + ID, u64::from(f.qpn) | IN_USE);
    }

    /// Publishes the state, access flags, RNR retries and peer.
    pub(crate) fn set_state(
        &self,
        pool: &Pool,
        state: QpState,
        access: Access,
        rnr_retry: u8,
        peer: PeerView,
    ) {
        let (kind, p) = match peer {
            PeerView::None => (0u64, 0u64),
            PeerView::Local { slot, qpn } => (1, u64::from(slot) | u64::from(qpn.0) << 32),
            PeerView::Remote => (2, 0),
        };
        w(pool, self.off + PEER, p);
        let v =
            state as u64 | u64::from(access.bits()) << 8 | u64::from(rnr_retry) << 40 | kind << 48;
        w(pool, self.off + STATE, v);
    }

    /// Marks the slot free (lookups fail from now on).
    pub(crate) fn unpublish(&self, pool: &Pool) {
        w(pool, self.off + STATE, QpState::Error as u64);
        w(pool, self.off + ID, 0);
    }

    /// Clears the executor's words (the slot is being reused or the QP destroyed).
    pub(crate) fn clear_executor(&self, pool: &Pool) {
        for at in [HAZARD, EXEC] {
            w(pool, self.off + at, 0);
        }
    }

    /// Work requests (posted, completed) the executor counted.
    pub(crate) fn counts(&self, pool: &Pool) -> (u64, u64) {
        (r(pool, self.off + POSTED), r(pool, self.off + COMPLETED))
    }
}

/// A QP as a client reads it from the table.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct QpView {
    /// Its slot.
    pub slot: u32,
    off: u64,
    /// Its number.
    pub qpn: Qpn,
    /// State.
    pub state: QpState,
    /// Remote access allowed through it.
    pub access: Access,
    /// RNR retries (7: for ever).
    pub rnr_retry: u8,
    /// Its peer.
    pub peer: PeerView,
    /// PD number.
    pub pd: u32,
    /// Owning device handle.
    pub handle: u32,
    /// Its receive ring (pool offset) and SGEs per receive; `None`: it has none (an SRQ).
    pub rq: Option<(PoolOffset, u32)>,
    /// Send CQ ring.
    pub send_cq: PoolOffset,
    /// Receive CQ ring.
    pub recv_cq: PoolOffset,
}

impl QpView {
    /// True while the slot still holds this QP (read after naming it in a hazard word: its
    /// rings are then this QP's until the hazard is cleared).
    pub fn current(&self, pool: &Pool) -> bool {
        r(pool, self.off + ID) == u64::from(self.qpn.0) | IN_USE
    }

    /// The QP in slot `slot` of the table at `table` of `slots` slots; `None` if free.
    pub(crate) fn read(pool: &Pool, table: u64, slots: u32, slot: u32) -> Option<QpView> {
        if slot == 0 || slot >= slots {
            return None;
        }
        let off = table + u64::from(slot) * SLOT;
        let id = r(pool, off + ID);
        if id & IN_USE == 0 {
            return None;
        }
        let st = r(pool, off + STATE);
        let pd = r(pool, off + PD);
        let peer = r(pool, off + PEER);
        let rq = r(pool, off + RQ);
        Some(QpView {
            slot,
            off,
            qpn: Qpn(id as u32),
            state: QpState::ALL.get((st & 0xff) as usize).copied().unwrap_or(QpState::Error),
            access: Access::from_bits_truncate((st >> 8) as u32),
            rnr_retry: (st >> 40 & 0xff) as u8,
            peer: match st >> 48 & 0xff {
                1 => PeerView::Local { slot: peer as u32, qpn: Qpn((peer >> 32) as u32) },
                2 => PeerView::Remote,
                _ => PeerView::None,
            },
            pd: pd as u32,
            handle: (pd >> 32) as u32,
            rq: (rq != 0).then(|| (PoolOffset::new(rq), r(pool, off + RQ_SGE) as u32)),
            send_cq: PoolOffset::new(r(pool, off + SEND_CQ)),
            recv_cq: PoolOffset::new(r(pool, off + RECV_CQ)),
        })
    }
}

fn field(s: Option<u32>) -> u64 {
    s.map_or(0, |s| (u64::from(s) + 1) & HZ_MASK)
}

/// The hazard word naming QP slot `qp` and MR slots `a`, `b`.
fn hazard_word(qp: Option<u32>, a: Option<u32>, b: Option<u32>) -> u64 {
    field(qp) | field(a) << HZ_BITS | field(b) << (2 * HZ_BITS)
}

/// What a hazard word names: (QP slot + 1, MR slot + 1, MR slot + 1); 0 for none.
pub(crate) fn hazards(v: u64) -> [u64; 3] {
    [v & HZ_MASK, v >> HZ_BITS & HZ_MASK, v >> (2 * HZ_BITS) & HZ_MASK]
}

/// The executor's side of a QP slot: what a client process executing the QP's work writes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Executor {
    off: u64,
}

impl Executor {
    pub(crate) fn new(table: u64, slot: u32) -> Executor {
        Executor { off: table + u64::from(slot) * SLOT }
    }

    /// Takes the slot's executor word for `pid`; `Err(holder)` if another process holds it.
    pub fn lock(&self, pool: &Pool, pid: u32) -> Result<(), u64> {
        match pool.compare_exchange(PoolOffset::new(self.off + EXEC), 0, u64::from(pid)) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(h)) if h == u64::from(pid) => Ok(()),
            Ok(Err(h)) => Err(h),
            Err(_) => Err(u64::MAX),
        }
    }

    /// Takes the word from a dead holder.
    pub fn steal(&self, pool: &Pool, dead: u64, pid: u32) -> bool {
        matches!(
            pool.compare_exchange(PoolOffset::new(self.off + EXEC), dead, u64::from(pid)),
            Ok(Ok(_))
        )
    }

    /// Gives the word back (hazards cleared first; release stores: everything this
    /// executor did is ordered before them).
    pub fn unlock(&self, pool: &Pool) {
        self.clear(pool);
        let _ = pool.store_u64_with(PoolOffset::new(self.off + EXEC), 0, Ordering::Release);
    }

    /// Names the target QP (its slot) and the MRs (their slots) about to be read and used,
    /// *before* reading their slots: one `SeqCst` store.
    pub fn enter(&self, pool: &Pool, qp: u32, a: Option<u32>, b: Option<u32>) {
        w(pool, self.off + HAZARD, hazard_word(Some(qp), a, b));
    }

    /// Leaves the MRs (the target QP stays named).
    pub fn leave_mrs(&self, pool: &Pool, qp: u32) {
        let v = hazard_word(Some(qp), None, None);
        let _ = pool.store_u64_with(PoolOffset::new(self.off + HAZARD), v, Ordering::Release);
    }

    /// Leaves everything named.
    pub fn clear(&self, pool: &Pool) {
        let _ = pool.store_u64_with(PoolOffset::new(self.off + HAZARD), 0, Ordering::Release);
    }

    /// Counts work requests posted and completed (plain stores: this executor's words).
    pub fn count(&self, pool: &Pool, posted: u64, completed: u64) {
        let _ = pool.store_u64(PoolOffset::new(self.off + POSTED), posted);
        let _ = pool.store_u64(PoolOffset::new(self.off + COMPLETED), completed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qp_slot_publish_read_and_executor() {
        let pool = Pool::memfd("qpslot", 16 << 20).unwrap();
        let table = 8192u64;
        let s = QpSlot { index: 2, off: table + 2 * SLOT };
        assert!(QpView::read(&pool, table, 8, 2).is_none());
        s.publish(
            &pool,
            &QpFields {
                qpn: 0x11,
                pd: 4,
                handle: 9,
                rq: 0x10000,
                rq_sge: 4,
                send_cq: 0x20000,
                recv_cq: 0x30000,
            },
        );
        let v = QpView::read(&pool, table, 8, 2).unwrap();
        assert_eq!((v.qpn, v.state, v.pd, v.handle), (Qpn(0x11), QpState::Reset, 4, 9));
        assert_eq!(v.rq, Some((PoolOffset::new(0x10000), 4)));
        s.set_state(
            &pool,
            QpState::Rts,
            Access::REMOTE_WRITE,
            7,
            PeerView::Local { slot: 3, qpn: Qpn(0x12) },
        );
        let v = QpView::read(&pool, table, 8, 2).unwrap();
        assert_eq!((v.state, v.access, v.rnr_retry), (QpState::Rts, Access::REMOTE_WRITE, 7));
        assert_eq!(v.peer, PeerView::Local { slot: 3, qpn: Qpn(0x12) });
        assert!(QpView::read(&pool, table, 2, 2).is_none(), "beyond the table");
        let e = Executor::new(table, 2);
        e.lock(&pool, 100).unwrap();
        e.lock(&pool, 100).unwrap();
        assert_eq!(e.lock(&pool, 200), Err(100));
        assert!(e.steal(&pool, 100, 200));
        e.enter(&pool, 3, Some(5), Some((1 << 20) - 1));
        assert_eq!(hazards(r(&pool, s.off + HAZARD)), [4, 6, 1 << 20]);
        e.leave_mrs(&pool, 3);
        assert_eq!(hazards(r(&pool, s.off + HAZARD)), [4, 0, 0]);
        e.unlock(&pool);
        assert_eq!(r(&pool, s.off + HAZARD) + r(&pool, s.off + EXEC), 0);
        s.unpublish(&pool);
        assert!(QpView::read(&pool, table, 8, 2).is_none());
    }
}
