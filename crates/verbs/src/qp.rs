//! Queue pairs (RC) and shared receive queues.
//!
//! The state machine is the kernel's table (`types::QP_TRANSITIONS`): an invalid transition
//! or attribute mask fails with `EINVAL` and a diagnosis naming what is missing or unexpected.
//! Posting sends needs RTS (or SQD/ERR, where they are flushed); receives may be posted from
//! INIT on. A QP in ERR flushes every work request with `WR_FLUSH_ERR`.
//!
//! Shared with client processes (`shm`): the receive queue is a ring in the pool (`rq.rs`),
//! and the QP's state, access flags, peer and rings are published in its slot of the QP table
//! wherever they change (`publish`, under the QP lock). Destroying the QP drains the client
//! executors that use its rings before they are freed.

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
use crate::limits::{MAX_INLINE, MAX_QP_WR, MAX_SGE};
use crate::mr_cache::MrCache;
use crate::qp_attr::{apply, check_values};
use crate::rq::{RecvQueue, TakenRecv};
use crate::shm::{Hazard, PeerView, QpFields, QpSlot};
pub use crate::srq::SharedReceiveQueue;
pub(crate) use crate::srq::SrqInner;
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
    /// The receive queue (none with an SRQ, or a depth of 0).
    pub(crate) rq: Option<RecvQueue>,
    /// Its slot in the region's QP table.
    pub(crate) slot: Option<QpSlot>,
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
            posted: c.posted + self.client_counts().0,
            completed: c.completed + self.client_counts().1,
            queued: c.sq.len(),
        }
    }

    /// Publishes the state and access flags of `c` to initiators (`state_access`). Called
    /// under the lock wherever they change.
    fn publish(&self, c: &QpCore) {
        let v = u64::from(c.state as u8) | u64::from(c.attr.qp_access_flags.bits()) << 8;
        self.shadow.store(v, Ordering::Release);
        if let Some(s) = &self.slot {
            let peer = match &c.peer {
                Peer::None => PeerView::None,
                Peer::Remote(_) => PeerView::Remote,
                Peer::Local(w) => match w.upgrade().and_then(|p| p.slot.map(|s| (s, p.qpn))) {
                    Some((ps, qpn)) => PeerView::Local { slot: ps.index, qpn: Qpn(qpn) },
                    None => PeerView::None,
                },
            };
            let pool = self.dev().mem.pool();
            s.set_state(pool, c.state, c.attr.qp_access_flags, c.attr.rnr_retry, peer);
        }
    }

    /// Work requests (posted, completed) a client process executed itself.
    fn client_counts(&self) -> (u64, u64) {
        self.slot.map_or((0, 0), |s| s.counts(self.dev().mem.pool()))
    }

    /// True if no receive is queued (its own queue or its SRQ's).
    pub(crate) fn rq_is_empty(&self) -> bool {
        match (&self.srq, &self.rq) {
            (Some(s), _) => s.queue.lock().is_empty(),
            (None, Some(q)) => q.is_empty(),
            (None, None) => true,
        }
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
        if let (None, Some(rq)) = (&self.srq, &self.rq) {
            while let Some(wr) = rq.pop() {
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

    /// Takes a receive for an incoming SEND or WRITE_WITH_IMM (from the SRQ if any). One from
    /// the QP's own queue stays there until `engine::complete_recv` claims it (`rq.rs`).
    pub(crate) fn take_recv(&self, _c: &mut QpCore) -> Option<TakenRecv> {
        match (&self.srq, &self.rq) {
            (Some(s), _) => s.queue.lock().pop_front().map(|wr| TakenRecv { wr, pos: None }),
            (None, Some(q)) => q.peek(),
            (None, None) => None,
        }
    }

    pub(crate) fn event(&self, kind: EventType, detail: String) {
        self.pd
            .ctx
            .events
            .post(AsyncEvent { qpn: Some(Qpn(self.qpn)), ..AsyncEvent::new(kind, detail) });
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
        let rq = match &init.srq {
            Some(_) => None,
            None => RecvQueue::new(&dev.mem, c.max_recv_wr, c.max_recv_sge)?,
        };
        let slot = match &dev.region {
            Some(r) => Some(r.alloc_qp().ok_or_else(|| {
                VerbsError::Limit(format!("{} QPs exist (max_qp)", r.qp_slots() - 1))
            })?),
            None => None,
        };
        let qpn = dev.next_qpn();
        if let Some(s) = &slot {
            let f = QpFields {
                qpn,
                pd: self.0.id,
                handle: self.0.ctx.handle,
                rq: rq.as_ref().map_or(0, |q| q.ring().base().raw()),
                rq_sge: rq.as_ref().map_or(0, RecvQueue::max_sge),
                send_cq: init.send_cq.0.ring().base().raw(),
                recv_cq: init.recv_cq.0.ring().base().raw(),
            };
            s.publish(dev.mem.pool(), &f);
        }
        let qp = Arc::new(QpInner {
            qpn,
            pd: Arc::clone(&self.0),
            send_cq: Arc::clone(&init.send_cq.0),
            recv_cq: Arc::clone(&init.recv_cq.0),
            srq: init.srq.map(|s| s.0),
            caps: c,
            rq,
            slot,
            core: Mutex::new(QpCore {
                state: QpState::Reset,
                attr: QpAttr::default(),
                sq: VecDeque::new(),
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
        // Client executors using its rings leave before they go (or the rings' frames are
        // quarantined while they stay).
        if let (Some(s), Some(r)) = (self.slot, &self.dev().region) {
            s.unpublish(self.dev().mem.pool());
            let mut frames = || {
                let mut f = self.rq.as_ref().map(RecvQueue::frames).unwrap_or_default();
                f.extend(self.send_cq.frames());
                f.extend(self.recv_cq.frames());
                f
            };
            r.drain(Hazard::Qp(s.index), &mut frames);
            r.free_qp(s);
        }
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

    /// Its slot in the device region's QP table (what a client process executing it reads).
    pub fn slot(&self) -> Option<u32> {
        self.0.slot.map(|s| s.index)
    }

    /// A client process executing this QP's work found the peer's side at fault: the peer
    /// (a QP of this node) goes to ERR with `QP_ACCESS_ERR`, as the node's engine does it for
    /// its own transfers (`engine::responder_error`). Only remote access and request errors of
    /// the responder's checks are accepted.
    pub fn report_responder_error(&self, status: WcStatus) -> VerbsResult<()> {
        if !matches!(
            status,
            WcStatus::RemAccessErr
                | WcStatus::RemInvReqErr
                | WcStatus::LocLenErr
                | WcStatus::LocProtErr
        ) {
            return Err(VerbsError::invalid(format!("{status}: not a responder error")));
        }
        let peer = match &self.0.core.lock().peer {
            Peer::Local(w) => w.upgrade(),
            _ => None,
        };
        let t = peer.ok_or_else(|| {
            VerbsError::invalid(format!("QP {:#x} has no peer on this node", self.0.qpn))
        })?;
        crate::engine::responder_error(&t, status);
        Ok(())
    }

    /// A client process could not queue a completion on this QP's send (or receive) CQ: the
    /// CQ's context gets its `CQ_ERR`, if the CQ's ring says it overflowed.
    pub fn report_cq_overflow(&self, recv: bool) {
        let cq = if recv { &self.0.recv_cq } else { &self.0.send_cq };
        cq.report_lost();
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
                if let Some(rq) = &self.0.rq {
                    while rq.pop().is_some() {}
                }
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
            a.step(QpState::Reset, &init)?;
            let rtr = QpAttr {
                qp_state: QpState::Rtr,
                dest_qp_num: b.qpn(),
                ah: AddressHandle::Local,
                ..QpAttr::default()
            };
            a.step(QpState::Init, &rtr)?;
        }
        for q in [self, other] {
            q.step(QpState::Rtr, &QpAttr { qp_state: QpState::Rts, ..QpAttr::default() })?;
        }
        Ok(())
    }

    /// One step of a connection (what rdma_cm does): `modify` to `attr.qp_state` from `from`
    /// with exactly the attributes the RC table requires for that transition.
    pub(crate) fn step(&self, from: QpState, attr: &QpAttr) -> VerbsResult<()> {
        let required = transition(from, attr.qp_state).map_or(QpAttrMask::empty(), |t| t.required);
        self.modify(attr, QpAttrMask::STATE | required)
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
            let queued = self.0.rq.as_ref().map_or(0, RecvQueue::len);
            if queued + wrs.len() > self.0.caps.max_recv_wr as usize {
                return Err(VerbsError::QueueFull(format!(
                    "receive queue of QP {:#x} holds {} of {}",
                    self.0.qpn, queued, self.0.caps.max_recv_wr
                )));
            }
            if let Some(w) =
                wrs.iter().find(|w| w.sg_list.len() > self.0.caps.max_recv_sge as usize)
            {
                return Err(VerbsError::invalid(format!("recv wr {}: too many SGEs", w.wr_id)));
            }
            if let Some(rq) = &self.0.rq {
                for w in wrs {
                    rq.push(w).map_err(|e| {
                        VerbsError::QueueFull(format!(
                            "receive queue of QP {:#x}: {e:?} (its ring was written by another \
                             process meanwhile)",
                            self.0.qpn
                        ))
                    })?;
                }
            }
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
