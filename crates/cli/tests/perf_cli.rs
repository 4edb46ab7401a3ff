#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Black-box tests of `pinwheel perf`: loopback runs of every test, a real client and server
//! in two processes over TCP, and bad input. Runs are short (-n in the hundreds); every wait
//! is bounded (assert_cmd timeouts, a deadline on the server's first line and on its exit).

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);

fn pinwheel() -> Command {
    let mut c = Command::cargo_bin("pinwheel").expect("the pinwheel binary is built for the tests");
    c.timeout(LIMIT);
    c
}

fn perf_ok(args: &[&str]) -> String {
    let out = pinwheel().arg("perf").args(args).assert().success().get_output().stdout.clone();
    String::from_utf8(out).unwrap()
}

fn perf_json(args: &[&str]) -> Value {
    let s = perf_ok(&[args, &["--json"]].concat());
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{s}"))
}

/// The numbers of the row after `header` in perftest's text output.
fn row_after(out: &str, header: &str) -> Vec<f64> {
    let mut lines = out.lines().skip_while(|l| !l.starts_with(header));
    assert!(lines.next().is_some(), "no {header:?} in:\n{out}");
    let row = lines.next().unwrap_or_else(|| panic!("no row after the header in:\n{out}"));
    row.split_whitespace()
        .map(|w| w.parse().unwrap_or_else(|_| panic!("{w:?} in {row:?}")))
        .collect()
}

const BW_HEADER: &str =
    " #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]";
const LAT_HEADER: &str = " #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec]";

#[test]
fn perf_loopback_bandwidth_tests_print_perftest_rows() {
    for test in ["write_bw", "read_bw"] {
        let out = perf_ok(&[test, "--loopback", "-n", "300"]);
        assert!(out.contains(BW_HEADER), "{out}");
        let r = row_after(&out, " #bytes");
        assert_eq!(r.len(), 5, "{out}");
        assert_eq!((r[0], r[1]), (65536.0, 300.0), "{out}");
        assert!(r[2] > 0.0 && r[3] > 0.0 && r[4] > 0.0, "{out}");
        assert!(r[2] >= r[3] * 0.999, "peak below average: {out}");
        // MsgRate[Mpps] = average MiB/s * 2^20 / bytes / 10^6.
        assert!((r[4] - r[3] * 1_048_576.0 / 65536.0 / 1e6).abs() < r[4] * 0.01, "{out}");
    }
}

#[test]
fn perf_loopback_latency_tests_print_perftest_rows() {
    for test in ["write_lat", "read_lat"] {
        let out = perf_ok(&[test, "--loopback", "-n", "300"]);
        assert!(out.contains(LAT_HEADER), "{out}");
        let r = row_after(&out, " #bytes");
        assert_eq!(r.len(), 9, "{out}");
        assert_eq!((r[0], r[1]), (2.0, 300.0), "{out}");
        let (min, max, typical, avg) = (r[2], r[3], r[4], r[5]);
        assert!(min > 0.0 && min <= typical && typical <= max && min <= avg && avg <= max, "{out}");
        assert!(r[7] <= r[8] && r[8] <= max, "percentiles: {out}");
    }
}

#[test]
fn perf_loopback_json_compare_and_no_coherence() {
    let v = perf_json(&["write_bw", "--loopback", "-n", "200", "-s", "4096", "--compare"]);
    assert_eq!((v["test"].as_str(), v["transport"].as_str()), (Some("write_bw"), Some("loopback")));
    assert_eq!(v["coherence_checks"], true);
    let r = &v["results"][0];
    assert_eq!((r["bytes"].as_u64(), r["iterations"].as_u64()), (Some(4096), Some(200)));
    for f in ["bw_peak_mib_s", "bw_average_mib_s", "msg_rate_mpps", "baseline_mib_s", "ratio"] {
        assert!(r[f].as_f64().is_some_and(|x| x > 0.0), "{f}: {v:#}");
    }
    let ratio = r["bw_average_mib_s"].as_f64().unwrap() / r["baseline_mib_s"].as_f64().unwrap();
    assert!((ratio - r["ratio"].as_f64().unwrap()).abs() < 1e-9, "{v:#}");

    let v = perf_json(&["read_bw", "--loopback", "-n", "200", "--no-coherence"]);
    assert_eq!(v["coherence_checks"], false);
    assert!(v["results"][0].get("ratio").is_none(), "no baseline without --compare: {v:#}");

    let v = perf_json(&["read_lat", "--loopback", "-n", "200", "-s", "64"]);
    let r = &v["results"][0];
    assert_eq!(r["bytes"], 64);
    for f in ["t_min_us", "t_max_us", "t_typical_us", "t_avg_us", "t_p99_us", "t_p99_9_us"] {
        assert!(r[f].as_f64().is_some_and(|x| x > 0.0), "{f}: {v:#}");
    }
}

#[test]
fn perf_loopback_all_sizes_runs_perftests_sizes() {
    let v = perf_json(&["write_lat", "--loopback", "-a", "-n", "3"]);
    let sizes: Vec<u64> =
        v["results"].as_array().unwrap().iter().map(|r| r["bytes"].as_u64().unwrap()).collect();
    assert_eq!(sizes, (1..=23).map(|k| 1u64 << k).collect::<Vec<_>>());
}

