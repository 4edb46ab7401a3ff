//! The device: one per node. Owns the MR key table, the QP table, the progress thread that
//! resumes held queue pairs, the hooks the node daemon installs (who holds a handle; kill), and
//! its region of the pool (`shm`): the MR and QP tables client processes read.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};
use pinwheel_fs::{Filesystem, OwnerId};
use pinwheel_mm::{Memory, PAGE_SIZE};

use crate::context::{Context, ContextInner};
use crate::error::{VerbsError, VerbsResult};
use crate::limits::*;
use crate::mr::{MrInfo, MrInner};
use crate::qp::{QpInfo, QpInner};
use crate::shm::Region;
use crate::types::{make_key, split_key};

/// What the node provides to the device: who holds a device handle, and killing them
/// (`lease-kill`). Without hooks (embedded use) nobody is known and nobody can be killed.
pub trait DeviceHooks: Send + Sync + fmt::Debug {
    /// Processes holding handle `handle`: (pid, command name).
    fn processes(&self, handle: u64) -> Vec<(u32, String)>;
    /// SIGKILL every process holding `handle`; true if any was signalled.
    fn kill(&self, handle: u64, why: &str) -> bool;
}

/// Device attributes, as `ibv_query_device` reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceAttr {
    /// Device name.
    pub name: String,
    /// Firmware version string.
    pub fw_ver: String,
    /// Node GUID.
    pub node_guid: u64,
    /// System image GUID: the node's, as for any single-device node (rxe does the same).
    pub sys_image_guid: u64,
    /// Vendor id (none: a software device).
    pub vendor_id: u32,
    /// Vendor part id (none).
    pub vendor_part_id: u32,
    /// Hardware version (none).
    pub hw_ver: u32,
    /// Largest MR.
    pub max_mr_size: u64,
    /// Supported page sizes (bitmask).
    pub page_size_cap: u64,
    /// QPs.
    pub max_qp: u32,
    /// WRs per queue.
    pub max_qp_wr: u32,
    /// SGEs per WR.
    pub max_sge: u32,
    /// CQs.
    pub max_cq: u32,
    /// CQEs per CQ.
    pub max_cqe: u32,
    /// MRs.
    pub max_mr: u32,
    /// PDs.
    pub max_pd: u32,
    /// Outstanding READ/atomic per QP.
    pub max_qp_rd_atom: u32,
    /// SRQs.
    pub max_srq: u32,
    /// Receives per SRQ.
    pub max_srq_wr: u32,
    /// SGEs per SRQ receive.
    pub max_srq_sge: u32,
    /// Entries of the port's P_Key table.
    pub max_pkeys: u16,
    /// Inline data per send.
    pub max_inline_data: u32,
    /// Largest message.
    pub max_msg_sz: u64,
    /// `ATOMIC_HCA`: atomics are atomic with respect to everything on the node.
    pub atomic_cap: &'static str,
    /// General ODP capabilities (`IBV_ODP_SUPPORT*` without the prefix): explicit ODP only,
    /// an ODP MR names a range (no implicit whole-address-space MR).
    pub odp_general_caps: Vec<&'static str>,
    /// ODP support for RC: the operations that may target ODP MRs.
    pub odp_rc_caps: Vec<&'static str>,
    /// Whether MR de-coherence and `restore_mr` are supported (pinwheel's extension).
    pub restore_mr: bool,
    /// Physical ports.
    pub phys_port_cnt: u8,
    /// Port state (`IBV_PORT_*` without the prefix): a software port is always up.
    pub port_state: &'static str,
    /// Largest path MTU a QP may use (bytes).
    pub max_mtu: u32,
    /// Port MTU (bytes).
    pub active_mtu: u32,
    /// What carries the port's traffic: QPs of the node among themselves, TCP to others.
    pub link_layer: &'static str,
    /// Transport name.
    pub transport: &'static str,
}

struct Slot {
    generation: u8,
    mr: Option<Arc<MrInner>>,
}

