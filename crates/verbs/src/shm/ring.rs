//! A bounded multi-producer multi-consumer ring in pool memory (Vyukov's, with a sequence
//! number per slot), usable from every process that maps the pool: completion queues and
//! receive queues.
//!
//! Layout at `base` (pool offsets; each counter on a cache line of its own):
//!
//! | offset | word | written by |
//! |---|---|---|
//! | 0 | `tail`: next position to produce | producers (CAS) |
//! | 64 | `head`: next position to consume | consumers (CAS) |
//! | 128 | futex word: bumped by a producer that finds sleepers | producers |
//! | 136 | sleepers (u32) | consumers about to sleep |
//! | 144 | flags (bit 0: an entry was lost to overflow) | producers |
//! | 152, 160 | capacity, slot stride in bytes (geometry, for other processes) | the owner, once |
//! | 192 + i × stride | slot i: its sequence word, then the entry's words | see below |
//!
//! Slot `i` stores `seq - i` (wrapping), so zeroed memory is a valid empty ring. A producer
//! at position `p` claims it when slot `p % cap` has `seq == p` (CAS on `tail`), writes the
//! entry, then publishes `seq = p + 1`; a consumer at `p` waits for `seq == p + 1`, claims
//! (CAS on `head`), reads, and frees the slot with `seq = p + cap`. Per-producer order is kept.
//! A consumer may also *peek* the head entry and *claim* it later, or never (a receive taken
//! for a transfer that is then held goes back by not being claimed).
//!
//! Everything read here may have been written by another process: positions are reduced
//! modulo the capacity this side knows (never the header's), loops are bounded
//! (`SHM_RING_RETRIES`: a garbage ring reads as empty or full, never hangs), and entries are
//! decoded by the callers, which validate every field. Entry words are read once into a
//! private buffer.
//!
//! Sleeping (an event count): a consumer registers in `sleepers`, re-checks, and futex-waits
//! on the futex word; a producer that publishes an entry and sees a sleeper bumps the word and
//! wakes them. A spin comes first (`SHM_WAIT_SPINS`): on two cores a sleep costs more than a
//! short spin.

use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use pinwheel_mm::{Pool, PoolOffset};

use crate::limits::{SHM_RING_RETRIES, SHM_WAIT_SPINS};

const TAIL: u64 = 0;
const HEAD: u64 = 64;
const FUTEX: u64 = 128;
const SLEEPERS: u64 = 136;
const FLAGS: u64 = 144;
const CAP: u64 = 152;
const STRIDE: u64 = 160;
/// Bytes before the first slot.
pub const HEADER: u64 = 192;
/// Flag: an entry was lost because the ring was full.
const OVERFLOWED: u64 = 1;

/// Why a push did not happen.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PushError {
    /// Every slot holds an entry.
    Full,
    /// The ring's words make no sense (scribbled on), or stayed contended beyond the bound.
    Corrupt,
}

/// A ring: where it is and its geometry, as this side knows it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    base: u64,
    cap: u64,
    /// Entry words per slot (the sequence word excluded).
    words: u64,
}

impl Ring {
    /// Bytes of pool memory a ring of `cap` entries of `words` words needs.
    pub fn bytes(cap: u64, words: u64) -> u64 {
        HEADER + cap * (words + 1) * 8
    }

    /// The ring at `base` (already zeroed) with `cap` entries of `words` words; writes the
    /// geometry for other processes. The device creates its rings in blocks it owns; this is
    /// public for benchmarks and tests of the ring itself.
    pub fn create(pool: &Pool, base: PoolOffset, cap: u64, words: u64) -> Ring {
        let r = Ring { base: base.raw(), cap, words };
        // The pool range was allocated for this ring: these stores are in bounds.
        let _ = pool.store_u64(PoolOffset::new(r.base + CAP), cap);
        let _ = pool.store_u64(PoolOffset::new(r.base + STRIDE), (words + 1) * 8);
        r
    }

    /// The ring another process created at `base`, whose entries have `words` words: reads
    /// its geometry, and checks it fits in the pool and is at most `cap_max` entries.
    pub fn attach(pool: &Pool, base: PoolOffset, words: u64, cap_max: u64) -> Option<Ring> {
        let cap = pool.load_u64(PoolOffset::new(base.raw().checked_add(CAP)?)).ok()?;
        let stride = pool.load_u64(PoolOffset::new(base.raw() + STRIDE)).ok()?;
        if cap == 0 || cap > cap_max || stride != (words + 1) * 8 || !base.raw().is_multiple_of(64)
        {
            return None;
        }
        let end = base.raw().checked_add(Ring::bytes(cap, words))?;
        (end <= pool.size()).then_some(Ring { base: base.raw(), cap, words })
    }

