#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Corrupted images: a small filesystem is made and unmounted once, then each test damages a
//! copy of the raw pool and checks that `pinwheel_fs::fsck` reports it (never panicking) and
//! that `Filesystem::mount` refuses it with `EUCLEAN` (or at least returns, for garbage).
//!
//! A property test flips random bytes of the metadata region and of directory and extent
//! blocks and checks that fsck and mount return, that an image fsck passes mounts, that an
//! image mount calls corrupt fails fsck, and that an accepted image can be used and unmounted.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};

use common::*;
use pinwheel_fs::format::{
    DIRENT_SIZE, Dirent, ExtentBlock, ExtentRecord, Geometry, INODE_SIZE, InodeKind, InodeRecord,
    Superblock,
};
use pinwheel_fs::*;
use pinwheel_mm::*;
use proptest::prelude::*;

const POOL_MIB: u64 = 16;
const PAGE: u64 = 4096;

/// The pristine image and where things are in it.
struct Image {
    bytes: Vec<u8>,
    geo: Geometry,
    sb: Superblock,
    root: u64,
    /// `/a`, `/a/b`.
    dir_a: u64,
    dir_b: u64,
    /// `/f1`: 2 pages, shared with `/a/b/f3` (reflink; reference counts 2).
    f1: u64,
    /// `/a/f2`: 11 one-page extents (pages 0, 2, … 20), so an extent block; counts 1.
    f2: u64,
    /// `/a/b/f3`: the clone of `/f1`.
    f3: u64,
    /// `/empty`.
    empty: u64,
    /// An inode slot never used.
    free_ino: u64,
    /// Pool offset of an empty directory slot inside the root's size (left by an unlink).
    root_free_slot: u64,
    /// Pool offset of the slot of `/a/b/f3` in `/a/b`.
    f3_slot: u64,
    /// Frames of the directory blocks (root, `/a`, `/a/b`).
    dir_blocks: Vec<u64>,
    extent_block: u64,
    /// A data frame nobody uses.
    free_frame: u64,
    /// Highest frame in use + 1.
    used_frames: u64,
}

fn record(pool: &Pool, geo: &Geometry, ino: u64) -> InodeRecord {
    let mut b = [0u8; INODE_SIZE as usize];
    pool.read(PoolOffset::new(geo.inode_offset(ino)), &mut b).unwrap();
    InodeRecord::decode(&b, ino).unwrap()
}

fn put_record(pool: &Pool, geo: &Geometry, rec: &InodeRecord) {
    pool.write(PoolOffset::new(geo.inode_offset(rec.ino)), &rec.encode()).unwrap();
}

fn rc(pool: &Pool, geo: &Geometry, pfn: u64) -> u16 {
    let mut b = [0u8; 2];
    pool.read(PoolOffset::new(geo.rc_offset(Pfn::new(pfn))), &mut b).unwrap();
    u16::from_le_bytes(b)
}

fn set_rc(pool: &Pool, geo: &Geometry, pfn: u64, v: u16) {
    pool.write(PoolOffset::new(geo.rc_offset(Pfn::new(pfn))), &v.to_le_bytes()).unwrap();
}

/// Pool offset of the directory slot naming `ino` in directory `dir`.
fn slot_of(pool: &Pool, geo: &Geometry, dir: u64, ino: u64) -> u64 {
    let rec = record(pool, geo, dir);
    let mut b = [0u8; DIRENT_SIZE as usize];
    for slot in 0..rec.size / DIRENT_SIZE {
        let off = slot * DIRENT_SIZE;
        let e = rec
            .inline
            .iter()
            .find(|e| off / PAGE >= e.page && off / PAGE < e.page + u64::from(e.count))
            .unwrap();
        let at = (e.pfn + off / PAGE - e.page) * PAGE + off % PAGE;
        pool.read(PoolOffset::new(at), &mut b).unwrap();
        if u64::from_le_bytes(b[..8].try_into().unwrap()) == ino {
            return at;
        }
    }
    panic!("inode {ino} not in directory {dir}");
}

