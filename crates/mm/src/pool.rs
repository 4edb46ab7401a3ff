//! The pool: the memory that plays the part of physical (and persistent) memory.
//!
//! One memfd (default) or one file, mapped `MAP_SHARED` in full. Its fd can be handed to
//! another process (fork, `SCM_RIGHTS`), which maps the same bytes: an address in a client and
//! the engine's view of a frame are the same memory. Frames are 4 KiB and named by [`Pfn`].
//! A file on a real DAX filesystem or a pmem device gives real persistence; [`Pool::flush`]
//! is the persistence point.
//!
//! All byte access is bounds-checked and goes through `sys` (raw copies, never references).

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::{Errno, MmError, Result};
use crate::limits::{POOL_SIZE_MAX, POOL_SIZE_MIN};
use crate::sys::{self, SharedMapping};
use crate::types::{PAGE_SIZE, Pfn, PoolOffset, is_page_aligned};

/// What the pool's bytes live in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolBacking {
    /// An anonymous memfd: gone when the last process holding it exits.
    Memfd,
    /// A file: persistent if the file system is.
    File(PathBuf),
    /// An fd received from elsewhere (fork, `SCM_RIGHTS`): its bytes may be in use.
    Received,
}

/// The pool. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Pool {
    fd: OwnedFd,
    map: SharedMapping,
    size: u64,
    backing: PoolBacking,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool").field("size", &self.size).field("backing", &self.backing).finish()
    }
}

fn check_size(size: u64, what: &str) -> Result<()> {
    if !(POOL_SIZE_MIN..=POOL_SIZE_MAX).contains(&size) || !is_page_aligned(size) {
        return Err(MmError::invalid(format!(
            "{what}: pool size {size} must be a multiple of 4 KiB between {POOL_SIZE_MIN} and \
             {POOL_SIZE_MAX} bytes"
        )));
    }
    Ok(())
}

