//! The on-pool format. All metadata lives in the pool and is updated in place as operations
//! happen; nothing is serialized at unmount except the clean flag.
//!
//! ```text
//! frame 0                     superblock
//! frames 1 .. 1+J             journal (reserved: crash consistency will log metadata updates
//!                             here before applying them in place; nothing else moves)
//! rc table                    one u16 per pool frame: 0 free, n = n references
//!                             (metadata frames and single-owner blocks 1, reflinked blocks n)
//! inode table                 256-byte inode records
//! data                        file blocks, extent blocks, directory blocks
//! ```
//!
//! Every record carries a crc32c; decoding checks magic, checksum and ranges and returns
//! [`Corrupt`], never panics, whatever the bytes.

use pinwheel_mm::{PAGE_SIZE, Pfn};

use crate::limits::{FRAMES_PER_INODE, INLINE_EXTENTS, INODES_MAX, INODES_MIN, JOURNAL_FRAMES};

/// "PINWHEEL".
pub const SB_MAGIC: [u8; 8] = *b"PINWHEEL";
/// Format version.
pub const VERSION: u32 = 1;
/// Inode record size.
pub const INODE_SIZE: u64 = 256;
const INODE_MAGIC: u32 = 0x444f_4e49; // "INOD"
const EXTB_MAGIC: u32 = 0x4254_5845; // "EXTB"
/// Directory entry size.
pub const DIRENT_SIZE: u64 = 256;
/// Extent record size.
pub const EXTENT_SIZE: usize = 24;
/// Extent block header size.
pub const EXTB_HEADER: usize = 24;

/// A decoding failure: what is wrong and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corrupt(pub String);

type Dec<T> = Result<T, Corrupt>;

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}
fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// crc32c of `b` with the 4 bytes at `crc_at` taken as zero.
fn crc_with_hole(b: &[u8], crc_at: usize) -> u32 {
    let c = crc32c::crc32c(&b[..crc_at]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &b[crc_at + 4..])
}

/// Where the regions of a filesystem lie, computed at mkfs and recorded in the superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Pool frames.
    pub frames: u64,
    /// First journal frame.
    pub journal_start: u64,
    /// Journal frames.
    pub journal_frames: u64,
    /// First frame of the reference-count table.
    pub rc_start: u64,
    /// Frames of the reference-count table.
    pub rc_frames: u64,
    /// First frame of the inode table.
    pub itable_start: u64,
    /// Frames of the inode table.
    pub itable_frames: u64,
    /// Inodes.
    pub inodes: u64,
}

impl Geometry {
    /// The layout for a pool of `frames` frames with the default inode count, or `None` if it
    /// leaves no room for data.
    pub fn for_frames(frames: u64) -> Option<Geometry> {
        Geometry::with_inodes(frames, None)
    }

    /// The layout with `inodes` inodes (clamped to the limits; `None`: one per
    /// `FRAMES_PER_INODE` frames).
    pub fn with_inodes(frames: u64, inodes: Option<u64>) -> Option<Geometry> {
        let inodes = inodes.unwrap_or(frames / FRAMES_PER_INODE).clamp(INODES_MIN, INODES_MAX);
        let journal_start = 1;
        let rc_start = journal_start + JOURNAL_FRAMES;
        let rc_frames = (frames * 2).div_ceil(PAGE_SIZE);
        let itable_start = rc_start + rc_frames;
        let itable_frames = (inodes * INODE_SIZE).div_ceil(PAGE_SIZE);
        let g = Geometry {
            frames,
            journal_start,
            journal_frames: JOURNAL_FRAMES,
            rc_start,
            rc_frames,
            itable_start,
            itable_frames,
            inodes,
        };
        (g.data_start() + 16 <= frames).then_some(g)
    }

    /// First frame available for data.
    pub fn data_start(&self) -> u64 {
        self.itable_start + self.itable_frames
    }
    /// Pool byte offset of inode `ino`'s record (inode numbers start at 1).
    pub fn inode_offset(&self, ino: u64) -> u64 {
        self.itable_start * PAGE_SIZE + (ino - 1) * INODE_SIZE
    }
    /// Pool byte offset of frame `pfn`'s reference count.
    pub fn rc_offset(&self, pfn: Pfn) -> u64 {
        self.rc_start * PAGE_SIZE + pfn.raw() * 2
    }
    fn check(&self, frames: u64) -> Dec<()> {
        // The regions follow from the frame and inode counts: recompute them from those.
        if !(INODES_MIN..=INODES_MAX).contains(&self.inodes) {
            return Err(Corrupt(format!(
                "superblock: {} inodes outside {INODES_MIN}..={INODES_MAX}",
                self.inodes
            )));
        }
        let want = Geometry::with_inodes(frames, Some(self.inodes))
            .ok_or_else(|| Corrupt(format!("pool of {frames} frames too small")))?;
        if *self != want {
            return Err(Corrupt(format!(
                "superblock geometry {self:?} does not match a pool of {frames} frames with {} inodes ({want:?})",
                self.inodes
            )));
        }
        Ok(())
    }
}

