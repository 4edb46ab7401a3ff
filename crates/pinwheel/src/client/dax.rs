//! File mappings in a client process: loads and stores go straight to the pool frames that hold
//! the file (DAX), with the daemon keeping them coherent with layout changes.
//!
//! A mapping is a reserved, inaccessible address range. The first access to a page faults
//! (SIGSEGV, `sys.rs`); this process's fault thread asks the daemon for the page's frame
//! (`Fault`) and maps the pool frame there (read-only after a load, writable after a store, so
//! a store to a reflinked block faults again and the daemon copies it on write); the access is
//! retried. Beyond the end of the file the daemon answers `EFAULT` and the access raises
//! SIGBUS, as on Linux. Before a layout change reuses a frame, the daemon sends a notice on
//! this process's notification socket; the notify thread makes the pages inaccessible again
//! and acknowledges, and the next access faults in the new frame.
//!
//! Races: a frame answered before an invalidation that this process has since acknowledged is
//! stale, and is not installed (the answer carries the mapping's invalidation number); one
//! answered before an invalidation not yet acknowledged may be installed, and is then removed
//! by that invalidation before the daemon lets the frame go.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use pinwheel_mm::Errno;
use pinwheel_node::channel;
use pinwheel_node::proto::{self, Notice, NoticeAck, ObjId, Reply, Request};

use super::sys;
use super::{Conn, Error, Result};

const PAGE: usize = 4096;

/// A client mapping's state in this process.
#[derive(Debug)]
pub(crate) struct LocalMap {
    pub(crate) base: usize,
    pub(crate) len: usize,
    pub(crate) writable: bool,
    pub(crate) map: ObjId,
    conn: Weak<Conn>,
    state: Mutex<LocalState>,
    region: usize,
}

#[derive(Debug, Default)]
struct LocalState {
    /// Highest invalidation acknowledged.
    acked_seq: u64,
    /// Pages mapped now: page -> writable.
    mapped: BTreeMap<u64, bool>,
}

/// Per-process fault service. Its thread and the SIGSEGV handler start at the first access
/// to a mapping, not when it is made: a process that maps and registers but never touches the
/// memory itself (a holder that forks, say) stays single-threaded.
#[derive(Debug)]
struct Service {
    pid: u32,
    regions: Mutex<HashMap<usize, Weak<LocalMap>>>,
    by_map: Mutex<HashMap<(usize, ObjId), Weak<LocalMap>>>,
    running: Mutex<bool>,
}

static SERVICE: Mutex<Option<Arc<Service>>> = Mutex::new(None);

fn io(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(Errno::EIO, format!("{what}: {e}"))
}

/// The process's fault service (made again after a fork).
fn service() -> Arc<Service> {
    let mut g = SERVICE.lock();
    if let Some(s) = g.as_ref().filter(|s| s.pid == std::process::id()) {
        return Arc::clone(s);
    }
    let s = Arc::new(Service {
        pid: std::process::id(),
        regions: Mutex::new(HashMap::new()),
        by_map: Mutex::new(HashMap::new()),
        running: Mutex::new(false),
    });
    *g = Some(Arc::clone(&s));
    s
}

impl Service {
    /// Installs the handler and starts the fault thread (once).
    fn run(self: &Arc<Self>) -> Result<()> {
        let mut running = self.running.lock();
        if *running {
            return Ok(());
        }
        sys::install_handler().map_err(|e| io("installing the fault handler", e))?;
        let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
            .map_err(|e| io("eventfd", e))?;
        use std::os::fd::AsRawFd;
        sys::EVENTFD.store(efd.as_raw_fd(), std::sync::atomic::Ordering::Release);
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("pinwheel-fault".into())
            .spawn(move || fault_thread(&me, efd))
            .map_err(|e| io("starting the fault thread", e))?;
        *running = true;
        Ok(())
    }
}

