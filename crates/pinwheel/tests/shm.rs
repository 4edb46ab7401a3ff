#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The shared data path (`docs/shm.md`): two client handles of an in-process daemon, whose QPs
//! are connected to each other, post, poll and execute their transfers through the node's
//! shared tables and rings — data verified, statuses as the node's engine gives them, and no
//! request to the daemon on the data path.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pinwheel::fs::PinPolicy;
use pinwheel::node::proto::{FsOp, Reply};
use pinwheel::{Access, EventType, RecvWr, Rkey, SendWr, WcOpcode, WcStatus};

#[test]
fn shm_write_read_send_recv_atomics_between_two_handles() {
    let (d, _dir) = daemon(PinPolicy::Deny, Duration::from_millis(300));
    let (a, b) = pair(&d, 65536);
    assert!(a.ctx.shared_data_path() && b.ctx.shared_data_path());

    // WRITE, a page and a half across page boundaries.
    let data: Vec<u8> = (0..6000u32).map(|i| (i * 7 + 3) as u8).collect();
    a.buf.write(100, &data).unwrap();
    let w = SendWr::write(1, a.sge(100, 6000), b.mr.addr() + 3000, b.mr.rkey());
    a.qp.post_send(&[w]).unwrap();
    let wc = a.wc();
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode, wc.byte_len),
        (1, WcStatus::Success, WcOpcode::RdmaWrite, 6000)
    );
    assert_eq!(b.read(3000, 6000), data, "the bytes are in B's buffer");

    // Two SGEs gathered into one WRITE.
    a.buf.write(20000, b"first-").unwrap();
    a.buf.write(30000, b"second").unwrap();
    let mut w = SendWr::write(2, a.sge(20000, 6), b.mr.addr() + 40000, b.mr.rkey());
    w.sg_list.push(a.sge(30000, 6));
    a.qp.post_send(&[w]).unwrap();
    assert_eq!(a.wc().status, WcStatus::Success);
    assert_eq!(b.read(40000, 12), b"first-second");

    // READ.
    b.buf.write(50000, b"read me from B").unwrap();
    a.qp.post_send(&[SendWr::read(3, a.sge(8192, 14), b.mr.addr() + 50000, b.mr.rkey())]).unwrap();
    let wc = a.wc();
    assert_eq!((wc.status, wc.opcode, wc.byte_len), (WcStatus::Success, WcOpcode::RdmaRead, 14));
    assert_eq!(a.read(8192, 14), b"read me from B");

    // SEND into a posted receive, with and without immediate data, and inline.
    b.qp.post_recv(&[RecvWr { wr_id: 70, sg_list: vec![b.sge(1000, 100)] }]).unwrap();
    b.qp.post_recv(&[RecvWr { wr_id: 71, sg_list: vec![b.sge(1200, 100)] }]).unwrap();
    b.qp.post_recv(&[RecvWr { wr_id: 72, sg_list: vec![b.sge(1400, 100)] }]).unwrap();
    a.buf.write(0, b"hello over SEND").unwrap();
    a.qp.post_send(&[SendWr::send(4, a.sge(0, 15))]).unwrap();
    a.qp.post_send(&[SendWr::send(5, a.sge(0, 5)).with_imm(0xfeed)]).unwrap();
    let inline = SendWr { inline_data: Some(b"inline!".to_vec()), ..SendWr::send(6, a.sge(0, 0)) };
    a.qp.post_send(&[SendWr { sg_list: Vec::new(), ..inline }]).unwrap();
    for id in [4, 5, 6] {
        let wc = a.wc();
        assert_eq!((wc.wr_id, wc.status, wc.opcode), (id, WcStatus::Success, WcOpcode::Send));
    }
    let r = b.wc();
    assert_eq!(
        (r.wr_id, r.status, r.opcode, r.byte_len, r.imm),
        (70, WcStatus::Success, WcOpcode::Recv, 15, None)
    );
    assert_eq!(r.qpn, b.qp.qpn());
    assert_eq!(b.wc().imm, Some(0xfeed));
    assert_eq!(b.wc().byte_len, 7);
    assert_eq!(b.read(1000, 15), b"hello over SEND");
    assert_eq!(b.read(1400, 7), b"inline!");

    // WRITE_WITH_IMM consumes a receive, the bytes go to the WRITE's target.
    b.qp.post_recv(&[RecvWr { wr_id: 80, sg_list: Vec::new() }]).unwrap();
    a.buf.write(0, b"imm-write").unwrap();
    let w = SendWr::write(7, a.sge(0, 9), b.mr.addr() + 60000, b.mr.rkey()).with_imm(42);
    a.qp.post_send(&[w]).unwrap();
    assert_eq!(a.wc().status, WcStatus::Success);
    let r = b.wc();
    assert_eq!(
        (r.wr_id, r.opcode, r.imm, r.byte_len),
        (80, WcOpcode::RecvRdmaWithImm, Some(42), 9)
    );
    assert_eq!(b.read(60000, 9), b"imm-write");

    // Atomics: the old value lands in A's buffer, the new one in B's.
    b.buf.write(32768, &5u64.to_le_bytes()).unwrap();
    let cas = SendWr::compare_swap(8, a.sge(40000, 8), b.mr.addr() + 32768, b.mr.rkey(), 5, 9);
    a.qp.post_send(&[cas]).unwrap();
    assert_eq!(a.wc().opcode, WcOpcode::CompSwap);
    assert_eq!(a.read(40000, 8), 5u64.to_le_bytes());
    let faa = SendWr::fetch_add(9, a.sge(40008, 8), b.mr.addr() + 32768, b.mr.rkey(), 3);
    a.qp.post_send(&[faa]).unwrap();
    assert_eq!(a.wc().status, WcStatus::Success);
    assert_eq!(a.read(40008, 8), 9u64.to_le_bytes());
    assert_eq!(b.read(32768, 8), 12u64.to_le_bytes());
    // Unsignaled successes complete nothing; the next signaled one does.
    a.qp.post_send(&[SendWr::write(10, a.sge(0, 1), b.mr.addr(), b.mr.rkey()).unsignaled()])
        .unwrap();
    a.qp.post_send(&[SendWr::write(11, a.sge(0, 1), b.mr.addr(), b.mr.rkey())]).unwrap();
    assert_eq!(a.wc().wr_id, 11);
}