/// A server process, killed if the test ends without it exiting.
struct Server {
    child: Child,
    port: u16,
    /// Its stdout after the first line.
    lines: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `pinwheel perf TEST -p 0 ARGS` and reads the port from its first line.
    fn start(test: &str, args: &[&str]) -> Server {
        let mut child = Process::new(assert_cmd::cargo::cargo_bin("pinwheel"))
            .args(["perf", test, "-p", "0", "--timeout", "20"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok).unwrap_or_default();
            let _ = tx.send(first);
            for l in lines.map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let first = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) => l,
            Err(e) => {
                let _ = child.kill();
                panic!("no first line from the server: {e}");
            }
        };
        // " waiting for a client on port N (...)"
        let port = first
            .split("port ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {first:?}"));
        Server { child, port, lines: rx }
    }

    /// What it printed after its first line (once it exited).
    fn rest(&self) -> String {
        let mut s = String::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            s.push_str(&l);
            s.push('\n');
        }
        s
    }

    /// Waits (bounded) for the server to exit; its status.
    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "the server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn perf_tcp_write_bw_between_two_processes() {
    let mut server = Server::start("write_bw", &[]);
    let port = server.port.to_string();
    let v = perf_json(&[
        "write_bw",
        "127.0.0.1",
        "-p",
        &port,
        "-n",
        "300",
        "-s",
        "256K",
        "--compare",
        "--timeout",
        "20",
    ]);
    assert_eq!(v["transport"], "tcp");
    let r = &v["results"][0];
    assert_eq!((r["bytes"].as_u64(), r["iterations"].as_u64()), (Some(262144), Some(300)));
    for f in ["bw_peak_mib_s", "bw_average_mib_s", "msg_rate_mpps", "baseline_mib_s", "ratio"] {
        assert!(r[f].as_f64().is_some_and(|x| x > 0.0), "{f}: {v:#}");
    }
    assert!(server.wait().success(), "the server failed");
    let rest = server.rest();
    assert!(rest.contains("served write_bw to"), "{rest}");
}

#[test]
fn perf_tcp_read_lat_between_two_processes() {
    let mut server = Server::start("read_lat", &[]);
    let port = server.port.to_string();
    let out = perf_ok(&["read_lat", "127.0.0.1", "-p", &port, "-n", "300", "--timeout", "20"]);
    assert!(out.contains(LAT_HEADER), "{out}");
    let r = row_after(&out, " #bytes");
    assert_eq!((r[0], r[1]), (2.0, 300.0), "{out}");
    assert!(r[2] > 0.0 && r[2] <= r[4] && r[4] <= r[3], "{out}");
    assert!(server.wait().success(), "the server failed");
}

#[test]
fn perf_tcp_write_lat_ping_pong_between_two_processes() {
    let mut server = Server::start("write_lat", &[]);
    let port = server.port.to_string();
    let v = perf_json(&[
        "write_lat",
        "127.0.0.1",
        "-p",
        &port,
        "-n",
        "200",
        "-s",
        "64",
        "--timeout",
        "20",
    ]);
    let r = &v["results"][0];
    assert_eq!((r["bytes"].as_u64(), r["iterations"].as_u64()), (Some(64), Some(200)));
    assert!(r["t_typical_us"].as_f64().is_some_and(|x| x > 0.0), "{v:#}");
    assert!(server.wait().success(), "the server failed");
}

#[test]
fn perf_tcp_refuses_a_client_running_another_test() {
    let mut server = Server::start("write_bw", &[]);
    let port = server.port.to_string();
    pinwheel()
        .args(["perf", "read_bw", "127.0.0.1", "-p", &port, "-n", "10", "--timeout", "10"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("the server runs write_bw"));
    assert!(!server.wait().success(), "the server must fail too");
}

fn perf_fails(args: &[&str], code: i32, message: &str) {
    pinwheel().arg("perf").args(args).assert().code(code).stderr(predicate::str::contains(message));
}

#[test]
fn perf_rejects_bad_input() {
    perf_fails(&["write_pizza", "--loopback"], 2, "possible values: write_bw, read_bw");
    perf_fails(&["write_bw", "--loopback", "-s", "0"], 1, "-s 0: Invalid argument (EINVAL)");
    perf_fails(&["write_bw", "--loopback", "-s", "4G"], 1, "max_msg_sz");
    perf_fails(&["write_bw", "--loopback", "-n", "0"], 1, "-n 0");
    perf_fails(&["write_bw", "--loopback", "--tx-depth", "0"], 1, "--tx-depth 0");
    perf_fails(&["reg_mr", "--compare"], 1, "--compare is for the perftest tests");
    perf_fails(&["write_bw", "--loopback", "--timeout", "0"], 2, "--timeout");
    perf_fails(&["write_bw", "127.0.0.1", "--loopback"], 2, "cannot be used with");
}

#[test]
fn perf_unreachable_server_fails_fast() {
    // A port nobody listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let t = Instant::now();
    perf_fails(
        &["write_bw", "127.0.0.1", "-p", &port.to_string(), "--timeout", "2"],
        1,
        "Connection refused (ECONNREFUSED)",
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    perf_fails(&["write_bw", "no-such-host.invalid", "--timeout", "2"], 1, "no-such-host.invalid");
}

#[test]
fn perf_server_port_in_use_and_no_client() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    perf_fails(&["write_bw", "-p", &port], 1, "Address already in use (EADDRINUSE)");
    drop(taken);
    let t = Instant::now();
    perf_fails(&["read_bw", "-p", "0", "--timeout", "0.5"], 1, "no client came within 0.5 s");
    assert!(t.elapsed() < Duration::from_secs(10));
}
