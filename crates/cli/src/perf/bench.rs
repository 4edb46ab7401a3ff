//! The measurement loops, as perftest's `run_iter_bw`, `run_iter_lat_write` and
//! `run_iter_lat` (read). The same loops serve loopback and TCP: only who executes the work
//! requests differs (the poster's thread in loopback, the peer's engine over TCP).
//!
//! Every wait is bounded: a loop fails once nothing has happened for the run's timeout.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pinwheel::{SendWr, WcOpcode, WcStatus, WorkCompletion};

use crate::error::CliError;
use crate::limits::{PERF_PROGRESS_MS, PERF_SPINS_BEFORE_YIELD};
use crate::perf::host::Flag;
use pinwheel::mm::Errno;

/// Fails a run after `limit` without progress, or once the other side of a run in this
/// process gave up (`abort`).
#[derive(Debug)]
pub(crate) struct Watchdog {
    limit: Duration,
    last: Instant,
    abort: Option<Arc<AtomicBool>>,
}

impl Watchdog {
    pub(crate) fn new(limit: Duration) -> Watchdog {
        Watchdog { limit, last: Instant::now(), abort: None }
    }
    /// A watchdog that also fails once `abort` is set.
    pub(crate) fn with_abort(limit: Duration, abort: Arc<AtomicBool>) -> Watchdog {
        Watchdog { limit, last: Instant::now(), abort: Some(abort) }
    }
    /// Something happened.
    pub(crate) fn progress(&mut self, now: Instant) {
        self.last = now;
    }
    /// `Err` once nothing happened for the limit; `what` says what was awaited.
    pub(crate) fn check(&self, now: Instant, what: &str) -> Result<(), CliError> {
        if self.abort.as_ref().is_some_and(|a| a.load(Ordering::Relaxed)) {
            return Err(CliError::Refused {
                op: "perf",
                target: what.to_string(),
                errno: Errno::ECANCELED,
                detail: "the other side of the run failed".into(),
            });
        }
        if now.saturating_duration_since(self.last) < self.limit {
            return Ok(());
        }
        Err(CliError::Refused {
            op: "perf",
            target: what.to_string(),
            errno: Errno::ETIMEDOUT,
            detail: format!(
                "nothing happened for {:.1} s (--timeout): the peer stalled or went away",
                self.limit.as_secs_f64()
            ),
        })
    }
}

/// "done/total" on stderr every `PERF_PROGRESS_MS` while a run lasts, when stderr is a
/// terminal.
#[derive(Debug)]
pub(crate) struct Progress {
    on: bool,
    label: String,
    last: Instant,
    shown: bool,
}