#[test]
fn shm_data_path_makes_no_request() {
    let (d, _dir) = daemon(PinPolicy::Deny, Duration::from_millis(300));
    let (a, b) = pair(&d, 65536);
    let (ha, hb) = (a.ctx.handle_number(), b.ctx.handle_number());
    let before = (d.requests(ha).unwrap(), d.requests(hb).unwrap());
    for i in 0..500u64 {
        a.buf.write(0, &i.to_le_bytes()).unwrap();
        a.qp.post_send(&[SendWr::write(i, a.sge(0, 8), b.mr.addr() + 8 * (i % 64), b.mr.rkey())])
            .unwrap();
        b.qp.post_recv(&[RecvWr { wr_id: i, sg_list: vec![b.sge(4096, 64)] }]).unwrap();
        a.qp.post_send(&[SendWr::send(1000 + i, a.sge(0, 8))]).unwrap();
        let mut wcs = [blank(); 4];
        let mut got = 0;
        let deadline = Instant::now() + T;
        while got < 2 {
            got += a.cq.poll(&mut wcs[got..]).unwrap();
            assert!(Instant::now() < deadline, "completions of round {i}");
        }
        assert!(wcs[..2].iter().all(|w| w.status == WcStatus::Success));
        let r = b.cq.next(T).unwrap().unwrap();
        assert_eq!((r.wr_id, r.byte_len), (i, 8));
        assert_eq!(b.read(4096, 8), i.to_le_bytes());
    }
    let after = (d.requests(ha).unwrap(), d.requests(hb).unwrap());
    assert_eq!(after, before, "posts, receives and polls went to the daemon");
}

#[test]
fn shm_remote_access_error_breaks_both_sides_as_the_engine_does() {
    let (d, _dir) = daemon(PinPolicy::Deny, Duration::from_millis(300));
    let (a, b) = pair(&d, 65536);
    b.qp.post_recv(&[RecvWr { wr_id: 90, sg_list: vec![b.sge(0, 64)] }]).unwrap();
    // Beyond B's MR: REM_ACCESS_ERR; the requests behind it are flushed.
    let bad = SendWr::write(1, a.sge(0, 64), b.mr.addr() + 65536 - 8, b.mr.rkey());
    let next = SendWr::write(2, a.sge(0, 8), b.mr.addr(), b.mr.rkey());
    a.qp.post_send(&[bad, next.clone()]).unwrap();
    let wc = a.wc();
    assert_eq!((wc.wr_id, wc.status), (1, WcStatus::RemAccessErr));
    let wc = a.wc();
    assert_eq!((wc.wr_id, wc.status), (2, WcStatus::WrFlushErr));
    a.qp.post_send(&[next]).unwrap();
    assert_eq!(a.wc().status, WcStatus::WrFlushErr, "A is in ERR");
    // The responder went to ERR too: its receive is flushed, and it got QP_ACCESS_ERR.
    let r = b.wc();
    assert_eq!((r.wr_id, r.status), (90, WcStatus::WrFlushErr));
    let ev = b.ctx.get_async_event(T).unwrap().expect("an event");
    assert_eq!(ev.kind, EventType::QpAccessErr);
    assert_eq!(b.read(65536 - 8, 8), [0u8; 8], "nothing was written outside the MR");
}

