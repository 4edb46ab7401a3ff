//! The coherence protocols against concurrent DMA.
//!
//! Races are made deterministic with a raw TCP peer: it sends an RDMA WRITE header and the
//! first half of the payload, then waits until those bytes are visibly in the target frame —
//! the responder is now provably inside the MR, blocked reading the rest — and only then the
//! test invalidates or revokes. Each protected run is paired with a control run with the
//! coherence machinery switched off (`Device::set_coherence_checks(false)`), which must show
//! the corruption: so the protected run fails if the protection is removed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pinwheel_fs::*;
use pinwheel_mm::*;
use pinwheel_verbs::*;

// --- a raw peer speaking the wire protocol (transport/wire.rs) ---

fn header(kind: u8, psn: u32, rkey: u32, addr: u64, len: u32) -> [u8; 48] {
    let mut b = [0u8; 48];
    b[0..2].copy_from_slice(&0x5750u16.to_le_bytes());
    b[2] = 1;
    b[3] = kind;
    b[4] = 7;
    b[8..12].copy_from_slice(&psn.to_le_bytes());
    b[12..16].copy_from_slice(&rkey.to_le_bytes());
    b[16..24].copy_from_slice(&addr.to_le_bytes());
    b[24..28].copy_from_slice(&len.to_le_bytes());
    b
}

fn raw_connect(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(&0x99u32.to_le_bytes());
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&3u16.to_le_bytes());
    body.extend_from_slice(b"raw");
    body.extend_from_slice(&0u16.to_le_bytes());
    let mut h = header(32, 0, 0, 0, body.len() as u32);
    h[4] = 0;
    s.write_all(&h).unwrap();
    s.write_all(&body).unwrap();
    let mut hb = [0u8; 48];
    s.read_exact(&mut hb).unwrap();
    let n = u32::from_le_bytes(hb[24..28].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; n];
    s.read_exact(&mut rest).unwrap();
    s
}

/// (kind, status) of the next response.
fn response(s: &mut TcpStream) -> (u8, u8) {
    let mut hb = [0u8; 48];
    s.read_exact(&mut hb).unwrap();
    (hb[3], hb[4])
}

const ACK: u8 = 16;
const NAK: u8 = 17;

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct Served {
    n: Node,
    port: u16,
    accept: std::thread::JoinHandle<QueuePair>,
}

