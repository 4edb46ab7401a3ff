//! What one run combines: a strategy (pin policy × MR kind × kind of victim file), a layout
//! operation, and how the holder of the MR behaves.

use std::fmt;
use std::str::FromStr;

use pinwheel::fs::PinPolicy;

/// How the server registers the victim: the verbs MR kinds (pinned, ODP, file).
pub use pinwheel::MrKind;

/// Where the victim's data lives.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Victim {
    /// FS-DAX: mappings and MRs reach the blocks.
    Dax,
    /// A page-cache file.
    PageCache,
}

impl Victim {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Victim::Dax => "dax",
            Victim::PageCache => "page-cache",
        }
    }
}

/// Policy × MR kind × victim.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Strategy {
    /// The node's pin policy.
    pub policy: PinPolicy,
    /// The MR kind.
    pub mr: MrKind,
    /// The victim.
    pub victim: Victim,
}

impl Strategy {
    /// The strategies of the demo, in order.
    pub fn all() -> Vec<Strategy> {
        use MrKind::*;
        use PinPolicy::*;
        use Victim::*;
        let s = |policy, mr, victim| Strategy { policy, mr, victim };
        vec![
            s(Unsafe, Pinned, Dax),
            s(Deny, Pinned, Dax),
            s(Deny, Odp, Dax),
            s(FsContract, Pinned, Dax),
            s(LayoutLease, Pinned, Dax),
            s(LeaseRevoke, Pinned, Dax),
            s(Decohere, Pinned, Dax),
            s(Deny, File, Dax),
            s(Unsafe, Pinned, PageCache),
            s(Deny, Pinned, PageCache),
        ]
    }

    /// `policy/kind victim`.
    pub fn label(&self) -> String {
        format!("{}/{} {}", self.policy, self.mr.name(), self.victim.name())
    }
}

/// The layout operation the administrator performs while the client writes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Shrink to 0, then (after the freed space is reused) regrow and fallocate.
    Truncate,
    /// Punch a hole over the middle half.
    Punch,
    /// Clone the victim, then write to its shared range (copy-on-write).
    Reflink,
    /// Move every extent.
    Defrag,
    /// Unlink (the server closes and unmaps the file, keeping its MR), then reuse the space.
    Unlink,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 5] = [Op::Truncate, Op::Punch, Op::Reflink, Op::Defrag, Op::Unlink];
    /// Name.
    pub fn name(self) -> &'static str {
        match self {
            Op::Truncate => "truncate",
            Op::Punch => "punch",
            Op::Reflink => "reflink",
            Op::Defrag => "defrag",
            Op::Unlink => "unlink",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Op {
    type Err = String;
    fn from_str(s: &str) -> Result<Op, String> {
        Op::ALL.into_iter().find(|o| o.name() == s).ok_or_else(|| {
            format!("unknown operation {s:?}; one of: truncate, punch, reflink, defrag, unlink")
        })
    }
}

/// How the server application answers the events of its MR and lease.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Holder {
    /// Handles events: restores decoherent MRs (the library's auto-restore), releases recalled
    /// leases (deregistering the MR first).
    Cooperative,
    /// Ignores them.
    Unresponsive,
}

impl Holder {
    /// Name.
    pub fn name(self) -> &'static str {
        match self {
            Holder::Cooperative => "cooperative",
            Holder::Unresponsive => "unresponsive",
        }
    }
}

impl FromStr for Holder {
    type Err = String;
    fn from_str(s: &str) -> Result<Holder, String> {
        match s {
            "cooperative" => Ok(Holder::Cooperative),
            "unresponsive" => Ok(Holder::Unresponsive),
            _ => Err(format!("unknown holder behaviour {s:?}; cooperative or unresponsive")),
        }
    }
}
