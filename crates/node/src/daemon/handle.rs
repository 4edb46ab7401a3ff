//! One device handle: its context, address space and objects, and the requests on it.
//!
//! Requests of one handle may come from several processes at once (the handle was inherited
//! or passed); they are served in arrival order by the handle's thread, except those that wait
//! (polls, events, layout changes that may wait for a lease break, TCP connects), which run on
//! a thread of their own so a waiting process never stalls the others
//! ([`MAX_WAITING_PER_HANDLE`] at once, then `EAGAIN`).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use pinwheel_fs::{CreateOptions, LeaseKind, OpenFile};
use pinwheel_mm::{AddressSpace, Errno, FileOffset, MmapRequest, PAGE_SIZE, Prot, VirtAddr};
use pinwheel_verbs::{Access, Context, QpCaps, QpInitAttr, QueuePair, WorkCompletion};

use crate::channel;
use crate::convert;
use crate::daemon::Shared;
use crate::daemon::fsops;
use crate::daemon::mapping::{MapWatch, NotifyChan};
use crate::daemon::objects::{Obj, Objects};
use crate::limits::{
    MAX_IO_BYTES, MAX_LABEL, MAX_NOTIFY_PER_HANDLE, MAX_WAIT_MS, MAX_WAITING_PER_HANDLE,
    MAX_WR_PER_CALL, NOTIFY_ACK_MS,
};
use crate::proto::{
    self, MrTarget, ObjId, Reply, Request, ShmReport, Welcome, WireError, WireLease, WireMr,
    WireQp, WireQpInit,
};

/// A device handle as the daemon keeps it.
#[derive(Debug)]
pub(crate) struct HandleState {
    /// Handle number (the verbs context's).
    pub(crate) no: u64,
    /// Who opened it.
    pub(crate) label: String,
    /// Inode of the client's end of the handle socket (what `/proc/<pid>/fd` shows).
    pub(crate) client_ino: u64,
    /// The verbs context.
    pub(crate) ctx: Context,
    /// The handle's address space (its buffers and file mappings).
    pub(crate) aspace: Arc<AddressSpace>,
    /// Its objects.
    pub(crate) objects: Mutex<Objects>,
    /// Requests waiting on their own threads.
    waiting: AtomicUsize,
    /// Requests received (the shared data path makes none: tests check it).
    pub(crate) requests: AtomicU64,
    /// The daemon's end of the handle socket.
    pub(crate) sock: OwnedFd,
    /// Notification sockets of the processes using the handle's file mappings, by pid.
    notifiers: Mutex<std::collections::HashMap<u32, Arc<NotifyChan>>>,
    /// Frames quarantined for processes of this handle; lifted when the handle closes.
    quarantine: Arc<Mutex<Vec<pinwheel_mm::Quarantine>>>,
}

type Answer = Result<Reply, WireError>;

fn err(errno: Errno, msg: impl Into<String>) -> WireError {
    WireError::new(errno, msg)
}
fn verr(e: pinwheel_verbs::VerbsError) -> WireError {
    WireError::new(e.errno(), e.to_string())
}
fn ferr(e: pinwheel_fs::FsError) -> WireError {
    WireError::new(e.errno(), e.to_string())
}
fn merr(e: pinwheel_mm::MmError) -> WireError {
    WireError::new(e.errno(), e.to_string())
}

/// True for requests that may wait (they run on a thread of their own).
fn waits(req: &Request) -> bool {
    match req {
        Request::PollCq { wait_ms, .. } | Request::GetEvent { wait_ms } => *wait_ms > 0,
        Request::ConnectTcp { .. } | Request::Accept { .. } => true,
        Request::Fs(_) | Request::RegMr { .. } => true,
        Request::RestoreMr { .. } | Request::Store { .. } | Request::Load { .. } => true,
        Request::SetLease { .. } | Request::OpenFile { .. } | Request::Admin(_) => true,
        Request::Fault { .. } | Request::MapFile { .. } => true,
        // A fault may wait for an invalidation holding the file's lock.
        Request::ShmReport(ShmReport::Fault { .. }) => true,
        _ => false,
    }
}

