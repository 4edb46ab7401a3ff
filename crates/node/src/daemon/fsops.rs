//! Filesystem operations run for a client (`pinwheel fs --socket ...`), as the handle's owner:
//! a truncate under someone's pin fails here exactly as it would for a local caller, with the
//! holder's processes named.

use pinwheel_fs::{Caller, CreateOptions, DefragOptions, FallocMode, Filesystem, Ino};
use pinwheel_mm::Errno;

use crate::limits::MAX_IO_BYTES;
use crate::proto::{FsOp, Reply, WireError};

fn ferr(e: pinwheel_fs::FsError) -> WireError {
    WireError::new(e.errno(), e.to_string())
}

/// Runs one operation.
pub(crate) fn run(fs: &Filesystem, caller: &Caller, op: FsOp) -> Result<Reply, WireError> {
    Ok(match op {
        FsOp::Stat { path } => Reply::Stat(fs.stat(&path).map_err(ferr)?),
        FsOp::StatIno { ino } => Reply::Stat(fs.stat_ino(Ino(ino)).map_err(ferr)?),
        FsOp::Readdir { path } => Reply::Entries(fs.readdir(&path).map_err(ferr)?),
        FsOp::Lookup { path } => Reply::Ino(fs.lookup(&path).map_err(ferr)?.0),
        FsOp::Extents { ino } => Reply::Extents(fs.extents(Ino(ino)).map_err(ferr)?),
        FsOp::Create { path, page_cache } => {
            Reply::Ino(fs.create(&path, CreateOptions { page_cache }).map_err(ferr)?.0)
        }
        FsOp::Write { ino, offset, data } => {
            if data.len() > MAX_IO_BYTES as usize {
                return Err(WireError::new(Errno::EINVAL, "write over the per-request limit"));
            }
            Reply::Written(fs.write(Ino(ino), offset, &data, caller).map_err(ferr)? as u64)
        }
        FsOp::Read { ino, offset, len } => {
            if len > MAX_IO_BYTES {
                return Err(WireError::new(Errno::EINVAL, "read over the per-request limit"));
            }
            let mut b = vec![0u8; len as usize];
            let n = fs.read(Ino(ino), offset, &mut b).map_err(ferr)?;
            b.truncate(n);
            Reply::Data(b)
        }
        FsOp::Fallocate { ino, offset, len, mode } => {
            let mode = match mode {
                0 => FallocMode::Allocate { keep_size: false },
                1 => FallocMode::Allocate { keep_size: true },
                2 => FallocMode::ZeroRange,
                3 => FallocMode::PunchHole,
                m => return Err(WireError::new(Errno::EINVAL, format!("fallocate mode {m}"))),
            };
            fs.fallocate(Ino(ino), offset, len, mode, caller).map_err(ferr)?;
            Reply::Ok
        }
        FsOp::Truncate { ino, size } => {
            fs.truncate(Ino(ino), size, caller).map_err(ferr)?;
            Reply::Ok
        }
        FsOp::Clone { src, dst } => Reply::Ino(fs.clone_file(&src, &dst, caller).map_err(ferr)?.0),
        FsOp::Defrag { ino, huge } => {
            Reply::Defrag(fs.defrag(Ino(ino), DefragOptions { huge }, caller).map_err(ferr)?)
        }
        FsOp::Unlink { path } => {
            fs.unlink(&path, caller).map_err(ferr)?;
            Reply::Ok
        }
        FsOp::Rmdir { path } => {
            fs.rmdir(&path).map_err(ferr)?;
            Reply::Ok
        }
        FsOp::Rename { from, to } => {
            fs.rename(&from, &to, caller).map_err(ferr)?;
            Reply::Ok
        }
        FsOp::Mkdir { path } => Reply::Ino(fs.mkdir(&path).map_err(ferr)?.0),
        FsOp::Stats => Reply::Stats(fs.stats()),
        FsOp::Fsck => Reply::Fsck(fs.fsck()),
    })
}
