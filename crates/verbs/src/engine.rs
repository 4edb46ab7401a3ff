//! The DMA engine: executes a QP's send queue in order.
//!
//! Who executes: for a peer QP on this node (loopback) the poster's thread does the transfer
//! itself (kernel bypass: a one-sided write is a copy into memory the initiator can reach),
//! after checking the target MR; for a remote peer the request goes on the connection and the
//! remote node's engine executes it against its pool (`transport::tcp`).
//!
//! Every access is checked in this order: key → PD → access flags → MR state → bounds; a
//! violation completes with the matching status and moves the QP to ERR; nothing outside an
//! MR is ever touched (invariant 5). A transfer to a decoherent MR is *held*: the work request
//! goes back to the head of the queue and the QP resumes when the MR changes state.
//!
//! Only one thread executes a QP at a time (`executing`); others just enqueue. The executor
//! never holds a QP lock while moving bytes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pinwheel_mm::{MmError, PoolOffset};

use crate::mr::{DmaError, MrInner};
use crate::qp::{Peer, QpCore, QpInner};
use crate::types::{Access, Opcode, QpState, Qpn, WcStatus};
use crate::wr::{RecvWr, SendWr, Sge, WcOpcode, WorkCompletion};

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
    fn status(self) -> WcStatus {
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
    Ok(Span::Mr { mr, off, len: u64::from(sge.length), side: Side::Initiator })
}

fn local_spans(qp: &QpInner, sges: &[Sge], need_write: bool) -> Result<Vec<Span>, WcStatus> {
    sges.iter().filter(|s| s.length > 0).map(|s| local_span(qp, s, need_write)).collect()
}

