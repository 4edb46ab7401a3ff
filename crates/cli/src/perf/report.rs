//! What `pinwheel perf` prints, computed and laid out as perftest does
//! (`perftest_parameters.c`, `print_report_bw` / `print_report_lat`):
//!
//! - bandwidth: average = bytes / (last completion − first post); peak = the best
//!   (completion j − post i) / (j − i + 1) over every window, perftest's O(n²) search, skipped
//!   above `PERF_PEAK_ITERS_MAX` iterations (printed as 0, as perftest's `noPeak`);
//!   MsgRate = messages / s / 10⁶. MB/sec is 2^20 bytes a second.
//! - latency: WRITE samples are half a round trip (ping-pong), READ samples a whole one;
//!   typical = median; percentiles of the sorted samples.
//!
//! Text rows use perftest's printf formats; `--json` prints one document whose `results` hold
//! an object per message size with the same quantities.

use std::io::{self, Write};
use std::time::Instant;

use serde::Serialize;

use crate::limits::PERF_PEAK_ITERS_MAX;
use crate::perf::bench::{BwTimes, Samples};

/// perftest's MB: 2^20 bytes.
const MIB: f64 = 1_048_576.0;

const RESULT_LINE: &str =
    "---------------------------------------------------------------------------------------";
const BW_HEADER: &str =
    " #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]";
const LAT_HEADER: &str = " #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec]";
const COMPARE_HEADER: &str = "   baseline[MB/sec]   ratio";
const LAT_COMPARE_HEADER: &str = "   baseline[usec]   ratio";
const LAT_DURATION_HEADER: &str = " #bytes        #iterations       t_avg[usec]    tps average";

/// One message size of a bandwidth test.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct BwRow {
    pub(crate) bytes: u64,
    pub(crate) iterations: u64,
    pub(crate) bw_peak_mib_s: f64,
    pub(crate) bw_average_mib_s: f64,
    pub(crate) msg_rate_mpps: f64,
    /// Messages of every QP (`iterations` is per QP).
    pub(crate) messages: u64,
    /// The baseline of `--compare` (memcpy or raw TCP), same bytes and iterations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) baseline_mib_s: Option<f64>,
    /// `bw_average_mib_s / baseline_mib_s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ratio: Option<f64>,
}

impl BwRow {
    /// From the time each message was posted and completed (`tposted[0]` is the first post).
    pub(crate) fn new(bytes: u64, tposted: &[Instant], tcompleted: &[Instant]) -> BwRow {
        let n = tposted.len().min(tcompleted.len());
        let (Some(first), Some(last)) = (tposted.first(), tcompleted.get(n.wrapping_sub(1))) else {
            return BwRow::empty(bytes);
        };
        let secs = last.saturating_duration_since(*first).as_secs_f64().max(1e-9);
        let total = bytes as f64 * n as f64;
        let best = peak_window(*first, &tposted[..n], &tcompleted[..n]);
        let peak = bytes as f64 / best.max(1e-9) / MIB;
        BwRow {
            bytes,
            iterations: n as u64,
            bw_peak_mib_s: peak,
            bw_average_mib_s: total / secs / MIB,
            msg_rate_mpps: n as f64 / secs / 1e6,
            messages: n as u64,
            baseline_mib_s: None,
            ratio: None,
        }
    }

    /// From a run over `qps` QPs: per-message times, or a duration run's span (no peak:
    /// perftest reports none in duration mode either). `iterations` is per QP, as perftest's.
    pub(crate) fn from_times(bytes: u64, qps: u32, times: &BwTimes) -> BwRow {
        let q = u64::from(qps.max(1));
        match times {
            BwTimes::Each(posted, completed) => {
                let mut r = BwRow::new(bytes, posted, completed);
                r.iterations /= q;
                r
            }
            BwTimes::Span { msgs, first, last } => {
                let secs = last.saturating_duration_since(*first).as_secs_f64().max(1e-9);
                BwRow {
                    iterations: msgs / q,
                    messages: *msgs,
                    bw_average_mib_s: bytes as f64 * *msgs as f64 / secs / MIB,
                    msg_rate_mpps: *msgs as f64 / secs / 1e6,
                    ..BwRow::empty(bytes)
                }
            }
        }
    }

