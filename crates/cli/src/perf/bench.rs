//! The measurement loops, as perftest's `run_iter_bw`, `run_iter_lat_write`,
//! `run_iter_lat_send` and `run_iter_lat` (READ, atomics). The same loops serve loopback and
//! TCP: only who executes the work requests differs (the poster's thread in loopback, the
//! peer's engine over TCP).
//!
//! A run lasts `iters` iterations or, with -D, until its deadline ([`Until`]). The ping-pongs
//! end a duration run with a STOP message the other side recognises (the flag value `STOP`
//! for WRITE, the immediate `STOP_IMM` for SEND), since it cannot know the count.
//!
//! Every wait is bounded: a loop fails once nothing has happened for the run's timeout.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pinwheel::{RecvWr, SendWr, Sge, WcOpcode, WcStatus, WorkCompletion};

use crate::admin_cmd::client_err;
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
pub(crate) trait PerfQp: Sync {
    fn post(&self, test: &str, wr: &SendWr) -> Result<(), CliError>;
    /// Its number (completions name it).
    fn qpn(&self) -> u32;
    /// Posts receives.
    fn post_recv(&self, wrs: &[RecvWr]) -> Result<(), CliError>;
}

/// A CQ the loops poll.
pub(crate) trait PerfCq: Sync {
    /// Moves up to `out.len()` completions into `out`.
    fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize, CliError>;
    /// Waits up to `d` for a completion.
    fn wait(&self, d: Duration);
}

