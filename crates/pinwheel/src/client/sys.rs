//! The one place in `pinwheel` with `unsafe`: the client's own mappings of pool frames (file
//! mappings whose loads and stores go straight to the node's memory) and the SIGSEGV handler
//! that faults them in.
//!
//! Rules of this module:
//! - mapped memory is reached only through raw pointers, with `copy_nonoverlapping` into or
//!   out of private buffers: the daemon or a DMA may change it at any time, so it is never a
//!   Rust reference;
//! - the signal handler does only async-signal-safe things: atomics on static slots, `write`
//!   to an eventfd, `futex`, `sigaction`, `raise`. It never allocates or takes a lock;
//! - a region belongs to the process that registered it (`MADV_DONTFORK`: a forked child does
//!   not inherit the mapping, and a fault there in the child is not ours).

#![allow(unsafe_code)]

use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Regions (file mappings) the handler serves.
pub(crate) const MAX_REGIONS: usize = 256;
/// Faults waiting at once (one per faulting thread).
const MAX_FAULTS: usize = 64;
const PAGE: usize = 4096;

pub(crate) struct Region {
    start: AtomicUsize,
    end: AtomicUsize,
    pid: AtomicU32,
}

#[allow(clippy::declare_interior_mutable_const)]
const REGION_INIT: Region =
    Region { start: AtomicUsize::new(0), end: AtomicUsize::new(0), pid: AtomicU32::new(0) };
pub(crate) static REGIONS: [Region; MAX_REGIONS] = [REGION_INIT; MAX_REGIONS];

/// Slot states.
pub(crate) const FREE: u32 = 0;
const CLAIMED: u32 = 1;
pub(crate) const POSTED: u32 = 2;
/// Resolved: the page is mapped, retry the access.
pub(crate) const DONE_OK: u32 = 3;
/// Beyond the end of the file: SIGBUS.
pub(crate) const DONE_SIGBUS: u32 = 4;
/// Not resolvable (the mapping is gone, a store to a read-only mapping): SIGSEGV.
pub(crate) const DONE_SIGSEGV: u32 = 5;

pub(crate) struct FaultSlot {
    pub(crate) state: AtomicU32,
    pub(crate) addr: AtomicUsize,
    pub(crate) write: AtomicU32,
    pub(crate) region: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const SLOT_INIT: FaultSlot = FaultSlot {
    state: AtomicU32::new(FREE),
    addr: AtomicUsize::new(0),
    write: AtomicU32::new(0),
    region: AtomicUsize::new(0),
};
pub(crate) static FAULTS: [FaultSlot; MAX_FAULTS] = [SLOT_INIT; MAX_FAULTS];

/// The eventfd the handler kicks the fault thread with (-1: none).
pub(crate) static EVENTFD: AtomicI32 = AtomicI32::new(-1);
/// The SIGSEGV action that was installed before ours (chained for faults not ours).
static OLD_SEGV: AtomicPtr<libc::sigaction> = AtomicPtr::new(ptr::null_mut());
/// Faults served (for tests and the admin view).
pub(crate) static FAULTS_SERVED: AtomicU64 = AtomicU64::new(0);

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Reserves `len` bytes of address space, inaccessible (every access faults to the handler).
pub(crate) fn reserve(len: usize) -> std::io::Result<usize> {
    // SAFETY: a fresh anonymous PROT_NONE mapping at an address the kernel chooses: no
    // existing memory is affected.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(errno());
    }
    dontfork(p as usize, len)?;
    Ok(p as usize)
}

fn dontfork(addr: usize, len: usize) -> std::io::Result<()> {
    // SAFETY: advice on a range this module mapped; MADV_DONTFORK changes no contents.
    if unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTFORK) } != 0 {
        return Err(errno());
    }
    Ok(())
}

/// Maps the pool frame at `offset` of `fd` over the page at `addr` (inside a reserved region).
pub(crate) fn map_frame(
    addr: usize,
    fd: std::os::fd::BorrowedFd<'_>,
    offset: u64,
    writable: bool,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
    // SAFETY: MAP_FIXED over one page of a region this module reserved (callers check the
    // address is inside one of their regions): only that page's mapping is replaced.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            PAGE,
            prot,
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(errno());
    }
    dontfork(addr, PAGE)
}

/// Makes `[addr, addr + len)` (inside a reserved region) inaccessible again: its frames are no
/// longer reachable from this process.
pub(crate) fn revoke(addr: usize, len: usize) -> std::io::Result<()> {
    // SAFETY: MAP_FIXED over pages of a region this module reserved.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(errno());
    }
    dontfork(addr, len)
}

/// Unmaps a reserved region.
pub(crate) fn release(addr: usize, len: usize) {
    // SAFETY: the region was reserved by `reserve` and is no longer registered: nothing of
    // this module refers to it after this.
    unsafe {
        libc::munmap(addr as *mut libc::c_void, len);
    }
}

/// Copies `buf.len()` bytes from mapped address `addr` (loads: they fault as needed).
pub(crate) fn load(addr: usize, buf: &mut [u8]) {
    // SAFETY: `addr..addr+len` lies inside a region the caller owns (checked by the caller);
    // a page not mapped yet faults into the handler, which maps it or ends the process with
    // SIGBUS as a real mapping would. The source is shared memory: raw pointer copy only.
    unsafe { ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) }
}

/// Copies `data` to mapped address `addr` (stores).
pub(crate) fn store(addr: usize, data: &[u8]) {
    // SAFETY: as `load`, in the other direction.
    unsafe { ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) }
}