fn serve(n: Node) -> Served {
    let listener = n.dev.listen("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let pd = n.pd.clone();
    let cq = n.cq();
    let accept = std::thread::spawn(move || {
        let init =
            QpInitAttr { send_cq: cq.clone(), recv_cq: cq, srq: None, caps: QpCaps::default() };
        listener.accept(&pd, init, Access::all_rw(), &[], T).unwrap().0
    });
    Served { n, port, accept }
}

fn frame_bytes(mem: &Memory, frame: Pfn) -> Vec<u8> {
    let mut b = vec![0u8; PAGE_SIZE as usize];
    mem.pool().read(frame.offset(), &mut b).unwrap();
    b
}

/// ODP invalidation (munmap) while a remote WRITE is inside the MR. Returns (munmap waited for
/// the transfer, the canary that reused the freed frame was corrupted).
fn odp_invalidation(checks: bool) -> (bool, bool) {
    let sv = serve(node(64));
    sv.n.dev.set_coherence_checks(checks);
    let region = sv.n.aspace.mmap_anonymous(2 * PAGE_SIZE).unwrap();
    let mr = sv.n.mr(region, 2 * PAGE_SIZE, Access::all_rw() | Access::ON_DEMAND);
    let mut s = raw_connect(sv.port);
    let _qp = sv.accept.join().unwrap();
    s.write_all(&header(1, 1, mr.rkey().0, region.raw(), 2 * PAGE_SIZE as u32)).unwrap();
    s.write_all(&[0xd1; PAGE_SIZE as usize]).unwrap();
    // The responder faulted the pages in and wrote the first half: it is inside the MR.
    wait_for("the first half in the frame", || {
        sv.n.aspace.translate(region).is_some_and(|f| frame_bytes(&sv.n.mem, f) == vec![0xd1; 4096])
    });
    let second = sv.n.aspace.translate(VirtAddr::new(region.raw() + PAGE_SIZE)).unwrap();
    let aspace = Arc::clone(&sv.n.aspace);
    let unmap = std::thread::spawn(move || aspace.munmap(region, 2 * PAGE_SIZE).unwrap());
    std::thread::sleep(Duration::from_millis(50));
    let waited = !unmap.is_finished();
    let mut unmap = Some(unmap);
    if !waited {
        unmap.take().unwrap().join().unwrap();
    }
    // Without protection the frames are free now: a new allocation takes them (LIFO).
    let canary_space = AddressSpace::new(&sv.n.mem);
    let c = canary_space.mmap_anonymous(4 * PAGE_SIZE).unwrap();
    if !waited {
        canary_space.write(c, &vec![0xca; 4 * PAGE_SIZE as usize]).unwrap();
    }
    s.write_all(&[0xd2; PAGE_SIZE as usize]).unwrap();
    let (kind, _) = response(&mut s);
    if waited {
        assert_eq!(kind, ACK, "the write in flight completes");
        unmap.take().unwrap().join().unwrap();
        canary_space.write(c, &vec![0xca; 4 * PAGE_SIZE as usize]).unwrap();
    }
    let mut after = vec![0u8; 4 * PAGE_SIZE as usize];
    canary_space.read(c, &mut after).unwrap();
    let corrupted = after.iter().any(|b| *b != 0xca);
    let _ = second;
    drop(mr);
    (waited, corrupted)
}

#[test]
fn odp_invalidation_waits_for_in_flight_dma() {
    let (waited, corrupted) = odp_invalidation(true);
    assert!(waited, "munmap returned while a transfer was inside the MR");
    assert!(!corrupted, "invariant 4: DMA reached a frame after invalidate returned");
}

#[test]
fn odp_invalidation_without_draining_corrupts_the_next_owner() {
    let (waited, corrupted) = odp_invalidation(false);
    assert!(!waited);
    assert!(
        corrupted,
        "the race is real: without the in-flight drain, the frame's next owner is overwritten"
    );
}

/// Revocation while a remote WRITE is inside a pinned MR. After `revoke` returns, the
/// application reuses its buffer (writes a canary into it); no byte of the revoked transfer may
/// land afterwards. Returns (revoke waited, canary corrupted, response kind of a later write).
fn revoke_in_flight(checks: bool) -> (bool, bool, u8) {
    let sv = serve(node(64));
    sv.n.dev.set_coherence_checks(checks);
    let region = sv.n.buf(2 * PAGE_SIZE, 0);
    let mr = Arc::new(sv.n.mr(region, 2 * PAGE_SIZE, Access::all_rw()));
    let mut s = raw_connect(sv.port);
    let _qp = sv.accept.join().unwrap();
    s.write_all(&header(1, 1, mr.rkey().0, region.raw(), 2 * PAGE_SIZE as u32)).unwrap();
    s.write_all(&[0xe1; PAGE_SIZE as usize]).unwrap();
    let first = sv.n.aspace.translate(region).unwrap();
    wait_for("the first half in the frame", || frame_bytes(&sv.n.mem, first) == vec![0xe1; 4096]);
    let m2 = Arc::clone(&mr);
    let revoke = std::thread::spawn(move || m2.revoke("test"));
    std::thread::sleep(Duration::from_millis(50));
    let waited = !revoke.is_finished();
    let canary = vec![0xca; 2 * PAGE_SIZE as usize];
    if !waited {
        sv.n.aspace.write(region, &canary).unwrap();
    }
    s.write_all(&[0xe2; PAGE_SIZE as usize]).unwrap();
    let (kind, _) = response(&mut s);
    revoke.join().unwrap();
    if waited {
        assert_eq!(kind, ACK, "the write that was in flight completes");
        sv.n.aspace.write(region, &canary).unwrap();
    }
    std::thread::sleep(Duration::from_millis(10));
    let corrupted = sv.n.read(region, canary.len()) != canary;
    // Later writes are refused: the MR is revoked.
    s.write_all(&header(1, 2, mr.rkey().0, region.raw(), 16)).unwrap();
    s.write_all(&[0xee; 16]).unwrap();
    let (later, _) = response(&mut s);
    (waited, corrupted, later)
}

#[test]
fn revoke_waits_for_in_flight_remote_write() {
    let (waited, corrupted, later) = revoke_in_flight(true);
    assert!(waited, "revoke returned while a WRITE was inside the MR");
    assert!(!corrupted, "bytes reached memory freed after the revocation");
    assert_eq!(later, NAK, "writes after the revocation are refused");
}

#[test]
fn revoke_without_draining_lets_bytes_land_after_it_returns() {
    let (waited, corrupted, _) = revoke_in_flight(false);
    assert!(!waited);
    assert!(
        corrupted,
        "the race is real: without the drain, bytes land in the buffer after revoke returned"
    );
}

#[test]
fn odp_follows_dontneed_and_refaults() {
    let n = node(64);
    let (a, _b, cq) = n.pair();
    let src = n.buf(PAGE_SIZE, 0x11);
    let smr = n.mr(src, PAGE_SIZE, Access::all_rw());
    let region = n.aspace.mmap_anonymous(4 * PAGE_SIZE).unwrap();
    let odp = n.mr(region, 4 * PAGE_SIZE, Access::all_rw() | Access::ON_DEMAND);
    assert_eq!(odp.info().resident_pages, 0, "nothing pinned or faulted at registration");
    a.post_send(&[SendWr::write(1, sge(&smr, src, 4096), region.raw() + PAGE_SIZE, odp.rkey())])
        .unwrap();
    assert_eq!(wc(&cq).status, WcStatus::Success);
    assert_eq!(odp.info().resident_pages, 1);
    assert_eq!(n.read(VirtAddr::new(region.raw() + PAGE_SIZE), 4096), vec![0x11; 4096]);
    n.aspace.madvise_dontneed(region, 4 * PAGE_SIZE).unwrap();
    assert_eq!(odp.info().resident_pages, 0, "invalidated");
    assert_eq!(
        n.read(VirtAddr::new(region.raw() + PAGE_SIZE), 4096),
        vec![0; 4096],
        "DONTNEED: zeros"
    );
    a.post_send(&[SendWr::write(2, sge(&smr, src, 4096), region.raw() + PAGE_SIZE, odp.rkey())])
        .unwrap();
    assert_eq!(wc(&cq).status, WcStatus::Success);
    assert_eq!(
        n.read(VirtAddr::new(region.raw() + PAGE_SIZE), 4096),
        vec![0x11; 4096],
        "coherent after the refault"
    );
    odp.advise_prefetch(region.raw(), 4 * PAGE_SIZE, true).unwrap();
    assert_eq!(odp.info().resident_pages, 4);
    assert_eq!(n.mem.stats().live_pins, 1, "only the pinned source MR pins");
}

/// A node with a DAX filesystem and a device that knows it.
struct FsNode {
    n: Node,
    fs: Filesystem,
}

fn fs_node(policy: PinPolicy) -> FsNode {
    fs_node_with(policy, Duration::from_secs(30))
}

fn fs_node_with(policy: PinPolicy, lease_break: Duration) -> FsNode {
    let mem = Memory::new(Pool::memfd("verbs-fs", 64 << 20).unwrap(), RealClock::new());
    let fs = Filesystem::mkfs(&mem, MkfsOptions::default(), MountOptions { policy, lease_break })
        .unwrap();
    let dev = Device::open(DeviceConfig {
        name: "pinwheel0".into(),
        memory: Arc::clone(&mem),
        fs: Some(fs.clone()),
    });
    let ctx = dev.open_context(OwnerId(1), "server");
    let pd = ctx.alloc_pd();
    let aspace = AddressSpace::new(&mem);
    FsNode { n: Node { mem, dev, ctx, pd, aspace }, fs }
}

fn victim(f: &FsNode, pages: u64) -> (Ino, VirtAddr) {
    let ino = f.fs.create("/victim", CreateOptions::default()).unwrap();
    f.fs.write(ino, 0, &vec![0x33; (pages * PAGE_SIZE) as usize], &Caller::admin()).unwrap();
    let at = f
        .n
        .aspace
        .mmap(MmapRequest::file(f.fs.backing(ino).unwrap(), FileOffset::new(0), pages * PAGE_SIZE))
        .unwrap();
    (ino, at)
}

#[test]
fn restore_mr_resumes_held_work_onto_the_new_blocks() {
    let f = fs_node(PinPolicy::Decohere);
    let (ino, at) = victim(&f, 16);
    let mr = f.n.mr(at, 16 * PAGE_SIZE, Access::all_rw());
    let old: Vec<Pfn> = f.fs.extents(ino).unwrap().iter().flat_map(|e| e.frames().iter()).collect();
    let (a, _b, cq) = f.n.pair();
    let src = f.n.buf(PAGE_SIZE, 0x5a);
    let smr = f.n.mr(src, PAGE_SIZE, Access::all_rw());
    let fs = f.fs.clone();
    let defrag =
        std::thread::spawn(move || fs.defrag(ino, DefragOptions::default(), &Caller::admin()));
    let ev = f.n.ctx.get_async_event(T).expect("MrDecoherent");
    assert_eq!((ev.kind, ev.mr), (EventType::MrDecoherent, Some(mr.lkey())));
    assert_eq!(mr.state(), MrState::Decoherent);
    // Work posted now is held, not failed.
    let wrs: Vec<SendWr> = (0..10)
        .map(|i| SendWr::write(i, sge(&smr, src, 64), at.raw() + i * PAGE_SIZE, mr.rkey()))
        .collect();
    a.post_send(&wrs).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    assert!(cq.poll_one().is_none(), "held, not completed");
    assert!(!defrag.is_finished(), "the layout change waits for restore_mr");
    mr.restore().unwrap();
    let report = defrag.join().unwrap().unwrap();
    assert_eq!(report.pages_moved, 16);
    for i in 0..10 {
        let w = wc(&cq);
        assert_eq!((w.wr_id, w.status), (i, WcStatus::Success));
    }
    let new: Vec<Pfn> = f.fs.extents(ino).unwrap().iter().flat_map(|e| e.frames().iter()).collect();
    assert!(old.iter().all(|p| !new.contains(p)));
    let mut content = vec![0u8; 16 * PAGE_SIZE as usize];
    f.fs.read(ino, 0, &mut content).unwrap();
    for i in 0..16usize {
        let page = &content[i * 4096..(i + 1) * 4096];
        let want = if i < 10 { 0x5a } else { 0x33 };
        assert_eq!(page[0], want, "page {i}: the held write landed in the file's new block");
        assert_eq!(page[64], 0x33);
    }
    assert_eq!((mr.state(), mr.info().restores), (MrState::Valid, 1));
    assert!(f.fs.fsck().clean());
}

/// A loopback WRITE translates a pinned MR through a snapshot its QP's executor keeps between
/// requests. After a restore_mr onto the file's new blocks, the next WRITE through the same QP
/// must land there, not in the old frames the snapshot described — with the coherence checks
/// on (the snapshot holds no pin) and off (it holds the old map until it sees the change).
#[test]
fn restore_mr_moves_cached_translations_too() {
    for checks in [true, false] {
        let f = fs_node(PinPolicy::Decohere);
        f.n.dev.set_coherence_checks(checks);
        let (ino, at) = victim(&f, 4);
        let mr = f.n.mr(at, 4 * PAGE_SIZE, Access::all_rw());
        let old: Vec<Pfn> =
            f.fs.extents(ino).unwrap().iter().flat_map(|e| e.frames().iter()).collect();
        let (a, _b, cq) = f.n.pair();
        let src = f.n.buf(PAGE_SIZE, 0x5a);
        let smr = f.n.mr(src, PAGE_SIZE, Access::all_rw());
        // Cached: MR entries and a snapshot of the victim's current map.
        a.post_send(&[SendWr::write(1, sge(&smr, src, 64), at.raw(), mr.rkey())]).unwrap();
        assert_eq!(wc(&cq).status, WcStatus::Success);
        let fs = f.fs.clone();
        let defrag =
            std::thread::spawn(move || fs.defrag(ino, DefragOptions::default(), &Caller::admin()));
        let ev = f.n.ctx.get_async_event(T).expect("MrDecoherent");
        assert_eq!(ev.kind, EventType::MrDecoherent);
        mr.restore().unwrap();
        assert_eq!(defrag.join().unwrap().unwrap().pages_moved, 4);
        let new: Vec<Pfn> =
            f.fs.extents(ino).unwrap().iter().flat_map(|e| e.frames().iter()).collect();
        assert!(old.iter().all(|p| !new.contains(p)));
        f.n.aspace.write(src, &[0x77; 64]).unwrap();
        a.post_send(&[SendWr::write(2, sge(&smr, src, 64), at.raw() + PAGE_SIZE, mr.rkey())])
            .unwrap();
        assert_eq!(wc(&cq).status, WcStatus::Success, "checks {checks}");
        let mut content = vec![0u8; 4 * PAGE_SIZE as usize];
        f.fs.read(ino, 0, &mut content).unwrap();
        assert_eq!(&content[..64], &[0x5a; 64], "checks {checks}: the first write, moved");
        let page1 = PAGE_SIZE as usize;
        assert_eq!(
            &content[page1..page1 + 64],
            &[0x77; 64],
            "checks {checks}: the write after restore_mr missed the file's new block"
        );
        assert!(f.fs.fsck().clean());
    }
}

#[test]
fn deny_refuses_pinned_dax_but_odp_works_and_follows_truncate() {
    let f = fs_node(PinPolicy::Deny);
    let (ino, at) = victim(&f, 8);
    let e = f.n.pd.reg_mr(&f.n.aspace, at, 8 * PAGE_SIZE, Access::all_rw()).unwrap_err();
    assert_eq!(e.errno(), Errno::EOPNOTSUPP);
    let odp = f.n.mr(at, 8 * PAGE_SIZE, Access::all_rw() | Access::ON_DEMAND);
    let (a, _b, cq) = f.n.pair();
    let src = f.n.buf(PAGE_SIZE, 0x77);
    let smr = f.n.mr(src, PAGE_SIZE, Access::all_rw());
    a.post_send(&[SendWr::write(1, sge(&smr, src, 4096), at.raw() + 6 * PAGE_SIZE, odp.rkey())])
        .unwrap();
    assert_eq!(wc(&cq).status, WcStatus::Success);
    let mut b = [0u8; 1];
    f.fs.read(ino, 6 * PAGE_SIZE, &mut b).unwrap();
    assert_eq!(b[0], 0x77, "RDMA through ODP lands in the DAX file");
    f.fs.truncate(ino, 4 * PAGE_SIZE, &Caller::admin()).unwrap();
    a.post_send(&[SendWr::write(2, sge(&smr, src, 4096), at.raw() + 6 * PAGE_SIZE, odp.rkey())])
        .unwrap();
    assert_eq!(wc(&cq).status, WcStatus::RemAccessErr, "the truncated range fails cleanly");
    assert_eq!(a.state(), QpState::Error);
}

#[test]
fn file_mr_follows_layout_changes() {
    let f = fs_node(PinPolicy::Deny);
    let (ino, _) = victim(&f, 8);
    let fmr = f.n.pd.reg_file_mr(&f.fs, ino, 0, 8 * PAGE_SIZE, Access::all_rw()).unwrap();
    assert_eq!(fmr.kind(), MrKind::File);
    let (a, _b, cq) = f.n.pair();
    let src = f.n.buf(PAGE_SIZE, 0x21);
    let smr = f.n.mr(src, PAGE_SIZE, Access::all_rw());
    a.post_send(&[SendWr::write(1, sge(&smr, src, 100), 3 * PAGE_SIZE + 5, fmr.rkey())]).unwrap();
    assert_eq!(wc(&cq).status, WcStatus::Success);
    f.fs.defrag(ino, DefragOptions::default(), &Caller::admin()).unwrap();
    assert_eq!(fmr.info().resident_pages, 0, "the move invalidated every translation");
    a.post_send(&[SendWr::write(2, sge(&smr, src, 100), 5 * PAGE_SIZE, fmr.rkey())]).unwrap();
    assert_eq!(wc(&cq).status, WcStatus::Success);
    let mut content = vec![0u8; 8 * PAGE_SIZE as usize];
    f.fs.read(ino, 0, &mut content).unwrap();
    assert_eq!(
        &content[3 * 4096 + 5..3 * 4096 + 105],
        &[0x21; 100][..],
        "written before the move, moved with the block"
    );
    assert_eq!(
        &content[5 * 4096..5 * 4096 + 100],
        &[0x21; 100][..],
        "written after the move, in the new block"
    );
    f.fs.truncate(ino, 2 * PAGE_SIZE, &Caller::admin()).unwrap();
    a.post_send(&[SendWr::write(3, sge(&smr, src, 100), 5 * PAGE_SIZE, fmr.rkey())]).unwrap();
    assert_eq!(wc(&cq).status, WcStatus::RemAccessErr);
}

#[test]
fn restore_after_reflink_writes_the_victim_not_the_clone() {
    let f = fs_node(PinPolicy::Decohere);
    let (ino, at) = victim(&f, 16);
    let mr = f.n.mr(at, 16 * PAGE_SIZE, Access::all_rw());
    let fs = f.fs.clone();
    let clone = std::thread::spawn(move || fs.clone_file("/victim", "/snap", &Caller::admin()));
    let ev = f.n.ctx.get_async_event(T).expect("MrDecoherent");
    assert_eq!((ev.kind, ev.mr), (EventType::MrDecoherent, Some(mr.lkey())));
    mr.restore().unwrap();
    let snap = clone.join().unwrap().unwrap();
    assert_eq!(mr.info().resident_pages, 16, "restore pinned the whole range");
    let (a, _b, cq) = f.n.pair();
    let src = f.n.buf(PAGE_SIZE, 0x6b);
    let smr = f.n.mr(src, PAGE_SIZE, Access::all_rw());
    let wrs: Vec<SendWr> = (0..16)
        .map(|i| SendWr::write(i, sge(&smr, src, 64), at.raw() + i * PAGE_SIZE, mr.rkey()))
        .collect();
    a.post_send(&wrs).unwrap();
    for i in 0..16 {
        let w = wc(&cq);
        assert_eq!((w.wr_id, w.status), (i, WcStatus::Success));
    }
    let (mut v, mut s) = (vec![0u8; 16 * 4096], vec![0u8; 16 * 4096]);
    f.fs.read(ino, 0, &mut v).unwrap();
    f.fs.read(snap, 0, &mut s).unwrap();
    for i in 0..16usize {
        assert_eq!(v[i * 4096], 0x6b, "page {i}: the write landed in the victim");
        assert_eq!(s[i * 4096], 0x33, "page {i}: the clone kept the data of the clone time");
    }
    assert!(f.fs.fsck().clean());
}

/// A layout change that starts while `restore_mr` is re-pinning finds the new pins and asks for
/// them back; the MR is still decoherent, so no event can tell the holder. The restore must
/// give them back itself, or the change waits the whole lease-break time and revokes the MR.
#[test]
fn layout_change_during_restore_is_not_left_waiting() {
    let f = fs_node_with(PinPolicy::Decohere, Duration::from_secs(3));
    let pages = 256;
    let (ino, at) = victim(&f, pages);
    let mr = f.n.mr(at, pages * PAGE_SIZE, Access::all_rw());
    for round in 0..6 {
        let fs = f.fs.clone();
        let admin = std::thread::spawn(move || {
            let t = Instant::now();
            let snap = format!("/snap{round}");
            fs.clone_file("/victim", &snap, &Caller::admin()).unwrap();
            // Copy-on-write of every page, racing the restore's own re-pin.
            for page in (0..pages).rev() {
                fs.write(ino, page * PAGE_SIZE + 4000, b"admin", &Caller::admin()).unwrap();
            }
            fs.unlink(&snap, &Caller::admin()).unwrap();
            t.elapsed()
        });
        let deadline = Instant::now() + T;
        while !admin.is_finished() {
            assert!(Instant::now() < deadline, "round {round}: the administrator hung");
            if let Some(ev) = f.n.ctx.get_async_event(Duration::from_millis(5)) {
                assert_ne!(ev.kind, EventType::MrRevoked, "round {round}: {}", ev.detail);
                if ev.kind == EventType::MrDecoherent {
                    mr.restore().unwrap();
                }
            }
        }
        let took = admin.join().unwrap();
        assert!(
            took < Duration::from_secs(2),
            "round {round}: the layout changes waited {took:?} for pins a restore had taken"
        );
        assert_eq!(mr.state(), MrState::Valid, "round {round}");
    }
    assert!(f.fs.fsck().clean());
}
