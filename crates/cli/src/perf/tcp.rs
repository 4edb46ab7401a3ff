//! Client and server processes over the TCP transport.
//!
//! Connection: the client's private data (`Hello`) names the test, its largest message and
//! `--no-coherence`; the server's names its test and the port of its raw TCP baseline
//! listener. Either side refuses a peer that runs another test.
//!
//! Control: small SEND/RECV messages on the same QP (`Ctl`). For each message size the client
//! sends `Round` (size, iterations, and where the server's ping-pong writes land); the server
//! answers `Ready` with where the client's WRITEs and READs go (its MR), and takes part in the
//! run when it is the WRITE ping-pong. With `--compare`, `Baseline` before and after the round
//! has the server take the raw TCP baseline's connection. `Done` ends the session. Everything
//! from the peer is checked: it is untrusted input.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::time::{Duration, Instant};

use pinwheel::mm::{Errno, PAGE_SIZE};
use pinwheel::{Access, CompletionQueue, QueuePair, RecvWr, Rkey, SendWr, VerbsError, WcStatus};

use crate::error::CliError;
use crate::limits::{PERF_CTL_SLOTS, PERF_ITERS_MAX, PERF_POOL_SLACK, PERF_SIZE_MAX};
use crate::perf::bench::{self, BwPlan, LatPlan, Progress, Watchdog};
use crate::perf::host::{Buffer, Host};
use crate::perf::report::{BwRow, LatRow, Reporter, Row};
use crate::perf::{Params, Test, baseline, bw_request};

const HELLO_MAGIC: [u8; 4] = *b"PWPF";
const CTL_MAGIC: [u8; 4] = *b"PWPC";
const VERSION: u8 = 1;
pub(crate) const HELLO_LEN: usize = 24;
pub(crate) const CTL_LEN: u64 = 64;
/// The work request id of control SENDs (data work requests count from 0).
const CTL_WRID: u64 = u64::MAX;
const NO_COHERENCE: u8 = 1;

/// The private data of the connection (and the first message of a `--socket` session).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) test: Test,
    pub(crate) flags: u8,
    /// Client: its largest message.
    pub(crate) max_size: u64,
    /// Server: the raw TCP baseline listener's port.
    pub(crate) baseline_port: u16,
    /// Server of a `--socket` session: its QP's number (0 over TCP).
    pub(crate) qpn: u32,
}

impl Hello {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&HELLO_MAGIC);
        b[4] = VERSION;
        b[5] = self.test.code();
        b[6] = self.flags;
        b[8..16].copy_from_slice(&self.max_size.to_le_bytes());
        b[16..18].copy_from_slice(&self.baseline_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.qpn.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Hello, String> {
        if b.len() < HELLO_LEN || b[0..4] != HELLO_MAGIC {
            return Err("the peer is not `pinwheel perf`".into());
        }
        if b[4] != VERSION {
            return Err(format!("the peer speaks perf protocol {} (this is {VERSION})", b[4]));
        }
        let test = Test::from_code(b[5]).ok_or_else(|| format!("unknown test code {}", b[5]))?;
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[8..16]);
        Ok(Hello {
            test,
            flags: b[6],
            max_size: u64::from_le_bytes(w),
            baseline_port: u16::from_le_bytes([b[16], b[17]]),
            qpn: u32::from_le_bytes([b[20], b[21], b[22], b[23]]),
        })
    }
}

/// A control message.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ctl {
    /// Client → server: run one message size. `addr`/`rkey`: the client's receive half
    /// (where the server's ping-pong WRITEs go).
    Round { size: u64, iters: u64, addr: u64, rkey: u32 },
    /// Client → server: take one raw TCP baseline connection carrying `iters` x `size` bytes
    /// (`--socket` write_lat: play `iters` rounds of the cache-line ping-pong).
    Baseline { size: u64, iters: u64 },
    /// Server → client: ready; the client's WRITEs and READs target `addr` of `rkey`.
    Ready { addr: u64, rkey: u32 },
    /// Client → server: the session is over.
    Done,
}

