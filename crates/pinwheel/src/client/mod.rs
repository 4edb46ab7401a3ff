//! The connected placement: the verbs API of a node served by `pinwheel serve`, from another
//! process.
//!
//! [`Context::connect`] opens a *device handle*: a real file descriptor (a Unix socket to the
//! daemon). It survives `fork`, can be sent with `SCM_RIGHTS` ([`Context::from_handle`] on the
//! other side), and the objects created through it — PDs, MRs, CQs, QPs, buffers, mappings,
//! open files and their leases — live until the last copy of it is closed anywhere, as with
//! `/dev/infiniband/uverbs0`. Each object here also holds its parents (an MR its PD, a QP its
//! CQs), and dropping the last reference destroys it on the daemon.
//!
//! Buffers ([`Context::alloc`]) are frames of the node's pool, which this process maps through
//! the pool's file descriptor: the bytes a remote RDMA WRITE puts there are the bytes
//! [`Buffer::read`] returns, with no copy through the daemon. File mappings are served by the
//! daemon ([`Mapping::read`]).
//!
//! **The data path makes no request** when the node has a device region (`Welcome::region`):
//! completion queues are rings in the pool that [`CompletionQueue::poll`] reads, receive
//! queues rings that [`QueuePair::post_recv`] writes, and [`QueuePair::post_send`] to a QP of
//! the same node executes the transfer in this process (`engine.rs`, `shm_qp.rs`,
//! `docs/shm.md`) after checking the target in the node's shared MR and QP tables. Sends to a
//! QP of another node (TCP) still go through the daemon, whose engine executes them and
//! queues their completions on the same rings.

mod dax;
mod engine;
pub mod limits;
mod objects;
mod shm_qp;
mod sys;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pinwheel_mm::{Errno, Pool};
use pinwheel_node::channel;
use pinwheel_node::convert;
use pinwheel_node::limits::{ANSWER_MARGIN_MS, MAX_LABEL, MAX_WAIT_MS};
use pinwheel_node::proto::{self, AdminQuery, FsOp, Reply, Request, Welcome, WireError};
use pinwheel_verbs::AsyncEvent;
use pinwheel_verbs::shm::RegionView;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

pub use objects::{
    Buffer, CompletionQueue, Mapping, MemoryRegion, OpenFile, ProtectionDomain, QpInit, QueuePair,
};
pub use pinwheel_node::daemon::default_socket;
pub use pinwheel_node::proto::WireLease as LeaseKind;

/// An error of the connected API: the errno and the daemon's message (which names the
/// culprit).
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("{message} ({errno_name})")]
pub struct Error {
    errno: Errno,
    errno_name: &'static str,
    message: String,
}

