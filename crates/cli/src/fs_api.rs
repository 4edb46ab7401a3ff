//! The filesystem operations `pinwheel fs` uses, on a pool file mounted here (`--pool`, as the
//! administrator) or on a live node through its daemon (`--socket`, as a client handle: a
//! truncate under someone's pin fails exactly as it would for an application, naming the
//! holder's processes).

use pinwheel::client::Context;
use pinwheel_fs::{
    Caller, CreateOptions, DefragOptions, DefragReport, DirEntry, Extent, FallocMode, Filesystem,
    FsStats, FsckReport, Ino, Stat,
};
use pinwheel_mm::Errno;
use pinwheel_node::limits::MAX_IO_BYTES;
use pinwheel_node::proto::{FsOp, Reply};

use crate::error::Failure;

type R<T> = Result<T, Failure>;

/// What `pinwheel fs` needs from a filesystem.
pub trait FsApi {
    fn stat(&self, path: &str) -> R<Stat>;
    fn stat_ino(&self, ino: Ino) -> R<Stat>;
    fn readdir(&self, path: &str) -> R<Vec<DirEntry>>;
    fn lookup(&self, path: &str) -> R<Ino>;
    fn extents(&self, ino: Ino) -> R<Vec<Extent>>;
    fn create(&self, path: &str, page_cache: bool) -> R<Ino>;
    fn write(&self, ino: Ino, at: u64, data: &[u8]) -> R<()>;
    fn read(&self, ino: Ino, at: u64, buf: &mut [u8]) -> R<usize>;
    fn fallocate(&self, ino: Ino, off: u64, len: u64, mode: FallocMode) -> R<()>;
    fn truncate(&self, ino: Ino, size: u64) -> R<()>;
    fn clone_file(&self, src: &str, dst: &str) -> R<()>;
    fn defrag(&self, ino: Ino, huge: bool) -> R<DefragReport>;
    fn unlink(&self, path: &str) -> R<()>;
    fn rmdir(&self, path: &str) -> R<()>;
    fn rename(&self, from: &str, to: &str) -> R<()>;
    fn mkdir(&self, path: &str) -> R<()>;
    fn stats(&self) -> R<FsStats>;
    fn fsck(&self) -> R<FsckReport>;
}

impl FsApi for Filesystem {
    fn stat(&self, path: &str) -> R<Stat> {
        Ok(Filesystem::stat(self, path)?)
    }
    fn stat_ino(&self, ino: Ino) -> R<Stat> {
        Ok(Filesystem::stat_ino(self, ino)?)
    }
    fn readdir(&self, path: &str) -> R<Vec<DirEntry>> {
        Ok(Filesystem::readdir(self, path)?)
    }
    fn lookup(&self, path: &str) -> R<Ino> {
        Ok(Filesystem::lookup(self, path)?)
    }
    fn extents(&self, ino: Ino) -> R<Vec<Extent>> {
        Ok(Filesystem::extents(self, ino)?)
    }
    fn create(&self, path: &str, page_cache: bool) -> R<Ino> {
        Ok(Filesystem::create(self, path, CreateOptions { page_cache })?)
    }
    fn write(&self, ino: Ino, at: u64, data: &[u8]) -> R<()> {
        Filesystem::write(self, ino, at, data, &Caller::admin())?;
        Ok(())
    }
    fn read(&self, ino: Ino, at: u64, buf: &mut [u8]) -> R<usize> {
        Ok(Filesystem::read(self, ino, at, buf)?)
    }
    fn fallocate(&self, ino: Ino, off: u64, len: u64, mode: FallocMode) -> R<()> {
        Ok(Filesystem::fallocate(self, ino, off, len, mode, &Caller::admin())?)
    }
    fn truncate(&self, ino: Ino, size: u64) -> R<()> {
        Ok(Filesystem::truncate(self, ino, size, &Caller::admin())?)
    }
    fn clone_file(&self, src: &str, dst: &str) -> R<()> {
        Filesystem::clone_file(self, src, dst, &Caller::admin())?;
        Ok(())
    }
    fn defrag(&self, ino: Ino, huge: bool) -> R<DefragReport> {
        Ok(Filesystem::defrag(self, ino, DefragOptions { huge }, &Caller::admin())?)
    }
    fn unlink(&self, path: &str) -> R<()> {
        Ok(Filesystem::unlink(self, path, &Caller::admin())?)
    }
    fn rmdir(&self, path: &str) -> R<()> {
        Ok(Filesystem::rmdir(self, path)?)
    }
    fn rename(&self, from: &str, to: &str) -> R<()> {
        Ok(Filesystem::rename(self, from, to, &Caller::admin())?)
    }
    fn mkdir(&self, path: &str) -> R<()> {
        Filesystem::mkdir(self, path)?;
        Ok(())
    }
    fn stats(&self) -> R<FsStats> {
        Ok(Filesystem::stats(self))
    }
    fn fsck(&self) -> R<FsckReport> {
        Ok(Filesystem::fsck(self))
    }
}

fn unexpected(r: Reply) -> Failure {
    Failure { errno: Errno::EPROTO, message: format!("unexpected answer from the daemon: {r:?}") }
}

