//! The responder side of a TCP connection: serves the peer's requests against this node's pool,
//! on the connection's reader thread (`tcp.rs`), with the checks of the loopback engine: key →
//! PD → access → state → bounds before a byte moves, and a target checked before a receive is
//! taken, so a refused request consumes none. A refusal NAKs the request and moves the QP to ERR
//! (later requests are NAKed with `REM_OP_ERR`); the connection stays up. A wait for a receive
//! (RNR) ends when one is posted, the retries run out, or the connection is over.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::engine::{self, Fail, Span};
use crate::mr::{DmaError, MrState};
use crate::qp::QpInner;
use crate::rq::TakenRecv;
use crate::transport::tcp::{Link, RNR_POLL, pool_of, read_spans};
use crate::transport::wire::{Header, Kind};
use crate::types::{Access, Opcode, QpState, WcStatus};

/// Waits for a receive at `qp` for an incoming SEND / WRITE_WITH_IMM (rnr_retry 7: as long as
/// the connection lives; fewer: 10 ms a retry). `Ok(Err(status))`: no receive, NAK with
/// `status` (the retries ran out, or the QP stopped receiving). `Err`: the connection is over
/// (closed here, the peer hung up, or the QP destroyed).
fn wait_recv(
    link: &Link,
    qp: &Arc<QpInner>,
    rnr_retry: u8,
) -> std::io::Result<Result<TakenRecv, WcStatus>> {
    let deadline = if rnr_retry >= 7 {
        None
    } else {
        Some(Instant::now() + Duration::from_millis(10 * u64::from(rnr_retry)))
    };
    loop {
        {
            let mut c = qp.core.lock();
            if let Some(r) = qp.take_recv(&mut c) {
                return Ok(Ok(r));
            }
            if !matches!(c.state, QpState::Rtr | QpState::Rts | QpState::Sqd) {
                return Ok(Err(WcStatus::RemOpErr));
            }
        }
        if link.closed() {
            return Err(std::io::Error::other("connection closed while waiting for a receive"));
        }
        // This reader holds the last reference: the QP was destroyed, nobody will post.
        if Arc::strong_count(qp) == 1 {
            return Err(std::io::Error::other("QP destroyed while waiting for a receive"));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Err(WcStatus::RnrRetryExcErr));
        }
        if link.hung_up(RNR_POLL) {
            return Err(std::io::Error::other(
                "the peer hung up while its request waited for a receive",
            ));
        }
    }
}

fn nak(link: &Link, psn: u32, status: WcStatus) -> std::io::Result<()> {
    let mut r = Header::new(Kind::Nak);
    r.psn = psn;
    r.status = status as u8;
    link.send_header(&r)
}

fn ack(link: &Link, psn: u32) -> std::io::Result<()> {
    let mut a = Header::new(Kind::Ack);
    a.psn = psn;
    link.send_header(&a)
}

/// Refuses a request: the responder's QP goes to ERR (IB: it raises `QP_ACCESS_ERR`).
fn refuse(link: &Link, qp: &QpInner, psn: u32, status: WcStatus) -> std::io::Result<()> {
    engine::responder_error(qp, status);
    nak(link, psn, status)
}

/// Serves one request from the peer against this node's pool. `Err`: the connection is broken.
pub(super) fn serve(link: &Link, qp: &Arc<QpInner>, h: Header) -> std::io::Result<()> {
    let (state, access) = {
        let c = qp.core.lock();
        (c.state, c.attr.qp_access_flags)
    };
    if !matches!(state, QpState::Rtr | QpState::Rts | QpState::Sqd) {
        if h.kind.has_payload() {
            link.discard(u64::from(h.len))?;
        }
        return nak(link, h.psn, WcStatus::RemOpErr);
    }
    match h.kind {
        Kind::Write | Kind::WriteImm => serve_write(link, qp, h, access),
        Kind::Send | Kind::SendImm => serve_send(link, qp, h),
        Kind::ReadReq => serve_read(link, qp, h, access),
        Kind::CompareSwap | Kind::FetchAdd => serve_atomic(link, qp, h, access),
        _ => Err(std::io::Error::other(format!("unexpected {:?} frame", h.kind))),
    }
}

/// WRITE and WRITE_WITH_IMM. The target is checked before a receive is taken: a refused
/// request consumes none.
fn serve_write(link: &Link, qp: &Arc<QpInner>, h: Header, access: Access) -> std::io::Result<()> {
    let len = u64::from(h.len);
    let span = match engine::remote_span(qp, access, h.rkey, h.addr, len, Access::REMOTE_WRITE) {
        Ok(s) => s,
        Err(s) => {
            link.discard(len)?;
            return refuse(link, qp, h.psn, s);
        }
    };
    let recv = if h.kind == Kind::WriteImm {
        let r = wait_recv(link, qp, h.status)?;
        link.arm(len);
        match r {
            Ok(r) => Some(r),
            Err(s) => {
                link.discard(len)?;
                return nak(link, h.psn, s);
            }
        }
    } else {
        None
    };
    match read_spans(link, &[span], len)? {
        Ok(()) => {
            qp.dev().counters.bytes_written.fetch_add(len, Ordering::Relaxed);
            ack(link, h.psn)?;
            if let Some(r) = recv {
                engine::complete_recv(qp, &r, WcStatus::Success, h.len, Some((h.imm, true)));
            }
            Ok(())
        }
        Err(s) => {
            // Put back first, so the responder going to ERR flushes it.
            if let Some(r) = recv {
                engine::give_back_recv(qp, r);
            }
            refuse(link, qp, h.psn, s)
        }
    }
}

