//! MMU interval notifiers (the kernel's `mmu_interval_notifier`, mm/mmu_notifier.c).
//!
//! A subscriber (an ODP memory region, a device page-table mirror) subscribes to an interval of
//! an address space. Every change of a translation inside it — munmap, mremap, madvise,
//! mprotect downgrade, a file layout change found through the reverse map, migration, CoW
//! break, address-space teardown — calls [`IntervalNotifier::invalidate`] synchronously,
//! *before* the old frame can be reused.
//!
//! The sequence protocol, as upstream:
//! - the hub's sequence starts at 2; it is made odd when an invalidation starts (`seq |= 1`)
//!   and even again when the last concurrent one ends (`seq += 1`);
//! - `invalidate` stores the odd `cur_seq` in the subscription (`set_seq`) under the
//!   subscriber's own lock, stops using translations in the range, and returns once no DMA uses
//!   the old frames;
//! - a fault path does `seq = read_begin()`, faults (without the subscriber lock), takes the
//!   subscriber lock, and installs its translation only if `!read_retry(seq)`.
//!   `read_begin` sleeps while an invalidation that touched this subscription is still running.
//!
//! The interval index is an augmented interval tree (`iset`): an invalidation costs
//! O(log n + k) for k overlapping subscribers, so 10 000 subscribers are not scanned.
//!
//! Rules: an `invalidate` callback must not call back into the address space (map, unmap,
//! fault) nor drop its own [`NotifierHandle`].

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use iset::IntervalMap;
use parking_lot::{Condvar, Mutex};

use crate::error::{MmError, Result};
use crate::limits::MAX_NOTIFIERS;
use crate::types::VirtRange;

/// Why translations are being invalidated.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum InvalidateReason {
    /// munmap.
    Unmap,
    /// mremap moved or shrank the mapping.
    Remap,
    /// madvise(MADV_DONTNEED).
    DontNeed,
    /// mprotect removed a permission.
    Protection,
    /// The file's layout changed (truncate, punch, unlink, reflink).
    FileLayout,
    /// Frames are being migrated (defragmentation).
    Migration,
    /// A shared (reflinked) block is being copied on write.
    CowBreak,
    /// The address space is going away.
    Release,
}

/// One invalidation as a subscriber sees it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Invalidation {
    /// The virtual range whose translations change (may extend beyond the subscription).
    pub range: VirtRange,
    /// Why.
    pub reason: InvalidateReason,
}

/// Implemented by subscribers.
pub trait IntervalNotifier: Send + Sync {
    /// Stop using translations in `inv.range`: call `sub.set_seq(cur_seq)` under your own lock,
    /// drop translations, wait for in-flight DMA to them, then return.
    fn invalidate(&self, sub: &Subscription, inv: &Invalidation, cur_seq: u64);
}

/// A subscription (held by the hub and by the subscriber's [`NotifierHandle`]).
pub struct Subscription {
    id: u64,
    range: VirtRange,
    seq: AtomicU64,
    removed: AtomicBool,
    ops: Weak<dyn IntervalNotifier>,
    hub: Arc<NotifierHub>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("range", &self.range)
            .field("seq", &self.seq.load(Ordering::Relaxed))
            .finish()
    }
}

impl Subscription {
    /// The subscribed range.
    pub fn range(&self) -> VirtRange {
        self.range
    }

    /// `mmu_interval_read_begin`: the sequence to check later with [`Self::read_retry`]. Sleeps
    /// while an invalidation that touched this subscription is still running.
    pub fn read_begin(&self) -> u64 {
        loop {
            let s = self.seq.load(Ordering::Acquire);
            if s != self.hub.seq.load(Ordering::Acquire) {
                return s;
            }
            let mut st = self.hub.state.lock();
            while st.seq == s {
                self.hub.ended.wait(&mut st);
            }
        }
    }

    /// `mmu_interval_read_retry`: true if an invalidation started since `read_begin` returned
    /// `seq`. Call it under the lock that the `invalidate` callback takes.
    pub fn read_retry(&self, seq: u64) -> bool {
        self.seq.load(Ordering::Acquire) != seq
    }

    /// `mmu_interval_set_seq`: called by `invalidate` under the subscriber's lock.
    pub fn set_seq(&self, cur_seq: u64) {
        self.seq.store(cur_seq, Ordering::Release);
    }
}

/// Keeps a subscription alive; dropping it unsubscribes (waiting for a running invalidation to
/// finish, as `mmu_interval_notifier_remove` does).
#[derive(Debug)]
pub struct NotifierHandle {
    sub: Arc<Subscription>,
}