impl PerfQp for pinwheel::QueuePair {
    fn post(&self, test: &str, wr: &SendWr) -> Result<(), CliError> {
        self.post_send(std::slice::from_ref(wr)).map_err(|e| CliError::verbs("perf", test, e))
    }
    fn qpn(&self) -> u32 {
        pinwheel::QueuePair::qpn(self).0
    }
    fn post_recv(&self, wrs: &[RecvWr]) -> Result<(), CliError> {
        pinwheel::QueuePair::post_recv(self, wrs).map_err(|e| CliError::verbs("perf", "RECVs", e))
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

impl PerfQp for pinwheel::client::QueuePair {
    fn post(&self, test: &str, wr: &SendWr) -> Result<(), CliError> {
        self.post_send(std::slice::from_ref(wr)).map_err(|e| client_err("perf", test, e))
    }
    fn qpn(&self) -> u32 {
        pinwheel::client::QueuePair::qpn(self).0
    }
    fn post_recv(&self, wrs: &[RecvWr]) -> Result<(), CliError> {
        pinwheel::client::QueuePair::post_recv(self, wrs)
            .map_err(|e| client_err("perf", "RECVs", e))
    }
}

impl PerfCq for pinwheel::client::CompletionQueue {
    fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize, CliError> {
        pinwheel::client::CompletionQueue::poll(self, out)
            .map_err(|e| client_err("perf", "poll", e))
    }
    fn wait(&self, d: Duration) {
        let _ = pinwheel::client::CompletionQueue::wait(self, d);
    }
}

pub(crate) fn post(test: &str, qp: &dyn PerfQp, wr: &SendWr) -> Result<(), CliError> {
    qp.post(test, wr)
}

/// The flag value that ends a duration-mode WRITE ping-pong (iterations use 1..STOP).
pub(crate) const STOP: u8 = 255;
/// The immediate that ends a duration-mode SEND ping-pong.
pub(crate) const STOP_IMM: u32 = 0x5701;

/// The flag value of iteration `i` (1..STOP: a receive half zeroed before the run never
/// matches, and STOP stays free).
fn flag_value(i: u64) -> u8 {
    (i % u64::from(STOP - 1) + 1) as u8
}

/// When a run ends: after `iters` iterations or at `deadline` (-D), whichever comes first.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Until {
    pub(crate) iters: u64,
    pub(crate) deadline: Option<Instant>,
}

impl Until {
    /// `iters` iterations, or `duration` from now (then at most `PERF_ITERS_MAX`).
    pub(crate) fn new(iters: u64, duration: Option<Duration>) -> Until {
        match duration {
            Some(d) => {
                Until { iters: crate::limits::PERF_ITERS_MAX, deadline: Some(Instant::now() + d) }
            }
            None => Until { iters, deadline: None },
        }
    }
    /// Iteration `i` (0-based) is not to be run.
    fn over(&self, i: u64, now: Instant) -> bool {
        i >= self.iters || self.deadline.is_some_and(|d| now >= d)
    }
    fn timed(&self) -> bool {
        self.deadline.is_some()
    }
}

/// How a bandwidth run goes.
#[derive(Copy, Clone, Debug)]
pub(crate) struct BwPlan {
    /// Iterations per QP (or the duration).
    pub(crate) until: Until,
    pub(crate) tx_depth: u32,
    pub(crate) cq_mod: u32,
}

/// What a bandwidth run measured.
#[derive(Debug)]
pub(crate) enum BwTimes {
    /// When each message was posted and completed, in posting and completion order
    /// (perftest's `tposted`/`tcompleted` over every QP).
    Each(Vec<Instant>, Vec<Instant>),
    /// -D: messages completed between the first post and the last completion.
    Span { msgs: u64, first: Instant, last: Instant },
}

/// Per-QP counters of a bandwidth run.
#[derive(Clone, Debug, Default)]
struct QpCount {
    posted: u64,
    completed: u64,
    /// The last posted request was signaled (a duration run must end on one: completions of
    /// unsignaled requests only show through a later signaled one).
    last_signaled: bool,
    done: bool,
}

/// perftest's bandwidth loop over one or more QPs sharing `cq`: posts of `wr` round-robin,
/// at most `tx_depth` in flight per QP, every `cq_mod`-th and the last signaled. `pump` runs
/// between polls (a SEND test's receiver re-posting its RECVs in loopback). A signaled
/// completion completes every message of its QP before it (RC completes in order).
#[allow(clippy::too_many_arguments)]
pub(crate) fn bw<Q: PerfQp>(
    test: &str,
    qps: &[&Q],
    cq: &dyn PerfCq,
    mut wr: SendWr,
    plan: BwPlan,
    pump: &mut dyn FnMut() -> Result<(), CliError>,
    dog: &mut Watchdog,
    progress: &mut Progress,
) -> Result<BwTimes, CliError> {
    let until = plan.until;
    let (depth, cq_mod) = (u64::from(plan.tx_depth), u64::from(plan.cq_mod.max(1)));
    let total = until.iters.saturating_mul(qps.len() as u64);
    // Written in full before the clock starts: the first touch of their pages must not fall
    // inside the run (perftest allocates its arrays up front too).
    let start = Instant::now();
    let n = if until.timed() { 0 } else { total as usize };
    let mut tposted: Vec<Instant> = vec![start; n];
    let mut tcompleted: Vec<Instant> = vec![start; n];
    let qpns: Vec<u32> = qps.iter().map(|q| q.qpn()).collect();
    let mut count = vec![QpCount::default(); qps.len()];
    let mut wcs = vec![blank_wc(); 64];
    let (mut totscnt, mut totccnt) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last = start;
    dog.progress(Instant::now());
    while count.iter().any(|c| !c.done || c.completed < c.posted) {
        for (k, qp) in qps.iter().enumerate() {
            let c = &mut count[k];
            while !c.done && c.posted - c.completed < depth {
                let now = Instant::now();
                let over = until.over(c.posted + 1, now);
                if until.over(c.posted, now) {
                    // Time is up: end on a signaled request if the last one was not.
                    if !c.last_signaled && c.posted > 0 && c.posted < until.iters {
                        wr.wr_id = c.posted;
                        wr.signaled = true;
                        post(test, *qp, &wr)?;
                        c.posted += 1;
                        totscnt += 1;
                    }
                    c.done = true;
                    break;
                }
                wr.wr_id = c.posted;
                wr.signaled = (c.posted + 1).is_multiple_of(cq_mod) || over;
                c.last_signaled = wr.signaled;
                if let Some(t) = tposted.get_mut(totscnt as usize) {
                    *t = now;
                }
                first.get_or_insert(now);
                post(test, *qp, &wr)?;
                c.posted += 1;
                totscnt += 1;
                if over {
                    c.done = true;
                }
            }
        }
        pump()?;
        let got = cq.poll(&mut wcs)?;
        let now = Instant::now();
        if got == 0 {
            dog.check(now, test)?;
            if qps.len() == 1 {
                cq.wait(Duration::from_millis(10));
            }
            continue;
        }
        for wc in &wcs[..got] {
            if wc.status != WcStatus::Success {
                return Err(bad_completion(test, wc));
            }
            let Some(k) = qpns.iter().position(|q| *q == wc.qpn.0) else { continue };
            let c = &mut count[k];
            let upto = wc.wr_id.saturating_add(1).min(c.posted);
            if upto > c.completed {
                let newly = upto - c.completed;
                c.completed = upto;
                let (a, b) = (totccnt as usize, (totccnt + newly) as usize);
                if let Some(slice) = tcompleted.get_mut(a..b.min(n)) {
                    slice.fill(now);
                }
                totccnt += newly;
                last = now;
            }
        }
        dog.progress(now);
        if !until.timed() {
            progress.tick(totccnt, total, now);
        }
    }
    progress.done();
    Ok(if until.timed() {
        Span { msgs: totccnt, first: first.unwrap_or(start), last }
    } else {
        BwTimes::Each(tposted, tcompleted)
    })
}

use BwTimes::Span;

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

/// Reaps the last `left` completions of a ping-pong (bounded by the watchdog). `after_stop`:
/// the peer ended the run with its STOP and may already have torn its QP down, so a flushed
/// completion of this side's last answer is not an error.
fn reap_rest(
    test: &str,
    cq: &dyn PerfCq,
    wcs: &mut [WorkCompletion],
    mut left: u64,
    after_stop: bool,
    dog: &Watchdog,
) -> Result<(), CliError> {
    if left == 0 {
        return Ok(());
    }
    spin_until(test, "waiting for the last completions", dog, || {
        let got = cq.poll(wcs)?;
        for wc in &wcs[..got] {
            let flushed = after_stop && wc.status == WcStatus::WrFlushErr;
            if wc.status != WcStatus::Success && !flushed {
                return Err(bad_completion(test, wc));
            }
        }
        left = left.saturating_sub(got as u64);
        Ok(left == 0)
    })
}

/// How a latency run goes.
#[derive(Debug)]
pub(crate) struct LatPlan<'a> {
    pub(crate) until: Until,
    /// The last byte of the message this side writes (its send half).
    pub(crate) post: &'a Flag,
    /// The last byte of where the peer's message lands (this side's receive half).
    pub(crate) poll: &'a Flag,
    /// This side starts (the client) and keeps the samples.
    pub(crate) client: bool,
}

