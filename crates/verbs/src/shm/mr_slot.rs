//! The MR table: one 128-byte slot per MR key index, in the device region.
//!
//! | word | contents | written |
//! |---|---|---|
//! | 0 | key (u32), kind << 32; 0: no MR | last at registration, first (0) at deregistration |
//! | 1 | state (`MrState` as u64) | every state change, before the drain |
//! | 2 | PD number (u32), access flags << 32 | registration |
//! | 3, 4 | first address, length | registration |
//! | 5 | offset of byte 0 in its first page (u32), pages translated << 32 | registration |
//! | 6 | pool offset of the translation table | registration |
//! | 7 | owning device handle | registration |
//! | 8..16 | the translation table itself, for MRs of up to 8 pages | see below |
//!
//! The translation table has one 8-byte entry per page of the MR: `VALID | [WRITE] | pfn`, 0
//! when absent. The daemon writes it in the critical sections where it changes its own
//! (private) translation: registration and restore of a pinned MR fill it, revocation and
//! deregistration clear it; ODP and file MRs fill entries on faults and clear them on
//! invalidations, *before* draining. The daemon never reads an entry back: its own transfers
//! translate through its private maps, so a scribbled table cannot redirect them.
//!
//! A client reads a slot only after naming it in its hazard words (`qp_slot.rs`): the slot
//! cannot then be reused (nor its frames) before the client leaves, unless it stalls past the
//! drain deadline (`mod.rs`).

use std::sync::atomic::Ordering;

use pinwheel_mm::{PAGE_SIZE, Pool, PoolOffset};

use crate::mr::{MrKind, MrState};
use crate::types::Access;

/// Bytes of a slot.
pub(crate) const SLOT: u64 = 128;
const KEY: u64 = 0;
const STATE: u64 = 8;
const PD_ACCESS: u64 = 16;
const ADDR: u64 = 24;
const LEN: u64 = 32;
const GEOM: u64 = 40;
const XLAT: u64 = 48;
const HANDLE: u64 = 56;
/// Offset of the inline translation table.
pub(crate) const INLINE: u64 = 64;
/// MRs of up to this many pages keep their translations in their slot.
pub const INLINE_PAGES: u64 = 8;

/// Translation entry: present.
pub const VALID: u64 = 1 << 63;
/// Translation entry: writable.
pub const WRITE: u64 = 1 << 62;
const PFN_MASK: u64 = WRITE - 1;

fn kind_code(k: MrKind) -> u64 {
    match k {
        MrKind::Pinned => 0,
        MrKind::Odp => 1,
        MrKind::File => 2,
    }
}

/// What the daemon publishes about an MR.
#[derive(Copy, Clone, Debug)]
pub(crate) struct MrFields {
    pub(crate) key: u32,
    pub(crate) kind: MrKind,
    pub(crate) pd: u32,
    pub(crate) access: Access,
    pub(crate) addr: u64,
    pub(crate) len: u64,
    pub(crate) base: u64,
    pub(crate) pages: u64,
    pub(crate) handle: u64,
}

/// One MR's slot and translation table, as the daemon writes them. Offsets come from the
/// daemon's own allocation (in bounds): failed stores cannot happen and are ignored.
#[derive(Copy, Clone, Debug)]
pub(crate) struct MrSlot {
    pub(crate) off: u64,
    pub(crate) xlat: u64,
}

impl MrSlot {
    fn w(&self, pool: &Pool, at: u64, v: u64) {
        let _ = pool.store_u64_with(PoolOffset::new(self.off + at), v, Ordering::SeqCst);
    }

    /// Writes the slot; the key goes last, so a reader that finds the key finds the rest.
    pub(crate) fn publish(&self, pool: &Pool, f: &MrFields) {
        self.w(pool, STATE, MrState::Valid as u64);
        self.w(pool, PD_ACCESS, u64::from(f.pd) | u64::from(f.access.bits()) << 32);
        self.w(pool, ADDR, f.addr);
        self.w(pool, LEN, f.len);
        self.w(pool, GEOM, f.base | f.pages << 32);
        self.w(pool, XLAT, self.xlat);
        self.w(pool, HANDLE, f.handle);
        for p in 0..f.pages {
            self.set_entry(pool, p, 0);
        }
        self.w(pool, KEY, u64::from(f.key) | kind_code(f.kind) << 32);
    }

    /// Clears the key: lookups fail from now on.
    pub(crate) fn unpublish(&self, pool: &Pool) {
        self.w(pool, KEY, 0);
    }

    /// Publishes a state (`SeqCst`: ordered before the drain's look at the hazards).
    pub(crate) fn set_state(&self, pool: &Pool, s: MrState) {
        self.w(pool, STATE, s as u64);
    }

    /// Sets translation entry `page` (`SeqCst`: a cleared entry is ordered before the drain).
    pub(crate) fn set_entry(&self, pool: &Pool, page: u64, entry: u64) {
        let _ = pool.store_u64_with(PoolOffset::new(self.xlat + 8 * page), entry, Ordering::SeqCst);
    }
}

