//! `pinwheel fs --pool POOL <command>`: offline administration of the filesystem in a pool file.
//!
//! Each command mounts the image (`image::with_mounted`), does one thing through the
//! pinwheel-fs API as the administrator (`Caller::admin()`), and unmounts, which marks the image
//! clean and flushes it. `fsck` reads the raw pool without mounting, so it works on a damaged
//! image. Paths inside the filesystem are absolute (`/dir/file`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use clap::{ArgGroup, Args, Subcommand};
use pinwheel_fs::limits::{FRAMES_PER_INODE, INODES_MIN, NAME_MAX, PATH_MAX};
use pinwheel_fs::{FallocMode, FileKind, Ino};
use pinwheel_mm::Errno;

use crate::error::{CliError, Failure};
use crate::fs_api::FsApi;
use crate::image;
use crate::limits::{HINT_DEPTH_MAX, IO_CHUNK_BYTES};
use crate::output::{self, EntryView, FsckView, LsView, StatView};
use crate::size::{human, parse_byte, parse_size};

/// Filesystem commands on a pool file.
#[derive(Args, Debug)]
pub struct FsArgs {
    /// The pool file holding the filesystem (made by `pinwheel mkfs`), mounted for this one
    /// command. No other pinwheel process may be using it.
    #[arg(long, value_name = "POOL", conflicts_with = "socket")]
    pub pool: Option<PathBuf>,
    /// Run the command on a live node through its daemon's socket instead (as a client
    /// handle: a layout change under someone's pin fails as it would for an application).
    /// Without --pool and --socket, `$PINWHEEL_SOCKET` is used if set.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: FsCommand,
}

/// The filesystem commands.
#[derive(Subcommand, Debug)]
pub enum FsCommand {
    /// List a directory: inode, size, blocks, shared (reflinked) blocks, kind and name of each
    /// entry. Given a file, list the file itself.
    Ls(LsArgs),
    /// Show a file's size, blocks, shared blocks, extents, seal, page-cache mode, links, layout
    /// leases and long-term pins.
    Stat(StatArgs),
    /// Write bytes from a local file (or stdin) or a repeated byte into a file, creating it if
    /// missing.
    Write(WriteArgs),
    /// Copy bytes of a file to stdout or to a local file.
    Read(ReadArgs),
    /// Allocate blocks for a byte range (or zero it, or punch it), like fallocate(2).
    Fallocate(FallocateArgs),
    /// Set a file's size: shrinking frees the blocks beyond it, growing leaves a hole.
    Truncate(TruncateArgs),
    /// Free the blocks of a byte range, keeping the size (FALLOC_FL_PUNCH_HOLE); partial pages
    /// at either end are zeroed.
    Punch(RangeArgs),
    /// Create DST as a reflink copy of SRC: DST shares SRC's blocks until either is written
    /// (copy-on-write).
    Clone(CloneArgs),
    /// Move a file's unshared blocks to new, contiguous blocks (content unchanged) and print
    /// what moved.
    Defrag(DefragArgs),
    /// Remove a file, or with --dir an empty directory.
    Rm(RmArgs),
    /// Rename a file or directory; an existing file at TO is replaced.
    Mv(MvArgs),
    /// Create a directory.
    Mkdir(PathArg),
    /// Check the image without mounting it: superblock, inodes, extents, reference counts,
    /// directory tree. Exits 4 if it finds damage.
    Fsck(FsckArgs),
}

/// `ls`.
#[derive(Args, Debug)]
pub struct LsArgs {
    /// The directory to list.
    #[arg(default_value = "/")]
    pub path: String,
    /// Print JSON: `{"path": ..., "entries": [{"name", "ino", "kind", "size", "blocks",
    /// "shared_blocks"}]}`.
    #[arg(long)]
    pub json: bool,
}

