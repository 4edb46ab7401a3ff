//! Every limit of the command-line tool, each with the reason for its value.

/// Bytes moved per filesystem call by `write` and `read`: large enough that a copy of a big
/// file takes few layout changes, small enough that the buffer is not a memory problem.
pub const IO_CHUNK_BYTES: usize = 1 << 20;

/// Deepest path error hints walk when looking for the missing component: a path of
/// `PATH_MAX` bytes has at most half as many components.
pub const HINT_DEPTH_MAX: usize = pinwheel_fs::limits::PATH_MAX / 2;

/// Largest message `perf` measures: each side keeps its buffers (two messages for the latency
/// ping-pong) in real memory; perftest's -a stops at 8 MiB, and the device's max_msg_sz (2 GiB)
/// is far beyond what a benchmark on a small machine should touch.
pub const PERF_SIZE_MAX: u64 = 1 << 30;

/// Most iterations per message size: two timestamps are kept per iteration (32 bytes), so at
/// most 320 MB of them.
pub const PERF_ITERS_MAX: u64 = 10_000_000;

/// Most iterations for which the peak bandwidth is computed: it is perftest's O(n²) search
/// over windows of consecutive messages (2·10⁸ steps at this bound, well under a second).
pub const PERF_PEAK_ITERS_MAX: u64 = 20_000;

/// Completions of a bandwidth run are signaled every this many work requests (perftest's
/// default CQ moderation).
pub const PERF_CQ_MODERATION: u32 = 100;

/// Longest `--timeout`: an hour is longer than any run worth waiting for.
pub const PERF_TIMEOUT_MAX_S: f64 = 3600.0;

/// How often a long run shows its progress on a terminal.
pub const PERF_PROGRESS_MS: u128 = 250;

/// Spins of a latency wait before it starts yielding the CPU: on two cores the peer's engine
/// thread (the TCP reader) needs one of them.
pub const PERF_SPINS_BEFORE_YIELD: u32 = 200;

/// Receives the control channel of a TCP run keeps posted (one message is in flight at a time;
/// spares cover a peer that runs ahead).
pub const PERF_CTL_SLOTS: u64 = 4;

/// Pool memory beyond the buffers: the filesystem's metadata and the control buffers.
pub const PERF_POOL_SLACK: u64 = 32 << 20;
