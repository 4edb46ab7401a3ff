//! Layout leases (fs/locks.c `FL_LAYOUT`, extended as designed in 2019).
//!
//! A lease is held by an open file and covers the whole file's layout (block mapping, size and
//! sharing). Kinds:
//! - **read layout lease**: "don't change the layout under me"; any number may coexist;
//! - **write layout lease**: its holder may change the layout; no other layout lease may exist;
//! - **unbreakable read layout lease** (sealed): taken only by downgrading a write layout
//!   lease, after allocating (the LPC 2019 sequence: write lease, fallocate, downgrade). Any
//!   layout change fails: `ETXTBSY` for others, `EDEADLK` for its owner.
//!
//! Breaking: a layout change by another owner *recalls* breakable leases (the holder gets
//! `LeaseEvent::Recalled`) and, if not released within the lease-break time, *revokes* them.
//! The owner's own layout changes do not break its lease (leases are not locks).
//!
//! Releasing a lease that live long-term pins rely on fails with `EBUSY`: the pins go first
//! (deregister the MRs), then the lease. Of the two options the debate left open — block until
//! unpin, or fail — failing is the one that cannot hang a process that forgot its MRs, and it
//! tells the caller exactly what is in the way. Closing the file drops its leases regardless
//! ("close is OK", Ira Weiny's rule 5); pins then keep acting on their own under the policy.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{FsError, FsResult};
use crate::holder::LeaseHolder;
use crate::types::{Ino, LeaseId, OpenId, OwnerId};

/// Kind of layout lease.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum LeaseKind {
    /// Read layout lease (breakable).
    Read,
    /// Write layout lease (breakable).
    Write,
    /// Unbreakable read layout lease: the file is sealed.
    Unbreakable,
}

impl LeaseKind {
    /// Name for listings.
    pub fn name(self) -> &'static str {
        match self {
            LeaseKind::Read => "read",
            LeaseKind::Write => "write",
            LeaseKind::Unbreakable => "unbreakable",
        }
    }
    /// True for leases a layout change can recall.
    pub fn breakable(self) -> bool {
        self != LeaseKind::Unbreakable
    }
}

impl fmt::Display for LeaseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A lease's state.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LeaseState {
    /// Held.
    Active,
    /// Recalled; revoked at `deadline` (clock time) unless released.
    Breaking {
        /// When.
        deadline: Duration,
    },
}

/// A lease.
#[derive(Clone)]
pub(crate) struct Lease {
    pub(crate) id: LeaseId,
    pub(crate) kind: LeaseKind,
    pub(crate) owner: OwnerId,
    pub(crate) open: OpenId,
    pub(crate) state: LeaseState,
    pub(crate) holder: Option<Arc<dyn LeaseHolder>>,
    pub(crate) taken_at: Duration,
    pub(crate) owner_label: String,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("owner", &self.owner)
            .field("state", &self.state)
            .finish()
    }
}

/// A lease, for listings.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseInfo {
    /// Which.
    pub id: LeaseId,
    /// On which file.
    pub ino: Ino,
    /// Kind.
    pub kind: LeaseKind,
    /// Owner.
    pub owner: OwnerId,
    /// Owner's label.
    pub owner_label: String,
    /// Held through which open file.
    pub open: OpenId,
    /// State.
    pub state: LeaseState,
    /// Long-term pins that rely on it.
    pub pins: usize,
    /// When taken (clock time).
    pub taken_at: Duration,
}

/// Checks a lease change of open file `open` (currently holding `current`) to `want` against
/// the other leases of the file. `breaking`: a layout change is in progress on the file.
pub(crate) fn check_change(
    others: &[&Lease],
    current: Option<LeaseKind>,
    want: LeaseKind,
    breaking: bool,
) -> FsResult<()> {
    let conflict = |what: &str| {
        let who: Vec<String> = others
            .iter()
            .map(|l| format!("{} {} lease of {}", l.id, l.kind, l.owner_label))
            .collect();
        Err(FsError::LeaseConflict { detail: format!("{what}: {}", who.join(", ")) })
    };
    if breaking && want != LeaseKind::Unbreakable {
        return Err(FsError::LeaseConflict {
            detail: "a layout change is in progress on the file; try again".into(),
        });
    }
    match want {
        LeaseKind::Read => {
            if others.iter().any(|l| l.kind == LeaseKind::Write) {
                return conflict("a write layout lease is held");
            }
        }
        LeaseKind::Write => {
            if !others.is_empty() {
                return conflict("other layout leases are held");
            }
        }
        LeaseKind::Unbreakable => {
            if current != Some(LeaseKind::Write) {
                return Err(FsError::invalid(
                    "an unbreakable layout lease is taken by downgrading a write layout lease: \
                     take a write lease, fallocate, then downgrade",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinwheel_mm::Errno;

    fn lease(kind: LeaseKind) -> Lease {
        Lease {
            id: LeaseId(1),
            kind,
            owner: OwnerId(9),
            open: OpenId(9),
            state: LeaseState::Active,
            holder: None,
            taken_at: Duration::ZERO,
            owner_label: "other".into(),
        }
    }

    #[test]
    fn lease_grant_table() {
        use LeaseKind::*;
        let r = lease(Read);
        let w = lease(Write);
        let u = lease(Unbreakable);
        type Case<'a> = (Vec<&'a Lease>, Option<LeaseKind>, LeaseKind, bool, Option<Errno>);
        let t: Vec<Case<'_>> = vec![
            (vec![], None, Read, false, None),
            (vec![&r], None, Read, false, None),
            (vec![&u], None, Read, false, None),
            (vec![&w], None, Read, false, Some(Errno::EAGAIN)),
            (vec![], None, Write, false, None),
            (vec![&r], None, Write, false, Some(Errno::EAGAIN)),
            (vec![], Some(Read), Write, false, None),
            (vec![], None, Unbreakable, false, Some(Errno::EINVAL)),
            (vec![], Some(Read), Unbreakable, false, Some(Errno::EINVAL)),
            (vec![], Some(Write), Unbreakable, false, None),
            (vec![], Some(Write), Unbreakable, true, None),
            (vec![], None, Read, true, Some(Errno::EAGAIN)),
        ];
        for (others, cur, want, breaking, errno) in t {
            let got = check_change(&others, cur, want, breaking).err().map(|e| e.errno());
            assert_eq!(
                got,
                errno,
                "{cur:?} -> {want:?} with {} others, breaking={breaking}",
                others.len()
            );
        }
    }
}
