//! Transports. Loopback between QPs of one node is the engine itself (`engine.rs`); TCP
//! between nodes is `tcp.rs`, framed by `wire.rs`. Shared memory between a daemon and its
//! client processes comes with the node daemon.

pub(crate) mod tcp;
pub(crate) mod wire;

pub use tcp::{Link, Listener};
pub use wire::PRIVATE_MAX;
