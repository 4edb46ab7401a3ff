//! Typed addresses and numbers. No bare `u64` crosses a crate boundary for an address or an
//! id; arithmetic goes through checked methods that return `None` on overflow.

use std::fmt;

/// Size of a frame (and of a virtual page): 4 KiB.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// Frames in a huge frame: 512 aligned frames make 2 MiB.
pub const FRAMES_PER_HUGE: u64 = 512;
/// Buddy order of a huge frame.
pub const HUGE_ORDER: u32 = 9;
/// Size of a huge frame: 2 MiB.
pub const HUGE_PAGE_SIZE: u64 = PAGE_SIZE * FRAMES_PER_HUGE;

/// True if `v` is a multiple of [`PAGE_SIZE`].
pub const fn is_page_aligned(v: u64) -> bool {
    v & (PAGE_SIZE - 1) == 0
}

/// Rounds `v` up to a multiple of [`PAGE_SIZE`]; `None` on overflow.
pub const fn page_align_up(v: u64) -> Option<u64> {
    match v.checked_add(PAGE_SIZE - 1) {
        Some(x) => Some(x & !(PAGE_SIZE - 1)),
        None => None,
    }
}

macro_rules! newtype_u64 {
    ($(#[$m:meta])* $name:ident, $fmt:literal) => {
        $(#[$m])*
        #[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[derive(serde::Serialize, serde::Deserialize)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a raw value.
            pub const fn new(v: u64) -> Self {
                Self(v)
            }
            /// The raw value.
            pub const fn raw(self) -> u64 {
                self.0
            }
            /// `self + n`, or `None` on overflow.
            pub const fn checked_add(self, n: u64) -> Option<Self> {
                match self.0.checked_add(n) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
            /// `self - n`, or `None` on underflow.
            pub const fn checked_sub(self, n: u64) -> Option<Self> {
                match self.0.checked_sub(n) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, $fmt, self.0)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, $fmt, self.0)
            }
        }
    };
}

newtype_u64!(
    /// A frame number: the index of a 4 KiB frame in the pool (frame `n` starts at pool
    /// offset `n * 4096`).
    Pfn,
    "pfn:{:#x}"
);
newtype_u64!(
    /// A byte offset in the pool.
    PoolOffset,
    "pool+{:#x}"
);
newtype_u64!(
    /// A virtual address in an [`crate::AddressSpace`].
    VirtAddr,
    "{:#x}"
);
newtype_u64!(
    /// A byte offset in a file.
    FileOffset,
    "file+{:#x}"
);
newtype_u64!(
    /// Identifies a file to the memory core (the reverse map is keyed by it). The filesystem
    /// chooses the value; mm only compares them.
    FileId,
    "file#{}"
);
newtype_u64!(
    /// Identifies an address space within a [`crate::Memory`].
    AspaceId,
    "as#{}"
);

impl Pfn {
    /// The pool offset of the first byte of this frame.
    pub const fn offset(self) -> PoolOffset {
        PoolOffset(self.0 << PAGE_SHIFT)
    }
    /// The head of the huge frame containing this frame.
    pub const fn huge_head(self) -> Pfn {
        Pfn(self.0 & !(FRAMES_PER_HUGE - 1))
    }
    /// True if this frame starts a huge frame.
    pub const fn is_huge_aligned(self) -> bool {
        self.0 & (FRAMES_PER_HUGE - 1) == 0
    }
}

impl PoolOffset {
    /// The frame containing this byte.
    pub const fn pfn(self) -> Pfn {
        Pfn(self.0 >> PAGE_SHIFT)
    }
    /// Offset within the frame.
    pub const fn page_offset(self) -> u64 {
        self.0 & (PAGE_SIZE - 1)
    }
}

impl VirtAddr {
    /// Virtual page number.
    pub const fn vpn(self) -> u64 {
        self.0 >> PAGE_SHIFT
    }
    /// The address of virtual page `vpn`.
    pub const fn from_vpn(vpn: u64) -> VirtAddr {
        VirtAddr(vpn << PAGE_SHIFT)
    }
    /// Offset within the page.
    pub const fn page_offset(self) -> u64 {
        self.0 & (PAGE_SIZE - 1)
    }
    /// True if page aligned.
    pub const fn is_page_aligned(self) -> bool {
        is_page_aligned(self.0)
    }
    /// Rounded down to a page boundary.
    pub const fn page_down(self) -> VirtAddr {
        VirtAddr(self.0 & !(PAGE_SIZE - 1))
    }
}