    fn empty(bytes: u64) -> BwRow {
        BwRow {
            bytes,
            iterations: 0,
            bw_peak_mib_s: 0.0,
            bw_average_mib_s: 0.0,
            msg_rate_mpps: 0.0,
            messages: 0,
            baseline_mib_s: None,
            ratio: None,
        }
    }

    /// Adds the baseline and the ratio.
    pub(crate) fn with_baseline(mut self, baseline_mib_s: Option<f64>) -> BwRow {
        self.baseline_mib_s = baseline_mib_s;
        self.ratio = baseline_mib_s.filter(|b| *b > 0.0).map(|b| self.bw_average_mib_s / b);
        self
    }

    fn text(&self) -> String {
        let mut s = format!(
            " {:<7}    {:<10}       {:<7.2}            {:<7.2}\t\t   {:<7.6}",
            self.bytes,
            self.iterations,
            self.bw_peak_mib_s,
            self.bw_average_mib_s,
            self.msg_rate_mpps
        );
        if let (Some(b), Some(r)) = (self.baseline_mib_s, self.ratio) {
            s.push_str(&format!("\t   {b:<16.2}   {r:.3}"));
        }
        s
    }
}

/// Seconds of the best window: min over i ≤ j of (tcompleted[j] − tposted[i]) / (j − i + 1),
/// perftest's search. It is quadratic: above `PERF_PEAK_ITERS_MAX` messages the windows
/// start and end every k-th message (k = n / that bound, rounded up) — still real windows of
/// the run, so the peak is never more than what some stretch of it achieved.
fn peak_window(origin: Instant, tposted: &[Instant], tcompleted: &[Instant]) -> f64 {
    let n = tposted.len().min(tcompleted.len());
    let step = n.div_ceil(PERF_PEAK_ITERS_MAX as usize).max(1);
    // Every k-th message, and the last (the whole run is always one of the windows).
    let mut at: Vec<usize> = (0..n).step_by(step).collect();
    if n > 0 && at.last() != Some(&(n - 1)) {
        at.push(n - 1);
    }
    let secs = |t: &Instant| t.saturating_duration_since(origin).as_secs_f64();
    let posted: Vec<(usize, f64)> = at.iter().map(|&i| (i, secs(&tposted[i]))).collect();
    let completed: Vec<(usize, f64)> = at.iter().map(|&i| (i, secs(&tcompleted[i]))).collect();
    let mut best = f64::INFINITY;
    for (k, &(i, p)) in posted.iter().enumerate() {
        for &(j, c) in &completed[k..] {
            let t = (c - p) / (j - i + 1) as f64;
            if t < best {
                best = t;
            }
        }
    }
    best
}

/// One message size of a latency test (microseconds).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LatRow {
    pub(crate) bytes: u64,
    pub(crate) iterations: u64,
    pub(crate) t_min_us: f64,
    pub(crate) t_max_us: f64,
    pub(crate) t_typical_us: f64,
    pub(crate) t_avg_us: f64,
    pub(crate) t_stdev_us: f64,
    pub(crate) t_p99_us: f64,
    pub(crate) t_p99_9_us: f64,
    /// The cache-line ping-pong's typical one-way latency (`--compare`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) baseline_us: Option<f64>,
    /// `t_typical_us / baseline_us`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ratio: Option<f64>,
}

