//! Shared helpers for the verbs tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use pinwheel_fs::OwnerId;
use pinwheel_mm::*;
use pinwheel_verbs::*;

pub const T: Duration = Duration::from_secs(10);

pub struct Node {
    pub mem: Arc<Memory>,
    pub dev: Device,
    pub ctx: Context,
    pub pd: ProtectionDomain,
    pub aspace: Arc<AddressSpace>,
}

pub fn node(mib: u64) -> Node {
    let mem = Memory::new(Pool::memfd("verbs", mib << 20).unwrap(), RealClock::new());
    let dev =
        Device::open(DeviceConfig { name: "pinwheel0".into(), memory: Arc::clone(&mem), fs: None });
    let ctx = dev.open_context(OwnerId(1), "test");
    let pd = ctx.alloc_pd();
    let aspace = AddressSpace::new(&mem);
    Node { mem, dev, ctx, pd, aspace }
}

impl Node {
    /// Anonymous memory of `len` bytes filled with `byte`.
    pub fn buf(&self, len: u64, byte: u8) -> VirtAddr {
        let a = self.aspace.mmap_anonymous(len).unwrap();
        self.aspace.write(a, &vec![byte; len as usize]).unwrap();
        a
    }
    pub fn mr(&self, addr: VirtAddr, len: u64, access: Access) -> MemoryRegion {
        self.pd.reg_mr(&self.aspace, addr, len, access).unwrap()
    }
    pub fn read(&self, addr: VirtAddr, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.aspace.read(addr, &mut b).unwrap();
        b
    }
    pub fn cq(&self) -> CompletionQueue {
        self.ctx.create_cq(1024).unwrap()
    }
    pub fn qp(&self, cq: &CompletionQueue) -> QueuePair {
        self.pd
            .create_qp(QpInitAttr {
                send_cq: cq.clone(),
                recv_cq: cq.clone(),
                srq: None,
                caps: QpCaps::default(),
            })
            .unwrap()
    }
    /// Two connected QPs of this node (loopback) sharing one CQ.
    pub fn pair(&self) -> (QueuePair, QueuePair, CompletionQueue) {
        let cq = self.cq();
        let a = self.qp(&cq);
        let b = self.qp(&cq);
        a.connect_local(&b, Access::all_rw()).unwrap();
        (a, b, cq)
    }
}

pub fn sge(mr: &MemoryRegion, addr: VirtAddr, len: u32) -> Sge {
    Sge { addr: addr.raw(), length: len, lkey: mr.lkey() }
}

pub fn wc(cq: &CompletionQueue) -> WorkCompletion {
    cq.next(T).expect("a completion within 10 s")
}