impl HandleState {
    pub(crate) fn new(
        no: u64,
        label: String,
        client_ino: u64,
        ctx: Context,
        aspace: Arc<AddressSpace>,
        sock: OwnedFd,
    ) -> HandleState {
        HandleState {
            no,
            label,
            client_ino,
            ctx,
            aspace,
            objects: Mutex::new(Objects::default()),
            waiting: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            sock,
            notifiers: Mutex::new(std::collections::HashMap::new()),
            quarantine: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Serves the handle until the last copy of the client's end is closed (or the daemon
    /// shuts the socket down).
    pub(crate) fn serve(self: &Arc<Self>, shared: &Arc<Shared>) {
        loop {
            let got = match channel::recv(self.sock.as_fd()) {
                Ok(Some(g)) => g,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(handle = self.no, error = %e, "bad datagram on handle");
                    continue;
                }
            };
            self.requests.fetch_add(1, Ordering::Relaxed);
            let mut fds = got.fds.into_iter();
            let Some(reply_to) = fds.next() else {
                tracing::warn!(handle = self.no, pid = ?got.pid, "request without a reply socket");
                continue;
            };
            let extra = fds.next(); // a notification socket (`RegisterNotify`), else dropped
            let req: Request = match proto::decode(&got.bytes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(handle = self.no, pid = ?got.pid, error = %e, "bad request");
                    channel::answer(&reply_to, &Reply::Err(e), &[]);
                    continue;
                }
            };
            if waits(&req) {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING_PER_HANDLE {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    let e = err(
                        Errno::EAGAIN,
                        format!("{MAX_WAITING_PER_HANDLE} requests of this handle are waiting"),
                    );
                    channel::answer(&reply_to, &Reply::Err(e), &[]);
                    continue;
                }
                let (me, sh) = (Arc::clone(self), Arc::clone(shared));
                let spawned = std::thread::Builder::new()
                    .name(format!("pw-h{}-wait", self.no))
                    .spawn(move || {
                        me.execute(&sh, req, &reply_to, got.pid, extra);
                        me.waiting.fetch_sub(1, Ordering::AcqRel);
                    });
                if let Err(e) = spawned {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    tracing::error!(error = %e, "cannot spawn a request thread");
                }
            } else {
                self.execute(shared, req, &reply_to, got.pid, extra);
            }
        }
    }

    fn execute(
        &self,
        shared: &Arc<Shared>,
        req: Request,
        reply_to: &OwnedFd,
        pid: Option<u32>,
        extra: Option<OwnedFd>,
    ) {
        let what = format!("{req:?}");
        let what = &what[..what.floor_char_boundary(120)];
        if let Request::Hello { label } = &req {
            if label.len() > MAX_LABEL {
                let e = err(Errno::EINVAL, format!("label over {MAX_LABEL} bytes"));
                channel::answer(reply_to, &Reply::Err(e), &[]);
                return;
            }
            tracing::debug!(handle = self.no, pid = ?pid, label, "hello");
            let w = Reply::Welcome(shared.welcome(self.no));
            channel::answer(reply_to, &w, &[shared.node.memory.pool().fd()]);
            return;
        }
        let r = match req {
            Request::RegisterNotify => self.register_notify(pid, extra),
            Request::MapFile { path, offset, len, write } => {
                self.map_file(shared, pid, &path, offset, len, write)
            }
            req => self.dispatch(shared, req),
        };
        if let Err(e) = &r {
            tracing::debug!(handle = self.no, pid = ?pid, request = what, error = %e, "refused");
        }
        channel::answer(reply_to, &r.unwrap_or_else(Reply::Err), &[]);
    }

    pub(crate) fn insert(&self, obj: Obj) -> Result<ObjId, WireError> {
        self.objects
            .lock()
            .insert(obj)
            .ok_or_else(|| err(Errno::ENOMEM, format!("handle {}: too many objects", self.no)))
    }

    fn lookup<T>(
        &self,
        id: ObjId,
        what: &str,
        f: impl FnOnce(&Obj) -> Option<T>,
    ) -> Result<T, WireError> {
        let objs = self.objects.lock();
        let o = objs
            .get(id)
            .ok_or_else(|| err(Errno::EBADF, format!("{what} {id}: no such object")))?;
        let kind = o.kind();
        f(o).ok_or_else(|| err(Errno::EBADF, format!("{what} {id}: is a {kind}")))
    }

