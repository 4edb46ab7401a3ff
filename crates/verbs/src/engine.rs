//! The DMA engine: executes a QP's send queue in order.
//!
//! Who executes: for a peer QP on this node (loopback) the poster's thread does the transfer
//! itself (kernel bypass: a one-sided write is a copy into memory the initiator can reach),
//! after checking the target MR (`transport::loopback`); for a remote peer the request goes
//! on the connection and the remote node's engine executes it against its pool
//! (`transport::tcp`). This module holds what both share: the spans of a request, the checks,
//! the copies, completions, and the send queue's executor.
//!
//! Every access is checked in this order: key → PD → access flags → MR state → bounds; a
//! violation completes with the matching status and moves the QP to ERR; nothing outside an
//! MR is ever touched (invariant 5). A transfer to a decoherent MR is *held*: the work request
//! goes back to the head of the queue and the QP resumes when the MR changes state.
//!
//! Only one thread executes a QP at a time (`executing`); others just enqueue. The executor
//! never holds a QP lock while moving bytes.
//!
//! The per-request cost matters (a 64 KiB loopback WRITE is a ~0.5 µs copy): a request posted
//! to an idle QP runs in place from the poster's slice (no copy of the request), one critical
//! section separates two requests, and the common loopback WRITE/READ finds its MRs through
//! the executor's cache and translates them through snapshots (`mr_cache.rs`, `pinned.rs`),
//! with every check of the general path.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::MutexGuard;
use pinwheel_mm::{MmError, PoolOffset};

use crate::mr::{DmaError, MrInner};
use crate::mr_cache::MrCache;
use crate::pinned::Snapshot;
use crate::qp::{PeerRef, QpCore, QpInner};
use crate::rq::TakenRecv;
use crate::types::{Access, Opcode, QpState, Qpn, WcStatus};
use crate::wr::{SendWr, Sge, WcOpcode, WorkCompletion};

/// What executing a work request came to.
pub(crate) enum Outcome {
    /// Finished (successfully or not).
    Done(WcStatus, u32),
    /// Waiting for this MR to leave the decoherent state.
    Held(Arc<MrInner>),
    /// Waiting for a receive to be posted at this QP.
    Rnr(Arc<QpInner>),
    /// Handed to a connection; the completion comes with the response.
    Posted,
    /// The connection has as many requests outstanding as the send queue is deep; resumed
    /// when a response arrives.
    Busy,
}

/// Whose buffer a span is: it decides the status when the buffer cannot be used.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// The initiator's own buffer (its lkey): `LOC_PROT_ERR`.
    Initiator,
    /// The responder's buffer named by an rkey: `REM_ACCESS_ERR`, the responder goes to ERR.
    Target,
    /// The responder's receive buffer (its lkey): `REM_OP_ERR` at the initiator; the
    /// receive completes with `LOC_PROT_ERR` and the responder goes to ERR.
    Receive,
}

impl Side {
    /// The initiator's status when this side's buffer cannot be used.
    pub(crate) fn status(self) -> WcStatus {
        match self {
            Side::Initiator => WcStatus::LocProtErr,
            Side::Target => WcStatus::RemAccessErr,
            Side::Receive => WcStatus::RemOpErr,
        }
    }
}

/// A piece of a transfer: part of an MR, or bytes carried inline.
pub(crate) enum Span {
    Mr { mr: Arc<MrInner>, off: u64, len: u64, side: Side },
    Bytes(Vec<u8>),
}

impl Span {
    fn len(&self) -> u64 {
        match self {
            Span::Mr { len, .. } => *len,
            Span::Bytes(b) => b.len() as u64,
        }
    }
}

/// The spans of one side of a work request: the usual single one without an allocation, or
/// several.
pub(crate) enum Spans {
    One(Span),
    Many(Vec<Span>),
}

impl std::ops::Deref for Spans {
    type Target = [Span];
    fn deref(&self) -> &[Span] {
        match self {
            Spans::One(s) => std::slice::from_ref(s),
            Spans::Many(v) => v,
        }
    }
}

impl std::ops::DerefMut for Spans {
    fn deref_mut(&mut self) -> &mut [Span] {
        match self {
            Spans::One(s) => std::slice::from_mut(s),
            Spans::Many(v) => v,
        }
    }
}

/// Why a transfer stopped.
pub(crate) enum Fail {
    Held(Arc<MrInner>),
    Status(WcStatus),
}

