//! The costs of coherence, each measured in one process over a fresh node, next to its
//! baseline in the same run:
//!
//! - `reg_mr`: registration and deregistration of a resident buffer (a buffer in use), per MR
//!   kind and frame size, against `mlock` + touch of the same size of real anonymous host
//!   memory (already touched: the ratio column; first touch: shown beside it).
//! - `odp_fault`: one RDMA WRITE per page of a fresh ODP (or file) MR, each taking the MR's
//!   fault path; then the same pages again (translation hits: the fault-free floor); then a
//!   fresh MR prefetched with `advise_mr` first. The pool is warmed before (its frames
//!   resident in the host), so a fault costs what the node does, not the host kernel's first
//!   use of the memfd.
//! - `lease_break` (`lease.rs`): the stall a writer sees while a layout change runs.
//! - `coherence_cost`: loopback write_bw with `Device::set_coherence_checks` on and off,
//!   alternated; overhead = 1 − on/off.
//!
//! Rows are perftest-like: one line each, a header naming the columns and units, `--json` with
//! the same quantities.

use std::io::Write;
use std::time::{Duration, Instant};

use pinwheel::fs::{Caller, CreateOptions};
use pinwheel::mm::{HostMemory, MapFlags, MmapRequest, PAGE_SIZE, VirtAddr};
use pinwheel::{Access, MemoryRegion, SendWr};
use serde::Serialize;

use crate::error::CliError;
use crate::limits::{
    PERF_COST_ROUNDS, PERF_FAULT_PAGES_MAX, PERF_POOL_SLACK, PERF_REG_BYTES_PER_SIZE,
    PERF_REG_ITERS_MAX, PERF_REG_ITERS_MIN,
};
use crate::perf::bench::{self, BwPlan, Progress, Until, Watchdog};
use crate::perf::host::Host;
use crate::perf::report::{BwRow, LatRow, Layout, Reporter, Row};
use crate::perf::{MrKindArg, Params, Test, lease};

/// A row of a coherence test.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum CostRow {
    /// reg_mr.
    Reg(RegRow),
    /// odp_fault.
    Fault(FaultRow),
    /// lease_break.
    Stall(lease::StallRow),
    /// coherence_cost.
    Checks(ChecksRow),
}

impl CostRow {
    pub(crate) fn text(&self) -> String {
        match self {
            CostRow::Reg(r) => r.text(),
            CostRow::Fault(r) => r.text(),
            CostRow::Stall(r) => r.text(),
            CostRow::Checks(r) => r.text(),
        }
    }
}

const REG_HEADER: &str = " #bytes      #iterations   reg[usec]     dereg[usec]   mlock+touch[usec]  first-touch[usec]  ratio";
const FAULT_HEADER: &str = " mode                     #pages   t_p50[usec]  t_p99[usec]  t_max[usec]  t_avg[usec]  #faults  advise[usec/page]";
const CHECKS_HEADER: &str =
    " #bytes      #iterations  #rounds  checks ON[MB/sec]  checks OFF[MB/sec]  overhead[%]";

/// One size of reg_mr (medians, µs).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RegRow {
    pub(crate) bytes: u64,
    pub(crate) iterations: u64,
    pub(crate) reg_us: f64,
    pub(crate) dereg_us: f64,
    /// mlock + touch of the same size of host memory already touched.
    pub(crate) mlock_touch_us: f64,
    /// The same on fresh memory (first touch: page faults and zeroing).
    pub(crate) mlock_first_touch_us: f64,
    /// (reg + dereg) / mlock_touch.
    pub(crate) ratio: f64,
}

impl RegRow {
    fn text(&self) -> String {
        format!(
            " {:<11} {:<12}  {:<12.2}  {:<12.2}  {:<17.2}  {:<17.2}  {:.4}",
            self.bytes,
            self.iterations,
            self.reg_us,
            self.dereg_us,
            self.mlock_touch_us,
            self.mlock_first_touch_us,
            self.ratio
        )
    }
}

/// One mode of odp_fault (µs per access).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FaultRow {
    pub(crate) mode: &'static str,
    pub(crate) pages: u64,
    pub(crate) t_p50_us: f64,
    pub(crate) t_p99_us: f64,
    pub(crate) t_max_us: f64,
    pub(crate) t_avg_us: f64,
    /// Faults the device took during the pass (its ODP fault counter).
    pub(crate) faults: u64,
    /// `advise_mr` time divided by the pages it prefetched (the advised mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) advise_us_per_page: Option<f64>,
}

