#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

// The RC QP state machine against its table (`QP_TRANSITIONS`), exhaustively.
//
// For every (from, to) with `from` reachable by software (all but SQE, which only the device
// enters), a fresh QP is driven into `from` and modified to `to` with exactly the mask the table
// requires: it succeeds iff the table has the pair. For allowed pairs, leaving any required
// attribute out fails with EINVAL naming what is "missing", and adding any attribute that is
// neither required nor optional fails with EINVAL saying it is "not allowed"; a failed modify
// changes nothing. After each successful modify `state()` and `query()` show the new state and
// the attributes given, and only those.

use common::*;
use pinwheel_mm::Errno;
use pinwheel_verbs::*;

/// Drives `qp` from RESET into `target` through the usual path (ERR: from RTS).
fn drive(qp: &QueuePair, peer: Qpn, target: QpState) {
    use QpState::*;
    let path: &[QpState] = match target {
        Reset => &[],
        Init => &[Init],
        Rtr => &[Init, Rtr],
        Rts => &[Init, Rtr, Rts],
        Sqd => &[Init, Rtr, Rts, Sqd],
        Error => &[Init, Rtr, Rts, Error],
        Sqe => panic!("SQE is entered by the device only"),
    };
    for &to in path {
        let t = transition(qp.state(), to).expect("the path follows the table");
        let attr = QpAttr {
            qp_state: to,
            qp_access_flags: Access::LOCAL_WRITE,
            dest_qp_num: peer,
            ah: AddressHandle::Local,
            ..QpAttr::default()
        };
        qp.modify(&attr, QpAttrMask::STATE | t.required).unwrap();
    }
    assert_eq!(qp.state(), target);
}

/// Attributes for a modify to `to` from `from`: every field valid, and every field the QP
/// stores different from `QpAttr::default()` (and from what `drive` sets), so `query()` shows
/// which were applied.
fn attrs(from: QpState, to: QpState, peer: Qpn) -> QpAttr {
    QpAttr {
        qp_state: to,
        cur_qp_state: from,
        qp_access_flags: Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_ATOMIC,
        pkey_index: 0,
        port_num: 1,
        path_mtu: 1024,
        dest_qp_num: peer,
        rq_psn: Psn(0x456),
        sq_psn: Psn(0x123),
        max_rd_atomic: 4,
        max_dest_rd_atomic: 8,
        min_rnr_timer: 5,
        timeout: 9,
        retry_cnt: 3,
        rnr_retry: 6,
        ah: AddressHandle::Local,
    }
}

/// The fields `query()` reports, one per mask bit that sets them, as comparable text.
fn fields(a: &QpAttr) -> Vec<(QpAttrMask, String)> {
    let ah = match a.ah {
        AddressHandle::None => "none",
        AddressHandle::Local => "local",
        AddressHandle::Remote(_) => "remote",
    };
    vec![
        (QpAttrMask::ACCESS_FLAGS, format!("{:?}", a.qp_access_flags)),
        (QpAttrMask::PKEY_INDEX, a.pkey_index.to_string()),
        (QpAttrMask::PORT, a.port_num.to_string()),
        (QpAttrMask::AV, ah.to_string()),
        (QpAttrMask::PATH_MTU, a.path_mtu.to_string()),
        (QpAttrMask::TIMEOUT, a.timeout.to_string()),
        (QpAttrMask::RETRY_CNT, a.retry_cnt.to_string()),
        (QpAttrMask::RNR_RETRY, a.rnr_retry.to_string()),
        (QpAttrMask::RQ_PSN, a.rq_psn.to_string()),
        (QpAttrMask::MAX_QP_RD_ATOMIC, a.max_rd_atomic.to_string()),
        (QpAttrMask::MIN_RNR_TIMER, a.min_rnr_timer.to_string()),
        (QpAttrMask::SQ_PSN, a.sq_psn.to_string()),
        (QpAttrMask::MAX_DEST_RD_ATOMIC, a.max_dest_rd_atomic.to_string()),
        (QpAttrMask::DEST_QPN, a.dest_qp_num.to_string()),
    ]
}