fn map_dma<E>(e: DmaError<E>, mr: &Arc<MrInner>, side: Side, copy: impl FnOnce(E) -> Fail) -> Fail {
    match e {
        DmaError::Held => Fail::Held(Arc::clone(mr)),
        DmaError::Copy(x) => copy(x),
        DmaError::Fault(why) => {
            tracing::debug!(mr = mr.key, why, "fault failed");
            Fail::Status(side.status())
        }
        DmaError::Gone | DmaError::Bounds => Fail::Status(side.status()),
    }
}

/// Resolves a local SGE: key → PD → access → bounds (state is checked on access).
pub(crate) fn local_span(qp: &QpInner, sge: &Sge, need_write: bool) -> Result<Span, WcStatus> {
    let mr = qp.dev().mrs.get(sge.lkey.0).ok_or(WcStatus::LocProtErr)?;
    let off = check_local(qp, &mr, sge, need_write)?;
    Ok(Span::Mr { mr, off, len: u64::from(sge.length), side: Side::Initiator })
}

/// The checks of a local SGE against the MR its key named: PD → access → bounds. The offset
/// in the MR.
pub(crate) fn check_local(
    qp: &QpInner,
    mr: &MrInner,
    sge: &Sge,
    need_write: bool,
) -> Result<u64, WcStatus> {
    if !Arc::ptr_eq(&mr.pd, &qp.pd) {
        return Err(WcStatus::LocProtErr);
    }
    if need_write && !mr.access.contains(Access::LOCAL_WRITE) {
        return Err(WcStatus::LocProtErr);
    }
    let off = sge.addr.checked_sub(mr.addr).ok_or(WcStatus::LocProtErr)?;
    if off.checked_add(u64::from(sge.length)).is_none_or(|e| e > mr.len) {
        return Err(WcStatus::LocProtErr);
    }
    Ok(off)
}

pub(crate) fn local_spans(qp: &QpInner, sges: &[Sge], need_write: bool) -> Result<Spans, WcStatus> {
    match sges {
        [one] if one.length > 0 => Ok(Spans::One(local_span(qp, one, need_write)?)),
        _ => sges
            .iter()
            .filter(|s| s.length > 0)
            .map(|s| local_span(qp, s, need_write))
            .collect::<Result<Vec<_>, _>>()
            .map(Spans::Many),
    }
}

/// Resolves the buffers of a receive at the responder `t` (`Err`: `LOC_PROT_ERR`, the
/// receive's status).
pub(crate) fn recv_spans(t: &QpInner, r: &crate::wr::RecvWr) -> Result<Spans, WcStatus> {
    let mut spans = local_spans(t, &r.sg_list, true)?;
    for s in spans.iter_mut() {
        if let Span::Mr { side, .. } = s {
            *side = Side::Receive;
        }
    }
    Ok(spans)
}

/// Resolves the target of a remote operation at the responder `target`: key → PD → access
/// (MR and QP) → bounds. Any violation is a remote access error.
pub(crate) fn remote_span(
    target: &QpInner,
    qp_access: Access,
    rkey: u32,
    addr: u64,
    len: u64,
    need: Access,
) -> Result<Span, WcStatus> {
    let mr = target.dev().mrs.get(rkey).ok_or(WcStatus::RemAccessErr)?;
    let off = check_remote(target, qp_access, &mr, addr, len, need)?;
    Ok(Span::Mr { mr, off, len, side: Side::Target })
}

/// The checks of a remote access against the MR its rkey named: PD → access (MR and QP) →
/// bounds. The offset in the MR.
pub(crate) fn check_remote(
    target: &QpInner,
    qp_access: Access,
    mr: &MrInner,
    addr: u64,
    len: u64,
    need: Access,
) -> Result<u64, WcStatus> {
    if !Arc::ptr_eq(&mr.pd, &target.pd) {
        return Err(WcStatus::RemAccessErr);
    }
    if !mr.access.contains(need) || !qp_access.contains(need) {
        return Err(WcStatus::RemAccessErr);
    }
    let off = addr.checked_sub(mr.addr).ok_or(WcStatus::RemAccessErr)?;
    if off.checked_add(len).is_none_or(|e| e > mr.len) {
        return Err(WcStatus::RemAccessErr);
    }
    Ok(off)
}