    pub(crate) fn pd(&self, id: ObjId) -> Result<pinwheel_verbs::ProtectionDomain, WireError> {
        self.lookup(id, "PD", |o| match o {
            Obj::Pd(p) => Some(p.clone()),
            _ => None,
        })
    }
    fn cq(&self, id: ObjId) -> Result<pinwheel_verbs::CompletionQueue, WireError> {
        self.lookup(id, "CQ", |o| match o {
            Obj::Cq(c) => Some(c.clone()),
            _ => None,
        })
    }
    fn qp(&self, id: ObjId) -> Result<QueuePair, WireError> {
        self.lookup(id, "QP", |o| match o {
            Obj::Qp { qp, .. } => Some(qp.clone()),
            _ => None,
        })
    }
    fn file(&self, id: ObjId) -> Result<Arc<OpenFile>, WireError> {
        self.lookup(id, "file", |o| match o {
            Obj::File(f) => Some(Arc::clone(f)),
            _ => None,
        })
    }
    pub(crate) fn mr(&self, id: ObjId) -> Result<Arc<pinwheel_verbs::MemoryRegion>, WireError> {
        self.lookup(id, "MR", |o| match o {
            Obj::Mr { mr, .. } => Some(Arc::clone(mr)),
            _ => None,
        })
    }

    /// A QP connected over TCP (either side): the handle's object, the node's by number.
    fn adopt_qp(
        &self,
        shared: &Arc<Shared>,
        qp: pinwheel_verbs::QueuePair,
        pd: ObjId,
        init: &WireQpInit,
        peer_private: Vec<u8>,
    ) -> Answer {
        let qpn = qp.qpn().0;
        let cqs = [init.send_cq, init.recv_cq];
        let id = self.insert(Obj::Qp { qp: qp.clone(), pd, cqs })?;
        shared.qps.lock().insert(qpn, qp);
        Ok(Reply::Qp { qp: WireQp { id, qpn }, private: peer_private })
    }

    fn qp_init(&self, i: &WireQpInit) -> Result<QpInitAttr, WireError> {
        Ok(QpInitAttr {
            send_cq: self.cq(i.send_cq)?,
            recv_cq: self.cq(i.recv_cq)?,
            srq: None,
            caps: QpCaps {
                max_send_wr: i.max_send_wr,
                max_recv_wr: i.max_recv_wr,
                max_send_sge: i.max_sge,
                max_recv_sge: i.max_sge,
                max_inline_data: i.max_inline_data,
            },
        })
    }

