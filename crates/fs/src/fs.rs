//! The filesystem object: mkfs, mount (rebuilding the in-memory state from the pool), unmount,
//! block allocation with reference counts, and write-through of inode records.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use pinwheel_mm::{Clock, FrameRun, Memory, Owner, PAGE_SIZE, Pfn, Placement, PoolOffset};

use crate::error::{FsError, FsResult};
use crate::extent::{Extent, ExtentMap};
use crate::format::{
    DIRENT_SIZE, Dirent, Geometry, IFLAG_ORPHAN, InodeKind, InodeRecord, Superblock,
};
use crate::inode::{DirState, Inode, Layout};
use crate::limits::{LEASE_BREAK_DEFAULT_MS, REFCOUNT_MAX};
use crate::policy::PinPolicy;
use crate::reaper::Reaper;
use crate::store::Store;
use crate::types::Ino;

/// Counters of the filesystem.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) layout_changes: AtomicU64,
    pub(crate) layout_refused: AtomicU64,
    pub(crate) recalls: AtomicU64,
    pub(crate) lease_revokes: AtomicU64,
    pub(crate) pin_revokes: AtomicU64,
    pub(crate) decoheres: AtomicU64,
    pub(crate) kills: AtomicU64,
    pub(crate) reused_under_dma: AtomicU64,
    pub(crate) cow_breaks: AtomicU64,
    pub(crate) pins_refused: AtomicU64,
    pub(crate) pins_taken: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FsStats {
    /// Layout changes completed.
    pub layout_changes: u64,
    /// Layout changes refused (ETXTBSY / EDEADLK).
    pub layout_refused: u64,
    /// Lease recalls sent.
    pub recalls: u64,
    /// Leases revoked at the deadline.
    pub lease_revokes: u64,
    /// Pins revoked.
    pub pin_revokes: u64,
    /// Decoherence notifications.
    pub decoheres: u64,
    /// Holders killed.
    pub kills: u64,
    /// Frames freed while pinned (the `unsafe` policy).
    pub reused_under_dma: u64,
    /// Copy-on-write breaks of shared blocks.
    pub cow_breaks: u64,
    /// Long-term pins refused by the policy.
    pub pins_refused: u64,
    /// Long-term pins taken.
    pub pins_taken: u64,
    /// Free data blocks.
    pub free_blocks: u64,
    /// Inodes in use.
    pub inodes_used: u64,
    /// Inodes in all.
    pub inodes_total: u64,
}

/// Options of mkfs.
#[derive(Clone, Debug, Default)]
pub struct MkfsOptions {
    /// Inodes (default: one per 64 frames of pool, between 256 and 262 144).
    pub inodes: Option<u64>,
}

/// Options of mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// The node's pin policy.
    pub policy: PinPolicy,
    /// The lease-break time.
    pub lease_break: Duration,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            policy: PinPolicy::Deny,
            lease_break: Duration::from_millis(LEASE_BREAK_DEFAULT_MS),
        }
    }
}

pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) sb: Mutex<Superblock>,
    pub(crate) ns: Mutex<()>,
    pub(crate) inodes: RwLock<HashMap<u64, Arc<Inode>>>,
    pub(crate) free_inos: Mutex<BTreeSet<u64>>,
    pub(crate) rc_lock: Mutex<()>,
    pub(crate) policy: RwLock<PinPolicy>,
    pub(crate) lease_break_ms: AtomicU64,
    pub(crate) next_id: AtomicU64,
    pub(crate) counters: Counters,
    pub(crate) mounted: AtomicBool,
    pub(crate) reaper: Reaper,
    pub(crate) me: Weak<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filesystem").field("geometry", &self.store.geo).finish_non_exhaustive()
    }
}

/// A mounted filesystem. Cheap to clone; every method takes `&self`.
#[derive(Clone, Debug)]
pub struct Filesystem(pub(crate) Arc<Shared>);

