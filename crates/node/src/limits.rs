//! Limits of the node daemon, each with why.

/// Largest datagram on a handle or reply socket: below the default `AF_UNIX` send buffer
/// (208 KiB), so a datagram never needs a bigger buffer than the kernel gives.
pub const MAX_MSG_BYTES: usize = 192 << 10;
/// Descriptors per datagram: a request carries its reply socket; `Hello`'s answer the pool.
pub const MAX_FDS_PER_MSG: usize = 2;
/// Bytes of one `Load`/`Store`/filesystem read or write: a datagram with room to spare.
pub const MAX_IO_BYTES: u32 = 64 << 10;
/// Objects per handle (a client leaking objects cannot exhaust the daemon).
pub const MAX_OBJECTS_PER_HANDLE: usize = 65_536;
/// Handles served at once.
pub const MAX_HANDLES: usize = 1024;
/// Requests of one handle waiting at once (polls, events, layout changes waiting for a lease
/// break): beyond that a request is refused with EAGAIN instead of holding another thread.
pub const MAX_WAITING_PER_HANDLE: usize = 32;
/// Longest wait a `PollCq`/`GetEvent` may ask for; the library loops for longer waits.
pub const MAX_WAIT_MS: u32 = 10_000;
/// Work requests per `PostSend`/`PostRecv` and completions per `PollCq`.
pub const MAX_WR_PER_CALL: usize = 1024;
/// How long a client waits for an answer beyond the request's own wait: a filesystem
/// operation may wait for a lease break, so this must exceed any lease-break time in use.
pub const ANSWER_MARGIN_MS: u64 = 120_000;
/// Export tokens alive at once.
pub const MAX_EXPORTS: usize = 4096;
/// How long the daemon waits for a client process to acknowledge the invalidation of its
/// file mapping before quarantining the frames (a live process answers in microseconds).
pub const NOTIFY_ACK_MS: u64 = 2_000;
/// Notification sockets per handle (one per process using it).
pub const MAX_NOTIFY_PER_HANDLE: usize = 64;
/// Label length at `Hello`.
pub const MAX_LABEL: usize = 64;
