//! The client engine: a client process executes the work requests of its QPs whose peer is a
//! QP of the same node itself, against the node's shared tables (DESIGN.md, "Who executes a
//! transfer"; `docs/shm.md`). What the node's engine does for its own transfers
//! (`pinwheel_verbs` `engine.rs`, `transport/loopback.rs`), with the same checks in the same
//! order and the same statuses:
//!
//! - key → PD → access flags (MR and target QP) → bounds, from the MR table, before a byte
//!   moves; a local violation is `LOC_PROT_ERR`, a remote one `REM_ACCESS_ERR` and the
//!   responder goes to ERR (reported to the daemon, which does it);
//! - then, per chunk of at most `SHM_CHUNK` bytes: name the MRs in the executor's hazard
//!   words, check the slot still holds the same key and its state (valid: go; decoherent: the
//!   request is *held*; revoked, destroyed: fail), translate through the MR's table, copy with
//!   the pool's copies, leave;
//! - an ODP or file page absent from the table: leave, ask the daemon to fault it (one
//!   request), retry the request (for at most `FAULT_RETRY_MS`);
//! - SEND and WRITE_WITH_IMM peek the target's receive ring and claim the receive only when
//!   the message completes it, so a held or refused request leaves it in place.
//!
//! The executor word of the initiator's QP is held (`ShmQp::run`) while this runs; nothing
//! here blocks while a hazard word names something, except the RNR retries' 1 ms sleeps.

use std::time::{Duration, Instant};

use pinwheel_mm::{Pool, PoolOffset};
use pinwheel_verbs::limits::{MAX_MSG, SHM_CHUNK};
use pinwheel_verbs::shm::{
    CQ_RING_MAX, CQE_WORDS, Executor, Miss, MrView, QpView, RQ_RING_MAX, RegionView, Ring,
    cqe_encode, wqe_decode, wqe_words,
};
use pinwheel_verbs::{
    Access, MrKind, MrState, Opcode, QpState, RecvWr, SendWr, Sge, WcOpcode, WcStatus,
    WorkCompletion,
};

use std::cell::RefCell;

use super::limits::{FAULT_RETRY_MS, MR_VIEWS};

/// Whose buffer a piece is: the status when it cannot be used (as `engine::Side`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Side {
    Initiator,
    Target,
    Receive,
}

impl Side {
    fn status(self) -> WcStatus {
        match self {
            Side::Initiator => WcStatus::LocProtErr,
            Side::Target => WcStatus::RemAccessErr,
            Side::Receive => WcStatus::RemOpErr,
        }
    }
}

/// Part of an MR a transfer uses.
#[derive(Copy, Clone, Debug)]
struct Part {
    v: MrView,
    off: u64,
    len: u64,
    side: Side,
}

/// A piece of a transfer: part of an MR, or bytes carried inline.
#[derive(Copy, Clone, Debug)]
enum Piece<'a> {
    Mr(Part),
    Bytes(&'a [u8]),
}

impl Piece<'_> {
    fn len(&self) -> u64 {
        match self {
            Piece::Mr(p) => p.len,
            Piece::Bytes(b) => b.len() as u64,
        }
    }
}

/// A few items without an allocation for the usual one (a work request's SGEs).
#[derive(Clone, Debug)]
enum Few<T> {
    One([T; 1]),
    Many(Vec<T>),
}

impl<T> std::ops::Deref for Few<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Few::One(a) => a,
            Few::Many(v) => v,
        }
    }
}

impl<T> FromIterator<T> for Few<T> {
    fn from_iter<I: IntoIterator<Item = T>>(it: I) -> Few<T> {
        let mut it = it.into_iter();
        match (it.next(), it.next()) {
            (None, _) => Few::Many(Vec::new()),
            (Some(a), None) => Few::One([a]),
            (Some(a), Some(b)) => {
                let mut v = vec![a, b];
                v.extend(it);
                Few::Many(v)
            }
        }
    }
}

