//! Client and server processes over the TCP transport: a control QP (`ctl.rs`) and `-q` data
//! QPs, each its own connection. The client drives the run and prints the results; the
//! server holds the MR the client writes, reads and updates, and plays its part in the
//! ping-pongs and in `send_bw` (keeping RECVs posted).

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use pinwheel::mm::{Errno, PAGE_SIZE};
use pinwheel::{Access, CompletionQueue, QueuePair, Rkey, SendWr};

use crate::error::CliError;
use crate::limits::{
    PERF_CTL_SLOTS, PERF_ITERS_MAX, PERF_POOL_SLACK, PERF_RX_DEPTH, PERF_SIZE_MAX,
};
use crate::perf::bench::{self, BwPlan, LatPlan, Progress, Receiver, Until, Watchdog};
use crate::perf::ctl::{
    Control, Ctl, Hello, NO_COHERENCE, activity, connect_error, peer_error, resolve, stdout_error,
};
use crate::perf::host::{Buffer, Host};
use crate::perf::report::{BwRow, Reporter, Row, lat_row};
use crate::perf::{Params, Test, baseline, loopback, pingpong, request};

/// The message buffer: one half per direction for the ping-pongs, one otherwise.
pub(crate) fn layout(test: Test, max_size: u64) -> (u64, u64) {
    let half = max_size.max(1).next_multiple_of(PAGE_SIZE);
    (half, if test.is_pingpong() { 2 * half } else { half })
}

/// Receive depth of the data QPs.
fn rx_depth(test: Test) -> u32 {
    if test.is_send() { PERF_RX_DEPTH } else { 16 }
}

/// The data QPs' RECVs for the SEND tests, posted once for the session into `off` of `buf`
/// (of the largest message, so every size fits).
fn receivers<'a>(
    test: Test,
    qps: &'a [QueuePair],
    rcq: &'a CompletionQueue,
    buf: &Buffer,
    off: u64,
    max: u64,
) -> Result<Option<Receiver<'a>>, CliError> {
    let depth = if test == Test::SendBw { PERF_RX_DEPTH } else { 4 };
    if !test.is_send() || qps.is_empty() {
        return Ok(None);
    }
    Receiver::new(qps.iter().collect(), rcq, buf.sge(off, max), depth).map(Some)
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
    let q = p.qps as usize;
    let depth = p.tx_depth.max(16);
    let (ccq, crcq) =
        (host.cq(PERF_CTL_SLOTS as usize + 4)?, host.cq(PERF_CTL_SLOTS as usize + 4)?);
    let cq = host.cq(q * depth as usize + 64)?;
    let rcq = host.cq(q * rx_depth(p.test) as usize + 64)?;
    let flags = if p.coherence { 0 } else { NO_COHERENCE };
    let hello = Hello {
        test: p.test,
        flags,
        max_size: p.max_size(),
        baseline_port: 0,
        qps: p.qps as u16,
        qpn: 0,
    };
    let init = Host::qp_init(&ccq, &crcq, 4, PERF_CTL_SLOTS as u32);
    let (ctl_qp, private) = host
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
    let mut qps = Vec::with_capacity(q);
    for _ in 0..q {
        let init = Host::qp_init(&cq, &rcq, depth, rx_depth(p.test));
        let (qp, _) = host
            .pd
            .connect(&target, init, Access::all_rw(), &hello.encode(), p.timeout)
            .map_err(|e| connect_error(&target, p, e))?;
        qps.push(qp);
    }
    let ctl = Control::new(&host, &ctl_qp, (&ccq, &crcq), target.clone(), p.timeout)?;
    // The client receives only in the SEND ping-pong.
    let mine = if p.test == Test::SendLat { &qps[..] } else { &[] };
    let mut rxs = receivers(p.test, mine, &rcq, &buf, half, p.max_size())?;
    let baseline = if p.test.is_bw() {
        "a plain TCP stream between the same two processes"
    } else {
        pingpong::DESCRIPTION
    };
    let attr = host.node.device.attr();
    let info = p.info(attr.name, attr.active_mtu, "tcp", Some(target.clone()), baseline);
    let mut rep = Reporter::new(out, p.json);
    rep.begin(info, p.test.title(), loopback::layout(p)).map_err(stdout_error)?;
    let me = Client {
        p,
        host: &host,
        buf: &buf,
        half,
        qps: &qps,
        cq: &cq,
        ctl: &ctl,
        raw_addr: SocketAddr::new(addr.ip(), theirs.baseline_port),
    };
    for &size in &p.sizes {
        let row = me.round(size, &mut rxs, &mut rep)?;
        rep.row(row).map_err(stdout_error)?;
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
    qps: &'a [QueuePair],
    cq: &'a CompletionQueue,
    ctl: &'a Control<'a>,
    raw_addr: SocketAddr,
}

