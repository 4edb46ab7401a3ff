#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Black-box tests of `pinwheel mkfs` and `pinwheel fs`: every test runs the real binary on a
//! pool file in a temporary directory and checks its output, its exit status and the image
//! (fsck) afterwards.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use assert_cmd::assert::Assert;
use predicates::prelude::*;
use serde_json::Value;
use tempfile::TempDir;

/// A freshly formatted 32 MiB pool file.
struct Image {
    dir: TempDir,
    pool: PathBuf,
}

fn pinwheel() -> Command {
    Command::cargo_bin("pinwheel").expect("the pinwheel binary is built for the tests")
}

impl Image {
    fn new() -> Image {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("test.pool");
        pinwheel()
            .arg("mkfs")
            .arg(&pool)
            .args(["--size", "32M"])
            .assert()
            .success()
            .stdout(predicate::str::contains("pinwheel filesystem on"));
        Image { dir, pool }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn fs(&self, args: &[&str]) -> Assert {
        pinwheel().arg("fs").arg("--pool").arg(&self.pool).args(args).assert()
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> Vec<u8> {
        self.fs(args).success().get_output().stdout.clone()
    }

    /// Runs a `--json` command that must succeed; returns the parsed document.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_slice(&out).unwrap_or_else(|e| {
            panic!("{args:?}: not JSON ({e}): {}", String::from_utf8_lossy(&out))
        })
    }

    fn stat(&self, path: &str) -> Value {
        self.json(&["stat", path, "--json"])
    }

    fn num(&self, path: &str, field: &str) -> u64 {
        self.stat(path)[field].as_u64().unwrap_or_else(|| panic!("stat {path}: no {field}"))
    }

    /// fsck must find the image clean (and cleanly unmounted).
    fn assert_clean(&self) {
        let r = self.json(&["fsck", "--json"]);
        assert_eq!(r["clean"], Value::Bool(true), "{r:#}");
        assert_eq!(r["errors"].as_array().map(Vec::len), Some(0), "{r:#}");
        assert_eq!(r["warnings"].as_array().map(Vec::len), Some(0), "{r:#}");
    }

    /// Overwrites bytes of the pool file.
    fn damage(&self, at: usize, bytes: &[u8]) {
        let mut img = std::fs::read(&self.pool).unwrap();
        img[at..at + bytes.len()].copy_from_slice(bytes);
        std::fs::write(&self.pool, img).unwrap();
    }
}

/// Deterministic, non-repeating test data.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn write_local(path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

fn no_panic() -> impl Predicate<str> {
    predicate::str::contains("panicked").not()
}

#[test]
fn mkfs_makes_a_clean_image() {
    let img = Image::new();
    let meta = std::fs::metadata(&img.pool).unwrap();
    assert_eq!(meta.len(), 32 << 20);
    // The superblock sits at the start of the pool.
    let head = std::fs::read(&img.pool).unwrap();
    assert_eq!(&head[..8], b"PINWHEEL");
    img.fs(&["fsck"]).success().stdout(predicate::str::contains("clean"));
    img.assert_clean();
    let r = img.json(&["fsck", "--json"]);
    assert_eq!(r["dirs"], 1, "just the root: {r:#}");
    assert_eq!(r["files"], 0);
}

