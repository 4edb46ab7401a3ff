//! Who the filesystem talks to above it: the holders of file pins (memory regions, through
//! pinwheel-verbs) and of leases. These traits are defined here and implemented above, as the
//! kernel's notifier chains are: the filesystem never imports the layers that use it.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use crate::types::{Ino, LeaseId, OwnerId};

/// Who holds a pin, for admin views and for error messages that name the culprit.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HolderInfo {
    /// The pinning object, e.g. `MR 0x1a07`.
    pub object: String,
    /// The device handle that owns it, if any.
    pub handle: Option<u64>,
    /// Processes holding that handle: (pid, command name). Filled in by the node.
    pub processes: Vec<(u32, String)>,
}

impl fmt::Display for HolderInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.object.is_empty() { "an anonymous pinner" } else { &self.object })?;
        if let Some(h) = self.handle {
            write!(f, " on device handle {h}")?;
        }
        if !self.processes.is_empty() {
            let ps: Vec<String> =
                self.processes.iter().map(|(p, c)| format!("pid {p} ({c})")).collect();
            write!(f, " held by {}", ps.join(", "))?;
        }
        Ok(())
    }
}

/// The holder of a long-term file pin (an MR). Calls come from the thread performing a layout
/// change, with no filesystem lock held.
pub trait PinHolder: Send + Sync + fmt::Debug {
    /// Who this is (asked when the pin is taken and for listings).
    fn info(&self) -> HolderInfo;

    /// `decohere` policy: a layout change of `pages` of `ino` is waiting. Mark the region
    /// decoherent, post `MrDecoherent`, and let the owner `restore_mr` (which releases the
    /// old pin and re-pins the new layout once the change is done).
    fn decohere(&self, ino: Ino, pages: Range<u64>);

    /// Revoke now: when this returns no DMA uses the pinned frames and the pin is released.
    /// Later accesses fail with the proper completion status; post `MrRevoked`.
    fn revoke(&self, why: &str);

    /// `lease-kill`: kill every process holding the handle that owns this object. Returns
    /// false if that is not possible here (embedded use); the filesystem then revokes.
    fn kill(&self, why: &str) -> bool {
        let _ = why;
        false
    }
}

/// What travels with a long-term pin through pinwheel-mm's `PinOwner` to the filesystem:
/// the holder and the owner (process or client) on whose behalf it pins.
#[derive(Clone, Debug)]
pub struct PinContext {
    /// The pinning object.
    pub holder: Arc<dyn PinHolder>,
    /// On whose behalf (lease ownership is checked against it).
    pub owner: OwnerId,
}

/// Events for lease holders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A layout change needs the lease: release it before `deadline` (clock time) or it will
    /// be revoked (the `SIGIO` of `F_SETLEASE`).
    Recalled {
        /// Which lease.
        lease: LeaseId,
        /// Of which file.
        ino: Ino,
        /// When it will be revoked.
        deadline: Duration,
    },
    /// The lease was taken away at the deadline.
    Revoked {
        /// Which lease.
        lease: LeaseId,
        /// Of which file.
        ino: Ino,
    },
}

/// Receives a lease's events (the node routes them to the owner's async event queue).
pub trait LeaseHolder: Send + Sync + fmt::Debug {
    /// An event for a lease of this holder. Called with no filesystem lock held.
    fn lease_event(&self, ev: LeaseEvent);
}
