//! Criterion micro-benchmarks of the verbs hot paths, through the public API only:
//! `cargo bench -p pinwheel-verbs --bench verbs` (`-- --quick` for a smoke run).
//!
//! Every case is one 8-byte loopback RDMA WRITE, posted and completed (the poster's thread
//! executes it), so the cases differ only in the part named:
//! - `key/cached`: the target MR's key is the one the QP's executor used last (its MR cache);
//! - `key/table`: 64 MRs written in turn, more than the cache keeps: every request looks its
//!   MR up in the device's key table (index + generation, under a read lock);
//! - `translate/{pinned,odp,file}`: the target is a pinned MR, an ODP MR whose pages are
//!   resident (a translation hit in its page table) or a file MR whose pages are resident
//!   (a hit in the translation it keeps from the extent map).
//!
//! And `ring/push_pop`: one completion entry pushed into and popped from a shared-memory ring
//! (`shm::Ring`, the CQ and receive queues of the shared data path), one thread.

use std::sync::Arc;

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use pinwheel_fs::{Caller, CreateOptions, Filesystem, MkfsOptions, MountOptions, OwnerId};
use pinwheel_mm::{AddressSpace, Memory, PAGE_SIZE, Pool, RealClock};
use pinwheel_verbs::{
    Access, CompletionQueue, Device, DeviceConfig, MemoryRegion, ProtectionDomain, QpCaps,
    QpInitAttr, QueuePair, SendWr, Sge, WcStatus,
};

struct Bench {
    fs: Filesystem,
    pd: ProtectionDomain,
    aspace: Arc<AddressSpace>,
    qp: QueuePair,
    _peer: QueuePair,
    cq: CompletionQueue,
    src: MemoryRegion,
}

fn setup() -> Bench {
    let mem = Memory::new(Pool::memfd("verbs-bench", 256 << 20).expect("pool"), RealClock::new());
    let fs = Filesystem::mkfs(&mem, MkfsOptions::default(), MountOptions::default()).expect("mkfs");
    let dev = Device::open(DeviceConfig {
        name: "pinwheel0".into(),
        memory: Arc::clone(&mem),
        fs: Some(fs.clone()),
    });
    let ctx = dev.open_context(OwnerId(1), "bench");
    let pd = ctx.alloc_pd();
    let aspace = AddressSpace::new(&mem);
    let cq = ctx.create_cq(256).expect("cq");
    let init = || QpInitAttr {
        send_cq: cq.clone(),
        recv_cq: cq.clone(),
        srq: None,
        caps: QpCaps::default(),
    };
    let qp = pd.create_qp(init()).expect("qp");
    let peer = pd.create_qp(init()).expect("qp");
    qp.connect_local(&peer, Access::all_rw()).expect("connect");
    let a = aspace.mmap_anonymous(PAGE_SIZE).expect("mmap");
    aspace.write(a, &[1; 64]).expect("touch");
    let src = pd.reg_mr(&aspace, a, PAGE_SIZE, Access::all_rw()).expect("reg");
    Bench { fs, pd, aspace, qp, _peer: peer, cq, src }
}

impl Bench {
    fn sge(&self) -> Sge {
        Sge { addr: self.src.addr(), length: 8, lkey: self.src.lkey() }
    }
    /// One WRITE of 8 bytes to `addr` of `mr`, posted and completed.
    fn write(&self, mr: &MemoryRegion, addr: u64) {
        self.qp.post_send(&[SendWr::write(0, self.sge(), addr, mr.rkey())]).expect("post");
        let wc = loop {
            if let Some(wc) = self.cq.poll_one() {
                break wc;
            }
        };
        assert_eq!(wc.status, WcStatus::Success);
    }
    /// A resident anonymous region of `pages`, registered with `access`.
    fn region(&self, pages: u64, access: Access) -> MemoryRegion {
        let a = self.aspace.mmap_anonymous(pages * PAGE_SIZE).expect("mmap");
        self.aspace.write(a, &vec![2; (pages * PAGE_SIZE) as usize]).expect("touch");
        self.pd.reg_mr(&self.aspace, a, pages * PAGE_SIZE, access).expect("reg")
    }
}

fn keys(c: &mut Criterion) {
    let b = setup();
    let mrs: Vec<MemoryRegion> = (0..64).map(|_| b.region(1, Access::all_rw())).collect();
    let mut g = c.benchmark_group("key");
    g.bench_function("cached", |x| x.iter(|| b.write(&mrs[0], black_box(mrs[0].addr()))));
    let mut i = 0usize;
    g.bench_function("table", |x| {
        x.iter(|| {
            i = (i + 1) % mrs.len();
            b.write(&mrs[i], black_box(mrs[i].addr()))
        })
    });
    g.finish();
}

fn translate(c: &mut Criterion) {
    let b = setup();
    let pages = 256u64;
    let pinned = b.region(pages, Access::all_rw());
    let odp = b.region(pages, Access::all_rw() | Access::ON_DEMAND);
    odp.advise_prefetch(odp.addr(), pages * PAGE_SIZE, true).expect("prefetch");
    let ino = b.fs.create("/bench", CreateOptions::default()).expect("create");
    b.fs.write(ino, 0, &vec![3; (pages * PAGE_SIZE) as usize], &Caller::admin()).expect("write");
    let file = b.pd.reg_file_mr(&b.fs, ino, 0, pages * PAGE_SIZE, Access::all_rw()).expect("reg");
    file.advise_prefetch(0, pages * PAGE_SIZE, true).expect("prefetch");
    let mut g = c.benchmark_group("translate");
    for (name, mr) in [("pinned", &pinned), ("odp", &odp), ("file", &file)] {
        let mut page = 0u64;
        g.bench_function(name, |x| {
            x.iter(|| {
                page = (page + 7) % pages;
                b.write(mr, mr.addr() + page * PAGE_SIZE)
            })
        });
    }
    g.finish();
}

fn ring(c: &mut Criterion) {
    use pinwheel_mm::PoolOffset;
    use pinwheel_verbs::shm::{CQE_WORDS, Ring};
    let pool = Pool::memfd("ring-bench", 16 << 20).expect("pool");
    let r = Ring::create(&pool, PoolOffset::new(0), 1024, CQE_WORDS);
    let mut out = [0u64; CQE_WORDS as usize];
    let mut g = c.benchmark_group("ring");
    g.bench_function("push_pop", |x| {
        x.iter(|| {
            r.push(&pool, black_box(&[1, 2, 3])).expect("room");
            r.pop(&pool, &mut out).expect("an entry")
        })
    });
    g.finish();
}

criterion_group!(benches, keys, translate, ring);
criterion_main!(benches);
