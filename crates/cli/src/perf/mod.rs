//! `pinwheel perf`: perftest (`ib_write_bw`, `ib_read_bw`, `ib_write_lat`, `ib_read_lat`)
//! for the software RDMA device, with perftest's conventions: the same defaults, loops,
//! formulas and output columns (`report.rs`), a server that serves one client and exits, and
//! a client that drives the run and prints the results.
//!
//! Modules: `host` (a node and its registered buffers), `bench` (the measurement loops),
//! `loopback` (both sides in one process), `tcp` (client and server processes; the control
//! messages between them), `baseline` (what `--compare` measures against), `report` (the
//! figures and their layout).
//!
//! Every wait is bounded by `--timeout`; bad input is an error naming the culprit.

mod baseline;
mod bench;
mod host;
mod loopback;
mod report;
mod shm;
mod tcp;

use std::io::Write;
use std::time::Duration;

use clap::{Args, ValueEnum};
use pinwheel::limits::{MAX_MSG, MAX_QP_WR};
use pinwheel::{Rkey, SendWr, Sge};

use crate::error::CliError;
use crate::limits::{PERF_CQ_MODERATION, PERF_ITERS_MAX, PERF_SIZE_MAX, PERF_TIMEOUT_MAX_S};
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
    /// RDMA WRITE latency, ping-pong (`ib_write_lat`).
    #[value(name = "write_lat")]
    WriteLat,
    /// RDMA READ latency, one at a time (`ib_read_lat`).
    #[value(name = "read_lat")]
    ReadLat,
}

impl Test {
    const ALL: [Test; 4] = [Test::WriteBw, Test::ReadBw, Test::WriteLat, Test::ReadLat];

    /// The name on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Test::WriteBw => "write_bw",
            Test::ReadBw => "read_bw",
            Test::WriteLat => "write_lat",
            Test::ReadLat => "read_lat",
        }
    }
    /// perftest's title.
    fn title(self) -> &'static str {
        match self {
            Test::WriteBw => "RDMA_Write BW Test",
            Test::ReadBw => "RDMA_Read BW Test",
            Test::WriteLat => "RDMA_Write Latency Test",
            Test::ReadLat => "RDMA_Read Latency Test",
        }
    }
    pub(crate) fn is_bw(self) -> bool {
        matches!(self, Test::WriteBw | Test::ReadBw)
    }
    /// The wire code (control messages).
    pub(crate) fn code(self) -> u8 {
        match self {
            Test::WriteBw => 1,
            Test::ReadBw => 2,
            Test::WriteLat => 3,
            Test::ReadLat => 4,
        }
    }
    pub(crate) fn from_code(c: u8) -> Option<Test> {
        Test::ALL.into_iter().find(|t| t.code() == c)
    }
}

const AFTER_HELP: &str = "\
Units: MB/sec is 2^20 bytes a second, as perftest's (MsgRate is 10^6 messages a second);
latencies are microseconds. WRITE latency is half a ping-pong round trip, READ latency a whole
READ, as perftest reports them. BW average = bytes / (last completion - first post); BW peak =
perftest's best window of consecutive messages (not computed above 20000 iterations: 0).

Server and client: `pinwheel perf write_bw` waits for one client on port 18515 (-p), serves
it and exits; `pinwheel perf write_bw HOST` connects and prints the results. The client's
-s/-a/-n/--tx-depth/--compare/--no-coherence rule: the server only needs the same test name
(and -p, --timeout). With -p 0 the server picks a free port and prints it.

