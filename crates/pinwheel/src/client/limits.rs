//! Limits of the client library's shared data path, each with why.

/// How long a work request retries after faults of ODP or file pages that invalidations
/// keep taking away (as the node's engine, and `hmm_range_fault`'s callers: a second).
pub const FAULT_RETRY_MS: u64 = 1000;
/// How long a sleep in `poll_wait` lasts at most while work requests of the context are held
/// or wait for a receive: they are retried between sleeps (nobody else runs them).
pub const PENDING_RETRY_MS: u64 = 1;
/// How long `post_send` waits for another process executing the same QP (after `fork`) to
/// finish before it leaves the work queued.
pub const EXECUTOR_WAIT_MS: u64 = 10;
/// MR slots a QP's executor keeps read (its buffers and its peer's: a request names two).
pub const MR_VIEWS: usize = 8;