    /// Pool offset of the ring.
    pub fn base(&self) -> PoolOffset {
        PoolOffset::new(self.base)
    }
    /// Capacity.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    fn at(&self, off: u64) -> PoolOffset {
        PoolOffset::new(self.base + off)
    }

    fn slot(&self, pos: u64) -> (u64, u64) {
        let i = pos % self.cap;
        (self.base + HEADER + i * (self.words + 1) * 8, i)
    }

    /// The sequence of the slot of `pos`, and the slot's offset.
    fn seq(&self, pool: &Pool, pos: u64) -> (u64, u64) {
        let (off, i) = self.slot(pos);
        let stored = pool.load_u64(PoolOffset::new(off)).unwrap_or(u64::MAX);
        (stored.wrapping_add(i), off)
    }

    fn set_seq(&self, pool: &Pool, pos: u64, seq: u64) {
        let (off, i) = self.slot(pos);
        let _ = pool.store_u64(PoolOffset::new(off), seq.wrapping_sub(i));
    }

    fn load(&self, pool: &Pool, off: u64) -> u64 {
        pool.load_u64(self.at(off)).unwrap_or(0)
    }

    fn write_entry(&self, pool: &Pool, slot: u64, entry: &[u64]) {
        for (k, w) in entry.iter().take(self.words as usize).enumerate() {
            let _ = pool.store_u64(PoolOffset::new(slot + 8 + 8 * k as u64), *w);
        }
    }

    fn read_entry(&self, pool: &Pool, slot: u64, out: &mut [u64]) {
        for (k, w) in out.iter_mut().take(self.words as usize).enumerate() {
            *w = pool.load_u64(PoolOffset::new(slot + 8 + 8 * k as u64)).unwrap_or(0);
        }
    }

    /// Appends an entry (its first `words` words).
    pub fn push(&self, pool: &Pool, entry: &[u64]) -> Result<(), PushError> {
        if self.cap == 0 {
            return Err(PushError::Full);
        }
        for _ in 0..SHM_RING_RETRIES {
            let pos = self.load(pool, TAIL);
            let (seq, slot) = self.seq(pool, pos);
            match seq.wrapping_sub(pos) as i64 {
                0 => {
                    if matches!(pool.compare_exchange(self.at(TAIL), pos, pos + 1), Ok(Ok(_))) {
                        self.write_entry(pool, slot, entry);
                        self.set_seq(pool, pos, pos.wrapping_add(1));
                        return Ok(());
                    }
                }
                // The slot still holds the entry of the previous lap. Full, unless the tail
                // moved meanwhile (a consumer freed it and a producer went on).
                d if d < 0 && self.load(pool, TAIL) == pos => return Err(PushError::Full),
                _ => {} // another producer took `pos`: look again
            }
            std::hint::spin_loop();
        }
        Err(PushError::Corrupt)
    }

    /// Removes the oldest entry into `out`; `None` if the ring is empty (or unreadable).
    pub fn pop(&self, pool: &Pool, out: &mut [u64]) -> Option<u64> {
        for _ in 0..SHM_RING_RETRIES {
            let pos = self.load(pool, HEAD);
            let (seq, slot) = self.seq(pool, pos);
            match seq.wrapping_sub(pos.wrapping_add(1)) as i64 {
                0 => {
                    if matches!(pool.compare_exchange(self.at(HEAD), pos, pos + 1), Ok(Ok(_))) {
                        self.read_entry(pool, slot, out);
                        self.set_seq(pool, pos, pos.wrapping_add(self.cap));
                        return Some(pos);
                    }
                }
                d if d < 0 => return None,
                _ => {}
            }
            std::hint::spin_loop();
        }
        None
    }

    /// Reads the oldest entry into `out` without removing it; its position, to [`Ring::claim`]
    /// it later. `None` if empty.
    pub fn peek(&self, pool: &Pool, out: &mut [u64]) -> Option<u64> {
        for _ in 0..SHM_RING_RETRIES {
            let pos = self.load(pool, HEAD);
            let (seq, slot) = self.seq(pool, pos);
            match seq.wrapping_sub(pos.wrapping_add(1)) as i64 {
                0 => {
                    self.read_entry(pool, slot, out);
                    // Still the head: nobody claimed and freed the slot while we read it.
                    if self.load(pool, HEAD) == pos {
                        return Some(pos);
                    }
                }
                d if d < 0 => return None,
                _ => {}
            }
            std::hint::spin_loop();
        }
        None
    }

    /// Removes the entry at `pos` if it is still the oldest: false if another consumer took it.
    pub fn claim(&self, pool: &Pool, pos: u64) -> bool {
        if matches!(pool.compare_exchange(self.at(HEAD), pos, pos + 1), Ok(Ok(_))) {
            self.set_seq(pool, pos, pos.wrapping_add(self.cap));
            true
        } else {
            false
        }
    }

    /// Entries in the ring (at most its capacity, whatever its words say).
    pub fn len(&self, pool: &Pool) -> u64 {
        let tail = self.load(pool, TAIL);
        let head = self.load(pool, HEAD);
        tail.wrapping_sub(head).min(self.cap)
    }

    /// True if no entry is ready for a consumer.
    pub fn is_empty(&self, pool: &Pool) -> bool {
        if self.cap == 0 {
            return true;
        }
        let pos = self.load(pool, HEAD);
        self.seq(pool, pos).0 != pos.wrapping_add(1)
    }

    /// Room for `n` more entries.
    pub fn has_room(&self, pool: &Pool, n: u64) -> bool {
        self.len(pool) + n <= self.cap
    }

    /// Marks an entry lost to overflow; true the first time.
    pub fn set_overflowed(&self, pool: &Pool) -> bool {
        for _ in 0..SHM_RING_RETRIES {
            let f = self.load(pool, FLAGS);
            if f & OVERFLOWED != 0 {
                return false;
            }
            if matches!(pool.compare_exchange(self.at(FLAGS), f, f | OVERFLOWED), Ok(Ok(_))) {
                return true;
            }
        }
        false
    }

    /// True once an entry was lost to overflow.
    pub fn overflowed(&self, pool: &Pool) -> bool {
        self.load(pool, FLAGS) & OVERFLOWED != 0
    }

    /// Wakes the sleepers of [`Ring::wait`], if any (after a push).
    pub fn notify(&self, pool: &Pool) {
        // Orders the entry's publication before the look at the sleepers (their registration
        // is a read-modify-write before their last look at the ring).
        fence(Ordering::SeqCst);
        if pool.load_u32(self.at(SLEEPERS)).is_ok_and(|n| n > 0) {
            let _ = pool.fetch_add_u32(self.at(FUTEX), 1);
            let _ = pool.futex_wake(self.at(FUTEX), u32::MAX);
        }
    }

    /// Waits up to `timeout` for `ready()` (spinning first, then sleeping on the ring's futex
    /// word between pushes); returns its last answer.
    pub fn wait(&self, pool: &Pool, timeout: Duration, ready: &mut dyn FnMut() -> bool) -> bool {
        for _ in 0..SHM_WAIT_SPINS {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let Ok(seen) = pool.load_u32(self.at(FUTEX)) else { return ready() };
            let _ = pool.fetch_add_u32(self.at(SLEEPERS), 1);
            if ready() {
                let _ = pool.fetch_sub_u32(self.at(SLEEPERS), 1);
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = pool.fetch_sub_u32(self.at(SLEEPERS), 1);
                return false;
            }
            let _ = pool.futex_wait(self.at(FUTEX), seen, left);
            let _ = pool.fetch_sub_u32(self.at(SLEEPERS), 1);
            if ready() {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn pool() -> Arc<Pool> {
        Arc::new(Pool::memfd("ring", 16 << 20).unwrap())
    }

    #[test]
    fn ring_fifo_full_and_empty() {
        let p = pool();
        let r = Ring::create(&p, PoolOffset::new(4096), 3, 2);
        let mut out = [0u64; 2];
        assert!(r.is_empty(&p));
        assert_eq!(r.pop(&p, &mut out), None);
        for i in 0..3 {
            r.push(&p, &[i, i * 10]).unwrap();
        }
        assert_eq!(r.push(&p, &[9, 9]), Err(PushError::Full));
        assert_eq!(r.len(&p), 3);
        for lap in 0..5u64 {
            assert!(r.pop(&p, &mut out).is_some());
            r.push(&p, &[100 + lap, 0]).unwrap();
        }
        let mut got = Vec::new();
        while r.pop(&p, &mut out).is_some() {
            got.push(out[0]);
        }
        assert_eq!(got, [102, 103, 104]);
        assert!(r.is_empty(&p));
        // Another process finds the same geometry.
        assert_eq!(Ring::attach(&p, PoolOffset::new(4096), 2, 16), Some(r));
        assert_eq!(Ring::attach(&p, PoolOffset::new(4096), 3, 16), None, "other stride");
        assert_eq!(Ring::attach(&p, PoolOffset::new(4096), 2, 2), None, "beyond cap_max");
        assert_eq!(Ring::attach(&p, PoolOffset::new(u64::MAX - 100), 2, 16), None);
    }

    #[test]
    fn ring_peek_then_claim_or_leave() {
        let p = pool();
        let r = Ring::create(&p, PoolOffset::new(0), 4, 1);
        r.push(&p, &[7]).unwrap();
        r.push(&p, &[8]).unwrap();
        let mut out = [0u64; 1];
        let pos = r.peek(&p, &mut out).unwrap();
        assert_eq!(out[0], 7);
        // Not claimed: still there.
        assert_eq!(r.peek(&p, &mut out), Some(pos));
        // Another consumer takes it first: the late claim fails.
        assert_eq!(r.pop(&p, &mut out), Some(pos));
        assert!(!r.claim(&p, pos));
        let pos = r.peek(&p, &mut out).unwrap();
        assert_eq!(out[0], 8);
        assert!(r.claim(&p, pos));
        assert!(r.is_empty(&p));
    }

    /// Garbage in every word of a ring: no panic, no hang, and nothing outside the ring is
    /// touched.
    #[test]
    fn ring_survives_garbage() {
        let p = pool();
        let base = 8192u64;
        let r = Ring::create(&p, PoolOffset::new(base), 8, 3);
        let end = base + Ring::bytes(8, 3);
        p.fill(PoolOffset::new(end), 4096, 0x5a).unwrap();
        p.fill(PoolOffset::new(base - 64), 64, 0x5a).unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..2000 {
            // Scribble on a few words of the ring, header included.
            for _ in 0..3 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let w = base + (x % (end - base)) / 8 * 8;
                let v = if round % 3 == 0 { x } else { x % 64 };
                p.store_u64(PoolOffset::new(w), v).unwrap();
            }
            let mut out = [0u64; 3];
            let _ = r.push(&p, &[1, 2, 3]);
            let _ = r.pop(&p, &mut out);
            if let Some(pos) = r.peek(&p, &mut out) {
                let _ = r.claim(&p, pos);
            }
            let _ = (r.len(&p), r.is_empty(&p), r.set_overflowed(&p));
            r.notify(&p);
            assert!(r.len(&p) <= 8);
        }
        let mut b = vec![0u8; 4096];
        p.read(PoolOffset::new(end), &mut b).unwrap();
        assert!(b.iter().all(|&v| v == 0x5a), "nothing written past the ring");
        p.read(PoolOffset::new(base - 64), &mut b[..64]).unwrap();
        assert!(b[..64].iter().all(|&v| v == 0x5a), "nothing written before it");
    }

    /// Four producers and two consumers on two mappings of the pool: every entry arrives
    /// exactly once, each producer's in order.
    #[test]
    fn ring_mpmc_stress() {
        let p = pool();
        let q = Arc::new(Pool::from_fd(p.fd().try_clone_to_owned().unwrap()).unwrap());
        let r = Ring::create(&p, PoolOffset::new(0), 64, 2);
        const PER: u64 = 20_000;
        let producers: Vec<_> = (0..4u64)
            .map(|t| {
                let pool = if t % 2 == 0 { Arc::clone(&p) } else { Arc::clone(&q) };
                std::thread::spawn(move || {
                    for i in 0..PER {
                        let deadline = Instant::now() + Duration::from_secs(20);
                        loop {
                            match r.push(&pool, &[t, i]) {
                                Ok(()) => break,
                                Err(PushError::Full) => std::thread::yield_now(),
                                Err(PushError::Corrupt) => {
                                    assert!(Instant::now() < deadline, "stuck");
                                }
                            }
                        }
                        r.notify(&pool);
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..2)
            .map(|c| {
                let pool = if c == 0 { Arc::clone(&p) } else { Arc::clone(&q) };
                std::thread::spawn(move || {
                    let mut got: Vec<(u64, u64)> = Vec::new();
                    let deadline = Instant::now() + Duration::from_secs(30);
                    let mut out = [0u64; 2];
                    loop {
                        if r.pop(&pool, &mut out).is_some() {
                            if out[0] == u64::MAX {
                                return got;
                            }
                            got.push((out[0], out[1]));
                        } else {
                            assert!(Instant::now() < deadline, "consumer starved");
                            r.wait(&pool, Duration::from_millis(5), &mut || !r.is_empty(&pool));
                        }
                    }
                })
            })
            .collect();
        for t in producers {
            t.join().unwrap();
        }
        for _ in 0..2 {
            while r.push(&p, &[u64::MAX, 0]).is_err() {
                std::thread::yield_now();
            }
            r.notify(&p);
        }
        let mut all: Vec<(u64, u64)> = Vec::new();
        for c in consumers {
            let got = c.join().unwrap();
            // Per consumer, each producer's entries come in order.
            for t in 0..4 {
                let mine: Vec<u64> = got.iter().filter(|e| e.0 == t).map(|e| e.1).collect();
                assert!(mine.windows(2).all(|w| w[0] < w[1]), "producer {t} out of order");
            }
            all.extend(got);
        }
        all.sort_unstable();
        let want: Vec<(u64, u64)> = (0..4).flat_map(|t| (0..PER).map(move |i| (t, i))).collect();
        assert_eq!(all.len(), want.len());
        assert!(all == want, "every entry exactly once");
    }
}
