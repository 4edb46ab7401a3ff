//! The self-describing records the client writes: 256 bytes, at a slot of the victim.
//!
//! ```text
//! 0 magic "PWDR"  4 slot u32  8 seq u64  16 send time (CLOCK_MONOTONIC ns) u64
//! 24..248 payload (derived from slot and seq)  248 crc32c of bytes 0..248  252 zero
//! ```
//!
//! Slots: 15 per 4 KiB page; the 16th 256-byte slot of each page is the administrator's (the
//! reflink operation writes there to force copy-on-write without touching client data).

pub const RECORD: u64 = 256;
pub const SLOTS_PER_PAGE: u64 = 15;
const MAGIC: u32 = 0x5244_5750;
const PAGE: u64 = 4096;

/// Byte offset of a client slot in the victim.
pub fn slot_offset(slot: u64) -> u64 {
    (slot / SLOTS_PER_PAGE) * PAGE + (slot % SLOTS_PER_PAGE) * RECORD
}

/// Offset of the administrator's slot of page `page`.
pub fn admin_offset(page: u64) -> u64 {
    page * PAGE + SLOTS_PER_PAGE * RECORD
}

/// Client slots in a victim of `len` bytes.
pub fn slots(len: u64) -> u64 {
    len / PAGE * SLOTS_PER_PAGE
}

/// A decoded record.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Slot.
    pub slot: u32,
    /// Sequence number.
    pub seq: u64,
    /// Send time.
    pub t_send: u64,
}

/// Encodes a record.
pub fn encode(slot: u32, seq: u64, t_send: u64) -> [u8; RECORD as usize] {
    let mut b = [0u8; RECORD as usize];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&slot.to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16..24].copy_from_slice(&t_send.to_le_bytes());
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(slot);
    for chunk in b[24..248].chunks_mut(8) {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let crc = crc32c::crc32c(&b[..248]);
    b[248..252].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a record; `None` if the bytes are not an intact record.
pub fn decode(b: &[u8]) -> Option<Record> {
    if b.len() < RECORD as usize || b[0..4] != MAGIC.to_le_bytes() {
        return None;
    }
    let crc = u32::from_le_bytes(b[248..252].try_into().ok()?);
    if crc != crc32c::crc32c(&b[..248]) {
        return None;
    }
    Some(Record {
        slot: u32::from_le_bytes(b[4..8].try_into().ok()?),
        seq: u64::from_le_bytes(b[8..16].try_into().ok()?),
        t_send: u64::from_le_bytes(b[16..24].try_into().ok()?),
    })
}

/// CLOCK_MONOTONIC in ns: comparable between the processes of one machine.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_detects_damage() {
        let b = encode(7, 99, 12345);
        assert_eq!(decode(&b), Some(Record { slot: 7, seq: 99, t_send: 12345 }));
        let mut c = b;
        c[100] ^= 1;
        assert_eq!(decode(&c), None);
        assert_eq!(decode(&[0u8; 256]), None);
    }

    #[test]
    fn record_slots_leave_the_admin_slot_free() {
        assert_eq!(slot_offset(14), 14 * 256);
        assert_eq!(slot_offset(15), 4096);
        assert_eq!(admin_offset(0), 15 * 256);
        assert_eq!(slots(8192), 30);
    }
}
