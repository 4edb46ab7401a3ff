#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use pinwheel_fs::limits as fs_limits;
use pinwheel_fs::*;
use pinwheel_mm::*;

#[test]
fn smoke_create_write_read_remount() {
    let mem = memory(32);
    let fs = mkfs(&mem, PinPolicy::Deny);
    fs.mkdir("/d").unwrap();
    let ino = file(&fs, "/d/f", 3, 7);
    assert_eq!(read_all(&fs, ino), pattern(7, 3 * 4096));
    let st = fs.stat("/d/f").unwrap();
    assert_eq!((st.size, st.blocks), (3 * 4096, 3));
    assert_fsck(&fs);
    fs.unmount().unwrap();
    let pool = Pool::from_fd(mem.pool().fd().try_clone_to_owned().unwrap()).unwrap();
    drop(fs);
    drop(mem);
    let mem2 = Memory::new(pool, RealClock::new());
    let fs2 = Filesystem::mount(&mem2, MountOptions::default()).unwrap();
    let ino2 = fs2.lookup("/d/f").unwrap();
    assert_eq!(read_all(&fs2, ino2), pattern(7, 3 * 4096));
    assert_eq!(fs2.readdir("/").unwrap().len(), 1);
    assert_fsck(&fs2);
}

/// Running out of space in the middle of a change leaves a consistent image: the reference
/// counts of what was done are recorded with the extents (found by the CLI's tests).
#[test]
fn smoke_enospc_mid_change_keeps_the_image_consistent() {
    let mem = memory(16);
    let fs = mkfs(&mem, PinPolicy::Deny);
    let big = fs.create("/big", CreateOptions::default()).unwrap();
    let free = fs.stats().free_blocks;
    let n = (free - fs_limits::META_RESERVE_FRAMES - 16) * PAGE_SIZE;
    fs.write(big, 0, &vec![1u8; n as usize], &admin()).unwrap();
    fs.clone_file("/big", "/big2", &admin()).unwrap();
    let big2 = fs.lookup("/big2").unwrap();
    let e = fs.write(big2, 0, &vec![2u8; n as usize], &admin()).unwrap_err();
    assert_eq!(e.errno(), Errno::ENOSPC);
    assert_fsck(&fs);
    // And a write over two holes where only the first can be allocated.
    let f = fs.create("/holes", CreateOptions::default()).unwrap();
    fs.truncate(f, 1 << 30, &admin()).unwrap();
    assert_eq!(
        fs.write(f, 0, &vec![3u8; (64 << 20) as usize], &admin()).unwrap_err().errno(),
        Errno::ENOSPC
    );
    assert_fsck(&fs);
    fs.unmount().unwrap();
}