impl Ctl {
    pub(crate) fn encode(&self) -> [u8; CTL_LEN as usize] {
        let mut b = [0u8; CTL_LEN as usize];
        b[0..4].copy_from_slice(&CTL_MAGIC);
        let (kind, size, iters, addr, rkey) = match *self {
            Ctl::Round { size, iters, addr, rkey } => (1, size, iters, addr, rkey),
            Ctl::Ready { addr, rkey } => (2, 0, 0, addr, rkey),
            Ctl::Done => (3, 0, 0, 0, 0),
            Ctl::Baseline { size, iters } => (4, size, iters, 0, 0),
        };
        b[4] = kind;
        b[8..16].copy_from_slice(&size.to_le_bytes());
        b[16..24].copy_from_slice(&iters.to_le_bytes());
        b[24..32].copy_from_slice(&addr.to_le_bytes());
        b[32..36].copy_from_slice(&rkey.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Ctl, String> {
        if b.len() < CTL_LEN as usize || b[0..4] != CTL_MAGIC {
            return Err("malformed control message".into());
        }
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let rkey = u32::from_le_bytes([b[32], b[33], b[34], b[35]]);
        match b[4] {
            1 => Ok(Ctl::Round { size: u64_at(8), iters: u64_at(16), addr: u64_at(24), rkey }),
            2 => Ok(Ctl::Ready { addr: u64_at(24), rkey }),
            3 => Ok(Ctl::Done),
            4 => Ok(Ctl::Baseline { size: u64_at(8), iters: u64_at(16) }),
            k => Err(format!("unknown control message kind {k}")),
        }
    }
}

pub(crate) fn peer_error(target: &str, detail: String) -> CliError {
    CliError::Refused { op: "perf", target: target.to_string(), errno: Errno::EPROTO, detail }
}

/// The control channel: `PERF_CTL_SLOTS` receive slots and one send slot in a buffer of
/// its own.
struct Control<'a> {
    qp: &'a QueuePair,
    send_cq: &'a CompletionQueue,
    recv_cq: &'a CompletionQueue,
    buf: Buffer,
    peer: String,
    timeout: Duration,
}

impl<'a> Control<'a> {
    fn new(
        host: &Host,
        qp: &'a QueuePair,
        (send_cq, recv_cq): (&'a CompletionQueue, &'a CompletionQueue),
        peer: String,
        timeout: Duration,
    ) -> Result<Control<'a>, CliError> {
        let buf = host.buffer((PERF_CTL_SLOTS + 1) * CTL_LEN, Access::LOCAL_WRITE, 0)?;
        let ctl = Control { qp, send_cq, recv_cq, buf, peer, timeout };
        for slot in 0..PERF_CTL_SLOTS {
            ctl.post_recv(slot)?;
        }
        Ok(ctl)
    }

    fn post_recv(&self, slot: u64) -> Result<(), CliError> {
        let wr = RecvWr { wr_id: slot, sg_list: vec![self.buf.sge(slot * CTL_LEN, CTL_LEN)] };
        self.qp.post_recv(&[wr]).map_err(|e| CliError::verbs("perf", &self.peer, e))
    }

    /// Sends `m` and waits for the peer to have it (its completion).
    fn send(&self, m: &Ctl) -> Result<(), CliError> {
        let off = PERF_CTL_SLOTS * CTL_LEN;
        self.buf.write(off, &m.encode())?;
        let wr = SendWr::send(CTL_WRID, self.buf.sge(off, CTL_LEN));
        self.qp.post_send(&[wr]).map_err(|e| CliError::verbs("perf", &self.peer, e))?;
        let dog = Watchdog::new(self.timeout);
        loop {
            if let Some(wc) = self.send_cq.poll_one() {
                if wc.status != WcStatus::Success {
                    return Err(self.lost(wc.status));
                }
                if wc.wr_id == CTL_WRID {
                    return Ok(());
                }
                continue;
            }
            dog.check(Instant::now(), &self.peer)?;
            self.send_cq.wait(Duration::from_millis(50));
        }
    }

    fn lost(&self, status: WcStatus) -> CliError {
        CliError::Refused {
            op: "perf",
            target: self.peer.clone(),
            errno: Errno::ECONNRESET,
            detail: format!(
                "the connection to the peer is gone (a control message completed with {})",
                status.code_name()
            ),
        }
    }

