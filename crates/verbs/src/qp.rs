//! Queue pairs (RC) and shared receive queues.
//!
//! The state machine is the kernel's table (`types::QP_TRANSITIONS`): an invalid transition
//! or attribute mask fails with `EINVAL` and a diagnosis naming what is missing or unexpected.
//! Posting sends needs RTS (or SQD/ERR, where they are flushed); receives may be posted from
//! INIT on. A QP in ERR flushes every work request with `WR_FLUSH_ERR`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::context::{PdInner, ProtectionDomain};
use crate::cq::{CompletionQueue, CqInner};
use crate::device::DeviceInner;
use crate::engine::Outcome;
use crate::error::{VerbsError, VerbsResult};
use crate::event::AsyncEvent;
use crate::limits::{MAX_INLINE, MAX_QP_WR, MAX_RD_ATOMIC, MAX_SGE, PHYS_PORTS, PKEY_TABLE_LEN};
use crate::mr_cache::MrCache;
use crate::transport::Link;
use crate::types::{
    Access, EventType, Opcode, Psn, QpAttrMask, QpState, Qpn, WcStatus, transition,
};
use crate::wr::{RecvWr, SendWr, WcOpcode, WorkCompletion};

/// Capacities of a QP.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct QpCaps {
    /// Send queue depth.
    pub max_send_wr: u32,
    /// Receive queue depth.
    pub max_recv_wr: u32,
    /// SGEs per send.
    pub max_send_sge: u32,
    /// SGEs per receive.
    pub max_recv_sge: u32,
    /// Inline bytes per send.
    pub max_inline_data: u32,
}

impl Default for QpCaps {
    fn default() -> Self {
        QpCaps {
            max_send_wr: 256,
            max_recv_wr: 256,
            max_send_sge: 4,
            max_recv_sge: 4,
            max_inline_data: 256,
        }
    }
}

/// Where the other end of a QP is.
#[derive(Clone, Debug, Default)]
pub enum AddressHandle {
    /// Not set.
    #[default]
    None,
    /// A QP of this node (loopback).
    Local,
    /// A QP of another node, through a connection (set up by the connection manager).
    Remote(Arc<Link>),
}

/// QP attributes (`struct ibv_qp_attr`, the fields an RC QP uses).
#[derive(Clone, Debug)]
pub struct QpAttr {
    /// Target state.
    pub qp_state: QpState,
    /// Current state (checked when given).
    pub cur_qp_state: QpState,
    /// Remote access allowed through this QP.
    pub qp_access_flags: Access,
    /// P_Key index.
    pub pkey_index: u16,
    /// Port.
    pub port_num: u8,
    /// Path MTU in bytes.
    pub path_mtu: u32,
    /// Remote QP number.
    pub dest_qp_num: Qpn,
    /// Receive PSN.
    pub rq_psn: Psn,
    /// Send PSN.
    pub sq_psn: Psn,
    /// Outstanding READ/atomic as initiator.
    pub max_rd_atomic: u8,
    /// Outstanding READ/atomic as responder.
    pub max_dest_rd_atomic: u8,
    /// RNR NAK timer code.
    pub min_rnr_timer: u8,
    /// Ack timeout code.
    pub timeout: u8,
    /// Transport retries.
    pub retry_cnt: u8,
    /// RNR retries (7: forever).
    pub rnr_retry: u8,
    /// The path to the remote QP.
    pub ah: AddressHandle,
}

impl Default for QpAttr {
    fn default() -> Self {
        QpAttr {
            qp_state: QpState::Reset,
            cur_qp_state: QpState::Reset,
            qp_access_flags: Access::empty(),
            pkey_index: 0,
            port_num: 1,
            path_mtu: 4096,
            dest_qp_num: Qpn(0),
            rq_psn: Psn(0),
            sq_psn: Psn(0),
            max_rd_atomic: 1,
            max_dest_rd_atomic: 1,
            min_rnr_timer: 12,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            ah: AddressHandle::None,
        }
    }
}

pub(crate) enum Peer {
    None,
    Local(Weak<QpInner>),
    Remote(Arc<Link>),
}

