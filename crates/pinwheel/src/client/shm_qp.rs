//! The client's side of the shared data path: a connection's view of the device region, the
//! QPs it executes itself, and polling CQ rings.
//!
//! `post_send` on a QP whose peer is a QP of the node runs the work requests in place
//! (`engine.rs`) under the QP's executor word; what cannot run now (an MR decoherent, no
//! receive at the target with `rnr_retry` 7, another process executing the QP) stays queued
//! here, in order, and is retried by the next `post_send` or poll of any CQ of the
//! connection — nobody else runs it (as UCX, progress happens inside the library's calls).
//! `post_recv` writes the QP's receive ring; polls read the CQ ring; a waiting poll spins, then
//! sleeps on the ring's futex word. None of this sends a request to the daemon; error paths
//! do (`ShmReport`, `QpToError`), and so do faults of ODP and file pages.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pinwheel_mm::{Errno, Pool, PoolOffset};
use pinwheel_node::proto::{ObjId, Reply, Request, ShmReport};
use pinwheel_verbs::shm::{
    CQ_RING_MAX, CQE_WORDS, PeerView, QpView, RQ_RING_MAX, RegionView, Ring, cqe_decode,
    wqe_encode, wqe_words,
};
use pinwheel_verbs::{QpState, RecvWr, SendWr, WcOpcode, WcStatus, WorkCompletion};

use super::engine::{Engine, Outcome, push_cqe};
use super::limits::{EXECUTOR_WAIT_MS, PENDING_RETRY_MS};
use super::objects::QpInit;
use super::{Conn, Error, Result};

/// A connection's view of the device region.
#[derive(Debug)]
pub(crate) struct Shm {
    pub(crate) region: RegionView,
    pid: u32,
    /// QPs with work requests queued here (retried by polls).
    pending: Mutex<Vec<Weak<ShmQp>>>,
}

impl Shm {
    pub(crate) fn new(region: RegionView) -> Shm {
        Shm { region, pid: std::process::id(), pending: Mutex::new(Vec::new()) }
    }

    fn remember(&self, q: &Arc<ShmQp>) {
        let mut p = self.pending.lock();
        if !p.iter().any(|w| w.as_ptr() == Arc::as_ptr(q)) {
            p.push(Arc::downgrade(q));
        }
    }

    /// Retries the queued work of every QP of the connection; true if some is still queued.
    pub(crate) fn progress(&self) -> bool {
        let qps: Vec<Arc<ShmQp>> = self.pending.lock().iter().filter_map(Weak::upgrade).collect();
        if qps.is_empty() {
            return false;
        }
        let still: Vec<Weak<ShmQp>> =
            qps.iter().filter(|q| q.progress()).map(Arc::downgrade).collect();
        let any = !still.is_empty();
        *self.pending.lock() = still;
        any
    }
}

/// A QP executed by this process.
#[derive(Debug)]
pub(crate) struct ShmQp {
    conn: Arc<Conn>,
    id: ObjId,
    slot: u32,
    caps: QpInit,
    /// Its send CQ's ring (fixed for the QP's life).
    send_cq: Ring,
    st: Mutex<Queued>,
}

#[derive(Debug, Default)]
struct Queued {
    wrs: VecDeque<SendWr>,
    posted: u64,
    completed: u64,
    /// A work request failed: the QP is going to ERR (the daemon publishes it).
    broken: bool,
    /// This process holds the QP's executor word (from its first execution until the QP is
    /// let go).
    executor: bool,
    /// MR slots read lately (`engine::Views`).
    views: super::engine::Views,
}

fn err(errno: Errno, msg: impl Into<String>) -> Error {
    Error::new(errno, msg)
}

impl ShmQp {
    pub(crate) fn new(conn: &Arc<Conn>, id: ObjId, slot: u32, caps: QpInit) -> Result<ShmQp> {
        let shm = conn.shm.as_ref().ok_or_else(|| err(Errno::EOPNOTSUPP, "no shared path"))?;
        let own = shm
            .region
            .qp(&conn.pool, slot)
            .ok_or_else(|| err(Errno::EPROTO, format!("QP slot {slot} is empty")))?;
        let send_cq = Ring::attach(&conn.pool, own.send_cq, CQE_WORDS, CQ_RING_MAX)
            .ok_or_else(|| err(Errno::EPROTO, "the QP's send CQ ring is unreadable"))?;
        let st = Mutex::new(Queued::default());
        Ok(ShmQp { conn: Arc::clone(conn), id, slot, caps, send_cq, st })
    }

