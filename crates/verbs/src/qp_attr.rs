//! The checks and the application of `ibv_modify_qp` attributes (the transition table in
//! `types.rs` decides which may be given).

use crate::limits::{MAX_RD_ATOMIC, PHYS_PORTS, PKEY_TABLE_LEN};
use crate::qp::QpAttr;
use crate::types::QpAttrMask;

/// Path MTUs (`enum ibv_mtu`).
const PATH_MTUS: [u32; 5] = [256, 512, 1024, 2048, 4096];

/// Checks the values of the given attributes against the device (as rxe_qp_chk_attr does):
/// a value the device cannot honour is EINVAL, not silently clamped.
pub(crate) fn check_values(a: &QpAttr, given: QpAttrMask) -> Result<(), String> {
    let has = |m: QpAttrMask| given.contains(m);
    if has(QpAttrMask::PORT) && !(1..=PHYS_PORTS).contains(&a.port_num) {
        return Err(format!("port {}: the device's ports are 1..={PHYS_PORTS}", a.port_num));
    }
    if has(QpAttrMask::PKEY_INDEX) && a.pkey_index >= PKEY_TABLE_LEN {
        return Err(format!("P_Key index {} beyond the table of {PKEY_TABLE_LEN}", a.pkey_index));
    }
    if has(QpAttrMask::PATH_MTU) && !PATH_MTUS.contains(&a.path_mtu) {
        return Err(format!("path MTU {} is not one of {PATH_MTUS:?}", a.path_mtu));
    }
    for (bit, name, v) in [
        (QpAttrMask::MAX_QP_RD_ATOMIC, "max_rd_atomic", a.max_rd_atomic),
        (QpAttrMask::MAX_DEST_RD_ATOMIC, "max_dest_rd_atomic", a.max_dest_rd_atomic),
    ] {
        if has(bit) && u32::from(v) > MAX_RD_ATOMIC {
            return Err(format!("{name} {v} beyond the device's {MAX_RD_ATOMIC}"));
        }
    }
    // IB header fields: 3-bit retry counters, 5-bit timer codes.
    for (bit, name, v, max) in [
        (QpAttrMask::RETRY_CNT, "retry_cnt", a.retry_cnt, 7),
        (QpAttrMask::RNR_RETRY, "rnr_retry", a.rnr_retry, 7),
        (QpAttrMask::TIMEOUT, "timeout", a.timeout, 31),
        (QpAttrMask::MIN_RNR_TIMER, "min_rnr_timer", a.min_rnr_timer, 31),
    ] {
        if has(bit) && v > max {
            return Err(format!("{name} {v} beyond {max}"));
        }
    }
    Ok(())
}

/// Stores the attributes the mask gives (the table decided which may be given), and only
/// those.
pub(crate) fn apply(c: &mut QpAttr, a: &QpAttr, given: QpAttrMask) {
    let has = |m: QpAttrMask| given.contains(m);
    if has(QpAttrMask::ACCESS_FLAGS) {
        c.qp_access_flags = a.qp_access_flags;
    }
    if has(QpAttrMask::PKEY_INDEX) {
        c.pkey_index = a.pkey_index;
    }
    if has(QpAttrMask::PORT) {
        c.port_num = a.port_num;
    }
    if has(QpAttrMask::AV) {
        c.ah = a.ah.clone();
    }
    if has(QpAttrMask::PATH_MTU) {
        c.path_mtu = a.path_mtu;
    }
    if has(QpAttrMask::TIMEOUT) {
        c.timeout = a.timeout;
    }
    if has(QpAttrMask::RETRY_CNT) {
        c.retry_cnt = a.retry_cnt;
    }
    if has(QpAttrMask::RNR_RETRY) {
        c.rnr_retry = a.rnr_retry;
    }
    if has(QpAttrMask::RQ_PSN) {
        c.rq_psn = a.rq_psn;
    }
    if has(QpAttrMask::MAX_QP_RD_ATOMIC) {
        c.max_rd_atomic = a.max_rd_atomic;
    }
    if has(QpAttrMask::MIN_RNR_TIMER) {
        c.min_rnr_timer = a.min_rnr_timer;
    }
    if has(QpAttrMask::SQ_PSN) {
        c.sq_psn = a.sq_psn;
    }
    if has(QpAttrMask::MAX_DEST_RD_ATOMIC) {
        c.max_dest_rd_atomic = a.max_dest_rd_atomic;
    }
    if has(QpAttrMask::DEST_QPN) {
        c.dest_qp_num = a.dest_qp_num;
    }
}