/// A run of physically contiguous frames: `[pfn, pfn + count)`.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct FrameRun {
    /// First frame.
    pub pfn: Pfn,
    /// Number of frames (never 0).
    pub count: u64,
}

impl FrameRun {
    /// A run of `count` frames from `pfn`.
    pub const fn new(pfn: Pfn, count: u64) -> FrameRun {
        FrameRun { pfn, count }
    }
    /// One past the last frame.
    pub const fn end(&self) -> Pfn {
        Pfn(self.pfn.0 + self.count)
    }
    /// Size in bytes.
    pub const fn bytes(&self) -> u64 {
        self.count * PAGE_SIZE
    }
    /// Iterates over the frames.
    pub fn iter(&self) -> impl Iterator<Item = Pfn> + use<> {
        (self.pfn.0..self.pfn.0 + self.count).map(Pfn)
    }
}

impl fmt::Debug for FrameRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}+{}]", self.pfn.0, self.count)
    }
}

/// A half-open virtual range `[start, end)` whose construction checked for overflow.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct VirtRange {
    start: VirtAddr,
    end: VirtAddr,
}

impl VirtRange {
    /// `[start, start + len)`; `None` if it overflows.
    pub const fn new(start: VirtAddr, len: u64) -> Option<VirtRange> {
        match start.0.checked_add(len) {
            Some(end) => Some(VirtRange { start, end: VirtAddr(end) }),
            None => None,
        }
    }
    /// `[start, end)`; `None` if `end < start`.
    pub const fn from_bounds(start: VirtAddr, end: VirtAddr) -> Option<VirtRange> {
        if end.0 < start.0 { None } else { Some(VirtRange { start, end }) }
    }
    /// First byte.
    pub const fn start(&self) -> VirtAddr {
        self.start
    }
    /// One past the last byte.
    pub const fn end(&self) -> VirtAddr {
        self.end
    }
    /// Length in bytes.
    pub const fn len(&self) -> u64 {
        self.end.0 - self.start.0
    }
    /// True if empty.
    pub const fn is_empty(&self) -> bool {
        self.end.0 == self.start.0
    }
    /// True if the two ranges share a byte.
    pub const fn overlaps(&self, other: &VirtRange) -> bool {
        self.start.0 < other.end.0 && other.start.0 < self.end.0
    }
    /// The common part, if any.
    pub fn intersect(&self, other: &VirtRange) -> Option<VirtRange> {
        let s = self.start.0.max(other.start.0);
        let e = self.end.0.min(other.end.0);
        if s < e { Some(VirtRange { start: VirtAddr(s), end: VirtAddr(e) }) } else { None }
    }
    /// True if `addr` lies inside.
    pub const fn contains(&self, addr: VirtAddr) -> bool {
        self.start.0 <= addr.0 && addr.0 < self.end.0
    }
}

impl fmt::Debug for VirtRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.start.0, self.end.0)
    }
}
impl fmt::Display for VirtRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_checked_arithmetic_refuses_overflow() {
        assert_eq!(VirtAddr::new(u64::MAX).checked_add(1), None);
        assert_eq!(VirtAddr::new(1).checked_sub(2), None);
        assert!(VirtRange::new(VirtAddr::new(u64::MAX - 1), 2).is_none());
        assert!(VirtRange::from_bounds(VirtAddr::new(2), VirtAddr::new(1)).is_none());
        assert_eq!(page_align_up(u64::MAX), None);
        assert_eq!(page_align_up(1), Some(PAGE_SIZE));
    }

    #[test]
    fn types_pfn_offsets_round_trip() {
        let p = Pfn::new(0x1234);
        assert_eq!(p.offset().pfn(), p);
        assert_eq!(Pfn::new(513).huge_head(), Pfn::new(512));
        assert!(Pfn::new(1024).is_huge_aligned());
    }

    #[test]
    fn types_ranges_intersect() {
        let a = VirtRange::new(VirtAddr::new(0x1000), 0x3000).unwrap();
        let b = VirtRange::new(VirtAddr::new(0x3000), 0x3000).unwrap();
        assert!(a.overlaps(&b));
        assert_eq!(a.intersect(&b), VirtRange::new(VirtAddr::new(0x3000), 0x1000));
        let c = VirtRange::new(VirtAddr::new(0x4000), 0x1000).unwrap();
        assert!(!a.overlaps(&c));
        assert_eq!(a.intersect(&c), None);
    }
}
