//! The control plane of a TCP run: the connection's private data (`Hello`) and the small
//! SEND/RECV messages (`Ctl`) on a QP of their own, apart from the data QPs (a SEND test's
//! data would otherwise land in the control channel's receives).
//!
//! `Hello`: the client's names the test, its largest message, `--no-coherence` and the number
//! of data QPs; the server's names its test and the port of its raw TCP baseline listener.
//! Either side refuses a peer that runs another test. The data QPs' connections carry the
//! client's `Hello` again (checked the same way).
//!
//! `Ctl`: for each message size the client sends `Round` (size, iterations — 0 for a -D run,
//! which the client ends — and where the server's ping-pong WRITEs land); the server answers
//! `Ready` with where the client's WRITEs, READs and atomics go (its MR), and takes part in
//! the ping-pongs; `send_bw`'s server re-posts RECVs until the client's `End`. With
//! `--compare`, `Baseline` before and after the round has the server take the raw TCP
//! baseline's connection. `Done` ends the session. Everything from the peer is checked: it is
//! untrusted input.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use pinwheel::mm::Errno;
use pinwheel::{Access, CompletionQueue, QueuePair, RecvWr, SendWr, VerbsError, WcStatus};

use crate::error::CliError;
use crate::limits::PERF_CTL_SLOTS;
use crate::perf::Test;
use crate::perf::bench::Watchdog;
use crate::perf::host::{Buffer, Host};

pub(crate) const HELLO_MAGIC: [u8; 4] = *b"PWPF";
const CTL_MAGIC: [u8; 4] = *b"PWPC";
const VERSION: u8 = 2;
pub(crate) const HELLO_LEN: usize = 24;
pub(crate) const CTL_LEN: u64 = 64;
/// The work request id of control SENDs (data work requests count from 0).
const CTL_WRID: u64 = u64::MAX;
pub(crate) const NO_COHERENCE: u8 = 1;

/// The private data of the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) test: Test,
    pub(crate) flags: u8,
    /// Client: its largest message.
    pub(crate) max_size: u64,
    /// Server: the raw TCP baseline listener's port.
    pub(crate) baseline_port: u16,
    /// Client: data QPs (-q).
    pub(crate) qps: u16,
    /// Server of a `--socket` session: its QP's number (0 over TCP).
    pub(crate) qpn: u32,
}

impl Hello {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&HELLO_MAGIC);
        b[4] = VERSION;
        b[5] = self.test.code();
        b[6] = self.flags;
        b[8..16].copy_from_slice(&self.max_size.to_le_bytes());
        b[16..18].copy_from_slice(&self.baseline_port.to_le_bytes());
        b[18..20].copy_from_slice(&self.qps.to_le_bytes());
        b[20..24].copy_from_slice(&self.qpn.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Hello, String> {
        if b.len() < HELLO_LEN || b[0..4] != HELLO_MAGIC {
            return Err("the peer is not `pinwheel perf`".into());
        }
        if b[4] != VERSION {
            return Err(format!("the peer speaks perf protocol {} (this is {VERSION})", b[4]));
        }
        let test = Test::from_code(b[5]).ok_or_else(|| format!("unknown test code {}", b[5]))?;
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[8..16]);
        Ok(Hello {
            test,
            flags: b[6],
            max_size: u64::from_le_bytes(w),
            baseline_port: u16::from_le_bytes([b[16], b[17]]),
            qps: u16::from_le_bytes([b[18], b[19]]),
            qpn: u32::from_le_bytes([b[20], b[21], b[22], b[23]]),
        })
    }
}

/// A control message.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ctl {
    /// Client → server: run one message size, `iters` times (0: until the client's STOP or
    /// `End`). `addr`/`rkey`: the client's receive half (where the server's ping-pong WRITEs
    /// go).
    Round { size: u64, iters: u64, addr: u64, rkey: u32 },
    /// Client → server: the round is over (`send_bw`: stop re-posting for it).
    End,
    /// Client → server: take one raw TCP baseline connection carrying `iters` x `size` bytes.
    Baseline { size: u64, iters: u64 },
    /// Server → client: ready; the client's WRITEs and READs target `addr` of `rkey`.
    Ready { addr: u64, rkey: u32 },
    /// Client → server: the session is over.
    Done,
}