impl FaultRow {
    fn new(mode: &'static str, pass: (Vec<f64>, u64), advise: Option<f64>) -> FaultRow {
        let (samples, faults) = pass;
        let r = LatRow::new(8, samples);
        FaultRow {
            mode,
            pages: r.iterations,
            t_p50_us: r.t_typical_us,
            t_p99_us: r.t_p99_us,
            t_max_us: r.t_max_us,
            t_avg_us: r.t_avg_us,
            faults,
            advise_us_per_page: advise,
        }
    }
    fn text(&self) -> String {
        let advise = self.advise_us_per_page.map(|a| format!("{a:.3}")).unwrap_or("-".into());
        format!(
            " {:<24} {:<8} {:<12.2} {:<12.2} {:<12.2} {:<12.2} {:<8} {advise}",
            self.mode,
            self.pages,
            self.t_p50_us,
            self.t_p99_us,
            self.t_max_us,
            self.t_avg_us,
            self.faults
        )
    }
}

/// coherence_cost at one size (MiB/s, medians of the rounds).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ChecksRow {
    pub(crate) bytes: u64,
    pub(crate) iterations: u64,
    pub(crate) rounds: u64,
    pub(crate) on_mib_s: f64,
    pub(crate) off_mib_s: f64,
    /// 100 × (1 − on/off): what the checks cost (negative: faster with them).
    pub(crate) overhead_pct: f64,
    pub(crate) runs_on_mib_s: Vec<f64>,
    pub(crate) runs_off_mib_s: Vec<f64>,
}