/// After a successful modify (`before`: the query before it): the fields in `check` are what
/// `given` said, the others but `skip` are unchanged (RESET: everything back to defaults).
fn check_query(
    qp: &QueuePair,
    before: &QpAttr,
    given: &QpAttr,
    (check, skip): (QpAttrMask, QpAttrMask),
    why: &str,
) {
    let now = qp.query();
    let to = given.qp_state;
    assert_eq!((qp.state(), now.qp_state), (to, to), "{why}: state");
    assert_eq!(qp.info().state, to, "{why}: info");
    if to == QpState::Reset {
        let default = fields(&QpAttr::default());
        assert_eq!(fields(&now), default, "{why}: RESET forgets every attribute");
        return;
    }
    let (now, before, given) = (fields(&now), fields(before), fields(given));
    for ((bit, n), ((_, b), (_, g))) in now.iter().zip(before.iter().zip(&given)) {
        if skip.contains(*bit) {
            continue;
        }
        if check.contains(*bit) {
            assert_eq!(n, g, "{why}: {bit:?} given");
        } else {
            assert_eq!(n, b, "{why}: {bit:?} not given, so unchanged");
        }
    }
}

/// A failed modify: EINVAL, the diagnosis contains `says`, and the QP is as it was.
fn refused(qp: &QueuePair, attr: &QpAttr, mask: QpAttrMask, says: &str, why: &str) {
    let before = fields(&qp.query());
    let from = qp.state();
    let e = qp.modify(attr, mask).expect_err(why);
    assert_eq!(e.errno(), Errno::EINVAL, "{why}: {e}");
    assert!(e.to_string().contains(says), "{why}: {e:?} should say {says:?}");
    assert_eq!(qp.state(), from, "{why}: a refused modify leaves the state");
    assert_eq!(fields(&qp.query()), before, "{why}: a refused modify changes no attribute");
}

fn states_from() -> impl Iterator<Item = QpState> {
    QpState::ALL.into_iter().filter(|s| *s != QpState::Sqe)
}

#[test]
fn every_pair_of_states_against_the_table() {
    let n = node(16);
    let cq = n.cq();
    let peer = n.qp(&cq);
    let (mut allowed, mut denied) = (0, 0);
    for from in states_from() {
        for to in QpState::ALL {
            let why = format!("{} -> {}", from.name(), to.name());
            let qp = n.qp(&cq);
            drive(&qp, peer.qpn(), from);
            let attr = attrs(from, to, peer.qpn());
            let Some(t) = transition(from, to) else {
                refused(&qp, &attr, QpAttrMask::STATE, "no transition", &why);
                denied += 1;
                continue;
            };
            for bit in t.required.iter() {
                let mask = QpAttrMask::STATE | (t.required - bit);
                refused(&qp, &attr, mask, "missing", &format!("{why} without {bit:?}"));
            }
            let extra = QpAttrMask::all() - QpAttrMask::STATE - t.required - t.optional;
            assert!(!extra.is_empty());
            for bit in extra.iter() {
                let mask = QpAttrMask::STATE | t.required | bit;
                refused(&qp, &attr, mask, "not allowed", &format!("{why} with {bit:?}"));
            }
            let before = qp.query();
            qp.modify(&attr, QpAttrMask::STATE | t.required)
                .unwrap_or_else(|e| panic!("{why}: {e}"));
            check_query(&qp, &before, &attr, (t.required, QpAttrMask::empty()), &why);
            allowed += 1;
        }
    }
    // 6 source states x 7 targets; the table's 22 pairs minus the 3 leaving SQE.
    assert_eq!((allowed, denied), (19, 42 - 19));
}

#[test]
fn optional_attributes_are_accepted_and_applied() {
    let n = node(16);
    let cq = n.cq();
    let peer = n.qp(&cq);
    for t in QP_TRANSITIONS.iter().filter(|t| t.from != QpState::Sqe) {
        let why = format!("{} -> {} with {:?}", t.from.name(), t.to.name(), t.optional);
        let qp = n.qp(&cq);
        drive(&qp, peer.qpn(), t.from);
        let attr = attrs(t.from, t.to, peer.qpn());
        let before = qp.query();
        let mask = QpAttrMask::STATE | t.required | t.optional;
        qp.modify(&attr, mask).unwrap_or_else(|e| panic!("{why}: {e}"));
        check_query(&qp, &before, &attr, (t.required | t.optional, QpAttrMask::empty()), &why);
    }
}