/// `stat`.
#[derive(Args, Debug)]
pub struct StatArgs {
    /// The file or directory.
    pub path: String,
    /// Also list the extent map (file page, pool frame, page count of each extent).
    #[arg(long)]
    pub extents: bool,
    /// Print JSON with the fields `path`, `ino`, `kind`, `size`, `blocks`, `shared_blocks`,
    /// `extents`, `sealed`, `page_cache`, `nlink`, `mtime_ns`, `leases`, `pins`.
    #[arg(long)]
    pub json: bool,
}

/// `write`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("source").required(true).args(["from", "pattern"])))]
pub struct WriteArgs {
    /// The file to write (created if missing).
    pub path: String,
    /// Where in the file to start (K/M/G suffixes accepted).
    #[arg(long, value_parser = parse_size, default_value = "0")]
    pub offset: u64,
    /// Copy the bytes of this local file; `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Write this byte (0-255 or 0x00-0xff) --length times.
    #[arg(long, value_name = "BYTE", value_parser = parse_byte, requires = "length")]
    pub pattern: Option<u8>,
    /// How many bytes of --pattern to write (K/M/G suffixes accepted).
    #[arg(long, value_name = "LENGTH", value_parser = parse_size, requires = "pattern")]
    pub length: Option<u64>,
    /// When creating the file, make it a page-cache (non-DAX) file.
    #[arg(long)]
    pub page_cache: bool,
}

/// `read`.
#[derive(Args, Debug)]
pub struct ReadArgs {
    /// The file to read.
    pub path: String,
    /// Where in the file to start (K/M/G suffixes accepted).
    #[arg(long, value_parser = parse_size, default_value = "0")]
    pub offset: u64,
    /// How many bytes at most (default: to the end of the file).
    #[arg(long, value_parser = parse_size)]
    pub length: Option<u64>,
    /// Write the bytes to this local file (created or truncated) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub to: Option<PathBuf>,
}

/// `fallocate`.
#[derive(Args, Debug)]
pub struct FallocateArgs {
    /// The file.
    pub path: String,
    /// First byte of the range (K/M/G suffixes accepted).
    #[arg(long, value_parser = parse_size, default_value = "0")]
    pub offset: u64,
    /// Bytes in the range (K/M/G suffixes accepted).
    #[arg(long, value_parser = parse_size)]
    pub length: u64,
    /// Do not grow the file's size (FALLOC_FL_KEEP_SIZE).
    #[arg(long, conflicts_with = "zero")]
    pub keep_size: bool,
    /// Zero the range, allocating where needed (FALLOC_FL_ZERO_RANGE).
    #[arg(long, conflicts_with = "punch")]
    pub zero: bool,
    /// Free the range's blocks, keeping the size (FALLOC_FL_PUNCH_HOLE).
    #[arg(long)]
    pub punch: bool,
}

/// `truncate`.
#[derive(Args, Debug)]
pub struct TruncateArgs {
    /// The file.
    pub path: String,
    /// The new size (K/M/G suffixes accepted).
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
}

/// A byte range of a file.
#[derive(Args, Debug)]
pub struct RangeArgs {
    /// The file.
    pub path: String,
    /// First byte of the range (K/M/G suffixes accepted).
    #[arg(long, value_parser = parse_size)]
    pub offset: u64,
    /// Bytes in the range (K/M/G suffixes accepted).
    #[arg(long, value_parser = parse_size)]
    pub length: u64,
}

/// `clone`.
#[derive(Args, Debug)]
pub struct CloneArgs {
    /// The file to copy.
    pub src: String,
    /// The new file (must not exist).
    pub dst: String,
}

/// `defrag`.
#[derive(Args, Debug)]
pub struct DefragArgs {
    /// The file.
    pub path: String,
    /// Prefer 2 MiB-aligned runs of blocks (huge-frame-contiguous space).
    #[arg(long)]
    pub huge: bool,
}

/// `rm`.
#[derive(Args, Debug)]
pub struct RmArgs {
    /// The file (or, with --dir, the empty directory).
    pub path: String,
    /// Remove an empty directory instead of a file.
    #[arg(long)]
    pub dir: bool,
}

