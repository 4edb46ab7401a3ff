//! The wire protocol between nodes: fixed 48-byte headers, little endian, versioned, followed by
//! the payload of WRITE, SEND and READ responses. Decoding checks magic, version, kind and every
//! length against the limits: a malformed frame is an error that closes the connection, never a
//! panic and never a write outside an MR.
//!
//! ```text
//! 0  magic "PW" (u16 0x5750)   2 version (1)   3 kind   4 status / rnr_retry   5..8 reserved
//! 8  psn u32    12 rkey u32    16 remote address u64    24 length u32    28 immediate u32
//! 32 compare / add / atomic result u64    40 swap u64
//! ```
//!
//! Connection setup (`Hello`): the header (kind HELLO, `len` = body length) then
//! `qpn u32, psn u32, name_len u16, name, private_len u16, private`.

use crate::limits::{MAX_MSG, WIRE_NAME_MAX};

/// Header size.
pub(crate) const HEADER: usize = 48;
const MAGIC: u16 = 0x5750;
pub(crate) const VERSION: u8 = 1;
/// Largest private data in a connection request (as rdma_cm's private data).
pub const PRIVATE_MAX: usize = 256;

/// Frame kinds.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Write = 1,
    WriteImm = 2,
    Send = 3,
    SendImm = 4,
    ReadReq = 5,
    CompareSwap = 6,
    FetchAdd = 7,
    Ack = 16,
    Nak = 17,
    ReadResp = 18,
    AtomicResp = 19,
    Hello = 32,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        use Kind::*;
        [
            Write,
            WriteImm,
            Send,
            SendImm,
            ReadReq,
            CompareSwap,
            FetchAdd,
            Ack,
            Nak,
            ReadResp,
            AtomicResp,
            Hello,
        ]
        .into_iter()
        .find(|k| *k as u8 == v)
    }
    /// True for frames followed by `len` payload bytes.
    pub(crate) fn has_payload(self) -> bool {
        matches!(
            self,
            Kind::Write
                | Kind::WriteImm
                | Kind::Send
                | Kind::SendImm
                | Kind::ReadResp
                | Kind::Hello
        )
    }
    pub(crate) fn is_request(self) -> bool {
        (self as u8) < 16
    }
}

/// A decoded header.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) status: u8,
    pub(crate) psn: u32,
    pub(crate) rkey: u32,
    pub(crate) addr: u64,
    pub(crate) len: u32,
    pub(crate) imm: u32,
    pub(crate) a: u64,
    pub(crate) b: u64,
}

impl Header {
    pub(crate) fn new(kind: Kind) -> Header {
        Header { kind, status: 0, psn: 0, rkey: 0, addr: 0, len: 0, imm: 0, a: 0, b: 0 }
    }

    pub(crate) fn encode(&self) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        b[2] = VERSION;
        b[3] = self.kind as u8;
        b[4] = self.status;
        b[8..12].copy_from_slice(&self.psn.to_le_bytes());
        b[12..16].copy_from_slice(&self.rkey.to_le_bytes());
        b[16..24].copy_from_slice(&self.addr.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..32].copy_from_slice(&self.imm.to_le_bytes());
        b[32..40].copy_from_slice(&self.a.to_le_bytes());
        b[40..48].copy_from_slice(&self.b.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8; HEADER]) -> Result<Header, String> {
        let magic = u16::from_le_bytes([b[0], b[1]]);
        if magic != MAGIC {
            return Err(format!("bad magic {magic:#06x}"));
        }
        if b[2] != VERSION {
            return Err(format!("protocol version {} (this node speaks {VERSION})", b[2]));
        }
        let kind = Kind::from_u8(b[3]).ok_or_else(|| format!("unknown frame kind {}", b[3]))?;
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let h = Header {
            kind,
            status: b[4],
            psn: u32_at(8),
            rkey: u32_at(12),
            addr: u64_at(16),
            len: u32_at(24),
            imm: u32_at(28),
            a: u64_at(32),
            b: u64_at(40),
        };
        if u64::from(h.len) > MAX_MSG {
            return Err(format!("length {} beyond the largest message", h.len));
        }
        if kind == Kind::Hello && h.len as usize > 12 + WIRE_NAME_MAX + PRIVATE_MAX {
            return Err(format!("hello of {} bytes", h.len));
        }
        Ok(h)
    }
}

