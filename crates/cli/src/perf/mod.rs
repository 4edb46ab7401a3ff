//! `pinwheel perf`: perftest (`ib_{write,read,send,atomic}_{bw,lat}`) for the software RDMA
//! device, with perftest's conventions: the same defaults, loops, formulas and output columns
//! (`report.rs`), a server that serves one client and exits, and a client that drives the run
//! and prints the results; plus the costs of coherence (`reg_mr`, `odp_fault`, `lease_break`,
//! `coherence_cost`), measured in one process over a fresh node.
//!
//! Modules: `host` (a node and its registered buffers), `bench` (the measurement loops),
//! `loopback` (both sides in one process), `tcp` and `ctl` (client and server processes; the
//! control messages between them), `baseline` (what `--compare` measures against: memcpy, raw
//! TCP), `pingpong` (the two-process cache-line ping-pong baseline of the latency tests),
//! `coherence` (the costs of coherence), `sys` (mlock and CPU affinity), `report` (the figures
//! and their layout).
//!
//! Every wait is bounded by `--timeout`; bad input is an error naming the culprit.

mod baseline;
mod bench;
mod coherence;
mod ctl;
mod host;
mod lease;
mod loopback;
mod pingpong;
mod report;
mod shm;
mod sys;
mod tcp;

use std::io::Write;
use std::time::Duration;

use clap::{Args, ValueEnum};
use pinwheel::limits::{MAX_MSG, MAX_QP_WR};
use pinwheel::{Rkey, SendWr, Sge};

use crate::error::CliError;
use crate::limits::{
    PERF_CQ_MODERATION, PERF_DURATION_MAX_S, PERF_ITERS_MAX, PERF_QPS_MAX, PERF_SIZE_MAX,
    PERF_TIMEOUT_MAX_S,
};
use crate::perf::report::RunInfo;
use crate::size::parse_size;

/// The tests.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Test {
    /// RDMA WRITE bandwidth (`ib_write_bw`).
    #[value(name = "write_bw")]
    WriteBw,
    /// RDMA READ bandwidth (`ib_read_bw`).
    #[value(name = "read_bw")]
    ReadBw,
    /// SEND bandwidth, the receiver keeping RECVs posted (`ib_send_bw`).
    #[value(name = "send_bw")]
    SendBw,
    /// Atomic bandwidth, FETCH_ADD or CMP_SWAP of 8 bytes (`ib_atomic_bw`).
    #[value(name = "atomic_bw")]
    AtomicBw,
    /// RDMA WRITE latency, ping-pong (`ib_write_lat`).
    #[value(name = "write_lat")]
    WriteLat,
    /// RDMA READ latency, one at a time (`ib_read_lat`).
    #[value(name = "read_lat")]
    ReadLat,
    /// SEND latency, ping-pong of SENDs into posted RECVs (`ib_send_lat`).
    #[value(name = "send_lat")]
    SendLat,
    /// Atomic latency, one at a time (`ib_atomic_lat`).
    #[value(name = "atomic_lat")]
    AtomicLat,
    /// Registration + deregistration time against mlock + touch of host memory.
    #[value(name = "reg_mr")]
    RegMr,
    /// First-touch fault latency of an ODP (or file) MR, without and with advise_mr.
    #[value(name = "odp_fault")]
    OdpFault,
    /// The stall a writer sees while a layout change runs under each coordinating policy.
    #[value(name = "lease_break")]
    LeaseBreak,
    /// The same WRITE workload with the coherence checks on and off, interleaved.
    #[value(name = "coherence_cost")]
    CoherenceCost,
    /// The child process of the cache-line ping-pong baseline (internal).
    #[value(name = "pingpong_peer", hide = true)]
    PingpongPeer,
}

/// What kind of test a test is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// perftest bandwidth.
    Bw,
    /// perftest latency.
    Lat,
    /// A cost of coherence, one process.
    Local,
}

impl Test {
    const ALL: [Test; 13] = [
        Test::WriteBw,
        Test::ReadBw,
        Test::SendBw,
        Test::AtomicBw,
        Test::WriteLat,
        Test::ReadLat,
        Test::SendLat,
        Test::AtomicLat,
        Test::RegMr,
        Test::OdpFault,
        Test::LeaseBreak,
        Test::CoherenceCost,
        Test::PingpongPeer,
    ];

