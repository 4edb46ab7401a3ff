//! Pin policies: one per node, each a position taken in the 2017–2019 debate. Decisions are
//! functions over enums, tested as tables.
//!
//! | policy | long-term pin of file memory | a layout change under a pin |
//! |---|---|---|
//! | `unsafe` | allowed, no coordination | proceeds; DMA continues into the old frames, reused and counted |
//! | `deny` | DAX: `EOPNOTSUPP`; writable page cache: `EFAULT` (Linux 7.x) | (no DAX pins exist) page-cache frames are orphaned |
//! | `fs-contract` | fully allocated, unshared, sealed file only, else `EPERM` | fails `ETXTBSY` |
//! | `layout-lease` | needs the pinner's unbreakable layout lease, else `EPERM` | fails `ETXTBSY` (`EDEADLK` for the owner) |
//! | `lease-revoke` | needs the pinner's breakable layout lease, else `EPERM` | recall, wait the lease-break time, revoke, proceed |
//! | `lease-kill` | as `lease-revoke` | recall, wait, SIGKILL the handle's holders, proceed |
//! | `decohere` | allowed | holders made decoherent; waits for `restore_mr` (or revokes at the deadline) |
//!
//! Leases act independently of the policy: an unbreakable layout lease always fails a layout
//! change (`ETXTBSY`, or `EDEADLK` for its owner); a breakable one of another owner is always
//! recalled and, at the deadline, revoked.

use std::fmt;
use std::str::FromStr;

use pinwheel_mm::Errno;

use crate::lease::LeaseKind;

/// A pin policy.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum PinPolicy {
    /// No coordination: the bug the debate set out to fix. Never the default.
    Unsafe,
    /// What upstream Linux does today.
    Deny,
    /// Jason Gunthorpe's "FS as a partner" contract: pins only of static files.
    FsContract,
    /// Ira Weiny's unbreakable layout leases and file pins.
    LayoutLease,
    /// Recall, then revoke the MR (NFS recall/revoke).
    LeaseRevoke,
    /// Recall, then kill the holders (Jan Kara, thread 003).
    LeaseKill,
    /// MR de-coherence and `restore_mr` (thread 002).
    Decohere,
}

impl PinPolicy {
    /// Every policy, in the order of the table above.
    pub const ALL: [PinPolicy; 7] = [
        PinPolicy::Unsafe,
        PinPolicy::Deny,
        PinPolicy::FsContract,
        PinPolicy::LayoutLease,
        PinPolicy::LeaseRevoke,
        PinPolicy::LeaseKill,
        PinPolicy::Decohere,
    ];

    /// The name used on command lines and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            PinPolicy::Unsafe => "unsafe",
            PinPolicy::Deny => "deny",
            PinPolicy::FsContract => "fs-contract",
            PinPolicy::LayoutLease => "layout-lease",
            PinPolicy::LeaseRevoke => "lease-revoke",
            PinPolicy::LeaseKill => "lease-kill",
            PinPolicy::Decohere => "decohere",
        }
    }
}

impl fmt::Display for PinPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PinPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<PinPolicy, String> {
        PinPolicy::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = PinPolicy::ALL.iter().map(|p| p.name()).collect();
            format!("unknown pin policy {s:?}; one of: {}", names.join(", "))
        })
    }
}

/// What the policy needs to know about a long-term pin request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PinRequest {
    /// FS-DAX file (else page cache).
    pub dax: bool,
    /// The pin is for writing.
    pub write: bool,
    /// Every page up to the file size has a block.
    pub fully_allocated: bool,
    /// Some block is shared with another file (reflink).
    pub shared: bool,
    /// The file holds an unbreakable layout lease.
    pub sealed: bool,
    /// The layout lease the pinner itself holds on the file.
    pub requester_lease: Option<LeaseKind>,
}

/// The answer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PinDecision {
    /// Allowed; a file pin is recorded.
    Allow,
    /// Refused with an errno.
    Refuse(Errno, &'static str),
}

/// Decides a long-term pin of file memory.
pub fn decide_pin(policy: PinPolicy, r: PinRequest) -> PinDecision {
    use PinDecision::{Allow, Refuse};
    match policy {
        PinPolicy::Unsafe | PinPolicy::Decohere => Allow,
        PinPolicy::Deny if r.dax => Refuse(
            Errno::EOPNOTSUPP,
            "long-term pins of FS-DAX file memory are not supported (upstream Linux)",
        ),
        PinPolicy::Deny if r.write => Refuse(
            Errno::EFAULT,
            "writable long-term pins of page-cache file memory are refused (upstream Linux 7.x)",
        ),
        PinPolicy::Deny => Allow,
        PinPolicy::FsContract if !r.fully_allocated => {
            Refuse(Errno::EPERM, "fs-contract: the file has holes; fallocate it first")
        }
        PinPolicy::FsContract if r.shared => {
            Refuse(Errno::EPERM, "fs-contract: the file shares blocks with another file (reflink)")
        }
        PinPolicy::FsContract if !r.sealed => Refuse(
            Errno::EPERM,
            "fs-contract: the file is not sealed (no unbreakable layout lease)",
        ),
        PinPolicy::FsContract => Allow,
        PinPolicy::LayoutLease => match r.requester_lease {
            Some(LeaseKind::Unbreakable) => Allow,
            _ => Refuse(
                Errno::EPERM,
                "layout-lease: the pinner holds no unbreakable layout lease on the file",
            ),
        },
        PinPolicy::LeaseRevoke | PinPolicy::LeaseKill => match r.requester_lease {
            Some(LeaseKind::Read | LeaseKind::Write) => Allow,
            _ => Refuse(Errno::EPERM, "the pinner holds no breakable layout lease on the file"),
        },
    }
}

