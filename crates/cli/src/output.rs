//! What the commands print: one view type per report, serialized with serde for `--json` and
//! rendered as an aligned table or `key value` lines for people. Field names are the same in
//! both, so what a person reads is what a script greps or parses.
//!
//! Every function writes to a `&mut dyn Write` and returns its error (a closed stdout is an
//! error to report, not a panic).

use std::io::{self, Write};

use pinwheel_fs::{
    DefragReport, DirEntry, Extent, FileKind, FilePinInfo, FsckReport, LeaseInfo, LeaseState, Stat,
};
use serde::Serialize;

use crate::size::human;

/// A report that prints both ways.
pub trait Render: Serialize {
    /// Writes the human form.
    fn human(&self, out: &mut dyn Write) -> io::Result<()>;
}

/// Writes `view` as pretty JSON (one document, newline-terminated) or in its human form.
pub fn emit<T: Render>(out: &mut dyn Write, view: &T, json: bool) -> io::Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, view).map_err(io::Error::from)?;
        writeln!(out)
    } else {
        view.human(out)
    }
}

fn kind_name(k: FileKind) -> &'static str {
    match k {
        FileKind::File => "file",
        FileKind::Dir => "dir",
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Writes rows as columns: the first `right` columns right-aligned, the rest left-aligned,
/// the last one unpadded.
pub(crate) fn table(out: &mut dyn Write, rows: &[Vec<String>], right: usize) -> io::Result<()> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let w = widths[c];
            if c + 1 == r.len() {
                line.push_str(cell);
            } else if c < right {
                line.push_str(&format!("{cell:>w$}"));
            } else {
                line.push_str(&format!("{cell:<w$}"));
            }
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// One line of `ls`.
#[derive(Clone, Debug, Serialize)]
pub struct EntryView {
    /// Name in the directory (the path itself when `ls` was given a file).
    pub name: String,
    /// Inode number.
    pub ino: u64,
    /// `file` or `dir`.
    pub kind: &'static str,
    /// Size in bytes.
    pub size: u64,
    /// 4 KiB blocks allocated.
    pub blocks: u64,
    /// Blocks shared with other files (reflink).
    pub shared_blocks: u64,
}

impl EntryView {
    /// From a directory entry and the entry's stat.
    pub fn new(d: &DirEntry, st: &Stat) -> EntryView {
        EntryView {
            name: d.name.clone(),
            ino: d.ino.0,
            kind: kind_name(d.kind),
            size: d.size,
            blocks: st.blocks,
            shared_blocks: st.shared_blocks,
        }
    }

    /// For `ls FILE`: the file itself.
    pub fn of_file(path: &str, st: &Stat) -> EntryView {
        EntryView {
            name: path.to_string(),
            ino: st.ino.0,
            kind: kind_name(st.kind),
            size: st.size,
            blocks: st.blocks,
            shared_blocks: st.shared_blocks,
        }
    }
}

/// `ls`.
#[derive(Clone, Debug, Serialize)]
pub struct LsView {
    /// The directory (or file) listed.
    pub path: String,
    /// Its entries, sorted by name.
    pub entries: Vec<EntryView>,
}

impl Render for LsView {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut rows = vec![vec![
            "INO".to_string(),
            "SIZE".into(),
            "BLOCKS".into(),
            "SHARED".into(),
            "KIND".into(),
            "NAME".into(),
        ]];
        for e in &self.entries {
            let slash = if e.kind == "dir" { "/" } else { "" };
            rows.push(vec![
                e.ino.to_string(),
                e.size.to_string(),
                e.blocks.to_string(),
                e.shared_blocks.to_string(),
                e.kind.to_string(),
                format!("{}{slash}", e.name),
            ]);
        }
        table(out, &rows, 4)
    }
}

