//! Memory regions: pinned, ODP and file MRs, their states, and the coherence protocols.
//!
//! **The fast-path check** (thread 002: "whatever fast path checking is needed does not kill
//! performance"): every transfer *enters* the MR — one atomic increment of its in-flight
//! count, one load of its state — then translates and copies, then leaves. Whoever changes the
//! MR (invalidation, decoherence, revocation, deregistration) first makes the old translation
//! unreachable (state change, or clearing ODP entries), then *drains*: waits for the in-flight
//! count to reach zero. Both sides store then load with `SeqCst`, so either the transfer sees
//! the change or the changer waits for the transfer (invariant 4).
//!
//! **States**: valid → decoherent → (restored) valid, or → revoked; destroyed. A transfer to
//! a decoherent MR is *held* (the engine parks the QP and resumes it on the next state change);
//! to a revoked or destroyed one it fails.
//!
//! **Kinds**:
//! - *pinned*: frames captured by a long-term pin at registration; for file memory the
//!   filesystem's policy decides (it may refuse, record a file pin, decohere or revoke us
//!   through [`PinHolder`]).
//! - *ODP*: no pins; per-page translations filled by faulting through the address space and
//!   dropped by MMU interval notifier invalidations (after draining this MR's transfers).
//! - *file*: registered by file and offset; translations come from the extent map and follow
//!   layout changes like ODP (FileMR, NSDI 2020).
//!
//! Faults happen outside the in-flight section: an invalidation may hold the file lock a fault
//! needs while it drains us.
//!
//! **Shared with client processes** (`shm`): every MR has a slot in the region's MR table. Its
//! state and translation entries are written there in the same critical sections as here
//! (the state before the drain, cleared entries before the drain), and the drain also waits
//! for the client executors naming the MR in their hazard words — up to a deadline, after
//! which the frames are quarantined (`shm/mod.rs`). The private state, count and maps here
//! stay the daemon's truth: it never reads the shared copies back.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use pinwheel_fs::{HolderInfo, Ino, PinContext, PinHolder};
use pinwheel_mm::{
    AddressSpace, Errno, NotifierHandle, PAGE_SIZE, Pfn, Pin, PinFlags, PinOwner, PoolOffset,
    VirtAddr, pin_user_pages,
};

use crate::context::PdInner;
use crate::device::DeviceInner;
use crate::error::{VerbsError, VerbsResult};
use crate::event::AsyncEvent;
use crate::limits::HOLD_MAX_MS;
use crate::odp::{ODP_VALID, ODP_WRITE, OdpTable};
use crate::pinned::{PinnedMap, Snapshot};
use crate::qp::QpInner;
use crate::shm::{Block, Hazard, MrSlot};
use crate::types::{Access, EventType, Lkey, Rkey};

/// How an MR is backed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum MrKind {
    /// Frames pinned at registration.
    Pinned,
    /// On-demand paging.
    Odp,
    /// Registered by file and offset.
    File,
}

impl MrKind {
    /// Name for listings.
    pub fn name(self) -> &'static str {
        match self {
            MrKind::Pinned => "pinned",
            MrKind::Odp => "odp",
            MrKind::File => "file",
        }
    }
}

/// MR states.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum MrState {
    /// Usable.
    Valid = 0,
    /// A layout change waits for `restore_mr`; transfers are held.
    Decoherent = 1,
    /// Taken away; transfers fail.
    Revoked = 2,
    /// Deregistered.
    Destroyed = 3,
}

impl MrState {
    fn from_u8(v: u8) -> MrState {
        match v {
            0 => MrState::Valid,
            1 => MrState::Decoherent,
            2 => MrState::Revoked,
            _ => MrState::Destroyed,
        }
    }
    /// Name for listings.
    pub fn name(self) -> &'static str {
        match self {
            MrState::Valid => "valid",
            MrState::Decoherent => "decoherent",
            MrState::Revoked => "revoked",
            MrState::Destroyed => "destroyed",
        }
    }
}

/// Why a transfer could not touch the MR.
#[derive(Debug)]
pub(crate) enum DmaError<E> {
    /// Decoherent: hold the transfer.
    Held,
    /// Revoked or destroyed.
    Gone,
    /// Outside the MR, or outside what is still backed (a truncated file).
    Bounds,
    /// An ODP or file fault failed (unmapped, beyond EOF...).
    Fault(String),
    /// The copy itself failed.
    Copy(E),
}

