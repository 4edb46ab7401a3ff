//! `lease_break`: the stall a writer sees while a layout change runs under each coordinating
//! policy (the question of LSF/MM 2019 and thread 002: what does the RDMA user see?).
//!
//! Each scenario runs on a fresh node with its pin policy. A file of the node's DAX filesystem
//! is mapped and registered as a pinned MR (the long-term pin of DAX memory the debate is
//! about). A writer — another QP of the node, standing for the remote peer — writes into the
//! MR one WRITE at a time, without pause. The administrator then defragments the file (every
//! block moves: a layout change with no change of content) while the MR's holder does what
//! its scenario says:
//!
//! - `recall -> release` (lease-revoke, cooperative holder): on the recall the holder asks
//!   the writer to pause (the application's own protocol), deregisters the MR, releases its
//!   layout lease, takes a new one once the change is done, registers again and hands the
//!   writer the new key;
//! - `decohere -> restore` (decohere, the library's `AutoRestore`): nobody pauses anybody; the
//!   engine holds the writes to the decoherent MR and `restore_mr` resumes them;
//! - `unresponsive -> revoke` (lease-revoke, a holder that ignores the recall): at the
//!   lease-break time the MR is revoked and the writer's WRITE fails.
//!
//! The stall of a layout change is the longest time between two consecutive completions of the
//! writer around it; failed work requests are the completions that did not succeed.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pinwheel::fs::{Caller, DefragOptions, LeaseKind, OpenFile, OwnerId, PinPolicy};
use pinwheel::mm::{FileOffset, MmapRequest, PAGE_SIZE, VirtAddr};
use pinwheel::{
    Access, AutoRestore, CompletionQueue, EventType, MemoryRegion, NodeConfig, PoolSpec, QueuePair,
    Rkey, SendWr, Sge, WcStatus,
};
use serde::Serialize;

use crate::error::CliError;
use crate::limits::{PERF_LEASE_FILE_PAGES, PERF_LEASE_ROUNDS_MAX, PERF_POOL_SLACK};
use crate::perf::Params;
use crate::perf::bench::blank_wc;
use crate::perf::coherence::{CostRow, begin, make_file};
use crate::perf::host::Host;
use crate::perf::report::{LatRow, Reporter, Row};

const STALL_HEADER: &str = " scenario                  policy        #rounds  #writes    stall p50[usec]  p99[usec]    max[usec]    change p50[usec]  failed WRs";

/// Completions the writer makes before and after a layout change.
const AROUND: usize = 200;

/// One scenario of lease_break.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct StallRow {
    pub(crate) scenario: &'static str,
    pub(crate) policy: &'static str,
    pub(crate) rounds: u64,
    pub(crate) writes: u64,
    pub(crate) stall_us_p50: f64,
    pub(crate) stall_us_p99: f64,
    pub(crate) stall_us_max: f64,
    /// How long the administrator's defrag took (median).
    pub(crate) change_us_p50: f64,
    pub(crate) failed_wrs: u64,
}

impl StallRow {
    pub(crate) fn text(&self) -> String {
        format!(
            " {:<25} {:<13} {:<8} {:<10} {:<16.1} {:<12.1} {:<12.1} {:<17.1} {}",
            self.scenario,
            self.policy,
            self.rounds,
            self.writes,
            self.stall_us_p50,
            self.stall_us_p99,
            self.stall_us_max,
            self.change_us_p50,
            self.failed_wrs
        )
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Scenario {
    Cooperative,
    Decohere,
    Unresponsive,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Cooperative => "recall -> release",
            Scenario::Decohere => "decohere -> restore",
            Scenario::Unresponsive => "unresponsive -> revoke",
        }
    }
    fn policy(self) -> PinPolicy {
        match self {
            Scenario::Decohere => PinPolicy::Decohere,
            _ => PinPolicy::LeaseRevoke,
        }
    }
}

fn verbs(what: &str) -> impl FnOnce(pinwheel::VerbsError) -> CliError + '_ {
    move |e| CliError::verbs("perf", what, e)
}