/// A layout lease in `stat`.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseView {
    /// Lease id.
    pub id: u64,
    /// `read`, `write` or `unbreakable`.
    pub kind: &'static str,
    /// Owner id.
    pub owner: u64,
    /// Owner's label.
    pub owner_label: String,
    /// `active` or `breaking`.
    pub state: &'static str,
    /// When a recalled lease is revoked (ms of the node's clock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoke_at_ms: Option<u128>,
    /// Long-term pins relying on it.
    pub pins: usize,
}

impl From<&LeaseInfo> for LeaseView {
    fn from(l: &LeaseInfo) -> LeaseView {
        let (state, revoke_at_ms) = match l.state {
            LeaseState::Active => ("active", None),
            LeaseState::Breaking { deadline } => ("breaking", Some(deadline.as_millis())),
        };
        LeaseView {
            id: l.id.0,
            kind: l.kind.name(),
            owner: l.owner.0,
            owner_label: l.owner_label.clone(),
            state,
            revoke_at_ms,
            pins: l.pins,
        }
    }
}

/// A long-term file pin in `stat`.
#[derive(Clone, Debug, Serialize)]
pub struct PinView {
    /// Pin id.
    pub id: u64,
    /// First byte pinned.
    pub offset: u64,
    /// Bytes pinned.
    pub len: u64,
    /// Pinned for writing.
    pub write: bool,
    /// Who holds it (`MR 0x1a07 on device handle 3 held by pid 4121 (fio)`).
    pub holder: String,
    /// Owner id.
    pub owner: u64,
    /// The lease it relies on.
    pub lease: Option<u64>,
    /// Told to decohere or revoke by a layout change in progress.
    pub notified: bool,
}

impl From<&FilePinInfo> for PinView {
    fn from(p: &FilePinInfo) -> PinView {
        PinView {
            id: p.id.0,
            offset: p.offset,
            len: p.len,
            write: p.write,
            holder: p.holder.to_string(),
            owner: p.owner.0,
            lease: p.lease.map(|l| l.0),
            notified: p.notified,
        }
    }
}

/// One extent in `stat --extents`.
#[derive(Clone, Debug, Serialize)]
pub struct ExtentView {
    /// First file page.
    pub page: u64,
    /// First pool frame.
    pub pfn: u64,
    /// Pages.
    pub count: u64,
}

/// `stat`.
#[derive(Clone, Debug, Serialize)]
pub struct StatView {
    /// The path.
    pub path: String,
    /// Inode number.
    pub ino: u64,
    /// `file` or `dir`.
    pub kind: &'static str,
    /// Size in bytes.
    pub size: u64,
    /// 4 KiB blocks allocated.
    pub blocks: u64,
    /// Blocks shared with other files (reflink).
    pub shared_blocks: u64,
    /// Extents.
    pub extents: usize,
    /// Holds an unbreakable layout lease.
    pub sealed: bool,
    /// A page-cache (non-DAX) file.
    pub page_cache: bool,
    /// Links.
    pub nlink: u16,
    /// Last modification (ns of the node's clock).
    pub mtime_ns: u64,
    /// Layout leases.
    pub leases: Vec<LeaseView>,
    /// Long-term pins.
    pub pins: Vec<PinView>,
    /// The extent map (with `--extents`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extent_map: Option<Vec<ExtentView>>,
}

impl StatView {
    /// From a stat and, optionally, the extent map.
    pub fn new(path: &str, st: &Stat, extents: Option<Vec<Extent>>) -> StatView {
        StatView {
            path: path.to_string(),
            ino: st.ino.0,
            kind: kind_name(st.kind),
            size: st.size,
            blocks: st.blocks,
            shared_blocks: st.shared_blocks,
            extents: st.extents,
            sealed: st.sealed,
            page_cache: st.page_cache,
            nlink: st.nlink,
            mtime_ns: st.mtime_ns,
            leases: st.leases.iter().map(LeaseView::from).collect(),
            pins: st.pins.iter().map(PinView::from).collect(),
            extent_map: extents.map(|v| {
                v.iter()
                    .map(|e| ExtentView { page: e.page, pfn: e.pfn.raw(), count: e.count })
                    .collect()
            }),
        }
    }
}