/// Why a transfer stopped.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Fail {
    Held,
    Status(WcStatus),
    /// Absent pages of an ODP or file MR: fault them (offsets in the MR) and retry.
    Fault {
        key: u32,
        off: u64,
        len: u64,
        write: bool,
    },
}

/// What executing a work request came to.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Finished, successfully or not.
    Done(Done),
    /// An MR it needs is decoherent: keep it queued, retry later.
    Held,
    /// No receive at the target (`rnr_retry` 7): keep it queued, retry later.
    Rnr,
}

/// A finished work request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Done {
    pub(crate) status: WcStatus,
    pub(crate) bytes: u32,
    /// The responder refused it: it goes to ERR with this status (the daemon does it).
    pub(crate) responder: Option<WcStatus>,
    /// A receive completion was the first lost to the target's receive CQ overflowing (report
    /// it: `CQ_ERR` on the target's handle).
    pub(crate) lost_recv_cqe: bool,
}

fn done(status: WcStatus, bytes: u32) -> Outcome {
    Outcome::Done(Done { status, bytes, responder: None, lost_recv_cqe: false })
}

/// The responder refused a request: remote access and invalid request errors break it.
fn refused(status: WcStatus) -> Outcome {
    let breaks = matches!(status, WcStatus::RemAccessErr | WcStatus::RemInvReqErr);
    Outcome::Done(Done {
        status,
        bytes: 0,
        responder: breaks.then_some(status),
        lost_recv_cqe: false,
    })
}

/// A receive peeked at the target.
struct Taken {
    wr: RecvWr,
    pos: u64,
    ring: Ring,
}

/// Pool pieces `(offset, bytes)` of one side of a copy.
type Runs = Vec<(u64, u64)>;

/// The MR slots a QP's work requests read lately: a key names one registration for its whole
/// life, so its slot's fields do not change; an entry is used only while the slot still holds
/// the key (checked before, and again after the hazard store, as for a fresh read).
/// Also the scratch space of the translations of a copy (no allocation per request).
#[derive(Debug, Default)]
pub(crate) struct Views {
    views: RefCell<Vec<MrView>>,
    runs: RefCell<(Runs, Runs)>,
}

impl Views {
    fn get(&self, pool: &Pool, region: &RegionView, key: u32) -> Option<MrView> {
        let mut v = self.views.borrow_mut();
        if let Some(i) = v.iter().position(|m| m.key == key) {
            if v[i].current(pool) {
                return Some(v[i]);
            }
            v.remove(i);
        }
        let m = region.mr(pool, key)?;
        if v.len() >= MR_VIEWS {
            v.remove(0);
        }
        v.push(m);
        Some(m)
    }
}

/// One work request's execution: the initiator's QP (`own`, its executor words `ex`) and the
/// target QP `t` (named in `ex` before its rings are used).
pub(crate) struct Engine<'a> {
    pub(crate) pool: &'a Pool,
    pub(crate) region: &'a RegionView,
    pub(crate) ex: Executor,
    pub(crate) own: QpView,
    pub(crate) t: QpView,
    /// Asks the daemon to fault `[off, off + len)` of MR `key`; false if it could not.
    pub(crate) fault: &'a dyn Fn(u32, u64, u64, bool) -> bool,
    pub(crate) views: &'a Views,
}

