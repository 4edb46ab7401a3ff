//! Every limit of the memory core, each with the reason for its value.

/// Smallest pool: 16 MiB, enough for a filesystem's metadata and a few test files.
pub const POOL_SIZE_MIN: u64 = 16 << 20;
/// Largest pool: 1 TiB. The frame table and allocator arrays are sparse (untouched pages cost
/// nothing), so the bound is only that 2^28 frames keep every frame index in a `u32`.
pub const POOL_SIZE_MAX: u64 = 1 << 40;
/// Largest buddy order: 2^18 frames = 1 GiB blocks, the largest contiguous run one allocation
/// of a single block can return (larger contiguous runs combine blocks).
pub const MAX_ORDER: u32 = 18;
/// Lowest virtual address handed out (leaves page 0.. unmapped so a null address faults).
pub const VA_START: u64 = 0x1_0000_0000;
/// One past the highest virtual address: a 47-bit user address space, as on x86-64.
pub const VA_END: u64 = 1 << 47;
/// Mappings per address space: Linux's default `vm.max_map_count`.
pub const MAX_VMAS: usize = 65_530;
/// Default per-context pin limit (the RLIMIT_MEMLOCK analogue). Long-term pinning of large
/// regions is the whole point of the workloads, so the default is generous; contexts that
/// want Linux's 8 MiB set it with `AddressSpace::set_pin_limit`.
pub const DEFAULT_PIN_LIMIT_BYTES: u64 = 1 << 40;
/// Pins per frame: the kernel leaves 21 bits for the pin count (GUP_PIN_COUNTING_BIAS); a
/// `u32` would allow more, but a count this high is a leak, so it is treated as a bug.
pub const PIN_COUNT_MAX: u32 = 1 << 21;
/// Notifier subscriptions per address space: one per ODP MR; bounded to cap memory.
pub const MAX_NOTIFIERS: usize = 1 << 20;
/// `Memory::trim` returns free runs at least this long to the OS (a hole punch per run costs a
/// system call; shorter runs are not worth it).
pub const DISCARD_MIN_FRAMES: u64 = 16;