#[test]
fn cur_state_must_match() {
    let n = node(16);
    let cq = n.cq();
    let peer = n.qp(&cq);
    let with_cur: Vec<&Transition> = QP_TRANSITIONS
        .iter()
        .filter(|t| t.from != QpState::Sqe && t.optional.contains(QpAttrMask::CUR_STATE))
        .collect();
    assert_eq!(with_cur.len(), 3, "RTR->RTS, RTS->RTS, SQD->RTS");
    for t in with_cur {
        let qp = n.qp(&cq);
        drive(&qp, peer.qpn(), t.from);
        for wrong in QpState::ALL.into_iter().filter(|s| *s != t.from) {
            let why = format!("{} -> {} claiming {}", t.from.name(), t.to.name(), wrong.name());
            let attr = QpAttr { cur_qp_state: wrong, ..attrs(t.from, t.to, peer.qpn()) };
            let mask = QpAttrMask::STATE | t.required | QpAttrMask::CUR_STATE;
            refused(&qp, &attr, mask, "IBV_QP_CUR_STATE", &why);
        }
        let mask = QpAttrMask::STATE | t.required | QpAttrMask::CUR_STATE;
        qp.modify(&attrs(t.from, t.to, peer.qpn()), mask).unwrap();
        assert_eq!(qp.state(), t.to);
    }
}

#[test]
fn reset_to_error_is_not_a_transition() {
    let n = node(16);
    let cq = n.cq();
    let qp = n.qp(&cq);
    assert!(transition(QpState::Reset, QpState::Error).is_none());
    let attr = QpAttr { qp_state: QpState::Error, ..QpAttr::default() };
    refused(&qp, &attr, QpAttrMask::STATE, "no transition from RESET to ERR", "RESET -> ERR");
    // Into SQE, from anywhere: only the device does that.
    let peer = n.qp(&cq);
    for from in states_from() {
        let qp = n.qp(&cq);
        drive(&qp, peer.qpn(), from);
        let attr = QpAttr { qp_state: QpState::Sqe, ..QpAttr::default() };
        refused(&qp, &attr, QpAttrMask::STATE, "no transition", &format!("{from:?} -> SQE"));
    }
}

#[test]
fn modify_without_the_state_bit_is_einval() {
    let n = node(16);
    let cq = n.cq();
    let qp = n.qp(&cq);
    let attr = QpAttr { qp_state: QpState::Init, ..QpAttr::default() };
    let mask = QpAttrMask::PKEY_INDEX | QpAttrMask::PORT | QpAttrMask::ACCESS_FLAGS;
    refused(&qp, &attr, mask, "IBV_QP_STATE", "no STATE bit");
}

#[test]
fn rtr_needs_a_path_to_an_existing_qp() {
    let n = node(16);
    let cq = n.cq();
    let qp = n.qp(&cq);
    let gone = n.qp(&cq).qpn();
    drive(&qp, gone, QpState::Init);
    let mask = QpAttrMask::STATE | transition(QpState::Init, QpState::Rtr).unwrap().required;
    let peer = n.qp(&cq);
    let no_path =
        QpAttr { ah: AddressHandle::None, ..attrs(QpState::Init, QpState::Rtr, peer.qpn()) };
    refused(&qp, &no_path, mask, "names no path", "AV without a path");
    // `gone` was dropped right after creation.
    let dangling = attrs(QpState::Init, QpState::Rtr, gone);
    refused(&qp, &dangling, mask, "does not exist", "a destination QP that is gone");
    qp.modify(&attrs(QpState::Init, QpState::Rtr, peer.qpn()), mask).unwrap();
    assert_eq!(qp.query().dest_qp_num, peer.qpn());
}