/// The superblock (frame 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Region layout.
    pub geometry: Geometry,
    /// Pool size in bytes.
    pub pool_size: u64,
    /// The root directory's inode.
    pub root_ino: u64,
    /// Times mounted.
    pub mount_count: u64,
    /// True after a clean unmount; cleared while mounted.
    pub clean: bool,
    /// Next inode generation.
    pub next_generation: u64,
}

impl Superblock {
    /// Encodes into a 4 KiB frame image.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; PAGE_SIZE as usize];
        b[0..8].copy_from_slice(&SB_MAGIC);
        put_u32(&mut b, 8, VERSION);
        let g = &self.geometry;
        for (i, v) in [
            self.pool_size,
            g.frames,
            g.journal_start,
            g.journal_frames,
            g.rc_start,
            g.rc_frames,
            g.itable_start,
            g.itable_frames,
            g.inodes,
            self.root_ino,
            self.mount_count,
            self.next_generation,
        ]
        .into_iter()
        .enumerate()
        {
            put_u64(&mut b, 16 + i * 8, v);
        }
        b[112] = u8::from(self.clean);
        let crc = crc_with_hole(&b, 12);
        put_u32(&mut b, 12, crc);
        b
    }

    /// Decodes and validates a superblock image against the pool's real size.
    pub fn decode(b: &[u8], pool_size: u64) -> Dec<Superblock> {
        if b.len() < PAGE_SIZE as usize {
            return Err(Corrupt("superblock: short read".into()));
        }
        if b[0..8] != SB_MAGIC {
            return Err(Corrupt(
                "superblock: bad magic (not a pinwheel filesystem; run mkfs)".into(),
            ));
        }
        let v = get_u32(b, 8);
        if v != VERSION {
            return Err(Corrupt(format!(
                "superblock: format version {v}, this build reads {VERSION}"
            )));
        }
        let want = get_u32(b, 12);
        let got = crc_with_hole(&b[..PAGE_SIZE as usize], 12);
        if want != got {
            return Err(Corrupt(format!("superblock: checksum {want:#x} != computed {got:#x}")));
        }
        let f = |i: usize| get_u64(b, 16 + i * 8);
        let sb = Superblock {
            pool_size: f(0),
            geometry: Geometry {
                frames: f(1),
                journal_start: f(2),
                journal_frames: f(3),
                rc_start: f(4),
                rc_frames: f(5),
                itable_start: f(6),
                itable_frames: f(7),
                inodes: f(8),
            },
            root_ino: f(9),
            mount_count: f(10),
            next_generation: f(11),
            clean: b[112] != 0,
        };
        if sb.pool_size != pool_size {
            return Err(Corrupt(format!(
                "superblock: made for a pool of {} bytes, this pool has {pool_size}",
                sb.pool_size
            )));
        }
        sb.geometry.check(pool_size / PAGE_SIZE)?;
        if sb.root_ino == 0 || sb.root_ino > sb.geometry.inodes {
            return Err(Corrupt(format!("superblock: root inode {} out of range", sb.root_ino)));
        }
        Ok(sb)
    }
}

/// What an inode is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum InodeKind {
    /// Unused slot.
    Free,
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// Inode flag: data goes through the page cache (a non-DAX file).
pub const IFLAG_PAGE_CACHE: u8 = 1 << 0;
/// Inode flag: unlinked while still referenced (an orphan, freed at last reference).
pub const IFLAG_ORPHAN: u8 = 1 << 1;

/// One extent: file pages `[page, page + count)` live in frames `[pfn, pfn + count)`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExtentRecord {
    /// First file page.
    pub page: u64,
    /// First frame.
    pub pfn: u64,
    /// Pages.
    pub count: u32,
}

impl ExtentRecord {
    fn put(&self, b: &mut [u8], at: usize) {
        put_u64(b, at, self.page);
        put_u64(b, at + 8, self.pfn);
        put_u32(b, at + 16, self.count);
        put_u32(b, at + 20, 0);
    }
    fn get(b: &[u8], at: usize) -> ExtentRecord {
        ExtentRecord { page: get_u64(b, at), pfn: get_u64(b, at + 8), count: get_u32(b, at + 16) }
    }
}

/// An inode record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InodeRecord {
    /// Number.
    pub ino: u64,
    /// Generation (bumped on every reuse of the slot).
    pub generation: u64,
    /// Kind.
    pub kind: InodeKind,
    /// `IFLAG_*`.
    pub flags: u8,
    /// Links.
    pub nlink: u16,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (ns since the node's clock epoch).
    pub mtime_ns: u64,
    /// Total extents.
    pub n_extents: u32,
    /// First extent block beyond the inline ones (0: none).
    pub extent_block: u64,
    /// The first `INLINE_EXTENTS` extents.
    pub inline: Vec<ExtentRecord>,
}