impl Ctl {
    pub(crate) fn encode(&self) -> [u8; CTL_LEN as usize] {
        let mut b = [0u8; CTL_LEN as usize];
        b[0..4].copy_from_slice(&CTL_MAGIC);
        let (kind, size, iters, addr, rkey) = match *self {
            Ctl::Round { size, iters, addr, rkey } => (1, size, iters, addr, rkey),
            Ctl::Ready { addr, rkey } => (2, 0, 0, addr, rkey),
            Ctl::Done => (3, 0, 0, 0, 0),
            Ctl::Baseline { size, iters } => (4, size, iters, 0, 0),
            Ctl::End => (5, 0, 0, 0, 0),
        };
        b[4] = kind;
        b[8..16].copy_from_slice(&size.to_le_bytes());
        b[16..24].copy_from_slice(&iters.to_le_bytes());
        b[24..32].copy_from_slice(&addr.to_le_bytes());
        b[32..36].copy_from_slice(&rkey.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Ctl, String> {
        if b.len() < CTL_LEN as usize || b[0..4] != CTL_MAGIC {
            return Err("malformed control message".into());
        }
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let rkey = u32::from_le_bytes([b[32], b[33], b[34], b[35]]);
        match b[4] {
            1 => Ok(Ctl::Round { size: u64_at(8), iters: u64_at(16), addr: u64_at(24), rkey }),
            2 => Ok(Ctl::Ready { addr: u64_at(24), rkey }),
            3 => Ok(Ctl::Done),
            4 => Ok(Ctl::Baseline { size: u64_at(8), iters: u64_at(16) }),
            5 => Ok(Ctl::End),
            k => Err(format!("unknown control message kind {k}")),
        }
    }
}

pub(crate) fn peer_error(target: &str, detail: String) -> CliError {
    CliError::Refused { op: "perf", target: target.to_string(), errno: Errno::EPROTO, detail }
}

/// The control channel: `PERF_CTL_SLOTS` receive slots and one send slot in a buffer of
/// its own.
pub(crate) struct Control<'a> {
    qp: &'a QueuePair,
    send_cq: &'a CompletionQueue,
    recv_cq: &'a CompletionQueue,
    buf: Buffer,
    pub(crate) peer: String,
    timeout: Duration,
}

impl<'a> Control<'a> {
    pub(crate) fn new(
        host: &Host,
        qp: &'a QueuePair,
        (send_cq, recv_cq): (&'a CompletionQueue, &'a CompletionQueue),
        peer: String,
        timeout: Duration,
    ) -> Result<Control<'a>, CliError> {
        let buf = host.buffer((PERF_CTL_SLOTS + 1) * CTL_LEN, Access::LOCAL_WRITE, 0)?;
        let ctl = Control { qp, send_cq, recv_cq, buf, peer, timeout };
        for slot in 0..PERF_CTL_SLOTS {
            ctl.post_recv(slot)?;
        }
        Ok(ctl)
    }

    fn post_recv(&self, slot: u64) -> Result<(), CliError> {
        let wr = RecvWr { wr_id: slot, sg_list: vec![self.buf.sge(slot * CTL_LEN, CTL_LEN)] };
        self.qp.post_recv(&[wr]).map_err(|e| CliError::verbs("perf", &self.peer, e))
    }

    /// Sends `m` and waits for the peer to have it (its completion).
    pub(crate) fn send(&self, m: &Ctl) -> Result<(), CliError> {
        let off = PERF_CTL_SLOTS * CTL_LEN;
        self.buf.write(off, &m.encode())?;
        let wr = SendWr::send(CTL_WRID, self.buf.sge(off, CTL_LEN));
        self.qp.post_send(&[wr]).map_err(|e| CliError::verbs("perf", &self.peer, e))?;
        let dog = Watchdog::new(self.timeout);
        loop {
            if let Some(wc) = self.send_cq.poll_one() {
                if wc.status != WcStatus::Success {
                    return Err(self.lost(wc.status));
                }
                if wc.wr_id == CTL_WRID {
                    return Ok(());
                }
                continue;
            }
            dog.check(Instant::now(), &self.peer)?;
            self.send_cq.wait(Duration::from_millis(50));
        }
    }

    fn lost(&self, status: WcStatus) -> CliError {
        CliError::Refused {
            op: "perf",
            target: self.peer.clone(),
            errno: Errno::ECONNRESET,
            detail: format!(
                "the connection to the peer is gone (a control message completed with {})",
                status.code_name()
            ),
        }
    }

    /// The next message if one has come (no wait).
    pub(crate) fn try_recv(&self) -> Result<Option<Ctl>, CliError> {
        let Some(wc) = self.recv_cq.poll_one() else { return Ok(None) };
        if wc.status != WcStatus::Success {
            return Err(self.lost(wc.status));
        }
        let mut b = [0u8; CTL_LEN as usize];
        self.buf.read(wc.wr_id * CTL_LEN, &mut b)?;
        self.post_recv(wc.wr_id)?;
        let n = (wc.byte_len as usize).min(b.len());
        Ctl::decode(&b[..n]).map(Some).map_err(|e| peer_error(&self.peer, e))
    }

