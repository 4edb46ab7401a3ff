//! pinwheel-node: one node — the pool, the memory core over it, the DAX filesystem in it and
//! the software RDMA device on it — assembled, as the kernel as a whole is.
//!
//! **Owns**: node assembly and its configuration (pool in a memfd or a file, formatting or
//! mounting, the pin policy, the lease-break time); the node daemon (`daemon`), its control
//! protocol (`proto`, `channel`) and admin views; finding the processes that hold a device
//! handle (`procfs`).
//! **Does not own**: the parts themselves; the client side of the protocol is in `pinwheel`.
//!
//! Thread safety: a [`Node`] is `Clone + Send + Sync`; its parts are. The daemon serves each
//! handle on a thread of its own.

pub mod channel;
pub mod convert;
pub mod daemon;
pub mod limits;
pub mod procfs;
pub mod proto;
pub mod sys;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pinwheel_fs::{Filesystem, FsError, MkfsOptions, MountOptions, PinPolicy};
use pinwheel_mm::{Clock, Memory, MmError, Pool, RealClock};
use pinwheel_verbs::{Device, DeviceConfig};

/// Where the pool lives.
#[derive(Clone, Debug)]
pub enum PoolSpec {
    /// A new memfd of this many bytes.
    Memfd {
        /// Bytes.
        size: u64,
    },
    /// A file; created with `size` if missing or when formatting.
    File {
        /// Path.
        path: PathBuf,
        /// Bytes (when creating).
        size: Option<u64>,
    },
}

/// How to build a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Node name (the device is `<name>`).
    pub name: String,
    /// The pool.
    pub pool: PoolSpec,
    /// Format the pool (mkfs) instead of mounting it.
    pub format: bool,
    /// Pin policy.
    pub policy: PinPolicy,
    /// Lease-break time.
    pub lease_break: Duration,
    /// Inodes when formatting.
    pub inodes: Option<u64>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: "pinwheel0".into(),
            pool: PoolSpec::Memfd { size: 256 << 20 },
            format: true,
            policy: PinPolicy::Deny,
            lease_break: Duration::from_millis(pinwheel_fs::limits::LEASE_BREAK_DEFAULT_MS),
            inodes: None,
        }
    }
}

/// Errors of node assembly.
#[derive(thiserror::Error, Debug)]
pub enum NodeError {
    /// The pool could not be made or opened.
    #[error("pool: {0}")]
    Pool(#[from] MmError),
    /// The filesystem could not be made or mounted.
    #[error("filesystem: {0}")]
    Fs(#[from] FsError),
}

impl NodeError {
    /// The errno at the edge.
    pub fn errno(&self) -> pinwheel_mm::Errno {
        match self {
            NodeError::Pool(e) => e.errno(),
            NodeError::Fs(e) => e.errno(),
        }
    }
}

/// A node.
#[derive(Clone, Debug)]
pub struct Node {
    /// Its memory.
    pub memory: Arc<Memory>,
    /// Its filesystem.
    pub fs: Filesystem,
    /// Its RDMA device.
    pub device: Device,
}

impl Node {
    /// Builds a node with the real clock.
    pub fn new(cfg: NodeConfig) -> Result<Node, NodeError> {
        Node::with_clock(cfg, RealClock::new())
    }

    /// Builds a node on `clock` (tests drive deadlines with a manual clock).
    pub fn with_clock(cfg: NodeConfig, clock: Arc<dyn Clock>) -> Result<Node, NodeError> {
        let pool = match &cfg.pool {
            PoolSpec::Memfd { size } => Pool::memfd(&cfg.name, *size)?,
            PoolSpec::File { path, size: Some(size) } if cfg.format || !path.exists() => {
                Pool::create_file(path, *size)?
            }
            PoolSpec::File { path, .. } => Pool::open_file(path)?,
        };
        let memory = Memory::new(pool, clock);
        let mount = MountOptions { policy: cfg.policy, lease_break: cfg.lease_break };
        let fs = if cfg.format {
            Filesystem::mkfs(&memory, MkfsOptions { inodes: cfg.inodes }, mount)?
        } else {
            Filesystem::mount(&memory, mount)?
        };
        let device = Device::open(DeviceConfig {
            name: cfg.name,
            memory: Arc::clone(&memory),
            fs: Some(fs.clone()),
        });
        Ok(Node { memory, fs, device })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_formats_and_remounts_a_file_pool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pool");
        let cfg = NodeConfig {
            pool: PoolSpec::File { path: path.clone(), size: Some(32 << 20) },
            ..NodeConfig::default()
        };
        let n = Node::new(cfg).expect("format");
        n.fs.create("/x", Default::default()).expect("create");
        n.fs.unmount().expect("unmount");
        drop(n);
        let cfg = NodeConfig {
            pool: PoolSpec::File { path, size: None },
            format: false,
            ..NodeConfig::default()
        };
        let n = Node::new(cfg).expect("mount");
        assert!(n.fs.lookup("/x").is_ok());
        assert_eq!(n.device.attr().name, "pinwheel0");
    }
}