/// What a layout change does about long-term pins covering its range.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PinAction {
    /// Free the frames anyway; DMA continues into them after reuse (counted).
    ReuseUnderDma,
    /// Drop page-cache frames from the cache; they live on for the pin only and DMA into them
    /// is lost (Linux's page-cache behaviour).
    Orphan,
    /// Fail with `ETXTBSY`.
    Refuse,
    /// Revoke the holders (after recalling their leases).
    Revoke,
    /// Kill the holders' processes (after recalling their leases).
    Kill,
    /// Make the holders decoherent and wait for them to restore.
    Decohere,
}

/// Decides what a layout change does about pins.
pub fn pin_action(policy: PinPolicy, dax: bool) -> PinAction {
    match policy {
        PinPolicy::Unsafe if dax => PinAction::ReuseUnderDma,
        PinPolicy::Unsafe | PinPolicy::Deny => PinAction::Orphan,
        PinPolicy::FsContract | PinPolicy::LayoutLease => PinAction::Refuse,
        PinPolicy::LeaseRevoke => PinAction::Revoke,
        PinPolicy::LeaseKill => PinAction::Kill,
        PinPolicy::Decohere => PinAction::Decohere,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PinDecision::{Allow, Refuse};

    fn req(
        dax: bool,
        write: bool,
        full: bool,
        shared: bool,
        sealed: bool,
        lease: Option<LeaseKind>,
    ) -> PinRequest {
        PinRequest { dax, write, fully_allocated: full, shared, sealed, requester_lease: lease }
    }

    fn errno(d: PinDecision) -> Option<Errno> {
        match d {
            Allow => None,
            Refuse(e, _) => Some(e),
        }
    }

    #[test]
    fn policy_pin_decision_table() {
        use LeaseKind::*;
        use PinPolicy::*;
        let plain = req(true, true, true, false, false, None);
        let t: Vec<(PinPolicy, PinRequest, Option<Errno>)> = vec![
            (Unsafe, plain, None),
            (Unsafe, req(false, true, false, true, false, None), None),
            (Deny, plain, Some(Errno::EOPNOTSUPP)),
            (Deny, req(true, false, true, false, false, None), Some(Errno::EOPNOTSUPP)),
            (Deny, req(false, true, true, false, false, None), Some(Errno::EFAULT)),
            (Deny, req(false, false, true, false, false, None), None),
            (FsContract, plain, Some(Errno::EPERM)),
            (FsContract, req(true, true, false, false, true, None), Some(Errno::EPERM)),
            (FsContract, req(true, true, true, true, true, None), Some(Errno::EPERM)),
            (FsContract, req(true, true, true, false, true, None), None),
            (LayoutLease, plain, Some(Errno::EPERM)),
            (LayoutLease, req(true, true, true, false, false, Some(Write)), Some(Errno::EPERM)),
            (LayoutLease, req(true, true, true, false, true, Some(Unbreakable)), None),
            (LeaseRevoke, plain, Some(Errno::EPERM)),
            (LeaseRevoke, req(true, true, true, false, false, Some(Read)), None),
            (LeaseRevoke, req(true, true, true, false, false, Some(Write)), None),
            (
                LeaseRevoke,
                req(true, true, true, false, true, Some(Unbreakable)),
                Some(Errno::EPERM),
            ),
            (LeaseKill, req(true, true, true, false, false, Some(Read)), None),
            (LeaseKill, plain, Some(Errno::EPERM)),
            (Decohere, plain, None),
            (Decohere, req(false, true, false, true, false, None), None),
        ];
        for (p, r, want) in t {
            assert_eq!(errno(decide_pin(p, r)), want, "{p} {r:?}");
        }
    }

    #[test]
    fn policy_layout_action_table() {
        use PinAction::*;
        let t = [
            (PinPolicy::Unsafe, true, ReuseUnderDma),
            (PinPolicy::Unsafe, false, Orphan),
            (PinPolicy::Deny, true, Orphan),
            (PinPolicy::Deny, false, Orphan),
            (PinPolicy::FsContract, true, Refuse),
            (PinPolicy::LayoutLease, true, Refuse),
            (PinPolicy::LeaseRevoke, true, Revoke),
            (PinPolicy::LeaseKill, true, Kill),
            (PinPolicy::Decohere, true, Decohere),
            (PinPolicy::Decohere, false, Decohere),
        ];
        for (p, dax, want) in t {
            assert_eq!(pin_action(p, dax), want, "{p} dax={dax}");
        }
    }

    #[test]
    fn policy_names_round_trip() {
        for p in PinPolicy::ALL {
            assert_eq!(p.name().parse::<PinPolicy>(), Ok(p));
        }
        assert!("nope".parse::<PinPolicy>().unwrap_err().contains("lease-revoke"));
    }
}
