//! Admin views of a live node: `pinwheel pins`, `leases`, `mrs`, `ps` (each with `--json`).
//! The answer to "why is my truncate failing?": which file range is pinned, by which MR, on
//! which device handle, held by which processes (found through `/proc/<pid>/fd`).

use std::io::{self, Write};
use std::path::PathBuf;

use clap::Args;
use pinwheel::client::Context;
use pinwheel_mm::Errno;
use pinwheel_node::proto::{AdminQuery, MrView, PinView, PsView, Reply};
use serde::Serialize;

use crate::error::CliError;
use crate::output::{Render, emit, table};
use crate::size::human;

/// Options of every admin view.
#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The node's socket (default: `$PINWHEEL_SOCKET`, else the daemon's default).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Opens a handle on the node at `socket` (or the default).
pub fn connect(socket: &Option<PathBuf>, op: &'static str) -> Result<Context, CliError> {
    let path = socket.clone().unwrap_or_else(pinwheel::client::default_socket);
    Context::connect(&path).map_err(|e| client_err(op, &path.display().to_string(), e))
}

/// A client error as a CLI error.
pub fn client_err(op: &'static str, target: &str, e: pinwheel::client::Error) -> CliError {
    CliError::Refused { op, target: target.into(), errno: e.errno(), detail: e.message().into() }
}

fn procs(p: &[(u32, String)]) -> String {
    if p.is_empty() {
        return "-".into();
    }
    p.iter().map(|(pid, c)| format!("{pid} ({c})")).collect::<Vec<_>>().join(", ")
}

#[derive(Serialize)]
struct Pins<'a> {
    pins: Vec<&'a pinwheel_fs::FilePinInfo>,
}

impl Render for Pins<'_> {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        if self.pins.is_empty() {
            return writeln!(out, "no long-term pins");
        }
        let mut rows = vec![vec![
            "file".into(),
            "range".into(),
            "mode".into(),
            "held by".into(),
            "processes".into(),
        ]];
        for p in &self.pins {
            rows.push(vec![
                p.path.clone(),
                format!("{}+{}", p.offset, human(p.len)),
                if p.write { "rw" } else { "r" }.into(),
                format!(
                    "{}{}",
                    p.holder.object,
                    p.holder.handle.map(|h| format!(" on handle {h}")).unwrap_or_default()
                ),
                procs(&p.holder.processes),
            ]);
        }
        table(out, &rows, 0)
    }
}

#[derive(Serialize)]
struct Leases<'a> {
    leases: &'a [pinwheel_fs::LeaseInfo],
}

impl Render for Leases<'_> {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        if self.leases.is_empty() {
            return writeln!(out, "no layout leases");
        }
        let mut rows = vec![vec![
            "lease".into(),
            "file".into(),
            "kind".into(),
            "state".into(),
            "pins".into(),
            "owner".into(),
        ]];
        for l in self.leases {
            rows.push(vec![
                l.id.0.to_string(),
                l.ino.0.to_string(),
                format!("{:?}", l.kind).to_lowercase(),
                format!("{:?}", l.state).to_lowercase(),
                l.pins.to_string(),
                l.owner_label.clone(),
            ]);
        }
        table(out, &rows, 0)
    }
}

#[derive(Serialize)]
struct Mrs<'a> {
    mrs: &'a [MrView],
}

impl Render for Mrs<'_> {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        if self.mrs.is_empty() {
            return writeln!(out, "no memory regions");
        }
        let mut rows = vec![vec![
            "lkey".into(),
            "kind".into(),
            "state".into(),
            "length".into(),
            "resident".into(),
            "handle".into(),
            "processes".into(),
        ]];
        for m in self.mrs {
            rows.push(vec![
                format!("{:#x}", m.lkey),
                m.kind.clone(),
                m.state.clone(),
                human(m.len),
                format!("{} pages", m.resident_pages),
                m.handle.to_string(),
                procs(&m.processes),
            ]);
        }
        table(out, &rows, 0)
    }
}

impl Render for PsViewOut<'_> {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let p = self.0;
        let mut rows = vec![vec![
            "handle".into(),
            "pds".into(),
            "mrs".into(),
            "cqs".into(),
            "qps".into(),
            "bufs".into(),
            "maps".into(),
            "files".into(),
            "leases".into(),
            "label".into(),
            "processes".into(),
        ]];
        for h in &p.handles {
            let o = &h.objects;
            rows.push(vec![
                h.handle.to_string(),
                o.pds.to_string(),
                o.mrs.to_string(),
                o.cqs.to_string(),
                o.qps.to_string(),
                o.buffers.to_string(),
                o.mappings.to_string(),
                o.files.to_string(),
                o.leases.to_string(),
                h.label.clone(),
                procs(&h.processes),
            ]);
        }
        table(out, &rows, 9)?;
        writeln!(
            out,
            "{} handle(s); {} file pin(s), {} lease(s), {} page(s) pinned, {} frame(s) quarantined",
            p.handles.len(),
            p.file_pins,
            p.leases,
            p.pinned_pages,
            p.quarantined_frames
        )
    }
}

#[derive(Serialize)]
#[serde(transparent)]
struct PsViewOut<'a>(&'a PsView);

fn unexpected(r: Reply) -> CliError {
    CliError::Refused {
        op: "admin",
        target: "daemon".into(),
        errno: Errno::EPROTO,
        detail: format!("unexpected answer {r:?}"),
    }
}

fn stdout_err(e: io::Error) -> CliError {
    CliError::io("write", "stdout", "writing the output failed", e)
}

/// Runs one view.
pub fn run(q: AdminQuery, a: AdminArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let op = match q {
        AdminQuery::Pins => "pins",
        AdminQuery::Leases => "leases",
        AdminQuery::Mrs => "mrs",
        AdminQuery::Ps => "ps",
    };
    let ctx = connect(&a.socket, op)?;
    let r = ctx.admin(q).map_err(|e| client_err(op, "daemon", e))?;
    match r {
        Reply::Pins(p) => {
            let pins: Vec<&PinView> = p.iter().collect();
            emit(out, &Pins { pins: pins.iter().map(|v| &v.pin).collect() }, a.json)
        }
        Reply::Leases(l) => emit(out, &Leases { leases: &l }, a.json),
        Reply::Mrs(m) => emit(out, &Mrs { mrs: &m }, a.json),
        Reply::Ps(p) => emit(out, &PsViewOut(&p), a.json),
        r => return Err(unexpected(r)),
    }
    .map_err(stdout_err)
}