#[test]
fn mkfs_refuses_to_overwrite_without_force() {
    let img = Image::new();
    img.ok(&["mkdir", "/keep"]);
    pinwheel()
        .arg("mkfs")
        .arg(&img.pool)
        .args(["--size", "32M"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("(EEXIST)").and(predicate::str::contains("--force")));
    img.ok(&["stat", "/keep"]);
    pinwheel().arg("mkfs").arg(&img.pool).args(["--size", "16M", "--force"]).assert().success();
    img.fs(&["stat", "/keep"]).failure().stderr(predicate::str::contains("(ENOENT)"));
    assert_eq!(std::fs::metadata(&img.pool).unwrap().len(), 16 << 20);
}

#[test]
fn write_pattern_and_read_back() {
    let img = Image::new();
    img.ok(&["mkdir", "/d"]);
    let out = img.ok(&["write", "/d/p", "--pattern", "0xab", "--length", "100K", "--offset", "4K"]);
    assert!(String::from_utf8_lossy(&out).contains("wrote 102400 bytes"));
    let mut want = vec![0u8; 4096];
    want.extend(std::iter::repeat_n(0xab, 100 << 10));
    assert_eq!(img.ok(&["read", "/d/p"]), want);
    // A sub-range, and a range running past the end of the file.
    assert_eq!(img.ok(&["read", "/d/p", "--offset", "4000", "--length", "200"]), want[4000..4200]);
    assert_eq!(img.ok(&["read", "/d/p", "--offset", "100K", "--length", "1M"]), want[100 << 10..]);
    assert_eq!(img.num("/d/p", "size"), 104 << 10);
    img.assert_clean();
}

#[test]
fn write_from_file_and_read_to_file() {
    let img = Image::new();
    let bytes = data(300_001, 1);
    let src = write_local(&img.path("src.bin"), &bytes);
    img.ok(&["write", "/f", "--from", &src]);
    let dst = img.path("dst.bin");
    img.ok(&["read", "/f", "--to", dst.to_str().unwrap()]);
    assert_eq!(std::fs::read(&dst).unwrap(), bytes);
    assert_eq!(img.ok(&["read", "/f"]), bytes, "stdout");
    // Overwrite in the middle, from stdin.
    let patch = data(5000, 2);
    pinwheel()
        .arg("fs")
        .arg("--pool")
        .arg(&img.pool)
        .args(["write", "/f", "--from", "-", "--offset", "8191"])
        .write_stdin(patch.clone())
        .assert()
        .success();
    let mut want = bytes;
    want[8191..8191 + 5000].copy_from_slice(&patch);
    assert_eq!(img.ok(&["read", "/f"]), want);
    img.assert_clean();
}

#[test]
fn ls_json_lists_entries() {
    let img = Image::new();
    img.ok(&["mkdir", "/dir"]);
    img.ok(&["write", "/a", "--pattern", "1", "--length", "10K"]);
    img.ok(&["write", "/dir/b", "--pattern", "2", "--length", "1"]);
    let root = img.json(&["ls", "--json"]);
    assert_eq!(root["path"], "/");
    let entries = root["entries"].as_array().unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "dir"]);
    assert_eq!(entries[0]["kind"], "file");
    assert_eq!(entries[0]["size"], 10240);
    assert_eq!(entries[0]["blocks"], 3);
    assert_eq!(entries[1]["kind"], "dir");
    let sub = img.json(&["ls", "/dir", "--json"]);
    assert_eq!(sub["entries"][0]["name"], "b");
    // The human table names every entry, directories with a slash.
    let table = String::from_utf8(img.ok(&["ls"])).unwrap();
    assert!(table.starts_with("INO"), "{table}");
    assert!(table.contains(" a\n") && table.contains(" dir/\n"), "{table}");
}

#[test]
fn stat_json_has_the_contract_fields() {
    let img = Image::new();
    img.ok(&["write", "/s", "--pattern", "7", "--length", "9000"]);
    let st = img.stat("/s");
    assert_eq!(st["size"], 9000);
    assert_eq!(st["blocks"], 3);
    assert_eq!(st["shared_blocks"], 0);
    assert_eq!(st["sealed"], false);
    assert_eq!(st["page_cache"], false);
    assert_eq!(st["kind"], "file");
    assert_eq!(st["nlink"], 1);
    assert!(st["leases"].as_array().unwrap().is_empty());
    assert!(st["pins"].as_array().unwrap().is_empty());
    let human = String::from_utf8(img.ok(&["stat", "/s"])).unwrap();
    for key in ["size", "blocks", "shared_blocks", "extents", "sealed", "page_cache", "nlink"] {
        assert!(human.lines().any(|l| l.starts_with(key)), "{key} missing:\n{human}");
    }
    let with_map = img.json(&["stat", "/s", "--json", "--extents"]);
    let map = with_map["extent_map"].as_array().unwrap();
    let pages: u64 = map.iter().map(|e| e["count"].as_u64().unwrap()).sum();
    assert_eq!(pages, 3);
}

#[test]
fn page_cache_file_round_trips() {
    let img = Image::new();
    let bytes = data(20_000, 3);
    let src = write_local(&img.path("pc.bin"), &bytes);
    img.ok(&["write", "/pc", "--from", &src, "--page-cache"]);
    assert_eq!(img.stat("/pc")["page_cache"], true);
    assert_eq!(img.ok(&["read", "/pc"]), bytes, "written back at unmount, read after remount");
    // --page-cache on an existing DAX file is refused rather than ignored.
    img.ok(&["write", "/dax", "--pattern", "1", "--length", "1"]);
    img.fs(&["write", "/dax", "--pattern", "1", "--length", "1", "--page-cache"])
        .failure()
        .stderr(predicate::str::contains("(EINVAL)"));
    img.assert_clean();
}