impl ChecksRow {
    fn text(&self) -> String {
        format!(
            " {:<11} {:<12} {:<8} {:<18.2} {:<19.2} {:.2}",
            self.bytes,
            self.iterations,
            self.rounds,
            self.on_mib_s,
            self.off_mib_s,
            self.overhead_pct
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 0 => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        n => v[n / 2],
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn stdout_error(e: std::io::Error) -> CliError {
    CliError::io("write", "stdout", "writing the output failed", e)
}

fn verbs(what: &str) -> impl FnOnce(pinwheel::VerbsError) -> CliError + '_ {
    move |e| CliError::verbs("perf", what, e)
}

fn pool_error(what: &str) -> impl FnOnce(pinwheel::mm::MmError) -> CliError + '_ {
    move |e| CliError::Pool { op: "perf", path: format!("pool ({what})"), error: e }
}

/// Runs a coherence test.
pub(crate) fn run(p: &Params, out: &mut dyn Write) -> Result<(), CliError> {
    let mut rep = Reporter::new(out, p.json);
    match p.test {
        Test::RegMr => reg_mr(p, &mut rep)?,
        Test::OdpFault => odp_fault(p, &mut rep)?,
        Test::LeaseBreak => lease::lease_break(p, &mut rep)?,
        _ => coherence_cost(p, &mut rep)?,
    }
    rep.end().map_err(stdout_error)
}

/// Starts the report of a coherence test on `host`.
pub(crate) fn begin(
    p: &Params,
    rep: &mut Reporter<'_>,
    host: &Host,
    header: &'static str,
    mr_kind: Option<String>,
) -> Result<(), CliError> {
    let attr = host.node.device.attr();
    let mut info = p.info(attr.name, attr.active_mtu, "one process, a fresh node", None, "");
    info.mr_kind = mr_kind;
    rep.begin(info, p.test.title(), Layout::Cost(header)).map_err(stdout_error)
}

fn host_error(len: u64, what: &str, errno: pinwheel::mm::Errno) -> CliError {
    CliError::Refused {
        op: "perf",
        target: format!("{len} bytes of host memory"),
        errno,
        detail: format!(
            "{what} failed (the reg_mr baseline; mlock needs CAP_IPC_LOCK or a raised \
             RLIMIT_MEMLOCK)"
        ),
    }
}

/// Real anonymous memory of this process, `len` bytes.
fn host_memory(len: u64) -> Result<HostMemory, CliError> {
    let n =
        usize::try_from(len).map_err(|_| host_error(len, "mmap", pinwheel::mm::Errno::ENOMEM))?;
    HostMemory::new(n).map_err(|e| host_error(len, "mmap", e))
}

fn mlock_touch(m: &HostMemory) -> Result<Duration, CliError> {
    m.mlock_touch().map_err(|e| host_error(m.len() as u64, "mlock", e))
}

/// Iterations of reg_mr at `size`: -n, or enough for `PERF_REG_BYTES_PER_SIZE`.
fn reg_iters(p: &Params, size: u64) -> u64 {
    if p.iters_given {
        return p.iters;
    }
    (PERF_REG_BYTES_PER_SIZE / size).clamp(PERF_REG_ITERS_MIN, PERF_REG_ITERS_MAX)
}

fn reg_mr(p: &Params, rep: &mut Reporter<'_>) -> Result<(), CliError> {
    let max = p.max_size().next_multiple_of(PAGE_SIZE);
    let huge = p.huge;
    let unit = if huge { pinwheel::mm::HUGE_PAGE_SIZE } else { PAGE_SIZE };
    let host = Host::new("pinwheel0", max.next_multiple_of(unit) * 2 + PERF_POOL_SLACK)?;
    let kind = format!("{} ({} frames)", p.mr_kind.name(), if huge { "2 MiB" } else { "4 KiB" });
    begin(p, rep, &host, REG_HEADER, Some(kind))?;
    for &size in &p.sizes {
        let n = reg_iters(p, size);
        let len = size.next_multiple_of(if huge { unit } else { PAGE_SIZE });
        let target = Target::new(&host, p.mr_kind, len, huge)?;
        let anon = host_memory(len)?;
        let first = mlock_touch(&anon)?;
        let mut firsts = vec![us(first)];
        let (mut regs, mut deregs, mut mlocks) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            let t = Instant::now();
            let mr = target.register(&host)?;
            let reg = t.elapsed();
            let t = Instant::now();
            drop(mr);
            deregs.push(us(t.elapsed()));
            regs.push(us(reg));
            mlocks.push(us(mlock_touch(&anon)?));
        }
        drop(anon);
        // More first-touch samples on fresh memory, as many as the budget of the size allows.
        for _ in 1..n.min(3) {
            firsts.push(us(mlock_touch(&host_memory(len)?)?));
        }
        target.release(&host)?;
        let (reg_us, dereg_us, mlock_touch_us) = (median(regs), median(deregs), median(mlocks));
        let row = RegRow {
            bytes: size,
            iterations: n,
            reg_us,
            dereg_us,
            mlock_touch_us,
            mlock_first_touch_us: median(firsts),
            ratio: (reg_us + dereg_us) / mlock_touch_us.max(1e-9),
        };
        rep.row(Row::Cost(CostRow::Reg(row))).map_err(stdout_error)?;
    }
    rep.note(
        "ratio = (reg + dereg) / mlock+touch of host memory already touched; the buffer \
              registered is resident (a buffer in use)"
            .into(),
    );
    Ok(())
}

/// What reg_mr registers: a resident anonymous buffer, or a file of the node's filesystem.
enum Target {
    Anon { addr: VirtAddr, len: u64, odp: bool },
    File { ino: pinwheel::fs::Ino, len: u64 },
}

impl Target {
    fn new(host: &Host, kind: MrKindArg, len: u64, huge: bool) -> Result<Target, CliError> {
        if kind == MrKindArg::File {
            return Ok(Target::File { ino: make_file(host, "/reg_mr", len, 0x2a)?, len });
        }
        let mut flags = MapFlags::POPULATE;
        if huge {
            flags |= MapFlags::HUGE;
        }
        let addr = host
            .aspace
            .mmap(MmapRequest::anonymous(len).flags(flags))
            .map_err(pool_error("map the buffer"))?;
        Ok(Target::Anon { addr, len, odp: kind == MrKindArg::Odp })
    }

    fn register(&self, host: &Host) -> Result<MemoryRegion, CliError> {
        match *self {
            Target::Anon { addr, len, odp } => {
                let access =
                    if odp { Access::all_rw() | Access::ON_DEMAND } else { Access::all_rw() };
                host.pd.reg_mr(&host.aspace, addr, len, access).map_err(verbs("reg_mr"))
            }
            Target::File { ino, len } => host
                .pd
                .reg_file_mr(&host.node.fs, ino, 0, len, Access::all_rw())
                .map_err(verbs("reg_mr (file)")),
        }
    }

