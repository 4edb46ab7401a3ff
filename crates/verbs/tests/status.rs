#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

// Every work-completion status the loopback engine produces, one test per way of producing it.
//
// Each failure asserts: the exact status of the failing work request; that the initiator QP is
// in ERR afterwards and flushes later work requests with `WR_FLUSH_ERR`; and which side is to
// blame. When the responder detects the violation (remote access, remote invalid request,
// remote operation errors) its QP goes to ERR and `QP_ACCESS_ERR` is posted on the context;
// when the initiator does (local protection, local length, retry counters) the responder is
// left in RTS and no event names it. Buffers a failed remote access targeted are checked
// unchanged (invariant 5: nothing outside an MR the key names, and nothing at all when a
// check fails, is touched).
//
// Besides statuses: unsignaled work requests, scatter/gather, inline data, SRQs, CQ overflow,
// queue-depth and state errors of `post_send`, registration errors.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::Duration;

use common::*;
use pinwheel_mm::{Errno, VirtAddr};
use pinwheel_verbs::*;

/// Bytes of each test buffer (four pages).
const LEN: u64 = 16384;
/// A key no MR has: index 0xabcd, generation 1 (the table is far smaller).
const BOGUS_KEY: u32 = 0x00ab_cd01;

/// An initiator `a` and a responder `b`, each on its own CQ, connected with `qp_access`; a
/// source MR (all access, filled with 0xa5) and a target MR (`dst_access`, zero-filled).
struct Fx {
    n: Node,
    a: QueuePair,
    b: QueuePair,
    acq: CompletionQueue,
    bcq: CompletionQueue,
    src: VirtAddr,
    smr: MemoryRegion,
    dst: VirtAddr,
    dmr: MemoryRegion,
    /// Completions of `b` set aside while checking its flush.
    b_seen: RefCell<VecDeque<WorkCompletion>>,
}

fn fx_from(connect: impl FnOnce(&QueuePair, &QueuePair), dst_access: Access) -> Fx {
    let n = node(32);
    let (acq, bcq) = (n.cq(), n.cq());
    let a = n.qp(&acq);
    let b = n.qp(&bcq);
    connect(&a, &b);
    let src = n.buf(LEN, 0xa5);
    let dst = n.buf(LEN, 0);
    let smr = n.mr(src, LEN, Access::all_rw());
    let dmr = n.mr(dst, LEN, dst_access);
    Fx { n, a, b, acq, bcq, src, smr, dst, dmr, b_seen: RefCell::default() }
}

fn fx_with(qp_access: Access, dst_access: Access) -> Fx {
    fx_from(|a, b| a.connect_local(b, qp_access).unwrap(), dst_access)
}

fn fx() -> Fx {
    fx_with(Access::all_rw(), Access::all_rw())
}

fn at(v: VirtAddr, off: u64) -> VirtAddr {
    v.checked_add(off).unwrap()
}

fn wc_opcode(op: Opcode) -> WcOpcode {
    match op {
        Opcode::Write | Opcode::WriteWithImm => WcOpcode::RdmaWrite,
        Opcode::Send | Opcode::SendWithImm => WcOpcode::Send,
        Opcode::Read => WcOpcode::RdmaRead,
        Opcode::CompareSwap => WcOpcode::CompSwap,
        Opcode::FetchAdd => WcOpcode::FetchAdd,
    }
}

/// Waits (up to `T` per event) for an event of `kind`, concerning `qpn` when given; skips
/// others.
fn expect_event(ctx: &Context, kind: EventType, qpn: Option<Qpn>) -> AsyncEvent {
    loop {
        let e = ctx
            .get_async_event(T)
            .unwrap_or_else(|| panic!("no {} event (qpn {qpn:?}) within {T:?}", kind.name()));
        if e.kind == kind && (qpn.is_none() || e.qpn == qpn) {
            return e;
        }
    }
}

/// Drains the events already posted; none may be of `kind`.
fn no_event(ctx: &Context, kind: EventType) {
    while let Some(e) = ctx.get_async_event(Duration::ZERO) {
        assert_ne!(e.kind, kind, "unexpected event {e:?}");
    }
}

impl Fx {
    fn sge_src(&self, off: u64, len: u32) -> Sge {
        sge(&self.smr, at(self.src, off), len)
    }
    fn sge_dst(&self, off: u64, len: u32) -> Sge {
        sge(&self.dmr, at(self.dst, off), len)
    }
    /// A WRITE that would succeed on a healthy pair.
    fn good_write(&self, wr_id: u64) -> SendWr {
        SendWr::write(wr_id, self.sge_src(0, 64), self.dst.raw(), self.dmr.rkey())
    }

    /// Posts `wr` on `a`; its completion must carry `want`; then `a` is in ERR and a later
    /// work request is flushed.
    fn fails(&self, wr: SendWr, want: WcStatus) {
        let (id, op) = (wr.wr_id, wr.opcode);
        self.a.post_send(&[wr]).unwrap();
        let w = wc(&self.acq);
        assert_eq!((w.wr_id, w.status), (id, want), "{} of wr {id}: {w:?}", op.name());
        assert_eq!((w.opcode, w.qpn), (wc_opcode(op), self.a.qpn()));
        assert_eq!(self.a.state(), QpState::Error, "initiator after {}", want.code_name());
        self.flushes_later_work();
    }

    fn flushes_later_work(&self) {
        let later = self.good_write(LATER);
        self.a.post_send(&[later]).unwrap();
        let w = wc(&self.acq);
        assert_eq!(
            (w.wr_id, w.status, w.opcode),
            (LATER, WcStatus::WrFlushErr, WcOpcode::RdmaWrite)
        );
        assert!(self.acq.poll_one().is_none(), "one completion per work request");
        assert_eq!(self.a.state(), QpState::Error);
    }

    /// The initiator failed on its own: the responder is untouched.
    fn fails_locally(&self, wr: SendWr, want: WcStatus) {
        self.fails(wr, want);
        assert_eq!(self.b.state(), QpState::Rts, "responder after a local {}", want.code_name());
        no_event(&self.n.ctx, EventType::QpAccessErr);
        assert!(self.bcq.poll_one().is_none());
    }

    /// The responder rejected the request: it is in ERR and said so on the context.
    fn fails_remotely(&self, wr: SendWr, want: WcStatus) {
        self.fails(wr, want);
        self.responder_broken();
    }

    fn responder_broken(&self) {
        assert_eq!(self.b.state(), QpState::Error, "responder");
        let e = expect_event(&self.n.ctx, EventType::QpAccessErr, Some(self.b.qpn()));
        assert!(!e.detail.is_empty());
        // The responder's own later work is flushed too (behind what it completed so far).
        while let Some(w) = self.bcq.poll_one() {
            self.b_seen.borrow_mut().push_back(w);
        }
        self.b.post_send(&[SendWr::send(7, sge(&self.dmr, self.dst, 8))]).unwrap();
        let w = wc(&self.bcq);
        assert_eq!((w.wr_id, w.status), (7, WcStatus::WrFlushErr));
    }

    /// The next completion of `b`.
    fn b_wc(&self) -> WorkCompletion {
        let seen = self.b_seen.borrow_mut().pop_front();
        seen.unwrap_or_else(|| wc(&self.bcq))
    }