#[test]
fn clone_shares_blocks_until_written() {
    let img = Image::new();
    let bytes = data(64 << 10, 4);
    let src = write_local(&img.path("c.bin"), &bytes);
    img.ok(&["write", "/src", "--from", &src]);
    img.ok(&["clone", "/src", "/dst"]);
    assert_eq!(img.num("/src", "shared_blocks"), 16);
    assert_eq!(img.num("/dst", "shared_blocks"), 16);
    assert_eq!(img.ok(&["read", "/dst"]), bytes);
    let r = img.json(&["fsck", "--json"]);
    assert_eq!(r["blocks_shared"], 16, "{r:#}");
    // Writing one page of the copy breaks the sharing of that page only; the source keeps its
    // bytes.
    img.ok(&["write", "/dst", "--pattern", "0", "--length", "4K"]);
    assert_eq!(img.num("/dst", "shared_blocks"), 15);
    assert_eq!(img.ok(&["read", "/src"]), bytes);
    assert_eq!(img.ok(&["read", "/dst", "--length", "4K"]), vec![0u8; 4096]);
    img.fs(&["clone", "/src", "/dst"]).failure().stderr(predicate::str::contains("(EEXIST)"));
    img.assert_clean();
}

#[test]
fn truncate_punch_fallocate_change_blocks() {
    let img = Image::new();
    img.ok(&["write", "/t", "--pattern", "0xff", "--length", "64K"]);
    assert_eq!(img.num("/t", "blocks"), 16);

    img.ok(&["punch", "/t", "--offset", "8K", "--length", "16K"]);
    assert_eq!(img.num("/t", "blocks"), 12);
    assert_eq!(img.num("/t", "size"), 64 << 10, "punch keeps the size");
    let back = img.ok(&["read", "/t"]);
    assert!(back[8192..24576].iter().all(|b| *b == 0));
    assert!(back[..8192].iter().chain(&back[24576..]).all(|b| *b == 0xff));

    // Fill the hole again without changing the size.
    img.ok(&["fallocate", "/t", "--offset", "8K", "--length", "16K", "--keep-size"]);
    assert_eq!(img.num("/t", "blocks"), 16);
    assert_eq!(img.num("/t", "size"), 64 << 10);
    // Grow with allocated blocks.
    img.ok(&["fallocate", "/t", "--offset", "64K", "--length", "64K"]);
    assert_eq!(img.num("/t", "size"), 128 << 10);
    assert_eq!(img.num("/t", "blocks"), 32);
    // fallocate --punch is punch.
    img.ok(&["fallocate", "/t", "--offset", "64K", "--length", "64K", "--punch"]);
    assert_eq!(img.num("/t", "blocks"), 16);

    img.ok(&["truncate", "/t", "--size", "5000"]);
    assert_eq!(img.num("/t", "size"), 5000);
    assert_eq!(img.num("/t", "blocks"), 2);
    img.ok(&["truncate", "/t", "--size", "1M"]);
    assert_eq!(img.num("/t", "size"), 1 << 20);
    assert_eq!(img.num("/t", "blocks"), 2, "growing leaves a hole");
    img.assert_clean();
}

#[test]
fn defrag_merges_extents_and_keeps_content() {
    let img = Image::new();
    // Interleave two files' allocations so each ends up in several extents.
    for i in 0..4u32 {
        let off = format!("{}K", i * 4);
        let (a, b) = (format!("{}", 0x10 + i), format!("{}", 0x20 + i));
        img.ok(&["write", "/frag", "--pattern", &a, "--length", "4K", "--offset", &off]);
        img.ok(&["write", "/other", "--pattern", &b, "--length", "4K", "--offset", &off]);
    }
    let before = img.ok(&["read", "/frag"]);
    assert!(img.num("/frag", "extents") > 1, "{:#}", img.stat("/frag"));
    let out = String::from_utf8(img.ok(&["defrag", "/frag"])).unwrap();
    assert!(out.contains("-> 1,"), "{out}");
    assert_eq!(img.num("/frag", "extents"), 1);
    assert_eq!(img.ok(&["read", "/frag"]), before);
    img.ok(&["defrag", "/other", "--huge"]);
    img.assert_clean();
}

