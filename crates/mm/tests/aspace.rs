//! Address-space operations with Linux semantics, file mappings and the reverse map.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{ToyFile, assert_clean, memory};
use pinwheel_mm::*;

const MIB: u64 = 1 << 20;

fn read_byte(a: &AddressSpace, at: VirtAddr) -> Result<u8, MmError> {
    let mut b = [0u8];
    a.read(at, &mut b).map(|_| b[0])
}

#[test]
fn aspace_anon_faults_zero_then_keeps_writes() {
    let mem = memory(32);
    let a = AddressSpace::new(&mem);
    let p = a.mmap_anonymous(3 * PAGE_SIZE).unwrap();
    assert_eq!(read_byte(&a, p).unwrap(), 0);
    let data: Vec<u8> = (0..(3 * PAGE_SIZE - 100)).map(|i| (i % 251) as u8).collect();
    a.write(p.checked_add(50).unwrap(), &data).unwrap();
    let mut back = vec![0u8; data.len()];
    a.read(p.checked_add(50).unwrap(), &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(a.resident(), (3, 0));
    assert_clean(&mem, &[&a]);
}

#[test]
fn aspace_munmap_frees_and_faults() {
    let mem = memory(32);
    let free0 = mem.free_bytes();
    let a = AddressSpace::new(&mem);
    let p = a.mmap_anonymous(8 * PAGE_SIZE).unwrap();
    a.write(p, &vec![7u8; (8 * PAGE_SIZE) as usize]).unwrap();
    // Unmap the middle: splits the mapping.
    let mid = p.checked_add(2 * PAGE_SIZE).unwrap();
    a.munmap(mid, 3 * PAGE_SIZE).unwrap();
    assert_eq!(a.mappings().len(), 2);
    assert_eq!(read_byte(&a, mid).unwrap_err().errno(), Errno::EFAULT);
    assert_eq!(read_byte(&a, p.checked_add(5 * PAGE_SIZE).unwrap()).unwrap(), 7);
    // Unmapping unmapped space is fine, as on Linux.
    a.munmap(mid, PAGE_SIZE).unwrap();
    a.munmap(p, 8 * PAGE_SIZE).unwrap();
    assert_eq!(mem.free_bytes(), free0);
    assert_clean(&mem, &[&a]);
}

#[test]
fn aspace_bad_input_is_an_error_never_a_panic() {
    let mem = memory(32);
    let a = AddressSpace::new(&mem);
    let p = a.mmap_anonymous(PAGE_SIZE).unwrap();
    let einval = |r: Result<(), MmError>| assert_eq!(r.unwrap_err().errno(), Errno::EINVAL);
    einval(a.munmap(VirtAddr::new(p.raw() + 1), PAGE_SIZE));
    einval(a.munmap(p, 0));
    einval(a.munmap(VirtAddr::new(u64::MAX - 4095), 8192));
    einval(a.mprotect(VirtAddr::new(3), 1, Prot::READ));
    einval(a.madvise_dontneed(p, 0));
    assert_eq!(a.mmap_anonymous(0).unwrap_err().errno(), Errno::EINVAL);
    assert_eq!(a.mmap_anonymous(u64::MAX).unwrap_err().errno(), Errno::EINVAL);
    let fixed =
        MmapRequest::anonymous(PAGE_SIZE).flags(MapFlags::FIXED).at(VirtAddr::new(p.raw() + 12));
    assert_eq!(a.mmap(fixed).unwrap_err().errno(), Errno::EINVAL);
    let noreplace = MmapRequest::anonymous(PAGE_SIZE).flags(MapFlags::FIXED_NOREPLACE).at(p);
    assert_eq!(a.mmap(noreplace).unwrap_err().errno(), Errno::EEXIST);
    assert_eq!(a.read(VirtAddr::new(u64::MAX), &mut [0; 2]).unwrap_err().errno(), Errno::EINVAL);
    assert_eq!(read_byte(&a, VirtAddr::new(0)).unwrap_err().errno(), Errno::EFAULT);
    assert_eq!(
        a.mremap(p, PAGE_SIZE, 0, RemapFlags::empty(), None).unwrap_err().errno(),
        Errno::EINVAL
    );
    assert_eq!(
        a.mremap(p, PAGE_SIZE, 2 * PAGE_SIZE, RemapFlags::FIXED, Some(p)).unwrap_err().errno(),
        Errno::EINVAL
    );
    assert_eq!(
        a.mremap(VirtAddr::new(0x1000), 4096, 8192, RemapFlags::MAYMOVE, None).unwrap_err().errno(),
        Errno::EFAULT
    );
    assert_eq!(a.mprotect(p, 2 * PAGE_SIZE, Prot::READ).unwrap_err().errno(), Errno::ENOMEM);
    assert_eq!(a.madvise_dontneed(p, 2 * PAGE_SIZE).unwrap_err().errno(), Errno::ENOMEM);
    assert_clean(&mem, &[&a]);
}

#[test]
fn aspace_mremap_grow_move_shrink_keep_contents() {
    let mem = memory(32);
    let a = AddressSpace::new(&mem);
    let p = a.mmap_anonymous(2 * PAGE_SIZE).unwrap();
    a.write(p, b"first").unwrap();
    a.write(p.checked_add(PAGE_SIZE).unwrap(), b"second").unwrap();
    // Grow in place (nothing after it).
    let q = a.mremap(p, 2 * PAGE_SIZE, 4 * PAGE_SIZE, RemapFlags::empty(), None).unwrap();
    assert_eq!(q, p);
    // Block the space after it, then grow: must move.
    let blocker = MmapRequest::anonymous(PAGE_SIZE)
        .flags(MapFlags::FIXED_NOREPLACE)
        .at(p.checked_add(4 * PAGE_SIZE).unwrap());
    a.mmap(blocker).unwrap();
    assert_eq!(
        a.mremap(p, 4 * PAGE_SIZE, 8 * PAGE_SIZE, RemapFlags::empty(), None).unwrap_err().errno(),
        Errno::ENOMEM
    );
    let m = a.mremap(p, 4 * PAGE_SIZE, 8 * PAGE_SIZE, RemapFlags::MAYMOVE, None).unwrap();
    assert_ne!(m, p);
    let mut b = [0u8; 6];
    a.read(m.checked_add(PAGE_SIZE).unwrap(), &mut b).unwrap();
    assert_eq!(&b, b"second");
    assert_eq!(read_byte(&a, p).unwrap_err().errno(), Errno::EFAULT);
    // Shrink.
    assert_eq!(a.mremap(m, 8 * PAGE_SIZE, PAGE_SIZE, RemapFlags::empty(), None).unwrap(), m);
    assert_eq!(
        read_byte(&a, m.checked_add(PAGE_SIZE).unwrap()).unwrap_err().errno(),
        Errno::EFAULT
    );
    // MREMAP_FIXED to a chosen address.
    let to = VirtAddr::new(0x7000_0000_0000);
    let f = a
        .mremap(m, PAGE_SIZE, PAGE_SIZE, RemapFlags::MAYMOVE | RemapFlags::FIXED, Some(to))
        .unwrap();
    assert_eq!(f, to);
    a.read(to, &mut b[..5]).unwrap();
    assert_eq!(&b[..5], b"first");
    assert_clean(&mem, &[&a]);
}

#[test]
fn aspace_mprotect_and_dontneed() {
    let mem = memory(32);
    let a = AddressSpace::new(&mem);
    let p = a.mmap_anonymous(4 * PAGE_SIZE).unwrap();
    a.write(p, &[9u8; 4 * 4096]).unwrap();
    a.mprotect(p.checked_add(PAGE_SIZE).unwrap(), PAGE_SIZE, Prot::READ).unwrap();
    assert_eq!(a.mappings().len(), 3);
    assert_eq!(
        a.write(p.checked_add(PAGE_SIZE).unwrap(), b"x").unwrap_err().errno(),
        Errno::EFAULT
    );
    assert_eq!(read_byte(&a, p.checked_add(PAGE_SIZE).unwrap()).unwrap(), 9);
    a.mprotect(p, PAGE_SIZE, Prot::empty()).unwrap();
    assert_eq!(read_byte(&a, p).unwrap_err().errno(), Errno::EFAULT);
    a.mprotect(p, 4 * PAGE_SIZE, Prot::READ | Prot::WRITE).unwrap();
    a.write(p.checked_add(PAGE_SIZE).unwrap(), b"y").unwrap();
    a.madvise_dontneed(p, 2 * PAGE_SIZE).unwrap();
    assert_eq!(
        read_byte(&a, p.checked_add(PAGE_SIZE).unwrap()).unwrap(),
        0,
        "DONTNEED: zero-fill on next touch"
    );
    assert_eq!(read_byte(&a, p.checked_add(2 * PAGE_SIZE).unwrap()).unwrap(), 9);
    assert_clean(&mem, &[&a]);
}

#[test]
fn aspace_huge_mappings_need_2mib_cuts() {
    let mem = memory(64);
    let a = AddressSpace::new(&mem);
    let p = a.mmap(MmapRequest::anonymous(4 * MIB).flags(MapFlags::HUGE)).unwrap();
    assert_eq!(p.raw() % HUGE_PAGE_SIZE, 0);
    a.write(p.checked_add(3 * MIB).unwrap(), b"huge").unwrap();
    assert_eq!(a.resident(), (0, 1));
    let pfn = a.translate(p.checked_add(3 * MIB).unwrap()).unwrap();
    assert!(mem.frames().info(pfn.huge_head()).flags.contains(FrameFlags::HUGE_HEAD));
    assert_eq!(
        a.munmap(p.checked_add(PAGE_SIZE).unwrap(), PAGE_SIZE).unwrap_err().errno(),
        Errno::EINVAL
    );
    assert_eq!(a.madvise_dontneed(p, PAGE_SIZE).unwrap_err().errno(), Errno::EINVAL);
    let m = a.mremap(p, 4 * MIB, 8 * MIB, RemapFlags::MAYMOVE, None).unwrap();
    let mut b = [0u8; 4];
    a.read(m.checked_add(3 * MIB).unwrap(), &mut b).unwrap();
    assert_eq!(&b, b"huge");
    a.munmap(m.checked_add(2 * MIB).unwrap(), 2 * MIB).unwrap();
    assert_eq!(a.resident(), (0, 0));
    assert_clean(&mem, &[&a]);
}

#[test]
fn aspace_file_mapping_sees_file_blocks() {
    let mem = memory(32);
    let f = ToyFile::new(&mem, 7, 4, 0xaa);
    let a = AddressSpace::new(&mem);
    let backing: Arc<dyn FileBacking> = f.clone();
    let p = a.mmap(MmapRequest::file(backing, FileOffset::new(PAGE_SIZE), 3 * PAGE_SIZE)).unwrap();
    assert_eq!(read_byte(&a, p).unwrap(), 0xaa);
    assert_eq!(a.translate(p), Some(f.block(1)), "DAX: the file's own block, no copy");
    a.write(p.checked_add(10).unwrap(), b"via map").unwrap();
    let mut b = [0u8; 7];
    mem.pool().read(PoolOffset::new(f.block(1).offset().raw() + 10), &mut b).unwrap();
    assert_eq!(&b, b"via map");
    assert!(mem.frames().info(f.block(1)).flags.contains(FrameFlags::DIRTY));
    assert_eq!(mem.file_mappings(f.id).len(), 1);
    assert_clean(&mem, &[&a]);
    // Truncate under the mapping: zapped, and access beyond EOF is SIGBUS (EFAULT).
    f.truncate(2).unwrap();
    assert_eq!(a.translate(p.checked_add(PAGE_SIZE).unwrap()), None);
    let e = a.read(p.checked_add(PAGE_SIZE).unwrap(), &mut b).unwrap_err();
    assert!(matches!(e, MmError::BeyondEof { .. }), "{e}");
    assert_eq!(e.errno(), Errno::EFAULT);
    assert_eq!(read_byte(&a, p).unwrap(), 0xaa, "below EOF still mapped");
    assert_clean(&mem, &[&a]);
}

#[test]
fn aspace_rmap_zaps_every_mapping_in_every_aspace() {
    let mem = memory(32);
    let f = ToyFile::new(&mem, 9, 4, 1);
    let backing: Arc<dyn FileBacking> = f.clone();
    let a = AddressSpace::new(&mem);
    let b = AddressSpace::new(&mem);
    let pa = a.mmap(MmapRequest::file(backing.clone(), FileOffset::new(0), 4 * PAGE_SIZE)).unwrap();
    let pb = b
        .mmap(MmapRequest::file(backing.clone(), FileOffset::new(2 * PAGE_SIZE), 2 * PAGE_SIZE))
        .unwrap();
    // A second mapping in `a` split by mprotect, and one moved by mremap: the rmap follows.
    let pa2 = a.mmap(MmapRequest::file(backing, FileOffset::new(0), 4 * PAGE_SIZE)).unwrap();
    a.mprotect(pa2, PAGE_SIZE, Prot::READ).unwrap();
    let pa2m = a
        .mremap(
            pa2.checked_add(2 * PAGE_SIZE).unwrap(),
            2 * PAGE_SIZE,
            2 * PAGE_SIZE,
            RemapFlags::MAYMOVE | RemapFlags::FIXED,
            Some(VirtAddr::new(0x6000_0000_0000)),
        )
        .unwrap();
    for (s, at) in [
        (&a, pa.checked_add(3 * PAGE_SIZE).unwrap()),
        (&b, pb.checked_add(PAGE_SIZE).unwrap()),
        (&a, pa2m.checked_add(PAGE_SIZE).unwrap()),
    ] {
        read_byte(s, at).unwrap();
        assert_eq!(s.translate(at), Some(f.block(3)));
    }
    let old = f.block(3);
    let new = f.migrate(3);
    assert_ne!(old, new);
    for (s, at) in [
        (&a, pa.checked_add(3 * PAGE_SIZE).unwrap()),
        (&b, pb.checked_add(PAGE_SIZE).unwrap()),
        (&a, pa2m.checked_add(PAGE_SIZE).unwrap()),
    ] {
        assert_eq!(s.translate(at), None, "zapped");
        assert_eq!(read_byte(s, at).unwrap(), 1, "content kept");
        assert_eq!(s.translate(at), Some(new), "refaulted to the new block");
    }
    assert_eq!(mem.frames().owner(old), Owner::Free);
    assert_clean(&mem, &[&a, &b]);
    drop(a);
    assert_eq!(mem.file_mappings(f.id).len(), 1, "a's mappings gone with it");
    drop(b);
    assert!(mem.file_mappings(f.id).is_empty());
    assert_clean(&mem, &[]);
}

#[test]
fn aspace_drop_releases_everything() {
    let mem = memory(32);
    let free0 = mem.free_bytes();
    let a = AddressSpace::new(&mem);
    let p = a.mmap_anonymous(16 * PAGE_SIZE).unwrap();
    a.write(p, &vec![1u8; 16 * 4096]).unwrap();
    let h =
        a.mmap(MmapRequest::anonymous(2 * MIB).flags(MapFlags::HUGE | MapFlags::POPULATE)).unwrap();
    assert!(a.translate(h).is_some(), "MAP_POPULATE faulted it in");
    drop(a);
    assert_eq!(mem.free_bytes(), free0);
    assert_clean(&mem, &[]);
}

#[test]
fn aspace_pool_exhaustion_is_enomem() {
    let mem = memory(16);
    let a = AddressSpace::new(&mem);
    let p = a.mmap_anonymous(32 * MIB).unwrap();
    let e = a.write(p, &vec![1u8; (32 * MIB) as usize]).unwrap_err();
    assert_eq!(e.errno(), Errno::ENOMEM);
    assert_clean(&mem, &[&a]);
}

#[test]
fn aspace_trim_returns_free_memory_and_keeps_zero_fill() {
    let mem = memory(32);
    let a = AddressSpace::new(&mem);
    let p = a.mmap_anonymous(64 * PAGE_SIZE).unwrap();
    a.write(p, &vec![0x5au8; (64 * PAGE_SIZE) as usize]).unwrap();
    a.munmap(p, 64 * PAGE_SIZE).unwrap();
    let trimmed = mem.trim().unwrap();
    assert!(trimmed >= 64 * PAGE_SIZE, "trimmed {trimmed}");
    // Recycled (dirty) and trimmed (clean) frames both read as zeros when faulted in again.
    let q = a.mmap_anonymous(64 * PAGE_SIZE).unwrap();
    let mut b = vec![1u8; (64 * PAGE_SIZE) as usize];
    a.read(q, &mut b).unwrap();
    assert!(b.iter().all(|x| *x == 0));
    assert_clean(&mem, &[&a]);
}
