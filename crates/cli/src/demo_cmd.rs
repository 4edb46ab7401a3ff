//! `pinwheel demo` and the hidden `pinwheel demo-client` it starts for each run.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use pinwheel_demo::{DemoOptions, Holder, Op};
use pinwheel_fs::PinPolicy;
use pinwheel_mm::Errno;

use crate::error::CliError;

/// Every long-term pin option of the 2017-2019 debate, run on the same workloads.
///
/// For each strategy (pin policy x MR kind x victim file) and layout operation (truncate,
/// punch, reflink, defrag, unlink): a server node in this process holds a victim file between
/// canary files with little free space; a separate client process streams RDMA WRITEs of
/// self-describing records into the victim's MR over TCP; an administrator performs the
/// operation a third of the way in and then writes new data so that freed memory is reused.
/// Bytes corrupted and acknowledged writes lost are computed from the pool's contents.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Seconds of client traffic per run.
    #[arg(long, default_value_t = 1.2, value_parser = parse_seconds)]
    seconds: f64,
    /// Run only this pin policy (repeatable): unsafe, deny, fs-contract, layout-lease,
    /// lease-revoke, decohere.
    #[arg(long = "policy", value_name = "POLICY", value_parser = parse_policy)]
    policies: Vec<PinPolicy>,
    /// Run only this operation (repeatable): truncate, punch, reflink, defrag, unlink.
    #[arg(long = "op", value_name = "OP", value_parser = parse_op)]
    ops: Vec<Op>,
    /// How the server application treats the events of its MR and lease: cooperative
    /// (restores, releases) or unresponsive (ignores them).
    #[arg(long, default_value = "cooperative", value_parser = parse_holder)]
    holder: Holder,
    /// Print the runs as JSON (`{"runs": [...]}`) instead of a table.
    #[arg(long)]
    json: bool,
    /// Also draw a grid of strategies x operations coloured by outcome into this SVG file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Size of the victim file in MiB.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    victim_mib: u64,
    /// The server node's lease-break time in milliseconds (Linux's is 45 s).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    lease_break_ms: u64,
}

/// The demo's client process (started by `pinwheel demo`).
#[derive(Args, Debug)]
pub struct DemoClientArgs {
    /// The server, `host:port`.
    #[arg(long)]
    connect: String,
    /// Seconds to write.
    #[arg(long, value_parser = parse_seconds)]
    seconds: f64,
    /// Where to write the log.
    #[arg(long)]
    log: PathBuf,
    /// Work requests in flight.
    #[arg(long, default_value_t = 32)]
    queue: usize,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!("{s:?}: seconds must be a number in (0, 3600]")),
    }
}
fn parse_policy(s: &str) -> Result<PinPolicy, String> {
    s.parse()
}
fn parse_op(s: &str) -> Result<Op, String> {
    s.parse()
}
fn parse_holder(s: &str) -> Result<Holder, String> {
    s.parse()
}

fn refused(detail: String) -> CliError {
    CliError::Refused { op: "demo", target: "run".into(), errno: Errno::EIO, detail }
}

/// Runs the demo.
pub fn run(a: DemoArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let exe = std::env::current_exe().map_err(|e| CliError::Io {
        op: "demo",
        path: "pinwheel".into(),
        what: "finding this program to start the client".into(),
        error: e,
    })?;
    let opts = DemoOptions {
        seconds: a.seconds,
        policies: a.policies,
        ops: a.ops,
        holder: a.holder,
        victim_mib: a.victim_mib,
        lease_break_ms: a.lease_break_ms,
        client_exe: exe,
    };
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let report = pinwheel_demo::run(&opts, |done, total, label| {
        if tty {
            let width = 30;
            let filled = done * width / total.max(1);
            eprint!(
                "\r[{}{}] {done:>2}/{total} {label:<44}",
                "=".repeat(filled),
                " ".repeat(width - filled)
            );
            if done == total {
                eprintln!();
            }
        }
    })
    .map_err(refused)?;
    let io = |e| CliError::io("write", "stdout", "writing the output failed", e);
    if a.json {
        writeln!(out, "{}", report.json()).map_err(io)?;
    } else {
        write!(out, "{}", report.table()).map_err(io)?;
        let notes = report.notes();
        if !notes.is_empty() {
            writeln!(out, "\n{notes}").map_err(io)?;
        }
        let n = report.runs.len();
        writeln!(
            out,
            "{n} run{} in {:.1} s ({} holder).\n\
             corrupt: bytes of files other than the victim that changed; lost: acknowledged\n\
             writes missing from the victim; stall: longest gap between two successful\n\
             completions at the client; failed-clean: the client saw errors, nothing was lost.",
            if n == 1 { "" } else { "s" },
            started.elapsed().as_secs_f64(),
            opts.holder.name()
        )
        .map_err(io)?;
    }
    if let Some(path) = &a.svg {
        std::fs::write(path, report.svg()).map_err(|e| CliError::Io {
            op: "demo",
            path: path.display().to_string(),
            what: "writing the SVG".into(),
            error: e,
        })?;
    }
    Ok(())
}

/// Runs the client.
pub fn run_client(a: DemoClientArgs) -> Result<(), CliError> {
    let args = pinwheel_demo::client::ClientArgs {
        connect: a.connect,
        seconds: a.seconds,
        log: a.log,
        queue: a.queue,
    };
    pinwheel_demo::client::run(&args).map_err(|detail| CliError::Refused {
        op: "demo-client",
        target: args.connect.clone(),
        errno: Errno::EIO,
        detail,
    })
}