/// A translation entry for `pfn`.
pub(crate) fn entry(pfn: u64, write: bool) -> u64 {
    VALID | if write { WRITE } else { 0 } | (pfn & PFN_MASK)
}

/// Why a range of an MR could not be translated.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Miss {
    /// A page is absent (or read-only for a write): an ODP or file MR faults it; a pinned MR
    /// has no such page (a restore over a truncated file pinned only a prefix).
    Absent,
    /// The range is outside the MR.
    Bounds,
}

/// An MR as a client sees it in the table (read after naming the slot in a hazard word).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MrView {
    /// Key index: the slot.
    pub slot: u32,
    off: u64,
    /// Its key (lkey and rkey).
    pub key: u32,
    /// Kind.
    pub kind: MrKind,
    /// PD number.
    pub pd: u32,
    /// Access flags.
    pub access: Access,
    /// First address.
    pub addr: u64,
    /// Length.
    pub len: u64,
    base: u64,
    pages: u64,
    xlat: u64,
}

impl MrView {
    /// The MR of `key` in the table at `table` of `slots` slots; `None` if no such MR.
    pub(crate) fn read(pool: &Pool, table: u64, slots: u32, key: u32) -> Option<MrView> {
        let slot = key >> 8;
        if slot == 0 || slot >= slots {
            return None;
        }
        let off = table + u64::from(slot) * SLOT;
        let r = |at: u64| pool.load_u64_with(PoolOffset::new(off + at), Ordering::SeqCst).ok();
        let k = r(KEY)?;
        if k as u32 != key || key == 0 {
            return None;
        }
        let kind = match k >> 32 {
            0 => MrKind::Pinned,
            1 => MrKind::Odp,
            2 => MrKind::File,
            _ => return None,
        };
        let pa = r(PD_ACCESS)?;
        let geom = r(GEOM)?;
        let (len, base, pages) = (r(LEN)?, geom & 0xffff_ffff, geom >> 32);
        let xlat = r(XLAT)?;
        // The geometry must hold together: every byte has an entry, the table is in the pool.
        let need = base.checked_add(len)?.div_ceil(PAGE_SIZE);
        let table_end = xlat.checked_add(pages.checked_mul(8)?)?;
        if base >= PAGE_SIZE || pages < need || table_end > pool.size() || xlat % 8 != 0 {
            return None;
        }
        Some(MrView {
            slot,
            off,
            key,
            kind,
            pd: pa as u32,
            access: Access::from_bits_truncate((pa >> 32) as u32),
            addr: r(ADDR)?,
            len,
            base,
            pages,
            xlat,
        })
    }

    /// The state now.
    pub fn state(&self, pool: &Pool) -> MrState {
        match pool.load_u64_with(PoolOffset::new(self.off + STATE), Ordering::SeqCst) {
            Ok(0) => MrState::Valid,
            Ok(1) => MrState::Decoherent,
            Ok(2) => MrState::Revoked,
            _ => MrState::Destroyed,
        }
    }

    /// True while the slot still holds this MR (not deregistered, not reused).
    pub fn current(&self, pool: &Pool) -> bool {
        pool.load_u64_with(PoolOffset::new(self.off + KEY), Ordering::SeqCst)
            .is_ok_and(|k| k as u32 == self.key)
    }

    fn entry(&self, pool: &Pool, page: u64) -> u64 {
        pool.load_u64_with(PoolOffset::new(self.xlat + 8 * page), Ordering::SeqCst).unwrap_or(0)
    }

    /// The physically contiguous pieces `(pool offset, bytes)` behind bytes `[off, off + len)`
    /// of the MR, into `out` (cleared first): one pass over the translation entries, each
    /// read once and checked (present, writable for a write, inside the pool) before the
    /// caller moves a byte.
    pub fn runs(
        &self,
        pool: &Pool,
        off: u64,
        len: u64,
        write: bool,
        out: &mut Vec<(u64, u64)>,
    ) -> Result<(), Miss> {
        out.clear();
        let end = off.checked_add(len).filter(|e| *e <= self.len).ok_or(Miss::Bounds)?;
        let (mut at, e) = (self.base + off, self.base + end);
        let frames = pool.frames();
        while at < e {
            let v = self.entry(pool, at / PAGE_SIZE);
            let pfn = v & PFN_MASK;
            if v & VALID == 0 || (write && v & WRITE == 0) || pfn >= frames {
                return Err(Miss::Absent);
            }
            let n = (PAGE_SIZE - at % PAGE_SIZE).min(e - at);
            let po = pfn * PAGE_SIZE + at % PAGE_SIZE;
            match out.last_mut() {
                Some((p, l)) if *p + *l == po => *l += n,
                _ => out.push((po, n)),
            }
            at += n;
        }
        Ok(())
    }

