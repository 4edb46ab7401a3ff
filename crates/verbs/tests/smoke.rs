#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::*;
use pinwheel_verbs::*;

#[test]
fn loopback_write_read_atomic_send() {
    let n = node(64);
    let (a, b, cq) = n.pair();
    let src = n.buf(65536, 0xab);
    let dst = n.buf(65536, 0);
    let smr = n.mr(src, 65536, Access::all_rw());
    let dmr = n.mr(dst, 65536, Access::all_rw());
    a.post_send(&[SendWr::write(1, sge(&smr, src, 65536), dst.raw(), dmr.rkey())]).unwrap();
    let w = wc(&cq);
    assert_eq!((w.wr_id, w.status, w.byte_len), (1, WcStatus::Success, 65536));
    assert_eq!(n.read(dst, 65536), vec![0xab; 65536]);
    n.aspace.write(dst, b"read me").unwrap();
    a.post_send(&[SendWr::read(2, sge(&smr, src, 7), dst.raw(), dmr.rkey())]).unwrap();
    assert_eq!(wc(&cq).status, WcStatus::Success);
    assert_eq!(n.read(src, 7), b"read me");
    n.aspace.write(dst.checked_add(64).unwrap(), &5u64.to_le_bytes()).unwrap();
    a.post_send(&[SendWr::fetch_add(3, sge(&smr, src, 8), dst.raw() + 64, dmr.rkey(), 10)])
        .unwrap();
    assert_eq!(wc(&cq).status, WcStatus::Success);
    assert_eq!(n.read(src, 8), 5u64.to_le_bytes());
    assert_eq!(n.read(dst.checked_add(64).unwrap(), 8), 15u64.to_le_bytes());
    b.post_recv(&[RecvWr { wr_id: 9, sg_list: vec![sge(&dmr, dst, 100)] }]).unwrap();
    a.post_send(&[SendWr::send(4, sge(&smr, src, 100)).with_imm(77)]).unwrap();
    let mut got = [wc(&cq), wc(&cq)];
    got.sort_by_key(|w| w.wr_id);
    assert_eq!((got[0].wr_id, got[0].status), (4, WcStatus::Success));
    assert_eq!(
        (got[1].wr_id, got[1].status, got[1].imm, got[1].byte_len),
        (9, WcStatus::Success, Some(77), 100)
    );
}
