#![allow(clippy::unwrap_used, clippy::expect_used)]
//! fsx-style property test: random sequences of writes, reads, truncates, fallocate modes,
//! reflink clones (with copy-on-write writes afterwards), defragmentation, renames, unlinks and
//! remounts over a few small files, checked after every step against a model that holds each
//! file's bytes. A reflink is modelled as a plain copy: copy-on-write makes clones independent.
//!
//! After every step: every file's size and bytes equal the model, the directories list exactly
//! the model's names, `fsck` is clean and the memory core's invariants hold.
//!
//! `fsx_random_ops` runs the operations every filesystem must support; `fsx_random_ops_all`
//! adds the edge cases listed with [`Cfg`] (each also has a test of its own below, written as
//! a reproduction of a bug since fixed).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use pinwheel_fs::*;
use pinwheel_mm::*;
use proptest::prelude::*;

const PAGE: u64 = 4096;
/// Largest file of the test.
const MAX_SIZE: u64 = 64 * 1024;
const MAX_PAGES: u64 = MAX_SIZE / PAGE;
const POOL_MIB: u64 = 32;
const PATHS: [&str; 4] = ["/f0", "/d/f1", "/f2", "/d/f3"];
/// Files created at odd indices of `PATHS` are page-cache (non-DAX) files; the others DAX.
fn page_cache_path(path: &str) -> bool {
    PATHS.iter().position(|p| *p == path).is_some_and(|i| i % 2 == 1)
}

/// Which operations that hit known bugs a run may generate.
#[derive(Copy, Clone, Debug)]
struct Cfg {
    /// `fallocate(KEEP_SIZE)` past the end of file (fsck then reports "extent beyond the size").
    keep_size_past_eof: bool,
    /// A clone whose unaligned range ends at the source's EOF, into the middle of a larger
    /// destination (the destination's bytes after the range in that page are lost).
    clone_tail_into_middle: bool,
    /// A clone of zero bytes at the source's EOF (the destination grows).
    clone_empty: bool,
    /// Remount from a dup of the memfd (`Pool::from_fd`) as smoke.rs does, instead of reopening
    /// a pool file (new blocks after the remount hold stale data of freed blocks).
    memfd_remount: bool,
}

