//! pin_user_pages: accounting, lifetimes, file-backed long-term pins, reuse under DMA.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{ToyFile, assert_clean, memory};
use pinwheel_mm::*;

const MIB: u64 = 1 << 20;

#[test]
fn pin_counts_apart_from_refs_and_released_once() {
    let mem = memory(32);
    let a = AddressSpace::new(&mem);
    let p = a.mmap_anonymous(4 * PAGE_SIZE).unwrap();
    let pin =
        pin_user_pages(&a, p, 4 * PAGE_SIZE, PinFlags::WRITE | PinFlags::LONGTERM, None).unwrap();
    let pfn = a.translate(p).unwrap();
    let info = mem.frames().info(pfn);
    assert_eq!((info.pins, info.maps, info.refs), (1, 1, 2));
    assert!(mem.frames().maybe_dma_pinned(pfn));
    assert_eq!(pin.translate(10).unwrap(), PoolOffset::new(pfn.offset().raw() + 10));
    assert_eq!(a.pinned_bytes(), 4 * PAGE_SIZE);
    let second = pin_user_pages(&a, p, PAGE_SIZE, PinFlags::empty(), None).unwrap();
    assert_eq!(mem.frames().info(pfn).pins, 2);
    assert_clean(&mem, &[&a]);
    drop(second);
    drop(pin);
    assert_eq!(mem.frames().info(pfn).pins, 0);
    assert_eq!(a.pinned_bytes(), 0);
    let s = mem.stats();
    assert_eq!(s.pins_acquired, 5);
    assert_eq!(s.pins_released, 5);
    assert_eq!(s.live_pins, 0);
    assert_clean(&mem, &[&a]);
}

#[test]
fn pin_keeps_frames_alive_after_munmap_and_dontneed() {
    let mem = memory(32);
    let free0 = mem.free_bytes();
    let a = AddressSpace::new(&mem);
    let p = a.mmap_anonymous(2 * PAGE_SIZE).unwrap();
    a.write(p, b"pinned data").unwrap();
    let pin = pin_user_pages(&a, p, 2 * PAGE_SIZE, PinFlags::WRITE, None).unwrap();
    let pfn = a.translate(p).unwrap();
    // DONTNEED under the pin: the process sees a fresh zero page, the pin the old frame —
    // the decoupling that page-cache RDMA users hit.
    a.madvise_dontneed(p, PAGE_SIZE).unwrap();
    let mut b = [0u8; 11];
    a.read(p, &mut b).unwrap();
    assert_eq!(b, [0u8; 11]);
    assert_ne!(a.translate(p), Some(pfn));
    mem.pool().read(pin.translate(0).unwrap(), &mut b).unwrap();
    assert_eq!(&b, b"pinned data");
    a.munmap(p, 2 * PAGE_SIZE).unwrap();
    assert_eq!(mem.frames().owner(pfn), Owner::Anonymous, "alive for the pin only");
    assert_clean(&mem, &[&a]);
    drop(pin);
    assert_eq!(mem.frames().owner(pfn), Owner::Free);
    assert_eq!(mem.free_bytes(), free0);
    assert_clean(&mem, &[&a]);
}