    fn release(self, host: &Host) -> Result<(), CliError> {
        match self {
            Target::Anon { addr, len, .. } => {
                host.aspace.munmap(addr, len).map_err(pool_error("unmap the buffer"))
            }
            Target::File { .. } => host
                .node
                .fs
                .unlink("/reg_mr", &Caller::admin())
                .map_err(|e| CliError::fs("perf", &["/reg_mr"], e)),
        }
    }
}

/// A file of `len` bytes at `path` (replacing one there), every block written with `fill`.
pub(crate) fn make_file(
    host: &Host,
    path: &str,
    len: u64,
    fill: u8,
) -> Result<pinwheel::fs::Ino, CliError> {
    let fs = &host.node.fs;
    let _ = fs.unlink(path, &Caller::admin());
    let fail = |e| CliError::fs("perf", &[path], e);
    let ino = fs.create(path, CreateOptions::default()).map_err(fail)?;
    let chunk = vec![fill; (1 << 20).min(len) as usize];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(chunk.len() as u64) as usize;
        fs.write(ino, at, &chunk[..n], &Caller::admin())
            .map_err(|e| CliError::fs("perf", &[path], e))?;
        at += n as u64;
    }
    Ok(ino)
}

/// One WRITE per page of `mr` (addresses `base + page * 4 KiB`), one at a time; µs each,
/// and the faults the device took meanwhile.
fn touch_pages(
    p: &Params,
    host: &Host,
    mr: &MemoryRegion,
    base: u64,
    pages: u64,
) -> Result<(Vec<f64>, u64), CliError> {
    let src = host.buffer(PAGE_SIZE, Access::all_rw(), 0x0d)?;
    let (cq, scq) = (host.cq(64)?, host.cq(64)?);
    let qp = host.pd.create_qp(Host::qp_init(&cq, &cq, 16, 16)).map_err(verbs("a QP"))?;
    let peer = host.pd.create_qp(Host::qp_init(&scq, &scq, 16, 16)).map_err(verbs("a QP"))?;
    qp.connect_local(&peer, Access::all_rw()).map_err(verbs("connect"))?;
    let size = p.sizes.first().copied().unwrap_or(8).min(PAGE_SIZE);
    let mut samples = Vec::with_capacity(pages as usize);
    let mut dog = Watchdog::new(p.timeout);
    let mut progress = Progress::new(String::new());
    let faults = || host.node.device.counters().5;
    let before = faults();
    for page in 0..pages {
        let wr = SendWr::write(page, src.sge(0, size), base + page * PAGE_SIZE, mr.rkey());
        let until = Until { iters: 1, deadline: None };
        let s = bench::one_at_a_time("odp_fault", &qp, &cq, wr, until, &mut dog, &mut progress)?;
        samples.extend(s.us);
    }
    Ok((samples, faults() - before))
}

fn odp_fault(p: &Params, rep: &mut Reporter<'_>) -> Result<(), CliError> {
    let pages = p.iters.min(PERF_FAULT_PAGES_MAX);
    let len = pages * PAGE_SIZE;
    let host = Host::new("pinwheel0", 3 * len + PERF_POOL_SLACK)?;
    begin(p, rep, &host, FAULT_HEADER, Some(p.mr_kind.name().into()))?;
    // Warm the pool: the host backs all of it now (MADV_POPULATE_WRITE), and 2 × len is
    // faulted in and freed, so the MRs' faults recycle frames (zeroed on reuse, as a node
    // that has run a while does) instead of paying the host's first use of the memfd.
    let pool = host.node.memory.pool();
    pool.populate(pinwheel::mm::PoolOffset::new(0), pool.size()).map_err(pool_error("populate"))?;
    let warm = host.aspace.mmap(MmapRequest::anonymous(2 * len).flags(MapFlags::POPULATE));
    let warm = warm.map_err(pool_error("warm the pool"))?;
    host.aspace.munmap(warm, 2 * len).map_err(pool_error("warm the pool"))?;
    let file = p.mr_kind == MrKindArg::File;
    let fresh = |name: &str| -> Result<(MemoryRegion, u64), CliError> {
        if file {
            let ino = make_file(&host, "/odp_fault", len, 0x3c)?;
            let mr = host
                .pd
                .reg_file_mr(&host.node.fs, ino, 0, len, Access::all_rw())
                .map_err(verbs("reg_file_mr"))?;
            return Ok((mr, 0));
        }
        let addr = host.aspace.mmap_anonymous(len).map_err(pool_error(name))?;
        let access = Access::all_rw() | Access::ON_DEMAND;
        let mr = host.pd.reg_mr(&host.aspace, addr, len, access).map_err(verbs("reg_mr (ODP)"))?;
        Ok((mr, addr.raw()))
    };
    let (mr, base) = fresh("an ODP region")?;
    let first = touch_pages(p, &host, &mr, base, pages)?;
    let hits = touch_pages(p, &host, &mr, base, pages)?;
    drop(mr);
    let (mr, base) = fresh("a second ODP region")?;
    let t = Instant::now();
    mr.advise_prefetch(base, len, true).map_err(verbs("advise_mr"))?;
    let advise = us(t.elapsed()) / pages as f64;
    debug_assert_eq!(mr.info().resident_pages, pages);
    let advised = touch_pages(p, &host, &mr, base, pages)?;
    let (f, h) = (
        FaultRow::new("first touch (fault)", first, None),
        FaultRow::new("resident (hit)", hits, None),
    );
    let fault_us = f.t_p50_us - h.t_p50_us;
    for row in [f, h, FaultRow::new("after advise_mr", advised, Some(advise))] {
        rep.row(Row::Cost(CostRow::Fault(row))).map_err(stdout_error)?;
    }
    rep.note(format!(
        "the fault itself (first touch - hit, medians): {fault_us:.2} us; the pool was warmed \
         first (populated in the host, frames recycled), one {} B WRITE per page",
        p.sizes.first().copied().unwrap_or(8)
    ));
    Ok(())
}

