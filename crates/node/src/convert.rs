//! Verbs values to and from their wire form (both sides of the socket use these).

use pinwheel_mm::Errno;
use pinwheel_verbs::{
    AsyncEvent, EventType, Lkey, Opcode, Qpn, RecvWr, Rkey, SendWr, Sge, WcOpcode, WcStatus,
    WorkCompletion,
};

use crate::proto::{WireError, WireEvent, WireRecvWr, WireSendWr, WireSge, WireWc};

fn sge_to(s: &Sge) -> WireSge {
    WireSge { addr: s.addr, length: s.length, lkey: s.lkey.0 }
}
fn sge_from(s: &WireSge) -> Sge {
    Sge { addr: s.addr, length: s.length, lkey: Lkey(s.lkey) }
}

/// A send work request on the wire.
pub fn send_wr_to_wire(wr: &SendWr) -> WireSendWr {
    WireSendWr {
        wr_id: wr.wr_id,
        opcode: wr.opcode.code(),
        sg_list: wr.sg_list.iter().map(sge_to).collect(),
        remote_addr: wr.remote_addr,
        rkey: wr.rkey.0,
        imm: wr.imm,
        compare_add: wr.compare_add,
        swap: wr.swap,
        signaled: wr.signaled,
        inline_data: wr.inline_data.clone(),
    }
}

/// A send work request from the wire (an unknown opcode is `EINVAL`).
pub fn send_wr_from_wire(w: WireSendWr) -> Result<SendWr, WireError> {
    let opcode = Opcode::from_code(w.opcode).ok_or_else(|| {
        WireError::new(Errno::EINVAL, format!("work request {}: opcode {}", w.wr_id, w.opcode))
    })?;
    Ok(SendWr {
        wr_id: w.wr_id,
        opcode,
        sg_list: w.sg_list.iter().map(sge_from).collect(),
        remote_addr: w.remote_addr,
        rkey: Rkey(w.rkey),
        imm: w.imm,
        compare_add: w.compare_add,
        swap: w.swap,
        signaled: w.signaled,
        inline_data: w.inline_data,
    })
}

/// A receive work request on the wire.
pub fn recv_wr_to_wire(wr: &RecvWr) -> WireRecvWr {
    WireRecvWr { wr_id: wr.wr_id, sg_list: wr.sg_list.iter().map(sge_to).collect() }
}

/// A receive work request from the wire.
pub fn recv_wr_from_wire(w: &WireRecvWr) -> RecvWr {
    RecvWr { wr_id: w.wr_id, sg_list: w.sg_list.iter().map(sge_from).collect() }
}

/// A completion on the wire.
pub fn wc_to_wire(wc: &WorkCompletion) -> WireWc {
    WireWc {
        wr_id: wc.wr_id,
        status: wc.status as u8,
        opcode: wc.opcode.code(),
        byte_len: wc.byte_len,
        imm: wc.imm,
        qpn: wc.qpn.0,
    }
}

/// A completion from the wire (an unknown status reads as `GENERAL_ERR`).
pub fn wc_from_wire(w: &WireWc) -> WorkCompletion {
    WorkCompletion {
        wr_id: w.wr_id,
        status: WcStatus::from_u8(w.status).unwrap_or(WcStatus::GeneralErr),
        opcode: WcOpcode::from_code(w.opcode).unwrap_or(WcOpcode::Send),
        byte_len: w.byte_len,
        imm: w.imm,
        qpn: Qpn(w.qpn),
    }
}

/// An async event on the wire.
pub fn event_to_wire(e: &AsyncEvent) -> WireEvent {
    WireEvent {
        kind: e.kind.name().to_string(),
        mr: e.mr.map(|k| k.0),
        qpn: e.qpn.map(|q| q.0),
        lease: e.lease.map(|l| l.0),
        ino: e.ino.map(|i| i.0),
        detail: e.detail.clone(),
    }
}

/// An async event from the wire (`None` for a kind this build does not know).
pub fn event_from_wire(w: &WireEvent) -> Option<AsyncEvent> {
    Some(AsyncEvent {
        kind: EventType::from_name(&w.kind)?,
        mr: w.mr.map(Lkey),
        qpn: w.qpn.map(Qpn),
        lease: w.lease.map(pinwheel_fs::LeaseId),
        ino: w.ino.map(pinwheel_fs::Ino),
        detail: w.detail.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convert_round_trips() {
        let wr = SendWr::compare_swap(
            7,
            Sge { addr: 0x1000, length: 8, lkey: Lkey(3) },
            0x2000,
            Rkey(4),
            1,
            2,
        )
        .unsignaled();
        assert_eq!(send_wr_from_wire(send_wr_to_wire(&wr)).unwrap(), wr);
        let mut bad = send_wr_to_wire(&wr);
        bad.opcode = 77;
        assert_eq!(send_wr_from_wire(bad).unwrap_err().errno(), Errno::EINVAL);
        let wc = WorkCompletion {
            wr_id: 9,
            status: WcStatus::RemAccessErr,
            opcode: WcOpcode::RecvRdmaWithImm,
            byte_len: 5,
            imm: Some(3),
            qpn: Qpn(0x11),
        };
        assert_eq!(wc_from_wire(&wc_to_wire(&wc)), wc);
        for k in EventType::ALL {
            let e = AsyncEvent {
                kind: *k,
                mr: Some(Lkey(1)),
                qpn: None,
                lease: None,
                ino: None,
                detail: "d".into(),
            };
            assert_eq!(event_from_wire(&event_to_wire(&e)), Some(e));
        }
    }
}
