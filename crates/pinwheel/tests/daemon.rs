#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The connected placement against a daemon in this process: the protocol, objects and their
//! lifetimes, data through the pool mapping, admin views. Multi-process behaviour (fork,
//! SCM_RIGHTS, kill -9) is tested with the real binary in the CLI crate.

use std::os::fd::AsFd;
use std::time::Duration;

use pinwheel::client::{Context, LeaseKind, QpInit};
use pinwheel::fs::PinPolicy;
use pinwheel::mm::Errno;
use pinwheel::node::daemon::Daemon;
use pinwheel::node::proto::{AdminQuery, FsOp, Reply};
use pinwheel::{Access, SendWr, Sge, WcStatus};

mod common;

const T: Duration = Duration::from_secs(10);

fn daemon(policy: PinPolicy) -> (Daemon, tempfile::TempDir) {
    common::daemon(policy, Duration::from_millis(300))
}

fn ps(ctx: &Context) -> pinwheel::node::proto::PsView {
    match ctx.admin(AdminQuery::Ps).unwrap() {
        Reply::Ps(p) => p,
        r => panic!("{r:?}"),
    }
}

#[test]
fn daemon_rdma_between_two_handles_lands_in_the_pool() {
    let (d, _dir) = daemon(PinPolicy::Deny);
    let a = Context::connect(d.socket()).unwrap();
    let b = Context::connect(d.socket()).unwrap();
    assert_ne!(a.handle_number(), b.handle_number());
    // B exposes a buffer; A writes into it and reads it back over loopback QPs.
    let pd_b = b.alloc_pd().unwrap();
    let target = b.alloc(8192).unwrap();
    target.write(0, &[0x11; 8192]).unwrap();
    let mr_b = pd_b.reg_mr(target.addr(), 8192, Access::all_rw()).unwrap();
    let cq_b = b.create_cq(64).unwrap();
    let qp_b = pd_b.create_qp(&cq_b, &cq_b, QpInit::default()).unwrap();

    let pd_a = a.alloc_pd().unwrap();
    let src = a.alloc(4096).unwrap();
    src.write(0, b"written by handle A through RDMA").unwrap();
    let mr_a = pd_a.reg_mr(src.addr(), 4096, Access::all_rw()).unwrap();
    let cq_a = a.create_cq(64).unwrap();
    let qp_a = pd_a.create_qp(&cq_a, &cq_a, QpInit::default()).unwrap();
    qp_a.connect(qp_b.qpn(), Access::all_rw()).unwrap();

    let sge = Sge { addr: src.addr(), length: 32, lkey: mr_a.lkey() };
    qp_a.post_send(&[SendWr::write(1, sge, mr_b.addr() + 100, mr_b.rkey())]).unwrap();
    let wc = cq_a.next(T).unwrap().expect("a completion");
    assert_eq!((wc.wr_id, wc.status), (1, WcStatus::Success));
    let mut got = [0u8; 32];
    target.read(100, &mut got).unwrap();
    assert_eq!(&got, b"written by handle A through RDMA", "B sees the bytes in its mapping");
    // A bad rkey fails with the verbs status, not an error of the call.
    qp_a.post_send(&[SendWr::write(2, sge, mr_b.addr(), pinwheel::Rkey(0xdead))]).unwrap();
    assert_eq!(cq_a.next(T).unwrap().unwrap().status, WcStatus::RemAccessErr);

    let p = ps(&a);
    assert_eq!(p.handles.len(), 2);
    assert_eq!(p.totals.mrs, 2);
    assert_eq!(p.totals.qps, 2);
    // Dropping B's context closes B's handle: its objects go, bottom-up.
    drop((qp_b, cq_b, mr_b, pd_b, target));
    drop(b);
    let deadline = std::time::Instant::now() + T;
    while ps(&a).handles.len() != 1 {
        assert!(std::time::Instant::now() < deadline, "handle B never closed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(ps(&a).totals.mrs, 1);
}

#[test]
fn daemon_handle_lives_until_its_last_copy_closes() {
    use pinwheel::node::channel::call;
    use pinwheel::node::proto::{MrTarget, Request};
    let (d, _dir) = daemon(PinPolicy::Deny);
    let watcher = Context::connect(d.socket()).unwrap();
    let a = Context::connect(d.socket()).unwrap();
    let dup = a.handle_fd().try_clone_to_owned().unwrap();
    drop(a); // this context's copy of the handle is closed; the dup remains
    // Objects made through the raw handle, never destroyed explicitly (as a process that dies
    // leaves them).
    let Reply::Created(pd) = call(dup.as_fd(), &Request::AllocPd, T).unwrap().0 else { panic!() };
    let Reply::Mapped { addr, .. } = call(dup.as_fd(), &Request::Alloc { len: 4096 }, T).unwrap().0
    else {
        panic!()
    };
    let target = MrTarget::Memory { addr, len: 4096, on_demand: false };
    call(dup.as_fd(), &Request::RegMr { pd, target, access: 1 }, T).unwrap();
    assert_eq!(ps(&watcher).totals.mrs, 1, "the MR lives while a copy of the handle does");
    assert_eq!(ps(&watcher).handles.len(), 2);
    drop(dup);
    let deadline = std::time::Instant::now() + T;
    while ps(&watcher).totals.mrs != 0 || ps(&watcher).handles.len() != 1 {
        assert!(std::time::Instant::now() < deadline, "the last close did not tear down");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(ps(&watcher).pinned_pages, 0, "the MR's pins went with it");
}

#[test]
fn daemon_truncate_under_a_sealed_pin_names_the_holder() {
    let (d, _dir) = daemon(PinPolicy::FsContract);
    let admin = Context::connect(d.socket()).unwrap();
    let ino = match admin.fs(FsOp::Create { path: "/f".into(), page_cache: false }).unwrap() {
        Reply::Ino(i) => i,
        r => panic!("{r:?}"),
    };
    admin.fs(FsOp::Write { ino, offset: 0, data: vec![7; 16384] }).unwrap();
    let holder = Context::connect(d.socket()).unwrap();
    let f = holder.open_file("/f", false).unwrap();
    let pd = holder.alloc_pd().unwrap();
    let map = holder.map_file("/f", 0, 16384, true).unwrap();
    let e = pd.reg_mr(map.addr(), 16384, Access::all_rw()).unwrap_err();
    assert_eq!(e.errno(), Errno::EPERM, "fs-contract: an unsealed file cannot be pinned: {e}");
    f.set_lease(LeaseKind::Unbreakable).unwrap();
    let mr = pd.reg_mr(map.addr(), 16384, Access::all_rw()).unwrap();
    let e = admin.fs(FsOp::Truncate { ino, size: 0 }).unwrap_err();
    assert_eq!(e.errno(), Errno::ETXTBSY, "{e}");
    let me = std::process::id().to_string();
    assert!(e.message().contains(&me), "the error names the holder's pid: {e}");
    let Reply::Pins(pins) = admin.admin(AdminQuery::Pins).unwrap() else { panic!() };
    assert_eq!(pins.len(), 1);
    assert_eq!(pins[0].pin.holder.handle, Some(holder.handle_number()));
    assert!(pins[0].pin.holder.processes.iter().any(|(p, _)| *p == std::process::id()));
    // The MR reads what the file holds, through the daemon's mapping.
    let mut b = [0u8; 4];
    map.read(4096, &mut b).unwrap();
    assert_eq!(b, [7; 4]);
    drop((mr, pd, map, f));
    drop(holder);
    let deadline = std::time::Instant::now() + T;
    loop {
        match admin.fs(FsOp::Truncate { ino, size: 0 }) {
            Ok(_) => break,
            Err(e) => assert!(std::time::Instant::now() < deadline, "still refused: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn daemon_refuses_garbage_and_keeps_serving() {
    let (d, _dir) = daemon(PinPolicy::Deny);
    let a = Context::connect(d.socket()).unwrap();
    // Raw garbage on the handle, with a reply socket: an EPROTO answer, nothing else.
    let (mine, theirs) = pinwheel::node::channel::seqpacket_pair().unwrap();
    pinwheel::node::channel::send(a.handle_fd(), b"\x01\x00garbage", &[theirs.as_fd()]).unwrap();
    drop(theirs);
    assert!(pinwheel::node::channel::wait_readable(mine.as_fd(), T).unwrap());
    let got = pinwheel::node::channel::recv(mine.as_fd()).unwrap().unwrap();
    let r: Reply = pinwheel::node::proto::decode(&got.bytes).unwrap();
    assert!(matches!(r, Reply::Err(ref e) if e.errno() == Errno::EPROTO), "{r:?}");
    // Garbage without a reply socket, an empty datagram: ignored.
    pinwheel::node::channel::send(a.handle_fd(), b"zz", &[]).unwrap();
    pinwheel::node::channel::send(a.handle_fd(), b"", &[]).unwrap();
    // Stale and foreign ids: EBADF.
    let pd = a.alloc_pd().unwrap();
    let e = a.import_pd(0x1234).unwrap_err();
    assert_eq!(e.errno(), Errno::ENOENT);
    let e = pd.reg_mr(0xdead_0000, 4096, Access::LOCAL_WRITE).unwrap_err();
    assert_eq!(e.errno(), Errno::EFAULT, "{e}");
    assert_eq!(ps(&a).handles.len(), 1, "still serving");
}

/// A client sending garbage and mutated requests: answers are errors (or ignored), the daemon
/// and the other clients keep working, nothing else changes.
#[test]
fn daemon_survives_a_fuzzing_client() {
    use pinwheel::node::channel;
    use pinwheel::node::proto::{MrTarget, Request, encode};
    let (d, _dir) = daemon(PinPolicy::Deny);
    let good = Context::connect(d.socket()).unwrap();
    let pd = good.alloc_pd().unwrap();
    let buf = good.alloc(4096).unwrap();
    let mr = pd.reg_mr(buf.addr(), 4096, Access::all_rw()).unwrap();
    let fuzzer = Context::connect(d.socket()).unwrap();
    let seeds: Vec<Vec<u8>> = [
        Request::AllocPd,
        Request::RegMr {
            pd: pinwheel::node::proto::ObjId(1 << 20),
            target: MrTarget::Memory { addr: buf.addr(), len: 4096, on_demand: false },
            access: 15,
        },
        Request::Load { addr: buf.addr(), len: 16 },
        Request::PollCq { cq: pinwheel::node::proto::ObjId(3), max: 4, wait_ms: 0 },
        Request::Frames { addr: 0, len: u64::MAX },
    ]
    .iter()
    .map(|r| encode(r).unwrap())
    .collect();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..400 {
        let mut b = seeds[i % seeds.len()].clone();
        for _ in 0..(next() % 4) {
            let n = b.len();
            b[(next() as usize) % n] ^= next() as u8;
        }
        b.truncate(b.len() - (next() as usize % 3).min(b.len()));
        let (mine, theirs) = channel::seqpacket_pair().unwrap();
        channel::send(fuzzer.handle_fd(), &b, &[theirs.as_fd()]).unwrap();
        drop(theirs);
        // Every datagram with a reply socket is answered (or the answer socket closes).
        assert!(channel::wait_readable(mine.as_fd(), T).unwrap(), "datagram {i} unanswered");
    }
    // The other client's data path is untouched.
    buf.write(0, b"still here").unwrap();
    let mut got = [0u8; 10];
    buf.read(0, &mut got).unwrap();
    assert_eq!(&got, b"still here");
    assert_eq!(ps(&good).handles.len(), 2);
    drop(mr);
}
