//! The TCP transport between nodes (separate OS processes): a small connection manager (the
//! rdma_cm role: exchange QPN, starting PSN, and up to 256 bytes of private data, then move both
//! QPs to RTS) and the per-connection engine.
//!
//! - The initiator writes a request header and streams the payload from its pool frames
//!   straight into the socket (`write(2)` from the pool mapping: no staging copy), without
//!   waiting for the response (pipelined up to the send-queue depth).
//! - Each connection has a reader thread. It serves the peer's requests against this node's
//!   pool — payloads go from the socket straight into the target frames, inside the entered MR —
//!   and completes this side's requests when their responses arrive, in order (RC).
//! - A transfer to a decoherent MR is held by blocking this connection's reader (only this QP's
//!   stream stalls) until the MR is restored or revoked.
//! - Anything malformed or out of order closes the connection: the QP goes to ERR, pending
//!   requests complete with `RETRY_EXC_ERR` then `WR_FLUSH_ERR`. A peer that stops inside a
//!   frame for `WIRE_STALL_MS` is cut off, so no MR stays in flight because of it.

use std::collections::VecDeque;
use std::fmt;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pinwheel_mm::{Pool, PoolOffset};

use crate::context::ProtectionDomain;
use crate::device::Device;
use crate::engine::{self, Fail, Outcome, Span};
use crate::error::{VerbsError, VerbsResult};
use crate::limits::WIRE_STALL_MS;
use crate::mr::{DmaError, MrInner, MrState};
use crate::qp::{AddressHandle, QpAttr, QpInitAttr, QpInner, QueuePair};
use crate::transport::wire::{HEADER, Header, Hello, Kind};
use crate::types::{Access, Opcode, QpAttrMask, QpState, Qpn, WcStatus};
use crate::wr::SendWr;

struct Pending {
    wr_id: u64,
    opcode: Opcode,
    signaled: bool,
    psn: u32,
    len: u32,
    dst: Vec<Span>,
}

/// A connection to a QP of another node.
pub struct Link {
    stream: TcpStream,
    write_lock: Mutex<()>,
    qp: Mutex<Weak<QpInner>>,
    pending: Mutex<VecDeque<Pending>>,
    waiting: Mutex<Option<Weak<QpInner>>>,
    closed: AtomicBool,
    next_psn: AtomicU32,
    peer: SocketAddr,
    peer_name: String,
    remote_qpn: u32,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Link({} qpn {:#x})", self.peer, self.remote_qpn)
    }
}

fn stalled(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what}: peer stalled for {WIRE_STALL_MS} ms"),
    )
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

impl Link {
    /// `node-name (ip:port)`.
    pub fn peer_name(&self) -> String {
        format!("{} ({})", self.peer_name, self.peer)
    }

    pub(crate) fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn write_all(&self, b: &[u8]) -> std::io::Result<()> {
        (&self.stream).write_all(b).map_err(|e| if is_timeout(&e) { stalled("write") } else { e })
    }

