//! The demo's output: one row per run as a table readable at 100 columns, JSON with the
//! field names of the contract, and an SVG grid of strategies × operations coloured by outcome.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

/// One run's measurements. JSON field names are part of the contract.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Pin policy.
    pub policy: String,
    /// `pinned`, `odp` or `file`.
    pub mr_kind: String,
    /// `dax` or `page-cache`.
    pub victim: String,
    /// `cooperative` or `unresponsive`.
    pub holder: String,
    /// The layout operation.
    pub operation: String,
    /// `ok` or the errno name of the registration.
    pub registration: String,
    /// `ok` or the errno name of the operation.
    pub operation_result: String,
    /// How long the operation's layout change took.
    pub operation_latency_us: u64,
    /// Work requests posted by the client.
    pub wr_posted: u64,
    /// Acknowledged.
    pub wr_acked: u64,
    /// Failed.
    pub wr_failed: u64,
    /// Failures by status (`REM_ACCESS_ERR`...).
    pub wr_failed_by_status: BTreeMap<String, u64>,
    /// Bytes of files other than the victim that differ from what they must hold.
    pub bytes_corrupted: u64,
    /// Acknowledged writes missing from the victim without a layout change that removed them.
    pub writes_lost: u64,
    /// Async events the server application received, by type.
    pub events: BTreeMap<String, u64>,
    /// Whether the MR was revoked.
    pub mr_revoked: bool,
    /// Longest gap between two completions at the client (µs).
    pub stall_us_max: u64,
    /// Acknowledged writes per second.
    pub writes_per_sec: f64,
    /// Verifying READs that did not return the slot's last acknowledged record (or a newer one).
    #[serde(default)]
    pub read_mismatches: u64,
    /// The lease owner's own attempt at the layout change (layout-lease: EDEADLK).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_operation_result: Option<String>,
    /// Why the operation failed or the stream stopped (for people; not in JSON).
    #[serde(skip)]
    pub message: String,
}

impl RunReport {
    /// `policy/kind victim`.
    pub fn strategy(&self) -> String {
        format!("{}/{} {}", self.policy, self.mr_kind, self.victim)
    }

    /// The outcome class (table, SVG): what the client and the other files saw.
    pub fn outcome(&self) -> &'static str {
        if self.bytes_corrupted > 0 {
            "corrupted"
        } else if self.writes_lost > 0 {
            "lost"
        } else if self.registration != "ok" || self.operation_result != "ok" {
            "refused"
        } else if self.mr_revoked {
            "revoked"
        } else if self.wr_failed > 0 {
            "failed-clean"
        } else {
            "hitless"
        }
    }
}

/// The report of a whole demo.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Every run.
    pub runs: Vec<RunReport>,
}

const TABLE_HEADER: [&str; 10] =
    ["op", "result", "op ms", "acked", "failed", "corrupt", "lost", "stall", "kw/s", "outcome"];

fn human_us(us: u64) -> String {
    if us >= 10_000 { format!("{} ms", us / 1000) } else { format!("{us} us") }
}

fn human_bytes(n: u64) -> String {
    match n {
        0 => "0".into(),
        n if n >= 1 << 20 => format!("{:.1}M", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.0}K", n as f64 / 1024.0),
        n => n.to_string(),
    }
}