/// SEND and SEND_WITH_IMM into the next receive.
fn serve_send(link: &Link, qp: &Arc<QpInner>, h: Header) -> std::io::Result<()> {
    let len = u64::from(h.len);
    let r = match wait_recv(link, qp, h.status)? {
        Ok(r) => r,
        Err(s) => {
            link.arm(len);
            link.discard(len)?;
            return nak(link, h.psn, s);
        }
    };
    link.arm(len);
    let cap: u64 = r.sg_list.iter().map(|s| u64::from(s.length)).sum();
    let spans = match engine::recv_spans(qp, &r) {
        Ok(v) if cap >= len => v,
        Ok(_) => {
            link.discard(len)?;
            engine::complete_recv(qp, &r, WcStatus::LocLenErr, 0, None);
            return refuse(link, qp, h.psn, WcStatus::RemInvReqErr);
        }
        Err(s) => {
            link.discard(len)?;
            engine::complete_recv(qp, &r, s, 0, None);
            return refuse(link, qp, h.psn, WcStatus::RemOpErr);
        }
    };
    match read_spans(link, &spans, len)? {
        Ok(()) => {
            ack(link, h.psn)?;
            let imm = (h.kind == Kind::SendImm).then_some((h.imm, false));
            engine::complete_recv(qp, &r, WcStatus::Success, h.len, imm);
            Ok(())
        }
        Err(s) => {
            engine::complete_recv(qp, &r, s, 0, None);
            refuse(link, qp, h.psn, WcStatus::RemOpErr)
        }
    }
}

/// READ: the response header, then the bytes straight from the pool.
fn serve_read(link: &Link, qp: &Arc<QpInner>, h: Header, access: Access) -> std::io::Result<()> {
    let len = u64::from(h.len);
    let span = match engine::remote_span(qp, access, h.rkey, h.addr, len, Access::REMOTE_READ) {
        Ok(s) => s,
        Err(s) => return refuse(link, qp, h.psn, s),
    };
    let Span::Mr { mr, off, .. } = &span else {
        return refuse(link, qp, h.psn, WcStatus::GeneralErr);
    };
    loop {
        if mr.state() == MrState::Decoherent {
            mr.wait_coherent();
        }
        let mut resp = Header::new(Kind::ReadResp);
        resp.psn = h.psn;
        resp.len = h.len;
        let w = link.write_lock.lock();
        let mut header_sent = false;
        let r = mr.dma(*off, len, false, |p, l| {
            if !header_sent {
                link.write_header_more(&resp.encode())?;
                header_sent = true;
            }
            link.write_from_pool(pool_of(mr), p, l)
        });
        match r {
            Ok(()) => {
                if !header_sent {
                    link.write_all(&resp.encode())?;
                }
                qp.dev().counters.bytes_read.fetch_add(len, Ordering::Relaxed);
                return Ok(());
            }
            Err(DmaError::Held) if !header_sent => continue,
            Err(DmaError::Copy(e)) => return Err(e),
            Err(_) if header_sent => {
                return Err(std::io::Error::other(
                    "MR became unusable in the middle of a READ response",
                ));
            }
            Err(_) => {
                drop(w);
                return refuse(link, qp, h.psn, WcStatus::RemAccessErr);
            }
        }
    }
}

/// COMPARE_SWAP and FETCH_ADD.
fn serve_atomic(link: &Link, qp: &Arc<QpInner>, h: Header, access: Access) -> std::io::Result<()> {
    if !h.addr.is_multiple_of(8) {
        return refuse(link, qp, h.psn, WcStatus::RemInvReqErr);
    }
    let span = match engine::remote_span(qp, access, h.rkey, h.addr, 8, Access::REMOTE_ATOMIC) {
        Ok(s) => s,
        Err(s) => return refuse(link, qp, h.psn, s),
    };
    let op = if h.kind == Kind::CompareSwap { Opcode::CompareSwap } else { Opcode::FetchAdd };
    loop {
        match engine::atomic(&span, op, h.a, h.b) {
            Ok(old) => {
                let mut r = Header::new(Kind::AtomicResp);
                r.psn = h.psn;
                r.a = old;
                return link.send_header(&r);
            }
            Err(Fail::Held(mr)) => {
                mr.wait_coherent();
            }
            Err(Fail::Status(s)) => return refuse(link, qp, h.psn, s),
        }
    }
}