impl LatRow {
    /// From the samples (µs, already halved for ping-pong tests).
    pub(crate) fn new(bytes: u64, mut samples: Vec<f64>) -> LatRow {
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let at = |p: f64| {
            let i = ((n as f64 * p).ceil() as usize).clamp(1, n.max(1)) - 1;
            samples.get(i).copied().unwrap_or(0.0)
        };
        let median = match n {
            0 => 0.0,
            _ if n.is_multiple_of(2) => (samples[n / 2 - 1] + samples[n / 2]) / 2.0,
            _ => samples[n / 2],
        };
        let avg = if n == 0 { 0.0 } else { samples.iter().sum::<f64>() / n as f64 };
        let var = if n == 0 {
            0.0
        } else {
            samples.iter().map(|s| (s - avg) * (s - avg)).sum::<f64>() / n as f64
        };
        LatRow {
            bytes,
            iterations: n as u64,
            t_min_us: samples.first().copied().unwrap_or(0.0),
            t_max_us: samples.last().copied().unwrap_or(0.0),
            t_typical_us: median,
            t_avg_us: avg,
            t_stdev_us: var.sqrt(),
            t_p99_us: at(0.99),
            t_p99_9_us: at(0.999),
            baseline_us: None,
            ratio: None,
        }
    }

    /// Adds the baseline and the ratio.
    pub(crate) fn with_baseline(mut self, baseline_us: Option<f64>) -> LatRow {
        self.baseline_us = baseline_us;
        self.ratio = baseline_us.filter(|b| *b > 0.0).map(|b| self.t_typical_us / b);
        self
    }

    fn text(&self) -> String {
        let mut s = format!(
            " {:<7} {}          {:<7.2}        {:<7.2}      {:<7.2}  \t       {:<7.2}     \t{:<7.2}\t\t{:<7.2} \t\t{:<7.2}",
            self.bytes,
            self.iterations,
            self.t_min_us,
            self.t_max_us,
            self.t_typical_us,
            self.t_avg_us,
            self.t_stdev_us,
            self.t_p99_us,
            self.t_p99_9_us
        );
        if let (Some(b), Some(r)) = (self.baseline_us, self.ratio) {
            s.push_str(&format!("\t   {b:<14.3}   {r:.3}"));
        }
        s
    }
}

/// The row of a latency run: perftest's, or its duration-mode row with -D; `baseline_us`
/// with `--compare`.
pub(crate) fn lat_row(bytes: u64, s: Samples, duration: bool, baseline_us: Option<f64>) -> Row {
    if duration {
        let n = s.us.len() as u64;
        return Row::LatDur(LatDurRow::new(bytes, n, s.us.iter().sum(), s.secs));
    }
    Row::Lat(LatRow::new(bytes, s.us).with_baseline(baseline_us))
}

/// A latency test run with -D (perftest's duration-mode row).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LatDurRow {
    pub(crate) bytes: u64,
    pub(crate) iterations: u64,
    pub(crate) t_avg_us: f64,
    /// Round trips (ping-pongs) or operations a second.
    pub(crate) tps_average: f64,
}

impl LatDurRow {
    /// `iterations` samples that took `total_us` (µs, already halved for ping-pongs).
    pub(crate) fn new(bytes: u64, iterations: u64, total_us: f64, secs: f64) -> LatDurRow {
        LatDurRow {
            bytes,
            iterations,
            t_avg_us: if iterations == 0 { 0.0 } else { total_us / iterations as f64 },
            tps_average: iterations as f64 / secs.max(1e-9),
        }
    }
    fn text(&self) -> String {
        format!(
            " {:<7}       {:<10}        {:<7.2}        {:<7.2}",
            self.bytes, self.iterations, self.t_avg_us, self.tps_average
        )
    }
}

/// A result row.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Row {
    /// Bandwidth.
    Bw(BwRow),
    /// Latency.
    Lat(LatRow),
    /// Latency, duration mode.
    LatDur(LatDurRow),
    /// A cost of coherence (`coherence.rs`), with its own columns.
    Cost(crate::perf::coherence::CostRow),
}

impl Row {
    fn text(&self) -> String {
        match self {
            Row::Bw(r) => r.text(),
            Row::Lat(r) => r.text(),
            Row::LatDur(r) => r.text(),
            Row::Cost(r) => r.text(),
        }
    }
}

/// Which columns a run prints.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// perftest's bandwidth columns.
    Bw,
    /// perftest's latency columns.
    Lat,
    /// perftest's duration-mode latency columns.
    LatDuration,
    /// A cost of coherence: the header line it gives.
    Cost(&'static str),
}

