//! `--socket PATH`: the server and the client are two client processes of one node served by
//! `pinwheel serve --socket PATH`, and their work requests take the node's shared data path
//! (`docs/shm.md`): the poster's library executes each WRITE or READ into the other process's
//! buffer, completions come from CQ rings — no request to the daemon, no engine thread.
//!
//! Meeting: the processes meet over a plain TCP connection on 127.0.0.1 (`-p`), which carries
//! only control messages (`tcp.rs`' `Hello` and `Ctl`): the client's `Hello` names the test
//! and its largest message, the server's its QP number; the client connects the two QPs
//! (`ConnectQp`), then runs each message size as over TCP (`Round` → `Ready`, and the server
//! plays the ping-pong's other side).
//!
//! `--compare`: bandwidth tests copy the same messages between two buffers of the pool in the
//! client (the pool's own copy, one thread); `write_lat` plays a cache-line ping-pong between
//! the two processes on a word of the server's buffer (`Baseline` → `Ready` with its pool
//! offset), with the same spin policy as the RDMA ping-pong. Both run just before and just
//! after the RDMA run; their mean is reported.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use pinwheel::client::{Buffer, CompletionQueue, Context, MemoryRegion, QpInit, QueuePair};
use pinwheel::mm::{Errno, PAGE_SIZE, Pool, PoolOffset};
use pinwheel::{Access, Qpn, Rkey, SendWr, Sge};

use crate::admin_cmd::client_err;
use crate::error::CliError;
use crate::limits::{PERF_ITERS_MAX, PERF_RX_DEPTH};
use crate::perf::bench::{self, BwPlan, LatPlan, Progress, Receiver, Until, Watchdog, spin_until};
use crate::perf::ctl::{CTL_LEN, Ctl, HELLO_LEN, Hello, peer_error, resolve, stdout_error};
use crate::perf::host::{Flag, PoolRef, copy_pieces, pool_error};
use crate::perf::report::{BwRow, LatRow, Reporter, Row, lat_row};
use crate::perf::tcp::{check_client, layout};
use crate::perf::{Params, Test, baseline, loopback, request};

fn io(what: &str, target: &str) -> impl FnOnce(std::io::Error) -> CliError {
    let (what, target) = (what.to_string(), target.to_string());
    move |e| CliError::io("perf", target, what, e)
}

/// One side: a client handle of the node and what it opened.
struct Side {
    qp: QueuePair,
    cq: CompletionQueue,
    /// Receive completions (SEND tests).
    rcq: CompletionQueue,
    mr: MemoryRegion,
    buf: Buffer,
    /// The memcpy baseline's destination (bandwidth tests with `--compare`).
    spare: Option<Buffer>,
    ctx: Context,
}

impl Side {
    /// Fails unless a node with the shared data path answers at `socket`.
    fn probe(socket: &Path) -> Result<(), CliError> {
        Side::connect(socket).map(drop)
    }

    fn connect(socket: &Path) -> Result<Context, CliError> {
        let shown = socket.display().to_string();
        let ctx = Context::connect(socket)
            .map_err(|e| client_err("perf", &format!("{shown}: connect"), e))?;
        if !ctx.shared_data_path() {
            return Err(CliError::invalid(
                "perf",
                &shown,
                "the node has no shared data path (no device region in its pool)",
            ));
        }
        Ok(ctx)
    }

    fn open(
        socket: &Path,
        test: Test,
        buf_len: u64,
        depth: u32,
        spare: bool,
    ) -> Result<Side, CliError> {
        let shown = socket.display().to_string();
        let e = |what: &'static str| {
            let shown = shown.clone();
            move |e| client_err("perf", &format!("{shown}: {what}"), e)
        };
        let ctx = Side::connect(socket)?;
        let pd = ctx.alloc_pd().map_err(e("alloc_pd"))?;
        let buf = ctx.alloc(buf_len).map_err(e("alloc"))?;
        let spare = if spare { Some(ctx.alloc(buf_len).map_err(e("alloc"))?) } else { None };
        let mr = pd.reg_mr(buf.addr(), buf.len(), Access::all_rw()).map_err(e("reg_mr"))?;
        let rx = if test.is_send() { PERF_RX_DEPTH } else { 16 };
        let cq = ctx.create_cq(depth + 64).map_err(e("create_cq"))?;
        // Receive completions apart: a SEND test's receiver polls them, the loops the sends'.
        let rcq = ctx.create_cq(rx + 64).map_err(e("create_cq"))?;
        let init = QpInit { max_send_wr: depth, max_recv_wr: rx, max_sge: 1, max_inline_data: 0 };
        let qp = pd.create_qp(&cq, &rcq, init).map_err(e("create_qp"))?;
        Ok(Side { qp, cq, rcq, mr, buf, spare, ctx })
    }

    fn sge(&self, off: u64, len: u64) -> Sge {
        Sge { addr: self.buf.addr() + off, length: len as u32, lkey: self.mr.lkey() }
    }

    /// Pool offset of byte `off` of the buffer.
    fn at(&self, off: u64) -> Result<PoolOffset, CliError> {
        let p = self.buf.pool_pieces(off, 1).map_err(|e| client_err("perf", "buffer", e))?;
        p.first().map(|x| x.0).ok_or_else(|| CliError::invalid("perf", "buffer", "empty"))
    }

    fn flag(&self, off: u64) -> Result<Flag, CliError> {
        Ok(Flag::at(PoolRef::Client(self.ctx.clone()), self.at(off)?))
    }
}