    fn dispatch(&self, shared: &Arc<Shared>, req: Request) -> Answer {
        let fs = &shared.node.fs;
        let caller = self.ctx.caller();
        match req {
            Request::Hello { .. } => Ok(Reply::Ok),
            Request::AllocPd => Ok(Reply::Created(self.insert(Obj::Pd(self.ctx.alloc_pd()))?)),
            Request::DeallocPd { pd } => {
                let mut objs = self.objects.lock();
                match objs.get(pd) {
                    Some(Obj::Pd(_)) => {}
                    Some(o) => return Err(err(Errno::EBADF, format!("{pd} is a {}", o.kind()))),
                    None => return Err(err(Errno::EBADF, format!("PD {pd}: no such object"))),
                }
                let users = objs
                    .iter()
                    .filter(|(_, o)| matches!(o, Obj::Mr { pd: p, .. } | Obj::Qp { pd: p, .. } if *p == pd))
                    .count();
                if users > 0 {
                    return Err(err(
                        Errno::EBUSY,
                        format!("PD {pd} still has {users} MR(s)/QP(s): destroy them first"),
                    ));
                }
                objs.remove(pd);
                Ok(Reply::Ok)
            }
            Request::Alloc { len } => {
                if len == 0 || len > shared.node.memory.pool().size() {
                    return Err(err(Errno::EINVAL, format!("alloc of {len} bytes")));
                }
                let addr = self.aspace.mmap_anonymous(len).map_err(merr)?;
                // Touch every page now: the buffer's frames are what the client reaches through
                // the pool mapping.
                let len_pages = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
                if let Err(e) = self.aspace.write(addr, &vec![0u8; len_pages as usize]) {
                    let _ = self.aspace.munmap(addr, len_pages);
                    return Err(merr(e));
                }
                let id = self.insert(Obj::Buffer { addr: addr.raw(), len: len_pages })?;
                Ok(Reply::Mapped { id, addr: addr.raw() })
            }
            Request::Free { buf } | Request::Unmap { map: buf } => {
                let (addr, len) = self.lookup(buf, "buffer", |o| match o {
                    Obj::Buffer { addr, len } | Obj::Mapping { addr, len, .. } => {
                        Some((*addr, *len))
                    }
                    _ => None,
                })?;
                self.aspace.munmap(VirtAddr::new(addr), len).map_err(merr)?;
                self.objects.lock().remove(buf);
                Ok(Reply::Ok)
            }
            Request::RegisterNotify | Request::MapFile { .. } => Ok(Reply::Ok), // in execute
            Request::Fault { map, page, write } => {
                let w = self.lookup(map, "mapping", |o| match o {
                    Obj::Mapping { watch, .. } => watch.clone(),
                    _ => None,
                })?;
                let (offset, seq, writable) = w.fault(page, write)?;
                Ok(Reply::Frame { offset, seq, writable })
            }
            Request::Load { addr, len } => {
                if len > MAX_IO_BYTES {
                    return Err(err(
                        Errno::EINVAL,
                        format!("load of {len} > {MAX_IO_BYTES} bytes"),
                    ));
                }
                let mut b = vec![0u8; len as usize];
                self.aspace.read(VirtAddr::new(addr), &mut b).map_err(merr)?;
                Ok(Reply::Data(b))
            }
            Request::Store { addr, data } => {
                self.aspace.write(VirtAddr::new(addr), &data).map_err(merr)?;
                Ok(Reply::Ok)
            }
            Request::Frames { addr, len } => self.frames(addr, len),
            Request::RegMr { pd, target, access } => self.reg_mr(shared, pd, target, access),
            Request::DeregMr { mr } => {
                self.lookup(mr, "MR", |o| matches!(o, Obj::Mr { .. }).then_some(()))?;
                let gone = self.objects.lock().remove(mr);
                drop(gone); // deregistration drains in-flight DMA: outside the table lock
                Ok(Reply::Ok)
            }
            Request::RestoreMr { mr } => {
                self.mr(mr)?.restore().map_err(verr)?;
                Ok(Reply::Ok)
            }
            Request::CreateCq { depth } => {
                let cq = self.ctx.create_cq(depth as usize).map_err(verr)?;
                Ok(Reply::Created(self.insert(Obj::Cq(cq))?))
            }
            Request::DestroyCq { cq } => {
                self.cq(cq)?;
                let mut objs = self.objects.lock();
                let users = objs
                    .iter()
                    .filter(|(_, o)| matches!(o, Obj::Qp { cqs, .. } if cqs.contains(&cq)))
                    .count();
                if users > 0 {
                    return Err(err(Errno::EBUSY, format!("CQ {cq} is used by {users} QP(s)")));
                }
                objs.remove(cq);
                Ok(Reply::Ok)
            }
            Request::CreateQp { pd, init } => {
                let p = self.pd(pd)?;
                let qp = p.create_qp(self.qp_init(&init)?).map_err(verr)?;
                let qpn = qp.qpn().0;
                let cqs = [init.send_cq, init.recv_cq];
                let id = self.insert(Obj::Qp { qp: qp.clone(), pd, cqs })?;
                shared.qps.lock().insert(qpn, qp);
                Ok(Reply::Qp { qp: WireQp { id, qpn }, private: Vec::new() })
            }
            Request::ConnectQp { qp, peer_qpn, access } => {
                let me = self.qp(qp)?;
                let access = access_flags(access)?;
                let peer = shared.qps.lock().get(&peer_qpn).cloned().ok_or_else(|| {
                    err(Errno::ENOENT, format!("QP {peer_qpn:#x}: no such QP on this node"))
                })?;
                me.connect_local(&peer, access).map_err(verr)?;
                Ok(Reply::Ok)
            }
            Request::ConnectTcp { pd, init, addr, access, private } => {
                let p = self.pd(pd)?;
                let access = access_flags(access)?;
                let (qp, peer_private) = p
                    .connect(&addr, self.qp_init(&init)?, access, &private, Duration::from_secs(10))
                    .map_err(verr)?;
                self.adopt_qp(shared, qp, pd, &init, peer_private)
            }
            Request::Accept { pd, init, access, private, wait_ms } => {
                let p = self.pd(pd)?;
                let access = access_flags(access)?;
                let listener = shared.listener.as_ref().ok_or_else(|| {
                    err(Errno::ENOTCONN, "the daemon was started without --listen")
                })?;
                let wait = Duration::from_millis(u64::from(wait_ms.min(MAX_WAIT_MS)));
                let (qp, peer_private) = listener
                    .accept(&p, self.qp_init(&init)?, access, &private, wait)
                    .map_err(verr)?;
                self.adopt_qp(shared, qp, pd, &init, peer_private)
            }
            Request::QpToError { qp } => {
                let q = self.qp(qp)?;
                let attr = pinwheel_verbs::QpAttr {
                    qp_state: pinwheel_verbs::QpState::Error,
                    ..Default::default()
                };
                q.modify(&attr, pinwheel_verbs::QpAttrMask::STATE).map_err(verr)?;
                Ok(Reply::Ok)
            }
            Request::DestroyQp { qp } => {
                let q = self.qp(qp)?;
                shared.qps.lock().remove(&q.qpn().0);
                let gone = self.objects.lock().remove(qp);
                drop(gone);
                Ok(Reply::Ok)
            }
            Request::PostSend { qp, wrs } => {
                if wrs.len() > MAX_WR_PER_CALL {
                    return Err(err(Errno::EINVAL, format!("over {MAX_WR_PER_CALL} WRs")));
                }
                let q = self.qp(qp)?;
                let wrs = wrs
                    .into_iter()
                    .map(convert::send_wr_from_wire)
                    .collect::<Result<Vec<_>, _>>()?;
                q.post_send(&wrs).map_err(verr)?;
                Ok(Reply::Ok)
            }
            Request::PostRecv { qp, wrs } => {
                if wrs.len() > MAX_WR_PER_CALL {
                    return Err(err(Errno::EINVAL, format!("over {MAX_WR_PER_CALL} WRs")));
                }
                let q = self.qp(qp)?;
                let wrs: Vec<_> = wrs.iter().map(convert::recv_wr_from_wire).collect();
                q.post_recv(&wrs).map_err(verr)?;
                Ok(Reply::Ok)
            }
            Request::PollCq { cq, max, wait_ms } => {
                let c = self.cq(cq)?;
                let max = (max as usize).clamp(1, MAX_WR_PER_CALL);
                let mut out = vec![WorkCompletion::default_for_poll(); max];
                let mut n = c.poll(&mut out);
                if n == 0 && wait_ms > 0 {
                    c.wait(Duration::from_millis(u64::from(wait_ms.min(MAX_WAIT_MS))));
                    n = c.poll(&mut out);
                }
                Ok(Reply::Completions(out[..n].iter().map(convert::wc_to_wire).collect()))
            }
            Request::GetEvent { wait_ms } => {
                let wait = Duration::from_millis(u64::from(wait_ms.min(MAX_WAIT_MS)));
                Ok(Reply::Event(self.ctx.get_async_event(wait).map(|e| convert::event_to_wire(&e))))
            }
            Request::OpenFile { path, create } => {
                let open = match fs.open(&path, &caller) {
                    Err(e) if create && e.errno() == Errno::ENOENT => {
                        fs.create(&path, CreateOptions::default()).map_err(ferr)?;
                        fs.open(&path, &caller)
                    }
                    r => r,
                }
                .map_err(ferr)?;
                Ok(Reply::Created(self.insert(Obj::File(Arc::new(open)))?))
            }
            Request::CloseFile { file } => {
                self.file(file)?;
                let gone = self.objects.lock().remove(file);
                drop(gone);
                Ok(Reply::Ok)
            }
            Request::SetLease { file, kind } => {
                let f = self.file(file)?;
                match kind {
                    WireLease::Unbreakable => f.seal().map(|_| ()),
                    WireLease::Read => {
                        f.set_lease(LeaseKind::Read, Some(self.ctx.lease_holder())).map(|_| ())
                    }
                    WireLease::Write => {
                        f.set_lease(LeaseKind::Write, Some(self.ctx.lease_holder())).map(|_| ())
                    }
                }
                .map_err(ferr)?;
                Ok(Reply::Ok)
            }
            Request::ReleaseLease { file } => {
                self.file(file)?.release_lease().map_err(ferr)?;
                Ok(Reply::Ok)
            }
            Request::Fs(op) => fsops::run(fs, &caller, op),
            Request::Admin(q) => Ok(super::admin::view(shared, q)),
            Request::Export { obj } => shared.export(self, obj),
            Request::Import { token } => shared.import(self, token),
            Request::ShmAttach { obj } => self.shm_attach(obj),
            Request::ShmReport(r) => self.shm_report(shared, r),
        }
    }

