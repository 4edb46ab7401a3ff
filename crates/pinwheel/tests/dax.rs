#![allow(clippy::unwrap_used, clippy::expect_used)]
//! File mappings in client processes: loads and stores reach the file's frames; layout changes
//! take the frames back (defrag: same content, new frames; reflink: copy on write; truncate:
//! SIGBUS beyond the end, in a child process); a client that does not acknowledge in time gets
//! the frames quarantined.

use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use pinwheel::client::Context;
use pinwheel::fs::PinPolicy;
use pinwheel::node::daemon::Daemon;
use pinwheel::node::proto::{AdminQuery, FsOp, Reply};

mod common;

const T: Duration = Duration::from_secs(20);
const CHILD: &str = "PINWHEEL_DAX_CHILD";

fn daemon() -> (Daemon, tempfile::TempDir) {
    common::daemon(PinPolicy::Deny, Duration::from_millis(300))
}

fn file(ctx: &Context, path: &str, pages: u64, byte: u8) -> u64 {
    let Reply::Ino(ino) = ctx.fs(FsOp::Create { path: path.into(), page_cache: false }).unwrap()
    else {
        panic!()
    };
    ctx.fs(FsOp::Write { ino, offset: 0, data: vec![byte; (pages * 4096) as usize] }).unwrap();
    ino
}

fn frames(ctx: &Context, ino: u64) -> Vec<u64> {
    let Reply::Extents(e) = ctx.fs(FsOp::Extents { ino }).unwrap() else { panic!() };
    e.iter().flat_map(|x| x.frames().iter().map(|p| p.raw()).collect::<Vec<_>>()).collect()
}

fn read_file(ctx: &Context, ino: u64, off: u64, len: u32) -> Vec<u8> {
    let Reply::Data(d) = ctx.fs(FsOp::Read { ino, offset: off, len }).unwrap() else { panic!() };
    d
}

#[test]
fn dax_mapping_loads_and_stores_reach_the_file() {
    let (d, _dir) = daemon();
    let ctx = Context::connect(d.socket()).unwrap();
    let ino = file(&ctx, "/f", 8, 0x11);
    let m = ctx.map_file("/f", 0, 8 * 4096, true).unwrap();
    assert_eq!(m.resident_pages(), 0, "nothing mapped before the first access");
    let mut b = [0u8; 4];
    m.read(3 * 4096 + 10, &mut b).unwrap();
    assert_eq!(b, [0x11; 4]);
    m.write(5 * 4096 + 1, b"stored in place").unwrap();
    assert_eq!(read_file(&ctx, ino, 5 * 4096 + 1, 15), b"stored in place");
    // A write through the filesystem is seen through the mapping (same frames).
    ctx.fs(FsOp::Write { ino, offset: 7, data: b"via write()".to_vec() }).unwrap();
    let mut b = [0u8; 11];
    m.read(7, &mut b).unwrap();
    assert_eq!(&b, b"via write()");
    assert_eq!(m.resident_pages(), 3);
}

#[test]
fn dax_mapping_follows_defrag_to_new_frames() {
    let (d, _dir) = daemon();
    let ctx = Context::connect(d.socket()).unwrap();
    let ino = file(&ctx, "/f", 16, 0x22);
    let m = ctx.map_file("/f", 0, 16 * 4096, true).unwrap();
    for p in 0..16u64 {
        m.write(p * 4096, &p.to_le_bytes()).unwrap();
    }
    assert_eq!(m.resident_pages(), 16);
    let before = frames(&ctx, ino);
    let faults = Context::faults_served();
    let Reply::Defrag(r) = ctx.fs(FsOp::Defrag { ino, huge: false }).unwrap() else { panic!() };
    assert_eq!(r.pages_moved, 16);
    assert_eq!(m.resident_pages(), 0, "every page was taken back before the move");
    let after = frames(&ctx, ino);
    assert!(before.iter().all(|p| !after.contains(p)), "new frames");
    for p in 0..16u64 {
        let mut b = [0u8; 8];
        m.read(p * 4096, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), p, "page {p}: same content after the move");
    }
    assert!(Context::faults_served() >= faults + 16, "the pages faulted in again");
    // A store after the move lands in the new block.
    m.write(9 * 4096 + 100, b"after").unwrap();
    assert_eq!(read_file(&ctx, ino, 9 * 4096 + 100, 5), b"after");
}

