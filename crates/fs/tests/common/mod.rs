//! Shared helpers for the filesystem tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use pinwheel_fs::*;
use pinwheel_mm::*;

pub fn memory(mib: u64) -> Arc<Memory> {
    Memory::new(Pool::memfd("fstest", mib << 20).unwrap(), RealClock::new())
}

pub fn manual_memory(mib: u64) -> (Arc<Memory>, Arc<ManualClock>) {
    let c = ManualClock::new();
    (Memory::new(Pool::memfd("fstest", mib << 20).unwrap(), c.clone()), c)
}

pub fn mkfs(mem: &Arc<Memory>, policy: PinPolicy) -> Filesystem {
    Filesystem::mkfs(
        mem,
        MkfsOptions::default(),
        MountOptions { policy, lease_break: Duration::from_millis(200) },
    )
    .unwrap()
}

pub fn admin() -> Caller {
    Caller::admin()
}

pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i % 251) as u8)).collect()
}

/// A file of `pages` pages filled with `pattern(seed)`.
pub fn file(fs: &Filesystem, path: &str, pages: u64, seed: u8) -> Ino {
    let ino = fs.create(path, CreateOptions::default()).unwrap();
    fs.write(ino, 0, &pattern(seed, (pages * PAGE_SIZE) as usize), &admin()).unwrap();
    ino
}

pub fn read_all(fs: &Filesystem, ino: Ino) -> Vec<u8> {
    let size = fs.stat_ino(ino).unwrap().size;
    let mut b = vec![0u8; size as usize];
    let n = fs.read(ino, 0, &mut b).unwrap();
    assert_eq!(n as u64, size);
    b
}

pub fn assert_fsck(fs: &Filesystem) {
    let r = fs.fsck();
    assert!(r.clean(), "fsck: {:#?}", r.errors);
    let bad = fs.memory().check_invariants();
    assert!(bad.is_empty(), "mm invariants: {bad:#?}");
}