/// The settings a run reports with its results.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RunInfo {
    pub(crate) test: &'static str,
    /// `loopback` or `tcp`.
    pub(crate) transport: &'static str,
    /// The server (TCP client only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server: Option<String>,
    pub(crate) device: String,
    pub(crate) connection_type: &'static str,
    /// Queue pairs (-q).
    pub(crate) qps: u32,
    pub(crate) tx_depth: u32,
    pub(crate) cq_moderation: u32,
    pub(crate) mtu: u32,
    pub(crate) coherence_checks: bool,
    /// -D.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) duration_s: Option<f64>,
    /// Atomic tests: FETCH_AND_ADD or CMP_AND_SWAP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) atomic_type: Option<&'static str>,
    /// reg_mr, odp_fault: the MR kind (and frame size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mr_kind: Option<String>,
    /// What `--compare` measures against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) baseline: Option<&'static str>,
    /// Bandwidth unit: MiB/s (perftest's MB/sec); latencies are µs.
    pub(crate) bw_unit: &'static str,
}

#[derive(Serialize)]
struct Doc<'a> {
    #[serde(flatten)]
    info: &'a RunInfo,
    results: &'a [Row],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    notes: &'a [String],
}

/// Prints the header, then each row as soon as its size is measured (text), or everything
/// at the end (`--json`).
pub(crate) struct Reporter<'a> {
    out: &'a mut dyn Write,
    json: bool,
    info: Option<RunInfo>,
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(out: &'a mut dyn Write, json: bool) -> Reporter<'a> {
        Reporter { out, json, info: None, rows: Vec::new(), notes: Vec::new() }
    }

    /// Starts a run: prints perftest's header block (text).
    pub(crate) fn begin(&mut self, info: RunInfo, title: &str, layout: Layout) -> io::Result<()> {
        if !self.json {
            let o = &mut *self.out;
            writeln!(o, "{RESULT_LINE}")?;
            writeln!(o, "                    {title}")?;
            writeln!(o, " Device          : {}", info.device)?;
            match (&info.server, info.transport) {
                (Some(s), "shm") => writeln!(
                    o,
                    " Transport type  : shared memory, two client processes of the node at {s}"
                )?,
                (Some(s), _) => writeln!(o, " Transport type  : TCP to {s}")?,
                (None, "loopback") => {
                    writeln!(o, " Transport type  : loopback (two QPs of one device)")?
                }
                (None, t) => writeln!(o, " Transport type  : {t}")?,
            }
            if matches!(layout, Layout::Bw | Layout::Lat | Layout::LatDuration) {
                writeln!(o, " Connection type : {}\t\tUsing SRQ      : OFF", info.connection_type)?;
                writeln!(o, " Number of qps   : {}", info.qps)?;
                writeln!(o, " TX depth        : {}", info.tx_depth)?;
                if layout == Layout::Bw {
                    writeln!(o, " CQ Moderation   : {}", info.cq_moderation)?;
                }
                writeln!(o, " Mtu             : {}[B]", info.mtu)?;
            }
            writeln!(o, " Coherence checks: {}", if info.coherence_checks { "ON" } else { "OFF" })?;
            if let Some(d) = info.duration_s {
                writeln!(o, " Duration        : {d} s")?;
            }
            if let Some(a) = info.atomic_type {
                writeln!(o, " Atomic type     : {a}")?;
            }
            if let Some(k) = &info.mr_kind {
                writeln!(o, " MR kind         : {k}")?;
            }
            if let Some(b) = info.baseline {
                writeln!(o, " Baseline        : {b}")?;
            }
            writeln!(o, "{RESULT_LINE}")?;
            let compare = info.baseline.is_some();
            match layout {
                Layout::Bw => {
                    writeln!(o, "{BW_HEADER}{}", if compare { COMPARE_HEADER } else { "" })?
                }
                Layout::Lat => {
                    writeln!(o, "{LAT_HEADER}{}", if compare { LAT_COMPARE_HEADER } else { "" })?
                }
                Layout::LatDuration => writeln!(o, "{LAT_DURATION_HEADER}")?,
                Layout::Cost(h) => writeln!(o, "{h}")?,
            }
            o.flush()?;
        }
        self.info = Some(info);
        Ok(())
    }

    /// One message size measured.
    pub(crate) fn row(&mut self, row: Row) -> io::Result<()> {
        if !self.json {
            writeln!(self.out, "{}", row.text())?;
            self.out.flush()?;
        }
        self.rows.push(row);
        Ok(())
    }

    /// A remark printed after the results (how a baseline ran, what was skipped), once.
    pub(crate) fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// The end of the run.
    pub(crate) fn end(&mut self) -> io::Result<()> {
        if !self.json {
            writeln!(self.out, "{RESULT_LINE}")?;
            for n in &self.notes {
                writeln!(self.out, " note: {n}")?;
            }
            return Ok(());
        }
        let Some(info) = &self.info else { return Ok(()) };
        let doc = Doc { info, results: &self.rows, notes: &self.notes };
        serde_json::to_writer_pretty(&mut *self.out, &doc).map_err(io::Error::from)?;
        writeln!(self.out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn report_bw_average_and_peak() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // Four 1 MiB messages posted at once, completed at 1, 2, 3 and 8 ms.
        let posted = vec![t0; 4];
        let completed = vec![ms(1), ms(2), ms(3), ms(8)];
        let r = BwRow::new(1 << 20, &posted, &completed);
        assert_eq!(r.iterations, 4);
        assert!((r.bw_average_mib_s - 500.0).abs() < 1e-6, "{r:?}");
        // Best window: the first three, 1 ms each.
        assert!((r.bw_peak_mib_s - 1000.0).abs() < 1e-6, "{r:?}");
        assert!((r.msg_rate_mpps - 0.0005).abs() < 1e-12, "{r:?}");
        let r = r.with_baseline(Some(1000.0));
        assert_eq!(r.ratio, Some(0.5));
    }

    #[test]
    fn report_bw_peak_of_a_long_run_is_a_real_window() {
        // 50 000 messages, one every µs, except a stretch of 10 000 at twice the rate.
        let t0 = Instant::now();
        let n = 50_000u64;
        let mut at = 0u64;
        let mut posted = Vec::new();
        let mut completed = Vec::new();
        for i in 0..n {
            at += if (20_000..30_000).contains(&i) { 500 } else { 1000 };
            posted.push(t0 + Duration::from_nanos(at));
            completed.push(t0 + Duration::from_nanos(at + 1000));
        }
        let r = BwRow::new(1 << 20, &posted, &completed);
        assert!(r.bw_peak_mib_s >= r.bw_average_mib_s, "{r:?}");
        // The fast stretch: at most 1 MiB per 0.5 µs, and close to it.
        let fast = 1.0 / 0.5e-6;
        assert!(r.bw_peak_mib_s <= fast * 1.0001 && r.bw_peak_mib_s > fast * 0.9, "{r:?}");
    }

    #[test]
    fn report_lat_statistics() {
        let samples: Vec<f64> = (1..=1000).map(f64::from).collect();
        let r = LatRow::new(2, samples);
        assert_eq!((r.t_min_us, r.t_max_us), (1.0, 1000.0));
        assert_eq!(r.t_typical_us, 500.5);
        assert_eq!(r.t_avg_us, 500.5);
        assert_eq!((r.t_p99_us, r.t_p99_9_us), (990.0, 999.0));
        assert!((r.t_stdev_us - 288.675).abs() < 1e-3, "{r:?}");
        let empty = LatRow::new(2, Vec::new());
        assert_eq!(empty.iterations, 0);
    }

    #[test]
    fn report_rows_follow_perftest_formats() {
        let r = BwRow {
            bytes: 65536,
            iterations: 5000,
            bw_peak_mib_s: 1.0,
            bw_average_mib_s: 2.0,
            msg_rate_mpps: 0.5,
            messages: 5000,
            baseline_mib_s: None,
            ratio: None,
        };
        assert_eq!(
            r.text(),
            " 65536      5000             1.00               2.00   \t\t   0.500000"
        );
    }
}
