//! The page table of an address space: virtual page → frame, a 4-level radix tree of 512-entry
//! tables (9 bits per level, 48-bit virtual addresses, as on x86-64). A leaf at level 1 maps a
//! huge frame (2 MiB), a leaf at level 0 a 4 KiB frame. Lookups are O(levels); range walks
//! visit only populated tables.
//!
//! The table stores translations only; reference counting of the frames it names is done by
//! the address space that owns it, under its page-table lock.

use crate::types::Pfn;

const BITS: u32 = 9;
const FANOUT: usize = 1 << BITS;
const LEVELS: u32 = 4;

/// Number of virtual pages covered by one entry at `level`.
const fn span(level: u32) -> u64 {
    1 << (BITS * level)
}

bitflags::bitflags! {
    /// Page-table entry bits.
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
    pub struct PteFlags: u8 {
        /// Writes allowed through this entry (else a write faults: dirty tracking).
        const WRITE = 1 << 0;
        /// Written through this entry.
        const DIRTY = 1 << 1;
    }
}

/// A translation: the frame (the head frame for a huge leaf) and its bits.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Pte {
    /// The frame mapped.
    pub pfn: Pfn,
    /// Bits.
    pub flags: PteFlags,
}

/// A translation found by a lookup.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The leaf entry.
    pub pte: Pte,
    /// True if the leaf maps a huge frame.
    pub huge: bool,
    /// First virtual page the leaf maps.
    pub base_vpn: u64,
}

impl Mapping {
    /// The 4 KiB frame backing `vpn` (inside this mapping).
    pub fn pfn_for(&self, vpn: u64) -> Pfn {
        Pfn::new(self.pte.pfn.raw() + (vpn - self.base_vpn))
    }
}

#[derive(Debug)]
enum Slot {
    Empty,
    Leaf(Pte),
    Table(Box<Table>),
}

#[derive(Debug)]
struct Table {
    slots: Vec<Slot>,
    used: usize,
}

impl Table {
    fn new() -> Box<Table> {
        let mut slots = Vec::with_capacity(FANOUT);
        slots.resize_with(FANOUT, || Slot::Empty);
        Box::new(Table { slots, used: 0 })
    }
}

/// The page table.
#[derive(Debug)]
pub struct PageTable {
    root: Box<Table>,
    leaves_small: u64,
    leaves_huge: u64,
}

impl Default for PageTable {
    fn default() -> Self {
        PageTable::new()
    }
}

fn index(vpn: u64, level: u32) -> usize {
    ((vpn >> (BITS * level)) & (FANOUT as u64 - 1)) as usize
}

/// Largest virtual page number the table can hold, plus one.
pub const VPN_LIMIT: u64 = 1 << (BITS * LEVELS);

impl PageTable {
    /// An empty table.
    pub fn new() -> PageTable {
        PageTable { root: Table::new(), leaves_small: 0, leaves_huge: 0 }
    }

    /// Number of 4 KiB leaves and of huge leaves.
    pub fn leaf_counts(&self) -> (u64, u64) {
        (self.leaves_small, self.leaves_huge)
    }

    /// The translation of `vpn`, if any.
    pub fn lookup(&self, vpn: u64) -> Option<Mapping> {
        debug_assert!(vpn < VPN_LIMIT);
        let mut t = &self.root;
        for level in (0..LEVELS).rev() {
            match &t.slots[index(vpn, level)] {
                Slot::Empty => return None,
                Slot::Leaf(pte) => {
                    let base_vpn = vpn & !(span(level) - 1);
                    return Some(Mapping { pte: *pte, huge: level == 1, base_vpn });
                }
                Slot::Table(next) => t = next,
            }
        }
        None
    }

    fn slot_mut(&mut self, vpn: u64, leaf_level: u32) -> &mut Slot {
        let mut t = &mut self.root;
        for level in (leaf_level + 1..LEVELS).rev() {
            let i = index(vpn, level);
            if matches!(t.slots[i], Slot::Empty) {
                t.slots[i] = Slot::Table(Table::new());
                t.used += 1;
            }
            t = match &mut t.slots[i] {
                Slot::Table(next) => next,
                Slot::Leaf(_) => panic!("vpn {vpn:#x}: a huge leaf covers this 4 KiB slot"),
                Slot::Empty => unreachable!("just filled"),
            };
        }
        &mut t.slots[index(vpn, leaf_level)]
    }

