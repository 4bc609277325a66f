//! `kvctl demo` end to end, without a terminal: --exit-after-workload stops the cluster once
//! the workload and the status table are printed.

use std::time::Duration;

use cluster_tests::{cluster_slot, free_port_base, kvctl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_its_workload_at_three_levels_and_stops_every_node() {
    let _slot = cluster_slot().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("demo");
    let base = free_port_base(3, 3).to_string();
    let out = kvctl(
        &[
            "demo",
            "--exit-after-workload",
            "--ops",
            "20",
            "--wan-latency",
            "5ms",
            "--timeout",
            "45s",
            "--port-base",
            &base,
            "--dir",
            cluster_dir.to_str().unwrap(),
        ],
        Duration::from_secs(90),
    )
    .await;
    assert!(
        out.success,
        "kvctl demo failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    for level in ["LOCAL_QUORUM", "EACH_QUORUM", "QUORUM"] {
        assert!(out.stdout.contains(level), "{}", out.stdout);
    }
    assert_eq!(
        out.stdout.matches("NORMAL  UP").count(),
        9,
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("get -k demo local_quorum-1"),
        "{}",
        out.stdout
    );

    let cluster: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cluster_dir.join("cluster.json")).expect("--dir is kept"),
    )
    .unwrap();
    let nodes = cluster["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 9);
    assert!(
        nodes.iter().all(|n| n["pid"].is_null()),
        "every node was stopped: {cluster}"
    );
    let toml = std::fs::read_to_string(cluster_dir.join("dc1-n1/node.toml")).unwrap();
    assert!(
        toml.contains("[wan_latency_ms]\ndc2 = 5\ndc3 = 5"),
        "{toml}"
    );
}