impl Cfg {
    const SAFE: Cfg = Cfg {
        keep_size_past_eof: false,
        clone_tail_into_middle: false,
        clone_empty: false,
        memfd_remount: false,
    };
    /// Every known bug, or those named in `FSX_BUGS` (comma-separated: `keep_size`,
    /// `clone_tail`, `clone_empty`, `memfd`), to check one fix at a time.
    fn all() -> Cfg {
        let want = std::env::var("FSX_BUGS").ok();
        let on = |name: &str| want.as_deref().is_none_or(|w| w.split(',').any(|x| x == name));
        Cfg {
            keep_size_past_eof: on("keep_size"),
            clone_tail_into_middle: on("clone_tail"),
            clone_empty: on("clone_empty"),
            memfd_remount: on("memfd"),
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Write { f: usize, off: u64, len: u64, seed: u8 },
    Read { f: usize, off: u64, len: u64 },
    Truncate { f: usize, size: u64 },
    Allocate { f: usize, off: u64, len: u64, keep_size: bool },
    ZeroRange { f: usize, off: u64, len: u64 },
    Punch { f: usize, off: u64, len: u64 },
    CloneFile { src: usize, dst: usize },
    CloneRange { src: usize, dst: usize, src_page: u64, dst_page: u64, pages: u64 },
    Defrag { f: usize, huge: bool },
    Unlink { f: usize },
    Rename { from: usize, to: usize },
    Remount,
}

/// Offsets: page-aligned half the time, anywhere otherwise.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![(0..=MAX_PAGES).prop_map(|p| p * PAGE), 0..=MAX_SIZE]
}

/// Lengths (≥ 1): whole pages, a few bytes, or anything up to 20 KiB.
fn length() -> impl Strategy<Value = u64> {
    prop_oneof![(1..=5u64).prop_map(|p| p * PAGE), 1..64u64, 1..=20 * 1024u64]
}

fn op() -> impl Strategy<Value = Op> {
    let f = 0..4usize;
    prop_oneof![
        6 => (f.clone(), offset(), length(), any::<u8>())
            .prop_map(|(f, off, len, seed)| Op::Write { f, off, len, seed }),
        2 => (f.clone(), offset(), length()).prop_map(|(f, off, len)| Op::Read { f, off, len }),
        3 => (f.clone(), offset()).prop_map(|(f, size)| Op::Truncate { f, size }),
        2 => (f.clone(), offset(), length(), any::<bool>())
            .prop_map(|(f, off, len, keep_size)| Op::Allocate { f, off, len, keep_size }),
        2 => (f.clone(), offset(), length())
            .prop_map(|(f, off, len)| Op::ZeroRange { f, off, len }),
        3 => (f.clone(), offset(), length()).prop_map(|(f, off, len)| Op::Punch { f, off, len }),
        2 => (f.clone(), f.clone()).prop_map(|(src, dst)| Op::CloneFile { src, dst }),
        3 => (f.clone(), f.clone(), 0..MAX_PAGES, 0..MAX_PAGES, 1..=MAX_PAGES).prop_map(
            |(src, dst, src_page, dst_page, pages)| Op::CloneRange {
                src,
                dst,
                src_page,
                dst_page,
                pages
            }
        ),
        2 => (f.clone(), any::<bool>()).prop_map(|(f, huge)| Op::Defrag { f, huge }),
        1 => f.clone().prop_map(|f| Op::Unlink { f }),
        1 => (f.clone(), f).prop_map(|(from, to)| Op::Rename { from, to }),
        1 => Just(Op::Remount),
    ]
}

/// A case: how many files (2–4) and the operations.
fn case() -> impl Strategy<Value = (usize, Vec<Op>)> {
    (2..=4usize, prop::collection::vec(op(), 1..64))
}

/// Bytes of a write: distinct per seed and offset.
fn data(seed: u8, off: u64, len: u64) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(((off + i) % 253) as u8).wrapping_mul(7) | 1).collect()
}

struct Harness {
    cfg: Cfg,
    nfiles: usize,
    mem: Option<Arc<Memory>>,
    fs: Option<Filesystem>,
    model: BTreeMap<&'static str, Vec<u8>>,
    /// The paths whose file is a page-cache file (the kind moves with rename and clone).
    cached: BTreeSet<&'static str>,
    /// The pool file when the pool is file-backed (kept alive by the tempdir).
    pool_file: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
    log: Vec<String>,
}

impl Harness {
    fn new(cfg: Cfg, nfiles: usize) -> Harness {
        let (mem, pool_file, dir) = if cfg.memfd_remount {
            (memory(POOL_MIB), None, None)
        } else {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("pool");
            let pool = Pool::create_file(&path, POOL_MIB << 20).unwrap();
            (Memory::new(pool, RealClock::new()), Some(path), Some(dir))
        };
        let fs = mkfs(&mem, PinPolicy::Deny);
        fs.mkdir("/d").unwrap();
        Harness {
            cfg,
            nfiles,
            mem: Some(mem),
            fs: Some(fs),
            model: BTreeMap::new(),
            cached: BTreeSet::new(),
            pool_file,
            _dir: dir,
            log: Vec::new(),
        }
    }

    fn fs(&self) -> &Filesystem {
        self.fs.as_ref().expect("mounted")
    }

