//! The node daemon (`pinwheel serve`): a node served to other processes on a Unix socket.
//!
//! ```text
//!   client process                         daemon
//!   connect(node socket) ───────────────▶  accept (bootstrap connection)
//!   Hello{label} ───────────────────────▶  socketpair (d, c); handle N over d
//!                ◀─────── Welcome + [c, pool fd]   (daemon closes its copy of c)
//!   c is the device handle: every request is a datagram on c with a reply socket attached;
//!   fork / SCM_RIGHTS copy c; when the last copy closes, d reads EOF: teardown of handle N
//! ```
//!
//! States of a handle: *open* (served by its thread), *closing* (EOF seen: objects destroyed
//! bottom-up — QPs, MRs and CQs, PDs, memory, files), *gone*. Requests that wait run on their
//! own threads and hold the handle until they finish (every wait is bounded). Stopping the
//! daemon shuts every handle socket down, which ends each handle the same way, then unmounts
//! the filesystem.
//!
//! Lease-kill (`lease-kill` policy): the filesystem asks the device's hooks to kill the holders
//! of a handle whose pin outlived the lease-break time; the hooks find them in `/proc` and send
//! SIGKILL; their exit closes the handle, which releases the pins, and the layout change goes on.

mod admin;
mod fsops;
mod handle;
mod mapping;
mod objects;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use pinwheel_fs::OwnerId;
use pinwheel_mm::{AddressSpace, Errno};
use pinwheel_verbs::{DeviceHooks, MemoryRegion, ProtectionDomain, QueuePair};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::Node;
use crate::channel;
use crate::limits::{MAX_EXPORTS, MAX_HANDLES, MAX_LABEL};
use crate::procfs;
use crate::proto::{self, ObjId, Reply, Request, WireError};

use handle::HandleState;
use objects::Obj;

/// How to serve.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// The Unix socket clients connect to.
    pub socket: PathBuf,
    /// `host:port` where remote nodes connect their QPs (clients `Accept` them).
    pub listen: Option<String>,
}

/// The default socket: `$PINWHEEL_SOCKET`, else `$XDG_RUNTIME_DIR/pinwheel.sock`, else
/// `/tmp/pinwheel-<uid>.sock`.
pub fn default_socket() -> PathBuf {
    if let Some(p) = std::env::var_os("PINWHEEL_SOCKET") {
        return PathBuf::from(p);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Path::new(&d).join("pinwheel.sock");
    }
    PathBuf::from(format!("/tmp/pinwheel-{}.sock", rustix::process::getuid().as_raw()))
}

/// Errors starting the daemon.
#[derive(thiserror::Error, Debug)]
pub enum DaemonError {
    /// Another daemon serves this socket.
    #[error("{path}: a pinwheel daemon is already serving this socket (pid {pid:?})")]
    InUse {
        /// The socket.
        path: String,
        /// Its pid if known.
        pid: Option<u32>,
    },
    /// A system call failed.
    #[error("{what} {path}: {error}")]
    Io {
        /// What.
        what: &'static str,
        /// Where.
        path: String,
        /// Why.
        #[source]
        error: std::io::Error,
    },
}

impl DaemonError {
    /// The errno at the edge.
    pub fn errno(&self) -> Errno {
        match self {
            DaemonError::InUse { .. } => Errno::EADDRINUSE,
            DaemonError::Io { error, .. } => {
                error.raw_os_error().and_then(Errno::from_code).unwrap_or(Errno::EIO)
            }
        }
    }
}

/// An exported object.
#[derive(Debug)]
enum Exported {
    Mr(Arc<MemoryRegion>),
    Pd(ProtectionDomain),
}