    fn write_from_pool(&self, pool: &Pool, at: PoolOffset, len: u64) -> std::io::Result<()> {
        let mut done = 0u64;
        while done < len {
            match pool.write_to_fd(
                self.stream.as_fd(),
                PoolOffset::new(at.raw() + done),
                len - done,
            ) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n as u64,
                Err(e) if e.errno() == pinwheel_mm::Errno::EINTR => {}
                Err(e) if e.errno() == pinwheel_mm::Errno::EAGAIN => return Err(stalled("write")),
                Err(e) => return Err(std::io::Error::from_raw_os_error(e.errno().code())),
            }
        }
        Ok(())
    }

    fn read_into_pool(&self, pool: &Pool, at: PoolOffset, len: u64) -> std::io::Result<()> {
        let mut done = 0u64;
        while done < len {
            match pool.read_from_fd(
                self.stream.as_fd(),
                PoolOffset::new(at.raw() + done),
                len - done,
            ) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n as u64,
                Err(e) if e.errno() == pinwheel_mm::Errno::EINTR => {}
                Err(e) if e.errno() == pinwheel_mm::Errno::EAGAIN => return Err(stalled("read")),
                Err(e) => return Err(std::io::Error::from_raw_os_error(e.errno().code())),
            }
        }
        Ok(())
    }

    fn read_exact(&self, b: &mut [u8]) -> std::io::Result<()> {
        (&self.stream).read_exact(b).map_err(|e| if is_timeout(&e) { stalled("read") } else { e })
    }

    fn discard(&self, mut n: u64) -> std::io::Result<()> {
        let mut scratch = [0u8; 8192];
        while n > 0 {
            let k = n.min(scratch.len() as u64) as usize;
            self.read_exact(&mut scratch[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Waits for the next header; idle time is fine, a stall inside a header is not.
    fn read_header(&self) -> std::io::Result<Option<[u8; HEADER]>> {
        let mut b = [0u8; HEADER];
        let mut got = 0;
        while got < HEADER {
            match (&self.stream).read(&mut b[got..]) {
                Ok(0) => return Ok(None),
                Ok(n) => got += n,
                Err(e) if is_timeout(&e) && got == 0 => {
                    if self.closed() {
                        return Ok(None);
                    }
                }
                Err(e) if is_timeout(&e) => return Err(stalled("header")),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(b))
    }

    fn send_header(&self, h: &Header) -> std::io::Result<()> {
        let _w = self.write_lock.lock();
        self.write_all(&h.encode())
    }

    /// Closes the connection: the QP goes to ERR, pending requests fail.
    pub(crate) fn fail(&self, why: &str) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!(peer = %self.peer, why, "connection closed");
        let _ = self.stream.shutdown(Shutdown::Both);
        let pending: Vec<Pending> = self.pending.lock().drain(..).collect();
        if let Some(qp) = self.qp.lock().upgrade() {
            for p in pending {
                engine::complete_send(&qp, p.wr_id, p.opcode, p.signaled, WcStatus::RetryExcErr, 0);
            }
            let mut c = qp.core.lock();
            qp.to_error(&mut c, why);
        }
    }

    fn kick_waiter(&self) {
        if let Some(w) = self.waiting.lock().take()
            && let Some(q) = w.upgrade()
        {
            q.dev().kick(w);
        }
    }
}

fn pool_of(mr: &MrInner) -> &Pool {
    mr.dev().mem.pool()
}

/// Streams spans into the socket (inside each entered MR).
fn write_spans(link: &Link, spans: &[Span]) -> Result<(), String> {
    for s in spans {
        match s {
            Span::Bytes(b) => link.write_all(b).map_err(|e| e.to_string())?,
            Span::Mr { mr, off, len, .. } => loop {
                match mr.dma(*off, *len, false, |p, l| link.write_from_pool(pool_of(mr), p, l)) {
                    Ok(()) => break,
                    Err(DmaError::Held) => {
                        mr.wait_coherent();
                    }
                    Err(DmaError::Copy(e)) => return Err(e.to_string()),
                    Err(_) => {
                        return Err(format!(
                            "MR {:#x} became unusable in the middle of a transfer",
                            mr.key
                        ));
                    }
                }
            },
        }
    }
    Ok(())
}

/// Reads `len` payload bytes from the socket into spans. `Ok(Err(status))`: a span could not
/// be used (the rest of the payload was discarded).
fn read_spans(link: &Link, spans: &[Span], len: u64) -> std::io::Result<Result<(), WcStatus>> {
    let mut left = len;
    for s in spans {
        if left == 0 {
            break;
        }
        let Span::Mr { mr, off, len: slen, remote } = s else { continue };
        let n = (*slen).min(left);
        loop {
            match mr.dma(*off, n, true, |p, l| link.read_into_pool(pool_of(mr), p, l)) {
                Ok(()) => break,
                Err(DmaError::Held) => {
                    mr.wait_coherent();
                }
                Err(DmaError::Copy(e)) => return Err(e),
                Err(_) => {
                    link.discard(left)?;
                    return Ok(Err(if *remote {
                        WcStatus::RemAccessErr
                    } else {
                        WcStatus::LocProtErr
                    }));
                }
            }
        }
        left -= n;
    }
    if left > 0 {
        link.discard(left)?;
        return Ok(Err(WcStatus::LocLenErr));
    }
    Ok(Ok(()))
}

/// Sends a request for `wr` on `link` (the initiator side). Called by the engine.
pub(crate) fn send(qp: &Arc<QpInner>, wr: &SendWr, link: &Arc<Link>) -> Outcome {
    if link.closed() {
        return Outcome::Done(WcStatus::RetryExcErr, 0);
    }
    if link.pending.lock().len() >= qp.caps.max_send_wr as usize {
        *link.waiting.lock() = Some(Arc::downgrade(qp));
        if link.pending.lock().len() >= qp.caps.max_send_wr as usize {
            return Outcome::Busy;
        }
    }
    let len = wr.length();
    if len > crate::limits::MAX_MSG {
        return Outcome::Done(WcStatus::LocLenErr, 0);
    }
    let (kind, src, dst) = match wr.opcode {
        Opcode::Write | Opcode::WriteWithImm | Opcode::Send | Opcode::SendWithImm => {
            let src = match &wr.inline_data {
                Some(d) => vec![Span::Bytes(d.clone())],
                None => match wr
                    .sg_list
                    .iter()
                    .filter(|s| s.length > 0)
                    .map(|s| engine::local_span(qp, s, false))
                    .collect::<Result<Vec<_>, _>>()
                {
                    Ok(v) => v,
                    Err(s) => return Outcome::Done(s, 0),
                },
            };
            let kind = match wr.opcode {
                Opcode::Write => Kind::Write,
                Opcode::WriteWithImm => Kind::WriteImm,
                Opcode::Send => Kind::Send,
                _ => Kind::SendImm,
            };
            (kind, src, Vec::new())
        }
        Opcode::Read | Opcode::CompareSwap | Opcode::FetchAdd => {
            if wr.opcode.atomic() && (wr.sg_list.len() != 1 || wr.sg_list[0].length != 8) {
                return Outcome::Done(WcStatus::LocLenErr, 0);
            }
            let dst = match wr
                .sg_list
                .iter()
                .filter(|s| s.length > 0)
                .map(|s| engine::local_span(qp, s, true))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(v) => v,
                Err(s) => return Outcome::Done(s, 0),
            };
            let kind = match wr.opcode {
                Opcode::Read => Kind::ReadReq,
                Opcode::CompareSwap => Kind::CompareSwap,
                _ => Kind::FetchAdd,
            };
            (kind, Vec::new(), dst)
        }
    };
    // A local source that is decoherent now: hold before anything is on the wire.
    for s in &src {
        if let Span::Mr { mr, .. } = s
            && mr.state() == MrState::Decoherent
        {
            return Outcome::Held(Arc::clone(mr));
        }
    }
    let psn = link.next_psn.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
    let rnr_retry = qp.core.lock().attr.rnr_retry;
    let h = Header {
        kind,
        status: rnr_retry,
        psn,
        rkey: wr.rkey.0,
        addr: wr.remote_addr,
        len: len as u32,
        imm: wr.imm,
        a: wr.compare_add,
        b: wr.swap,
    };
    link.pending.lock().push_back(Pending {
        wr_id: wr.wr_id,
        opcode: wr.opcode,
        signaled: wr.signaled,
        psn,
        len: len as u32,
        dst,
    });
    let r = {
        let _w = link.write_lock.lock();
        link.write_all(&h.encode())
            .map_err(|e| e.to_string())
            .and_then(|()| write_spans(link, &src))
    };
    if let Err(e) = r {
        link.fail(&e);
        return Outcome::Posted;
    }
    qp.dev()
        .counters
        .bytes_written
        .fetch_add(if kind.has_payload() { len } else { 0 }, Ordering::Relaxed);
    Outcome::Posted
}

/// Waits for a receive at `qp` for an incoming SEND / WRITE_WITH_IMM (rnr_retry 7: as long as
/// the connection lives; fewer: 10 ms a retry).
fn wait_recv(link: &Link, qp: &QpInner, rnr_retry: u8) -> Option<crate::wr::RecvWr> {
    let deadline = if rnr_retry >= 7 {
        None
    } else {
        Some(Instant::now() + Duration::from_millis(10 * u64::from(rnr_retry)))
    };
    loop {
        if let Some(r) = qp.take_recv(&mut qp.core.lock()) {
            return Some(r);
        }
        if link.closed() || deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Serves one request from the peer against this node's pool. `Err`: the connection is broken.
fn serve(link: &Link, qp: &Arc<QpInner>, h: Header) -> std::io::Result<()> {
    let len = u64::from(h.len);
    let (state, access) = {
        let c = qp.core.lock();
        (c.state, c.attr.qp_access_flags)
    };
    let nak = |status: WcStatus| {
        let mut r = Header::new(Kind::Nak);
        r.psn = h.psn;
        r.status = status as u8;
        link.send_header(&r)
    };
    if !matches!(state, QpState::Rtr | QpState::Rts | QpState::Sqd) {
        if h.kind.has_payload() {
            link.discard(len)?;
        }
        return nak(WcStatus::RemOpErr);
    }
    let refuse = |status: WcStatus| -> std::io::Result<()> {
        engine::responder_error(qp, status);
        nak(status)
    };
    match h.kind {
        Kind::Write | Kind::WriteImm => {
            let recv = if h.kind == Kind::WriteImm {
                match wait_recv(link, qp, h.status) {
                    Some(r) => Some(r),
                    None => {
                        link.discard(len)?;
                        return nak(WcStatus::RnrRetryExcErr);
                    }
                }
            } else {
                None
            };
            let span =
                match engine::remote_span(qp, access, h.rkey, h.addr, len, Access::REMOTE_WRITE) {
                    Ok(s) => s,
                    Err(s) => {
                        if let Some(r) = recv {
                            engine::give_back_recv(qp, r);
                        }
                        link.discard(len)?;
                        return refuse(s);
                    }
                };
            match read_spans(link, &[span], len)? {
                Ok(()) => {
                    qp.dev().counters.bytes_written.fetch_add(len, Ordering::Relaxed);
                    let mut a = Header::new(Kind::Ack);
                    a.psn = h.psn;
                    link.send_header(&a)?;
                    if let Some(r) = recv {
                        engine::complete_recv(
                            qp,
                            &r,
                            WcStatus::Success,
                            h.len,
                            Some((h.imm, true)),
                        );
                    }
                    Ok(())
                }
                Err(s) => {
                    if let Some(r) = recv {
                        engine::give_back_recv(qp, r);
                    }
                    refuse(s)
                }
            }
        }
        Kind::Send | Kind::SendImm => {
            let Some(r) = wait_recv(link, qp, h.status) else {
                link.discard(len)?;
                return nak(WcStatus::RnrRetryExcErr);
            };
            let cap: u64 = r.sg_list.iter().map(|s| u64::from(s.length)).sum();
            let spans = match r
                .sg_list
                .iter()
                .filter(|s| s.length > 0)
                .map(|s| engine::local_span(qp, s, true))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(v) if cap >= len => v,
                Ok(_) => {
                    link.discard(len)?;
                    engine::complete_recv(qp, &r, WcStatus::LocLenErr, 0, None);
                    return refuse(WcStatus::RemInvReqErr);
                }
                Err(_) => {
                    link.discard(len)?;
                    engine::complete_recv(qp, &r, WcStatus::LocProtErr, 0, None);
                    return refuse(WcStatus::RemOpErr);
                }
            };
            match read_spans(link, &spans, len)? {
                Ok(()) => {
                    let mut a = Header::new(Kind::Ack);
                    a.psn = h.psn;
                    link.send_header(&a)?;
                    let imm = (h.kind == Kind::SendImm).then_some((h.imm, false));
                    engine::complete_recv(qp, &r, WcStatus::Success, h.len, imm);
                    Ok(())
                }
                Err(s) => {
                    engine::complete_recv(qp, &r, s, 0, None);
                    refuse(WcStatus::RemOpErr)
                }
            }
        }
        Kind::ReadReq => {
            let span =
                match engine::remote_span(qp, access, h.rkey, h.addr, len, Access::REMOTE_READ) {
                    Ok(s) => s,
                    Err(s) => return refuse(s),
                };
            let Span::Mr { mr, off, .. } = &span else { return refuse(WcStatus::GeneralErr) };
            loop {
                if mr.state() == MrState::Decoherent {
                    mr.wait_coherent();
                }
                let mut resp = Header::new(Kind::ReadResp);
                resp.psn = h.psn;
                resp.len = h.len;
                let _w = link.write_lock.lock();
                let mut header_sent = false;
                let r = mr.dma(*off, len, false, |p, l| {
                    if !header_sent {
                        link.write_all(&resp.encode())?;
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
                        drop(_w);
                        return refuse(WcStatus::RemAccessErr);
                    }
                }
            }
        }
        Kind::CompareSwap | Kind::FetchAdd => {
            if !h.addr.is_multiple_of(8) {
                return refuse(WcStatus::RemInvReqErr);
            }
            let span =
                match engine::remote_span(qp, access, h.rkey, h.addr, 8, Access::REMOTE_ATOMIC) {
                    Ok(s) => s,
                    Err(s) => return refuse(s),
                };
            let op =
                if h.kind == Kind::CompareSwap { Opcode::CompareSwap } else { Opcode::FetchAdd };
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
                    Err(Fail::Status(s)) => return refuse(s),
                }
            }
        }
        _ => Err(std::io::Error::other(format!("unexpected {:?} frame", h.kind))),
    }
}

/// Completes this side's oldest request with the response `h`.
fn respond(link: &Link, qp: &Arc<QpInner>, h: Header) -> std::io::Result<()> {
    let Some(p) = link.pending.lock().pop_front() else {
        return Err(std::io::Error::other(format!("unsolicited {:?}", h.kind)));
    };
    if p.psn != h.psn {
        return Err(std::io::Error::other(format!(
            "response for psn {} while {} is outstanding",
            h.psn, p.psn
        )));
    }
    let status = match h.kind {
        Kind::Ack => WcStatus::Success,
        Kind::Nak => WcStatus::from_u8(h.status)
            .filter(|s| *s != WcStatus::Success)
            .unwrap_or(WcStatus::BadRespErr),
        Kind::ReadResp if p.opcode == Opcode::Read => {
            if h.len != p.len {
                link.discard(u64::from(h.len))?;
                WcStatus::BadRespErr
            } else {
                match read_spans(link, &p.dst, u64::from(h.len))? {
                    Ok(()) => {
                        qp.dev().counters.bytes_read.fetch_add(u64::from(h.len), Ordering::Relaxed);
                        WcStatus::Success
                    }
                    Err(s) => s,
                }
            }
        }
        Kind::AtomicResp if p.opcode.atomic() => {
            match p.dst.first().map(|d| engine::store_u64(d, h.a)) {
                Some(Ok(())) => WcStatus::Success,
                Some(Err(Fail::Held(mr))) => {
                    mr.wait_coherent();
                    match engine::store_u64(&p.dst[0], h.a) {
                        Ok(()) => WcStatus::Success,
                        Err(_) => WcStatus::LocProtErr,
                    }
                }
                _ => WcStatus::LocProtErr,
            }
        }
        k => {
            if k.has_payload() {
                link.discard(u64::from(h.len))?;
            }
            WcStatus::BadRespErr
        }
    };
    let n = if status == WcStatus::Success { p.len } else { 0 };
    engine::complete_send(qp, p.wr_id, p.opcode, p.signaled, status, n);
    link.kick_waiter();
    Ok(())
}

fn reader(link: Arc<Link>) {
    let why = loop {
        let hb = match link.read_header() {
            Ok(Some(b)) => b,
            Ok(None) => break "connection closed by the peer".to_string(),
            Err(e) => break e.to_string(),
        };
        let h = match Header::decode(&hb) {
            Ok(h) => h,
            Err(e) => break format!("malformed frame: {e}"),
        };
        let Some(qp) = link.qp.lock().upgrade() else { break "QP destroyed".to_string() };
        let r = if h.kind == Kind::Hello {
            Err(std::io::Error::other("HELLO on an established connection"))
        } else if h.kind.is_request() {
            serve(&link, &qp, h)
        } else {
            respond(&link, &qp, h)
        };
        if let Err(e) = r {
            break e.to_string();
        }
    };
    link.fail(&why);
}

fn setup_socket(s: &TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_millis(WIRE_STALL_MS)))?;
    s.set_write_timeout(Some(Duration::from_millis(WIRE_STALL_MS)))?;
    Ok(())
}