fn build() -> Image {
    let mem = memory(POOL_MIB);
    let fs = mkfs(&mem, PinPolicy::Deny);
    let a = admin();
    let dir_a = fs.mkdir("/a").unwrap();
    let dir_b = fs.mkdir("/a/b").unwrap();
    let f1 = fs.create("/f1", CreateOptions::default()).unwrap();
    fs.write(f1, 0, &pattern(1, PAGE as usize + 100), &a).unwrap();
    let tmp = file(&fs, "/tmp", 1, 9);
    let f2 = fs.create("/a/f2", CreateOptions::default()).unwrap();
    for p in (0..=20).step_by(2) {
        fs.write(f2, p * PAGE, &pattern(p as u8, PAGE as usize), &a).unwrap();
    }
    let empty = fs.create("/empty", CreateOptions::default()).unwrap();
    let f3 = fs.clone_file("/f1", "/a/b/f3", &a).unwrap();
    fs.unlink("/tmp", &a).unwrap();
    assert_eq!(fs.stat("/a/f2").unwrap().extents, 11);
    assert_eq!(fs.stat("/a/b/f3").unwrap().shared_blocks, 2);
    assert_fsck(&fs);
    fs.unmount().unwrap();
    let pool = mem.pool();
    let mut sbuf = vec![0u8; PAGE as usize];
    pool.read(PoolOffset::new(0), &mut sbuf).unwrap();
    let sb = Superblock::decode(&sbuf, pool.size()).unwrap();
    let geo = sb.geometry;
    let root_rec = record(pool, &geo, sb.root_ino);
    let mut root_free_slot = None;
    let mut b = [0u8; DIRENT_SIZE as usize];
    for slot in 0..root_rec.size / DIRENT_SIZE {
        let at = root_rec.inline[0].pfn * PAGE + slot * DIRENT_SIZE;
        pool.read(PoolOffset::new(at), &mut b).unwrap();
        if b.iter().all(|x| *x == 0) {
            root_free_slot = Some(at);
        }
    }
    let dir_blocks: Vec<u64> = [sb.root_ino, dir_a.0, dir_b.0]
        .iter()
        .flat_map(|d| record(pool, &geo, *d).inline)
        .flat_map(|e| e.pfn..e.pfn + u64::from(e.count))
        .collect();
    let extent_block = record(pool, &geo, f2.0).extent_block;
    assert_ne!(extent_block, 0);
    let used_frames = (0..geo.frames).rev().find(|p| rc(pool, &geo, *p) != 0).unwrap() + 1;
    let free_frame = (geo.data_start()..geo.frames).find(|p| rc(pool, &geo, *p) == 0).unwrap();
    let inos = [sb.root_ino, dir_a.0, dir_b.0, f1.0, f2.0, f3.0, empty.0, tmp.0];
    let img = Image {
        bytes: {
            let mut v = vec![0u8; pool.size() as usize];
            pool.read(PoolOffset::new(0), &mut v).unwrap();
            v
        },
        geo,
        root: sb.root_ino,
        dir_a: dir_a.0,
        dir_b: dir_b.0,
        f1: f1.0,
        f2: f2.0,
        f3: f3.0,
        empty: empty.0,
        free_ino: inos.iter().max().unwrap() + 1,
        root_free_slot: root_free_slot.expect("the unlink of /tmp left a free slot"),
        f3_slot: slot_of(pool, &geo, dir_b.0, f3.0),
        dir_blocks,
        extent_block,
        free_frame,
        used_frames,
        sb,
    };
    assert_eq!(record(pool, &geo, img.free_ino).kind, InodeKind::Free);
    img
}

fn image() -> &'static Image {
    static IMG: OnceLock<Image> = OnceLock::new();
    IMG.get_or_init(build)
}

/// A fresh memfd pool holding a copy of the pristine image.
fn pool() -> Pool {
    let img = image();
    let p = Pool::memfd("corrupt", img.bytes.len() as u64).unwrap();
    for (i, chunk) in img.bytes.chunks(PAGE as usize).enumerate() {
        if chunk.iter().any(|b| *b != 0) {
            p.write(PoolOffset::new(i as u64 * PAGE), chunk).unwrap();
        }
    }
    p
}

/// A second mapping of the same pool (fsck reads one, mount gets the other).
fn dup(p: &Pool) -> Pool {
    Pool::from_fd(p.fd().try_clone_to_owned().unwrap()).unwrap()
}

/// fsck of the raw pool; a panic is re-raised naming the damage.
fn fsck_of(p: &Pool, what: &str) -> FsckReport {
    catch_unwind(AssertUnwindSafe(|| pinwheel_fs::fsck(p)))
        .unwrap_or_else(|_| panic!("fsck panicked on: {what}"))
}

/// Mounts the pool in a fresh memory; a panic is re-raised naming the damage.
fn mount_of(p: &Pool, what: &str) -> FsResult<(Arc<Memory>, Filesystem)> {
    let mem = Memory::new(dup(p), RealClock::new());
    catch_unwind(AssertUnwindSafe(|| Filesystem::mount(&mem, MountOptions::default())))
        .unwrap_or_else(|_| panic!("mount panicked on: {what}"))
        .map(|fs| (mem, fs))
}

/// The damage must be reported by fsck and refused by mount with `EUCLEAN`.
fn assert_refused(p: &Pool, what: &str) -> FsckReport {
    let r = fsck_of(p, what);
    assert!(!r.clean(), "{what}: fsck found nothing (warnings {:?})", r.warnings);
    match mount_of(p, what) {
        Ok(_) => panic!("{what}: mounted (fsck says {:?})", r.errors),
        Err(e) => assert_eq!(e.errno(), Errno::EUCLEAN, "{what}: mount failed with {e}"),
    }
    r
}