    /// The next completion of `b`, if one comes within `T`.
    fn b_next(&self) -> Option<WorkCompletion> {
        let seen = self.b_seen.borrow_mut().pop_front();
        seen.or_else(|| self.bcq.next(T))
    }

    fn dst_untouched(&self) {
        assert_eq!(self.n.read(self.dst, LEN as usize), vec![0; LEN as usize], "target bytes");
    }
}

/// Byte-vector equality that reports the first difference instead of both vectors.
fn same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(g, w)| g != w) {
        panic!("{what}: byte {i} is {:#x}, want {:#x}", got[i], want[i]);
    }
}

/// The wr_id of the work request posted after a failure to see it flushed.
const LATER: u64 = 0xf1 << 32;

// ---- LOC_PROT_ERR -------------------------------------------------------------------------

#[test]
fn loc_prot_err_unknown_lkey() {
    for lkey in [Lkey(BOGUS_KEY), Lkey(0)] {
        let f = fx();
        let bad = Sge { addr: f.src.raw(), length: 64, lkey };
        f.fails_locally(SendWr::write(1, bad, f.dst.raw(), f.dmr.rkey()), WcStatus::LocProtErr);
        f.dst_untouched();
    }
}

#[test]
fn loc_prot_err_lkey_of_another_pd() {
    let f = fx();
    let pd2 = f.n.ctx.alloc_pd();
    assert_ne!(pd2.id(), f.n.pd.id());
    let other = pd2.reg_mr(&f.n.aspace, f.src, LEN, Access::all_rw()).unwrap();
    let wr = SendWr::write(1, sge(&other, f.src, 64), f.dst.raw(), f.dmr.rkey());
    f.fails_locally(wr, WcStatus::LocProtErr);
    f.dst_untouched();
}

#[test]
fn loc_prot_err_sge_outside_the_mr() {
    let cases = |f: &Fx| {
        let lkey = f.smr.lkey();
        vec![
            ("past the end", Sge { addr: f.src.raw() + LEN - 32, length: 64, lkey }),
            ("below the start", Sge { addr: f.src.raw() - 1, length: 8, lkey }),
            ("length beyond the end", Sge { addr: f.src.raw() + 8, length: 1 << 30, lkey }),
            ("address near u64::MAX", Sge { addr: u64::MAX - 16, length: 64, lkey }),
        ]
    };
    for i in 0..4 {
        let f = fx();
        let (what, bad) = cases(&f).swap_remove(i);
        eprintln!("case: {what}");
        f.fails_locally(SendWr::write(1, bad, f.dst.raw(), f.dmr.rkey()), WcStatus::LocProtErr);
        f.dst_untouched();
    }
}

#[test]
fn loc_prot_err_read_or_atomic_into_mr_without_local_write() {
    for atomic in [false, true] {
        let f = fx();
        // REMOTE_READ alone needs no LOCAL_WRITE: a legal registration that is read-only to us.
        let ro_buf = f.n.buf(LEN, 0x11);
        let ro = f.n.mr(ro_buf, LEN, Access::REMOTE_READ);
        let wr = if atomic {
            SendWr::fetch_add(1, sge(&ro, ro_buf, 8), f.dst.raw(), f.dmr.rkey(), 1)
        } else {
            SendWr::read(1, sge(&ro, ro_buf, 64), f.dst.raw(), f.dmr.rkey())
        };
        f.fails_locally(wr, WcStatus::LocProtErr);
        assert_eq!(f.n.read(ro_buf, LEN as usize), vec![0x11; LEN as usize]);
        f.dst_untouched();
    }
}

#[test]
fn loc_prot_err_revoked_local_mr() {
    for read in [false, true] {
        let f = fx();
        f.smr.revoke("test: administrator revoked the source");
        assert_eq!(f.smr.state(), MrState::Revoked);
        let e = expect_event(&f.n.ctx, EventType::MrRevoked, None);
        assert_eq!(e.mr, Some(f.smr.lkey()));
        let wr = if read {
            SendWr::read(1, f.sge_src(0, 64), f.dst.raw(), f.dmr.rkey())
        } else {
            SendWr::write(1, f.sge_src(0, 64), f.dst.raw(), f.dmr.rkey())
        };
        f.fails_locally(wr, WcStatus::LocProtErr);
        f.dst_untouched();
    }
}

#[test]
fn loc_prot_err_stale_lkey_after_deregistration() {
    let f = fx();
    let buf = f.n.buf(LEN, 0x22);
    let mr = f.n.mr(buf, LEN, Access::all_rw());
    let stale = mr.lkey();
    drop(mr);
    // The slot is reused with another generation: the old key must not name the new MR.
    let again = f.n.mr(buf, LEN, Access::all_rw());
    assert_ne!(again.lkey(), stale);
    let wr = SendWr::write(
        1,
        Sge { addr: buf.raw(), length: 64, lkey: stale },
        f.dst.raw(),
        f.dmr.rkey(),
    );
    f.fails_locally(wr, WcStatus::LocProtErr);
    f.dst_untouched();
}

/// The same after the keys were used: the executing thread's MR cache knew them, and must not
/// let a stale key name a deregistered MR, nor the MR registered in its slot since.
#[test]
fn stale_keys_fail_after_a_cached_use() {
    let f = fx();
    let buf = f.n.buf(LEN, 0x22);
    let mr = f.n.mr(buf, LEN, Access::all_rw());
    let target = f.n.buf(LEN, 0);
    let tmr = f.n.mr(target, LEN, Access::all_rw());
    let old_r = tmr.rkey();
    for i in 0..3 {
        let wr = SendWr::write(i, sge(&mr, buf, 64), target.raw(), tmr.rkey());
        f.a.post_send(&[wr]).unwrap();
        assert_eq!(wc(&f.acq).status, WcStatus::Success);
    }
    assert_eq!(f.n.read(target, 64), vec![0x22; 64]);
    drop(tmr);
    let again_t = f.n.mr(target, LEN, Access::all_rw());
    assert_ne!(again_t.rkey(), old_r);
    // The stale rkey: a remote access error, the responder breaks; nothing lands.
    f.n.aspace.write(buf, &[0x44; 64]).unwrap();
    f.fails_remotely(
        SendWr::write(9, sge(&mr, buf, 64), target.raw(), old_r),
        WcStatus::RemAccessErr,
    );
    assert_eq!(f.n.read(target, 64), vec![0x22; 64], "the stale rkey wrote");
    // The stale lkey, on a fresh pair: a local protection error.
    let g = fx();
    let src = g.n.buf(LEN, 0x55);
    let smr = g.n.mr(src, LEN, Access::all_rw());
    let stale = smr.lkey();
    g.a.post_send(&[SendWr::write(1, sge(&smr, src, 64), g.dst.raw(), g.dmr.rkey())]).unwrap();
    assert_eq!(wc(&g.acq).status, WcStatus::Success);
    drop(smr);
    let again = g.n.mr(src, LEN, Access::all_rw());
    assert_ne!(again.lkey(), stale);
    let wr = SendWr::write(
        2,
        Sge { addr: src.raw(), length: 64, lkey: stale },
        g.dst.raw(),
        g.dmr.rkey(),
    );
    g.fails_locally(wr, WcStatus::LocProtErr);
}