fn handshake(stream: &TcpStream, mine: &Hello, deadline: Instant) -> Result<Hello, String> {
    stream
        .set_read_timeout(Some(
            deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
        ))
        .map_err(|e| e.to_string())?;
    (&*stream).write_all(&mine.encode()).map_err(|e| format!("sending hello: {e}"))?;
    let mut hb = [0u8; HEADER];
    (&*stream).read_exact(&mut hb).map_err(|e| format!("reading hello: {e}"))?;
    let h = Header::decode(&hb)?;
    if h.kind != Kind::Hello {
        return Err(format!("expected HELLO, got {:?}", h.kind));
    }
    let mut body = vec![0u8; h.len as usize];
    (&*stream).read_exact(&mut body).map_err(|e| format!("reading hello: {e}"))?;
    Hello::decode(&body)
}

fn establish(
    qp: &QueuePair,
    stream: TcpStream,
    remote: Hello,
    access: Access,
    psn: u32,
) -> VerbsResult<()> {
    setup_socket(&stream).map_err(|e| VerbsError::io("socket options", &e))?;
    let peer = stream.peer_addr().map_err(|e| VerbsError::io("peer address", &e))?;
    let link = Arc::new(Link {
        stream,
        write_lock: Mutex::new(()),
        qp: Mutex::new(Arc::downgrade(&qp.0)),
        pending: Mutex::new(VecDeque::new()),
        waiting: Mutex::new(None),
        closed: AtomicBool::new(false),
        next_psn: AtomicU32::new(psn),
        peer,
        peer_name: remote.name.clone(),
        remote_qpn: remote.qpn,
    });
    let init = QpAttr { qp_state: QpState::Init, qp_access_flags: access, ..QpAttr::default() };
    qp.modify(
        &init,
        QpAttrMask::STATE | QpAttrMask::PKEY_INDEX | QpAttrMask::PORT | QpAttrMask::ACCESS_FLAGS,
    )?;
    let rtr = QpAttr {
        qp_state: QpState::Rtr,
        dest_qp_num: Qpn(remote.qpn),
        rq_psn: crate::types::Psn(remote.psn),
        ah: AddressHandle::Remote(Arc::clone(&link)),
        ..QpAttr::default()
    };
    qp.modify(
        &rtr,
        QpAttrMask::STATE
            | QpAttrMask::AV
            | QpAttrMask::PATH_MTU
            | QpAttrMask::DEST_QPN
            | QpAttrMask::RQ_PSN
            | QpAttrMask::MAX_DEST_RD_ATOMIC
            | QpAttrMask::MIN_RNR_TIMER,
    )?;
    let l2 = Arc::clone(&link);
    std::thread::Builder::new()
        .name(format!("pw-link-{:x}", qp.0.qpn))
        .spawn(move || reader(l2))
        .map_err(|e| VerbsError::io("reader thread", &e))?;
    let rts =
        QpAttr { qp_state: QpState::Rts, sq_psn: crate::types::Psn(psn), ..QpAttr::default() };
    qp.modify(
        &rts,
        QpAttrMask::STATE
            | QpAttrMask::SQ_PSN
            | QpAttrMask::TIMEOUT
            | QpAttrMask::RETRY_CNT
            | QpAttrMask::RNR_RETRY
            | QpAttrMask::MAX_QP_RD_ATOMIC,
    )?;
    Ok(())
}