    pub(crate) fn slot(&self) -> u32 {
        self.slot
    }

    fn shm(&self) -> Result<&Shm> {
        self.conn.shm.as_ref().ok_or_else(|| err(Errno::EOPNOTSUPP, "no shared data path"))
    }

    fn pool(&self) -> &Pool {
        &self.conn.pool
    }

    fn view(&self) -> Result<QpView> {
        let shm = self.shm()?;
        shm.region
            .qp(self.pool(), self.slot)
            .ok_or_else(|| err(Errno::EBADF, format!("QP slot {}: destroyed", self.slot)))
    }

    /// The QP's slot if its peer is a QP of this node: this process executes the sends.
    pub(crate) fn local_peer(&self) -> Option<QpView> {
        self.view().ok().filter(|v| matches!(v.peer, PeerView::Local { .. }))
    }

    /// `ibv_post_send` for a QP with a peer of this node (`own`: its slot as just read).
    pub(crate) fn post_send(self: &Arc<Self>, own: QpView, wrs: &[SendWr]) -> Result<()> {
        let mut st = self.st.lock();
        if !matches!(own.state, QpState::Rts | QpState::Sqd | QpState::Error) {
            return Err(err(
                Errno::EINVAL,
                format!("post_send on QP {:#x} in {}", own.qpn.0, own.state.name()),
            ));
        }
        if st.wrs.len() + wrs.len() > self.caps.max_send_wr as usize {
            return Err(err(
                Errno::ENOMEM,
                format!(
                    "send queue of QP {:#x} holds {} of {}",
                    own.qpn.0,
                    st.wrs.len(),
                    self.caps.max_send_wr
                ),
            ));
        }
        for wr in wrs {
            if wr.sg_list.len() > self.caps.max_sge as usize {
                return Err(err(
                    Errno::EINVAL,
                    format!(
                        "wr {}: {} SGEs, QP allows {}",
                        wr.wr_id,
                        wr.sg_list.len(),
                        self.caps.max_sge
                    ),
                ));
            }
            if wr.inline_data.as_ref().is_some_and(|d| d.len() > self.caps.max_inline_data as usize)
            {
                return Err(err(
                    Errno::EINVAL,
                    format!(
                        "wr {}: inline data beyond {} bytes",
                        wr.wr_id, self.caps.max_inline_data
                    ),
                ));
            }
        }
        st.posted += wrs.len() as u64;
        self.run(&mut st, own, wrs);
        if !st.wrs.is_empty() {
            self.shm()?.remember(self);
        }
        Ok(())
    }

    /// Retries queued work; true if some is still queued.
    fn progress(&self) -> bool {
        match self.st.try_lock() {
            Some(mut st) => {
                if !st.wrs.is_empty() {
                    match self.view() {
                        Ok(own) => self.run(&mut st, own, &[]),
                        Err(_) => st.wrs.clear(), // destroyed
                    }
                }
                !st.wrs.is_empty()
            }
            None => true, // another thread of ours is running it
        }
    }