fn fault_thread(s: &Service, efd: OwnedFd) {
    let mut buf = [0u8; 8];
    loop {
        if rustix::io::read(&efd, &mut buf).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
        for slot in sys::FAULTS.iter() {
            if slot.state.load(std::sync::atomic::Ordering::Acquire) != sys::POSTED {
                continue;
            }
            let addr = slot.addr.load(std::sync::atomic::Ordering::Relaxed);
            let write = slot.write.load(std::sync::atomic::Ordering::Relaxed) != 0;
            let region = slot.region.load(std::sync::atomic::Ordering::Relaxed);
            let lm = s.regions.lock().get(&region).and_then(Weak::upgrade);
            let result = match lm {
                Some(lm) => serve_fault(&lm, addr, write),
                None => sys::DONE_SIGSEGV,
            };
            slot.state.store(result, std::sync::atomic::Ordering::Release);
            sys::futex_wake(&slot.state);
        }
    }
}

fn serve_fault(lm: &LocalMap, addr: usize, write: bool) -> u32 {
    if write && !lm.writable {
        return sys::DONE_SIGSEGV;
    }
    let Some(conn) = lm.conn.upgrade() else { return sys::DONE_SIGSEGV };
    let page = ((addr - lm.base) / PAGE) as u64;
    for _ in 0..64 {
        let r = conn.call(&Request::Fault { map: lm.map, page, write });
        match r {
            Ok(Reply::Frame { offset, seq, writable }) => {
                let mut st = lm.state.lock();
                if st.acked_seq > seq {
                    continue; // invalidated since it was answered: ask again
                }
                let at = lm.base + page as usize * PAGE;
                if let Err(e) = sys::map_frame(at, conn.pool.fd(), offset, writable) {
                    tracing::error!(error = %e, "mapping a frame");
                    return sys::DONE_SIGSEGV;
                }
                st.mapped.insert(page, writable);
                sys::FAULTS_SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return sys::DONE_OK;
            }
            Ok(_) => return sys::DONE_SIGSEGV,
            Err(e) if e.errno() == Errno::EFAULT => return sys::DONE_SIGBUS,
            Err(e) => {
                tracing::warn!(error = %e, page, "fault refused");
                return sys::DONE_SIGBUS;
            }
        }
    }
    sys::DONE_SIGBUS
}

/// The notification channel of this process on `conn`'s handle: registered once per process;
/// its reader thread starts with the first access (no frame is handed out before).
#[derive(Debug)]
pub(crate) struct Notify {
    pid: u32,
    sock: Option<OwnedFd>,
}

pub(crate) fn ensure_notify(conn: &Arc<Conn>) -> Result<()> {
    let mut n = conn.notify.lock();
    if n.as_ref().is_some_and(|n| n.pid == std::process::id()) {
        return Ok(());
    }
    let (mine, theirs) = channel::seqpacket_pair().map_err(|e| io("notify socket", e))?;
    let bytes = proto::encode(&Request::RegisterNotify)?;
    let (rmine, rtheirs) = channel::seqpacket_pair().map_err(|e| io("reply socket", e))?;
    channel::send(conn.handle_fd(), &bytes, &[rtheirs.as_fd(), theirs.as_fd()])
        .map_err(|e| io("registering notifications", e))?;
    drop((rtheirs, theirs));
    if !channel::wait_readable(rmine.as_fd(), Duration::from_secs(10))
        .map_err(|e| io("registering notifications", e))?
    {
        return Err(Error::new(Errno::ETIMEDOUT, "no answer to RegisterNotify"));
    }
    let got = channel::recv(rmine.as_fd())
        .map_err(|e| io("registering notifications", e))?
        .ok_or_else(|| Error::new(Errno::ENOTCONN, "the daemon went away"))?;
    match proto::decode::<Reply>(&got.bytes)? {
        Reply::Ok => {}
        Reply::Err(e) => return Err(e.into()),
        r => return Err(Error::new(Errno::EPROTO, format!("unexpected {r:?}"))),
    }
    *n = Some(Notify { pid: std::process::id(), sock: Some(mine) });
    Ok(())
}

/// Starts the notify thread of `conn` if it is not running.
fn run_notify(conn: &Arc<Conn>, svc: &Arc<Service>) -> Result<()> {
    let mut n = conn.notify.lock();
    let Some(sock) = n.as_mut().and_then(|n| n.sock.take()) else { return Ok(()) };
    let key = Arc::as_ptr(conn) as usize;
    let s = Arc::clone(svc);
    std::thread::Builder::new()
        .name("pinwheel-notify".into())
        .spawn(move || notify_thread(&s, key, sock))
        .map_err(|e| io("starting the notify thread", e))?;
    Ok(())
}