/// Garbage: fsck reports it, mount fails (any error) — neither panics.
fn assert_rejected(p: &Pool, what: &str) {
    let r = fsck_of(p, what);
    assert!(!r.clean(), "{what}: fsck found nothing");
    if let Ok((_m, fs)) = mount_of(p, what) {
        panic!("{what}: mounted (fsck says {:?}); fsck after mount: {:?}", r.errors, fs.fsck());
    }
}

/// Deterministic bytes (xorshift).
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn corrupt_pristine_image_is_clean_and_mounts() {
    let img = image();
    let p = pool();
    let r = fsck_of(&p, "nothing");
    assert!(r.clean(), "{:?}", r.errors);
    assert_eq!((r.files, r.dirs, r.blocks_shared), (4, 3, 2));
    let (_mem, fs) = mount_of(&p, "nothing").unwrap();
    assert_eq!(read_all(&fs, Ino(img.f3)), pattern(1, PAGE as usize + 100));
    assert_eq!(fs.lookup("/a/f2").unwrap(), Ino(img.f2));
    assert_eq!(fs.lookup("/empty").unwrap(), Ino(img.empty));
    assert_eq!(fs.lookup("/a/b").unwrap(), Ino(img.dir_b));
    assert_fsck(&fs);
}

#[test]
fn corrupt_superblock_byte_flips() {
    for at in
        [0u64, 3, 7, 8, 10, 12, 15, 16, 23, 24, 40, 56, 64, 72, 88, 96, 104, 112, 113, 2048, 4095]
    {
        for mask in [0x01u8, 0x80, 0xff] {
            let p = pool();
            let mut b = [0u8];
            p.read(PoolOffset::new(at), &mut b).unwrap();
            p.write(PoolOffset::new(at), &[b[0] ^ mask]).unwrap();
            assert_refused(&p, &format!("superblock byte {at} ^ {mask:#x}"));
        }
    }
}

#[test]
fn corrupt_superblock_bad_magic_or_gone() {
    let p = pool();
    p.write(PoolOffset::new(0), b"NOTPINWH").unwrap();
    assert_refused(&p, "bad magic");
    let p = pool();
    p.fill(PoolOffset::new(0), PAGE, 0).unwrap();
    assert_refused(&p, "zeroed superblock");
    let p = pool();
    p.write(PoolOffset::new(0), &garbage(7, PAGE as usize)).unwrap();
    assert_refused(&p, "garbage superblock");
}

/// Superblocks with a valid checksum and wrong fields.
#[test]
fn corrupt_superblock_fields_with_valid_checksum() {
    let img = image();
    type Edit<'a> = Box<dyn Fn(&mut Superblock) + 'a>;
    let cases: Vec<(&str, Edit<'_>)> = vec![
        ("root inode 0", Box::new(|s| s.root_ino = 0)),
        ("root inode past the table", Box::new(|s| s.root_ino = s.geometry.inodes + 1)),
        ("root inode is a file", Box::new(|s| s.root_ino = img.f1)),
        ("root inode is free", Box::new(|s| s.root_ino = img.free_ino)),
        ("pool size doubled", Box::new(|s| s.pool_size *= 2)),
        ("inode count + 1", Box::new(|s| s.geometry.inodes += 1)),
        ("rc table moved", Box::new(|s| s.geometry.rc_start += 1)),
        ("inode table moved", Box::new(|s| s.geometry.itable_start -= 1)),
        ("frames halved", Box::new(|s| s.geometry.frames /= 2)),
    ];
    for (what, f) in cases {
        let p = pool();
        let mut sb = img.sb.clone();
        f(&mut sb);
        p.write(PoolOffset::new(0), &sb.encode()).unwrap();
        assert_refused(&p, what);
    }
}

