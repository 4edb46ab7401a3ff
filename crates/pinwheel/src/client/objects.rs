//! The objects of a connected device handle. Each holds the [`Context`] and its parents, and
//! destroys itself on the daemon when its last reference goes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use pinwheel_mm::{Errno, PoolOffset};
use pinwheel_node::convert;
use pinwheel_node::limits::{MAX_WAIT_MS, MAX_WR_PER_CALL};
use pinwheel_node::proto::{MrTarget, ObjId, Reply, Request, WireLease, WireMr, WireQpInit};
use pinwheel_verbs::{Access, Lkey, Qpn, RecvWr, Rkey, SendWr, WcOpcode, WcStatus, WorkCompletion};

use super::shm_qp::{ShmQp, cq_ring, poll_ring};
use super::{Context, Error, Result, unexpected};
use pinwheel_verbs::shm::Ring;

/// An object id and the request that destroys it.
struct Owned {
    ctx: Context,
    id: ObjId,
    destroy: fn(ObjId) -> Request,
}

impl fmt::Debug for Owned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on handle {}", self.id, self.ctx.handle_number())
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // Best effort: if the daemon is gone, so is the object.
        if let Err(e) = self.ctx.conn.call(&(self.destroy)(self.id))
            && e.errno() != Errno::ENOTCONN
        {
            tracing::debug!(id = %self.id, error = %e, "destroying an object");
        }
    }
}

fn created(r: Reply) -> Result<ObjId> {
    match r {
        Reply::Created(id) => Ok(id),
        r => Err(unexpected(r)),
    }
}

/// A protection domain.
#[derive(Clone, Debug)]
pub struct ProtectionDomain(Arc<Owned>);

pub(super) fn alloc_pd(ctx: &Context) -> Result<ProtectionDomain> {
    let id = created(ctx.conn.call(&Request::AllocPd)?)?;
    Ok(ProtectionDomain(Arc::new(Owned {
        ctx: ctx.clone(),
        id,
        destroy: |pd| Request::DeallocPd { pd },
    })))
}

pub(super) fn import_pd(ctx: &Context, token: u64) -> Result<ProtectionDomain> {
    let id = created(ctx.conn.call(&Request::Import { token })?)?;
    Ok(ProtectionDomain(Arc::new(Owned {
        ctx: ctx.clone(),
        id,
        destroy: |pd| Request::DeallocPd { pd },
    })))
}

/// Queue pair sizes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct QpInit {
    /// Send queue depth.
    pub max_send_wr: u32,
    /// Receive queue depth.
    pub max_recv_wr: u32,
    /// SGEs per work request.
    pub max_sge: u32,
    /// Inline bytes.
    pub max_inline_data: u32,
}

impl Default for QpInit {
    fn default() -> Self {
        QpInit { max_send_wr: 256, max_recv_wr: 256, max_sge: 4, max_inline_data: 64 }
    }
}

impl ProtectionDomain {
    /// Registers `[addr, addr + len)` of the handle's address space (a [`Buffer`] or a
    /// [`Mapping`]). `Access::ON_DEMAND` makes it an ODP MR.
    pub fn reg_mr(&self, addr: u64, len: u64, access: Access) -> Result<MemoryRegion> {
        let target = MrTarget::Memory { addr, len, on_demand: access.contains(Access::ON_DEMAND) };
        let access = (access - Access::ON_DEMAND).bits();
        self.reg(target, access)
    }

    /// Registers `[offset, offset + len)` of an open file (a file MR).
    pub fn reg_file_mr(
        &self,
        file: &OpenFile,
        offset: u64,
        len: u64,
        access: Access,
    ) -> Result<MemoryRegion> {
        self.reg(MrTarget::File { file: file.0.id, offset, len }, access.bits())
    }

    fn reg(&self, target: MrTarget, access: u32) -> Result<MemoryRegion> {
        let r = self.0.ctx.conn.call(&Request::RegMr { pd: self.0.id, target, access })?;
        let Reply::Mr(w) = r else { return Err(unexpected(r)) };
        Ok(MemoryRegion::new(&self.0.ctx, w, Some(self.clone())))
    }

    /// Creates a QP and connects it to QP `peer_qpn` of this node (loopback, possibly another
    /// process's): both end up in RTS.
    pub fn create_qp(
        &self,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        init: QpInit,
    ) -> Result<QueuePair> {
        let w = wire_init(send_cq, recv_cq, init);
        let r = self.0.ctx.conn.call(&Request::CreateQp { pd: self.0.id, init: w })?;
        let Reply::Qp { qp, .. } = r else { return Err(unexpected(r)) };
        QueuePair::new(self, send_cq, recv_cq, qp.id, qp.qpn, init)
    }