    /// The next message. The wait is bounded by the timeout, restarted whenever `activity`
    /// changes (the device moving bytes for the peer: a long run in progress).
    pub(crate) fn recv(&self, activity: &dyn Fn() -> u64) -> Result<Ctl, CliError> {
        let mut dog = Watchdog::new(self.timeout);
        let mut seen = activity();
        loop {
            if let Some(m) = self.try_recv()? {
                return Ok(m);
            }
            let now = Instant::now();
            let a = activity();
            if a != seen {
                seen = a;
                dog.progress(now);
            }
            dog.check(now, &self.peer)?;
            self.recv_cq.wait(Duration::from_millis(100));
        }
    }
}

pub(crate) fn stdout_error(e: std::io::Error) -> CliError {
    CliError::io("write", "stdout", "writing the output failed", e)
}

/// Bytes and operations the device moved so far.
pub(crate) fn activity(host: &Host) -> u64 {
    let (w, r, ops, ..) = host.node.device.counters();
    w.wrapping_add(r).wrapping_add(ops)
}

/// `host` or `host:port` (an IPv6 literal needs brackets with a port) → an address.
pub(crate) fn resolve(server: &str, port: u16) -> Result<SocketAddr, CliError> {
    let with_port = if server.parse::<SocketAddr>().is_ok() {
        server.to_string()
    } else if server.parse::<std::net::IpAddr>().is_ok() || !server.contains(':') {
        let host = if server.contains(':') { format!("[{server}]") } else { server.to_string() };
        format!("{host}:{port}")
    } else {
        server.to_string()
    };
    let unknown = |detail: String| CliError::Refused {
        op: "perf",
        target: server.to_string(),
        errno: Errno::ENXIO,
        detail,
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| unknown(format!("cannot resolve the server's address: {e}")))?
        .next()
        .ok_or_else(|| unknown("the name resolves to no address".into()))
}

/// A failed connection, with what to do about it.
pub(crate) fn connect_error(target: &str, p: &crate::perf::Params, e: VerbsError) -> CliError {
    let hint = match e.errno() {
        Errno::ECONNREFUSED => Some(format!(
            "nothing listens there: start `pinwheel perf {}` on the server first (-p for \
             another port)",
            p.test.name()
        )),
        Errno::ETIMEDOUT => Some(format!(
            "no answer within {} s (--timeout): is the address right and the server up?",
            p.timeout.as_secs_f64()
        )),
        Errno::EHOSTUNREACH | Errno::ENETUNREACH => Some("no route to the server".into()),
        Errno::EPROTO => match &e {
            VerbsError::Transport { what, .. } => {
                Some(format!("{what}: what answered there is not `pinwheel perf`"))
            }
            _ => None,
        },
        _ => None,
    };
    CliError::verbs("perf", target, e).with_hint(hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctl_hello_round_trips_and_rejects_strangers() {
        let h = Hello {
            test: Test::ReadLat,
            flags: NO_COHERENCE,
            max_size: 8 << 20,
            baseline_port: 4321,
            qps: 3,
            qpn: 0x1234,
        };
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
        assert!(Hello::decode(b"hello").is_err());
        let mut b =
            Hello { test: Test::WriteBw, flags: 0, max_size: 1, baseline_port: 0, qps: 1, qpn: 0 }
                .encode();
        b[4] = 9;
        assert!(Hello::decode(&b).unwrap_err().contains("protocol 9"));
        b[4] = VERSION;
        b[5] = 77;
        assert!(Hello::decode(&b).unwrap_err().contains("unknown test"));
    }

    #[test]
    fn ctl_control_messages_round_trip() {
        for m in [
            Ctl::Round { size: 65536, iters: 5000, addr: 0x1000, rkey: 0x10a },
            Ctl::Baseline { size: 1 << 20, iters: 2000 },
            Ctl::Ready { addr: 0x7000, rkey: 0x201 },
            Ctl::End,
            Ctl::Done,
        ] {
            assert_eq!(Ctl::decode(&m.encode()), Ok(m));
        }
        let mut b = Ctl::Done.encode();
        b[4] = 9;
        assert!(Ctl::decode(&b).is_err());
        assert!(Ctl::decode(&b[..10]).is_err());
    }

    #[test]
    fn ctl_resolve_forms() {
        assert_eq!(resolve("127.0.0.1", 7).unwrap().to_string(), "127.0.0.1:7");
        assert_eq!(resolve("127.0.0.1:9", 7).unwrap().to_string(), "127.0.0.1:9");
        assert_eq!(resolve("::1", 7).unwrap().to_string(), "[::1]:7");
        assert_eq!(resolve("[::1]:9", 7).unwrap().to_string(), "[::1]:9");
    }
}