    fn path(&self, f: usize) -> &'static str {
        PATHS[f % self.nfiles]
    }

    /// The file's inode, creating it (empty) in the filesystem and the model if missing.
    fn ensure(&mut self, path: &'static str) -> Ino {
        if !self.model.contains_key(path) {
            let page_cache = page_cache_path(path);
            let ino = self.fs().create(path, CreateOptions { page_cache }).unwrap();
            self.model.insert(path, Vec::new());
            if page_cache {
                self.cached.insert(path);
            }
            return ino;
        }
        self.fs().lookup(path).unwrap()
    }

    fn size(&self, path: &str) -> u64 {
        self.model[path].len() as u64
    }

    /// Pages `[from, to)` of `ino` that have blocks.
    fn mapped_pages(&self, ino: Ino, from: u64, to: u64) -> u64 {
        self.fs()
            .extents(ino)
            .unwrap()
            .iter()
            .map(|e| e.end().min(to).saturating_sub(e.page.max(from)))
            .sum()
    }

    fn remount(&mut self) {
        let fs = self.fs.take().expect("mounted");
        let mem = self.mem.take().expect("mounted");
        fs.unmount().unwrap();
        let pool = match &self.pool_file {
            Some(path) => Pool::open_file(path).unwrap(),
            None => Pool::from_fd(mem.pool().fd().try_clone_to_owned().unwrap()).unwrap(),
        };
        drop(fs);
        drop(mem);
        let mem = Memory::new(pool, RealClock::new());
        let fs = Filesystem::mount(&mem, MountOptions::default())
            .unwrap_or_else(|e| panic!("remount failed: {e}"));
        self.mem = Some(mem);
        self.fs = Some(fs);
    }

    fn apply(&mut self, op: &Op) {
        let cfg = self.cfg;
        let a = admin();
        match *op {
            Op::Write { f, off, len, seed } => {
                let p = self.path(f);
                let len = len.min(MAX_SIZE - off.min(MAX_SIZE));
                if len == 0 {
                    return;
                }
                let ino = self.ensure(p);
                let d = data(seed, off, len);
                assert_eq!(self.fs().write(ino, off, &d, &a).unwrap(), len as usize);
                let m = self.model.get_mut(p).unwrap();
                let end = (off + len) as usize;
                if m.len() < end {
                    m.resize(end, 0);
                }
                m[off as usize..end].copy_from_slice(&d);
            }
            Op::Read { f, off, len } => {
                let p = self.path(f);
                let ino = self.ensure(p);
                let mut buf = vec![0xEEu8; len as usize];
                let n = self.fs().read(ino, off, &mut buf).unwrap();
                let m = &self.model[p];
                let want = &m[(off as usize).min(m.len())..((off + len) as usize).min(m.len())];
                assert_eq!(n, want.len(), "read {p} at {off}+{len}: length");
                assert!(buf[..n] == *want, "read {p} at {off}+{len}: bytes differ");
            }
            Op::Truncate { f, size } => {
                let p = self.path(f);
                let ino = self.ensure(p);
                self.fs().truncate(ino, size, &a).unwrap();
                self.model.get_mut(p).unwrap().resize(size as usize, 0);
            }
            Op::Allocate { f, off, len, keep_size } => {
                let p = self.path(f);
                let len = len.min(MAX_SIZE - off.min(MAX_SIZE));
                if len == 0 {
                    return;
                }
                let ino = self.ensure(p);
                let keep_size = keep_size && (cfg.keep_size_past_eof || off + len <= self.size(p));
                self.fs().fallocate(ino, off, len, FallocMode::Allocate { keep_size }, &a).unwrap();
                let m = self.model.get_mut(p).unwrap();
                if !keep_size && m.len() < (off + len) as usize {
                    m.resize((off + len) as usize, 0);
                }
                // DAX files get blocks for the whole range (page-cache files at writeback).
                let mapped = self.mapped_pages(ino, off / PAGE, (off + len).div_ceil(PAGE));
                assert!(
                    self.cached.contains(p) || mapped == (off + len).div_ceil(PAGE) - off / PAGE,
                    "fallocate {p} {off}+{len}: range not fully allocated"
                );
            }
            Op::ZeroRange { f, off, len } => {
                let p = self.path(f);
                let len = len.min(MAX_SIZE - off.min(MAX_SIZE));
                if len == 0 {
                    return;
                }
                let ino = self.ensure(p);
                self.fs().fallocate(ino, off, len, FallocMode::ZeroRange, &a).unwrap();
                let m = self.model.get_mut(p).unwrap();
                let end = (off + len) as usize;
                if m.len() < end {
                    m.resize(end, 0);
                }
                m[off as usize..end].fill(0);
            }
            Op::Punch { f, off, len } => {
                let p = self.path(f);
                let ino = self.ensure(p);
                self.fs().fallocate(ino, off, len, FallocMode::PunchHole, &a).unwrap();
                let m = self.model.get_mut(p).unwrap();
                let end = ((off + len) as usize).min(m.len());
                let start = (off as usize).min(end);
                m[start..end].fill(0);
                // Whole pages inside the range (and the file) have no blocks any more.
                let (first, last) = (off.div_ceil(PAGE), (off + len) / PAGE);
                if first < last {
                    assert_eq!(
                        self.mapped_pages(ino, first, last),
                        0,
                        "punch {p} {off}+{len}: pages {first}..{last} still mapped"
                    );
                }
            }
            Op::CloneFile { src, dst } => {
                let (sp, dp) = (self.path(src), self.path(dst));
                if sp == dp {
                    return;
                }
                let sino = self.ensure(sp);
                if self.model.remove(dp).is_some() {
                    self.cached.remove(dp);
                    self.fs().unlink(dp, &a).unwrap();
                }
                let dino = self.fs().clone_file(sp, dp, &a).unwrap();
                self.model.insert(dp, self.model[sp].clone());
                if self.cached.contains(sp) {
                    self.cached.insert(dp);
                }
                let size_pages = self.size(sp).div_ceil(PAGE);
                if self.mapped_pages(sino, 0, size_pages) > 0 {
                    assert!(self.fs().stat_ino(dino).unwrap().shared_blocks > 0, "clone {dp}");
                    assert!(self.fs().stat_ino(sino).unwrap().shared_blocks > 0, "clone {sp}");
                }
            }
            Op::CloneRange { src, dst, src_page, dst_page, pages } => {
                let (sp, dp) = (self.path(src), self.path(dst));
                if sp == dp {
                    return;
                }
                let sino = self.ensure(sp);
                let dino = self.ensure(dp);
                let (ssize, dsize) = (self.size(sp), self.size(dp));
                let off = src_page * PAGE;
                let mut len = pages * PAGE;
                if off >= ssize {
                    // Nothing to clone: a no-op (only at exactly EOF is it a valid request).
                    if !(cfg.clone_empty && off == ssize) {
                        return;
                    }
                    len = 0;
                } else if off + len >= ssize {
                    // Up to the source's EOF, which may end in a partial page.
                    len = ssize - off;
                }
                let dst_off = dst_page.min((MAX_SIZE - len) / PAGE) * PAGE;
                if !len.is_multiple_of(PAGE) && dst_off + len < dsize {
                    if cfg.clone_tail_into_middle {
                        // Sharing a partial last block into the middle of a file is refused
                        // (EINVAL), as Linux's remap rules require: nothing changes.
                        let e =
                            self.fs().clone_range(sino, off, dino, dst_off, len, &a).unwrap_err();
                        assert_eq!(e.errno(), pinwheel_mm::Errno::EINVAL, "{e}");
                        return;
                    }
                    len -= len % PAGE;
                    if len == 0 {
                        return;
                    }
                }
                self.fs().clone_range(sino, off, dino, dst_off, len, &a).unwrap_or_else(|e| {
                    panic!("clone_range {sp}@{off} -> {dp}@{dst_off} len {len}: {e}")
                });
                if len > 0 {
                    let bytes = self.model[sp][off as usize..(off + len) as usize].to_vec();
                    let m = self.model.get_mut(dp).unwrap();
                    let end = (dst_off + len) as usize;
                    if m.len() < end {
                        m.resize(end, 0);
                    }
                    m[dst_off as usize..end].copy_from_slice(&bytes);
                }
                if len > 0
                    && len.is_multiple_of(PAGE)
                    && self.mapped_pages(sino, off / PAGE, (off + len) / PAGE) > 0
                {
                    assert!(
                        self.fs().stat_ino(dino).unwrap().shared_blocks > 0,
                        "clone_range {sp}@{off} -> {dp}@{dst_off} len {len}: destination shares nothing"
                    );
                    assert!(
                        self.fs().stat_ino(sino).unwrap().shared_blocks > 0,
                        "clone_range {sp}@{off} -> {dp}@{dst_off} len {len}: source shares nothing"
                    );
                }
            }
            Op::Defrag { f, huge } => {
                let p = self.path(f);
                let ino = self.ensure(p);
                let before = self.fs().stat_ino(ino).unwrap();
                let r = self.fs().defrag(ino, DefragOptions { huge }, &a).unwrap();
                let after = self.fs().stat_ino(ino).unwrap();
                assert_eq!(before.blocks, after.blocks, "defrag {p}: blocks");
                assert_eq!(r.extents_after, after.extents, "defrag {p}: report");
                assert_eq!(before.shared_blocks, after.shared_blocks, "defrag {p}: sharing");
            }
            Op::Unlink { f } => {
                let p = self.path(f);
                if self.model.remove(p).is_some() {
                    self.cached.remove(p);
                    self.fs().unlink(p, &a).unwrap();
                } else {
                    let e = self.fs().unlink(p, &a).unwrap_err();
                    assert_eq!(e.errno(), Errno::ENOENT, "unlink of missing {p}: {e}");
                }
            }
            Op::Rename { from, to } => {
                let (fp, tp) = (self.path(from), self.path(to));
                if fp == tp {
                    return;
                }
                self.ensure(fp);
                self.fs().rename(fp, tp, &a).unwrap();
                let bytes = self.model.remove(fp).unwrap();
                self.model.insert(tp, bytes);
                self.cached.remove(tp);
                if self.cached.remove(fp) {
                    self.cached.insert(tp);
                }
            }
            Op::Remount => self.remount(),
        }
    }

    /// Every file against the model, the directories' listings, fsck and mm invariants.
    fn check(&self, after: &str) {
        let fs = self.fs();
        for p in PATHS {
            match self.model.get(p) {
                Some(m) => {
                    let ino = fs.lookup(p).unwrap_or_else(|e| panic!("{after}: {p}: {e}"));
                    let st = fs.stat_ino(ino).unwrap();
                    assert_eq!(st.size, m.len() as u64, "{after}: size of {p}");
                    assert_eq!(st.page_cache, self.cached.contains(p), "{after}: kind of {p}");
                    assert!(st.blocks <= MAX_PAGES, "{after}: {p} has {} blocks", st.blocks);
                    let got = read_all(fs, ino);
                    if got != *m {
                        let at = got.iter().zip(m.iter()).position(|(a, b)| a != b).unwrap();
                        panic!(
                            "{after}: {p} differs from the model at byte {at} (page {}): \
                             {:#04x} != {:#04x}; extents {:?}",
                            at as u64 / PAGE,
                            got[at],
                            m[at],
                            fs.extents(ino).unwrap()
                        );
                    }
                }
                None => {
                    let e = fs.lookup(p).unwrap_err();
                    assert_eq!(e.errno(), Errno::ENOENT, "{after}: {p} should not exist");
                }
            }
        }
        let names = |dir: &str| -> Vec<String> {
            fs.readdir(dir).unwrap().into_iter().map(|e| e.name).collect()
        };
        let mut root: Vec<String> = self
            .model
            .keys()
            .filter(|p| !p.starts_with("/d/"))
            .map(|p| p[1..].to_string())
            .chain(["d".to_string()])
            .collect();
        root.sort();
        let sub: Vec<String> =
            self.model.keys().filter_map(|p| p.strip_prefix("/d/")).map(String::from).collect();
        assert_eq!(names("/"), root, "{after}: readdir /");
        assert_eq!(names("/d"), sub, "{after}: readdir /d");
        let r = fs.fsck();
        assert!(r.clean(), "{after}: fsck errors: {:#?}\nops so far: {:#?}", r.errors, self.log);
        let bad = fs.memory().check_invariants();
        assert!(bad.is_empty(), "{after}: mm invariants: {bad:#?}");
    }

    fn run(cfg: Cfg, nfiles: usize, ops: &[Op]) {
        let mut h = Harness::new(cfg, nfiles);
        for (i, op) in ops.iter().enumerate() {
            h.log.push(format!("{op:?}"));
            h.apply(op);
            h.check(&format!("after op {i} {op:?}"));
        }
        h.remount();
        h.check("after the final remount");
    }
}