/// The other end of a QP as the engine holds it while executing a request: strong
/// references taken under the QP lock (a local peer that is gone: `Local(None)`).
pub(crate) enum PeerRef {
    None,
    Local(Option<Arc<QpInner>>),
    Remote(Arc<Link>),
}

impl Peer {
    /// Strong references to the other end.
    pub(crate) fn strong(&self) -> PeerRef {
        match self {
            Peer::None => PeerRef::None,
            Peer::Local(w) => PeerRef::Local(w.upgrade()),
            Peer::Remote(l) => PeerRef::Remote(Arc::clone(l)),
        }
    }
}

pub(crate) struct QpCore {
    pub(crate) state: QpState,
    pub(crate) attr: QpAttr,
    pub(crate) sq: VecDeque<SendWr>,
    pub(crate) rq: VecDeque<RecvWr>,
    pub(crate) executing: bool,
    pub(crate) peer: Peer,
    /// Senders waiting for a receive to be posted here (RNR).
    pub(crate) rnr_waiters: Vec<Weak<QpInner>>,
    pub(crate) posted: u64,
    pub(crate) completed: u64,
    /// The MRs its requests used last (lent to the executing thread).
    pub(crate) mr_cache: MrCache,
    /// What its loopback requests moved (counted under the lock the engine takes anyway).
    pub(crate) moved: Moved,
}

/// The device counters' share of one QP's loopback work: plain numbers under the QP lock
/// instead of shared atomics on every request. `Device::counters` adds them up; a QP that
/// goes adds its share to the device's.
#[derive(Copy, Clone, Debug, Default)]
pub(crate) struct Moved {
    pub(crate) ops: u64,
    pub(crate) bytes_written: u64,
    pub(crate) bytes_read: u64,
}

impl Moved {
    /// Counts one execution of `wr` that came to `out` (bytes for loopback successes: a
    /// remote peer's engine counts its own, and this node counts what it sends).
    pub(crate) fn count(&mut self, wr: &SendWr, out: &Outcome, peer: &PeerRef) {
        self.ops += 1;
        let (Outcome::Done(WcStatus::Success, n), PeerRef::Local(_)) = (out, peer) else {
            return;
        };
        let n = u64::from(*n);
        match wr.opcode {
            Opcode::Write | Opcode::WriteWithImm | Opcode::Send | Opcode::SendWithImm => {
                self.bytes_written += n;
            }
            Opcode::Read => self.bytes_read += n,
            Opcode::CompareSwap | Opcode::FetchAdd => {}
        }
    }
}

pub(crate) struct QpInner {
    pub(crate) qpn: u32,
    pub(crate) pd: Arc<PdInner>,
    pub(crate) send_cq: Arc<CqInner>,
    pub(crate) recv_cq: Arc<CqInner>,
    pub(crate) srq: Option<Arc<SrqInner>>,
    pub(crate) caps: QpCaps,
    pub(crate) core: Mutex<QpCore>,
    /// The state and the access flags, as `core` holds them, readable without its lock by an
    /// initiator of this node checking its target: `state | access << 8` (`publish`).
    shadow: AtomicU64,
}

impl fmt::Debug for QpInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QP {:#x}", self.qpn)
    }
}

/// A QP, for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QpInfo {
    /// Number.
    pub qpn: Qpn,
    /// State.
    pub state: QpState,
    /// Owning handle.
    pub handle: u64,
    /// Remote QP.
    pub dest_qpn: Qpn,
    /// Where the peer is ("local", a socket address, "-").
    pub peer: String,
    /// Work requests posted.
    pub posted: u64,
    /// Completed.
    pub completed: u64,
    /// Waiting in the send queue.
    pub queued: usize,
}

impl QpInner {
    pub(crate) fn dev(&self) -> &Arc<DeviceInner> {
        &self.pd.ctx.dev
    }

    pub(crate) fn info(&self) -> QpInfo {
        let c = self.core.lock();
        QpInfo {
            qpn: Qpn(self.qpn),
            state: c.state,
            handle: self.pd.ctx.handle,
            dest_qpn: c.attr.dest_qp_num,
            peer: match &c.peer {
                Peer::None => "-".into(),
                Peer::Local(_) => "local".into(),
                Peer::Remote(l) => l.peer_name(),
            },
            posted: c.posted,
            completed: c.completed,
            queued: c.sq.len(),
        }
    }