/// `mv`.
#[derive(Args, Debug)]
pub struct MvArgs {
    /// The current path.
    pub from: String,
    /// The new path.
    pub to: String,
}

/// A single path.
#[derive(Args, Debug)]
pub struct PathArg {
    /// The path.
    pub path: String,
}

/// `fsck`.
#[derive(Args, Debug)]
pub struct FsckArgs {
    /// Print JSON: `clean`, `errors`, `warnings`, `files`, `dirs`, `blocks_used`,
    /// `blocks_shared`, `extents`.
    #[arg(long)]
    pub json: bool,
}

impl FsCommand {
    /// The operation's name in messages.
    fn name(&self) -> &'static str {
        match self {
            FsCommand::Ls(_) => "ls",
            FsCommand::Stat(_) => "stat",
            FsCommand::Write(_) => "write",
            FsCommand::Read(_) => "read",
            FsCommand::Fallocate(_) => "fallocate",
            FsCommand::Truncate(_) => "truncate",
            FsCommand::Punch(_) => "punch",
            FsCommand::Clone(_) => "clone",
            FsCommand::Defrag(_) => "defrag",
            FsCommand::Rm(_) => "rm",
            FsCommand::Mv(_) => "mv",
            FsCommand::Mkdir(_) => "mkdir",
            FsCommand::Fsck(_) => "fsck",
        }
    }

    /// The filesystem paths the command names.
    fn paths(&self) -> Vec<&str> {
        match self {
            FsCommand::Ls(a) => vec![&a.path],
            FsCommand::Stat(a) => vec![&a.path],
            FsCommand::Write(a) => vec![&a.path],
            FsCommand::Read(a) => vec![&a.path],
            FsCommand::Fallocate(a) => vec![&a.path],
            FsCommand::Truncate(a) => vec![&a.path],
            FsCommand::Punch(a) => vec![&a.path],
            FsCommand::Clone(a) => vec![&a.src, &a.dst],
            FsCommand::Defrag(a) => vec![&a.path],
            FsCommand::Rm(a) => vec![&a.path],
            FsCommand::Mv(a) => vec![&a.from, &a.to],
            FsCommand::Mkdir(a) => vec![&a.path],
            FsCommand::Fsck(_) => vec![],
        }
    }
}

/// Refuses a path over `PATH_MAX` before mounting: nothing can succeed with it (and the
/// filesystem's own message for it slices the path by bytes, which can split a character).
fn check_paths(cmd: &FsCommand) -> Result<(), CliError> {
    let paths = cmd.paths();
    match paths.iter().find(|p| p.len() > PATH_MAX) {
        Some(p) => Err(CliError::Refused {
            op: cmd.name(),
            target: format!("{}...", &p[..p.floor_char_boundary(64)]),
            errno: Errno::ENAMETOOLONG,
            detail: too_long(&paths).unwrap_or_default(),
        }),
        None => Ok(()),
    }
}

/// Runs a filesystem command.
pub fn run(args: FsArgs, out: &mut dyn Write) -> Result<(), CliError> {
    check_paths(&args.command)?;
    let args = match (&args.pool, &args.socket, std::env::var_os("PINWHEEL_SOCKET")) {
        (None, None, Some(env)) => FsArgs { socket: Some(PathBuf::from(env)), ..args },
        (None, None, None) => {
            return Err(CliError::invalid(
                "fs",
                args.command.name(),
                "give --pool POOL (a pool file) or --socket PATH (a live node), or set \
                 PINWHEEL_SOCKET",
            ));
        }
        _ => args,
    };
    if args.socket.is_some() {
        let ctx = crate::admin_cmd::connect(&args.socket, args.command.name())?;
        return match args.command {
            FsCommand::Fsck(a) => live_fsck(&ctx, &a, out),
            cmd => dispatch(&ctx, cmd, out),
        };
    }
    let pool = args.pool.unwrap_or_default();
    match args.command {
        FsCommand::Fsck(a) => fsck(&pool, &a, out),
        cmd => image::with_mounted(&pool, |fs| dispatch(fs, cmd, out)),
    }
}