fn coherence_cost(p: &Params, rep: &mut Reporter<'_>) -> Result<(), CliError> {
    let half = p.max_size().next_multiple_of(PAGE_SIZE);
    let host = Host::new("pinwheel0", 2 * half + PERF_POOL_SLACK)?;
    begin(p, rep, &host, CHECKS_HEADER, None)?;
    let dev = &host.node.device;
    let (a, b) = (host.buffer(half, Access::all_rw(), 1)?, host.buffer(half, Access::all_rw(), 2)?);
    let depth = p.tx_depth.max(16);
    let (cq, scq) = (host.cq(depth as usize + 64)?, host.cq(depth as usize + 64)?);
    let qp = host.pd.create_qp(Host::qp_init(&cq, &cq, depth, 16)).map_err(verbs("a QP"))?;
    let peer = host.pd.create_qp(Host::qp_init(&scq, &scq, depth, 16)).map_err(verbs("a QP"))?;
    qp.connect_local(&peer, Access::all_rw()).map_err(verbs("connect"))?;
    for &size in &p.sizes {
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for round in 0..2 * PERF_COST_ROUNDS {
            let checks = round % 2 == 0;
            dev.set_coherence_checks(checks);
            let wr = SendWr::write(0, a.sge(0, size), b.addr.raw(), b.rkey());
            let plan = BwPlan {
                until: Until { iters: p.iters, deadline: None },
                tx_depth: p.tx_depth,
                cq_mod: p.cq_mod,
            };
            let mut dog = Watchdog::new(p.timeout);
            let mut progress = Progress::new(format!("coherence_cost {size} B"));
            let times = bench::bw(
                "coherence_cost",
                &[&qp],
                &cq,
                wr,
                plan,
                &mut || Ok(()),
                &mut dog,
                &mut progress,
            )?;
            let bw = BwRow::from_times(size, 1, &times).bw_average_mib_s;
            if checks { on.push(bw) } else { off.push(bw) }
        }
        dev.set_coherence_checks(true);
        let (on_mib_s, off_mib_s) = (median(on.clone()), median(off.clone()));
        let row = ChecksRow {
            bytes: size,
            iterations: p.iters,
            rounds: PERF_COST_ROUNDS,
            on_mib_s,
            off_mib_s,
            overhead_pct: 100.0 * (1.0 - on_mib_s / off_mib_s.max(1e-9)),
            runs_on_mib_s: on,
            runs_off_mib_s: off,
        };
        rep.row(Row::Cost(CostRow::Checks(row))).map_err(stdout_error)?;
    }
    rep.note(
        "write_bw in loopback, checks ON and OFF alternated run by run on the same QPs and \
              buffers; overhead = 1 - ON/OFF of the medians"
            .into(),
    );
    Ok(())
}
