#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

// The TCP transport between two OS processes, data verified end to end.
//
// The test binary re-executes itself (`--exact <test>` with `PINWHEEL_TCP_CHILD` set) as the
// server node: it registers an MR over memory of known content, listens, prints
// `READY <port> <rkey> <addr> <len>`, accepts one connection and serves it. The parent is the
// client node. A child is always killed and reaped when its handle drops, and every wait on
// it is bounded, so a broken transport fails the test instead of hanging it.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use pinwheel_mm::VirtAddr;
use pinwheel_verbs::*;

/// Set in the child: which server it plays.
const ROLE: &str = "PINWHEEL_TCP_CHILD";
/// How long the parent waits for the child's READY line and for its exit.
const CHILD_T: Duration = Duration::from_secs(30);

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// The server's MR.
const MR_LEN: u64 = 4 * MIB;
/// The MR starts this far into its buffer (not page aligned: transfers cross pages).
const MR_SKEW: u64 = 1000;
/// Guard bytes after the MR inside the same buffer.
const MR_TAIL: u64 = 3000;
/// Eight 64 KiB WRITEs land in `[0, 512 KiB)`, two 1 MiB WRITEs in `[1 MiB, 3 MiB)`.
const SMALL: u64 = 64 * KIB;
const SMALL_N: u64 = 8;
const LARGE: u64 = MIB;
const LARGE_AT: u64 = MIB;
const LARGE_N: u64 = 2;
/// The WRITE_WITH_IMM target and its immediate.
const IMM_AT: u64 = 3 * MIB;
const IMM_LEN: u64 = 4 * KIB;
const IMM: u32 = 0xfeed_f00d;
/// The atomic word.
const ATOM_AT: u64 = 3 * MIB + 8 * KIB;
/// Never written: read back to check the server's original content.
const UNTOUCHED_AT: u64 = 3 * MIB + 16 * KIB;
/// The SEND payload.
const SEND_LEN: u64 = 64 * KIB;
const DONE: &[u8] = b"DONE";

const SEED_ORIG: u64 = 0x0123_4567;
const SEED_WRITE: u64 = 0x89ab_cdef;
const SEED_SEND: u64 = 0x5555_aaaa;

const SWAP: u64 = 0x1111_2222_3333_4444;
const ADD: u64 = 0x10;

/// A byte of a non-periodic pattern (splitmix64 of the word index): a transfer landing at a
/// wrong offset cannot match.
fn pattern_byte(seed: u64, off: u64) -> u8 {
    let mut z = (off / 8).wrapping_add(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> (8 * (off % 8))) as u8
}

fn pattern(seed: u64, off: u64, len: u64) -> Vec<u8> {
    (off..off + len).map(|o| pattern_byte(seed, o)).collect()
}

fn u64_at(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

/// The atomic word before anyone touched it.
fn atom_orig() -> u64 {
    u64_at(&pattern(SEED_ORIG, ATOM_AT, 8))
}

/// The atomic word after the client's CAS, failed CAS, FAA(+ADD), FAA(-1).
fn atom_final() -> u64 {
    SWAP + ADD - 1
}

/// What the server's MR holds once the client is done.
fn expected_mr() -> Vec<u8> {
    let mut m = pattern(SEED_ORIG, 0, MR_LEN);
    let mut put = |off: u64, len: u64| {
        m[off as usize..(off + len) as usize].copy_from_slice(&pattern(SEED_WRITE, off, len));
    };
    for k in 0..SMALL_N {
        put(k * SMALL, SMALL);
    }
    for k in 0..LARGE_N {
        put(LARGE_AT + k * LARGE, LARGE);
    }
    put(IMM_AT, IMM_LEN);
    m[ATOM_AT as usize..ATOM_AT as usize + 8].copy_from_slice(&atom_final().to_le_bytes());
    m
}

/// The first difference between two buffers, for a message an engineer can act on.
fn first_mismatch(what: &str, got: &[u8], want: &[u8]) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("{what}: {} bytes, expected {}", got.len(), want.len()));
    }
    let i = got.iter().zip(want).position(|(g, w)| g != w)?;
    let n = got.iter().zip(want).filter(|(g, w)| g != w).count();
    Some(format!(
        "{what}: {n} bytes differ, first at offset {i}: {:#04x}, expected {:#04x}",
        got[i], want[i]
    ))
}

