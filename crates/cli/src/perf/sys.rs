//! The CPU affinity of the calling thread, for the ping-pong baseline's two processes on two
//! CPUs (the memory-core's [`pinwheel::mm::HostMemory`] gives the `mlock` baseline).

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// The CPUs this thread may run on.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    match sched_getaffinity(None) {
        Ok(set) => (0..CpuSet::MAX_CPU).filter(|c| set.is_set(*c)).collect(),
        Err(_) => Vec::new(),
    }
}

/// A thread bound to one CPU until dropped (then its former set is restored).
#[derive(Debug)]
pub(crate) struct Pinned {
    before: Option<CpuSet>,
}

/// Binds the calling thread to `cpu` if it may run there; `None` when it cannot (a smaller
/// machine, a container's cpuset, a refused call).
pub(crate) fn pin_to(cpu: usize) -> Option<Pinned> {
    let before = sched_getaffinity(None).ok()?;
    if cpu >= CpuSet::MAX_CPU || !before.is_set(cpu) {
        return None;
    }
    let mut only = CpuSet::new();
    only.set(cpu);
    sched_setaffinity(None, &only).ok()?;
    Some(Pinned { before: Some(before) })
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(b) = self.before.take() {
            let _ = sched_setaffinity(None, &b);
        }
    }
}
