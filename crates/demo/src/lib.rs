//! pinwheel-demo: every long-term pin option of the 2019 debate, run against the same
//! workloads and measured end to end ("Discuss least bad options for resolving longterm-GUP
//! usage by RDMA" — now they can be run).
//!
//! One run: a server node (in this process) with a DAX filesystem holding a victim file between
//! canary files, with little free space; a server application that maps the victim, registers
//! it as the strategy says and takes the leases its policy requires; a client — a separate OS
//! process with a node of its own — streaming RDMA WRITEs of self-describing records into the
//! MR over TCP, with verifying READs; an administrator performing a layout operation a third of
//! the way in, then writing new data so that freed frames get reused. Bytes corrupted and writes
//! lost are computed from the pool's contents afterwards, never from counters the code under
//! test increments.
//!
//! **Owns**: strategies, operations, the client, the checks and the reports (table, JSON, SVG).

pub mod client;
pub mod record;
pub mod report;
mod run;
pub mod strategy;

use std::path::PathBuf;

pub use report::{Report, RunReport};
pub use strategy::{Holder, MrKind, Op, Strategy, Victim};

use pinwheel::fs::PinPolicy;

/// What to run.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Seconds of client traffic per run.
    pub seconds: f64,
    /// Policies to run (empty: all).
    pub policies: Vec<PinPolicy>,
    /// Operations to run (empty: all).
    pub ops: Vec<Op>,
    /// Holder behaviour.
    pub holder: Holder,
    /// Victim size (MiB).
    pub victim_mib: u64,
    /// Lease-break time of the server node (ms).
    pub lease_break_ms: u64,
    /// The `pinwheel` binary, started as `pinwheel demo-client` for each run.
    pub client_exe: PathBuf,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            seconds: 1.2,
            policies: Vec::new(),
            ops: Vec::new(),
            holder: Holder::Cooperative,
            victim_mib: 4,
            lease_break_ms: 500,
            client_exe: PathBuf::from("pinwheel"),
        }
    }
}

impl DemoOptions {
    /// The (strategy, operation) pairs selected, in order.
    pub fn plan(&self) -> Vec<(Strategy, Op)> {
        let ops: Vec<Op> = if self.ops.is_empty() { Op::ALL.to_vec() } else { self.ops.clone() };
        Strategy::all()
            .into_iter()
            .filter(|s| self.policies.is_empty() || self.policies.contains(&s.policy))
            .flat_map(|s| ops.iter().map(move |o| (s, *o)))
            .collect()
    }
}

/// Runs the plan; `progress(done, total, label)` is called before each run.
pub fn run(
    opts: &DemoOptions,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<Report, String> {
    let plan = opts.plan();
    if plan.is_empty() {
        return Err("no strategy matches the selected policies".into());
    }
    let work = std::env::temp_dir();
    let mut report = Report::default();
    for (i, (s, op)) in plan.iter().enumerate() {
        progress(i, plan.len(), &format!("{} {}", s.label(), op));
        let r = run::run(*s, *op, opts.holder, opts, &work)
            .map_err(|e| format!("{} {op}: {e}", s.label()))?;
        report.runs.push(r);
    }
    progress(plan.len(), plan.len(), "done");
    Ok(report)
}
