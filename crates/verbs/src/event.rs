//! The async event queue of a context (`ibv_get_async_event`), including pinwheel's own events:
//! `MrDecoherent`, `LeaseRecalled`, `LeaseRevoked`, `MrRevoked`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use pinwheel_fs::{Ino, LeaseId};

use crate::limits::MAX_ASYNC_EVENTS;
use crate::types::{EventType, Lkey, Qpn};

/// An async event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsyncEvent {
    /// What happened.
    pub kind: EventType,
    /// The MR concerned.
    pub mr: Option<Lkey>,
    /// The QP concerned.
    pub qpn: Option<Qpn>,
    /// The lease concerned.
    pub lease: Option<LeaseId>,
    /// The file concerned.
    pub ino: Option<Ino>,
    /// For people.
    pub detail: String,
}

impl AsyncEvent {
    pub(crate) fn new(kind: EventType, detail: impl Into<String>) -> AsyncEvent {
        AsyncEvent { kind, mr: None, qpn: None, lease: None, ino: None, detail: detail.into() }
    }
}

/// A bounded queue of events with a blocking wait.
#[derive(Debug, Default)]
pub(crate) struct EventQueue {
    q: Mutex<VecDeque<AsyncEvent>>,
    cv: Condvar,
    dropped: AtomicU64,
    posted: AtomicU64,
}

impl EventQueue {
    pub(crate) fn post(&self, ev: AsyncEvent) {
        let mut q = self.q.lock();
        if q.len() >= MAX_ASYNC_EVENTS {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(ev);
        self.posted.fetch_add(1, Ordering::Relaxed);
        self.cv.notify_all();
    }

    /// The next event, waiting up to `timeout`.
    pub(crate) fn get(&self, timeout: Duration) -> Option<AsyncEvent> {
        let mut q = self.q.lock();
        if q.is_empty() && !timeout.is_zero() {
            self.cv.wait_for(&mut q, timeout);
        }
        q.pop_front()
    }

    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.posted.load(Ordering::Relaxed), self.dropped.load(Ordering::Relaxed))
    }
}