    /// The next message. The wait is bounded by the timeout, restarted whenever `activity`
    /// changes (the device moving bytes for the peer: a long run in progress).
    fn recv(&self, activity: &dyn Fn() -> u64) -> Result<Ctl, CliError> {
        let mut dog = Watchdog::new(self.timeout);
        let mut seen = activity();
        loop {
            if let Some(wc) = self.recv_cq.poll_one() {
                if wc.status != WcStatus::Success {
                    return Err(self.lost(wc.status));
                }
                let mut b = [0u8; CTL_LEN as usize];
                self.buf.read(wc.wr_id * CTL_LEN, &mut b)?;
                self.post_recv(wc.wr_id)?;
                let n = (wc.byte_len as usize).min(b.len());
                return Ctl::decode(&b[..n]).map_err(|e| peer_error(&self.peer, e));
            }
            let now = Instant::now();
            let a = activity();
            if a != seen {
                seen = a;
                dog.progress(now);
            }
            dog.check(now, &self.peer)?;
            self.recv_cq.wait(Duration::from_millis(100));
        }
    }
}

pub(crate) fn stdout_error(e: std::io::Error) -> CliError {
    CliError::io("write", "stdout", "writing the output failed", e)
}

/// Bytes and operations the device moved so far.
fn activity(host: &Host) -> u64 {
    let (w, r, ops, ..) = host.node.device.counters();
    w.wrapping_add(r).wrapping_add(ops)
}

/// The message buffer: one half per direction for the WRITE ping-pong, one otherwise.
pub(crate) fn layout(test: Test, max_size: u64) -> (u64, u64) {
    let half = max_size.max(1).next_multiple_of(PAGE_SIZE);
    (half, if test == Test::WriteLat { 2 * half } else { half })
}

/// `host` or `host:port` (an IPv6 literal needs brackets with a port) → an address.
pub(crate) fn resolve(server: &str, port: u16) -> Result<SocketAddr, CliError> {
    let with_port = if server.parse::<SocketAddr>().is_ok() {
        server.to_string()
    } else if server.parse::<std::net::IpAddr>().is_ok() || !server.contains(':') {
        let host = if server.contains(':') { format!("[{server}]") } else { server.to_string() };
        format!("{host}:{port}")
    } else {
        server.to_string()
    };
    let unknown = |detail: String| CliError::Refused {
        op: "perf",
        target: server.to_string(),
        errno: Errno::ENXIO,
        detail,
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| unknown(format!("cannot resolve the server's address: {e}")))?
        .next()
        .ok_or_else(|| unknown("the name resolves to no address".into()))
}

/// The client: connects, runs every message size, prints the results.
pub(crate) fn client(
    p: &Params,
    server: &str,
    port: u16,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let addr = resolve(server, port)?;
    let target = addr.to_string();
    let (half, buf_len) = layout(p.test, p.max_size());
    let host = Host::new("pinwheel1", buf_len + PERF_POOL_SLACK)?;
    host.node.device.set_coherence_checks(p.coherence);
    let buf = host.buffer(buf_len, Access::all_rw(), 0xc1)?;
    let depth = p.tx_depth.max(16);
    let (cq, rcq) = (host.cq(depth as usize + 64)?, host.cq(PERF_CTL_SLOTS as usize + 4)?);
    let init = Host::qp_init(&cq, &rcq, depth, PERF_CTL_SLOTS as u32);
    let flags = if p.coherence { 0 } else { NO_COHERENCE };
    let hello = Hello { test: p.test, flags, max_size: p.max_size(), baseline_port: 0, qpn: 0 };
    let (qp, private) = host
        .pd
        .connect(&target, init, Access::all_rw(), &hello.encode(), p.timeout)
        .map_err(|e| connect_error(&target, p, e))?;
    let theirs = Hello::decode(&private).map_err(|e| peer_error(&target, e))?;
    if theirs.test != p.test {
        return Err(CliError::invalid(
            "perf",
            &target,
            format!(
                "the server runs {}, this client {}: give both the same test",
                theirs.test.name(),
                p.test.name()
            ),
        ));
    }
    let ctl = Control::new(&host, &qp, (&cq, &rcq), target.clone(), p.timeout)?;
    let baseline = "a plain TCP stream between the same two processes";
    let attr = host.node.device.attr();
    let info = p.info(attr.name, attr.active_mtu, "tcp", Some(target.clone()), baseline);
    let mut rep = Reporter::new(out, p.json);
    rep.begin(info, p.test.title(), p.test.is_bw()).map_err(stdout_error)?;
    let me = Client {
        p,
        host: &host,
        buf: &buf,
        half,
        qp: &qp,
        cq: &cq,
        ctl: &ctl,
        raw_addr: SocketAddr::new(addr.ip(), theirs.baseline_port),
    };
    for &size in &p.sizes {
        rep.row(me.round(size)?).map_err(stdout_error)?;
    }
    ctl.send(&Ctl::Done)?;
    rep.end().map_err(stdout_error)
}

