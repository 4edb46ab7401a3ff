//! The translation of a pinned MR: the pins that hold its frames, and the pool pieces behind
//! its bytes, computed once when the pins are taken.
//!
//! The map is swapped whole (registration, restore, revoke, deregistration) and every swap
//! bumps the MR's map generation. A thread executing a QP's work requests may keep a
//! [`Snapshot`] of the pieces between requests. It holds no pin (a cache must never keep frames
//! pinned: a restore_mr would wait for them), so it is used only inside the MR's in-flight
//! section with the coherence checks on, after checking the generation: a swap happens only
//! after the state change and the drain (`mr.rs`), so a transfer in flight that saw the MR
//! valid and the generation unchanged is using the current pieces. With the checks off nothing
//! waits for transfers, and a transfer keeps the pins alive itself (a clone of the map).

use std::sync::Arc;

use pinwheel_mm::{PAGE_SIZE, Pfn, Pin, Pool, PoolOffset};

use crate::shm::{MrSlot, xlat_entry};

/// The pool pieces behind an MR's pages: `(byte offset from the MR's first page, pool offset,
/// bytes)`, in order, physically contiguous each.
#[derive(Debug, Default)]
pub(crate) struct Pieces {
    runs: Vec<(u64, PoolOffset, u64)>,
    /// Pages backed from the MR's first page (after a restore over a truncated file, a prefix).
    valid_pages: u64,
}

impl Pieces {
    /// Runs `f(pool offset, length)` over the physically contiguous pieces behind
    /// `[b, b + len)` (bytes from the MR's first page); `None` if a page of the range is not
    /// backed.
    pub(crate) fn for_each<E>(
        &self,
        b: u64,
        len: u64,
        f: &mut dyn FnMut(PoolOffset, u64) -> Result<(), E>,
    ) -> Option<Result<(), E>> {
        let end = b.checked_add(len)?;
        if end.div_ceil(PAGE_SIZE) > self.valid_pages {
            return None;
        }
        let mut at = b;
        let mut i = self.runs.partition_point(|(s, _, l)| s + l <= at);
        while at < end {
            let &(s, p, l) = self.runs.get(i)?;
            if at < s {
                return None;
            }
            let n = (s + l).min(end) - at;
            if let Err(e) = f(PoolOffset::new(p.raw() + (at - s)), n) {
                return Some(Err(e));
            }
            at += n;
            i += 1;
        }
        Some(Ok(()))
    }
}

/// The pins of a pinned MR: normally one; after a restore over a truncated file, the pins
/// cover the prefix that still exists (`valid_pages`).
#[derive(Debug)]
pub(crate) struct PinnedMap {
    /// `(first page, pin)`: held for their release when the map is dropped.
    _pins: Vec<(u64, Pin)>,
    pieces: Arc<Pieces>,
}

impl PinnedMap {
    /// The map of `pins` backing the first `valid_pages` pages.
    pub(crate) fn new(pins: Vec<(u64, Pin)>, valid_pages: u64) -> PinnedMap {
        let mut runs: Vec<(u64, PoolOffset, u64)> = Vec::new();
        for (start, pin) in &pins {
            let Some(segs) = pin.segments(0, pin.len()) else { continue };
            let mut at = start * PAGE_SIZE;
            for (p, l) in segs {
                match runs.last_mut() {
                    Some((s, q, n)) if *s + *n == at && q.raw() + *n == p.raw() => *n += l,
                    _ => runs.push((at, p, l)),
                }
                at += l;
            }
        }
        PinnedMap { _pins: pins, pieces: Arc::new(Pieces { runs, valid_pages }) }
    }

    /// No pins, nothing backed.
    pub(crate) fn empty() -> PinnedMap {
        PinnedMap::new(Vec::new(), 0)
    }

    /// Pages backed.
    pub(crate) fn valid_pages(&self) -> u64 {
        self.pieces.valid_pages
    }