/// Copies `n` bytes from `src` at `soff` to `dst` at `doff` (both spans), entering both MRs.
fn copy_chunk(src: &Span, soff: u64, dst: &Span, doff: u64, n: u64) -> Result<(), Fail> {
    let Span::Mr { mr: dmr, off: dbase, side: dside, .. } = dst else {
        return Err(Fail::Status(WcStatus::GeneralErr));
    };
    match src {
        Span::Bytes(b) => {
            let pool = dmr.dev().mem.pool();
            let mut cur = soff as usize;
            dmr.dma(dbase + doff, n, true, |p, l| {
                let r = pool.write(p, &b[cur..cur + l as usize]);
                cur += l as usize;
                r
            })
            .map_err(|e| map_dma(e, dmr, *dside, |_| Fail::Status(WcStatus::GeneralErr)))
        }
        Span::Mr { mr: smr, off: sbase, side: sside, .. } => copy_between(
            Part { mr: smr, off: sbase + soff, side: *sside, snap: None },
            Part { mr: dmr, off: dbase + doff, side: *dside, snap: None },
            n,
        ),
    }
}

/// One MR's side of a copy: from byte `off`, translated through `snap` if given.
pub(crate) struct Part<'a> {
    pub(crate) mr: &'a Arc<MrInner>,
    pub(crate) off: u64,
    pub(crate) side: Side,
    pub(crate) snap: Option<&'a mut Snapshot>,
}

/// Copies `n` bytes between two MRs of this node, entering both.
pub(crate) fn copy_between(src: Part<'_>, dst: Part<'_>, n: u64) -> Result<(), Fail> {
    let pool = dst.mr.dev().mem.pool();
    let (dmr, dside, mut dsnap) = (dst.mr, dst.side, dst.snap);
    let mut dcur = dst.off;
    src.mr
        .dma_in(src.snap, src.off, n, false, |sp, sl| {
            let mut scur = sp.raw();
            let r = dmr.dma_in(dsnap.as_deref_mut(), dcur, sl, true, |dp, dl| {
                let r = pool.copy(PoolOffset::new(scur), dp, dl);
                scur += dl;
                r
            });
            dcur += sl;
            r.map_err(|e| map_dma(e, dmr, dside, |_: MmError| Fail::Status(WcStatus::GeneralErr)))
        })
        .map_err(|e| map_dma(e, src.mr, src.side, |f| f))
}

/// Copies the bytes of `src` spans into `dst` spans, in order. Returns the bytes copied.
pub(crate) fn copy_spans(src: &[Span], dst: &[Span]) -> Result<u64, Fail> {
    let (mut si, mut so, mut di, mut doff) = (0usize, 0u64, 0usize, 0u64);
    let mut total = 0;
    while si < src.len() && di < dst.len() {
        let n = (src[si].len() - so).min(dst[di].len() - doff);
        if n > 0 {
            copy_chunk(&src[si], so, &dst[di], doff, n)?;
        }
        so += n;
        doff += n;
        total += n;
        if so == src[si].len() {
            si += 1;
            so = 0;
        }
        if di < dst.len() && doff == dst[di].len() {
            di += 1;
            doff = 0;
        }
    }
    Ok(total)
}

/// Performs an 8-byte atomic on `target` (a remote span) and returns the old value.
pub(crate) fn atomic(target: &Span, op: Opcode, compare_add: u64, swap: u64) -> Result<u64, Fail> {
    let Span::Mr { mr, off, side, .. } = target else {
        return Err(Fail::Status(WcStatus::GeneralErr));
    };
    let pool = mr.dev().mem.pool();
    let mut old = 0u64;
    mr.dma(*off, 8, true, |p, _| {
        old = match op {
            Opcode::CompareSwap => pool.compare_and_swap(p, compare_add, swap)?,
            _ => pool.fetch_add(p, compare_add)?,
        };
        Ok(())
    })
    .map_err(|e| map_dma(e, mr, *side, |_: MmError| Fail::Status(WcStatus::RemInvReqErr)))?;
    Ok(old)
}

/// Writes an atomic's old value into the initiator's buffer.
pub(crate) fn store_u64(dst: &Span, v: u64) -> Result<(), Fail> {
    copy_chunk(&Span::Bytes(v.to_le_bytes().to_vec()), 0, dst, 0, 8)
}

/// Marks the responder QP broken by a request it could not serve (IB: the responder enters
/// ERR on an access violation and raises `QP_ACCESS_ERR`).
pub(crate) fn responder_error(target: &QpInner, status: WcStatus) {
    let mut c = target.core.lock();
    if c.state != QpState::Error {
        target.to_error(&mut c, status.name());
        drop(c);
        target.event(
            crate::types::EventType::QpAccessErr,
            format!("QP {:#x}: incoming request failed: {}", target.qpn, status.name()),
        );
    }
}