    /// Publishes the state and access flags of `c` to initiators (`state_access`). Called
    /// under the lock wherever they change.
    fn publish(&self, c: &QpCore) {
        let v = u64::from(c.state as u8) | u64::from(c.attr.qp_access_flags.bits()) << 8;
        self.shadow.store(v, Ordering::Release);
    }

    /// The state and access flags, without the lock.
    pub(crate) fn state_access(&self) -> (QpState, Access) {
        let v = self.shadow.load(Ordering::Acquire);
        let state = QpState::ALL.get((v & 0xff) as usize).copied().unwrap_or(QpState::Error);
        (state, Access::from_bits_truncate((v >> 8) as u32))
    }

    /// Moves the QP to ERR (from any state) and flushes queued work. Senders parked on this
    /// QP's receive queue are woken: it will not receive any more, so they fail.
    pub(crate) fn to_error(&self, c: &mut QpCore, why: &str) {
        if c.state != QpState::Error {
            tracing::debug!(qpn = self.qpn, why, "QP to ERR");
        }
        c.state = QpState::Error;
        self.publish(c);
        self.flush(c);
        self.wake_rnr_waiters(c);
    }

    /// Wakes the senders waiting for a receive at this QP (RNR, retried for ever): they
    /// look again, and fail if this QP stopped receiving. Those parked on its SRQ are woken
    /// too (a spurious wake-up only makes them look again).
    pub(crate) fn wake_rnr_waiters(&self, c: &mut QpCore) {
        let mut waiters = std::mem::take(&mut c.rnr_waiters);
        if let Some(s) = &self.srq {
            waiters.append(&mut s.waiters.lock());
        }
        for w in waiters {
            self.dev().kick(w);
        }
    }

    /// Closes the connection of a QP connected over TCP (the QP is destroyed, reset or moved
    /// to ERR by its user): both reader threads exit and the peer's QP goes to ERR, as an
    /// rdma_cm disconnect does. Takes no lock.
    pub(crate) fn disconnect(&self, c: &QpCore, why: &str) {
        if let Peer::Remote(l) = &c.peer {
            l.close(why);
        }
    }

    pub(crate) fn flush(&self, c: &mut QpCore) {
        while let Some(wr) = c.sq.pop_front() {
            c.completed += 1;
            self.send_cq.push(WorkCompletion {
                wr_id: wr.wr_id,
                status: WcStatus::WrFlushErr,
                opcode: WcOpcode::of(wr.opcode),
                byte_len: 0,
                imm: None,
                qpn: Qpn(self.qpn),
            });
        }
        if self.srq.is_none() {
            while let Some(wr) = c.rq.pop_front() {
                self.recv_cq.push(WorkCompletion {
                    wr_id: wr.wr_id,
                    status: WcStatus::WrFlushErr,
                    opcode: WcOpcode::Recv,
                    byte_len: 0,
                    imm: None,
                    qpn: Qpn(self.qpn),
                });
            }
        }
    }

    /// Takes a receive for an incoming SEND or WRITE_WITH_IMM (from the SRQ if any).
    pub(crate) fn take_recv(&self, c: &mut QpCore) -> Option<RecvWr> {
        match &self.srq {
            Some(s) => s.queue.lock().pop_front(),
            None => c.rq.pop_front(),
        }
    }

    pub(crate) fn event(&self, kind: EventType, detail: String) {
        self.pd
            .ctx
            .events
            .post(AsyncEvent { qpn: Some(Qpn(self.qpn)), ..AsyncEvent::new(kind, detail) });
    }
}

/// A shared receive queue.
#[derive(Clone, Debug)]
pub struct SharedReceiveQueue(pub(crate) Arc<SrqInner>);

#[derive(Debug)]
pub(crate) struct SrqInner {
    pub(crate) queue: Mutex<VecDeque<RecvWr>>,
    pub(crate) max_wr: u32,
    pub(crate) waiters: Mutex<Vec<Weak<QpInner>>>,
    pub(crate) pd: Arc<PdInner>,
}