fn fs_error(what: &'static str) -> impl FnOnce(pinwheel::fs::FsError) -> CliError {
    move |e| CliError::fs("perf", &[what], e)
}

fn stuck(what: &str) -> CliError {
    CliError::Refused {
        op: "perf",
        target: "lease_break".into(),
        errno: pinwheel::mm::Errno::ETIMEDOUT,
        detail: format!("{what} did not happen within --timeout"),
    }
}

/// What the writer and the holder share: the key to write to, and the pause protocol of the
/// cooperative holder.
#[derive(Debug, Default)]
struct Shared {
    rkey: AtomicU32,
    pause: AtomicBool,
    paused: AtomicBool,
    stop: AtomicBool,
    /// Completions so far (the main thread waits on it).
    done: AtomicU32,
}

/// What the writer saw: the time of every completion and whether it succeeded.
#[derive(Debug, Default)]
struct WriterLog {
    completions: Vec<(Instant, bool)>,
}

/// The writer: one WRITE at a time to page after page of the MR, until told to stop or a
/// WRITE fails (the QP is in error then).
fn writer(
    qp: &QueuePair,
    cq: &CompletionQueue,
    src: Sge,
    base: u64,
    shared: &Shared,
    timeout: Duration,
) -> WriterLog {
    let mut log = WriterLog::default();
    let mut wcs = vec![blank_wc(); 4];
    let mut k = 0u64;
    while !shared.stop.load(Ordering::Acquire) {
        if shared.pause.load(Ordering::Acquire) {
            shared.paused.store(true, Ordering::Release);
            let deadline = Instant::now() + timeout;
            while shared.pause.load(Ordering::Acquire) && Instant::now() < deadline {
                std::thread::yield_now();
            }
            shared.paused.store(false, Ordering::Release);
            continue;
        }
        let rkey = Rkey(shared.rkey.load(Ordering::Acquire));
        let addr = base + (k % PERF_LEASE_FILE_PAGES) * PAGE_SIZE;
        let wr = SendWr::write(k, src, addr, rkey);
        k += 1;
        if qp.post_send(std::slice::from_ref(&wr)).is_err() {
            log.completions.push((Instant::now(), false));
            return log;
        }
        let deadline = Instant::now() + timeout;
        let ok = loop {
            let got = cq.poll(&mut wcs);
            if got > 0 {
                break wcs[..got].iter().all(|w| w.status == WcStatus::Success);
            }
            if Instant::now() >= deadline {
                break false;
            }
            cq.wait(Duration::from_millis(1));
        };
        log.completions.push((Instant::now(), ok));
        shared.done.fetch_add(1, Ordering::Release);
        if !ok {
            return log;
        }
    }
    log
}

/// The stall around a change that ran from `t0` to `t1`: the longest gap between consecutive
/// completions overlapping it (or from the last completion to `end` if none came after).
fn stall(log: &WriterLog, t0: Instant, t1: Instant, end: Instant) -> Duration {
    let times: Vec<Instant> = log.completions.iter().map(|c| c.0).collect();
    let mut worst = Duration::ZERO;
    for w in times.windows(2) {
        if w[1] >= t0 && w[0] <= t1 {
            worst = worst.max(w[1].saturating_duration_since(w[0]));
        }
    }
    if let Some(last) = times.last()
        && *last < t1
    {
        worst = worst.max(end.saturating_duration_since(*last));
    }
    worst
}

