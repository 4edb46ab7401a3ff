//! pinwheel-mm: the memory core — the part of pinwheel that plays the kernel's mm/ (struct page,
//! get_user_pages / pin_user_pages, VMAs and page tables, mmu_interval_notifier).
//!
//! **Owns**: the [`Pool`] (a memfd or file mapped `MAP_SHARED`: the node's "physical memory"),
//! the [`FrameTable`] (per 4 KiB frame: owner, flags, and reference, pin and map counts kept
//! apart), the frame allocator (buddy; single frames, contiguous runs, huge frames), address
//! spaces ([`AddressSpace`]: VMAs, a radix page table, faults, `mmap`/`munmap`/`mremap`/
//! `mprotect`/`madvise`), pinning ([`pin_user_pages`] → [`Pin`]), MMU interval notifiers, the
//! reverse map from files to mappings, and the [`Clock`].
//!
//! **Does not own**: files, extents, leases or pin policies (pinwheel-fs implements
//! [`FileBacking`] and decides long-term pins of file memory); MRs and DMA (pinwheel-verbs).
//!
//! **Invariants** (numbered as in DESIGN.md):
//! 1. A frame is never reused while a page table, MR translation or pin refers to it — frees
//!    assert it — except through [`Memory::free_reuse_under_dma`], the one counted path the
//!    `unsafe` policy takes.
//! 2. Pin counts never go negative; every pin is released exactly once (a [`Pin`] is an RAII
//!    value; underflow asserts).
//! 4. After an `invalidate` callback returns, the translation it covers is about to be removed
//!    and the frame is freed only after that; subscribers see the odd sequence until the change
//!    is complete, so a concurrent fault cannot install a stale translation.
//!
//! **Thread safety**: everything is `Send + Sync`. Lock order: address-space `vmas` → the
//! filesystem's per-file lock → reverse map → page table → notifier subscribers' locks →
//! allocator. See `rmap.rs` and `aspace.rs`.
//!
//! **Limits**: `limits.rs` (pool 16 MiB … 1 TiB, 65 530 mappings per address space, pin count
//! per frame < 2^21, 2^20 notifiers per address space).
//!
//! **unsafe**: only in `sys.rs` (the shared mapping, raw copies, atomics in the pool, zeroed
//! sparse arrays, [`HostMemory`] for the benchmarks' `mlock` baseline); every block carries a
//! `SAFETY:` comment.

mod alloc;
mod aspace;
mod backing;
pub mod clock;
mod error;
mod fault;
mod frame;
pub mod limits;
mod memory;
mod notifier;
mod pagetable;
mod pin;
mod pool;
mod rmap;
mod sys;
mod types;
mod vma;

pub use alloc::{AllocStats, Placement};
pub use aspace::{AddressSpace, MapFlags, MapKind, MappingInfo, MmapRequest, Mmu, RemapFlags};
pub use backing::{BackingKind, FileBacking, FilePinGuard, PinOwner};
pub use clock::{Clock, ManualClock, RealClock};
pub use error::{Errno, MmError, Result};
pub use frame::{FILE_ID_MAX, FrameFlags, FrameInfo, FrameTable, Owner};
pub use memory::{MemStats, Memory, Quarantine};
pub use notifier::{
    IntervalNotifier, InvalidateGuard, InvalidateReason, Invalidation, NotifierHandle, NotifierHub,
    Subscription,
};
pub use pagetable::VPN_LIMIT;
pub use pin::{Pin, PinFlags, PinId, PinInfo, pin_user_pages};
pub use pool::{Pool, PoolBacking};
pub use rmap::{FileMapping, ZapReport};
pub use sys::HostMemory;
pub use types::{
    AspaceId, FRAMES_PER_HUGE, FileId, FileOffset, FrameRun, HUGE_ORDER, HUGE_PAGE_SIZE,
    PAGE_SHIFT, PAGE_SIZE, Pfn, PoolOffset, VirtAddr, VirtRange, is_page_aligned, page_align_up,
};
pub use vma::{Prot, VmaKind};