/// Cases per property: `PROPTEST_CASES` if set (for long runs), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), max_shrink_iters: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// The operations that do not hit a known bug.
    #[test]
    fn fsx_random_ops((nfiles, ops) in case()) {
        Harness::run(Cfg::SAFE, nfiles, &ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), max_shrink_iters: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Every operation, including those of the known bugs below.
    #[test]

    fn fsx_random_ops_all((nfiles, ops) in case()) {
        Harness::run(Cfg::all(), nfiles, &ops);
    }
}

/// A write to a reflinked file copies the shared block: the source keeps its bytes, the
/// destination gets the new ones, and neither shares the written page any more.
#[test]
fn fsx_write_to_clone_copies_on_write() {
    let mut h = Harness::new(Cfg::SAFE, 2);
    let ops = [
        Op::Write { f: 0, off: 0, len: 4 * PAGE, seed: 1 },
        Op::CloneFile { src: 0, dst: 1 },
        Op::Write { f: 1, off: PAGE + 10, len: 100, seed: 2 },
        Op::Write { f: 0, off: 3 * PAGE, len: PAGE, seed: 3 },
        Op::Remount,
        Op::Write { f: 1, off: 0, len: 1, seed: 4 },
    ];
    for op in &ops {
        h.apply(op);
        h.check(&format!("{op:?}"));
    }
    let s = h.fs().stat("/f0").unwrap();
    let d = h.fs().stat("/d/f1").unwrap();
    // Pages 0, 1 and 3 were written in one file or the other: only page 2 is still shared.
    assert_eq!((s.shared_blocks, d.shared_blocks), (1, 1));
    assert_eq!((s.blocks, d.blocks), (4, 4));
}

