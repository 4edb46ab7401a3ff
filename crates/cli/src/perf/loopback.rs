//! `--loopback`: both sides in this process, two QPs of one device connected with
//! `connect_local`. The poster's thread executes each work request (a loopback transfer is a
//! copy the initiator makes into memory it can reach, after the MR checks), so the bandwidth
//! tests need no second thread; the WRITE ping-pong runs its server side on a thread of its
//! own.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use pinwheel::mm::PAGE_SIZE;
use pinwheel::{Access, CompletionQueue, QueuePair, SendWr};

use crate::error::CliError;
use crate::limits::PERF_POOL_SLACK;
use crate::perf::bench::{self, BwPlan, LatPlan, Progress, Watchdog};
use crate::perf::host::{Buffer, Host};
use crate::perf::report::{BwRow, LatRow, Reporter, Row};
use crate::perf::{Params, Test, baseline, bw_request};

/// One side: its buffer, QP and CQ.
struct End<'a> {
    buf: &'a Buffer,
    qp: &'a QueuePair,
    cq: &'a CompletionQueue,
}

fn stdout_error(e: std::io::Error) -> CliError {
    CliError::io("write", "stdout", "writing the output failed", e)
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
    let cq_depth = depth as usize + 64;
    let (ccq, scq) = (host.cq(cq_depth)?, host.cq(cq_depth)?);
    let verbs = |e| CliError::verbs("perf", "loopback queue pairs", e);
    let cqp = host.pd.create_qp(Host::qp_init(&ccq, &ccq, depth, 16)).map_err(verbs)?;
    let sqp = host.pd.create_qp(Host::qp_init(&scq, &scq, depth, 16)).map_err(verbs)?;
    cqp.connect_local(&sqp, Access::all_rw()).map_err(verbs)?;
    let client = End { buf: &client_buf, qp: &cqp, cq: &ccq };
    let server = End { buf: &server_buf, qp: &sqp, cq: &scq };
    let baseline = "memcpy between the same two buffers of the pool, one thread";
    let attr = host.node.device.attr();
    let info = p.info(attr.name, attr.active_mtu, "loopback", None, baseline);
    let mut rep = Reporter::new(out, p.json);
    rep.begin(info, p.test.title(), p.test.is_bw()).map_err(stdout_error)?;
    for &size in &p.sizes {
        let row = match p.test {
            Test::WriteBw | Test::ReadBw => Row::Bw(bw(p, size, &client, &server)?),
            Test::ReadLat => Row::Lat(read_lat(p, size, &client, &server)?),
            Test::WriteLat => Row::Lat(write_lat(p, size, half, &client, &server)?),
        };
        rep.row(row).map_err(stdout_error)?;
    }
    rep.end().map_err(stdout_error)
}

fn bw(p: &Params, size: u64, client: &End<'_>, server: &End<'_>) -> Result<BwRow, CliError> {
    let name = p.test.name();
    let wr = bw_request(p.test, client.buf.sge(0, size), server.buf.addr.raw(), server.buf.rkey());
    let (from, to) =
        if p.test == Test::WriteBw { (client.buf, server.buf) } else { (server.buf, client.buf) };
    // The baseline runs before and after the RDMA run; their mean is reported.
    let before = if p.compare { Some(baseline::memcpy(from, to, size, p.iters)?) } else { None };
    let plan = BwPlan { iters: p.iters, tx_depth: p.tx_depth, cq_mod: p.cq_mod };
    let mut dog = Watchdog::new(p.timeout);
    let mut progress = Progress::new(format!("{name} {size} B"));
    let (posted, completed) =
        bench::bw(name, client.qp, client.cq, wr, plan, &mut dog, &mut progress)?;
    let base = match before {
        Some(b) => Some((b + baseline::memcpy(from, to, size, p.iters)?) / 2.0),
        None => None,
    };
    Ok(BwRow::new(size, &posted, &completed).with_baseline(base))
}

fn read_lat(p: &Params, size: u64, client: &End<'_>, server: &End<'_>) -> Result<LatRow, CliError> {
    let name = p.test.name();
    let wr = SendWr::read(0, client.buf.sge(0, size), server.buf.addr.raw(), server.buf.rkey());
    let mut dog = Watchdog::new(p.timeout);
    let mut progress = Progress::new(format!("{name} {size} B"));
    let samples =
        bench::read_lat(name, client.qp, client.cq, wr, p.iters, &mut dog, &mut progress)?;
    Ok(LatRow::new(size, samples))
}

/// The ping-pong: this thread is the client, a scoped thread the server. Each side writes
/// its send half (offset 0) into the other's receive half (offset `half`).
fn write_lat(
    p: &Params,
    size: u64,
    half: u64,
    client: &End<'_>,
    server: &End<'_>,
) -> Result<LatRow, CliError> {
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
    let abort = Arc::new(AtomicBool::new(false));
    let give_up = |r: Result<Vec<f64>, CliError>| {
        if r.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        r
    };
    let samples = std::thread::scope(|scope| {
        let server_side = scope.spawn(|| {
            let plan = LatPlan { iters: p.iters, post: &s_post, poll: &s_poll, client: false };
            let mut dog = Watchdog::with_abort(p.timeout, Arc::clone(&abort));
            let mut progress = Progress::new(String::new());
            give_up(bench::pingpong(
                name,
                server.qp,
                server.cq,
                s_wr,
                &plan,
                &mut dog,
                &mut progress,
            ))
        });
        let plan = LatPlan { iters: p.iters, post: &c_post, poll: &c_poll, client: true };
        let mut dog = Watchdog::with_abort(p.timeout, Arc::clone(&abort));
        let mut progress = Progress::new(format!("{name} {size} B"));
        let mine = give_up(bench::pingpong(
            name,
            client.qp,
            client.cq,
            c_wr,
            &plan,
            &mut dog,
            &mut progress,
        ));
        let theirs = server_side.join().map_err(|_| {
            CliError::invalid("perf", name, "the server thread of the ping-pong panicked")
        })?;
        // The first failure is the cause; the other side only saw it abort.
        match (mine, theirs) {
            (Ok(s), Ok(_)) => Ok(s),
            (Err(e), _) if !matches!(&e, CliError::Refused { errno, .. } if *errno == pinwheel::mm::Errno::ECANCELED) => {
                Err(e)
            }
            (_, Err(e)) => Err(e),
            (Err(e), Ok(_)) => Err(e),
        }
    })?;
    Ok(LatRow::new(size, samples))
}