impl SharedReceiveQueue {
    /// Posts receives shared by the QPs using this SRQ.
    pub fn post_recv(&self, wrs: &[RecvWr]) -> VerbsResult<()> {
        {
            let mut q = self.0.queue.lock();
            if q.len() + wrs.len() > self.0.max_wr as usize {
                return Err(VerbsError::QueueFull(format!(
                    "SRQ holds {} of {} receives",
                    q.len(),
                    self.0.max_wr
                )));
            }
            q.extend(wrs.iter().cloned());
        }
        for w in std::mem::take(&mut *self.0.waiters.lock()) {
            self.0.pd.ctx.dev.kick(w);
        }
        Ok(())
    }
    /// Receives queued.
    pub fn len(&self) -> usize {
        self.0.queue.lock().len()
    }
    /// True if none is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What `create_qp` needs.
#[derive(Clone, Debug)]
pub struct QpInitAttr {
    /// Completions of sends.
    pub send_cq: CompletionQueue,
    /// Completions of receives.
    pub recv_cq: CompletionQueue,
    /// Take receives from this SRQ instead of the QP's own queue.
    pub srq: Option<SharedReceiveQueue>,
    /// Capacities.
    pub caps: QpCaps,
}

/// A queue pair (RC).
#[derive(Clone, Debug)]
pub struct QueuePair(pub(crate) Arc<QpInner>);

impl ProtectionDomain {
    /// Creates an RC QP in RESET.
    pub fn create_qp(&self, init: QpInitAttr) -> VerbsResult<QueuePair> {
        let c = init.caps;
        if c.max_send_wr == 0 || c.max_send_wr > MAX_QP_WR || c.max_recv_wr > MAX_QP_WR {
            return Err(VerbsError::invalid(format!(
                "QP depths {}/{} outside 1..={MAX_QP_WR}",
                c.max_send_wr, c.max_recv_wr
            )));
        }
        if c.max_send_sge > MAX_SGE || c.max_recv_sge > MAX_SGE || c.max_inline_data > MAX_INLINE {
            return Err(VerbsError::invalid(format!(
                "QP caps {c:?} beyond the device's (sge {MAX_SGE}, inline {MAX_INLINE})"
            )));
        }
        let dev = &self.0.ctx.dev;
        let qpn = dev.next_qpn();
        let qp = Arc::new(QpInner {
            qpn,
            pd: Arc::clone(&self.0),
            send_cq: Arc::clone(&init.send_cq.0),
            recv_cq: Arc::clone(&init.recv_cq.0),
            srq: init.srq.map(|s| s.0),
            caps: c,
            core: Mutex::new(QpCore {
                state: QpState::Reset,
                attr: QpAttr::default(),
                sq: VecDeque::new(),
                rq: VecDeque::new(),
                executing: false,
                peer: Peer::None,
                rnr_waiters: Vec::new(),
                posted: 0,
                completed: 0,
                mr_cache: MrCache::default(),
                moved: Moved::default(),
            }),
            shadow: AtomicU64::new(0),
        });
        dev.qps.write().insert(qpn, Arc::downgrade(&qp));
        Ok(QueuePair(qp))
    }