/// State shared by the daemon's threads.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) node: Node,
    pub(crate) handles: Mutex<BTreeMap<u64, Arc<HandleState>>>,
    /// Every QP of every handle by number (for loopback connections between handles).
    pub(crate) qps: Mutex<HashMap<u32, QueuePair>>,
    /// The TCP listener for remote nodes.
    pub(crate) listener: Option<pinwheel_verbs::transport::Listener>,
    exports: Mutex<HashMap<u64, (u64, Exported)>>,
    next_owner: AtomicU64,
    next_token: AtomicU64,
    stopping: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The running daemon. Dropping it stops it.
#[derive(Debug)]
pub struct Daemon {
    shared: Arc<Shared>,
    socket: PathBuf,
    acceptor: Option<JoinHandle<()>>,
}

/// The device's hooks: who holds a handle, and lease-kill.
#[derive(Debug)]
struct Hooks(Weak<Shared>);

impl DeviceHooks for Hooks {
    fn processes(&self, handle: u64) -> Vec<(u32, String)> {
        let Some(s) = self.0.upgrade() else { return Vec::new() };
        s.processes_of(&[handle]).remove(&handle).unwrap_or_default()
    }

    fn kill(&self, handle: u64, why: &str) -> bool {
        let procs = self.processes(handle);
        let mut any = false;
        for (pid, comm) in &procs {
            let Some(p) = rustix::process::Pid::from_raw(*pid as i32) else { continue };
            match rustix::process::kill_process(p, rustix::process::Signal::KILL) {
                Ok(()) => {
                    any = true;
                    tracing::warn!(pid, comm = %comm, handle, why, "lease-kill: killed the holder");
                }
                Err(e) => tracing::error!(pid, comm = %comm, error = %e, "lease-kill: kill failed"),
            }
        }
        any
    }
}

fn bind(path: &Path) -> Result<OwnedFd, DaemonError> {
    let shown = path.display().to_string();
    let io = |what, error| DaemonError::Io { what, path: shown.clone(), error };
    let addr = SocketAddrUnix::new(path).map_err(|e| io("socket path", e.into()))?;
    if path.exists() {
        // A live daemon answers; a stale socket file refuses the connection.
        let probe = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| io("socket", e.into()))?;
        if rustix::net::connect(&probe, &addr).is_ok() {
            let pid = rustix::net::sockopt::socket_peercred(&probe)
                .ok()
                .map(|c| c.pid.as_raw_nonzero().get() as u32);
            return Err(DaemonError::InUse { path: shown, pid });
        }
        std::fs::remove_file(path).map_err(|e| io("removing the stale socket", e))?;
    }
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| io("socket", e.into()))?;
    rustix::net::bind(&fd, &addr).map_err(|e| io("bind", e.into()))?;
    rustix::net::listen(&fd, 64).map_err(|e| io("listen", e.into()))?;
    Ok(fd)
}

impl Daemon {
    /// Serves `node` on `cfg.socket`.
    pub fn start(node: Node, cfg: DaemonConfig) -> Result<Daemon, DaemonError> {
        let listener = bind(&cfg.socket)?;
        let tcp = match &cfg.listen {
            Some(a) => Some(node.device.listen(a).map_err(|e| DaemonError::Io {
                what: "listen on",
                path: a.clone(),
                error: std::io::Error::other(e.to_string()),
            })?),
            None => None,
        };
        let shared = Arc::new(Shared {
            listener: tcp,
            node,
            handles: Mutex::new(BTreeMap::new()),
            qps: Mutex::new(HashMap::new()),
            exports: Mutex::new(HashMap::new()),
            next_owner: AtomicU64::new(1000),
            next_token: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
        });
        shared.node.device.set_hooks(Arc::new(Hooks(Arc::downgrade(&shared))));
        let sh = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("pw-accept".into())
            .spawn(move || accept_loop(&sh, listener))
            .map_err(|e| DaemonError::Io {
                what: "spawning the acceptor",
                path: cfg.socket.display().to_string(),
                error: e,
            })?;
        tracing::info!(socket = %cfg.socket.display(), "serving");
        Ok(Daemon { shared, socket: cfg.socket, acceptor: Some(acceptor) })
    }

