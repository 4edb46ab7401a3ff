//! pinwheel-verbs: the software RDMA device — what drivers/infiniband core plus a soft driver
//! (rxe, siw) are in the kernel.
//!
//! **Owns**: the device and its limits, contexts (device handles) with async event queues,
//! protection domains, memory regions (pinned, ODP, file) with their states and the coherence
//! protocols (de-coherence and `restore_mr`, revocation, ODP invalidation), completion queues,
//! RC queue pairs with the kernel's state table, shared receive queues, the DMA engine, and the
//! loopback and TCP transports.
//!
//! The device keeps a region of the pool (`shm`): the MR and QP tables that client processes
//! of the node read to execute their transfers themselves, and the rings of completion and
//! receive queues, which are those queues' only storage.
//!
//! **Does not own**: memory, pins and address spaces (pinwheel-mm); files, leases and pin
//! policies (pinwheel-fs, which calls MRs back through `PinHolder`); the client library that
//! executes transfers from the shared tables (`pinwheel::client`).
//!
//! **Invariants** (numbered as in DESIGN.md):
//! 4. After an ODP or file MR's `invalidate` returns, no transfer reaches the old frames: the
//!    translation is cleared, then the MR's in-flight transfers are drained.
//! 5. A remote peer can never read or write outside the MRs its keys name: every remote access
//!    is checked key → PD → access → state → bounds before a byte moves.
//! 6. A work request completes successfully only after its bytes are in place.
//!
//! Shared memory is untrusted input: the daemon never reads back the tables it publishes;
//! ring positions, entries and hazard words are bounds-checked and every loop over them is
//! bounded (`shm/mod.rs`).
//!
//! **Thread safety**: everything is `Send + Sync`. One thread at a time executes a QP; bytes
//! never move under a QP lock. MR state changes drain in-flight transfers before returning.
//!
//! **Limits**: `limits.rs` (what `devinfo` reports).

mod context;
mod cq;
mod device;
mod engine;
mod error;
mod event;
pub mod limits;
mod mr;
mod mr_cache;
mod mr_reg;
mod odp;
mod pinned;
mod qp;
mod qp_attr;
mod rq;
pub mod shm;
mod srq;
pub mod transport;
mod types;
mod wr;

pub use context::{Context, ProtectionDomain};
pub use cq::CompletionQueue;
pub use device::{Device, DeviceAttr, DeviceConfig, DeviceHooks};
pub use error::{VerbsError, VerbsResult};
pub use event::AsyncEvent;
pub use mr::{MemoryRegion, MrInfo, MrKind, MrState};
pub use qp::{AddressHandle, QpAttr, QpCaps, QpInfo, QpInitAttr, QueuePair, SharedReceiveQueue};
pub use types::{
    Access, EventType, Lkey, Opcode, Psn, QP_TRANSITIONS, QpAttrMask, QpState, Qpn, Rkey,
    Transition, WcStatus, transition,
};
pub use wr::{RecvWr, SendWr, Sge, WcOpcode, WorkCompletion};