    /// Creates a shared receive queue.
    pub fn create_srq(&self, max_wr: u32) -> VerbsResult<SharedReceiveQueue> {
        if max_wr == 0 || max_wr > MAX_QP_WR {
            return Err(VerbsError::invalid(format!("SRQ depth {max_wr} outside 1..={MAX_QP_WR}")));
        }
        Ok(SharedReceiveQueue(Arc::new(SrqInner {
            queue: Mutex::new(VecDeque::new()),
            max_wr,
            waiters: Mutex::new(Vec::new()),
            pd: Arc::clone(&self.0),
        })))
    }
}

impl Drop for QpInner {
    fn drop(&mut self) {
        let c = self.core.get_mut();
        let m = c.moved;
        let counters = &self.pd.ctx.dev.counters;
        counters.ops.fetch_add(m.ops, Ordering::Relaxed);
        counters.bytes_written.fetch_add(m.bytes_written, Ordering::Relaxed);
        counters.bytes_read.fetch_add(m.bytes_read, Ordering::Relaxed);
        if let Peer::Remote(l) = &c.peer {
            l.close("QP destroyed");
        }
        // Senders parked on this QP find it gone and fail.
        let waiters = std::mem::take(&mut c.rnr_waiters);
        for w in waiters {
            self.dev().kick(w);
        }
        self.dev().qps.write().remove(&self.qpn);
    }
}

/// Path MTUs (`enum ibv_mtu`).
const PATH_MTUS: [u32; 5] = [256, 512, 1024, 2048, 4096];

/// Checks the values of the given attributes against the device (as rxe_qp_chk_attr does):
/// a value the device cannot honour is EINVAL, not silently clamped.
fn check_values(a: &QpAttr, given: QpAttrMask) -> Result<(), String> {
    let has = |m: QpAttrMask| given.contains(m);
    if has(QpAttrMask::PORT) && !(1..=PHYS_PORTS).contains(&a.port_num) {
        return Err(format!("port {}: the device's ports are 1..={PHYS_PORTS}", a.port_num));
    }
    if has(QpAttrMask::PKEY_INDEX) && a.pkey_index >= PKEY_TABLE_LEN {
        return Err(format!("P_Key index {} beyond the table of {PKEY_TABLE_LEN}", a.pkey_index));
    }
    if has(QpAttrMask::PATH_MTU) && !PATH_MTUS.contains(&a.path_mtu) {
        return Err(format!("path MTU {} is not one of {PATH_MTUS:?}", a.path_mtu));
    }
    for (bit, name, v) in [
        (QpAttrMask::MAX_QP_RD_ATOMIC, "max_rd_atomic", a.max_rd_atomic),
        (QpAttrMask::MAX_DEST_RD_ATOMIC, "max_dest_rd_atomic", a.max_dest_rd_atomic),
    ] {
        if has(bit) && u32::from(v) > MAX_RD_ATOMIC {
            return Err(format!("{name} {v} beyond the device's {MAX_RD_ATOMIC}"));
        }
    }
    // IB header fields: 3-bit retry counters, 5-bit timer codes.
    for (bit, name, v, max) in [
        (QpAttrMask::RETRY_CNT, "retry_cnt", a.retry_cnt, 7),
        (QpAttrMask::RNR_RETRY, "rnr_retry", a.rnr_retry, 7),
        (QpAttrMask::TIMEOUT, "timeout", a.timeout, 31),
        (QpAttrMask::MIN_RNR_TIMER, "min_rnr_timer", a.min_rnr_timer, 31),
    ] {
        if has(bit) && v > max {
            return Err(format!("{name} {v} beyond {max}"));
        }
    }
    Ok(())
}

/// Stores the attributes the mask gives (the table decided which may be given), and only
/// those.
fn apply(c: &mut QpAttr, a: &QpAttr, given: QpAttrMask) {
    let has = |m: QpAttrMask| given.contains(m);
    if has(QpAttrMask::ACCESS_FLAGS) {
        c.qp_access_flags = a.qp_access_flags;
    }
    if has(QpAttrMask::PKEY_INDEX) {
        c.pkey_index = a.pkey_index;
    }
    if has(QpAttrMask::PORT) {
        c.port_num = a.port_num;
    }
    if has(QpAttrMask::AV) {
        c.ah = a.ah.clone();
    }
    if has(QpAttrMask::PATH_MTU) {
        c.path_mtu = a.path_mtu;
    }
    if has(QpAttrMask::TIMEOUT) {
        c.timeout = a.timeout;
    }
    if has(QpAttrMask::RETRY_CNT) {
        c.retry_cnt = a.retry_cnt;
    }
    if has(QpAttrMask::RNR_RETRY) {
        c.rnr_retry = a.rnr_retry;
    }
    if has(QpAttrMask::RQ_PSN) {
        c.rq_psn = a.rq_psn;
    }
    if has(QpAttrMask::MAX_QP_RD_ATOMIC) {
        c.max_rd_atomic = a.max_rd_atomic;
    }
    if has(QpAttrMask::MIN_RNR_TIMER) {
        c.min_rnr_timer = a.min_rnr_timer;
    }
    if has(QpAttrMask::SQ_PSN) {
        c.sq_psn = a.sq_psn;
    }
    if has(QpAttrMask::MAX_DEST_RD_ATOMIC) {
        c.max_dest_rd_atomic = a.max_dest_rd_atomic;
    }
    if has(QpAttrMask::DEST_QPN) {
        c.dest_qp_num = a.dest_qp_num;
    }
}

impl QueuePair {
    /// The QP number.
    pub fn qpn(&self) -> Qpn {
        Qpn(self.0.qpn)
    }
    /// The current state.
    pub fn state(&self) -> QpState {
        self.0.core.lock().state
    }
    /// Snapshot.
    pub fn info(&self) -> QpInfo {
        self.0.info()
    }
    /// Capacities.
    pub fn caps(&self) -> QpCaps {
        self.0.caps
    }