impl Client<'_> {
    /// One raw TCP baseline (MiB/s).
    fn raw(&self, size: u64) -> Result<f64, CliError> {
        let p = self.p;
        self.ctl.send(&Ctl::Baseline { size, iters: p.iters })?;
        baseline::raw_client(self.raw_addr, p.test != Test::ReadBw, size, p.iters, p.timeout)
    }

    /// One message size: the baselines (before and after, their mean) and the RDMA run.
    fn round(
        &self,
        size: u64,
        rxs: &mut Option<Receiver<'_>>,
        rep: &mut Reporter<'_>,
    ) -> Result<Row, CliError> {
        let (p, buf, half, last) = (self.p, self.buf, self.half, size - 1);
        let lat_write = p.test == Test::WriteLat;
        if lat_write {
            buf.flag(half + last)?.set(0)?;
        }
        let before = match (p.compare, p.test.is_bw()) {
            (false, _) => None,
            (true, true) => Some(self.raw(size)?),
            (true, false) => pingpong::baseline(p, rep)?,
        };
        let addr = buf.addr.raw() + if lat_write { half } else { 0 };
        let iters = if p.duration.is_some() { 0 } else { p.iters };
        self.ctl.send(&Ctl::Round { size, iters, addr, rkey: buf.rkey().0 })?;
        let Ctl::Ready { addr: raddr, rkey } = self.ctl.recv(&|| activity(self.host))? else {
            return Err(peer_error(&self.ctl.peer, "expected READY from the server".into()));
        };
        let (name, rkey) = (p.test.name(), Rkey(rkey));
        let (qp, cq) = (&self.qps[0], self.cq);
        let mut dog = Watchdog::new(p.timeout);
        let mut progress = Progress::new(format!("{name} {size} B"));
        let until = Until::new(p.iters, p.duration);
        let local = buf.sge(0, if p.test.is_atomic() { 8 } else { size });
        let samples = match p.test {
            Test::WriteBw | Test::ReadBw | Test::SendBw | Test::AtomicBw => {
                let wr = request(p, local, raddr, rkey);
                let plan = BwPlan { until, tx_depth: p.tx_depth, cq_mod: p.cq_mod };
                let qps: Vec<&QueuePair> = self.qps.iter().collect();
                let mut pump = || Ok(());
                let times =
                    bench::bw(name, &qps, cq, wr, plan, &mut pump, &mut dog, &mut progress)?;
                if p.test == Test::SendBw {
                    self.ctl.send(&Ctl::End)?;
                }
                let base = match before {
                    Some(b) => Some((b + self.raw(size)?) / 2.0),
                    None => None,
                };
                return Ok(Row::Bw(BwRow::from_times(size, p.qps, &times).with_baseline(base)));
            }
            Test::ReadLat | Test::AtomicLat => {
                let wr = request(p, local, raddr, rkey);
                bench::one_at_a_time(name, qp, cq, wr, until, &mut dog, &mut progress)?
            }
            Test::SendLat => {
                let Some(rx) = rxs else {
                    return Err(CliError::invalid("perf", name, "send_lat receives on its QP"));
                };
                let wr = SendWr::send(0, local);
                bench::send_pingpong(name, qp, cq, rx, wr, until, true, &mut dog)?
            }
            _ => {
                let (post, poll) = (buf.flag(last)?, buf.flag(half + last)?);
                let plan = LatPlan { until, post: &post, poll: &poll, client: true };
                let wr = SendWr::write(0, local, raddr, rkey);
                bench::pingpong(name, qp, cq, wr, &plan, &mut dog, &mut progress)?
            }
        };
        let base = match before {
            Some(b) => pingpong::baseline(p, rep)?.map(|a| (a + b) / 2.0),
            None => None,
        };
        Ok(lat_row(size, samples, p.duration.is_some(), base))
    }
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
    let (ccq, crcq) =
        (host.cq(PERF_CTL_SLOTS as usize + 4)?, host.cq(PERF_CTL_SLOTS as usize + 4)?);
    let init = Host::qp_init(&ccq, &crcq, 4, PERF_CTL_SLOTS as u32);
    let mine =
        Hello { test: p.test, flags: 0, max_size: 0, baseline_port: raw_port, qps: 0, qpn: 0 };
    let accept_error = |e: pinwheel::VerbsError| {
        let hint = (e.errno() == Errno::ETIMEDOUT)
            .then(|| format!("no client came within {} s (--timeout)", p.timeout.as_secs_f64()));
        CliError::verbs("perf", format!("port {port}"), e).with_hint(hint)
    };
    let (ctl_qp, private) = listener
        .accept(&host.pd, init, Access::all_rw(), &mine.encode(), p.timeout)
        .map_err(accept_error)?;
    let peer = ctl_qp.info().peer;
    let theirs = check_client(p, &peer, &private)?;
    if !p.coherence || theirs.flags & NO_COHERENCE != 0 {
        host.node.device.set_coherence_checks(false);
    }
    let q = usize::from(theirs.qps);
    let depth = 16;
    let cq = host.cq(q * depth as usize + 64)?;
    let rcq = host.cq(q * rx_depth(p.test) as usize + 64)?;
    let mut qps = Vec::with_capacity(q);
    for _ in 0..q {
        let init = Host::qp_init(&cq, &rcq, depth, rx_depth(p.test));
        let (qp, private) = listener
            .accept(&host.pd, init, Access::all_rw(), &mine.encode(), p.timeout)
            .map_err(accept_error)?;
        check_client(p, &peer, &private)?;
        qps.push(qp);
    }
    let (half, buf_len) = layout(p.test, theirs.max_size);
    let buf = host.buffer(buf_len, Access::all_rw(), 0x5e)?;
    let ctl = Control::new(&host, &ctl_qp, (&ccq, &crcq), peer.clone(), p.timeout)?;
    let mut rxs = receivers(
        p.test,
        &qps,
        &rcq,
        &buf,
        if p.test.is_pingpong() { half } else { 0 },
        theirs.max_size,
    )?;
    let session =
        Session { p, host: &host, buf: &buf, half, max_size: theirs.max_size, qps: &qps, cq: &cq };
    let rounds = session.serve(&ctl, &raw, &mut rxs)?;
    writeln!(out, " served {} to {peer}: {rounds} message size(s)", p.test.name())
        .map_err(stdout_error)
}

