//! The TCP transport between nodes (separate OS processes): a connection (`Link`), the
//! requester (`send`), the completer (`respond`) and the reader thread. The peer's requests are
//! served by `responder.rs`; connections are set up by `cm.rs`.
//!
//! - The initiator writes a request header and streams the payload from its pool frames
//!   straight into the socket (`write(2)` from the pool mapping: no staging copy), without
//!   waiting for the response (pipelined up to the send-queue depth).
//! - Each connection has a reader thread. It serves the peer's requests against this node's
//!   pool (`responder.rs`) — payloads go from the socket straight into the target frames,
//!   inside the entered MR — and completes this side's requests when their responses arrive,
//!   in order (RC).
//! - A transfer to a decoherent MR is held by blocking this connection's reader (only this QP's
//!   stream stalls) until the MR is restored or revoked.
//! - Anything malformed or out of order closes the connection: the QP goes to ERR, outstanding
//!   requests complete with `RETRY_EXC_ERR` (`WR_FLUSH_ERR` if the QP already was in ERR) then
//!   queued ones with `WR_FLUSH_ERR`. Only the reader completes requests, so they complete in
//!   order even when another thread closes the connection.
//! - Every frame has a deadline: `WIRE_STALL_MS` plus its payload at `WIRE_RATE_MIN`, and a
//!   payload enters an MR `WIRE_CHUNK` bytes at a time, each chunk with a deadline of its own.
//!   A peer that stalls or trickles is cut off, so no MR stays in flight because of it
//!   (invalidations and revocations wait for transfers in flight).
//! - Destroying the QP, or moving it to RESET or ERR, shuts the socket down: the reader threads
//!   of both sides exit and the peer's QP goes to ERR, as after an rdma_cm disconnect. So does a
//!   peer hanging up while its request waits for a receive here.

use std::collections::VecDeque;
use std::fmt;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pinwheel_mm::{Pool, PoolOffset};
use rustix::event::{PollFd, PollFlags, Timespec};

use crate::engine::{self, Fail, Outcome, Side, Span};
use crate::limits::{WIRE_CHUNK, WIRE_RATE_MIN, WIRE_STALL_MS};
use crate::mr::{DmaError, MrInner, MrState};
use crate::qp::{Peer, QpInner};
use crate::transport::responder;
use crate::transport::wire::{HEADER, Header, Kind};
use crate::types::{Opcode, QpState, WcStatus};
use crate::wr::SendWr;

/// A request sent and not answered yet.
struct Pending {
    wr_id: u64,
    opcode: Opcode,
    signaled: bool,
    psn: u32,
    len: u32,
    dst: Vec<Span>,
}

/// The requests outstanding on a connection, oldest first.
struct Outstanding {
    q: VecDeque<Pending>,
    /// The reader failed them all: nothing may be queued any more.
    failed: bool,
    /// PSNs of requests flushed behind an error completion whose responses may still arrive
    /// (the peer answers what was already on the wire); those responses are dropped.
    flushed: VecDeque<u32>,
}

/// The reader's clock (only the reader thread reads the socket).
struct ReadClock {
    /// When the frame being read must be complete.
    frame: Instant,
    /// The socket's read timeout now (shortened near a deadline).
    timeout: Duration,
}

/// A connection to a QP of another node.
pub struct Link {
    stream: TcpStream,
    pub(super) write_lock: Mutex<()>,
    qp: Mutex<Weak<QpInner>>,
    pending: Mutex<Outstanding>,
    waiting: Mutex<Option<Weak<QpInner>>>,
    closed: AtomicBool,
    clock: Mutex<ReadClock>,
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

const STALL: Duration = Duration::from_millis(WIRE_STALL_MS);
/// Shortest read timeout set near a deadline (zero means "none" to the socket).
const TIMEOUT_MIN: Duration = Duration::from_millis(1);
/// How often a wait for a receive looks at the queue and at the socket.
pub(super) const RNR_POLL: Duration = Duration::from_micros(200);

/// The time a frame piece of `len` payload bytes has to arrive.
fn budget(len: u64) -> Duration {
    STALL + Duration::from_millis(len.saturating_mul(1000) / WIRE_RATE_MIN)
}

fn stalled(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "{what}: peer stalled (silent for {WIRE_STALL_MS} ms, or slower than \
             {WIRE_RATE_MIN} bytes/s)"
        ),
    )
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