impl Render for StatView {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let bytes = |n: u64| if n < 1024 { n.to_string() } else { format!("{n} ({})", human(n)) };
        let lines: Vec<(&str, String)> = vec![
            ("path", self.path.clone()),
            ("ino", self.ino.to_string()),
            ("kind", self.kind.to_string()),
            ("size", bytes(self.size)),
            ("blocks", self.blocks.to_string()),
            ("shared_blocks", self.shared_blocks.to_string()),
            ("extents", self.extents.to_string()),
            ("sealed", yes_no(self.sealed).into()),
            ("page_cache", yes_no(self.page_cache).into()),
            ("nlink", self.nlink.to_string()),
            ("mtime_ns", self.mtime_ns.to_string()),
            ("leases", self.leases.len().to_string()),
            ("pins", self.pins.len().to_string()),
        ];
        for (k, v) in lines {
            writeln!(out, "{k:<15}{v}")?;
        }
        for l in &self.leases {
            let deadline =
                l.revoke_at_ms.map(|d| format!(", revoked at {d} ms")).unwrap_or_default();
            writeln!(
                out,
                "  lease {} {} held by owner {} ({}), {}{deadline}, {} pin(s) rely on it",
                l.id, l.kind, l.owner, l.owner_label, l.state, l.pins
            )?;
        }
        for p in &self.pins {
            let rw = if p.write { "rw" } else { "ro" };
            writeln!(
                out,
                "  file pin {} bytes {}..{} {rw} by {}{}",
                p.id,
                p.offset,
                p.offset.saturating_add(p.len),
                p.holder,
                if p.notified { " (notified)" } else { "" }
            )?;
        }
        if let Some(map) = &self.extent_map {
            let mut rows = vec![vec!["PAGE".to_string(), "PFN".into(), "COUNT".into()]];
            rows.extend(
                map.iter()
                    .map(|e| vec![e.page.to_string(), e.pfn.to_string(), e.count.to_string()]),
            );
            table(out, &rows, 3)?;
        }
        Ok(())
    }
}

/// `fsck`.
#[derive(Clone, Debug, Serialize)]
pub struct FsckView {
    /// The pool file checked.
    pub pool: String,
    /// No errors found.
    pub clean: bool,
    /// Violations of the format's invariants.
    pub errors: Vec<String>,
    /// Oddities that are not damage.
    pub warnings: Vec<String>,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Data blocks in use.
    pub blocks_used: u64,
    /// Blocks referenced more than once.
    pub blocks_shared: u64,
    /// Extents.
    pub extents: u64,
}

impl FsckView {
    /// From fsck's report.
    pub fn new(pool: &str, r: &FsckReport) -> FsckView {
        FsckView {
            pool: pool.to_string(),
            clean: r.clean(),
            errors: r.errors.clone(),
            warnings: r.warnings.clone(),
            files: r.files,
            dirs: r.dirs,
            blocks_used: r.blocks_used,
            blocks_shared: r.blocks_shared,
            extents: r.extents,
        }
    }
}

impl Render for FsckView {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let verdict = if self.clean {
            "clean".to_string()
        } else {
            format!("{} error(s)", self.errors.len())
        };
        writeln!(out, "fsck {}: {verdict}", self.pool)?;
        writeln!(
            out,
            "files {}, dirs {}, extents {}, blocks_used {}, blocks_shared {}",
            self.files, self.dirs, self.extents, self.blocks_used, self.blocks_shared
        )?;
        for w in &self.warnings {
            writeln!(out, "warning: {w}")?;
        }
        for e in &self.errors {
            writeln!(out, "error: {e}")?;
        }
        Ok(())
    }
}

/// Writes a defragmentation report.
pub fn defrag(out: &mut dyn Write, path: &str, r: &DefragReport) -> io::Result<()> {
    writeln!(
        out,
        "defrag {path}: extents {} -> {}, {} page(s) moved, {} shared page(s) left in place",
        r.extents_before, r.extents_after, r.pages_moved, r.pages_shared_skipped
    )
}