impl Report {
    /// The table, under 100 columns: one block per strategy (with its registration result),
    /// one row per operation.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mut last: Option<(String, String)> = None;
        for r in &self.runs {
            let group = (format!("{} ({} holder)", r.strategy(), r.holder), r.registration.clone());
            if last.as_ref() != Some(&group) {
                if last.is_some() {
                    s.push('\n');
                }
                let _ = writeln!(s, "{}: registration {}", group.0, group.1);
                let h = TABLE_HEADER;
                let _ = writeln!(
                    s,
                    "  {:<9}{:<10}{:>8}{:>8}{:>7}{:>9}{:>7}{:>9}{:>7}  {}",
                    h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]
                );
                last = Some(group);
            }
            let _ = writeln!(
                s,
                "  {:<9}{:<10}{:>8.1}{:>8}{:>7}{:>9}{:>7}{:>9}{:>7.1}  {}",
                r.operation,
                r.operation_result,
                r.operation_latency_us as f64 / 1000.0,
                r.wr_acked,
                r.wr_failed,
                human_bytes(r.bytes_corrupted),
                r.writes_lost,
                human_us(r.stall_us_max),
                r.writes_per_sec / 1000.0,
                r.outcome()
            );
        }
        s
    }

    /// Notes: why operations were refused, once per strategy and message, wrapped to fit.
    pub fn notes(&self) -> String {
        // (strategy, text) -> operations, in order of appearance.
        let mut groups: Vec<((String, String), Vec<String>)> = Vec::new();
        let mut add =
            |key: (String, String), op: &str| match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, ops)) => ops.push(op.to_string()),
                None => groups.push((key, vec![op.to_string()])),
            };
        for r in &self.runs {
            let who = format!("{} ({})", r.strategy(), r.holder);
            if r.operation_result != "ok" && !r.message.is_empty() {
                // "truncate /victim: why" -> "why": the operation is listed with the group.
                let why = r.message.split_once(": ").map_or(r.message.as_str(), |(_, w)| w);
                add((who.clone(), why.to_string()), &r.operation);
            }
            if r.read_mismatches > 0 {
                add(
                    (who.clone(), format!("{} verifying READs saw stale data", r.read_mismatches)),
                    &r.operation,
                );
            }
            if let Some(o) = &r.owner_operation_result {
                add((who, format!("the lease owner's own truncate got {o}")), &r.operation);
            }
        }
        let mut s = String::new();
        for ((who, text), ops) in groups {
            let line = format!("{who}, {}: {text}", ops.join("/"));
            s.push_str(&wrap(&line, 98, "    "));
        }
        s
    }

    /// JSON (`{"runs": [...]}`).
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// An SVG grid: strategies (rows) × operations (columns), coloured by outcome.
    pub fn svg(&self) -> String {
        let mut rows: Vec<String> = Vec::new();
        let mut cols: Vec<String> = Vec::new();
        for r in &self.runs {
            let row = format!("{} ({})", r.strategy(), r.holder);
            if !rows.contains(&row) {
                rows.push(row);
            }
            if !cols.contains(&r.operation) {
                cols.push(r.operation.clone());
            }
        }
        let (left, top, cw, ch) = (300, 70, 120, 34);
        let w = left + cols.len() * cw + 20;
        let h = top + rows.len() * ch + 90;
        let colour = |o: &str| match o {
            "corrupted" => "#d7301f",
            "lost" => "#fc8d59",
            "refused" => "#9ecae1",
            "revoked" => "#b39ddb",
            "failed-clean" => "#fdd49e",
            _ => "#74c476",
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="13">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="10" y="24" font-size="17" font-weight="bold">pinwheel demo: long-term pins under layout changes</text>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="10" y="44" fill="dimgray">each cell: one run (strategy x operation), coloured by what the client and the other files saw</text>"#
        );
        for (j, c) in cols.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{c}</text>"#,
                left + j * cw + cw / 2,
                top - 8
            );
        }
        for (i, row) in rows.iter().enumerate() {
            let y = top + i * ch;
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                left - 10,
                y + ch / 2 + 5,
                xml(row)
            );
            for (j, c) in cols.iter().enumerate() {
                let x = left + j * cw;
                let Some(r) = self.runs.iter().find(|r| {
                    &format!("{} ({})", r.strategy(), r.holder) == row && &r.operation == c
                }) else {
                    continue;
                };
                let label = match r.outcome() {
                    "corrupted" => format!("corrupt {}", human_bytes(r.bytes_corrupted)),
                    "lost" => format!("lost {}", r.writes_lost),
                    "refused" if r.registration != "ok" => format!("reg {}", r.registration),
                    "refused" => r.operation_result.clone(),
                    o => o.to_string(),
                };
                let _ = writeln!(
                    s,
                    r#"<rect x="{}" y="{}" width="{}" height="{}" rx="4" fill="{}" stroke="white" stroke-width="2"><title>{}</title></rect>"#,
                    x,
                    y,
                    cw - 4,
                    ch - 4,
                    colour(r.outcome()),
                    xml(&format!(
                        "{} {}: reg {}, op {}, acked {}, failed {}, corrupted {} B, lost {}",
                        r.strategy(),
                        c,
                        r.registration,
                        r.operation_result,
                        r.wr_acked,
                        r.wr_failed,
                        r.bytes_corrupted,
                        r.writes_lost
                    ))
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" text-anchor="middle" font-size="12">{}</text>"#,
                    x + (cw - 4) / 2,
                    y + ch / 2 + 3,
                    xml(&label)
                );
            }
        }
        let ly = top + rows.len() * ch + 30;
        for (k, (o, what)) in [
            ("corrupted", "other files corrupted"),
            ("lost", "acknowledged writes lost"),
            ("refused", "registration or operation refused"),
            ("revoked", "MR revoked, client cut off"),
            ("failed-clean", "client saw errors, nothing lost"),
            ("hitless", "operation done, no error, nothing lost"),
        ]
        .iter()
        .enumerate()
        {
            let x = 10 + (k % 3) * 260;
            let y = ly + (k / 3) * 24;
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="{}" width="16" height="16" rx="3" fill="{}"/><text x="{}" y="{}">{what}</text>"#,
                y - 12,
                colour(o),
                x + 22,
                y
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// Wraps `text` at `width` columns on spaces; continuation lines start with `indent`.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split(' ') {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            out.push_str(&line);
            out.push('\n');
            line = indent.to_string();
        } else if !line.is_empty() && line != indent {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