    /// Runs `f(pool offset, length)` over the physically contiguous pieces behind bytes
    /// `[off, off + len)` of the MR. Every page is checked before `f` sees a byte; a page that
    /// disappears during the walk (an invalidation racing it) stops it with `Absent`.
    pub fn segments<E>(
        &self,
        pool: &Pool,
        off: u64,
        len: u64,
        write: bool,
        f: &mut dyn FnMut(PoolOffset, u64) -> Result<(), E>,
    ) -> Result<Result<(), E>, Miss> {
        let end = off.checked_add(len).filter(|e| *e <= self.len).ok_or(Miss::Bounds)?;
        if len == 0 {
            return Ok(Ok(()));
        }
        let (b, e) = (self.base + off, self.base + end);
        let ok = |v: u64| v & VALID != 0 && (!write || v & WRITE != 0);
        if !(b / PAGE_SIZE..e.div_ceil(PAGE_SIZE)).all(|p| ok(self.entry(pool, p))) {
            return Err(Miss::Absent);
        }
        let frames = pool.frames();
        let (mut run_at, mut run_len) = (0u64, 0u64);
        let mut at = b;
        while at < e {
            let v = self.entry(pool, at / PAGE_SIZE);
            let pfn = v & PFN_MASK;
            if !ok(v) || pfn >= frames {
                return Err(Miss::Absent);
            }
            let n = (PAGE_SIZE - at % PAGE_SIZE).min(e - at);
            let po = pfn * PAGE_SIZE + at % PAGE_SIZE;
            if run_len > 0 && run_at + run_len == po {
                run_len += n;
            } else {
                if run_len > 0
                    && let Err(x) = f(PoolOffset::new(run_at), run_len)
                {
                    return Ok(Err(x));
                }
                (run_at, run_len) = (po, n);
            }
            at += n;
        }
        Ok(f(PoolOffset::new(run_at), run_len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mr_slot_publish_read_and_translate() {
        let pool = Pool::memfd("mrslot", 16 << 20).unwrap();
        let table = 4096u64;
        let slot = MrSlot { off: table + 3 * SLOT, xlat: table + 3 * SLOT + INLINE };
        let f = MrFields {
            key: 3 << 8 | 1,
            kind: MrKind::Odp,
            pd: 7,
            access: Access::all_rw(),
            addr: 0x10_0100,
            len: 3 * PAGE_SIZE,
            base: 0x100,
            pages: 4,
            handle: 5,
        };
        slot.publish(&pool, &f);
        let v = MrView::read(&pool, table, 16, f.key).unwrap();
        assert_eq!((v.pd, v.access, v.addr, v.len, v.kind), (7, f.access, f.addr, f.len, f.kind));
        assert!(MrView::read(&pool, table, 16, 3 << 8 | 2).is_none(), "stale generation");
        assert!(MrView::read(&pool, table, 3, f.key).is_none(), "beyond the table");
        let walk = |write: bool, off: u64, len: u64| {
            let mut got = Vec::new();
            v.segments(&pool, off, len, write, &mut |p: PoolOffset, n| {
                got.push((p.raw(), n));
                Ok::<(), ()>(())
            })
            .map(|_| got)
        };
        assert_eq!(walk(false, 0, 10), Err(Miss::Absent), "nothing faulted");
        // Pages 0-1 at frames 100-101 (contiguous), 2-3 at 50-51.
        for (p, pfn) in [(0, 100), (1, 101), (2, 50), (3, 51)] {
            slot.set_entry(&pool, p, entry(pfn, p != 3));
        }
        let got = walk(false, 0, 3 * PAGE_SIZE).unwrap();
        assert_eq!(
            got,
            [(100 * PAGE_SIZE + 0x100, 2 * PAGE_SIZE - 0x100), (50 * PAGE_SIZE, PAGE_SIZE + 0x100)]
        );
        let mut runs = Vec::new();
        v.runs(&pool, 0, 3 * PAGE_SIZE, false, &mut runs).unwrap();
        assert_eq!(runs, got);
        assert_eq!(v.runs(&pool, 0, 2 * PAGE_SIZE, true, &mut runs), Ok(()));
        assert_eq!(v.runs(&pool, 3 * PAGE_SIZE - 0x100, 0x100, true, &mut runs), Err(Miss::Absent));
        assert_eq!(v.runs(&pool, 1, 3 * PAGE_SIZE, false, &mut runs), Err(Miss::Bounds));
        assert_eq!(walk(true, 3 * PAGE_SIZE - 0x100, 0x100), Err(Miss::Absent), "read-only");
        assert_eq!(walk(false, 1, 3 * PAGE_SIZE), Err(Miss::Bounds));
        assert_eq!(walk(false, u64::MAX, 2), Err(Miss::Bounds));
        slot.set_entry(&pool, 1, entry(u64::MAX, true));
        assert_eq!(walk(false, 0, 3 * PAGE_SIZE), Err(Miss::Absent), "a pfn beyond the pool");
        assert_eq!(v.state(&pool), MrState::Valid);
        slot.set_state(&pool, MrState::Revoked);
        assert_eq!(v.state(&pool), MrState::Revoked);
        assert!(v.current(&pool));
        slot.unpublish(&pool);
        assert!(!v.current(&pool));
        assert!(MrView::read(&pool, table, 16, f.key).is_none());
    }
}