/// The client's HELLO, checked: the same test, a message size this server can hold, a
/// number of QPs it allows.
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
    let qps_max = crate::limits::PERF_QPS_MAX;
    if theirs.qps == 0 || u32::from(theirs.qps) > qps_max {
        return Err(peer_error(peer, format!("{} QPs outside 1..={qps_max}", theirs.qps)));
    }
    Ok(theirs)
}

/// The server's side of a session.
struct Session<'a> {
    p: &'a Params,
    host: &'a Host,
    buf: &'a Buffer,
    half: u64,
    max_size: u64,
    qps: &'a [QueuePair],
    cq: &'a CompletionQueue,
}

impl Session<'_> {
    /// Serves control messages until `Done`; the number of message sizes run.
    fn serve(
        &self,
        ctl: &Control<'_>,
        raw: &TcpListener,
        rxs: &mut Option<Receiver<'_>>,
    ) -> Result<u64, CliError> {
        let (p, peer) = (self.p, &ctl.peer);
        let activity = || activity(self.host);
        let mut rounds = 0u64;
        loop {
            match ctl.recv(&activity)? {
                Ctl::Round { size, iters, addr, rkey } => {
                    self.check(size, iters, peer)?;
                    self.round(ctl, size, iters, addr, Rkey(rkey), rxs)?;
                    rounds += 1;
                }
                Ctl::Baseline { size, iters } if p.test.is_bw() => {
                    self.check(size, iters, peer)?;
                    let from_client = p.test != Test::ReadBw;
                    baseline::raw_serve(raw, from_client, size, iters, p.timeout)?;
                }
                Ctl::Baseline { .. } => {
                    return Err(peer_error(peer, format!("no baseline for {}", p.test.name())));
                }
                Ctl::Done => return Ok(rounds),
                Ctl::Ready { .. } | Ctl::End => {
                    return Err(peer_error(peer, "unexpected control message".into()));
                }
            }
        }
    }

    fn check(&self, size: u64, iters: u64, peer: &str) -> Result<(), CliError> {
        if size == 0 || size > self.max_size || iters > PERF_ITERS_MAX {
            return Err(peer_error(
                peer,
                format!(
                    "round of {iters} x {size} bytes outside 0..={PERF_ITERS_MAX} x 1..={}",
                    self.max_size
                ),
            ));
        }
        Ok(())
    }

    /// Answers READY and plays the server's part: the ping-pongs, `send_bw`'s RECVs.
    fn round(
        &self,
        ctl: &Control<'_>,
        size: u64,
        iters: u64,
        addr: u64,
        rkey: Rkey,
        rxs: &mut Option<Receiver<'_>>,
    ) -> Result<(), CliError> {
        let (p, name) = (self.p, self.p.test.name());
        let pingpong = p.test.is_pingpong();
        let last = size - 1;
        let poll = self.buf.flag(if pingpong { self.half + last } else { last })?;
        if p.test == Test::WriteLat {
            poll.set(0)?;
        }
        // The WRITE ping-pong's client writes into the receive half.
        let target = self.buf.addr.raw() + if p.test == Test::WriteLat { self.half } else { 0 };
        ctl.send(&Ctl::Ready { addr: target, rkey: self.buf.rkey().0 })?;
        // 0 iterations: a -D run, which the client ends (STOP, or End).
        let until =
            Until { iters: if iters == 0 { PERF_ITERS_MAX } else { iters }, deadline: None };
        let mut dog = Watchdog::new(p.timeout);
        let (qp, cq) = (&self.qps[0], self.cq);
        let local = self.buf.sge(0, size);
        match p.test {
            Test::WriteLat => {
                let post = self.buf.flag(last)?;
                let plan = LatPlan { until, post: &post, poll: &poll, client: false };
                let wr = SendWr::write(0, local, addr, rkey);
                let mut progress = Progress::new(String::new());
                bench::pingpong(name, qp, cq, wr, &plan, &mut dog, &mut progress)?;
            }
            Test::SendLat => {
                let Some(rx) = rxs else {
                    return Err(peer_error(&ctl.peer, "send_lat receives on its QP".into()));
                };
                let wr = SendWr::send(0, local);
                bench::send_pingpong(name, qp, cq, rx, wr, until, false, &mut dog)?;
            }
            Test::SendBw => loop {
                let got = match rxs.as_mut() {
                    Some(rx) => rx.pump(name)?,
                    None => 0,
                };
                let now = std::time::Instant::now();
                if got > 0 {
                    dog.progress(now);
                }
                match ctl.try_recv()? {
                    Some(Ctl::End) => break,
                    Some(_) => return Err(peer_error(&ctl.peer, "expected END".into())),
                    None => dog.check(now, "send_bw: the client's SENDs")?,
                }
                if got == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
            },
            _ => {}
        }
        Ok(())
    }
}
