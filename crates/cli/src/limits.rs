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

/// Most window ends of the peak bandwidth search: it is perftest's O(n²) search over windows
/// of consecutive messages (2·10⁸ steps at this bound, well under a second); longer runs
/// search windows that start and end every k-th message.
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

/// Longest `-D`: a benchmark of an hour is not a benchmark of a small machine any more.
pub const PERF_DURATION_MAX_S: f64 = 3600.0;

/// Most queue pairs of `-q`: each keeps `--tx-depth` requests and its own connection; 64 is
/// beyond what two cores can keep busy (perftest's practical range).
pub const PERF_QPS_MAX: u32 = 64;

/// RECVs a SEND test's receiver keeps posted per QP (perftest's default rx-depth is 512): more
/// than a sender's 128 in flight, so the sender never waits for a receive (RNR).
pub const PERF_RX_DEPTH: u32 = 512;

/// Round trips of the cache-line ping-pong before its samples count: the first ones pay for
/// page faults and cold caches.
pub const PERF_PINGPONG_WARMUP: u64 = 1000;

/// Bytes of the cache-line ping-pong's shared memfd (the pool's smallest size; only one page
/// is ever touched).
pub const PERF_PINGPONG_POOL: u64 = pinwheel_mm::limits::POOL_SIZE_MIN;

/// Largest total a reg_mr size registers when -n is not given (iterations = this / size,
/// at least `PERF_REG_ITERS_MIN`, at most `PERF_REG_ITERS_MAX`): a few seconds a size.
pub const PERF_REG_BYTES_PER_SIZE: u64 = 4 << 30;

/// Fewest reg_mr iterations a size (a median of fewer is no median).
pub const PERF_REG_ITERS_MIN: u64 = 3;

/// Most reg_mr iterations a size (small sizes: enough for a stable median).
pub const PERF_REG_ITERS_MAX: u64 = 1000;

/// Most pages odp_fault touches: each costs a frame of real memory (4 GiB at this bound).
pub const PERF_FAULT_PAGES_MAX: u64 = 1 << 20;

/// Most layout changes of lease_break per scenario (each may wait the lease-break time).
pub const PERF_LEASE_ROUNDS_MAX: u64 = 10_000;

/// Pages of the file whose layout lease_break changes: 1 MiB, small enough that a defrag
/// moves it in well under a millisecond, large enough to be a real move.
pub const PERF_LEASE_FILE_PAGES: u64 = 256;

/// Rounds coherence_cost alternates checks on and off (ABAB...): the drift of a busy machine
/// falls on both sides.
pub const PERF_COST_ROUNDS: u64 = 6;