    /// The frames behind the backed pages.
    pub(crate) fn frames(&self) -> Vec<Pfn> {
        let mut v = Vec::new();
        for &(_, p, l) in &self.pieces.runs {
            let first = p.raw() / PAGE_SIZE;
            v.extend((first..first + l.div_ceil(PAGE_SIZE)).map(Pfn::new));
        }
        v
    }

    /// Writes the MR's translation table in the region: an entry per backed page, the
    /// others (up to `pages`) absent.
    pub(crate) fn publish(&self, pool: &Pool, slot: &MrSlot, pages: u64, write: bool) {
        let mut page = 0u64;
        for &(s, p, l) in &self.pieces.runs {
            while page < s / PAGE_SIZE {
                slot.set_entry(pool, page, 0);
                page += 1;
            }
            for k in 0..l.div_ceil(PAGE_SIZE) {
                slot.set_entry(pool, page, xlat_entry(p.raw() / PAGE_SIZE + k, write));
                page += 1;
            }
        }
        while page < pages {
            slot.set_entry(pool, page, 0);
            page += 1;
        }
    }

    /// [`Pieces::for_each`].
    pub(crate) fn for_each<E>(
        &self,
        b: u64,
        len: u64,
        f: &mut dyn FnMut(PoolOffset, u64) -> Result<(), E>,
    ) -> Option<Result<(), E>> {
        self.pieces.for_each(b, len, f)
    }
}

/// The pieces of a pinned MR as of a map generation, kept by the thread executing a QP's
/// requests (see the module header for when it may be used).
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot(Option<(u64, Arc<Pieces>)>);

impl Snapshot {
    /// The pieces, if the snapshot is of generation `current`.
    pub(crate) fn current(&self, current: u64) -> Option<&Pieces> {
        match &self.0 {
            Some((g, p)) if *g == current => Some(p),
            _ => None,
        }
    }

    /// Takes a new snapshot of `map` (generation `current`, read under the map's lock).
    pub(crate) fn refresh(&mut self, map: &PinnedMap, current: u64) -> &Pieces {
        &self.0.insert((current, Arc::clone(&map.pieces))).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(runs: &[(u64, u64, u64)], valid_pages: u64) -> Pieces {
        Pieces {
            runs: runs.iter().map(|&(s, p, l)| (s, PoolOffset::new(p), l)).collect(),
            valid_pages,
        }
    }

    fn walk(p: &Pieces, b: u64, len: u64) -> Option<Vec<(u64, u64)>> {
        let mut got = Vec::new();
        let r = p.for_each(b, len, &mut |o: PoolOffset, n| {
            got.push((o.raw(), n));
            Ok::<(), ()>(())
        });
        r.map(|_| got)
    }

    #[test]
    fn pinned_pieces_cover_ranges_across_runs() {
        // Pages 0-1 at frame 10, pages 2-3 at frame 50.
        let p = pieces(
            &[(0, 10 * PAGE_SIZE, 2 * PAGE_SIZE), (2 * PAGE_SIZE, 50 * PAGE_SIZE, 2 * PAGE_SIZE)],
            4,
        );
        assert_eq!(walk(&p, 100, 50), Some(vec![(10 * PAGE_SIZE + 100, 50)]));
        assert_eq!(
            walk(&p, 2 * PAGE_SIZE - 10, 20),
            Some(vec![(12 * PAGE_SIZE - 10, 10), (50 * PAGE_SIZE, 10)])
        );
        assert_eq!(walk(&p, 0, 4 * PAGE_SIZE).map(|v| v.len()), Some(2));
        assert_eq!(walk(&p, 3 * PAGE_SIZE, PAGE_SIZE + 1), None, "beyond the backed pages");
        let prefix = pieces(&[(0, 10 * PAGE_SIZE, 2 * PAGE_SIZE)], 2);
        assert_eq!(walk(&prefix, PAGE_SIZE, PAGE_SIZE + 1), None, "a truncated tail");
        assert_eq!(walk(&Pieces::default(), 0, 1), None);
    }
}