/// Waits (bounded) until `f()`.
fn wait_until(what: &str, timeout: Duration, f: impl Fn() -> bool) -> Result<(), CliError> {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() >= deadline {
            return Err(stuck(what));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(())
}

/// One scenario's node and its victim file, mapped.
struct Stage {
    host: Host,
    ino: pinwheel::fs::Ino,
    at: VirtAddr,
    len: u64,
}

impl Stage {
    fn new(s: Scenario, p: &Params) -> Result<Stage, CliError> {
        let len = PERF_LEASE_FILE_PAGES * PAGE_SIZE;
        // The cooperative holder and restore_mr never need the lease-break time: a long one
        // shows a holder that missed its cue as a stall of seconds, not a silent revoke.
        let lease_break =
            if s == Scenario::Unresponsive { p.lease_break } else { p.timeout.max(p.lease_break) };
        let host = Host::with_config(NodeConfig {
            name: "pinwheel0".into(),
            pool: PoolSpec::Memfd { size: 8 * len + PERF_POOL_SLACK },
            policy: s.policy(),
            lease_break,
            ..NodeConfig::default()
        })?;
        let ino = make_file(&host, "/victim", len, 0x33)?;
        let backing = host.node.fs.backing(ino).map_err(fs_error("/victim"))?;
        let req = MmapRequest::file(backing, FileOffset::new(0), len);
        let at = host.aspace.mmap(req).map_err(|e| CliError::Pool {
            op: "perf",
            path: "/victim (DAX mapping)".into(),
            error: e,
        })?;
        Ok(Stage { host, ino, at, len })
    }

    fn register(&self) -> Result<MemoryRegion, CliError> {
        self.host
            .pd
            .reg_mr(&self.host.aspace, self.at, self.len, Access::all_rw())
            .map_err(verbs("register the victim's DAX mapping (a long-term pin of file memory)"))
    }

    fn open(&self, lease: bool) -> Result<OpenFile, CliError> {
        let caller = Caller::new(OwnerId(1), "perf");
        let f = self.host.node.fs.open_ino(self.ino, &caller).map_err(fs_error("/victim"))?;
        if lease {
            f.set_lease(LeaseKind::Read, Some(self.host.ctx.lease_holder()))
                .map_err(fs_error("/victim (layout lease)"))?;
        }
        Ok(f)
    }
}

/// The cooperative holder's answer to a recall: pause the writer, deregister, release the
/// lease, take it again once the change is done, register again, resume the writer.
fn cooperate(
    stage: &Stage,
    open: &OpenFile,
    mr: &Mutex<Option<MemoryRegion>>,
    shared: &Shared,
    timeout: Duration,
) -> Result<(), CliError> {
    shared.pause.store(true, Ordering::Release);
    let r = (|| {
        wait_until("the writer's pause", timeout, || shared.paused.load(Ordering::Acquire))?;
        drop(mr.lock().ok().and_then(|mut m| m.take()));
        open.release_lease().map_err(fs_error("/victim (release the lease)"))?;
        let deadline = Instant::now() + timeout;
        let holder = stage.host.ctx.lease_holder();
        while open.set_lease(LeaseKind::Read, Some(Arc::clone(&holder))).is_err() {
            if Instant::now() >= deadline {
                return Err(stuck("taking the layout lease again"));
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        let new = stage.register()?;
        shared.rkey.store(new.rkey().0, Ordering::Release);
        if let Ok(mut m) = mr.lock() {
            *m = Some(new);
        }
        Ok(())
    })();
    shared.pause.store(false, Ordering::Release);
    r
}

/// One layout change under scenario `s`: (stall, change time, writes, failed WRs).
fn round(
    s: Scenario,
    stage: &Stage,
    p: &Params,
) -> Result<(Duration, Duration, u64, u64), CliError> {
    let host = &stage.host;
    let open = stage.open(s != Scenario::Decohere)?;
    let mr = Mutex::new(Some(stage.register()?));
    let shared = Shared::default();
    if let Ok(m) = mr.lock()
        && let Some(m) = m.as_ref()
    {
        shared.rkey.store(m.rkey().0, Ordering::Release);
    }
    let src = host.buffer(PAGE_SIZE, Access::all_rw(), 0x77)?;
    let (cq, tcq) = (host.cq(64)?, host.cq(64)?);
    let qp = host.pd.create_qp(Host::qp_init(&cq, &cq, 16, 16)).map_err(verbs("a QP"))?;
    let target = host.pd.create_qp(Host::qp_init(&tcq, &tcq, 16, 16)).map_err(verbs("a QP"))?;
    qp.connect_local(&target, Access::all_rw()).map_err(verbs("connect"))?;
    let size = p.sizes.first().copied().unwrap_or(8).min(PAGE_SIZE);
    let holder_stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let w =
            scope.spawn(|| writer(&qp, &cq, src.sge(0, size), stage.at.raw(), &shared, p.timeout));
        let h = scope.spawn(|| -> Result<(), CliError> {
            while s == Scenario::Cooperative && !holder_stop.load(Ordering::Acquire) {
                let Some(ev) = host.ctx.get_async_event(Duration::from_millis(5)) else { continue };
                if ev.kind == EventType::LeaseRecalled {
                    cooperate(stage, &open, &mr, &shared, p.timeout)?;
                }
            }
            Ok(())
        });
        let result = (|| {
            let n = AROUND as u32;
            wait_until("the writer's first writes", p.timeout, || {
                shared.done.load(Ordering::Acquire) >= n || w.is_finished()
            })?;
            let t0 = Instant::now();
            host.node
                .fs
                .defrag(stage.ino, DefragOptions::default(), &Caller::admin())
                .map_err(fs_error("/victim (defrag)"))?;
            let t1 = Instant::now();
            let after = shared.done.load(Ordering::Acquire) + n;
            wait_until("the writer's writes after the change", p.timeout, || {
                shared.done.load(Ordering::Acquire) >= after || w.is_finished()
            })?;
            Ok((t0, t1))
        })();
        shared.stop.store(true, Ordering::Release);
        holder_stop.store(true, Ordering::Release);
        let end = Instant::now();
        let log = w
            .join()
            .map_err(|_| CliError::invalid("perf", "lease_break", "the writer panicked"))?;
        h.join().map_err(|_| CliError::invalid("perf", "lease_break", "the holder panicked"))??;
        let (t0, t1) = result?;
        let failed = log.completions.iter().filter(|c| !c.1).count() as u64;
        Ok((stall(&log, t0, t1, end), t1 - t0, log.completions.len() as u64, failed))
    })
}

/// Runs every scenario, `-n` layout changes each.
pub(crate) fn lease_break(p: &Params, rep: &mut Reporter<'_>) -> Result<(), CliError> {
    let rounds = p.iters.min(PERF_LEASE_ROUNDS_MAX);
    let mut begun = false;
    for s in [Scenario::Cooperative, Scenario::Decohere, Scenario::Unresponsive] {
        let stage = Stage::new(s, p)?;
        if !begun {
            begin(p, rep, &stage.host, STALL_HEADER, Some("pinned (a DAX file mapping)".into()))?;
            begun = true;
        }
        // Decohere: the library's helper restores every decoherent MR of the context.
        let _helper =
            (s == Scenario::Decohere).then(|| AutoRestore::start(stage.host.ctx.clone(), |_| {}));
        let (mut stalls, mut changes) = (Vec::new(), Vec::new());
        let (mut writes, mut failed) = (0u64, 0u64);
        for _ in 0..rounds {
            let (st, ch, w, f) = round(s, &stage, p)?;
            stalls.push(st.as_secs_f64() * 1e6);
            changes.push(ch.as_secs_f64() * 1e6);
            writes += w;
            failed += f;
        }
        let st = LatRow::new(0, stalls);
        let ch = LatRow::new(0, changes);
        let row = StallRow {
            scenario: s.name(),
            policy: s.policy().name(),
            rounds,
            writes,
            stall_us_p50: st.t_typical_us,
            stall_us_p99: st.t_p99_us,
            stall_us_max: st.t_max_us,
            change_us_p50: ch.t_typical_us,
            failed_wrs: failed,
        };
        rep.row(Row::Cost(CostRow::Stall(row)))
            .map_err(|e| CliError::io("write", "stdout", "writing the output failed", e))?;
    }
    rep.note(format!(
        "file of {} KiB, pinned MR over its DAX mapping; the writer: one {} B WRITE at a time \
         from another QP of the node; layout change: defrag (every block moves); \
         unresponsive: lease-break time {} ms",
        PERF_LEASE_FILE_PAGES * PAGE_SIZE / 1024,
        p.sizes.first().copied().unwrap_or(8),
        p.lease_break.as_millis()
    ));
    Ok(())
}
