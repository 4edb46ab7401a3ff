//! `pinwheel devinfo [-v] [--json]`: the device attributes, as rdma-core's `ibv_devinfo`
//! prints them (same names, same layout, same `-v`), of the software RDMA device of a fresh
//! node (a new memfd pool with its filesystem). The limits are the device's own
//! (`pinwheel_verbs::limits`), whatever the pool size.

use std::io::{self, Write};

use clap::Args;
use pinwheel::{DeviceAttr, Node, NodeConfig, PoolSpec};
use serde::Serialize;

use crate::error::CliError;
use crate::output::{Render, emit};

/// `devinfo`.
#[derive(Args, Debug)]
pub struct DevinfoArgs {
    /// Also print the device's limits, its ODP capabilities and the port's details (as
    /// `ibv_devinfo -v`).
    #[arg(short, long)]
    verbose: bool,
    /// Print one JSON object with the same fields (`ports` is an array of objects).
    #[arg(long)]
    json: bool,
    /// Size of the node's pool in MiB (a memfd; untouched memory costs nothing).
    #[arg(long, value_name = "MIB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(16..=(1 << 20)))]
    pool_mib: u64,
}

/// `ibv_port_state` value of a state name.
fn port_state_code(s: &str) -> u8 {
    match s {
        "PORT_DOWN" => 1,
        "PORT_INIT" => 2,
        "PORT_ARMED" => 3,
        "PORT_ACTIVE" => 4,
        _ => 0,
    }
}

/// `enum ibv_mtu` value of an MTU in bytes.
fn mtu_code(bytes: u32) -> u8 {
    match bytes {
        256 => 1,
        512 => 2,
        1024 => 3,
        2048 => 4,
        4096 => 5,
        _ => 0,
    }
}

/// `enum ibv_atomic_cap` value of a capability name.
fn atomic_code(s: &str) -> u8 {
    match s {
        "ATOMIC_HCA" => 1,
        "ATOMIC_GLOB" => 2,
        _ => 0,
    }
}

/// `ibv_devinfo`'s GUID form: four groups of four hex digits.
fn guid(g: u64) -> String {
    format!(
        "{:04x}:{:04x}:{:04x}:{:04x}",
        g >> 48,
        (g >> 32) & 0xffff,
        (g >> 16) & 0xffff,
        g & 0xffff
    )
}

/// `SUPPORT_<op>` names of per-transport ODP capabilities, as `ibv_devinfo` prints them.
fn odp_support(caps: &[&str]) -> Vec<String> {
    caps.iter()
        .map(|c| if *c == "SRQ_RECV" { "SUPPORT_SRQ".into() } else { format!("SUPPORT_{c}") })
        .collect()
}

/// The limits `-v` adds.
#[derive(Clone, Debug, Serialize)]
pub struct Limits {
    max_mr_size: u64,
    page_size_cap: u64,
    max_qp: u32,
    max_qp_wr: u32,
    max_sge: u32,
    max_cq: u32,
    max_cqe: u32,
    max_mr: u32,
    max_pd: u32,
    max_qp_rd_atom: u32,
    atomic_cap: &'static str,
    max_srq: u32,
    max_srq_wr: u32,
    max_srq_sge: u32,
    max_pkeys: u16,
    max_inline_data: u32,
    general_odp_caps: Vec<&'static str>,
    rc_odp_caps: Vec<String>,
    // Only RC queue pairs exist: the other transports have no ODP support to report.
    uc_odp_caps: Vec<String>,
    ud_odp_caps: Vec<String>,
    xrc_odp_caps: Vec<String>,
    /// pinwheel's extension: MR de-coherence and `restore_mr`.
    restore_mr: bool,
}

/// A port.
#[derive(Clone, Debug, Serialize)]
pub struct PortView {
    port: u8,
    state: &'static str,
    max_mtu: u32,
    active_mtu: u32,
    link_layer: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_msg_sz: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pkey_tbl_len: Option<u16>,
}