#[test]
fn pin_errors_match_upstream() {
    let mem = memory(32);
    let a = AddressSpace::new(&mem);
    let p = a.mmap_anonymous(2 * PAGE_SIZE).unwrap();
    let errno = |r: Result<Pin, MmError>| r.unwrap_err().errno();
    assert_eq!(
        errno(pin_user_pages(&a, VirtAddr::new(p.raw() + 1), PAGE_SIZE, PinFlags::empty(), None)),
        Errno::EINVAL
    );
    assert_eq!(errno(pin_user_pages(&a, p, 100, PinFlags::empty(), None)), Errno::EINVAL);
    assert_eq!(errno(pin_user_pages(&a, p, 0, PinFlags::empty(), None)), Errno::EINVAL);
    assert_eq!(
        errno(pin_user_pages(&a, VirtAddr::new(u64::MAX - 4095), 8192, PinFlags::empty(), None)),
        Errno::EINVAL
    );
    assert_eq!(errno(pin_user_pages(&a, p, 3 * PAGE_SIZE, PinFlags::empty(), None)), Errno::EFAULT);
    assert_eq!(
        errno(pin_user_pages(
            &a,
            VirtAddr::new(0x10_0000_0000),
            PAGE_SIZE,
            PinFlags::empty(),
            None
        )),
        Errno::EFAULT
    );
    a.mprotect(p, PAGE_SIZE, Prot::READ).unwrap();
    assert_eq!(errno(pin_user_pages(&a, p, PAGE_SIZE, PinFlags::WRITE, None)), Errno::EFAULT);
    assert!(
        pin_user_pages(&a, p, PAGE_SIZE, PinFlags::empty(), None).is_ok(),
        "read pin of read-only memory"
    );
    a.set_pin_limit(PAGE_SIZE);
    let one = pin_user_pages(&a, p, PAGE_SIZE, PinFlags::empty(), None).unwrap();
    assert_eq!(errno(pin_user_pages(&a, p, PAGE_SIZE, PinFlags::empty(), None)), Errno::ENOMEM);
    drop(one);
    assert_eq!(a.pinned_bytes(), 0, "failed pins are uncharged");
    assert_clean(&mem, &[&a]);
}

#[test]
fn pin_longterm_file_asks_backing() {
    let mem = memory(32);
    let f = ToyFile::new(&mem, 3, 8, 5);
    let a = AddressSpace::new(&mem);
    let backing: Arc<dyn FileBacking> = f.clone();
    let p = a.mmap(MmapRequest::file(backing, FileOffset::new(0), 8 * PAGE_SIZE)).unwrap();
    // Short-term pins do not ask.
    drop(pin_user_pages(&a, p, PAGE_SIZE, PinFlags::WRITE, None).unwrap());
    assert_eq!(f.asked.load(Ordering::SeqCst), 0);
    *f.refuse_longterm.lock() = Some(Errno::EOPNOTSUPP);
    let e =
        pin_user_pages(&a, p, PAGE_SIZE, PinFlags::WRITE | PinFlags::LONGTERM, None).unwrap_err();
    assert_eq!(e.errno(), Errno::EOPNOTSUPP);
    assert_eq!(a.pinned_bytes(), 0);
    *f.refuse_longterm.lock() = None;
    let pin =
        pin_user_pages(&a, p, 8 * PAGE_SIZE, PinFlags::WRITE | PinFlags::LONGTERM, None).unwrap();
    assert_eq!(f.live_file_pins.load(Ordering::SeqCst), 1);
    assert_eq!(pin.translate(3 * PAGE_SIZE).unwrap(), f.block(3).offset());
    assert_eq!(f.truncate(4), Err(Errno::ETXTBSY));
    drop(pin);
    assert_eq!(f.live_file_pins.load(Ordering::SeqCst), 0, "file pin released with the pin");
    f.truncate(4).unwrap();
    assert_clean(&mem, &[&a]);
}

