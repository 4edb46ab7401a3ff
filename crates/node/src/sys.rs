//! The one place in pinwheel-node with `unsafe`: `fork`, for the tools that reproduce what the
//! 2019 debate turned on (a child inherits a device handle and its pins outlive the parent).

#![allow(unsafe_code)]

/// Which side of a [`fork`] this is.
#[derive(Debug, PartialEq, Eq)]
pub enum Forked {
    /// The parent; the child's pid.
    Parent(u32),
    /// The child.
    Child,
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

/// `fork(2)`, refused unless the process has exactly one thread: in a child of a threaded
/// process only async-signal-safe code may run, and the caller's does not promise that.
pub fn fork() -> std::io::Result<Forked> {
    if threads() != 1 {
        return Err(std::io::Error::other(format!(
            "fork refused: the process has {} threads (fork only while single-threaded)",
            threads()
        )));
    }
    // SAFETY: the process is single-threaded (checked above, and nothing here starts a thread
    // in between), so the child is a complete copy in which any code may run; fork has no
    // memory-safety preconditions beyond that.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid as u32)),
    }
}
