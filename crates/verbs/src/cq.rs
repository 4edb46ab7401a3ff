//! Completion queues. A CQ lives while a QP uses it (QPs hold it). An overflow loses the
//! completion and raises `CQ_ERR` on the context, as hardware does.
//!
//! The queue is a ring in the pool (`shm/ring.rs`): the node's engine and the client
//! processes of the node produce into it, and whoever polls consumes from it — the embedded
//! API here, or a client library reading the same ring through its own mapping of the pool.
//! What is read back is validated: an entry that does not decode is dropped (and counted).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use pinwheel_mm::{Memory, Pool, PoolOffset};

use crate::context::ContextInner;
use crate::error::{VerbsError, VerbsResult};
use crate::event::AsyncEvent;
use crate::shm::{Block, CQE_WORDS, PushError, Ring, cqe_decode, cqe_encode};
use crate::types::EventType;
use crate::wr::WorkCompletion;

#[derive(Debug)]
pub(crate) struct CqInner {
    pub(crate) id: u32,
    depth: usize,
    ring: Ring,
    block: Block,
    completions: AtomicU64,
    /// Entries polled that did not decode (someone scribbled on the ring).
    garbage: AtomicU64,
    ctx: Weak<ContextInner>,
}

impl CqInner {
    pub(crate) fn new(
        id: u32,
        depth: usize,
        ctx: Weak<ContextInner>,
        mem: &Arc<Memory>,
    ) -> VerbsResult<Arc<CqInner>> {
        let bytes = Ring::bytes(depth as u64, CQE_WORDS);
        let block = Block::alloc(mem, bytes).map_err(|e| {
            VerbsError::Limit(format!("a CQ of {depth} entries needs {bytes} bytes of pool: {e}"))
        })?;
        let ring = Ring::create(mem.pool(), block.off(), depth as u64, CQE_WORDS);
        Ok(Arc::new(CqInner {
            id,
            depth,
            ring,
            block,
            completions: AtomicU64::new(0),
            garbage: AtomicU64::new(0),
            ctx,
        }))
    }

    fn pool(&self) -> &Pool {
        self.block.pool()
    }

    /// The ring (pool offset) for client processes.
    pub(crate) fn ring(&self) -> Ring {
        self.ring
    }

    /// Frames of the ring (quarantined if a stalled client may still write into it).
    pub(crate) fn frames(&self) -> Vec<pinwheel_mm::Pfn> {
        self.block.frames()
    }

    pub(crate) fn push(&self, wc: WorkCompletion) {
        let pool = self.pool();
        match self.ring.push(pool, &cqe_encode(&wc)) {
            Ok(()) => {
                self.completions.fetch_add(1, Ordering::Relaxed);
                self.ring.notify(pool);
            }
            Err(e) => self.lost(e),
        }
    }

    /// A completion could not be queued: `CQ_ERR` on the context, once.
    fn lost(&self, e: PushError) {
        if self.ring.set_overflowed(self.pool())
            && let Some(ctx) = self.ctx.upgrade()
        {
            let why = match e {
                PushError::Full => format!("CQ {} overflowed (depth {})", self.id, self.depth),
                PushError::Corrupt => format!("CQ {}: its ring is corrupt", self.id),
            };
            ctx.events.post(AsyncEvent::new(EventType::CqErr, why));
        }
    }

    /// A client process found the ring full (and set its overflow flag first): `CQ_ERR`.
    pub(crate) fn report_lost(&self) {
        if self.ring.overflowed(self.pool())
            && let Some(ctx) = self.ctx.upgrade()
        {
            ctx.events.post(AsyncEvent::new(
                EventType::CqErr,
                format!("CQ {} overflowed (depth {}) under a client process", self.id, self.depth),
            ));
        }
    }

    fn pop(&self) -> Option<WorkCompletion> {
        let mut w = [0u64; CQE_WORDS as usize];
        // Bounded: every pop removes an entry, and there are at most `depth` of them.
        for _ in 0..=self.depth {
            self.ring.pop(self.pool(), &mut w)?;
            match cqe_decode(&w) {
                Some(wc) => return Some(wc),
                None => {
                    self.garbage.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        None
    }
}

/// A completion queue.
#[derive(Clone, Debug)]
pub struct CompletionQueue(pub(crate) Arc<CqInner>);

impl CompletionQueue {
    /// Moves up to `out.len()` completions into `out`; returns how many.
    pub fn poll(&self, out: &mut [WorkCompletion]) -> usize {
        let mut n = 0;
        for slot in out.iter_mut() {
            match self.0.pop() {
                Some(wc) => *slot = wc,
                None => break,
            }
            n += 1;
        }
        n
    }

    /// One completion, if any.
    pub fn poll_one(&self) -> Option<WorkCompletion> {
        self.0.pop()
    }

    /// Waits up to `timeout` for a completion to be available; true if one is.
    pub fn wait(&self, timeout: Duration) -> bool {
        let (ring, pool) = (self.0.ring, self.0.pool());
        ring.wait(pool, timeout, &mut || !ring.is_empty(pool))
    }

    /// The next completion, waiting up to `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<WorkCompletion> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(wc) = self.poll_one() {
                return Some(wc);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.wait(left);
        }
    }

    /// Capacity.
    pub fn depth(&self) -> usize {
        self.0.depth
    }

    /// True once a completion was lost to overflow.
    pub fn overflowed(&self) -> bool {
        self.0.ring.overflowed(self.0.pool())
    }

    /// Where its ring is in the pool (for a client process polling it directly).
    pub fn ring_offset(&self) -> PoolOffset {
        self.0.ring.base()
    }
}
