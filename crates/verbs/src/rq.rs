//! A QP's receive queue: a ring in the pool (`shm/ring.rs`), the only copy of the receives
//! posted — by the embedded API here, or by a client process writing the ring directly.
//!
//! Taking a receive for an incoming SEND or WRITE_WITH_IMM *peeks* it; it leaves the queue
//! when the message completes it ([`complete`](RecvQueue::claim)). A receive taken for a
//! transfer that is then held or fails for a reason other than its own buffer is "given back"
//! by not claiming it: it stays at the head, in order. Whoever else may consume meanwhile (a
//! flush when the QP goes to ERR, a client executing its peer's SEND) claims with a CAS, so
//! each receive completes once.

use std::ops::Deref;
use std::sync::Arc;

use pinwheel_mm::{Memory, Pfn, Pool};

use crate::error::{VerbsError, VerbsResult};
use crate::shm::{Block, PushError, Ring, wqe_decode, wqe_encode, wqe_words};
use crate::wr::RecvWr;

/// See the module header.
#[derive(Debug)]
pub(crate) struct RecvQueue {
    ring: Ring,
    block: Block,
    max_sge: u32,
}

/// A receive taken for an incoming message.
#[derive(Debug)]
pub(crate) struct TakenRecv {
    pub(crate) wr: RecvWr,
    /// Its position in the QP's ring; `None`: taken from an SRQ (removed already).
    pub(crate) pos: Option<u64>,
}

impl Deref for TakenRecv {
    type Target = RecvWr;
    fn deref(&self) -> &RecvWr {
        &self.wr
    }
}

impl RecvQueue {
    /// A queue of `cap` receives of up to `max_sge` SGEs; `None` for a QP without one.
    pub(crate) fn new(mem: &Arc<Memory>, cap: u32, max_sge: u32) -> VerbsResult<Option<Self>> {
        if cap == 0 {
            return Ok(None);
        }
        let words = wqe_words(max_sge);
        let bytes = Ring::bytes(u64::from(cap), words);
        let block = Block::alloc(mem, bytes).map_err(|e| {
            VerbsError::Limit(format!("a receive queue of {cap} needs {bytes} bytes of pool: {e}"))
        })?;
        let ring = Ring::create(mem.pool(), block.off(), u64::from(cap), words);
        Ok(Some(RecvQueue { ring, block, max_sge }))
    }

    fn pool(&self) -> &Pool {
        self.block.pool()
    }

    pub(crate) fn ring(&self) -> Ring {
        self.ring
    }
    pub(crate) fn max_sge(&self) -> u32 {
        self.max_sge
    }
    pub(crate) fn frames(&self) -> Vec<Pfn> {
        self.block.frames()
    }

    /// Receives queued.
    pub(crate) fn len(&self) -> usize {
        self.ring.len(self.pool()) as usize
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ring.is_empty(self.pool())
    }

    /// Appends (SGE counts checked by the caller against `max_sge`).
    pub(crate) fn push(&self, wr: &RecvWr) -> Result<(), PushError> {
        let mut w = Vec::with_capacity(wqe_words(self.max_sge) as usize);
        wqe_encode(wr, &mut w);
        self.ring.push(self.pool(), &w)
    }

    fn words(&self) -> Vec<u64> {
        vec![0u64; wqe_words(self.max_sge) as usize]
    }

    /// The oldest receive, left in place. Entries that do not decode (scribbled on) are
    /// removed and skipped.
    pub(crate) fn peek(&self) -> Option<TakenRecv> {
        let mut w = self.words();
        for _ in 0..=self.ring.cap() {
            let pos = self.ring.peek(self.pool(), &mut w)?;
            match wqe_decode(&w, self.max_sge) {
                Some(wr) => return Some(TakenRecv { wr, pos: Some(pos) }),
                None => {
                    tracing::warn!(pos, "receive ring entry does not decode: dropped");
                    self.ring.claim(self.pool(), pos);
                }
            }
        }
        None
    }

    /// Removes the receive at `pos`; false if another consumer took it meanwhile.
    pub(crate) fn claim(&self, pos: u64) -> bool {
        self.ring.claim(self.pool(), pos)
    }

    /// Removes the oldest receive (flushes, resets); undecodable ones are skipped.
    pub(crate) fn pop(&self) -> Option<RecvWr> {
        let mut w = self.words();
        for _ in 0..=self.ring.cap() {
            self.ring.pop(self.pool(), &mut w)?;
            if let Some(wr) = wqe_decode(&w, self.max_sge) {
                return Some(wr);
            }
        }
        None
    }
}