impl Shared {
    pub(crate) fn mem(&self) -> &Arc<Memory> {
        &self.store.mem
    }
    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        self.store.mem.clock()
    }
    pub(crate) fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
    pub(crate) fn policy(&self) -> PinPolicy {
        *self.policy.read()
    }
    pub(crate) fn lease_break(&self) -> Duration {
        Duration::from_millis(self.lease_break_ms.load(Ordering::Relaxed))
    }
    pub(crate) fn check_mounted(&self) -> FsResult<()> {
        if self.mounted.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(FsError::BadFile { what: "filesystem".into() })
        }
    }
    /// Whether long-term pins keep an unlinked file alive: under every policy that
    /// coordinates with pins; not under `unsafe` and `deny` (pins hold frames only, as GUP
    /// pins do in Linux today).
    pub(crate) fn pins_hold_files(&self, inode: &Inode) -> bool {
        let dax = !inode.layout.read().page_cache();
        !matches!(
            crate::policy::pin_action(self.policy(), dax),
            crate::policy::PinAction::ReuseUnderDma | crate::policy::PinAction::Orphan
        )
    }

    /// True while the inode must not be freed.
    pub(crate) fn busy(&self, inode: &Inode) -> bool {
        let hold = self.pins_hold_files(inode);
        inode.rt.lock().referenced(hold)
    }

    pub(crate) fn inode(&self, ino: Ino) -> FsResult<Arc<Inode>> {
        self.inodes.read().get(&ino.0).cloned().ok_or(FsError::NotFound { path: ino.to_string() })
    }

    /// Allocates `n` zeroed blocks for `ino` (rc 1).
    pub(crate) fn alloc_blocks(
        &self,
        ino: Ino,
        n: u64,
        placement: Placement,
    ) -> FsResult<Vec<FrameRun>> {
        let free = self.mem().free_bytes() / PAGE_SIZE;
        if free < n.saturating_add(crate::limits::META_RESERVE_FRAMES) {
            return Err(FsError::NoSpace {
                needed: n,
                free: free.saturating_sub(crate::limits::META_RESERVE_FRAMES),
            });
        }
        let runs =
            self.mem().alloc(n, placement, Owner::FileBlock(ino.file_id()), true).map_err(|e| {
                match e.errno() {
                    pinwheel_mm::Errno::ENOMEM => {
                        FsError::NoSpace { needed: n, free: self.mem().free_bytes() / PAGE_SIZE }
                    }
                    _ => FsError::Mm(e),
                }
            })?;
        let _g = self.rc_lock.lock();
        for r in &runs {
            self.store.rc_update(*r, |_, c| {
                *c = 1;
                Ok(())
            })?;
        }
        Ok(runs)
    }

    /// Allocates blocks for `count` pages, contiguous if possible.
    pub(crate) fn alloc_for(&self, ino: Ino, count: u64) -> FsResult<Vec<FrameRun>> {
        if count <= self.mem().max_contiguous_frames()
            && let Ok(r) = self.alloc_blocks(ino, count, Placement::Contiguous)
        {
            return Ok(r);
        }
        self.alloc_blocks(ino, count, Placement::Anywhere)
    }

    /// Adds a reference to every block of `e` (reflink).
    pub(crate) fn ref_blocks(&self, e: &Extent) -> FsResult<()> {
        let _g = self.rc_lock.lock();
        if self.store.rc_count(e.frames(), |c| c == 0 || c >= REFCOUNT_MAX) > 0 {
            return Err(FsError::invalid(format!(
                "blocks of {:?}: a reference count cannot be raised",
                e.frames()
            )));
        }
        self.store.rc_update(e.frames(), |_, c| {
            *c += 1;
            Ok(())
        })
    }

    /// Number of blocks of `e` shared with another file (one read of the table).
    pub(crate) fn shared_count(&self, e: &Extent) -> u64 {
        self.store.rc_count(e.frames(), |c| c > 1)
    }

    /// True if a block is shared (rc > 1).
    pub(crate) fn shared(&self, pfn: Pfn) -> bool {
        self.store.rc_get(pfn) > 1
    }

    /// Drops a reference to every block of `e`; blocks left unreferenced are freed. With
    /// `reuse`, pinned ones go through the counted reuse-under-DMA path (the `unsafe` policy).
    pub(crate) fn deref_blocks(&self, e: &Extent, reuse: bool) -> FsResult<()> {
        let mut free: Vec<FrameRun> = Vec::new();
        {
            let _g = self.rc_lock.lock();
            self.store.rc_update(e.frames(), |i, c| {
                if *c > 1 {
                    *c -= 1;
                    return Ok(());
                }
                *c = 0;
                let p = Pfn::new(e.pfn.raw() + i);
                match free.last_mut() {
                    Some(l) if l.end() == p => l.count += 1,
                    _ => free.push(FrameRun::new(p, 1)),
                }
                Ok(())
            })?;
        }
        for r in free {
            self.free_run(r, reuse);
        }
        Ok(())
    }

    fn free_run(&self, r: FrameRun, reuse: bool) {
        let frames = self.mem().frames();
        // A short-term pin (transient DMA) is waited for, as dax_layout_busy_page does.
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while !reuse
            && r.iter().any(|p| frames.maybe_dma_pinned(p))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        if r.iter().any(|p| frames.maybe_dma_pinned(p)) {
            if !reuse {
                tracing::error!(run = ?r, "blocks still pinned after 1 s: freeing under DMA");
            }
            let n = self.mem().free_reuse_under_dma(r);
            self.counters.reused_under_dma.fetch_add(n, Ordering::Relaxed);
        } else {
            self.mem().free(r);
        }
    }

    /// Writes an inode's record and extents through to the pool.
    pub(crate) fn persist(&self, lay: &mut Layout) -> FsResult<()> {
        let Layout { rec, extents, chain, .. } = lay;
        self.store.write_extents(rec, extents, chain)
    }

    /// Wall-clock time for file timestamps (the node's `Clock` is for deadlines, and starts
    /// anew at every mount).
    pub(crate) fn now_ns(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }
}