#[test]
fn sqd_holds_posted_sends_until_rts() {
    let n = node(16);
    let (a, b, cq) = n.pair();
    let buf = n.buf(8192, 0x3c);
    n.aspace.write(buf, &[7; 64]).unwrap();
    let mr = n.mr(buf, 8192, Access::all_rw());
    let to = |s: QpState| QpAttr { qp_state: s, cur_qp_state: QpState::Sqd, ..QpAttr::default() };
    a.modify(&to(QpState::Sqd), QpAttrMask::STATE).unwrap();
    let w = SendWr::write(1, sge(&mr, buf, 64), buf.raw() + 4096, mr.rkey());
    a.post_send(&[w]).unwrap();
    assert_eq!(a.info().queued, 1, "SQD accepts work but does not start it");
    assert!(cq.poll_one().is_none());
    assert_eq!(n.read(buf.checked_add(4096).unwrap(), 64), vec![0x3c; 64]);
    a.modify(&to(QpState::Rts), QpAttrMask::STATE | QpAttrMask::CUR_STATE).unwrap();
    let c = wc(&cq);
    assert_eq!((c.wr_id, c.status), (1, WcStatus::Success));
    assert_eq!(a.info().queued, 0);
    assert_eq!(n.read(buf.checked_add(4096).unwrap(), 64), vec![7; 64]);
    assert_eq!(b.state(), QpState::Rts);
}

#[test]
fn reset_discards_work_without_completions_and_allows_reconnecting() {
    let n = node(16);
    let (a, b, cq) = n.pair();
    let buf = n.buf(8192, 0);
    let mr = n.mr(buf, 8192, Access::all_rw());
    let state = |s: QpState| QpAttr { qp_state: s, ..QpAttr::default() };
    // Queued in SQD, then RESET: the work request is gone, no completion (IB: the transition
    // to RESET discards the queues).
    a.modify(&state(QpState::Sqd), QpAttrMask::STATE).unwrap();
    a.post_send(&[SendWr::write(1, sge(&mr, buf, 8), buf.raw() + 64, mr.rkey())]).unwrap();
    b.post_recv(&[RecvWr { wr_id: 2, sg_list: vec![sge(&mr, buf, 8)] }]).unwrap();
    for q in [&a, &b] {
        q.modify(&state(QpState::Reset), QpAttrMask::STATE).unwrap();
        assert_eq!(q.info().queued, 0);
        assert_eq!(q.info().peer, "-");
        assert_eq!(q.query().dest_qp_num, Qpn(0));
    }
    assert!(cq.poll_one().is_none(), "RESET completes nothing");
    // ERR flushes; then RESET and a new connection work.
    a.connect_local(&b, Access::all_rw()).unwrap();
    a.modify(&state(QpState::Error), QpAttrMask::STATE).unwrap();
    a.post_send(&[SendWr::write(3, sge(&mr, buf, 8), buf.raw() + 64, mr.rkey())]).unwrap();
    assert_eq!((wc(&cq).wr_id, a.state()), (3, QpState::Error));
    for q in [&a, &b] {
        q.modify(&state(QpState::Reset), QpAttrMask::STATE).unwrap();
    }
    a.connect_local(&b, Access::all_rw()).unwrap();
    n.aspace.write(buf, b"again!!!").unwrap();
    a.post_send(&[SendWr::write(4, sge(&mr, buf, 8), buf.raw() + 64, mr.rkey())]).unwrap();
    let c = wc(&cq);
    assert_eq!((c.wr_id, c.status), (4, WcStatus::Success));
    assert_eq!(n.read(buf.checked_add(64).unwrap(), 8), b"again!!!");
}

