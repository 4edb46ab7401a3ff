//! Paths and the namespace: lookup, create, mkdir, unlink, rmdir, rename, readdir, stat.
//!
//! Paths are absolute (`/a/b`); `.` and `..` are refused. Namespace changes hold the
//! namespace lock, then directory layouts. `unlink` of a file nobody has open or mapped frees
//! it at once, after its layout break (so a refusal such as `ETXTBSY` leaves the name in
//! place); a file still open, mapped or (under the coordinating policies) long-term pinned
//! becomes an orphan, freed at its last reference.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use pinwheel_mm::{InvalidateReason, PAGE_SIZE, PoolOffset};

use crate::breaking::LayoutReason;
use crate::error::{FsError, FsResult};
use crate::extent::ExtentMap;
use crate::format::{DIRENT_SIZE, Dirent, IFLAG_ORPHAN, IFLAG_PAGE_CACHE, InodeKind, InodeRecord};
use crate::fs::{Filesystem, Shared};
use crate::inode::{DirState, Inode, Layout};
use crate::lease::LeaseInfo;
use crate::limits::{NAME_MAX, PATH_MAX};
use crate::types::{Caller, Ino};
use crate::{FilePinInfo, PinPolicy};

/// File or directory.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
}

/// Options of `create`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// Data goes through a page cache written back to the blocks (a non-DAX file).
    pub page_cache: bool,
}

/// `stat`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stat {
    /// Inode.
    pub ino: Ino,
    /// Kind.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// 4 KiB blocks allocated.
    pub blocks: u64,
    /// Blocks shared with other files (reflink).
    pub shared_blocks: u64,
    /// Extents.
    pub extents: usize,
    /// Holds an unbreakable layout lease.
    pub sealed: bool,
    /// A page-cache (non-DAX) file.
    pub page_cache: bool,
    /// Links.
    pub nlink: u16,
    /// Last modification (ns of the node's clock).
    pub mtime_ns: u64,
    /// Layout leases.
    pub leases: Vec<LeaseInfo>,
    /// Long-term pins.
    pub pins: Vec<FilePinInfo>,
}

/// A directory entry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirEntry {
    /// Name.
    pub name: String,
    /// Inode.
    pub ino: Ino,
    /// Kind.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
}

pub(crate) fn components(path: &str) -> FsResult<Vec<&str>> {
    if path.len() > PATH_MAX {
        return Err(FsError::NameTooLong {
            name: format!("{}...", path.chars().take(64).collect::<String>()),
        });
    }
    if !path.starts_with('/') {
        return Err(FsError::invalid(format!("{path:?}: paths are absolute (start with /)")));
    }
    let mut out = Vec::new();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        if c == "." || c == ".." {
            return Err(FsError::invalid(format!("{path:?}: '.' and '..' are not supported")));
        }
        if c.len() > NAME_MAX {
            return Err(FsError::NameTooLong { name: c.into() });
        }
        if c.contains('\0') {
            return Err(FsError::invalid(format!("{path:?}: NUL in a name")));
        }
        out.push(c);
    }
    Ok(out)
}

fn join(parent: &str, name: &str) -> String {
    if parent == "/" { format!("/{name}") } else { format!("{parent}/{name}") }
}

impl Shared {
    pub(crate) fn root(&self) -> FsResult<Arc<Inode>> {
        let r = self.sb.lock().root_ino;
        self.inode(Ino(r))
    }

    pub(crate) fn resolve(&self, path: &str) -> FsResult<Arc<Inode>> {
        let mut cur = self.root()?;
        for c in components(path)? {
            let next = {
                let l = cur.layout.read();
                let d = l.dir.as_ref().ok_or_else(|| FsError::NotDir { path: path.into() })?;
                d.entries
                    .get(c)
                    .map(|(i, _)| *i)
                    .ok_or_else(|| FsError::NotFound { path: path.into() })?
            };
            cur = self.inode(next)?;
        }
        Ok(cur)
    }

    /// The parent directory of `path` and the last name.
    pub(crate) fn resolve_parent(&self, path: &str) -> FsResult<(Arc<Inode>, String)> {
        let comps = components(path)?;
        let Some((last, dirs)) = comps.split_last() else {
            return Err(FsError::invalid("the root has no parent"));
        };
        let mut cur = self.root()?;
        for c in dirs {
            let next = {
                let l = cur.layout.read();
                let d = l.dir.as_ref().ok_or_else(|| FsError::NotDir { path: path.into() })?;
                d.entries
                    .get(*c)
                    .map(|(i, _)| *i)
                    .ok_or_else(|| FsError::NotFound { path: path.into() })?
            };
            cur = self.inode(next)?;
        }
        if !cur.layout.read().is_dir() {
            return Err(FsError::NotDir { path: path.into() });
        }
        Ok((cur, (*last).to_string()))
    }

