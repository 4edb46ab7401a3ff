//! The verbs vocabulary with libibverbs' values: keys, access flags, opcodes, completion
//! statuses, QP states (the transition table is data), async event types.

use std::fmt;

macro_rules! id32 {
    ($(#[$m:meta])* $name:ident, $fmt:literal) => {
        $(#[$m])*
        #[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u32);
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, $fmt, self.0)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, $fmt, self.0)
            }
        }
    };
}

id32!(
    /// A local key: names an MR for the local side of a transfer. Index << 8 | generation.
    Lkey,
    "lkey {:#x}"
);
id32!(
    /// A remote key: names an MR to a peer. Same value as the MR's lkey.
    Rkey,
    "rkey {:#x}"
);
id32!(
    /// A queue pair number.
    Qpn,
    "qpn {:#x}"
);
id32!(
    /// A packet sequence number (24 bits on the wire).
    Psn,
    "psn {}"
);

/// An MR key: a table index and an 8-bit generation, so a stale key fails lookup.
pub(crate) fn make_key(index: u32, generation: u8) -> u32 {
    (index << 8) | u32::from(generation)
}

/// Splits a key into (index, generation).
pub(crate) fn split_key(key: u32) -> (u32, u8) {
    (key >> 8, (key & 0xff) as u8)
}

bitflags::bitflags! {
    /// `IBV_ACCESS_*`.
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
    pub struct Access: u32 {
        /// Local writes (the target of RECV, READ responses, atomics' results).
        const LOCAL_WRITE = 1;
        /// Remote RDMA WRITE.
        const REMOTE_WRITE = 1 << 1;
        /// Remote RDMA READ.
        const REMOTE_READ = 1 << 2;
        /// Remote atomics.
        const REMOTE_ATOMIC = 1 << 3;
        /// On-demand paging: no pins, translations on access.
        const ON_DEMAND = 1 << 6;
    }
}

impl Access {
    /// Read + write for everything.
    pub fn all_rw() -> Access {
        Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ | Access::REMOTE_ATOMIC
    }
    /// Flags from raw bits (unknown bits: `None`).
    pub fn from_raw(bits: u32) -> Option<Access> {
        Access::from_bits(bits)
    }
}

/// Work request opcodes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// RDMA WRITE.
    Write,
    /// RDMA WRITE with immediate data (consumes a RECV at the target).
    WriteWithImm,
    /// SEND.
    Send,
    /// SEND with immediate data.
    SendWithImm,
    /// RDMA READ.
    Read,
    /// Atomic compare-and-swap (8 bytes, aligned).
    CompareSwap,
    /// Atomic fetch-and-add (8 bytes, aligned).
    FetchAdd,
}

impl Opcode {
    /// The `enum ibv_wr_opcode` value.
    pub fn code(self) -> u8 {
        match self {
            Opcode::Write => 0,
            Opcode::WriteWithImm => 1,
            Opcode::Send => 2,
            Opcode::SendWithImm => 3,
            Opcode::Read => 4,
            Opcode::CompareSwap => 5,
            Opcode::FetchAdd => 6,
        }
    }
    /// From the `enum ibv_wr_opcode` value.
    pub fn from_code(v: u8) -> Option<Opcode> {
        [
            Opcode::Write,
            Opcode::WriteWithImm,
            Opcode::Send,
            Opcode::SendWithImm,
            Opcode::Read,
            Opcode::CompareSwap,
            Opcode::FetchAdd,
        ]
        .into_iter()
        .find(|o| o.code() == v)
    }
    /// Name as perftest and ibv print it.
    pub fn name(self) -> &'static str {
        match self {
            Opcode::Write => "RDMA_WRITE",
            Opcode::WriteWithImm => "RDMA_WRITE_WITH_IMM",
            Opcode::Send => "SEND",
            Opcode::SendWithImm => "SEND_WITH_IMM",
            Opcode::Read => "RDMA_READ",
            Opcode::CompareSwap => "ATOMIC_CMP_AND_SWP",
            Opcode::FetchAdd => "ATOMIC_FETCH_AND_ADD",
        }
    }
    /// True for READ and atomics: they return data to the initiator.
    pub fn returns_data(self) -> bool {
        matches!(self, Opcode::Read | Opcode::CompareSwap | Opcode::FetchAdd)
    }
    /// True for atomics.
    pub fn atomic(self) -> bool {
        matches!(self, Opcode::CompareSwap | Opcode::FetchAdd)
    }
    /// True if the target consumes a RECV.
    pub fn consumes_recv(self) -> bool {
        matches!(self, Opcode::Send | Opcode::SendWithImm | Opcode::WriteWithImm)
    }
}

