//! `--loopback`: both sides in this process, QPs of one device connected with
//! `connect_local` (one pair per `-q`). The poster's thread executes each work request (a
//! loopback transfer is a copy the initiator makes into memory it can reach, after the MR
//! checks), so the bandwidth tests need no second thread — `send_bw`'s receiver re-posts its
//! RECVs from the same loop, as a receiver sharing the core would; the ping-pongs run their
//! server side on a thread of its own.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use pinwheel::mm::{Errno, PAGE_SIZE};
use pinwheel::{Access, CompletionQueue, QueuePair, SendWr};

use crate::error::CliError;
use crate::limits::{PERF_POOL_SLACK, PERF_RX_DEPTH};
use crate::perf::bench::{self, BwPlan, LatPlan, Progress, Receiver, Samples, Until, Watchdog};
use crate::perf::host::{Buffer, Host};
use crate::perf::report::{BwRow, Layout, Reporter, Row, lat_row};
use crate::perf::{Params, Test, baseline, pingpong, request};

/// One side: its buffer, QPs and CQs (send, receive).
struct End<'a> {
    buf: &'a Buffer,
    qps: Vec<QueuePair>,
    cq: &'a CompletionQueue,
    rcq: &'a CompletionQueue,
}

fn stdout_error(e: std::io::Error) -> CliError {
    CliError::io("write", "stdout", "writing the output failed", e)
}

/// The layout of a run's rows.
pub(crate) fn layout(p: &Params) -> Layout {
    match (p.test.is_bw(), p.duration.is_some()) {
        (true, _) => Layout::Bw,
        (false, false) => Layout::Lat,
        (false, true) => Layout::LatDuration,
    }
}

/// Runs the test on every message size.
pub(crate) fn run(p: &Params, out: &mut dyn Write) -> Result<(), CliError> {
    let lat = !p.test.is_bw();
    let half = p.max_size().next_multiple_of(PAGE_SIZE);
    let buf_len = if lat { 2 * half } else { half };
    let host = Host::new("pinwheel0", 2 * buf_len + PERF_POOL_SLACK)?;
    host.node.device.set_coherence_checks(p.coherence);
    let client_buf = host.buffer(buf_len, Access::all_rw(), 0xc1)?;
    let server_buf = host.buffer(buf_len, Access::all_rw(), 0x5e)?;
    let depth = p.tx_depth.max(16);
    let q = p.qps as usize;
    let cq_depth = q * depth as usize + 64;
    let rq_depth = if p.test.is_send() { PERF_RX_DEPTH } else { 16 };
    let rcq_depth = q * rq_depth as usize + 64;
    let (ccq, scq) = (host.cq(cq_depth)?, host.cq(cq_depth)?);
    let (crcq, srcq) = (host.cq(rcq_depth)?, host.cq(rcq_depth)?);
    let verbs = |e| CliError::verbs("perf", "loopback queue pairs", e);
    let (mut cqps, mut sqps) = (Vec::new(), Vec::new());
    for _ in 0..q {
        let c = host.pd.create_qp(Host::qp_init(&ccq, &crcq, depth, rq_depth)).map_err(verbs)?;
        let s = host.pd.create_qp(Host::qp_init(&scq, &srcq, depth, rq_depth)).map_err(verbs)?;
        c.connect_local(&s, Access::all_rw()).map_err(verbs)?;
        cqps.push(c);
        sqps.push(s);
    }
    let client = End { buf: &client_buf, qps: cqps, cq: &ccq, rcq: &crcq };
    let server = End { buf: &server_buf, qps: sqps, cq: &scq, rcq: &srcq };
    let baseline = if p.test.is_bw() {
        "memcpy between the same two buffers of the pool, one thread"
    } else {
        pingpong::DESCRIPTION
    };
    let attr = host.node.device.attr();
    let info = p.info(attr.name, attr.active_mtu, "loopback", None, baseline);
    let mut rep = Reporter::new(out, p.json);
    rep.begin(info, p.test.title(), layout(p)).map_err(stdout_error)?;
    // SEND tests: RECVs posted once for the run, of the largest size (every size fits), and
    // re-posted as they complete. send_bw: the server's QPs; send_lat: both sides' QP.
    let mut rxs = Vec::new();
    let max = p.max_size();
    match p.test {
        Test::SendBw => {
            let qps = server.qps.iter().collect();
            rxs.push(Receiver::new(qps, server.rcq, server.buf.sge(0, max), PERF_RX_DEPTH)?);
        }
        Test::SendLat => {
            // Before either side sends: nobody waits for a RECV (RNR).
            let (c, s) = (vec![&client.qps[0]], vec![&server.qps[0]]);
            rxs.push(Receiver::new(c, client.rcq, client.buf.sge(half, max), 4)?);
            rxs.push(Receiver::new(s, server.rcq, server.buf.sge(half, max), 4)?);
        }
        _ => {}
    }
    for &size in &p.sizes {
        let row = match p.test {
            Test::WriteBw | Test::ReadBw | Test::SendBw | Test::AtomicBw => {
                Row::Bw(bw(p, size, &client, &server, &mut rxs)?)
            }
            _ => {
                let before = pingpong::baseline(p, &mut rep)?;
                let s = match p.test {
                    Test::WriteLat => write_lat(p, size, half, &client, &server)?,
                    Test::SendLat => send_lat(p, size, &client, &server, &mut rxs)?,
                    _ => one_at_a_time(p, size, &client, &server)?,
                };
                let base = match before {
                    Some(b) => pingpong::baseline(p, &mut rep)?.map(|a| (a + b) / 2.0),
                    None => None,
                };
                lat_row(size, s, p.duration.is_some(), base)
            }
        };
        rep.row(row).map_err(stdout_error)?;
    }
    rep.end().map_err(stdout_error)
}