/// A clone of an aligned range into the middle of a file: only that range changes.
#[test]
fn fsx_clone_range_into_middle() {
    let mut h = Harness::new(Cfg::SAFE, 2);
    let ops = [
        Op::Write { f: 0, off: 0, len: 6 * PAGE, seed: 1 },
        Op::Write { f: 1, off: 0, len: 8 * PAGE + 17, seed: 9 },
        Op::CloneRange { src: 0, dst: 1, src_page: 1, dst_page: 3, pages: 2 },
        Op::Defrag { f: 1, huge: false },
        Op::Punch { f: 0, off: PAGE + 5, len: 2 * PAGE },
        Op::Truncate { f: 1, size: 4 * PAGE + 1 },
    ];
    for op in &ops {
        h.apply(op);
        h.check(&format!("{op:?}"));
    }
}

/// Bug: `fallocate(FallocMode::Allocate { keep_size: true })` past EOF leaves blocks beyond the
/// size, which fsck reports as damage ("extent at page N beyond the size").
#[test]

fn fsx_bug_keep_size_past_eof_fsck() {
    let mem = memory(POOL_MIB);
    let fs = mkfs(&mem, PinPolicy::Deny);
    let ino = fs.create("/f", CreateOptions::default()).unwrap();
    fs.write(ino, 0, &[1; 100], &admin()).unwrap();
    fs.fallocate(ino, 2 * PAGE, PAGE, FallocMode::Allocate { keep_size: true }, &admin()).unwrap();
    assert_eq!(fs.stat_ino(ino).unwrap().size, 100);
    assert_fsck(&fs);
}