    /// Connects a new QP to a node's `--listen` address over TCP; returns it and the peer's
    /// private data.
    pub fn connect_tcp(
        &self,
        addr: &str,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        init: QpInit,
        access: Access,
        private: &[u8],
    ) -> Result<(QueuePair, Vec<u8>)> {
        let w = wire_init(send_cq, recv_cq, init);
        let req = Request::ConnectTcp {
            pd: self.0.id,
            init: w,
            addr: addr.to_string(),
            access: access.bits(),
            private: private.to_vec(),
        };
        let r = self.0.ctx.conn.call_waiting(&req, Duration::from_secs(10))?;
        let Reply::Qp { qp, private } = r else { return Err(unexpected(r)) };
        Ok((QueuePair::new(self, send_cq, recv_cq, qp.id, qp.qpn, init)?, private))
    }

    /// Accepts the next connection a remote node makes to this node's `--listen` address onto
    /// a new QP, waiting up to `wait`; returns it and the peer's private data.
    pub fn accept_tcp(
        &self,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        init: QpInit,
        access: Access,
        private: &[u8],
        wait: Duration,
    ) -> Result<(QueuePair, Vec<u8>)> {
        let wait = wait.min(Duration::from_millis(u64::from(MAX_WAIT_MS)));
        let req = Request::Accept {
            pd: self.0.id,
            init: wire_init(send_cq, recv_cq, init),
            access: access.bits(),
            private: private.to_vec(),
            wait_ms: wait.as_millis() as u32,
        };
        let r = self.0.ctx.conn.call_waiting(&req, wait)?;
        let Reply::Qp { qp, private } = r else { return Err(unexpected(r)) };
        Ok((QueuePair::new(self, send_cq, recv_cq, qp.id, qp.qpn, init)?, private))
    }

    /// Exports this PD for another handle to import ([`Context::import_pd`]).
    pub fn export(&self) -> Result<u64> {
        match self.0.ctx.conn.call(&Request::Export { obj: self.0.id })? {
            Reply::Token(t) => Ok(t),
            r => Err(unexpected(r)),
        }
    }
}

fn wire_init(s: &CompletionQueue, r: &CompletionQueue, i: QpInit) -> WireQpInit {
    WireQpInit {
        send_cq: s.inner.id,
        recv_cq: r.inner.id,
        max_send_wr: i.max_send_wr,
        max_recv_wr: i.max_recv_wr,
        max_sge: i.max_sge,
        max_inline_data: i.max_inline_data,
    }
}

/// A memory region.
#[derive(Clone, Debug)]
pub struct MemoryRegion {
    inner: Arc<Owned>,
    w: WireMr,
    _pd: Option<ProtectionDomain>,
}

impl MemoryRegion {
    fn new(ctx: &Context, w: WireMr, pd: Option<ProtectionDomain>) -> MemoryRegion {
        MemoryRegion {
            inner: Arc::new(Owned {
                ctx: ctx.clone(),
                id: w.id,
                destroy: |mr| Request::DeregMr { mr },
            }),
            w,
            _pd: pd,
        }
    }
    /// Local key.
    pub fn lkey(&self) -> Lkey {
        Lkey(self.w.lkey)
    }
    /// Remote key.
    pub fn rkey(&self) -> Rkey {
        Rkey(self.w.rkey)
    }
    /// First address.
    pub fn addr(&self) -> u64 {
        self.w.addr
    }
    /// Length.
    pub fn len(&self) -> u64 {
        self.w.len
    }
    /// True for a zero-length MR (never: registration refuses it).
    pub fn is_empty(&self) -> bool {
        self.w.len == 0
    }
    /// `restore_mr` after `MR_DECOHERENT`.
    pub fn restore(&self) -> Result<()> {
        match self.inner.ctx.conn.call(&Request::RestoreMr { mr: self.inner.id })? {
            Reply::Ok => Ok(()),
            r => Err(unexpected(r)),
        }
    }
    /// Exports this MR for another handle to import ([`Context::import_mr`]); the MR then
    /// lives while any handle holds it.
    pub fn export(&self) -> Result<u64> {
        match self.inner.ctx.conn.call(&Request::Export { obj: self.inner.id })? {
            Reply::Token(t) => Ok(t),
            r => Err(unexpected(r)),
        }
    }
}

pub(super) fn import_mr(ctx: &Context, token: u64) -> Result<MemoryRegion> {
    match ctx.conn.call(&Request::Import { token })? {
        Reply::Mr(w) => Ok(MemoryRegion::new(ctx, w, None)),
        r => Err(unexpected(r)),
    }
}