/// Resolves the buffers of a receive at the responder `t` (`Err`: `LOC_PROT_ERR`, the
/// receive's status).
pub(crate) fn recv_spans(t: &QpInner, r: &RecvWr) -> Result<Vec<Span>, WcStatus> {
    let mut spans = local_spans(t, &r.sg_list, true)?;
    for s in &mut spans {
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
    Ok(Span::Mr { mr, off, len, side: Side::Target })
}

/// Copies `n` bytes from `src` at `soff` to `dst` at `doff` (both spans), entering both MRs.
fn copy_chunk(src: &Span, soff: u64, dst: &Span, doff: u64, n: u64) -> Result<(), Fail> {
    let Span::Mr { mr: dmr, off: dbase, side: dside, .. } = dst else {
        return Err(Fail::Status(WcStatus::GeneralErr));
    };
    let pool = dmr.dev().mem.pool();
    match src {
        Span::Bytes(b) => {
            let mut cur = soff as usize;
            dmr.dma(dbase + doff, n, true, |p, l| {
                let r = pool.write(p, &b[cur..cur + l as usize]);
                cur += l as usize;
                r
            })
            .map_err(|e| map_dma(e, dmr, *dside, |_| Fail::Status(WcStatus::GeneralErr)))
        }
        Span::Mr { mr: smr, off: sbase, side: sside, .. } => {
            let mut dcur = dbase + doff;
            smr.dma(sbase + soff, n, false, |sp, sl| {
                let mut scur = sp.raw();
                let r = dmr.dma(dcur, sl, true, |dp, dl| {
                    let r = pool.copy(PoolOffset::new(scur), dp, dl);
                    scur += dl;
                    r
                });
                dcur += sl;
                r.map_err(|e| {
                    map_dma(e, dmr, *dside, |_: MmError| Fail::Status(WcStatus::GeneralErr))
                })
            })
            .map_err(|e| map_dma(e, smr, *sside, |f| f))
        }
    }
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

fn source(qp: &QpInner, wr: &SendWr) -> Result<Vec<Span>, WcStatus> {
    match &wr.inline_data {
        Some(d) => Ok(vec![Span::Bytes(d.clone())]),
        None => local_spans(qp, &wr.sg_list, false),
    }
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

/// The responder `t` refused a request: remote access and invalid request errors break it.
fn refused(t: &QpInner, status: WcStatus) -> Outcome {
    if status == WcStatus::RemAccessErr || status == WcStatus::RemInvReqErr {
        responder_error(t, status);
    }
    Outcome::Done(status, 0)
}

fn loopback(qp: &Arc<QpInner>, wr: &SendWr, t: &Arc<QpInner>, rnr_retry: u8) -> Outcome {
    use Outcome::Done;
    let (t_state, t_access) = {
        let c = t.core.lock();
        (c.state, c.attr.qp_access_flags)
    };
    if !matches!(t_state, QpState::Rtr | QpState::Rts | QpState::Sqd) {
        return Done(WcStatus::RetryExcErr, 0);
    }
    let len = wr.length();
    if len > crate::limits::MAX_MSG {
        return Done(WcStatus::LocLenErr, 0);
    }
    let fail = |f: Fail| match f {
        Fail::Held(mr) => Outcome::Held(mr),
        Fail::Status(s) => refused(t, s),
    };
    let dev = qp.dev();
    match wr.opcode {
        Opcode::Write | Opcode::WriteWithImm | Opcode::Send | Opcode::SendWithImm => {
            transfer(qp, wr, t, t_access, rnr_retry)
        }
        Opcode::Read => {
            let dst = match local_spans(qp, &wr.sg_list, true) {
                Ok(s) => s,
                Err(s) => return Done(s, 0),
            };
            let src =
                match remote_span(t, t_access, wr.rkey.0, wr.remote_addr, len, Access::REMOTE_READ)
                {
                    Ok(s) => s,
                    Err(s) => return refused(t, s),
                };
            match copy_spans(&[src], &dst) {
                Ok(n) => {
                    dev.counters.bytes_read.fetch_add(n, Ordering::Relaxed);
                    Done(WcStatus::Success, n as u32)
                }
                Err(f) => fail(f),
            }
        }
        Opcode::CompareSwap | Opcode::FetchAdd => {
            if wr.sg_list.len() != 1 || wr.sg_list[0].length != 8 {
                return Done(WcStatus::LocLenErr, 0);
            }
            if !wr.remote_addr.is_multiple_of(8) {
                return refused(t, WcStatus::RemInvReqErr);
            }
            let dst = match local_span(qp, &wr.sg_list[0], true) {
                Ok(s) => s,
                Err(s) => return Done(s, 0),
            };
            let tgt =
                match remote_span(t, t_access, wr.rkey.0, wr.remote_addr, 8, Access::REMOTE_ATOMIC)
                {
                    Ok(s) => s,
                    Err(s) => return refused(t, s),
                };
            let old = match atomic(&tgt, wr.opcode, wr.compare_add, wr.swap) {
                Ok(v) => v,
                Err(f) => return fail(f),
            };
            match store_u64(&dst, old) {
                Ok(()) => Done(WcStatus::Success, 8),
                Err(f) => fail(f),
            }
        }
    }
}

/// WRITE, WRITE_WITH_IMM, SEND and SEND_WITH_IMM to the responder `t` of this node.
///
/// Every check that can refuse the request comes before a receive is taken (the responder
/// validates the rkey before it consumes a receive WQE, as rxe_resp.c does), and a receive
/// taken for a transfer that then fails for a reason other than its own buffer goes back to
/// the head of its queue: every receive completes exactly once, successfully, in error or
/// flushed.
fn transfer(
    qp: &Arc<QpInner>,
    wr: &SendWr,
    t: &Arc<QpInner>,
    t_access: Access,
    rnr_retry: u8,
) -> Outcome {
    use Outcome::Done;
    let len = wr.length();
    let src = match source(qp, wr) {
        Ok(s) => s,
        Err(s) => return Done(s, 0),
    };
    let target = match wr.opcode {
        Opcode::Write | Opcode::WriteWithImm => {
            match remote_span(t, t_access, wr.rkey.0, wr.remote_addr, len, Access::REMOTE_WRITE) {
                Ok(s) => Some(s),
                Err(s) => return refused(t, s),
            }
        }
        _ => None,
    };
    let recv = if wr.opcode.consumes_recv() {
        match take_recv(t, rnr_retry) {
            Ok(r) => Some(r),
            Err(o) => return o,
        }
    } else {
        None
    };
    let dst = match (target, &recv) {
        (Some(s), _) => vec![s],
        (None, Some(r)) => {
            let cap: u64 = r.sg_list.iter().map(|s| u64::from(s.length)).sum();
            if cap < len {
                complete_recv(t, r, WcStatus::LocLenErr, 0, None);
                responder_error(t, WcStatus::LocLenErr);
                return Done(WcStatus::RemInvReqErr, 0);
            }
            match recv_spans(t, r) {
                Ok(s) => s,
                Err(s) => {
                    complete_recv(t, r, s, 0, None);
                    responder_error(t, s);
                    return Done(WcStatus::RemOpErr, 0);
                }
            }
        }
        (None, None) => return Done(WcStatus::GeneralErr, 0),
    };
    match copy_spans(&src, &dst) {
        Ok(n) => {
            qp.dev().counters.bytes_written.fetch_add(n, Ordering::Relaxed);
            if let Some(r) = &recv {
                let imm = matches!(wr.opcode, Opcode::WriteWithImm | Opcode::SendWithImm)
                    .then_some((wr.imm, wr.opcode == Opcode::WriteWithImm));
                complete_recv(t, r, WcStatus::Success, n as u32, imm);
            }
            Done(WcStatus::Success, n as u32)
        }
        Err(Fail::Held(mr)) => {
            if let Some(r) = recv {
                give_back_recv(t, r);
            }
            Outcome::Held(mr)
        }
        Err(Fail::Status(s)) if s == Side::Receive.status() => {
            // The responder's own receive buffer failed (revoked, unmapped): its receive
            // completes in error and it goes to ERR; the initiator learns REM_OP_ERR.
            if let Some(r) = &recv {
                complete_recv(t, r, WcStatus::LocProtErr, 0, None);
            }
            responder_error(t, WcStatus::LocProtErr);
            Done(s, 0)
        }
        Err(Fail::Status(s)) => {
            // The initiator's source or the WRITE's target failed: the receive was not used.
            // Put back first, so a responder going to ERR flushes it.
            if let Some(r) = recv {
                give_back_recv(t, r);
            }
            refused(t, s)
        }
    }
}

/// Takes a receive at `t`, or says how to wait (RNR). `rnr_retry` 7 waits for ever (the
/// poster is told when a receive arrives); fewer retries wait a millisecond each.
fn take_recv(t: &Arc<QpInner>, rnr_retry: u8) -> Result<RecvWr, Outcome> {
    for attempt in 0..=u32::from(rnr_retry.min(6)) {
        if let Some(r) = t.take_recv(&mut t.core.lock()) {
            return Ok(r);
        }
        if rnr_retry == 7 {
            return Err(Outcome::Rnr(Arc::clone(t)));
        }
        if attempt < u32::from(rnr_retry) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Err(Outcome::Done(WcStatus::RnrRetryExcErr, 0))
}

/// Puts back a receive taken for a transfer that is held or failed without using it. A
/// responder that went to ERR meanwhile flushes it at once (one reset meanwhile discarded its
/// queue: so goes the receive); senders that found the queue empty meanwhile are woken.
pub(crate) fn give_back_recv(t: &QpInner, r: RecvWr) {
    let mut c = t.core.lock();
    match &t.srq {
        Some(s) => s.queue.lock().push_front(r),
        None if c.state == QpState::Reset => return,
        None => c.rq.push_front(r),
    }
    if c.state == QpState::Error {
        t.flush(&mut c);
    }
    t.wake_rnr_waiters(&mut c);
}

/// Completes a receive at `t`; `imm` is (value, came with an RDMA WRITE).
pub(crate) fn complete_recv(
    t: &QpInner,
    r: &RecvWr,
    status: WcStatus,
    byte_len: u32,
    imm: Option<(u32, bool)>,
) {
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
}

fn execute(qp: &Arc<QpInner>, wr: &SendWr, peer: &Peer, rnr_retry: u8) -> Outcome {
    qp.dev().counters.ops.fetch_add(1, Ordering::Relaxed);
    match peer {
        Peer::Local(w) => match w.upgrade() {
            Some(t) => loopback(qp, wr, &t, rnr_retry),
            None => Outcome::Done(WcStatus::RetryExcErr, 0),
        },
        Peer::Remote(link) => crate::transport::tcp::send(qp, wr, link),
        Peer::None => Outcome::Done(WcStatus::LocQpOpErr, 0),
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
    loop {
        let (wr, peer, rnr_retry) = {
            let mut c = qp.core.lock();
            if c.executing {
                return;
            }
            if c.state == QpState::Error {
                qp.flush(&mut c);
                return;
            }
            if c.state != QpState::Rts {
                return;
            }
            let Some(wr) = c.sq.pop_front() else { return };
            c.executing = true;
            (wr, c.peer.clone(), c.attr.rnr_retry)
        };
        let out = execute(qp, &wr, &peer, rnr_retry);
        let mut c = qp.core.lock();
        c.executing = false;
        if !matches!(out, Outcome::Done(..) | Outcome::Posted) {
            match c.state {
                // The QP went to ERR while this request ran, and flushed the queue without it.
                QpState::Error => {
                    c.sq.push_front(wr);
                    qp.flush(&mut c);
                    return;
                }
                // RESET discarded the queue: so goes this request.
                QpState::Reset => return,
                _ => {}
            }
        }
        match out {
            Outcome::Done(status, n) => {
                drop(c);
                complete_send(qp, wr.wr_id, wr.opcode, wr.signaled, status, n);
            }
            Outcome::Posted => {}
            Outcome::Busy => {
                c.sq.push_front(wr);
                return;
            }
            Outcome::Held(mr) => {
                c.sq.push_front(wr);
                drop(c);
                qp.dev().counters.held.fetch_add(1, Ordering::Relaxed);
                mr.hold(qp);
                return;
            }
            Outcome::Rnr(t) => {
                c.sq.push_front(wr);
                drop(c);
                park_rnr(qp, &t);
                return;
            }
        }
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
            !c.rq.is_empty() || !receiving(c.state)
        }
    };
    if ready {
        qp.dev().kick(Arc::downgrade(qp));
    }
}