impl Error {
    /// The errno.
    pub fn errno(&self) -> Errno {
        self.errno
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
    pub(crate) fn new(errno: Errno, message: impl Into<String>) -> Error {
        Error { errno, errno_name: errno.name(), message: message.into() }
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Error {
        Error::new(e.errno(), e.message)
    }
}

/// Results of the connected API.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug)]
pub(crate) struct Conn {
    handle: OwnedFd,
    pub(crate) pool: Pool,
    welcome: Welcome,
    /// This process's notification channel for file mappings (made on first use).
    pub(crate) notify: parking_lot::Mutex<Option<dax::Notify>>,
    /// The device region, if the node has one (the shared data path).
    pub(crate) shm: Option<shm_qp::Shm>,
}

fn conn(handle: OwnedFd, pool: Pool, welcome: Welcome) -> Conn {
    let shm = welcome
        .region
        .and_then(|off| RegionView::attach(&pool, pinwheel_mm::PoolOffset::new(off)))
        .map(shm_qp::Shm::new);
    Conn { handle, pool, welcome, shm, notify: parking_lot::Mutex::new(None) }
}

impl Conn {
    pub(crate) fn call_waiting(&self, req: &Request, wait: Duration) -> Result<Reply> {
        let timeout = wait + Duration::from_millis(ANSWER_MARGIN_MS);
        Ok(channel::call(self.handle.as_fd(), req, timeout)?.0)
    }
    pub(crate) fn call(&self, req: &Request) -> Result<Reply> {
        self.call_waiting(req, Duration::ZERO)
    }
    pub(crate) fn handle_fd(&self) -> BorrowedFd<'_> {
        self.handle.as_fd()
    }
}

/// A device handle on a node served by `pinwheel serve`.
#[derive(Clone, Debug)]
pub struct Context {
    pub(crate) conn: Arc<Conn>,
}

fn my_label() -> String {
    let c = pinwheel_node::procfs::comm(std::process::id());
    c[..c.floor_char_boundary(MAX_LABEL)].to_string()
}

fn unexpected(r: Reply) -> Error {
    Error::new(Errno::EPROTO, format!("unexpected answer from the node daemon: {r:?}"))
}

fn map_pool(fd: OwnedFd, w: &Welcome) -> Result<Pool> {
    let pool = Pool::from_fd(fd)
        .map_err(|e| Error::new(e.errno(), format!("mapping the node's pool: {e}")))?;
    if pool.size() != w.pool_size {
        return Err(Error::new(
            Errno::EPROTO,
            format!("the pool is {} bytes, the daemon says {}", pool.size(), w.pool_size),
        ));
    }
    Ok(pool)
}

impl Context {
    /// Opens a device handle on the node serving `socket`.
    pub fn connect(socket: impl AsRef<Path>) -> Result<Context> {
        let socket = socket.as_ref();
        let shown = socket.display().to_string();
        let addr = SocketAddrUnix::new(socket)
            .map_err(|e| Error::new(Errno::EINVAL, format!("{shown}: {e}")))?;
        let s = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| Error::new(Errno::EIO, format!("socket: {e}")))?;
        rustix::net::connect(&s, &addr).map_err(|e| {
            let errno = Errno::from_code(e.raw_os_error()).unwrap_or(Errno::EIO);
            Error::new(
                errno,
                format!(
                    "connecting to {shown}: {e} (is `pinwheel serve --socket {shown}` running?)"
                ),
            )
        })?;
        let hello = proto::encode(&Request::Hello { label: my_label() })?;
        channel::send(s.as_fd(), &hello, &[])
            .map_err(|e| Error::new(Errno::EIO, format!("{shown}: {e}")))?;
        if !channel::wait_readable(s.as_fd(), Duration::from_secs(10))
            .map_err(|e| Error::new(Errno::EIO, format!("{shown}: {e}")))?
        {
            return Err(Error::new(Errno::ETIMEDOUT, format!("{shown}: no answer to Hello")));
        }
        let got = channel::recv(s.as_fd())
            .map_err(|e| Error::new(Errno::EIO, format!("{shown}: {e}")))?
            .ok_or_else(|| Error::new(Errno::ECONNREFUSED, format!("{shown}: closed")))?;
        let w = match proto::decode::<Reply>(&got.bytes)? {
            Reply::Welcome(w) => w,
            Reply::Err(e) => return Err(e.into()),
            r => return Err(unexpected(r)),
        };
        let mut fds = got.fds.into_iter();
        let (Some(handle), Some(pool)) = (fds.next(), fds.next()) else {
            return Err(Error::new(Errno::EPROTO, "Welcome without the handle and pool"));
        };
        let pool = map_pool(pool, &w)?;
        Ok(Context { conn: Arc::new(conn(handle, pool, w)) })
    }

    /// Opens the default socket ([`default_socket`]).
    pub fn connect_default() -> Result<Context> {
        Context::connect(default_socket())
    }

    /// Uses a device handle this process inherited or received (`SCM_RIGHTS`).
    pub fn from_handle(handle: OwnedFd) -> Result<Context> {
        let (reply, fds) = channel::call(
            handle.as_fd(),
            &Request::Hello { label: my_label() },
            Duration::from_secs(10),
        )?;
        let Reply::Welcome(w) = reply else { return Err(unexpected(reply)) };
        let pool = fds
            .into_iter()
            .next()
            .ok_or_else(|| Error::new(Errno::EPROTO, "Welcome without the pool"))?;
        let pool = map_pool(pool, &w)?;
        Ok(Context { conn: Arc::new(conn(handle, pool, w)) })
    }