fn futex_wait(word: &AtomicU32, val: u32, ms: i64) {
    let ts = libc::timespec { tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000 };
    // SAFETY: FUTEX_WAIT on a static atomic with a timeout; async-signal-safe syscall.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            val,
            &ts as *const libc::timespec,
        );
    }
}

/// Wakes waiters on `word`.
pub(crate) fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a static atomic.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}

fn kick_fault_thread() {
    let fd = EVENTFD.load(Ordering::Acquire);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) of 8 bytes to an eventfd; async-signal-safe.
        unsafe {
            libc::write(fd, (&one as *const u64).cast(), 8);
        }
    }
}

fn region_of(addr: usize) -> Option<usize> {
    // SAFETY: getpid(2) is async-signal-safe.
    let me = unsafe { libc::getpid() } as u32;
    REGIONS.iter().position(|r| {
        r.pid.load(Ordering::Acquire) == me
            && r.start.load(Ordering::Acquire) <= addr
            && addr < r.end.load(Ordering::Acquire)
    })
}

/// Registers region `i` as `[start, end)` for this process.
pub(crate) fn set_region(i: usize, start: usize, end: usize) {
    let r = &REGIONS[i];
    r.start.store(start, Ordering::Release);
    r.end.store(end, Ordering::Release);
    r.pid.store(std::process::id(), Ordering::Release);
}

/// Unregisters region `i`.
pub(crate) fn clear_region(i: usize) {
    let r = &REGIONS[i];
    r.pid.store(0, Ordering::Release);
    r.end.store(0, Ordering::Release);
    r.start.store(0, Ordering::Release);
}

/// True if the faulting access was a store (x86-64: page-fault error code bit 1).
#[cfg(target_arch = "x86_64")]
fn is_write(ctx: *mut libc::c_void) -> bool {
    if ctx.is_null() {
        return false;
    }
    // SAFETY: the kernel passes a ucontext_t to an SA_SIGINFO handler.
    let uc = unsafe { &*(ctx as *const libc::ucontext_t) };
    uc.uc_mcontext.gregs[libc::REG_ERR as usize] & 2 != 0
}

#[cfg(not(target_arch = "x86_64"))]
fn is_write(_ctx: *mut libc::c_void) -> bool {
    false // a store then faults again on the read-only page and is served as one
}

fn default_and_return(sig: libc::c_int) {
    // SAFETY: sigaction/signal are async-signal-safe; restoring the default action makes the
    // faulting instruction, executed again on return, end the process as it would have.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}

extern "C" fn on_segv(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: `info` is the kernel's siginfo for this SIGSEGV.
    let addr = unsafe { (*info).si_addr() } as usize;
    let Some(region) = region_of(addr) else {
        chain(sig, info, ctx);
        return;
    };
    let write = is_write(ctx);
    let slot = loop {
        if let Some(s) = FAULTS.iter().find(|s| {
            s.state.compare_exchange(FREE, CLAIMED, Ordering::AcqRel, Ordering::Acquire).is_ok()
        }) {
            break s;
        }
        // SAFETY: sched_yield(2), a plain syscall.
        unsafe {
            libc::sched_yield();
        }
    };
    slot.addr.store(addr, Ordering::Relaxed);
    slot.write.store(u32::from(write), Ordering::Relaxed);
    slot.region.store(region, Ordering::Relaxed);
    slot.state.store(POSTED, Ordering::Release);
    kick_fault_thread();
    let mut waited_ms = 0i64;
    while slot.state.load(Ordering::Acquire) == POSTED {
        futex_wait(&slot.state, POSTED, 100);
        waited_ms += 100;
        if waited_ms % 1000 == 0 {
            kick_fault_thread(); // in case the first kick raced the thread's start
        }
    }
    let result = slot.state.load(Ordering::Acquire);
    slot.state.store(FREE, Ordering::Release);
    match result {
        DONE_OK => {}
        DONE_SIGBUS => {
            // Beyond the end of the file, as on Linux: SIGBUS to this thread.
            // SAFETY: raise(3) is async-signal-safe.
            unsafe {
                libc::raise(libc::SIGBUS);
            }
        }
        _ => default_and_return(sig),
    }
}

fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let old = OLD_SEGV.load(Ordering::Acquire);
    if old.is_null() {
        default_and_return(sig);
        return;
    }
    // SAFETY: `old` points to the leaked copy of the previous action made at install time.
    let old = unsafe { &*old };
    if old.sa_flags & libc::SA_SIGINFO != 0 && old.sa_sigaction > 1 {
        // SAFETY: the previous handler was an SA_SIGINFO handler of this signature.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(old.sa_sigaction) };
        f(sig, info, ctx);
    } else if old.sa_sigaction > 1 {
        // SAFETY: a plain handler.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(old.sa_sigaction) };
        f(sig);
    } else {
        default_and_return(sig);
    }
}

/// Installs the SIGSEGV handler (once per process; the previous action is chained).
pub(crate) fn install_handler() -> std::io::Result<()> {
    static INSTALLED: AtomicU32 = AtomicU32::new(0);
    if INSTALLED.swap(1, Ordering::AcqRel) == 1 {
        return Ok(());
    }
    // SAFETY: zeroed sigaction structs are valid; sigaction(2) installs our handler, which
    // follows this module's async-signal-safety rules, and saves the old one (leaked, read by
    // `chain` only).
    unsafe {
        let mut new: libc::sigaction = std::mem::zeroed();
        new.sa_sigaction = on_segv as *const () as usize;
        new.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut new.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGSEGV, &new, &mut old) != 0 {
            INSTALLED.store(0, Ordering::Release);
            return Err(errno());
        }
        OLD_SEGV.store(Box::into_raw(Box::new(old)), Ordering::Release);
    }
    Ok(())
}