/// Extents with a valid inode checksum that point where no file block can be.
#[test]
fn corrupt_extent_records_out_of_bounds() {
    let img = image();
    let g = img.geo;
    let cases: Vec<(&str, ExtentRecord)> = vec![
        ("extent past the pool", ExtentRecord { page: 0, pfn: g.frames, count: 1 }),
        ("extent straddling the pool end", ExtentRecord { page: 0, pfn: g.frames - 1, count: 2 }),
        ("extent on the superblock", ExtentRecord { page: 0, pfn: 0, count: 1 }),
        ("extent on the journal", ExtentRecord { page: 0, pfn: g.journal_start, count: 1 }),
        ("extent on the rc table", ExtentRecord { page: 0, pfn: g.rc_start, count: 1 }),
        ("extent on the inode table", ExtentRecord { page: 0, pfn: g.itable_start, count: 1 }),
        (
            "extent straddling the data start",
            ExtentRecord { page: 0, pfn: g.data_start() - 1, count: 2 },
        ),
        ("empty extent", ExtentRecord { page: 0, pfn: img.free_frame, count: 0 }),
        ("extent pfn overflows", ExtentRecord { page: 0, pfn: u64::MAX - 1, count: 4 }),
        (
            "extent page overflows",
            ExtentRecord { page: u64::MAX - 1, pfn: img.free_frame, count: 4 },
        ),
        ("extent huge count", ExtentRecord { page: 0, pfn: g.data_start(), count: u32::MAX }),
    ];
    for (what, e) in cases {
        // In /empty (which has no extents of its own) and in place of /f1's first extent.
        let p = pool();
        let mut rec = record(&p, &g, img.empty);
        rec.size = 4 * PAGE;
        rec.n_extents = 1;
        rec.inline = vec![e];
        put_record(&p, &g, &rec);
        assert_refused(&p, &format!("{what} (in /empty)"));
        let p = pool();
        let mut rec = record(&p, &g, img.f1);
        rec.inline[0] = e;
        put_record(&p, &g, &rec);
        assert_refused(&p, &format!("{what} (in /f1)"));
    }
}

/// Extents pointing at blocks of another file or at metadata blocks of the data area.
#[test]
fn corrupt_extent_records_double_use() {
    let img = image();
    let g = img.geo;
    let p = pool();
    let f2_block = record(&p, &g, img.f2).inline[0].pfn;
    let cases = [
        ("block of /a/f2 (count 1) also in /empty", f2_block),
        ("extent block of /a/f2 used as data", img.extent_block),
        ("directory block used as data", img.dir_blocks[0]),
    ];
    for (what, pfn) in cases {
        let p = pool();
        let mut rec = record(&p, &g, img.empty);
        rec.size = PAGE;
        rec.n_extents = 1;
        rec.inline = vec![ExtentRecord { page: 0, pfn, count: 1 }];
        put_record(&p, &g, &rec);
        assert_refused(&p, what);
    }
    // Two extents of one file overlapping in file pages.
    let p = pool();
    let mut rec = record(&p, &g, img.f2);
    rec.inline[1].page = rec.inline[0].page;
    put_record(&p, &g, &rec);
    assert_refused(&p, "overlapping extents");
}

fn flip(p: &Pool, at: u64, mask: u8) {
    let mut b = [0u8];
    p.read(PoolOffset::new(at), &mut b).unwrap();
    p.write(PoolOffset::new(at), &[b[0] ^ mask]).unwrap();
}

/// Broken extent-block chains.
#[test]
fn corrupt_extent_chain() {
    let img = image();
    let g = img.geo;
    let edit = |what: &str, ino: u64, f: &dyn Fn(&Pool, &mut InodeRecord)| {
        let p = pool();
        let mut rec = record(&p, &g, ino);
        f(&p, &mut rec);
        put_record(&p, &g, &rec);
        assert_refused(&p, what);
    };
    let f2 = img.f2;
    edit("chain pointer 0", f2, &|_, r| r.extent_block = 0);
    edit("chain into the inode table", f2, &|_, r| r.extent_block = g.itable_start);
    edit("chain past the pool", f2, &|_, r| r.extent_block = g.frames + 5);
    edit("chain at a data block", f2, &|_, r| r.extent_block = r.inline[0].pfn);
    edit("chain at a free frame", f2, &|_, r| r.extent_block = img.free_frame);
    edit("chain at another directory's block", f2, &|_, r| r.extent_block = img.dir_blocks[0]);
    edit("more extents recorded than stored", f2, &|_, r| r.n_extents += 1);
    edit("fewer extents recorded than stored", f2, &|_, r| r.n_extents = 8);
    edit("absurd extent count", f2, &|_, r| r.n_extents = u32::MAX);
    edit("inline-only file claims a chain it lacks", img.f1, &|_, r| r.n_extents = 8);
    edit("extent block loops to itself", f2, &|p, r| {
        let blk = ExtentBlock {
            next: img.extent_block,
            extents: vec![ExtentRecord { page: 100, pfn: img.free_frame, count: 1 }],
        };
        p.write(Pfn::new(img.extent_block).offset(), &blk.encode()).unwrap();
        r.n_extents = 20;
        r.size = 200 * PAGE;
    });
    let edit_block = |what: &str, f: &dyn Fn(&mut ExtentBlock)| {
        edit(what, f2, &|p, _| {
            let mut b = vec![0u8; PAGE as usize];
            p.read(Pfn::new(img.extent_block).offset(), &mut b).unwrap();
            let mut blk = ExtentBlock::decode(&b, img.extent_block).unwrap();
            f(&mut blk);
            p.write(Pfn::new(img.extent_block).offset(), &blk.encode()).unwrap();
        })
    };
    edit_block("extent block record outside the pool", &|b| b.extents[0].pfn = g.frames + 1);
    edit_block("extent block record in the metadata area", &|b| b.extents[0].pfn = g.rc_start);
    edit_block("extent block record on its own block", &|b| b.extents[0].pfn = img.extent_block);
    edit_block("extent block record of zero pages", &|b| b.extents[0].count = 0);
    edit_block("extent block with a record too many", &|b| {
        b.extents.push(ExtentRecord { page: 40, pfn: img.free_frame, count: 1 })
    });
    edit("extent block with a bad checksum", f2, &|p, _| {
        flip(p, img.extent_block * PAGE + 30, 0x5a);
    });
}