impl Pool {
    /// A new pool of `size` bytes in a memfd named `name`. Sparse: untouched frames cost
    /// nothing.
    pub fn memfd(name: &str, size: u64) -> Result<Pool> {
        check_size(size, name)?;
        let setup = |what: &str, e: rustix::io::Errno| MmError::PoolSetup {
            path: format!("memfd:{name}"),
            what: what.into(),
            errno: e.into(),
        };
        let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| setup("memfd_create", e))?;
        rustix::fs::ftruncate(&fd, size).map_err(|e| setup("ftruncate", e))?;
        Pool::map_fd(fd, PoolBacking::Memfd, format!("memfd:{name}"))
    }

    /// Creates (or truncates to `size`) the file at `path` and maps it as a pool.
    pub fn create_file(path: &Path, size: u64) -> Result<Pool> {
        check_size(size, &path.display().to_string())?;
        let setup = |what: &str, e: std::io::Error| MmError::PoolSetup {
            path: path.display().to_string(),
            what: what.into(),
            errno: Errno::from(&e),
        };
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| setup("open", e))?;
        f.set_len(size).map_err(|e| setup("set_len", e))?;
        Pool::map_fd(OwnedFd::from(f), PoolBacking::File(path.into()), path.display().to_string())
    }

    /// Opens an existing pool file; its size is the file's size.
    pub fn open_file(path: &Path) -> Result<Pool> {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| {
            MmError::PoolSetup {
                path: path.display().to_string(),
                what: "open".into(),
                errno: Errno::from(&e),
            }
        })?;
        Pool::map_fd(OwnedFd::from(f), PoolBacking::File(path.into()), path.display().to_string())
    }

    /// Maps a pool fd received from another process (fork, `SCM_RIGHTS`): the same bytes.
    pub fn from_fd(fd: OwnedFd) -> Result<Pool> {
        Pool::map_fd(fd, PoolBacking::Received, "received fd".into())
    }

    /// True only for a memfd this process just created: every byte reads as zero.
    pub fn fresh(&self) -> bool {
        self.backing == PoolBacking::Memfd
    }

    fn map_fd(fd: OwnedFd, backing: PoolBacking, name: String) -> Result<Pool> {
        let size = sys::fd_size(&fd).map_err(|errno| MmError::PoolSetup {
            path: name.clone(),
            what: "fstat".into(),
            errno,
        })?;
        check_size(size, &name)?;
        let len = usize::try_from(size).map_err(|_| MmError::invalid("pool larger than usize"))?;
        let map = SharedMapping::map(fd.as_fd(), len).map_err(|errno| MmError::PoolSetup {
            path: name,
            what: "mmap".into(),
            errno,
        })?;
        debug_assert_eq!(map.len() as u64, size);
        Ok(Pool { fd, map, size, backing })
    }

    /// Size in bytes.
    #[inline]
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Number of 4 KiB frames.
    #[inline]
    pub fn frames(&self) -> u64 {
        self.size / PAGE_SIZE
    }
    /// What the bytes live in.
    pub fn backing(&self) -> &PoolBacking {
        &self.backing
    }
    /// The pool's fd, to hand to another process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn oob(&self, op: &'static str, off: PoolOffset, len: u64) -> MmError {
        MmError::invalid(format!(
            "pool {op}: {len} bytes at {off} outside the pool of {} bytes",
            self.size
        ))
    }

    fn usize_len(&self, op: &'static str, off: PoolOffset, len: u64) -> Result<usize> {
        usize::try_from(len).map_err(|_| self.oob(op, off, len))
    }

    /// Copies pool bytes at `off` into `buf`.
    #[inline]
    pub fn read(&self, off: PoolOffset, buf: &mut [u8]) -> Result<()> {
        self.map.copy_out(off.raw(), buf).ok_or_else(|| self.oob("read", off, buf.len() as u64))
    }

    /// Copies `data` into the pool at `off`.
    #[inline]
    pub fn write(&self, off: PoolOffset, data: &[u8]) -> Result<()> {
        self.map.copy_in(off.raw(), data).ok_or_else(|| self.oob("write", off, data.len() as u64))
    }

    /// Sets `len` bytes at `off` to `byte`.
    pub fn fill(&self, off: PoolOffset, len: u64, byte: u8) -> Result<()> {
        let n = self.usize_len("fill", off, len)?;
        self.map.fill(off.raw(), n, byte).ok_or_else(|| self.oob("fill", off, len))
    }

    /// Copies `len` bytes from `src` to `dst` inside the pool (migration, copy-on-write).
    #[inline]
    pub fn copy(&self, src: PoolOffset, dst: PoolOffset, len: u64) -> Result<()> {
        let n = self.usize_len("copy", src, len)?;
        self.map.copy_within(src.raw(), dst.raw(), n).ok_or_else(|| self.oob("copy", src, len))
    }

    /// Copies whole frames `src` → `dst`.
    pub fn copy_frame(&self, src: Pfn, dst: Pfn) -> Result<()> {
        self.copy(src.offset(), dst.offset(), PAGE_SIZE)
    }

    /// Atomic compare-and-swap of the 8-byte word at `off` (8-aligned); returns the old value.
    #[inline]
    pub fn compare_and_swap(&self, off: PoolOffset, expect: u64, new: u64) -> Result<u64> {
        let w = self.word(off, "compare_and_swap")?;
        Ok(match w.compare_exchange(expect, new, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(v) | Err(v) => v,
        })
    }

    /// Atomic fetch-and-add of the 8-byte word at `off` (8-aligned); returns the old value.
    #[inline]
    pub fn fetch_add(&self, off: PoolOffset, add: u64) -> Result<u64> {
        Ok(self.word(off, "fetch_add")?.fetch_add(add, Ordering::SeqCst))
    }

    /// Atomic load of the 8-byte word at `off` (8-aligned).
    #[inline]
    pub fn load_u64(&self, off: PoolOffset) -> Result<u64> {
        Ok(self.word(off, "load_u64")?.load(Ordering::Acquire))
    }

    /// Atomic store of the 8-byte word at `off` (8-aligned).
    #[inline]
    pub fn store_u64(&self, off: PoolOffset, v: u64) -> Result<()> {
        self.word(off, "store_u64")?.store(v, Ordering::Release);
        Ok(())
    }

    /// Atomic load of the 8-byte word at `off` with `order`: shared-memory protocols where a
    /// store must be ordered before a load of another word (`SeqCst` on both sides, as the MR
    /// drain and the transfers entering an MR do).
    #[inline]
    pub fn load_u64_with(&self, off: PoolOffset, order: Ordering) -> Result<u64> {
        let order = match order {
            Ordering::Release | Ordering::AcqRel => Ordering::SeqCst,
            o => o,
        };
        Ok(self.word(off, "load_u64")?.load(order))
    }

    /// Atomic store of the 8-byte word at `off` with `order` (see [`Pool::load_u64_with`]).
    #[inline]
    pub fn store_u64_with(&self, off: PoolOffset, v: u64, order: Ordering) -> Result<()> {
        let order = match order {
            Ordering::Acquire | Ordering::AcqRel => Ordering::SeqCst,
            o => o,
        };
        self.word(off, "store_u64")?.store(v, order);
        Ok(())
    }

    /// Atomic fetch-and-subtract (wrapping) of the 8-byte word at `off`; returns the old value.
    #[inline]
    pub fn fetch_sub(&self, off: PoolOffset, sub: u64) -> Result<u64> {
        Ok(self.word(off, "fetch_sub")?.fetch_sub(sub, Ordering::SeqCst))
    }

    /// Atomic compare-and-exchange of the 8-byte word at `off`: `Ok(old)` if it held `current`
    /// and now holds `new`, `Err(actual)` otherwise.
    #[inline]
    pub fn compare_exchange(
        &self,
        off: PoolOffset,
        current: u64,
        new: u64,
    ) -> Result<std::result::Result<u64, u64>> {
        let w = self.word(off, "compare_exchange")?;
        Ok(w.compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst))
    }

    /// Atomic swap of the 8-byte word at `off`; returns the old value.
    #[inline]
    pub fn swap_u64(&self, off: PoolOffset, v: u64) -> Result<u64> {
        Ok(self.word(off, "swap_u64")?.swap(v, Ordering::SeqCst))
    }

    /// Atomic load (`SeqCst`) of the 4-byte word at `off` (4-aligned): futex words.
    #[inline]
    pub fn load_u32(&self, off: PoolOffset) -> Result<u32> {
        Ok(self.word32(off, "load_u32")?.load(Ordering::SeqCst))
    }

    /// Atomic fetch-and-add (`SeqCst`, wrapping) of the 4-byte word at `off`.
    #[inline]
    pub fn fetch_add_u32(&self, off: PoolOffset, add: u32) -> Result<u32> {
        Ok(self.word32(off, "fetch_add_u32")?.fetch_add(add, Ordering::SeqCst))
    }

    /// Atomic fetch-and-subtract (`SeqCst`, wrapping) of the 4-byte word at `off`.
    #[inline]
    pub fn fetch_sub_u32(&self, off: PoolOffset, sub: u32) -> Result<u32> {
        Ok(self.word32(off, "fetch_sub_u32")?.fetch_sub(sub, Ordering::SeqCst))
    }

    /// Sleeps while the 4-byte word at `off` holds `expected`, for at most `timeout`, woken by
    /// [`Pool::futex_wake`] on the same word from any process mapping the pool (a shared
    /// futex). Spurious returns happen: callers re-check their condition.
    pub fn futex_wait(&self, off: PoolOffset, expected: u32, timeout: Duration) -> Result<()> {
        match self.map.futex_wait(off.raw(), expected, timeout) {
            None => Err(self.not_word32("futex_wait", off)),
            Some(r) => r.map_err(|errno| MmError::Pool { op: "futex_wait", offset: off, errno }),
        }
    }

    /// Wakes up to `n` sleepers of [`Pool::futex_wait`] on the word at `off`; returns how many.
    pub fn futex_wake(&self, off: PoolOffset, n: u32) -> Result<usize> {
        match self.map.futex_wake(off.raw(), n) {
            None => Err(self.not_word32("futex_wake", off)),
            Some(r) => r.map_err(|errno| MmError::Pool { op: "futex_wake", offset: off, errno }),
        }
    }

    fn not_word32(&self, op: &'static str, off: PoolOffset) -> MmError {
        MmError::invalid(format!("pool {op}: {off} is not a 4-aligned word inside the pool"))
    }

    #[inline]
    fn word32(&self, off: PoolOffset, op: &'static str) -> Result<&std::sync::atomic::AtomicU32> {
        self.map.atomic_u32(off.raw()).ok_or_else(|| self.not_word32(op, off))
    }

    #[inline]
    fn word(&self, off: PoolOffset, op: &'static str) -> Result<&std::sync::atomic::AtomicU64> {
        self.map.atomic_u64(off.raw()).ok_or_else(|| {
            MmError::invalid(format!("pool {op}: {off} is not an 8-aligned word inside the pool"))
        })
    }

    /// `read(2)` from `fd` directly into the pool (no staging copy). Returns bytes read.
    pub fn read_from_fd(&self, fd: BorrowedFd<'_>, off: PoolOffset, len: u64) -> Result<usize> {
        let n = self.usize_len("read_from_fd", off, len)?;
        match self.map.read_from_fd(fd, off.raw(), n) {
            None => Err(self.oob("read_from_fd", off, len)),
            Some(r) => {
                r.map_err(|e| MmError::Pool { op: "read_from_fd", offset: off, errno: (&e).into() })
            }
        }
    }

    /// `write(2)` pool bytes directly to `fd`. Returns bytes written.
    pub fn write_to_fd(&self, fd: BorrowedFd<'_>, off: PoolOffset, len: u64) -> Result<usize> {
        let n = self.usize_len("write_to_fd", off, len)?;
        match self.map.write_to_fd(fd, off.raw(), n) {
            None => Err(self.oob("write_to_fd", off, len)),
            Some(r) => {
                r.map_err(|e| MmError::Pool { op: "write_to_fd", offset: off, errno: (&e).into() })
            }
        }
    }

    /// Returns the memory of a page-aligned range to the OS; it reads as zeros afterwards.
    pub fn discard(&self, off: PoolOffset, len: u64) -> Result<()> {
        if !is_page_aligned(off.raw()) || !is_page_aligned(len) {
            return Err(MmError::invalid(format!("pool discard: {off}+{len} not page aligned")));
        }
        if off.raw().checked_add(len).is_none_or(|e| e > self.size) {
            return Err(self.oob("discard", off, len));
        }
        sys::punch_hole(self.fd.as_fd(), off.raw(), len).map_err(|errno| MmError::Pool {
            op: "discard",
            offset: off,
            errno,
        })
    }

    /// Backs a page-aligned range with memory now (`MADV_POPULATE_WRITE`), so DMA into it never
    /// waits for the kernel to populate the pool file. Contents are unchanged.
    pub fn populate(&self, off: PoolOffset, len: u64) -> Result<()> {
        if !is_page_aligned(off.raw()) || !is_page_aligned(len) {
            return Err(MmError::invalid(format!("pool populate: {off}+{len} not page aligned")));
        }
        let n = self.usize_len("populate", off, len)?;
        self.map.populate(off.raw(), n).map_err(|errno| MmError::Pool {
            op: "populate",
            offset: off,
            errno,
        })
    }

    /// Makes a range durable (msync) when the pool is a file; a no-op for a memfd.
    pub fn flush(&self, off: PoolOffset, len: u64) -> Result<()> {
        if self.backing == PoolBacking::Memfd || len == 0 {
            return Ok(());
        }
        let n = self.usize_len("flush", off, len)?;
        self.map.sync(off.raw(), n).map_err(|errno| MmError::Pool {
            op: "flush",
            offset: off,
            errno,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_rejects_bad_sizes() {
        assert_eq!(Pool::memfd("t", 4096).unwrap_err().errno(), Errno::EINVAL);
        assert_eq!(Pool::memfd("t", (16 << 20) + 1).unwrap_err().errno(), Errno::EINVAL);
        assert_eq!(Pool::memfd("t", POOL_SIZE_MAX + 4096).unwrap_err().errno(), Errno::EINVAL);
    }

    #[test]
    fn pool_64_gib_is_sparse() {
        let p = Pool::memfd("big", 64 << 30).unwrap();
        assert_eq!(p.frames(), 16 << 20);
        let last = PoolOffset::new((64 << 30) - 8);
        p.store_u64(last, 7).unwrap();
        assert_eq!(p.load_u64(last).unwrap(), 7);
        // One touched page: the memfd's allocated size stays tiny.
        let st = rustix::fs::fstat(p.fd()).unwrap();
        assert!(st.st_blocks * 512 <= 1 << 20, "blocks {}", st.st_blocks);
    }

    #[test]
    fn pool_bytes_and_atomics() {
        let p = Pool::memfd("t", 16 << 20).unwrap();
        p.write(PoolOffset::new(100), b"hello").unwrap();
        let mut b = [0u8; 5];
        p.read(PoolOffset::new(100), &mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert_eq!(p.compare_and_swap(PoolOffset::new(8), 0, 5).unwrap(), 0);
        assert_eq!(p.compare_and_swap(PoolOffset::new(8), 0, 6).unwrap(), 5);
        assert_eq!(p.fetch_add(PoolOffset::new(8), 10).unwrap(), 5);
        assert_eq!(p.load_u64(PoolOffset::new(8)).unwrap(), 15);
        assert_eq!(p.fetch_add(PoolOffset::new(9), 1).unwrap_err().errno(), Errno::EINVAL);
        assert_eq!(p.write(PoolOffset::new(u64::MAX), b"x").unwrap_err().errno(), Errno::EINVAL);
        p.fill(PoolOffset::new(4096), 4096, 0x5a).unwrap();
        p.copy_frame(Pfn::new(1), Pfn::new(2)).unwrap();
        let mut c = [0u8; 1];
        p.read(PoolOffset::new(8192 + 4095), &mut c).unwrap();
        assert_eq!(c[0], 0x5a);
        p.discard(PoolOffset::new(4096), 8192).unwrap();
        p.read(PoolOffset::new(8192), &mut c).unwrap();
        assert_eq!(c[0], 0);
        assert!(p.discard(PoolOffset::new(1), 4096).is_err());
    }

    #[test]
    fn pool_shared_words_and_futex() {
        let p = Pool::memfd("t", 16 << 20).unwrap();
        let w = PoolOffset::new(64);
        assert_eq!(p.compare_exchange(w, 0, 7).unwrap(), Ok(0));
        assert_eq!(p.compare_exchange(w, 0, 8).unwrap(), Err(7));
        assert_eq!(p.fetch_sub(w, 2).unwrap(), 7);
        assert_eq!(p.swap_u64(w, 1).unwrap(), 5);
        p.store_u64_with(w, 9, Ordering::SeqCst).unwrap();
        assert_eq!(p.load_u64_with(w, Ordering::SeqCst).unwrap(), 9);
        let f = PoolOffset::new(128);
        assert_eq!(p.fetch_add_u32(f, 3).unwrap(), 0);
        assert_eq!(p.load_u32(f).unwrap(), 3);
        assert_eq!(p.fetch_sub_u32(f, 1).unwrap(), 3);
        assert!(p.load_u32(PoolOffset::new(130)).is_err());
        // A mismatching value returns at once; a matching one sleeps until woken (another
        // mapping of the same pool: a shared futex), or times out.
        p.futex_wait(f, 99, Duration::from_secs(5)).unwrap();
        let t0 = std::time::Instant::now();
        p.futex_wait(f, 2, Duration::from_millis(20)).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(15));
        let q = Pool::from_fd(p.fd().try_clone_to_owned().unwrap()).unwrap();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            q.fetch_add_u32(f, 1).unwrap();
            q.futex_wake(f, 1).unwrap();
        });
        let t0 = std::time::Instant::now();
        while p.load_u32(f).unwrap() == 2 {
            p.futex_wait(f, 2, Duration::from_secs(10)).unwrap();
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "woken, not timed out");
        waker.join().unwrap();
        assert!(p.futex_wake(PoolOffset::new(u64::MAX - 3), 1).is_err());
    }

    #[test]
    fn pool_file_persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool");
        {
            let p = Pool::create_file(&path, 16 << 20).unwrap();
            p.write(PoolOffset::new(12345), b"persist").unwrap();
            p.flush(PoolOffset::new(12345), 7).unwrap();
        }
        let p = Pool::open_file(&path).unwrap();
        let mut b = [0u8; 7];
        p.read(PoolOffset::new(12345), &mut b).unwrap();
        assert_eq!(&b, b"persist");
        assert_eq!(p.backing(), &PoolBacking::File(path.clone()));
        assert!(Pool::open_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn pool_fd_maps_same_bytes() {
        let p = Pool::memfd("t", 16 << 20).unwrap();
        let fd2 = p.fd().try_clone_to_owned().unwrap();
        let q = Pool::from_fd(fd2).unwrap();
        p.write(PoolOffset::new(4096), b"shared").unwrap();
        let mut b = [0u8; 6];
        q.read(PoolOffset::new(4096), &mut b).unwrap();
        assert_eq!(&b, b"shared");
    }

    #[test]
    fn pool_socket_io_goes_direct() {
        let p = Pool::memfd("t", 16 << 20).unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::io::Write;
        (&a).write_all(b"wire bytes").unwrap();
        let n = p.read_from_fd(b.as_fd(), PoolOffset::new(64), 10).unwrap();
        assert_eq!(n, 10);
        let n = p.write_to_fd(b.as_fd(), PoolOffset::new(64), 10).unwrap();
        assert_eq!(n, 10);
        let mut got = [0u8; 10];
        use std::io::Read;
        (&a).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"wire bytes");
    }
}
