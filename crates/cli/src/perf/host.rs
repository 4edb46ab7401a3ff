//! One side of a benchmark: a node (memfd pool, filesystem, device), a context, a PD and an
//! address space, and the registered buffers the tests move bytes between.
//!
//! The benchmark touches its own buffers the way a process touches memory it mapped: through
//! the pool frames behind them (the flag byte of the latency ping-pong, the baseline copy).
//! The frames of a pinned MR do not move while it is registered, so they are looked up once.

use std::sync::Arc;

use pinwheel::fs::OwnerId;
use pinwheel::mm::{AddressSpace, Memory, PAGE_SIZE, Pool, PoolOffset, VirtAddr};
use pinwheel::{
    Access, CompletionQueue, Context, MemoryRegion, Node, NodeConfig, PoolSpec, ProtectionDomain,
    QpCaps, QpInitAttr, Rkey, Sge,
};

use crate::error::CliError;

/// A node and what the benchmark opened on it.
#[derive(Debug)]
pub(crate) struct Host {
    pub(crate) node: Node,
    pub(crate) ctx: Context,
    pub(crate) pd: ProtectionDomain,
    pub(crate) aspace: Arc<AddressSpace>,
}

/// A registered buffer: `len` bytes at `addr`, and the pool pieces behind them.
#[derive(Debug)]
pub(crate) struct Buffer {
    pub(crate) addr: VirtAddr,
    pub(crate) mr: MemoryRegion,
    mem: Arc<Memory>,
    /// Physically contiguous pieces `(pool offset, bytes)`, in order.
    segments: Vec<(PoolOffset, u64)>,
}

/// Whose mapping of the pool: this process's node, or a node daemon's pool as a client maps it.
#[derive(Clone, Debug)]
pub(crate) enum PoolRef {
    Node(Arc<Memory>),
    Client(pinwheel::client::Context),
}

impl PoolRef {
    pub(crate) fn pool(&self) -> &Pool {
        match self {
            PoolRef::Node(m) => m.pool(),
            PoolRef::Client(c) => c.pool(),
        }
    }
}

/// The last byte of a message in a buffer: the latency ping-pong's signal (perftest polls
/// `buf[size - 1]` the same way).
#[derive(Clone, Debug)]
pub(crate) struct Flag {
    pool: PoolRef,
    word: PoolOffset,
    shift: u64,
    byte: PoolOffset,
}

impl Flag {
    /// The flag at pool offset `byte`.
    pub(crate) fn at(pool: PoolRef, byte: PoolOffset) -> Flag {
        Flag { pool, word: PoolOffset::new(byte.raw() & !7), shift: 8 * (byte.raw() & 7), byte }
    }
    /// The byte's current value (an atomic load of the word holding it: the engine may be
    /// writing it).
    pub(crate) fn get(&self) -> Result<u8, CliError> {
        let w = self.pool.pool().load_u64(self.word).map_err(|e| pool_error("poll the flag", e))?;
        Ok((w >> self.shift) as u8)
    }
    /// Stores `v`.
    pub(crate) fn set(&self, v: u8) -> Result<(), CliError> {
        self.pool.pool().write(self.byte, &[v]).map_err(|e| pool_error("set the flag", e))
    }
}

pub(crate) fn pool_error(what: &str, e: pinwheel::mm::MmError) -> CliError {
    CliError::Pool { op: "perf", path: format!("pool ({what})"), error: e }
}

fn verbs(what: &str) -> impl FnOnce(pinwheel::VerbsError) -> CliError + '_ {
    move |e| CliError::verbs("perf", what, e)
}

impl Host {
    /// A fresh node named `name` over a memfd pool of `pool_bytes` (sparse: only what the
    /// buffers touch costs memory).
    pub(crate) fn new(name: &str, pool_bytes: u64) -> Result<Host, CliError> {
        Host::with_config(NodeConfig {
            name: name.into(),
            pool: PoolSpec::Memfd { size: pool_bytes.next_multiple_of(PAGE_SIZE) },
            ..NodeConfig::default()
        })
    }

    /// A fresh node of `cfg` (a pin policy, a lease-break time).
    pub(crate) fn with_config(cfg: NodeConfig) -> Result<Host, CliError> {
        let pool_bytes = match &cfg.pool {
            PoolSpec::Memfd { size } => *size,
            PoolSpec::File { size, .. } => size.unwrap_or(0),
        };
        let node = Node::new(cfg)
            .map_err(|e| CliError::node("perf", format!("memfd pool of {pool_bytes} bytes"), e))?;
        let ctx = node.device.open_context(OwnerId(1), "perf");
        let pd = ctx.alloc_pd();
        let aspace = AddressSpace::new(&node.memory);
        Ok(Host { node, ctx, pd, aspace })
    }