/// The client's side of a session.
struct Client<'a> {
    p: &'a Params,
    host: &'a Host,
    buf: &'a Buffer,
    half: u64,
    qp: &'a QueuePair,
    cq: &'a CompletionQueue,
    ctl: &'a Control<'a>,
    raw_addr: SocketAddr,
}

impl Client<'_> {
    /// One raw TCP baseline (MiB/s).
    fn raw(&self, size: u64) -> Result<f64, CliError> {
        let p = self.p;
        self.ctl.send(&Ctl::Baseline { size, iters: p.iters })?;
        baseline::raw_client(self.raw_addr, p.test == Test::WriteBw, size, p.iters, p.timeout)
    }

    /// One message size: the baselines (before and after, their mean) and the RDMA run.
    fn round(&self, size: u64) -> Result<Row, CliError> {
        let (p, buf, half, last) = (self.p, self.buf, self.half, size - 1);
        let lat_write = p.test == Test::WriteLat;
        if lat_write {
            buf.flag(half + last)?.set(0)?;
        }
        let before = if p.compare { Some(self.raw(size)?) } else { None };
        let addr = buf.addr.raw() + if lat_write { half } else { 0 };
        let rkey = buf.rkey().0;
        self.ctl.send(&Ctl::Round { size, iters: p.iters, addr, rkey })?;
        let Ctl::Ready { addr: raddr, rkey } = self.ctl.recv(&|| activity(self.host))? else {
            return Err(peer_error(&self.ctl.peer, "expected READY from the server".into()));
        };
        let (name, rkey) = (p.test.name(), Rkey(rkey));
        let (qp, cq) = (self.qp, self.cq);
        let mut dog = Watchdog::new(p.timeout);
        let mut progress = Progress::new(format!("{name} {size} B"));
        Ok(match p.test {
            Test::WriteBw | Test::ReadBw => {
                let wr = bw_request(p.test, buf.sge(0, size), raddr, rkey);
                let plan = BwPlan { iters: p.iters, tx_depth: p.tx_depth, cq_mod: p.cq_mod };
                let (posted, done) = bench::bw(name, qp, cq, wr, plan, &mut dog, &mut progress)?;
                let base = match before {
                    Some(b) => Some((b + self.raw(size)?) / 2.0),
                    None => None,
                };
                Row::Bw(BwRow::new(size, &posted, &done).with_baseline(base))
            }
            Test::ReadLat => {
                let wr = SendWr::read(0, buf.sge(0, size), raddr, rkey);
                let s = bench::read_lat(name, qp, cq, wr, p.iters, &mut dog, &mut progress)?;
                Row::Lat(LatRow::new(size, s))
            }
            Test::WriteLat => {
                let (post, poll) = (buf.flag(last)?, buf.flag(half + last)?);
                let plan = LatPlan { iters: p.iters, post: &post, poll: &poll, client: true };
                let wr = SendWr::write(0, buf.sge(0, size), raddr, rkey);
                let s = bench::pingpong(name, qp, cq, wr, &plan, &mut dog, &mut progress)?;
                Row::Lat(LatRow::new(size, s))
            }
        })
    }
}

/// A failed connection, with what to do about it.
fn connect_error(target: &str, p: &Params, e: VerbsError) -> CliError {
    let hint = match e.errno() {
        Errno::ECONNREFUSED => Some(format!(
            "nothing listens there: start `pinwheel perf {}` on the server first (-p for \
             another port)",
            p.test.name()
        )),
        Errno::ETIMEDOUT => Some(format!(
            "no answer within {} s (--timeout): is the address right and the server up?",
            p.timeout.as_secs_f64()
        )),
        Errno::EHOSTUNREACH | Errno::ENETUNREACH => Some("no route to the server".into()),
        Errno::EPROTO => match &e {
            VerbsError::Transport { what, .. } => {
                Some(format!("{what}: what answered there is not `pinwheel perf`"))
            }
            _ => None,
        },
        _ => None,
    };
    CliError::verbs("perf", target, e).with_hint(hint)
}

