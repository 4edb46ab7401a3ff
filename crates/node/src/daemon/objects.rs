//! The objects of one device handle, in a bounded table of index + generation ids.

use std::sync::Arc;

use pinwheel_fs::OpenFile;
use pinwheel_verbs::{CompletionQueue, MemoryRegion, ProtectionDomain, QueuePair};

use crate::limits::MAX_OBJECTS_PER_HANDLE;
use crate::proto::{ObjId, ObjectCounts};

/// Index bits of an [`ObjId`]; the rest is the generation.
const INDEX_BITS: u32 = 20;
const INDEX_MASK: u32 = (1 << INDEX_BITS) - 1;

/// An object of a handle.
#[derive(Debug)]
pub(crate) enum Obj {
    Pd(ProtectionDomain),
    /// Shared by every handle that imported it: deregistered when the last reference goes.
    Mr {
        mr: Arc<MemoryRegion>,
        pd: ObjId,
        imported: bool,
    },
    Cq(CompletionQueue),
    Qp {
        qp: QueuePair,
        pd: ObjId,
        cqs: [ObjId; 2],
    },
    Buffer {
        addr: u64,
        len: u64,
    },
    Mapping {
        addr: u64,
        len: u64,
        watch: Option<Arc<super::mapping::MapWatch>>,
    },
    File(Arc<OpenFile>),
}

impl Obj {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Obj::Pd(_) => "PD",
            Obj::Mr { .. } => "MR",
            Obj::Cq(_) => "CQ",
            Obj::Qp { .. } => "QP",
            Obj::Buffer { .. } => "buffer",
            Obj::Mapping { .. } => "mapping",
            Obj::File(_) => "open file",
        }
    }
    /// Teardown order (IB uverbs' bottom-up): QPs, then MRs and CQs, then PDs, then memory
    /// and files (a file's lease goes with it).
    fn rank(&self) -> u8 {
        match self {
            Obj::Qp { .. } => 0,
            Obj::Mr { .. } | Obj::Cq(_) => 1,
            Obj::Pd(_) => 2,
            Obj::Buffer { .. } | Obj::Mapping { .. } => 3,
            Obj::File(_) => 4,
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    obj: Option<Obj>,
}

/// The table.
#[derive(Debug, Default)]
pub(crate) struct Objects {
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
}

impl Objects {
    /// Inserts; `None` when the handle has [`MAX_OBJECTS_PER_HANDLE`] objects.
    pub(crate) fn insert(&mut self, obj: Obj) -> Option<ObjId> {
        if self.live >= MAX_OBJECTS_PER_HANDLE {
            return None;
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.generation = (slot.generation + 1) & (u32::MAX >> INDEX_BITS);
        if slot.generation == 0 {
            slot.generation = 1;
        }
        slot.obj = Some(obj);
        self.live += 1;
        Some(ObjId(slot.generation << INDEX_BITS | index))
    }

    fn slot(&self, id: ObjId) -> Option<&Slot> {
        self.slots.get((id.0 & INDEX_MASK) as usize).filter(|s| s.generation == id.0 >> INDEX_BITS)
    }

    pub(crate) fn get(&self, id: ObjId) -> Option<&Obj> {
        self.slot(id)?.obj.as_ref()
    }

    pub(crate) fn remove(&mut self, id: ObjId) -> Option<Obj> {
        self.slot(id)?;
        let index = id.0 & INDEX_MASK;
        let obj = self.slots[index as usize].obj.take()?;
        self.free.push(index);
        self.live -= 1;
        Some(obj)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (ObjId, &Obj)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.obj.as_ref().map(|o| (ObjId(s.generation << INDEX_BITS | i as u32), o))
        })
    }

    /// Empties the table in teardown order.
    pub(crate) fn drain_in_order(&mut self) -> Vec<Obj> {
        let mut all: Vec<Obj> = self.slots.iter_mut().filter_map(|s| s.obj.take()).collect();
        self.free.clear();
        self.slots.clear();
        self.live = 0;
        all.sort_by_key(Obj::rank);
        all
    }

    pub(crate) fn counts(&self) -> ObjectCounts {
        let mut c = ObjectCounts::default();
        for (_, o) in self.iter() {
            match o {
                Obj::Pd(_) => c.pds += 1,
                Obj::Mr { imported, .. } => {
                    c.mrs += 1;
                    c.imported += u64::from(*imported);
                }
                Obj::Cq(_) => c.cqs += 1,
                Obj::Qp { .. } => c.qps += 1,
                Obj::Buffer { .. } => c.buffers += 1,
                Obj::Mapping { .. } => c.mappings += 1,
                Obj::File(f) => {
                    c.files += 1;
                    c.leases += u64::from(f.lease().is_some());
                }
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_stale_ids_fail_and_teardown_is_bottom_up() {
        let mut t = Objects::default();
        let a = t.insert(Obj::Buffer { addr: 1, len: 1 }).unwrap();
        assert!(t.get(a).is_some());
        assert!(t.remove(a).is_some());
        let b = t.insert(Obj::Mapping { addr: 2, len: 1, watch: None }).unwrap();
        assert_ne!(a, b, "the slot is reused with a new generation");
        assert!(t.get(a).is_none(), "a stale id fails");
        assert!(t.remove(a).is_none());
        assert!(t.get(ObjId(12345)).is_none());
        let _ = t.insert(Obj::Buffer { addr: 3, len: 1 }).unwrap();
        let order: Vec<&str> = t.drain_in_order().iter().map(Obj::kind).collect();
        assert_eq!(order, ["mapping", "buffer"]);
        assert_eq!(t.counts(), ObjectCounts::default());
    }
}