/// The control stream: fixed-size messages, every read bounded by the timeout.
struct Stream {
    s: TcpStream,
    peer: String,
}

impl Stream {
    fn new(s: TcpStream, timeout: Duration) -> Result<Stream, CliError> {
        let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "the peer".into());
        s.set_nodelay(true)
            .and_then(|()| s.set_read_timeout(Some(timeout)))
            .and_then(|()| s.set_write_timeout(Some(timeout)))
            .map_err(io("control connection options", &peer))?;
        Ok(Stream { s, peer })
    }
    fn send(&mut self, b: &[u8]) -> Result<(), CliError> {
        self.s.write_all(b).map_err(io("sending a control message", &self.peer))
    }
    fn recv(&mut self, n: usize) -> Result<Vec<u8>, CliError> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).map_err(io("waiting for a control message", &self.peer))?;
        Ok(b)
    }
    fn ctl(&mut self) -> Result<Ctl, CliError> {
        let b = self.recv(CTL_LEN as usize)?;
        Ctl::decode(&b).map_err(|e| peer_error(&self.peer, e))
    }
    /// The next control message if a whole one has arrived, without waiting.
    fn try_ctl(&mut self) -> Result<Option<Ctl>, CliError> {
        let mut b = [0u8; CTL_LEN as usize];
        self.s.set_nonblocking(true).map_err(io("control connection options", &self.peer))?;
        let r = self.s.peek(&mut b);
        self.s.set_nonblocking(false).map_err(io("control connection options", &self.peer))?;
        match r {
            Ok(0) => Err(peer_error(&self.peer, "the client hung up".into())),
            Ok(n) if n == b.len() => self.ctl().map(Some),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(io("waiting for a control message", &self.peer)(e)),
        }
    }
}

/// The cache-line ping-pong between the two processes on the word at `word` (zeroed by the
/// server): the client stores 2i+1 and waits for 2i+2, the server waits for 2i+1 and stores
/// 2i+2. Samples: half round trips (µs), the client's.
fn line_pingpong(
    pool: &Pool,
    word: PoolOffset,
    iters: u64,
    client: bool,
    dog: &Watchdog,
) -> Result<Vec<f64>, CliError> {
    let load = || pool.load_u64(word).map_err(|e| pool_error("the ping-pong word", e));
    let store = |v| pool.store_u64(word, v).map_err(|e| pool_error("the ping-pong word", e));
    let mut samples = Vec::with_capacity(if client { iters as usize } else { 0 });
    for i in 0..iters {
        if client {
            let t0 = Instant::now();
            store(2 * i + 1)?;
            spin_until("write_lat baseline", "the pong", dog, || Ok(load()? == 2 * i + 2))?;
            samples.push(t0.elapsed().as_secs_f64() * 1e6 / 2.0);
        } else {
            spin_until("write_lat baseline", "the ping", dog, || Ok(load()? == 2 * i + 1))?;
            store(2 * i + 2)?;
        }
    }
    Ok(samples)
}

/// Copies `size` bytes from `src` to `dst` (pool pieces), `iters` times; MiB/s.
fn memcpy(pool: &Pool, src: &Buffer, dst: &Buffer, size: u64, iters: u64) -> Result<f64, CliError> {
    let pieces = |b: &Buffer| b.pool_pieces(0, size).map_err(|e| client_err("perf", "buffer", e));
    let (s, d) = (pieces(src)?, pieces(dst)?);
    let t0 = Instant::now();
    for _ in 0..iters {
        copy_pieces(pool, &s, &d, size)?;
    }
    Ok(baseline::rate(size, iters, t0.elapsed().as_secs_f64()))
}

