//! DAX mappings: mappings reach the file's blocks, and every layout change keeps them coherent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use pinwheel_fs::*;
use pinwheel_mm::*;

fn map(fs: &Filesystem, a: &AddressSpace, ino: Ino, pages: u64) -> VirtAddr {
    a.mmap(MmapRequest::file(fs.backing(ino).unwrap(), FileOffset::new(0), pages * PAGE_SIZE))
        .unwrap()
}

fn at(p: VirtAddr, page: u64) -> VirtAddr {
    VirtAddr::new(p.raw() + page * PAGE_SIZE)
}

fn frames(fs: &Filesystem, ino: Ino) -> Vec<Pfn> {
    fs.extents(ino).unwrap().iter().flat_map(|e| e.frames().iter()).collect()
}

#[test]
fn dax_mapping_reaches_the_blocks_both_ways() {
    let mem = memory(32);
    let fs = mkfs(&mem, PinPolicy::Deny);
    let ino = file(&fs, "/f", 4, 1);
    let a = AddressSpace::new(&mem);
    let b = AddressSpace::new(&mem);
    let pa = map(&fs, &a, ino, 4);
    let pb = map(&fs, &b, ino, 4);
    a.write(at(pa, 2), b"through the mapping").unwrap();
    assert_eq!(a.translate(at(pa, 2)), Some(frames(&fs, ino)[2]), "no page cache in between");
    let mut buf = [0u8; 19];
    fs.read(ino, 2 * PAGE_SIZE, &mut buf).unwrap();
    assert_eq!(&buf, b"through the mapping");
    b.read(at(pb, 2), &mut buf).unwrap();
    assert_eq!(&buf, b"through the mapping", "a second address space sees the same bytes");
    fs.write(ino, 3 * PAGE_SIZE, b"through write()", &admin()).unwrap();
    let mut buf = [0u8; 15];
    a.read(at(pa, 3), &mut buf).unwrap();
    assert_eq!(&buf, b"through write()");
    assert_fsck(&fs);
}

#[test]
fn dax_truncate_zaps_and_access_beyond_eof_is_sigbus() {
    let mem = memory(32);
    let fs = mkfs(&mem, PinPolicy::Deny);
    let ino = file(&fs, "/f", 8, 1);
    let a = AddressSpace::new(&mem);
    let p = map(&fs, &a, ino, 8);
    let mut b = [0u8; 1];
    a.read(at(p, 6), &mut b).unwrap();
    fs.truncate(ino, 3 * PAGE_SIZE + 100, &admin()).unwrap();
    assert_eq!(a.translate(at(p, 6)), None, "zapped before the block was freed");
    let e = a.read(at(p, 6), &mut b).unwrap_err();
    assert!(matches!(e, MmError::BeyondEof { .. }), "{e}");
    a.read(VirtAddr::new(at(p, 3).raw() + 99), &mut b).unwrap();
    assert_eq!(b[0], pattern(1, 4 * 4096)[3 * 4096 + 99]);
    a.read(VirtAddr::new(at(p, 3).raw() + 100), &mut b).unwrap();
    assert_eq!(b[0], 0, "the tail of the last page is zeroed");
    fs.truncate(ino, 8 * PAGE_SIZE, &admin()).unwrap();
    a.read(at(p, 6), &mut b).unwrap();
    assert_eq!(b[0], 0, "regrown: a hole reads zeros");
    assert_fsck(&fs);
    assert!(a.check_invariants().is_empty());
}

#[test]
fn dax_defrag_moves_blocks_and_mappings_follow() {
    let mem = memory(32);
    let fs = mkfs(&mem, PinPolicy::Deny);
    let ino = file(&fs, "/f", 8, 5);
    let a = AddressSpace::new(&mem);
    let p = map(&fs, &a, ino, 8);
    let mut content = vec![0u8; (8 * PAGE_SIZE) as usize];
    a.read(p, &mut content).unwrap();
    let old = frames(&fs, ino);
    let r = fs.defrag(ino, DefragOptions::default(), &admin()).unwrap();
    assert_eq!(r.pages_moved, 8);
    let new = frames(&fs, ino);
    assert!(old.iter().all(|f| !new.contains(f)));
    assert_eq!(a.translate(p), None, "zapped");
    let mut again = vec![0u8; content.len()];
    a.read(p, &mut again).unwrap();
    assert_eq!(again, content, "same content");
    assert_eq!(a.translate(p), Some(new[0]), "new frames");
    assert_fsck(&fs);
}