#[test]
fn shm_local_protection_error_and_stale_keys() {
    let (d, _dir) = daemon(PinPolicy::Deny, Duration::from_millis(300));
    let (a, b) = pair(&d, 65536);
    // B's lkey is no key of A's PD.
    let wrong = pinwheel::Sge { lkey: b.mr.lkey(), ..a.sge(0, 8) };
    a.qp.post_send(&[SendWr::write(1, wrong, b.mr.addr(), b.mr.rkey())]).unwrap();
    assert_eq!(a.wc().status, WcStatus::LocProtErr);
    let (a, b) = pair(&d, 65536);
    // An rkey of another generation of B's MR's slot (a deregistered MR's): no such MR.
    let stale = Rkey(b.mr.rkey().0 ^ 0x1);
    a.qp.post_send(&[SendWr::write(1, a.sge(0, 8), b.mr.addr(), stale)]).unwrap();
    assert_eq!(a.wc().status, WcStatus::RemAccessErr);
}

#[test]
fn shm_send_waits_for_a_receive() {
    let (d, _dir) = daemon(PinPolicy::Deny, Duration::from_millis(300));
    let (a, b) = pair(&d, 65536);
    a.buf.write(0, b"waiting").unwrap();
    a.qp.post_send(&[SendWr::send(1, a.sge(0, 7))]).unwrap();
    a.qp.post_send(&[SendWr::write(2, a.sge(0, 7), b.mr.addr() + 100, b.mr.rkey())]).unwrap();
    let mut wcs = [blank(); 2];
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(a.cq.poll(&mut wcs).unwrap(), 0, "RNR: held until a receive is posted");
    assert_eq!(b.read(100, 7), [0u8; 7], "the WRITE behind it waits too (order)");
    b.qp.post_recv(&[RecvWr { wr_id: 5, sg_list: vec![b.sge(0, 64)] }]).unwrap();
    let wc = a.wc();
    assert_eq!((wc.wr_id, wc.status), (1, WcStatus::Success));
    assert_eq!(a.wc().wr_id, 2);
    assert_eq!(b.wc().wr_id, 5);
    assert_eq!(b.read(0, 7), b"waiting");
    assert_eq!(b.read(100, 7), b"waiting");
}

/// A WRITE to a decoherent MR is held until the holder restores it, then lands in the MR's new
/// frames (the `decohere` policy; a defragmentation moves the file's blocks).
#[test]
fn shm_write_to_a_decoherent_mr_is_held_until_restore() {
    let (d, _dir) = daemon(PinPolicy::Decohere, Duration::from_secs(20));
    let admin = pinwheel::client::Context::connect(d.socket()).unwrap();
    let Reply::Ino(ino) = admin.fs(FsOp::Create { path: "/f".into(), page_cache: false }).unwrap()
    else {
        panic!()
    };
    admin.fs(FsOp::Write { ino, offset: 0, data: vec![1; 16384] }).unwrap();
    let a = end(&d, 65536);
    let b = end(&d, 4096);
    let map = b.ctx.map_file("/f", 0, 16384, true).unwrap();
    let fmr = b.pd.reg_mr(map.addr(), 16384, Access::all_rw()).unwrap();
    a.qp.connect(b.qp.qpn(), Access::all_rw()).unwrap();
    let admin2 = pinwheel::client::Context::connect(d.socket()).unwrap();
    let defrag = std::thread::spawn(move || admin2.fs(FsOp::Defrag { ino, huge: false }).unwrap());
    let ev = b.ctx.get_async_event(T).unwrap().expect("MR_DECOHERENT");
    assert_eq!(ev.kind, EventType::MrDecoherent);
    a.buf.write(0, b"after restore").unwrap();
    a.qp.post_send(&[SendWr::write(1, a.sge(0, 13), fmr.addr() + 4096, fmr.rkey())]).unwrap();
    let mut wcs = [blank(); 1];
    assert_eq!(a.cq.poll_wait(&mut wcs, Duration::from_millis(100)).unwrap(), 0, "held");
    fmr.restore().unwrap();
    defrag.join().unwrap();
    assert_eq!(a.wc().status, WcStatus::Success);
    let mut got = [0u8; 13];
    map.read(4096, &mut got).unwrap();
    assert_eq!(&got, b"after restore", "in the file's new blocks");
}

/// An ODP MR: the client's transfer finds its pages absent, asks the daemon to fault them
/// (one request), and retries.
#[test]
fn shm_odp_target_is_faulted_in_on_demand() {
    let (d, _dir) = daemon(PinPolicy::Deny, Duration::from_millis(300));
    let a = end(&d, 8192);
    let b = end(&d, 4096);
    let region = b.ctx.alloc(4 * 4096).unwrap();
    let odp = b.pd.reg_mr(region.addr(), 4 * 4096, Access::all_rw() | Access::ON_DEMAND).unwrap();
    a.qp.connect(b.qp.qpn(), Access::all_rw()).unwrap();
    a.buf.write(0, b"odp bytes").unwrap();
    a.qp.post_send(&[SendWr::write(1, a.sge(0, 9), odp.addr() + 2 * 4096 + 10, odp.rkey())])
        .unwrap();
    assert_eq!(a.wc().status, WcStatus::Success);
    let mut got = [0u8; 9];
    region.read(2 * 4096 + 10, &mut got).unwrap();
    assert_eq!(&got, b"odp bytes");
}