// ---------------------------------------------------------------------------------------------
// The child process.

/// A server child's node: one MR over a buffer of known content, listening.
struct ServerSide {
    n: Node,
    buf: VirtAddr,
    mr: MemoryRegion,
    listener: pinwheel_verbs::transport::Listener,
}

fn server_setup() -> ServerSide {
    let n = node(64);
    let total = MR_SKEW + MR_LEN + MR_TAIL;
    let buf = n.aspace.mmap_anonymous(total).unwrap();
    n.aspace.write(buf, &pattern(SEED_ORIG ^ 0xffff, 0, total)).unwrap();
    let mr_addr = buf.checked_add(MR_SKEW).unwrap();
    n.aspace.write(mr_addr, &pattern(SEED_ORIG, 0, MR_LEN)).unwrap();
    let mr = n.mr(mr_addr, MR_LEN, Access::all_rw());
    let listener = n.dev.listen("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // One line on stdout; the parent parses it.
    println!("READY {port} {} {} {}", mr.rkey().0, mr.addr(), mr.len());
    ServerSide { n, buf, mr, listener }
}

fn private_of(mr: &MemoryRegion) -> Vec<u8> {
    let mut p = mr.rkey().0.to_le_bytes().to_vec();
    p.extend_from_slice(&mr.addr().to_le_bytes());
    p.extend_from_slice(&mr.len().to_le_bytes());
    p
}

fn accept(s: &ServerSide, cq: &CompletionQueue) -> QueuePair {
    let init =
        QpInitAttr { send_cq: cq.clone(), recv_cq: cq.clone(), srq: None, caps: QpCaps::default() };
    let (qp, peer) = s
        .listener
        .accept(&s.n.pd, init, Access::all_rw(), &private_of(&s.mr), CHILD_T)
        .expect("the parent connects");
    assert_eq!(peer, b"client", "the client's private data");
    qp
}

/// Checks one receive completion; `Err` describes the difference.
fn check_recv(w: &WorkCompletion, want: (u64, WcOpcode, u32, Option<u32>)) -> Result<(), String> {
    let got = (w.wr_id, w.opcode, w.byte_len, w.imm);
    if w.status != WcStatus::Success || got != want {
        return Err(format!("receive completion {w:?}, expected {want:?} with success"));
    }
    Ok(())
}

/// The verifying server: serves the client, then checks every byte it owns.
fn server_verify() -> Result<(), String> {
    let s = server_setup();
    let cq = s.n.cq();
    let qp = accept(&s, &cq);
    let rbuf = s.n.buf(SEND_LEN + 64, 0);
    let rmr = s.n.mr(rbuf, SEND_LEN + 64, Access::LOCAL_WRITE);
    let done_at = rbuf.checked_add(SEND_LEN).unwrap();
    qp.post_recv(&[
        // Consumed by the WRITE_WITH_IMM (its bytes go to the MR, not here).
        RecvWr { wr_id: 101, sg_list: vec![sge(&rmr, rbuf, 16)] },
        RecvWr { wr_id: 102, sg_list: vec![sge(&rmr, rbuf, SEND_LEN as u32)] },
        RecvWr { wr_id: 103, sg_list: vec![sge(&rmr, done_at, 64)] },
    ])
    .unwrap();
    let wants = [
        (101, WcOpcode::RecvRdmaWithImm, IMM_LEN as u32, Some(IMM)),
        (102, WcOpcode::Recv, SEND_LEN as u32, None),
        (103, WcOpcode::Recv, DONE.len() as u32, None),
    ];
    for want in wants {
        let w = cq.next(CHILD_T).ok_or_else(|| format!("no completion for receive {}", want.0))?;
        check_recv(&w, want)?;
    }
    let mut problems = Vec::new();
    let send = s.n.read(rbuf, SEND_LEN as usize);
    problems.extend(first_mismatch("SEND payload", &send, &pattern(SEED_SEND, 0, SEND_LEN)));
    problems.extend(first_mismatch("final SEND", &s.n.read(done_at, DONE.len()), DONE));
    let total = MR_SKEW + MR_LEN + MR_TAIL;
    let all = s.n.read(s.buf, total as usize);
    let guard = pattern(SEED_ORIG ^ 0xffff, 0, total);
    let (head, rest) = all.split_at(MR_SKEW as usize);
    let (mr, tail) = rest.split_at(MR_LEN as usize);
    problems.extend(first_mismatch("bytes before the MR", head, &guard[..MR_SKEW as usize]));
    problems.extend(first_mismatch("MR", mr, &expected_mr()));
    problems.extend(first_mismatch(
        "bytes after the MR",
        tail,
        &guard[(MR_SKEW + MR_LEN) as usize..],
    ));
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

/// The server that is killed: accepts, never posts a receive (so the client's SEND stalls
/// its stream), and waits to be killed (giving up after a minute).
fn server_sleep() {
    let s = server_setup();
    let cq = s.n.cq();
    let _qp = accept(&s, &cq);
    println!("ACCEPTED");
    std::thread::sleep(Duration::from_secs(60));
    println!("NOT KILLED");
    std::process::exit(3);
}

/// Runs the child's role; returns true if this process is a child.
fn run_child() -> bool {
    let Ok(role) = std::env::var(ROLE) else { return false };
    match role.as_str() {
        "verify" => match server_verify() {
            Ok(()) => println!("OK"),
            Err(e) => {
                println!("MISMATCH {e}");
                std::process::exit(2);
            }
        },
        "sleep" => server_sleep(),
        r => panic!("unknown child role {r}"),
    }
    true
}

// ---------------------------------------------------------------------------------------------
// The parent's handle on a child.

/// A child process, killed and reaped on drop.
struct Child {
    proc: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Child {
    fn spawn(test: &str, role: &str) -> Child {
        let mut proc = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = proc.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                eprintln!("[server child] {line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Child { proc, lines }
    }

    /// The text after `tag` on the first line containing it (libtest may print its own
    /// `test name ... ` in front), waiting at most `timeout`.
    fn line_after(&self, tag: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(i) = l.find(tag) {
                        return Ok(l[i + tag.len()..].trim().to_string());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("no {tag:?} line from the child in {timeout:?}"));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("the child closed its stdout before printing {tag:?}"));
                }
            }
        }
    }

    /// Waits at most `timeout` for the child to exit.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.proc.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

/// What the child announced.
struct Ready {
    addr: String,
    rkey: Rkey,
    mr_addr: u64,
    mr_len: u64,
}

fn ready(child: &Child) -> Ready {
    let line = child.line_after("READY ", CHILD_T).unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 4, "READY line {line:?}");
    Ready {
        addr: format!("127.0.0.1:{}", f[0]),
        rkey: Rkey(f[1].parse().unwrap()),
        mr_addr: f[2].parse().unwrap(),
        mr_len: f[3].parse().unwrap(),
    }
}