impl Engine<'_> {
    /// Executes `wr`, retrying after faults (bounded).
    pub(crate) fn execute(&self, wr: &SendWr) -> Outcome {
        if !matches!(self.t.state, QpState::Rtr | QpState::Rts | QpState::Sqd) {
            return done(WcStatus::RetryExcErr, 0);
        }
        if wr.length() > MAX_MSG {
            return done(WcStatus::LocLenErr, 0);
        }
        let mut deadline = None;
        loop {
            let r = match wr.opcode {
                Opcode::Write | Opcode::WriteWithImm | Opcode::Send | Opcode::SendWithImm => {
                    self.transfer(wr)
                }
                Opcode::Read => self.read(wr),
                Opcode::CompareSwap | Opcode::FetchAdd => self.atomic(wr),
            };
            self.ex.leave_mrs(self.pool, self.t.slot);
            let (key, off, len, write, side) = match r {
                Ok(o) => return o,
                Err(f) => f,
            };
            let deadline = *deadline
                .get_or_insert_with(|| Instant::now() + Duration::from_millis(FAULT_RETRY_MS));
            if Instant::now() >= deadline || !(self.fault)(key, off, len, write) {
                return match side {
                    Side::Target => refused(WcStatus::RemAccessErr),
                    s => done(s.status(), 0),
                };
            }
        }
    }

    // --- checks (`engine::check_local`, `check_remote`), without a byte moving ---

    fn local(&self, sge: &Sge, need_write: bool) -> Result<Part, WcStatus> {
        let v = self.views.get(self.pool, self.region, sge.lkey.0).ok_or(WcStatus::LocProtErr)?;
        if v.pd != self.own.pd || (need_write && !v.access.contains(Access::LOCAL_WRITE)) {
            return Err(WcStatus::LocProtErr);
        }
        let off = sge.addr.checked_sub(v.addr).ok_or(WcStatus::LocProtErr)?;
        let len = u64::from(sge.length);
        if off.checked_add(len).is_none_or(|e| e > v.len) {
            return Err(WcStatus::LocProtErr);
        }
        Ok(Part { v, off, len, side: Side::Initiator })
    }

    fn locals(&self, sges: &[Sge], need_write: bool) -> Result<Few<Part>, WcStatus> {
        sges.iter().filter(|s| s.length > 0).map(|s| self.local(s, need_write)).collect()
    }

    fn remote(&self, rkey: u32, addr: u64, len: u64, need: Access) -> Result<Part, WcStatus> {
        let v = self.views.get(self.pool, self.region, rkey).ok_or(WcStatus::RemAccessErr)?;
        if v.pd != self.t.pd || !v.access.contains(need) || !self.t.access.contains(need) {
            return Err(WcStatus::RemAccessErr);
        }
        let off = addr.checked_sub(v.addr).ok_or(WcStatus::RemAccessErr)?;
        if off.checked_add(len).is_none_or(|e| e > v.len) {
            return Err(WcStatus::RemAccessErr);
        }
        Ok(Part { v, off, len, side: Side::Target })
    }

    /// The buffers of a receive at the target (`LOC_PROT_ERR`: the receive's status).
    fn receive(&self, r: &RecvWr) -> Result<Few<Part>, WcStatus> {
        let part = |sge: &Sge| {
            let v =
                self.views.get(self.pool, self.region, sge.lkey.0).ok_or(WcStatus::LocProtErr)?;
            if v.pd != self.t.pd || !v.access.contains(Access::LOCAL_WRITE) {
                return Err(WcStatus::LocProtErr);
            }
            let off = sge.addr.checked_sub(v.addr).ok_or(WcStatus::LocProtErr)?;
            let len = u64::from(sge.length);
            if off.checked_add(len).is_none_or(|e| e > v.len) {
                return Err(WcStatus::LocProtErr);
            }
            Ok(Part { v, off, len, side: Side::Receive })
        };
        r.sg_list.iter().filter(|s| s.length > 0).map(part).collect()
    }

    // --- entering MRs and moving bytes ---

    /// Names the target QP, `a` and `b` in the hazard word, then checks the QP and each MR
    /// still are the ones looked up and the MRs are valid. Every read of their rings, tables
    /// and frames comes after this.
    fn enter(&self, a: Option<&Part>, b: Option<&Part>) -> Result<(), Fail> {
        self.ex.enter(self.pool, self.t.slot, a.map(|p| p.v.slot), b.map(|p| p.v.slot));
        if !self.t.current(self.pool) {
            return Err(Fail::Status(WcStatus::RetryExcErr));
        }
        for p in [a, b].into_iter().flatten() {
            if !p.v.current(self.pool) {
                return Err(Fail::Status(p.side.status()));
            }
            match p.v.state(self.pool) {
                MrState::Valid => {}
                MrState::Decoherent => return Err(Fail::Held),
                _ => return Err(Fail::Status(p.side.status())),
            }
        }
        Ok(())
    }

    /// Walks the pool pieces of `[off, off + n)` of `p` (offsets from its first byte).
    fn walk(
        &self,
        p: &Part,
        off: u64,
        n: u64,
        write: bool,
        f: &mut dyn FnMut(PoolOffset, u64) -> Result<(), Fail>,
    ) -> Result<(), Fail> {
        match p.v.segments(self.pool, off, n, write, f) {
            Ok(r) => r,
            Err(Miss::Absent) if p.v.kind != MrKind::Pinned => {
                Err(Fail::Fault { key: p.v.key, off, len: n, write })
            }
            Err(_) => Err(Fail::Status(p.side.status())),
        }
    }

    /// The pieces behind `[off, off + n)` of `p` into `out`; a miss as the side's failure.
    fn runs(&self, p: &Part, off: u64, n: u64, write: bool, out: &mut Vec<(u64, u64)>) -> Fail2 {
        match p.v.runs(self.pool, off, n, write, out) {
            Ok(()) => Ok(()),
            Err(Miss::Absent) if p.v.kind != MrKind::Pinned => {
                Err(Fail::Fault { key: p.v.key, off, len: n, write })
            }
            Err(_) => Err(Fail::Status(p.side.status())),
        }
    }

    fn copy_chunk(&self, src: &Piece<'_>, soff: u64, dst: &Part, doff: u64, n: u64) -> Fail2 {
        let pool = self.pool;
        let general = |_: pinwheel_mm::MmError| Fail::Status(WcStatus::GeneralErr);
        let mut scratch = self.views.runs.borrow_mut();
        let (sruns, druns) = &mut *scratch;
        match src {
            Piece::Bytes(b) => {
                self.enter(None, Some(dst))?;
                self.runs(dst, dst.off + doff, n, true, druns)?;
                let mut cur = soff as usize;
                for &(p, l) in druns.iter() {
                    pool.write(PoolOffset::new(p), &b[cur..cur + l as usize]).map_err(general)?;
                    cur += l as usize;
                }
                Ok(())
            }
            Piece::Mr(s) => {
                self.enter(Some(s), Some(dst))?;
                self.runs(s, s.off + soff, n, false, sruns)?;
                self.runs(dst, dst.off + doff, n, true, druns)?;
                // Both sides translated (every page checked): copy the overlaps.
                let (mut i, mut j, mut so, mut dof) = (0usize, 0usize, 0u64, 0u64);
                while let (Some(&(sp, sl)), Some(&(dp, dl))) = (sruns.get(i), druns.get(j)) {
                    let k = (sl - so).min(dl - dof);
                    pool.copy(PoolOffset::new(sp + so), PoolOffset::new(dp + dof), k)
                        .map_err(general)?;
                    (so, dof) = (so + k, dof + k);
                    if so == sl {
                        (i, so) = (i + 1, 0);
                    }
                    if dof == dl {
                        (j, dof) = (j + 1, 0);
                    }
                }
                Ok(())
            }
        }
    }

    /// Copies the bytes of `src` into `dst` in order, in chunks; the bytes copied.
    fn copy(&self, src: &[Piece<'_>], dst: &[Part]) -> Result<u64, Fail> {
        let (mut si, mut so, mut di, mut doff, mut total) = (0usize, 0u64, 0usize, 0u64, 0u64);
        while si < src.len() && di < dst.len() {
            let n = (src[si].len() - so).min(dst[di].len - doff).min(SHM_CHUNK);
            if n > 0 {
                self.copy_chunk(&src[si], so, &dst[di], doff, n)?;
            }
            (so, doff, total) = (so + n, doff + n, total + n);
            if so == src[si].len() {
                (si, so) = (si + 1, 0);
            }
            if doff == dst[di].len {
                (di, doff) = (di + 1, 0);
            }
        }
        Ok(total)
    }

    // --- the operations ---

    fn source<'w>(&self, wr: &'w SendWr) -> Result<Few<Piece<'w>>, WcStatus> {
        match &wr.inline_data {
            Some(d) => Ok(Few::One([Piece::Bytes(d)])),
            None => Ok(self.locals(&wr.sg_list, false)?.iter().copied().map(Piece::Mr).collect()),
        }
    }

    /// WRITE, WRITE_WITH_IMM, SEND, SEND_WITH_IMM (`loopback::transfer`).
    fn transfer(&self, wr: &SendWr) -> Step {
        let len = wr.length();
        let src = match self.source(wr) {
            Ok(s) => s,
            Err(s) => return Ok(done(s, 0)),
        };
        let target = match wr.opcode {
            Opcode::Write | Opcode::WriteWithImm => {
                match self.remote(wr.rkey.0, wr.remote_addr, len, Access::REMOTE_WRITE) {
                    Ok(p) => Some(p),
                    Err(s) => return Ok(refused(s)),
                }
            }
            _ => None,
        };
        let recv = if wr.opcode.consumes_recv() {
            match self.take_recv() {
                Ok(r) => Some(r),
                Err(o) => return Ok(o),
            }
        } else {
            None
        };
        let dst = match (target, &recv) {
            (Some(p), _) => Few::One([p]),
            (None, Some(r)) => {
                let cap: u64 = r.wr.sg_list.iter().map(|s| u64::from(s.length)).sum();
                if cap < len {
                    let lost = self.complete_recv(r, WcStatus::LocLenErr, 0, None);
                    return Ok(broke(WcStatus::RemInvReqErr, WcStatus::LocLenErr, lost));
                }
                match self.receive(&r.wr) {
                    Ok(p) => p,
                    Err(s) => {
                        let lost = self.complete_recv(r, s, 0, None);
                        return Ok(broke(WcStatus::RemOpErr, s, lost));
                    }
                }
            }
            (None, None) => return Ok(done(WcStatus::GeneralErr, 0)),
        };
        match self.copy(&src, &dst) {
            Ok(n) => {
                let mut lost = false;
                if let Some(r) = &recv {
                    let imm = matches!(wr.opcode, Opcode::WriteWithImm | Opcode::SendWithImm)
                        .then_some((wr.imm, wr.opcode == Opcode::WriteWithImm));
                    if !r.ring.claim(self.pool, r.pos) {
                        // Flushed meanwhile: the responder went to ERR and acknowledged nothing.
                        return Ok(done(WcStatus::RetryExcErr, 0));
                    }
                    lost = self.push_recv_cqe(&r.wr, WcStatus::Success, n as u32, imm);
                }
                Ok(Outcome::Done(Done {
                    status: WcStatus::Success,
                    bytes: n as u32,
                    responder: None,
                    lost_recv_cqe: lost,
                }))
            }
            Err(Fail::Held) => Ok(Outcome::Held),
            Err(Fail::Status(s)) if s == Side::Receive.status() => {
                // The responder's own receive buffer failed: its receive completes in error.
                let lost = recv
                    .as_ref()
                    .is_some_and(|r| self.complete_recv(r, WcStatus::LocProtErr, 0, None));
                Ok(broke(s, WcStatus::LocProtErr, lost))
            }
            // The source or the WRITE's target failed: the receive was not used (left in place).
            Err(Fail::Status(s)) => Ok(refused(s)),
            Err(Fail::Fault { key, off, len, write }) => {
                Err((key, off, len, write, fault_side(&src, &dst, key)))
            }
        }
    }

    /// READ (`loopback::execute`).
    fn read(&self, wr: &SendWr) -> Step {
        let dst = match self.locals(&wr.sg_list, true) {
            Ok(d) => d,
            Err(s) => return Ok(done(s, 0)),
        };
        let src = match self.remote(wr.rkey.0, wr.remote_addr, wr.length(), Access::REMOTE_READ) {
            Ok(p) => p,
            Err(s) => return Ok(refused(s)),
        };
        match self.copy(&[Piece::Mr(src)], &dst) {
            Ok(n) => Ok(done(WcStatus::Success, n as u32)),
            Err(Fail::Held) => Ok(Outcome::Held),
            Err(Fail::Status(s)) => Ok(refused(s)),
            Err(Fail::Fault { key, off, len, write }) => {
                let side = if key == src.v.key { Side::Target } else { Side::Initiator };
                Err((key, off, len, write, side))
            }
        }
    }

    /// COMPARE_SWAP and FETCH_ADD. The local buffer is translated before the atomic runs, and
    /// a fault of it afterwards retries the store of the result, never the atomic.
    fn atomic(&self, wr: &SendWr) -> Step {
        let [sge] = wr.sg_list.as_slice() else { return Ok(done(WcStatus::LocLenErr, 0)) };
        if sge.length != 8 {
            return Ok(done(WcStatus::LocLenErr, 0));
        }
        if !wr.remote_addr.is_multiple_of(8) {
            return Ok(refused(WcStatus::RemInvReqErr));
        }
        let dst = match self.local(sge, true) {
            Ok(p) => p,
            Err(s) => return Ok(done(s, 0)),
        };
        let tgt = match self.remote(wr.rkey.0, wr.remote_addr, 8, Access::REMOTE_ATOMIC) {
            Ok(p) => p,
            Err(s) => return Ok(refused(s)),
        };
        let fault_of = |f: Fail, p: &Part| match f {
            Fail::Held => Ok(Outcome::Held),
            Fail::Status(s) if p.side == Side::Target => Ok(refused(s)),
            Fail::Status(s) => Ok(done(s, 0)),
            Fail::Fault { key, off, len, write } => Err((key, off, len, write, p.side)),
        };
        let dst_ready = self
            .enter(Some(&dst), None)
            .and_then(|()| self.walk(&dst, dst.off, 8, true, &mut |_, _| Ok(())));
        if let Err(f) = dst_ready {
            return fault_of(f, &dst);
        }
        let pool = self.pool;
        let mut old = 0u64;
        let r = self.enter(Some(&tgt), Some(&dst)).and_then(|()| {
            self.walk(&tgt, tgt.off, 8, true, &mut |p, _| {
                old = match wr.opcode {
                    Opcode::CompareSwap => pool.compare_and_swap(p, wr.compare_add, wr.swap),
                    _ => pool.fetch_add(p, wr.compare_add),
                }
                .map_err(|_| Fail::Status(WcStatus::RemInvReqErr))?;
                Ok(())
            })
        });
        if let Err(f) = r {
            return fault_of(f, &tgt);
        }
        let deadline = Instant::now() + Duration::from_millis(FAULT_RETRY_MS);
        loop {
            let bytes = old.to_le_bytes();
            let stored = self.copy(&[Piece::Bytes(&bytes)], std::slice::from_ref(&dst));
            self.ex.leave_mrs(self.pool, self.t.slot);
            match stored {
                Ok(_) => return Ok(done(WcStatus::Success, 8)),
                Err(Fail::Fault { key, off, len, write })
                    if Instant::now() < deadline && (self.fault)(key, off, len, write) => {}
                Err(Fail::Status(s)) => return Ok(done(s, 0)),
                Err(_) => return Ok(done(WcStatus::LocProtErr, 0)),
            }
        }
    }

    // --- the target's receive queue ---

    /// Peeks a receive at the target, or says how to wait (RNR): `rnr_retry` 7 waits for ever
    /// (the request stays queued); fewer retries wait a millisecond each.
    fn take_recv(&self) -> Result<Taken, Outcome> {
        self.ex.enter(self.pool, self.t.slot, None, None);
        if !self.t.current(self.pool) {
            return Err(done(WcStatus::RetryExcErr, 0));
        }
        let Some((base, max_sge)) = self.t.rq else { return Err(done(WcStatus::RemOpErr, 0)) };
        let words = wqe_words(max_sge);
        let ring = Ring::attach(self.pool, base, words, RQ_RING_MAX)
            .ok_or_else(|| done(WcStatus::RemOpErr, 0))?;
        let mut w = vec![0u64; words as usize];
        let rnr = self.own.rnr_retry;
        for attempt in 0..=u32::from(rnr.min(6)) {
            for _ in 0..=ring.cap() {
                let Some(pos) = ring.peek(self.pool, &mut w) else { break };
                match wqe_decode(&w, max_sge) {
                    Some(wr) => return Ok(Taken { wr, pos, ring }),
                    None => {
                        ring.claim(self.pool, pos); // scribbled on: dropped
                    }
                }
            }
            if rnr >= 7 {
                return Err(Outcome::Rnr);
            }
            if attempt < u32::from(rnr) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Err(done(WcStatus::RnrRetryExcErr, 0))
    }

    /// Claims a receive and queues its completion; true if the completion was the first lost
    /// to the target's CQ overflowing. (A receive flushed meanwhile completed that way.)
    fn complete_recv(&self, r: &Taken, status: WcStatus, n: u32, imm: Option<(u32, bool)>) -> bool {
        r.ring.claim(self.pool, r.pos) && self.push_recv_cqe(&r.wr, status, n, imm)
    }

    fn push_recv_cqe(
        &self,
        r: &RecvWr,
        status: WcStatus,
        n: u32,
        imm: Option<(u32, bool)>,
    ) -> bool {
        let opcode =
            if imm.is_some_and(|(_, w)| w) { WcOpcode::RecvRdmaWithImm } else { WcOpcode::Recv };
        let wc = WorkCompletion {
            wr_id: r.wr_id,
            status,
            opcode,
            byte_len: n,
            imm: imm.map(|(i, _)| i),
            qpn: self.t.qpn,
        };
        let Some(ring) = Ring::attach(self.pool, self.t.recv_cq, CQE_WORDS, CQ_RING_MAX) else {
            return false;
        };
        matches!(push_cqe(self.pool, &ring, &wc), Err(true))
    }
}