/// MR keys: index (24 bits) + generation (8 bits); a stale key fails lookup. The index is
/// also the MR's slot in the region's MR table, so there are as many keys as slots.
pub(crate) struct MrTable {
    slots: RwLock<Vec<Slot>>,
    free: Mutex<Vec<u32>>,
    max: u32,
}

impl MrTable {
    fn new(max: u32) -> MrTable {
        // Index 0 is never used: key 0 is invalid.
        MrTable {
            slots: RwLock::new(vec![Slot { generation: 0, mr: None }]),
            free: Mutex::new(Vec::new()),
            max,
        }
    }

    /// Keys available (the device's `max_mr`).
    pub(crate) fn max(&self) -> u32 {
        self.max
    }

    /// Reserves a key.
    pub(crate) fn reserve(&self) -> Option<u32> {
        if let Some(i) = self.free.lock().pop() {
            let g = self.slots.read()[i as usize].generation;
            return Some(make_key(i, g));
        }
        let mut s = self.slots.write();
        let i = s.len() as u32;
        if i >= self.max {
            return None;
        }
        s.push(Slot { generation: 1, mr: None });
        Some(make_key(i, 1))
    }

    pub(crate) fn install(&self, key: u32, mr: Arc<MrInner>) {
        let (i, _) = split_key(key);
        self.slots.write()[i as usize].mr = Some(mr);
    }

    /// Frees a key; the next user of the slot gets another generation.
    pub(crate) fn release(&self, key: u32) {
        let (i, g) = split_key(key);
        let mut s = self.slots.write();
        let Some(slot) = s.get_mut(i as usize) else { return };
        if slot.generation != g {
            return;
        }
        slot.mr = None;
        slot.generation = slot.generation.wrapping_add(1).max(1);
        drop(s);
        self.free.lock().push(i);
    }

    pub(crate) fn get(&self, key: u32) -> Option<Arc<MrInner>> {
        let (i, g) = split_key(key);
        let s = self.slots.read();
        let slot = s.get(i as usize)?;
        if slot.generation != g {
            return None;
        }
        slot.mr.clone()
    }

    pub(crate) fn all(&self) -> Vec<Arc<MrInner>> {
        self.slots.read().iter().filter_map(|s| s.mr.clone()).collect()
    }
}

/// Counters of the device.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) bytes_written: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) ops: AtomicU64,
    pub(crate) held: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) odp_faults: AtomicU64,
}

pub(crate) struct DeviceInner {
    pub(crate) name: String,
    pub(crate) guid: u64,
    pub(crate) mem: Arc<Memory>,
    pub(crate) fs: Option<Filesystem>,
    pub(crate) mrs: MrTable,
    pub(crate) qps: RwLock<HashMap<u32, Weak<QpInner>>>,
    pub(crate) contexts: Mutex<Vec<Weak<ContextInner>>>,
    next_qpn: AtomicU32,
    next_id: AtomicU32,
    next_handle: AtomicU64,
    /// Coherence machinery on the fast path (MR state and in-flight accounting). Off only to
    /// measure what it costs.
    pub(crate) coherence: AtomicBool,
    pub(crate) hooks: RwLock<Option<Arc<dyn DeviceHooks>>>,
    kick: Mutex<Option<mpsc::Sender<Weak<QpInner>>>>,
    pub(crate) counters: Counters,
    /// The MR and QP tables in the pool (`None` if the pool had no room for them: clients then
    /// go through the daemon for everything).
    pub(crate) region: Option<Region>,
    qps_max: u32,
}

impl fmt::Debug for DeviceInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device").field("name", &self.name).finish_non_exhaustive()
    }
}

impl DeviceInner {
    pub(crate) fn next_id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
    pub(crate) fn next_qpn(&self) -> u32 {
        self.next_qpn.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff
    }
    pub(crate) fn coherence(&self) -> bool {
        self.coherence.load(Ordering::Relaxed)
    }
    pub(crate) fn hooks(&self) -> Option<Arc<dyn DeviceHooks>> {
        self.hooks.read().clone()
    }
    pub(crate) fn qp(&self, qpn: u32) -> Option<Arc<QpInner>> {
        self.qps.read().get(&qpn).and_then(Weak::upgrade)
    }