    /// The name on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Test::WriteBw => "write_bw",
            Test::ReadBw => "read_bw",
            Test::SendBw => "send_bw",
            Test::AtomicBw => "atomic_bw",
            Test::WriteLat => "write_lat",
            Test::ReadLat => "read_lat",
            Test::SendLat => "send_lat",
            Test::AtomicLat => "atomic_lat",
            Test::RegMr => "reg_mr",
            Test::OdpFault => "odp_fault",
            Test::LeaseBreak => "lease_break",
            Test::CoherenceCost => "coherence_cost",
            Test::PingpongPeer => "pingpong_peer",
        }
    }
    /// perftest's title.
    fn title(self) -> &'static str {
        match self {
            Test::WriteBw => "RDMA_Write BW Test",
            Test::ReadBw => "RDMA_Read BW Test",
            Test::SendBw => "Send BW Test",
            Test::AtomicBw => "Atomic BW Test",
            Test::WriteLat => "RDMA_Write Latency Test",
            Test::ReadLat => "RDMA_Read Latency Test",
            Test::SendLat => "Send Latency Test",
            Test::AtomicLat => "Atomic Latency Test",
            Test::RegMr => "MR registration cost",
            Test::OdpFault => "ODP first-touch fault latency",
            Test::LeaseBreak => "Layout change stall seen by a writer",
            Test::CoherenceCost => "Coherence fast-path overhead (RDMA_Write)",
            Test::PingpongPeer => "ping-pong peer",
        }
    }
    pub(crate) fn kind(self) -> Kind {
        match self {
            Test::WriteBw | Test::ReadBw | Test::SendBw | Test::AtomicBw => Kind::Bw,
            Test::WriteLat | Test::ReadLat | Test::SendLat | Test::AtomicLat => Kind::Lat,
            _ => Kind::Local,
        }
    }
    pub(crate) fn is_bw(self) -> bool {
        self.kind() == Kind::Bw
    }
    /// Atomic tests move 8 bytes, whatever -s says (perftest forces it too).
    pub(crate) fn is_atomic(self) -> bool {
        matches!(self, Test::AtomicBw | Test::AtomicLat)
    }
    /// SEND tests need RECVs posted on the other side.
    pub(crate) fn is_send(self) -> bool {
        matches!(self, Test::SendBw | Test::SendLat)
    }
    /// Latency tests whose sample is half a round trip (the ping-pongs); READ and atomic
    /// latency is a whole one (perftest's `rtt_factor`).
    pub(crate) fn is_pingpong(self) -> bool {
        matches!(self, Test::WriteLat | Test::SendLat)
    }
    /// The wire code (control messages).
    pub(crate) fn code(self) -> u8 {
        match self {
            Test::WriteBw => 1,
            Test::ReadBw => 2,
            Test::WriteLat => 3,
            Test::ReadLat => 4,
            Test::SendBw => 5,
            Test::AtomicBw => 6,
            Test::SendLat => 7,
            Test::AtomicLat => 8,
            Test::RegMr => 9,
            Test::OdpFault => 10,
            Test::LeaseBreak => 11,
            Test::CoherenceCost => 12,
            Test::PingpongPeer => 13,
        }
    }
    pub(crate) fn from_code(c: u8) -> Option<Test> {
        Test::ALL.into_iter().find(|t| t.code() == c)
    }
}

/// perftest's `--atomic_type`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum AtomicType {
    /// FETCH_AND_ADD (perftest's default).
    #[default]
    #[value(name = "FETCH_AND_ADD")]
    FetchAndAdd,
    /// CMP_AND_SWAP.
    #[value(name = "CMP_AND_SWAP")]
    CmpAndSwap,
}

/// The MR kind of `reg_mr` and `odp_fault`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum MrKindArg {
    /// Frames pinned at registration.
    #[default]
    Pinned,
    /// On-demand paging: no pins, faults on access.
    Odp,
    /// Registered by file and offset on the node's DAX filesystem.
    File,
}

impl MrKindArg {
    pub(crate) fn name(self) -> &'static str {
        match self {
            MrKindArg::Pinned => "pinned",
            MrKindArg::Odp => "odp",
            MrKindArg::File => "file",
        }
    }
}