/// Listens for connections from other nodes.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    dev: Device,
}

impl Device {
    /// Listens on `addr` (`host:port`; port 0 picks one).
    pub fn listen(&self, addr: &str) -> VerbsResult<Listener> {
        let listener =
            TcpListener::bind(addr).map_err(|e| VerbsError::io(format!("listen on {addr}"), &e))?;
        listener.set_nonblocking(true).map_err(|e| VerbsError::io("listen", &e))?;
        Ok(Listener { listener, dev: self.clone() })
    }
}

impl Listener {
    /// The address listened on.
    pub fn local_addr(&self) -> VerbsResult<SocketAddr> {
        self.listener.local_addr().map_err(|e| VerbsError::io("local address", &e))
    }

    /// Accepts one connection within `timeout`: creates a QP in `pd`, exchanges HELLOs (the
    /// peer's private data is returned, `private` is sent), and brings the QP to RTS.
    pub fn accept(
        &self,
        pd: &ProtectionDomain,
        init: QpInitAttr,
        access: Access,
        private: &[u8],
        timeout: Duration,
    ) -> VerbsResult<(QueuePair, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(VerbsError::TimedOut("accept".into()));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(VerbsError::io("accept", &e)),
            }
        };
        stream.set_nonblocking(false).map_err(|e| VerbsError::io("accept", &e))?;
        let qp = pd.create_qp(init)?;
        let psn = 1;
        let mine =
            Hello { qpn: qp.0.qpn, psn, name: self.dev.0.name.clone(), private: private.to_vec() };
        let remote = handshake(&stream, &mine, deadline).map_err(|e| VerbsError::Transport {
            what: format!("accept: {e}"),
            errno: pinwheel_mm::Errno::EPROTO,
        })?;
        establish(&qp, stream, remote.clone(), access, psn)?;
        Ok((qp, remote.private))
    }
}

