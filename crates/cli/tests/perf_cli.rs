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
    /// Its stderr, as read so far.
    errors: std::sync::Arc<std::sync::Mutex<String>>,
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
        let stderr = child.stderr.take().unwrap();
        let errors = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let errs = std::sync::Arc::clone(&errors);
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut e = errs.lock().unwrap();
                e.push_str(&l);
                e.push('\n');
            }
        });
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
        Server { child, port, lines: rx, errors }
    }

    /// What it printed on stderr so far (for failure messages).
    fn errors(&self) -> String {
        std::thread::sleep(Duration::from_millis(50));
        self.errors.lock().unwrap().clone()
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
    assert!(server.wait().success(), "the server failed: {}", server.errors());
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
    assert!(server.wait().success(), "the server failed: {}", server.errors());
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
    assert!(server.wait().success(), "the server failed: {}", server.errors());
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

/// `pinwheel serve` on a fresh socket, killed on drop; ready once it printed its node line.
struct Daemon {
    child: Child,
    sock: String,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("node.sock").display().to_string();
        let mut child = Process::new(assert_cmd::cargo::cargo_bin("pinwheel"))
            .args(["serve", "--pool", "memfd", "--size", "128M", "--socket", &sock])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(l);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains("pinwheel serve: node") => break,
                Ok(_) => {}
                Err(e) => {
                    let _ = child.kill();
                    panic!("the daemon did not start: {e}");
                }
            }
        }
        Daemon { child, sock, _dir: dir }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--socket`: two client processes of one daemon, every WRITE executed by the poster's
/// library through the node's shared tables; `--compare` measures memcpy and a cache-line
/// ping-pong between the same processes.
#[test]
fn perf_socket_write_bw_and_write_lat_between_two_client_processes() {
    let d = Daemon::start();
    let mut server = Server::start("write_bw", &["--socket", &d.sock]);
    let port = server.port.to_string();
    let common = ["-p", &port, "--socket", &d.sock, "--compare", "--timeout", "20"];
    let v = perf_json(&[&["write_bw", "127.0.0.1", "-n", "500"], &common[..]].concat());
    assert_eq!(v["transport"], "shm", "{v:#}");
    let r = &v["results"][0];
    assert_eq!((r["bytes"].as_u64(), r["iterations"].as_u64()), (Some(65536), Some(500)));
    for f in ["bw_average_mib_s", "baseline_mib_s", "ratio"] {
        assert!(r[f].as_f64().is_some_and(|x| x > 0.0), "{f}: {v:#}");
    }
    assert!(server.wait().success(), "the server failed: {}", server.errors());
    assert!(server.rest().contains("served write_bw to"));

    let mut server = Server::start("write_lat", &["--socket", &d.sock]);
    let port = server.port.to_string();
    let common = ["-p", &port, "--socket", &d.sock, "--compare", "--timeout", "20"];
    let v = perf_json(&[&["write_lat", "127.0.0.1", "-n", "300", "-s", "8"], &common[..]].concat());
    let r = &v["results"][0];
    assert_eq!((r["bytes"].as_u64(), r["iterations"].as_u64()), (Some(8), Some(300)));
    for f in ["t_typical_us", "baseline_us", "ratio"] {
        assert!(r[f].as_f64().is_some_and(|x| x > 0.0), "{f}: {v:#}");
    }
    assert!(server.wait().success(), "the server failed: {}", server.errors());
}

/// The SEND and atomic tests and -D between two client processes: the server keeps RECVs
/// posted (send_bw), both sides answer (send_lat), a duration run ends on the client's STOP.
#[test]
fn perf_socket_send_atomic_and_duration_runs() {
    let d = Daemon::start();
    for (test, extra) in [
        ("send_bw", &["-n", "400"][..]),
        ("send_lat", &["-n", "300", "--compare"][..]),
        ("atomic_bw", &["-n", "400"][..]),
        ("atomic_lat", &["-n", "300"][..]),
        ("write_lat", &["-D", "0.3"][..]),
        ("send_bw", &["-D", "0.3"][..]),
    ] {
        let mut server = Server::start(test, &["--socket", &d.sock]);
        let port = server.port.to_string();
        let common = ["-p", &port, "--socket", &d.sock, "--timeout", "20"];
        let v = perf_json(&[&[test, "127.0.0.1"], extra, &common[..]].concat());
        let r = &v["results"][0];
        assert!(r["iterations"].as_u64().is_some_and(|n| n > 0), "{test} {extra:?}: {v:#}");
        let figure = if test.ends_with("_bw") { "bw_average_mib_s" } else { "t_avg_us" };
        assert!(r[figure].as_f64().is_some_and(|x| x > 0.0), "{test} {extra:?}: {v:#}");
        if extra.contains(&"--compare") {
            assert!(r["baseline_us"].as_f64().is_some_and(|x| x > 0.0), "{v:#}");
        }
        assert!(server.wait().success(), "the {test} server failed");
    }
    perf_fails(&["atomic_lat", "--socket", &d.sock, "--compare"], 1, "has no baseline");
    perf_fails(&["write_bw", "--socket", &d.sock, "-q", "2"], 1, "one QP a side");
}

#[test]
fn perf_socket_refuses_no_coherence_and_a_missing_daemon() {
    perf_fails(
        &["write_bw", "127.0.0.1", "--socket", "/nonexistent.sock", "--no-coherence"],
        1,
        "the coherence checks are the node daemon's",
    );
    perf_fails(&["read_lat", "--socket", "/x.sock", "--compare"], 1, "read_lat has no baseline");
    // No daemon at the socket: the server and the client say so before they meet.
    let running = "is `pinwheel serve --socket /nonexistent/node.sock` running?";
    perf_fails(&["write_bw", "-p", "0", "--socket", "/nonexistent/node.sock"], 1, running);
    perf_fails(
        &["write_bw", "127.0.0.1", "-p", "9", "--socket", "/nonexistent/node.sock"],
        1,
        running,
    );
}

// --- send and atomic tests, -D, -q, -t ---

#[test]
fn perf_loopback_send_and_atomic_tests() {
    for (test, bytes) in [("send_bw", 65536.0), ("atomic_bw", 8.0)] {
        let out = perf_ok(&[test, "--loopback", "-n", "300"]);
        assert!(out.contains(BW_HEADER), "{out}");
        let r = row_after(&out, " #bytes");
        assert_eq!((r[0], r[1]), (bytes, 300.0), "{out}");
        assert!(r[3] > 0.0 && r[4] > 0.0, "{out}");
    }
    for (test, bytes) in [("send_lat", 2.0), ("atomic_lat", 8.0)] {
        let out = perf_ok(&[test, "--loopback", "-n", "300"]);
        let r = row_after(&out, " #bytes");
        assert_eq!((r[0], r[1]), (bytes, 300.0), "{out}");
        assert!(r[2] > 0.0 && r[2] <= r[4] && r[4] <= r[3], "{out}");
    }
    let v = perf_json(&["atomic_lat", "--loopback", "-n", "50", "-A", "CMP_AND_SWAP"]);
    assert_eq!(v["atomic_type"], "CMP_AND_SWAP");
    let v = perf_json(&["send_lat", "--loopback", "-a", "-n", "3"]);
    assert_eq!(v["results"].as_array().unwrap().len(), 23, "every size fits the RECVs");
}

#[test]
fn perf_duration_mode_runs_for_the_duration() {
    let t = Instant::now();
    let v = perf_json(&["write_bw", "--loopback", "-D", "0.3", "-s", "4096"]);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(v["duration_s"], 0.3);
    let r = &v["results"][0];
    assert!(r["iterations"].as_u64().unwrap() > 0, "{v:#}");
    assert_eq!(r["bw_peak_mib_s"], 0.0, "no peak in duration mode");
    assert!(r["bw_average_mib_s"].as_f64().unwrap() > 0.0, "{v:#}");
    for test in ["write_lat", "send_lat", "read_lat"] {
        let out = perf_ok(&[test, "--loopback", "-D", "0.2"]);
        let r = row_after(&out, " #bytes        #iterations       t_avg[usec]    tps average");
        assert_eq!(r.len(), 4, "{out}");
        assert!(r[1] > 0.0 && r[2] > 0.0 && r[3] > 0.0, "{out}");
        // tps ≈ 1 / (round trip): t_avg is half a ping-pong for WRITE and SEND.
        let rtt = if test == "read_lat" { r[2] } else { 2.0 * r[2] };
        assert!(r[3] <= 1.5e6 / rtt, "{test}: {out}");
    }
}

#[test]
fn perf_several_qps_sum_their_messages() {
    let v = perf_json(&["write_bw", "--loopback", "-q", "4", "-n", "200", "-t", "8", "-s", "4K"]);
    assert_eq!((v["qps"].as_u64(), v["tx_depth"].as_u64()), (Some(4), Some(8)));
    let r = &v["results"][0];
    assert_eq!((r["iterations"].as_u64(), r["messages"].as_u64()), (Some(200), Some(800)));
    let v = perf_json(&["send_bw", "--loopback", "-q", "3", "-n", "100", "-s", "1K"]);
    assert_eq!(v["results"][0]["messages"], 300);
}

#[test]
fn perf_latency_compare_runs_the_cache_line_ping_pong() {
    let v = perf_json(&["write_lat", "--loopback", "-n", "500", "--compare"]);
    let r = &v["results"][0];
    let (t, b) = (r["t_typical_us"].as_f64().unwrap(), r["baseline_us"].as_f64().unwrap());
    assert!(b > 0.0 && b < 1000.0, "{v:#}");
    assert!((r["ratio"].as_f64().unwrap() - t / b).abs() < 1e-9, "{v:#}");
    assert!(v["baseline"].as_str().unwrap().contains("ping-pong"), "{v:#}");
    let notes = v["notes"].to_string();
    assert!(notes.contains("ping-pong baseline"), "{notes}");
}

#[test]
fn perf_tcp_send_and_atomic_tests_between_two_processes() {
    for (test, extra) in [
        ("send_bw", vec!["-q", "2", "-s", "64K"]),
        ("send_lat", vec![]),
        ("atomic_lat", vec![]),
        ("atomic_bw", vec!["-A", "CMP_AND_SWAP"]),
    ] {
        let mut server = Server::start(test, &[]);
        let port = server.port.to_string();
        let mut args = vec![test, "127.0.0.1", "-p", &port, "-n", "200", "--timeout", "20"];
        args.extend(extra.iter().copied());
        let v = perf_json(&args);
        let r = &v["results"][0];
        assert_eq!(r["iterations"], 200, "{test}: {v:#}");
        let key = if test.ends_with("_bw") { "bw_average_mib_s" } else { "t_typical_us" };
        assert!(r[key].as_f64().is_some_and(|x| x > 0.0), "{test}: {v:#}");
        assert!(server.wait().success(), "{test}: the server failed: {}", server.errors());
        assert!(server.rest().contains(&format!("served {test} to")));
    }
}

#[test]
fn perf_tcp_duration_ping_pong_ends_with_stop() {
    for test in ["write_lat", "send_lat"] {
        let mut server = Server::start(test, &[]);
        let port = server.port.to_string();
        let out = perf_ok(&[test, "127.0.0.1", "-p", &port, "-D", "0.3", "--timeout", "20"]);
        let r = row_after(&out, " #bytes        #iterations");
        assert!(r[1] > 0.0, "{out}");
        // The server must have seen the STOP: it exits by itself.
        assert!(server.wait().success(), "{test}: the server failed: {}", server.errors());
    }
}

#[test]
fn perf_rejects_bad_new_flags() {
    perf_fails(&["atomic_bw", "--loopback", "-s", "16"], 1, "moves 8 bytes");
    perf_fails(&["write_lat", "--loopback", "-q", "2"], 1, "several QPs are for the bandwidth");
    perf_fails(&["write_bw", "--loopback", "-q", "0"], 1, "-q 0");
    perf_fails(&["reg_mr", "-D", "1"], 1, "not a duration");
    perf_fails(&["odp_fault", "--mr-kind", "pinned"], 1, "never faults");
    perf_fails(&["reg_mr", "127.0.0.1"], 1, "no server");
    perf_fails(&["write_bw", "--loopback", "-D", "0"], 2, "-D");
    perf_fails(&["write_bw", "--loopback", "-D", "1", "-n", "5"], 2, "cannot be used with");
}

// --- costs of coherence ---

#[test]
fn perf_reg_mr_reports_registration_against_mlock() {
    for extra in [vec![], vec!["--mr-kind", "odp"], vec!["--mr-kind", "file"], vec!["--huge"]] {
        let mut args = vec!["reg_mr", "-s", "4M", "-n", "3"];
        args.extend(extra.iter().copied());
        let v = perf_json(&args);
        let r = &v["results"][0];
        assert_eq!((r["bytes"].as_u64(), r["iterations"].as_u64()), (Some(4 << 20), Some(3)));
        for f in ["reg_us", "dereg_us", "mlock_touch_us", "mlock_first_touch_us", "ratio"] {
            assert!(r[f].as_f64().is_some_and(|x| x > 0.0), "{extra:?} {f}: {v:#}");
        }
        let want = (r["reg_us"].as_f64().unwrap() + r["dereg_us"].as_f64().unwrap())
            / r["mlock_touch_us"].as_f64().unwrap();
        assert!((r["ratio"].as_f64().unwrap() - want).abs() < 1e-9, "{v:#}");
    }
}

#[test]
fn perf_odp_fault_faults_once_per_page_and_not_after_advise() {
    for kind in ["odp", "file"] {
        let v = perf_json(&["odp_fault", "-n", "64", "--mr-kind", kind]);
        let rows = v["results"].as_array().unwrap();
        let mode = |i: usize| rows[i]["mode"].as_str().unwrap().to_string();
        assert_eq!(
            (mode(0).as_str(), mode(2).as_str()),
            ("first touch (fault)", "after advise_mr")
        );
        assert_eq!(rows[0]["faults"], 64, "{kind}: one fault per page: {v:#}");
        assert_eq!(rows[1]["faults"], 0, "{kind}: a second pass hits: {v:#}");
        assert_eq!(rows[2]["faults"], 0, "{kind}: advise_mr prefetched every page: {v:#}");
        for r in rows {
            assert_eq!(r["pages"], 64);
            assert!(r["t_p50_us"].as_f64().unwrap() > 0.0, "{v:#}");
        }
    }
}

#[test]
fn perf_lease_break_decohere_loses_no_write_and_unresponsive_is_revoked() {
    let v = perf_json(&["lease_break", "-n", "2", "--lease-break-ms", "50"]);
    let rows = v["results"].as_array().unwrap();
    let row = |name: &str| rows.iter().find(|r| r["scenario"] == name).unwrap().clone();
    let (coop, deco, gone) =
        (row("recall -> release"), row("decohere -> restore"), row("unresponsive -> revoke"));
    assert_eq!(
        (coop["policy"].as_str(), deco["policy"].as_str()),
        (Some("lease-revoke"), Some("decohere"))
    );
    assert_eq!(coop["failed_wrs"], 0, "{v:#}");
    assert_eq!(deco["failed_wrs"], 0, "a cooperative decohere holder: no failed WR: {v:#}");
    assert_eq!(gone["failed_wrs"], 2, "one revoked WRITE a round: {v:#}");
    assert!(gone["change_us_p50"].as_f64().unwrap() >= 50_000.0, "waits the lease-break time");
    for r in [&coop, &deco] {
        assert_eq!(r["rounds"], 2);
        assert!(r["stall_us_max"].as_f64().unwrap() > 0.0, "{v:#}");
        assert!(r["writes"].as_u64().unwrap() > 2 * 400, "writes before and after: {v:#}");
    }
}

#[test]
fn perf_coherence_cost_alternates_checks_on_and_off() {
    let v = perf_json(&["coherence_cost", "-n", "300", "-s", "4K"]);
    let r = &v["results"][0];
    let on = r["runs_on_mib_s"].as_array().unwrap();
    let off = r["runs_off_mib_s"].as_array().unwrap();
    assert!(on.len() >= 2 && on.len() == off.len(), "{v:#}");
    assert!(r["on_mib_s"].as_f64().unwrap() > 0.0 && r["off_mib_s"].as_f64().unwrap() > 0.0);
    let want = 100.0 * (1.0 - r["on_mib_s"].as_f64().unwrap() / r["off_mib_s"].as_f64().unwrap());
    assert!((r["overhead_pct"].as_f64().unwrap() - want).abs() < 1e-9, "{v:#}");
}