const AFTER_HELP: &str = "\
Units: MB/sec is 2^20 bytes a second, as perftest's (MsgRate is 10^6 messages a second);
latencies are microseconds. WRITE and SEND latency is half a ping-pong round trip, READ and
atomic latency a whole operation, as perftest reports them. BW average = bytes / (last
completion - first post); BW peak = perftest's best window of consecutive messages (not
computed above 20000 iterations, nor with -D: 0). With -q, every QP runs -n iterations and
the bandwidth is their sum.

Server and client: `pinwheel perf write_bw` waits for one client on port 18515 (-p), serves
it and exits; `pinwheel perf write_bw HOST` connects and prints the results. The client's
-s/-a/-n/-D/-q/-t/--compare/--no-coherence/--atomic-type rule: the server only needs the
same test name (and -p, --timeout). With -p 0 the server picks a free port and prints it.

--compare: loopback bandwidth tests also run, side by side, a single-thread copy of the same
messages between the same two buffers of the pool (the pool's own copy); TCP bandwidth tests
also stream the same bytes over a plain TCP connection between the same two processes (a
second connection). Latency tests run a cache-line ping-pong between two processes sharing a
memfd page (pinned to CPUs 0 and 1 when the machine lets them), one-way. The baseline runs
just before and just after the RDMA run; the baseline column is their mean, ratio = BW
average / baseline (bandwidth) or t_typical / baseline (latency).

Costs of coherence (one process, a fresh node; no server): reg_mr (registration and
deregistration against mlock + touch of the same size of host memory; -a: 4 KiB to 1 GiB,
powers of 4; --mr-kind, --huge), odp_fault (one RDMA WRITE per page of a fresh ODP or file MR,
then the same after advise_mr), lease_break (the stall of a writer while the MR's file is
defragmented under lease-revoke with a cooperative holder, decohere with AutoRestore, and
lease-revoke with an unresponsive holder; -n layout changes each), coherence_cost (write_bw
in loopback with the checks on and off, interleaved; overhead = 1 - on/off).

--json prints one document: the run's settings and `results`, an object per row with the
quantities of the text columns (e.g. bytes, iterations, bw_average_mib_s, baseline_mib_s,
ratio; t_typical_us, t_p99_us, baseline_us; reg_us, mlock_touch_us; stall_us_p99, failed_wrs).";

/// `perf`.
#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct PerfArgs {
    /// The test: write_bw, read_bw, send_bw, atomic_bw, write_lat, read_lat, send_lat,
    /// atomic_lat; reg_mr, odp_fault, lease_break, coherence_cost.
    #[arg(value_enum, value_name = "TEST")]
    test: Test,
    /// The server to connect to (`host` or `host:port`): run as the client. Without it, run
    /// as the server.
    #[arg(value_name = "SERVER_ADDR", conflicts_with = "loopback")]
    server: Option<String>,
    /// TCP port of the server (0: the server picks one and prints it).
    #[arg(short, long, default_value_t = 18515)]
    port: u16,
    /// Message size in bytes (K/M/G suffixes: powers of 1024) [default: 65536 for _bw, 2 for
    /// _lat, 8 for atomics, 1 GiB for reg_mr].
    #[arg(short, long, value_parser = parse_size, conflicts_with = "all")]
    size: Option<u64>,
    /// Iterations per message size [default: 5000 for _bw, 1000 for _lat; reg_mr: enough for
    /// 4 GiB a size, 3 to 1000; odp_fault: pages, 4096; lease_break: layout changes, 20].
    #[arg(short = 'n', long, value_name = "ITERS", conflicts_with = "duration")]
    iters: Option<u64>,
    /// Run for this many seconds instead of -n iterations (perftest -D).
    #[arg(short = 'D', long, value_name = "SECONDS", value_parser = parse_duration)]
    duration: Option<f64>,
    /// Queue pairs (perftest -q): bandwidth tests post round-robin over them and report the
    /// sum.
    #[arg(short = 'q', long = "qp", value_name = "QPS", default_value_t = 1)]
    qps: u32,
    /// Every message size from 2 bytes to 8 MiB, powers of two (perftest -a); reg_mr: 4 KiB
    /// to 1 GiB, powers of 4.
    #[arg(short, long)]
    all: bool,
    /// Run both sides in this process: two QPs of one device, no TCP.
    #[arg(long)]
    loopback: bool,
    /// Run between two client processes of the node served by `pinwheel serve` at PATH: the
    /// shared data path (each side's library executes its own WRITEs and READs). The two
    /// processes meet on 127.0.0.1:PORT (-p) to exchange QP numbers and keys.
    #[arg(long, value_name = "PATH", conflicts_with = "loopback")]
    socket: Option<std::path::PathBuf>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Work requests in flight per QP (bandwidth tests) [default: 128 for _bw, 1 for _lat].
    #[arg(short = 't', long, value_name = "N")]
    tx_depth: Option<u32>,
    /// Also measure the baseline side by side and print the ratio (memcpy in loopback, raw
    /// TCP otherwise; the two-process cache-line ping-pong for latency tests).
    #[arg(long)]
    compare: bool,
    /// Run with the device's coherence checks off on both sides (the MR state check and
    /// in-flight accounting of every transfer), to measure what they cost.
    #[arg(long)]
    no_coherence: bool,
    /// The atomic operation of atomic_bw / atomic_lat (perftest -A).
    #[arg(short = 'A', long, value_enum, value_name = "TYPE", default_value = "FETCH_AND_ADD")]
    atomic_type: AtomicType,
    /// reg_mr / odp_fault: the kind of MR (odp_fault: odp or file).
    #[arg(long, value_enum, value_name = "KIND")]
    mr_kind: Option<MrKindArg>,
    /// reg_mr: back the buffer with huge (2 MiB) frames.
    #[arg(long)]
    huge: bool,
    /// lease_break: the lease-break time after which an unresponsive holder is revoked.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    lease_break_ms: u64,
    /// Seconds any wait may last: the server's wait for its client, the client's connection,
    /// and any stretch of a run without progress.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0, value_parser = parse_timeout)]
    timeout: f64,
    /// The ping-pong baseline's shared page (internal: the pingpong_peer child).
    #[arg(long, hide = true, value_name = "PATH")]
    peer_pool: Option<String>,
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= PERF_TIMEOUT_MAX_S => Ok(v),
        _ => Err(format!("{s:?}: the timeout is a number of seconds in (0, {PERF_TIMEOUT_MAX_S}]")),
    }
}