/// The message of a test of `size` bytes from `end`'s buffer (atomics: 8 bytes).
fn local_sge(p: &Params, end: &End<'_>, size: u64) -> pinwheel::Sge {
    end.buf.sge(0, if p.test.is_atomic() { 8 } else { size })
}

fn bw(
    p: &Params,
    size: u64,
    client: &End<'_>,
    server: &End<'_>,
    receivers: &mut [Receiver<'_>],
) -> Result<BwRow, CliError> {
    let name = p.test.name();
    let wr = request(p, local_sge(p, client, size), server.buf.addr.raw(), server.buf.rkey());
    let (from, to) = if matches!(p.test, Test::ReadBw) {
        (server.buf, client.buf)
    } else {
        (client.buf, server.buf)
    };
    // SEND: the loop reaps and re-posts the server's RECVs between its polls.
    let mut pump = || -> Result<(), CliError> {
        for r in receivers.iter_mut() {
            r.pump(name)?;
        }
        Ok(())
    };
    // The baseline runs before and after the RDMA run; their mean is reported.
    let copy = |_: ()| baseline::memcpy(from, to, size, p.iters);
    let before = if p.compare { Some(copy(())?) } else { None };
    let plan =
        BwPlan { until: Until::new(p.iters, p.duration), tx_depth: p.tx_depth, cq_mod: p.cq_mod };
    let mut dog = Watchdog::new(p.timeout);
    let mut progress = Progress::new(format!("{name} {size} B"));
    let qps: Vec<&QueuePair> = client.qps.iter().collect();
    let times = bench::bw(name, &qps, client.cq, wr, plan, &mut pump, &mut dog, &mut progress)?;
    let base = match before {
        Some(b) => Some((b + copy(())?) / 2.0),
        None => None,
    };
    Ok(BwRow::from_times(size, p.qps, &times).with_baseline(base))
}

fn one_at_a_time(
    p: &Params,
    size: u64,
    client: &End<'_>,
    server: &End<'_>,
) -> Result<Samples, CliError> {
    let name = p.test.name();
    let wr = request(p, local_sge(p, client, size), server.buf.addr.raw(), server.buf.rkey());
    let mut dog = Watchdog::new(p.timeout);
    let mut progress = Progress::new(format!("{name} {size} B"));
    let until = Until::new(p.iters, p.duration);
    bench::one_at_a_time(name, &client.qps[0], client.cq, wr, until, &mut dog, &mut progress)
}

/// Runs `client` on this thread and `server` on a scoped one; the first failure is the
/// cause (the other side only saw it abort).
fn two_sided(
    name: &str,
    timeout: std::time::Duration,
    client: impl FnOnce(&mut Watchdog) -> Result<Samples, CliError>,
    server: impl FnOnce(&mut Watchdog) -> Result<Samples, CliError> + Send,
) -> Result<Samples, CliError> {
    let abort = Arc::new(AtomicBool::new(false));
    let give_up = |r: Result<Samples, CliError>| {
        if r.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        r
    };
    std::thread::scope(|scope| {
        let server_side = scope.spawn(|| {
            let mut dog = Watchdog::with_abort(timeout, Arc::clone(&abort));
            give_up(server(&mut dog))
        });
        let mut dog = Watchdog::with_abort(timeout, Arc::clone(&abort));
        let mine = give_up(client(&mut dog));
        let theirs = server_side.join().map_err(|_| {
            CliError::invalid("perf", name, "the server thread of the ping-pong panicked")
        })?;
        let cancelled = |e: &CliError| matches!(e, CliError::Refused { errno, .. } if *errno == Errno::ECANCELED);
        match (mine, theirs) {
            (Ok(s), Ok(_)) => Ok(s),
            (Err(e), _) if !cancelled(&e) => Err(e),
            (_, Err(e)) => Err(e),
            (Err(e), Ok(_)) => Err(e),
        }
    })
}

/// The WRITE ping-pong: this thread is the client, a scoped thread the server. Each side
/// writes its send half (offset 0) into the other's receive half (offset `half`).
fn write_lat(
    p: &Params,
    size: u64,
    half: u64,
    client: &End<'_>,
    server: &End<'_>,
) -> Result<Samples, CliError> {
    let name = p.test.name();
    let last = size - 1;
    let (c_post, c_poll) = (client.buf.flag(last)?, client.buf.flag(half + last)?);
    let (s_post, s_poll) = (server.buf.flag(last)?, server.buf.flag(half + last)?);
    c_poll.set(0)?;
    s_poll.set(0)?;
    let to_server = server.buf.addr.raw() + half;
    let to_client = client.buf.addr.raw() + half;
    let c_wr = SendWr::write(0, client.buf.sge(0, size), to_server, server.buf.rkey());
    let s_wr = SendWr::write(0, server.buf.sge(0, size), to_client, client.buf.rkey());
    let until = Until::new(p.iters, p.duration);
    // The server answers until the client's count or its STOP.
    let s_until = Until { iters: until.iters, deadline: None };
    let (sqp, scq, cqp, ccq) = (&server.qps[0], server.cq, &client.qps[0], client.cq);
    two_sided(
        name,
        p.timeout,
        |dog| {
            let plan = LatPlan { until, post: &c_post, poll: &c_poll, client: true };
            let mut progress = Progress::new(format!("{name} {size} B"));
            bench::pingpong(name, cqp, ccq, c_wr, &plan, dog, &mut progress)
        },
        |dog| {
            let plan = LatPlan { until: s_until, post: &s_post, poll: &s_poll, client: false };
            let mut progress = Progress::new(String::new());
            bench::pingpong(name, sqp, scq, s_wr, &plan, dog, &mut progress)
        },
    )
}

/// The SEND ping-pong: each side keeps RECVs posted into its receive half (`rxs`: the
/// client's, the server's) and SENDs its send half.
fn send_lat(
    p: &Params,
    size: u64,
    client: &End<'_>,
    server: &End<'_>,
    rxs: &mut [Receiver<'_>],
) -> Result<Samples, CliError> {
    let name = p.test.name();
    let until = Until::new(p.iters, p.duration);
    let s_until = Until { iters: until.iters, deadline: None };
    let c_wr = SendWr::send(0, client.buf.sge(0, size));
    let s_wr = SendWr::send(0, server.buf.sge(0, size));
    let (sqp, cqp) = (&server.qps[0], &client.qps[0]);
    let [c_rx, s_rx] = rxs else {
        return Err(CliError::invalid("perf", name, "send_lat needs both sides' receivers"));
    };
    two_sided(
        name,
        p.timeout,
        |dog| bench::send_pingpong(name, cqp, client.cq, c_rx, c_wr, until, true, dog),
        |dog| bench::send_pingpong(name, sqp, server.cq, s_rx, s_wr, s_until, false, dog),
    )
}