    /// Installs a 4 KiB leaf; returns false (changing nothing) if `vpn` is already mapped.
    pub fn insert(&mut self, vpn: u64, pte: Pte) -> bool {
        if self.lookup(vpn).is_some() {
            return false;
        }
        let slot = self.slot_mut(vpn, 0);
        *slot = Slot::Leaf(pte);
        self.bump_parent_used(vpn, 0);
        self.leaves_small += 1;
        true
    }

    /// Installs a huge leaf at 512-aligned `vpn`; returns false (changing nothing) if any page
    /// of the 2 MiB range is already mapped.
    pub fn insert_huge(&mut self, vpn: u64, pte: Pte) -> bool {
        assert_eq!(vpn % span(1), 0, "huge leaf at unaligned vpn {vpn:#x}");
        let mut occupied = false;
        self.walk(vpn, vpn + span(1), &mut |_, _| occupied = true);
        if occupied {
            return false;
        }
        let slot = self.slot_mut(vpn, 1);
        if !matches!(slot, Slot::Empty) {
            // An empty level-0 table left behind: replace it.
            *slot = Slot::Empty;
            self.drop_parent_used(vpn, 1);
        }
        let slot = self.slot_mut(vpn, 1);
        *slot = Slot::Leaf(pte);
        self.bump_parent_used(vpn, 1);
        self.leaves_huge += 1;
        true
    }

    fn parent_of(&mut self, vpn: u64, leaf_level: u32) -> &mut Table {
        let mut t = &mut self.root;
        for level in (leaf_level + 1..LEVELS).rev() {
            t = match &mut t.slots[index(vpn, level)] {
                Slot::Table(next) => next,
                _ => unreachable!("parent tables exist for an installed leaf"),
            };
        }
        t
    }

    fn bump_parent_used(&mut self, vpn: u64, leaf_level: u32) {
        self.parent_of(vpn, leaf_level).used += 1;
    }

    fn drop_parent_used(&mut self, vpn: u64, leaf_level: u32) {
        self.parent_of(vpn, leaf_level).used -= 1;
    }

    /// Visits every leaf overlapping `[lo, hi)`: `f(vpn_of_leaf_start, mapping)`.
    pub fn walk(&self, lo: u64, hi: u64, f: &mut dyn FnMut(u64, Mapping)) {
        walk_table(&self.root, LEVELS - 1, 0, lo, hi, f);
    }

    /// Visits leaves overlapping `[lo, hi)` mutably (mprotect clears `WRITE` here).
    pub fn walk_mut(&mut self, lo: u64, hi: u64, f: &mut dyn FnMut(u64, &mut Pte, bool)) {
        walk_table_mut(&mut self.root, LEVELS - 1, 0, lo, hi, f);
    }

    /// Removes every leaf inside `[lo, hi)`, calling `f(leaf_start_vpn, pte, huge)` for each.
    /// A huge leaf must lie wholly inside the range (callers align huge operations).
    pub fn remove_range(&mut self, lo: u64, hi: u64, f: &mut dyn FnMut(u64, Pte, bool)) {
        let mut removed = (0u64, 0u64);
        remove_in(&mut self.root, LEVELS - 1, 0, lo, hi, f, &mut removed);
        self.leaves_small -= removed.0;
        self.leaves_huge -= removed.1;
    }
}

fn child_range(base: u64, level: u32, i: usize) -> (u64, u64) {
    let s = base + i as u64 * span(level);
    (s, s + span(level))
}

fn idx_range(base: u64, level: u32, lo: u64, hi: u64) -> std::ops::Range<usize> {
    let first = (lo.saturating_sub(base) / span(level)) as usize;
    let last = (hi.saturating_sub(base).div_ceil(span(level)) as usize).min(FANOUT);
    first.min(FANOUT)..last
}

fn walk_table(t: &Table, level: u32, base: u64, lo: u64, hi: u64, f: &mut dyn FnMut(u64, Mapping)) {
    for i in idx_range(base, level, lo, hi) {
        let (s, _) = child_range(base, level, i);
        match &t.slots[i] {
            Slot::Empty => {}
            Slot::Leaf(pte) => f(s, Mapping { pte: *pte, huge: level == 1, base_vpn: s }),
            Slot::Table(c) => walk_table(c, level - 1, s, lo, hi, f),
        }
    }
}

