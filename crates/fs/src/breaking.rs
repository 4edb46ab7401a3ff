//! `break_layout`: the single gate every layout change passes (truncate, punch, copy-on-write,
//! migration, unlink's final free, allocation, resizing, sharing). It consults the leases, the
//! file pins and the node's pin policy, and either fails, or recalls / decoheres / revokes /
//! kills and waits, and then lets the change proceed.
//!
//! States and who waits for whom:
//! 1. Refusals first, changing nothing: an unbreakable lease fails the change (`EDEADLK` for
//!    its owner, `ETXTBSY` for others); under `fs-contract`/`layout-lease`, pins on the range
//!    fail it with `ETXTBSY` naming their holders.
//! 2. A *pending break* is registered on the range: from now on new long-term pins of it wait
//!    (this is what lets `restore_mr` re-pin only the new layout) and lease grants fail
//!    `EAGAIN`.
//! 3. Breakable leases of other owners are recalled (`LeaseEvent::Recalled`, deadline =
//!    now + lease-break time). Pins are told what their policy says: `decohere` → decohere;
//!    `lease-revoke`/`lease-kill` → pins whose lease is not being recalled are revoked now.
//! 4. Wait (on the inode's condition variable, with the clock's budget) until the recalled
//!    leases are released and the pins the policy waits for are gone.
//! 5. At the deadline: remaining recalled leases are revoked (`LeaseEvent::Revoked`), remaining
//!    pins revoked (or their processes killed under `lease-kill`, then waited for, bounded by
//!    `KILL_GRACE_MS`: past it the change fails `ETIMEDOUT`).
//!
//! The caller then takes the file lock, re-checks (an unbreakable lease may have been taken in
//! between), performs the change — zap mappings and file-range subscribers first, then change
//! extents, then free blocks — and drops the pending break.
//!
//! No filesystem lock is held while holders are called or while waiting for them.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pinwheel_mm::{InvalidateReason, PAGE_SIZE, VirtAddr, VirtRange};

use crate::error::{FsError, FsResult};
use crate::fs::Shared;
use crate::holder::{LeaseEvent, PinHolder};
use crate::inode::{Inode, Layout, PendingBreak, Runtime};
use crate::lease::{LeaseKind, LeaseState};
use crate::limits::{BREAK_RETRIES, KILL_GRACE_MS};
use crate::policy::{PinAction, pin_action};
use crate::types::{Caller, FilePinId, LeaseId};

/// Why the layout changes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum LayoutReason {
    /// Truncate (shrink).
    Truncate,
    /// Punch a hole.
    Punch,
    /// Allocate blocks for holes (fallocate, allocating writes, hole faults).
    Allocate,
    /// Change the size without touching blocks (grow).
    Resize,
    /// Copy a shared block on write.
    CowBreak,
    /// Share blocks with another file (reflink source).
    Share,
    /// Move blocks (defragmentation).
    Migrate,
    /// Free the file (unlink, last reference).
    Unlink,
}

impl LayoutReason {
    /// True if the change moves or frees blocks that pins may hold.
    pub fn affects_pins(self) -> bool {
        // Sharing moves nothing, but a pinned or mapped block that becomes shared must not be
        // written in place any more (it now belongs to the clone too): pins and writable
        // translations of the source must go, so the next write copies on write.
        !matches!(self, LayoutReason::Allocate | LayoutReason::Resize)
    }
    /// Name for messages.
    pub fn name(self) -> &'static str {
        match self {
            LayoutReason::Truncate => "truncate",
            LayoutReason::Punch => "punch",
            LayoutReason::Allocate => "allocate",
            LayoutReason::Resize => "resize",
            LayoutReason::CowBreak => "copy-on-write",
            LayoutReason::Share => "reflink",
            LayoutReason::Migrate => "migrate",
            LayoutReason::Unlink => "unlink",
        }
    }
    pub(crate) fn invalidate(self) -> InvalidateReason {
        match self {
            LayoutReason::Migrate => InvalidateReason::Migration,
            LayoutReason::CowBreak => InvalidateReason::CowBreak,
            _ => InvalidateReason::FileLayout,
        }
    }
}

/// A registered pending break; dropping it ends it and wakes waiting pinners.
#[derive(Debug)]
pub(crate) struct BreakGuard {
    inode: Arc<Inode>,
    id: u64,
}

impl Drop for BreakGuard {
    fn drop(&mut self) {
        let mut rt = self.inode.rt.lock();
        rt.breaks.retain(|b| b.id != self.id);
        drop(rt);
        self.inode.cv.notify_all();
    }
}

/// Names the holders of pins for an error message.
fn holders_of(rt: &Runtime, ids: &[FilePinId]) -> String {
    // Asked afresh: the processes holding a handle change (fork, SCM_RIGHTS, exit).
    let descs: Vec<String> = ids
        .iter()
        .filter_map(|i| rt.pins.get(i))
        .map(|p| upgrade(&p.holder).map_or_else(|| p.info.to_string(), |h| h.info().to_string()))
        .collect();
    let mut uniq: Vec<String> = Vec::new();
    for d in descs {
        if !uniq.contains(&d) {
            uniq.push(d);
        }
    }
    uniq.join(", ")
}

