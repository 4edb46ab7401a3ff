//! `pinwheel mr reg ... --hold` and `pinwheel handle recv`: client processes that register a
//! file range and hold it, for administrators reproducing a problem and for tests — including
//! the Unix process semantics the 2019 debate turned on (`--fork`: a child inherits the device
//! handle and the parent exits; `--send-to`: the handle is passed with SCM_RIGHTS to a process
//! that never mapped the file, and the sender exits).

use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use pinwheel::client::{Context, LeaseKind, MemoryRegion, OpenFile};
use pinwheel::{Access, EventType};
use pinwheel_mm::Errno;
use pinwheel_node::channel;
use pinwheel_node::sys::{Forked, fork};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::admin_cmd::{client_err, connect};
use crate::error::CliError;
use crate::size::parse_size;

/// `pinwheel mr ...`.
#[derive(Args, Debug)]
pub struct MrArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: MrCommand,
}

/// MR commands.
#[derive(Subcommand, Debug)]
pub enum MrCommand {
    /// Map a file range, register it as an MR and print its keys; with --hold keep it until
    /// killed (SIGTERM/SIGINT release it cleanly; kill -9 leaves the cleanup to the daemon).
    Reg(RegArgs),
}

/// How to register.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Frames pinned long-term (the node's policy decides).
    Pinned,
    /// On-demand paging: no pins.
    Odp,
    /// Registered by file and offset.
    File,
}

/// Which lease to take first.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Lease {
    /// None.
    None,
    /// A breakable layout lease (recalls arrive as events).
    Breakable,
    /// Seal the file: write lease, fallocate, downgrade to unbreakable.
    Unbreakable,
}

/// `mr reg`.
#[derive(Args, Debug)]
pub struct RegArgs {
    /// The file (a path in the node's filesystem).
    #[arg(long)]
    file: String,
    /// First byte.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    offset: u64,
    /// Bytes (default: to the end of the file).
    #[arg(long, value_parser = parse_size)]
    length: Option<u64>,
    /// MR kind.
    #[arg(long, value_enum, default_value = "pinned")]
    kind: Kind,
    /// Lease to take before registering.
    #[arg(long, value_enum, default_value = "none")]
    lease: Lease,
    /// Keep the MR until killed, printing the handle's async events.
    #[arg(long)]
    hold: bool,
    /// Answer events as a cooperative holder: restore on MR_DECOHERENT, deregister and give the
    /// lease back on LEASE_RECALLED. Without it the holder ignores them (unresponsive).
    #[arg(long, requires = "hold")]
    cooperative: bool,
    /// Export the PD and the MR for other handles to import (prints `export pd=<token>
    /// mr=<token>`; see `Context::import_pd`/`import_mr`).
    #[arg(long)]
    export: bool,
    /// After registering, fork: the parent exits and the child holds the handle.
    #[arg(long, requires = "hold")]
    fork: bool,
    /// After registering, send the device handle over SCM_RIGHTS to `pinwheel handle recv
    /// --at PATH` and exit without closing anything else.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["hold", "fork"])]
    send_to: Option<PathBuf>,
    /// The node's socket.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

/// `pinwheel handle ...`.
#[derive(Args, Debug)]
pub struct HandleArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: HandleCommand,
}

/// Handle commands.
#[derive(Subcommand, Debug)]
pub enum HandleCommand {
    /// Wait at a Unix socket for a device handle sent with SCM_RIGHTS (`mr reg --send-to`),
    /// then hold it until killed.
    Recv(RecvArgs),
}

/// `handle recv`.
#[derive(Args, Debug)]
pub struct RecvArgs {
    /// The socket path to wait at.
    #[arg(long)]
    at: PathBuf,
    /// Give up after this many seconds without a sender.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

fn out_err(e: std::io::Error) -> CliError {
    CliError::io("write", "stdout", "writing the output failed", e)
}

/// Set by SIGTERM/SIGINT: the hold loops end and release everything.
fn stop_flag(op: &'static str) -> Result<Arc<AtomicBool>, CliError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| CliError::io(op, "signals", "installing a handler", e))?;
    }
    Ok(stop)
}

