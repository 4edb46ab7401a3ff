//! Admin views: who pins what, which leases, which MRs, which processes hold which handles.
//! Process lists are read from `/proc` when the view is asked for, so they are current: after a
//! `fork` and the parent's exit, the child is the holder.

use std::collections::BTreeMap;

use crate::daemon::Shared;
use crate::procfs;
use crate::proto::{AdminQuery, HandleView, MrView, ObjectCounts, PinView, PsView, Reply};

impl Shared {
    /// Processes holding each of `handles` now.
    pub(crate) fn processes_of(&self, handles: &[u64]) -> BTreeMap<u64, Vec<(u32, String)>> {
        let map = self.handles.lock();
        let inos: Vec<(u64, u64)> =
            handles.iter().filter_map(|h| map.get(h).map(|s| (*h, s.client_ino))).collect();
        drop(map);
        let by_ino = procfs::holders(&inos.iter().map(|(_, i)| *i).collect::<Vec<_>>());
        inos.into_iter().map(|(h, i)| (h, by_ino.get(&i).cloned().unwrap_or_default())).collect()
    }
}

fn add(t: &mut ObjectCounts, c: &ObjectCounts) {
    t.pds += c.pds;
    t.mrs += c.mrs;
    t.cqs += c.cqs;
    t.qps += c.qps;
    t.buffers += c.buffers;
    t.mappings += c.mappings;
    t.files += c.files;
    t.leases += c.leases;
    t.imported += c.imported;
}

/// Builds a view.
pub(crate) fn view(shared: &Shared, q: AdminQuery) -> Reply {
    let fs = &shared.node.fs;
    match q {
        AdminQuery::Pins => {
            let pins = fs.file_pins();
            let handles: Vec<u64> = pins.iter().filter_map(|p| p.holder.handle).collect();
            let procs = shared.processes_of(&handles);
            Reply::Pins(
                pins.into_iter()
                    .map(|mut pin| {
                        if let Some(h) = pin.holder.handle {
                            pin.holder.processes = procs.get(&h).cloned().unwrap_or_default();
                        }
                        PinView { pin }
                    })
                    .collect(),
            )
        }
        AdminQuery::Leases => Reply::Leases(fs.leases()),
        AdminQuery::Mrs => {
            let mrs = shared.node.device.mrs();
            let handles: Vec<u64> = mrs.iter().map(|m| m.handle).collect();
            let procs = shared.processes_of(&handles);
            Reply::Mrs(
                mrs.into_iter()
                    .map(|m| MrView {
                        lkey: m.lkey.0,
                        rkey: m.rkey.0,
                        kind: m.kind.name().to_string(),
                        state: m.state.name().to_string(),
                        addr: m.addr,
                        len: m.len,
                        ino: m.ino.map(|i| i.0),
                        resident_pages: m.resident_pages,
                        restores: m.restores,
                        handle: m.handle,
                        processes: procs.get(&m.handle).cloned().unwrap_or_default(),
                    })
                    .collect(),
            )
        }
        AdminQuery::Ps => {
            let states: Vec<_> = shared.handles.lock().values().cloned().collect();
            let nos: Vec<u64> = states.iter().map(|s| s.no).collect();
            let procs = shared.processes_of(&nos);
            let mut totals = ObjectCounts::default();
            let handles = states
                .iter()
                .map(|s| {
                    let objects = s.objects.lock().counts();
                    add(&mut totals, &objects);
                    HandleView {
                        handle: s.no,
                        label: s.label.clone(),
                        processes: procs.get(&s.no).cloned().unwrap_or_default(),
                        objects,
                    }
                })
                .collect();
            let st = shared.node.memory.stats();
            Reply::Ps(PsView {
                handles,
                totals,
                file_pins: fs.file_pins().len() as u64,
                leases: fs.leases().len() as u64,
                pinned_pages: st.pins_acquired.saturating_sub(st.pins_released),
                quarantined_frames: shared.node.memory.quarantined_frames(),
            })
        }
    }
}
