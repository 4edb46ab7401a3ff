//! Random sequences of mmap / munmap / mremap / fault / write / read / madvise / pin / unpin
//! against a simple model: reads return what was last written, pins are conserved, no free
//! frame is mapped or pinned, and everything is freed at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::memory;
use pinwheel_mm::*;
use proptest::prelude::*;

const WINDOW: u64 = 48;
const BASE: u64 = 0x2000_0000;

#[derive(Clone, Debug)]
enum Op {
    Map { at: u64, n: u64 },
    Unmap { at: u64, n: u64 },
    Move { at: u64, n: u64, to: u64 },
    Write { at: u64, byte: u8 },
    Read { at: u64 },
    DontNeed { at: u64, n: u64 },
    Pin { at: u64, n: u64, write: bool },
    Unpin { idx: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let at = 0..WINDOW;
    let n = 1u64..6;
    prop_oneof![
        (at.clone(), n.clone()).prop_map(|(at, n)| Op::Map { at, n }),
        (at.clone(), n.clone()).prop_map(|(at, n)| Op::Unmap { at, n }),
        (at.clone(), n.clone(), at.clone()).prop_map(|(at, n, to)| Op::Move { at, n, to }),
        (at.clone(), any::<u8>()).prop_map(|(at, byte)| Op::Write { at, byte }),
        at.clone().prop_map(|at| Op::Read { at }),
        (at.clone(), n.clone()).prop_map(|(at, n)| Op::DontNeed { at, n }),
        (at.clone(), n, any::<bool>()).prop_map(|(at, n, write)| Op::Pin { at, n, write }),
        (0usize..8).prop_map(|idx| Op::Unpin { idx }),
    ]
}

fn va(page: u64) -> VirtAddr {
    VirtAddr::new((BASE + page) * PAGE_SIZE)
}

/// The model: page → (mapping id, content byte). Adjacent pages with one id form one mapping.
#[derive(Default)]
struct Model {
    pages: BTreeMap<u64, (u64, u8)>,
    next_id: u64,
}

impl Model {
    fn all_mapped(&self, at: u64, n: u64) -> bool {
        (at..at + n).all(|p| self.pages.contains_key(&p))
    }
    fn one_mapping(&self, at: u64, n: u64) -> bool {
        let id = self.pages.get(&at).map(|x| x.0);
        id.is_some() && (at..at + n).all(|p| self.pages.get(&p).map(|x| x.0) == id)
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mem = memory(16);
    let free0 = mem.free_bytes();
    let a = AddressSpace::new(&mem);
    let mut m = Model::default();
    let mut pins: Vec<(Pin, u64)> = Vec::new();
    for op in ops {
        match op {
            Op::Map { at, n } => {
                let n = n.min(WINDOW - at);
                let req = MmapRequest::anonymous(n * PAGE_SIZE).flags(MapFlags::FIXED).at(va(at));
                a.mmap(req).map_err(|e| TestCaseError::fail(e.to_string()))?;
                m.next_id += 1;
                for p in at..at + n {
                    m.pages.insert(p, (m.next_id, 0));
                }
            }
            Op::Unmap { at, n } => {
                a.munmap(va(at), n * PAGE_SIZE).map_err(|e| TestCaseError::fail(e.to_string()))?;
                for p in at..at + n {
                    m.pages.remove(&p);
                }
            }
            Op::Move { at, n, to } => {
                let n = n.min(WINDOW - at).min(WINDOW - to);
                let r = a.mremap(
                    va(at),
                    n * PAGE_SIZE,
                    n * PAGE_SIZE,
                    RemapFlags::MAYMOVE | RemapFlags::FIXED,
                    Some(va(to)),
                );
                let overlap = to < at + n && at < to + n;
                if !m.one_mapping(at, n) {
                    prop_assert!(r.is_err(), "mremap over a hole or two mappings succeeded");
                } else if overlap {
                    prop_assert_eq!(r.unwrap_err().errno(), Errno::EINVAL);
                } else {
                    prop_assert_eq!(r.map_err(|e| TestCaseError::fail(e.to_string()))?, va(to));
                    let moved: Vec<u8> = (at..at + n).map(|p| m.pages[&p].1).collect();
                    for p in (at..at + n).chain(to..to + n) {
                        m.pages.remove(&p);
                    }
                    m.next_id += 1;
                    for (i, b) in moved.into_iter().enumerate() {
                        m.pages.insert(to + i as u64, (m.next_id, b));
                    }
                }
            }
            Op::Write { at, byte } => {
                let r = a.write(VirtAddr::new(va(at).raw() + 123), &[byte; 7]);
                match m.pages.get_mut(&at) {
                    Some(x) => {
                        prop_assert!(r.is_ok(), "{:?}", r);
                        x.1 = byte;
                    }
                    None => prop_assert_eq!(r.unwrap_err().errno(), Errno::EFAULT),
                }
            }
            Op::Read { at } => {
                let mut b = [0u8; 7];
                let r = a.read(VirtAddr::new(va(at).raw() + 123), &mut b);
                match m.pages.get(&at) {
                    Some(x) => {
                        prop_assert!(r.is_ok());
                        prop_assert_eq!(
                            b,
                            [x.1; 7],
                            "read returned something else than last written"
                        );
                    }
                    None => prop_assert_eq!(r.unwrap_err().errno(), Errno::EFAULT),
                }
            }
            Op::DontNeed { at, n } => {
                let r = a.madvise_dontneed(va(at), n * PAGE_SIZE);
                if m.all_mapped(at, n) {
                    prop_assert!(r.is_ok());
                    for p in at..at + n {
                        m.pages.get_mut(&p).expect("mapped").1 = 0;
                    }
                } else {
                    prop_assert_eq!(r.unwrap_err().errno(), Errno::ENOMEM);
                }
            }
            Op::Pin { at, n, write } => {
                let flags =
                    if write { PinFlags::WRITE | PinFlags::LONGTERM } else { PinFlags::LONGTERM };
                let r = pin_user_pages(&a, va(at), n * PAGE_SIZE, flags, None);
                if m.all_mapped(at, n) {
                    let pin = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
                    // The pin translates to what the CPU sees right now.
                    let mut b = [0u8; 7];
                    mem.pool()
                        .read(pin.translate(123).expect("inside"), &mut b)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(b, [m.pages[&at].1; 7]);
                    pins.push((pin, n));
                } else {
                    prop_assert_eq!(r.unwrap_err().errno(), Errno::EFAULT);
                }
            }
            Op::Unpin { idx } => {
                if !pins.is_empty() {
                    let (pin, _) = pins.remove(idx % pins.len());
                    drop(pin);
                }
            }
        }
        // Pin conservation and frame-state invariants after every step.
        let s = mem.stats();
        let live: u64 = pins.iter().map(|(_, n)| n).sum();
        prop_assert_eq!(s.pins_acquired - s.pins_released, live);
        prop_assert_eq!(a.pinned_bytes(), live * PAGE_SIZE);
        let bad = mem.check_invariants();
        prop_assert!(bad.is_empty(), "{:?}", bad);
        let bad = a.check_invariants();
        prop_assert!(bad.is_empty(), "{:?}", bad);
    }
    pins.clear();
    a.munmap(va(0), WINDOW * PAGE_SIZE).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(mem.free_bytes(), free0, "frames leaked");
    prop_assert!(mem.check_invariants().is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn model_random_sequences(ops in prop::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