#[test]
fn loc_prot_err_odp_source_unmapped() {
    let f = fx();
    let buf = f.n.buf(LEN, 0x33);
    let odp = f.n.mr(buf, LEN, Access::all_rw() | Access::ON_DEMAND);
    assert_eq!(odp.kind(), MrKind::Odp);
    f.n.aspace.munmap(buf, LEN).unwrap();
    let wr = SendWr::write(1, sge(&odp, buf, 64), f.dst.raw(), f.dmr.rkey());
    f.fails_locally(wr, WcStatus::LocProtErr);
    f.dst_untouched();
}

// ---- REM_ACCESS_ERR -----------------------------------------------------------------------

/// One WRITE, READ, FETCH_ADD and COMPARE_SWAP aimed at `rkey`/`addr`.
fn remote_ops(f: &Fx, addr: u64, rkey: Rkey) -> Vec<SendWr> {
    vec![
        SendWr::write(1, f.sge_src(0, 64), addr, rkey),
        SendWr::read(2, f.sge_src(0, 64), addr, rkey),
        SendWr::fetch_add(3, f.sge_src(0, 8), addr, rkey, 1),
        SendWr::compare_swap(4, f.sge_src(0, 8), addr, rkey, 0, 9),
    ]
}

/// Each of the four remote operations, on a fresh pair, must fail remotely with `want`.
fn each_remote_op_fails(
    make: impl Fn() -> Fx,
    target: impl Fn(&Fx) -> (u64, Rkey),
    want: WcStatus,
) {
    for i in 0..4 {
        let f = make();
        let (addr, rkey) = target(&f);
        let wr = remote_ops(&f, addr, rkey).swap_remove(i);
        eprintln!("case: {}", wr.opcode.name());
        f.fails_remotely(wr, want);
        f.dst_untouched();
        assert_eq!(f.n.read(f.src, 64), vec![0xa5; 64], "initiator buffer");
    }
}

#[test]
fn rem_access_err_unknown_rkey() {
    each_remote_op_fails(fx, |f| (f.dst.raw(), Rkey(BOGUS_KEY)), WcStatus::RemAccessErr);
    each_remote_op_fails(fx, |f| (f.dst.raw(), Rkey(0)), WcStatus::RemAccessErr);
}

#[test]
fn rem_access_err_rkey_of_another_pd() {
    let f = fx();
    let pd2 = f.n.ctx.alloc_pd();
    let other = pd2.reg_mr(&f.n.aspace, f.dst, LEN, Access::all_rw()).unwrap();
    f.fails_remotely(
        SendWr::write(1, f.sge_src(0, 64), f.dst.raw(), other.rkey()),
        WcStatus::RemAccessErr,
    );
    f.dst_untouched();
}

#[test]
fn rem_access_err_mr_without_the_remote_permission() {
    let all = Access::all_rw();
    // (MR access, the operation it lacks, one it allows)
    let cases = [
        (all - Access::REMOTE_WRITE, Opcode::Write, Opcode::Read),
        (all - Access::REMOTE_READ, Opcode::Read, Opcode::Write),
        (all - Access::REMOTE_ATOMIC, Opcode::FetchAdd, Opcode::Read),
        (all - Access::REMOTE_ATOMIC, Opcode::CompareSwap, Opcode::Write),
    ];
    for (access, denied, allowed) in cases {
        let f = fx_with(all, access);
        let pick = |op: Opcode, id: u64| {
            let mut wr = remote_ops(&f, f.dst.raw(), f.dmr.rkey())
                .into_iter()
                .find(|w| w.opcode == op)
                .unwrap();
            wr.wr_id = id;
            wr
        };
        // A zero-filled target makes the allowed operation harmless to check afterwards.
        let before = f.n.read(f.src, 64);
        f.a.post_send(&[pick(allowed, 10)]).unwrap();
        assert_eq!(wc(&f.acq).status, WcStatus::Success, "{access:?} allows {}", allowed.name());
        if allowed == Opcode::Write {
            assert_eq!(f.n.read(f.dst, 64), before);
            f.n.aspace.write(f.dst, &[0; 64]).unwrap();
        }
        f.fails_remotely(pick(denied, 11), WcStatus::RemAccessErr);
        f.dst_untouched();
    }
}

#[test]
fn rem_access_err_qp_without_the_remote_permission() {
    // Connected with LOCAL_WRITE only: the MR allows everything, the responder QP nothing.
    each_remote_op_fails(
        || fx_with(Access::LOCAL_WRITE, Access::all_rw()),
        |f| (f.dst.raw(), f.dmr.rkey()),
        WcStatus::RemAccessErr,
    );
    // REMOTE_READ on the QP allows reads only.
    let f = fx_with(Access::LOCAL_WRITE | Access::REMOTE_READ, Access::all_rw());
    f.a.post_send(&[SendWr::read(1, f.sge_src(0, 64), f.dst.raw(), f.dmr.rkey())]).unwrap();
    assert_eq!(wc(&f.acq).status, WcStatus::Success);
    assert_eq!(f.n.read(f.src, 64), vec![0; 64]);
    f.fails_remotely(
        SendWr::write(2, f.sge_src(0, 64), f.dst.raw(), f.dmr.rkey()),
        WcStatus::RemAccessErr,
    );
}

#[test]
fn rem_access_err_remote_range_out_of_bounds() {
    let past_end = |f: &Fx| (f.dst.raw() + LEN, f.dmr.rkey());
    let below = |f: &Fx| (f.dst.raw() - 8, f.dmr.rkey());
    // remote_addr + length wraps past zero: a check done without checked arithmetic passes.
    let overflowing = |f: &Fx| (u64::MAX - 7, f.dmr.rkey());
    each_remote_op_fails(fx, past_end, WcStatus::RemAccessErr);
    each_remote_op_fails(fx, below, WcStatus::RemAccessErr);
    each_remote_op_fails(fx, overflowing, WcStatus::RemAccessErr);
    // Straddling the end of an MR that covers half the buffer: not one byte moves, inside or
    // outside.
    for read in [false, true] {
        let f = fx();
        let half = f.n.mr(f.dst, LEN / 2, Access::all_rw());
        let addr = f.dst.raw() + LEN / 2 - 32;
        let wr = if read {
            SendWr::read(1, f.sge_src(0, 64), addr, half.rkey())
        } else {
            SendWr::write(1, f.sge_src(0, 64), addr, half.rkey())
        };
        f.fails_remotely(wr, WcStatus::RemAccessErr);
        f.dst_untouched();
        assert_eq!(f.n.read(f.src, 64), vec![0xa5; 64]);
    }
}

#[test]
fn rem_access_err_revoked_remote_mr() {
    each_remote_op_fails(
        || {
            let f = fx();
            f.dmr.revoke("test: revoked under the initiator");
            f
        },
        |f| (f.dst.raw(), f.dmr.rkey()),
        WcStatus::RemAccessErr,
    );
}

#[test]
fn rem_access_err_odp_range_unmapped() {
    let make = || {
        let f = fx();
        let odp = f.n.mr(f.dst, LEN, Access::all_rw() | Access::ON_DEMAND);
        // The ODP MR works while mapped.
        f.a.post_send(&[SendWr::write(50, f.sge_src(0, 8), f.dst.raw(), odp.rkey())]).unwrap();
        assert_eq!(wc(&f.acq).status, WcStatus::Success);
        assert_eq!(f.n.read(f.dst, 8), vec![0xa5; 8]);
        f.n.aspace.munmap(f.dst, LEN).unwrap();
        (f, odp)
    };
    for i in 0..4 {
        let (f, odp) = make();
        let wr = remote_ops(&f, f.dst.raw(), odp.rkey()).swap_remove(i);
        eprintln!("case: {}", wr.opcode.name());
        f.fails_remotely(wr, WcStatus::RemAccessErr);
    }
}