impl Filesystem {
    /// Formats the pool and mounts the new filesystem.
    pub fn mkfs(
        mem: &Arc<Memory>,
        _opts: MkfsOptions,
        mount: MountOptions,
    ) -> FsResult<Filesystem> {
        let frames = mem.pool().frames();
        let geo = Geometry::for_frames(frames).ok_or_else(|| {
            FsError::invalid(format!("pool of {frames} frames is too small for a filesystem"))
        })?;
        let meta = FrameRun::new(Pfn::new(0), geo.data_start());
        mem.claim(meta, Owner::Metadata)
            .map_err(|e| FsError::invalid(format!("mkfs needs a fresh memory: {e}")))?;
        // Zero the metadata regions (a file pool may hold old data).
        mem.pool()
            .fill(PoolOffset::new(0), geo.data_start() * PAGE_SIZE, 0)
            .map_err(FsError::Mm)?;
        let store = Store { mem: Arc::clone(mem), geo };
        for p in meta.iter() {
            store.rc_set(p, 1)?;
        }
        let sb = Superblock {
            geometry: geo,
            pool_size: mem.pool().size(),
            root_ino: 1,
            mount_count: 0,
            clean: false,
            next_generation: 1,
        };
        store.write_sb(&sb)?;
        let fs = Filesystem::assemble(store, sb, mount);
        let root = InodeRecord {
            ino: 1,
            generation: 1,
            kind: InodeKind::Dir,
            flags: 0,
            nlink: 1,
            size: 0,
            mtime_ns: 0,
            n_extents: 0,
            extent_block: 0,
            inline: Vec::new(),
        };
        fs.0.store.write_inode(&root)?;
        let layout = Layout {
            rec: root,
            extents: ExtentMap::default(),
            chain: Vec::new(),
            dir: Some(DirState::default()),
        };
        fs.0.inodes.write().insert(1, Inode::new(Ino(1), layout, "/".into()));
        fs.0.free_inos.lock().extend(2..=geo.inodes);
        fs.mark_mounted()?;
        Ok(fs)
    }

    fn assemble(store: Store, sb: Superblock, mount: MountOptions) -> Filesystem {
        Filesystem(Arc::new_cyclic(|me| Shared {
            store,
            sb: Mutex::new(sb),
            ns: Mutex::new(()),
            inodes: RwLock::new(HashMap::new()),
            free_inos: Mutex::new(BTreeSet::new()),
            rc_lock: Mutex::new(()),
            policy: RwLock::new(mount.policy),
            lease_break_ms: AtomicU64::new(mount.lease_break.as_millis() as u64),
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
            mounted: AtomicBool::new(false),
            reaper: Reaper::new(me.clone()),
            me: me.clone(),
        }))
    }

    fn mark_mounted(&self) -> FsResult<()> {
        let mut sb = self.0.sb.lock();
        sb.clean = false;
        sb.mount_count = sb.mount_count.saturating_add(1);
        self.0.store.write_sb(&sb)?;
        self.0.mounted.store(true, Ordering::Release);
        Ok(())
    }