/// Times a restore re-pins because a layout change asked for its new pins back.
const RESTORE_ATTEMPTS: u32 = 8;
/// How long an ODP or file-MR fault retries while invalidations keep racing it.
pub(crate) const FAULT_RETRY_TIME: Duration = Duration::from_secs(1);

pub(crate) enum Backing {
    Pinned {
        aspace: Arc<AddressSpace>,
        start: VirtAddr,
        flags: PinFlags,
        /// Swapped whole (restore, revoke); a transfer clones the `Arc` and holds no lock
        /// while it copies, so the pins it uses stay alive until it is done (frame safety is
        /// structural; *waiting* for transfers is the drain's job).
        map: Mutex<Arc<PinnedMap>>,
    },
    Odp {
        aspace: Arc<AddressSpace>,
        start: VirtAddr,
        table: OdpTable,
        handle: OnceLock<NotifierHandle>,
    },
    File {
        ino: Ino,
        /// The file itself, held like a mapping holds it: an unlinked file stays alive (and its
        /// blocks allocated) until the MR is deregistered, and the inode number can never
        /// name another file to this MR.
        file: Arc<dyn pinwheel_mm::FileBacking>,
        first_page: u64,
        table: OdpTable,
        handle: OnceLock<NotifierHandle>,
    },
}

pub(crate) struct MrInner {
    pub(crate) key: u32,
    pub(crate) pd: Arc<PdInner>,
    pub(crate) access: Access,
    pub(crate) addr: u64,
    pub(crate) len: u64,
    /// Offset of byte 0 within its first page.
    pub(crate) base: u64,
    pub(crate) pages: u64,
    pub(crate) kind: MrKind,
    pub(crate) state: AtomicU8,
    /// Bumped (under the map's lock) whenever a pinned MR's map is swapped: a translation
    /// [`Snapshot`] of another generation is stale.
    pub(crate) map_gen: AtomicU64,
    pub(crate) inflight: AtomicU64,
    pub(crate) waiters: AtomicU32,
    pub(crate) gate: Mutex<()>,
    pub(crate) cv: Condvar,
    pub(crate) held: Mutex<Vec<Weak<QpInner>>>,
    pub(crate) backing: Backing,
    pub(crate) me: Weak<MrInner>,
    pub(crate) restores: AtomicU64,
    /// Bumped by every decohere request, even one that finds the MR already decoherent: a
    /// restore in progress learns that the pins it is taking are already wanted back.
    pub(crate) decohere_requests: AtomicU64,
    /// Its slot in the region's MR table (and the block of a translation table too big for
    /// the slot).
    pub(crate) shared: Option<(MrSlot, Option<Block>)>,
}

impl fmt::Debug for MrInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MR {:#x} ({}, {} bytes at {:#x}, {})",
            self.key,
            self.kind.name(),
            self.len,
            self.addr,
            self.state().name()
        )
    }
}

/// An MR, for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MrInfo {
    /// Local key.
    pub lkey: Lkey,
    /// Remote key.
    pub rkey: Rkey,
    /// First address (a virtual address; a file offset for file MRs).
    pub addr: u64,
    /// Length.
    pub len: u64,
    /// Access flags.
    pub access: Access,
    /// Kind.
    pub kind: MrKind,
    /// State.
    pub state: MrState,
    /// Owning device handle.
    pub handle: u64,
    /// PD number.
    pub pd: u32,
    /// The file of a file MR.
    pub ino: Option<Ino>,
    /// Pages currently translated (pinned, or present in the ODP table).
    pub resident_pages: u64,
    /// Times restored after de-coherence.
    pub restores: u64,
}

impl MrInner {
    pub(crate) fn dev(&self) -> &Arc<DeviceInner> {
        &self.pd.ctx.dev
    }

    pub(crate) fn state(&self) -> MrState {
        MrState::from_u8(self.state.load(Ordering::SeqCst))
    }

    fn leave(&self) {
        if self.inflight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.waiters.load(Ordering::SeqCst) > 0
        {
            let _g = self.gate.lock();
            self.cv.notify_all();
        }
    }

    /// Waits until no transfer is inside the MR: this node's (a private count), then client
    /// processes' (their hazard words; bounded: after the deadline the frames `old()` names
    /// are quarantined while the stragglers stay inside).
    pub(crate) fn drain_with(&self, old: &mut dyn FnMut() -> Vec<Pfn>) {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut g = self.gate.lock();
        while self.inflight.load(Ordering::SeqCst) > 0 {
            self.cv.wait_for(&mut g, Duration::from_millis(1));
        }
        drop(g);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        // With the coherence checks off (benchmarks, and the control runs of the race tests)
        // nothing waits for client executors either.
        if let (Some(r), Some(_), true) = (&self.dev().region, self.slot(), self.dev().coherence())
        {
            r.drain(Hazard::Mr(self.key >> 8), old);
        }
    }