/// `enum ibv_wc_status`, with the same numeric values.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum WcStatus {
    Success = 0,
    LocLenErr = 1,
    LocQpOpErr = 2,
    LocEecOpErr = 3,
    LocProtErr = 4,
    WrFlushErr = 5,
    MwBindErr = 6,
    BadRespErr = 7,
    LocAccessErr = 8,
    RemInvReqErr = 9,
    RemAccessErr = 10,
    RemOpErr = 11,
    RetryExcErr = 12,
    RnrRetryExcErr = 13,
    LocRddViolErr = 14,
    RemInvRdReqErr = 15,
    RemAbortErr = 16,
    InvEecnErr = 17,
    InvEecStateErr = 18,
    FatalErr = 19,
    RespTimeoutErr = 20,
    GeneralErr = 21,
}

impl WcStatus {
    /// `ibv_wc_status_str` names.
    pub fn name(self) -> &'static str {
        match self {
            WcStatus::Success => "success",
            WcStatus::LocLenErr => "local length error",
            WcStatus::LocQpOpErr => "local QP operation error",
            WcStatus::LocEecOpErr => "local EE context operation error",
            WcStatus::LocProtErr => "local protection error",
            WcStatus::WrFlushErr => "Work Request Flushed Error",
            WcStatus::MwBindErr => "memory management operation error",
            WcStatus::BadRespErr => "bad response error",
            WcStatus::LocAccessErr => "local access error",
            WcStatus::RemInvReqErr => "remote invalid request error",
            WcStatus::RemAccessErr => "remote access error",
            WcStatus::RemOpErr => "remote operation error",
            WcStatus::RetryExcErr => "transport retry counter exceeded",
            WcStatus::RnrRetryExcErr => "RNR retry counter exceeded",
            WcStatus::LocRddViolErr => "local RDD violation error",
            WcStatus::RemInvRdReqErr => "remote invalid RD request",
            WcStatus::RemAbortErr => "aborted error",
            WcStatus::InvEecnErr => "invalid EE context number",
            WcStatus::InvEecStateErr => "invalid EE context state",
            WcStatus::FatalErr => "fatal error",
            WcStatus::RespTimeoutErr => "response timeout error",
            WcStatus::GeneralErr => "general error",
        }
    }
    /// The symbolic name (`IBV_WC_REM_ACCESS_ERR` without the prefix).
    pub fn code_name(self) -> &'static str {
        match self {
            WcStatus::Success => "SUCCESS",
            WcStatus::LocLenErr => "LOC_LEN_ERR",
            WcStatus::LocQpOpErr => "LOC_QP_OP_ERR",
            WcStatus::LocEecOpErr => "LOC_EEC_OP_ERR",
            WcStatus::LocProtErr => "LOC_PROT_ERR",
            WcStatus::WrFlushErr => "WR_FLUSH_ERR",
            WcStatus::MwBindErr => "MW_BIND_ERR",
            WcStatus::BadRespErr => "BAD_RESP_ERR",
            WcStatus::LocAccessErr => "LOC_ACCESS_ERR",
            WcStatus::RemInvReqErr => "REM_INV_REQ_ERR",
            WcStatus::RemAccessErr => "REM_ACCESS_ERR",
            WcStatus::RemOpErr => "REM_OP_ERR",
            WcStatus::RetryExcErr => "RETRY_EXC_ERR",
            WcStatus::RnrRetryExcErr => "RNR_RETRY_EXC_ERR",
            WcStatus::LocRddViolErr => "LOC_RDD_VIOL_ERR",
            WcStatus::RemInvRdReqErr => "REM_INV_RD_REQ_ERR",
            WcStatus::RemAbortErr => "REM_ABORT_ERR",
            WcStatus::InvEecnErr => "INV_EECN_ERR",
            WcStatus::InvEecStateErr => "INV_EEC_STATE_ERR",
            WcStatus::FatalErr => "FATAL_ERR",
            WcStatus::RespTimeoutErr => "RESP_TIMEOUT_ERR",
            WcStatus::GeneralErr => "GENERAL_ERR",
        }
    }
    /// From the numeric value.
    pub fn from_u8(v: u8) -> Option<WcStatus> {
        use WcStatus::*;
        [
            Success,
            LocLenErr,
            LocQpOpErr,
            LocEecOpErr,
            LocProtErr,
            WrFlushErr,
            MwBindErr,
            BadRespErr,
            LocAccessErr,
            RemInvReqErr,
            RemAccessErr,
            RemOpErr,
            RetryExcErr,
            RnrRetryExcErr,
            LocRddViolErr,
            RemInvRdReqErr,
            RemAbortErr,
            InvEecnErr,
            InvEecStateErr,
            FatalErr,
            RespTimeoutErr,
            GeneralErr,
        ]
        .get(usize::from(v))
        .copied()
    }
}