/// What `devinfo` prints.
#[derive(Clone, Debug, Serialize)]
pub struct DevinfoView {
    hca_id: String,
    transport: &'static str,
    fw_ver: String,
    node_guid: String,
    sys_image_guid: String,
    vendor_id: u32,
    vendor_part_id: u32,
    hw_ver: u32,
    phys_port_cnt: u8,
    #[serde(flatten)]
    limits: Option<Limits>,
    ports: Vec<PortView>,
}

impl DevinfoView {
    /// The view of `a`; `verbose` adds the limits.
    pub fn new(a: &DeviceAttr, verbose: bool) -> DevinfoView {
        let limits = verbose.then(|| Limits {
            max_mr_size: a.max_mr_size,
            page_size_cap: a.page_size_cap,
            max_qp: a.max_qp,
            max_qp_wr: a.max_qp_wr,
            max_sge: a.max_sge,
            max_cq: a.max_cq,
            max_cqe: a.max_cqe,
            max_mr: a.max_mr,
            max_pd: a.max_pd,
            max_qp_rd_atom: a.max_qp_rd_atom,
            atomic_cap: a.atomic_cap,
            max_srq: a.max_srq,
            max_srq_wr: a.max_srq_wr,
            max_srq_sge: a.max_srq_sge,
            max_pkeys: a.max_pkeys,
            max_inline_data: a.max_inline_data,
            general_odp_caps: a.odp_general_caps.clone(),
            rc_odp_caps: odp_support(&a.odp_rc_caps),
            uc_odp_caps: Vec::new(),
            ud_odp_caps: Vec::new(),
            xrc_odp_caps: Vec::new(),
            restore_mr: a.restore_mr,
        });
        let ports = (1..=a.phys_port_cnt)
            .map(|port| PortView {
                port,
                state: a.port_state,
                max_mtu: a.max_mtu,
                active_mtu: a.active_mtu,
                link_layer: a.link_layer,
                max_msg_sz: verbose.then_some(a.max_msg_sz),
                pkey_tbl_len: verbose.then_some(a.max_pkeys),
            })
            .collect();
        DevinfoView {
            hca_id: a.name.clone(),
            transport: a.transport,
            fw_ver: a.fw_ver.clone(),
            node_guid: guid(a.node_guid),
            sys_image_guid: guid(a.sys_image_guid),
            vendor_id: a.vendor_id,
            vendor_part_id: a.vendor_part_id,
            hw_ver: a.hw_ver,
            phys_port_cnt: a.phys_port_cnt,
            limits,
            ports,
        }
    }
}

/// A list of capabilities under its name (`NO SUPPORT` when empty, as `ibv_devinfo`).
fn caps_list(out: &mut dyn Write, name: &str, caps: &[impl AsRef<str>]) -> io::Result<()> {
    writeln!(out, "\t{name}:")?;
    if caps.is_empty() {
        writeln!(out, "\t\t\t\t\tNO SUPPORT")?;
    }
    for c in caps {
        writeln!(out, "\t\t\t\t\t{}", c.as_ref())?;
    }
    Ok(())
}

fn limits_human(out: &mut dyn Write, l: &Limits) -> io::Result<()> {
    writeln!(out, "\tmax_mr_size:\t\t\t{:#x}", l.max_mr_size)?;
    writeln!(out, "\tpage_size_cap:\t\t\t{:#x}", l.page_size_cap)?;
    writeln!(out, "\tmax_qp:\t\t\t\t{}", l.max_qp)?;
    writeln!(out, "\tmax_qp_wr:\t\t\t{}", l.max_qp_wr)?;
    writeln!(out, "\tmax_sge:\t\t\t{}", l.max_sge)?;
    writeln!(out, "\tmax_cq:\t\t\t\t{}", l.max_cq)?;
    writeln!(out, "\tmax_cqe:\t\t\t{}", l.max_cqe)?;
    writeln!(out, "\tmax_mr:\t\t\t\t{}", l.max_mr)?;
    writeln!(out, "\tmax_pd:\t\t\t\t{}", l.max_pd)?;
    writeln!(out, "\tmax_qp_rd_atom:\t\t\t{}", l.max_qp_rd_atom)?;
    writeln!(out, "\tatomic_cap:\t\t\t{} ({})", l.atomic_cap, atomic_code(l.atomic_cap))?;
    writeln!(out, "\tmax_srq:\t\t\t{}", l.max_srq)?;
    writeln!(out, "\tmax_srq_wr:\t\t\t{}", l.max_srq_wr)?;
    writeln!(out, "\tmax_srq_sge:\t\t\t{}", l.max_srq_sge)?;
    writeln!(out, "\tmax_pkeys:\t\t\t{}", l.max_pkeys)?;
    writeln!(out, "\tmax_inline_data:\t\t{}", l.max_inline_data)?;
    caps_list(out, "general_odp_caps", &l.general_odp_caps)?;
    caps_list(out, "rc_odp_caps", &l.rc_odp_caps)?;
    caps_list(out, "uc_odp_caps", &l.uc_odp_caps)?;
    caps_list(out, "ud_odp_caps", &l.ud_odp_caps)?;
    caps_list(out, "xrc_odp_caps", &l.xrc_odp_caps)?;
    let restore = if l.restore_mr { "supported (MR de-coherence)" } else { "not supported" };
    writeln!(out, "\trestore_mr:\t\t\t{restore}")
}

