#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The coherence protocols against a client process's transfer in flight (`docs/shm.md`).
//!
//! The races are made deterministic the way `pinwheel-verbs`' `coherence.rs` makes them with a
//! raw TCP peer: a client executor is stopped *inside* an MR — it entered exactly as the
//! client engine does (its QP's executor word, the MR named in a hazard word, the state
//! checked, the target translated), through the same public `verbs::shm` API — and only then
//! the node revokes or invalidates. Each protected run is paired with a control run with the
//! drain switched off (`Device::set_coherence_checks(false)`), which must show the late write
//! landing in a frame the MR no longer owns: so the protected run fails if the drain goes.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pinwheel::client::{Context, LeaseKind};
use pinwheel::fs::PinPolicy;
use pinwheel::mm::{FrameRun, Memory, Owner, PAGE_SIZE, Pfn, Placement, PoolOffset};
use pinwheel::node::daemon::Daemon;
use pinwheel::node::proto::{FsOp, Reply};
use pinwheel::verbs::limits::SHM_DRAIN_MS;
use pinwheel::verbs::shm::Executor;
use pinwheel::{Access, MrState, Rkey};

/// A client executor stopped inside an MR, about to store 8 bytes at `at`.
struct Inside<'a> {
    ctx: &'a Context,
    ex: Executor,
    at: PoolOffset,
    rkey: Rkey,
}

