//! The reverse map: from a file to every mapping of it in any address space (the kernel's
//! `i_mmap` tree), so a layout change can find and zap them.
//!
//! Lock order (outermost first), which every path in the crate keeps:
//! `vmas` (per address space) → the filesystem's per-file lock → `FileRmap` → `pt` (per
//! address space) → notifier subscribers' own locks. A zap holds the file's `FileRmap` lock for
//! its whole duration, so a concurrent mremap or munmap (which update the entries under the
//! same lock) cannot move a mapping out from under it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::aspace::Mmu;
use crate::notifier::InvalidateReason;
use crate::types::{AspaceId, FileId, PAGE_SIZE, VirtAddr, VirtRange};
use crate::vma::{Vma, VmaKind};

/// One mapping of a file: pages `[vpn_lo, vpn_hi)` of an address space map file pages from
/// `pgoff`.
#[derive(Clone, Debug)]
pub(crate) struct RmapEntry {
    pub(crate) mmu: Arc<Mmu>,
    pub(crate) aspace_id: AspaceId,
    pub(crate) vpn_lo: u64,
    pub(crate) vpn_hi: u64,
    pub(crate) pgoff: u64,
}

impl RmapEntry {
    fn pages(&self) -> Range<u64> {
        self.pgoff..self.pgoff + (self.vpn_hi - self.vpn_lo)
    }
}

/// The mappings of one file.
#[derive(Debug, Default)]
pub(crate) struct FileRmap {
    pub(crate) entries: Mutex<Vec<RmapEntry>>,
}

/// A mapping of a file, for admin views.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMapping {
    /// The address space.
    pub aspace: AspaceId,
    /// Where in it.
    pub range: VirtRange,
    /// The first file byte mapped there.
    pub file_offset: u64,
}

/// What a zap did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZapReport {
    /// Mappings that overlapped the range.
    pub mappings: usize,
    /// Translations removed.
    pub translations: u64,
}

/// All files' mappings.
#[derive(Debug, Default)]
pub(crate) struct Rmap {
    files: Mutex<HashMap<FileId, Arc<FileRmap>>>,
}

fn file_of(vma: &Vma) -> Option<(FileId, u64)> {
    match &vma.kind {
        VmaKind::File { backing, pgoff } => Some((backing.file_id(), *pgoff)),
        VmaKind::Anonymous { .. } => None,
    }
}

impl Rmap {
    fn file(&self, id: FileId) -> Arc<FileRmap> {
        Arc::clone(self.files.lock().entry(id).or_default())
    }

    fn get(&self, id: FileId) -> Option<Arc<FileRmap>> {
        self.files.lock().get(&id).cloned()
    }

    /// Replaces the entries of `old` VMAs (all of one file) by those of `new` ones, running
    /// `during` (a page-table move) under the file's lock so no zap sees the mappings in between.
    /// Anonymous VMAs are ignored.
    pub(crate) fn replace(
        &self,
        mmu: &Arc<Mmu>,
        old: &[&Vma],
        new: &[&Vma],
        during: impl FnOnce(),
    ) {
        let Some((file, _)) = old.iter().chain(new).find_map(|v| file_of(v)) else {
            during();
            return;
        };
        let fr = self.file(file);
        let mut entries = fr.entries.lock();
        during();
        for v in old {
            if file_of(v).is_some() {
                let before = entries.len();
                entries.retain(|e| !(e.aspace_id == mmu.id() && e.vpn_lo == v.start));
                debug_assert_eq!(entries.len() + 1, before, "rmap entry for {v:?} missing");
            }
        }
        for v in new {
            if let Some((f, pgoff)) = file_of(v) {
                debug_assert_eq!(f, file);
                entries.push(RmapEntry {
                    mmu: Arc::clone(mmu),
                    aspace_id: mmu.id(),
                    vpn_lo: v.start,
                    vpn_hi: v.end,
                    pgoff,
                });
            }
        }
    }

    /// Zaps every mapping of file pages `pages`: subscribers of each address space are
    /// invalidated and the translations removed before this returns.
    pub(crate) fn zap(
        &self,
        file: FileId,
        pages: Range<u64>,
        reason: InvalidateReason,
    ) -> ZapReport {
        let mut report = ZapReport::default();
        let Some(fr) = self.get(file) else {
            return report;
        };
        let entries = fr.entries.lock();
        for e in entries.iter() {
            let p = e.pages();
            let lo = p.start.max(pages.start);
            let hi = p.end.min(pages.end);
            if lo >= hi {
                continue;
            }
            report.mappings += 1;
            let vlo = e.vpn_lo + (lo - e.pgoff);
            let vhi = e.vpn_lo + (hi - e.pgoff);
            report.translations += e.mmu.zap(vlo, vhi, reason);
        }
        report
    }

    /// The mappings of a file.
    pub(crate) fn mappings(&self, file: FileId) -> Vec<FileMapping> {
        let Some(fr) = self.get(file) else { return Vec::new() };
        fr.entries
            .lock()
            .iter()
            .filter_map(|e| {
                let range = VirtRange::from_bounds(
                    VirtAddr::from_vpn(e.vpn_lo),
                    VirtAddr::from_vpn(e.vpn_hi),
                )?;
                Some(FileMapping { aspace: e.aspace_id, range, file_offset: e.pgoff * PAGE_SIZE })
            })
            .collect()
    }
}
