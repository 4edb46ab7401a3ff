#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Two client processes of one node exchange RDMA WRITEs through the shared data path: this
//! test process (a daemon in-process, and a client) and a re-execution of the test binary
//! (`--exact <test>` with `PINWHEEL_SHM_CHILD` set to the daemon's socket), which maps the
//! pool through the fd it receives and executes its own WRITEs back.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use pinwheel::client::{Context, QpInit};
use pinwheel::fs::PinPolicy;
use pinwheel::{Access, Rkey, SendWr, Sge, WcStatus};

const ROLE: &str = "PINWHEEL_SHM_CHILD";
const LEN: u64 = 64 << 10;
const MSGS: u64 = 15;

fn pattern(i: u64) -> Vec<u8> {
    (0..4096u64).map(|k| (k * 31 + i * 17 + 5) as u8).collect()
}

/// The child: a target buffer; once every message arrived (a flag at offset 0), it echoes
/// them back by RDMA WRITE into the parent's buffer.
fn child(socket: &str) {
    let ctx = Context::connect(socket).unwrap();
    assert!(ctx.shared_data_path());
    let pd = ctx.alloc_pd().unwrap();
    let buf = ctx.alloc(LEN).unwrap();
    let mr = pd.reg_mr(buf.addr(), LEN, Access::all_rw()).unwrap();
    let cq = ctx.create_cq(64).unwrap();
    let qp = pd.create_qp(&cq, &cq, QpInit::default()).unwrap();
    println!("READY {} {} {}", qp.qpn().0, mr.rkey().0, mr.addr());
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap()).collect();
    let (rkey, addr) = (Rkey(v[0] as u32), v[1]);
    // Wait for the last message's flag (written last by the parent: WRITEs land in order).
    let deadline = Instant::now() + T;
    let mut flag = [0u8; 8];
    while flag != MSGS.to_le_bytes() {
        assert!(Instant::now() < deadline, "the parent's WRITEs never arrived");
        buf.read(0, &mut flag).unwrap();
        std::hint::spin_loop();
    }
    let mut bad = 0;
    for i in 1..=MSGS {
        let mut got = vec![0u8; 4096];
        buf.read(i * 4096, &mut got).unwrap();
        bad += u64::from(got != pattern(i));
    }
    // Echo every message back to the same offsets of the parent's buffer.
    for i in 1..=MSGS {
        let sge = Sge { addr: buf.addr() + i * 4096, length: 4096, lkey: mr.lkey() };
        qp.post_send(&[SendWr::write(i, sge, addr + i * 4096, rkey)]).unwrap();
        let wc = cq.next(T).unwrap().expect("a completion");
        assert_eq!(wc.status, WcStatus::Success);
    }
    println!("ECHOED {bad}");
}

#[test]
fn shm_two_processes_exchange_writes() {
    if let Ok(socket) = std::env::var(ROLE) {
        child(&socket);
        return;
    }
    let (d, _dir) = daemon(PinPolicy::Deny, Duration::from_millis(300));
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "shm_two_processes_exchange_writes", "--nocapture", "--test-threads=1"])
        .env(ROLE, d.socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = proc.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("[child] {l}");
            let _ = tx.send(l);
        }
    });
    let after = |tag: &str| -> String {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = lines.recv_timeout(left).unwrap_or_else(|_| panic!("no {tag} from the child"));
            if let Some(i) = l.find(tag) {
                return l[i + tag.len()..].trim().to_string();
            }
        }
    };
    let ready: Vec<u64> = after("READY").split_whitespace().map(|x| x.parse().unwrap()).collect();
    let (peer_qpn, peer_rkey, peer_addr) = (ready[0] as u32, Rkey(ready[1] as u32), ready[2]);
    let a = end(&d, LEN);
    a.qp.connect(pinwheel::Qpn(peer_qpn), Access::all_rw()).unwrap();
    writeln!(proc.stdin.as_mut().unwrap(), "PEER {} {}", a.mr.rkey().0, a.mr.addr()).unwrap();
    let requests = d.requests(a.ctx.handle_number()).unwrap();
    for i in 1..=MSGS {
        a.buf.write(i * 4096, &pattern(i)).unwrap();
        let w = SendWr::write(i, a.sge(i * 4096, 4096), peer_addr + i * 4096, peer_rkey);
        a.qp.post_send(&[w]).unwrap();
        assert_eq!(a.wc().status, WcStatus::Success);
        // What this process sent is no longer in its buffer: the echo must bring it back.
        a.buf.write(i * 4096, &[0; 4096]).unwrap();
    }
    a.buf.write(0, &MSGS.to_le_bytes()).unwrap();
    a.qp.post_send(&[SendWr::write(0, a.sge(0, 8), peer_addr, peer_rkey)]).unwrap();
    assert_eq!(a.wc().status, WcStatus::Success);
    assert_eq!(after("ECHOED"), "0", "the child saw every byte the parent wrote");
    for i in 1..=MSGS {
        assert_eq!(a.read(i * 4096, 4096), pattern(i), "echo of message {i}");
    }
    assert_eq!(d.requests(a.ctx.handle_number()).unwrap(), requests, "no request on the data path");
    let deadline = Instant::now() + T;
    loop {
        if let Some(s) = proc.try_wait().unwrap() {
            assert!(s.success(), "child exit {s:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the child did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}