/// Puts back a receive taken for a transfer that is held or failed without using it (one of
/// the QP's own queue never left it: `rq.rs`). A responder that went to ERR meanwhile flushes
/// it at once (one reset meanwhile discarded its queue: so goes the receive); senders that
/// found the queue empty meanwhile are woken.
pub(crate) fn give_back_recv(t: &QpInner, r: TakenRecv) {
    let mut c = t.core.lock();
    match (&t.srq, r.pos) {
        (Some(s), None) => s.queue.lock().push_front(r.wr),
        _ if c.state == QpState::Reset => return,
        _ => {}
    }
    if c.state == QpState::Error {
        t.flush(&mut c);
    }
    t.wake_rnr_waiters(&mut c);
}

/// Completes a receive at `t`; `imm` is (value, came with an RDMA WRITE). False if the
/// receive had left the queue meanwhile (flushed by the QP going to ERR, or reset): it was
/// completed that way, not this one.
pub(crate) fn complete_recv(
    t: &QpInner,
    r: &TakenRecv,
    status: WcStatus,
    byte_len: u32,
    imm: Option<(u32, bool)>,
) -> bool {
    if let (Some(pos), Some(rq)) = (r.pos, &t.rq)
        && !rq.claim(pos)
    {
        return false;
    }
    let opcode =
        if imm.is_some_and(|(_, w)| w) { WcOpcode::RecvRdmaWithImm } else { WcOpcode::Recv };
    t.recv_cq.push(WorkCompletion {
        wr_id: r.wr_id,
        status,
        opcode,
        byte_len,
        imm: imm.map(|(i, _)| i),
        qpn: Qpn(t.qpn),
    });
    true
}

fn execute(
    qp: &Arc<QpInner>,
    wr: &SendWr,
    peer: &PeerRef,
    rnr_retry: u8,
    cache: &mut MrCache,
) -> Outcome {
    match peer {
        PeerRef::Local(Some(t)) => crate::transport::loopback::execute(qp, wr, t, rnr_retry, cache),
        PeerRef::Local(None) => Outcome::Done(WcStatus::RetryExcErr, 0),
        PeerRef::Remote(link) => crate::transport::tcp::send(qp, wr, link),
        PeerRef::None => Outcome::Done(WcStatus::LocQpOpErr, 0),
    }
}

/// Completes the head of the queue of a QP whose request finished remotely.
pub(crate) fn complete_send(
    qp: &QpInner,
    wr_id: u64,
    opcode: Opcode,
    signaled: bool,
    status: WcStatus,
    byte_len: u32,
) {
    let mut c = qp.core.lock();
    complete_send_locked(qp, &mut c, wr_id, opcode, signaled, status, byte_len);
}

/// [`complete_send`] with the QP's lock held.
pub(crate) fn complete_send_locked(
    qp: &QpInner,
    c: &mut QpCore,
    wr_id: u64,
    opcode: Opcode,
    signaled: bool,
    status: WcStatus,
    byte_len: u32,
) {
    push_send_wc_locked(qp, c, wr_id, opcode, signaled, status, byte_len);
    if status != WcStatus::Success {
        qp.to_error(c, status.name());
    }
}

/// Queues a send completion without changing the QP's state (the caller moves it to ERR after
/// the completions that must come before the flush of the send queue).
pub(crate) fn push_send_wc_locked(
    qp: &QpInner,
    c: &mut QpCore,
    wr_id: u64,
    opcode: Opcode,
    signaled: bool,
    status: WcStatus,
    byte_len: u32,
) {
    c.completed += 1;
    if status != WcStatus::Success || signaled {
        qp.send_cq.push(WorkCompletion {
            wr_id,
            status,
            opcode: WcOpcode::of(opcode),
            byte_len,
            imm: None,
            qpn: Qpn(qp.qpn),
        });
    }
    if status != WcStatus::Success {
        qp.dev().counters.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the send queue of `qp` until it is empty or waits.
pub(crate) fn progress(qp: &Arc<QpInner>) {
    run(qp, qp.core.lock(), &[]);
}

/// A work request being executed: taken from the send queue, or executed in place from the
/// poster's slice (no copy of it, nor of its SGE list, when nothing waits ahead of it).
enum Current<'a> {
    Queued(SendWr),
    Posted(&'a SendWr),
}

impl Current<'_> {
    fn wr(&self) -> &SendWr {
        match self {
            Current::Queued(w) => w,
            Current::Posted(w) => w,
        }
    }
    fn into_owned(self) -> SendWr {
        match self {
            Current::Queued(w) => w,
            Current::Posted(w) => w.clone(),
        }
    }
}

/// Puts `wr` and the requests posted after it back at the head of the queue, in order.
fn requeue(c: &mut QpCore, wr: Current<'_>, fresh: &[SendWr]) {
    for f in fresh.iter().rev() {
        c.sq.push_front(f.clone());
    }
    c.sq.push_front(wr.into_owned());
}

/// Executes the work requests of `qp`, its lock `c` held on entry: those queued, then `fresh`
/// (just posted by the caller and counted, not queued). Requests run in order, one thread at
/// a time (`executing`); whatever cannot run now is queued in order. One critical section
/// separates two requests: it completes the first and takes the next.
///
/// Order: `fresh` runs first only if the queue is empty on entry. Requests other threads post
/// while this one executes (the lock released) are queued behind, and are newer than all of
/// `fresh`.
pub(crate) fn run<'q>(qp: &'q Arc<QpInner>, c: MutexGuard<'q, QpCore>, fresh: &[SendWr]) {
    // The peer's last reference may go with it: never under the QP lock.
    let last_peer = run_locked(qp, c, fresh);
    drop(last_peer);
}