    /// Writes slot `slot` of a directory (allocating its block if needed).
    fn write_dirent(&self, dir: &Inode, l: &mut Layout, slot: u64, d: &Dirent) -> FsResult<()> {
        let off = slot * DIRENT_SIZE;
        let page = off / PAGE_SIZE;
        let pfn = match l.extents.lookup(page) {
            Some(p) => p,
            None => {
                let r = self.alloc_blocks(dir.ino, 1, pinwheel_mm::Placement::Contiguous)?;
                l.extents.insert(page, r[0].pfn, 1);
                r[0].pfn
            }
        };
        l.rec.size = l.rec.size.max(off + DIRENT_SIZE);
        self.persist(l)?;
        self.mem()
            .pool()
            .write(PoolOffset::new(pfn.offset().raw() + off % PAGE_SIZE), &d.encode())
            .map_err(FsError::Mm)
    }

    /// True if `ino` is in the directory tree below `dir`.
    pub(crate) fn in_subtree(&self, dir: &Arc<Inode>, ino: Ino) -> bool {
        let mut stack = vec![Arc::clone(dir)];
        let mut seen = 0usize;
        while let Some(d) = stack.pop() {
            seen += 1;
            if seen > self.store.geo.inodes as usize {
                return true;
            }
            let children: Vec<Ino> = d
                .layout
                .read()
                .dir
                .as_ref()
                .map(|st| st.entries.values().map(|(i, _)| *i).collect())
                .unwrap_or_default();
            for c in children {
                if c == ino {
                    return true;
                }
                if let Ok(ci) = self.inode(c)
                    && ci.layout.read().is_dir()
                {
                    stack.push(ci);
                }
            }
        }
        false
    }

    /// Records new paths for an inode and, for a directory, everything below it.
    pub(crate) fn refresh_paths(&self, inode: &Arc<Inode>, path: String) {
        let mut stack = vec![(Arc::clone(inode), path)];
        while let Some((i, p)) = stack.pop() {
            i.rt.lock().path = p.clone();
            let children: Vec<(String, Ino)> = i
                .layout
                .read()
                .dir
                .as_ref()
                .map(|st| st.entries.iter().map(|(n, (c, _))| (n.clone(), *c)).collect())
                .unwrap_or_default();
            for (name, c) in children {
                if let Ok(ci) = self.inode(c) {
                    stack.push((ci, join(&p, &name)));
                }
            }
        }
    }

    pub(crate) fn dir_add(&self, dir: &Inode, name: &str, ino: Ino) -> FsResult<()> {
        let mut l = dir.layout.write();
        let slot = {
            let d = l.dir.as_mut().expect("checked to be a directory");
            d.free_slots.pop_first().unwrap_or_else(|| {
                d.nslots += 1;
                d.nslots - 1
            })
        };
        self.write_dirent(dir, &mut l, slot, &Dirent { ino: ino.0, name: name.into() })?;
        l.dir.as_mut().expect("directory").entries.insert(name.into(), (ino, slot));
        Ok(())
    }

    pub(crate) fn dir_remove(&self, dir: &Inode, name: &str) -> FsResult<()> {
        let mut l = dir.layout.write();
        let (_, slot) = l
            .dir
            .as_mut()
            .expect("directory")
            .entries
            .remove(name)
            .ok_or_else(|| FsError::NotFound { path: name.into() })?;
        let off = slot * DIRENT_SIZE;
        if let Some(pfn) = l.extents.lookup(off / PAGE_SIZE) {
            self.mem()
                .pool()
                .fill(PoolOffset::new(pfn.offset().raw() + off % PAGE_SIZE), DIRENT_SIZE, 0)
                .map_err(FsError::Mm)?;
        }
        l.dir.as_mut().expect("directory").free_slots.insert(slot);
        Ok(())
    }