fn connect(n: &Node, cq: &CompletionQueue, r: &Ready) -> QueuePair {
    let init =
        QpInitAttr { send_cq: cq.clone(), recv_cq: cq.clone(), srq: None, caps: QpCaps::default() };
    let (qp, private) = n.pd.connect(&r.addr, init, Access::all_rw(), b"client", T).unwrap();
    let mut want = r.rkey.0.to_le_bytes().to_vec();
    want.extend_from_slice(&r.mr_addr.to_le_bytes());
    want.extend_from_slice(&r.mr_len.to_le_bytes());
    assert_eq!(private, want, "the server's private data repeats its READY line");
    assert_eq!(qp.state(), QpState::Rts);
    qp
}

/// Waits for one completion per `(wr_id, opcode, byte_len)`, in order, all successful.
fn expect_ok(cq: &CompletionQueue, wants: &[(u64, WcOpcode, u32)]) {
    for &(id, op, len) in wants {
        let w = wc(cq);
        assert_eq!(
            (w.wr_id, w.status, w.opcode, w.byte_len),
            (id, WcStatus::Success, op, len),
            "completion {w:?}"
        );
    }
}

/// The client's local buffers: `mirror` holds at MR offset `o` what goes to `o` remotely (and,
/// where nothing is written remotely, from `UNTOUCHED_AT`, the SEND payloads); `back` receives
/// READs at the same offsets; `atom` holds atomic results.
struct Local {
    mirror: VirtAddr,
    mirror_mr: MemoryRegion,
    back: VirtAddr,
    back_mr: MemoryRegion,
    atom: VirtAddr,
    atom_mr: MemoryRegion,
}