fn dispatch(fs: &dyn FsApi, cmd: FsCommand, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        FsCommand::Ls(a) => ls(fs, &a, out),
        FsCommand::Stat(a) => stat(fs, &a, out),
        FsCommand::Write(a) => write(fs, &a, out),
        FsCommand::Read(a) => read(fs, &a, out),
        FsCommand::Fallocate(a) => {
            let mode = if a.punch {
                FallocMode::PunchHole
            } else if a.zero {
                FallocMode::ZeroRange
            } else {
                FallocMode::Allocate { keep_size: a.keep_size }
            };
            let ino = lookup(fs, "fallocate", &a.path)?;
            fs.fallocate(ino, a.offset, a.length, mode)
                .map_err(|e| fs_err(fs, "fallocate", &[&a.path], e))
        }
        FsCommand::Truncate(a) => {
            let ino = lookup(fs, "truncate", &a.path)?;
            fs.truncate(ino, a.size).map_err(|e| fs_err(fs, "truncate", &[&a.path], e))
        }
        FsCommand::Punch(a) => {
            let ino = lookup(fs, "punch", &a.path)?;
            fs.fallocate(ino, a.offset, a.length, FallocMode::PunchHole)
                .map_err(|e| fs_err(fs, "punch", &[&a.path], e))
        }
        FsCommand::Clone(a) => {
            fs.clone_file(&a.src, &a.dst).map_err(|e| fs_err(fs, "clone", &[&a.src, &a.dst], e))
        }
        FsCommand::Defrag(a) => {
            let ino = lookup(fs, "defrag", &a.path)?;
            let r = fs.defrag(ino, a.huge).map_err(|e| fs_err(fs, "defrag", &[&a.path], e))?;
            output::defrag(out, &a.path, &r).map_err(stdout_err)
        }
        FsCommand::Rm(a) => rm(fs, &a),
        FsCommand::Mv(a) => {
            fs.rename(&a.from, &a.to).map_err(|e| fs_err(fs, "mv", &[&a.from, &a.to], e))
        }
        FsCommand::Mkdir(a) => fs.mkdir(&a.path).map_err(|e| fs_err(fs, "mkdir", &[&a.path], e)),
        // Routed by `run` before mounting: fsck must work on an image mount refuses.
        FsCommand::Fsck(_) => Err(CliError::invalid("fsck", "", "fsck does not mount the image")),
    }
}

/// A filesystem error, with a hint naming the missing component (or the file in the way) when
/// a path did not resolve.
/// The first path must exist; for the others (destinations) only their parent must.
fn fs_err(fs: &dyn FsApi, op: &'static str, paths: &[&str], e: Failure) -> CliError {
    let hint = match e.errno {
        Errno::ENOENT | Errno::ENOTDIR => {
            paths.iter().enumerate().find_map(|(i, p)| missing_component(fs, p, i == 0))
        }
        Errno::ENOTEMPTY => Some("the directory has entries; remove them first".into()),
        Errno::ENAMETOOLONG => too_long(paths),
        Errno::ENOSPC => {
            // The filesystem reports a full inode table as "1 blocks needed, 0 free".
            let st = fs.stats().unwrap_or_default();
            (st.inodes_total > 0 && st.inodes_used >= st.inodes_total).then(|| {
                format!(
                    "all {} inodes are in use (the inode table is sized by mkfs: one inode per \
                     {FRAMES_PER_INODE} frames of pool, at least {INODES_MIN})",
                    st.inodes_total
                )
            })
        }
        _ => None,
    };
    CliError::fs(op, paths, e).with_hint(hint)
}

/// Names the path or component over the filesystem's limits.
fn too_long(paths: &[&str]) -> Option<String> {
    paths.iter().find_map(|p| {
        if p.len() > PATH_MAX {
            return Some(format!("a path is at most {PATH_MAX} bytes; this one is {}", p.len()));
        }
        p.split('/').find(|c| c.len() > NAME_MAX).map(|c| {
            format!(
                "a name is at most {NAME_MAX} bytes; {:?}... is {}",
                &c[..c.floor_char_boundary(16)],
                c.len()
            )
        })
    })
}