    /// Maps `len` bytes of anonymous memory, fills it with `fill` (so every frame is resident
    /// before the clock starts) and registers it with `access`.
    pub(crate) fn buffer(&self, len: u64, access: Access, fill: u8) -> Result<Buffer, CliError> {
        let map_len = len.max(1).next_multiple_of(PAGE_SIZE);
        let addr = self
            .aspace
            .mmap_anonymous(map_len)
            .map_err(|e| pool_error(&format!("map a buffer of {len} bytes"), e))?;
        let chunk = vec![fill; map_len.min(1 << 20) as usize];
        let mut at = 0;
        while at < map_len {
            let n = (map_len - at).min(chunk.len() as u64);
            self.aspace
                .write(VirtAddr::new(addr.raw() + at), &chunk[..n as usize])
                .map_err(|e| pool_error("fill a buffer", e))?;
            at += n;
        }
        let mr = self
            .pd
            .reg_mr(&self.aspace, addr, map_len, access)
            .map_err(verbs(&format!("register a buffer of {len} bytes")))?;
        let mut segments: Vec<(PoolOffset, u64)> = Vec::new();
        for page in 0..map_len / PAGE_SIZE {
            let va = VirtAddr::new(addr.raw() + page * PAGE_SIZE);
            let pfn = self.aspace.translate(va).ok_or_else(|| {
                CliError::invalid("perf", "buffer", format!("page {va} not resident after pinning"))
            })?;
            match segments.last_mut() {
                Some((p, l)) if p.raw() + *l == pfn.offset().raw() => *l += PAGE_SIZE,
                _ => segments.push((pfn.offset(), PAGE_SIZE)),
            }
        }
        Ok(Buffer { addr, mr, mem: Arc::clone(&self.node.memory), segments })
    }

    /// A completion queue of `depth` entries.
    pub(crate) fn cq(&self, depth: usize) -> Result<CompletionQueue, CliError> {
        self.ctx.create_cq(depth).map_err(verbs("create a completion queue"))
    }

    /// What `create_qp` / `connect` / `accept` need.
    pub(crate) fn qp_init(
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        send_depth: u32,
        recv_depth: u32,
    ) -> QpInitAttr {
        QpInitAttr {
            send_cq: send_cq.clone(),
            recv_cq: recv_cq.clone(),
            srq: None,
            caps: QpCaps {
                max_send_wr: send_depth,
                max_recv_wr: recv_depth,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
        }
    }
}

impl Buffer {
    /// `len` bytes from byte `off`, as a scatter/gather element.
    pub(crate) fn sge(&self, off: u64, len: u64) -> Sge {
        Sge { addr: self.addr.raw() + off, length: len as u32, lkey: self.mr.lkey() }
    }
    /// The remote key.
    pub(crate) fn rkey(&self) -> Rkey {
        self.mr.rkey()
    }

    /// The pool offset of byte `off`.
    fn offset_of(&self, off: u64) -> Option<PoolOffset> {
        let mut base = 0;
        for (p, l) in &self.segments {
            if off < base + l {
                return Some(PoolOffset::new(p.raw() + off - base));
            }
            base += l;
        }
        None
    }

    /// The flag at byte `off` (the last byte of a message).
    pub(crate) fn flag(&self, off: u64) -> Result<Flag, CliError> {
        let byte = self
            .offset_of(off)
            .ok_or_else(|| CliError::invalid("perf", "buffer", format!("no byte {off} in it")))?;
        Ok(Flag::at(PoolRef::Node(Arc::clone(&self.mem)), byte))
    }

    /// Writes `data` at byte `off` (a CPU store into the mapped buffer).
    pub(crate) fn write(&self, off: u64, data: &[u8]) -> Result<(), CliError> {
        let mut done = 0usize;
        while done < data.len() {
            let p = self
                .offset_of(off + done as u64)
                .ok_or_else(|| CliError::invalid("perf", "buffer", "write beyond it"))?;
            let n = ((PAGE_SIZE - p.page_offset()) as usize).min(data.len() - done);
            self.mem.pool().write(p, &data[done..done + n]).map_err(|e| pool_error("write", e))?;
            done += n;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at byte `off`.
    pub(crate) fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), CliError> {
        let mut done = 0usize;
        while done < buf.len() {
            let p = self
                .offset_of(off + done as u64)
                .ok_or_else(|| CliError::invalid("perf", "buffer", "read beyond it"))?;
            let n = ((PAGE_SIZE - p.page_offset()) as usize).min(buf.len() - done);
            self.mem.pool().read(p, &mut buf[done..done + n]).map_err(|e| pool_error("read", e))?;
            done += n;
        }
        Ok(())
    }

    /// Copies the first `len` bytes of `self` into `dst` with the pool's own copy (the
    /// baseline of the loopback bandwidth tests: one thread, the same frames the RDMA
    /// transfer moves between).
    pub(crate) fn copy_to(&self, dst: &Buffer, len: u64) -> Result<(), CliError> {
        copy_pieces(self.mem.pool(), &self.segments, &dst.segments, len)
    }
}

/// Copies `len` bytes from the pool pieces `src` to the pool pieces `dst` (each physically
/// contiguous, in order) with the pool's copies: the memcpy baselines.
pub(crate) fn copy_pieces(
    pool: &Pool,
    src: &[(PoolOffset, u64)],
    dst: &[(PoolOffset, u64)],
    len: u64,
) -> Result<(), CliError> {
    let (mut si, mut so, mut di, mut d_off, mut left) = (0usize, 0u64, 0usize, 0u64, len);
    while left > 0 {
        let (Some(&(sp, sl)), Some(&(dp, dl))) = (src.get(si), dst.get(di)) else {
            return Err(CliError::invalid("perf", "buffer", "copy beyond it"));
        };
        let n = (sl - so).min(dl - d_off).min(left);
        pool.copy(PoolOffset::new(sp.raw() + so), PoolOffset::new(dp.raw() + d_off), n)
            .map_err(|e| pool_error("copy", e))?;
        so += n;
        d_off += n;
        left -= n;
        if so == sl {
            si += 1;
            so = 0;
        }
        if d_off == dl {
            di += 1;
            d_off = 0;
        }
    }
    Ok(())
}