/// A shared block whose count says it is not shared: two files would free it twice.
#[test]
fn corrupt_refcount_shared_block_too_low() {
    let img = image();
    let g = img.geo;
    for v in [0u16, 1] {
        let p = pool();
        let pfn = record(&p, &g, img.f1).inline[0].pfn;
        assert_eq!(rc(&p, &g, pfn), 2);
        set_rc(&p, &g, pfn, v);
        assert_refused(&p, &format!("shared block {pfn} with count {v}"));
    }
}

/// A file block marked free in the table.
#[test]

fn corrupt_refcount_used_block_marked_free() {
    let img = image();
    let g = img.geo;
    let p = pool();
    let pfn = record(&p, &g, img.f2).inline[0].pfn;
    assert_eq!(rc(&p, &g, pfn), 1);
    set_rc(&p, &g, pfn, 0);
    assert_refused(&p, "used block with count 0");
}

/// A block of one file whose count says two: it is never freed (and every write copies it).
#[test]

fn corrupt_refcount_too_high() {
    let img = image();
    let g = img.geo;
    let p = pool();
    let pfn = record(&p, &g, img.f2).inline[0].pfn;
    set_rc(&p, &g, pfn, 2);
    assert_refused(&p, "block of one file with count 2");
}

/// A free frame marked used (a leak), and a metadata frame marked free.
#[test]

fn corrupt_refcount_free_and_metadata_frames() {
    let img = image();
    let g = img.geo;
    let p = pool();
    set_rc(&p, &g, img.free_frame, 1);
    assert_refused(&p, "free frame with count 1");
    let p = pool();
    set_rc(&p, &g, img.extent_block, 0);
    assert_refused(&p, "extent block with count 0");
    let p = pool();
    set_rc(&p, &g, 0, 0);
    assert_refused(&p, "superblock frame with count 0");
}

/// What mount does with such counts: the file works, but the damage stays. Documents the
/// consequence of the bugs above (no panic, fsck keeps reporting it).
#[test]
fn corrupt_refcount_damage_does_not_panic_when_used() {
    let img = image();
    let g = img.geo;
    for (what, pfn, v) in [
        ("count 0", record(&pool(), &g, img.f2).inline[0].pfn, 0u16),
        ("count 3", record(&pool(), &g, img.f2).inline[1].pfn, 3),
        ("leak", img.free_frame, 7),
    ] {
        let p = pool();
        set_rc(&p, &g, pfn, v);
        assert!(!fsck_of(&p, what).clean(), "{what}");
        if let Ok((_mem, fs)) = mount_of(&p, what) {
            let ino = fs.lookup("/a/f2").unwrap();
            fs.write(ino, 0, &[1; 10], &admin()).unwrap();
            fs.write(ino, 2 * PAGE, &[2; 10], &admin()).unwrap();
            let _ = fs.clone_file("/a/f2", "/copy", &admin());
            fs.unlink("/a/f2", &admin()).unwrap();
            let _ = fs.fsck();
            assert!(fs.memory().check_invariants().is_empty(), "{what}");
            fs.unmount().unwrap();
        }
    }
}

fn put_dirent(p: &Pool, at: u64, ino: u64, name: &str) {
    p.write(PoolOffset::new(at), &Dirent { ino, name: name.into() }.encode()).unwrap();
}

#[test]
fn corrupt_dirent_names_free_inode() {
    let img = image();
    let p = pool();
    put_dirent(&p, img.root_free_slot, img.free_ino, "ghost");
    let r = assert_refused(&p, "entry naming a free inode");
    assert!(r.errors.iter().any(|e| e.contains("free inode")), "{:?}", r.errors);
    // The entry of /a/b/f3 redirected to a free inode (f3 becomes unreachable too).
    let p = pool();
    put_dirent(&p, img.f3_slot, img.free_ino, "f3");
    assert_refused(&p, "entry redirected to a free inode");
    for ino in [img.geo.inodes + 1, u64::MAX] {
        let p = pool();
        put_dirent(&p, img.root_free_slot, ino, "ghost");
        assert_refused(&p, &format!("entry naming inode {ino} past the table"));
    }
}

