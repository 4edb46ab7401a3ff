//! Completion queues. A CQ lives while a QP uses it (QPs hold it). An overflow loses the
//! completion and raises `CQ_ERR` on the context, as hardware does.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::context::ContextInner;
use crate::event::AsyncEvent;
use crate::types::EventType;
use crate::wr::WorkCompletion;

#[derive(Debug)]
pub(crate) struct CqInner {
    pub(crate) id: u32,
    depth: usize,
    q: Mutex<VecDeque<WorkCompletion>>,
    cv: Condvar,
    overflowed: AtomicBool,
    completions: AtomicU64,
    ctx: Weak<ContextInner>,
}

impl CqInner {
    pub(crate) fn new(id: u32, depth: usize, ctx: Weak<ContextInner>) -> Arc<CqInner> {
        Arc::new(CqInner {
            id,
            depth,
            q: Mutex::new(VecDeque::with_capacity(depth.min(4096))),
            cv: Condvar::new(),
            overflowed: AtomicBool::new(false),
            completions: AtomicU64::new(0),
            ctx,
        })
    }

    pub(crate) fn push(&self, wc: WorkCompletion) {
        let mut q = self.q.lock();
        if q.len() >= self.depth {
            drop(q);
            if !self.overflowed.swap(true, Ordering::AcqRel)
                && let Some(ctx) = self.ctx.upgrade()
            {
                ctx.events.post(AsyncEvent::new(
                    EventType::CqErr,
                    format!("CQ {} overflowed (depth {})", self.id, self.depth),
                ));
            }
            return;
        }
        q.push_back(wc);
        self.completions.fetch_add(1, Ordering::Relaxed);
        self.cv.notify_all();
    }
}

/// A completion queue.
#[derive(Clone, Debug)]
pub struct CompletionQueue(pub(crate) Arc<CqInner>);

impl CompletionQueue {
    /// Moves up to `out.len()` completions into `out`; returns how many.
    pub fn poll(&self, out: &mut [WorkCompletion]) -> usize {
        let mut q = self.0.q.lock();
        let n = out.len().min(q.len());
        for (slot, wc) in out.iter_mut().zip(q.drain(..n)) {
            *slot = wc;
        }
        n
    }

    /// One completion, if any.
    pub fn poll_one(&self) -> Option<WorkCompletion> {
        self.0.q.lock().pop_front()
    }

    /// Waits up to `timeout` for a completion to be available; true if one is.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut q = self.0.q.lock();
        if q.is_empty() {
            self.0.cv.wait_for(&mut q, timeout);
        }
        !q.is_empty()
    }

    /// The next completion, waiting up to `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<WorkCompletion> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(wc) = self.poll_one() {
                return Some(wc);
            }
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            self.wait(left);
        }
    }

    /// Capacity.
    pub fn depth(&self) -> usize {
        self.0.depth
    }

    /// True once a completion was lost to overflow.
    pub fn overflowed(&self) -> bool {
        self.0.overflowed.load(Ordering::Acquire)
    }
}