// ---- REM_INV_REQ_ERR ----------------------------------------------------------------------

#[test]
fn rem_inv_req_err_misaligned_atomic() {
    for (i, off) in [(2, 4u64), (3, 1), (2, 7), (3, 12)] {
        let f = fx();
        let wr = remote_ops(&f, f.dst.raw() + off, f.dmr.rkey()).swap_remove(i);
        f.fails_remotely(wr, WcStatus::RemInvReqErr);
        f.dst_untouched();
    }
}

#[test]
fn rem_inv_req_err_send_larger_than_the_receive() {
    for sges in [vec![(0u64, 16u32)], vec![(0, 40), (100, 40), (300, 19)]] {
        let f = fx();
        let list = sges.iter().map(|&(o, l)| f.sge_dst(o, l)).collect();
        f.b.post_recv(&[RecvWr { wr_id: 50, sg_list: list }]).unwrap();
        f.fails_remotely(SendWr::send(1, f.sge_src(0, 100)), WcStatus::RemInvReqErr);
        let r = f.b_wc();
        assert_eq!((r.wr_id, r.status, r.opcode), (50, WcStatus::LocLenErr, WcOpcode::Recv));
        f.dst_untouched();
    }
}

// ---- LOC_LEN_ERR --------------------------------------------------------------------------

#[test]
fn loc_len_err_atomic_sge_not_8_bytes() {
    let shapes: [&[u32]; 4] = [&[4], &[16], &[4, 4], &[]];
    for shape in shapes {
        for cas in [false, true] {
            let f = fx();
            let list: Vec<Sge> =
                shape.iter().enumerate().map(|(i, &l)| f.sge_src(64 * i as u64, l)).collect();
            let mut wr = if cas {
                SendWr::compare_swap(1, f.sge_src(0, 8), f.dst.raw(), f.dmr.rkey(), 0, 5)
            } else {
                SendWr::fetch_add(1, f.sge_src(0, 8), f.dst.raw(), f.dmr.rkey(), 5)
            };
            wr.sg_list = list;
            f.fails_locally(wr, WcStatus::LocLenErr);
            f.dst_untouched();
        }
    }
}

#[test]
fn loc_len_err_message_beyond_2_gib() {
    // Two SGEs of 2 GiB each: longer than the largest message, refused before any key check.
    let f = fx();
    let big = Sge { addr: f.src.raw(), length: 1 << 31, lkey: f.smr.lkey() };
    let mut wr = SendWr::write(1, big, f.dst.raw(), f.dmr.rkey());
    wr.sg_list.push(big);
    f.fails_locally(wr, WcStatus::LocLenErr);
    f.dst_untouched();
}

// ---- RNR_RETRY_EXC_ERR --------------------------------------------------------------------

/// Modifies `q` to `attr.qp_state` with the mask the table requires from its current state.
fn modify_to(q: &QueuePair, attr: QpAttr) {
    let t = transition(q.state(), attr.qp_state).expect("a transition of the table");
    q.modify(&attr, QpAttrMask::STATE | t.required).unwrap();
}

/// Takes `a` and `b` (RESET) through INIT → RTR → RTS by hand; `a` gets `rnr_retry`.
fn connect_by_hand(a: &QueuePair, b: &QueuePair, rnr_retry: u8) {
    for (q, peer, rnr) in [(a, b, rnr_retry), (b, a, 7)] {
        let access = Access::all_rw();
        modify_to(
            q,
            QpAttr { qp_state: QpState::Init, qp_access_flags: access, ..QpAttr::default() },
        );
        let path = AddressHandle::Local;
        let dest = peer.qpn();
        modify_to(
            q,
            QpAttr { qp_state: QpState::Rtr, dest_qp_num: dest, ah: path, ..QpAttr::default() },
        );
        modify_to(q, QpAttr { qp_state: QpState::Rts, rnr_retry: rnr, ..QpAttr::default() });
        assert_eq!(q.query().rnr_retry, rnr);
    }
}

fn fx_rnr(rnr_retry: u8) -> Fx {
    fx_from(|a, b| connect_by_hand(a, b, rnr_retry), Access::all_rw())
}

#[test]
fn rnr_retry_exc_err_send_without_receive() {
    // SEND, SEND_WITH_IMM and WRITE_WITH_IMM all consume a receive.
    for rnr in [0, 1, 3] {
        for op in [Opcode::Send, Opcode::SendWithImm, Opcode::WriteWithImm] {
            let f = fx_rnr(rnr);
            let wr = match op {
                Opcode::Send => SendWr::send(1, f.sge_src(0, 64)),
                Opcode::SendWithImm => SendWr::send(1, f.sge_src(0, 64)).with_imm(5),
                _ => SendWr::write(1, f.sge_src(0, 64), f.dst.raw(), f.dmr.rkey()).with_imm(6),
            };
            f.fails_locally(wr, WcStatus::RnrRetryExcErr);
            f.dst_untouched();
        }
    }
}

#[test]
fn rnr_retry_7_waits_for_the_receive() {
    let f = fx_rnr(7);
    f.a.post_send(&[SendWr::send(1, f.sge_src(0, 64))]).unwrap();
    assert!(f.acq.poll_one().is_none(), "the send waits for a receive");
    assert_eq!(f.a.state(), QpState::Rts);
    f.b.post_recv(&[RecvWr { wr_id: 9, sg_list: vec![f.sge_dst(0, 64)] }]).unwrap();
    let w = wc(&f.acq);
    assert_eq!((w.wr_id, w.status, w.byte_len), (1, WcStatus::Success, 64));
    let r = wc(&f.bcq);
    assert_eq!((r.wr_id, r.status, r.byte_len), (9, WcStatus::Success, 64));
    assert_eq!(f.n.read(f.dst, 64), vec![0xa5; 64]);
}

#[test]
fn rnr_waiting_send_is_flushed_when_the_initiator_goes_to_error() {
    let f = fx_rnr(7);
    f.a.post_send(&[SendWr::send(1, f.sge_src(0, 64))]).unwrap();
    assert!(f.acq.poll_one().is_none(), "waiting for a receive");
    modify_to(&f.a, QpAttr { qp_state: QpState::Error, ..QpAttr::default() });
    let w = wc(&f.acq);
    assert_eq!((w.wr_id, w.status), (1, WcStatus::WrFlushErr));
    // A receive posted now is not consumed by the flushed SEND.
    f.b.post_recv(&[RecvWr { wr_id: 9, sg_list: vec![f.sge_dst(0, 64)] }]).unwrap();
    modify_to(&f.b, QpAttr { qp_state: QpState::Error, ..QpAttr::default() });
    let r = wc(&f.bcq);
    assert_eq!((r.wr_id, r.status), (9, WcStatus::WrFlushErr));
    f.dst_untouched();
}

// ---- RETRY_EXC_ERR ------------------------------------------------------------------------

