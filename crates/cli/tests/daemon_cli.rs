#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The node daemon with real processes: `pinwheel serve`, holders made with `pinwheel mr reg
//! --hold` (forked, or passing their handle with SCM_RIGHTS), the admin views and
//! `pinwheel fs --socket`. Every child is killed when its guard drops and every wait is bounded.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("pinwheel")
}

/// A child process killed (and reaped) on drop, with its stdout lines on a channel.
struct Proc {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Proc { child: Some(child), lines: rx }
    }

    /// The next line containing `pat`.
    fn expect(&self, pat: &str) -> String {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(pat) => return l,
                Ok(_) => {}
                Err(e) => panic!("no line with {pat:?}: {e}"),
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn term_and_wait(&mut self) -> std::process::ExitStatus {
        let c = self.child.as_ref().unwrap();
        let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        self.exit_within("did not exit on SIGTERM")
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.exit_within("did not exit")
    }

    /// Waits up to `T` for the process to exit; kills it and fails with `what` if not.
    fn exit_within(&mut self, what: &str) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        let deadline = Instant::now() + T;
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("{what}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Node {
    dir: tempfile::TempDir,
    sock: String,
    /// Killed with the node.
    _daemon: Proc,
}

fn serve(policy: &str, extra: &[&str]) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("node.sock").display().to_string();
    let mut args = vec!["serve", "--pool", "memfd", "--size", "64M", "--socket", &sock];
    args.extend_from_slice(&["--policy", policy]);
    args.extend_from_slice(extra);
    let daemon = Proc::spawn(&args);
    daemon.expect("pinwheel serve: node");
    Node { dir, sock, _daemon: daemon }
}