impl Progress {
    pub(crate) fn new(label: String) -> Progress {
        Progress { on: std::io::stderr().is_terminal(), label, last: Instant::now(), shown: false }
    }
    pub(crate) fn tick(&mut self, done: u64, total: u64, now: Instant) {
        if self.on && now.saturating_duration_since(self.last).as_millis() >= PERF_PROGRESS_MS {
            self.last = now;
            self.shown = true;
            let _ = write!(std::io::stderr(), "\r {}: {done}/{total} iterations ", self.label);
        }
    }
    pub(crate) fn done(&mut self) {
        if self.shown {
            let width = self.label.len() + 48;
            let _ = write!(std::io::stderr(), "\r{:width$}\r", "");
            self.shown = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done();
    }
}

fn failed(test: &str, what: String) -> CliError {
    CliError::Refused { op: "perf", target: test.to_string(), errno: Errno::EIO, detail: what }
}

/// A completion that did not succeed.
fn bad_completion(test: &str, wc: &WorkCompletion) -> CliError {
    failed(
        test,
        format!(
            "work request {} completed with {} ({})",
            wc.wr_id,
            wc.status.code_name(),
            wc.status.name()
        ),
    )
}

/// A placeholder for completion arrays.
pub(crate) fn blank_wc() -> WorkCompletion {
    WorkCompletion {
        wr_id: 0,
        status: WcStatus::Success,
        opcode: WcOpcode::RdmaWrite,
        byte_len: 0,
        imm: None,
        qpn: pinwheel::Qpn(0),
    }
}

/// A QP the loops post to: one of an embedded device, or one of a client of a node daemon.
pub(crate) trait PerfQp {
    fn post(&self, test: &str, wr: &SendWr) -> Result<(), CliError>;
}

/// A CQ the loops poll.
pub(crate) trait PerfCq {
    /// Moves up to `out.len()` completions into `out`.
    fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize, CliError>;
    /// Waits up to `d` for a completion.
    fn wait(&self, d: Duration);
}

impl PerfQp for pinwheel::QueuePair {
    fn post(&self, test: &str, wr: &SendWr) -> Result<(), CliError> {
        self.post_send(std::slice::from_ref(wr)).map_err(|e| CliError::verbs("perf", test, e))
    }
}

impl PerfCq for pinwheel::CompletionQueue {
    fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize, CliError> {
        Ok(pinwheel::CompletionQueue::poll(self, out))
    }
    fn wait(&self, d: Duration) {
        pinwheel::CompletionQueue::wait(self, d);
    }
}

fn client_error(test: &str, e: pinwheel::client::Error) -> CliError {
    CliError::Refused {
        op: "perf",
        target: test.to_string(),
        errno: e.errno(),
        detail: e.message().to_string(),
    }
}

impl PerfQp for pinwheel::client::QueuePair {
    fn post(&self, test: &str, wr: &SendWr) -> Result<(), CliError> {
        self.post_send(std::slice::from_ref(wr)).map_err(|e| client_error(test, e))
    }
}

impl PerfCq for pinwheel::client::CompletionQueue {
    fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize, CliError> {
        pinwheel::client::CompletionQueue::poll(self, out).map_err(|e| client_error("poll", e))
    }
    fn wait(&self, d: Duration) {
        let _ = pinwheel::client::CompletionQueue::wait(self, d);
    }
}

fn post(test: &str, qp: &dyn PerfQp, wr: &SendWr) -> Result<(), CliError> {
    qp.post(test, wr)
}

/// How a bandwidth run goes.
#[derive(Copy, Clone, Debug)]
pub(crate) struct BwPlan {
    pub(crate) iters: u64,
    pub(crate) tx_depth: u32,
    pub(crate) cq_mod: u32,
}

/// perftest's bandwidth loop: `iters` posts of `wr` (a WRITE or READ of one message), at most
/// `tx_depth` in flight, every `cq_mod`-th and the last signaled. Returns when each message
/// was posted and when its completion was seen (a signaled completion completes every
/// message before it: RC completes in order).
pub(crate) fn bw(
    test: &str,
    qp: &dyn PerfQp,
    cq: &dyn PerfCq,
    mut wr: SendWr,
    plan: BwPlan,
    dog: &mut Watchdog,
    progress: &mut Progress,
) -> Result<(Vec<Instant>, Vec<Instant>), CliError> {
    let n = plan.iters as usize;
    let (depth, cq_mod) = (u64::from(plan.tx_depth), u64::from(plan.cq_mod.max(1)));
    // Written in full before the clock starts: the first touch of their pages must not fall
    // inside the run (perftest allocates its arrays up front too).
    let start = Instant::now();
    let mut tposted: Vec<Instant> = vec![start; n];
    let mut tcompleted: Vec<Instant> = vec![start; n];
    let mut wcs = vec![blank_wc(); 64];
    let (mut scnt, mut ccnt) = (0u64, 0u64);
    dog.progress(Instant::now());
    while ccnt < plan.iters {
        while scnt < plan.iters && scnt - ccnt < depth {
            wr.wr_id = scnt;
            wr.signaled = (scnt + 1) % cq_mod == 0 || scnt + 1 == plan.iters;
            tposted[scnt as usize] = Instant::now();
            post(test, qp, &wr)?;
            scnt += 1;
        }
        let got = cq.poll(&mut wcs)?;
        let now = Instant::now();
        if got == 0 {
            dog.check(now, test)?;
            cq.wait(Duration::from_millis(10));
            continue;
        }
        for wc in &wcs[..got] {
            if wc.status != WcStatus::Success {
                return Err(bad_completion(test, wc));
            }
            let upto = wc.wr_id.saturating_add(1).min(scnt);
            if upto > ccnt {
                tcompleted[ccnt as usize..upto as usize].fill(now);
                ccnt = upto;
            }
        }
        dog.progress(now);
        progress.tick(ccnt, plan.iters, now);
    }
    progress.done();
    Ok((tposted, tcompleted))
}

/// Spins until `ready()`, yielding the CPU after a while (on two cores the peer's engine
/// thread needs one); bounded by the watchdog.
pub(crate) fn spin_until(
    test: &str,
    what: &str,
    dog: &Watchdog,
    mut ready: impl FnMut() -> Result<bool, CliError>,
) -> Result<(), CliError> {
    let mut spins = 0u32;
    loop {
        if ready()? {
            return Ok(());
        }
        spins = spins.wrapping_add(1);
        if spins < PERF_SPINS_BEFORE_YIELD {
            std::hint::spin_loop();
            continue;
        }
        std::thread::yield_now();
        if spins.is_multiple_of(1024) {
            dog.check(Instant::now(), &format!("{test}: {what}"))?;
        }
    }
}

/// Reaps the completions of signaled sends (latency loops); `Ok(n)` completions seen.
fn reap(test: &str, cq: &dyn PerfCq, wcs: &mut [WorkCompletion]) -> Result<usize, CliError> {
    let got = cq.poll(wcs)?;
    if let Some(wc) = wcs[..got].iter().find(|w| w.status != WcStatus::Success) {
        return Err(bad_completion(test, wc));
    }
    Ok(got)
}

/// How a latency run goes.
#[derive(Debug)]
pub(crate) struct LatPlan<'a> {
    pub(crate) iters: u64,
    /// The last byte of the message this side writes (its send half).
    pub(crate) post: &'a Flag,
    /// The last byte of where the peer's message lands (this side's receive half).
    pub(crate) poll: &'a Flag,
    /// This side starts (the client) and keeps the samples.
    pub(crate) client: bool,
}

