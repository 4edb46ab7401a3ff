//! fsck: checks every invariant of an image from the raw pool, without mounting it. Whatever
//! the bytes, it reports; it never panics (every number read is bounds-checked, every sum
//! checked).
//!
//! Checks: superblock; every inode record and extent chain; extents inside the data area, not
//! overlapping, not beyond the file size; reference counts equal to the references found (no
//! frame both free and used, shared-extent counts exact, no leaked blocks); directories decode,
//! name only live inodes, form a tree from the root; link counts match; unreachable inodes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use pinwheel_mm::{PAGE_SIZE, Pfn, Pool, PoolOffset};

use crate::format::{
    DIRENT_SIZE, Dirent, ExtentBlock, ExtentRecord, Geometry, IFLAG_ORPHAN, INODE_SIZE, InodeKind,
    InodeRecord, Superblock,
};
use crate::limits::{EXTENTS_PER_BLOCK, INLINE_EXTENTS, MAX_EXTENTS};

/// What fsck found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FsckReport {
    /// Violations of the format's invariants.
    pub errors: Vec<String>,
    /// Oddities that are not damage (orphans left by a crash, an unclean unmount).
    pub warnings: Vec<String>,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Data blocks in use (metadata excluded).
    pub blocks_used: u64,
    /// Blocks referenced more than once.
    pub blocks_shared: u64,
    /// Extents.
    pub extents: u64,
}

impl FsckReport {
    /// True if no error was found.
    pub fn clean(&self) -> bool {
        self.errors.is_empty()
    }
}

struct Loaded {
    rec: InodeRecord,
    extents: Vec<ExtentRecord>,
}

/// Checks the filesystem image in `pool`.
pub fn fsck(pool: &Pool) -> FsckReport {
    let mut r = FsckReport::default();
    let mut sbuf = vec![0u8; PAGE_SIZE as usize];
    if let Err(e) = pool.read(PoolOffset::new(0), &mut sbuf) {
        r.errors.push(format!("superblock unreadable: {e}"));
        return r;
    }
    let sb = match Superblock::decode(&sbuf, pool.size()) {
        Ok(sb) => sb,
        Err(c) => {
            r.errors.push(c.0);
            return r;
        }
    };
    if !sb.clean {
        r.warnings.push("not cleanly unmounted (or mounted now)".into());
    }
    let g = sb.geometry;
    let read = |off: u64, buf: &mut [u8]| pool.read(PoolOffset::new(off), buf).is_ok();
    // Inodes and their extents.
    let mut inodes: BTreeMap<u64, Loaded> = BTreeMap::new();
    let mut refs: HashMap<u64, u32> = HashMap::new();
    for p in 0..g.data_start() {
        refs.insert(p, 1);
    }
    let mut ib = vec![0u8; INODE_SIZE as usize];
    for ino in 1..=g.inodes {
        if !read(g.inode_offset(ino), &mut ib) {
            r.errors.push(format!("inode {ino}: unreadable"));
            continue;
        }
        let rec = match InodeRecord::decode(&ib, ino) {
            Ok(rec) if rec.kind == InodeKind::Free => continue,
            Ok(rec) => rec,
            Err(c) => {
                r.errors.push(c.0);
                continue;
            }
        };
        let Some(extents) = load_extents(&rec, &g, pool, &mut refs, &mut r) else { continue };
        inodes.insert(ino, Loaded { rec, extents });
    }
    // Extent sanity and block references.
    for (ino, l) in &inodes {
        let size_pages = l.rec.size.div_ceil(PAGE_SIZE);
        let mut seen: Vec<(u64, u64)> = Vec::new();
        for e in &l.extents {
            r.extents += 1;
            let count = u64::from(e.count);
            let (Some(pend), Some(fend)) = (e.page.checked_add(count), e.pfn.checked_add(count))
            else {
                r.errors.push(format!("inode {ino}: extent {e:?} overflows"));
                continue;
            };
            if count == 0 || e.pfn < g.data_start() || fend > g.frames {
                r.errors.push(format!("inode {ino}: extent {e:?} outside the data area"));
                continue;
            }
            // Blocks beyond the end of file are allowed (fallocate with KEEP_SIZE).
            if seen.iter().any(|(s, t)| e.page < *t && *s < pend) {
                r.errors.push(format!("inode {ino}: extents overlap at page {}", e.page));
            }
            seen.push((e.page, pend));
            for p in e.pfn..fend {
                let c = refs.entry(p).or_insert(0);
                *c = c.saturating_add(1);
            }
        }
        match l.rec.kind {
            InodeKind::File => r.files += 1,
            InodeKind::Dir => r.dirs += 1,
            InodeKind::Free => {}
        }
        if l.rec.size > crate::limits::MAX_FILE_SIZE {
            r.errors.push(format!("inode {ino}: size {} beyond the largest file", l.rec.size));
        }
        if l.rec.kind == InodeKind::Dir {
            if l.rec.size % DIRENT_SIZE != 0 {
                r.errors.push(format!(
                    "directory {ino}: size {} not a multiple of {DIRENT_SIZE}",
                    l.rec.size
                ));
            }
            let mapped: u64 = l
                .extents
                .iter()
                .filter(|e| e.page < size_pages)
                .map(|e| u64::from(e.count).min(size_pages - e.page))
                .sum();
            if mapped < size_pages {
                r.errors.push(format!(
                    "directory {ino}: size {} bytes beyond its {mapped} blocks",
                    l.rec.size
                ));
            }
        }
    }
    check_refcounts(pool, &g, &refs, &mut r);
    check_tree(pool, &sb, &inodes, &mut r);
    r
}