#[test]
fn retry_exc_err_peer_not_receiving() {
    // The peer moved to RESET, to ERR, or back to INIT: nobody answers.
    for to in [QpState::Reset, QpState::Error] {
        let f = fx();
        f.b.modify(&QpAttr { qp_state: to, ..QpAttr::default() }, QpAttrMask::STATE).unwrap();
        f.fails(f.good_write(1), WcStatus::RetryExcErr);
        f.dst_untouched();
        assert_eq!(f.b.state(), to);
        no_event(&f.n.ctx, EventType::QpAccessErr);
    }
    let f = fx();
    modify_to(&f.b, QpAttr { qp_state: QpState::Reset, ..QpAttr::default() });
    modify_to(&f.b, QpAttr { qp_state: QpState::Init, ..QpAttr::default() });
    f.fails(f.good_write(1), WcStatus::RetryExcErr);
    f.dst_untouched();
}

#[test]
fn retry_exc_err_peer_dropped() {
    for read in [false, true] {
        let n = node(32);
        let acq = n.cq();
        let a = n.qp(&acq);
        let b = n.qp(&acq);
        a.connect_local(&b, Access::all_rw()).unwrap();
        drop(b);
        let buf = n.buf(LEN, 0x5a);
        let mr = n.mr(buf, LEN, Access::all_rw());
        let wr = if read {
            SendWr::read(1, sge(&mr, buf, 64), buf.raw(), mr.rkey())
        } else {
            SendWr::write(1, sge(&mr, buf, 64), buf.raw(), mr.rkey())
        };
        a.post_send(&[wr]).unwrap();
        let w = wc(&acq);
        assert_eq!((w.wr_id, w.status), (1, WcStatus::RetryExcErr));
        assert_eq!(a.state(), QpState::Error);
        a.post_send(&[SendWr::send(2, sge(&mr, buf, 8))]).unwrap();
        assert_eq!(wc(&acq).status, WcStatus::WrFlushErr);
        assert_eq!(n.read(buf, 64), vec![0x5a; 64]);
    }
}

// ---- REM_OP_ERR ---------------------------------------------------------------------------

#[test]
fn rem_op_err_receive_with_bad_lkey() {
    // Receive SGEs the responder cannot write: unknown key, another PD's MR, an MR without
    // LOCAL_WRITE, a range past the end of the MR.
    for case in 0..4 {
        let f = fx();
        let pd2 = f.n.ctx.alloc_pd();
        let other = pd2.reg_mr(&f.n.aspace, f.dst, LEN, Access::all_rw()).unwrap();
        let ro = f.n.mr(f.dst, LEN, Access::REMOTE_READ);
        let bad = [
            Sge { addr: f.dst.raw(), length: 64, lkey: Lkey(BOGUS_KEY) },
            sge(&other, f.dst, 64),
            sge(&ro, f.dst, 64),
            Sge { addr: f.dst.raw() + LEN - 8, length: 64, lkey: f.dmr.lkey() },
        ][case];
        f.b.post_recv(&[RecvWr { wr_id: 50, sg_list: vec![bad] }]).unwrap();
        f.fails_remotely(SendWr::send(1, f.sge_src(0, 64)), WcStatus::RemOpErr);
        let r = f.b_wc();
        assert_eq!(
            (r.wr_id, r.status, r.opcode),
            (50, WcStatus::LocProtErr, WcOpcode::Recv),
            "case {case}"
        );
        f.dst_untouched();
    }
}

// ---- Completion rules ---------------------------------------------------------------------

#[test]
fn unsignaled_success_is_silent_errors_are_not() {
    let f = fx();
    let w = |id, off| SendWr::write(id, f.sge_src(0, 64), f.dst.raw() + off, f.dmr.rkey());
    f.a.post_send(&[w(1, 0).unsignaled(), w(2, 64).unsignaled(), w(3, 128)]).unwrap();
    // Work requests complete in order: when 3 is there, 1 and 2 would be before it.
    let c = wc(&f.acq);
    assert_eq!((c.wr_id, c.status), (3, WcStatus::Success));
    assert!(f.acq.poll_one().is_none());
    assert_eq!(f.n.read(f.dst, 192), vec![0xa5; 192]);
    let info = f.a.info();
    assert_eq!((info.posted, info.completed), (3, 3));
    // An unsignaled failure completes; so do the unsignaled requests it flushes.
    let bad = SendWr::write(4, f.sge_src(0, 64), f.dst.raw(), Rkey(BOGUS_KEY)).unsignaled();
    f.a.post_send(&[bad, w(5, 0).unsignaled(), w(6, 0).unsignaled()]).unwrap();
    let got: Vec<(u64, WcStatus)> =
        (0..3).map(|_| wc(&f.acq)).map(|c| (c.wr_id, c.status)).collect();
    assert_eq!(
        got,
        [(4, WcStatus::RemAccessErr), (5, WcStatus::WrFlushErr), (6, WcStatus::WrFlushErr)]
    );
    f.responder_broken();
}

#[test]
fn error_flushes_the_rest_of_the_batch_and_the_receive_queue() {
    let f = fx();
    f.a.post_recv(&[
        RecvWr { wr_id: 20, sg_list: vec![f.sge_src(4096, 64)] },
        RecvWr { wr_id: 21, sg_list: vec![f.sge_src(8192, 64)] },
    ])
    .unwrap();
    let bad = SendWr::write(1, f.sge_src(0, 64), f.dst.raw(), Rkey(BOGUS_KEY));
    f.a.post_send(&[f.good_write(0), bad, f.good_write(2), f.good_write(3)]).unwrap();
    let got: Vec<(u64, WcStatus, WcOpcode)> =
        (0..6).map(|_| wc(&f.acq)).map(|c| (c.wr_id, c.status, c.opcode)).collect();
    let (sends, recvs): (Vec<_>, Vec<_>) = got.into_iter().partition(|c| c.2 != WcOpcode::Recv);
    assert_eq!(
        sends,
        [
            (0, WcStatus::Success, WcOpcode::RdmaWrite),
            (1, WcStatus::RemAccessErr, WcOpcode::RdmaWrite),
            (2, WcStatus::WrFlushErr, WcOpcode::RdmaWrite),
            (3, WcStatus::WrFlushErr, WcOpcode::RdmaWrite),
        ]
    );
    assert_eq!(
        recvs,
        [(20, WcStatus::WrFlushErr, WcOpcode::Recv), (21, WcStatus::WrFlushErr, WcOpcode::Recv)]
    );
    // Receives posted in ERR are flushed at once.
    f.a.post_recv(&[RecvWr { wr_id: 22, sg_list: vec![f.sge_src(0, 8)] }]).unwrap();
    let c = wc(&f.acq);
    assert_eq!((c.wr_id, c.status, c.opcode), (22, WcStatus::WrFlushErr, WcOpcode::Recv));
}

