#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A client sending garbage into its own rings (issue 4, "bad input"; `docs/shm.md`, "Trust"):
//! its CQ and receive rings are scribbled on while a peer on the same node SENDs to it through
//! the shared path and a peer over TCP SENDs to it through the daemon's engine. Every call
//! returns (an error or a completion, within the test's wait), nothing panics, and afterwards
//! the daemon still serves and another pair of clients moves bytes correctly.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pinwheel::client::QpInit;
use pinwheel::fs::PinPolicy;
use pinwheel::mm::{Pool, PoolOffset};
use pinwheel::{Access, RecvWr, SendWr, WcStatus};

/// The bytes of the ring at `base`, from its geometry words (read before the scribbling).
fn ring_bytes(pool: &Pool, base: PoolOffset) -> u64 {
    let cap = pool.load_u64(PoolOffset::new(base.raw() + 152)).unwrap();
    let stride = pool.load_u64(PoolOffset::new(base.raw() + 160)).unwrap();
    assert!(cap > 0 && cap <= 1 << 16 && stride > 0 && stride <= 1024, "ring geometry");
    192 + cap * stride
}

fn scribble(pool: &Pool, base: PoolOffset, bytes: u64, x: &mut u64) {
    for k in 0..48 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        let w = base.raw() + (*x % bytes) / 8 * 8;
        // Small values look like positions, sequence numbers and keys; big ones like nonsense.
        let v = if k % 3 == 0 { *x } else { *x % 512 };
        pool.store_u64(PoolOffset::new(w), v).unwrap();
    }
}

#[test]
fn shm_garbage_in_a_clients_rings_breaks_only_that_client() {
    let listen = Some("127.0.0.1:0");
    let (d, _dir) = daemon_on(PinPolicy::Deny, Duration::from_millis(300), listen);
    let addr = d.tcp_addr().unwrap().to_string();

    // The hostile client A: a QP to B on this node, and a QP over TCP to B's second QP.
    let (a, b) = pair(&d, 65536);
    let init = QpInit::default();
    let b_pd = b.pd.clone();
    let (b_cq, a_cq) = (b.cq.clone(), a.cq.clone());
    let accept = std::thread::spawn(move || {
        b_pd.accept_tcp(&b_cq, &b_cq, init, Access::all_rw(), b"", T).unwrap().0
    });
    let (a_tcp, _) = a.pd.connect_tcp(&addr, &a_cq, &a_cq, init, Access::all_rw(), b"").unwrap();
    let b_tcp = accept.join().unwrap();

    // A well-behaved pair, and a pattern in its target buffer to check afterwards.
    let (c, e) = pair(&d, 65536);
    let pattern: Vec<u8> = (0..65536u32).map(|i| (i * 13 + 5) as u8).collect();
    e.buf.write(0, &pattern).unwrap();

    // A posts receives (its rings have real entries), then its rings turn to garbage.
    for qp in [&a.qp, &a_tcp] {
        let wrs: Vec<RecvWr> =
            (0..16).map(|i| RecvWr { wr_id: i, sg_list: vec![a.sge(i * 1024, 1024)] }).collect();
        qp.post_recv(&wrs).unwrap();
    }
    let region = a.ctx.region().expect("the node has a device region");
    let pool = a.ctx.pool();
    let mut rings = Vec::new();
    for qp in [&a.qp, &a_tcp] {
        let v = region.qp(pool, qp.shm_slot().unwrap()).unwrap();
        rings.push(v.send_cq);
        rings.push(v.rq.expect("a receive ring").0);
    }
    rings.sort_by_key(|r| r.raw());
    rings.dedup();
    let sizes: Vec<u64> = rings.iter().map(|&r| ring_bytes(pool, r)).collect();

    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut wcs = vec![blank(); 16];
    let (mut refused, mut seen) = (0usize, [0usize; 2]);
    let t = Instant::now();
    for round in 0..300u64 {
        for (&r, &n) in rings.iter().zip(&sizes) {
            scribble(pool, r, n, &mut x);
        }
        // Same node: B's library reads A's receive ring. Over TCP: the daemon's engine does.
        let r = [
            b.qp.post_send(&[SendWr::send(round, b.sge(0, 64))]),
            b_tcp.post_send(&[SendWr::send(round, b.sge(64, 64))]),
            b.qp.post_send(&[SendWr::write(round, b.sge(0, 8), a.mr.addr(), a.mr.rkey())]),
        ];
        refused += r.iter().filter(|r| r.is_err()).count();
        // A polls its garbage; B polls its own CQ (A's troubles may show there as errors).
        match a.cq.poll(&mut wcs) {
            Ok(n) => seen[0] += wcs[..n].iter().filter(|w| w.status != WcStatus::Success).count(),
            Err(_) => refused += 1,
        }
        match b.cq.poll(&mut wcs) {
            Ok(n) => seen[1] += wcs[..n].iter().filter(|w| w.status != WcStatus::Success).count(),
            Err(_) => refused += 1,
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the rounds take too long");
    }

    // What the garbage did (for the log: it depends on the scribbles).
    eprintln!("calls refused: {refused}; error completions: A {}, B {}", seen[0], seen[1]);

    // The daemon serves: a new client connects.
    let fresh = end(&d, 4096);
    assert!(fresh.ctx.shared_data_path());

    // The other pair moves bytes correctly, both ways, over the shared path.
    let data: Vec<u8> = (0..40000u32).map(|i| (i * 7 + 1) as u8).collect();
    c.buf.write(0, &data).unwrap();
    c.qp.post_send(&[SendWr::write(1, c.sge(0, 40000), e.mr.addr() + 1000, e.mr.rkey())]).unwrap();
    assert_eq!(c.wc().status, WcStatus::Success);
    let mut want = pattern.clone();
    want[1000..41000].copy_from_slice(&data);
    assert_eq!(e.read(0, 65536), want, "exactly the WRITE's bytes changed in E's buffer");
    e.qp.post_recv(&[RecvWr { wr_id: 9, sg_list: vec![e.sge(50000, 100)] }]).unwrap();
    c.buf.write(100, b"still here").unwrap();
    c.qp.post_send(&[SendWr::send(2, c.sge(100, 10))]).unwrap();
    assert_eq!(c.wc().status, WcStatus::Success);
    let wc = e.wc();
    assert_eq!((wc.wr_id, wc.status, wc.byte_len), (9, WcStatus::Success, 10));
    assert_eq!(e.read(50000, 10), b"still here");

    // And the hostile client's own handle can still be closed cleanly.
    drop((a_tcp, b_tcp, a_cq));
    drop((a, b));
    let t = Instant::now();
    while d.handles() > 3 {
        assert!(t.elapsed() < T, "the hostile handles were not torn down: {}", d.handles());
        std::thread::sleep(Duration::from_millis(10));
    }
}
