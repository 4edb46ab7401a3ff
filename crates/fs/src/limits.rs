//! Every limit of the filesystem, each with the reason for its value.

/// Longest file name: a directory entry is 256 bytes, 16 of them header.
pub const NAME_MAX: usize = 240;
/// Longest path accepted.
pub const PATH_MAX: usize = 4096;
/// Extents stored in the inode record itself.
pub const INLINE_EXTENTS: usize = 7;
/// Extents per 4 KiB extent block (24-byte header, 24-byte records).
pub const EXTENTS_PER_BLOCK: usize = 169;
/// Extents per file: bounds the extent-block chain (≈ 6 200 blocks).
pub const MAX_EXTENTS: usize = 1 << 20;
/// Frames reserved after the superblock for the journal that crash consistency will use.
pub const JOURNAL_FRAMES: u64 = 64;
/// Fewest inodes of a filesystem.
pub const INODES_MIN: u64 = 256;
/// Most inodes: the table is sparse in a memfd, but a file pool allocates it on disk.
pub const INODES_MAX: u64 = 1 << 18;
/// One inode per this many frames of pool, within the bounds above.
pub const FRAMES_PER_INODE: u64 = 64;
/// Largest file: the largest pool.
pub const MAX_FILE_SIZE: u64 = 1 << 40;
/// Files sharing one block (reflink): the reference count is 16 bits, 0 meaning free.
pub const REFCOUNT_MAX: u16 = u16::MAX - 1;
/// Layout leases per file: each is a kernel-like object an unprivileged client can create.
pub const MAX_LEASES_PER_FILE: usize = 256;
/// Long-term pins per file: one per MR; bounded so a client cannot exhaust memory.
pub const MAX_FILE_PINS_PER_FILE: usize = 65_536;
/// Linux's `/proc/sys/fs/lease-break-time` default: 45 s.
pub const LEASE_BREAK_DEFAULT_MS: u64 = 45_000;
/// How often a layout change re-checks after its break was undone by a racing pin or lease.
pub const BREAK_RETRIES: usize = 32;
/// After SIGKILLing the holders of a handle (`lease-kill`), how long to wait for it to close.
pub const KILL_GRACE_MS: u64 = 5_000;
/// A new long-term pin waits at most this long (beyond the lease-break time) for a layout
/// change in progress on its range (the `restore_mr` path).
pub const PIN_WAIT_MARGIN_MS: u64 = 5_000;
/// Frames data allocations leave free for metadata (extent blocks, directory blocks): the
/// inode update that records a change must never fail for lack of space after the change
/// moved reference counts. 64 frames hold the extent blocks of ~10 000 extents.
pub const META_RESERVE_FRAMES: u64 = 64;