/// What one attempt came to: an outcome, or a fault to resolve first (MR key, offset, length,
/// write, whose side).
type Step = Result<Outcome, (u32, u64, u64, bool, Side)>;
type Fail2 = Result<(), Fail>;

/// The receive side broke the request: the initiator's `status`, the responder to ERR with
/// `responder`.
fn broke(status: WcStatus, responder: WcStatus, lost: bool) -> Outcome {
    Outcome::Done(Done { status, bytes: 0, responder: Some(responder), lost_recv_cqe: lost })
}

fn fault_side(src: &[Piece<'_>], dst: &[Part], key: u32) -> Side {
    let in_src = src.iter().any(|p| matches!(p, Piece::Mr(m) if m.v.key == key));
    match dst.iter().find(|p| p.v.key == key) {
        Some(p) if !in_src => p.side,
        _ => Side::Initiator,
    }
}

/// Queues a completion on the CQ ring `r` and wakes its sleepers. `Err(true)`: lost, the
/// first loss of this CQ (report it: `CQ_ERR`); `Err(false)`: lost, already reported.
pub(crate) fn push_cqe(pool: &Pool, r: &Ring, wc: &WorkCompletion) -> Result<(), bool> {
    match r.push(pool, &cqe_encode(wc)) {
        Ok(()) => {
            r.notify(pool);
            Ok(())
        }
        Err(_) => Err(r.set_overflowed(pool)),
    }
}
