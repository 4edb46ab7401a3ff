//! `pinwheel`: the command-line tool (the part of rdma-core's tools and util-linux in
//! DESIGN.md). Glue only: it parses the command line, hands each top-level subcommand to its
//! module (`demo_cmd`, `mkfs_cmd`, `fs_cmd`, `devinfo_cmd`, `perf`; later `serve`, `pins`,
//! ... as siblings), prints errors as `pinwheel: <op> <target>: <strerror> (<ERRNAME>):
//! <detail>` and maps them to exit statuses. Everything else lives in the library crates.
//!
//! Exit statuses: 0 success; 1 the operation failed; 2 the command line is wrong (clap);
//! 4 fsck found damage. No user input (bad sizes, missing or foreign files, a damaged image)
//! makes it panic.

#![forbid(unsafe_code)]

mod admin_cmd;
mod demo_cmd;
mod devinfo_cmd;
mod error;
mod fs_api;
mod fs_cmd;
mod image;
mod limits;
mod mkfs_cmd;
mod mr_cmd;
mod output;
mod perf;
mod serve_cmd;
mod size;

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::CliError;
use pinwheel_node::proto::AdminQuery;

/// The operation failed.
const EXIT_FAILED: u8 = 1;
/// fsck found damage (fsck(8)'s "errors left uncorrected").
const EXIT_DAMAGED: u8 = 4;

const ABOUT: &str =
    "pinwheel: a reference system for long-term DMA pinning (pool, DAX filesystem, RDMA verbs)";

const LONG_ABOUT: &str = "\
pinwheel is a reference system for long-term DMA pinning: a memory pool that plays physical \
(and persistent) memory, a DAX filesystem stored in that pool with layout leases, file pins and \
pin policies, and a software RDMA device whose DMA engine reads and writes the pool - the host \
stack that Linux MM, filesystem and RDMA developers designed between 2017 and 2019 (FOLL_PIN, \
FS-DAX, layout leases, recall and revoke) and never got to run. This command administers a pool \
image offline: `pinwheel mkfs` formats a pool file, and `pinwheel fs --pool POOL ...` lists, \
inspects, writes, reflinks, defragments and checks the filesystem in it while no other process \
uses it.";

const AFTER_HELP: &str = "\
Sizes, offsets and lengths accept K, M, G and T suffixes (powers of 1024) or 0x hex.
Exit status: 0 success, 1 the operation failed, 2 bad command line, 4 fsck found damage.
Errors read `pinwheel: <op> <path>: <strerror> (<ERRNAME>): <detail>`.";

