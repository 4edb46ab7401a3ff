//! Transports. Loopback between QPs of one node is `loopback.rs` (the poster's thread executes
//! the request); TCP between nodes is `tcp.rs` (the connection: requester, completer, reader
//! thread) and `responder.rs` (serving the peer's requests), set up by `cm.rs` and framed by
//! `wire.rs`.
//! Shared memory between a daemon and its client processes comes with the node daemon.

pub(crate) mod cm;
pub(crate) mod loopback;
pub(crate) mod responder;
pub(crate) mod tcp;
pub(crate) mod wire;

pub use cm::Listener;
pub use tcp::Link;
pub use wire::PRIVATE_MAX;
