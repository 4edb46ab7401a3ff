//! Loopback: a request to a peer QP of this node. The poster's thread executes it (kernel
//! bypass: a one-sided WRITE is a copy into memory the initiator can reach) after the checks
//! the responder would make — key → PD → access → state → bounds — with the outcomes a TCP
//! responder gives (`responder.rs`): a refused request breaks the responder, a receive taken
//! for a transfer that then fails for another reason goes back to its queue. The common
//! WRITE/READ goes through the executing thread's MR cache (`mr_cache.rs`).

use std::sync::Arc;
use std::time::Duration;

use crate::engine::{
    Fail, Outcome, Part, Side, Span, Spans, atomic, check_local, check_remote, complete_recv,
    copy_between, copy_spans, give_back_recv, local_span, local_spans, recv_spans, remote_span,
    responder_error, store_u64,
};
use crate::mr_cache::MrCache;
use crate::qp::QpInner;
use crate::rq::TakenRecv;
use crate::types::{Access, Opcode, QpState, WcStatus};
use crate::wr::SendWr;

fn source(qp: &QpInner, wr: &SendWr) -> Result<Spans, WcStatus> {
    match &wr.inline_data {
        Some(d) => Ok(Spans::One(Span::Bytes(d.clone()))),
        None => local_spans(qp, &wr.sg_list, false),
    }
}

/// The responder `t` refused a request: remote access and invalid request errors break it.
fn refused(t: &QpInner, status: WcStatus) -> Outcome {
    if status == WcStatus::RemAccessErr || status == WcStatus::RemInvReqErr {
        responder_error(t, status);
    }
    Outcome::Done(status, 0)
}

/// Executes `wr` of `qp` against its peer `t` of this node.
pub(crate) fn execute(
    qp: &Arc<QpInner>,
    wr: &SendWr,
    t: &Arc<QpInner>,
    rnr_retry: u8,
    cache: &mut MrCache,
) -> Outcome {
    use Outcome::Done;
    let (t_state, t_access) = t.state_access();
    if !matches!(t_state, QpState::Rtr | QpState::Rts | QpState::Sqd) {
        return Done(WcStatus::RetryExcErr, 0);
    }
    let len = wr.length();
    if len > crate::limits::MAX_MSG {
        return Done(WcStatus::LocLenErr, 0);
    }
    if let Some(out) = read_write_cached(qp, wr, t, t_access, cache) {
        return out;
    }
    let fail = |f: Fail| match f {
        Fail::Held(mr) => Outcome::Held(mr),
        Fail::Status(s) => refused(t, s),
    };
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
                Ok(n) => Done(WcStatus::Success, n as u32),
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

/// The common case of a loopback WRITE or READ: one local SGE and the target in another MR.
/// The same checks and outcomes as the general path (`transfer`, the READ arm of `loopback`),
/// on MRs found through the executing thread's cache (`mr_cache.rs`) and translated through
/// its snapshots (`pinned.rs`): no key-table lock, no map lock, no `Arc` clone of a map.
/// `None`: not this case.
fn read_write_cached(
    qp: &Arc<QpInner>,
    wr: &SendWr,
    t: &Arc<QpInner>,
    t_access: Access,
    cache: &mut MrCache,
) -> Option<Outcome> {
    use Outcome::Done;
    let write = wr.opcode == Opcode::Write;
    let [sge] = wr.sg_list.as_slice() else { return None };
    let (lkey, rkey) = (sge.lkey.0, wr.rkey.0);
    let dev = qp.dev();
    if !(write || wr.opcode == Opcode::Read)
        || wr.inline_data.is_some()
        || sge.length == 0
        || lkey == rkey
    {
        return None;
    }
    let len = u64::from(sge.length);
    let Some(lmr) = cache.lookup(dev, lkey, rkey) else {
        return Some(Done(WcStatus::LocProtErr, 0));
    };
    let loff = match check_local(qp, &lmr, sge, !write) {
        Ok(o) => o,
        Err(s) => return Some(Done(s, 0)),
    };
    let need = if write { Access::REMOTE_WRITE } else { Access::REMOTE_READ };
    let Some(rmr) = cache.lookup(dev, rkey, lkey) else {
        return Some(refused(t, WcStatus::RemAccessErr));
    };
    let roff = match check_remote(t, t_access, &rmr, wr.remote_addr, len, need) {
        Ok(o) => o,
        Err(s) => return Some(refused(t, s)),
    };
    let (lsnap, rsnap) = cache.snaps(lkey, rkey)?;
    let local = Part { mr: &lmr, off: loff, side: Side::Initiator, snap: Some(lsnap) };
    let remote = Part { mr: &rmr, off: roff, side: Side::Target, snap: Some(rsnap) };
    let r = if write { copy_between(local, remote, len) } else { copy_between(remote, local, len) };
    Some(match r {
        Ok(()) => Done(WcStatus::Success, len as u32),
        Err(Fail::Held(mr)) => Outcome::Held(mr),
        Err(Fail::Status(s)) => refused(t, s),
    })
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
        (Some(s), _) => Spans::One(s),
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
            if let Some(r) = &recv {
                let imm = matches!(wr.opcode, Opcode::WriteWithImm | Opcode::SendWithImm)
                    .then_some((wr.imm, wr.opcode == Opcode::WriteWithImm));
                if !complete_recv(t, r, WcStatus::Success, n as u32, imm) {
                    // The responder flushed its queue meanwhile (it went to ERR): as an RC
                    // responder in ERR, it acknowledged nothing.
                    return Done(WcStatus::RetryExcErr, 0);
                }
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
fn take_recv(t: &Arc<QpInner>, rnr_retry: u8) -> Result<TakenRecv, Outcome> {
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