#[test]
fn corrupt_dirent_bad_names() {
    let img = image();
    // Name length 0, too long, not UTF-8.
    for (len, byte) in [(0u16, b'x'), (241, b'x'), (u16::MAX, b'x'), (3, 0xff)] {
        let p = pool();
        let mut b = [0u8; DIRENT_SIZE as usize];
        b[..8].copy_from_slice(&img.f1.to_le_bytes());
        b[8..10].copy_from_slice(&len.to_le_bytes());
        b[16..19].fill(byte);
        p.write(PoolOffset::new(img.root_free_slot), &b).unwrap();
        assert_refused(&p, &format!("entry with name length {len}, bytes {byte:#x}"));
    }
    // The same name twice in one directory.
    let p = pool();
    put_dirent(&p, img.root_free_slot, img.empty, "f1");
    assert_refused(&p, "duplicate name");
}

/// Directory entries that break the tree: a directory inside itself, a loop.
#[test]

fn corrupt_dirent_directory_cycle() {
    let img = image();
    let p = pool();
    put_dirent(&p, img.f3_slot, img.dir_a, "up");
    assert_refused(&p, "/a/b/up names /a (a cycle)");
    let p = pool();
    put_dirent(&p, img.root_free_slot, img.root, "self");
    assert_refused(&p, "/self names the root");
}

/// A name for an inode whose link count is 0 (no orphan flag): mount takes it for an orphan
/// and frees it while the name stays, so the name dangles (and fsck then reports a free inode
/// named by a directory).
#[test]

fn corrupt_named_inode_with_zero_links() {
    let img = image();
    let g = img.geo;
    let p = pool();
    let mut rec = record(&p, &g, img.f3);
    rec.nlink = 0;
    put_record(&p, &g, &rec);
    let r = fsck_of(&p, "nlink 0");
    assert!(!r.clean(), "fsck: link count 0 but one entry");
    match mount_of(&p, "nlink 0") {
        Err(e) => assert_eq!(e.errno(), Errno::EUCLEAN, "{e}"),
        Ok((_mem, fs)) => {
            // The unmount waits for the orphan reaper.
            fs.unmount().unwrap();
            let after = fsck_of(&p, "nlink 0, after mount");
            panic!("mounted; fsck before: {:?}; after unmount: {:?}", r.errors, after.errors);
        }
    }
}

/// Records with valid checksums whose values are odd or inconsistent in ways mount may let
/// through: fsck must report each, and mount must either refuse it or give a filesystem that
/// can be used and unmounted without panicking.
#[test]
fn corrupt_crafted_records_never_panic() {
    let img = image();
    let g = img.geo;
    type Edit = Box<dyn Fn(&Pool)>;
    let inode = |ino: u64, f: fn(&mut InodeRecord, &Image)| -> Edit {
        Box::new(move |p: &Pool| {
            let mut r = record(p, &g, ino);
            f(&mut r, img);
            put_record(p, &g, &r);
        })
    };
    let cases: Vec<(&str, Edit)> = vec![
        (
            "extent far past EOF, near the end of the page space",
            inode(img.f1, |r, img| {
                r.inline.push(ExtentRecord { page: u64::MAX - 8, pfn: img.free_frame, count: 4 });
                r.n_extents += 1;
            }),
        ),
        // Blocks beyond the end of file are valid (fallocate with KEEP_SIZE): not asserted below.
        ("file size 0 with extents", inode(img.f2, |r, _| r.size = 0)),
        ("file size u64::MAX", inode(img.empty, |r, _| r.size = u64::MAX)),
        ("directory size not a multiple of 256", inode(img.dir_a, |r, _| r.size += 100)),
        (
            "directory with a block past its size",
            inode(img.dir_b, |r, img| {
                r.inline.push(ExtentRecord { page: 3, pfn: img.free_frame, count: 1 });
                r.n_extents += 1;
            }),
        ),
        ("a file turned into a directory", inode(img.f1, |r, _| r.kind = InodeKind::Dir)),
        ("a directory turned into a file", inode(img.dir_b, |r, _| r.kind = InodeKind::File)),
        ("link count 2 for one name", inode(img.f1, |r, _| r.nlink = 2)),
        (
            "an unnamed file",
            Box::new(move |p: &Pool| p.fill(PoolOffset::new(img.f3_slot), DIRENT_SIZE, 0).unwrap()),
        ),
        (
            "a second name for a file",
            Box::new(move |p: &Pool| put_dirent(p, img.root_free_slot, img.f2, "twin")),
        ),
        (
            "a name with a slash",
            Box::new(move |p: &Pool| put_dirent(p, img.root_free_slot, img.f3, "x/y")),
        ),
    ];
    for (what, edit) in cases {
        let p = pool();
        edit(&p);
        let r = fsck_of(&p, what);
        assert!(!r.clean() || what == "file size 0 with extents", "{what}: fsck found nothing");
        if let Ok((_mem, fs)) = mount_of(&p, what) {
            catch_unwind(AssertUnwindSafe(|| exercise(&fs)))
                .unwrap_or_else(|_| panic!("using the mounted image panicked: {what}"));
        }
    }
}