    /// [`MrInner::drain_with`] quarantining the frames the MR translates to now.
    fn drain(&self) {
        self.drain_with(&mut || self.frames())
    }

    /// The frames the MR translates to now (what a stalled client may still be copying into).
    fn frames(&self) -> Vec<Pfn> {
        match &self.backing {
            Backing::Pinned { map, .. } => map.lock().frames(),
            Backing::Odp { table, .. } | Backing::File { table, .. } => table
                .pages
                .iter()
                .map(|e| e.load(Ordering::Acquire))
                .filter(|e| e & ODP_VALID != 0)
                .map(|e| Pfn::new(e & !(ODP_VALID | ODP_WRITE)))
                .collect(),
        }
    }

    /// Unpublishes the MR and frees its key (deregistration, or a registration that failed).
    pub(crate) fn forget(&self) {
        if let Some(slot) = self.slot() {
            slot.unpublish(self.dev().mem.pool());
        }
        self.dev().mrs.release(self.key);
    }

    fn slot(&self) -> Option<&MrSlot> {
        self.shared.as_ref().map(|(s, _)| s)
    }

    /// Publishes a state for client processes.
    fn publish_state(&self, s: MrState) {
        if let Some(slot) = self.slot() {
            slot.set_state(self.dev().mem.pool(), s);
        }
    }

    /// Publishes translation entry `page` (0: absent).
    pub(crate) fn publish_entry(&self, page: u64, entry: u64) {
        if let Some(slot) = self.slot() {
            slot.set_entry(self.dev().mem.pool(), page, entry);
        }
    }

    /// Changes state and wakes holders and held queue pairs.
    fn set_state(&self, to: MrState) {
        self.state.store(to as u8, Ordering::SeqCst);
        self.publish_state(to);
        {
            let _g = self.gate.lock();
            self.cv.notify_all();
        }
        let held: Vec<Weak<QpInner>> = std::mem::take(&mut *self.held.lock());
        for q in held {
            self.dev().kick(q);
        }
    }

    /// Parks `qp` until the next state change.
    pub(crate) fn hold(&self, qp: &Arc<QpInner>) {
        self.held.lock().push(Arc::downgrade(qp));
        // A state change between the engine's check and this registration would be missed.
        if self.state() != MrState::Decoherent {
            for q in std::mem::take(&mut *self.held.lock()) {
                self.dev().kick(q);
            }
        }
    }

    /// Blocks until the MR is not decoherent (a TCP responder holds its connection this way);
    /// returns the state.
    pub(crate) fn wait_coherent(&self) -> MrState {
        let deadline = Instant::now() + Duration::from_millis(HOLD_MAX_MS);
        let mut g = self.gate.lock();
        loop {
            let s = self.state();
            if s != MrState::Decoherent || Instant::now() >= deadline {
                return s;
            }
            self.cv.wait_for(&mut g, Duration::from_millis(50));
        }
    }

    /// Runs `f(pool offset, length)` over the pool segments behind bytes `[off, off + len)` of
    /// the MR (offsets relative to the MR's first byte), with the MR entered.
    pub(crate) fn dma<E>(
        &self,
        off: u64,
        len: u64,
        write: bool,
        f: impl FnMut(PoolOffset, u64) -> Result<(), E>,
    ) -> Result<(), DmaError<E>> {
        self.dma_in(None, off, len, write, f)
    }

