//! Filesystem benchmark (issue 7), side by side with memcpy in the same run:
//! `cargo bench -p pinwheel-fs --bench fs` (`-- --quick` for a smoke run).
//! - reflink clone of a 1 GiB file vs memcpy of 1 GiB (clone shares extents: it must be
//!   orders of magnitude cheaper);
//! - truncate of a 1 GiB file to 0;
//! - write bandwidth through a DAX mapping vs memcpy of the same bytes.
//!
//! First, a criterion micro-benchmark of the extent lookup: `extent/{1,4096}_extents`, the
//! translation of a random page of a 16 MiB file through `FileBacking::fault` (the path of a
//! DAX fault and of a file MR's translation) when the file is one extent and when it is 4096.
//! A filter argument (`-- extent/`) runs only the micro-benchmark.

use std::time::{Duration, Instant};

use criterion::{Criterion, black_box};

use pinwheel_fs::{
    Caller, CreateOptions, FallocMode, Filesystem, MkfsOptions, MountOptions, PinPolicy,
};
use pinwheel_mm::{AddressSpace, FileOffset, Memory, MmapRequest, Pool, RealClock};

const GIB: u64 = 1 << 30;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Criterion micro-benchmark (see the header).
fn micro(c: &mut Criterion) {
    let mem = Memory::new(Pool::memfd("micro", 256 << 20).expect("pool"), RealClock::new());
    let fs = Filesystem::mkfs(&mem, MkfsOptions::default(), MountOptions::default()).expect("mkfs");
    let admin = Caller::admin();
    let pages = 4096u64;
    // One extent: one write. 4096 extents: two files written page by page in turn, so no two
    // pages of one file are adjacent in the pool.
    let one = fs.create("/one", CreateOptions::default()).expect("create");
    fs.write(one, 0, &vec![1; (pages * 4096) as usize], &admin).expect("write");
    let frag = fs.create("/frag", CreateOptions::default()).expect("create");
    let other = fs.create("/other", CreateOptions::default()).expect("create");
    for p in 0..pages {
        fs.write(frag, p * 4096, &[2; 4096], &admin).expect("write");
        fs.write(other, p * 4096, &[3; 4096], &admin).expect("write");
    }
    let mut g = c.benchmark_group("extent");
    for (name, ino) in [("1_extents", one), ("4096_extents", frag)] {
        let backing = fs.backing(ino).expect("backing");
        let mut page = 0u64;
        g.bench_function(name, |x| {
            x.iter(|| {
                page = (page + 2654435761) % pages;
                let mut got = None;
                backing
                    .fault(page, false, &mut |pfn| {
                        got = Some(pfn);
                        Ok(())
                    })
                    .expect("fault");
                black_box(got)
            })
        });
    }
    g.finish();
    println!("extents of /frag: {}", fs.extents(frag).expect("extents").len());
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    micro(&mut c);
    c.final_summary();
    if std::env::args().skip(1).any(|a| !a.starts_with('-')) {
        return; // a filter: the micro-benchmark only
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 1 } else { 5 };
    let size = if quick { 64 << 20 } else { GIB };
    let label = if quick { "64 MiB" } else { "1 GiB" };
    let mem = Memory::new(Pool::memfd("bench", 4 * GIB).expect("pool"), RealClock::new());
    let fs = Filesystem::mkfs(
        &mem,
        MkfsOptions::default(),
        MountOptions { policy: PinPolicy::Deny, ..MountOptions::default() },
    )
    .expect("mkfs");
    let admin = Caller::admin();

    // memcpy baseline (both buffers touched first).
    let src = vec![7u8; size as usize];
    let mut dst = vec![1u8; size as usize];
    let mut copies = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        copies.push(t.elapsed());
    }
    std::hint::black_box(&dst);
    let memcpy = median(copies);

    let mut clones = Vec::new();
    let mut truncs = Vec::new();
    for i in 0..reps {
        let ino = fs.create(&format!("/big{i}"), CreateOptions::default()).expect("create");
        fs.fallocate(ino, 0, size, FallocMode::Allocate { keep_size: false }, &admin)
            .expect("fallocate");
        let t = Instant::now();
        let c = fs.clone_file(&format!("/big{i}"), &format!("/clone{i}"), &admin).expect("clone");
        clones.push(t.elapsed());
        assert_eq!(fs.stat_ino(c).expect("stat").shared_blocks, size / 4096);
        fs.unlink(&format!("/clone{i}"), &admin).expect("rm");
        let t = Instant::now();
        fs.truncate(ino, 0, &admin).expect("truncate");
        truncs.push(t.elapsed());
        fs.unlink(&format!("/big{i}"), &admin).expect("rm");
    }
    let (clone, trunc) = (median(clones), median(truncs));

    // Write through a DAX mapping, 1 MiB at a time, into a populated file.
    let ino = fs.create("/mapped", CreateOptions::default()).expect("create");
    fs.fallocate(ino, 0, size, FallocMode::Allocate { keep_size: false }, &admin)
        .expect("fallocate");
    let a = AddressSpace::new(&mem);
    let p = a
        .mmap(MmapRequest::file(fs.backing(ino).expect("backing"), FileOffset::new(0), size))
        .expect("mmap");
    let chunk = vec![3u8; 1 << 20];
    let mut writes = Vec::new();
    for r in 0..=reps {
        let t = Instant::now();
        for off in (0..size).step_by(chunk.len()) {
            a.write(p.checked_add(off).expect("in range"), &chunk).expect("write");
        }
        if r > 0 {
            writes.push(t.elapsed()); // the first pass also faults the mapping in
        }
    }
    let dax = median(writes);

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let gbs = |d: Duration| size as f64 / d.as_secs_f64() / 1e9;
    println!("pinwheel-fs benchmark ({label}, median of {reps})");
    println!("{:<40} {:>9.2} ms  {:>6.2} GB/s", "memcpy (baseline)", ms(memcpy), gbs(memcpy));
    println!(
        "{:<40} {:>9.3} ms  {:>9.5}x memcpy",
        "reflink clone",
        ms(clone),
        clone.as_secs_f64() / memcpy.as_secs_f64()
    );
    println!("{:<40} {:>9.2} ms", "truncate to 0", ms(trunc));
    println!(
        "{:<40} {:>9.2} ms  {:>6.2} GB/s = {:.2}x memcpy bandwidth",
        "write through a DAX mapping (1 MiB ops)",
        ms(dax),
        gbs(dax),
        memcpy.as_secs_f64() / dax.as_secs_f64()
    );
}