/// Superblock counters at their maximum (valid checksum): the next mount or the next inode
/// must not overflow.
fn superblock_counter_at_max(what: &str, f: fn(&mut Superblock)) {
    let img = image();
    let p = pool();
    let mut sb = img.sb.clone();
    f(&mut sb);
    p.write(PoolOffset::new(0), &sb.encode()).unwrap();
    let _ = fsck_of(&p, what);
    if let Ok((_mem, fs)) = mount_of(&p, what) {
        catch_unwind(AssertUnwindSafe(|| {
            let _ = fs.create("/new", CreateOptions::default());
            let _ = fs.unmount();
        }))
        .unwrap_or_else(|_| panic!("create panicked: {what}"));
    }
}

#[test]

fn corrupt_superblock_mount_count_at_max() {
    superblock_counter_at_max("mount count u64::MAX", |s| s.mount_count = u64::MAX);
}

#[test]

fn corrupt_superblock_next_generation_at_max() {
    superblock_counter_at_max("next generation u64::MAX", |s| s.next_generation = u64::MAX);
}

/// A directory whose recorded size runs far past its blocks: mount and fsck walk every slot
/// the size implies (mount also records each as a free slot), so their time and memory follow
/// a number the image chooses — at the largest file size, 2^32 slots. Here 2^20 slots, which
/// both get through; they should refuse the size instead.
#[test]

fn corrupt_directory_size_past_its_blocks() {
    let img = image();
    let p = pool();
    let mut r = record(&p, &img.geo, img.dir_b);
    r.size = DIRENT_SIZE << 20;
    put_record(&p, &img.geo, &r);
    let report = fsck_of(&p, "directory size 256 MiB");
    assert!(
        report.errors.iter().any(|e| e.contains("directory")),
        "fsck does not flag the size: {:?}",
        report.errors
    );
    match mount_of(&p, "directory size 256 MiB") {
        Ok(_) => panic!("mounted a directory of 2^20 slots and one block"),
        Err(e) => assert_eq!(e.errno(), Errno::EUCLEAN, "{e}"),
    }
}

#[test]
fn corrupt_garbage_over_metadata_blocks() {
    let img = image();
    let g = img.geo;
    let regions: Vec<(String, u64, u64)> = vec![
        ("the first inode-table frame".into(), g.itable_start * PAGE, PAGE),
        ("the whole inode table".into(), g.itable_start * PAGE, g.itable_frames * PAGE),
        ("the root's inode record".into(), g.inode_offset(img.root), INODE_SIZE),
        ("/a/f2's inode record".into(), g.inode_offset(img.f2), INODE_SIZE),
        ("/a/f2's extent block".into(), img.extent_block * PAGE, PAGE),
        ("/a/f2's extent block header".into(), img.extent_block * PAGE, 24),
    ]
    .into_iter()
    .chain(img.dir_blocks.iter().map(|b| (format!("directory block {b}"), b * PAGE, PAGE)))
    .chain(img.dir_blocks.iter().map(|b| (format!("first entry of block {b}"), b * PAGE, 256)))
    .collect();
    for (what, at, len) in regions {
        for seed in 1..=4u64 {
            let p = pool();
            p.write(PoolOffset::new(at), &garbage(seed * 0x9e37_79b9 + at, len as usize)).unwrap();
            assert_rejected(&p, &format!("garbage (seed {seed}) over {what}"));
        }
    }
}

/// Garbage in the reference-count table: fsck reports it; mount must not panic.
#[test]
fn corrupt_garbage_over_refcount_table() {
    let img = image();
    let g = img.geo;
    for seed in 1..=4u64 {
        let p = pool();
        p.write(PoolOffset::new(g.rc_start * PAGE), &garbage(seed, PAGE as usize)).unwrap();
        let what = format!("garbage (seed {seed}) over the rc table");
        assert!(!fsck_of(&p, &what).clean());
        if let Ok((_mem, fs)) = mount_of(&p, &what) {
            exercise(&fs);
        }
    }
}

/// The journal is reserved and unused: damage there is harmless today.
#[test]
fn corrupt_journal_is_ignored() {
    let img = image();
    let g = img.geo;
    let p = pool();
    p.write(
        PoolOffset::new(g.journal_start * PAGE),
        &garbage(3, (g.journal_frames * PAGE) as usize),
    )
    .unwrap();
    assert!(fsck_of(&p, "journal").clean());
    let (_mem, fs) = mount_of(&p, "journal").unwrap();
    assert_fsck(&fs);
}

