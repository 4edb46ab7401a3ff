//! Shared receive queues: receives shared by the QPs that use the SRQ. An SRQ lives in this
//! process only (the client API has none): its queue is not in the pool.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::context::{PdInner, ProtectionDomain};
use crate::error::{VerbsError, VerbsResult};
use crate::limits::MAX_QP_WR;
use crate::qp::QpInner;
use crate::wr::RecvWr;

/// A shared receive queue.
#[derive(Clone, Debug)]
pub struct SharedReceiveQueue(pub(crate) Arc<SrqInner>);

#[derive(Debug)]
pub(crate) struct SrqInner {
    pub(crate) queue: Mutex<VecDeque<RecvWr>>,
    pub(crate) max_wr: u32,
    pub(crate) waiters: Mutex<Vec<Weak<QpInner>>>,
    pub(crate) pd: Arc<PdInner>,
}

impl SharedReceiveQueue {
    /// Posts receives shared by the QPs using this SRQ.
    pub fn post_recv(&self, wrs: &[RecvWr]) -> VerbsResult<()> {
        {
            let mut q = self.0.queue.lock();
            if q.len() + wrs.len() > self.0.max_wr as usize {
                return Err(VerbsError::QueueFull(format!(
                    "SRQ holds {} of {} receives",
                    q.len(),
                    self.0.max_wr
                )));
            }
            q.extend(wrs.iter().cloned());
        }
        for w in std::mem::take(&mut *self.0.waiters.lock()) {
            self.0.pd.ctx.dev.kick(w);
        }
        Ok(())
    }
    /// Receives queued.
    pub fn len(&self) -> usize {
        self.0.queue.lock().len()
    }
    /// True if none is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ProtectionDomain {
    /// Creates a shared receive queue.
    pub fn create_srq(&self, max_wr: u32) -> VerbsResult<SharedReceiveQueue> {
        if max_wr == 0 || max_wr > MAX_QP_WR {
            return Err(VerbsError::invalid(format!("SRQ depth {max_wr} outside 1..={MAX_QP_WR}")));
        }
        Ok(SharedReceiveQueue(Arc::new(SrqInner {
            queue: Mutex::new(VecDeque::new()),
            max_wr,
            waiters: Mutex::new(Vec::new()),
            pd: Arc::clone(&self.0),
        })))
    }
}