    /// [`MrInner::dma`], translating a pinned MR through the caller's snapshot when `snap` is
    /// given and the coherence checks are on (refreshed when the map changed): the transfer
    /// then takes no lock and clones no `Arc` to translate (`pinned.rs`: why that is safe, and
    /// why not with the checks off).
    pub(crate) fn dma_in<E>(
        &self,
        mut snap: Option<&mut Snapshot>,
        off: u64,
        len: u64,
        write: bool,
        mut f: impl FnMut(PoolOffset, u64) -> Result<(), E>,
    ) -> Result<(), DmaError<E>> {
        let end = off.checked_add(len).filter(|e| *e <= self.len).ok_or(DmaError::Bounds)?;
        if len == 0 {
            return match self.state() {
                MrState::Valid => Ok(()),
                MrState::Decoherent => Err(DmaError::Held),
                _ => Err(DmaError::Gone),
            };
        }
        let b = self.base + off;
        let checks = self.dev().coherence();
        // Read the clock only once a retry happens: a transfer that translates the first time
        // (every pinned one) must not pay for it (it was 13 % of a loopback 64 KiB WRITE).
        let mut deadline: Option<Instant> = None;
        loop {
            if let Backing::Odp { .. } | Backing::File { .. } = self.backing {
                self.fault(b / PAGE_SIZE..(self.base + end).div_ceil(PAGE_SIZE), write)
                    .map_err(DmaError::Fault)?;
            }
            if checks {
                self.inflight.fetch_add(1, Ordering::SeqCst);
                match self.state() {
                    MrState::Valid => {}
                    s => {
                        self.leave();
                        return Err(if s == MrState::Decoherent {
                            DmaError::Held
                        } else {
                            DmaError::Gone
                        });
                    }
                }
            }
            let snap = if checks { snap.as_deref_mut() } else { None };
            let r = self.translate(snap, b, len, write, &mut f);
            if checks {
                self.leave();
            }
            match r {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => return Err(DmaError::Copy(e)),
                Err(()) if matches!(self.backing, Backing::Pinned { .. }) => {
                    return Err(DmaError::Bounds);
                }
                Err(()) => {
                    // An invalidation raced with us: fault again, for a bounded time.
                    let now = Instant::now();
                    if now > *deadline.get_or_insert(now + FAULT_RETRY_TIME) {
                        return Err(DmaError::Fault(format!(
                            "translations kept being invalidated for {} ms",
                            FAULT_RETRY_TIME.as_millis()
                        )));
                    }
                }
            }
        }
    }

    /// Runs `f` over the pool segments behind `[b, b + len)` (bytes from the MR's first page),
    /// the MR entered; `Err(())`: not translated (beyond a pinned MR's pages; an ODP or file
    /// page invalidated since the fault). `snap` only with the coherence checks on.
    fn translate<E>(
        &self,
        snap: Option<&mut Snapshot>,
        b: u64,
        len: u64,
        write: bool,
        f: &mut dyn FnMut(PoolOffset, u64) -> Result<(), E>,
    ) -> Result<Result<(), E>, ()> {
        match (&self.backing, snap) {
            // Entered and found valid with the checks on: the map cannot be swapped before
            // this transfer leaves, so a snapshot of the current generation is current.
            (Backing::Pinned { map, .. }, Some(s)) => {
                let current = self.map_gen.load(Ordering::SeqCst);
                let pieces = match s.current(current) {
                    Some(p) => p,
                    None => {
                        let m = map.lock();
                        s.refresh(&m, self.map_gen.load(Ordering::SeqCst))
                    }
                };
                pieces.for_each(b, len, f).ok_or(())
            }
            (Backing::Pinned { map, .. }, None) => {
                let m = Arc::clone(&map.lock());
                m.for_each(b, len, f).ok_or(())
            }
            (Backing::Odp { table, .. } | Backing::File { table, .. }, _) => {
                table.for_each(b, len, write, f)
            }
        }
    }

    pub(crate) fn post(&self, kind: EventType, detail: String) {
        self.pd
            .ctx
            .events
            .post(AsyncEvent { mr: Some(Lkey(self.key)), ..AsyncEvent::new(kind, detail) });
    }

    /// Revokes: later transfers fail; returns once none is in flight and the pins are gone.
    pub(crate) fn revoke(&self, why: &str) {
        let cur = self.state();
        if matches!(cur, MrState::Revoked | MrState::Destroyed) {
            return;
        }
        self.set_state(MrState::Revoked);
        self.drain();
        self.release_translations();
        self.post(EventType::MrRevoked, format!("MR {:#x} revoked: {why}", self.key));
    }

    fn release_translations(&self) {
        match &self.backing {
            Backing::Pinned { .. } => self.set_map(PinnedMap::empty()),
            Backing::Odp { table, .. } | Backing::File { table, .. } => {
                let _g = table.lock.lock();
                for (p, e) in table.pages.iter().enumerate() {
                    if e.swap(0, Ordering::AcqRel) != 0 {
                        self.publish_entry(p as u64, 0);
                    }
                }
            }
        }
    }