/// What a latency run measured: one sample a round trip (µs, halved for ping-pongs) and how
/// long the run lasted.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    pub(crate) us: Vec<f64>,
    pub(crate) secs: f64,
}

/// One side of perftest's WRITE ping-pong: the client writes its message (last byte set to
/// the iteration's value) into the server's receive half; the server waits for that byte to
/// change there and writes its own message back into the client's receive half; the client
/// waits for it. A sample is half the round trip (µs). A duration run ends with the client's
/// STOP message, which the server does not answer.
pub(crate) fn pingpong(
    test: &str,
    qp: &dyn PerfQp,
    cq: &dyn PerfCq,
    mut wr: SendWr,
    plan: &LatPlan<'_>,
    dog: &mut Watchdog,
    progress: &mut Progress,
) -> Result<Samples, CliError> {
    let until = plan.until;
    let mut samples =
        Vec::with_capacity(if plan.client && !until.timed() { until.iters as usize } else { 0 });
    let mut wcs = vec![blank_wc(); 16];
    let (mut posted, mut reaped) = (0u64, 0u64);
    let mut stopped = false;
    let t_start = Instant::now();
    let mut i = 0u64;
    loop {
        let v = flag_value(i);
        let t0 = Instant::now();
        let stop = plan.client && until.over(i, t0);
        if stop && !until.timed() {
            break;
        }
        if !plan.client {
            if i >= until.iters {
                break;
            }
            let mut seen = 0u8;
            spin_until(test, "waiting for the ping", dog, || {
                seen = plan.poll.get()?;
                Ok(seen == v || seen == STOP)
            })?;
            if seen == STOP {
                stopped = true;
                break;
            }
        }
        plan.post.set(if stop { STOP } else { v })?;
        wr.wr_id = i;
        wr.signaled = true;
        post(test, qp, &wr)?;
        posted += 1;
        if stop {
            break;
        }
        if plan.client {
            spin_until(test, "waiting for the pong", dog, || Ok(plan.poll.get()? == v))?;
            let now = Instant::now();
            samples.push(now.saturating_duration_since(t0).as_secs_f64() * 1e6 / 2.0);
            progress.tick(i + 1, until.iters, now);
        }
        reaped += reap(test, cq, &mut wcs)? as u64;
        dog.progress(Instant::now());
        i += 1;
    }
    let secs = t_start.elapsed().as_secs_f64();
    reap_rest(test, cq, &mut wcs, posted.saturating_sub(reaped), stopped, dog)?;
    progress.done();
    Ok(Samples { us: samples, secs })
}

