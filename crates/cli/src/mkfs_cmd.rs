//! `pinwheel mkfs POOL --size SIZE`: formats a pool file with an empty filesystem (the
//! superblock at the start of the pool, then the reserved journal, the reference-count table,
//! the inode table and the data blocks).

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::error::CliError;
use crate::image;
use crate::size::{human, parse_size};

/// `mkfs`.
#[derive(Args, Debug)]
pub struct MkfsArgs {
    /// The pool file to format (created if missing, resized to --size).
    #[arg(value_name = "POOL")]
    pub pool: PathBuf,
    /// Pool size: 16M to 1T, a multiple of 4 KiB (K/M/G/T suffixes, or 0x hex).
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
    /// Overwrite a file that already holds a pinwheel filesystem.
    #[arg(long)]
    pub force: bool,
}

/// Runs `mkfs` and prints what it made.
pub fn run(args: MkfsArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let s = image::mkfs(&args.pool, args.size, args.force)?;
    let g = &s.geometry;
    let shown = args.pool.display();
    let io = |e| CliError::io("write", "stdout", "writing the output failed", e);
    writeln!(
        out,
        "pinwheel filesystem on {shown}: {}, {} frames of 4 KiB",
        human(s.pool_size),
        g.frames
    )
    .map_err(io)?;
    writeln!(
        out,
        "superblock frame 0, journal {} frames, reference counts {} frames, {} inodes in {} frames",
        g.journal_frames, g.rc_frames, g.inodes, g.itable_frames
    )
    .map_err(io)?;
    writeln!(
        out,
        "data from frame {}: {} blocks ({}) free",
        g.data_start(),
        s.free_blocks,
        human(s.free_blocks * pinwheel_mm::PAGE_SIZE)
    )
    .map_err(io)
}