    /// The socket served.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The node served.
    pub fn node(&self) -> &Node {
        &self.shared.node
    }

    /// The TCP address remote nodes connect to, if listening.
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.shared.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Handles open now.
    pub fn handles(&self) -> usize {
        self.shared.handles.lock().len()
    }

    /// Requests handle `handle` has sent so far (a client executing its data path through
    /// the shared tables sends none for its posts and polls).
    pub fn requests(&self, handle: u64) -> Option<u64> {
        self.shared.handles.lock().get(&handle).map(|h| h.requests.load(Ordering::Relaxed))
    }

    /// Stops: no new clients, every handle closed (objects destroyed), the filesystem
    /// unmounted and the pool flushed.
    pub fn stop(mut self) -> Result<(), pinwheel_fs::FsError> {
        self.shutdown();
        self.shared.node.fs.unmount()
    }

    fn shutdown(&mut self) {
        if self.shared.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let _ = std::fs::remove_file(&self.socket);
        let handles: Vec<Arc<HandleState>> = self.shared.handles.lock().values().cloned().collect();
        for h in &handles {
            let _ = rustix::net::shutdown(&h.sock, rustix::net::Shutdown::Both);
        }
        let threads = std::mem::take(&mut *self.shared.threads.lock());
        for t in threads {
            let _ = t.join();
        }
        tracing::info!(socket = %self.socket.display(), "stopped");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: OwnedFd) {
    while !shared.stopping.load(Ordering::Acquire) {
        // Every 100 ms at most: lift the quarantines of frames whose stalled clients left.
        shared.node.device.reap_quarantines();
        if !matches!(channel::wait_readable(listener.as_fd(), Duration::from_millis(100)), Ok(true))
        {
            continue;
        }
        let conn = match rustix::net::accept_with(&listener, SocketFlags::CLOEXEC) {
            Ok(c) => c,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "accept");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if let Err(e) = bootstrap(shared, conn) {
            tracing::warn!(error = %e, "a client could not open a handle");
        }
    }
}

/// A new client: reads its `Hello` (bounded wait), makes the handle and hands it over.
fn bootstrap(shared: &Arc<Shared>, conn: OwnedFd) -> Result<(), WireError> {
    let peer = rustix::net::sockopt::socket_peercred(&conn)
        .map(|c| c.pid.as_raw_nonzero().get() as u32)
        .ok();
    let io = |what: &str, e: std::io::Error| WireError::new(Errno::EIO, format!("{what}: {e}"));
    if !channel::wait_readable(conn.as_fd(), Duration::from_secs(5)).map_err(|e| io("wait", e))? {
        return Err(WireError::new(Errno::ETIMEDOUT, format!("pid {peer:?} sent no Hello")));
    }
    let Some(got) = channel::recv(conn.as_fd()).map_err(|e| io("recv", e))? else {
        return Ok(());
    };
    let label = match proto::decode::<Request>(&got.bytes) {
        Ok(Request::Hello { label }) if label.len() <= MAX_LABEL => label,
        Ok(_) => {
            let e = WireError::new(Errno::EPROTO, "the first request must be Hello");
            channel::answer(&conn, &Reply::Err(e.clone()), &[]);
            return Err(e);
        }
        Err(e) => {
            channel::answer(&conn, &Reply::Err(e.clone()), &[]);
            return Err(e);
        }
    };
    if shared.handles.lock().len() >= MAX_HANDLES {
        let e = WireError::new(Errno::EMFILE, format!("{MAX_HANDLES} handles are open"));
        channel::answer(&conn, &Reply::Err(e.clone()), &[]);
        return Err(e);
    }
    let (d, c) = channel::seqpacket_pair().map_err(|e| io("socketpair", e))?;
    rustix::net::sockopt::set_socket_passcred(&d, true).map_err(|e| io("passcred", e.into()))?;
    let client_ino = procfs::inode_of(c.as_fd()).map_err(|e| io("fstat", e))?;
    let comm = peer.map(procfs::comm).unwrap_or_else(|| "?".into());
    let owner = OwnerId(shared.next_owner.fetch_add(1, Ordering::Relaxed));
    let pid = peer.unwrap_or(0);
    let tag = if label == comm || label.is_empty() {
        format!("pid {pid} ({comm})")
    } else {
        format!("{label} (pid {pid} {comm})")
    };
    let ctx = shared.node.device.open_context(owner, tag.clone());
    let no = ctx.handle();
    let aspace = AddressSpace::new(&shared.node.memory);
    let state = Arc::new(HandleState::new(no, tag, client_ino, ctx, aspace, d));
    shared.handles.lock().insert(no, Arc::clone(&state));
    let welcome = Reply::Welcome(shared.welcome(no));
    channel::answer(&conn, &welcome, &[c.as_fd(), shared.node.memory.pool().fd()]);
    drop(c); // the daemon never keeps a copy of the client's end
    tracing::info!(handle = no, label = %state.label, "handle opened");
    let sh = Arc::clone(shared);
    let t = std::thread::Builder::new().name(format!("pw-h{no}")).spawn(move || {
        state.serve(&sh);
        sh.handles.lock().remove(&state.no);
        sh.exports.lock().retain(|_, (from, _)| *from != state.no);
        state.teardown(&sh);
    });
    match t {
        Ok(t) => {
            let mut threads = shared.threads.lock();
            threads.retain(|t| !t.is_finished());
            threads.push(t);
            Ok(())
        }
        Err(e) => {
            shared.handles.lock().remove(&no);
            Err(io("spawning the handle thread", e))
        }
    }
}

impl Shared {
    pub(crate) fn export(&self, hs: &HandleState, obj: ObjId) -> Result<Reply, WireError> {
        let what = {
            let objs = hs.objects.lock();
            match objs.get(obj) {
                Some(Obj::Mr { mr, .. }) => Exported::Mr(Arc::clone(mr)),
                Some(Obj::Pd(pd)) => Exported::Pd(pd.clone()),
                Some(o) => {
                    return Err(WireError::new(
                        Errno::EINVAL,
                        format!("{obj} is a {}: only PDs and MRs are shared", o.kind()),
                    ));
                }
                None => return Err(WireError::new(Errno::EBADF, format!("{obj}: no such object"))),
            }
        };
        let mut ex = self.exports.lock();
        if ex.len() >= MAX_EXPORTS {
            return Err(WireError::new(Errno::ENOMEM, format!("{MAX_EXPORTS} exports exist")));
        }
        // Unguessable enough for a local trust model: counter mixed with the clock.
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let token = (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ t).max(1);
        ex.insert(token, (hs.no, what));
        Ok(Reply::Token(token))
    }

    pub(crate) fn import(&self, hs: &HandleState, token: u64) -> Result<Reply, WireError> {
        let obj = {
            let ex = self.exports.lock();
            let (_, what) = ex.get(&token).ok_or_else(|| {
                WireError::new(
                    Errno::ENOENT,
                    format!("export token {token:#x}: none such (its exporter may have closed)"),
                )
            })?;
            match what {
                Exported::Mr(mr) => Obj::Mr { mr: Arc::clone(mr), pd: ObjId(0), imported: true },
                Exported::Pd(pd) => Obj::Pd(pd.clone()),
            }
        };
        let mr = match &obj {
            Obj::Mr { mr, .. } => Some(crate::proto::WireMr {
                id: ObjId(0),
                lkey: mr.lkey().0,
                rkey: mr.rkey().0,
                addr: mr.addr(),
                len: mr.info().len,
            }),
            _ => None,
        };
        let id = hs.insert(obj)?;
        Ok(match mr {
            Some(w) => Reply::Mr(crate::proto::WireMr { id, ..w }),
            None => Reply::Created(id),
        })
    }
}