/// Uses a mounted (possibly damaged) filesystem: walk, read, write, clone, unlink, unmount.
/// Errors are fine; panics are not.
fn exercise(fs: &Filesystem) {
    let mut files = Vec::new();
    let mut stack = vec![("/".to_string(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        if depth > 8 {
            continue;
        }
        let Ok(entries) = fs.readdir(&dir) else { continue };
        for e in entries {
            let path =
                if dir == "/" { format!("/{}", e.name) } else { format!("{dir}/{}", e.name) };
            match e.kind {
                FileKind::Dir => stack.push((path, depth + 1)),
                FileKind::File => files.push(path),
            }
        }
    }
    let a = admin();
    for (i, f) in files.iter().enumerate() {
        let Ok(ino) = fs.lookup(f) else { continue };
        let _ = fs.stat_ino(ino);
        let mut buf = vec![0u8; 64 * 1024];
        let _ = fs.read(ino, 0, &mut buf);
        let _ = fs.write(ino, 10, &[i as u8; 5000], &a);
        let _ = fs.clone_file(f, &format!("/clone{i}"), &a);
        let _ = fs.truncate(ino, 3, &a);
        let _ = fs.unlink(f, &a);
    }
    let _ = fs.create("/after", CreateOptions::default()).map(|i| fs.write(i, 0, &[1; 9000], &a));
    let _ = fs.fsck();
    let bad = fs.memory().check_invariants();
    assert!(bad.is_empty(), "mm invariants after using a damaged image: {bad:?}");
    let _ = fs.unmount();
}

/// Where a flip lands.
#[derive(Clone, Debug)]
enum Spot {
    Superblock(u64),
    /// The used part of the reference-count table.
    RcTable(u64),
    /// The used part of the inode table.
    Inodes(u64),
    /// Anywhere in the metadata region (frames 0 .. data_start).
    Metadata(u64),
    /// A directory block: the used slots.
    DirBlock(usize, u64),
    /// The extent block: header and records.
    ExtentBlock(u64),
}

fn spot() -> impl Strategy<Value = Spot> {
    prop_oneof![
        1 => any::<u64>().prop_map(Spot::Superblock),
        3 => any::<u64>().prop_map(Spot::RcTable),
        3 => any::<u64>().prop_map(Spot::Inodes),
        2 => any::<u64>().prop_map(Spot::Metadata),
        4 => (any::<usize>(), any::<u64>()).prop_map(|(b, o)| Spot::DirBlock(b, o)),
        3 => any::<u64>().prop_map(Spot::ExtentBlock),
    ]
}

impl Spot {
    /// The pool offset.
    fn offset(&self, img: &Image) -> u64 {
        let g = &img.geo;
        match *self {
            Spot::Superblock(o) => o % 128,
            Spot::RcTable(o) => g.rc_start * PAGE + o % (img.used_frames * 2),
            Spot::Inodes(o) => g.itable_start * PAGE + o % ((img.free_ino + 1) * INODE_SIZE),
            Spot::Metadata(o) => o % (g.data_start() * PAGE),
            Spot::DirBlock(b, o) => img.dir_blocks[b % img.dir_blocks.len()] * PAGE + o % 1536,
            Spot::ExtentBlock(o) => img.extent_block * PAGE + o % (24 + 24 * 8),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(384),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random byte flips: fsck and mount return (no panic); fsck clean ⇒ mount succeeds;
    /// mount refusing the image as corrupt ⇒ fsck not clean; an accepted image can be used.
    #[test]
    fn corrupt_random_flips_never_panic(
        flips in prop::collection::vec((spot(), 1..=255u8), 1..6)
    ) {
        let img = image();
        let p = pool();
        let mut what = Vec::new();
        for (s, mask) in &flips {
            let at = s.offset(img);
            let mut b = [0u8];
            p.read(PoolOffset::new(at), &mut b).unwrap();
            p.write(PoolOffset::new(at), &[b[0] ^ mask]).unwrap();
            what.push(format!("{s:?} (pool byte {at}) ^ {mask:#x}"));
        }
        let what = what.join(", ");
        let r = fsck_of(&p, &what);
        match mount_of(&p, &what) {
            Ok((_mem, fs)) => {
                if r.clean() {
                    let after = fs.fsck();
                    prop_assert!(after.clean(), "{}: fsck after mount: {:?}", what, after.errors);
                }
                exercise(&fs);
            }
            Err(e) => {
                prop_assert!(!r.clean(), "{}: fsck clean but mount failed: {}", what, e);
                if e.errno() != Errno::EUCLEAN {
                    eprintln!("note: {what}: mount failed with {e} (errno {:?})", e.errno());
                }
            }
        }
    }
}
