//! The demo's client: a separate OS process (`pinwheel demo-client`) with a node of its own,
//! reaching the server over TCP. It streams RDMA WRITEs of self-describing records into the
//! server's MR — pipelined, one slot after the other — with a verifying RDMA READ every 64
//! writes, and records for every work request whether it was acknowledged or with which status.
//! It stops posting at the first error (the QP is then in ERR) or at the deadline, and writes
//! its log (JSON) for the server to check against the pool.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pinwheel::fs::OwnerId;
use pinwheel::mm::{AddressSpace, Memory, Pool, RealClock, VirtAddr};
use pinwheel::{Access, Device, DeviceConfig, QpCaps, QpInitAttr, SendWr, Sge, WcOpcode, WcStatus};
use serde::{Deserialize, Serialize};

use crate::record::{self, RECORD};

/// How to run the client.
#[derive(Clone, Debug)]
pub struct ClientArgs {
    /// `host:port` of the server.
    pub connect: String,
    /// How long to write.
    pub seconds: f64,
    /// Where to write the log.
    pub log: PathBuf,
    /// Work requests kept in flight.
    pub queue: usize,
}

/// What the server needs to know from the client.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClientLog {
    /// Work requests posted (writes and reads).
    pub posted: u64,
    /// Acknowledged.
    pub acked: u64,
    /// Failed.
    pub failed: u64,
    /// Failures by status.
    pub failed_by_status: BTreeMap<String, u64>,
    /// Longest gap between two successful completions while streaming (µs).
    pub stall_us_max: u64,
    /// Acknowledged writes per second.
    pub writes_per_sec: f64,
    /// Verifying reads whose data differed from the last acknowledged write of the slot.
    pub read_mismatches: u64,
    /// Per slot: `[slot, seq, send time, ack time]` (CLOCK_MONOTONIC ns) of the last
    /// acknowledged write.
    pub slots: Vec<[u64; 4]>,
    /// Why the stream stopped early, if it did.
    pub stopped: Option<String>,
}

/// The server's private data in the connection: where to write.
pub(crate) fn encode_target(rkey: u32, addr: u64, len: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    v.extend_from_slice(&rkey.to_le_bytes());
    v.extend_from_slice(&addr.to_le_bytes());
    v.extend_from_slice(&len.to_le_bytes());
    v
}

fn decode_target(b: &[u8]) -> Option<(u32, u64, u64)> {
    Some((
        u32::from_le_bytes(b.get(0..4)?.try_into().ok()?),
        u64::from_le_bytes(b.get(4..12)?.try_into().ok()?),
        u64::from_le_bytes(b.get(12..20)?.try_into().ok()?),
    ))
}

const READ_BIT: u64 = 1 << 63;