impl NotifierHandle {
    /// The subscription (for `read_begin` / `read_retry`).
    pub fn subscription(&self) -> &Subscription {
        &self.sub
    }
}

impl std::ops::Deref for NotifierHandle {
    type Target = Subscription;
    fn deref(&self) -> &Subscription {
        &self.sub
    }
}

impl Drop for NotifierHandle {
    fn drop(&mut self) {
        self.sub.removed.store(true, Ordering::Release);
        self.sub.hub.remove(&self.sub);
    }
}

#[derive(Default)]
struct HubState {
    seq: u64,
    active: u32,
    tree: IntervalMap<u64, Vec<Arc<Subscription>>>,
    count: usize,
}

/// A set of interval subscriptions with the sequence protocol: one per address space, and the
/// filesystem keeps one per file (ranges are then file byte offsets) for file-range MRs.
pub struct NotifierHub {
    state: Mutex<HubState>,
    /// Mirror of `state.seq` for lock-free `read_begin`.
    seq: AtomicU64,
    ended: Condvar,
    next_id: AtomicU64,
}

impl fmt::Debug for NotifierHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.lock();
        f.debug_struct("NotifierHub")
            .field("seq", &st.seq)
            .field("active", &st.active)
            .field("subscriptions", &st.count)
            .finish()
    }
}

/// Ends an invalidation when dropped.
#[must_use = "the invalidation ends when the guard drops"]
#[derive(Debug)]
pub struct InvalidateGuard<'a> {
    hub: &'a NotifierHub,
}

impl Drop for InvalidateGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.hub.state.lock();
        st.active -= 1;
        if st.active == 0 {
            st.seq += 1;
            debug_assert_eq!(st.seq % 2, 0);
            self.hub.seq.store(st.seq, Ordering::Release);
            self.hub.ended.notify_all();
        }
    }
}

impl NotifierHub {
    /// An empty hub (sequence 2, idle).
    pub fn new() -> Arc<NotifierHub> {
        Arc::new(NotifierHub {
            state: Mutex::new(HubState { seq: 2, ..Default::default() }),
            seq: AtomicU64::new(2),
            ended: Condvar::new(),
            next_id: AtomicU64::new(1),
        })
    }

    /// Subscribes `ops` to `range`; dropping the handle unsubscribes.
    pub fn subscribe(
        self: &Arc<Self>,
        range: VirtRange,
        ops: Weak<dyn IntervalNotifier>,
    ) -> Result<NotifierHandle> {
        if range.is_empty() {
            return Err(MmError::invalid("notifier on an empty range"));
        }
        let mut st = self.state.lock();
        if st.count >= MAX_NOTIFIERS {
            return Err(MmError::invalid(format!("more than {MAX_NOTIFIERS} notifiers")));
        }
        // As upstream: a subscription made while an invalidation runs starts at the current
        // (odd) sequence, so its first read_begin waits for that invalidation to end.
        let seq = if st.active > 0 { st.seq } else { st.seq - 1 };
        let sub = Arc::new(Subscription {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            range,
            seq: AtomicU64::new(seq),
            removed: AtomicBool::new(false),
            ops,
            hub: Arc::clone(self),
        });
        let key = range.start().raw()..range.end().raw();
        match st.tree.get_mut(key.clone()) {
            Some(v) => v.push(Arc::clone(&sub)),
            None => {
                st.tree.insert(key, vec![Arc::clone(&sub)]);
            }
        }
        st.count += 1;
        Ok(NotifierHandle { sub })
    }

    fn remove(&self, sub: &Arc<Subscription>) {
        let mut st = self.state.lock();
        let key = sub.range.start().raw()..sub.range.end().raw();
        let (removed, now_empty) = match st.tree.get_mut(key.clone()) {
            Some(v) => {
                let before = v.len();
                v.retain(|s| !Arc::ptr_eq(s, sub));
                (v.len() < before, v.is_empty())
            }
            None => (false, false),
        };
        if removed {
            st.count -= 1;
        }
        if now_empty {
            st.tree.remove(key);
        }
        // Wait for a running invalidation so the caller may free what `invalidate` touches.
        let s = st.seq;
        if st.active > 0 {
            while st.seq == s {
                self.ended.wait(&mut st);
            }
        }
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.state.lock().count
    }