    /// `ibv_modify_qp`. Checks the transition and the attribute mask against the table and
    /// every given value against the device before changing anything: a refused modify leaves
    /// the QP as it was.
    pub fn modify(&self, attr: &QpAttr, mask: QpAttrMask) -> VerbsResult<()> {
        if !mask.contains(QpAttrMask::STATE) {
            return Err(VerbsError::invalid("modify_qp without IBV_QP_STATE is not supported"));
        }
        let mut c = self.0.core.lock();
        let from = c.state;
        let to = attr.qp_state;
        let fail = |detail: String| Err(VerbsError::Transition { from, to, detail });
        let Some(t) = transition(from, to) else {
            return fail(format!(
                "no transition from {} to {} (see the RC state table)",
                from.name(),
                to.name()
            ));
        };
        let given = mask - QpAttrMask::STATE;
        let missing = t.required - given;
        if !missing.is_empty() {
            return fail(format!("missing required attributes {missing:?}"));
        }
        let extra = given - t.required - t.optional;
        if !extra.is_empty() {
            return fail(format!("attributes {extra:?} are not allowed in this transition"));
        }
        if given.contains(QpAttrMask::CUR_STATE) && attr.cur_qp_state != from {
            return fail(format!(
                "IBV_QP_CUR_STATE says {} but the QP is {}",
                attr.cur_qp_state.name(),
                from.name()
            ));
        }
        if let Err(detail) = check_values(attr, given) {
            return fail(detail);
        }
        let peer = if given.contains(QpAttrMask::AV) {
            match &attr.ah {
                AddressHandle::Local => {
                    let Some(p) = self.0.dev().qp(attr.dest_qp_num.0) else {
                        return fail(format!("{} does not exist on this node", attr.dest_qp_num));
                    };
                    Some(Peer::Local(Arc::downgrade(&p)))
                }
                AddressHandle::Remote(l) => Some(Peer::Remote(Arc::clone(l))),
                AddressHandle::None => {
                    return fail("the address vector (IBV_QP_AV) names no path".into());
                }
            }
        } else {
            None
        };
        // Nothing fails from here on.
        apply(&mut c.attr, attr, given);
        if let Some(p) = peer {
            c.peer = p;
        }
        match to {
            QpState::Reset => {
                // rdma_cm: destroying the connection's QP state disconnects it.
                self.0.disconnect(&c, "QP reset");
                self.0.wake_rnr_waiters(&mut c);
                c.sq.clear();
                c.rq.clear();
                c.peer = Peer::None;
                c.attr = QpAttr::default();
            }
            QpState::Error => {
                self.0.disconnect(&c, "QP moved to ERR");
                self.0.to_error(&mut c, "modify_qp to ERR");
            }
            _ => {}
        }
        c.state = to;
        c.attr.qp_state = to;
        self.0.publish(&c);
        drop(c);
        if to == QpState::Rts {
            crate::engine::progress(&self.0);
        }
        Ok(())
    }

    /// The attributes in effect.
    pub fn query(&self) -> QpAttr {
        self.0.core.lock().attr.clone()
    }

