//! The pool image on disk: formatting it, mounting it for one command, opening it raw for fsck.
//!
//! Rules:
//! - An admin command holds an advisory `flock` on the pool file for its whole run —
//!   exclusive to mount or format, shared for fsck — so two commands never change one image
//!   at once, and fsck never reads an image half-way through a change. A busy image is
//!   refused with `EBUSY`, not waited for.
//! - A mounted image is always unmounted after its command, whether the command succeeded or
//!   not: `unmount` marks the superblock clean and flushes the pool, and the filesystem writes
//!   metadata through as it goes, so a failed command leaves a consistent image.
//! - A damaged image is refused by mount with `EUCLEAN`; the message says to run fsck, which
//!   reads the raw pool and never mounts.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use pinwheel_fs::format::{Geometry, SB_MAGIC};
use pinwheel_fs::{Filesystem, FsckReport, MkfsOptions, MountOptions};
use pinwheel_mm::limits::{POOL_SIZE_MAX, POOL_SIZE_MIN};
use pinwheel_mm::{Errno, Memory, PAGE_SIZE, Pool, RealClock};

use crate::error::CliError;
use crate::size::human;

/// How the pool file is locked.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Lock {
    /// Mount or format: nobody else may use the image.
    Exclusive,
    /// fsck: others may read, nobody may change it.
    Shared,
}

/// Opens `path` (creating it with `create`) and takes the advisory lock. The returned file
/// holds the lock until dropped.
fn lock(op: &'static str, path: &Path, how: Lock, create: bool) -> Result<File, CliError> {
    let shown = path.display().to_string();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(|e| CliError::io(op, &shown, "cannot open the pool file", e))?;
    let mode = match how {
        Lock::Exclusive => rustix::fs::FlockOperation::NonBlockingLockExclusive,
        Lock::Shared => rustix::fs::FlockOperation::NonBlockingLockShared,
    };
    match rustix::fs::flock(&file, mode) {
        Ok(()) => Ok(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(CliError::Refused {
            op,
            target: shown,
            errno: Errno::EBUSY,
            detail: "another pinwheel command is using this pool file (it holds its lock)".into(),
        }),
        Err(e) => Err(CliError::io(op, shown, "cannot lock the pool file", e.into())),
    }
}

/// What mkfs made.
#[derive(Clone, Debug)]
pub struct MkfsSummary {
    /// Pool size in bytes.
    pub pool_size: u64,
    /// Where the regions lie.
    pub geometry: Geometry,
    /// Free data blocks after formatting.
    pub free_blocks: u64,
}

/// Checks a pool size before anything touches the disk, naming the bound it breaks.
fn check_pool_size(path: &str, size: u64) -> Result<Geometry, CliError> {
    let bad = |detail: String| CliError::invalid("mkfs", path, detail);
    if size < POOL_SIZE_MIN {
        return Err(bad(format!(
            "size {} is below the smallest pool ({})",
            human(size),
            human(POOL_SIZE_MIN)
        )));
    }
    if size > POOL_SIZE_MAX {
        return Err(bad(format!(
            "size {} is above the largest pool ({})",
            human(size),
            human(POOL_SIZE_MAX)
        )));
    }
    if !size.is_multiple_of(PAGE_SIZE) {
        return Err(bad(format!("size {size} is not a multiple of {PAGE_SIZE} bytes")));
    }
    Geometry::for_frames(size / PAGE_SIZE)
        .ok_or_else(|| bad(format!("a pool of {} leaves no room for data", human(size))))
}

/// True if the file starts with the superblock magic.
fn holds_pinwheel(file: &File) -> bool {
    let mut magic = [0u8; SB_MAGIC.len()];
    let mut r = file;
    r.read_exact(&mut magic).is_ok() && magic == SB_MAGIC
}

/// Formats the pool file at `path` (created if missing) with a new, empty filesystem of `size`
/// bytes. An image that already holds a pinwheel filesystem is overwritten only with `force`.
pub fn mkfs(path: &Path, size: u64, force: bool) -> Result<MkfsSummary, CliError> {
    let shown = path.display().to_string();
    let geometry = check_pool_size(&shown, size)?;
    let existed = path.exists();
    let guard = lock("mkfs", path, Lock::Exclusive, true)?;
    if !force && holds_pinwheel(&guard) {
        return Err(CliError::Refused {
            op: "mkfs",
            target: shown,
            errno: Errno::EEXIST,
            detail: "the file already holds a pinwheel filesystem; pass --force to overwrite it"
                .into(),
        });
    }
    let result = format(path, size).map(|free_blocks| MkfsSummary {
        pool_size: size,
        geometry,
        free_blocks,
    });
    drop(guard);
    if result.is_err() && !existed {
        // Leave nothing half-made behind; the error says what went wrong.
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Creates the pool, formats it, unmounts it; returns the free blocks.
fn format(path: &Path, size: u64) -> Result<u64, CliError> {
    let shown = path.display().to_string();
    let pool = Pool::create_file(path, size).map_err(|error| CliError::Pool {
        op: "mkfs",
        path: shown.clone(),
        error,
    })?;
    let mem = Memory::new(pool, RealClock::new());
    let fs = Filesystem::mkfs(&mem, MkfsOptions::default(), MountOptions::default())
        .map_err(|e| CliError::fs("mkfs", &[&shown], e))?;
    let free = fs.stats().free_blocks;
    fs.unmount().map_err(|e| CliError::fs("unmount", &[&shown], e))?;
    Ok(free)
}

/// Mounts the image at `pool`, runs `f` on it, and unmounts it (also when `f` failed).
pub fn with_mounted<T>(
    pool: &Path,
    f: impl FnOnce(&Filesystem) -> Result<T, CliError>,
) -> Result<T, CliError> {
    let shown = pool.display().to_string();
    let _guard = lock("mount", pool, Lock::Exclusive, false)?;
    let p = Pool::open_file(pool).map_err(|error| CliError::Pool {
        op: "mount",
        path: shown.clone(),
        error,
    })?;
    let mem = Memory::new(p, RealClock::new());
    let fs = Filesystem::mount(&mem, MountOptions::default()).map_err(|e| {
        let hint = (e.errno() == Errno::EUCLEAN)
            .then(|| format!("{e}; run `pinwheel fs --pool {shown} fsck` for a full report"));
        CliError::fs("mount", &[&shown], e).with_hint(hint)
    })?;
    let result = f(&fs);
    let unmounted = fs.unmount().map_err(|e| CliError::fs("unmount", &[&shown], e));
    match (result, unmounted) {
        (Ok(v), Ok(())) => Ok(v),
        (Ok(_), Err(u)) => Err(u),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(u)) => {
            // The command's own error is the one to act on; the unmount failure is reported too
            // so the operator knows the image may not be marked clean.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "pinwheel: {u}");
            Err(e)
        }
    }
}

/// Checks the image at `pool` without mounting it.
pub fn fsck(pool: &Path) -> Result<FsckReport, CliError> {
    let shown = pool.display().to_string();
    let _guard = lock("fsck", pool, Lock::Shared, false)?;
    let p =
        Pool::open_file(pool).map_err(|error| CliError::Pool { op: "fsck", path: shown, error })?;
    Ok(pinwheel_fs::fsck(&p))
}