/// The server: waits for one client, serves its session, exits.
pub(crate) fn server(p: &Params, port: u16, out: &mut dyn Write) -> Result<(), CliError> {
    let host = Host::new("pinwheel0", 2 * PERF_SIZE_MAX + PERF_POOL_SLACK)?;
    let bind = format!("0.0.0.0:{port}");
    let listener = host.node.device.listen(&bind).map_err(|e| {
        let hint = (e.errno() == Errno::EADDRINUSE)
            .then(|| format!("port {port} is in use: pick another with -p (-p 0: any free port)"));
        CliError::verbs("perf", &bind, e).with_hint(hint)
    })?;
    let port = listener.local_addr().map_err(|e| CliError::verbs("perf", &bind, e))?.port();
    let raw = TcpListener::bind(("0.0.0.0", 0))
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| {
        CliError::io("perf", "0.0.0.0:0", "listening for the raw TCP baseline", e)
    })?;
    let raw_port = raw
        .local_addr()
        .map_err(|e| CliError::io("perf", "0.0.0.0:0", "the raw TCP baseline's port", e))?
        .port();
    writeln!(
        out,
        " waiting for a client on port {port} ({}; timeout {} s)",
        p.test.name(),
        p.timeout.as_secs_f64()
    )
    .and_then(|()| out.flush())
    .map_err(stdout_error)?;
    let depth = 16;
    let (cq, rcq) = (host.cq(depth + 64)?, host.cq(PERF_CTL_SLOTS as usize + 4)?);
    let init = Host::qp_init(&cq, &rcq, depth as u32, PERF_CTL_SLOTS as u32);
    let mine = Hello { test: p.test, flags: 0, max_size: 0, baseline_port: raw_port, qpn: 0 };
    let (qp, private) = listener
        .accept(&host.pd, init, Access::all_rw(), &mine.encode(), p.timeout)
        .map_err(|e| {
            let hint = (e.errno() == Errno::ETIMEDOUT).then(|| {
                format!("no client came within {} s (--timeout)", p.timeout.as_secs_f64())
            });
            CliError::verbs("perf", format!("port {port}"), e).with_hint(hint)
        })?;
    let peer = qp.info().peer;
    let theirs = check_client(p, &peer, &private)?;
    if !p.coherence || theirs.flags & NO_COHERENCE != 0 {
        host.node.device.set_coherence_checks(false);
    }
    let (half, buf_len) = layout(p.test, theirs.max_size);
    let buf = host.buffer(buf_len, Access::all_rw(), 0x5e)?;
    let ctl = Control::new(&host, &qp, (&cq, &rcq), peer.clone(), p.timeout)?;
    let session = Session { p, buf: &buf, half, max_size: theirs.max_size, qp: &qp, cq: &cq };
    let rounds = session.serve(&ctl, &raw, &|| activity(&host))?;
    writeln!(out, " served {} to {peer}: {rounds} message size(s)", p.test.name())
        .map_err(stdout_error)
}

/// The client's HELLO, checked: the same test, a message size this server can hold.
pub(crate) fn check_client(p: &Params, peer: &str, private: &[u8]) -> Result<Hello, CliError> {
    let theirs = Hello::decode(private).map_err(|e| peer_error(peer, e))?;
    if theirs.test != p.test {
        return Err(CliError::invalid(
            "perf",
            peer,
            format!(
                "the client asked for {}, this server runs {}: give both the same test",
                theirs.test.name(),
                p.test.name()
            ),
        ));
    }
    let limit = PERF_SIZE_MAX.min(pinwheel::limits::MAX_MSG);
    if theirs.max_size == 0 || theirs.max_size > limit {
        let detail = format!("message size {} outside 1..={limit}", theirs.max_size);
        return Err(peer_error(peer, detail));
    }
    Ok(theirs)
}

/// The server's side of a session.
struct Session<'a> {
    p: &'a Params,
    buf: &'a Buffer,
    half: u64,
    max_size: u64,
    qp: &'a QueuePair,
    cq: &'a CompletionQueue,
}