#[test]
fn scatter_gather_on_both_sides() {
    let f = fx();
    let pat = |len: usize, seed: u8| -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    };
    let src2 = f.n.buf(LEN, 0);
    let smr2 = f.n.mr(src2, LEN, Access::all_rw());
    f.n.aspace.write(f.src, &pat(LEN as usize, 1)).unwrap();
    f.n.aspace.write(src2, &pat(LEN as usize, 101)).unwrap();
    // Gather: 100 bytes at src+10, a zero-length SGE, 5000 bytes of the second MR at +3000
    // (crossing pages), 1 byte at src+LEN-1.
    let gather = vec![
        f.sge_src(10, 100),
        f.sge_src(500, 0),
        sge(&smr2, at(src2, 3000), 5000),
        f.sge_src(LEN - 1, 1),
    ];
    let mut want = pat(LEN as usize, 1)[10..110].to_vec();
    want.extend_from_slice(&pat(LEN as usize, 101)[3000..8000]);
    want.push(pat(LEN as usize, 1)[LEN as usize - 1]);
    let total = want.len();
    let mut wr = SendWr::write(1, gather[0], f.dst.raw() + 7, f.dmr.rkey());
    wr.sg_list = gather.clone();
    f.a.post_send(&[wr]).unwrap();
    let c = wc(&f.acq);
    assert_eq!((c.status, c.byte_len as usize), (WcStatus::Success, total));
    same(&f.n.read(at(f.dst, 7), total), &want, "WRITE gathered");
    assert_eq!(f.n.read(f.dst, 7), vec![0; 7]);
    assert_eq!(f.n.read(at(f.dst, 7 + total as u64), 16), vec![0; 16]);

    // Scatter a READ of those bytes back into three pieces of a third MR.
    let back = f.n.buf(LEN, 0);
    let bmr = f.n.mr(back, LEN, Access::all_rw());
    let pieces = [(0u64, 3usize), (4090, 4000), (9000, total - 4003)];
    let mut rd = SendWr::read(2, f.sge_src(0, 1), f.dst.raw() + 7, f.dmr.rkey());
    rd.sg_list = pieces.iter().map(|&(o, l)| sge(&bmr, at(back, o), l as u32)).collect();
    f.a.post_send(&[rd]).unwrap();
    let c = wc(&f.acq);
    assert_eq!((c.status, c.byte_len as usize), (WcStatus::Success, total));
    let got: Vec<u8> = pieces.iter().flat_map(|&(o, l)| f.n.read(at(back, o), l)).collect();
    same(&got, &want, "READ scattered");
    assert_eq!(f.n.read(at(back, 3), 4087), vec![0; 4087]);

    // SEND the gather list into a receive of three differently sized SGEs.
    f.n.aspace.write(f.dst, &vec![0; LEN as usize]).unwrap();
    let recv = vec![f.sge_dst(0, 10), f.sge_dst(100, 1000), f.sge_dst(4000, 8000)];
    f.b.post_recv(&[RecvWr { wr_id: 30, sg_list: recv }]).unwrap();
    let mut s = SendWr::send(3, gather[0]).with_imm(0xfeed);
    s.sg_list = gather;
    f.a.post_send(&[s]).unwrap();
    let c = wc(&f.acq);
    assert_eq!((c.wr_id, c.status, c.byte_len as usize), (3, WcStatus::Success, total));
    let r = wc(&f.bcq);
    assert_eq!(
        (r.wr_id, r.status, r.byte_len as usize, r.imm, r.opcode),
        (30, WcStatus::Success, total, Some(0xfeed), WcOpcode::Recv)
    );
    let mut got = f.n.read(f.dst, 10);
    got.extend(f.n.read(at(f.dst, 100), 1000));
    got.extend(f.n.read(at(f.dst, 4000), total - 1010));
    same(&got, &want, "SEND scattered into the receive");
    assert_eq!(f.n.read(at(f.dst, 10), 90), vec![0; 90]);
}

#[test]
fn inline_data_needs_no_lkey() {
    let f = fx();
    let data = b"inline: carried in the work request".to_vec();
    let no_mr = Sge { addr: 0, length: data.len() as u32, lkey: Lkey(0) };
    let write = SendWr {
        inline_data: Some(data.clone()),
        ..SendWr::write(1, no_mr, f.dst.raw() + 100, f.dmr.rkey())
    };
    f.a.post_send(&[write]).unwrap();
    let c = wc(&f.acq);
    assert_eq!((c.wr_id, c.status, c.byte_len as usize), (1, WcStatus::Success, data.len()));
    assert_eq!(f.n.read(at(f.dst, 100), data.len()), data);

    f.b.post_recv(&[RecvWr { wr_id: 40, sg_list: vec![f.sge_dst(1000, 100)] }]).unwrap();
    let send = SendWr { inline_data: Some(data.clone()), ..SendWr::send(2, no_mr) };
    f.a.post_send(&[send]).unwrap();
    assert_eq!(wc(&f.acq).status, WcStatus::Success);
    let r = wc(&f.bcq);
    assert_eq!((r.wr_id, r.status, r.byte_len as usize), (40, WcStatus::Success, data.len()));
    assert_eq!(f.n.read(at(f.dst, 1000), data.len()), data);

    // Inline data beyond the QP's cap is refused at post time.
    let cap = f.a.caps().max_inline_data as usize;
    let big = SendWr { inline_data: Some(vec![1; cap + 1]), ..SendWr::send(3, no_mr) };
    let e = f.a.post_send(&[big]).unwrap_err();
    assert_eq!(e.errno(), Errno::EINVAL, "{e}");
    assert_eq!(f.a.state(), QpState::Rts);
}

/// Two initiators `a[i]` connected to two responders `b[i]` that share one SRQ (depth 4);
/// `src` holds "from a1." and "from a2.".
struct SrqFx {
    n: Node,
    srq: SharedReceiveQueue,
    acq: CompletionQueue,
    bcq: CompletionQueue,
    a: [QueuePair; 2],
    b: [QueuePair; 2],
    src: VirtAddr,
    smr: MemoryRegion,
    dst: VirtAddr,
    dmr: MemoryRegion,
}

fn srq_fx() -> SrqFx {
    let n = node(32);
    let srq = n.pd.create_srq(4).unwrap();
    let (acq, bcq) = (n.cq(), n.cq());
    let mk = |cq: &CompletionQueue, srq: Option<SharedReceiveQueue>| {
        let (send_cq, recv_cq, caps) = (cq.clone(), cq.clone(), QpCaps::default());
        n.pd.create_qp(QpInitAttr { send_cq, recv_cq, srq, caps }).unwrap()
    };
    let a = [mk(&acq, None), mk(&acq, None)];
    let b = [mk(&bcq, Some(srq.clone())), mk(&bcq, Some(srq.clone()))];
    for i in 0..2 {
        a[i].connect_local(&b[i], Access::all_rw()).unwrap();
    }
    let (src, dst) = (n.buf(LEN, 0), n.buf(LEN, 0));
    n.aspace.write(src, b"from a1.from a2.").unwrap();
    let smr = n.mr(src, LEN, Access::all_rw());
    let dmr = n.mr(dst, LEN, Access::all_rw());
    SrqFx { n, srq, acq, bcq, a, b, src, smr, dst, dmr }
}

impl SrqFx {
    fn recv(&self, wr_id: u64, off: u64) -> RecvWr {
        RecvWr { wr_id, sg_list: vec![sge(&self.dmr, at(self.dst, off), 64)] }
    }
    /// `a[i]` sends its 8 bytes.
    fn send(&self, i: usize, wr_id: u64) {
        let s = sge(&self.smr, at(self.src, 8 * i as u64), 8);
        self.a[i].post_send(&[SendWr::send(wr_id, s)]).unwrap();
    }
    /// The next `N` completions of `cq` as (wr_id, status, qpn), by wr_id.
    fn next<const N: usize>(&self, cq: &CompletionQueue) -> [(u64, WcStatus, Qpn); N] {
        let mut got = [(); N].map(|()| wc(cq)).map(|c| (c.wr_id, c.status, c.qpn));
        got.sort_by_key(|c| c.0);
        got
    }
}