    /// The device handle (to `dup`, to send with `SCM_RIGHTS`, or to keep across `fork`).
    pub fn handle_fd(&self) -> BorrowedFd<'_> {
        self.conn.handle.as_fd()
    }

    /// The handle's number, as admin views and error messages name it.
    pub fn handle_number(&self) -> u64 {
        self.conn.welcome.handle
    }

    /// The node's facts.
    pub fn node(&self) -> &Welcome {
        &self.conn.welcome
    }

    /// The node's pool, as this process maps it (what buffers and the shared tables are in).
    pub fn pool(&self) -> &Pool {
        &self.conn.pool
    }

    /// The node's device region (its MR and QP tables), if it has one.
    pub fn region(&self) -> Option<RegionView> {
        self.conn.shm.as_ref().map(|s| s.region)
    }

    /// True if this handle posts, polls and executes transfers between QPs of the node
    /// through the node's shared tables (no request to the daemon on the data path).
    pub fn shared_data_path(&self) -> bool {
        self.conn.shm.is_some()
    }

    /// A protection domain.
    pub fn alloc_pd(&self) -> Result<ProtectionDomain> {
        objects::alloc_pd(self)
    }

    /// `len` bytes of the node's memory, mapped here and in the handle's address space.
    pub fn alloc(&self, len: u64) -> Result<Buffer> {
        objects::alloc(self, len)
    }

    /// Faults this process's file mappings have taken so far (each maps one frame).
    pub fn faults_served() -> u64 {
        sys::FAULTS_SERVED.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Maps `[offset, offset + len)` of a file of the node's filesystem into this process:
    /// loads and stores reach the file's frames directly and stay coherent with layout
    /// changes (an access beyond the end of the file raises SIGBUS).
    pub fn map_file(&self, path: &str, offset: u64, len: u64, write: bool) -> Result<Mapping> {
        objects::map_file(self, path, offset, len, write)
    }

    /// A completion queue.
    pub fn create_cq(&self, depth: u32) -> Result<CompletionQueue> {
        objects::create_cq(self, depth)
    }

    /// Opens a file (creating it if asked).
    pub fn open_file(&self, path: &str, create: bool) -> Result<OpenFile> {
        objects::open_file(self, path, create)
    }

    /// The next async event, waiting up to `timeout`.
    pub fn get_async_event(&self, timeout: Duration) -> Result<Option<AsyncEvent>> {
        let mut left = timeout;
        loop {
            let wait = left.min(Duration::from_millis(u64::from(MAX_WAIT_MS)));
            let wait_ms = wait.as_millis() as u32;
            match self.conn.call_waiting(&Request::GetEvent { wait_ms }, wait)? {
                Reply::Event(Some(e)) => return Ok(convert::event_from_wire(&e)),
                Reply::Event(None) if left > wait => left -= wait,
                Reply::Event(None) => return Ok(None),
                r => return Err(unexpected(r)),
            }
        }
    }

    /// `restore_mr` of the MR named by an event (`lkey`), if this handle has it.
    pub fn restore_mr_by_key(&self, mr: &MemoryRegion) -> Result<()> {
        mr.restore()
    }

    /// A filesystem operation on the node, as this handle's owner.
    pub fn fs(&self, op: FsOp) -> Result<Reply> {
        self.conn.call(&Request::Fs(op))
    }

    /// An admin view.
    pub fn admin(&self, q: AdminQuery) -> Result<Reply> {
        self.conn.call(&Request::Admin(q))
    }

    /// Imports a PD exported by another handle ([`ProtectionDomain::export`]).
    pub fn import_pd(&self, token: u64) -> Result<ProtectionDomain> {
        objects::import_pd(self, token)
    }

    /// Imports an MR exported by another handle ([`MemoryRegion::export`]).
    pub fn import_mr(&self, token: u64) -> Result<MemoryRegion> {
        objects::import_mr(self, token)
    }
}
