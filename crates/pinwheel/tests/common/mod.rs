//! What the shared-data-path tests share: an in-process daemon and connected client ends.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pinwheel::client::{
    Buffer, CompletionQueue, Context, MemoryRegion, ProtectionDomain, QpInit, QueuePair,
};
use pinwheel::fs::PinPolicy;
use pinwheel::node::daemon::{Daemon, DaemonConfig};
use pinwheel::{Access, Node, NodeConfig, PoolSpec, Qpn, Sge, WcOpcode, WcStatus, WorkCompletion};

/// Every wait of a test.
pub const T: Duration = Duration::from_secs(10);

pub fn daemon(policy: PinPolicy, lease_break: Duration) -> (Daemon, tempfile::TempDir) {
    daemon_on(policy, lease_break, None)
}

/// An in-process daemon on a fresh socket, also serving remote nodes on `listen` if given.
pub fn daemon_on(
    policy: PinPolicy,
    lease_break: Duration,
    listen: Option<&str>,
) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(NodeConfig {
        name: "shm0".into(),
        pool: PoolSpec::Memfd { size: 64 << 20 },
        format: true,
        policy,
        lease_break,
        inodes: None,
    })
    .unwrap();
    let d = Daemon::start(
        node,
        DaemonConfig { socket: dir.path().join("node.sock"), listen: listen.map(String::from) },
    )
    .unwrap();
    (d, dir)
}

/// One client handle with a buffer, its MR, a CQ and a QP.
pub struct End {
    pub qp: QueuePair,
    pub cq: CompletionQueue,
    pub mr: MemoryRegion,
    pub buf: Buffer,
    pub pd: ProtectionDomain,
    pub ctx: Context,
}

pub fn end(d: &Daemon, len: u64) -> End {
    let ctx = Context::connect(d.socket()).unwrap();
    let pd = ctx.alloc_pd().unwrap();
    let buf = ctx.alloc(len).unwrap();
    let mr = pd.reg_mr(buf.addr(), len, Access::all_rw()).unwrap();
    let cq = ctx.create_cq(256).unwrap();
    let qp = pd.create_qp(&cq, &cq, QpInit::default()).unwrap();
    End { qp, cq, mr, buf, pd, ctx }
}

/// Two ends, their QPs connected.
pub fn pair(d: &Daemon, len: u64) -> (End, End) {
    let a = end(d, len);
    let b = end(d, len);
    a.qp.connect(b.qp.qpn(), Access::all_rw()).unwrap();
    (a, b)
}

impl End {
    pub fn sge(&self, off: u64, len: u32) -> Sge {
        Sge { addr: self.buf.addr() + off, length: len, lkey: self.mr.lkey() }
    }
    pub fn read(&self, off: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.buf.read(off, &mut b).unwrap();
        b
    }
    /// The next completion (within `T`).
    pub fn wc(&self) -> WorkCompletion {
        self.cq.next(T).unwrap().expect("a completion within the test's wait")
    }
}

pub fn blank() -> WorkCompletion {
    WorkCompletion {
        wr_id: 0,
        status: WcStatus::GeneralErr,
        opcode: WcOpcode::Send,
        byte_len: 0,
        imm: None,
        qpn: Qpn(0),
    }
}