/// The client: meets the server, connects the QPs, runs every message size, prints.
pub(crate) fn client(
    p: &Params,
    socket: &Path,
    server: &str,
    port: u16,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    // The node first: a missing daemon is named before the server is bothered.
    let (half, buf_len) = layout(p.test, p.max_size());
    let me = Side::open(socket, p.test, buf_len, p.tx_depth.max(16), p.compare && p.test.is_bw())?;
    let addr = resolve(server, port)?;
    let s =
        TcpStream::connect_timeout(&addr, p.timeout).map_err(io("connect", &addr.to_string()))?;
    let mut ctl = Stream::new(s, p.timeout)?;
    let hello =
        Hello { test: p.test, flags: 0, max_size: p.max_size(), baseline_port: 0, qps: 1, qpn: 0 };
    ctl.send(&hello.encode())?;
    let theirs = Hello::decode(&ctl.recv(HELLO_LEN)?).map_err(|e| peer_error(&ctl.peer, e))?;
    if theirs.test != p.test {
        let detail =
            format!("the server runs {}, this client {}", theirs.test.name(), p.test.name());
        return Err(CliError::invalid("perf", &ctl.peer, detail));
    }
    me.qp
        .connect(Qpn(theirs.qpn), Access::all_rw())
        .map_err(|e| client_err("perf", "connect", e))?;
    let baseline = if p.test.is_bw() {
        "memcpy between two buffers of the pool, one thread"
    } else {
        "a cache-line ping-pong between the same two processes"
    };
    let shown = socket.display().to_string();
    let info = p.info(me.ctx.node().node.clone(), 4096, "shm", Some(shown), baseline);
    let mut rep = Reporter::new(out, p.json);
    rep.begin(info, p.test.title(), loopback::layout(p)).map_err(stdout_error)?;
    // send_lat's answers land in the receive half: RECVs posted once for the session.
    let mut rx = match p.test {
        Test::SendLat => Some(Receiver::new(vec![&me.qp], &me.rcq, me.sge(half, p.max_size()), 4)?),
        _ => None,
    };
    for &size in &p.sizes {
        rep.row(round(p, &me, &mut ctl, size, half, rx.as_mut())?).map_err(stdout_error)?;
    }
    ctl.send(&Ctl::Done.encode())?;
    rep.end().map_err(stdout_error)
}

/// One cache-line ping-pong with the server; its typical half round trip (µs).
fn baseline_lat(p: &Params, me: &Side, ctl: &mut Stream) -> Result<f64, CliError> {
    ctl.send(&Ctl::Baseline { size: 8, iters: p.iters }.encode())?;
    let Ctl::Ready { addr, .. } = ctl.ctl()? else {
        return Err(peer_error(&ctl.peer, "expected READY for the baseline".into()));
    };
    let dog = Watchdog::new(p.timeout);
    let s = line_pingpong(me.ctx.pool(), PoolOffset::new(addr), p.iters, true, &dog)?;
    Ok(LatRow::new(8, s).t_typical_us)
}