    /// Takes the executor word (waiting a little for another process holding it).
    fn lock_executor(&self, shm: &Shm) -> bool {
        let ex = shm.region.executor(self.slot);
        let mut deadline = None;
        loop {
            match ex.lock(self.pool(), shm.pid) {
                Ok(()) => return true,
                Err(holder) if !process_alive(holder) => {
                    ex.steal(self.pool(), holder, shm.pid);
                }
                Err(_) => {
                    let d = *deadline.get_or_insert_with(|| {
                        Instant::now() + Duration::from_millis(EXECUTOR_WAIT_MS)
                    });
                    if Instant::now() >= d {
                        return false;
                    }
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Executes queued work, then `fresh` (just posted), in order, until something waits.
    /// `own`: the QP's slot, read by the caller.
    fn run(&self, st: &mut Queued, own: QpView, mut fresh: &[SendWr]) {
        let Ok(shm) = self.shm() else { return };
        let pool = self.pool();
        let ex = shm.region.executor(self.slot);
        let mut executed = false;
        loop {
            if st.broken || own.state == QpState::Error {
                self.flush(&own, st, fresh);
                break;
            }
            let cur: Cow<'_, SendWr> = match (st.wrs.front(), fresh.split_first()) {
                (Some(w), _) => Cow::Owned(w.clone()),
                (None, Some((w, rest))) => {
                    fresh = rest;
                    Cow::Borrowed(w)
                }
                (None, None) => break,
            };
            let queued = matches!(cur, Cow::Owned(_));
            let wait = |st: &mut Queued, fresh: &[SendWr]| {
                if !queued {
                    st.wrs.push_back(cur.clone().into_owned());
                }
                st.wrs.extend(fresh.iter().cloned());
            };
            if own.state != QpState::Rts || !(st.executor || self.lock_executor(shm)) {
                wait(st, fresh);
                break;
            }
            (st.executor, executed) = (true, true);
            let out = match own.peer {
                // Named in the hazard word (and checked current) before its rings are used.
                PeerView::Local { slot, qpn } => {
                    match shm.region.qp(pool, slot).filter(|t| t.qpn == qpn) {
                        Some(t) => {
                            let fault = |key, off, len, write| self.fault(key, off, len, write);
                            let views = &st.views;
                            let region = &shm.region;
                            let e = Engine { pool, region, ex, own, t, fault: &fault, views };
                            e.execute(&cur)
                        }
                        None => Outcome::Done(super::engine::Done {
                            status: WcStatus::RetryExcErr,
                            bytes: 0,
                            responder: None,
                            lost_recv_cqe: false,
                        }),
                    }
                }
                _ => Outcome::Done(super::engine::Done {
                    status: WcStatus::LocQpOpErr,
                    bytes: 0,
                    responder: None,
                    lost_recv_cqe: false,
                }),
            };
            let d = match out {
                Outcome::Held | Outcome::Rnr => {
                    wait(st, fresh);
                    break;
                }
                Outcome::Done(d) => d,
            };
            if queued {
                st.wrs.pop_front();
            }
            if let (Some(s), PeerView::Local { .. }) = (d.responder, own.peer) {
                self.report(ShmReport::ResponderError { qp: self.id, status: s as u8 });
            }
            if let (true, PeerView::Local { qpn, .. }) = (d.lost_recv_cqe, own.peer) {
                self.report(ShmReport::CqOverflow { qpn: qpn.0, recv: true });
            }
            self.complete(&own, st, &cur, d.status, d.bytes);
            if d.status != WcStatus::Success {
                // As `complete_send_locked`: the error completion, then the QP goes to ERR and
                // flushes what follows.
                st.broken = true;
                self.flush(&own, st, fresh);
                let _ = self.conn.call(&Request::QpToError { qp: self.id });
                break;
            }
        }
        if executed {
            ex.count(pool, st.posted, st.completed);
            ex.clear(pool);
        }
    }

    fn complete(&self, own: &QpView, st: &mut Queued, wr: &SendWr, status: WcStatus, n: u32) {
        st.completed += 1;
        if status == WcStatus::Success && !wr.signaled {
            return;
        }
        let wc = WorkCompletion {
            wr_id: wr.wr_id,
            status,
            opcode: WcOpcode::of(wr.opcode),
            byte_len: n,
            imm: None,
            qpn: own.qpn,
        };
        if push_cqe(self.pool(), &self.send_cq, &wc) == Err(true) {
            self.report(ShmReport::CqOverflow { qpn: own.qpn.0, recv: false });
        }
    }

    /// Completes every queued work request, and `fresh`, with `WR_FLUSH_ERR`.
    fn flush(&self, own: &QpView, st: &mut Queued, fresh: &[SendWr]) {
        let queued: Vec<SendWr> = st.wrs.drain(..).collect();
        for wr in queued.iter().chain(fresh) {
            st.completed += 1;
            let wc = WorkCompletion {
                wr_id: wr.wr_id,
                status: WcStatus::WrFlushErr,
                opcode: WcOpcode::of(wr.opcode),
                byte_len: 0,
                imm: None,
                qpn: own.qpn,
            };
            if push_cqe(self.pool(), &self.send_cq, &wc) == Err(true) {
                self.report(ShmReport::CqOverflow { qpn: own.qpn.0, recv: false });
            }
        }
    }

    fn fault(&self, key: u32, off: u64, len: u64, write: bool) -> bool {
        let r = ShmReport::Fault { key, off, len, write };
        matches!(self.conn.call(&Request::ShmReport(r)), Ok(Reply::Ok))
    }

    fn report(&self, r: ShmReport) {
        if let Err(e) = self.conn.call(&Request::ShmReport(r)) {
            tracing::debug!(error = %e, "report to the daemon failed");
        }
    }

    /// `ibv_post_recv`: straight into the QP's receive ring.
    pub(crate) fn post_recv(&self, wrs: &[RecvWr]) -> Result<()> {
        let own = self.view()?;
        if own.state == QpState::Reset {
            return Err(err(Errno::EINVAL, format!("post_recv on QP {:#x} in RESET", own.qpn.0)));
        }
        let Some((base, max_sge)) = own.rq else {
            return Err(err(Errno::EINVAL, "this QP has no receive queue"));
        };
        let words = wqe_words(max_sge);
        let ring = Ring::attach(self.pool(), base, words, RQ_RING_MAX)
            .ok_or_else(|| err(Errno::EPROTO, "the QP's receive ring is unreadable"))?;
        if let Some(w) = wrs.iter().find(|w| w.sg_list.len() > max_sge as usize) {
            return Err(err(Errno::EINVAL, format!("recv wr {}: too many SGEs", w.wr_id)));
        }
        if !ring.has_room(self.pool(), wrs.len() as u64) {
            return Err(err(
                Errno::ENOMEM,
                format!(
                    "receive queue of QP {:#x} holds {} of {}",
                    own.qpn.0,
                    ring.len(self.pool()),
                    ring.cap()
                ),
            ));
        }
        let mut w = Vec::with_capacity(words as usize);
        for r in wrs {
            wqe_encode(r, &mut w);
            ring.push(self.pool(), &w).map_err(|e| {
                err(Errno::ENOMEM, format!("receive queue of QP {:#x}: {e:?}", own.qpn.0))
            })?;
        }
        if own.state == QpState::Error {
            self.flush_recv(&own, &ring, max_sge);
        }
        Ok(())
    }

    /// A QP in ERR completes its receives with `WR_FLUSH_ERR` at once.
    fn flush_recv(&self, own: &QpView, ring: &Ring, max_sge: u32) {
        let mut w = vec![0u64; wqe_words(max_sge) as usize];
        while ring.pop(self.pool(), &mut w).is_some() {
            let wr_id = w[0];
            let wc = WorkCompletion {
                wr_id,
                status: WcStatus::WrFlushErr,
                opcode: WcOpcode::Recv,
                byte_len: 0,
                imm: None,
                qpn: own.qpn,
            };
            if let Some(r) = Ring::attach(self.pool(), own.recv_cq, CQE_WORDS, CQ_RING_MAX) {
                let _ = push_cqe(self.pool(), &r, &wc);
            }
        }
    }
}

impl Drop for ShmQp {
    fn drop(&mut self) {
        // Before the daemon is asked to destroy the QP (`QueuePair`'s field order).
        if let (Some(shm), true) = (&self.conn.shm, self.st.get_mut().executor) {
            shm.region.executor(self.slot).unlock(&self.conn.pool);
        }
    }
}

fn process_alive(pid: u64) -> bool {
    let Some(p) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else {
        return false;
    };
    !matches!(rustix::process::test_kill_process(p), Err(rustix::io::Errno::SRCH))
}

/// Polls a CQ ring: up to `out.len()` completions, waiting up to `wait` for the first (the
/// connection's queued work is retried meanwhile).
pub(crate) fn poll_ring(
    conn: &Conn,
    ring: &Ring,
    out: &mut [WorkCompletion],
    wait: Duration,
) -> usize {
    let pool = &conn.pool;
    let shm = conn.shm.as_ref();
    let mut n = pop_into(pool, ring, out);
    if n > 0 {
        return n;
    }
    let mut pending = shm.is_some_and(Shm::progress);
    n = pop_into(pool, ring, out);
    if n > 0 || wait.is_zero() {
        return n;
    }
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return 0;
        }
        let nap = if pending { left.min(Duration::from_millis(PENDING_RETRY_MS)) } else { left };
        ring.wait(pool, nap, &mut || !ring.is_empty(pool));
        pending = shm.is_some_and(Shm::progress);
        n = pop_into(pool, ring, out);
        if n > 0 {
            return n;
        }
    }
}

fn pop_into(pool: &Pool, ring: &Ring, out: &mut [WorkCompletion]) -> usize {
    let mut n = 0;
    let mut w = [0u64; CQE_WORDS as usize];
    let mut tries = ring.cap() + out.len() as u64;
    while n < out.len() && tries > 0 && ring.pop(pool, &mut w).is_some() {
        tries -= 1;
        if let Some(wc) = cqe_decode(&w) {
            out[n] = wc;
            n += 1;
        }
    }
    n
}

/// The ring of a CQ at `off` (from `ShmAttach`).
pub(crate) fn cq_ring(pool: &Pool, off: PoolOffset) -> Option<Ring> {
    Ring::attach(pool, off, CQE_WORDS, CQ_RING_MAX)
}