/// A completion queue.
#[derive(Clone, Debug)]
pub struct CompletionQueue {
    inner: Arc<Owned>,
    /// Its ring, polled directly (the shared data path).
    ring: Option<Ring>,
}

pub(super) fn create_cq(ctx: &Context, depth: u32) -> Result<CompletionQueue> {
    let id = created(ctx.conn.call(&Request::CreateCq { depth })?)?;
    let inner = Arc::new(Owned { ctx: ctx.clone(), id, destroy: |cq| Request::DestroyCq { cq } });
    let ring = match &ctx.conn.shm {
        Some(_) => match ctx.conn.call(&Request::ShmAttach { obj: id })? {
            Reply::ShmObject { ring, .. } => cq_ring(&ctx.conn.pool, PoolOffset::new(ring)),
            r => return Err(unexpected(r)),
        },
        None => None,
    };
    Ok(CompletionQueue { inner, ring })
}

impl CompletionQueue {
    /// Moves up to `out.len()` completions into `out`, waiting up to `wait` for the first.
    pub fn poll_wait(&self, out: &mut [WorkCompletion], wait: Duration) -> Result<usize> {
        if let Some(ring) = &self.ring {
            return Ok(poll_ring(&self.inner.ctx.conn, ring, out, wait));
        }
        let max = out.len().min(MAX_WR_PER_CALL) as u32;
        let wait = wait.min(Duration::from_millis(u64::from(MAX_WAIT_MS)));
        let req = Request::PollCq { cq: self.inner.id, max, wait_ms: wait.as_millis() as u32 };
        let r = self.inner.ctx.conn.call_waiting(&req, wait)?;
        let Reply::Completions(wcs) = r else { return Err(unexpected(r)) };
        for (slot, w) in out.iter_mut().zip(&wcs) {
            *slot = convert::wc_from_wire(w);
        }
        Ok(wcs.len().min(out.len()))
    }
    /// Waits up to `timeout` for a completion to be ready (without taking it); true if one
    /// is. Without the shared data path, sleeps a millisecond at most (the daemon's queue
    /// cannot be looked at without taking from it).
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        match &self.ring {
            Some(ring) => {
                let pool = &self.inner.ctx.conn.pool;
                Ok(ring.wait(pool, timeout, &mut || !ring.is_empty(pool)))
            }
            None => {
                std::thread::sleep(timeout.min(Duration::from_millis(1)));
                Ok(false)
            }
        }
    }

    /// Polls without waiting.
    pub fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize> {
        self.poll_wait(out, Duration::ZERO)
    }
    /// The next completion, waiting up to `timeout`.
    pub fn next(&self, timeout: Duration) -> Result<Option<WorkCompletion>> {
        let mut one = [blank_wc()];
        Ok((self.poll_wait(&mut one, timeout)? == 1).then_some(one[0]))
    }
}

fn blank_wc() -> WorkCompletion {
    WorkCompletion {
        wr_id: 0,
        status: WcStatus::Success,
        opcode: WcOpcode::Send,
        byte_len: 0,
        imm: None,
        qpn: Qpn(0),
    }
}

/// A queue pair (RC).
#[derive(Clone, Debug)]
pub struct QueuePair {
    /// Executed by this process through the shared tables (declared first: dropped before the
    /// daemon is asked to destroy the QP).
    shm: Option<Arc<ShmQp>>,
    inner: Arc<Owned>,
    qpn: u32,
    _deps: Arc<(ProtectionDomain, CompletionQueue, CompletionQueue)>,
}