fn load_extents(
    rec: &InodeRecord,
    g: &Geometry,
    pool: &Pool,
    refs: &mut HashMap<u64, u32>,
    r: &mut FsckReport,
) -> Option<Vec<ExtentRecord>> {
    let ino = rec.ino;
    let n = rec.n_extents as usize;
    if n > MAX_EXTENTS {
        r.errors.push(format!("inode {ino}: {n} extents (limit {MAX_EXTENTS})"));
        return None;
    }
    let mut out: Vec<ExtentRecord> = rec.inline.clone();
    let mut next = rec.extent_block;
    let mut chain = HashSet::new();
    let mut b = vec![0u8; PAGE_SIZE as usize];
    while out.len() < n {
        if next < g.data_start()
            || next >= g.frames
            || !chain.insert(next)
            || chain.len() > n.div_ceil(EXTENTS_PER_BLOCK) + 1
        {
            r.errors.push(format!("inode {ino}: extent chain broken at frame {next}"));
            return None;
        }
        if pool.read(Pfn::new(next).offset(), &mut b).is_err() {
            r.errors.push(format!("inode {ino}: extent block {next} unreadable"));
            return None;
        }
        match ExtentBlock::decode(&b, next) {
            Ok(blk) => {
                out.extend(blk.extents);
                next = blk.next;
            }
            Err(c) => {
                r.errors.push(format!("inode {ino}: {}", c.0));
                return None;
            }
        }
    }
    for c in &chain {
        let e = refs.entry(*c).or_insert(0);
        *e = e.saturating_add(1);
    }
    if out.len() != n || (n <= INLINE_EXTENTS && rec.extent_block != 0) {
        r.errors.push(format!("inode {ino}: {} extents found, {n} recorded", out.len()));
        return None;
    }
    Some(out)
}

