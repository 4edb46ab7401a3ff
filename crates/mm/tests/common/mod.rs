//! Shared test helpers: a memory over a small memfd pool and a toy file backing that behaves
//! like a minimal DAX file (fixed blocks, truncate that zaps through the reverse map).
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};
use pinwheel_mm::*;

pub fn memory(mib: u64) -> Arc<Memory> {
    Memory::new(Pool::memfd("test", mib << 20).expect("pool"), RealClock::new())
}

pub fn assert_clean(mem: &Memory, aspaces: &[&AddressSpace]) {
    let bad = mem.check_invariants();
    assert!(bad.is_empty(), "memory invariants: {bad:#?}");
    for a in aspaces {
        let bad = a.check_invariants();
        assert!(bad.is_empty(), "aspace invariants: {bad:#?}");
    }
}

#[derive(Debug)]
pub struct ToyFile {
    pub id: FileId,
    mem: Arc<Memory>,
    blocks: RwLock<Vec<Pfn>>,
    pub refuse_longterm: Mutex<Option<Errno>>,
    pub live_file_pins: Arc<AtomicUsize>,
    pub asked: AtomicUsize,
    /// The `unsafe` policy: free pinned blocks anyway (reuse under DMA).
    pub reuse_under_dma: AtomicBool,
}

#[derive(Debug)]
struct Guard(Arc<AtomicUsize>);
impl FilePinGuard for Guard {}
impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ToyFile {
    pub fn new(mem: &Arc<Memory>, id: u64, pages: u64, fill: u8) -> Arc<ToyFile> {
        let runs = mem
            .alloc(pages, Placement::Anywhere, Owner::FileBlock(FileId::new(id)), true)
            .expect("blocks");
        let blocks: Vec<Pfn> = runs.iter().flat_map(|r| r.iter()).collect();
        for b in &blocks {
            mem.pool().fill(b.offset(), PAGE_SIZE, fill).expect("fill");
        }
        Arc::new(ToyFile {
            id: FileId::new(id),
            mem: Arc::clone(mem),
            blocks: RwLock::new(blocks),
            refuse_longterm: Mutex::new(None),
            live_file_pins: Arc::new(AtomicUsize::new(0)),
            asked: AtomicUsize::new(0),
            reuse_under_dma: AtomicBool::new(false),
        })
    }

    pub fn block(&self, pg: u64) -> Pfn {
        self.blocks.read()[pg as usize]
    }

    pub fn pages(&self) -> u64 {
        self.blocks.read().len() as u64
    }

    /// Shrinks the file: zaps every mapping of the cut pages, then frees their blocks.
    /// Returns Err(ETXTBSY) if a cut block is pinned (unless reuse under DMA is allowed).
    pub fn truncate(&self, pages: u64) -> Result<u64, Errno> {
        let mut b = self.blocks.write();
        let old = b.len() as u64;
        if pages >= old {
            return Ok(0);
        }
        let cut: Vec<Pfn> = b[pages as usize..].to_vec();
        let reuse = self.reuse_under_dma.load(Ordering::SeqCst);
        if !reuse && cut.iter().any(|p| self.mem.frames().maybe_dma_pinned(*p)) {
            return Err(Errno::ETXTBSY);
        }
        self.mem.zap_file_range(self.id, pages..old, InvalidateReason::FileLayout);
        let mut reused = 0;
        for p in cut {
            if reuse {
                reused += self.mem.free_reuse_under_dma(FrameRun::new(p, 1));
            } else {
                self.mem.free(FrameRun::new(p, 1));
            }
        }
        b.truncate(pages as usize);
        Ok(reused)
    }

    /// Moves block `pg` to a new frame (content kept): a pure layout change.
    pub fn migrate(&self, pg: u64) -> Pfn {
        let mut b = self.blocks.write();
        let old = b[pg as usize];
        self.mem.zap_file_range(self.id, pg..pg + 1, InvalidateReason::Migration);
        let new = self
            .mem
            .alloc(1, Placement::Contiguous, Owner::FileBlock(self.id), false)
            .expect("frame")[0]
            .pfn;
        self.mem.pool().copy_frame(old, new).expect("copy");
        self.mem.free(FrameRun::new(old, 1));
        b[pg as usize] = new;
        new
    }
}

impl FileBacking for ToyFile {
    fn file_id(&self) -> FileId {
        self.id
    }
    fn name(&self) -> String {
        format!("toy{}", self.id.raw())
    }
    fn kind(&self) -> BackingKind {
        BackingKind::Dax
    }
    fn fault(
        &self,
        pgoff: u64,
        _write: bool,
        install: &mut dyn FnMut(Pfn) -> Result<(), MmError>,
    ) -> Result<(), MmError> {
        let b = self.blocks.read();
        match b.get(pgoff as usize) {
            Some(p) => install(*p),
            None => Err(MmError::BeyondEof { addr: VirtAddr::new(0), file: self.name() }),
        }
    }
    fn longterm_pin(
        &self,
        _pages: Range<u64>,
        _write: bool,
        _owner: Option<&PinOwner>,
    ) -> Result<Box<dyn FilePinGuard>, MmError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        if let Some(e) = *self.refuse_longterm.lock() {
            return Err(MmError::Refused {
                errno: e,
                reason: format!("{}: long-term pin refused", self.name()),
            });
        }
        self.live_file_pins.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(Guard(Arc::clone(&self.live_file_pins))))
    }
}
