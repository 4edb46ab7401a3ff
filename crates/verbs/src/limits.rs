//! Every limit of the device, each with the reason for its value. `devinfo` reports them.

/// MRs per device: keys are a 24-bit index and an 8-bit generation.
pub const MAX_MR: u32 = 1 << 20;
/// Largest MR: the largest pool.
pub const MAX_MR_SIZE: u64 = 1 << 40;
/// QPs per device.
pub const MAX_QP: u32 = 1 << 16;
/// Work requests per queue.
pub const MAX_QP_WR: u32 = 16_384;
/// Scatter/gather entries per work request.
pub const MAX_SGE: u32 = 32;
/// Inline data per send: copied at post time.
pub const MAX_INLINE: u32 = 1024;
/// CQs per device.
pub const MAX_CQ: u32 = 1 << 16;
/// Entries per CQ.
pub const MAX_CQE: u32 = 1 << 20;
/// PDs per device.
pub const MAX_PD: u32 = 1 << 16;
/// SRQs per device.
pub const MAX_SRQ: u32 = 1 << 12;
/// Largest message: 2 GiB, as InfiniBand.
pub const MAX_MSG: u64 = 1 << 31;
/// Outstanding RDMA READ / atomic operations per QP.
pub const MAX_RD_ATOMIC: u32 = 16;
/// Physical ports: one, the node's (QPs name port 1).
pub const PHYS_PORTS: u8 = 1;
/// Entries of the port's P_Key table (as rxe's): a QP's `pkey_index` must be below it.
pub const PKEY_TABLE_LEN: u16 = 64;
/// Async events queued per context before the oldest are dropped (counted).
pub const MAX_ASYNC_EVENTS: usize = 4096;
/// How long a transfer to a decoherent MR is held before it fails (the filesystem revokes
/// at its own deadline long before this unless its lease-break time is longer).
pub const HOLD_MAX_MS: u64 = 120_000;
/// A TCP peer that stops sending inside a frame for this long loses its connection: a
/// stalled peer must not keep an MR in flight (invalidations and revocations wait for it).
pub const WIRE_STALL_MS: u64 = 2_000;
/// Slowest a TCP peer may send (bytes per second): a frame has `WIRE_STALL_MS` plus its payload
/// at this rate to arrive, so a peer trickling bytes is cut off as surely as a silent one.
pub const WIRE_RATE_MIN: u64 = 1 << 20;
/// Payload bytes a TCP transfer moves into an MR per entry, each with a deadline of its own:
/// an invalidation or revocation waits for at most one chunk of a transfer from a peer.
pub const WIRE_CHUNK: u64 = 1 << 20;
/// Largest control field accepted from the wire (node names).
pub const WIRE_NAME_MAX: usize = 256;
/// MRs a QP's executing thread keeps between requests (`mr_cache.rs`): a request names at most
/// two (its local buffer and the target); a few more cover applications cycling buffers.
pub const MR_CACHE_ENTRIES: usize = 8;
/// Attempts a shared ring operation makes before giving up: contention between processes
/// resolves in a few; a ring whose words were scribbled on must not hang its reader.
pub const SHM_RING_RETRIES: u32 = 4096;
/// Spins of a waiter before it sleeps on a ring's futex word (~a few µs): on two cores a
/// futex round trip costs more than a short spin.
pub const SHM_WAIT_SPINS: u32 = 2000;
/// How long a drain waits for client executors inside an MR (or using a QP) before it
/// quarantines the frames and proceeds: a stalled client cannot hold the node hostage.
pub const SHM_DRAIN_MS: u64 = 1000;
/// Bytes a client copies between two checks of an MR's state: a healthy client leaves an MR
/// being revoked or invalidated within one chunk.
pub const SHM_CHUNK: u64 = 1 << 20;
/// Fewest MR slots of a device region (small pools): its MR limit.
pub const SHM_MR_SLOTS_MIN: u32 = 1024;
/// Fewest QP slots of a device region: its QP limit.
pub const SHM_QP_SLOTS_MIN: u32 = 256;