    fn register_notify(&self, pid: Option<u32>, sock: Option<OwnedFd>) -> Answer {
        let (Some(pid), Some(sock)) = (pid, sock) else {
            return Err(err(
                Errno::EINVAL,
                "RegisterNotify needs the notification socket attached",
            ));
        };
        let mut n = self.notifiers.lock();
        if n.len() >= MAX_NOTIFY_PER_HANDLE && !n.contains_key(&pid) {
            return Err(err(Errno::EMFILE, format!("{MAX_NOTIFY_PER_HANDLE} processes notified")));
        }
        n.insert(pid, Arc::new(NotifyChan::new(pid, sock)));
        Ok(Reply::Ok)
    }

    /// Maps a file range in the handle's address space; when the asking process registered a
    /// notification socket it may map the frames itself (`Fault`), and layout changes take
    /// them back through it.
    fn map_file(
        &self,
        shared: &Arc<Shared>,
        pid: Option<u32>,
        path: &str,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Answer {
        let fs = &shared.node.fs;
        let ino = fs.lookup(path).map_err(ferr)?;
        let backing = fs.backing(ino).map_err(ferr)?;
        let prot = if write { Prot::READ | Prot::WRITE } else { Prot::READ };
        let req = MmapRequest::file(backing, FileOffset::new(offset), len).prot(prot);
        let addr = self.aspace.mmap(req).map_err(merr)?;
        let len = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let chan = pid.and_then(|p| self.notifiers.lock().get(&p).cloned());
        let watch = match chan {
            Some(chan) => match MapWatch::start(
                addr.raw(),
                len / PAGE_SIZE,
                chan,
                Arc::clone(&self.aspace),
                Arc::clone(&shared.node.memory),
                Arc::clone(&self.quarantine),
                Duration::from_millis(NOTIFY_ACK_MS),
            ) {
                Ok(w) => Some(w),
                Err(e) => {
                    let _ = self.aspace.munmap(addr, len);
                    return Err(e);
                }
            },
            None => None,
        };
        let id = match self.insert(Obj::Mapping { addr: addr.raw(), len, watch: watch.clone() }) {
            Ok(id) => id,
            Err(e) => {
                let _ = self.aspace.munmap(addr, len);
                return Err(e);
            }
        };
        if let Some(w) = watch {
            w.set_id(id);
        }
        Ok(Reply::Mapped { id, addr: addr.raw() })
    }

    fn shm_attach(&self, obj: ObjId) -> Answer {
        let objs = self.objects.lock();
        match objs.get(obj) {
            Some(Obj::Cq(c)) => Ok(Reply::ShmObject { slot: 0, ring: c.ring_offset().raw() }),
            Some(Obj::Qp { qp, .. }) => match qp.slot() {
                Some(slot) => Ok(Reply::ShmObject { slot, ring: 0 }),
                None => Err(err(Errno::EOPNOTSUPP, format!("QP {obj} has no shared slot"))),
            },
            Some(o) => Err(err(Errno::EINVAL, format!("{obj} is a {}: no shared form", o.kind()))),
            None => Err(err(Errno::EBADF, format!("{obj}: no such object"))),
        }
    }

    fn shm_report(&self, shared: &Arc<Shared>, r: ShmReport) -> Answer {
        match r {
            ShmReport::ResponderError { qp, status } => {
                let s = pinwheel_verbs::WcStatus::from_u8(status)
                    .ok_or_else(|| err(Errno::EINVAL, format!("status {status}")))?;
                self.qp(qp)?.report_responder_error(s).map_err(verr)?;
            }
            ShmReport::CqOverflow { qpn, recv } => {
                let q = shared.qps.lock().get(&qpn).cloned();
                q.ok_or_else(|| err(Errno::ENOENT, format!("QP {qpn:#x}: none such")))?
                    .report_cq_overflow(recv);
            }
            ShmReport::Fault { key, off, len, write } => {
                shared.node.device.fault_for_client(key, off, len, write).map_err(verr)?;
            }
        }
        Ok(Reply::Ok)
    }

    fn frames(&self, addr: u64, len: u64) -> Answer {
        let objs = self.objects.lock();
        let inside = objs.iter().any(|(_, o)| {
            matches!(o, Obj::Buffer { addr: a, len: l } if addr >= *a && addr.saturating_add(len) <= a + l)
        });
        drop(objs);
        if !inside || len == 0 {
            return Err(err(Errno::EFAULT, format!("{addr:#x}+{len:#x} is not inside a buffer")));
        }
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut at = addr;
        let end = addr + len;
        while at < end {
            let pfn = self
                .aspace
                .translate(VirtAddr::new(at))
                .ok_or_else(|| err(Errno::EFAULT, format!("{at:#x} has no frame")))?;
            let n = (PAGE_SIZE - at % PAGE_SIZE).min(end - at);
            let off = pfn.raw() * PAGE_SIZE + at % PAGE_SIZE;
            match runs.last_mut() {
                Some((o, l)) if *o + *l == off => *l += n,
                _ => runs.push((off, n)),
            }
            at += n;
        }
        Ok(Reply::Frames(runs))
    }

    fn reg_mr(&self, shared: &Arc<Shared>, pd: ObjId, target: MrTarget, access: u32) -> Answer {
        let p = self.pd(pd)?;
        let access = access_flags(access)?;
        let mr = match target {
            MrTarget::Memory { addr, len, on_demand } => {
                let access = if on_demand { access | Access::ON_DEMAND } else { access };
                p.reg_mr(&self.aspace, VirtAddr::new(addr), len, access)
            }
            MrTarget::File { file, offset, len } => {
                let f = self.file(file)?;
                p.reg_file_mr(&shared.node.fs, f.ino(), offset, len, access)
            }
        }
        .map_err(verr)?;
        let w = WireMr {
            id: ObjId(0),
            lkey: mr.lkey().0,
            rkey: mr.rkey().0,
            addr: mr.addr(),
            len: mr.info().len,
        };
        let id = self.insert(Obj::Mr { mr: Arc::new(mr), pd, imported: false })?;
        Ok(Reply::Mr(WireMr { id, ..w }))
    }

    /// Destroys every object, bottom-up (the last copy of the handle closed).
    pub(crate) fn teardown(&self, shared: &Shared) {
        let objs = self.objects.lock().drain_in_order();
        let n = objs.len();
        {
            let mut qps = shared.qps.lock();
            for o in &objs {
                if let Obj::Qp { qp, .. } = o {
                    qps.remove(&qp.qpn().0);
                }
            }
        }
        for o in objs {
            if let Obj::Buffer { addr, len } | Obj::Mapping { addr, len, .. } = &o {
                let _ = self.aspace.munmap(VirtAddr::new(*addr), *len);
            }
            drop(o);
        }
        tracing::info!(handle = self.no, label = %self.label, objects = n, "handle closed");
    }
}

/// A zeroed completion to poll into.
trait PollDefault {
    fn default_for_poll() -> Self;
}

impl PollDefault for WorkCompletion {
    fn default_for_poll() -> Self {
        WorkCompletion {
            wr_id: 0,
            status: pinwheel_verbs::WcStatus::Success,
            opcode: pinwheel_verbs::WcOpcode::Send,
            byte_len: 0,
            imm: None,
            qpn: pinwheel_verbs::Qpn(0),
        }
    }
}

impl Shared {
    pub(crate) fn welcome(&self, handle: u64) -> Welcome {
        Welcome {
            node: self.node.device.attr().name,
            pool_size: self.node.memory.pool().size(),
            handle,
            policy: self.node.fs.policy().name().to_string(),
            lease_break_ms: self.node.fs.lease_break().as_millis() as u64,
            region: self.node.device.region_offset().map(|o| o.raw()),
        }
    }
}

/// Access flags from the wire; `EINVAL` naming them if they are not flags.
fn access_flags(bits: u32) -> Result<Access, WireError> {
    Access::from_bits(bits).ok_or_else(|| err(Errno::EINVAL, format!("access flags {bits:#x}")))
}