    /// Swaps a pinned MR's map (the old one, and its pins, go once no transfer uses it) and
    /// bumps the map generation, under the map's lock.
    pub(crate) fn set_map(&self, new: PinnedMap) {
        let Backing::Pinned { map, flags, .. } = &self.backing else { return };
        let mut m = map.lock();
        if let Some(slot) = self.slot() {
            let write = flags.contains(PinFlags::WRITE);
            new.publish(self.dev().mem.pool(), slot, self.pages, write);
        }
        let old = std::mem::replace(&mut *m, Arc::new(new));
        self.map_gen.fetch_add(1, Ordering::SeqCst);
        drop(m);
        drop(old);
    }

    pub(crate) fn owner(&self) -> VerbsResult<PinOwner> {
        let me: Arc<dyn PinHolder> =
            self.me.upgrade().ok_or_else(|| VerbsError::invalid("MR is being destroyed"))?;
        Ok(PinOwner::new(Arc::new(PinContext { holder: me, owner: self.pd.ctx.owner })))
    }

    /// Pins `[0, pages)` of the MR's range, or, when the tail no longer exists (a truncated
    /// file: EFAULT), the longest prefix that does.
    fn pin_prefix(&self) -> VerbsResult<PinnedMap> {
        let Backing::Pinned { aspace, start, flags, .. } = &self.backing else {
            return Err(VerbsError::invalid("not a pinned MR"));
        };
        let owner = self.owner()?;
        let try_pin = |n: u64| pin_user_pages(aspace, *start, n * PAGE_SIZE, *flags, Some(&owner));
        match try_pin(self.pages) {
            Ok(p) => return Ok(PinnedMap::new(vec![(0, p)], self.pages)),
            Err(e) if e.errno() != Errno::EFAULT => return Err(e.into()),
            Err(_) => {}
        }
        let (mut lo, mut hi) = (0u64, self.pages - 1);
        let mut best: Option<Pin> = None;
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            match try_pin(mid) {
                Ok(p) => {
                    best = Some(p);
                    lo = mid;
                }
                Err(_) => hi = mid - 1,
            }
        }
        let pins = match best.filter(|p| p.len() == lo * PAGE_SIZE) {
            Some(p) => vec![(0, p)],
            None if lo > 0 => vec![(0, try_pin(lo)?)],
            None => Vec::new(),
        };
        Ok(PinnedMap::new(pins, lo))
    }

    /// Valid → decoherent with an `MrDecoherent` event; a request that finds the MR decoherent
    /// already (a restore in progress) is still counted, so that restore pins again.
    fn request_decohere(&self, why: String) {
        self.decohere_requests.fetch_add(1, Ordering::SeqCst);
        if self
            .state
            .compare_exchange(
                MrState::Valid as u8,
                MrState::Decoherent as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
        {
            self.publish_state(MrState::Decoherent);
            self.post(EventType::MrDecoherent, format!("MR {:#x}: {why}", self.key));
        }
    }

    /// `restore_mr`: rebinds a decoherent pinned MR to the current frames of its virtual range,
    /// keeping its keys (thread 002). Drains, releases the old pins (which lets the waiting
    /// layout change proceed), re-pins (waiting for the change to finish), resumes transfers.
    pub(crate) fn restore(&self) -> VerbsResult<()> {
        if self.kind != MrKind::Pinned {
            return Err(VerbsError::invalid(format!(
                "MR {:#x} is {}: only pinned MRs decohere",
                self.key,
                self.kind.name()
            )));
        }
        if self.state() != MrState::Decoherent {
            return Err(VerbsError::invalid(format!(
                "MR {:#x} is {}, not decoherent",
                self.key,
                self.state().name()
            )));
        }
        // A layout change that starts while we re-pin finds our new pins and asks us to
        // decohere again, but we are still decoherent, so no event is posted: give the new pins
        // back and pin again after it (the re-pin waits for the change to finish).
        for attempt in 0.. {
            let requests = self.decohere_requests.load(Ordering::SeqCst);
            self.drain();
            self.set_map(PinnedMap::empty());
            let new = match self.pin_prefix() {
                Ok(new) => new,
                Err(e) => {
                    self.set_state(MrState::Revoked);
                    self.post(
                        EventType::MrRevoked,
                        format!("MR {:#x}: restore failed: {e}", self.key),
                    );
                    return Err(e);
                }
            };
            self.set_map(new);
            if self.decohere_requests.load(Ordering::SeqCst) != requests
                && attempt < RESTORE_ATTEMPTS
            {
                continue;
            }
            break;
        }
        self.restores.fetch_add(1, Ordering::Relaxed);
        let requests = self.decohere_requests.load(Ordering::SeqCst);
        if self
            .state
            .compare_exchange(
                MrState::Decoherent as u8,
                MrState::Valid as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_err()
        {
            // Revoked while we waited: drop what we pinned.
            self.release_translations();
            return Err(VerbsError::invalid(format!(
                "MR {:#x} was revoked during restore",
                self.key
            )));
        }
        self.set_state(MrState::Valid);
        if self.decohere_requests.load(Ordering::SeqCst) != requests {
            // Asked again between the last pin and going valid: decohere as a layout change
            // expects (a fresh event; the holder restores once more).
            self.request_decohere("a layout change started during restore_mr".into());
        }
        Ok(())
    }

    pub(crate) fn info(&self) -> MrInfo {
        let resident = match &self.backing {
            Backing::Pinned { map, .. } => map.lock().valid_pages(),
            Backing::Odp { table, .. } | Backing::File { table, .. } => {
                table.pages.iter().filter(|e| e.load(Ordering::Relaxed) & ODP_VALID != 0).count()
                    as u64
            }
        };
        MrInfo {
            lkey: Lkey(self.key),
            rkey: Rkey(self.key),
            addr: self.addr,
            len: self.len,
            access: self.access,
            kind: self.kind,
            state: self.state(),
            handle: self.pd.ctx.handle,
            pd: self.pd.id,
            ino: match &self.backing {
                Backing::File { ino, .. } => Some(*ino),
                _ => None,
            },
            resident_pages: resident,
            restores: self.restores.load(Ordering::Relaxed),
        }
    }

    fn destroy(&self) {
        self.set_state(MrState::Destroyed);
        self.drain();
        self.release_translations();
        self.forget();
    }
}

impl PinHolder for MrInner {
    fn info(&self) -> HolderInfo {
        let handle = self.pd.ctx.handle;
        let processes = self.dev().hooks().map(|h| h.processes(handle)).unwrap_or_default();
        HolderInfo { object: format!("MR {:#x}", self.key), handle: Some(handle), processes }
    }

    fn decohere(&self, ino: Ino, pages: Range<u64>) {
        self.request_decohere(format!(
            "layout change of {ino} pages {}..{} waits for restore_mr",
            pages.start,
            pages.end.min(u64::MAX / 2)
        ));
    }

    fn revoke(&self, why: &str) {
        MrInner::revoke(self, why);
    }

    fn kill(&self, why: &str) -> bool {
        self.dev().hooks().is_some_and(|h| h.kill(self.pd.ctx.handle, why))
    }
}

/// A registered memory region. Dropping it deregisters (waiting for transfers in flight).
pub struct MemoryRegion(pub(crate) Arc<MrInner>);

impl fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        self.0.destroy();
    }
}

