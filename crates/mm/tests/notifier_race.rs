//! The notifier sequence protocol against a concurrent fault.
//!
//! `Mirror` is a device page table kept coherent the way ODP drivers do: `read_begin`,
//! `range_fault` without the mirror lock, take the lock, `read_retry`, install. Each test runs
//! twice: with the `read_retry` check (no stale translation may ever be installed) and without
//! it (a stale translation must be observed — proof that the test can catch the race, so the
//! first run fails if the protection is removed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use common::memory;
use parking_lot::Mutex;
use pinwheel_mm::*;

type Hook = Box<dyn FnMut() + Send>;

struct Mirror {
    aspace: Arc<AddressSpace>,
    handle: OnceLock<NotifierHandle>,
    table: Mutex<HashMap<u64, Pfn>>,
    use_retry: bool,
    hook: Mutex<Option<Hook>>,
    stale: AtomicU64,
}

impl IntervalNotifier for Mirror {
    fn invalidate(&self, sub: &Subscription, inv: &Invalidation, cur_seq: u64) {
        let mut t = self.table.lock();
        sub.set_seq(cur_seq);
        let (lo, hi) = (inv.range.start().vpn(), inv.range.end().raw().div_ceil(PAGE_SIZE));
        t.retain(|vpn, _| *vpn < lo || *vpn >= hi);
    }
}

impl Mirror {
    fn new(aspace: &Arc<AddressSpace>, at: VirtAddr, len: u64, use_retry: bool) -> Arc<Mirror> {
        let m = Arc::new(Mirror {
            aspace: Arc::clone(aspace),
            handle: OnceLock::new(),
            table: Mutex::new(HashMap::new()),
            use_retry,
            hook: Mutex::new(None),
            stale: AtomicU64::new(0),
        });
        let weak: std::sync::Weak<dyn IntervalNotifier> =
            Arc::downgrade(&(m.clone() as Arc<dyn IntervalNotifier>));
        m.handle.set(aspace.subscribe(at, len, weak).unwrap()).unwrap();
        m
    }

    /// Faults `addr` into the mirror; afterwards, under the mirror lock, compares the installed
    /// translation with the address space's. A mismatch is a stale translation.
    fn fault(&self, addr: VirtAddr) {
        let h = self.handle.get().unwrap();
        loop {
            let seq = h.read_begin();
            let mut pfns = Vec::new();
            if self.aspace.range_fault(addr, PAGE_SIZE, true, &mut pfns).is_err() {
                return;
            }
            if let Some(hook) = self.hook.lock().as_mut() {
                hook();
            }
            let mut t = self.table.lock();
            if self.use_retry && h.read_retry(seq) {
                continue;
            }
            t.insert(addr.vpn(), pfns[0]);
            // Invalidations call us (and block on `table`) before they change the page
            // table, so while we hold the lock the two must agree.
            if self.aspace.translate(addr) != Some(pfns[0]) {
                self.stale.fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
    }
}

fn deterministic(use_retry: bool) -> u64 {
    let mem = memory(32);
    let a = AddressSpace::new(&mem);
    let p = a.mmap_anonymous(4 * PAGE_SIZE).unwrap();
    let m = Mirror::new(&a, p, 4 * PAGE_SIZE, use_retry);
    // Between the fault and the install, the page is dropped (and its frame freed).
    let a2 = Arc::clone(&a);
    let mut fired = false;
    *m.hook.lock() = Some(Box::new(move || {
        if !fired {
            fired = true;
            a2.madvise_dontneed(p, PAGE_SIZE).unwrap();
        }
    }));
    m.fault(p);
    m.stale.load(Ordering::SeqCst)
}

#[test]
fn notifier_retry_prevents_stale_translation() {
    assert_eq!(deterministic(true), 0);
}

#[test]
fn notifier_without_retry_installs_stale_translation() {
    assert_eq!(
        deterministic(false),
        1,
        "the race is real: without read_retry the mirror maps a freed frame"
    );
}

fn stress(use_retry: bool, iterations: u64) -> u64 {
    let mem = memory(32);
    let a = AddressSpace::new(&mem);
    let pages = 8;
    let p = a.mmap_anonymous(pages * PAGE_SIZE).unwrap();
    let m = Mirror::new(&a, p, pages * PAGE_SIZE, use_retry);
    let stop = Arc::new(AtomicBool::new(false));
    let zapper = {
        let (a, stop) = (Arc::clone(&a), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let at = VirtAddr::new(p.raw() + (i % pages) * PAGE_SIZE);
                a.madvise_dontneed(at, PAGE_SIZE).unwrap();
                i += 1;
            }
        })
    };
    // Widen the window between fault and install so the race is hit on 2 cores too.
    *m.hook.lock() = Some(Box::new(std::thread::yield_now));
    for i in 0..iterations {
        m.fault(VirtAddr::new(p.raw() + (i * 7 % pages) * PAGE_SIZE));
        if !use_retry && m.stale.load(Ordering::SeqCst) > 0 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    zapper.join().unwrap();
    let bad = mem.check_invariants();
    assert!(bad.is_empty(), "{bad:?}");
    m.stale.load(Ordering::SeqCst)
}

#[test]
fn notifier_stress_with_retry_never_stale() {
    assert_eq!(stress(true, 20_000), 0);
}

#[test]
fn notifier_stress_without_retry_goes_stale() {
    assert!(stress(false, 200_000) > 0, "the stress test must be able to see the race");
}
