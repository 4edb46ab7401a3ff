//! Contexts (device handles) and protection domains.
//!
//! Lifetimes follow Rust ownership: an MR or QP holds its PD, a PD its context, a QP its CQs,
//! so nothing is destroyed while used. A context owns the async event queue where MR and
//! lease events for this handle are posted.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use pinwheel_fs::{Caller, LeaseEvent, LeaseHolder, OwnerId};

use crate::cq::{CompletionQueue, CqInner};
use crate::device::{Device, DeviceInner};
use crate::error::{VerbsError, VerbsResult};
use crate::event::{AsyncEvent, EventQueue};
use crate::limits::MAX_CQE;
use crate::types::EventType;

pub(crate) struct ContextInner {
    pub(crate) dev: Arc<DeviceInner>,
    pub(crate) handle: u64,
    pub(crate) owner: OwnerId,
    pub(crate) label: String,
    pub(crate) events: EventQueue,
}

impl fmt::Debug for ContextInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("handle", &self.handle)
            .field("owner", &self.owner)
            .field("label", &self.label)
            .finish()
    }
}

impl ContextInner {
    pub(crate) fn new(
        dev: Arc<DeviceInner>,
        handle: u64,
        owner: OwnerId,
        label: String,
    ) -> Arc<ContextInner> {
        Arc::new(ContextInner { dev, handle, owner, label, events: EventQueue::default() })
    }
}

/// A device handle: the objects created through it belong to it.
#[derive(Clone, Debug)]
pub struct Context(pub(crate) Arc<ContextInner>);

/// Routes a file's lease events to a context's async event queue.
#[derive(Debug)]
struct LeaseRouter(Weak<ContextInner>);

impl LeaseHolder for LeaseRouter {
    fn lease_event(&self, ev: LeaseEvent) {
        let Some(ctx) = self.0.upgrade() else { return };
        let e = match ev {
            LeaseEvent::Recalled { lease, ino, deadline } => AsyncEvent {
                lease: Some(lease),
                ino: Some(ino),
                ..AsyncEvent::new(
                    EventType::LeaseRecalled,
                    format!(
                        "{lease} on {ino} recalled; revoked at t={:.3}s unless released",
                        deadline.as_secs_f64()
                    ),
                )
            },
            LeaseEvent::Revoked { lease, ino } => AsyncEvent {
                lease: Some(lease),
                ino: Some(ino),
                ..AsyncEvent::new(EventType::LeaseRevoked, format!("{lease} on {ino} revoked"))
            },
        };
        ctx.events.post(e);
    }
}

impl Context {
    /// The device.
    pub fn device(&self) -> Device {
        Device(Arc::clone(&self.0.dev))
    }
    /// The handle number (what admin views show as "device handle").
    pub fn handle(&self) -> u64 {
        self.0.handle
    }
    /// On whose behalf.
    pub fn owner(&self) -> OwnerId {
        self.0.owner
    }
    /// The caller identity for filesystem operations done through this context.
    pub fn caller(&self) -> Caller {
        Caller::new(self.0.owner, self.0.label.clone())
    }

    /// Allocates a protection domain.
    pub fn alloc_pd(&self) -> ProtectionDomain {
        ProtectionDomain(Arc::new(PdInner { id: self.0.dev.next_id(), ctx: Arc::clone(&self.0) }))
    }

    /// Creates a completion queue of `depth` entries.
    pub fn create_cq(&self, depth: usize) -> VerbsResult<CompletionQueue> {
        if depth == 0 || depth > MAX_CQE as usize {
            return Err(VerbsError::invalid(format!("CQ depth {depth} outside 1..={MAX_CQE}")));
        }
        let id = self.0.dev.next_id();
        let cq = CqInner::new(id, depth, Arc::downgrade(&self.0), &self.0.dev.mem)?;
        Ok(CompletionQueue(cq))
    }

    /// The next async event, waiting up to `timeout` (zero: don't wait).
    pub fn get_async_event(&self, timeout: Duration) -> Option<AsyncEvent> {
        self.0.events.get(timeout)
    }

    /// Events posted and dropped (queue overflow) so far.
    pub fn event_counts(&self) -> (u64, u64) {
        self.0.events.counts()
    }

    /// `restore_mr` by key (what an event names): the MR must belong to this context.
    pub fn restore_mr(&self, lkey: crate::types::Lkey) -> VerbsResult<()> {
        let mr =
            self.0.dev.mrs.get(lkey.0).filter(|m| m.pd.ctx.handle == self.0.handle).ok_or_else(
                || VerbsError::invalid(format!("{lkey}: no such MR on handle {}", self.0.handle)),
            )?;
        mr.restore()
    }

    /// The MRs of this context.
    pub fn mrs(&self) -> Vec<crate::mr::MrInfo> {
        self.0
            .dev
            .mrs
            .all()
            .iter()
            .filter(|m| m.pd.ctx.handle == self.0.handle)
            .map(|m| m.info())
            .collect()
    }

    /// A lease holder that posts this context's `LeaseRecalled` / `LeaseRevoked` events; pass
    /// it when taking a layout lease.
    pub fn lease_holder(&self) -> Arc<dyn LeaseHolder> {
        Arc::new(LeaseRouter(Arc::downgrade(&self.0)))
    }
}

pub(crate) struct PdInner {
    pub(crate) id: u32,
    pub(crate) ctx: Arc<ContextInner>,
}

impl fmt::Debug for PdInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PD {} of handle {}", self.id, self.ctx.handle)
    }
}

/// A protection domain: MRs and QPs of one PD can only be used together.
#[derive(Clone, Debug)]
pub struct ProtectionDomain(pub(crate) Arc<PdInner>);

impl ProtectionDomain {
    /// The PD number.
    pub fn id(&self) -> u32 {
        self.0.id
    }
    /// The context.
    pub fn context(&self) -> Context {
        Context(Arc::clone(&self.0.ctx))
    }
}
