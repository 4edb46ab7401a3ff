//! Virtual memory areas: the mappings of an address space, kept in a map ordered by start.
//! Addresses here are virtual page numbers; the address space converts.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::backing::FileBacking;
use crate::limits::{VA_END, VA_START};
use crate::types::PAGE_SHIFT;

bitflags::bitflags! {
    /// Protection of a mapping.
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
    pub struct Prot: u8 {
        /// PROT_READ.
        const READ = 1 << 0;
        /// PROT_WRITE.
        const WRITE = 1 << 1;
    }
}

/// What a mapping maps.
#[derive(Clone)]
pub enum VmaKind {
    /// Private anonymous memory; `huge` backs it with 2 MiB frames (MAP_HUGETLB semantics:
    /// lengths and addresses of operations on it must be 2 MiB aligned).
    Anonymous {
        /// Backed by huge frames.
        huge: bool,
    },
    /// A shared mapping of a file from page `pgoff` of the file.
    File {
        /// The file.
        backing: Arc<dyn FileBacking>,
        /// File page mapped at the VMA's start.
        pgoff: u64,
    },
}

impl fmt::Debug for VmaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmaKind::Anonymous { huge } => write!(f, "anon{}", if *huge { " huge" } else { "" }),
            VmaKind::File { backing, pgoff } => write!(f, "file {} @page {pgoff}", backing.name()),
        }
    }
}

/// One mapping: pages `[start, end)`.
#[derive(Clone, Debug)]
pub struct Vma {
    /// First page.
    pub start: u64,
    /// One past the last page.
    pub end: u64,
    /// Protection.
    pub prot: Prot,
    /// What is mapped.
    pub kind: VmaKind,
}

impl Vma {
    /// True for huge anonymous mappings.
    pub fn is_huge(&self) -> bool {
        matches!(self.kind, VmaKind::Anonymous { huge: true })
    }
    /// The file page mapped at `vpn` (file mappings only).
    pub fn pgoff_of(&self, vpn: u64) -> Option<u64> {
        match &self.kind {
            VmaKind::File { pgoff, .. } => Some(pgoff + (vpn - self.start)),
            VmaKind::Anonymous { .. } => None,
        }
    }
    /// The part from `at` on, with the file offset moved along.
    fn split_off(&mut self, at: u64) -> Vma {
        debug_assert!(self.start < at && at < self.end);
        let mut tail = self.clone();
        tail.start = at;
        if let VmaKind::File { pgoff, .. } = &mut tail.kind {
            *pgoff += at - self.start;
        }
        self.end = at;
        tail
    }
}

/// The mappings of one address space.
#[derive(Debug, Default)]
pub struct VmaTree {
    map: BTreeMap<u64, Vma>,
}

impl VmaTree {
    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// The mapping containing `vpn`.
    pub fn find(&self, vpn: u64) -> Option<&Vma> {
        self.map.range(..=vpn).next_back().map(|(_, v)| v).filter(|v| vpn < v.end)
    }
    /// Mappings overlapping `[lo, hi)`, in order.
    pub fn overlapping(&self, lo: u64, hi: u64) -> impl Iterator<Item = &Vma> {
        let first = self.find(lo).map(|v| v.start).unwrap_or(lo);
        self.map.range(first..hi).map(|(_, v)| v).filter(move |v| v.end > lo)
    }
    /// True if `[lo, hi)` is covered by mappings without holes.
    pub fn covers(&self, lo: u64, hi: u64) -> bool {
        let mut at = lo;
        for v in self.overlapping(lo, hi) {
            if v.start > at {
                return false;
            }
            at = v.end;
        }
        at >= hi
    }
    /// Splits the mapping straddling `vpn` so that one starts there; returns the (old start,
    /// new tail start) if a split happened.
    pub fn split_at(&mut self, vpn: u64) -> Option<(u64, u64)> {
        let start = self.find(vpn).map(|v| v.start).filter(|s| *s < vpn)?;
        let v = self.map.get_mut(&start).expect("found above");
        let tail = v.split_off(vpn);
        self.map.insert(vpn, tail);
        Some((start, vpn))
    }
    /// Inserts a mapping over free space.
    pub fn insert(&mut self, vma: Vma) {
        assert!(vma.start < vma.end, "empty vma");
        assert!(self.overlapping(vma.start, vma.end).next().is_none(), "vma overlaps");
        self.map.insert(vma.start, vma);
    }
    /// Removes the mappings wholly inside `[lo, hi)` (split first) and returns them.
    pub fn take_inside(&mut self, lo: u64, hi: u64) -> Vec<Vma> {
        let starts: Vec<u64> = self.map.range(lo..hi).map(|(s, _)| *s).collect();
        starts
            .into_iter()
            .filter_map(|s| self.map.remove(&s))
            .inspect(|v| debug_assert!(v.end <= hi))
            .collect()
    }
    /// The mapping starting at `start`, mutably.
    pub fn get_mut(&mut self, start: u64) -> Option<&mut Vma> {
        self.map.get_mut(&start)
    }
    /// All mappings.
    pub fn iter(&self) -> impl Iterator<Item = &Vma> {
        self.map.values()
    }
    /// True if `[lo, hi)` is unmapped.
    pub fn is_free(&self, lo: u64, hi: u64) -> bool {
        self.overlapping(lo, hi).next().is_none()
    }
    /// First free range of `pages` pages aligned to `align` pages inside the user range.
    pub fn find_free(&self, pages: u64, align: u64) -> Option<u64> {
        let lo = VA_START >> PAGE_SHIFT;
        let hi = VA_END >> PAGE_SHIFT;
        let mut cand = lo.next_multiple_of(align);
        for v in self.map.values() {
            if v.end <= cand {
                continue;
            }
            if v.start >= cand.checked_add(pages)? {
                break;
            }
            cand = v.end.next_multiple_of(align);
        }
        (cand.checked_add(pages)? <= hi).then_some(cand)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(start: u64, end: u64) -> Vma {
        Vma { start, end, prot: Prot::READ | Prot::WRITE, kind: VmaKind::Anonymous { huge: false } }
    }

    #[test]
    fn vma_split_and_take() {
        let mut t = VmaTree::default();
        t.insert(anon(100, 200));
        assert_eq!(t.split_at(150), Some((100, 150)));
        assert_eq!(t.split_at(150), None);
        assert_eq!(t.len(), 2);
        let taken = t.take_inside(150, 200);
        assert_eq!(taken.len(), 1);
        assert!(t.covers(100, 150) && !t.covers(100, 151));
    }

    #[test]
    fn vma_find_free_skips_mappings() {
        let mut t = VmaTree::default();
        let base = VA_START >> PAGE_SHIFT;
        t.insert(anon(base, base + 10));
        assert_eq!(t.find_free(5, 1), Some(base + 10));
        assert_eq!(t.find_free(5, 512), Some((base + 10).next_multiple_of(512)));
        t.insert(anon(base + 12, base + 20));
        assert_eq!(t.find_free(2, 1), Some(base + 10));
        assert_eq!(t.find_free(3, 1), Some(base + 20));
        assert_eq!(t.find_free(u64::MAX / 2, 1), None);
    }

    #[test]
    fn vma_overlapping_finds_straddlers() {
        let mut t = VmaTree::default();
        t.insert(anon(10, 20));
        t.insert(anon(30, 40));
        let got: Vec<u64> = t.overlapping(15, 35).map(|v| v.start).collect();
        assert_eq!(got, vec![10, 30]);
        assert!(t.is_free(20, 30));
    }
}
