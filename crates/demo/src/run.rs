//! One run: a server node with a victim file, canaries and little free space; a server
//! application that maps the victim, registers it as the strategy says and takes the leases
//! the policy requires; a client process writing over TCP; an administrator performing the
//! layout operation; then checks computed from the pool contents.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pinwheel::fs::{
    Caller, CreateOptions, DefragOptions, FallocMode, Filesystem, Ino, LeaseKind, OpenFile,
    OwnerId, PinPolicy,
};
use pinwheel::mm::{AddressSpace, Errno, FileOffset, MmapRequest, PAGE_SIZE};
use pinwheel::{
    Access, AsyncEvent, AutoRestore, EventType, MemoryRegion, MrState, Node, NodeConfig, PoolSpec,
    QpCaps, QpInitAttr, VerbsError,
};

use crate::DemoOptions;
use crate::client::{encode_target, read_log};
use crate::record::{self, RECORD};
use crate::report::RunReport;
use crate::strategy::{Holder, MrKind, Op, Strategy, Victim};

const CANARY_LEN: u64 = 256 << 10;
const CANARY_A: u8 = 0xa5;
const CANARY_B: u8 = 0x5a;
const REUSE: u8 = 0x5e;
const ADMIN: u8 = 0xad;

/// Kills the client if the run is abandoned: nothing outlives the demo.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn wait(&mut self, limit: Duration) -> Result<(), String> {
        let Some(c) = self.0.as_mut() else { return Ok(()) };
        let deadline = Instant::now() + limit;
        loop {
            match c.try_wait() {
                Ok(Some(st)) => {
                    self.0 = None;
                    return if st.success() {
                        Ok(())
                    } else {
                        Err(format!("client exited with {st}"))
                    };
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => return Err("client did not finish in time".into()),
                Err(e) => return Err(format!("waiting for the client: {e}")),
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What the administrator's operation did.
#[derive(Default)]
struct OpOutcome {
    result: Option<Errno>,
    message: String,
    latency_us: u64,
    /// Byte ranges of the victim the operation removed, and when (CLOCK_MONOTONIC ns).
    removed: Option<(Range<u64>, u64)>,
    /// The reflink snapshot and when it was complete.
    snapshot: Option<(Ino, u64)>,
    /// The file written to reuse freed frames, and how much was written.
    reuse: Option<(Ino, u64)>,
    /// The server's own attempt at the operation (layout-lease: EDEADLK).
    owner_result: Option<String>,
}

fn errno_of(e: &pinwheel::fs::FsError) -> Errno {
    e.errno()
}

fn name(r: &Option<Errno>) -> String {
    r.map_or_else(|| "ok".to_string(), |e| e.name().to_string())
}

/// Writes `len` bytes of `REUSE` into a new file (stopping quietly at ENOSPC).
fn reuse(fs: &Filesystem, len: u64) -> Option<(Ino, u64)> {
    let ino = fs.create("/reuse", CreateOptions::default()).ok()?;
    let chunk = vec![REUSE; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(chunk.len() as u64) as usize;
        if fs.write(ino, done, &chunk[..n], &Caller::admin()).is_err() {
            break;
        }
        done += n as u64;
    }
    Some((ino, done))
}

fn perform(fs: &Filesystem, victim: Ino, op: Op, len: u64, dax: bool) -> OpOutcome {
    let admin = Caller::admin();
    let mut out = OpOutcome::default();
    let t = Instant::now();
    let step = |r: Result<(), pinwheel::fs::FsError>, out: &mut OpOutcome| -> bool {
        match r {
            Ok(()) => true,
            Err(e) => {
                out.result = Some(errno_of(&e));
                out.message = e.to_string();
                false
            }
        }
    };
    match op {
        Op::Truncate => {
            let ok = step(fs.truncate(victim, 0, &admin), &mut out);
            out.latency_us = t.elapsed().as_micros() as u64;
            if ok {
                out.removed = Some((0..len, record::now_ns()));
                out.reuse = reuse(fs, len);
                if step(fs.truncate(victim, len, &admin), &mut out) && dax {
                    step(
                        fs.fallocate(
                            victim,
                            0,
                            len,
                            FallocMode::Allocate { keep_size: false },
                            &admin,
                        ),
                        &mut out,
                    );
                }
            }
        }
        Op::Punch => {
            let r = len / 4..3 * len / 4;
            let ok = step(
                fs.fallocate(victim, r.start, r.end - r.start, FallocMode::PunchHole, &admin),
                &mut out,
            );
            out.latency_us = t.elapsed().as_micros() as u64;
            if ok {
                out.removed = Some((r.clone(), record::now_ns()));
                out.reuse = reuse(fs, r.end - r.start);
            }
        }
        Op::Reflink => {
            match fs.clone_file("/victim", "/snapshot", &admin) {
                Ok(snap) => {
                    out.snapshot = Some((snap, record::now_ns()));
                    // Write the administrator's slot of every page: copy-on-write of all of it.
                    for page in 0..len / PAGE_SIZE {
                        if !step(
                            fs.write(
                                victim,
                                record::admin_offset(page),
                                &[ADMIN; RECORD as usize],
                                &admin,
                            )
                            .map(|_| ()),
                            &mut out,
                        ) {
                            break;
                        }
                    }
                }
                Err(e) => {
                    out.result = Some(e.errno());
                    out.message = e.to_string();
                }
            }
            out.latency_us = t.elapsed().as_micros() as u64;
        }
        Op::Defrag => {
            let ok =
                step(fs.defrag(victim, DefragOptions::default(), &admin).map(|_| ()), &mut out);
            out.latency_us = t.elapsed().as_micros() as u64;
            if ok {
                out.reuse = reuse(fs, len);
            }
        }
        Op::Unlink => {
            let ok = step(fs.unlink("/victim", &admin), &mut out);
            out.latency_us = t.elapsed().as_micros() as u64;
            if ok {
                out.removed = Some((0..len, record::now_ns()));
                out.reuse = reuse(fs, len);
            }
        }
    }
    out
}

/// Bytes of `ino` that differ from `want(offset)`, over `[0, len)`; a file that is gone
/// counts whole.
fn differing(fs: &Filesystem, ino: Ino, len: u64, want: impl Fn(u64) -> u8) -> u64 {
    let mut buf = vec![0u8; 1 << 20];
    let mut bad = 0;
    let mut at = 0;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        match fs.read(ino, at, &mut buf[..n]) {
            Ok(k) if k == n => {
                bad +=
                    buf[..n].iter().enumerate().filter(|(i, b)| **b != want(at + *i as u64)).count()
                        as u64
            }
            _ => return bad + (len - at),
        }
        at += n as u64;
    }
    bad
}

fn read_file(fs: &Filesystem, ino: Ino) -> Option<Vec<u8>> {
    let size = fs.stat_ino(ino).ok()?.size;
    let mut b = vec![0u8; size as usize];
    let n = fs.read(ino, 0, &mut b).ok()?;
    b.truncate(n);
    Some(b)
}

struct App {
    open: Mutex<Option<Arc<OpenFile>>>,
    mr: Mutex<Option<MemoryRegion>>,
    events: Mutex<BTreeMap<String, u64>>,
}

impl App {
    fn on_event(&self, e: &AsyncEvent, cooperative: bool) {
        *self.events.lock().entry(e.kind.name().to_string()).or_default() += 1;
        if cooperative && e.kind == EventType::LeaseRecalled {
            // A cooperative holder gives the lease back promptly: its MR first (the lease's
            // pins), then the lease.
            drop(self.mr.lock().take());
            if let Some(o) = self.open.lock().as_ref() {
                let _ = o.release_lease();
            }
        }
    }
}

fn spawn_client(exe: &Path, addr: &str, seconds: f64, log: &Path) -> Result<ChildGuard, String> {
    let c = Command::new(exe)
        .args(["demo-client", "--connect", addr, "--seconds", &format!("{seconds:.3}"), "--log"])
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawning the client {}: {e}", exe.display()))?;
    Ok(ChildGuard(Some(c)))
}

/// Runs one strategy × operation × holder.
pub(crate) fn run(
    strategy: Strategy,
    op: Op,
    holder: Holder,
    opts: &DemoOptions,
    work: &Path,
) -> Result<RunReport, String> {
    let len = opts.victim_mib << 20;
    let pool = (len * 3 + (32 << 20)).next_multiple_of(2 << 20);
    let cfg = NodeConfig {
        name: "server0".into(),
        pool: PoolSpec::Memfd { size: pool },
        format: true,
        policy: strategy.policy,
        lease_break: Duration::from_millis(opts.lease_break_ms),
        inodes: None,
    };
    let node = Node::new(cfg).map_err(|e| e.to_string())?;
    let fs = node.fs.clone();
    let admin = Caller::admin();
    let server = Caller::new(OwnerId(7), format!("pid {} (demo server)", std::process::id()));
    let err = |e: pinwheel::fs::FsError| e.to_string();
    // The victim between two canaries, then a filler leaving little free space.
    let ca = fs.create("/canary-a", CreateOptions::default()).map_err(err)?;
    fs.write(ca, 0, &vec![CANARY_A; CANARY_LEN as usize], &admin).map_err(err)?;
    let victim = fs
        .create("/victim", CreateOptions { page_cache: strategy.victim == Victim::PageCache })
        .map_err(err)?;
    fs.write(victim, 0, &vec![0u8; len as usize], &admin).map_err(err)?;
    let cb = fs.create("/canary-b", CreateOptions::default()).map_err(err)?;
    fs.write(cb, 0, &vec![CANARY_B; CANARY_LEN as usize], &admin).map_err(err)?;
    let free = fs.stats().free_blocks * PAGE_SIZE;
    let slack = 2 * len + pinwheel::fs::limits::META_RESERVE_FRAMES * PAGE_SIZE + (1 << 20);
    let filler_len = free.saturating_sub(slack);
    let filler = fs.create("/filler", CreateOptions::default()).map_err(err)?;
    if filler_len > 0 {
        fs.fallocate(filler, 0, filler_len, FallocMode::Allocate { keep_size: false }, &admin)
            .map_err(err)?;
    }

    // The server application.
    let ctx = node.device.open_context(server.owner, server.label.clone());
    let pd = ctx.alloc_pd();
    let aspace = AddressSpace::new(&node.memory);
    let open = Arc::new(fs.open("/victim", &server).map_err(err)?);
    let map = if strategy.mr == MrKind::File {
        None
    } else {
        Some(
            aspace
                .mmap(MmapRequest::file(open.backing(), FileOffset::new(0), len))
                .map_err(|e| e.to_string())?,
        )
    };
    match strategy.policy {
        PinPolicy::FsContract | PinPolicy::LayoutLease => {
            open.seal().map_err(err)?;
        }
        PinPolicy::LeaseRevoke | PinPolicy::LeaseKill => {
            open.set_lease(LeaseKind::Read, Some(ctx.lease_holder())).map_err(err)?;
        }
        _ => {}
    }
    let reg: Result<MemoryRegion, VerbsError> = match (strategy.mr, map) {
        (MrKind::Pinned, Some(at)) => pd.reg_mr(&aspace, at, len, Access::all_rw()),
        (MrKind::Odp, Some(at)) => {
            pd.reg_mr(&aspace, at, len, Access::all_rw() | Access::ON_DEMAND)
        }
        (MrKind::File, _) => pd.reg_file_mr(&fs, victim, 0, len, Access::all_rw()),
        _ => Err(VerbsError::invalid("no mapping")),
    };
    let registration = match &reg {
        Ok(_) => "ok".to_string(),
        Err(e) => e.errno().name().to_string(),
    };
    let (rkey, addr) = reg.as_ref().map_or((0, 0), |m| (m.rkey().0, m.addr()));
    let app = Arc::new(App {
        open: Mutex::new(Some(Arc::clone(&open))),
        mr: Mutex::new(reg.ok()),
        events: Mutex::new(BTreeMap::new()),
    });
    drop(open);
    if op == Op::Unlink && strategy.mr != MrKind::Odp {
        // As in Ira Weiny's LPC 2019 slides: the application unmaps and closes the file and
        // keeps only its MR.
        if let Some(at) = map {
            aspace.munmap(at, len).map_err(|e| e.to_string())?;
        }
        app.open.lock().take();
    }
    let cooperative = holder == Holder::Cooperative;
    let stop = Arc::new(AtomicBool::new(false));
    let _restore;
    let watcher;
    if cooperative {
        let a = Arc::clone(&app);
        _restore = Some(AutoRestore::start(ctx.clone(), move |e| a.on_event(e, true)));
        watcher = None;
    } else {
        _restore = None;
        let (a, c, s) = (Arc::clone(&app), ctx.clone(), Arc::clone(&stop));
        watcher = Some(std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                if let Some(e) = c.get_async_event(Duration::from_millis(20)) {
                    a.on_event(&e, false);
                }
            }
        }));
    }

    // The client.
    let listener = node.device.listen("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let log_path: PathBuf = work.join(format!("client-{}-{}.json", std::process::id(), port));
    let mut child =
        spawn_client(&opts.client_exe, &format!("127.0.0.1:{port}"), opts.seconds, &log_path)?;
    let cq = ctx.create_cq(1024).map_err(|e| e.to_string())?;
    let init = QpInitAttr { send_cq: cq.clone(), recv_cq: cq, srq: None, caps: QpCaps::default() };
    let (server_qp, _) = listener
        .accept(
            &pd,
            init,
            Access::all_rw(),
            &encode_target(rkey, addr, len),
            Duration::from_secs(20),
        )
        .map_err(|e| format!("accepting the client: {e}"))?;

    // The administrator, a third of the way in.
    std::thread::sleep(Duration::from_secs_f64(opts.seconds * 0.35));
    let mut out = perform(&fs, victim, op, len, strategy.victim == Victim::Dax);
    if strategy.policy == PinPolicy::LayoutLease && out.result == Some(Errno::ETXTBSY) {
        // The lease owner's own attempt (LPC 2019: EDEADLK).
        out.owner_result = Some(match fs.truncate(victim, 0, &server) {
            Ok(()) => "ok".into(),
            Err(e) => e.errno().name().into(),
        });
    }
    child.wait(Duration::from_secs_f64(opts.seconds + 30.0))?;
    stop.store(true, Ordering::Release);
    if let Some(w) = watcher {
        let _ = w.join();
    }
    let log = read_log(&log_path)?;
    let _ = std::fs::remove_file(&log_path);

    // Checks from the pool's contents.
    let mut corrupted = differing(&fs, ca, CANARY_LEN, |_| CANARY_A)
        + differing(&fs, cb, CANARY_LEN, |_| CANARY_B)
        + differing(&fs, filler, filler_len, |_| 0);
    if let Some((r, n)) = out.reuse {
        corrupted += differing(&fs, r, n, |_| REUSE);
    }
    if let Some((snap, t_done)) = out.snapshot
        && let Some(b) = read_file(&fs, snap)
    {
        for slot in 0..record::slots(len) {
            let off = record::slot_offset(slot) as usize;
            if b.get(off..off + RECORD as usize)
                .and_then(record::decode)
                .is_some_and(|r| r.t_send > t_done)
            {
                corrupted += RECORD;
            }
        }
        for page in 0..len / PAGE_SIZE {
            let off = record::admin_offset(page) as usize;
            if b.get(off..off + RECORD as usize).is_some_and(|s| s.iter().all(|x| *x == ADMIN)) {
                corrupted += RECORD;
            }
        }
    }
    let victim_bytes = read_file(&fs, victim);
    let mut lost = 0;
    for [slot, seq, t_send, _t_ack] in &log.slots {
        let off = record::slot_offset(*slot);
        // A write sent before the removal finished may have landed before it: its data went
        // with the range. A write sent after it must be in the file — or must have failed.
        if let Some((range, t_removed)) = &out.removed
            && *t_send < *t_removed
            && range.contains(&off)
        {
            continue;
        }
        let got = victim_bytes
            .as_ref()
            .and_then(|b| b.get(off as usize..(off + RECORD) as usize))
            .and_then(record::decode);
        if !got.is_some_and(|r| u64::from(r.slot) == *slot && r.seq >= *seq) {
            lost += 1;
        }
    }
    let events = app.events.lock().clone();
    let mr_revoked = app.mr.lock().as_ref().is_some_and(|m| m.state() == MrState::Revoked)
        || events.contains_key("MR_REVOKED");
    drop(server_qp);
    Ok(RunReport {
        policy: strategy.policy.name().into(),
        mr_kind: strategy.mr.name().into(),
        victim: strategy.victim.name().into(),
        holder: holder.name().into(),
        operation: op.name().into(),
        registration,
        operation_result: name(&out.result),
        operation_latency_us: out.latency_us,
        wr_posted: log.posted,
        wr_acked: log.acked,
        wr_failed: log.failed,
        wr_failed_by_status: log.failed_by_status.clone(),
        bytes_corrupted: corrupted,
        writes_lost: lost,
        events,
        mr_revoked,
        stall_us_max: log.stall_us_max,
        writes_per_sec: log.writes_per_sec.round(),
        read_mismatches: log.read_mismatches,
        owner_operation_result: out.owner_result,
        message: if out.message.is_empty() {
            log.stopped.clone().unwrap_or_default()
        } else {
            out.message
        },
    })
}