/// Runs the client; the log is written even when the stream stops early.
pub fn run(args: &ClientArgs) -> Result<(), String> {
    let mem = Memory::new(
        Pool::memfd("demo-client", 16 << 20).map_err(|e| e.to_string())?,
        RealClock::new(),
    );
    let dev =
        Device::open(DeviceConfig { name: "client0".into(), memory: Arc::clone(&mem), fs: None });
    let ctx = dev.open_context(OwnerId(100), "demo-client");
    let pd = ctx.alloc_pd();
    let aspace = AddressSpace::new(&mem);
    let q = args.queue.max(1);
    let ring_len = (q as u64 + 1) * RECORD;
    let ring = aspace.mmap_anonymous(ring_len).map_err(|e| e.to_string())?;
    let mr = pd.reg_mr(&aspace, ring, ring_len, Access::LOCAL_WRITE).map_err(|e| e.to_string())?;
    let cq = ctx.create_cq(q * 4 + 16).map_err(|e| e.to_string())?;
    let init = QpInitAttr {
        send_cq: cq.clone(),
        recv_cq: cq.clone(),
        srq: None,
        caps: QpCaps { max_send_wr: (q * 2) as u32, ..QpCaps::default() },
    };
    let (qp, private) = pd
        .connect(&args.connect, init, Access::empty(), &[], Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let mut log = ClientLog::default();
    let (rkey, base, len) = decode_target(&private).ok_or("bad target from the server")?;
    let nslots = record::slots(len);
    if rkey == 0 || nslots == 0 {
        log.stopped = Some("the server registered no MR".into());
        return write_log(args, &log);
    }
    let read_buf = VirtAddr::new(ring.raw() + q as u64 * RECORD);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let mut in_flight: BTreeMap<u64, (u32, u64)> = BTreeMap::new(); // wr_id -> (slot, send time)
    let mut last: BTreeMap<u32, (u64, u64, u64)> = BTreeMap::new(); // slot -> (seq, t_send, t_ack)
    let mut seq = 0u64;
    let mut recent: Option<u32> = None; // the slot of the last acknowledged write
    let mut last_ok = Instant::now();
    let mut writes_done = 0u64;
    let mut stop = false;
    let mut wcs = vec![
        pinwheel::WorkCompletion {
            wr_id: 0,
            status: WcStatus::Success,
            opcode: WcOpcode::RdmaWrite,
            byte_len: 0,
            imm: None,
            qpn: qp.qpn()
        };
        64
    ];
    let drain_deadline = |now: Instant| now > deadline + Duration::from_secs(5);
    loop {
        let now = Instant::now();
        if !stop && now >= deadline {
            stop = true;
        }
        while !stop && in_flight.len() < q {
            let slot = (seq % nslots) as u32;
            let t_send = record::now_ns();
            let buf = VirtAddr::new(ring.raw() + (seq % q as u64) * RECORD);
            aspace.write(buf, &record::encode(slot, seq, t_send)).map_err(|e| e.to_string())?;
            let wr = SendWr::write(
                seq,
                Sge { addr: buf.raw(), length: RECORD as u32, lkey: mr.lkey() },
                base + record::slot_offset(u64::from(slot)),
                pinwheel::Rkey(rkey),
            );
            let mut wrs = vec![wr];
            // Every 64 writes, read back the slot acknowledged last and check it.
            if seq % 64 == 63
                && let Some(s) = recent
            {
                wrs.push(SendWr::read(
                    seq | READ_BIT,
                    Sge { addr: read_buf.raw(), length: RECORD as u32, lkey: mr.lkey() },
                    base + record::slot_offset(u64::from(s)),
                    pinwheel::Rkey(rkey),
                ));
                in_flight.insert(seq | READ_BIT, (s, 0));
            }
            if let Err(e) = qp.post_send(&wrs) {
                log.stopped = Some(format!("post_send: {e}"));
                stop = true;
                in_flight.remove(&(seq | READ_BIT));
                break;
            }
            log.posted += wrs.len() as u64;
            in_flight.insert(seq, (slot, t_send));
            seq += 1;
        }
        if in_flight.is_empty() && stop {
            break;
        }
        if drain_deadline(now) {
            log.stopped.get_or_insert_with(|| {
                format!("{} work requests never completed", in_flight.len())
            });
            break;
        }
        if !cq.wait(Duration::from_millis(20)) {
            continue;
        }
        let n = cq.poll(&mut wcs);
        for wc in &wcs[..n] {
            let Some((slot, t_send)) = in_flight.remove(&wc.wr_id) else { continue };
            if wc.status != WcStatus::Success {
                log.failed += 1;
                *log.failed_by_status.entry(wc.status.code_name().to_string()).or_default() += 1;
                if log.stopped.is_none() {
                    log.stopped = Some(format!(
                        "first failure: {} at {:.3} s",
                        wc.status.code_name(),
                        start.elapsed().as_secs_f64()
                    ));
                }
                stop = true;
                continue;
            }
            log.acked += 1;
            let t = Instant::now();
            if !stop {
                log.stall_us_max =
                    log.stall_us_max.max(t.duration_since(last_ok).as_micros() as u64);
            }
            last_ok = t;
            if wc.wr_id & READ_BIT != 0 {
                let mut b = vec![0u8; RECORD as usize];
                aspace.read(read_buf, &mut b).map_err(|e| e.to_string())?;
                let want = last.get(&slot).map(|(s, ts, _)| (*s, *ts));
                let got = record::decode(&b);
                // The READ follows the slot's last acknowledged write on the same QP: it must
                // see that record or a newer one.
                if let Some((s, ts)) = want
                    && got.map(|r| (r.seq, r.t_send)) != Some((s, ts))
                    && got.is_none_or(|r| r.seq < s)
                {
                    log.read_mismatches += 1;
                }
            } else {
                writes_done += 1;
                last.insert(slot, (wc.wr_id, t_send, record::now_ns()));
                recent = Some(slot);
            }
        }
    }
    log.writes_per_sec = writes_done as f64 / start.elapsed().as_secs_f64().max(1e-9);
    log.slots = last.iter().map(|(s, (q, ts, ta))| [u64::from(*s), *q, *ts, *ta]).collect();
    write_log(args, &log)
}

fn write_log(args: &ClientArgs, log: &ClientLog) -> Result<(), String> {
    let s = serde_json::to_string(log).map_err(|e| e.to_string())?;
    std::fs::write(&args.log, s).map_err(|e| format!("{}: {e}", args.log.display()))
}

/// Reads a log written by [`run`].
pub fn read_log(path: &std::path::Path) -> Result<ClientLog, String> {
    let s = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&s).map_err(|e| format!("{}: {e}", path.display()))
}
