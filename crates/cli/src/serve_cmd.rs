//! `pinwheel serve`: run a node as a daemon for other processes (and remote nodes).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use pinwheel_fs::PinPolicy;
use pinwheel_mm::Errno;
use pinwheel_node::daemon::{Daemon, DaemonConfig, default_socket};
use pinwheel_node::{Node, NodeConfig, PoolSpec};

use crate::error::CliError;
use crate::size::parse_size;

/// Serve a node: its pool, the DAX filesystem in it and its RDMA device.
///
/// Client processes connect on a Unix socket (`--socket`, default `$PINWHEEL_SOCKET`, else
/// `$XDG_RUNTIME_DIR/pinwheel.sock`, else `/tmp/pinwheel-<uid>.sock`); each connection is a
/// device handle, a real file descriptor that survives fork and can be passed with SCM_RIGHTS.
/// Remote nodes connect their QPs to `--listen`. Logs go to stderr (`PINWHEEL_LOG=debug` for
/// more). SIGTERM or SIGINT stop it cleanly: every handle is closed, the filesystem unmounted
/// and the pool flushed.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The pool: a file (created with --size if missing), or `memfd` for memory that goes away
    /// with the daemon.
    #[arg(long, value_name = "POOL")]
    pool: String,
    /// Pool size when creating it (K, M, G suffixes).
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Format the pool (a new, empty filesystem) instead of mounting it.
    #[arg(long)]
    format: bool,
    /// The Unix socket to serve.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// `host:port` where remote nodes connect over TCP.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// The pin policy: unsafe, deny, fs-contract, layout-lease, lease-revoke, lease-kill,
    /// decohere.
    #[arg(long, default_value = "deny", value_parser = parse_policy)]
    policy: PinPolicy,
    /// Lease-break time in milliseconds (Linux: 45 s).
    #[arg(long, default_value_t = 45_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    lease_break_ms: u64,
    /// Node (device) name.
    #[arg(long, default_value = "pinwheel0")]
    name: String,
}

fn parse_policy(s: &str) -> Result<PinPolicy, String> {
    s.parse()
}

fn refused(target: &str, errno: Errno, detail: impl Into<String>) -> CliError {
    CliError::Refused { op: "serve", target: target.into(), errno, detail: detail.into() }
}

/// Logs to stderr, `PINWHEEL_LOG` (an env-filter) or `info`.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PINWHEEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(a: ServeArgs, out: &mut dyn Write) -> Result<(), CliError> {
    init_logging("info");
    let pool = if a.pool == "memfd" {
        PoolSpec::Memfd { size: a.size.unwrap_or(256 << 20) }
    } else {
        let path = PathBuf::from(&a.pool);
        if !path.exists() && a.size.is_none() {
            return Err(refused(
                &a.pool,
                Errno::ENOENT,
                "no such pool file; give --size (and --format) to create one",
            ));
        }
        PoolSpec::File { path, size: a.size }
    };
    let format = a.format || a.pool == "memfd" || !PathBuf::from(&a.pool).exists();
    let cfg = NodeConfig {
        name: a.name.clone(),
        pool,
        format,
        policy: a.policy,
        lease_break: Duration::from_millis(a.lease_break_ms),
        inodes: None,
    };
    let node = Node::new(cfg).map_err(|e| refused(&a.pool, e.errno(), e.to_string()))?;
    let socket = a.socket.clone().unwrap_or_else(default_socket);
    let shown = socket.display().to_string();
    // Signals are routed before any thread starts, so every thread inherits the handling.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| CliError::io("serve", &shown, "installing signal handlers", e))?;
    let daemon = Daemon::start(node, DaemonConfig { socket, listen: a.listen.clone() })
        .map_err(|e| refused(&shown, e.errno(), e.to_string()))?;
    let tcp = daemon.tcp_addr().map(|t| format!(", TCP {t}")).unwrap_or_default();
    writeln!(
        out,
        "pinwheel serve: node {} on {shown}{tcp} (pool {}, policy {}, lease break {} ms)",
        a.name,
        a.pool,
        a.policy.name(),
        a.lease_break_ms
    )
    .and_then(|()| out.flush())
    .map_err(|e| CliError::io("serve", "stdout", "writing", e))?;
    let sig = signals.forever().next();
    tracing::info!(signal = ?sig, "stopping");
    let handles = daemon.handles();
    daemon.stop().map_err(|e| CliError::fs("unmount", &[&a.pool], e))?;
    writeln!(out, "pinwheel serve: stopped ({handles} handle(s) closed, filesystem unmounted)")
        .map_err(|e| CliError::io("serve", "stdout", "writing", e))
}