impl ProtectionDomain {
    /// Connects to a listening node: creates a QP, exchanges HELLOs (sending `private`,
    /// returning the peer's), and brings the QP to RTS.
    pub fn connect(
        &self,
        addr: &str,
        init: QpInitAttr,
        access: Access,
        private: &[u8],
        timeout: Duration,
    ) -> VerbsResult<(QueuePair, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        let sa = addr
            .to_socket_addrs()
            .map_err(|e| VerbsError::io(format!("resolve {addr}"), &e))?
            .next()
            .ok_or_else(|| VerbsError::invalid(format!("{addr}: no address")))?;
        let stream = TcpStream::connect_timeout(&sa, timeout)
            .map_err(|e| VerbsError::io(format!("connect {addr}"), &e))?;
        let qp = self.create_qp(init)?;
        let psn = 1;
        let mine = Hello {
            qpn: qp.0.qpn,
            psn,
            name: self.0.ctx.dev.name.clone(),
            private: private.to_vec(),
        };
        let remote = handshake(&stream, &mine, deadline).map_err(|e| VerbsError::Transport {
            what: format!("connect {addr}: {e}"),
            errno: pinwheel_mm::Errno::EPROTO,
        })?;
        establish(&qp, stream, remote.clone(), access, psn)?;
        Ok((qp, remote.private))
    }
}