fn local(n: &Node) -> Local {
    let mirror = n.buf(MR_LEN, 0);
    n.aspace.write(mirror, &pattern(SEED_WRITE, 0, MR_LEN)).unwrap();
    let payload = mirror.checked_add(UNTOUCHED_AT).unwrap();
    n.aspace.write(payload, &pattern(SEED_SEND, 0, SEND_LEN)).unwrap();
    n.aspace.write(payload.checked_add(SEND_LEN).unwrap(), DONE).unwrap();
    let back = n.buf(MR_LEN, 0x5a);
    let atom = n.buf(4096, 0x77);
    Local {
        mirror,
        mirror_mr: n.mr(mirror, MR_LEN, Access::LOCAL_WRITE),
        back,
        back_mr: n.mr(back, MR_LEN, Access::LOCAL_WRITE),
        atom,
        atom_mr: n.mr(atom, 4096, Access::LOCAL_WRITE),
    }
}

impl Local {
    fn src(&self, off: u64, len: u64) -> Sge {
        sge(&self.mirror_mr, self.mirror.checked_add(off).unwrap(), len as u32)
    }
    fn dst(&self, off: u64, len: u64) -> Sge {
        sge(&self.back_mr, self.back.checked_add(off).unwrap(), len as u32)
    }
    fn result(&self, slot: u64) -> Sge {
        sge(&self.atom_mr, self.atom.checked_add(slot * 8).unwrap(), 8)
    }
}

// ---------------------------------------------------------------------------------------------
// The client's steps.

/// Eight 64 KiB WRITEs, two 1 MiB WRITEs and the WRITE_WITH_IMM, posted at once: all on the
/// wire before the first ACK comes back.
fn client_writes(qp: &QueuePair, cq: &CompletionQueue, l: &Local, r: &Ready) {
    let mut wrs = Vec::new();
    let mut wants = Vec::new();
    for k in 0..SMALL_N {
        let off = k * SMALL;
        wrs.push(SendWr::write(k, l.src(off, SMALL), r.mr_addr + off, r.rkey));
        wants.push((k, WcOpcode::RdmaWrite, SMALL as u32));
    }
    for k in 0..LARGE_N {
        let off = LARGE_AT + k * LARGE;
        wrs.push(SendWr::write(10 + k, l.src(off, LARGE), r.mr_addr + off, r.rkey));
        wants.push((10 + k, WcOpcode::RdmaWrite, LARGE as u32));
    }
    wrs.push(SendWr::write(20, l.src(IMM_AT, IMM_LEN), r.mr_addr + IMM_AT, r.rkey).with_imm(IMM));
    wants.push((20, WcOpcode::RdmaWrite, IMM_LEN as u32));
    qp.post_send(&wrs).unwrap();
    expect_ok(cq, &wants);
}

