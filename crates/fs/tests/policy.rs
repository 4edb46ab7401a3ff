//! Pin policies and layout leases, end to end with real long-term pins through pinwheel-mm:
//! each policy's registration answer and what a layout change under a pin does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use pinwheel_fs::*;
use pinwheel_mm::*;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Behaviour {
    Cooperative,
    Unresponsive,
}

/// A stand-in for an MR: pins a file mapping, answers the filesystem's calls.
#[derive(Debug)]
struct Holder {
    aspace: Arc<AddressSpace>,
    addr: VirtAddr,
    len: u64,
    owner: OwnerId,
    behaviour: Behaviour,
    pin: Mutex<Option<Pin>>,
    me: Weak<Holder>,
    decohered: AtomicUsize,
    revoked: AtomicUsize,
    restored: AtomicUsize,
}

impl Holder {
    fn new(
        aspace: &Arc<AddressSpace>,
        addr: VirtAddr,
        len: u64,
        owner: OwnerId,
        behaviour: Behaviour,
    ) -> Arc<Holder> {
        Arc::new_cyclic(|me| Holder {
            aspace: Arc::clone(aspace),
            addr,
            len,
            owner,
            behaviour,
            pin: Mutex::new(None),
            me: me.clone(),
            decohered: AtomicUsize::new(0),
            revoked: AtomicUsize::new(0),
            restored: AtomicUsize::new(0),
        })
    }

    fn pin(&self) -> Result<(), MmError> {
        let me: Arc<dyn PinHolder> = self.me.upgrade().unwrap();
        let ctx = PinOwner::new(Arc::new(PinContext { holder: me, owner: self.owner }));
        let p = pin_user_pages(
            &self.aspace,
            self.addr,
            self.len,
            PinFlags::WRITE | PinFlags::LONGTERM,
            Some(&ctx),
        )?;
        *self.pin.lock() = Some(p);
        Ok(())
    }

    fn frames(&self) -> Vec<Pfn> {
        self.pin
            .lock()
            .as_ref()
            .map(|p| p.runs().flat_map(|(_, r)| r.iter()).collect())
            .unwrap_or_default()
    }

    fn unpin(&self) {
        drop(self.pin.lock().take());
    }
}

impl PinHolder for Holder {
    fn info(&self) -> HolderInfo {
        HolderInfo {
            object: "MR 0x1a07".into(),
            handle: Some(3),
            processes: vec![(4121, "fio".into())],
        }
    }
    fn decohere(&self, _ino: Ino, _pages: std::ops::Range<u64>) {
        self.decohered.fetch_add(1, Ordering::SeqCst);
        if self.behaviour == Behaviour::Cooperative {
            // restore_mr: release the old pin, re-pin once the change is done (pinning waits
            // for the pending break), on another thread as a library would.
            let me = self.me.upgrade().unwrap();
            std::thread::spawn(move || {
                me.unpin();
                me.pin().unwrap();
                me.restored.fetch_add(1, Ordering::SeqCst);
            });
        }
    }
    fn revoke(&self, _why: &str) {
        self.revoked.fetch_add(1, Ordering::SeqCst);
        self.unpin();
    }
}

/// A lease holder that, when cooperative, gives up its pin and lease on recall.
#[derive(Debug)]
struct LeaseUser {
    open: Mutex<Option<Arc<OpenFile>>>,
    pinner: Arc<Holder>,
    events: Mutex<Vec<LeaseEvent>>,
}

impl LeaseHolder for LeaseUser {
    fn lease_event(&self, ev: LeaseEvent) {
        self.events.lock().push(ev.clone());
        if matches!(ev, LeaseEvent::Recalled { .. })
            && self.pinner.behaviour == Behaviour::Cooperative
        {
            let open = self.open.lock().clone().unwrap();
            let pinner = Arc::clone(&self.pinner);
            std::thread::spawn(move || {
                pinner.unpin();
                open.release_lease().unwrap();
            });
        }
    }
}

struct Setup {
    mem: Arc<Memory>,
    fs: Filesystem,
    ino: Ino,
    aspace: Arc<AddressSpace>,
    addr: VirtAddr,
}