impl MemoryRegion {
    /// Local key.
    pub fn lkey(&self) -> Lkey {
        Lkey(self.0.key)
    }
    /// Remote key.
    pub fn rkey(&self) -> Rkey {
        Rkey(self.0.key)
    }
    /// First address.
    pub fn addr(&self) -> u64 {
        self.0.addr
    }
    /// Length.
    pub fn len(&self) -> u64 {
        self.0.len
    }
    /// True for zero-length MRs (never: registration refuses them).
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }
    /// Kind.
    pub fn kind(&self) -> MrKind {
        self.0.kind
    }
    /// State.
    pub fn state(&self) -> MrState {
        self.0.state()
    }
    /// Access flags.
    pub fn access(&self) -> Access {
        self.0.access
    }
    /// Snapshot.
    pub fn info(&self) -> MrInfo {
        self.0.info()
    }
    /// `restore_mr` (see [`MrInner::restore`]).
    pub fn restore(&self) -> VerbsResult<()> {
        self.0.restore()
    }
    /// Revokes the MR (an administrator's or a library's decision).
    pub fn revoke(&self, why: &str) {
        self.0.revoke(why);
    }
    /// `ibv_advise_mr(PREFETCH)`: faults `[addr, addr + len)` in (ODP and file MRs).
    pub fn advise_prefetch(&self, addr: u64, len: u64, write: bool) -> VerbsResult<()> {
        let off = addr
            .checked_sub(self.0.addr)
            .ok_or_else(|| VerbsError::invalid("advise_mr: address below the MR"))?;
        self.0.prefetch(off, len, write)
    }
    /// Deregisters now.
    pub fn deregister(self) {
        drop(self);
    }
}