/// READs of everything written (must be what was written) and of a range never written (must
/// be the server's original content), pipelined.
fn client_reads(n: &Node, qp: &QueuePair, cq: &CompletionQueue, l: &Local, r: &Ready) {
    let ranges = [
        (0, SMALL * SMALL_N, SEED_WRITE),
        (LARGE_AT, LARGE, SEED_WRITE),
        (LARGE_AT + LARGE, LARGE, SEED_WRITE),
        (IMM_AT, IMM_LEN, SEED_WRITE),
        (UNTOUCHED_AT, MR_LEN - UNTOUCHED_AT, SEED_ORIG),
    ];
    let wrs: Vec<SendWr> = ranges
        .iter()
        .enumerate()
        .map(|(i, &(off, len, _))| {
            SendWr::read(30 + i as u64, l.dst(off, len), r.mr_addr + off, r.rkey)
        })
        .collect();
    qp.post_send(&wrs).unwrap();
    let wants: Vec<_> = ranges
        .iter()
        .enumerate()
        .map(|(i, &(_, len, _))| (30 + i as u64, WcOpcode::RdmaRead, len as u32))
        .collect();
    expect_ok(cq, &wants);
    for (off, len, seed) in ranges {
        let got = n.read(l.back.checked_add(off).unwrap(), len as usize);
        if let Some(m) =
            first_mismatch(&format!("READ of [{off}, +{len})"), &got, &pattern(seed, off, len))
        {
            panic!("{m}");
        }
    }
}

/// CAS (succeeds), CAS (fails: the word changed), FAA(+ADD), FAA(-1), then a READ of the word.
fn client_atomics(n: &Node, qp: &QueuePair, cq: &CompletionQueue, l: &Local, r: &Ready) {
    let at = r.mr_addr + ATOM_AT;
    qp.post_send(&[
        SendWr::compare_swap(50, l.result(0), at, r.rkey, atom_orig(), SWAP),
        SendWr::compare_swap(51, l.result(1), at, r.rkey, atom_orig(), 0xdead),
        SendWr::fetch_add(52, l.result(2), at, r.rkey, ADD),
        SendWr::fetch_add(53, l.result(3), at, r.rkey, u64::MAX),
        SendWr::read(54, l.dst(ATOM_AT, 8), at, r.rkey),
    ])
    .unwrap();
    expect_ok(
        cq,
        &[
            (50, WcOpcode::CompSwap, 8),
            (51, WcOpcode::CompSwap, 8),
            (52, WcOpcode::FetchAdd, 8),
            (53, WcOpcode::FetchAdd, 8),
            (54, WcOpcode::RdmaRead, 8),
        ],
    );
    let olds: Vec<u64> = n.read(l.atom, 32).chunks(8).map(u64_at).collect();
    assert_eq!(olds, [atom_orig(), SWAP, SWAP, SWAP + ADD], "old values of the atomics");
    let word = u64_at(&n.read(l.back.checked_add(ATOM_AT).unwrap(), 8));
    assert_eq!(word, atom_final(), "the word read back after the atomics");
}

/// The payload SEND, then "DONE" (the server verifies after it).
fn client_sends(qp: &QueuePair, cq: &CompletionQueue, l: &Local) {
    qp.post_send(&[
        SendWr::send(60, l.src(UNTOUCHED_AT, SEND_LEN)),
        SendWr::send(61, l.src(UNTOUCHED_AT + SEND_LEN, DONE.len() as u64)),
    ])
    .unwrap();
    expect_ok(cq, &[(60, WcOpcode::Send, SEND_LEN as u32), (61, WcOpcode::Send, 4)]);
}