fn upgrade(h: &Option<std::sync::Weak<dyn PinHolder>>) -> Option<Arc<dyn PinHolder>> {
    h.as_ref().and_then(std::sync::Weak::upgrade)
}

impl Shared {
    /// See the module documentation.
    pub(crate) fn break_layout(
        &self,
        inode: &Arc<Inode>,
        pages: Range<u64>,
        reason: LayoutReason,
        caller: &Caller,
    ) -> FsResult<BreakGuard> {
        let dax = !inode.layout.read().page_cache();
        let action = pin_action(self.policy(), dax);
        let op = format!("{} {}", reason.name(), inode.path());
        let deadline = self.clock().now() + self.lease_break();
        let mut rt = inode.rt.lock();
        if let Some(l) = rt.leases.iter().find(|l| l.kind == LeaseKind::Unbreakable) {
            self.counters.layout_refused.fetch_add(1, Ordering::Relaxed);
            return Err(if l.owner == caller.owner {
                FsError::Deadlock {
                    detail: format!(
                        "{op}: {} is yours (unbreakable layout lease held by {}): release it first",
                        l.id, l.owner_label
                    ),
                }
            } else {
                let pins = rt.pins.len();
                FsError::Busy {
                    detail: format!(
                        "{op}: sealed by an unbreakable layout lease ({}) held by {}; {pins} long-term pin(s): {}",
                        l.id,
                        l.owner_label,
                        holders_of(&rt, &rt.pins.keys().copied().collect::<Vec<_>>())
                    ),
                }
            });
        }
        let pins: Vec<FilePinId> = if reason.affects_pins() {
            rt.pins_on(&pages).map(|(i, _)| *i).collect()
        } else {
            Vec::new()
        };
        if action == PinAction::Refuse && !pins.is_empty() {
            self.counters.layout_refused.fetch_add(1, Ordering::Relaxed);
            return Err(FsError::Busy {
                detail: format!(
                    "{op}: {} long-term pin(s) by {}",
                    pins.len(),
                    holders_of(&rt, &pins)
                ),
            });
        }
        let id = self.id();
        rt.breaks.push(PendingBreak { id, pages: pages.clone() });
        let guard = BreakGuard { inode: Arc::clone(inode), id };
        // Recall breakable leases of other owners.
        let mut recalled: HashSet<LeaseId> = HashSet::new();
        let mut events = Vec::new();
        for l in rt.leases.iter_mut().filter(|l| l.kind.breakable() && l.owner != caller.owner) {
            if l.state == LeaseState::Active {
                l.state = LeaseState::Breaking { deadline };
                events.push((
                    l.holder.clone(),
                    LeaseEvent::Recalled { lease: l.id, ino: inode.ino, deadline },
                ));
            }
            recalled.insert(l.id);
        }
        self.counters.recalls.fetch_add(events.len() as u64, Ordering::Relaxed);
        let mut decohere = Vec::new();
        let mut revoke = Vec::new();
        for pid in &pins {
            let p = rt.pins.get_mut(pid).expect("listed above");
            match action {
                PinAction::Decohere if !p.notified => {
                    p.notified = true;
                    decohere.push(p.holder.clone());
                }
                PinAction::Revoke | PinAction::Kill
                    if !p.lease.is_some_and(|l| recalled.contains(&l)) && !p.notified =>
                {
                    p.notified = true;
                    revoke.push(p.holder.clone());
                }
                _ => {}
            }
        }
        drop(rt);
        for (h, ev) in events {
            if let Some(h) = h {
                h.lease_event(ev);
            }
        }
        self.counters.decoheres.fetch_add(decohere.len() as u64, Ordering::Relaxed);
        for h in decohere.iter().filter_map(upgrade) {
            h.decohere(inode.ino, pages.clone());
        }
        for h in revoke.iter().filter_map(upgrade) {
            self.counters.pin_revokes.fetch_add(1, Ordering::Relaxed);
            h.revoke(&format!("{op}: revoked without a recallable lease ({})", self.policy()));
        }
        self.wait_break(inode, &pages, reason, action, &recalled, deadline, &op)?;
        Ok(guard)
    }