fn round(
    p: &Params,
    me: &Side,
    ctl: &mut Stream,
    size: u64,
    half: u64,
    rx: Option<&mut Receiver<'_>>,
) -> Result<Row, CliError> {
    let (name, last) = (p.test.name(), size - 1);
    let lat_write = p.test == Test::WriteLat;
    let pool = me.ctx.pool();
    let base = |ctl: &mut Stream| -> Result<Option<f64>, CliError> {
        match (p.compare, &me.spare) {
            (false, _) => Ok(None),
            (true, Some(spare)) => {
                let (from, to) =
                    if p.test == Test::WriteBw { (&me.buf, spare) } else { (spare, &me.buf) };
                memcpy(pool, from, to, size, p.iters).map(Some)
            }
            (true, None) => baseline_lat(p, me, ctl).map(Some),
        }
    };
    if lat_write {
        me.flag(half + last)?.set(0)?;
    }
    let before = base(ctl)?;
    let addr = me.buf.addr() + if lat_write { half } else { 0 };
    // 0 iterations: a -D run, which this side ends (STOP, or End).
    let iters = if p.duration.is_some() { 0 } else { p.iters };
    ctl.send(&Ctl::Round { size, iters, addr, rkey: me.mr.rkey().0 }.encode())?;
    let Ctl::Ready { addr: raddr, rkey } = ctl.ctl()? else {
        return Err(peer_error(&ctl.peer, "expected READY from the server".into()));
    };
    let rkey = Rkey(rkey);
    let mut dog = Watchdog::new(p.timeout);
    let mut progress = Progress::new(format!("{name} {size} B"));
    let until = Until::new(p.iters, p.duration);
    let timed = p.duration.is_some();
    let local = me.sge(0, if p.test.is_atomic() { 8 } else { size });
    let wr = request(p, local, raddr, rkey);
    let row = match p.test {
        Test::WriteBw | Test::ReadBw | Test::SendBw | Test::AtomicBw => {
            let plan = BwPlan { until, tx_depth: p.tx_depth, cq_mod: p.cq_mod };
            let mut pump = || Ok(());
            let qps = [&me.qp];
            let times =
                bench::bw(name, &qps, &me.cq, wr, plan, &mut pump, &mut dog, &mut progress)?;
            if p.test == Test::SendBw {
                ctl.send(&Ctl::End.encode())?;
            }
            Row::Bw(BwRow::from_times(size, 1, &times))
        }
        Test::ReadLat | Test::AtomicLat => {
            let s = bench::one_at_a_time(name, &me.qp, &me.cq, wr, until, &mut dog, &mut progress)?;
            lat_row(size, s, timed, None)
        }
        Test::WriteLat => {
            let (post, poll) = (me.flag(last)?, me.flag(half + last)?);
            let plan = LatPlan { until, post: &post, poll: &poll, client: true };
            let s = bench::pingpong(name, &me.qp, &me.cq, wr, &plan, &mut dog, &mut progress)?;
            lat_row(size, s, timed, None)
        }
        Test::SendLat => {
            let Some(rx) = rx else {
                return Err(CliError::invalid("perf", name, "send_lat receives on its QP"));
            };
            let s = bench::send_pingpong(name, &me.qp, &me.cq, rx, wr, until, true, &mut dog)?;
            lat_row(size, s, timed, None)
        }
        t => {
            let detail = format!("{} is not measured with --socket", t.name());
            return Err(CliError::invalid("perf", "--socket", detail));
        }
    };
    let mean = match before {
        Some(b) => Some((b + base(ctl)?.unwrap_or(b)) / 2.0),
        None => None,
    };
    Ok(match row {
        Row::Bw(r) => Row::Bw(r.with_baseline(mean)),
        Row::Lat(r) => Row::Lat(r.with_baseline(mean)),
        other => other,
    })
}