impl Link {
    /// A connection over `stream` (its timeouts set to `WIRE_STALL_MS`) for `qp`.
    pub(crate) fn new(
        stream: TcpStream,
        qp: &Arc<QpInner>,
        remote_qpn: u32,
        peer_name: String,
        psn: u32,
    ) -> std::io::Result<Link> {
        let peer = stream.peer_addr()?;
        Ok(Link {
            stream,
            write_lock: Mutex::new(()),
            qp: Mutex::new(Arc::downgrade(qp)),
            pending: Mutex::new(Outstanding {
                q: VecDeque::new(),
                failed: false,
                flushed: VecDeque::new(),
            }),
            waiting: Mutex::new(None),
            closed: AtomicBool::new(false),
            clock: Mutex::new(ReadClock { frame: Instant::now(), timeout: STALL }),
            next_psn: AtomicU32::new(psn),
            peer,
            peer_name,
            remote_qpn,
        })
    }

    /// `node-name (ip:port)`.
    pub fn peer_name(&self) -> String {
        format!("{} ({})", self.peer_name, self.peer)
    }

    pub(crate) fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(super) fn write_all(&self, b: &[u8]) -> std::io::Result<()> {
        (&self.stream).write_all(b).map_err(|e| if is_timeout(&e) { stalled("write") } else { e })
    }