#[test]
fn tcp_two_processes_write_read_atomic_send() {
    if run_child() {
        return;
    }
    let mut child = Child::spawn("tcp_two_processes_write_read_atomic_send", "verify");
    let r = ready(&child);
    assert_eq!(r.mr_len, MR_LEN);
    let n = node(64);
    let cq = n.cq();
    let qp = connect(&n, &cq, &r);
    let l = local(&n);
    client_writes(&qp, &cq, &l, &r);
    client_reads(&n, &qp, &cq, &l, &r);
    client_atomics(&n, &qp, &cq, &l, &r);
    client_sends(&qp, &cq, &l);
    let verdict = child.line_after("", CHILD_T).unwrap();
    assert_eq!(verdict, "OK", "the server's verdict (the line after READY)");
    let status = child.wait_exit(CHILD_T).expect("the server exits after verifying");
    assert!(status.success(), "server exit status {status}");
    assert!(cq.poll_one().is_none(), "no completion beyond the work requests");
}

#[test]
fn tcp_killed_server_fails_outstanding_and_later_work() {
    if run_child() {
        return;
    }
    let mut child = Child::spawn("tcp_killed_server_fails_outstanding_and_later_work", "sleep");
    let r = ready(&child);
    let n = node(64);
    let cq = n.cq();
    let qp = connect(&n, &cq, &r);
    child.line_after("ACCEPTED", CHILD_T).unwrap();
    let src = n.buf(MIB, 0xab);
    let smr = n.mr(src, MIB, Access::LOCAL_WRITE);
    let wrs: Vec<SendWr> =
        (0..8).map(|k| SendWr::write(k, sge(&smr, src, MIB as u32), r.mr_addr, r.rkey)).collect();
    qp.post_send(&wrs).unwrap();
    expect_ok(&cq, &(0..8).map(|k| (k, WcOpcode::RdmaWrite, MIB as u32)).collect::<Vec<_>>());

    // The server posts no receive, so this SEND (RNR retry 7) stalls its stream: the WRITEs
    // behind it are on the wire and outstanding when the server dies.
    let mut wrs = vec![SendWr::send(100, sge(&smr, src, 64))];
    let behind: Vec<u64> = (200..216).collect();
    for &id in &behind {
        let at = r.mr_addr + (id - 200) * 4096;
        wrs.push(SendWr::write(id, sge(&smr, src, 4096), at, r.rkey));
    }
    qp.post_send(&wrs).unwrap();
    let info = qp.info();
    assert!(info.completed < info.posted, "work outstanding when the server is killed: {info:?}");

    child.proc.kill().unwrap(); // SIGKILL
    child.proc.wait().unwrap();

    let failed = [WcStatus::RetryExcErr, WcStatus::WrFlushErr];
    for id in std::iter::once(100).chain(behind) {
        let w = wc(&cq);
        assert_eq!(w.wr_id, id, "completions in order: {w:?}");
        assert!(failed.contains(&w.status), "outstanding work fails: {w:?}");
    }
    let deadline = Instant::now() + T;
    while qp.state() != QpState::Error && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(qp.state(), QpState::Error);

    let at = sge(&smr, src, 8);
    qp.post_send(&[
        SendWr::write(300, sge(&smr, src, 4096), r.mr_addr, r.rkey),
        SendWr::read(301, sge(&smr, src, 4096), r.mr_addr, r.rkey),
        SendWr::send(302, sge(&smr, src, 64)),
        SendWr::fetch_add(303, at, r.mr_addr, r.rkey, 1),
    ])
    .unwrap();
    for id in 300..304 {
        let w = wc(&cq);
        assert_eq!(w.wr_id, id, "completions in order: {w:?}");
        assert!(failed.contains(&w.status), "work posted after the failure fails: {w:?}");
    }
    assert!(cq.poll_one().is_none(), "one completion per work request");
    assert_eq!(qp.state(), QpState::Error);
}