    fn alloc_inode(&self, kind: InodeKind, flags: u8, path: String) -> FsResult<Arc<Inode>> {
        let ino =
            self.free_inos.lock().pop_first().ok_or(FsError::NoSpace { needed: 1, free: 0 })?;
        let generation = {
            let mut sb = self.sb.lock();
            sb.next_generation = sb.next_generation.wrapping_add(1).max(1);
            self.store.write_sb(&sb)?;
            sb.next_generation
        };
        let rec = InodeRecord {
            ino,
            generation,
            kind,
            flags,
            nlink: 1,
            size: 0,
            mtime_ns: self.now_ns(),
            n_extents: 0,
            extent_block: 0,
            inline: Vec::new(),
        };
        self.store.write_inode(&rec)?;
        let dir = (kind == InodeKind::Dir).then(DirState::default);
        let inode = Inode::new(
            Ino(ino),
            Layout { rec, extents: ExtentMap::default(), chain: Vec::new(), dir },
            path,
        );
        self.inodes.write().insert(ino, Arc::clone(&inode));
        Ok(inode)
    }

    fn make(&self, path: &str, kind: InodeKind, flags: u8) -> FsResult<Ino> {
        self.check_mounted()?;
        let _ns = self.ns.lock();
        let (dir, name) = self.resolve_parent(path)?;
        if dir.layout.read().dir.as_ref().is_some_and(|d| d.entries.contains_key(&name)) {
            return Err(FsError::Exists { path: path.into() });
        }
        let inode = self.alloc_inode(kind, flags, join(&dir.path(), &name))?;
        if let Err(e) = self.dir_add(&dir, &name, inode.ino) {
            self.release_inode(&inode)?;
            return Err(e);
        }
        Ok(inode.ino)
    }

    /// Frees an inode's blocks and slot: the final step of unlink (the layout break is done).
    pub(crate) fn free_inode(&self, inode: &Arc<Inode>) -> FsResult<()> {
        let reuse = self.policy() == PinPolicy::Unsafe;
        let mut l = inode.layout.write();
        self.mem().zap_file_range(inode.ino.file_id(), 0..u64::MAX, InvalidateReason::FileLayout);
        let _inv = inode.hub.invalidate(
            pinwheel_mm::VirtRange::new(pinwheel_mm::VirtAddr::new(0), u64::MAX)
                .expect("whole range"),
            InvalidateReason::FileLayout,
        );
        self.drop_cache(inode, 0..u64::MAX);
        let all: Vec<_> = l.extents.iter().collect();
        for e in &all {
            self.deref_blocks(e, reuse)?;
        }
        l.extents = ExtentMap::default();
        for c in std::mem::take(&mut l.chain) {
            self.store.free_meta(c)?;
        }
        drop(l);
        self.release_inode(inode)
    }

    fn release_inode(&self, inode: &Arc<Inode>) -> FsResult<()> {
        let mut l = inode.layout.write();
        for c in std::mem::take(&mut l.chain) {
            self.store.free_meta(c)?;
        }
        let mut rec = InodeRecord::free(inode.ino.0);
        rec.generation = l.rec.generation;
        self.store.write_inode(&rec)?;
        l.rec = rec;
        drop(l);
        self.inodes.write().remove(&inode.ino.0);
        self.free_inos.lock().insert(inode.ino.0);
        Ok(())
    }
}

impl Filesystem {
    /// Creates an empty file.
    pub fn create(&self, path: &str, opts: CreateOptions) -> FsResult<Ino> {
        self.0.make(path, InodeKind::File, if opts.page_cache { IFLAG_PAGE_CACHE } else { 0 })
    }

    /// Creates a directory.
    pub fn mkdir(&self, path: &str) -> FsResult<Ino> {
        self.0.make(path, InodeKind::Dir, 0)
    }

    /// The inode at `path`.
    pub fn lookup(&self, path: &str) -> FsResult<Ino> {
        self.0.check_mounted()?;
        Ok(self.0.resolve(path)?.ino)
    }

    /// Removes a file's name. The file is freed at once if nobody has it open or mapped
    /// (after its layout break, which may refuse: the name then stays), else at its last
    /// reference.
    pub fn unlink(&self, path: &str, caller: &Caller) -> FsResult<()> {
        self.0.check_mounted()?;
        let inode = self.0.resolve(path)?;
        if inode.layout.read().is_dir() {
            return Err(FsError::IsDir { path: path.into() });
        }
        let unreferenced = !self.0.busy(&inode);
        let guard = if unreferenced {
            Some(self.0.break_layout(&inode, 0..u64::MAX, LayoutReason::Unlink, caller)?)
        } else {
            None
        };
        {
            let _ns = self.0.ns.lock();
            let (dir, name) = self.0.resolve_parent(path)?;
            self.0.dir_remove(&dir, &name)?;
            let mut l = inode.layout.write();
            l.rec.nlink = 0;
            l.rec.flags |= IFLAG_ORPHAN;
            self.0.store.write_inode(&l.rec)?;
        }
        match guard {
            Some(g) if !self.0.busy(&inode) => {
                self.0.free_inode(&inode)?;
                drop(g);
                self.0.counters.layout_changes.fetch_add(1, Ordering::Relaxed);
            }
            _ => self.0.reaper.queue(inode.ino),
        }
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, path: &str) -> FsResult<()> {
        self.0.check_mounted()?;
        let _ns = self.0.ns.lock();
        let inode = self.0.resolve(path)?;
        if inode.ino == self.0.root()?.ino {
            return Err(FsError::invalid("cannot remove the root directory"));
        }
        if !inode
            .layout
            .read()
            .dir
            .as_ref()
            .ok_or_else(|| FsError::NotDir { path: path.into() })?
            .entries
            .is_empty()
        {
            return Err(FsError::NotEmpty { path: path.into() });
        }
        let (dir, name) = self.0.resolve_parent(path)?;
        self.0.dir_remove(&dir, &name)?;
        self.0.free_inode(&inode)
    }