#[test]
fn dax_mapping_store_to_a_reflinked_block_copies_on_write() {
    let (d, _dir) = daemon();
    let ctx = Context::connect(d.socket()).unwrap();
    let ino = file(&ctx, "/f", 4, 0x33);
    let m = ctx.map_file("/f", 0, 4 * 4096, true).unwrap();
    let mut b = [0u8; 1];
    m.read(0, &mut b).unwrap(); // mapped read-only after a load
    let Reply::Ino(snap) = ctx.fs(FsOp::Clone { src: "/f".into(), dst: "/snap".into() }).unwrap()
    else {
        panic!()
    };
    m.write(0, b"new").unwrap();
    assert_eq!(read_file(&ctx, ino, 0, 3), b"new");
    assert_eq!(read_file(&ctx, snap, 0, 3), [0x33; 3], "the clone keeps the old data");
}

/// The child half of the SIGBUS test: maps the file, signals, waits for the truncate, then
/// loads beyond the new end of the file.
fn sigbus_child() {
    let sock = std::env::var(CHILD).unwrap();
    let ctx = Context::connect(&sock).unwrap();
    let m = ctx.map_file("/f", 0, 8 * 4096, false).unwrap();
    let mut b = [0u8; 1];
    m.read(6 * 4096, &mut b).unwrap();
    println!("MAPPED");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    m.read(1000, &mut b).unwrap(); // still inside the file: fine
    println!("INSIDE-OK");
    m.read(6 * 4096, &mut b).unwrap(); // beyond the end: SIGBUS
    println!("NOT-REACHED");
}

#[test]
fn dax_mapping_access_beyond_eof_after_truncate_is_sigbus() {
    if std::env::var(CHILD).is_ok() {
        sigbus_child();
        return;
    }
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::process::ExitStatusExt;
    let (d, _dir) = daemon();
    let ctx = Context::connect(d.socket()).unwrap();
    let ino = file(&ctx, "/f", 8, 0x44);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "dax_mapping_access_beyond_eof_after_truncate_is_sigbus", "--nocapture"])
        .env(CHILD, d.socket())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + T;
    while !line.contains("MAPPED") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the child exited early");
        assert!(Instant::now() < deadline);
    }
    ctx.fs(FsOp::Truncate { ino, size: 2 * 4096 }).unwrap();
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut rest);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the child hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(rest.contains("INSIDE-OK"), "{rest}");
    assert!(!rest.contains("NOT-REACHED"), "{rest}");
    assert_eq!(st.signal(), Some(libc_sigbus()), "killed by SIGBUS: {st:?}");
}

fn libc_sigbus() -> i32 {
    7
}

#[test]
fn dax_unacknowledged_invalidation_quarantines_the_frames() {
    use pinwheel::node::channel::{self, call};
    use pinwheel::node::proto::{Request, encode};
    let (d, _dir) = daemon();
    let admin = Context::connect(d.socket()).unwrap();
    let ino = file(&admin, "/f", 4, 0x55);
    // A raw client that registers a notification socket and never reads it: a stalled
    // process.
    let raw = Context::connect(d.socket()).unwrap();
    let h = raw.handle_fd();
    let (_silent, theirs) = channel::seqpacket_pair().unwrap();
    let (rmine, rtheirs) = channel::seqpacket_pair().unwrap();
    channel::send(
        h,
        &encode(&Request::RegisterNotify).unwrap(),
        &[rtheirs.as_fd(), theirs.as_fd()],
    )
    .unwrap();
    drop((rtheirs, theirs));
    assert!(channel::wait_readable(rmine.as_fd(), T).unwrap());
    let req = Request::MapFile { path: "/f".into(), offset: 0, len: 4 * 4096, write: true };
    let Reply::Mapped { id, .. } = call(h, &req, T).unwrap().0 else { panic!() };
    let mut given = Vec::new();
    for page in 0..4 {
        let Reply::Frame { offset, .. } =
            call(h, &Request::Fault { map: id, page, write: false }, T).unwrap().0
        else {
            panic!()
        };
        given.push(offset / 4096);
    }
    let t = Instant::now();
    admin.fs(FsOp::Truncate { ino, size: 0 }).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(1500), "it waited for the acknowledgement");
    let ps = |c: &Context| match c.admin(AdminQuery::Ps).unwrap() {
        Reply::Ps(p) => p,
        r => panic!("{r:?}"),
    };
    assert_eq!(ps(&admin).quarantined_frames, 4, "the silent client's frames are held back");
    // New data cannot land in them: write a new file of the freed size and check the
    // quarantined frames are not among its blocks.
    let other = file(&admin, "/g", 16, 0x66);
    let fresh = frames(&admin, other);
    assert!(given.iter().all(|p| !fresh.contains(p)), "a quarantined frame was reused");
    drop(raw);
    let deadline = Instant::now() + T;
    while ps(&admin).quarantined_frames != 0 {
        assert!(Instant::now() < deadline, "the quarantine outlived the handle");
        std::thread::sleep(Duration::from_millis(20));
    }
}