impl Session<'_> {
    /// Serves control messages until `Done`; the number of message sizes run.
    fn serve(
        &self,
        ctl: &Control<'_>,
        raw: &TcpListener,
        activity: &dyn Fn() -> u64,
    ) -> Result<u64, CliError> {
        let (p, peer) = (self.p, &ctl.peer);
        let mut rounds = 0u64;
        loop {
            match ctl.recv(activity)? {
                Ctl::Round { size, iters, addr, rkey } => {
                    self.check(size, iters, peer)?;
                    self.round(ctl, size, iters, addr, Rkey(rkey))?;
                    rounds += 1;
                }
                Ctl::Baseline { size, iters } if p.test.is_bw() => {
                    self.check(size, iters, peer)?;
                    baseline::raw_serve(raw, p.test == Test::WriteBw, size, iters, p.timeout)?;
                }
                Ctl::Baseline { .. } => {
                    return Err(peer_error(peer, format!("no baseline for {}", p.test.name())));
                }
                Ctl::Done => return Ok(rounds),
                Ctl::Ready { .. } => {
                    return Err(peer_error(peer, "unexpected READY from the client".into()));
                }
            }
        }
    }

    fn check(&self, size: u64, iters: u64, peer: &str) -> Result<(), CliError> {
        if size == 0 || size > self.max_size || iters == 0 || iters > PERF_ITERS_MAX {
            return Err(peer_error(
                peer,
                format!(
                    "round of {iters} x {size} bytes outside 1..={PERF_ITERS_MAX} x 1..={}",
                    self.max_size
                ),
            ));
        }
        Ok(())
    }

    /// Answers READY and, for the WRITE ping-pong, plays the server's part.
    fn round(
        &self,
        ctl: &Control<'_>,
        size: u64,
        iters: u64,
        addr: u64,
        rkey: Rkey,
    ) -> Result<(), CliError> {
        let lat = self.p.test == Test::WriteLat;
        let last = size - 1;
        let poll = self.buf.flag(if lat { self.half + last } else { last })?;
        if lat {
            poll.set(0)?;
        }
        let target = self.buf.addr.raw() + if lat { self.half } else { 0 };
        ctl.send(&Ctl::Ready { addr: target, rkey: self.buf.rkey().0 })?;
        if !lat {
            return Ok(());
        }
        let post = self.buf.flag(last)?;
        let plan = LatPlan { iters, post: &post, poll: &poll, client: false };
        let wr = SendWr::write(0, self.buf.sge(0, size), addr, rkey);
        let mut dog = Watchdog::new(self.p.timeout);
        let mut progress = Progress::new(String::new());
        bench::pingpong(self.p.test.name(), self.qp, self.cq, wr, &plan, &mut dog, &mut progress)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_hello_round_trips_and_rejects_strangers() {
        let h = Hello {
            test: Test::ReadLat,
            flags: NO_COHERENCE,
            max_size: 8 << 20,
            baseline_port: 4321,
            qpn: 0x1234,
        };
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
        assert!(Hello::decode(b"hello").is_err());
        let h = Hello { test: Test::WriteBw, flags: 0, max_size: 1, baseline_port: 0, qpn: 0 };
        let mut b = h.encode();
        b[4] = 9;
        assert!(Hello::decode(&b).unwrap_err().contains("protocol 9"));
        b[4] = VERSION;
        b[5] = 77;
        assert!(Hello::decode(&b).unwrap_err().contains("unknown test"));
    }

    #[test]
    fn tcp_control_messages_round_trip() {
        for m in [
            Ctl::Round { size: 65536, iters: 5000, addr: 0x1000, rkey: 0x10a },
            Ctl::Baseline { size: 1 << 20, iters: 2000 },
            Ctl::Ready { addr: 0x7000, rkey: 0x201 },
            Ctl::Done,
        ] {
            assert_eq!(Ctl::decode(&m.encode()), Ok(m));
        }
        let mut b = Ctl::Done.encode();
        b[4] = 9;
        assert!(Ctl::decode(&b).is_err());
        assert!(Ctl::decode(&b[..10]).is_err());
    }

    #[test]
    fn tcp_resolve_forms() {
        assert_eq!(resolve("127.0.0.1", 7).unwrap().to_string(), "127.0.0.1:7");
        assert_eq!(resolve("127.0.0.1:9", 7).unwrap().to_string(), "127.0.0.1:9");
        assert_eq!(resolve("::1", 7).unwrap().to_string(), "[::1]:7");
        assert_eq!(resolve("[::1]:9", 7).unwrap().to_string(), "[::1]:9");
    }
}
