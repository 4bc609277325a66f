//! Runs the real `kvctl ring plan` and checks what it prints.

use std::process::{Command, Output};

use serde_json::Value;

fn kvctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(args)
        .output()
        .expect("kvctl runs")
}

fn json(args: &[&str]) -> Value {
    let out = kvctl(&[args, &["-o", "json"]].concat());
    assert!(
        out.status.success(),
        "kvctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

const CLUSTER: &[&str] = &[
    "ring",
    "plan",
    "--dc",
    "us-east:3:6",
    "--dc",
    "eu-west:1:4",
    "--vnodes",
    "32",
    "--rf",
    "us-east:3,eu-west:2",
];

#[test]
fn json_gives_ownership_and_per_dc_imbalance_and_quorum_cost() {
    let report = json(CLUSTER);
    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 10);
    let east_total: f64 = nodes
        .iter()
        .filter(|n| n["dc"] == "us-east")
        .map(|n| n["ownership_percent"].as_f64().unwrap())
        .sum();
    assert!((east_total - 300.0).abs() < 1e-6, "{east_total}");
    for dc in ["us-east", "eu-west"] {
        let imbalance = report["dcs"][dc]["imbalance"].as_f64().unwrap();
        assert!((1.0..1.1).contains(&imbalance), "{dc}: {imbalance}");
        let pairs = report["dcs"][dc]["quorum_loss"]["pairs"].as_f64().unwrap();
        assert!(pairs > 0.0 && pairs <= 1.0, "{dc}: {pairs}");
        assert!(report["dcs"][dc].get("moved_fraction").is_none());
    }
    assert!(report.get("change").is_none());
}

#[test]
fn a_join_moves_data_of_its_dc_only_and_onto_the_new_node() {
    let report = json(&[CLUSTER, &["--add", "eu-west:rack1"]].concat());
    let moved = report["dcs"]["eu-west"]["moved_fraction"].as_f64().unwrap();
    assert!(
        (moved - 0.2).abs() < 0.03,
        "a fifth of eu-west moves, not {moved}"
    );
    assert_eq!(report["dcs"]["us-east"]["moved_fraction"], 0.0);
    let ranges = report["change"]["ranges"].as_array().unwrap();
    assert!(!ranges.is_empty());
    for r in ranges {
        for s in r["streams"].as_array().unwrap() {
            assert_eq!(s["target"], "eu-west-5");
        }
    }
}

#[test]
fn a_replacement_streams_from_survivors_only() {
    let report = json(&[CLUSTER, &["--replace", "us-east-2"]].concat());
    let moved = report["dcs"]["us-east"]["moved_fraction"].as_f64().unwrap();
    assert!((moved - 1.0 / 6.0).abs() < 0.02, "{moved}");
    for r in report["change"]["ranges"].as_array().unwrap() {
        for s in r["streams"].as_array().unwrap() {
            assert_ne!(s["source"], "us-east-2");
            assert_eq!(s["target"], "us-east-7");
        }
    }
}

#[test]
fn a_file_describes_the_same_cluster_as_the_flags() {
    let dir = std::env::temp_dir().join(format!("kvctl-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cluster.toml");
    std::fs::write(
        &file,
        r#"
vnodes = 32
rf = { us-east = 3, eu-west = 2 }

[[dc]]
name = "us-east"
racks = 3
nodes = 6

[[dc]]
name = "eu-west"
racks = 1
nodes = 4
"#,
    )
    .unwrap();
    let from_file = json(&["ring", "plan", "--file", file.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(from_file, json(CLUSTER));
}

#[test]
fn text_output_lists_nodes_dcs_and_the_change() {
    let out = kvctl(&[CLUSTER, &["--remove", "eu-west-1"]].concat());
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "OWNS (EFFECTIVE)",
        "IMBALANCE",
        "QUORUM LOST",
        "change: decommission eu-west-1",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn bad_input_fails_with_a_message_naming_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["--remove", "us-east-99"], "unknown node \"us-east-99\""),
        (&["--add", "mars:rack1"], "datacenter mars"),
        (&["--add", "eu-west"], "is not DC:RACK"),
    ];
    for (extra, message) in cases {
        let out = kvctl(&[CLUSTER, extra].concat());
        assert!(!out.status.success(), "{extra:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{extra:?}: {stderr}");
    }
    let none = kvctl(&[
        "ring", "plan", "--dc", "a:1:3", "--rf", "a:1", "--vnodes", "0",
    ]);
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(stderr.contains("a node needs at least one"), "{stderr}");
    let small = kvctl(&[
        "ring", "plan", "--dc", "a:1:3", "--rf", "a:3", "--remove", "a-1",
    ]);
    let stderr = String::from_utf8_lossy(&small.stderr);
    assert!(
        stderr.contains("cannot decommission a-1: keyspace default wants 3 replicas in a"),
        "{stderr}"
    );
}