#[test]
fn dax_write_fault_on_a_reflinked_block_copies_it() {
    let mem = memory(32);
    let fs = mkfs(&mem, PinPolicy::Deny);
    let src = file(&fs, "/src", 4, 2);
    let dst = fs.clone_file("/src", "/dst", &admin()).unwrap();
    assert_eq!(fs.stat("/dst").unwrap().shared_blocks, 4);
    assert_eq!(frames(&fs, src), frames(&fs, dst));
    let a = AddressSpace::new(&mem);
    let p = map(&fs, &a, dst, 4);
    let mut b = [0u8; 4];
    a.read(at(p, 1), &mut b).unwrap();
    assert_eq!(
        a.translate(at(p, 1)),
        Some(frames(&fs, src)[1]),
        "read fault maps the shared block"
    );
    a.write(at(p, 1), b"CoW!").unwrap();
    assert_ne!(frames(&fs, dst)[1], frames(&fs, src)[1], "write fault copied the block");
    assert_eq!(read_all(&fs, src), pattern(2, 4 * 4096), "the source is unchanged");
    let d = read_all(&fs, dst);
    assert_eq!(&d[4096..4100], b"CoW!");
    assert_eq!(fs.stat("/dst").unwrap().shared_blocks, 3);
    assert_fsck(&fs);
}

#[test]
fn dax_page_cache_files_map_cache_frames_written_back() {
    let mem = memory(32);
    let fs = mkfs(&mem, PinPolicy::Deny);
    let ino = fs.create("/pc", CreateOptions { page_cache: true }).unwrap();
    fs.write(ino, 0, &pattern(4, 2 * 4096), &admin()).unwrap();
    let a = AddressSpace::new(&mem);
    let p = map(&fs, &a, ino, 2);
    a.write(p, b"cached").unwrap();
    let f = a.translate(p).unwrap();
    assert_eq!(mem.frames().owner(f), Owner::PageCache(ino.file_id()));
    let mut b = [0u8; 6];
    fs.read(ino, 0, &mut b).unwrap();
    assert_eq!(&b, b"cached", "read() sees the cache");
    fs.fsync(ino).unwrap();
    let blk = frames(&fs, ino)[0];
    assert_ne!(blk, f);
    mem.pool().read(blk.offset(), &mut b).unwrap();
    assert_eq!(&b, b"cached", "written back to the block");
    assert_fsck(&fs);
    drop(a);
    fs.unmount().unwrap();
    let pool = Pool::from_fd(mem.pool().fd().try_clone_to_owned().unwrap()).unwrap();
    drop(fs);
    let mem2: Arc<Memory> = Memory::new(pool, RealClock::new());
    let fs2 = Filesystem::mount(&mem2, MountOptions::default()).unwrap();
    let mut b = [0u8; 6];
    fs2.read(fs2.lookup("/pc").unwrap(), 0, &mut b).unwrap();
    assert_eq!(&b, b"cached");
}

/// Regression: a copy-on-write fault through a mapping took the runtime lock before the
/// layout lock, the reverse of `write()`'s order; both at once on a shared file deadlocked.
#[test]
fn dax_cow_fault_and_write_on_a_shared_file_do_not_deadlock() {
    let mem = memory(64);
    let fs = mkfs(&mem, PinPolicy::Deny);
    let ino = file(&fs, "/f", 16, 1);
    let a = AddressSpace::new(&mem);
    let p = map(&fs, &a, ino, 16);
    let (tx, rx) = std::sync::mpsc::channel();
    let fs2 = fs.clone();
    let t = std::thread::spawn(move || {
        for round in 0..40 {
            let snap = format!("/snap{round}");
            fs2.clone_file("/f", &snap, &admin()).unwrap();
            for page in (0..16).rev() {
                fs2.write(ino, page * PAGE_SIZE + 8, b"write()", &admin()).unwrap();
            }
            fs2.unlink(&snap, &admin()).unwrap();
        }
        tx.send(()).unwrap();
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        for page in 0..16 {
            a.write(at(p, page), b"store").unwrap();
        }
        match rx.try_recv() {
            Ok(()) => break,
            Err(_) => assert!(std::time::Instant::now() < deadline, "deadlocked"),
        }
    }
    t.join().unwrap();
    assert_fsck(&fs);
}