impl QueuePair {
    fn new(
        pd: &ProtectionDomain,
        s: &CompletionQueue,
        r: &CompletionQueue,
        id: ObjId,
        qpn: u32,
        init: QpInit,
    ) -> Result<QueuePair> {
        let ctx = &pd.0.ctx;
        let inner =
            Arc::new(Owned { ctx: ctx.clone(), id, destroy: |qp| Request::DestroyQp { qp } });
        let shm = match &ctx.conn.shm {
            Some(_) => match ctx.conn.call(&Request::ShmAttach { obj: id })? {
                Reply::ShmObject { slot, .. } => {
                    Some(Arc::new(ShmQp::new(&ctx.conn, id, slot, init)?))
                }
                r => return Err(unexpected(r)),
            },
            None => None,
        };
        Ok(QueuePair { shm, inner, qpn, _deps: Arc::new((pd.clone(), s.clone(), r.clone())) })
    }
    /// The QP number.
    pub fn qpn(&self) -> Qpn {
        Qpn(self.qpn)
    }
    /// Its slot in the node's QP table, if this process executes its work through the shared
    /// tables (its executor words are there: `pinwheel::verbs::shm`).
    pub fn shm_slot(&self) -> Option<u32> {
        self.shm.as_ref().map(|q| q.slot())
    }
    /// Connects to QP `peer` of this node (both go to RTS).
    pub fn connect(&self, peer: Qpn, access: Access) -> Result<()> {
        let req = Request::ConnectQp { qp: self.inner.id, peer_qpn: peer.0, access: access.bits() };
        match self.inner.ctx.conn.call(&req)? {
            Reply::Ok => Ok(()),
            r => Err(unexpected(r)),
        }
    }
    /// Posts send work requests. To a QP of this node they are executed here, now (or kept
    /// queued here while they must wait: retried by later posts and polls).
    pub fn post_send(&self, wrs: &[SendWr]) -> Result<()> {
        if let Some(q) = &self.shm
            && let Some(own) = q.local_peer()
        {
            return q.post_send(own, wrs);
        }
        for chunk in wrs.chunks(MAX_WR_PER_CALL) {
            let wrs = chunk.iter().map(convert::send_wr_to_wire).collect();
            match self.inner.ctx.conn.call(&Request::PostSend { qp: self.inner.id, wrs })? {
                Reply::Ok => {}
                r => return Err(unexpected(r)),
            }
        }
        Ok(())
    }
    /// Posts receive work requests.
    pub fn post_recv(&self, wrs: &[RecvWr]) -> Result<()> {
        if let Some(q) = &self.shm {
            return q.post_recv(wrs);
        }
        for chunk in wrs.chunks(MAX_WR_PER_CALL) {
            let wrs = chunk.iter().map(convert::recv_wr_to_wire).collect();
            match self.inner.ctx.conn.call(&Request::PostRecv { qp: self.inner.id, wrs })? {
                Reply::Ok => {}
                r => return Err(unexpected(r)),
            }
        }
        Ok(())
    }
    /// Moves the QP to ERR (its outstanding work is flushed).
    pub fn to_error(&self) -> Result<()> {
        match self.inner.ctx.conn.call(&Request::QpToError { qp: self.inner.id })? {
            Reply::Ok => Ok(()),
            r => Err(unexpected(r)),
        }
    }
}

/// Memory of the node mapped into this process (from [`Context::alloc`]).
#[derive(Debug)]
pub struct Buffer {
    inner: Owned,
    addr: u64,
    len: u64,
    /// (pool offset, bytes) of each contiguous run of frames, in address order.
    runs: Vec<(u64, u64)>,
}

pub(super) fn alloc(ctx: &Context, len: u64) -> Result<Buffer> {
    let r = ctx.conn.call(&Request::Alloc { len })?;
    let Reply::Mapped { id, addr } = r else { return Err(unexpected(r)) };
    let inner = Owned { ctx: ctx.clone(), id, destroy: |buf| Request::Free { buf } };
    let len = len.next_multiple_of(pinwheel_mm::PAGE_SIZE);
    let r = ctx.conn.call(&Request::Frames { addr, len })?;
    let Reply::Frames(runs) = r else { return Err(unexpected(r)) };
    Ok(Buffer { inner, addr, len, runs })
}

impl Buffer {
    /// Its address in the handle's address space (what SGEs and MRs name).
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// Its length (whole pages).
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pool pieces of `[off, off + len)`.
    fn pieces(&self, off: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        if off.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(Error::new(
                Errno::EFAULT,
                format!("{off:#x}+{len:#x} is outside the {}-byte buffer", self.len),
            ));
        }
        let mut out = Vec::new();
        let (mut at, end, mut base) = (off, off + len, 0u64);
        for (p, l) in &self.runs {
            if at < end && at < base + l {
                let n = (base + l).min(end) - at;
                out.push((p + (at - base), n));
                at += n;
            }
            base += l;
        }
        Ok(out)
    }

    /// The pool pieces behind bytes `[off, off + len)`: (pool offset, bytes), in order (the
    /// frames of a buffer do not move while it lives).
    pub fn pool_pieces(&self, off: u64, len: u64) -> Result<Vec<(PoolOffset, u64)>> {
        Ok(self.pieces(off, len)?.into_iter().map(|(p, n)| (PoolOffset::new(p), n)).collect())
    }

    /// Reads bytes straight from the pool (what DMA put there).
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        let pool = &self.inner.ctx.conn.pool;
        let mut done = 0usize;
        for (p, n) in self.pieces(off, buf.len() as u64)? {
            pool.read(PoolOffset::new(p), &mut buf[done..done + n as usize])
                .map_err(|e| Error::new(e.errno(), e.to_string()))?;
            done += n as usize;
        }
        Ok(())
    }

    /// Writes bytes straight into the pool.
    pub fn write(&self, off: u64, data: &[u8]) -> Result<()> {
        let pool = &self.inner.ctx.conn.pool;
        let mut done = 0usize;
        for (p, n) in self.pieces(off, data.len() as u64)? {
            pool.write(PoolOffset::new(p), &data[done..done + n as usize])
                .map_err(|e| Error::new(e.errno(), e.to_string()))?;
            done += n as usize;
        }
        Ok(())
    }
}

