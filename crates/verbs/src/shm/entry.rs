//! The entries of the shared rings, as words: work completions (CQ rings, 32-byte slots) and
//! receive work requests with their SGEs (receive rings). Decoding validates every field:
//! another process may have written them.

use crate::types::{Lkey, Qpn, WcStatus};
use crate::wr::{RecvWr, Sge, WcOpcode, WorkCompletion};

/// Words of a completion (the slot's sequence word makes 32 bytes).
pub const CQE_WORDS: u64 = 3;

const HAS_IMM: u64 = 1 << 16;

/// A completion as ring words: `wr_id`; `status | opcode << 8 | has_imm << 16 | byte_len << 32`;
/// `imm | qpn << 32`.
pub fn cqe_encode(wc: &WorkCompletion) -> [u64; 3] {
    let flags = if wc.imm.is_some() { HAS_IMM } else { 0 };
    [
        wc.wr_id,
        wc.status as u64 | u64::from(wc.opcode.code()) << 8 | flags | u64::from(wc.byte_len) << 32,
        u64::from(wc.imm.unwrap_or(0)) | u64::from(wc.qpn.0) << 32,
    ]
}

/// A completion from ring words; `None` if a code is not one of ours.
pub fn cqe_decode(w: &[u64; 3]) -> Option<WorkCompletion> {
    let status = WcStatus::from_u8((w[1] & 0xff) as u8)?;
    let opcode = WcOpcode::from_code((w[1] >> 8 & 0xff) as u8)?;
    Some(WorkCompletion {
        wr_id: w[0],
        status,
        opcode,
        byte_len: (w[1] >> 32) as u32,
        imm: (w[1] & HAS_IMM != 0).then_some(w[2] as u32),
        qpn: Qpn((w[2] >> 32) as u32),
    })
}

/// Words of a receive with room for `max_sge` SGEs: `wr_id`, the SGE count, then per SGE its
/// address and `length | lkey << 32`.
pub fn wqe_words(max_sge: u32) -> u64 {
    2 + 2 * u64::from(max_sge)
}

/// Encodes a receive into `out` (its SGEs must fit the ring's `max_sge`: checked at post).
pub fn wqe_encode(wr: &RecvWr, out: &mut Vec<u64>) {
    out.clear();
    out.push(wr.wr_id);
    out.push(wr.sg_list.len() as u64);
    for s in &wr.sg_list {
        out.push(s.addr);
        out.push(u64::from(s.length) | u64::from(s.lkey.0) << 32);
    }
}

/// A receive from ring words of a ring whose receives have at most `max_sge` SGEs; `None` if
/// the count is out of range.
pub fn wqe_decode(w: &[u64], max_sge: u32) -> Option<RecvWr> {
    let n = usize::try_from(*w.get(1)?).ok()?;
    if n > max_sge as usize || w.len() < 2 + 2 * n {
        return None;
    }
    let sg_list = (0..n)
        .map(|i| {
            let (a, b) = (w[2 + 2 * i], w[3 + 2 * i]);
            Sge { addr: a, length: b as u32, lkey: Lkey((b >> 32) as u32) }
        })
        .collect();
    Some(RecvWr { wr_id: w[0], sg_list })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips_and_rejects_garbage() {
        let wc = WorkCompletion {
            wr_id: u64::MAX - 3,
            status: WcStatus::RemAccessErr,
            opcode: WcOpcode::RecvRdmaWithImm,
            byte_len: 0xdead_beef,
            imm: Some(0x1234_5678),
            qpn: Qpn(0xab_cdef),
        };
        assert_eq!(cqe_decode(&cqe_encode(&wc)), Some(wc));
        let no_imm = WorkCompletion { imm: None, ..wc };
        assert_eq!(cqe_decode(&cqe_encode(&no_imm)), Some(no_imm));
        assert_eq!(cqe_decode(&[0, 99, 0]), None, "unknown status");
        assert_eq!(cqe_decode(&[0, 7 << 8, 0]), None, "unknown opcode");

        let r = RecvWr {
            wr_id: 9,
            sg_list: vec![
                Sge { addr: 0x1000, length: 64, lkey: Lkey(0x105) },
                Sge { addr: u64::MAX, length: u32::MAX, lkey: Lkey(u32::MAX) },
            ],
        };
        let mut w = Vec::new();
        wqe_encode(&r, &mut w);
        w.resize(wqe_words(4) as usize, 0);
        assert_eq!(wqe_decode(&w, 4), Some(r.clone()));
        assert_eq!(wqe_decode(&w, 1), None, "more SGEs than the ring allows");
        w[1] = u64::MAX;
        assert_eq!(wqe_decode(&w, 4), None);
        assert_eq!(wqe_decode(&[], 4), None);
    }
}
