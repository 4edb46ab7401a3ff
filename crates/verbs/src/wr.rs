//! Work requests and completions.

use crate::types::{Lkey, Opcode, Qpn, Rkey, WcStatus};

/// A scatter/gather element: `length` bytes at virtual address `addr` of the MR named by
/// `lkey`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Sge {
    /// Virtual address (inside the MR).
    pub addr: u64,
    /// Bytes.
    pub length: u32,
    /// The MR.
    pub lkey: Lkey,
}

/// A send-queue work request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendWr {
    /// Returned in the completion.
    pub wr_id: u64,
    /// Operation.
    pub opcode: Opcode,
    /// Local buffers (gathered for WRITE/SEND; scattered into for READ; one 8-byte element
    /// for atomics).
    pub sg_list: Vec<Sge>,
    /// Target virtual address (WRITE, READ, atomics).
    pub remote_addr: u64,
    /// Target MR.
    pub rkey: Rkey,
    /// Immediate data (WRITE_WITH_IMM, SEND_WITH_IMM).
    pub imm: u32,
    /// Compare value (CAS) or addend (FAA).
    pub compare_add: u64,
    /// Swap value (CAS).
    pub swap: u64,
    /// Generate a completion on success (errors always complete).
    pub signaled: bool,
    /// Data carried in the request itself (copied at post; lkeys not checked), ≤ max_inline.
    pub inline_data: Option<Vec<u8>>,
}

impl SendWr {
    /// An RDMA WRITE of `sge` to `remote_addr` of `rkey`.
    pub fn write(wr_id: u64, sge: Sge, remote_addr: u64, rkey: Rkey) -> SendWr {
        SendWr {
            wr_id,
            opcode: Opcode::Write,
            sg_list: vec![sge],
            remote_addr,
            rkey,
            imm: 0,
            compare_add: 0,
            swap: 0,
            signaled: true,
            inline_data: None,
        }
    }
    /// An RDMA READ of `remote_addr` of `rkey` into `sge`.
    pub fn read(wr_id: u64, sge: Sge, remote_addr: u64, rkey: Rkey) -> SendWr {
        SendWr { opcode: Opcode::Read, ..SendWr::write(wr_id, sge, remote_addr, rkey) }
    }
    /// A SEND of `sge`.
    pub fn send(wr_id: u64, sge: Sge) -> SendWr {
        SendWr { opcode: Opcode::Send, ..SendWr::write(wr_id, sge, 0, Rkey(0)) }
    }
    /// An atomic compare-and-swap; the old value lands in `sge` (8 bytes).
    pub fn compare_swap(
        wr_id: u64,
        sge: Sge,
        remote_addr: u64,
        rkey: Rkey,
        compare: u64,
        swap: u64,
    ) -> SendWr {
        SendWr {
            opcode: Opcode::CompareSwap,
            compare_add: compare,
            swap,
            ..SendWr::write(wr_id, sge, remote_addr, rkey)
        }
    }
    /// An atomic fetch-and-add; the old value lands in `sge` (8 bytes).
    pub fn fetch_add(wr_id: u64, sge: Sge, remote_addr: u64, rkey: Rkey, add: u64) -> SendWr {
        SendWr {
            opcode: Opcode::FetchAdd,
            compare_add: add,
            ..SendWr::write(wr_id, sge, remote_addr, rkey)
        }
    }
    /// With immediate data (turns WRITE into WRITE_WITH_IMM and SEND into SEND_WITH_IMM).
    pub fn with_imm(mut self, imm: u32) -> SendWr {
        self.imm = imm;
        self.opcode = match self.opcode {
            Opcode::Write => Opcode::WriteWithImm,
            Opcode::Send => Opcode::SendWithImm,
            o => o,
        };
        self
    }
    /// Unsignaled: no completion on success.
    pub fn unsignaled(mut self) -> SendWr {
        self.signaled = false;
        self
    }
    /// Total bytes of the local side.
    pub fn length(&self) -> u64 {
        match &self.inline_data {
            Some(d) => d.len() as u64,
            None => self.sg_list.iter().map(|s| u64::from(s.length)).sum(),
        }
    }
}

/// A receive-queue work request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecvWr {
    /// Returned in the completion.
    pub wr_id: u64,
    /// Buffers the incoming message is scattered into.
    pub sg_list: Vec<Sge>,
}

/// Completion opcodes (`enum ibv_wc_opcode`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum WcOpcode {
    Send,
    RdmaWrite,
    RdmaRead,
    CompSwap,
    FetchAdd,
    Recv,
    RecvRdmaWithImm,
}

impl WcOpcode {
    /// The `enum ibv_wc_opcode` value.
    pub fn code(self) -> u8 {
        match self {
            WcOpcode::Send => 0,
            WcOpcode::RdmaWrite => 1,
            WcOpcode::RdmaRead => 2,
            WcOpcode::CompSwap => 3,
            WcOpcode::FetchAdd => 4,
            WcOpcode::Recv => 128,
            WcOpcode::RecvRdmaWithImm => 129,
        }
    }
    /// From the `enum ibv_wc_opcode` value.
    pub fn from_code(v: u8) -> Option<WcOpcode> {
        [
            WcOpcode::Send,
            WcOpcode::RdmaWrite,
            WcOpcode::RdmaRead,
            WcOpcode::CompSwap,
            WcOpcode::FetchAdd,
            WcOpcode::Recv,
            WcOpcode::RecvRdmaWithImm,
        ]
        .into_iter()
        .find(|o| o.code() == v)
    }
    /// The completion opcode of a work request's opcode.
    pub fn of(op: Opcode) -> WcOpcode {
        match op {
            Opcode::Write | Opcode::WriteWithImm => WcOpcode::RdmaWrite,
            Opcode::Send | Opcode::SendWithImm => WcOpcode::Send,
            Opcode::Read => WcOpcode::RdmaRead,
            Opcode::CompareSwap => WcOpcode::CompSwap,
            Opcode::FetchAdd => WcOpcode::FetchAdd,
        }
    }
}

/// A work completion.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct WorkCompletion {
    /// From the work request.
    pub wr_id: u64,
    /// Outcome.
    pub status: WcStatus,
    /// What completed.
    pub opcode: WcOpcode,
    /// Bytes transferred (receives: bytes received).
    pub byte_len: u32,
    /// Immediate data of a received WITH_IMM operation.
    pub imm: Option<u32>,
    /// The local QP.
    pub qpn: Qpn,
}