impl<'a> Inside<'a> {
    /// Enters MR `rkey` at byte `off` as the client engine does, on the executor words of QP
    /// slot `slot` of `ctx`.
    fn enter(ctx: &'a Context, slot: u32, rkey: Rkey, off: u64) -> Inside<'a> {
        let (pool, region) = (ctx.pool(), ctx.region().expect("a device region"));
        let ex = region.executor(slot);
        ex.lock(pool, std::process::id()).unwrap();
        ex.enter(pool, slot, None, Some(rkey.0 >> 8));
        let v = region.mr(pool, rkey.0).expect("the MR is in the table");
        assert!(v.current(pool));
        assert_eq!(v.state(pool), MrState::Valid);
        let mut at = None;
        v.segments(pool, off, 8, true, &mut |p, _| {
            at = Some(p);
            Ok::<(), ()>(())
        })
        .expect("translated")
        .unwrap();
        Inside { ctx, ex, at: at.unwrap(), rkey }
    }

    fn state(&self) -> MrState {
        let region = self.ctx.region().unwrap();
        region
            .mr(self.ctx.pool(), self.rkey.0)
            .map_or(MrState::Destroyed, |v| v.state(self.ctx.pool()))
    }

    fn translated(&self, off: u64) -> bool {
        let region = self.ctx.region().unwrap();
        let Some(v) = region.mr(self.ctx.pool(), self.rkey.0) else { return false };
        v.segments(self.ctx.pool(), off, 8, true, &mut |_, _| Ok::<(), ()>(())).is_ok()
    }

    fn pfn(&self) -> Pfn {
        Pfn::new(self.at.raw() / PAGE_SIZE)
    }

    /// The stalled transfer's store, then it leaves (the executor word stays its process's,
    /// as the library keeps it).
    fn store_and_leave(self) {
        self.ctx.pool().write(self.at, &[0xee; 8]).unwrap();
        self.ex.clear(self.ctx.pool());
    }
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A file of 4 pages registered (pinned) by `b` under a breakable read lease.
fn file_mr(
    d: &Daemon,
    b: &End,
) -> (u64, pinwheel::client::MemoryRegion, pinwheel::client::OpenFile) {
    let admin = Context::connect(d.socket()).unwrap();
    let Reply::Ino(ino) = admin.fs(FsOp::Create { path: "/f".into(), page_cache: false }).unwrap()
    else {
        panic!()
    };
    admin.fs(FsOp::Write { ino, offset: 0, data: vec![0x11; 16384] }).unwrap();
    let f = b.ctx.open_file("/f", false).unwrap();
    f.set_lease(LeaseKind::Read).unwrap();
    let map = b.ctx.map_file("/f", 0, 16384, true).unwrap();
    let mr = b.pd.reg_mr(map.addr(), 16384, Access::all_rw()).unwrap();
    std::mem::forget(map); // the mapping lives with the handle
    (ino, mr, f)
}

/// Revocation (`lease-revoke`: a truncate recalls the lease, then revokes the MR) while a
/// client is inside the MR. Returns (the truncate waited for the client, the client's store
/// landed in a frame the file no longer owned).
fn revoke_race(checks: bool) -> (bool, bool) {
    let (d, _dir) = daemon(PinPolicy::LeaseRevoke, Duration::from_millis(200));
    d.node().device.set_coherence_checks(checks);
    let (a, b) = pair(&d, 8192);
    let (ino, mr, _f) = file_mr(&d, &b);
    let inside = Inside::enter(&a.ctx, a.qp.shm_slot().unwrap(), mr.rkey(), 4096 + 64);
    let frame = inside.pfn();
    let admin = Context::connect(d.socket()).unwrap();
    let truncate = std::thread::spawn(move || admin.fs(FsOp::Truncate { ino, size: 0 }).unwrap());
    wait_for("the MR revoked", || inside.state() == MrState::Revoked);
    std::thread::sleep(Duration::from_millis(150));
    let waited = !truncate.is_finished();
    if !waited {
        truncate.join().unwrap();
        return (false, owned_by_file(&d.node().memory, frame, inside));
    }
    let late = owned_by_file(&d.node().memory, frame, inside);
    truncate.join().unwrap();
    (true, late)
}

/// Does the straggler's store hit a frame the file no longer owns? (It stores, then leaves.)
fn owned_by_file(mem: &Arc<Memory>, frame: Pfn, inside: Inside<'_>) -> bool {
    let owner = mem.frames().info(frame).owner;
    inside.store_and_leave();
    !matches!(owner, Owner::FileBlock(_))
}

#[test]
fn shm_revoke_waits_for_a_client_inside_the_mr() {
    let (waited, corrupted) = revoke_race(true);
    assert!(waited, "the revocation returned while a client was inside the MR");
    assert!(!corrupted, "the client's store reached a freed frame");
}

#[test]
fn shm_revoke_control_without_the_drain_corrupts() {
    let (waited, corrupted) = revoke_race(false);
    assert!(!waited, "without the drain nothing waits");
    assert!(corrupted, "the straggler's store lands in a frame the file freed");
}

/// ODP invalidation (the buffer unmapped) while a client is inside the ODP MR. Returns (the
/// unmap waited for the client, its store hit a frame already freed).
fn odp_race(checks: bool) -> (bool, bool) {
    let (d, _dir) = daemon(PinPolicy::Deny, Duration::from_millis(300));
    d.node().device.set_coherence_checks(checks);
    let (a, b) = pair(&d, 8192);
    let region = b.ctx.alloc(4 * 4096).unwrap();
    let odp = b.pd.reg_mr(region.addr(), 4 * 4096, Access::all_rw() | Access::ON_DEMAND).unwrap();
    // A real transfer faults the page in (the client asks the daemon, then retries).
    a.qp.post_send(&[pinwheel::SendWr::write(1, a.sge(0, 8), odp.addr() + 64, odp.rkey())])
        .unwrap();
    assert_eq!(a.wc().status, pinwheel::WcStatus::Success);
    let inside = Inside::enter(&a.ctx, a.qp.shm_slot().unwrap(), odp.rkey(), 64);
    let frame = inside.pfn();
    assert_eq!(d.node().memory.frames().info(frame).owner, Owner::Anonymous);
    let unmap = std::thread::spawn(move || drop(region));
    wait_for("the translation cleared", || !inside.translated(64));
    std::thread::sleep(Duration::from_millis(150));
    let waited = !unmap.is_finished();
    let unmap = if waited {
        Some(unmap)
    } else {
        unmap.join().unwrap();
        None
    };
    let owner = d.node().memory.frames().info(frame).owner;
    inside.store_and_leave();
    if let Some(u) = unmap {
        u.join().unwrap();
    }
    drop(odp);
    (waited, owner != Owner::Anonymous)
}

#[test]
fn shm_odp_invalidation_waits_for_a_client_copy() {
    let (waited, corrupted) = odp_race(true);
    assert!(waited, "munmap returned while a client was copying into the page");
    assert!(!corrupted, "the client's store reached a freed frame");
}

#[test]
fn shm_odp_invalidation_control_without_the_drain_corrupts() {
    let (waited, corrupted) = odp_race(false);
    assert!(!waited);
    assert!(corrupted, "the straggler's store lands in a frame already freed");
}

/// A client that stays inside past the drain deadline does not hold the node hostage: the
/// revocation proceeds, the old frames are quarantined (never handed out) until it leaves.
#[test]
fn shm_stalled_client_is_quarantined_not_waited_for() {
    let (d, _dir) = daemon(PinPolicy::LeaseRevoke, Duration::from_millis(200));
    let (a, b) = pair(&d, 8192);
    let (ino, mr, _f) = file_mr(&d, &b);
    let inside = Inside::enter(&a.ctx, a.qp.shm_slot().unwrap(), mr.rkey(), 8192);
    let frame = inside.pfn();
    let admin = Context::connect(d.socket()).unwrap();
    let t0 = Instant::now();
    admin.fs(FsOp::Truncate { ino, size: 0 }).unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(SHM_DRAIN_MS), "the drain waited its deadline");
    let mem = &d.node().memory;
    assert!(mem.quarantined_frames() >= 1);
    assert_eq!(d.node().device.quarantines(), 1);
    // The frame the client may still store into is never handed out while it is inside.
    let mut taken = Vec::new();
    while let Ok(r) = mem.alloc(1, Placement::Anywhere, Owner::Device, false) {
        assert_ne!(r[0].pfn, frame, "a quarantined frame was reused");
        taken.push(r[0]);
    }
    for r in taken {
        mem.free(r);
    }
    inside.store_and_leave();
    // The daemon's periodic reaping lifts the quarantine once the client left.
    wait_for("the quarantine lifted", || mem.quarantined_frames() == 0);
    assert_eq!(d.node().device.quarantines(), 0);
    let r = mem.alloc(1, Placement::Anywhere, Owner::Device, false).unwrap();
    mem.free(FrameRun::new(r[0].pfn, 1));
}
