//! Who holds a device handle: the processes whose file tables contain the handle's socket,
//! found through `/proc/<pid>/fd` as `lsof` does (Ira Weiny's `/proc/<pid>/file_pins` answered
//! the same question in the kernel).
//!
//! A handle in flight inside a Unix socket (sent with `SCM_RIGHTS`, not yet received) is in
//! no process's table: it has no holder until someone receives it.

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;

/// The inode number of a socket (or any fd): what `/proc/<pid>/fd/<n>` shows as
/// `socket:[<ino>]`.
pub fn inode_of(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    Ok(rustix::fs::fstat(fd)?.st_ino)
}

/// A process's command name (`/proc/<pid>/comm`), or `?`.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn socket_inode_of_link(target: &std::path::Path) -> Option<u64> {
    let s = target.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// True if process `pid` has the socket with inode `ino` open.
pub fn holds(pid: u32, ino: u64) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    dir.flatten().any(|e| {
        std::fs::read_link(e.path()).ok().and_then(|t| socket_inode_of_link(&t)) == Some(ino)
    })
}

/// For each socket inode of `inodes`, the processes holding it: (pid, command), by pid.
/// Processes that vanish or that we may not inspect during the scan are skipped.
pub fn holders(inodes: &[u64]) -> BTreeMap<u64, Vec<(u32, String)>> {
    let mut out: BTreeMap<u64, Vec<(u32, String)>> =
        inodes.iter().map(|i| (*i, Vec::new())).collect();
    if inodes.is_empty() {
        return out;
    }
    let Ok(proc_dir) = std::fs::read_dir("/proc") else { return out };
    for entry in proc_dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        let mut found: Vec<u64> = Vec::new();
        for fd in fds.flatten() {
            if let Some(ino) =
                std::fs::read_link(fd.path()).ok().and_then(|t| socket_inode_of_link(&t))
                && out.contains_key(&ino)
                && !found.contains(&ino)
            {
                found.push(ino);
            }
        }
        if found.is_empty() {
            continue;
        }
        let name = comm(pid);
        for ino in found {
            if let Some(v) = out.get_mut(&ino) {
                v.push((pid, name.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn procfs_finds_socket_holders() {
        let (a, _b) = crate::channel::seqpacket_pair().unwrap();
        let ino = inode_of(a.as_fd()).unwrap();
        assert!(holds(std::process::id(), ino));
        let me = (std::process::id(), comm(std::process::id()));
        assert_eq!(holders(&[ino]).get(&ino), Some(&vec![me]));
        drop(a);
        assert_eq!(holders(&[ino]).get(&ino).map(Vec::len), Some(0));
        assert!(!comm(std::process::id()).is_empty());
        assert_eq!(socket_inode_of_link(std::path::Path::new("socket:[42]")), Some(42));
        assert_eq!(socket_inode_of_link(std::path::Path::new("/dev/null")), None);
    }
}
