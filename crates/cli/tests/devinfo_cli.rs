#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Black-box tests of `pinwheel devinfo`: the fields `ibv_devinfo` prints, in text and JSON.

use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;

fn devinfo(args: &[&str]) -> String {
    let out = Command::cargo_bin("pinwheel")
        .expect("the pinwheel binary is built for the tests")
        .arg("devinfo")
        .args(args)
        .timeout(Duration::from_secs(20))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    String::from_utf8(out).unwrap()
}

#[test]
fn devinfo_prints_ibv_devinfo_fields() {
    let s = devinfo(&[]);
    for want in [
        "hca_id:\tpinwheel0\n",
        "\ttransport:\t\t\t",
        "\tfw_ver:\t\t\t\tpinwheel ",
        "\tnode_guid:\t\t\t",
        "\tsys_image_guid:\t\t\t",
        "\tvendor_id:\t\t\t0x0000\n",
        "\tvendor_part_id:\t\t\t0\n",
        "\tphys_port_cnt:\t\t\t1\n",
        "\t\tport:\t1\n",
        "\t\t\tstate:\t\t\tPORT_ACTIVE (4)\n",
        "\t\t\tmax_mtu:\t\t4096 (5)\n",
        "\t\t\tactive_mtu:\t\t4096 (5)\n",
        "\t\t\tlink_layer:\t\t",
    ] {
        assert!(s.contains(want), "{want:?} missing from:\n{s}");
    }
    // The GUID reads as ibv_devinfo's four groups of four hex digits.
    let guid = s.lines().find(|l| l.contains("node_guid")).unwrap().rsplit('\t').next().unwrap();
    assert_eq!(guid.split(':').count(), 4, "{guid}");
    assert!(guid.split(':').all(|g| g.len() == 4 && u16::from_str_radix(g, 16).is_ok()));
    // Without -v: no limits.
    assert!(!s.contains("max_qp"), "{s}");
}

#[test]
fn devinfo_verbose_adds_limits_and_odp_caps() {
    let s = devinfo(&["-v"]);
    for want in [
        "\tmax_mr_size:\t\t\t0x",
        "\tpage_size_cap:\t\t\t0x",
        "\tmax_qp:\t\t\t\t",
        "\tmax_qp_wr:\t\t\t",
        "\tmax_sge:\t\t\t",
        "\tmax_cq:\t\t\t\t",
        "\tmax_cqe:\t\t\t",
        "\tmax_mr:\t\t\t\t",
        "\tmax_pd:\t\t\t\t",
        "\tmax_qp_rd_atom:\t\t\t",
        "\tatomic_cap:\t\t\tATOMIC_HCA (1)\n",
        "\tmax_srq:\t\t\t",
        "\tmax_srq_wr:\t\t\t",
        "\tgeneral_odp_caps:\n\t\t\t\t\tODP_SUPPORT\n",
        "\trc_odp_caps:\n\t\t\t\t\tSUPPORT_SEND\n\t\t\t\t\tSUPPORT_RECV\n\t\t\t\t\tSUPPORT_WRITE\n\t\t\t\t\tSUPPORT_READ\n\t\t\t\t\tSUPPORT_ATOMIC\n\t\t\t\t\tSUPPORT_SRQ\n",
        "\tuc_odp_caps:\n\t\t\t\t\tNO SUPPORT\n",
        "\t\t\tmax_msg_sz:\t\t0x",
    ] {
        assert!(s.contains(want), "{want:?} missing from:\n{s}");
    }
}

#[test]
fn devinfo_json_has_the_same_fields() {
    let v: Value = serde_json::from_str(&devinfo(&["--json"])).unwrap();
    assert_eq!(v["hca_id"], "pinwheel0");
    assert_eq!(v["phys_port_cnt"], 1);
    assert!(v["node_guid"].as_str().is_some_and(|g| g.len() == 19), "{v:#}");
    assert_eq!(v["ports"][0]["state"], "PORT_ACTIVE");
    assert_eq!(v["ports"][0]["active_mtu"], 4096);
    assert!(v.get("max_qp").is_none(), "limits only with -v: {v:#}");

    let v: Value = serde_json::from_str(&devinfo(&["-v", "--json"])).unwrap();
    for field in ["max_mr_size", "max_qp", "max_qp_wr", "max_sge", "max_cq", "max_cqe", "max_mr"] {
        assert!(v[field].as_u64().is_some_and(|n| n > 0), "{field}: {v:#}");
    }
    assert!(v["max_qp_rd_atom"].as_u64().is_some_and(|n| n > 0), "{v:#}");
    assert_eq!(v["atomic_cap"], "ATOMIC_HCA");
    assert_eq!(v["general_odp_caps"], serde_json::json!(["ODP_SUPPORT"]));
    let rc: Vec<&str> =
        v["rc_odp_caps"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(
        rc,
        [
            "SUPPORT_SEND",
            "SUPPORT_RECV",
            "SUPPORT_WRITE",
            "SUPPORT_READ",
            "SUPPORT_ATOMIC",
            "SUPPORT_SRQ"
        ]
    );
    assert_eq!(v["ud_odp_caps"], serde_json::json!([]));
    assert_eq!(v["ports"][0]["max_msg_sz"], 1u64 << 31);
}

#[test]
fn devinfo_rejects_a_bad_pool_size() {
    Command::cargo_bin("pinwheel")
        .unwrap()
        .args(["devinfo", "--pool-mib", "1"])
        .timeout(Duration::from_secs(20))
        .assert()
        .failure()
        .stderr(predicates::str::contains("--pool-mib"));
}