fn check_refcounts(pool: &Pool, g: &Geometry, refs: &HashMap<u64, u32>, r: &mut FsckReport) {
    let mut rc = vec![0u8; PAGE_SIZE as usize];
    for table_frame in 0..g.rc_frames {
        if pool.read(PoolOffset::new((g.rc_start + table_frame) * PAGE_SIZE), &mut rc).is_err() {
            r.errors.push(format!("reference-count table frame {table_frame} unreadable"));
            continue;
        }
        for i in 0..(PAGE_SIZE / 2) {
            let pfn = table_frame * (PAGE_SIZE / 2) + i;
            if pfn >= g.frames {
                break;
            }
            let want =
                u32::from(u16::from_le_bytes([rc[(i * 2) as usize], rc[(i * 2 + 1) as usize]]));
            let got = refs.get(&pfn).copied().unwrap_or(0);
            if want != got {
                let what = match (want, got) {
                    (0, _) => "used but marked free",
                    (_, 0) => "marked used but unreferenced (leaked)",
                    _ => "reference count differs from references",
                };
                if r.errors.len() < 200 {
                    r.errors.push(format!("frame {pfn}: {what} (count {want}, {got} references)"));
                }
            }
            if pfn >= g.data_start() && got > 0 {
                r.blocks_used += 1;
                if got > 1 {
                    r.blocks_shared += 1;
                }
            }
        }
    }
}

fn check_tree(pool: &Pool, sb: &Superblock, inodes: &BTreeMap<u64, Loaded>, r: &mut FsckReport) {
    let Some(root) = inodes.get(&sb.root_ino) else {
        r.errors.push(format!("root inode {} is free", sb.root_ino));
        return;
    };
    if root.rec.kind != InodeKind::Dir {
        r.errors.push("root inode is not a directory".into());
        return;
    }
    let mut links: HashMap<u64, u32> = HashMap::new();
    let mut visited: BTreeSet<u64> = BTreeSet::new();
    let mut stack = vec![sb.root_ino];
    visited.insert(sb.root_ino);
    let mut b = vec![0u8; DIRENT_SIZE as usize];
    while let Some(dir) = stack.pop() {
        let Some(d) = inodes.get(&dir) else { continue };
        if d.rec.size > d.extents.iter().map(|e| u64::from(e.count)).sum::<u64>() * PAGE_SIZE {
            continue; // reported above: do not walk slots its blocks do not hold
        }
        let mut names = HashSet::new();
        for slot in 0..d.rec.size / DIRENT_SIZE {
            let off = slot * DIRENT_SIZE;
            let page = off / PAGE_SIZE;
            let Some(e) =
                d.extents.iter().find(|e| page >= e.page && page - e.page < u64::from(e.count))
            else {
                continue;
            };
            let at = (e.pfn + (page - e.page)) * PAGE_SIZE + off % PAGE_SIZE;
            if pool.read(PoolOffset::new(at), &mut b).is_err() {
                r.errors.push(format!("directory {dir}: slot {slot} unreadable"));
                continue;
            }
            let ent = match Dirent::decode(&b, dir) {
                Ok(Some(ent)) => ent,
                Ok(None) => continue,
                Err(c) => {
                    r.errors.push(c.0);
                    continue;
                }
            };
            if ent.name.contains('/') || !names.insert(ent.name.clone()) {
                r.errors.push(format!("directory {dir}: bad or duplicate name {:?}", ent.name));
            }
            let Some(child) = inodes.get(&ent.ino) else {
                r.errors
                    .push(format!("directory {dir}: {:?} names free inode {}", ent.name, ent.ino));
                continue;
            };
            *links.entry(ent.ino).or_insert(0) += 1;
            if child.rec.kind == InodeKind::Dir {
                if !visited.insert(ent.ino) {
                    r.errors.push(format!(
                        "directory {} reachable twice (a cycle or a hard-linked directory)",
                        ent.ino
                    ));
                    continue;
                }
                stack.push(ent.ino);
            }
        }
    }
    for (ino, l) in inodes {
        if *ino == sb.root_ino {
            continue;
        }
        let n = links.get(ino).copied().unwrap_or(0);
        let orphan = l.rec.flags & IFLAG_ORPHAN != 0;
        if n == 0 && orphan {
            r.warnings
                .push(format!("inode {ino}: orphan (unlinked while in use); freed at next mount"));
        } else if n == 0 {
            r.errors.push(format!("inode {ino}: not reachable from the root"));
        } else if u32::from(l.rec.nlink) != n {
            r.errors
                .push(format!("inode {ino}: link count {} but {n} directory entries", l.rec.nlink));
        }
    }
}