fn walk_table_mut(
    t: &mut Table,
    level: u32,
    base: u64,
    lo: u64,
    hi: u64,
    f: &mut dyn FnMut(u64, &mut Pte, bool),
) {
    for i in idx_range(base, level, lo, hi) {
        let (s, _) = child_range(base, level, i);
        match &mut t.slots[i] {
            Slot::Empty => {}
            Slot::Leaf(pte) => f(s, pte, level == 1),
            Slot::Table(c) => walk_table_mut(c, level - 1, s, lo, hi, f),
        }
    }
}

fn remove_in(
    t: &mut Table,
    level: u32,
    base: u64,
    lo: u64,
    hi: u64,
    f: &mut dyn FnMut(u64, Pte, bool),
    removed: &mut (u64, u64),
) {
    for i in idx_range(base, level, lo, hi) {
        let (s, e) = child_range(base, level, i);
        let emptied = match &mut t.slots[i] {
            Slot::Empty => false,
            Slot::Leaf(pte) => {
                assert!(
                    s >= lo && e <= hi,
                    "removing part of a huge leaf at vpn {s:#x} (range {lo:#x}..{hi:#x})"
                );
                f(s, *pte, level == 1);
                if level == 1 {
                    removed.1 += 1;
                } else {
                    removed.0 += 1;
                }
                true
            }
            Slot::Table(c) => {
                remove_in(c, level - 1, s, lo, hi, f, removed);
                c.used == 0
            }
        };
        if emptied {
            t.slots[i] = Slot::Empty;
            t.used -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pte(p: u64) -> Pte {
        Pte { pfn: Pfn::new(p), flags: PteFlags::WRITE }
    }

    #[test]
    fn pagetable_insert_lookup_remove() {
        let mut pt = PageTable::new();
        assert!(pt.insert(5, pte(50)));
        assert!(!pt.insert(5, pte(51)));
        assert!(pt.insert(1 << 30, pte(7)));
        assert_eq!(pt.lookup(5).unwrap().pte.pfn, Pfn::new(50));
        assert_eq!(pt.lookup(6), None);
        let mut seen = Vec::new();
        pt.remove_range(0, u64::MAX >> 20, &mut |v, p, h| seen.push((v, p.pfn.raw(), h)));
        assert_eq!(seen, vec![(5, 50, false), (1 << 30, 7, false)]);
        assert_eq!(pt.leaf_counts(), (0, 0));
        assert_eq!(pt.root.used, 0, "empty tables are pruned");
    }

    #[test]
    fn pagetable_huge_leaf() {
        let mut pt = PageTable::new();
        assert!(pt.insert(1024 + 3, pte(9)));
        assert!(!pt.insert_huge(1024, pte(4096)), "a 4 KiB leaf is in the way");
        let mut n = 0;
        pt.remove_range(1024, 1536, &mut |_, _, _| n += 1);
        assert_eq!(n, 1);
        assert!(pt.insert_huge(1024, pte(4096)));
        let m = pt.lookup(1024 + 17).unwrap();
        assert!(m.huge);
        assert_eq!(m.pfn_for(1024 + 17), Pfn::new(4096 + 17));
        assert_eq!(pt.leaf_counts(), (0, 1));
    }

    #[test]
    #[should_panic(expected = "part of a huge leaf")]
    fn pagetable_partial_huge_removal_is_a_bug() {
        let mut pt = PageTable::new();
        assert!(pt.insert_huge(512, pte(512)));
        pt.remove_range(600, 700, &mut |_, _, _| {});
    }

    #[test]
    fn pagetable_walk_mut_clears_bits() {
        let mut pt = PageTable::new();
        for v in 0..10 {
            pt.insert(v, pte(v));
        }
        pt.walk_mut(3, 6, &mut |_, p, _| p.flags.remove(PteFlags::WRITE));
        let ro: Vec<u64> = (0..10)
            .filter(|v| !pt.lookup(*v).unwrap().pte.flags.contains(PteFlags::WRITE))
            .collect();
        assert_eq!(ro, vec![3, 4, 5]);
    }
}