fn parse_duration(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= PERF_DURATION_MAX_S => Ok(v),
        _ => Err(format!("{s:?}: -D is a number of seconds in (0, {PERF_DURATION_MAX_S}]")),
    }
}

/// The work request of a bandwidth test or of the one-at-a-time latency tests (READ,
/// atomics): a WRITE of `sge` to `addr` of `rkey`, a READ of it into `sge`, an atomic on the
/// 8 bytes at `addr` (the old value lands in `sge`), or a SEND of `sge`.
pub(crate) fn request(p: &Params, sge: Sge, addr: u64, rkey: Rkey) -> SendWr {
    match p.test {
        Test::ReadBw | Test::ReadLat => SendWr::read(0, sge, addr, rkey),
        Test::SendBw | Test::SendLat => SendWr::send(0, sge),
        Test::AtomicBw | Test::AtomicLat => match p.atomic {
            AtomicType::FetchAndAdd => SendWr::fetch_add(0, sge, addr, rkey, 1),
            // perftest compares with 0 and swaps in 1: after the first, every CAS fails its
            // comparison, which costs the same.
            AtomicType::CmpAndSwap => SendWr::compare_swap(0, sge, addr, rkey, 0, 1),
        },
        _ => SendWr::write(0, sge, addr, rkey),
    }
}

/// perftest -a: 2 bytes to 8 MiB, powers of two.
fn all_sizes() -> Vec<u64> {
    (1..=23).map(|k| 1u64 << k).collect()
}

/// reg_mr -a: 4 KiB to 1 GiB, powers of 4.
fn reg_sizes() -> Vec<u64> {
    (0..=9).map(|k| 4096u64 << (2 * k)).collect()
}

/// A validated run.
#[derive(Clone, Debug)]
pub(crate) struct Params {
    pub(crate) test: Test,
    pub(crate) sizes: Vec<u64>,
    /// Iterations per QP; with `duration`, what the run may use at most.
    pub(crate) iters: u64,
    /// -D: run for this long instead of `iters`.
    pub(crate) duration: Option<Duration>,
    /// -n was given (reg_mr picks its own count per size otherwise).
    pub(crate) iters_given: bool,
    pub(crate) qps: u32,
    pub(crate) tx_depth: u32,
    pub(crate) cq_mod: u32,
    pub(crate) compare: bool,
    pub(crate) coherence: bool,
    pub(crate) atomic: AtomicType,
    pub(crate) mr_kind: MrKindArg,
    pub(crate) huge: bool,
    pub(crate) lease_break: Duration,
    pub(crate) timeout: Duration,
    pub(crate) json: bool,
}