/// A file mapped into this process (from [`Context::map_file`]): loads and stores go to the
/// node's frames directly.
#[derive(Debug)]
pub struct Mapping {
    // Dropped first: the local range goes before the daemon's mapping.
    local: Arc<super::dax::LocalMap>,
    /// The daemon's mapping (unmapped on drop).
    _inner: Owned,
    addr: u64,
    len: u64,
}

pub(super) fn map_file(
    ctx: &Context,
    path: &str,
    offset: u64,
    len: u64,
    write: bool,
) -> Result<Mapping> {
    super::dax::ensure_notify(&ctx.conn)?;
    let req = Request::MapFile { path: path.to_string(), offset, len, write };
    let r = ctx.conn.call(&req)?;
    let Reply::Mapped { id, addr } = r else { return Err(unexpected(r)) };
    let inner = Owned { ctx: ctx.clone(), id, destroy: |map| Request::Unmap { map } };
    let pages_len = len.next_multiple_of(pinwheel_mm::PAGE_SIZE) as usize;
    let local = super::dax::LocalMap::new(&ctx.conn, id, pages_len, write)?;
    Ok(Mapping { local, _inner: inner, addr, len })
}

impl Mapping {
    /// Its address in the handle's address space (what `reg_mr` takes).
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// Its length.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn check(&self, off: u64, n: usize) -> Result<()> {
        if off.checked_add(n as u64).is_none_or(|e| e > self.len) {
            return Err(Error::new(
                Errno::EFAULT,
                format!("{off:#x}+{n:#x} is outside the {}-byte mapping", self.len),
            ));
        }
        Ok(())
    }
    /// Loads bytes through this process's mapping (pages fault in as needed; beyond the end
    /// of the file the access raises SIGBUS, as on Linux).
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.check(off, buf.len())?;
        self.local.load(off as usize, buf)
    }
    /// Stores bytes through this process's mapping.
    pub fn write(&self, off: u64, data: &[u8]) -> Result<()> {
        self.check(off, data.len())?;
        if !self.local.writable {
            return Err(Error::new(Errno::EACCES, "the mapping is read-only"));
        }
        self.local.store(off as usize, data)
    }
    /// Pages this process has mapped now.
    pub fn resident_pages(&self) -> usize {
        self.local.resident()
    }
    /// The first byte in this process, for code that loads and stores through raw pointers
    /// (accesses beyond the end of the file raise SIGBUS). Starts the fault service.
    pub fn as_ptr(&self) -> Result<*const u8> {
        self.local.activate()?;
        Ok(self.local.base as *const u8)
    }
}

/// An open file of the node's filesystem.
#[derive(Clone, Debug)]
pub struct OpenFile(Arc<Owned>);

pub(super) fn open_file(ctx: &Context, path: &str, create: bool) -> Result<OpenFile> {
    let id = created(ctx.conn.call(&Request::OpenFile { path: path.to_string(), create })?)?;
    Ok(OpenFile(Arc::new(Owned {
        ctx: ctx.clone(),
        id,
        destroy: |file| Request::CloseFile { file },
    })))
}

impl OpenFile {
    /// Takes a layout lease; recalls arrive as `LEASE_RECALLED` events on the handle.
    /// `Unbreakable` seals the file (write lease, fallocate, downgrade).
    pub fn set_lease(&self, kind: WireLease) -> Result<()> {
        match self.0.ctx.conn.call(&Request::SetLease { file: self.0.id, kind })? {
            Reply::Ok => Ok(()),
            r => Err(unexpected(r)),
        }
    }
    /// Releases the lease.
    pub fn release_lease(&self) -> Result<()> {
        match self.0.ctx.conn.call(&Request::ReleaseLease { file: self.0.id })? {
            Reply::Ok => Ok(()),
            r => Err(unexpected(r)),
        }
    }
}