impl InodeRecord {
    /// An unused slot.
    pub fn free(ino: u64) -> InodeRecord {
        InodeRecord {
            ino,
            generation: 0,
            kind: InodeKind::Free,
            flags: 0,
            nlink: 0,
            size: 0,
            mtime_ns: 0,
            n_extents: 0,
            extent_block: 0,
            inline: Vec::new(),
        }
    }

    /// Encodes into 256 bytes.
    pub fn encode(&self) -> [u8; INODE_SIZE as usize] {
        let mut b = [0u8; INODE_SIZE as usize];
        put_u32(&mut b, 0, INODE_MAGIC);
        put_u64(&mut b, 8, self.ino);
        put_u64(&mut b, 16, self.generation);
        b[24] = match self.kind {
            InodeKind::Free => 0,
            InodeKind::File => 1,
            InodeKind::Dir => 2,
        };
        b[25] = self.flags;
        put_u16(&mut b, 26, self.nlink);
        put_u64(&mut b, 32, self.size);
        put_u64(&mut b, 40, self.mtime_ns);
        put_u32(&mut b, 56, self.n_extents);
        put_u64(&mut b, 64, self.extent_block);
        for (i, e) in self.inline.iter().take(INLINE_EXTENTS).enumerate() {
            e.put(&mut b, 72 + i * EXTENT_SIZE);
        }
        let crc = crc_with_hole(&b, 4);
        put_u32(&mut b, 4, crc);
        b
    }

    /// Decodes a record; an all-zero record is a never-used free slot.
    pub fn decode(b: &[u8], ino: u64) -> Dec<InodeRecord> {
        if b.len() < INODE_SIZE as usize {
            return Err(Corrupt(format!("inode {ino}: short record")));
        }
        let b = &b[..INODE_SIZE as usize];
        if b.iter().all(|x| *x == 0) {
            return Ok(InodeRecord::free(ino));
        }
        if get_u32(b, 0) != INODE_MAGIC {
            return Err(Corrupt(format!("inode {ino}: bad magic")));
        }
        let want = get_u32(b, 4);
        let got = crc_with_hole(b, 4);
        if want != got {
            return Err(Corrupt(format!("inode {ino}: checksum {want:#x} != computed {got:#x}")));
        }
        let kind = match b[24] {
            0 => InodeKind::Free,
            1 => InodeKind::File,
            2 => InodeKind::Dir,
            k => return Err(Corrupt(format!("inode {ino}: unknown kind {k}"))),
        };
        if get_u64(b, 8) != ino {
            return Err(Corrupt(format!("inode {ino}: record says it is inode {}", get_u64(b, 8))));
        }
        let n_extents = get_u32(b, 56);
        let inline = (0..(n_extents as usize).min(INLINE_EXTENTS))
            .map(|i| ExtentRecord::get(b, 72 + i * EXTENT_SIZE))
            .collect();
        Ok(InodeRecord {
            ino,
            generation: get_u64(b, 16),
            kind,
            flags: b[25],
            nlink: get_u16(b, 26),
            size: get_u64(b, 32),
            mtime_ns: get_u64(b, 40),
            n_extents,
            extent_block: get_u64(b, 64),
            inline,
        })
    }
}

/// An extent block: up to `EXTENTS_PER_BLOCK` records and the next block of the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentBlock {
    /// Next block (0: last).
    pub next: u64,
    /// Records.
    pub extents: Vec<ExtentRecord>,
}

impl ExtentBlock {
    /// Encodes into a 4 KiB frame image.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; PAGE_SIZE as usize];
        put_u32(&mut b, 0, EXTB_MAGIC);
        put_u64(&mut b, 8, self.next);
        put_u32(&mut b, 16, self.extents.len() as u32);
        for (i, e) in self.extents.iter().enumerate() {
            e.put(&mut b, EXTB_HEADER + i * EXTENT_SIZE);
        }
        let crc = crc_with_hole(&b, 4);
        put_u32(&mut b, 4, crc);
        b
    }

    /// Decodes a block read from frame `pfn`.
    pub fn decode(b: &[u8], pfn: u64) -> Dec<ExtentBlock> {
        if b.len() < PAGE_SIZE as usize || get_u32(b, 0) != EXTB_MAGIC {
            return Err(Corrupt(format!("extent block at frame {pfn}: bad magic")));
        }
        let b = &b[..PAGE_SIZE as usize];
        if get_u32(b, 4) != crc_with_hole(b, 4) {
            return Err(Corrupt(format!("extent block at frame {pfn}: checksum mismatch")));
        }
        let n = get_u32(b, 16) as usize;
        if n > crate::limits::EXTENTS_PER_BLOCK {
            return Err(Corrupt(format!("extent block at frame {pfn}: {n} records")));
        }
        Ok(ExtentBlock {
            next: get_u64(b, 8),
            extents: (0..n).map(|i| ExtentRecord::get(b, EXTB_HEADER + i * EXTENT_SIZE)).collect(),
        })
    }
}