    /// Steps 4 and 5 of the protocol.
    #[allow(clippy::too_many_arguments)]
    fn wait_break(
        &self,
        inode: &Arc<Inode>,
        pages: &Range<u64>,
        reason: LayoutReason,
        action: PinAction,
        recalled: &HashSet<LeaseId>,
        deadline: Duration,
        op: &str,
    ) -> FsResult<()> {
        let waits_for = |rt: &Runtime| -> Vec<FilePinId> {
            if !reason.affects_pins() {
                return Vec::new();
            }
            rt.pins_on(pages)
                .filter(|_| {
                    matches!(action, PinAction::Decohere | PinAction::Revoke | PinAction::Kill)
                })
                .map(|(i, _)| *i)
                .collect()
        };
        let mut rt = inode.rt.lock();
        loop {
            let leases_pending = rt.leases.iter().any(|l| recalled.contains(&l.id));
            let pins_pending = waits_for(&rt);
            if !leases_pending && pins_pending.is_empty() {
                return Ok(());
            }
            match self.clock().real_wait_budget(deadline) {
                Some(budget) => {
                    inode.cv.wait_for(&mut rt, budget);
                }
                None => break,
            }
        }
        // The deadline passed: revoke what is left.
        let mut events = Vec::new();
        rt.leases.retain(|l| {
            if recalled.contains(&l.id) {
                events
                    .push((l.holder.clone(), LeaseEvent::Revoked { lease: l.id, ino: inode.ino }));
                false
            } else {
                true
            }
        });
        self.counters.lease_revokes.fetch_add(events.len() as u64, Ordering::Relaxed);
        let remaining: Vec<_> = waits_for(&rt)
            .iter()
            .filter_map(|i| rt.pins.get(i).map(|p| p.holder.clone()))
            .collect();
        drop(rt);
        inode.cv.notify_all();
        for (h, ev) in events {
            if let Some(h) = h {
                h.lease_event(ev);
            }
        }
        let why = format!(
            "{op}: not released within the lease-break time of {} ms ({})",
            self.lease_break().as_millis(),
            self.policy()
        );
        for h in remaining.iter().filter_map(upgrade) {
            if action == PinAction::Kill && h.kill(&why) {
                self.counters.kills.fetch_add(1, Ordering::Relaxed);
            } else {
                self.counters.pin_revokes.fetch_add(1, Ordering::Relaxed);
                h.revoke(&why);
            }
        }
        // Revocation is synchronous; killed holders go away when their handle closes.
        let grace = self.clock().now() + Duration::from_millis(KILL_GRACE_MS);
        let mut rt = inode.rt.lock();
        loop {
            let left = waits_for(&rt);
            if left.iter().all(|i| rt.pins.get(i).is_some_and(|p| upgrade(&p.holder).is_none())) {
                // Pins whose holder is gone are being dropped; nothing more to ask.
                return Ok(());
            }
            match self.clock().real_wait_budget(grace) {
                Some(b) => {
                    inode.cv.wait_for(&mut rt, b);
                }
                None => {
                    return Err(FsError::TimedOut {
                        what: format!("{op}: waiting for {}", holders_of(&rt, &left)),
                    });
                }
            }
        }
    }

    /// Runs a layout change: break, then the change under the file lock, re-validated.
    pub(crate) fn layout_op<T>(
        &self,
        inode: &Arc<Inode>,
        pages: Range<u64>,
        reason: LayoutReason,
        caller: &Caller,
        mut f: impl FnMut(&mut Layout) -> FsResult<T>,
    ) -> FsResult<T> {
        for _ in 0..BREAK_RETRIES {
            let guard = self.break_layout(inode, pages.clone(), reason, caller)?;
            let mut lay = inode.layout.write();
            let raced = {
                let rt = inode.rt.lock();
                rt.sealed()
                    || (pin_action(self.policy(), !lay.page_cache()) == PinAction::Refuse
                        && reason.affects_pins()
                        && rt.pins_on(&pages).next().is_some())
            };
            if raced {
                drop(lay);
                drop(guard);
                continue;
            }
            let r = f(&mut lay);
            match &r {
                Ok(_) => {
                    self.counters.layout_changes.fetch_add(1, Ordering::Relaxed);
                }
                // A change that failed half way (ENOSPC) already moved reference counts for
                // what it did: record the extents it left, so the image stays consistent.
                Err(_) => {
                    let _ = self.persist(&mut lay);
                }
            }
            drop(lay);
            drop(guard);
            return r;
        }
        Err(FsError::TimedOut {
            what: format!(
                "{} {}: kept racing with new leases or pins",
                reason.name(),
                inode.path()
            ),
        })
    }

    /// Inside a layout change: removes every translation of `pages` (mappings in every address
    /// space, file-range subscribers) before blocks move or go. The returned guard ends the
    /// file-range invalidation; hold it until the extents are changed.
    pub(crate) fn zap<'a>(
        &self,
        inode: &'a Inode,
        pages: Range<u64>,
        reason: LayoutReason,
    ) -> pinwheel_mm::InvalidateGuard<'a> {
        self.mem().zap_file_range(inode.ino.file_id(), pages.clone(), reason.invalidate());
        let start = pages.start.saturating_mul(PAGE_SIZE);
        let end = pages.end.saturating_mul(PAGE_SIZE).max(start);
        let range = VirtRange::from_bounds(VirtAddr::new(start), VirtAddr::new(end))
            .expect("ordered bounds");
        inode.hub.invalidate(range, reason.invalidate())
    }
}