impl fmt::Display for WcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// QP states (`enum ibv_qp_state` values).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum QpState {
    Reset = 0,
    Init = 1,
    Rtr = 2,
    Rts = 3,
    Sqd = 4,
    Sqe = 5,
    Error = 6,
}

impl QpState {
    /// Every state.
    pub const ALL: [QpState; 7] = [
        QpState::Reset,
        QpState::Init,
        QpState::Rtr,
        QpState::Rts,
        QpState::Sqd,
        QpState::Sqe,
        QpState::Error,
    ];
    /// Upper-case name as ibv prints it.
    pub fn name(self) -> &'static str {
        match self {
            QpState::Reset => "RESET",
            QpState::Init => "INIT",
            QpState::Rtr => "RTR",
            QpState::Rts => "RTS",
            QpState::Sqd => "SQD",
            QpState::Sqe => "SQE",
            QpState::Error => "ERR",
        }
    }
}

bitflags::bitflags! {
    /// `IBV_QP_*` attribute mask.
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
    #[allow(missing_docs)]
    pub struct QpAttrMask: u32 {
        const STATE = 1 << 0;
        const CUR_STATE = 1 << 1;
        const ACCESS_FLAGS = 1 << 3;
        const PKEY_INDEX = 1 << 4;
        const PORT = 1 << 5;
        const AV = 1 << 7;
        const PATH_MTU = 1 << 8;
        const TIMEOUT = 1 << 9;
        const RETRY_CNT = 1 << 10;
        const RNR_RETRY = 1 << 11;
        const RQ_PSN = 1 << 12;
        const MAX_QP_RD_ATOMIC = 1 << 13;
        const MIN_RNR_TIMER = 1 << 15;
        const SQ_PSN = 1 << 16;
        const MAX_DEST_RD_ATOMIC = 1 << 17;
        const DEST_QPN = 1 << 20;
    }
}

/// The RC transition table (`qp_state_table` in drivers/infiniband/core/verbs.c): for each
/// (from, to), whether it is allowed and which attributes it requires and permits.
#[derive(Debug)]
pub struct Transition {
    /// From.
    pub from: QpState,
    /// To.
    pub to: QpState,
    /// Attributes that must be given.
    pub required: QpAttrMask,
    /// Attributes that may be given (besides the required ones and STATE).
    pub optional: QpAttrMask,
}

const M: QpAttrMask = QpAttrMask::empty();