fn default_size(test: Test) -> u64 {
    match test {
        t if t.is_atomic() => 8,
        Test::RegMr => 1 << 30,
        Test::WriteBw | Test::ReadBw | Test::SendBw | Test::CoherenceCost => 65536,
        Test::OdpFault | Test::LeaseBreak => 8,
        _ => 2,
    }
}

fn default_iters(test: Test) -> u64 {
    match test {
        Test::OdpFault => 4096,
        Test::LeaseBreak => 20,
        Test::CoherenceCost => 100_000,
        t if t.is_bw() => 5000,
        _ => 1000,
    }
}

impl Params {
    fn from_args(a: &PerfArgs) -> Result<Params, CliError> {
        let test = a.test;
        let bad = |what: &str, detail: String| CliError::invalid("perf", what, detail);
        let sizes = if a.all && test == Test::RegMr {
            reg_sizes()
        } else if a.all {
            all_sizes()
        } else {
            vec![a.size.unwrap_or(default_size(test))]
        };
        if test.is_atomic() && sizes != [8] {
            return Err(bad(
                if a.all { "-a" } else { "-s" },
                format!("{} moves 8 bytes (one atomic word): no other size", test.name()),
            ));
        }
        let limit = PERF_SIZE_MAX.min(MAX_MSG);
        for &s in &sizes {
            if s == 0 {
                return Err(bad("-s 0", "the message size must be at least 1 byte".into()));
            }
            if s > limit {
                return Err(bad(
                    &format!("-s {s}"),
                    format!(
                        "message size beyond {limit} bytes (the device's max_msg_sz is {MAX_MSG}, \
                         and perf keeps each buffer in memory)"
                    ),
                ));
            }
        }
        let iters = a.iters.unwrap_or(default_iters(test));
        if iters == 0 || iters > PERF_ITERS_MAX {
            return Err(bad(
                &format!("-n {iters}"),
                format!("iterations must be between 1 and {PERF_ITERS_MAX}"),
            ));
        }
        let tx_depth = a.tx_depth.unwrap_or(if test.is_bw() { 128 } else { 1 });
        if tx_depth == 0 || tx_depth > MAX_QP_WR {
            return Err(bad(
                &format!("--tx-depth {tx_depth}"),
                format!("work requests in flight must be between 1 and {MAX_QP_WR} (max_qp_wr)"),
            ));
        }
        if a.qps == 0 || a.qps > PERF_QPS_MAX {
            return Err(bad(
                &format!("-q {}", a.qps),
                format!("queue pairs must be between 1 and {PERF_QPS_MAX}"),
            ));
        }
        if a.qps > 1 && !test.is_bw() {
            return Err(bad(
                &format!("-q {}", a.qps),
                format!("{}: several QPs are for the bandwidth tests (as perftest)", test.name()),
            ));
        }
        if a.compare && test.kind() == Kind::Local {
            return Err(bad(
                "--compare",
                format!(
                    "{} measures against its own baseline: --compare is for the perftest tests",
                    test.name()
                ),
            ));
        }
        if a.socket.is_some() {
            if test.kind() == Kind::Local {
                return Err(bad(
                    "--socket",
                    format!("{} runs in one process (no server, no socket)", test.name()),
                ));
            }
            if a.qps > 1 {
                return Err(bad(
                    &format!("-q {}", a.qps),
                    "with --socket perf runs one QP a side (-q is for --loopback and TCP)".into(),
                ));
            }
            let baseline = matches!(
                test,
                Test::WriteBw | Test::ReadBw | Test::SendBw | Test::WriteLat | Test::SendLat
            );
            if a.compare && !baseline {
                return Err(bad(
                    "--compare",
                    format!(
                        "{} has no baseline with --socket (the bandwidth tests have memcpy, \
                         write_lat and send_lat the cache-line ping-pong between the same two \
                         processes)",
                        test.name()
                    ),
                ));
            }
        }
        if a.no_coherence && a.socket.is_some() {
            return Err(bad(
                "--no-coherence",
                "with --socket the coherence checks are the node daemon's, not perf's".into(),
            ));
        }
        if a.duration.is_some() && test.kind() == Kind::Local {
            return Err(bad("-D", format!("{} runs -n iterations, not a duration", test.name())));
        }
        if test.kind() == Kind::Local && a.server.is_some() {
            return Err(bad(
                a.server.as_deref().unwrap_or(""),
                format!("{} runs in one process over a fresh node: no server", test.name()),
            ));
        }
        let mr_kind = a.mr_kind.unwrap_or(if test == Test::OdpFault {
            MrKindArg::Odp
        } else {
            MrKindArg::Pinned
        });
        if a.mr_kind.is_some() && !matches!(test, Test::RegMr | Test::OdpFault) {
            return Err(bad("--mr-kind", "--mr-kind is for reg_mr and odp_fault".into()));
        }
        if test == Test::OdpFault && mr_kind == MrKindArg::Pinned {
            return Err(bad("--mr-kind pinned", "a pinned MR never faults: odp or file".into()));
        }
        if a.huge && (test != Test::RegMr || mr_kind == MrKindArg::File) {
            return Err(bad("--huge", "--huge is for reg_mr of pinned or ODP memory".into()));
        }
        Ok(Params {
            test,
            sizes,
            iters,
            duration: a.duration.map(Duration::from_secs_f64),
            iters_given: a.iters.is_some(),
            qps: a.qps,
            tx_depth,
            cq_mod: PERF_CQ_MODERATION.min(tx_depth),
            compare: a.compare,
            coherence: !a.no_coherence,
            atomic: a.atomic_type,
            mr_kind,
            huge: a.huge,
            lease_break: Duration::from_millis(a.lease_break_ms.max(1)),
            timeout: Duration::from_secs_f64(a.timeout),
            json: a.json,
        })
    }