    /// Connects two QPs of this node through RESET → INIT → RTR → RTS (what rdma_cm does).
    pub fn connect_local(&self, other: &QueuePair, access: Access) -> VerbsResult<()> {
        for (a, b) in [(self, other), (other, self)] {
            let init =
                QpAttr { qp_state: QpState::Init, qp_access_flags: access, ..QpAttr::default() };
            a.modify(
                &init,
                QpAttrMask::STATE
                    | QpAttrMask::PKEY_INDEX
                    | QpAttrMask::PORT
                    | QpAttrMask::ACCESS_FLAGS,
            )?;
            let rtr = QpAttr {
                qp_state: QpState::Rtr,
                dest_qp_num: b.qpn(),
                ah: AddressHandle::Local,
                ..QpAttr::default()
            };
            a.modify(
                &rtr,
                QpAttrMask::STATE
                    | QpAttrMask::AV
                    | QpAttrMask::PATH_MTU
                    | QpAttrMask::DEST_QPN
                    | QpAttrMask::RQ_PSN
                    | QpAttrMask::MAX_DEST_RD_ATOMIC
                    | QpAttrMask::MIN_RNR_TIMER,
            )?;
        }
        for q in [self, other] {
            let rts = QpAttr { qp_state: QpState::Rts, ..QpAttr::default() };
            q.modify(
                &rts,
                QpAttrMask::STATE
                    | QpAttrMask::SQ_PSN
                    | QpAttrMask::TIMEOUT
                    | QpAttrMask::RETRY_CNT
                    | QpAttrMask::RNR_RETRY
                    | QpAttrMask::MAX_QP_RD_ATOMIC,
            )?;
        }
        Ok(())
    }

    /// `ibv_post_send`. Work requests run in order; completions arrive on the send CQ.
    pub fn post_send(&self, wrs: &[SendWr]) -> VerbsResult<()> {
        {
            let mut c = self.0.core.lock();
            match c.state {
                QpState::Rts | QpState::Sqd | QpState::Error => {}
                s => {
                    return Err(VerbsError::invalid(format!(
                        "post_send on QP {:#x} in {}",
                        self.0.qpn,
                        s.name()
                    )));
                }
            }
            if c.sq.len() + wrs.len() > self.0.caps.max_send_wr as usize {
                return Err(VerbsError::QueueFull(format!(
                    "send queue of QP {:#x} holds {} of {}",
                    self.0.qpn,
                    c.sq.len(),
                    self.0.caps.max_send_wr
                )));
            }
            for wr in wrs {
                if wr.sg_list.len() > self.0.caps.max_send_sge as usize {
                    return Err(VerbsError::invalid(format!(
                        "wr {}: {} SGEs, QP allows {}",
                        wr.wr_id,
                        wr.sg_list.len(),
                        self.0.caps.max_send_sge
                    )));
                }
                if wr
                    .inline_data
                    .as_ref()
                    .is_some_and(|d| d.len() > self.0.caps.max_inline_data as usize)
                {
                    return Err(VerbsError::invalid(format!(
                        "wr {}: inline data beyond {} bytes",
                        wr.wr_id, self.0.caps.max_inline_data
                    )));
                }
            }
            c.posted += wrs.len() as u64;
            // Executed in place unless something is queued ahead of them (then queued).
            crate::engine::run(&self.0, c, wrs);
        }
        Ok(())
    }

    /// `ibv_post_recv`.
    pub fn post_recv(&self, wrs: &[RecvWr]) -> VerbsResult<()> {
        if self.0.srq.is_some() {
            return Err(VerbsError::invalid("this QP takes receives from its SRQ"));
        }
        let waiters = {
            let mut c = self.0.core.lock();
            if c.state == QpState::Reset {
                return Err(VerbsError::invalid(format!(
                    "post_recv on QP {:#x} in RESET",
                    self.0.qpn
                )));
            }
            if c.rq.len() + wrs.len() > self.0.caps.max_recv_wr as usize {
                return Err(VerbsError::QueueFull(format!(
                    "receive queue of QP {:#x} holds {} of {}",
                    self.0.qpn,
                    c.rq.len(),
                    self.0.caps.max_recv_wr
                )));
            }
            if let Some(w) =
                wrs.iter().find(|w| w.sg_list.len() > self.0.caps.max_recv_sge as usize)
            {
                return Err(VerbsError::invalid(format!("recv wr {}: too many SGEs", w.wr_id)));
            }
            c.rq.extend(wrs.iter().cloned());
            if c.state == QpState::Error {
                self.0.flush(&mut c);
            }
            std::mem::take(&mut c.rnr_waiters)
        };
        for w in waiters {
            self.0.dev().kick(w);
        }
        Ok(())
    }
}