/// The table. Pairs absent from it are invalid (for example RESET → ERR).
pub const QP_TRANSITIONS: &[Transition] = &[
    Transition { from: QpState::Reset, to: QpState::Reset, required: M, optional: M },
    Transition {
        from: QpState::Reset,
        to: QpState::Init,
        required: QpAttrMask::PKEY_INDEX.union(QpAttrMask::PORT).union(QpAttrMask::ACCESS_FLAGS),
        optional: M,
    },
    Transition { from: QpState::Init, to: QpState::Reset, required: M, optional: M },
    Transition { from: QpState::Init, to: QpState::Error, required: M, optional: M },
    Transition {
        from: QpState::Init,
        to: QpState::Init,
        required: M,
        optional: QpAttrMask::PKEY_INDEX.union(QpAttrMask::PORT).union(QpAttrMask::ACCESS_FLAGS),
    },
    Transition {
        from: QpState::Init,
        to: QpState::Rtr,
        required: QpAttrMask::AV
            .union(QpAttrMask::PATH_MTU)
            .union(QpAttrMask::DEST_QPN)
            .union(QpAttrMask::RQ_PSN)
            .union(QpAttrMask::MAX_DEST_RD_ATOMIC)
            .union(QpAttrMask::MIN_RNR_TIMER),
        optional: QpAttrMask::ACCESS_FLAGS.union(QpAttrMask::PKEY_INDEX),
    },
    Transition { from: QpState::Rtr, to: QpState::Reset, required: M, optional: M },
    Transition { from: QpState::Rtr, to: QpState::Error, required: M, optional: M },
    Transition {
        from: QpState::Rtr,
        to: QpState::Rts,
        required: QpAttrMask::SQ_PSN
            .union(QpAttrMask::TIMEOUT)
            .union(QpAttrMask::RETRY_CNT)
            .union(QpAttrMask::RNR_RETRY)
            .union(QpAttrMask::MAX_QP_RD_ATOMIC),
        optional: QpAttrMask::CUR_STATE
            .union(QpAttrMask::ACCESS_FLAGS)
            .union(QpAttrMask::MIN_RNR_TIMER),
    },
    Transition { from: QpState::Rts, to: QpState::Reset, required: M, optional: M },
    Transition { from: QpState::Rts, to: QpState::Error, required: M, optional: M },
    Transition {
        from: QpState::Rts,
        to: QpState::Rts,
        required: M,
        optional: QpAttrMask::CUR_STATE
            .union(QpAttrMask::ACCESS_FLAGS)
            .union(QpAttrMask::MIN_RNR_TIMER),
    },
    Transition { from: QpState::Rts, to: QpState::Sqd, required: M, optional: M },
    Transition { from: QpState::Sqd, to: QpState::Reset, required: M, optional: M },
    Transition { from: QpState::Sqd, to: QpState::Error, required: M, optional: M },
    Transition {
        from: QpState::Sqd,
        to: QpState::Rts,
        required: M,
        optional: QpAttrMask::CUR_STATE.union(QpAttrMask::ACCESS_FLAGS),
    },
    Transition {
        from: QpState::Sqd,
        to: QpState::Sqd,
        required: M,
        optional: QpAttrMask::ACCESS_FLAGS.union(QpAttrMask::TIMEOUT),
    },
    Transition { from: QpState::Sqe, to: QpState::Reset, required: M, optional: M },
    Transition { from: QpState::Sqe, to: QpState::Error, required: M, optional: M },
    Transition {
        from: QpState::Sqe,
        to: QpState::Rts,
        required: M,
        optional: QpAttrMask::CUR_STATE,
    },
    Transition { from: QpState::Error, to: QpState::Reset, required: M, optional: M },
    Transition { from: QpState::Error, to: QpState::Error, required: M, optional: M },
];

/// Looks a transition up.
pub fn transition(from: QpState, to: QpState) -> Option<&'static Transition> {
    QP_TRANSITIONS.iter().find(|t| t.from == from && t.to == to)
}

/// Async event types: the `enum ibv_event_type` set plus pinwheel's own.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum EventType {
    CqErr,
    QpFatal,
    QpReqErr,
    QpAccessErr,
    CommEst,
    SqDrained,
    PathMig,
    PathMigErr,
    DeviceFatal,
    PortActive,
    PortErr,
    LidChange,
    PkeyChange,
    SmChange,
    SrqErr,
    SrqLimitReached,
    QpLastWqeReached,
    ClientReregister,
    GidChange,
    WqFatal,
    DeviceSpeedChange,
    /// A layout change is waiting on this MR: restore it (`restore_mr`).
    MrDecoherent,
    /// A layout lease this context holds is being recalled.
    LeaseRecalled,
    /// A layout lease was revoked at the deadline.
    LeaseRevoked,
    /// The MR was revoked: accesses fail.
    MrRevoked,
}