/// The body of a HELLO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) qpn: u32,
    pub(crate) psn: u32,
    pub(crate) name: String,
    pub(crate) private: Vec<u8>,
}

impl Hello {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let name = &self.name.as_bytes()[..self.name.len().min(WIRE_NAME_MAX)];
        let private = &self.private[..self.private.len().min(PRIVATE_MAX)];
        let mut body = Vec::with_capacity(12 + name.len() + private.len());
        body.extend_from_slice(&self.qpn.to_le_bytes());
        body.extend_from_slice(&self.psn.to_le_bytes());
        body.extend_from_slice(&(name.len() as u16).to_le_bytes());
        body.extend_from_slice(name);
        body.extend_from_slice(&(private.len() as u16).to_le_bytes());
        body.extend_from_slice(private);
        let mut h = Header::new(Kind::Hello);
        h.len = body.len() as u32;
        let mut out = h.encode().to_vec();
        out.extend_from_slice(&body);
        out
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Hello, String> {
        let short = || "truncated hello".to_string();
        let get = |at: usize, n: usize| body.get(at..at + n).ok_or_else(short);
        let qpn = u32::from_le_bytes(get(0, 4)?.try_into().map_err(|_| short())?);
        let psn = u32::from_le_bytes(get(4, 4)?.try_into().map_err(|_| short())?);
        let nl = u16::from_le_bytes(get(8, 2)?.try_into().map_err(|_| short())?) as usize;
        if nl > WIRE_NAME_MAX {
            return Err(format!("hello name of {nl} bytes"));
        }
        let name = String::from_utf8_lossy(get(10, nl)?).into_owned();
        let pl = u16::from_le_bytes(get(10 + nl, 2)?.try_into().map_err(|_| short())?) as usize;
        if pl > PRIVATE_MAX {
            return Err(format!("hello private data of {pl} bytes"));
        }
        let private = get(12 + nl, pl)?.to_vec();
        if qpn > 0x00ff_ffff {
            return Err(format!("qpn {qpn:#x} beyond 24 bits"));
        }
        Ok(Hello { qpn, psn, name, private })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wire_header_round_trips() {
        let h = Header {
            kind: Kind::WriteImm,
            status: 7,
            psn: 9,
            rkey: 0x1234,
            addr: u64::MAX - 5,
            len: 65536,
            imm: 0xdead,
            a: 1,
            b: 2,
        };
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn wire_rejects_bad_frames() {
        let good = Header::new(Kind::Ack).encode();
        let mut b = good;
        b[0] = 0;
        assert!(Header::decode(&b).unwrap_err().contains("magic"));
        let mut b = good;
        b[2] = 9;
        assert!(Header::decode(&b).unwrap_err().contains("version"));
        let mut b = good;
        b[3] = 99;
        assert!(Header::decode(&b).unwrap_err().contains("kind"));
        let mut h = Header::new(Kind::Hello);
        h.len = 100_000;
        assert!(Header::decode(&h.encode()).is_err());
    }

    #[test]
    fn wire_hello_round_trips() {
        let hello = Hello { qpn: 0x42, psn: 7, name: "node-a".into(), private: vec![1, 2, 3] };
        let bytes = hello.encode();
        let mut hb = [0u8; HEADER];
        hb.copy_from_slice(&bytes[..HEADER]);
        let h = Header::decode(&hb).unwrap();
        assert_eq!(h.len as usize, bytes.len() - HEADER);
        assert_eq!(Hello::decode(&bytes[HEADER..]).unwrap(), hello);
        assert!(Hello::decode(&bytes[HEADER..HEADER + 5]).is_err());
    }

    proptest! {
        #[test]
        fn wire_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), HEADER..HEADER + 300)) {
            let mut hb = [0u8; HEADER];
            hb.copy_from_slice(&bytes[..HEADER]);
            let _ = Header::decode(&hb);
            let _ = Hello::decode(&bytes[HEADER..]);
        }
    }
}
