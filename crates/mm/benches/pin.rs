//! Side-by-side benchmark of the memory core (issue 2). Run with
//! `cargo bench -p pinwheel-mm --bench pin` (add `-- --quick` for a smoke run).
//!
//! Measured in one run, medians of several repetitions:
//! - pin + unpin of 1 GiB (4 KiB frames, huge frames), with and without first touch,
//!   against `mlock` + touch of 1 GiB of real anonymous memory (and `mlock` of memory
//!   already touched);
//! - one invalidation with 10 000 notifier subscribers vs with one;
//! - fault-in cost per page (CPU write fault; `range_fault`).
//!
//! Ratios are what matter; absolute times vary with the machine.
//!
//! First, criterion micro-benchmarks of the hot paths: `pin/{1,512}_pages` (pin + unpin of a
//! resident range) and `invalidate/{1,10000}_subscribers` (the notifier lookup of one
//! `madvise(DONTNEED)` of a page). A filter argument (`cargo bench -p pinwheel-mm --bench pin
//! -- pin/`) runs only the micro-benchmarks.

#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use criterion::{Criterion, black_box};
use pinwheel_mm::*;

const GIB: u64 = 1 << 30;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Real anonymous memory for the kernel baseline. The only unsafe code here: raw mmap/mlock.
mod baseline {
    use std::time::{Duration, Instant};

    pub struct Anon {
        ptr: *mut u8,
        len: usize,
    }

    impl Anon {
        pub fn new(len: usize) -> Anon {
            // SAFETY: a fresh private anonymous mapping at a kernel-chosen address.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED, "mmap");
            Anon { ptr: p.cast(), len }
        }
        pub fn touch(&self) {
            for off in (0..self.len).step_by(4096) {
                // SAFETY: inside our private mapping.
                unsafe { self.ptr.add(off).write_volatile(1) };
            }
        }
        /// mlock (which faults every page in) followed by a touch of every page, then munlock.
        pub fn mlock_touch(&self) -> Duration {
            let t = Instant::now();
            // SAFETY: the range is our mapping.
            assert_eq!(
                unsafe { libc::mlock(self.ptr.cast(), self.len) },
                0,
                "mlock (needs CAP_IPC_LOCK or a raised RLIMIT_MEMLOCK)"
            );
            self.touch();
            // SAFETY: as above.
            unsafe { libc::munlock(self.ptr.cast(), self.len) };
            t.elapsed()
        }
    }