fn call(ctx: &Context, op: FsOp) -> R<Reply> {
    Ok(ctx.fs(op)?)
}

fn ok(r: Reply) -> R<()> {
    match r {
        Reply::Ok | Reply::Ino(_) => Ok(()),
        r => Err(unexpected(r)),
    }
}

impl FsApi for Context {
    fn stat(&self, path: &str) -> R<Stat> {
        match call(self, FsOp::Stat { path: path.into() })? {
            Reply::Stat(s) => Ok(s),
            r => Err(unexpected(r)),
        }
    }
    fn stat_ino(&self, ino: Ino) -> R<Stat> {
        match call(self, FsOp::StatIno { ino: ino.0 })? {
            Reply::Stat(s) => Ok(s),
            r => Err(unexpected(r)),
        }
    }
    fn readdir(&self, path: &str) -> R<Vec<DirEntry>> {
        match call(self, FsOp::Readdir { path: path.into() })? {
            Reply::Entries(e) => Ok(e),
            r => Err(unexpected(r)),
        }
    }
    fn lookup(&self, path: &str) -> R<Ino> {
        match call(self, FsOp::Lookup { path: path.into() })? {
            Reply::Ino(i) => Ok(Ino(i)),
            r => Err(unexpected(r)),
        }
    }
    fn extents(&self, ino: Ino) -> R<Vec<Extent>> {
        match call(self, FsOp::Extents { ino: ino.0 })? {
            Reply::Extents(e) => Ok(e),
            r => Err(unexpected(r)),
        }
    }
    fn create(&self, path: &str, page_cache: bool) -> R<Ino> {
        match call(self, FsOp::Create { path: path.into(), page_cache })? {
            Reply::Ino(i) => Ok(Ino(i)),
            r => Err(unexpected(r)),
        }
    }
    fn write(&self, ino: Ino, at: u64, data: &[u8]) -> R<()> {
        for (i, chunk) in data.chunks(MAX_IO_BYTES as usize).enumerate() {
            let offset = at + (i * MAX_IO_BYTES as usize) as u64;
            match call(self, FsOp::Write { ino: ino.0, offset, data: chunk.to_vec() })? {
                Reply::Written(_) => {}
                r => return Err(unexpected(r)),
            }
        }
        Ok(())
    }
    fn read(&self, ino: Ino, at: u64, buf: &mut [u8]) -> R<usize> {
        let mut done = 0usize;
        while done < buf.len() {
            let len = (buf.len() - done).min(MAX_IO_BYTES as usize) as u32;
            match call(self, FsOp::Read { ino: ino.0, offset: at + done as u64, len })? {
                Reply::Data(d) if d.is_empty() => break,
                Reply::Data(d) => {
                    let n = d.len().min(buf.len() - done);
                    buf[done..done + n].copy_from_slice(&d[..n]);
                    done += n;
                    if n < len as usize {
                        break;
                    }
                }
                r => return Err(unexpected(r)),
            }
        }
        Ok(done)
    }
    fn fallocate(&self, ino: Ino, offset: u64, len: u64, mode: FallocMode) -> R<()> {
        let mode = match mode {
            FallocMode::Allocate { keep_size: false } => 0,
            FallocMode::Allocate { keep_size: true } => 1,
            FallocMode::ZeroRange => 2,
            FallocMode::PunchHole => 3,
        };
        ok(call(self, FsOp::Fallocate { ino: ino.0, offset, len, mode })?)
    }
    fn truncate(&self, ino: Ino, size: u64) -> R<()> {
        ok(call(self, FsOp::Truncate { ino: ino.0, size })?)
    }
    fn clone_file(&self, src: &str, dst: &str) -> R<()> {
        ok(call(self, FsOp::Clone { src: src.into(), dst: dst.into() })?)
    }
    fn defrag(&self, ino: Ino, huge: bool) -> R<DefragReport> {
        match call(self, FsOp::Defrag { ino: ino.0, huge })? {
            Reply::Defrag(d) => Ok(d),
            r => Err(unexpected(r)),
        }
    }
    fn unlink(&self, path: &str) -> R<()> {
        ok(call(self, FsOp::Unlink { path: path.into() })?)
    }
    fn rmdir(&self, path: &str) -> R<()> {
        ok(call(self, FsOp::Rmdir { path: path.into() })?)
    }
    fn rename(&self, from: &str, to: &str) -> R<()> {
        ok(call(self, FsOp::Rename { from: from.into(), to: to.into() })?)
    }
    fn mkdir(&self, path: &str) -> R<()> {
        ok(call(self, FsOp::Mkdir { path: path.into() })?)
    }
    fn stats(&self) -> R<FsStats> {
        match call(self, FsOp::Stats)? {
            Reply::Stats(s) => Ok(s),
            r => Err(unexpected(r)),
        }
    }
    fn fsck(&self) -> R<FsckReport> {
        match call(self, FsOp::Fsck)? {
            Reply::Fsck(f) => Ok(f),
            r => Err(unexpected(r)),
        }
    }
}
