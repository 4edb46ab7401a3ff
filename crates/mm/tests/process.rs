//! The pool's fd handed to another OS process maps the same bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pinwheel_mm::{Pool, PoolOffset};

const ENV: &str = "PINWHEEL_TEST_CHILD_POOL_FD";

fn child(fd: &str) {
    // The inherited descriptor, reopened through /proc: the same memfd.
    let pool =
        Pool::open_file(Path::new(&format!("/proc/self/fd/{fd}"))).expect("child maps the pool");
    let mut b = [0u8; 11];
    pool.read(PoolOffset::new(8 << 20), &mut b).expect("read");
    assert_eq!(&b, b"from parent");
    pool.write(PoolOffset::new(12 << 20), b"from child").expect("write");
}

#[test]
fn process_child_maps_same_bytes() {
    if let Ok(fd) = std::env::var(ENV) {
        child(&fd);
        return;
    }
    let pool = Pool::memfd("shared", 16 << 20).unwrap();
    pool.write(PoolOffset::new(8 << 20), b"from parent").unwrap();
    // dup() clears FD_CLOEXEC: the child inherits this copy.
    let inherit = rustix::io::dup(pool.fd()).unwrap();
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "process_child_maps_same_bytes", "--test-threads=1"])
        .env(ENV, inherit.as_raw_fd().to_string())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            panic!("child did not finish in 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "child failed: {status}");
    let mut b = [0u8; 10];
    pool.read(PoolOffset::new(12 << 20), &mut b).unwrap();
    assert_eq!(&b, b"from child");
}