    /// Mounts the filesystem in `mem`'s pool: reads the superblock, every inode, extent chain
    /// and directory, and claims their frames from the (fresh) memory. A damaged image is
    /// refused with `EUCLEAN` naming the problem; run fsck.
    pub fn mount(mem: &Arc<Memory>, mount: MountOptions) -> FsResult<Filesystem> {
        let sb = Store::read_sb(mem)?;
        let report = crate::fsck::fsck(mem.pool());
        if let Some(first) = report.errors.first() {
            return Err(FsError::Corrupt {
                what: format!("{first} ({} problems in all; run fsck)", report.errors.len()),
            });
        }
        // Free blocks of an existing image held files once.
        mem.assume_dirty();
        if !sb.clean {
            tracing::warn!(
                "filesystem was not cleanly unmounted (no journal yet: metadata is written in place)"
            );
        }
        let geo = sb.geometry;
        mem.claim(FrameRun::new(Pfn::new(0), geo.data_start()), Owner::Metadata)
            .map_err(|e| FsError::invalid(format!("mount needs a fresh memory: {e}")))?;
        let store = Store { mem: Arc::clone(mem), geo };
        let fs = Filesystem::assemble(store, sb.clone(), mount);
        let sh = &fs.0;
        let mut layouts: HashMap<u64, Layout> = HashMap::new();
        let mut free = BTreeSet::new();
        for ino in 1..=geo.inodes {
            let rec = sh.store.read_inode(ino)?;
            if rec.kind == InodeKind::Free {
                free.insert(ino);
                continue;
            }
            let (extents, chain) = sh.store.read_extents(&rec)?;
            for c in &chain {
                mem.claim(FrameRun::new(Pfn::new(*c), 1), Owner::Metadata).map_err(|_| {
                    FsError::Corrupt { what: format!("inode {ino}: extent block {c} used twice") }
                })?;
            }
            let mut map = ExtentMap::default();
            for e in &extents {
                if !map.within(e.page..e.end()).is_empty() {
                    return Err(FsError::Corrupt {
                        what: format!("inode {ino}: overlapping extents at page {}", e.page),
                    });
                }
                map.insert(e.page, e.pfn, e.count);
                for p in e.frames().iter() {
                    if mem.frames().owner(p) == Owner::Free {
                        mem.claim(FrameRun::new(p, 1), Owner::FileBlock(Ino(ino).file_id()))
                            .map_err(FsError::Mm)?;
                    } else if sh.store.rc_get(p) < 2 {
                        return Err(FsError::Corrupt {
                            what: format!(
                                "block {p} used twice but its reference count is {}",
                                sh.store.rc_get(p)
                            ),
                        });
                    }
                }
            }
            layouts.insert(ino, Layout { rec, extents: map, chain, dir: None });
        }
        if layouts.get(&sb.root_ino).is_none_or(|l| l.rec.kind != InodeKind::Dir) {
            return Err(FsError::Corrupt { what: "root inode is not a directory".into() });
        }
        // Directories.
        let dir_inos: Vec<u64> =
            layouts.iter().filter(|(_, l)| l.rec.kind == InodeKind::Dir).map(|(i, _)| *i).collect();
        for d in dir_inos {
            let l = layouts.get(&d).expect("listed above");
            let state = sh.load_dir(l)?;
            for (name, (child, _)) in &state.entries {
                if !layouts.contains_key(&child.0) {
                    return Err(FsError::Corrupt {
                        what: format!("directory {d}: entry {name:?} names free inode {}", child.0),
                    });
                }
            }
            layouts.get_mut(&d).expect("listed above").dir = Some(state);
        }
        // Orphans (unlinked while referenced before the last unmount): nothing refers to them now.
        let orphans: Vec<u64> = layouts
            .iter()
            .filter(|(_, l)| l.rec.flags & IFLAG_ORPHAN != 0 || l.rec.nlink == 0)
            .map(|(i, _)| *i)
            .filter(|i| *i != sb.root_ino)
            .collect();
        {
            let mut inodes = sh.inodes.write();
            for (ino, l) in layouts {
                inodes.insert(ino, Inode::new(Ino(ino), l, String::new()));
            }
        }
        *sh.free_inos.lock() = free;
        fs.rebuild_paths();
        fs.mark_mounted()?;
        for o in orphans {
            tracing::info!(ino = o, "freeing orphan inode left by the last mount");
            sh.reaper.queue(Ino(o));
        }
        Ok(fs)
    }