/// Bug: a clone whose range ends at the source's EOF in a partial page shares that whole page,
/// so when the destination is larger the bytes after the range in that page are replaced by
/// the source's bytes past its EOF (zeros). Linux refuses this case with EINVAL.
#[test]

fn fsx_bug_clone_unaligned_eof_into_middle() {
    let mem = memory(POOL_MIB);
    let fs = mkfs(&mem, PinPolicy::Deny);
    let d = fs.create("/d", CreateOptions::default()).unwrap();
    fs.write(d, 0, &[0xAA; 8192], &admin()).unwrap();
    let s = fs.create("/s", CreateOptions::default()).unwrap();
    fs.write(s, 0, &[0xBB; 100], &admin()).unwrap();
    let r = fs.clone_range(s, 0, d, 0, 0, &admin());
    let got = read_all(&fs, d);
    assert_eq!(got.len(), 8192);
    // Either refused (as Linux does) or the bytes after the cloned 100 are untouched.
    if r.is_ok() {
        assert_eq!(&got[..100], &[0xBB; 100][..]);
        assert!(got[100..].iter().all(|b| *b == 0xAA), "byte 100 is {:#x}", got[100]);
    } else {
        assert_eq!(got, vec![0xAA; 8192]);
    }
}

/// Bug: cloning zero bytes at the source's EOF (`len` 0 means "to EOF") still grows the
/// destination to the destination offset. Linux returns at once.
#[test]

