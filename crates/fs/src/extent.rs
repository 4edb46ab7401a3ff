//! A file's extent map: file pages → runs of pool frames, in memory. The on-pool copy is
//! written through by `store.rs` after every change.

use std::collections::BTreeMap;
use std::ops::Range;

use pinwheel_mm::{FrameRun, Pfn};

/// File pages `[page, page + count)` live in frames `[pfn, pfn + count)`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Extent {
    /// First file page.
    pub page: u64,
    /// First frame.
    pub pfn: Pfn,
    /// Pages.
    pub count: u64,
}

impl Extent {
    /// One past the last page.
    pub fn end(&self) -> u64 {
        self.page + self.count
    }
    /// The frames.
    pub fn frames(&self) -> FrameRun {
        FrameRun::new(self.pfn, self.count)
    }
    fn clip(&self, r: &Range<u64>) -> Option<Extent> {
        let s = self.page.max(r.start);
        let e = self.end().min(r.end);
        (s < e).then(|| Extent {
            page: s,
            pfn: Pfn::new(self.pfn.raw() + (s - self.page)),
            count: e - s,
        })
    }
}

/// The extent map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtentMap {
    map: BTreeMap<u64, (Pfn, u64)>,
}

impl ExtentMap {
    /// Number of extents.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// Pages with blocks.
    pub fn mapped_pages(&self) -> u64 {
        self.map.values().map(|(_, c)| c).sum()
    }
    /// All extents in file order.
    pub fn iter(&self) -> impl Iterator<Item = Extent> + '_ {
        self.map.iter().map(|(p, (f, c))| Extent { page: *p, pfn: *f, count: *c })
    }
    /// The extent containing `page`.
    pub fn find(&self, page: u64) -> Option<Extent> {
        let (p, (f, c)) = self.map.range(..=page).next_back()?;
        (page < p + c).then_some(Extent { page: *p, pfn: *f, count: *c })
    }
    /// The frame of `page`.
    pub fn lookup(&self, page: u64) -> Option<Pfn> {
        self.find(page).map(|e| Pfn::new(e.pfn.raw() + (page - e.page)))
    }
    /// Extents overlapping `r`, clipped to it.
    pub fn within(&self, r: Range<u64>) -> Vec<Extent> {
        let first = self.find(r.start).map(|e| e.page).unwrap_or(r.start);
        self.map
            .range(first..r.end)
            .filter_map(|(p, (f, c))| Extent { page: *p, pfn: *f, count: *c }.clip(&r))
            .collect()
    }
    /// Holes of `r`.
    pub fn holes(&self, r: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut at = r.start;
        for e in self.within(r.clone()) {
            if e.page > at {
                out.push(at..e.page);
            }
            at = e.end();
        }
        if at < r.end {
            out.push(at..r.end);
        }
        out
    }
    /// Maps pages `[page, page + count)`, which must be a hole, to frames from `pfn`; merges
    /// with neighbours that continue both ranges.
    pub fn insert(&mut self, page: u64, pfn: Pfn, count: u64) {
        assert!(count > 0, "empty extent");
        assert!(
            self.within(page..page + count).is_empty(),
            "extent insert over mapped pages {page}+{count}"
        );
        let (mut page, mut pfn, mut count) = (page, pfn, count);
        if let Some(prev) = self.find(page.wrapping_sub(1)).filter(|_| page > 0)
            && prev.end() == page
            && prev.pfn.raw() + prev.count == pfn.raw()
        {
            self.map.remove(&prev.page);
            page = prev.page;
            pfn = prev.pfn;
            count += prev.count;
        }
        if let Some((f, c)) = self.map.get(&(page + count)).copied()
            && pfn.raw() + count == f.raw()
        {
            self.map.remove(&(page + count));
            count += c;
        }
        self.map.insert(page, (pfn, count));
    }
    /// Unmaps `r` and returns the removed pieces (extents straddling the bounds are split).
    pub fn remove(&mut self, r: Range<u64>) -> Vec<Extent> {
        let removed = self.within(r.clone());
        for e in &removed {
            let whole = self.find(e.page).expect("clipped from an existing extent");
            self.map.remove(&whole.page);
            if whole.page < e.page {
                self.map.insert(whole.page, (whole.pfn, e.page - whole.page));
            }
            if e.end() < whole.end() {
                let off = e.end() - whole.page;
                self.map.insert(e.end(), (Pfn::new(whole.pfn.raw() + off), whole.end() - e.end()));
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_insert_merges_and_remove_splits() {
        let mut m = ExtentMap::default();
        m.insert(0, Pfn::new(100), 4);
        m.insert(4, Pfn::new(104), 4);
        assert_eq!(m.len(), 1, "contiguous in both spaces: merged");
        m.insert(10, Pfn::new(200), 2);
        assert_eq!(m.lookup(5), Some(Pfn::new(105)));
        assert_eq!(m.lookup(8), None);
        assert_eq!(m.holes(0..14), vec![8..10, 12..14]);
        let r = m.remove(2..11);
        assert_eq!(
            r,
            vec![
                Extent { page: 2, pfn: Pfn::new(102), count: 6 },
                Extent { page: 10, pfn: Pfn::new(200), count: 1 }
            ]
        );
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            vec![
                Extent { page: 0, pfn: Pfn::new(100), count: 2 },
                Extent { page: 11, pfn: Pfn::new(201), count: 1 }
            ]
        );
        assert_eq!(m.mapped_pages(), 3);
    }

    #[test]
    #[should_panic(expected = "over mapped pages")]
    fn extent_insert_over_mapped_is_a_bug() {
        let mut m = ExtentMap::default();
        m.insert(0, Pfn::new(1), 2);
        m.insert(1, Pfn::new(9), 1);
    }
}