/// The command line.
#[derive(Parser, Debug)]
#[command(name = "pinwheel", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// Top-level subcommands, one module each.
#[derive(Subcommand, Debug)]
enum Command {
    /// Run every long-term pin option of the debate on the same workloads and print what
    /// each costs (the main job; start here).
    Demo(demo_cmd::DemoArgs),
    /// The demo's client process (started by `pinwheel demo`).
    #[command(hide = true)]
    DemoClient(demo_cmd::DemoClientArgs),
    /// Format a pool file with an empty pinwheel filesystem.
    Mkfs(mkfs_cmd::MkfsArgs),
    /// Inspect and change the filesystem in a pool file (offline: the image is mounted for the
    /// one command and unmounted after it).
    ///
    /// Paths inside the filesystem are absolute (`/dir/file`). Every command except fsck mounts
    /// the image, so a damaged image is refused with EUCLEAN; fsck reads it raw and reports
    /// what is wrong.
    Fs(fs_cmd::FsArgs),
    /// Print the attributes of the software RDMA device, as `ibv_devinfo` does.
    ///
    /// Opens the device of a fresh node (a new memfd pool and its filesystem) and prints its
    /// name (hca_id), transport, firmware version, GUIDs, vendor ids and port 1 (state, MTU,
    /// link layer). `-v` adds the device's limits (max_mr_size, max_qp, max_qp_wr, max_sge,
    /// max_cq, max_cqe, max_mr, max_pd, max_qp_rd_atom, atomic_cap, max_srq...) and its ODP
    /// capabilities: general ones and per transport (RC: SEND, RECV, WRITE, READ, ATOMIC,
    /// SRQ_RECV; the other transports do not exist here).
    Devinfo(devinfo_cmd::DevinfoArgs),
    /// Measure the software RDMA device as perftest does (ib_{write,read,send,atomic}_{bw,lat})
    /// and the costs of coherence (reg_mr, odp_fault, lease_break, coherence_cost).
    ///
    /// Without SERVER_ADDR: the server. It listens on -p (default 18515), prints the port it
    /// waits on, serves one client and exits; it holds the MR the client writes and reads.
    /// With SERVER_ADDR: the client, which drives the run and prints the results. Transports:
    /// TCP between the two processes (default); --loopback, both sides in this process over
    /// two QPs of one device; --socket PATH, two client processes of a node daemon on the
    /// shared-memory data path. --compare puts a baseline beside each row (memcpy, raw TCP or
    /// a two-process cache-line ping-pong) and the ratio to it.
    Perf(perf::PerfArgs),
    /// Serve a node (pool, DAX filesystem, RDMA device) to client processes on a Unix socket
    /// and to remote nodes on TCP, until SIGTERM/SIGINT.
    Serve(serve_cmd::ServeArgs),
    /// Long-term file pins of a live node: file, range, the MR and device handle holding each,
    /// and the processes holding that handle (from /proc/<pid>/fd).
    Pins(admin_cmd::AdminArgs),
    /// Layout leases of a live node.
    Leases(admin_cmd::AdminArgs),
    /// Memory regions of a live node, with their handles and processes.
    Mrs(admin_cmd::AdminArgs),
    /// Device handles of a live node, the processes holding them and their objects.
    Ps(admin_cmd::AdminArgs),
    /// Register a file range as an MR from a client process (and hold it).
    Mr(mr_cmd::MrArgs),
    /// Device-handle tools (receive one passed with SCM_RIGHTS).
    Handle(mr_cmd::HandleArgs),
}

fn run(command: Command, out: &mut dyn Write) -> Result<(), CliError> {
    match command {
        Command::Demo(a) => demo_cmd::run(a, out),
        Command::DemoClient(a) => demo_cmd::run_client(a),
        Command::Mkfs(a) => mkfs_cmd::run(a, out),
        Command::Fs(a) => fs_cmd::run(a, out),
        Command::Devinfo(a) => devinfo_cmd::run(a, out),
        Command::Perf(a) => perf::run(a, out),
        Command::Serve(a) => serve_cmd::run(a, out),
        Command::Pins(a) => admin_cmd::run(AdminQuery::Pins, a, out),
        Command::Leases(a) => admin_cmd::run(AdminQuery::Leases, a, out),
        Command::Mrs(a) => admin_cmd::run(AdminQuery::Mrs, a, out),
        Command::Ps(a) => admin_cmd::run(AdminQuery::Ps, a, out),
        Command::Mr(a) => match a.command {
            mr_cmd::MrCommand::Reg(r) => mr_cmd::reg(r, out),
        },
        Command::Handle(a) => match a.command {
            mr_cmd::HandleCommand::Recv(r) => mr_cmd::recv(r, out),
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = run(cli.command, &mut out).and_then(|()| {
        out.flush().map_err(|e| CliError::io("write", "stdout", "writing the output failed", e))
    });
    let err = match result {
        Ok(()) => return ExitCode::SUCCESS,
        // The reader went away (`pinwheel ... | head`): nothing to tell it.
        Err(e) if e.is_broken_pipe() => return ExitCode::SUCCESS,
        Err(e) => e,
    };
    // Whatever the command printed comes before its error.
    let _ = out.flush();
    let _ = writeln!(io::stderr(), "pinwheel: {err}");
    match err {
        CliError::Damaged { .. } => ExitCode::from(EXIT_DAMAGED),
        _ => ExitCode::from(EXIT_FAILED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