fn notify_thread(s: &Service, conn_key: usize, sock: OwnedFd) {
    loop {
        let got = match channel::recv(sock.as_fd()) {
            Ok(Some(g)) => g,
            Ok(None) | Err(_) => return, // the daemon or the handle is gone
        };
        let Ok(Notice::Invalidate { map, first_page, pages, seq }) = proto::decode(&got.bytes)
        else {
            continue;
        };
        let lm = s.by_map.lock().get(&(conn_key, map)).and_then(Weak::upgrade);
        if let Some(lm) = lm {
            let mut st = lm.state.lock();
            let end = first_page.saturating_add(pages);
            let hit: Vec<u64> = st.mapped.range(first_page..end).map(|(p, _)| *p).collect();
            for p in hit {
                let at = lm.base + p as usize * PAGE;
                if let Err(e) = sys::revoke(at, PAGE) {
                    tracing::error!(error = %e, "unmapping an invalidated page");
                    continue; // no acknowledgement for it: the daemon quarantines
                }
                st.mapped.remove(&p);
            }
            st.acked_seq = st.acked_seq.max(seq);
        }
        let Ok(ack) = proto::encode(&NoticeAck { seq }) else { continue };
        if channel::send(sock.as_fd(), &ack, &[]).is_err() {
            return;
        }
    }
}

impl LocalMap {
    /// Reserves the local range for mapping `map` of `len` bytes and registers it.
    pub(crate) fn new(
        conn: &Arc<Conn>,
        map: ObjId,
        len: usize,
        writable: bool,
    ) -> Result<Arc<LocalMap>> {
        let svc = service();
        let base = sys::reserve(len).map_err(|e| io("reserving address space", e))?;
        let region = {
            let regions = svc.regions.lock();
            (0..sys::MAX_REGIONS).find(|i| !regions.contains_key(i))
        };
        let Some(region) = region else {
            sys::release(base, len);
            return Err(Error::new(Errno::ENOMEM, format!("{} mappings", sys::MAX_REGIONS)));
        };
        let lm = Arc::new(LocalMap {
            base,
            len,
            writable,
            map,
            conn: Arc::downgrade(conn),
            state: Mutex::new(LocalState::default()),
            region,
        });
        svc.regions.lock().insert(region, Arc::downgrade(&lm));
        svc.by_map.lock().insert((Arc::as_ptr(conn) as usize, map), Arc::downgrade(&lm));
        sys::set_region(region, base, base + len);
        Ok(lm)
    }

    /// Makes sure faults on this mapping are served (handler, fault thread, notify thread).
    pub(crate) fn activate(&self) -> Result<()> {
        let svc = service();
        svc.run()?;
        match self.conn.upgrade() {
            Some(c) => run_notify(&c, &svc),
            None => Err(Error::new(Errno::ENOTCONN, "the context is gone")),
        }
    }

    /// Loads bytes at `off` (faults served transparently; SIGBUS beyond the end of the file).
    pub(crate) fn load(&self, off: usize, buf: &mut [u8]) -> Result<()> {
        self.activate()?;
        sys::load(self.base + off, buf);
        Ok(())
    }

    /// Stores bytes at `off`.
    pub(crate) fn store(&self, off: usize, data: &[u8]) -> Result<()> {
        self.activate()?;
        sys::store(self.base + off, data);
        Ok(())
    }

    /// Pages mapped in this process now (for tests and diagnostics).
    #[allow(dead_code)]
    pub(crate) fn resident(&self) -> usize {
        self.state.lock().mapped.len()
    }
}

impl Drop for LocalMap {
    fn drop(&mut self) {
        sys::clear_region(self.region);
        if let Some(s) = SERVICE.lock().as_ref() {
            s.regions.lock().remove(&self.region);
            s.by_map.lock().retain(|_, w| w.strong_count() > 0);
        }
        sys::release(self.base, self.len);
    }
}