#[test]
fn pin_reuse_under_dma_is_counted_and_orphans_the_pin() {
    let mem = memory(32);
    let f = ToyFile::new(&mem, 4, 4, 0x11);
    f.reuse_under_dma.store(true, Ordering::SeqCst);
    let a = AddressSpace::new(&mem);
    let backing: Arc<dyn FileBacking> = f.clone();
    let p = a.mmap(MmapRequest::file(backing, FileOffset::new(0), 4 * PAGE_SIZE)).unwrap();
    let pin =
        pin_user_pages(&a, p, 4 * PAGE_SIZE, PinFlags::WRITE | PinFlags::LONGTERM, None).unwrap();
    let victim = f.block(3);
    assert_eq!(f.truncate(3).unwrap(), 1);
    assert_eq!(mem.stats().reused_under_dma, 1);
    assert!(pin.has_orphans());
    // The freed frame goes to the next allocation (LIFO); the pin still points at it.
    let other = ToyFile::new(&mem, 5, 1, 0x22);
    assert_eq!(other.block(0), victim);
    assert_eq!(pin.translate(3 * PAGE_SIZE).unwrap(), victim.offset());
    // DMA through the stale pin corrupts the other file: the bug the debate was about.
    mem.pool().write(pin.translate(3 * PAGE_SIZE).unwrap(), b"DMA").unwrap();
    let mut b = [0u8; 3];
    mem.pool().read(other.block(0).offset(), &mut b).unwrap();
    assert_eq!(&b, b"DMA");
    assert!(!mem.frames().maybe_dma_pinned(victim), "its new owner holds no pins from the old one");
    assert_clean(&mem, &[&a]);
    drop(pin);
    assert_eq!(
        mem.frames().owner(victim),
        Owner::FileBlock(FileId::new(5)),
        "unpin did not touch the new owner's frame"
    );
    assert_clean(&mem, &[&a]);
}

#[test]
fn pin_huge_pins_heads_once() {
    let mem = memory(64);
    let a = AddressSpace::new(&mem);
    let p = a.mmap(MmapRequest::anonymous(8 * MIB).flags(MapFlags::HUGE)).unwrap();
    let pin = pin_user_pages(
        &a,
        VirtAddr::new(p.raw() + MIB),
        4 * MIB,
        PinFlags::WRITE | PinFlags::LONGTERM,
        None,
    )
    .unwrap();
    assert_eq!(a.resident(), (0, 3), "three huge frames touched");
    let heads: Vec<Pfn> = (0..4)
        .filter_map(|i| a.translate(VirtAddr::new(p.raw() + i * 2 * MIB)))
        .map(|f| f.huge_head())
        .collect();
    assert_eq!(mem.frames().info(heads[0]).pins, 1);
    assert_eq!(mem.frames().info(heads[1]).pins, 1);
    assert_eq!(mem.frames().info(heads[2]).pins, 1);
    assert_eq!(pin.segments(0, 4 * MIB).unwrap().iter().map(|s| s.1).sum::<u64>(), 4 * MIB);
    assert_clean(&mem, &[&a]);
    pin.unpin_dirty();
    assert!(mem.frames().info(heads[1]).flags.contains(FrameFlags::DIRTY));
    assert_eq!(mem.frames().info(heads[1]).pins, 0);
    assert_clean(&mem, &[&a]);
}

#[test]
fn pin_segments_merge_contiguous_frames() {
    let mem = memory(32);
    let a = AddressSpace::new(&mem);
    let p = a.mmap(MmapRequest::anonymous(64 * PAGE_SIZE).flags(MapFlags::POPULATE)).unwrap();
    let pin = pin_user_pages(&a, p, 64 * PAGE_SIZE, PinFlags::WRITE, None).unwrap();
    let segs = pin.segments(100, 10 * PAGE_SIZE).unwrap();
    assert_eq!(segs.iter().map(|s| s.1).sum::<u64>(), 10 * PAGE_SIZE);
    assert_eq!(segs[0].0, pin.translate(100).unwrap());
    assert!(pin.segments(63 * PAGE_SIZE, 2 * PAGE_SIZE).is_none());
    assert!(pin.segments(u64::MAX, 2).is_none());
}

#[test]
fn pin_survives_aspace_teardown() {
    let mem = memory(32);
    let free0 = mem.free_bytes();
    let a = AddressSpace::new(&mem);
    let p = a.mmap_anonymous(4 * PAGE_SIZE).unwrap();
    a.write(p, b"outlives").unwrap();
    let pin = pin_user_pages(&a, p, 4 * PAGE_SIZE, PinFlags::WRITE, None).unwrap();
    drop(a);
    let mut b = [0u8; 8];
    mem.pool().read(pin.translate(0).unwrap(), &mut b).unwrap();
    assert_eq!(&b, b"outlives");
    assert_clean(&mem, &[]);
    drop(pin);
    assert_eq!(mem.free_bytes(), free0);
}