#[test]
fn srq_shared_by_two_queue_pairs() {
    let f = srq_fx();
    let e = f.b[0].post_recv(&[f.recv(1, 0)]).unwrap_err();
    assert_eq!(e.errno(), Errno::EINVAL, "a QP on an SRQ has no receive queue of its own");
    f.srq.post_recv(&[f.recv(100, 0), f.recv(101, 64)]).unwrap();
    assert_eq!(f.srq.len(), 2);
    f.send(0, 1);
    f.send(1, 2);
    assert!(f.srq.is_empty());
    let (ok, a, b) =
        (WcStatus::Success, [f.a[0].qpn(), f.a[1].qpn()], [f.b[0].qpn(), f.b[1].qpn()]);
    assert_eq!(f.next(&f.acq), [(1, ok, a[0]), (2, ok, a[1])]);
    // In posting order: the first receive went to the first SEND.
    assert_eq!(f.next(&f.bcq), [(100, ok, b[0]), (101, ok, b[1])]);
    assert_eq!(f.n.read(f.dst, 8), b"from a1.");
    assert_eq!(f.n.read(at(f.dst, 64), 8), b"from a2.");
    // The SRQ's depth is a limit, and a refused batch posts nothing.
    let five: Vec<RecvWr> = (0..5).map(|i| f.recv(200 + i, 64 * i)).collect();
    assert_eq!(f.srq.post_recv(&five).unwrap_err().errno(), Errno::ENOMEM);
    assert!(f.srq.is_empty());
}

#[test]
fn srq_empty_makes_both_senders_wait() {
    // Both wait on the empty SRQ (RNR, retried for ever); each receive posted serves one.
    let f = srq_fx();
    f.send(1, 3);
    f.send(0, 4);
    assert!(f.acq.poll_one().is_none());
    f.srq.post_recv(&[f.recv(102, 128)]).unwrap();
    f.srq.post_recv(&[f.recv(103, 192)]).unwrap();
    let sends = f.next::<2>(&f.acq);
    assert_eq!(sends.map(|c| (c.0, c.1)), [(3, WcStatus::Success), (4, WcStatus::Success)]);
    let recvs = f.next::<2>(&f.bcq);
    assert_eq!(recvs.map(|c| (c.0, c.1)), [(102, WcStatus::Success), (103, WcStatus::Success)]);
    let mut qpns = recvs.map(|c| c.2);
    qpns.sort();
    let mut want = [f.b[0].qpn(), f.b[1].qpn()];
    want.sort();
    assert_eq!(qpns, want, "one receive each");
    let mut got = [f.n.read(at(f.dst, 128), 8), f.n.read(at(f.dst, 192), 8)];
    got.sort();
    assert_eq!(got, [b"from a1.".to_vec(), b"from a2.".to_vec()]);
}

#[test]
fn cq_overflow_raises_cq_err() {
    let n = node(16);
    let cq = n.ctx.create_cq(2).unwrap();
    assert_eq!(cq.depth(), 2);
    let a = n.qp(&cq);
    let b = n.qp(&cq);
    a.connect_local(&b, Access::all_rw()).unwrap();
    let buf = n.buf(LEN, 1);
    let mr = n.mr(buf, LEN, Access::all_rw());
    let w = |id| SendWr::write(id, sge(&mr, buf, 8), buf.raw() + 64, mr.rkey());
    a.post_send(&[w(1), w(2)]).unwrap();
    assert!(!cq.overflowed());
    a.post_send(&[w(3)]).unwrap();
    assert!(cq.overflowed());
    let e = expect_event(&n.ctx, EventType::CqErr, None);
    assert!(e.detail.contains("overflow"), "{e:?}");
    assert_eq!(wc(&cq).wr_id, 1);
    assert_eq!(wc(&cq).wr_id, 2);
    assert!(cq.poll_one().is_none(), "the third completion was lost");
    assert_eq!(n.ctx.create_cq(0).unwrap_err().errno(), Errno::EINVAL);
}

#[test]
fn post_send_beyond_the_queue_depth_is_enomem() {
    let n = node(16);
    let (acq, bcq) = (n.cq(), n.cq());
    let caps = QpCaps { max_send_wr: 4, ..QpCaps::default() };
    let a =
        n.pd.create_qp(QpInitAttr { send_cq: acq.clone(), recv_cq: acq.clone(), srq: None, caps })
            .unwrap();
    let b = n.qp(&bcq);
    a.connect_local(&b, Access::all_rw()).unwrap();
    let buf = n.buf(LEN, 3);
    let mr = n.mr(buf, LEN, Access::all_rw());
    let w = |id| SendWr::write(id, sge(&mr, buf, 8), buf.raw() + 4096, mr.rkey());
    let e = a.post_send(&(0..5).map(w).collect::<Vec<_>>()).unwrap_err();
    assert_eq!(e.errno(), Errno::ENOMEM, "{e}");
    assert!(acq.poll_one().is_none(), "nothing of the refused batch was posted");
    a.post_send(&(0..4).map(w).collect::<Vec<_>>()).unwrap();
    for id in 0..4 {
        let c = wc(&acq);
        assert_eq!((c.wr_id, c.status), (id, WcStatus::Success));
    }
    // A SEND waiting for a receive (RNR) keeps the queue occupied behind it.
    a.post_send(&[SendWr::send(10, sge(&mr, buf, 8))]).unwrap();
    a.post_send(&[w(11), w(12), w(13)]).unwrap();
    assert_eq!(a.info().queued, 4);
    let e = a.post_send(&[w(14)]).unwrap_err();
    assert_eq!(e.errno(), Errno::ENOMEM, "{e}");
    assert_eq!(a.state(), QpState::Rts, "a full queue is not an error of the QP");
    b.post_recv(&[RecvWr { wr_id: 50, sg_list: vec![sge(&mr, at(buf, 8192), 8)] }]).unwrap();
    for id in 10..14 {
        let c = wc(&acq);
        assert_eq!((c.wr_id, c.status), (id, WcStatus::Success));
    }
    assert_eq!(wc(&bcq).wr_id, 50);
}

#[test]
fn post_before_rts_is_einval() {
    let n = node(16);
    let cq = n.cq();
    let a = n.qp(&cq);
    let b = n.qp(&cq);
    let buf = n.buf(LEN, 0);
    let mr = n.mr(buf, LEN, Access::all_rw());
    let send = || [SendWr::send(1, sge(&mr, buf, 8))];
    let recv = || [RecvWr { wr_id: 2, sg_list: vec![sge(&mr, buf, 8)] }];
    assert_eq!(a.post_send(&send()).unwrap_err().errno(), Errno::EINVAL, "RESET");
    assert_eq!(a.post_recv(&recv()).unwrap_err().errno(), Errno::EINVAL, "RESET");
    modify_to(&a, QpAttr { qp_state: QpState::Init, ..QpAttr::default() });
    let e = a.post_send(&send()).unwrap_err();
    assert_eq!(e.errno(), Errno::EINVAL, "INIT: {e}");
    assert!(e.to_string().contains("INIT"), "{e}");
    a.post_recv(&recv()).unwrap();
    let (dest, path) = (b.qpn(), AddressHandle::Local);
    modify_to(
        &a,
        QpAttr { qp_state: QpState::Rtr, dest_qp_num: dest, ah: path, ..QpAttr::default() },
    );
    assert_eq!(a.post_send(&send()).unwrap_err().errno(), Errno::EINVAL, "RTR");
    assert!(cq.poll_one().is_none());
}

