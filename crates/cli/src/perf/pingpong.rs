//! The latency baseline of `--compare`: a cache-line ping-pong between two processes.
//!
//! The parent makes a memfd (a pool of the memory core, so the words are read and written
//! with its atomic accessors) and starts itself again as `pinwheel perf pingpong_peer`, which
//! opens the same memfd through `/proc/<parent>/fd/<n>`. Each spins on a cache line of the
//! shared page: the parent stores `i` in line A and waits for `i` in line B; the child waits
//! for `i` in A and stores it in B. One-way latency = round trip / 2, the same halving as the
//! WRITE and SEND ping-pongs. This is the floor of any two-process handoff on the machine: a
//! store becoming visible on the other core and the answer coming back.
//!
//! The parent's thread is bound to CPU 0 and the child to CPU 1 when the machine lets them
//! (`sched_setaffinity`); the report's note says whether they were. Both spin without
//! sleeping: on two cores the run has the machine to itself while it lasts (milliseconds).

use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pinwheel::mm::{Errno, Pool, PoolOffset};

use crate::error::CliError;
use crate::limits::{PERF_PINGPONG_POOL, PERF_PINGPONG_WARMUP};
use crate::perf::Params;
use crate::perf::report::LatRow;
use crate::perf::sys;

/// What `--compare` names as the baseline of latency tests.
pub(crate) const DESCRIPTION: &str =
    "a cache-line ping-pong between two processes sharing a memfd page (one-way = RTT/2)";

/// Line A: the parent's store (the ping).
const PING: u64 = 0;
/// Line B: the child's answer, two lines further (no adjacent-line prefetch sharing).
const PONG: u64 = 128;
/// Where the child says whether it got its CPU: 1 bound, 2 not.
const CHILD_CPU: u64 = 256;
/// The child is mapped and waiting.
const READY: u64 = u64::MAX - 1;
/// The parent is done.
const STOP: u64 = u64::MAX;
/// Spins between looks at the clock (and yields: a machine with one usable CPU still ends).
const SPINS: u32 = 1 << 14;

/// A ping-pong's result.
#[derive(Clone, Debug)]
pub(crate) struct PingResult {
    /// Typical (median) one-way latency, µs.
    pub(crate) one_way_us: f64,
    /// How it ran (CPUs).
    pub(crate) note: String,
}

fn failed(detail: String) -> CliError {
    CliError::Refused { op: "perf", target: "ping-pong baseline".into(), errno: Errno::EIO, detail }
}

fn pool_error(e: pinwheel::mm::MmError) -> CliError {
    CliError::Pool { op: "perf", path: "ping-pong page".into(), error: e }
}

/// Spins until `word` of `pool` satisfies `ok`; bounded by `deadline`, and by the peer
/// (`alive()` false: it went away).
fn wait_word(
    pool: &Pool,
    word: u64,
    deadline: Instant,
    alive: &mut dyn FnMut() -> bool,
    ok: impl Fn(u64) -> bool,
) -> Result<u64, CliError> {
    let mut spins = 0u32;
    loop {
        let v = pool.load_u64(PoolOffset::new(word)).map_err(pool_error)?;
        if ok(v) {
            return Ok(v);
        }
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(SPINS) {
            if Instant::now() >= deadline || !alive() {
                return Err(failed("the other process of the ping-pong stopped answering".into()));
            }
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Kills and reaps the child on every way out.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `iters` round trips (after `PERF_WARMUP`) with a child process; the typical one-way
/// latency.
pub(crate) fn measure(iters: u64, timeout: Duration) -> Result<PingResult, CliError> {
    let pool = Pool::memfd("perf-pingpong", PERF_PINGPONG_POOL).map_err(pool_error)?;
    let path = format!("/proc/{}/fd/{}", std::process::id(), pool.fd().as_raw_fd());
    let exe = std::env::current_exe()
        .map_err(|e| CliError::io("perf", "current executable", "the ping-pong peer", e))?;
    let rounds = iters + PERF_PINGPONG_WARMUP;
    let child = Command::new(exe)
        .args(["perf", "pingpong_peer", "--peer-pool", &path, "-n", &rounds.to_string()])
        .args(["--timeout", &timeout.as_secs_f64().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CliError::io("perf", "pinwheel perf pingpong_peer", "start", e))?;
    let mut peer = Peer(child);
    let pinned = sys::pin_to(0);
    let deadline = Instant::now() + timeout;
    let mut alive = || matches!(peer.0.try_wait(), Ok(None));
    wait_word(&pool, PONG, deadline, &mut alive, |v| v == READY)?;
    let mut samples = Vec::with_capacity(iters as usize);
    let store = |w: u64, v: u64| pool.store_u64(PoolOffset::new(w), v).map_err(pool_error);
    for i in 1..=rounds {
        let t0 = Instant::now();
        store(PING, i)?;
        wait_word(&pool, PONG, deadline, &mut alive, |v| v == i)?;
        if i > PERF_PINGPONG_WARMUP {
            samples.push(t0.elapsed().as_secs_f64() * 1e6 / 2.0);
        }
    }
    store(PING, STOP)?;
    let child_cpu = pool.load_u64(PoolOffset::new(CHILD_CPU)).map_err(pool_error)?;
    let note = match (pinned.is_some(), child_cpu == 1) {
        (true, true) => "ping-pong baseline: the two processes bound to CPUs 0 and 1".to_string(),
        _ => format!(
            "ping-pong baseline: processes not bound to CPUs 0 and 1 (parent {}, child {}; \
             allowed CPUs {:?})",
            if pinned.is_some() { "bound" } else { "unbound" },
            if child_cpu == 1 { "bound" } else { "unbound" },
            sys::allowed_cpus()
        ),
    };
    drop(pinned);
    let row = LatRow::new(8, samples);
    Ok(PingResult { one_way_us: row.t_typical_us, note })
}

/// The baseline of a latency test with `--compare` (one-way µs; `None` without); how it ran
/// goes into the report's notes.
pub(crate) fn baseline(
    p: &Params,
    rep: &mut crate::perf::report::Reporter<'_>,
) -> Result<Option<f64>, CliError> {
    if !p.compare {
        return Ok(None);
    }
    let r = measure(p.iters, p.timeout)?;
    rep.note(r.note.clone());
    Ok(Some(r.one_way_us))
}

/// The child: answers every ping until STOP.
pub(crate) fn peer(p: &Params, pool_path: Option<&str>) -> Result<(), CliError> {
    let Some(path) = pool_path else {
        return Err(CliError::invalid(
            "perf",
            "pingpong_peer",
            "the ping-pong peer is started by `perf --compare`, with --peer-pool",
        ));
    };
    let pool = Pool::open_file(std::path::Path::new(path)).map_err(pool_error)?;
    let pinned = sys::pin_to(1);
    let store = |w: u64, v: u64| pool.store_u64(PoolOffset::new(w), v).map_err(pool_error);
    store(CHILD_CPU, if pinned.is_some() { 1 } else { 2 })?;
    store(PONG, READY)?;
    let mut alive = || true;
    for i in 1..=p.iters {
        // The parent may take a while between rounds (never longer than its timeout).
        let deadline = Instant::now() + p.timeout;
        let v = wait_word(&pool, PING, deadline, &mut alive, |v| v == i || v == STOP)?;
        if v == STOP {
            break;
        }
        store(PONG, i)?;
    }
    Ok(())
}