fn fsx_bug_clone_empty_range_grows_destination() {
    let mem = memory(POOL_MIB);
    let fs = mkfs(&mem, PinPolicy::Deny);
    let s = fs.create("/s", CreateOptions::default()).unwrap();
    fs.write(s, 0, &[7; 4096], &admin()).unwrap();
    let d = fs.create("/d", CreateOptions::default()).unwrap();
    let r = fs.clone_range(s, 4096, d, 8192, 0, &admin());
    assert_eq!(fs.stat_ino(d).unwrap().size, 0, "empty clone changed the destination ({r:?})");
}

/// Bug: after a remount through a dup of the memfd (`Pool::from_fd`, the pattern of smoke.rs),
/// blocks freed before the unmount are handed out again without being zeroed, so holes that
/// become allocated show another (deleted) file's data.
#[test]

fn fsx_bug_stale_data_after_memfd_remount() {
    let mem = memory(POOL_MIB);
    let fs = mkfs(&mem, PinPolicy::Deny);
    let a = fs.create("/secret", CreateOptions::default()).unwrap();
    fs.write(a, 0, &[0xAB; 4 * 4096], &admin()).unwrap();
    fs.unlink("/secret", &admin()).unwrap();
    fs.unmount().unwrap();
    let pool = Pool::from_fd(mem.pool().fd().try_clone_to_owned().unwrap()).unwrap();
    drop(fs);
    drop(mem);
    let mem = Memory::new(pool, RealClock::new());
    let fs = Filesystem::mount(&mem, MountOptions::default()).unwrap();
    let b = fs.create("/b", CreateOptions::default()).unwrap();
    fs.fallocate(b, 0, 4 * 4096, FallocMode::Allocate { keep_size: false }, &admin()).unwrap();
    fs.write(b, 4 * 4096 + 100, &[1], &admin()).unwrap();
    let got = read_all(&fs, b);
    let stale = got[..got.len() - 1].iter().filter(|x| **x != 0).count();
    assert_eq!(stale, 0, "{stale} bytes of a deleted file are visible in /b");
}

/// Bug: shrinking a file to a size inside a page whose block is shared copies that block
/// (`zero_partial` → `unshare`) outside the range its layout break covered (`keep..`, which
/// starts after that page): a long-term pin of the page is not decohered, and keeps the old
/// block, which now belongs to the clone source alone. A write into the same page does break
/// the pin first (the control below).
#[test]

fn fsx_bug_truncate_cows_partial_page_without_break() {
    let mem = memory(POOL_MIB);
    let fs = mkfs(&mem, PinPolicy::Decohere);
    file(&fs, "/s", 2, 1);
    let d = fs.clone_file("/s", "/d", &admin()).unwrap();
    let a = AddressSpace::new(&mem);
    let p =
        a.mmap(MmapRequest::file(fs.backing(d).unwrap(), FileOffset::new(0), 2 * PAGE)).unwrap();
    // A read pin of page 1, whose block /d shares with /s.
    let pin =
        pin_user_pages(&a, VirtAddr::new(p.raw() + PAGE), PAGE, PinFlags::LONGTERM, None).unwrap();
    assert_eq!(fs.stat_ino(d).unwrap().pins.len(), 1);
    let shared = pin.translate(0).unwrap();
    fs.truncate(d, PAGE + 100, &admin()).unwrap();
    let now = fs
        .extents(d)
        .unwrap()
        .iter()
        .find(|e| e.page <= 1 && 1 < e.end())
        .map(|e| PoolOffset::new(e.pfn.offset().raw() + (1 - e.page) * PAGE));
    assert_ne!(now, Some(shared), "the page was copied (its block changed)");
    assert!(
        fs.stats().decoheres > 0,
        "page 1's block changed under a long-term pin that was not decohered; the pin still \
         reads {shared}, now /s's block alone"
    );
}