impl Render for DevinfoView {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "hca_id:\t{}", self.hca_id)?;
        writeln!(out, "\ttransport:\t\t\t{}", self.transport)?;
        writeln!(out, "\tfw_ver:\t\t\t\t{}", self.fw_ver)?;
        writeln!(out, "\tnode_guid:\t\t\t{}", self.node_guid)?;
        writeln!(out, "\tsys_image_guid:\t\t\t{}", self.sys_image_guid)?;
        writeln!(out, "\tvendor_id:\t\t\t{:#06x}", self.vendor_id)?;
        writeln!(out, "\tvendor_part_id:\t\t\t{}", self.vendor_part_id)?;
        writeln!(out, "\thw_ver:\t\t\t\t{:#X}", self.hw_ver)?;
        writeln!(out, "\tphys_port_cnt:\t\t\t{}", self.phys_port_cnt)?;
        if let Some(l) = &self.limits {
            limits_human(out, l)?;
        }
        for p in &self.ports {
            writeln!(out, "\t\tport:\t{}", p.port)?;
            writeln!(out, "\t\t\tstate:\t\t\t{} ({})", p.state, port_state_code(p.state))?;
            writeln!(out, "\t\t\tmax_mtu:\t\t{} ({})", p.max_mtu, mtu_code(p.max_mtu))?;
            writeln!(out, "\t\t\tactive_mtu:\t\t{} ({})", p.active_mtu, mtu_code(p.active_mtu))?;
            writeln!(out, "\t\t\tlink_layer:\t\t{}", p.link_layer)?;
            if let Some(m) = p.max_msg_sz {
                writeln!(out, "\t\t\tmax_msg_sz:\t\t{m:#x}")?;
            }
            if let Some(n) = p.pkey_tbl_len {
                writeln!(out, "\t\t\tpkey_tbl_len:\t\t{n}")?;
            }
            writeln!(out)?;
        }
        Ok(())
    }
}

/// Runs `devinfo`.
pub fn run(a: DevinfoArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let size = a.pool_mib << 20;
    let node = Node::new(NodeConfig {
        name: "pinwheel0".into(),
        pool: PoolSpec::Memfd { size },
        ..NodeConfig::default()
    })
    .map_err(|e| CliError::node("devinfo", format!("memfd pool of {} MiB", a.pool_mib), e))?;
    let view = DevinfoView::new(&node.device.attr(), a.verbose);
    emit(out, &view, a.json)
        .map_err(|e| CliError::io("write", "stdout", "writing the output failed", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devinfo_guid_groups() {
        assert_eq!(guid(0x7077_0001_0002_0003), "7077:0001:0002:0003");
    }

    #[test]
    fn devinfo_codes_match_ibverbs() {
        assert_eq!((mtu_code(4096), mtu_code(1024), mtu_code(100)), (5, 3, 0));
        assert_eq!(port_state_code("PORT_ACTIVE"), 4);
        assert_eq!(atomic_code("ATOMIC_HCA"), 1);
        assert_eq!(odp_support(&["SEND", "SRQ_RECV"]), vec!["SUPPORT_SEND", "SUPPORT_SRQ"]);
    }
}