    /// True if nobody is subscribed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts an invalidation of `range`: calls every overlapping subscriber synchronously and
    /// returns a guard that ends the invalidation (after the caller changed the page table).
    pub fn invalidate(&self, range: VirtRange, reason: InvalidateReason) -> InvalidateGuard<'_> {
        let (cur_seq, subs) = {
            let mut st = self.state.lock();
            if st.active == 0 {
                debug_assert_eq!(st.seq % 2, 0);
                st.seq |= 1;
                self.seq.store(st.seq, Ordering::Release);
            }
            st.active += 1;
            let subs: Vec<Arc<Subscription>> = if st.count == 0 || range.is_empty() {
                Vec::new()
            } else {
                st.tree
                    .values(range.start().raw()..range.end().raw())
                    .flat_map(|v| v.iter().cloned())
                    .collect()
            };
            (st.seq, subs)
        };
        let guard = InvalidateGuard { hub: self };
        let inv = Invalidation { range, reason };
        for sub in subs {
            if sub.removed.load(Ordering::Acquire) {
                continue;
            }
            if let Some(ops) = sub.ops.upgrade() {
                ops.invalidate(&sub, &inv, cur_seq);
            }
        }
        guard
    }

    /// The current sequence (odd while an invalidation runs).
    pub fn current_seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::VirtAddr;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Counter {
        calls: AtomicUsize,
        lock: Mutex<()>,
    }
    impl IntervalNotifier for Counter {
        fn invalidate(&self, sub: &Subscription, _inv: &Invalidation, cur_seq: u64) {
            let _g = self.lock.lock();
            sub.set_seq(cur_seq);
            self.calls.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn r(a: u64, l: u64) -> VirtRange {
        VirtRange::new(VirtAddr::new(a), l).unwrap()
    }

    #[test]
    fn notifier_only_overlapping_subscribers_called() {
        let hub = NotifierHub::new();
        let c = Arc::new(Counter::default());
        let w: Weak<dyn IntervalNotifier> =
            Arc::downgrade(&(c.clone() as Arc<dyn IntervalNotifier>));
        let h1 = hub.subscribe(r(0x1000, 0x1000), w.clone()).unwrap();
        let h2 = hub.subscribe(r(0x1000, 0x1000), w.clone()).unwrap();
        let _h3 = hub.subscribe(r(0x10000, 0x1000), w).unwrap();
        drop(hub.invalidate(r(0x1800, 0x10), InvalidateReason::Unmap));
        assert_eq!(c.calls.load(Ordering::SeqCst), 2);
        drop(h1);
        drop(hub.invalidate(r(0, 0x2000), InvalidateReason::Unmap));
        assert_eq!(c.calls.load(Ordering::SeqCst), 3);
        drop(h2);
        assert_eq!(hub.len(), 1);
    }

    #[test]
    fn notifier_sequence_odd_while_active() {
        let hub = NotifierHub::new();
        let c = Arc::new(Counter::default());
        let w: Weak<dyn IntervalNotifier> =
            Arc::downgrade(&(c.clone() as Arc<dyn IntervalNotifier>));
        let h = hub.subscribe(r(0x1000, 0x1000), w).unwrap();
        let s0 = h.read_begin();
        assert!(!h.read_retry(s0));
        assert_eq!(hub.current_seq(), 2);
        let g = hub.invalidate(r(0x1000, 1), InvalidateReason::Unmap);
        assert_eq!(hub.current_seq() % 2, 1, "odd while active");
        assert!(h.read_retry(s0), "invalidation since read_begin");
        // read_begin must wait for the invalidation to end.
        let h = Arc::new(h);
        let h2 = Arc::clone(&h);
        let t = std::thread::spawn(move || h2.read_begin());
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!t.is_finished(), "read_begin returned during an invalidation");
        drop(g);
        let s1 = t.join().unwrap();
        assert_eq!(hub.current_seq(), 4);
        assert!(!h.read_retry(s1));
    }

    #[test]
    fn notifier_many_subscribers_queries_are_selective() {
        let hub = NotifierHub::new();
        let c = Arc::new(Counter::default());
        let w: Weak<dyn IntervalNotifier> =
            Arc::downgrade(&(c.clone() as Arc<dyn IntervalNotifier>));
        let hs: Vec<_> =
            (0..10_000u64).map(|i| hub.subscribe(r(i << 16, 0x1000), w.clone()).unwrap()).collect();
        drop(hub.invalidate(r(5000 << 16, 1), InvalidateReason::FileLayout));
        assert_eq!(c.calls.load(Ordering::SeqCst), 1);
        drop(hs);
        assert_eq!(hub.len(), 0);
    }
}