    /// Writes the header of a frame whose payload follows at once (`MSG_MORE`): on a
    /// `TCP_NODELAY` socket the 48 bytes would otherwise leave as a segment of their own, one
    /// more packet and one more wake-up of the peer per request.
    pub(super) fn write_header_more(&self, b: &[u8]) -> std::io::Result<()> {
        let flags = rustix::net::SendFlags::MORE | rustix::net::SendFlags::NOSIGNAL;
        let mut done = 0;
        while done < b.len() {
            match rustix::net::send(&self.stream, &b[done..], flags) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return Err(stalled("write")),
                Err(e) => return Err(std::io::Error::from_raw_os_error(e.raw_os_error())),
            }
        }
        Ok(())
    }

    pub(super) fn write_from_pool(
        &self,
        pool: &Pool,
        at: PoolOffset,
        len: u64,
    ) -> std::io::Result<()> {
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

    /// Starts the deadline of a frame with `len` payload bytes still to come (after its
    /// header, and again after a wait of this node's: a hold, a wait for a receive).
    pub(super) fn arm(&self, len: u64) {
        self.clock.lock().frame = Instant::now() + budget(len);
    }

    fn frame_deadline(&self) -> Instant {
        self.clock.lock().frame
    }

    /// Before a read that must be over by `until`: fails once it has passed, and keeps the
    /// socket's read timeout from outlasting it. A deadline, not a timeout per read, so a
    /// peer trickling a byte now and then is cut off all the same.
    fn before_read(&self, until: Instant) -> std::io::Result<()> {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(stalled("read"));
        }
        let t = left.max(TIMEOUT_MIN);
        let mut c = self.clock.lock();
        if t < c.timeout {
            self.stream.set_read_timeout(Some(t))?;
            c.timeout = t;
        }
        Ok(())
    }

    /// Back to the idle timeout between frames.
    fn reset_read_timeout(&self) -> std::io::Result<()> {
        let mut c = self.clock.lock();
        if c.timeout != STALL {
            self.stream.set_read_timeout(Some(STALL))?;
            c.timeout = STALL;
        }
        Ok(())
    }

    fn read_into_pool(
        &self,
        pool: &Pool,
        at: PoolOffset,
        len: u64,
        until: Instant,
    ) -> std::io::Result<()> {
        let mut done = 0u64;
        while done < len {
            self.before_read(until)?;
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

    fn read_exact(&self, b: &mut [u8], until: Instant) -> std::io::Result<()> {
        let mut got = 0;
        while got < b.len() {
            self.before_read(until)?;
            match (&self.stream).read(&mut b[got..]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(stalled("read")),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads and drops `n` payload bytes of the current frame.
    pub(super) fn discard(&self, mut n: u64) -> std::io::Result<()> {
        let until = self.frame_deadline();
        let mut scratch = [0u8; 8192];
        while n > 0 {
            let k = n.min(scratch.len() as u64) as usize;
            self.read_exact(&mut scratch[..k], until)?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Waits for the next header; idle time is fine, a header trickling in for longer than
    /// `WIRE_STALL_MS` is not.
    fn read_header(&self) -> std::io::Result<Option<[u8; HEADER]>> {
        self.reset_read_timeout()?;
        let mut b = [0u8; HEADER];
        let mut got = 0;
        let mut until = None;
        while got < HEADER {
            if let Some(u) = until {
                self.before_read(u)?;
            }
            match (&self.stream).read(&mut b[got..]) {
                Ok(0) => return Ok(None),
                Ok(n) => {
                    got += n;
                    until.get_or_insert_with(|| Instant::now() + STALL);
                }
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

    /// True if the peer hung up (or the socket failed), waiting up to `wait` for it. The
    /// payload of the request being served may still be unread, so a read cannot tell:
    /// `POLLRDHUP` does.
    pub(super) fn hung_up(&self, wait: Duration) -> bool {
        let mut fds = [PollFd::new(&self.stream, PollFlags::RDHUP)];
        let t = Timespec::try_from(wait).ok();
        match rustix::event::poll(&mut fds, t.as_ref()) {
            Ok(0) => false,
            Ok(_) => fds[0]
                .revents()
                .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL),
            Err(_) => {
                std::thread::sleep(wait);
                false
            }
        }
    }

    pub(super) fn send_header(&self, h: &Header) -> std::io::Result<()> {
        let _w = self.write_lock.lock();
        self.write_all(&h.encode())
    }

    /// Closes the connection (any thread; takes no lock): later sends fail at once, the
    /// reader wakes up, fails what is outstanding and exits, and the peer sees the
    /// disconnect.
    pub(crate) fn close(&self, why: &str) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!(peer = %self.peer, why, "connection closed");
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// The reader's end: closes the connection, fails the outstanding requests in order and
    /// moves the QP to ERR — if the QP still uses this connection (one reset since discarded
    /// its work without completions).
    fn fail(&self, why: &str) {
        self.close(why);
        let pending: Vec<Pending> = {
            let mut o = self.pending.lock();
            o.failed = true;
            o.q.drain(..).collect()
        };
        let Some(qp) = self.qp.lock().upgrade() else { return };
        let mut c = qp.core.lock();
        if !matches!(&c.peer, Peer::Remote(l) if std::ptr::eq(Arc::as_ptr(l), self)) {
            return;
        }
        let status =
            if c.state == QpState::Error { WcStatus::WrFlushErr } else { WcStatus::RetryExcErr };
        for p in pending {
            engine::complete_send_locked(&qp, &mut c, p.wr_id, p.opcode, p.signaled, status, 0);
        }
        qp.to_error(&mut c, why);
    }

    fn kick_waiter(&self) {
        if let Some(w) = self.waiting.lock().take()
            && let Some(q) = w.upgrade()
        {
            q.dev().kick(w);
        }
    }
}

pub(super) fn pool_of(mr: &MrInner) -> &Pool {
    mr.dev().mem.pool()
}

/// The status of a span's owner when the span cannot be used: a target named by an rkey is a
/// remote access error; a buffer of the node's own (a receive, a READ's destination) a local
/// protection error.
fn unusable(side: Side) -> WcStatus {
    if side == Side::Target { WcStatus::RemAccessErr } else { WcStatus::LocProtErr }
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

/// Reads `len` payload bytes from the socket into spans, entering each MR for at most
/// `WIRE_CHUNK` bytes at a time. `Ok(Err(status))`: a span could not be used (the rest of the
/// payload was discarded).
pub(super) fn read_spans(
    link: &Link,
    spans: &[Span],
    len: u64,
) -> std::io::Result<Result<(), WcStatus>> {
    let mut left = len;
    for s in spans {
        if left == 0 {
            break;
        }
        let Span::Mr { mr, off, len: slen, side } = s else { continue };
        let n = (*slen).min(left);
        let mut done = 0;
        while done < n {
            let k = (n - done).min(WIRE_CHUNK);
            let until = link.frame_deadline().min(Instant::now() + budget(k));
            let mut got = 0;
            let r = mr.dma(off + done, k, true, |p, l| {
                link.read_into_pool(pool_of(mr), p, l, until)?;
                got += l;
                Ok(())
            });
            match r {
                Ok(()) => done += k,
                Err(DmaError::Held) => {
                    mr.wait_coherent();
                    link.arm(left - done);
                }
                Err(DmaError::Copy(e)) => return Err(e),
                Err(_) => {
                    link.discard(left - done - got)?;
                    return Ok(Err(unusable(*side)));
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

/// The spans of the local side of `wr`: its source (WRITE, SEND) or destination (READ,
/// atomics).
fn local_side(qp: &QpInner, wr: &SendWr) -> Result<(Kind, Vec<Span>, Vec<Span>), WcStatus> {
    let spans = |need_write: bool| {
        wr.sg_list
            .iter()
            .filter(|s| s.length > 0)
            .map(|s| engine::local_span(qp, s, need_write))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match wr.opcode {
        Opcode::Write | Opcode::WriteWithImm | Opcode::Send | Opcode::SendWithImm => {
            let src = match &wr.inline_data {
                Some(d) => vec![Span::Bytes(d.clone())],
                None => spans(false)?,
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
                return Err(WcStatus::LocLenErr);
            }
            let kind = match wr.opcode {
                Opcode::Read => Kind::ReadReq,
                Opcode::CompareSwap => Kind::CompareSwap,
                _ => Kind::FetchAdd,
            };
            (kind, Vec::new(), spans(true)?)
        }
    })
}

/// Sends a request for `wr` on `link` (the initiator side). Called by the engine.
pub(crate) fn send(qp: &Arc<QpInner>, wr: &SendWr, link: &Arc<Link>) -> Outcome {
    if link.closed() {
        // The requests on the wire complete first: until the reader has failed them, this one
        // waits in the send queue (the QP's move to ERR flushes it behind them).
        if !link.pending.lock().failed {
            return Outcome::Busy;
        }
        return Outcome::Done(WcStatus::RetryExcErr, 0);
    }
    if link.pending.lock().q.len() >= qp.caps.max_send_wr as usize {
        *link.waiting.lock() = Some(Arc::downgrade(qp));
        if link.pending.lock().q.len() >= qp.caps.max_send_wr as usize {
            return Outcome::Busy;
        }
    }
    let len = wr.length();
    if len > crate::limits::MAX_MSG {
        return Outcome::Done(WcStatus::LocLenErr, 0);
    }
    let (kind, src, dst) = match local_side(qp, wr) {
        Ok(t) => t,
        Err(s) => return Outcome::Done(s, 0),
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
    {
        // Queued under the same lock the reader's failure takes: either the reader fails this
        // request with the others, or it is not queued at all.
        let mut o = link.pending.lock();
        if o.failed {
            return Outcome::Done(WcStatus::RetryExcErr, 0);
        }
        let (wr_id, opcode, signaled) = (wr.wr_id, wr.opcode, wr.signaled);
        o.q.push_back(Pending { wr_id, opcode, signaled, psn, len: len as u32, dst });
    }
    let r = {
        let _w = link.write_lock.lock();
        let header = if src.is_empty() {
            link.write_all(&h.encode())
        } else {
            link.write_header_more(&h.encode())
        };
        header.map_err(|e| e.to_string()).and_then(|()| write_spans(link, &src))
    };
    if let Err(e) = r {
        // The reader completes this request with the others.
        link.close(&e);
        return Outcome::Posted;
    }
    qp.dev()
        .counters
        .bytes_written
        .fetch_add(if kind.has_payload() { len } else { 0 }, Ordering::Relaxed);
    Outcome::Posted
}

/// Completes this side's oldest request with the response `h`. The request stays queued
/// until its completion is written: if the response is wrong or cut short, the connection
/// fails and the reader's `fail` completes it with those behind it, in order.
fn respond(link: &Link, qp: &Arc<QpInner>, h: Header) -> std::io::Result<()> {
    let (opcode, psn, plen, dst) = {
        let mut o = link.pending.lock();
        if let Some(i) = o.flushed.iter().position(|f| *f == h.psn) {
            // The response to a request already flushed: nothing to complete.
            o.flushed.drain(..=i);
            drop(o);
            if h.kind.has_payload() {
                link.discard(u64::from(h.len))?;
            }
            return Ok(());
        }
        let Some(p) = o.q.front_mut() else {
            return Err(std::io::Error::other(format!("unsolicited {:?}", h.kind)));
        };
        if p.psn != h.psn {
            return Err(std::io::Error::other(format!(
                "response for psn {} while {} is outstanding",
                h.psn, p.psn
            )));
        }
        (p.opcode, p.psn, p.len, std::mem::take(&mut p.dst))
    };
    let status = match h.kind {
        Kind::Ack => WcStatus::Success,
        Kind::Nak => WcStatus::from_u8(h.status)
            .filter(|s| *s != WcStatus::Success)
            .unwrap_or(WcStatus::BadRespErr),
        Kind::ReadResp if opcode == Opcode::Read => {
            if h.len != plen {
                link.discard(u64::from(h.len))?;
                WcStatus::BadRespErr
            } else {
                match read_spans(link, &dst, u64::from(h.len))? {
                    Ok(()) => {
                        qp.dev().counters.bytes_read.fetch_add(u64::from(h.len), Ordering::Relaxed);
                        WcStatus::Success
                    }
                    Err(s) => s,
                }
            }
        }
        Kind::AtomicResp if opcode.atomic() => match dst.first().map(|d| engine::store_u64(d, h.a))
        {
            Some(Ok(())) => WcStatus::Success,
            Some(Err(Fail::Held(mr))) => {
                mr.wait_coherent();
                match engine::store_u64(&dst[0], h.a) {
                    Ok(()) => WcStatus::Success,
                    Err(_) => WcStatus::LocProtErr,
                }
            }
            _ => WcStatus::LocProtErr,
        },
        k => {
            if k.has_payload() {
                link.discard(u64::from(h.len))?;
            }
            WcStatus::BadRespErr
        }
    };
    let (p, behind) = {
        let mut o = link.pending.lock();
        let Some(p) = o.q.pop_front() else {
            return Err(std::io::Error::other("outstanding request vanished"));
        };
        let behind: Vec<Pending> =
            if status == WcStatus::Success { Vec::new() } else { o.q.drain(..).collect() };
        let psns: Vec<u32> = behind.iter().map(|b| b.psn).collect();
        o.flushed.extend(psns);
        (p, behind)
    };
    debug_assert_eq!(p.psn, psn, "only the reader takes requests off the queue");
    if status == WcStatus::Success {
        engine::complete_send(qp, p.wr_id, p.opcode, p.signaled, status, p.len);
    } else {
        // IB requester semantics: the failed request completes with its status, the QP goes
        // to ERR and everything behind it — on the wire first, then not yet sent — is flushed.
        let mut c = qp.core.lock();
        engine::push_send_wc_locked(qp, &mut c, p.wr_id, p.opcode, p.signaled, status, 0);
        for b in behind {
            engine::push_send_wc_locked(
                qp,
                &mut c,
                b.wr_id,
                b.opcode,
                b.signaled,
                WcStatus::WrFlushErr,
                0,
            );
        }
        qp.to_error(&mut c, status.name());
    }
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
        link.arm(if h.kind.has_payload() { u64::from(h.len) } else { 0 });
        let Some(qp) = link.qp.lock().upgrade() else { break "QP destroyed".to_string() };
        let r = if h.kind == Kind::Hello {
            Err(std::io::Error::other("HELLO on an established connection"))
        } else if h.kind.is_request() {
            responder::serve(&link, &qp, h)
        } else {
            respond(&link, &qp, h)
        };
        if let Err(e) = r {
            break e.to_string();
        }
    };
    link.fail(&why);
}

/// Starts the reader thread of `link` (QP `qpn`).
pub(crate) fn spawn_reader(link: &Arc<Link>, qpn: u32) -> std::io::Result<()> {
    let l2 = Arc::clone(link);
    std::thread::Builder::new()
        .name(format!("pw-link-{qpn:x}"))
        .spawn(move || reader(l2))
        .map(|_| ())
}