/// One side of perftest's WRITE ping-pong: the client writes its message (last byte set to
/// the iteration's value) into the server's receive half; the server waits for that byte to
/// change there and writes its own message back into the client's receive half; the client
/// waits for it. A sample is half the round trip (µs). Values run 1..=255, so a receive half
/// zeroed before the run never matches.
pub(crate) fn pingpong(
    test: &str,
    qp: &dyn PerfQp,
    cq: &dyn PerfCq,
    mut wr: SendWr,
    plan: &LatPlan<'_>,
    dog: &mut Watchdog,
    progress: &mut Progress,
) -> Result<Vec<f64>, CliError> {
    let mut samples = Vec::with_capacity(if plan.client { plan.iters as usize } else { 0 });
    let mut wcs = vec![blank_wc(); 16];
    let (mut posted, mut reaped) = (0u64, 0u64);
    for i in 0..plan.iters {
        let v = (i % 255 + 1) as u8;
        if !plan.client {
            spin_until(test, "waiting for the ping", dog, || Ok(plan.poll.get()? == v))?;
        }
        // Only the client keeps time (perftest's server does not): a clock read here would sit
        // on the critical path of the round trip.
        let t0 = if plan.client { Some(Instant::now()) } else { None };
        plan.post.set(v)?;
        wr.wr_id = i;
        wr.signaled = true;
        post(test, qp, &wr)?;
        posted += 1;
        if plan.client {
            spin_until(test, "waiting for the pong", dog, || Ok(plan.poll.get()? == v))?;
            let now = Instant::now();
            let t0 = t0.unwrap_or(now);
            samples.push(now.saturating_duration_since(t0).as_secs_f64() * 1e6 / 2.0);
            progress.tick(i + 1, plan.iters, now);
        }
        reaped += reap(test, cq, &mut wcs)? as u64;
        dog.progress(Instant::now());
    }
    while reaped < posted {
        spin_until(test, "waiting for the last completions", dog, || {
            reaped += reap(test, cq, &mut wcs)? as u64;
            Ok(reaped >= posted)
        })?;
    }
    progress.done();
    Ok(samples)
}

/// perftest's READ latency: one READ at a time, from post to completion (µs, a whole round
/// trip).
pub(crate) fn read_lat(
    test: &str,
    qp: &dyn PerfQp,
    cq: &dyn PerfCq,
    mut wr: SendWr,
    iters: u64,
    dog: &mut Watchdog,
    progress: &mut Progress,
) -> Result<Vec<f64>, CliError> {
    let mut samples = Vec::with_capacity(iters as usize);
    let mut wcs = vec![blank_wc(); 4];
    for i in 0..iters {
        wr.wr_id = i;
        wr.signaled = true;
        let t0 = Instant::now();
        post(test, qp, &wr)?;
        spin_until(test, "waiting for the READ", dog, || Ok(reap(test, cq, &mut wcs)? > 0))?;
        let now = Instant::now();
        samples.push(now.saturating_duration_since(t0).as_secs_f64() * 1e6);
        dog.progress(now);
        progress.tick(i + 1, iters, now);
    }
    progress.done();
    Ok(samples)
}