    /// The largest message of the run.
    pub(crate) fn max_size(&self) -> u64 {
        self.sizes.iter().copied().max().unwrap_or(1)
    }

    /// What the run reports with its results: over `transport` (to `server`), on `device`
    /// (of path MTU `mtu`), `--compare` measuring against `baseline`.
    pub(crate) fn info(
        &self,
        device: String,
        mtu: u32,
        transport: &'static str,
        server: Option<String>,
        baseline: &'static str,
    ) -> RunInfo {
        RunInfo {
            test: self.test.name(),
            transport,
            server,
            device,
            connection_type: "RC",
            qps: self.qps,
            tx_depth: self.tx_depth,
            cq_moderation: self.cq_mod,
            mtu,
            coherence_checks: self.coherence,
            duration_s: self.duration.map(|d| d.as_secs_f64()),
            atomic_type: self.test.is_atomic().then_some(match self.atomic {
                AtomicType::FetchAndAdd => "FETCH_AND_ADD",
                AtomicType::CmpAndSwap => "CMP_AND_SWAP",
            }),
            mr_kind: None,
            baseline: self.compare.then_some(baseline),
            bw_unit: "MiB/s",
        }
    }
}

/// Runs `perf`.
pub fn run(a: PerfArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let p = Params::from_args(&a)?;
    match p.test {
        Test::PingpongPeer => return pingpong::peer(&p, a.peer_pool.as_deref()),
        Test::RegMr | Test::OdpFault | Test::LeaseBreak | Test::CoherenceCost => {
            return coherence::run(&p, out);
        }
        _ => {}
    }
    if a.loopback {
        return loopback::run(&p, out);
    }
    if let Some(socket) = &a.socket {
        return match &a.server {
            Some(server) => shm::client(&p, socket, server, a.port, out),
            None => shm::server(&p, socket, a.port, out),
        };
    }
    match &a.server {
        Some(server) => tcp::client(&p, server, a.port, out),
        None => tcp::server(&p, a.port, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_test_codes_round_trip() {
        for t in Test::ALL {
            assert_eq!(Test::from_code(t.code()), Some(t));
        }
        assert_eq!(Test::from_code(0), None);
    }

    #[test]
    fn perf_all_sizes_are_perftests() {
        let s = all_sizes();
        assert_eq!((s[0], s[s.len() - 1], s.len()), (2, 8 << 20, 23));
        let r = reg_sizes();
        assert_eq!((r[0], r[r.len() - 1], r.len()), (4096, 1 << 30, 10));
    }
}