    impl Drop for Anon {
        fn drop(&mut self) {
            // SAFETY: exactly our mapping.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

fn pin_run(mem: &Arc<Memory>, huge: bool, prefault: bool, touch: u8) -> (Duration, Duration) {
    let a = AddressSpace::new(mem);
    let mut req = MmapRequest::anonymous(GIB);
    if huge {
        req = req.flags(MapFlags::HUGE);
    }
    if prefault {
        req = req.flags(MapFlags::POPULATE);
    }
    let p = a.mmap(req).expect("mmap");
    let t = Instant::now();
    let pin = pin_user_pages(&a, p, GIB, PinFlags::WRITE | PinFlags::LONGTERM, None).expect("pin");
    if touch >= 1 {
        // The first access of each page makes the kernel populate the pool file there: the
        // cost mlock+touch pays up front.
        for (_, run) in pin.runs() {
            for pfn in run.iter() {
                mem.pool().write(pfn.offset(), &[1]).expect("touch");
            }
        }
    }
    let pinned = t.elapsed();
    let t = Instant::now();
    drop(pin);
    let unpinned = t.elapsed();
    drop(a);
    (pinned, unpinned)
}

struct Noop {
    calls: AtomicU64,
}
impl IntervalNotifier for Noop {
    fn invalidate(&self, sub: &Subscription, _inv: &Invalidation, cur_seq: u64) {
        sub.set_seq(cur_seq);
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

fn invalidation_cost(mem: &Arc<Memory>, subscribers: u64, iters: u64) -> Duration {
    let a = AddressSpace::new(mem);
    let pages = subscribers.max(1);
    let p = a.mmap_anonymous(pages * PAGE_SIZE).expect("mmap");
    let ops = Arc::new(Noop { calls: AtomicU64::new(0) });
    let weak: Weak<dyn IntervalNotifier> =
        Arc::downgrade(&(ops.clone() as Arc<dyn IntervalNotifier>));
    let handles: Vec<_> = (0..subscribers)
        .map(|i| {
            a.subscribe(VirtAddr::new(p.raw() + i * PAGE_SIZE), PAGE_SIZE, weak.clone())
                .expect("subscribe")
        })
        .collect();
    let t = Instant::now();
    for i in 0..iters {
        a.madvise_dontneed(VirtAddr::new(p.raw() + (i % pages) * PAGE_SIZE), PAGE_SIZE)
            .expect("madvise");
    }
    let d = t.elapsed() / iters as u32;
    assert_eq!(ops.calls.load(Ordering::Relaxed), if subscribers > 0 { iters } else { 0 });
    drop(handles);
    d
}

/// Criterion micro-benchmarks (see the header).
fn micro(c: &mut Criterion) {
    let mem = Memory::new(Pool::memfd("micro", 256 << 20).expect("pool"), RealClock::new());
    let a = AddressSpace::new(&mem);
    let p = a.mmap(MmapRequest::anonymous(2 << 20).flags(MapFlags::POPULATE)).expect("mmap");
    let mut g = c.benchmark_group("pin");
    for pages in [1u64, 512] {
        g.bench_function(format!("{pages}_pages"), |x| {
            x.iter(|| {
                let flags = PinFlags::WRITE | PinFlags::LONGTERM;
                let pin = pin_user_pages(&a, p, pages * PAGE_SIZE, flags, None).expect("pin");
                drop(black_box(pin));
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("invalidate");
    for subscribers in [1u64, 10_000] {
        let a = AddressSpace::new(&mem);
        let q = a.mmap_anonymous(subscribers * PAGE_SIZE).expect("mmap");
        let ops = Arc::new(Noop { calls: AtomicU64::new(0) });
        let weak: Weak<dyn IntervalNotifier> =
            Arc::downgrade(&(ops.clone() as Arc<dyn IntervalNotifier>));
        let _subs: Vec<_> = (0..subscribers)
            .map(|i| {
                a.subscribe(VirtAddr::new(q.raw() + i * PAGE_SIZE), PAGE_SIZE, weak.clone())
                    .expect("subscribe")
            })
            .collect();
        let mut i = 0u64;
        g.bench_function(format!("{subscribers}_subscribers"), |x| {
            x.iter(|| {
                i = (i + 1) % subscribers;
                a.madvise_dontneed(VirtAddr::new(q.raw() + i * PAGE_SIZE), PAGE_SIZE)
                    .expect("madvise")
            })
        });
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    micro(&mut c);
    c.final_summary();
    if std::env::args().skip(1).any(|a| !a.starts_with('-')) {
        return; // a filter: the micro-benchmarks only
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 1 } else { 5 };
    let mem = Memory::new(Pool::memfd("bench", 4 * GIB).expect("pool"), RealClock::new());
    println!("pinwheel-mm benchmark: pin + unpin of 1 GiB vs mlock + touch (median of {reps})");

    let mut base_cold = Vec::new();
    let mut base_warm = Vec::new();
    for _ in 0..reps {
        let a = baseline::Anon::new(GIB as usize);
        base_cold.push(a.mlock_touch());
        base_warm.push(a.mlock_touch());
    }
    let (cold, warm) = (median(base_cold), median(base_warm));
    println!("{:<44} {:>10.2} ms", "mlock+touch 1 GiB, first touch (baseline)", ms(cold));
    println!("{:<44} {:>10.2} ms", "mlock+touch 1 GiB, already touched", ms(warm));

    // Three situations:
    // - first use: a fresh pool; every pinned page is then touched once, so the host kernel
    //   populates the pool file (the cost mlock+touch pays for fresh anonymous memory);
    // - warm pool: frames recycled from earlier use are zeroed (memset) on fault-in;
    // - resident: the range was faulted in before the pin (registering a buffer in use),
    //   compared with mlock of memory already touched.
    for (label, huge, prefault, touch, fresh) in [
        ("pin 4 KiB, first use of pool + touch", false, false, 1, true),
        ("pin 4 KiB, fault-in on a warm pool", false, false, 0, false),
        ("pin 4 KiB, resident", false, true, 0, false),
        ("pin huge, first use of pool + touch", true, false, 1, true),
        ("pin huge, fault-in on a warm pool", true, false, 0, false),
        ("pin huge, resident", true, true, 0, false),
    ] {
        let mut pins = Vec::new();
        let mut unpins = Vec::new();
        for _ in 0..reps {
            let m = if fresh {
                Memory::new(Pool::memfd("fresh", 2 * GIB).expect("pool"), RealClock::new())
            } else {
                Arc::clone(&mem)
            };
            if !fresh {
                // Warm the pool: use and free 1 GiB so later faults recycle frames.
                let _ = pin_run(&m, huge, false, 1);
            }
            let (p, u) = pin_run(&m, huge, prefault, touch);
            pins.push(p);
            unpins.push(u);
        }
        let (p, u) = (median(pins), median(unpins));
        let total = p + u;
        let base = if prefault { warm } else { cold };
        println!(
            "{label:<40} pin {:>8.2} ms  unpin {:>6.2} ms  = {:>7.4}x mlock+touch ({})",
            ms(p),
            ms(u),
            total.as_secs_f64() / base.as_secs_f64(),
            if prefault { "touched" } else { "first touch" }
        );
    }

    let iters = if quick { 2_000 } else { 20_000 };
    let one = invalidation_cost(&mem, 1, iters);
    let many = invalidation_cost(&mem, 10_000, iters);
    let none = invalidation_cost(&mem, 0, iters);
    println!(
        "invalidation (madvise of one page), 0 subscribers      {:>8.2} us",
        none.as_secs_f64() * 1e6
    );
    println!(
        "invalidation (madvise of one page), 1 subscriber       {:>8.2} us",
        one.as_secs_f64() * 1e6
    );
    println!(
        "invalidation (madvise of one page), 10 000 subscribers {:>8.2} us  ({:.2}x of 1)",
        many.as_secs_f64() * 1e6,
        many.as_secs_f64() / one.as_secs_f64()
    );

    let a = AddressSpace::new(&mem);
    let n = 16_384u64;
    let p = a.mmap_anonymous(n * PAGE_SIZE).expect("mmap");
    let t = Instant::now();
    for i in 0..n {
        a.write(VirtAddr::new(p.raw() + i * PAGE_SIZE), &[1]).expect("write");
    }
    let per_write_fault = t.elapsed() / n as u32;
    let q = a.mmap_anonymous(n * PAGE_SIZE).expect("mmap");
    let mut pfns = Vec::new();
    let t = Instant::now();
    for i in 0..n {
        pfns.clear();
        a.range_fault(VirtAddr::new(q.raw() + i * PAGE_SIZE), PAGE_SIZE, true, &mut pfns)
            .expect("fault");
    }
    let per_range_fault = t.elapsed() / n as u32;
    println!(
        "fault-in per page: CPU write fault {:.2} us, range_fault {:.2} us",
        per_write_fault.as_secs_f64() * 1e6,
        per_range_fault.as_secs_f64() * 1e6
    );
}