const PAGES: u64 = 16;

fn setup_with(mem: Arc<Memory>, policy: PinPolicy, page_cache: bool) -> Setup {
    let fs = mkfs(&mem, policy);
    let ino = fs.create("/victim", CreateOptions { page_cache }).unwrap();
    fs.write(ino, 0, &pattern(3, (PAGES * PAGE_SIZE) as usize), &admin()).unwrap();
    let aspace = AddressSpace::new(&mem);
    let addr = aspace
        .mmap(MmapRequest::file(fs.backing(ino).unwrap(), FileOffset::new(0), PAGES * PAGE_SIZE))
        .unwrap();
    Setup { mem, fs, ino, aspace, addr }
}

fn setup(policy: PinPolicy) -> Setup {
    setup_with(memory(64), policy, false)
}

fn server() -> Caller {
    Caller::new(OwnerId(7), "pid 4121 (fio)")
}

#[test]
fn policy_deny_refuses_like_linux() {
    let s = setup(PinPolicy::Deny);
    let h = Holder::new(&s.aspace, s.addr, PAGES * PAGE_SIZE, OwnerId(7), Behaviour::Cooperative);
    assert_eq!(h.pin().unwrap_err().errno(), Errno::EOPNOTSUPP, "DAX: long-term pins refused");
    // Short-term pins (O_DIRECT-like) are fine.
    drop(pin_user_pages(&s.aspace, s.addr, PAGE_SIZE, PinFlags::WRITE, None).unwrap());
    let pc = setup_with(memory(64), PinPolicy::Deny, true);
    let h = Holder::new(&pc.aspace, pc.addr, PAGES * PAGE_SIZE, OwnerId(7), Behaviour::Cooperative);
    assert_eq!(
        h.pin().unwrap_err().errno(),
        Errno::EFAULT,
        "page cache: writable long-term pins refused (7.x)"
    );
    assert!(
        pin_user_pages(&pc.aspace, pc.addr, PAGE_SIZE, PinFlags::LONGTERM, None).is_ok(),
        "read-only long-term pins allowed"
    );
    assert_eq!(s.fs.stats().pins_refused, 1);
    assert_fsck(&s.fs);
}

#[test]
fn policy_fs_contract_needs_a_sealed_static_file() {
    let s = setup(PinPolicy::FsContract);
    let h = Holder::new(&s.aspace, s.addr, PAGES * PAGE_SIZE, OwnerId(7), Behaviour::Cooperative);
    let e = h.pin().unwrap_err();
    assert_eq!(e.errno(), Errno::EPERM);
    assert!(e.to_string().contains("not sealed"), "{e}");
    let open = s.fs.open("/victim", &server()).unwrap();
    open.seal().unwrap();
    assert!(s.fs.stat("/victim").unwrap().sealed);
    h.pin().unwrap();
    let e = s.fs.truncate(s.ino, 0, &admin()).unwrap_err();
    assert_eq!(e.errno(), Errno::ETXTBSY);
    assert!(
        e.to_string().contains("MR 0x1a07 on device handle 3 held by pid 4121 (fio)"),
        "names the culprit: {e}"
    );
    assert_eq!(
        s.fs.truncate(s.ino, 0, &server()).unwrap_err().errno(),
        Errno::EDEADLK,
        "the sealer's own truncate"
    );
    assert_eq!(
        s.fs.fallocate(s.ino, 0, 4096, FallocMode::PunchHole, &admin()).unwrap_err().errno(),
        Errno::ETXTBSY
    );
    assert_eq!(
        s.fs.defrag(s.ino, DefragOptions::default(), &admin()).unwrap_err().errno(),
        Errno::ETXTBSY
    );
    assert_eq!(s.fs.clone_file("/victim", "/copy", &admin()).unwrap_err().errno(), Errno::ETXTBSY);
    assert_eq!(open.release_lease().unwrap_err().errno(), Errno::EBUSY, "pins rely on the seal");
    h.unpin();
    open.release_lease().unwrap();
    s.fs.truncate(s.ino, 0, &admin()).unwrap();
    // Shared files and files with holes are refused too.
    let f2 = s.fs.create("/holey", CreateOptions::default()).unwrap();
    s.fs.truncate(f2, 8 * PAGE_SIZE, &admin()).unwrap();
    let a2 = s
        .aspace
        .mmap(MmapRequest::file(s.fs.backing(f2).unwrap(), FileOffset::new(0), 8 * PAGE_SIZE))
        .unwrap();
    let h2 = Holder::new(&s.aspace, a2, 8 * PAGE_SIZE, OwnerId(7), Behaviour::Cooperative);
    let e = h2.pin().unwrap_err();
    assert!(e.to_string().contains("holes"), "{e}");
    assert_fsck(&s.fs);
}