#[test]
fn error_state_flushes_what_is_posted() {
    let n = node(16);
    let (a, _b, cq) = n.pair();
    let buf = n.buf(4096, 0);
    let mr = n.mr(buf, 4096, Access::all_rw());
    a.post_recv(&[RecvWr { wr_id: 1, sg_list: vec![sge(&mr, buf, 8)] }]).unwrap();
    a.modify(&QpAttr { qp_state: QpState::Error, ..QpAttr::default() }, QpAttrMask::STATE).unwrap();
    let c = wc(&cq);
    assert_eq!((c.wr_id, c.status, c.opcode), (1, WcStatus::WrFlushErr, WcOpcode::Recv));
    a.post_send(&[SendWr::send(2, sge(&mr, buf, 8))]).unwrap();
    a.post_recv(&[RecvWr { wr_id: 3, sg_list: vec![] }]).unwrap();
    let got = [wc(&cq), wc(&cq)].map(|c| (c.wr_id, c.status));
    assert_eq!(got, [(2, WcStatus::WrFlushErr), (3, WcStatus::WrFlushErr)]);
    // ERR -> ERR is allowed and changes nothing.
    a.modify(&QpAttr { qp_state: QpState::Error, ..QpAttr::default() }, QpAttrMask::STATE).unwrap();
    assert!(cq.poll_one().is_none());
}

#[test]
fn query_keeps_min_rnr_timer_set_at_rts() {
    let n = node(16);
    let cq = n.cq();
    let peer = n.qp(&cq);
    for from in [QpState::Rtr, QpState::Rts] {
        let qp = n.qp(&cq);
        drive(&qp, peer.qpn(), from);
        let t = transition(from, QpState::Rts).unwrap();
        let attr = QpAttr { min_rnr_timer: 21, ..attrs(from, QpState::Rts, peer.qpn()) };
        qp.modify(&attr, QpAttrMask::STATE | t.required | QpAttrMask::MIN_RNR_TIMER).unwrap();
        assert_eq!(qp.query().min_rnr_timer, 21, "{} -> RTS", from.name());
    }
}

#[test]
fn query_keeps_pkey_index() {
    let n = node(16);
    let cq = n.cq();
    let qp = n.qp(&cq);
    let t = transition(QpState::Reset, QpState::Init).unwrap();
    let attr = QpAttr { pkey_index: 3, ..attrs(QpState::Reset, QpState::Init, Qpn(0)) };
    qp.modify(&attr, QpAttrMask::STATE | t.required).unwrap();
    assert_eq!(qp.query().pkey_index, 3);
}

#[test]
fn attribute_values_beyond_the_device_are_einval() {
    let n = node(16);
    let cq = n.cq();
    let peer = n.qp(&cq);
    let over = limits::MAX_RD_ATOMIC as u8 + 1;
    let cases: [(QpState, QpAttr, &str); 7] = [
        (
            QpState::Reset,
            QpAttr { port_num: 2, ..attrs(QpState::Reset, QpState::Init, peer.qpn()) },
            "port 2",
        ),
        (
            QpState::Init,
            QpAttr { path_mtu: 1000, ..attrs(QpState::Init, QpState::Rtr, peer.qpn()) },
            "MTU 1000",
        ),
        (
            QpState::Init,
            QpAttr { path_mtu: 8192, ..attrs(QpState::Init, QpState::Rtr, peer.qpn()) },
            "MTU 8192",
        ),
        (
            QpState::Init,
            QpAttr { max_dest_rd_atomic: over, ..attrs(QpState::Init, QpState::Rtr, peer.qpn()) },
            "max_dest_rd_atomic",
        ),
        (
            QpState::Rtr,
            QpAttr { max_rd_atomic: over, ..attrs(QpState::Rtr, QpState::Rts, peer.qpn()) },
            "max_rd_atomic",
        ),
        (
            QpState::Rtr,
            QpAttr { rnr_retry: 8, ..attrs(QpState::Rtr, QpState::Rts, peer.qpn()) },
            "rnr_retry 8",
        ),
        (
            QpState::Rtr,
            QpAttr { retry_cnt: 8, ..attrs(QpState::Rtr, QpState::Rts, peer.qpn()) },
            "retry_cnt 8",
        ),
    ];
    let mut accepted = Vec::new();
    for (from, attr, what) in cases {
        let qp = n.qp(&cq);
        drive(&qp, peer.qpn(), from);
        let t = transition(from, attr.qp_state).unwrap();
        match qp.modify(&attr, QpAttrMask::STATE | t.required) {
            Ok(()) => accepted.push(what),
            Err(e) => assert_eq!(e.errno(), Errno::EINVAL, "{what}: {e}"),
        }
    }
    assert!(accepted.is_empty(), "accepted: {accepted:?}");
}
