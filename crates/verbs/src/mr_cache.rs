//! The MRs a QP's work requests used last, kept between requests by the thread executing
//! them (the QP lends it the cache while `executing`, so one thread at a time uses it): a
//! request that reuses an MR finds it without the device's key table (a read lock and an
//! `Arc` clone) and translates through a [`Snapshot`] of its pinned map (no lock, no clone).
//!
//! The cache is weak: it never keeps an MR alive, pinned or registered. An entry is only a
//! shortcut to what a lookup by key would find: a key names one MR until it is deregistered
//! (the slot's next MR gets another generation), and an entry found deregistered is dropped
//! before the key is looked up again.
//! Every check of the slow path (PD, access, bounds, state) still runs on every request.

use std::sync::{Arc, Weak};

use crate::device::DeviceInner;
use crate::limits::MR_CACHE_ENTRIES;
use crate::mr::{MrInner, MrState};
use crate::pinned::Snapshot;

struct Entry {
    key: u32,
    mr: Weak<MrInner>,
    snap: Snapshot,
}

/// See the module header.
#[derive(Default)]
pub(crate) struct MrCache {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for MrCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MrCache").field("entries", &self.entries.len()).finish()
    }
}

impl MrCache {
    /// The MR named `key`, as the device's table would find it; the entry of `keep` is never
    /// the one evicted to make room.
    pub(crate) fn lookup(
        &mut self,
        dev: &DeviceInner,
        key: u32,
        keep: u32,
    ) -> Option<Arc<MrInner>> {
        if let Some(i) = self.entries.iter().position(|e| e.key == key) {
            match self.entries[i].mr.upgrade() {
                Some(mr) if mr.state() != MrState::Destroyed => return Some(mr),
                _ => {
                    self.entries.remove(i);
                }
            }
        }
        let mr = dev.mrs.get(key)?;
        // Entries of MRs gone for good make room first.
        self.entries.retain(|e| e.mr.strong_count() > 0);
        if self.entries.len() >= MR_CACHE_ENTRIES
            && let Some(old) = self.entries.iter().position(|e| e.key != keep)
        {
            self.entries.remove(old);
        }
        self.entries.push(Entry { key, mr: Arc::downgrade(&mr), snap: Snapshot::default() });
        Some(mr)
    }

    /// The snapshots of the entries of two different keys (both looked up).
    pub(crate) fn snaps(&mut self, a: u32, b: u32) -> Option<(&mut Snapshot, &mut Snapshot)> {
        let i = self.entries.iter().position(|e| e.key == a)?;
        let j = self.entries.iter().position(|e| e.key == b)?;
        if i == j {
            return None;
        }
        let (lo, hi) = self.entries.split_at_mut(i.max(j));
        let (x, y) = (&mut lo[i.min(j)].snap, &mut hi[0].snap);
        Some(if i < j { (x, y) } else { (y, x) })
    }
}