#[test]
fn policy_layout_lease_unbreakable_lease_and_file_pins() {
    let s = setup(PinPolicy::LayoutLease);
    let h = Holder::new(&s.aspace, s.addr, PAGES * PAGE_SIZE, OwnerId(7), Behaviour::Cooperative);
    assert_eq!(h.pin().unwrap_err().errno(), Errno::EPERM, "no lease");
    let open = s.fs.open("/victim", &server()).unwrap();
    open.set_lease(LeaseKind::Read, None).unwrap();
    assert_eq!(h.pin().unwrap_err().errno(), Errno::EPERM, "a breakable lease is not enough");
    assert_eq!(
        open.set_lease(LeaseKind::Unbreakable, None).unwrap_err().errno(),
        Errno::EINVAL,
        "only by downgrade"
    );
    open.set_lease(LeaseKind::Write, None).unwrap();
    open.set_lease(LeaseKind::Unbreakable, None).unwrap();
    h.pin().unwrap();
    let pins = s.fs.file_pins();
    assert_eq!(pins.len(), 1);
    assert_eq!((pins[0].offset, pins[0].len, pins[0].owner), (0, PAGES * PAGE_SIZE, OwnerId(7)));
    assert_eq!(pins[0].holder.processes, vec![(4121, "fio".to_string())]);
    assert_eq!(s.fs.leases()[0].pins, 1);
    let e = s.fs.truncate(s.ino, 0, &admin()).unwrap_err();
    assert_eq!(e.errno(), Errno::ETXTBSY);
    assert!(e.to_string().contains("held by pid 4121 (fio)"), "{e}");
    assert_eq!(s.fs.truncate(s.ino, 0, &server()).unwrap_err().errno(), Errno::EDEADLK);
    assert_eq!(s.fs.stats().layout_refused, 2);
    h.unpin();
    open.release_lease().unwrap();
    s.fs.truncate(s.ino, 0, &admin()).unwrap();
    assert_fsck(&s.fs);
}

fn lease_setup(
    policy: PinPolicy,
    behaviour: Behaviour,
    mem: Arc<Memory>,
) -> (Setup, Arc<Holder>, Arc<LeaseUser>, Arc<OpenFile>) {
    let s = setup_with(mem, policy, false);
    let h = Holder::new(&s.aspace, s.addr, PAGES * PAGE_SIZE, OwnerId(7), behaviour);
    assert_eq!(h.pin().unwrap_err().errno(), Errno::EPERM, "needs a breakable lease");
    let open = Arc::new(s.fs.open("/victim", &server()).unwrap());
    let user = Arc::new(LeaseUser {
        open: Mutex::new(Some(Arc::clone(&open))),
        pinner: Arc::clone(&h),
        events: Mutex::new(Vec::new()),
    });
    open.set_lease(LeaseKind::Read, Some(user.clone())).unwrap();
    h.pin().unwrap();
    (s, h, user, open)
}

#[test]
fn policy_lease_revoke_cooperative_holder_releases() {
    let (s, h, user, open) =
        lease_setup(PinPolicy::LeaseRevoke, Behaviour::Cooperative, memory(64));
    s.fs.set_lease_break(Duration::from_secs(30));
    s.fs.truncate(s.ino, 4 * PAGE_SIZE, &admin()).unwrap();
    assert_eq!(user.events.lock().len(), 1, "one recall");
    assert!(matches!(user.events.lock()[0], LeaseEvent::Recalled { .. }));
    assert_eq!(h.revoked.load(Ordering::SeqCst), 0);
    assert!(open.lease().is_none());
    let st = s.fs.stats();
    assert_eq!((st.recalls, st.lease_revokes, st.pin_revokes), (1, 0, 0));
    assert_eq!(s.fs.stat("/victim").unwrap().size, 4 * PAGE_SIZE);
    assert_fsck(&s.fs);
}