/// RECVs of the QPs sharing one receive CQ, all into the same bytes (the data is not looked
/// at: perftest's receiver does the same), each re-posted on its QP as it completes.
pub(crate) struct Receiver<'a> {
    qps: Vec<&'a dyn PerfQp>,
    cq: &'a dyn PerfCq,
    sge: Sge,
    wcs: Vec<WorkCompletion>,
    /// Messages received.
    pub(crate) received: u64,
    /// A STOP (immediate `STOP_IMM`) was received.
    pub(crate) stopped: bool,
}

impl std::fmt::Debug for Receiver<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("qps", &self.qps.len())
            .field("received", &self.received)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl<'a> Receiver<'a> {
    /// Posts `depth` RECVs into `sge` on each of `qps`, whose receive completions go to `cq`.
    pub(crate) fn new<Q: PerfQp>(
        qps: Vec<&'a Q>,
        cq: &'a dyn PerfCq,
        sge: Sge,
        depth: u32,
    ) -> Result<Receiver<'a>, CliError> {
        let r = Receiver {
            qps: qps.into_iter().map(|q| q as &dyn PerfQp).collect(),
            cq,
            sge,
            wcs: vec![blank_wc(); 64],
            received: 0,
            stopped: false,
        };
        for qp in &r.qps {
            r.post(*qp, u64::from(depth))?;
        }
        Ok(r)
    }

    fn post(&self, qp: &dyn PerfQp, n: u64) -> Result<(), CliError> {
        let wrs: Vec<RecvWr> =
            (0..n).map(|i| RecvWr { wr_id: i, sg_list: vec![self.sge] }).collect();
        qp.post_recv(&wrs)
    }

    /// Reaps the RECVs completed and posts as many again on their QPs; how many.
    pub(crate) fn pump(&mut self, test: &str) -> Result<u64, CliError> {
        let got = self.cq.poll(&mut self.wcs)?;
        for wc in &self.wcs[..got] {
            // After the peer's STOP its QP may be gone: the RECVs left are flushed.
            if self.stopped && wc.status == WcStatus::WrFlushErr {
                continue;
            }
            if wc.status != WcStatus::Success {
                return Err(bad_completion(test, wc));
            }
            if wc.imm == Some(STOP_IMM) {
                self.stopped = true;
            }
            if let Some(qp) = self.qps.iter().find(|q| q.qpn() == wc.qpn.0) {
                self.post(*qp, 1)?;
            }
        }
        self.received += got as u64;
        Ok(got as u64)
    }

    /// Waits (spinning, bounded) for the next message; false if it was the STOP.
    fn next(&mut self, test: &str, dog: &Watchdog) -> Result<bool, CliError> {
        spin_until(test, "waiting for a SEND", dog, || Ok(self.pump(test)? > 0))?;
        // One message at a time in a ping-pong: the STOP is the only one then.
        Ok(!self.stopped)
    }
}

