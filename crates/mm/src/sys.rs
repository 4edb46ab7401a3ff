//! The one place in pinwheel-mm with `unsafe`: the shared mapping of the pool and copies in
//! and out of it, plus the sparse zeroed arrays of the frame table.
//!
//! Rules of this module (the IBTRS lesson from LPC 2019: memory another party can write is
//! never handed out as a Rust reference):
//! - pool memory is reached only through raw pointers computed here, after a bounds check;
//! - bulk copies are `ptr::copy_nonoverlapping` between a raw pool pointer and a private
//!   buffer: each byte is read once, nothing is re-read to decide anything;
//! - 8-byte words (RDMA atomics, shared counters) are `AtomicU64`s at 8-aligned offsets, and
//!   4-byte futex words `AtomicU32`s at 4-aligned offsets (the futex calls are rustix's, safe
//!   once the word is one);
//! - syscalls that move bytes between a socket and the pool get raw pointers, never slices.

#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::error::Errno;

/// A `MAP_SHARED` mapping of a whole file (the pool), unmapped on drop.
#[derive(Debug)]
pub(crate) struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all access goes through the bounds-checked raw
// pointer functions below, which are sound to call from any thread (concurrent access to the
// same bytes is a data race on *content* only, which the pool's users accept by design and
// which never produces a Rust reference to those bytes).
unsafe impl Send for SharedMapping {}
// SAFETY: see `Send`.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Maps `len` bytes of `fd` from offset 0, shared and without swap reservation, so a sparse
    /// 64 GiB pool costs only the pages that are touched.
    pub(crate) fn map(fd: BorrowedFd<'_>, len: usize) -> Result<SharedMapping, Errno> {
        use rustix::mm::{MapFlags, ProtFlags, mmap};
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        // SAFETY: a fresh mapping at a kernel-chosen address aliases no Rust object; the file
        // stays mapped until `Drop` unmaps exactly this range.
        let p = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::NORESERVE,
                fd,
                0,
            )
        }
        .map_err(Errno::from)?;
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(Errno::ENOMEM)?;
        Ok(SharedMapping { ptr, len })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Raw pointer to byte `off`, after checking `[off, off + n)` lies inside the mapping.
    #[inline]
    fn at(&self, off: u64, n: usize) -> Option<*mut u8> {
        let off = usize::try_from(off).ok()?;
        let end = off.checked_add(n)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `off <= len`, so the result stays within (or one past) the mapping.
        Some(unsafe { self.ptr.as_ptr().add(off) })
    }

    /// Copies pool bytes `[off, off + dst.len())` into `dst`.
    #[inline]
    pub(crate) fn copy_out(&self, off: u64, dst: &mut [u8]) -> Option<()> {
        let src = self.at(off, dst.len())?;
        // SAFETY: `src` is valid for `dst.len()` bytes (checked by `at`); `dst` is a private
        // buffer that cannot overlap the shared mapping (it is a Rust reference, and no Rust
        // reference into the mapping exists).
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        Some(())
    }

    /// Copies `src` into pool bytes `[off, off + src.len())`.
    #[inline]
    pub(crate) fn copy_in(&self, off: u64, src: &[u8]) -> Option<()> {
        let dst = self.at(off, src.len())?;
        // SAFETY: as in `copy_out`, with the roles swapped.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        Some(())
    }

    /// Copies `len` bytes inside the pool from `src` to `dst` (ranges may overlap).
    #[inline]
    pub(crate) fn copy_within(&self, src: u64, dst: u64, len: usize) -> Option<()> {
        let s = self.at(src, len)?;
        let d = self.at(dst, len)?;
        // SAFETY: both ranges are inside the mapping; `ptr::copy` allows overlap.
        unsafe { std::ptr::copy(s, d, len) };
        Some(())
    }

    /// Sets `len` pool bytes from `off` to `byte`.
    pub(crate) fn fill(&self, off: u64, len: usize, byte: u8) -> Option<()> {
        let d = self.at(off, len)?;
        // SAFETY: the range is inside the mapping.
        unsafe { std::ptr::write_bytes(d, byte, len) };
        Some(())
    }

    /// The 8-byte word at `off` as an atomic. `off` must be 8-aligned.
    #[inline]
    pub(crate) fn atomic_u64(&self, off: u64) -> Option<&AtomicU64> {
        if !off.is_multiple_of(8) {
            return None;
        }
        let p = self.at(off, 8)?;
        // SAFETY: `p` is 8-aligned (the mapping is page aligned and `off % 8 == 0`), valid for
        // 8 bytes for the lifetime of `self`, and is only ever accessed atomically or by the
        // byte copies above, which is the documented contract of shared memory here.
        Some(unsafe { AtomicU64::from_ptr(p.cast::<u64>()) })
    }

    /// The 4-byte word at `off` as an atomic (futex words of shared rings). `off` must be
    /// 4-aligned.
    #[inline]
    pub(crate) fn atomic_u32(&self, off: u64) -> Option<&AtomicU32> {
        if !off.is_multiple_of(4) {
            return None;
        }
        let p = self.at(off, 4)?;
        // SAFETY: as `atomic_u64`: `p` is 4-aligned (page-aligned mapping, `off % 4 == 0`),
        // valid for 4 bytes while `self` lives, and only accessed atomically or by byte copies.
        Some(unsafe { AtomicU32::from_ptr(p.cast::<u32>()) })
    }

    /// `FUTEX_WAIT` (shared, not private: the word may be mapped by other processes) on the
    /// 4-byte word at `off` while it holds `expected`, for at most `timeout`. Returns on a
    /// wake-up, a timeout, a signal, or at once if the word differs: callers re-check.
    pub(crate) fn futex_wait(
        &self,
        off: u64,
        expected: u32,
        timeout: std::time::Duration,
    ) -> Option<Result<(), Errno>> {
        use rustix::thread::futex;
        let w = self.atomic_u32(off)?;
        let ts = rustix::time::Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        Some(match futex::wait(w, futex::Flags::empty(), expected, Some(&ts)) {
            Ok(())
            | Err(rustix::io::Errno::AGAIN)
            | Err(rustix::io::Errno::TIMEDOUT)
            | Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(Errno::from(e)),
        })
    }

    /// `FUTEX_WAKE` (shared) of up to `n` waiters on the word at `off`.
    pub(crate) fn futex_wake(&self, off: u64, n: u32) -> Option<Result<usize, Errno>> {
        use rustix::thread::futex;
        let w = self.atomic_u32(off)?;
        Some(futex::wake(w, futex::Flags::empty(), n).map_err(Errno::from))
    }

    /// `read(2)` from `fd` straight into pool bytes `[off, off + len)`.
    pub(crate) fn read_from_fd(
        &self,
        fd: BorrowedFd<'_>,
        off: u64,
        len: usize,
    ) -> Option<std::io::Result<usize>> {
        let p = self.at(off, len)?;
        // SAFETY: the kernel writes at most `len` bytes at `p`, which is inside the mapping.
        let n = unsafe { libc::read(fd.as_raw_fd(), p.cast(), len) };
        Some(if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) })
    }

    /// `write(2)` pool bytes `[off, off + len)` to `fd`.
    pub(crate) fn write_to_fd(
        &self,
        fd: BorrowedFd<'_>,
        off: u64,
        len: usize,
    ) -> Option<std::io::Result<usize>> {
        let p = self.at(off, len)?;
        // SAFETY: the kernel reads at most `len` bytes at `p`, which is inside the mapping.
        let n = unsafe { libc::write(fd.as_raw_fd(), p.cast_const().cast(), len) };
        Some(if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) })
    }

    /// `madvise(MADV_POPULATE_WRITE)`: makes the kernel back a range of the pool with memory
    /// now, in bulk, instead of one page fault per page on first access.
    pub(crate) fn populate(&self, off: u64, len: usize) -> Result<(), Errno> {
        let p = self.at(off, len).ok_or(Errno::EINVAL)?;
        // SAFETY: the range is inside our mapping; populating does not change its contents.
        unsafe { rustix::mm::madvise(p.cast(), len, rustix::mm::Advice::LinuxPopulateWrite) }
            .map_err(Errno::from)
    }

    /// `msync(MS_SYNC)` of a range, for pools on real files (persistence).
    pub(crate) fn sync(&self, off: u64, len: usize) -> Result<(), Errno> {
        let start = off & !(crate::types::PAGE_SIZE - 1);
        let len = len + (off - start) as usize;
        let p = self.at(start, len).ok_or(Errno::EINVAL)?;
        // SAFETY: the range is inside our mapping; msync does not access it from Rust.
        unsafe { rustix::mm::msync(p.cast(), len, rustix::mm::MsyncFlags::SYNC) }
            .map_err(Errno::from)
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: exactly the range mapped in `map`; no references into it exist.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Punches a hole in the pool file: the range reads as zeros afterwards and its memory goes
/// back to the OS.
pub(crate) fn punch_hole(fd: BorrowedFd<'_>, off: u64, len: u64) -> Result<(), Errno> {
    use rustix::fs::{FallocateFlags, fallocate};
    fallocate(fd, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, off, len)
        .map_err(Errno::from)
}

/// A zero-initialised `[AtomicU32]` of `n` entries whose untouched pages cost nothing (the
/// allocator gets them from `calloc`, which maps fresh zero pages for large sizes).
pub(crate) fn zeroed_atomic_u32(n: usize) -> Box<[AtomicU32]> {
    let v: Box<[u32]> = vec![0u32; n].into_boxed_slice();
    let raw = Box::into_raw(v);
    // SAFETY: `AtomicU32` has the same size, alignment and bit validity as `u32` (documented),
    // so a `[u32]` allocation is a valid `[AtomicU32]` allocation of the same layout.
    unsafe { Box::from_raw(raw as *mut [AtomicU32]) }
}

/// As [`zeroed_atomic_u32`], for `AtomicU64`.
pub(crate) fn zeroed_atomic_u64(n: usize) -> Box<[AtomicU64]> {
    let v: Box<[u64]> = vec![0u64; n].into_boxed_slice();
    let raw = Box::into_raw(v);
    // SAFETY: `AtomicU64` has the same size, alignment and bit validity as `u64` (documented).
    unsafe { Box::from_raw(raw as *mut [AtomicU64]) }
}

/// Private anonymous memory of the host process (not the pool), unmapped on drop: the
/// baseline benchmarks measure pinning and registration against (`mlock` + touch of the same
/// size of real memory, what a kernel charges to make memory resident and locked).
#[derive(Debug)]
pub struct HostMemory {
    ptr: NonNull<u8>,
    len: usize,
}

impl HostMemory {
    /// `len` bytes (rounded up to 4 KiB), mapped but not yet touched.
    pub fn new(len: usize) -> Result<HostMemory, Errno> {
        let len = len.max(1).next_multiple_of(crate::types::PAGE_SIZE as usize);
        // SAFETY: a fresh private anonymous mapping at an address the kernel picks; nothing
        // else refers to it.
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )
        }
        .map_err(Errno::from)?;
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(Errno::ENOMEM)?;
        Ok(HostMemory { ptr, len })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never: at least one page is mapped.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes one byte of every page (faulting in the pages not yet resident).
    pub fn touch(&self) {
        for off in (0..self.len).step_by(crate::types::PAGE_SIZE as usize) {
            // SAFETY: `off < len`: inside our private mapping, which no reference points into.
            unsafe { self.ptr.as_ptr().add(off).write_volatile(1) };
        }
    }

    /// `mlock` (which faults every page in), a touch of every page, then `munlock`; returns
    /// the time of the first two. On fresh memory it pays the page faults and zeroing; later
    /// calls find the memory resident. `EPERM`/`ENOMEM`: no `CAP_IPC_LOCK` and a small
    /// `RLIMIT_MEMLOCK`.
    pub fn mlock_touch(&self) -> Result<std::time::Duration, Errno> {
        let t = std::time::Instant::now();
        // SAFETY: exactly our mapping.
        unsafe { rustix::mm::mlock(self.ptr.as_ptr().cast(), self.len) }.map_err(Errno::from)?;
        self.touch();
        let took = t.elapsed();
        // SAFETY: as above.
        unsafe { rustix::mm::munlock(self.ptr.as_ptr().cast(), self.len) }.map_err(Errno::from)?;
        Ok(took)
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        // SAFETY: exactly the range mapped in `new`, unmapped once.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Reads an fd's size.
pub(crate) fn fd_size(fd: impl AsFd) -> Result<u64, Errno> {
    rustix::fs::fstat(fd).map(|s| s.st_size as u64).map_err(Errno::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(len: u64) -> std::os::fd::OwnedFd {
        let fd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, len).unwrap();
        fd
    }

    #[test]
    fn sys_copies_are_bounds_checked() {
        let fd = memfd(8192);
        let m = SharedMapping::map(fd.as_fd(), 8192).unwrap();
        assert!(m.copy_in(8190, &[1, 2]).is_some());
        assert!(m.copy_in(8191, &[1, 2]).is_none());
        assert!(m.copy_in(u64::MAX, &[1]).is_none());
        let mut b = [0u8; 2];
        assert!(m.copy_out(8190, &mut b).is_some());
        assert_eq!(b, [1, 2]);
        assert!(m.atomic_u64(3).is_none());
        assert!(m.atomic_u64(8184).is_some());
        assert!(m.atomic_u64(8192).is_none());
        assert!(m.atomic_u32(2).is_none());
        assert!(m.atomic_u32(8188).is_some());
        assert!(m.atomic_u32(8192).is_none());
        assert!(m.fill(0, 8193, 0).is_none());
        assert!(m.copy_within(0, 4096, 4097).is_none());
    }

    #[test]
    fn sys_punch_hole_zeroes() {
        let fd = memfd(1 << 20);
        let m = SharedMapping::map(fd.as_fd(), 1 << 20).unwrap();
        m.fill(0, 1 << 20, 0xab).unwrap();
        punch_hole(fd.as_fd(), 4096, 8192).unwrap();
        let mut b = [0u8; 3];
        m.copy_out(4095, &mut b).unwrap();
        assert_eq!(b, [0xab, 0, 0]);
    }

    #[test]
    fn sys_host_memory_mlock_touch() {
        let m = HostMemory::new(3 * 4096 + 1).unwrap();
        assert_eq!(m.len(), 4 * 4096);
        // mlock may be refused by a small RLIMIT_MEMLOCK; the touch alone must work.
        m.touch();
        if let Ok(d) = m.mlock_touch() {
            assert!(d > std::time::Duration::ZERO);
        }
    }

    #[test]
    fn sys_zeroed_arrays_start_at_zero() {
        let a = zeroed_atomic_u32(1 << 20);
        assert!(a.iter().step_by(4096).all(|x| x.load(std::sync::atomic::Ordering::Relaxed) == 0));
        let b = zeroed_atomic_u64(0);
        assert!(b.is_empty());
    }
}