/// Accepts the one client on `listener`, waiting at most `timeout`.
fn accept(listener: &TcpListener, timeout: Duration, port: u16) -> Result<TcpStream, CliError> {
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(io("accept", "the client"))?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(io("accept", &format!("port {port}"))(e)),
        }
        if Instant::now() >= deadline {
            return Err(CliError::Refused {
                op: "perf",
                target: format!("port {port}"),
                errno: Errno::ETIMEDOUT,
                detail: format!("no client came within {} s (--timeout)", timeout.as_secs_f64()),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The server: waits for one client on 127.0.0.1:`port`, serves its session, exits.
pub(crate) fn server(
    p: &Params,
    socket: &Path,
    port: u16,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    // The node first: a missing daemon fails the server now, not when a client came.
    Side::probe(socket)?;
    let bind = format!("127.0.0.1:{port}");
    let listener = TcpListener::bind(&bind)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(io("listening for the client", &bind))?;
    let port = listener.local_addr().map_err(io("the listening port", &bind))?.port();
    writeln!(
        out,
        " waiting for a client on port {port} ({}, node {}; timeout {} s)",
        p.test.name(),
        socket.display(),
        p.timeout.as_secs_f64()
    )
    .and_then(|()| out.flush())
    .map_err(stdout_error)?;
    let mut ctl = Stream::new(accept(&listener, p.timeout, port)?, p.timeout)?;
    let peer = ctl.peer.clone();
    let theirs = check_client(p, &peer, &ctl.recv(HELLO_LEN)?)?;
    let (half, buf_len) = layout(p.test, theirs.max_size);
    // One more page: the word of the cache-line ping-pong baseline.
    let me = Side::open(socket, p.test, buf_len + PAGE_SIZE, 16, false)?;
    let mine =
        Hello { test: p.test, flags: 0, max_size: 0, baseline_port: 0, qps: 0, qpn: me.qp.qpn().0 };
    ctl.send(&mine.encode())?;
    // The SEND tests' RECVs, posted once for the session when the client has connected the
    // QPs (before its first round): send_bw's from byte 0, send_lat's into the receive half.
    let mut rx: Option<Receiver<'_>> = None;
    let mut rounds = 0u64;
    loop {
        match ctl.ctl()? {
            Ctl::Round { size, iters, addr, rkey } => {
                check(&peer, size, iters, theirs.max_size)?;
                if rx.is_none() && p.test.is_send() {
                    let (off, depth) =
                        if p.test == Test::SendBw { (0, PERF_RX_DEPTH) } else { (half, 4) };
                    let sge = me.sge(off, theirs.max_size);
                    rx = Some(Receiver::new(vec![&me.qp], &me.rcq, sge, depth)?);
                }
                let round = (size, iters, half);
                serve_round(p, &me, &mut ctl, round, addr, Rkey(rkey), rx.as_mut())?;
                rounds += 1;
            }
            Ctl::Baseline { iters, .. } if p.test.is_pingpong() => {
                check(&peer, 8, iters, theirs.max_size.max(8))?;
                let word = me.at(buf_len)?;
                me.ctx.pool().store_u64(word, 0).map_err(|e| pool_error("the word", e))?;
                ctl.send(&Ctl::Ready { addr: word.raw(), rkey: 0 }.encode())?;
                line_pingpong(me.ctx.pool(), word, iters, false, &Watchdog::new(p.timeout))?;
            }
            Ctl::Done => break,
            m => return Err(peer_error(&peer, format!("unexpected {m:?}"))),
        }
    }
    writeln!(out, " served {} to {peer}: {rounds} message size(s)", p.test.name())
        .map_err(stdout_error)
}

/// A round's figures from the client, checked (0 iterations: a -D run the client ends).
fn check(peer: &str, size: u64, iters: u64, max: u64) -> Result<(), CliError> {
    if size == 0 || size > max || iters > PERF_ITERS_MAX {
        let d = format!("round of {iters} x {size} bytes outside 0..={PERF_ITERS_MAX} x 1..={max}");
        return Err(peer_error(peer, d));
    }
    Ok(())
}

/// Answers READY and plays the server's part: the ping-pongs, `send_bw`'s RECVs.
fn serve_round(
    p: &Params,
    me: &Side,
    ctl: &mut Stream,
    (size, iters, half): (u64, u64, u64),
    addr: u64,
    rkey: Rkey,
    rx: Option<&mut Receiver<'_>>,
) -> Result<(), CliError> {
    let name = p.test.name();
    let lat = p.test == Test::WriteLat;
    let last = size - 1;
    let poll = me.flag(if lat { half + last } else { last })?;
    if lat {
        poll.set(0)?;
    }
    let target = me.buf.addr() + if lat { half } else { 0 };
    ctl.send(&Ctl::Ready { addr: target, rkey: me.mr.rkey().0 }.encode())?;
    let until = Until::new(if iters == 0 { PERF_ITERS_MAX } else { iters }, None);
    let mut dog = Watchdog::new(p.timeout);
    match (p.test, rx) {
        (Test::WriteLat, _) => {
            let post = me.flag(last)?;
            let plan = LatPlan { until, post: &post, poll: &poll, client: false };
            let wr = SendWr::write(0, me.sge(0, size), addr, rkey);
            let mut progress = Progress::new(String::new());
            bench::pingpong(name, &me.qp, &me.cq, wr, &plan, &mut dog, &mut progress)?;
        }
        (Test::SendLat, Some(rx)) => {
            let wr = SendWr::send(0, me.sge(0, size));
            bench::send_pingpong(name, &me.qp, &me.cq, rx, wr, until, false, &mut dog)?;
        }
        (Test::SendBw, Some(rx)) => loop {
            // Re-post RECVs as the client's SENDs consume them, until its END.
            // The control stream is looked at only when no SEND came (three system calls),
            // and then the CPU is left to the client, whose library executes the SENDs.
            let got = rx.pump(name)?;
            let now = Instant::now();
            if got > 0 {
                dog.progress(now);
                continue;
            }
            match ctl.try_ctl()? {
                Some(Ctl::End) => break,
                Some(m) => return Err(peer_error(&ctl.peer, format!("expected END, got {m:?}"))),
                None => dog.check(now, "send_bw: the client's SENDs")?,
            }
            std::thread::sleep(Duration::from_micros(20));
        },
        _ => {}
    }
    Ok(())
}