/// One side of perftest's SEND ping-pong: the client SENDs into the server's posted RECV and
/// waits for the server's SEND into its own; the server answers each message. A sample is half
/// the round trip (µs). A duration run ends with a SEND carrying `STOP_IMM`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn send_pingpong(
    test: &str,
    qp: &dyn PerfQp,
    cq: &dyn PerfCq,
    rx: &mut Receiver<'_>,
    wr: SendWr,
    until: Until,
    client: bool,
    dog: &mut Watchdog,
) -> Result<Samples, CliError> {
    let mut samples = Vec::new();
    let mut wcs = vec![blank_wc(); 16];
    let (mut posted, mut reaped) = (0u64, 0u64);
    let t_start = Instant::now();
    let mut i = 0u64;
    loop {
        let t0 = Instant::now();
        let stop = client && until.over(i, t0);
        if stop && !until.timed() {
            break;
        }
        if !client && (i >= until.iters || !rx.next(test, dog)?) {
            break;
        }
        let mut w = if stop { wr.clone().with_imm(STOP_IMM) } else { wr.clone() };
        w.wr_id = i;
        w.signaled = true;
        post(test, qp, &w)?;
        posted += 1;
        if stop {
            break;
        }
        if client {
            rx.next(test, dog)?;
            let now = Instant::now();
            samples.push(now.saturating_duration_since(t0).as_secs_f64() * 1e6 / 2.0);
        }
        reaped += reap(test, cq, &mut wcs)? as u64;
        dog.progress(Instant::now());
        i += 1;
    }
    let secs = t_start.elapsed().as_secs_f64();
    reap_rest(test, cq, &mut wcs, posted.saturating_sub(reaped), !client && rx.stopped, dog)?;
    Ok(Samples { us: samples, secs })
}

/// perftest's READ and atomic latency: one request at a time, from post to completion (µs,
/// a whole round trip).
pub(crate) fn one_at_a_time(
    test: &str,
    qp: &dyn PerfQp,
    cq: &dyn PerfCq,
    mut wr: SendWr,
    until: Until,
    dog: &mut Watchdog,
    progress: &mut Progress,
) -> Result<Samples, CliError> {
    let mut samples = Vec::with_capacity(if until.timed() { 1024 } else { until.iters as usize });
    let mut wcs = vec![blank_wc(); 4];
    let t_start = Instant::now();
    let mut i = 0u64;
    while !until.over(i, Instant::now()) {
        wr.wr_id = i;
        wr.signaled = true;
        let t0 = Instant::now();
        post(test, qp, &wr)?;
        spin_until(test, "waiting for the completion", dog, || Ok(reap(test, cq, &mut wcs)? > 0))?;
        let now = Instant::now();
        samples.push(now.saturating_duration_since(t0).as_secs_f64() * 1e6);
        dog.progress(now);
        progress.tick(i + 1, until.iters, now);
        i += 1;
    }
    progress.done();
    Ok(Samples { us: samples, secs: t_start.elapsed().as_secs_f64() })
}