/// The control of the test above: a write into the pinned shared page decoheres the pin.
#[test]
fn fsx_write_to_pinned_shared_page_decoheres() {
    let mem = memory(POOL_MIB);
    let fs = mkfs(&mem, PinPolicy::Decohere);
    file(&fs, "/s", 2, 1);
    let d = fs.clone_file("/s", "/d", &admin()).unwrap();
    let a = AddressSpace::new(&mem);
    let p =
        a.mmap(MmapRequest::file(fs.backing(d).unwrap(), FileOffset::new(0), 2 * PAGE)).unwrap();
    let pin =
        pin_user_pages(&a, VirtAddr::new(p.raw() + PAGE), PAGE, PinFlags::LONGTERM, None).unwrap();
    fs.write(d, PAGE + 100, &[9; 10], &admin()).unwrap();
    assert!(fs.stats().decoheres > 0);
    drop(pin);
    a.munmap(p, 2 * PAGE).unwrap();
    assert_eq!(read_all(&fs, fs.lookup("/s").unwrap()), pattern(1, 2 * PAGE as usize));
    assert_fsck(&fs);
}

/// Bug: `rename` unlinks an existing destination before checking that the rename itself can
/// happen; moving a directory onto a file inside itself fails (rightly) but deletes the file.
#[test]

fn fsx_bug_failed_rename_deletes_destination() {
    let mem = memory(POOL_MIB);
    let fs = mkfs(&mem, PinPolicy::Deny);
    fs.mkdir("/d").unwrap();
    file(&fs, "/d/f", 1, 3);
    let e = fs.rename("/d", "/d/f", &admin()).unwrap_err();
    assert_eq!(e.errno(), Errno::EINVAL, "{e}");
    let ino = fs.lookup("/d/f").expect("the destination of a failed rename is gone");
    assert_eq!(read_all(&fs, ino), pattern(3, PAGE as usize));
    assert_fsck(&fs);
}

/// Bug: a path longer than `PATH_MAX` is reported with its first 64 bytes (`&path[..64]` in
/// namei.rs `components`), which panics when byte 64 falls inside a multi-byte character.
#[test]

fn fsx_bug_long_non_ascii_path_panics() {
    let mem = memory(POOL_MIB);
    let fs = mkfs(&mem, PinPolicy::Deny);
    let path = format!("/{}", "é".repeat(3000));
    let e = fs.lookup(&path).unwrap_err();
    assert_eq!(e.errno(), Errno::ENAMETOOLONG);
    let e = fs.create(&path, CreateOptions::default()).unwrap_err();
    assert_eq!(e.errno(), Errno::ENAMETOOLONG);
}

/// Bug: `rename` refuses to move a directory into itself by comparing with the directory's
/// cached path, which is not updated when an ancestor is renamed; after renaming its parent,
/// a directory can be moved into itself, detaching it from the tree in a cycle.
#[test]

fn fsx_bug_rename_directory_into_itself_after_parent_rename() {
    let mem = memory(POOL_MIB);
    let fs = mkfs(&mem, PinPolicy::Deny);
    fs.mkdir("/a").unwrap();
    fs.mkdir("/a/b").unwrap();
    fs.rename("/a", "/x", &admin()).unwrap();
    let r = fs.rename("/x/b", "/x/b/c", &admin());
    assert!(r.is_err(), "moved /x/b into itself; fsck: {:?}", fs.fsck().errors);
    assert_fsck(&fs);
}

/// Bug: mkdir accepts any depth (up to PATH_MAX), but fsck reports a directory nested deeper
/// than `DEPTH_MAX` (64) as an error, so a valid tree fails fsck.
#[test]

fn fsx_bug_deep_tree_fails_fsck() {
    let mem = memory(POOL_MIB);
    let fs = mkfs(&mem, PinPolicy::Deny);
    let mut path = String::new();
    for _ in 0..70 {
        path.push_str("/d");
        fs.mkdir(&path).unwrap();
    }
    assert_fsck(&fs);
}