    /// Records every inode's path (for messages).
    fn rebuild_paths(&self) {
        let inodes = self.0.inodes.read();
        let mut stack = vec![(Ino(self.0.sb.lock().root_ino), "/".to_string())];
        let mut depth = 0;
        while let Some((ino, path)) = stack.pop() {
            depth += 1;
            if depth > inodes.len() + 1 {
                break;
            }
            let Some(inode) = inodes.get(&ino.0) else { continue };
            inode.rt.lock().path = path.clone();
            if let Some(d) = &inode.layout.read().dir {
                for (name, (child, _)) in &d.entries {
                    let p = if path == "/" { format!("/{name}") } else { format!("{path}/{name}") };
                    stack.push((*child, p));
                }
            }
        }
    }

    /// Writes back page caches, frees pending orphans, marks the filesystem clean and makes the
    /// pool durable. The filesystem refuses every operation afterwards.
    pub fn unmount(&self) -> FsResult<()> {
        self.0.check_mounted()?;
        self.0.reaper.drain();
        let inodes: Vec<Arc<Inode>> = self.0.inodes.read().values().cloned().collect();
        for i in &inodes {
            self.0.writeback(i)?;
        }
        self.0.mounted.store(false, Ordering::Release);
        self.0.reaper.stop();
        let mut sb = self.0.sb.lock();
        sb.clean = true;
        self.0.store.write_sb(&sb)?;
        let pool = self.0.mem().pool();
        pool.flush(PoolOffset::new(0), pool.size()).map_err(FsError::Mm)
    }

    /// The memory the filesystem lives in.
    pub fn memory(&self) -> &Arc<Memory> {
        self.0.mem()
    }

    /// The node's pin policy.
    pub fn policy(&self) -> PinPolicy {
        self.0.policy()
    }

    /// Changes the pin policy (affects later pins and layout changes).
    pub fn set_policy(&self, p: PinPolicy) {
        *self.0.policy.write() = p;
    }

    /// The lease-break time.
    pub fn lease_break(&self) -> Duration {
        self.0.lease_break()
    }

    /// Sets the lease-break time.
    pub fn set_lease_break(&self, d: Duration) {
        self.0.lease_break_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Counters.
    pub fn stats(&self) -> FsStats {
        let c = &self.0.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let inodes_total = self.0.store.geo.inodes;
        FsStats {
            layout_changes: l(&c.layout_changes),
            layout_refused: l(&c.layout_refused),
            recalls: l(&c.recalls),
            lease_revokes: l(&c.lease_revokes),
            pin_revokes: l(&c.pin_revokes),
            decoheres: l(&c.decoheres),
            kills: l(&c.kills),
            reused_under_dma: l(&c.reused_under_dma),
            cow_breaks: l(&c.cow_breaks),
            pins_refused: l(&c.pins_refused),
            pins_taken: l(&c.pins_taken),
            free_blocks: self.0.mem().free_bytes() / PAGE_SIZE,
            inodes_used: inodes_total - self.0.free_inos.lock().len() as u64,
            inodes_total,
        }
    }
}

impl Shared {
    /// Reads a directory's entries from its blocks.
    pub(crate) fn load_dir(&self, l: &Layout) -> FsResult<DirState> {
        let mut st = DirState::default();
        let nslots = l.rec.size / DIRENT_SIZE;
        st.nslots = nslots;
        let mut buf = vec![0u8; DIRENT_SIZE as usize];
        for slot in 0..nslots {
            let off = slot * DIRENT_SIZE;
            let Some(pfn) = l.extents.lookup(off / PAGE_SIZE) else {
                st.free_slots.insert(slot);
                continue;
            };
            self.mem()
                .pool()
                .read(PoolOffset::new(pfn.offset().raw() + off % PAGE_SIZE), &mut buf)
                .map_err(FsError::Mm)?;
            match Dirent::decode(&buf, l.rec.ino).map_err(|c| FsError::Corrupt { what: c.0 })? {
                Some(d) => {
                    if st.entries.insert(d.name.clone(), (Ino(d.ino), slot)).is_some() {
                        return Err(FsError::Corrupt {
                            what: format!("directory {}: name {:?} twice", l.rec.ino, d.name),
                        });
                    }
                }
                None => {
                    st.free_slots.insert(slot);
                }
            }
        }
        Ok(st)
    }
}