/// Walks `path` from the root and names the first component that does not exist (or the file
/// that is in the way of a directory). With `last` false, the final component is not checked.
fn missing_component(fs: &dyn FsApi, path: &str, last: bool) -> Option<String> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let n = if last { comps.len() } else { comps.len().saturating_sub(1) };
    let mut cur = String::from("/");
    for (i, c) in comps.iter().take(n.min(HINT_DEPTH_MAX)).enumerate() {
        let next = if cur == "/" { format!("/{c}") } else { format!("{cur}/{c}") };
        match fs.stat(&next) {
            Ok(st) if st.kind == FileKind::File && i + 1 < comps.len() => {
                return Some(format!("{next} is a file, not a directory"));
            }
            Ok(_) => cur = next,
            Err(e) if e.errno == Errno::ENOENT => {
                return Some(format!("no entry {c:?} in {cur}"));
            }
            Err(_) => return None,
        }
    }
    None
}

fn lookup(fs: &dyn FsApi, op: &'static str, path: &str) -> Result<Ino, CliError> {
    fs.lookup(path).map_err(|e| fs_err(fs, op, &[path], e))
}

fn stdout_err(e: io::Error) -> CliError {
    CliError::io("write", "stdout", "writing the output failed", e)
}

fn ls(fs: &dyn FsApi, a: &LsArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let err = |e| fs_err(fs, "ls", &[&a.path], e);
    let st = fs.stat(&a.path).map_err(err)?;
    let entries = if st.kind == FileKind::Dir {
        let mut v = Vec::new();
        for d in fs.readdir(&a.path).map_err(err)? {
            let est = fs.stat_ino(d.ino).map_err(err)?;
            v.push(EntryView::new(&d, &est));
        }
        v
    } else {
        vec![EntryView::of_file(&a.path, &st)]
    };
    output::emit(out, &LsView { path: a.path.clone(), entries }, a.json).map_err(stdout_err)
}

fn stat(fs: &dyn FsApi, a: &StatArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let err = |e| fs_err(fs, "stat", &[&a.path], e);
    let st = fs.stat(&a.path).map_err(err)?;
    let extents = if a.extents { Some(fs.extents(st.ino).map_err(err)?) } else { None };
    output::emit(out, &StatView::new(&a.path, &st, extents), a.json).map_err(stdout_err)
}

/// The file at `path`, created (as a page-cache file with `page_cache`) if missing.
fn open_or_create(fs: &dyn FsApi, path: &str, page_cache: bool) -> Result<Ino, CliError> {
    match fs.stat(path) {
        Ok(st) if page_cache && !st.page_cache => Err(CliError::invalid(
            "write",
            path,
            "--page-cache applies when creating a file; this one exists and is a DAX file",
        )),
        Ok(st) => Ok(st.ino),
        Err(e) if e.errno == Errno::ENOENT => {
            fs.create(path, page_cache).map_err(|e| fs_err(fs, "write", &[path], e))
        }
        Err(e) => Err(fs_err(fs, "write", &[path], e)),
    }
}

fn write(fs: &dyn FsApi, a: &WriteArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let ino = open_or_create(fs, &a.path, a.page_cache)?;
    let mut put = |at: u64, data: &[u8]| {
        fs.write(ino, at, data).map_err(|e| fs_err(fs, "write", &[&a.path], e))
    };
    let written = match (&a.from, a.pattern, a.length) {
        (Some(from), _, _) => copy_in(from, a.offset, &mut put)?,
        (None, Some(byte), Some(len)) => {
            let chunk = vec![byte; IO_CHUNK_BYTES];
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(IO_CHUNK_BYTES as u64) as usize;
                let at = a.offset.checked_add(done).ok_or_else(|| {
                    CliError::invalid("write", &a.path, "offset + length overflows")
                })?;
                put(at, &chunk[..n])?;
                done += n as u64;
            }
            done
        }
        _ => {
            return Err(CliError::invalid(
                "write",
                &a.path,
                "give --from FILE, or --pattern BYTE with --length LENGTH",
            ));
        }
    };
    writeln!(out, "wrote {} to {} at offset {}", count(written), a.path, a.offset)
        .map_err(stdout_err)
}