struct Held {
    mr: Option<MemoryRegion>,
    file: Option<OpenFile>,
}

/// Prints the handle's events until `stop`; a cooperative holder answers them.
fn hold(
    ctx: &Context,
    held: &mut Held,
    cooperative: bool,
    stop: &AtomicBool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    while !stop.load(Ordering::Relaxed) {
        let ev = ctx
            .get_async_event(Duration::from_millis(250))
            .map_err(|e| client_err("hold", "event", e))?;
        let Some(ev) = ev else { continue };
        writeln!(out, "event {}: {}", ev.kind.name(), ev.detail)
            .and_then(|()| out.flush())
            .map_err(out_err)?;
        if !cooperative {
            continue;
        }
        match ev.kind {
            EventType::MrDecoherent => {
                if let Some(mr) = &held.mr {
                    let r = mr.restore().map(|()| "restored".to_string());
                    let line = r.unwrap_or_else(|e| format!("restore failed: {e}"));
                    writeln!(out, "{line}").and_then(|()| out.flush()).map_err(out_err)?;
                }
            }
            EventType::LeaseRecalled => {
                held.mr = None;
                if let Some(f) = held.file.take() {
                    let _ = f.release_lease();
                }
                writeln!(out, "released the MR and the lease")
                    .and_then(|()| out.flush())
                    .map_err(out_err)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// `mr reg`.
pub fn reg(a: RegArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let stop = if a.hold { Some(stop_flag("mr reg")?) } else { None };
    let ctx = connect(&a.socket, "mr reg")?;
    let e = |e| client_err("mr reg", &a.file, e);
    let file = ctx.open_file(&a.file, false).map_err(e)?;
    let length = match a.length {
        Some(l) => l,
        None => {
            match ctx.fs(pinwheel_node::proto::FsOp::Stat { path: a.file.clone() }).map_err(e)? {
                pinwheel_node::proto::Reply::Stat(st) => st.size.saturating_sub(a.offset),
                _ => 0,
            }
        }
    };
    if length == 0 {
        return Err(CliError::Refused {
            op: "mr reg",
            target: a.file.clone(),
            errno: Errno::EINVAL,
            detail: "nothing to register: the range is empty (give --length)".into(),
        });
    }
    match a.lease {
        Lease::None => {}
        Lease::Breakable => file.set_lease(LeaseKind::Read).map_err(e)?,
        Lease::Unbreakable => file.set_lease(LeaseKind::Unbreakable).map_err(e)?,
    }
    let pd = ctx.alloc_pd().map_err(e)?;
    let (mr, _map) = match a.kind {
        Kind::File => (pd.reg_file_mr(&file, a.offset, length, Access::all_rw()).map_err(e)?, None),
        Kind::Pinned | Kind::Odp => {
            let map = ctx.map_file(&a.file, a.offset, length, true).map_err(e)?;
            let access = if a.kind == Kind::Odp {
                Access::all_rw() | Access::ON_DEMAND
            } else {
                Access::all_rw()
            };
            (pd.reg_mr(map.addr(), length, access).map_err(e)?, Some(map))
        }
    };
    writeln!(
        out,
        "MR lkey={:#x} rkey={:#x} kind={} file={} offset={} length={} handle={} pid={}",
        mr.lkey().0,
        mr.rkey().0,
        format!("{:?}", a.kind).to_lowercase(),
        a.file,
        a.offset,
        length,
        ctx.handle_number(),
        std::process::id()
    )
    .and_then(|()| out.flush())
    .map_err(out_err)?;
    if a.export {
        let pd_t = pd.export().map_err(e)?;
        let mr_t = mr.export().map_err(e)?;
        writeln!(out, "export pd={pd_t:#x} mr={mr_t:#x}")
            .and_then(|()| out.flush())
            .map_err(out_err)?;
    }
    if let Some(path) = &a.send_to {
        send_handle(&ctx, path)?;
        writeln!(out, "sent handle {} to {}", ctx.handle_number(), path.display())
            .and_then(|()| out.flush())
            .map_err(out_err)?;
        // Exit as a process does: nothing is destroyed explicitly; the receiver's copy of the
        // handle keeps every object alive.
        std::process::exit(0);
    }
    let Some(stop) = stop else { return Ok(()) };
    if a.fork {
        out.flush().map_err(out_err)?;
        match fork().map_err(|e| CliError::io("mr reg", "fork", "fork failed", e))? {
            Forked::Parent(child) => {
                writeln!(out, "forked: pid {child} holds handle {}", ctx.handle_number())
                    .and_then(|()| out.flush())
                    .map_err(out_err)?;
                // The parent exits without closing anything: the child's copy of the handle
                // keeps the MR, its pins and the lease.
                std::process::exit(0);
            }
            Forked::Child => {}
        }
    }
    let mut held = Held { mr: Some(mr), file: Some(file) };
    hold(&ctx, &mut held, a.cooperative, &stop, out)
}

fn send_handle(ctx: &Context, path: &std::path::Path) -> Result<(), CliError> {
    let shown = path.display().to_string();
    let io = |what: &str, e: std::io::Error| CliError::io("mr reg", &shown, what.to_string(), e);
    let addr = SocketAddrUnix::new(path).map_err(|e| io("socket path", e.into()))?;
    let s = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| io("socket", e.into()))?;
    rustix::net::connect(&s, &addr).map_err(|e| io("connect", e.into()))?;
    channel::send(s.as_fd(), b"pinwheel-handle", &[ctx.handle_fd()])
        .map_err(|e| io("sending the handle", e))
}

/// `handle recv`.
pub fn recv(a: RecvArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let stop = stop_flag("handle recv")?;
    let shown = a.at.display().to_string();
    let io =
        |what: &str, e: std::io::Error| CliError::io("handle recv", &shown, what.to_string(), e);
    let addr = SocketAddrUnix::new(&a.at).map_err(|e| io("socket path", e.into()))?;
    let l = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| io("socket", e.into()))?;
    let _ = std::fs::remove_file(&a.at);
    rustix::net::bind(&l, &addr).map_err(|e| io("bind", e.into()))?;
    rustix::net::listen(&l, 1).map_err(|e| io("listen", e.into()))?;
    writeln!(out, "waiting for a handle at {shown}").and_then(|()| out.flush()).map_err(out_err)?;
    if !channel::wait_readable(l.as_fd(), Duration::from_secs(a.timeout))
        .map_err(|e| io("poll", e))?
    {
        return Err(CliError::Refused {
            op: "handle recv",
            target: shown,
            errno: Errno::ETIMEDOUT,
            detail: format!("no handle arrived within {} s", a.timeout),
        });
    }
    let c =
        rustix::net::accept_with(&l, SocketFlags::CLOEXEC).map_err(|e| io("accept", e.into()))?;
    let _ = std::fs::remove_file(&a.at);
    if !channel::wait_readable(c.as_fd(), Duration::from_secs(10)).map_err(|e| io("poll", e))? {
        return Err(CliError::invalid("handle recv", &shown, "the sender sent nothing"));
    }
    let got = channel::recv(c.as_fd())
        .map_err(|e| io("recv", e))?
        .ok_or_else(|| CliError::invalid("handle recv", &shown, "the sender closed"))?;
    let fd = got
        .fds
        .into_iter()
        .next()
        .ok_or_else(|| CliError::invalid("handle recv", &shown, "no descriptor came"))?;
    let ctx = Context::from_handle(fd).map_err(|e| client_err("handle recv", &shown, e))?;
    writeln!(out, "received handle {} (pid {})", ctx.handle_number(), std::process::id())
        .and_then(|()| out.flush())
        .map_err(out_err)?;
    let mut held = Held { mr: None, file: None };
    hold(&ctx, &mut held, false, &stop, out)
}