impl EventType {
    /// Every event type.
    pub const ALL: &'static [EventType] = &[
        EventType::CqErr,
        EventType::QpFatal,
        EventType::QpReqErr,
        EventType::QpAccessErr,
        EventType::CommEst,
        EventType::SqDrained,
        EventType::PathMig,
        EventType::PathMigErr,
        EventType::DeviceFatal,
        EventType::PortActive,
        EventType::PortErr,
        EventType::LidChange,
        EventType::PkeyChange,
        EventType::SmChange,
        EventType::SrqErr,
        EventType::SrqLimitReached,
        EventType::QpLastWqeReached,
        EventType::ClientReregister,
        EventType::GidChange,
        EventType::WqFatal,
        EventType::DeviceSpeedChange,
        EventType::MrDecoherent,
        EventType::LeaseRecalled,
        EventType::LeaseRevoked,
        EventType::MrRevoked,
    ];
    /// The event type with this name.
    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL.iter().copied().find(|e| e.name() == name)
    }
    /// Name for listings.
    pub fn name(self) -> &'static str {
        match self {
            EventType::CqErr => "CQ_ERR",
            EventType::QpFatal => "QP_FATAL",
            EventType::QpReqErr => "QP_REQ_ERR",
            EventType::QpAccessErr => "QP_ACCESS_ERR",
            EventType::CommEst => "COMM_EST",
            EventType::SqDrained => "SQ_DRAINED",
            EventType::PathMig => "PATH_MIG",
            EventType::PathMigErr => "PATH_MIG_ERR",
            EventType::DeviceFatal => "DEVICE_FATAL",
            EventType::PortActive => "PORT_ACTIVE",
            EventType::PortErr => "PORT_ERR",
            EventType::LidChange => "LID_CHANGE",
            EventType::PkeyChange => "PKEY_CHANGE",
            EventType::SmChange => "SM_CHANGE",
            EventType::SrqErr => "SRQ_ERR",
            EventType::SrqLimitReached => "SRQ_LIMIT_REACHED",
            EventType::QpLastWqeReached => "QP_LAST_WQE_REACHED",
            EventType::ClientReregister => "CLIENT_REREGISTER",
            EventType::GidChange => "GID_CHANGE",
            EventType::WqFatal => "WQ_FATAL",
            EventType::DeviceSpeedChange => "DEVICE_SPEED_CHANGE",
            EventType::MrDecoherent => "MR_DECOHERENT",
            EventType::LeaseRecalled => "LEASE_RECALLED",
            EventType::LeaseRevoked => "LEASE_REVOKED",
            EventType::MrRevoked => "MR_REVOKED",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_keys_round_trip() {
        let k = make_key(0x12345, 0x9a);
        assert_eq!(split_key(k), (0x12345, 0x9a));
    }

    #[test]
    fn types_wc_status_values_match_ibverbs() {
        assert_eq!(WcStatus::RemAccessErr as u8, 10);
        assert_eq!(WcStatus::WrFlushErr as u8, 5);
        assert_eq!(WcStatus::GeneralErr as u8, 21);
        for v in 0..=21u8 {
            assert_eq!(WcStatus::from_u8(v).unwrap() as u8, v);
        }
        assert_eq!(WcStatus::from_u8(22), None);
    }

    #[test]
    fn types_qp_table_matches_the_kernel() {
        // Every legal pair of reference/kernel-semantics.md §5, and nothing else.
        use QpState::*;
        let legal = [
            (Reset, Reset),
            (Reset, Init),
            (Init, Reset),
            (Init, Error),
            (Init, Init),
            (Init, Rtr),
            (Rtr, Reset),
            (Rtr, Error),
            (Rtr, Rts),
            (Rts, Reset),
            (Rts, Error),
            (Rts, Rts),
            (Rts, Sqd),
            (Sqd, Reset),
            (Sqd, Error),
            (Sqd, Rts),
            (Sqd, Sqd),
            (Sqe, Reset),
            (Sqe, Error),
            (Sqe, Rts),
            (Error, Reset),
            (Error, Error),
        ];
        for from in QpState::ALL {
            for to in QpState::ALL {
                assert_eq!(
                    transition(from, to).is_some(),
                    legal.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
        assert!(transition(Reset, Error).is_none(), "no RESET -> ERR");
    }
}