    /// Renames; an existing file at `to` is replaced (unlinked first, after every check).
    pub fn rename(&self, from: &str, to: &str, caller: &Caller) -> FsResult<()> {
        self.0.check_mounted()?;
        let src = self.0.resolve(from)?;
        let (ddir, dname) = self.0.resolve_parent(to)?;
        if src.layout.read().is_dir() && (ddir.ino == src.ino || self.0.in_subtree(&src, ddir.ino))
        {
            return Err(FsError::invalid(format!("cannot move {from} into itself")));
        }
        if let Ok(dst) = self.0.resolve(to) {
            if dst.ino == src.ino {
                return Ok(());
            }
            if dst.layout.read().is_dir() {
                return Err(FsError::Exists { path: to.into() });
            }
            self.unlink(to, caller)?;
        }
        let _ns = self.0.ns.lock();
        let (sdir, sname) = self.0.resolve_parent(from)?;
        let (ddir, dname2) = self.0.resolve_parent(to)?;
        debug_assert_eq!(dname, dname2);
        if ddir.layout.read().dir.as_ref().is_some_and(|d| d.entries.contains_key(&dname)) {
            return Err(FsError::Exists { path: to.into() });
        }
        self.0.dir_add(&ddir, &dname, src.ino)?;
        self.0.dir_remove(&sdir, &sname)?;
        self.0.refresh_paths(&src, join(&ddir.path(), &dname));
        Ok(())
    }

    /// Directory entries, sorted by name.
    pub fn readdir(&self, path: &str) -> FsResult<Vec<DirEntry>> {
        self.0.check_mounted()?;
        let dir = self.0.resolve(path)?;
        let names: Vec<(String, Ino)> = dir
            .layout
            .read()
            .dir
            .as_ref()
            .ok_or_else(|| FsError::NotDir { path: path.into() })?
            .entries
            .iter()
            .map(|(n, (i, _))| (n.clone(), *i))
            .collect();
        let mut out = Vec::with_capacity(names.len());
        for (name, ino) in names {
            let Ok(i) = self.0.inode(ino) else { continue };
            let l = i.layout.read();
            out.push(DirEntry {
                name,
                ino,
                kind: if l.is_dir() { FileKind::Dir } else { FileKind::File },
                size: l.rec.size,
            });
        }
        Ok(out)
    }

    /// `stat` by path.
    pub fn stat(&self, path: &str) -> FsResult<Stat> {
        self.0.check_mounted()?;
        let inode = self.0.resolve(path)?;
        Ok(self.0.stat_inode(&inode))
    }

    /// `stat` by inode.
    pub fn stat_ino(&self, ino: Ino) -> FsResult<Stat> {
        self.0.check_mounted()?;
        Ok(self.0.stat_inode(&self.0.inode(ino)?))
    }
}

impl Shared {
    pub(crate) fn stat_inode(&self, inode: &Arc<Inode>) -> Stat {
        let l = inode.layout.read();
        let shared = l.extents.iter().map(|e| self.shared_count(&e)).sum();
        let rt = inode.rt.lock();
        Stat {
            ino: inode.ino,
            kind: if l.is_dir() { FileKind::Dir } else { FileKind::File },
            size: l.rec.size,
            blocks: l.extents.mapped_pages(),
            shared_blocks: shared,
            extents: l.extents.len(),
            sealed: rt.sealed(),
            page_cache: l.page_cache(),
            nlink: l.rec.nlink,
            mtime_ns: l.rec.mtime_ns,
            leases: self.lease_infos(inode, &rt),
            pins: self.pin_infos(inode, &rt),
        }
    }
}