/// [`run`]; returns the peer reference of the last request, to be dropped once the lock is.
fn run_locked<'q>(
    qp: &'q Arc<QpInner>,
    mut c: MutexGuard<'q, QpCore>,
    mut fresh: &[SendWr],
) -> Option<PeerRef> {
    if !c.sq.is_empty() && !fresh.is_empty() {
        c.sq.extend(fresh.iter().cloned());
        fresh = &[];
    }
    let mut prev: Option<PeerRef> = None;
    loop {
        if c.executing || c.state != QpState::Rts {
            c.sq.extend(fresh.iter().cloned());
            if !c.executing && c.state == QpState::Error {
                qp.flush(&mut c);
            }
            return prev;
        }
        let wr = match fresh.split_first() {
            Some((w, rest)) => {
                fresh = rest;
                Current::Posted(w)
            }
            None => match c.sq.pop_front() {
                Some(w) => Current::Queued(w),
                None => return prev,
            },
        };
        c.executing = true;
        let peer = c.peer.strong();
        let rnr_retry = c.attr.rnr_retry;
        // Lent to this thread while it executes (no other thread does: `executing`).
        let mut cache = std::mem::take(&mut c.mr_cache);
        drop(c);
        drop(prev.take());
        let out = execute(qp, wr.wr(), &peer, rnr_retry, &mut cache);
        c = qp.core.lock();
        c.executing = false;
        c.mr_cache = cache;
        c.moved.count(wr.wr(), &out, &peer);
        if !matches!(out, Outcome::Done(..) | Outcome::Posted) {
            match c.state {
                // The QP went to ERR while this request ran, and flushed the queue without it.
                QpState::Error => {
                    requeue(&mut c, wr, fresh);
                    qp.flush(&mut c);
                    return Some(peer);
                }
                // RESET discarded the queue: so go this request and those posted with it.
                QpState::Reset => return Some(peer),
                _ => {}
            }
        }
        match out {
            Outcome::Done(status, n) => {
                let w = wr.wr();
                complete_send_locked(qp, &mut c, w.wr_id, w.opcode, w.signaled, status, n);
            }
            Outcome::Posted => {}
            Outcome::Busy => {
                requeue(&mut c, wr, fresh);
                return Some(peer);
            }
            Outcome::Held(mr) => {
                requeue(&mut c, wr, fresh);
                drop(c);
                drop(peer);
                qp.dev().counters.held.fetch_add(1, Ordering::Relaxed);
                mr.hold(qp);
                return None;
            }
            Outcome::Rnr(t) => {
                requeue(&mut c, wr, fresh);
                drop(c);
                drop(peer);
                park_rnr(qp, &t);
                return None;
            }
        }
        prev = Some(peer);
    }
}

/// Parks `qp` until a receive is posted at `t` (RNR, retried for ever), or `t` stops receiving
/// (ERR, RESET, destroyed: its `wake_rnr_waiters`). What happened between the engine's look and
/// the registration is looked at again under the lock those wake-ups take, so none is missed.
fn park_rnr(qp: &Arc<QpInner>, t: &Arc<QpInner>) {
    let me = Arc::downgrade(qp);
    let receiving = |s: QpState| matches!(s, QpState::Rtr | QpState::Rts | QpState::Sqd);
    let ready = match &t.srq {
        Some(s) => {
            s.waiters.lock().push(me);
            let queued = !s.queue.lock().is_empty();
            queued || !receiving(t.core.lock().state)
        }
        None => {
            let mut c = t.core.lock();
            c.rnr_waiters.push(me);
            !t.rq_is_empty() || !receiving(c.state)
        }
    };
    if ready {
        qp.dev().kick(Arc::downgrade(qp));
    }
}
