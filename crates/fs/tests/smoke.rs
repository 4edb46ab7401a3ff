#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
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
