//! Reading and writing the on-pool metadata: the superblock, the reference-count table, inode
//! records and extent-block chains. Every change is written through when it happens.

use std::sync::Arc;

use pinwheel_mm::{FrameRun, Memory, Owner, PAGE_SIZE, Pfn, Placement, PoolOffset};

use crate::error::{FsError, FsResult};
use crate::extent::{Extent, ExtentMap};
use crate::format::{
    Corrupt, ExtentBlock, ExtentRecord, Geometry, INODE_SIZE, InodeRecord, Superblock,
};
use crate::limits::{EXTENTS_PER_BLOCK, INLINE_EXTENTS, MAX_EXTENTS};

/// Access to the on-pool metadata.
#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) mem: Arc<Memory>,
    pub(crate) geo: Geometry,
}

fn corrupt(c: Corrupt) -> FsError {
    FsError::Corrupt { what: c.0 }
}

impl Store {
    fn io<T>(r: pinwheel_mm::Result<T>) -> FsResult<T> {
        r.map_err(FsError::Mm)
    }

    pub(crate) fn read_sb(mem: &Memory) -> FsResult<Superblock> {
        let mut b = vec![0u8; PAGE_SIZE as usize];
        Self::io(mem.pool().read(PoolOffset::new(0), &mut b))?;
        Superblock::decode(&b, mem.pool().size()).map_err(corrupt)
    }

    pub(crate) fn write_sb(&self, sb: &Superblock) -> FsResult<()> {
        Self::io(self.mem.pool().write(PoolOffset::new(0), &sb.encode()))
    }

    pub(crate) fn rc_get(&self, pfn: Pfn) -> u16 {
        let mut b = [0u8; 2];
        match self.mem.pool().read(PoolOffset::new(self.geo.rc_offset(pfn)), &mut b) {
            Ok(()) => u16::from_le_bytes(b),
            Err(_) => 0,
        }
    }

    pub(crate) fn rc_set(&self, pfn: Pfn, v: u16) -> FsResult<()> {
        Self::io(self.mem.pool().write(PoolOffset::new(self.geo.rc_offset(pfn)), &v.to_le_bytes()))
    }

    /// Reads the reference counts of a run of frames (one read of the table), lets `f`
    /// update each in place (index, count), and writes them back (one write).
    pub(crate) fn rc_update(
        &self,
        run: FrameRun,
        mut f: impl FnMut(u64, &mut u16) -> FsResult<()>,
    ) -> FsResult<()> {
        let off = PoolOffset::new(self.geo.rc_offset(run.pfn));
        let mut b = vec![0u8; run.count as usize * 2];
        Self::io(self.mem.pool().read(off, &mut b))?;
        for (i, c) in b.chunks_exact_mut(2).enumerate() {
            let mut v = u16::from_le_bytes([c[0], c[1]]);
            f(i as u64, &mut v)?;
            c.copy_from_slice(&v.to_le_bytes());
        }
        Self::io(self.mem.pool().write(off, &b))
    }

    /// Counts the frames of a run whose reference count satisfies `f` (one read).
    pub(crate) fn rc_count(&self, run: FrameRun, f: impl Fn(u16) -> bool) -> u64 {
        let mut b = vec![0u8; run.count as usize * 2];
        if self.mem.pool().read(PoolOffset::new(self.geo.rc_offset(run.pfn)), &mut b).is_err() {
            return 0;
        }
        b.chunks_exact(2).filter(|c| f(u16::from_le_bytes([c[0], c[1]]))).count() as u64
    }

    pub(crate) fn read_inode(&self, ino: u64) -> FsResult<InodeRecord> {
        let mut b = [0u8; INODE_SIZE as usize];
        Self::io(self.mem.pool().read(PoolOffset::new(self.geo.inode_offset(ino)), &mut b))?;
        InodeRecord::decode(&b, ino).map_err(corrupt)
    }

    pub(crate) fn write_inode(&self, r: &InodeRecord) -> FsResult<()> {
        Self::io(self.mem.pool().write(PoolOffset::new(self.geo.inode_offset(r.ino)), &r.encode()))
    }

    /// True if `pfn` lies in the data area (not in the fixed metadata regions).
    pub(crate) fn is_data(&self, pfn: u64) -> bool {
        pfn >= self.geo.data_start() && pfn < self.geo.frames
    }