/// Runs `pinwheel <args>` to completion (bounded): (success, stdout, stderr).
fn run(args: &[&str]) -> (bool, String, String) {
    let out = assert_cmd::Command::new(bin()).args(args).timeout(T).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

impl Node {
    fn fs(&self, args: &[&str]) -> (bool, String, String) {
        let mut a = vec!["fs", "--socket", &self.sock];
        a.extend_from_slice(args);
        run(&a)
    }
    fn view(&self, what: &str) -> Value {
        let (ok, out, err) = run(&[what, "--socket", &self.sock, "--json"]);
        assert!(ok, "{what}: {err}");
        serde_json::from_str(&out).unwrap()
    }
    /// A 64 KiB file.
    fn file(&self, path: &str) {
        let (ok, _, err) = self.fs(&["write", path, "--pattern", "0x5a", "--length", "65536"]);
        assert!(ok, "{err}");
    }
    fn hold(&self, path: &str, extra: &[&str]) -> Proc {
        let mut a = vec!["mr", "reg", "--socket", &self.sock, "--file", path, "--hold"];
        a.extend_from_slice(extra);
        Proc::spawn(&a)
    }
    /// PIDs in the pins view.
    fn pin_pids(&self) -> Vec<u64> {
        let v = self.view("pins");
        v["pins"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["holder"]["processes"].as_array().unwrap().clone())
            .map(|pr| pr[0].as_u64().unwrap())
            .collect()
    }
    fn until(&self, what: &str, f: impl Fn(&Node) -> bool) {
        let deadline = Instant::now() + T;
        while !f(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn truncate_err(n: &Node, path: &str) -> Option<String> {
    let (ok, _, err) = n.fs(&["truncate", path, "--size", "0"]);
    (!ok).then_some(err)
}

#[test]
fn daemon_kill9_of_a_holder_releases_its_pin_and_the_counters_return() {
    let n = serve("fs-contract", &[]);
    n.file("/f");
    let before = n.view("ps");
    let mut h = n.hold("/f", &["--lease", "unbreakable"]);
    h.expect("MR lkey=");
    let err = truncate_err(&n, "/f").expect("truncate refused under the pin");
    assert!(err.contains("ETXTBSY"), "{err}");
    assert!(
        err.contains(&format!("pid {}", h.pid())) || err.contains(&h.pid().to_string()),
        "{err}"
    );
    assert_eq!(n.pin_pids(), vec![u64::from(h.pid())]);
    let mrs = n.view("mrs");
    assert_eq!(mrs["mrs"].as_array().unwrap().len(), 1);
    h.kill9();
    n.until("the pin to go", |n| n.pin_pids().is_empty());
    assert!(truncate_err(&n, "/f").is_none(), "truncate succeeds once the holder is gone");
    let after = n.view("ps");
    assert_eq!(after["totals"], before["totals"], "counters return to their earlier values");
    assert_eq!(after["file_pins"], 0);
    assert_eq!(after["leases"], 0);
    assert_eq!(after["pinned_pages"], before["pinned_pages"]);
}

#[test]
fn daemon_forked_child_keeps_the_handle_and_the_pin() {
    let n = serve("fs-contract", &[]);
    n.file("/f");
    let mut parent = n.hold("/f", &["--lease", "unbreakable", "--fork"]);
    parent.expect("MR lkey=");
    let line = parent.expect("forked: pid");
    let child: u32 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(parent.wait_exit().success(), "the parent exits");
    // The pin and the refusal remain; the holder is now the child.
    let err = truncate_err(&n, "/f").expect("still pinned");
    assert!(err.contains("ETXTBSY"), "{err}");
    assert_eq!(n.pin_pids(), vec![u64::from(child)]);
    let pid = rustix::process::Pid::from_raw(child as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    n.until("the child's pin to go", |n| n.pin_pids().is_empty());
    assert!(truncate_err(&n, "/f").is_none());
}

#[test]
fn daemon_handle_passed_with_scm_rights_outlives_its_sender() {
    let n = serve("fs-contract", &[]);
    n.file("/f");
    let at = n.path("drop.sock").display().to_string();
    let mut receiver = Proc::spawn(&["handle", "recv", "--at", &at]);
    receiver.expect("waiting for a handle");
    let mut sender = Proc::spawn(&[
        "mr",
        "reg",
        "--socket",
        &n.sock,
        "--file",
        "/f",
        "--lease",
        "unbreakable",
        "--send-to",
        &at,
    ]);
    sender.expect("sent handle");
    assert!(sender.wait_exit().success());
    receiver.expect("received handle");
    // The receiver never mapped the file, yet it holds the pin now.
    assert_eq!(n.pin_pids(), vec![u64::from(receiver.pid())]);
    assert!(truncate_err(&n, "/f").unwrap().contains("ETXTBSY"));
    // Only closing it in the receiver releases the pin (SIGTERM: a clean exit).
    assert!(receiver.term_and_wait().success());
    n.until("the pin to go", |n| n.pin_pids().is_empty());
    assert!(truncate_err(&n, "/f").is_none());
}

#[test]
fn daemon_lease_kill_kills_an_unresponsive_holder_and_the_truncate_proceeds() {
    let n = serve("lease-kill", &["--lease-break-ms", "300"]);
    n.file("/f");
    let mut h = n.hold("/f", &["--lease", "breakable"]);
    h.expect("MR lkey=");
    let t = Instant::now();
    let (ok, _, err) = n.fs(&["truncate", "/f", "--size", "0"]);
    assert!(ok, "the truncate proceeds after the kill: {err}");
    assert!(t.elapsed() >= Duration::from_millis(300), "it waited for the lease-break time");
    h.expect("event LEASE_RECALLED");
    let st = h.wait_exit();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(9), "the holder was killed with SIGKILL");
    assert!(n.pin_pids().is_empty());
}

#[test]
fn daemon_cooperative_holder_gives_the_lease_back_without_being_killed() {
    let n = serve("lease-kill", &["--lease-break-ms", "5000"]);
    n.file("/f");
    let h = n.hold("/f", &["--lease", "breakable", "--cooperative"]);
    h.expect("MR lkey=");
    let t = Instant::now();
    let (ok, _, err) = n.fs(&["punch", "/f", "--offset", "0", "--length", "4096"]);
    assert!(ok, "{err}");
    assert!(t.elapsed() < Duration::from_secs(4), "released well before the deadline");
    h.expect("released the MR and the lease");
    assert!(n.pin_pids().is_empty());
}

#[test]
fn daemon_stops_cleanly_on_sigterm_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool.img").display().to_string();
    let sock = dir.path().join("s.sock").display().to_string();
    let mut d =
        Proc::spawn(&["serve", "--pool", &pool, "--size", "32M", "--format", "--socket", &sock]);
    d.expect("pinwheel serve: node");
    let (ok, _, err) =
        run(&["fs", "--socket", &sock, "write", "/kept", "--pattern", "7", "--length", "5000"]);
    assert!(ok, "{err}");
    let h = Proc::spawn(&[
        "mr", "reg", "--socket", &sock, "--file", "/kept", "--kind", "odp", "--hold",
    ]);
    h.expect("MR lkey=");
    assert!(d.term_and_wait().success());
    assert!(!Path::new(&sock).exists(), "the socket is removed");
    // Offline: the data is there and the image is clean.
    let (ok, out, err) = run(&["fs", "--pool", &pool, "stat", "/kept", "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["size"], 5000);
    let (ok, _, err) = run(&["fs", "--pool", &pool, "fsck"]);
    assert!(ok, "{err}");
}

#[test]
fn daemon_fs_socket_matches_the_offline_tool() {
    let n = serve("deny", &[]);
    let (ok, out, err) = n.fs(&["write", "/a", "--pattern", "0x41", "--length", "200000"]);
    assert!(ok && out.contains("wrote 200000 bytes"), "{out} {err}");
    let (ok, out, _) = n.fs(&["read", "/a", "--offset", "199990"]);
    assert!(ok);
    assert_eq!(out, "A".repeat(10));
    assert!(n.fs(&["clone", "/a", "/b"]).0);
    let (ok, out, _) = n.fs(&["ls", "/", "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 2);
    let (ok, _, err) = n.fs(&["stat", "/missing/x"]);
    assert!(!ok && err.contains("ENOENT") && err.contains("no entry \"missing\""), "{err}");
    assert!(n.fs(&["defrag", "/a"]).0);
    assert!(n.fs(&["fsck"]).0);
    // A daemon that is not there: a clear error.
    let (ok, _, err) = run(&["ps", "--socket", "/nonexistent/pw.sock"]);
    assert!(!ok && err.contains("is `pinwheel serve --socket"), "{err}");
}

#[test]
fn daemon_shared_mr_outlives_the_process_that_registered_it() {
    use pinwheel::client::{Context, QpInit};
    use pinwheel::{Access, SendWr, Sge, WcStatus};
    use pinwheel_node::proto::{FsOp, Reply};
    let n = serve("deny", &[]);
    n.file("/shared");
    let mut exporter = n.hold("/shared", &["--kind", "file", "--length", "65536", "--export"]);
    let line = exporter.expect("export pd=");
    let token = |name: &str| {
        let v = line.split_whitespace().find_map(|w| w.strip_prefix(name)).unwrap();
        u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
    };
    let me = Context::connect(&n.sock).unwrap();
    let pd = me.import_pd(token("pd=")).unwrap();
    let target = me.import_mr(token("mr=")).unwrap();
    let src = me.alloc(4096).unwrap();
    let smr = pd.reg_mr(src.addr(), 4096, Access::all_rw()).unwrap();
    let cq = me.create_cq(16).unwrap();
    let a = pd.create_qp(&cq, &cq, QpInit::default()).unwrap();
    let b = pd.create_qp(&cq, &cq, QpInit::default()).unwrap();
    a.connect(b.qpn(), Access::all_rw()).unwrap();
    let ino = match me.fs(FsOp::Lookup { path: "/shared".into() }).unwrap() {
        Reply::Ino(i) => i,
        r => panic!("{r:?}"),
    };
    let write_and_check = |at: u64, text: &[u8]| {
        src.write(0, text).unwrap();
        let sge = Sge { addr: src.addr(), length: text.len() as u32, lkey: smr.lkey() };
        a.post_send(&[SendWr::write(at, sge, target.addr() + at, target.rkey())]).unwrap();
        let wc = cq.next(T).unwrap().expect("completion");
        assert_eq!(wc.status, WcStatus::Success);
        let r = me.fs(FsOp::Read { ino, offset: at, len: text.len() as u32 }).unwrap();
        assert_eq!(r, Reply::Data(text.to_vec()), "the write landed in the file");
    };
    write_and_check(100, b"while the exporter lives");
    exporter.kill9();
    // The exporter's handle closes and its own objects go; the shared PD and MR live on.
    n.until("the exporter's handle to close", |n| {
        n.view("ps")["handles"].as_array().unwrap().len() == 2
    });
    write_and_check(5000, b"after the exporter died");
    assert_eq!(n.view("mrs")["mrs"].as_array().unwrap().len(), 2, "the shared MR and ours");
}