fn truncate_in_thread(fs: &Filesystem, ino: Ino) -> std::thread::JoinHandle<FsResult<()>> {
    let fs = fs.clone();
    std::thread::spawn(move || fs.truncate(ino, 4 * PAGE_SIZE, &Caller::admin()))
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..5000 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn policy_lease_revoke_unresponsive_holder_is_revoked_at_the_deadline() {
    let (mem, clock) = manual_memory(64);
    let (s, h, user, _open) = lease_setup(PinPolicy::LeaseRevoke, Behaviour::Unresponsive, mem);
    s.fs.set_lease_break(Duration::from_secs(45));
    let t = truncate_in_thread(&s.fs, s.ino);
    wait_until("the recall", || !user.events.lock().is_empty());
    std::thread::sleep(Duration::from_millis(20));
    assert!(!t.is_finished(), "the truncate waits for the lease-break time");
    clock.advance(Duration::from_secs(46));
    t.join().unwrap().unwrap();
    assert_eq!(h.revoked.load(Ordering::SeqCst), 1);
    assert!(matches!(user.events.lock().last(), Some(LeaseEvent::Revoked { .. })));
    assert!(s.fs.leases().is_empty());
    assert_eq!(s.fs.stats().lease_revokes, 1);
    assert_fsck(&s.fs);
}

#[test]
fn policy_lease_kill_without_a_daemon_revokes() {
    let (mem, clock) = manual_memory(64);
    let (s, h, user, _open) = lease_setup(PinPolicy::LeaseKill, Behaviour::Unresponsive, mem);
    let t = truncate_in_thread(&s.fs, s.ino);
    wait_until("the recall", || !user.events.lock().is_empty());
    clock.advance(Duration::from_secs(1));
    t.join().unwrap().unwrap();
    assert_eq!(h.revoked.load(Ordering::SeqCst), 1, "kill() unsupported embedded: revoke instead");
    assert_eq!(s.fs.stats().kills, 0);
}

#[test]
fn policy_decohere_cooperative_restore_rebinds_to_new_frames() {
    let s = setup(PinPolicy::Decohere);
    let h = Holder::new(&s.aspace, s.addr, PAGES * PAGE_SIZE, OwnerId(7), Behaviour::Cooperative);
    h.pin().unwrap();
    let before = h.frames();
    let report = s.fs.defrag(s.ino, DefragOptions::default(), &admin()).unwrap();
    assert_eq!(report.pages_moved, PAGES);
    wait_until("restore", || h.restored.load(Ordering::SeqCst) == 1);
    let after = h.frames();
    assert_eq!(after.len(), before.len());
    assert!(before.iter().all(|p| !after.contains(p)), "the restored pin holds the new blocks");
    assert_eq!(
        after,
        s.fs.extents(s.ino).unwrap().iter().flat_map(|e| e.frames().iter()).collect::<Vec<_>>()
    );
    // Content survived the move, seen through the restored pin.
    let mut b = vec![0u8; PAGE_SIZE as usize];
    s.mem.pool().read(after[5].offset(), &mut b).unwrap();
    assert_eq!(b, pattern(3, (PAGES * PAGE_SIZE) as usize)[5 * 4096..6 * 4096]);
    assert_eq!((h.decohered.load(Ordering::SeqCst), h.revoked.load(Ordering::SeqCst)), (1, 0));
    assert_fsck(&s.fs);
}

#[test]
fn policy_decohere_unresponsive_holder_is_revoked() {
    let (mem, clock) = manual_memory(64);
    let s = setup_with(mem, PinPolicy::Decohere, false);
    let h = Holder::new(&s.aspace, s.addr, PAGES * PAGE_SIZE, OwnerId(7), Behaviour::Unresponsive);
    h.pin().unwrap();
    let fs = s.fs.clone();
    let ino = s.ino;
    let t = std::thread::spawn(move || fs.defrag(ino, DefragOptions::default(), &Caller::admin()));
    wait_until("decohere", || h.decohered.load(Ordering::SeqCst) == 1);
    assert!(!t.is_finished());
    clock.advance(Duration::from_secs(1));
    t.join().unwrap().unwrap();
    assert_eq!(h.revoked.load(Ordering::SeqCst), 1);
    assert!(s.fs.file_pins().is_empty());
    assert_fsck(&s.fs);
}

#[test]
fn policy_unsafe_lets_truncate_reuse_pinned_frames() {
    let s = setup(PinPolicy::Unsafe);
    let h = Holder::new(&s.aspace, s.addr, PAGES * PAGE_SIZE, OwnerId(7), Behaviour::Cooperative);
    h.pin().unwrap();
    let pinned = h.frames();
    s.fs.truncate(s.ino, 0, &admin()).unwrap();
    assert_eq!(s.fs.stats().reused_under_dma, PAGES);
    // The next file gets the freed frames at once; DMA through the stale pin corrupts it.
    let other = file(&s.fs, "/other", PAGES, 9);
    let other_frames: Vec<Pfn> =
        s.fs.extents(other).unwrap().iter().flat_map(|e| e.frames().iter()).collect();
    assert!(other_frames.iter().any(|p| pinned.contains(p)), "freed frames reused at once");
    let victim_frame = *pinned.iter().find(|p| other_frames.contains(p)).unwrap();
    s.mem.pool().write(victim_frame.offset(), b"RDMA WRITE").unwrap();
    assert_ne!(read_all(&s.fs, other), pattern(9, (PAGES * PAGE_SIZE) as usize), "corrupted");
    h.unpin();
    assert_fsck(&s.fs);
}

#[test]
fn policy_page_cache_truncate_under_pin_loses_writes_silently() {
    let s = setup_with(memory(64), PinPolicy::Unsafe, true);
    let h = Holder::new(&s.aspace, s.addr, PAGES * PAGE_SIZE, OwnerId(7), Behaviour::Cooperative);
    h.pin().unwrap();
    let cache_frames = h.frames();
    s.fs.truncate(s.ino, 0, &admin()).unwrap();
    assert_eq!(s.fs.stats().reused_under_dma, 0, "page cache: nothing freed under DMA");
    for p in &cache_frames {
        assert_eq!(s.mem.frames().owner(*p), Owner::Orphan, "alive for the pin only");
    }
    // DMA "succeeds" into the orphan; re-growing the file shows zeros: silently lost.
    s.mem.pool().write(cache_frames[1].offset(), b"lost write").unwrap();
    s.fs.truncate(s.ino, PAGES * PAGE_SIZE, &admin()).unwrap();
    assert!(read_all(&s.fs, s.ino).iter().all(|b| *b == 0));
    let other = file(&s.fs, "/other", 4, 1);
    assert_eq!(read_all(&s.fs, other), pattern(1, 4 * 4096), "no other file corrupted");
    h.unpin();
    for p in &cache_frames {
        assert_eq!(s.mem.frames().owner(*p), Owner::Free, "freed with the last pin");
    }
    assert_fsck(&s.fs);
}

#[test]
fn lease_rules_and_recall_events() {
    let (mem, clock) = manual_memory(64);
    let fs = mkfs(&mem, PinPolicy::LeaseRevoke);
    file(&fs, "/f", 2, 1);
    let a = fs.open("/f", &Caller::new(OwnerId(1), "a")).unwrap();
    let b = fs.open("/f", &Caller::new(OwnerId(2), "b")).unwrap();
    a.set_lease(LeaseKind::Read, None).unwrap();
    b.set_lease(LeaseKind::Read, None).unwrap();
    assert_eq!(b.set_lease(LeaseKind::Write, None).unwrap_err().errno(), Errno::EAGAIN);
    b.release_lease().unwrap();
    assert_eq!(b.release_lease().unwrap_err().errno(), Errno::EINVAL);
    // The owner's own layout change does not break its lease.
    fs.truncate(a.ino(), PAGE_SIZE, &Caller::new(OwnerId(1), "a")).unwrap();
    assert_eq!(a.lease().unwrap().state, LeaseState::Active);
    // Another owner's does: recall, then revoke at the deadline (45 s by the clock).
    fs.set_lease_break(Duration::from_secs(45));
    let fs2 = fs.clone();
    let ino = a.ino();
    let t = std::thread::spawn(move || fs2.truncate(ino, 0, &Caller::new(OwnerId(2), "b")));
    wait_until("breaking", || {
        matches!(a.lease().map(|l| l.state), Some(LeaseState::Breaking { .. }))
    });
    assert_eq!(
        b.set_lease(LeaseKind::Read, None).unwrap_err().errno(),
        Errno::EAGAIN,
        "no grants during a break"
    );
    clock.advance(Duration::from_secs(44));
    std::thread::sleep(Duration::from_millis(20));
    assert!(!t.is_finished());
    clock.advance(Duration::from_secs(2));
    t.join().unwrap().unwrap();
    assert!(a.lease().is_none(), "revoked");
    // Closing drops leases.
    a.set_lease(LeaseKind::Write, None).unwrap();
    drop(a);
    assert!(fs.leases().is_empty());
    assert_fsck(&fs);
}

#[test]
fn unlink_while_mapped_defers_the_free() {
    let s = setup(PinPolicy::Deny);
    let free0 = s.fs.stats().free_blocks;
    s.fs.unlink("/victim", &admin()).unwrap();
    assert!(s.fs.lookup("/victim").is_err());
    let mut b = [0u8; 4];
    s.aspace.read(s.addr, &mut b).unwrap();
    assert_eq!(b.to_vec(), pattern(3, 4), "still readable through the mapping");
    assert_eq!(s.fs.stats().free_blocks, free0, "blocks kept while mapped");
    s.aspace.munmap(s.addr, PAGES * PAGE_SIZE).unwrap();
    wait_until("the orphan to be freed", || s.fs.stats().free_blocks == free0 + PAGES);
    assert_fsck(&s.fs);
}

/// Unlink under a long-term pin: under the coordinating policies the pin keeps the file (its
/// name goes, its blocks stay until the MR goes); under `unsafe` the blocks are freed at once
/// and reused under DMA — the original FS-DAX bug.
#[test]
fn unlink_under_pin_depends_on_the_policy() {
    for policy in [PinPolicy::LayoutLease, PinPolicy::Decohere, PinPolicy::Unsafe] {
        let s = setup(policy);
        let h =
            Holder::new(&s.aspace, s.addr, PAGES * PAGE_SIZE, OwnerId(7), Behaviour::Unresponsive);
        let open = s.fs.open("/victim", &server()).unwrap();
        if policy == PinPolicy::LayoutLease {
            open.seal().unwrap();
        }
        h.pin().unwrap();
        // The server closes its file and unmaps; only the pin is left.
        s.aspace.munmap(s.addr, PAGES * PAGE_SIZE).unwrap();
        if policy == PinPolicy::LayoutLease {
            assert_eq!(open.release_lease().unwrap_err().errno(), Errno::EBUSY);
        }
        let free0 = s.fs.stats().free_blocks;
        let before = s.fs.stats().reused_under_dma;
        let r = s.fs.unlink("/victim", &admin());
        drop(open);
        assert!(r.is_ok(), "{policy}: {r:?}");
        assert!(s.fs.lookup("/victim").is_err(), "{policy}: name removed");
        if policy == PinPolicy::Unsafe {
            wait_until("free", || s.fs.stats().free_blocks == free0 + PAGES);
            assert_eq!(s.fs.stats().reused_under_dma - before, PAGES, "freed under DMA");
        } else {
            std::thread::sleep(Duration::from_millis(30));
            assert_eq!(s.fs.stats().free_blocks, free0, "{policy}: blocks kept for the pin");
            h.unpin();
            wait_until("free after unpin", || s.fs.stats().free_blocks == free0 + PAGES);
            assert_eq!(s.fs.stats().reused_under_dma, 0);
        }
        h.unpin();
        assert_fsck(&s.fs);
    }
}