    /// Asks the progress thread to resume a held queue pair.
    pub(crate) fn kick(self: &Arc<Self>, qp: Weak<QpInner>) {
        let mut k = self.kick.lock();
        if k.is_none() {
            let (tx, rx) = mpsc::channel::<Weak<QpInner>>();
            let dev = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name(format!("{}-progress", self.name))
                .spawn(move || {
                    while let Ok(q) = rx.recv() {
                        if dev.strong_count() == 0 {
                            return;
                        }
                        if let Some(q) = q.upgrade() {
                            crate::engine::progress(&q);
                        }
                    }
                })
                .is_ok();
            if spawned {
                *k = Some(tx);
            }
        }
        if let Some(tx) = k.as_ref() {
            let _ = tx.send(qp);
        }
    }
}

/// The software RDMA device of a node.
#[derive(Clone, Debug)]
pub struct Device(pub(crate) Arc<DeviceInner>);

/// What a device is made from.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// Name (`pinwheel0`).
    pub name: String,
    /// The node's memory: every MR and DMA lives in its pool.
    pub memory: Arc<Memory>,
    /// The node's filesystem, for file MRs and lease routing.
    pub fs: Option<Filesystem>,
}

impl Device {
    /// Opens a device over a node's memory.
    pub fn open(cfg: DeviceConfig) -> Device {
        let guid = 0x7077_0000_0000_0000
            | (std::process::id() as u64) << 16
            | (cfg.memory.pool().size() >> 20 & 0xffff);
        let region = Region::new(&cfg.memory);
        if region.is_none() {
            tracing::warn!("no room in the pool for the device region: no shared data path");
        }
        let (mr_max, qps_max) =
            region.as_ref().map_or((MAX_MR, MAX_QP), |r| (r.mr_slots(), r.qp_slots()));
        Device(Arc::new(DeviceInner {
            name: cfg.name,
            guid,
            mem: cfg.memory,
            fs: cfg.fs,
            mrs: MrTable::new(mr_max),
            qps: RwLock::new(HashMap::new()),
            contexts: Mutex::new(Vec::new()),
            next_qpn: AtomicU32::new(0x11),
            next_id: AtomicU32::new(1),
            next_handle: AtomicU64::new(3),
            coherence: AtomicBool::new(true),
            hooks: RwLock::new(None),
            kick: Mutex::new(None),
            counters: Counters::default(),
            region,
            qps_max,
        }))
    }

    /// Where the device region is in the pool (what a client process attaches to), if any.
    pub fn region_offset(&self) -> Option<pinwheel_mm::PoolOffset> {
        self.0.region.as_ref().map(|r| r.view.base())
    }

    /// Lifts the quarantines of frames whose stalled client executors have left or died (the
    /// daemon calls it periodically; drains call it too).
    pub fn reap_quarantines(&self) {
        if let Some(r) = &self.0.region {
            r.reap();
        }
    }

    /// Faults bytes `[off, off + len)` of the MR named `key` in (an ODP or file MR; nothing
    /// to do for a pinned one): a client process found them absent from the MR's translation
    /// table. The key is the capability: any MR of the node can be named.
    pub fn fault_for_client(&self, key: u32, off: u64, len: u64, write: bool) -> VerbsResult<()> {
        let mr = self
            .0
            .mrs
            .get(key)
            .ok_or_else(|| VerbsError::invalid(format!("key {key:#x}: no such MR")))?;
        mr.prefetch(off, len, write)
    }

    /// Quarantines in force (each holds the frames of one drain that gave up waiting).
    pub fn quarantines(&self) -> usize {
        self.0.region.as_ref().map_or(0, |r| r.quarantines())
    }

    /// Opens a context (a device handle) on behalf of `owner`.
    pub fn open_context(&self, owner: OwnerId, label: impl Into<String>) -> Context {
        let handle = self.0.next_handle.fetch_add(1, Ordering::Relaxed);
        let ctx = ContextInner::new(Arc::clone(&self.0), handle, owner, label.into());
        self.0.contexts.lock().push(Arc::downgrade(&ctx));
        Context(ctx)
    }