    /// Reads all extents of an inode: inline ones plus the chain. Returns the extents and the
    /// chain's frames. Bounds-checks every number read.
    pub(crate) fn read_extents(&self, r: &InodeRecord) -> FsResult<(Vec<Extent>, Vec<u64>)> {
        let n = r.n_extents as usize;
        if n > MAX_EXTENTS {
            return Err(FsError::Corrupt { what: format!("inode {}: {n} extents", r.ino) });
        }
        let mut recs: Vec<ExtentRecord> = r.inline.clone();
        let mut chain = Vec::new();
        let mut next = r.extent_block;
        while recs.len() < n {
            if next == 0
                || !self.is_data(next)
                || chain.contains(&next)
                || chain.len() > MAX_EXTENTS / EXTENTS_PER_BLOCK
            {
                return Err(FsError::Corrupt {
                    what: format!("inode {}: extent chain broken at frame {next}", r.ino),
                });
            }
            let mut b = vec![0u8; PAGE_SIZE as usize];
            Self::io(self.mem.pool().read(Pfn::new(next).offset(), &mut b))?;
            let blk = ExtentBlock::decode(&b, next).map_err(corrupt)?;
            chain.push(next);
            recs.extend(blk.extents);
            next = blk.next;
        }
        if recs.len() != n {
            return Err(FsError::Corrupt {
                what: format!("inode {}: {} extents stored, {n} recorded", r.ino, recs.len()),
            });
        }
        let mut out = Vec::with_capacity(n);
        for e in recs {
            let ok = e.count > 0
                && e.page.checked_add(u64::from(e.count)).is_some()
                && e.pfn.checked_add(u64::from(e.count)).is_some_and(|end| end <= self.geo.frames)
                && self.is_data(e.pfn);
            if !ok {
                return Err(FsError::Corrupt {
                    what: format!("inode {}: bad extent {e:?}", r.ino),
                });
            }
            out.push(Extent { page: e.page, pfn: Pfn::new(e.pfn), count: u64::from(e.count) });
        }
        Ok((out, chain))
    }

    /// Allocates one metadata frame (rc 1); may use the metadata reserve.
    fn alloc_meta(&self) -> FsResult<u64> {
        let run =
            self.mem.alloc(1, Placement::Contiguous, Owner::Metadata, true).map_err(|e| match e
                .errno()
            {
                pinwheel_mm::Errno::ENOMEM => {
                    FsError::NoSpace { needed: 1, free: self.mem.free_bytes() / PAGE_SIZE }
                }
                _ => FsError::Mm(e),
            })?;
        let p = run[0].pfn;
        self.rc_set(p, 1)?;
        Ok(p.raw())
    }

    pub(crate) fn free_meta(&self, pfn: u64) -> FsResult<()> {
        self.rc_set(Pfn::new(pfn), 0)?;
        self.mem.free(FrameRun::new(Pfn::new(pfn), 1));
        Ok(())
    }

    /// Writes the extent map: inline records, then a chain of extent blocks (grown or shrunk),
    /// then the inode record. `rec` carries the other inode fields.
    pub(crate) fn write_extents(
        &self,
        rec: &mut InodeRecord,
        map: &ExtentMap,
        chain: &mut Vec<u64>,
    ) -> FsResult<()> {
        let all: Vec<ExtentRecord> = map
            .iter()
            .flat_map(|e| {
                // Records hold 32-bit counts: split longer extents.
                let mut v = Vec::new();
                let mut at = 0;
                while at < e.count {
                    let n = (e.count - at).min(u64::from(u32::MAX));
                    v.push(ExtentRecord {
                        page: e.page + at,
                        pfn: e.pfn.raw() + at,
                        count: n as u32,
                    });
                    at += n;
                }
                v
            })
            .collect();
        if all.len() > MAX_EXTENTS {
            return Err(FsError::invalid(format!(
                "inode {}: more than {MAX_EXTENTS} extents",
                rec.ino
            )));
        }
        let rest = all.len().saturating_sub(INLINE_EXTENTS);
        let need = rest.div_ceil(EXTENTS_PER_BLOCK);
        while chain.len() < need {
            chain.push(self.alloc_meta()?);
        }
        while chain.len() > need {
            let p = chain.pop().expect("non-empty");
            self.free_meta(p)?;
        }
        for (i, pfn) in chain.iter().enumerate() {
            let from = INLINE_EXTENTS + i * EXTENTS_PER_BLOCK;
            let to = (from + EXTENTS_PER_BLOCK).min(all.len());
            let blk = ExtentBlock {
                next: chain.get(i + 1).copied().unwrap_or(0),
                extents: all[from..to].to_vec(),
            };
            Self::io(self.mem.pool().write(Pfn::new(*pfn).offset(), &blk.encode()))?;
        }
        rec.n_extents = all.len() as u32;
        rec.inline = all.iter().take(INLINE_EXTENTS).copied().collect();
        rec.extent_block = chain.first().copied().unwrap_or(0);
        self.write_inode(rec)
    }
}