/// A directory entry slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dirent {
    /// The inode (0: empty slot).
    pub ino: u64,
    /// The name.
    pub name: String,
}

impl Dirent {
    /// Encodes into 256 bytes.
    pub fn encode(&self) -> [u8; DIRENT_SIZE as usize] {
        let mut b = [0u8; DIRENT_SIZE as usize];
        put_u64(&mut b, 0, self.ino);
        let n = self.name.len().min(crate::limits::NAME_MAX);
        put_u16(&mut b, 8, n as u16);
        b[16..16 + n].copy_from_slice(&self.name.as_bytes()[..n]);
        b
    }
    /// Decodes a slot; `None` for an empty one.
    pub fn decode(b: &[u8], dir: u64) -> Dec<Option<Dirent>> {
        let ino = get_u64(b, 0);
        if ino == 0 {
            return Ok(None);
        }
        let n = get_u16(b, 8) as usize;
        if n == 0 || n > crate::limits::NAME_MAX {
            return Err(Corrupt(format!(
                "directory {dir}: entry for inode {ino} has name length {n}"
            )));
        }
        let name = std::str::from_utf8(&b[16..16 + n])
            .map_err(|_| Corrupt(format!("directory {dir}: entry for inode {ino} is not UTF-8")))?;
        Ok(Some(Dirent { ino, name: name.to_string() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        let g = Geometry::for_frames(4096).unwrap();
        Superblock {
            geometry: g,
            pool_size: 4096 * PAGE_SIZE,
            root_ino: 1,
            mount_count: 3,
            clean: true,
            next_generation: 9,
        }
    }

    #[test]
    fn format_superblock_round_trips_and_detects_flips() {
        let s = sb();
        let b = s.encode();
        assert_eq!(Superblock::decode(&b, s.pool_size).unwrap(), s);
        for i in [0usize, 9, 20, 112, 4000] {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert!(Superblock::decode(&c, s.pool_size).is_err(), "flip at {i} undetected");
        }
        assert!(Superblock::decode(&b, s.pool_size * 2).is_err());
        assert!(Superblock::decode(&b[..10], s.pool_size).is_err());
    }

    #[test]
    fn format_inode_round_trips() {
        let r = InodeRecord {
            ino: 5,
            generation: 2,
            kind: InodeKind::File,
            flags: IFLAG_PAGE_CACHE,
            nlink: 1,
            size: 12345,
            mtime_ns: 77,
            n_extents: 9,
            extent_block: 1000,
            inline: (0..7).map(|i| ExtentRecord { page: i * 10, pfn: 500 + i, count: 3 }).collect(),
        };
        let b = r.encode();
        assert_eq!(InodeRecord::decode(&b, 5).unwrap(), r);
        assert!(InodeRecord::decode(&b, 6).is_err(), "wrong slot");
        let mut c = b;
        c[40] ^= 1;
        assert!(InodeRecord::decode(&c, 5).is_err());
        assert_eq!(InodeRecord::decode(&[0u8; 256], 3).unwrap().kind, InodeKind::Free);
    }

    #[test]
    fn format_extent_block_and_dirent_round_trip() {
        let e = ExtentBlock {
            next: 42,
            extents: vec![ExtentRecord { page: 1, pfn: 2, count: 3 }; 169],
        };
        let b = e.encode();
        assert_eq!(ExtentBlock::decode(&b, 7).unwrap(), e);
        let mut c = b.clone();
        c[100] ^= 1;
        assert!(ExtentBlock::decode(&c, 7).is_err());
        let d = Dirent { ino: 4, name: "victim.dat".into() };
        assert_eq!(Dirent::decode(&d.encode(), 1).unwrap(), Some(d));
        assert_eq!(Dirent::decode(&[0u8; 256], 1).unwrap(), None);
        let mut bad = [0u8; 256];
        bad[0] = 1;
        bad[8] = 0xff;
        assert!(Dirent::decode(&bad, 1).is_err());
    }

    #[test]
    fn format_geometry_scales() {
        let small = Geometry::for_frames(4096).unwrap();
        assert_eq!(small.inodes, INODES_MIN);
        let big = Geometry::for_frames(16 << 20).unwrap();
        assert_eq!(big.inodes, INODES_MAX);
        assert!(Geometry::for_frames(10).is_none());
    }
}
