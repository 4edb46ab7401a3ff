//! What the filesystem provides to the memory core: [`FileBacking`], one per open file that is
//! mapped. mm knows no policies; a long-term pin of file memory asks the backing, which
//! applies the node's pin policy (refuse, require a lease, record a file pin).

use std::any::Any;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use crate::error::Result;
use crate::types::{FileId, Pfn};

/// How a file's data is mapped.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum BackingKind {
    /// FS-DAX: mappings reach the file's blocks themselves.
    Dax,
    /// Page cache: mappings reach cache copies written back to the blocks.
    PageCache,
}

/// The identity of whoever holds a pin (an MR, through the device handle that owns it). mm
/// only carries it to the backing; the filesystem downcasts it to the type it expects (the
/// layer above registers that type), as Ira Weiny's `struct vaddr_pin` carried the owning file.
#[derive(Clone)]
pub struct PinOwner(Arc<dyn Any + Send + Sync>);

impl PinOwner {
    /// Wraps an owner.
    pub fn new<T: Any + Send + Sync>(owner: Arc<T>) -> PinOwner {
        PinOwner(owner)
    }
    /// The owner as `T`, if it is one.
    pub fn downcast<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        Arc::clone(&self.0).downcast::<T>().ok()
    }
}

impl fmt::Debug for PinOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PinOwner(..)")
    }
}

/// Proof that the backing allowed a long-term pin; dropping it releases the file pin. Dropped
/// by the [`crate::Pin`] after its frames are unpinned.
pub trait FilePinGuard: Send + Sync + fmt::Debug {
    /// Called once the pin holds every frame of its range. Until then the filesystem may treat
    /// the pin as pending: a copy-on-write fault taken *by the pinning itself* must not be
    /// refused because of the pin being established.
    fn established(&self) {}
}

/// A mappable file, implemented by the filesystem.
pub trait FileBacking: Send + Sync + fmt::Debug {
    /// The file's identity in the reverse map.
    fn file_id(&self) -> FileId;

    /// A name for messages (the path).
    fn name(&self) -> String;

    /// DAX or page cache.
    fn kind(&self) -> BackingKind;

    /// Resolves the frame backing file page `pgoff` for a fault (`write`: a write fault) and
    /// calls `install` with it while the file's layout cannot change, so a concurrent layout
    /// change either sees the new translation (and zaps it) or happens before the lookup.
    /// Beyond the end of the file: `MmError::BeyondEof` (SIGBUS).
    fn fault(
        &self,
        pgoff: u64,
        write: bool,
        install: &mut dyn FnMut(Pfn) -> Result<()>,
    ) -> Result<()>;

    /// Asks permission for a long-term pin of file pages `pgoffs` (the pin policy decides;
    /// refusals carry their errno, e.g. `EOPNOTSUPP`, `EPERM`, `EFAULT`).
    fn longterm_pin(
        &self,
        pgoffs: Range<u64>,
        write: bool,
        owner: Option<&PinOwner>,
    ) -> Result<Box<dyn FilePinGuard>>;
}