#[test]
fn mv_and_rm() {
    let img = Image::new();
    img.ok(&["mkdir", "/a"]);
    img.ok(&["mkdir", "/b"]);
    img.ok(&["write", "/a/f", "--pattern", "5", "--length", "3"]);
    img.ok(&["mv", "/a/f", "/b/g"]);
    img.fs(&["stat", "/a/f"]).failure();
    assert_eq!(img.ok(&["read", "/b/g"]), vec![5u8; 3]);

    img.fs(&["rm", "/b"]).failure().stderr(predicate::str::contains("(EISDIR)"));
    img.fs(&["rm", "--dir", "/b"]).failure().stderr(predicate::str::contains("(ENOTEMPTY)"));
    img.ok(&["rm", "/b/g"]);
    img.fs(&["stat", "/b/g"]).failure().stderr(predicate::str::contains("(ENOENT)"));
    img.ok(&["rm", "--dir", "/b"]);
    let names: Vec<String> = img.json(&["ls", "--json"])["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["a"]);
    img.assert_clean();
}

#[test]
fn missing_path_is_reported_with_errno() {
    let img = Image::new();
    img.fs(&["stat", "/nope"]).failure().code(1).stderr(
        predicate::str::is_match(
            r"^pinwheel: stat /nope: No such file or directory \(ENOENT\): .+\n$",
        )
        .unwrap(),
    );
    img.fs(&["read", "/dir/x"]).failure().stderr(predicate::str::contains("no entry \"dir\" in /"));
    // A failed command still leaves the image cleanly unmounted.
    img.assert_clean();
}

#[test]
fn bad_sizes_are_clear_errors() {
    let img = Image::new();
    for (args, bad) in [
        (vec!["truncate", "/x", "--size", "12Q"], "12Q"),
        (vec!["write", "/x", "--pattern", "1", "--length", "1.5M"], "1.5M"),
        (vec!["write", "/x", "--pattern", "256", "--length", "1"], "256"),
        (vec!["punch", "/x", "--offset=-4K", "--length", "1"], "-4K"),
    ] {
        img.fs(&args).failure().code(2).stderr(predicate::str::contains(bad).and(no_panic()));
    }
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("x.pool");
    pinwheel()
        .arg("mkfs")
        .arg(&pool)
        .args(["--size", "lots"])
        .assert()
        .failure()
        .code(2)
        .stderr(predicate::str::contains("lots"));
    pinwheel()
        .arg("mkfs")
        .arg(&pool)
        .args(["--size", "1M"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("(EINVAL)").and(predicate::str::contains("smallest")));
    assert!(!pool.exists(), "a failed mkfs leaves no file behind");
}

#[test]
fn fsck_reports_a_damaged_superblock() {
    let img = Image::new();
    img.ok(&["write", "/f", "--pattern", "1", "--length", "4K"]);
    img.damage(20, &[0xa5; 8]);
    img.fs(&["fsck"])
        .failure()
        .code(4)
        .stdout(predicate::str::contains("error: superblock"))
        .stderr(predicate::str::contains("(EUCLEAN)").and(no_panic()));
    let out = img.fs(&["fsck", "--json"]).failure().code(4).get_output().stdout.clone();
    let r: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(r["clean"], false);
    assert!(r["errors"][0].as_str().unwrap().contains("superblock"), "{r:#}");
}

#[test]
fn mount_commands_refuse_a_damaged_image() {
    let img = Image::new();
    img.ok(&["write", "/f", "--pattern", "1", "--length", "4K"]);
    img.damage(20, &[0xa5; 8]);
    let before = std::fs::read(&img.pool).unwrap();
    for args in [
        vec!["ls"],
        vec!["stat", "/f"],
        vec!["read", "/f"],
        vec!["write", "/g", "--pattern", "1", "--length", "1"],
        vec!["mkdir", "/d"],
        vec!["truncate", "/f", "--size", "0"],
    ] {
        img.fs(&args).failure().code(1).stderr(
            predicate::str::starts_with("pinwheel: mount ")
                .and(predicate::str::contains("Structure needs cleaning (EUCLEAN)"))
                .and(predicate::str::contains("fsck"))
                .and(no_panic()),
        );
    }
    assert!(std::fs::read(&img.pool).unwrap() == before, "a refused mount leaves the image alone");
}

#[test]
fn foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = write_local(&dir.path().join("notes.txt"), b"not a pool\n");
    let zeros = dir.path().join("zeros.pool");
    std::fs::File::create(&zeros).unwrap().set_len(16 << 20).unwrap();
    let missing = dir.path().join("missing.pool");
    for (pool, errno) in [
        (PathBuf::from(&text), "(EINVAL)"),
        (zeros.clone(), "(EUCLEAN)"),
        (missing.clone(), "(ENOENT)"),
    ] {
        for cmd in [["ls"], ["fsck"]] {
            pinwheel()
                .arg("fs")
                .arg("--pool")
                .arg(&pool)
                .args(cmd)
                .assert()
                .failure()
                .stderr(predicate::str::contains(errno).and(no_panic()));
        }
    }
    assert!(!missing.exists(), "fs commands never create a pool");
}

#[test]
fn busy_pool_is_refused() {
    use std::os::fd::AsFd;
    let img = Image::new();
    let holder = std::fs::File::open(&img.pool).unwrap();
    rustix::fs::flock(holder.as_fd(), rustix::fs::FlockOperation::LockExclusive).unwrap();
    img.fs(&["ls"]).failure().stderr(predicate::str::contains("(EBUSY)"));
    img.fs(&["fsck"]).failure().stderr(predicate::str::contains("(EBUSY)"));
    drop(holder);
    img.ok(&["ls"]);
}

#[test]
fn help_explains_the_commands() {
    let top = pinwheel().arg("--help").assert().success().get_output().stdout.clone();
    let top = String::from_utf8(top).unwrap();
    assert!(top.contains("reference system for long-term DMA pinning"), "{top}");
    assert!(top.contains("mkfs") && top.contains("fs"), "{top}");
    let fs = pinwheel().args(["fs", "--help"]).assert().success().get_output().stdout.clone();
    let fs = String::from_utf8(fs).unwrap();
    for sub in [
        "ls",
        "stat",
        "write",
        "read",
        "fallocate",
        "truncate",
        "punch",
        "clone",
        "defrag",
        "rm",
        "mv",
        "mkdir",
        "fsck",
    ] {
        assert!(fs.lines().any(|l| l.trim_start().starts_with(sub)), "{sub} missing:\n{fs}");
    }
    pinwheel()
        .args(["fs", "--pool", "x", "write", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("--pattern").and(predicate::str::contains("--from")));
}

#[test]
fn over_long_paths_are_refused_without_panic() {
    let img = Image::new();
    // Over PATH_MAX, in two-byte characters so a byte-based cut would split one.
    let long = format!("/{}", "é".repeat(2100));
    img.fs(&["stat", &long])
        .failure()
        .code(1)
        .stderr(predicate::str::contains("(ENAMETOOLONG)").and(no_panic()));
    let name = format!("/{}", "x".repeat(300));
    img.fs(&["mkdir", &name])
        .failure()
        .stderr(predicate::str::contains("(ENAMETOOLONG)").and(predicate::str::contains("240")));
    img.assert_clean();
}

#[test]
fn full_inode_table_is_named() {
    let img = Image::new();
    let inodes = 256; // a 32 MiB pool gets the minimum
    for i in 1..inodes {
        img.ok(&["mkdir", &format!("/d{i}")]);
    }
    img.fs(&["mkdir", "/one-too-many"])
        .failure()
        .stderr(predicate::str::contains("(ENOSPC)").and(predicate::str::contains("inodes")));
    img.assert_clean();
}

#[test]
fn damaged_inode_is_reported_not_mounted() {
    let img = Image::new();
    img.ok(&["write", "/f", "--pattern", "1", "--length", "4K"]);
    let ino = img.num("/f", "ino");
    let geo = pinwheel_fs::format::Geometry::for_frames((32 << 20) / 4096).unwrap();
    let at = usize::try_from(geo.inode_offset(ino)).unwrap();
    img.damage(at + 40, &[0x5a; 16]);
    let out = img.fs(&["fsck", "--json"]).failure().code(4).get_output().stdout.clone();
    let r: Value = serde_json::from_slice(&out).unwrap();
    assert!(!r["errors"].as_array().unwrap().is_empty(), "{r:#}");
    img.fs(&["ls"]).failure().code(1).stderr(predicate::str::contains("(EUCLEAN)").and(no_panic()));
}