/// Copies a local file (or stdin for `-`) into the filesystem through `put`; returns the bytes.
fn copy_in(
    from: &Path,
    offset: u64,
    mut put: impl FnMut(u64, &[u8]) -> Result<(), CliError>,
) -> Result<u64, CliError> {
    let shown = from.display().to_string();
    let mut src: Box<dyn Read> = if from == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        Box::new(
            File::open(from).map_err(|e| CliError::io("write", &shown, "cannot open --from", e))?,
        )
    };
    let mut buf = vec![0u8; IO_CHUNK_BYTES];
    let mut done = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(done),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CliError::io("write", &shown, "reading --from failed", e)),
        };
        let at = offset
            .checked_add(done)
            .ok_or_else(|| CliError::invalid("write", &shown, "offset + length overflows"))?;
        put(at, &buf[..n])?;
        done += n as u64;
    }
}

fn read(fs: &dyn FsApi, a: &ReadArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let err = |e| fs_err(fs, "read", &[&a.path], e);
    let st = fs.stat(&a.path).map_err(err)?;
    let end = match a.length {
        Some(len) => a.offset.saturating_add(len).min(st.size),
        None => st.size,
    };
    let mut local;
    let (sink, shown): (&mut dyn Write, String) = match &a.to {
        Some(to) => {
            let shown = to.display().to_string();
            local = File::create(to)
                .map_err(|e| CliError::io("read", &shown, "cannot create --to", e))?;
            (&mut local, shown)
        }
        None => (out, "stdout".to_string()),
    };
    let mut buf = vec![0u8; IO_CHUNK_BYTES];
    let mut at = a.offset;
    while at < end {
        let want = (end - at).min(IO_CHUNK_BYTES as u64) as usize;
        let n = fs.read(st.ino, at, &mut buf[..want]).map_err(err)?;
        if n == 0 {
            break;
        }
        sink.write_all(&buf[..n])
            .map_err(|e| CliError::io("read", &shown, "writing the data failed", e))?;
        at += n as u64;
    }
    sink.flush().map_err(|e| CliError::io("read", &shown, "writing the data failed", e))
}

fn rm(fs: &dyn FsApi, a: &RmArgs) -> Result<(), CliError> {
    let r = if a.dir { fs.rmdir(&a.path) } else { fs.unlink(&a.path) };
    r.map_err(|e| {
        let is_dir = e.errno == Errno::EISDIR && !a.dir;
        let hint = is_dir.then(|| "is a directory; `rm --dir` removes an empty one".to_string());
        fs_err(fs, "rm", &[&a.path], e).with_hint(hint)
    })
}

/// fsck of a live node's filesystem, by its daemon.
fn live_fsck(ctx: &dyn FsApi, a: &FsckArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let report = ctx.fsck().map_err(|e| CliError::fs("fsck", &["(live)"], e))?;
    output::emit(out, &FsckView::new("(live node)", &report), a.json).map_err(stdout_err)?;
    if report.clean() {
        Ok(())
    } else {
        Err(CliError::Damaged { path: "(live node)".into(), errors: report.errors.len() })
    }
}

fn fsck(pool: &Path, a: &FsckArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let shown = pool.display().to_string();
    let report = image::fsck(pool)?;
    output::emit(out, &FsckView::new(&shown, &report), a.json).map_err(stdout_err)?;
    if report.clean() {
        Ok(())
    } else {
        Err(CliError::Damaged { path: shown, errors: report.errors.len() })
    }
}

/// `65536 bytes (64 KiB)`.
fn count(bytes: u64) -> String {
    if bytes < 1024 {
        format!("{bytes} bytes")
    } else {
        format!("{bytes} bytes ({})", human(bytes))
    }
}