--compare: loopback bandwidth tests also run, side by side, a single-thread copy of the same
messages between the same two buffers of the pool (the pool's own copy); TCP bandwidth tests
also stream the same bytes over a plain TCP connection between the same two processes (a
second connection). The baseline runs just before and just after the RDMA run; the
baseline[MB/sec] column is their mean, ratio = BW average / baseline.

--json prints one document: the run's settings and `results`, an object per message size
(bytes, iterations, bw_peak_mib_s, bw_average_mib_s, msg_rate_mpps, baseline_mib_s, ratio;
or t_min_us, t_max_us, t_typical_us, t_avg_us, t_stdev_us, t_p99_us, t_p99_9_us).";

/// `perf`.
#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct PerfArgs {
    /// The test: write_bw, read_bw, write_lat, read_lat.
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
    /// _lat].
    #[arg(short, long, value_parser = parse_size, conflicts_with = "all")]
    size: Option<u64>,
    /// Iterations per message size [default: 5000 for _bw, 1000 for _lat].
    #[arg(short = 'n', long, value_name = "ITERS")]
    iters: Option<u64>,
    /// Every message size from 2 bytes to 8 MiB, powers of two (perftest -a).
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
    /// Work requests in flight (bandwidth tests) [default: 128 for _bw, 1 for _lat].
    #[arg(long, value_name = "N")]
    tx_depth: Option<u32>,
    /// Also measure the baseline (memcpy in loopback, raw TCP otherwise) and print the ratio
    /// (bandwidth tests).
    #[arg(long)]
    compare: bool,
    /// Run with the device's coherence checks off on both sides (the MR state check and
    /// in-flight accounting of every transfer), to measure what they cost.
    #[arg(long)]
    no_coherence: bool,
    /// Seconds any wait may last: the server's wait for its client, the client's connection,
    /// and any stretch of a run without progress.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0, value_parser = parse_timeout)]
    timeout: f64,
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= PERF_TIMEOUT_MAX_S => Ok(v),
        _ => Err(format!("{s:?}: the timeout is a number of seconds in (0, {PERF_TIMEOUT_MAX_S}]")),
    }
}

/// The work request of a bandwidth test: a WRITE of `sge` to `addr` of `rkey`, or a READ of
/// it into `sge`.
pub(crate) fn bw_request(test: Test, sge: Sge, addr: u64, rkey: Rkey) -> SendWr {
    if test == Test::WriteBw {
        SendWr::write(0, sge, addr, rkey)
    } else {
        SendWr::read(0, sge, addr, rkey)
    }
}

/// perftest -a: 2 bytes to 8 MiB, powers of two.
fn all_sizes() -> Vec<u64> {
    (1..=23).map(|k| 1u64 << k).collect()
}

/// A validated run.
#[derive(Clone, Debug)]
pub(crate) struct Params {
    pub(crate) test: Test,
    pub(crate) sizes: Vec<u64>,
    pub(crate) iters: u64,
    pub(crate) tx_depth: u32,
    pub(crate) cq_mod: u32,
    pub(crate) compare: bool,
    pub(crate) coherence: bool,
    pub(crate) timeout: Duration,
    pub(crate) json: bool,
}

impl Params {
    fn from_args(a: &PerfArgs) -> Result<Params, CliError> {
        let test = a.test;
        let bad = |what: &str, detail: String| CliError::invalid("perf", what, detail);
        let sizes = if a.all {
            all_sizes()
        } else {
            vec![a.size.unwrap_or(if test.is_bw() { 65536 } else { 2 })]
        };
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
        let iters = a.iters.unwrap_or(if test.is_bw() { 5000 } else { 1000 });
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
        let shm_lat = a.socket.is_some() && test == Test::WriteLat;
        if a.compare && !test.is_bw() && !shm_lat {
            return Err(bad(
                "--compare",
                format!(
                    "{} has no baseline: --compare is for write_bw and read_bw (and write_lat \
                     with --socket)",
                    test.name()
                ),
            ));
        }
        if a.no_coherence && a.socket.is_some() {
            return Err(bad(
                "--no-coherence",
                "with --socket the coherence checks are the node daemon's, not perf's".into(),
            ));
        }
        Ok(Params {
            test,
            sizes,
            iters,
            tx_depth,
            cq_mod: PERF_CQ_MODERATION.min(tx_depth),
            compare: a.compare,
            coherence: !a.no_coherence,
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
            tx_depth: self.tx_depth,
            cq_moderation: self.cq_mod,
            mtu,
            coherence_checks: self.coherence,
            baseline: self.compare.then_some(baseline),
            bw_unit: "MiB/s",
        }
    }
}

/// Runs `perf`.
pub fn run(a: PerfArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let p = Params::from_args(&a)?;
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
    }
}