#[test]
fn registration_errors() {
    let n = node(16);
    let buf = n.buf(LEN, 0);
    let reg = |addr: VirtAddr, len: u64, access: Access| {
        n.pd.reg_mr(&n.aspace, addr, len, access).map(|_| ()).map_err(|e| e.errno())
    };
    assert_eq!(reg(buf, LEN, Access::REMOTE_WRITE), Err(Errno::EINVAL));
    assert_eq!(reg(buf, LEN, Access::REMOTE_ATOMIC), Err(Errno::EINVAL));
    assert_eq!(reg(buf, LEN, Access::REMOTE_WRITE | Access::REMOTE_READ), Err(Errno::EINVAL));
    assert_eq!(reg(buf, 0, Access::LOCAL_WRITE), Err(Errno::EINVAL));
    assert_eq!(reg(buf, 0, Access::LOCAL_WRITE | Access::ON_DEMAND), Err(Errno::EINVAL));
    assert_eq!(reg(buf, LEN, Access::REMOTE_READ), Ok(()));
    assert_eq!(reg(buf, LEN, Access::all_rw()), Ok(()));
    let gone = n.buf(LEN, 0);
    n.aspace.munmap(gone, LEN).unwrap();
    assert_eq!(reg(gone, LEN, Access::LOCAL_WRITE), Err(Errno::EFAULT));
    assert_eq!(reg(gone, LEN, Access::REMOTE_READ), Err(Errno::EFAULT));
    // Partly unmapped: the tail page is gone.
    let part = n.buf(LEN, 0);
    n.aspace.munmap(at(part, LEN - 4096), 4096).unwrap();
    assert_eq!(reg(part, LEN, Access::LOCAL_WRITE), Err(Errno::EFAULT));
    assert_eq!(reg(part, LEN - 4096, Access::LOCAL_WRITE), Ok(()));
    assert!(
        n.dev.mrs().is_empty(),
        "failed and dropped registrations leave no MR: {:?}",
        n.dev.mrs()
    );
}

// ---- Receives consumed by requests that fail ----------------------------------------------

#[test]
fn write_with_imm_to_bad_rkey_completes_the_consumed_receive() {
    // Every posted work request completes exactly once, in error or flushed.
    let f = fx();
    f.b.post_recv(&[RecvWr { wr_id: 50, sg_list: vec![f.sge_dst(0, 64)] }]).unwrap();
    let wr = SendWr::write(1, f.sge_src(0, 64), f.dst.raw(), Rkey(BOGUS_KEY)).with_imm(3);
    f.fails_remotely(wr, WcStatus::RemAccessErr);
    let r = f.b_next().expect("the receive the WRITE_WITH_IMM consumed completes");
    assert_eq!(r.wr_id, 50);
    assert_ne!(r.status, WcStatus::Success);
    f.dst_untouched();
}

#[test]
fn send_into_revoked_receive_buffer_is_rem_op_err() {
    let f = fx();
    f.b.post_recv(&[RecvWr { wr_id: 50, sg_list: vec![f.sge_dst(0, 64)] }]).unwrap();
    f.dmr.revoke("test: responder's receive buffer revoked");
    f.fails_remotely(SendWr::send(1, f.sge_src(0, 64)), WcStatus::RemOpErr);
    let r = f.b_next().expect("the receive completes");
    assert_eq!((r.wr_id, r.status), (50, WcStatus::LocProtErr));
    f.dst_untouched();
}

#[test]
fn send_from_revoked_mr_leaves_the_target_receive_posted() {
    let f = fx();
    f.b.post_recv(&[RecvWr { wr_id: 50, sg_list: vec![f.sge_dst(0, 64)] }]).unwrap();
    f.smr.revoke("test: initiator's source revoked");
    f.fails_locally(SendWr::send(1, f.sge_src(0, 64)), WcStatus::LocProtErr);
    // The receive is still there: flushing the responder returns it.
    f.b.modify(&QpAttr { qp_state: QpState::Error, ..QpAttr::default() }, QpAttrMask::STATE)
        .unwrap();
    let r = f.bcq.next(T).expect("the receive is flushed");
    assert_eq!((r.wr_id, r.status), (50, WcStatus::WrFlushErr));
}

#[test]
fn rnr_waiting_sender_fails_when_the_target_stops_receiving() {
    for to in [QpState::Error, QpState::Reset] {
        let f = fx_rnr(7);
        f.a.post_send(&[SendWr::send(1, f.sge_src(0, 64))]).unwrap();
        assert!(f.acq.poll_one().is_none(), "waiting for a receive");
        f.b.modify(&QpAttr { qp_state: to, ..QpAttr::default() }, QpAttrMask::STATE).unwrap();
        let w = f.acq.next(T).expect("the waiting SEND completes once its target stops");
        assert_eq!((w.wr_id, w.status), (1, WcStatus::RetryExcErr));
        assert_eq!(f.a.state(), QpState::Error);
    }
}

/// Over TCP a failed request is followed by WR_FLUSH_ERR for every request behind it, as on
/// IB: not by whatever the (now broken) responder answers to the requests already on the wire.
#[test]
fn tcp_error_flushes_the_requests_behind_it() {
    let server = node(32);
    let target = server.buf(64 * 1024, 0);
    let tmr = server.mr(target, 64 * 1024, Access::all_rw());
    let listener = server.dev.listen("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let scq = server.cq();
    let spd = server.pd.clone();
    let acceptor = std::thread::spawn(move || {
        let init =
            QpInitAttr { send_cq: scq.clone(), recv_cq: scq, srq: None, caps: QpCaps::default() };
        listener.accept(&spd, init, Access::all_rw(), &[], T).map(|(qp, _)| qp)
    });
    let client = node(32);
    let src = client.buf(4096, 0x42);
    let smr = client.mr(src, 4096, Access::all_rw());
    let cq = client.cq();
    let init =
        QpInitAttr { send_cq: cq.clone(), recv_cq: cq.clone(), srq: None, caps: QpCaps::default() };
    let (qp, _) =
        client.pd.connect(&format!("127.0.0.1:{port}"), init, Access::empty(), &[], T).unwrap();
    let _server_qp = acceptor.join().unwrap().unwrap();
    // 4 good writes, one beyond the MR, 20 good ones behind it: all posted at once.
    let wrs: Vec<SendWr> = (0..25u64)
        .map(|i| {
            let at = if i == 4 { target.raw() + 64 * 1024 } else { target.raw() + i * 256 };
            SendWr::write(i, sge(&smr, src, 256), at, tmr.rkey())
        })
        .collect();
    qp.post_send(&wrs).unwrap();
    for i in 0..25u64 {
        let w = wc(&cq);
        let want = match i {
            0..4 => WcStatus::Success,
            4 => WcStatus::RemAccessErr,
            _ => WcStatus::WrFlushErr,
        };
        assert_eq!((w.wr_id, w.status), (i, want));
    }
    assert_eq!(qp.state(), QpState::Error);
    assert!(cq.poll_one().is_none());
}