    /// Device attributes.
    pub fn attr(&self) -> DeviceAttr {
        DeviceAttr {
            name: self.0.name.clone(),
            fw_ver: format!("pinwheel {}", env!("CARGO_PKG_VERSION")),
            node_guid: self.0.guid,
            sys_image_guid: self.0.guid,
            vendor_id: 0,
            vendor_part_id: 0,
            hw_ver: 0,
            max_mr_size: MAX_MR_SIZE,
            page_size_cap: PAGE_SIZE | pinwheel_mm::HUGE_PAGE_SIZE,
            max_qp: self.0.qps_max,
            max_qp_wr: MAX_QP_WR,
            max_sge: MAX_SGE,
            max_cq: MAX_CQ,
            max_cqe: MAX_CQE,
            max_mr: self.0.mrs.max(),
            max_pd: MAX_PD,
            max_qp_rd_atom: MAX_RD_ATOMIC,
            max_srq: MAX_SRQ,
            max_srq_wr: MAX_QP_WR,
            max_srq_sge: MAX_SGE,
            max_pkeys: PKEY_TABLE_LEN,
            max_inline_data: MAX_INLINE,
            max_msg_sz: MAX_MSG,
            atomic_cap: "ATOMIC_HCA",
            odp_general_caps: vec!["ODP_SUPPORT"],
            odp_rc_caps: vec!["SEND", "RECV", "WRITE", "READ", "ATOMIC", "SRQ_RECV"],
            restore_mr: true,
            phys_port_cnt: PHYS_PORTS,
            port_state: "PORT_ACTIVE",
            max_mtu: 4096,
            active_mtu: 4096,
            link_layer: "loopback, TCP",
            transport: "pinwheel (loopback, TCP)",
        }
    }

    /// The node's memory.
    pub fn memory(&self) -> &Arc<Memory> {
        &self.0.mem
    }

    /// The node's filesystem.
    pub fn fs(&self) -> Option<&Filesystem> {
        self.0.fs.as_ref()
    }

    /// Turns the coherence machinery of the fast path off or on (benchmarks only: with it
    /// off, revocation and invalidation no longer wait for transfers).
    pub fn set_coherence_checks(&self, on: bool) {
        self.0.coherence.store(on, Ordering::Relaxed);
    }

    /// Installs the node's hooks.
    pub fn set_hooks(&self, hooks: Arc<dyn DeviceHooks>) {
        *self.0.hooks.write() = Some(hooks);
    }

    /// Every MR.
    pub fn mrs(&self) -> Vec<MrInfo> {
        self.0.mrs.all().iter().map(|m| m.info()).collect()
    }

    /// Every QP.
    pub fn qps(&self) -> Vec<QpInfo> {
        let qps: Vec<Arc<QpInner>> = self.0.qps.read().values().filter_map(Weak::upgrade).collect();
        let mut v: Vec<QpInfo> = qps.iter().map(|q| q.info()).collect();
        v.sort_by_key(|q| q.qpn);
        v
    }

    /// Bytes moved and operations executed by this node's engine: (written, read, ops, held,
    /// errors, ODP faults). Loopback work is counted per QP (`qp::Moved`) and added up here;
    /// a QP being destroyed at this moment may be missing from one reading.
    pub fn counters(&self) -> (u64, u64, u64, u64, u64, u64) {
        let c = &self.0.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let qps: Vec<Arc<QpInner>> = self.0.qps.read().values().filter_map(Weak::upgrade).collect();
        let (mut written, mut read, mut ops) = (l(&c.bytes_written), l(&c.bytes_read), l(&c.ops));
        for q in qps {
            let m = q.core.lock().moved;
            written += m.bytes_written;
            read += m.bytes_read;
            ops += m.ops;
        }
        (written, read, ops, l(&c.held), l(&c.errors), l(&c.odp_faults))
    }
}
