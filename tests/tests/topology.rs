//! Growing, shrinking and replacing a live cluster under load, with the real binaries: no
//! acknowledged write is lost, and the data ends up on the nodes that own it.

use std::time::Duration;

use client::pb::v1::ConsistencyLevel;
use cluster_tests::ops::{create_keyspace, get, replica_values, Client, Writers};
use cluster_tests::{kvctl, Cluster};

async fn writers(cluster: &Cluster, nodes: &[&str]) -> Writers {
    let mut clients = Vec::new();
    for n in nodes {
        clients.push(cluster.client(n).await);
    }
    Writers::start(clients)
}

async fn wait_acked(cluster: &Cluster, writers: &Writers, n: usize, what: &str) {
    cluster
        .wait_until(
            || async move { writers.acked() >= n },
            Duration::from_secs(30),
            what,
        )
        .await;
}

async fn assert_all_readable(c: &mut Client, keys: &[String]) {
    assert!(!keys.is_empty(), "writes were acknowledged");
    for key in keys {
        assert_eq!(
            get(c, key, ConsistencyLevel::Quorum).await,
            Ok(Some(key.clone())),
            "acknowledged write {key} read at QUORUM"
        );
    }
}

/// Effective ownership per node, in percent, from `kvctl status -k app -o json`.
async fn ownership(cluster: &Cluster) -> Vec<(String, f64)> {
    let out = kvctl(
        &[
            "--dir",
            cluster.dir_arg(),
            "status",
            "-k",
            "app",
            "-o",
            "json",
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(out.success, "kvctl status: {}", out.stderr);
    let status: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let mut owns = Vec::new();
    for dc in status["dcs"].as_array().expect("dcs") {
        for n in dc["nodes"].as_array().expect("nodes") {
            let id = n["host_id"].as_str().expect("host_id").to_owned();
            owns.push((id, n["owns_percent"].as_f64().unwrap_or(0.0)));
        }
    }
    owns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_under_quorum_load_without_losing_writes() {
    let cluster = Cluster::up(1, 3).await;
    let mut c = cluster.client("dc1-n1").await;
    create_keyspace(&mut c, &[("dc1", 3)]).await;
    let load = writers(&cluster, &["dc1-n1", "dc1-n2"]).await;
    wait_acked(&cluster, &load, 200, "200 writes before the join").await;

    let acked_before_join = load.acked();
    let joined = cluster.add("dc1", None).await;
    assert_eq!(joined, "dc1-n4");
    let before = load.acked();
    wait_acked(&cluster, &load, before + 100, "100 writes after the join").await;
    let keys = load.finish().await;

    assert_all_readable(&mut cluster.client("dc1-n4").await, &keys).await;
    let owns = ownership(&cluster).await;
    assert_eq!(owns.len(), 4, "{owns:?}");
    for (node, pct) in &owns {
        // RF 3 over 4 nodes: 75% each when perfectly balanced.
        assert!(
            (60.0..=90.0).contains(pct),
            "{node} owns {pct:.1}% of app: {owns:?}"
        );
    }
    let mut n4 = cluster.client("dc1-n4").await;
    let mut taken = 0;
    for (i, key) in keys.iter().enumerate() {
        let values = replica_values(&mut n4, key).await;
        if values.contains_key("dc1-n4") {
            assert_eq!(
                values["dc1-n4"].as_deref(),
                Some(key.as_str()),
                "the joiner holds {key} it now owns"
            );
            taken += usize::from(i < acked_before_join);
        }
    }
    assert!(
        taken > 0,
        "the joiner took some of the keys written before it joined"
    );

    // Each key written before the join and now owned by the joiner is still on the one old
    // owner that released it, so cleanup removes at least that many cells, and nothing the
    // second time; every key stays on all 3 of its owners.
    let removed = cleanup_removed(&cluster).await;
    assert!(
        removed >= taken,
        "the first cleanup removed {removed} cells; the joiner took {taken} older keys"
    );
    assert_eq!(
        cleanup_removed(&cluster).await,
        0,
        "a second cleanup removes nothing"
    );
    for key in &keys {
        assert_eq!(
            get(&mut n4, key, ConsistencyLevel::All).await,
            Ok(Some(key.clone())),
            "{key} after cleanup"
        );
    }
}

/// Runs `kvctl cleanup` on every node; the cells removed in all.
async fn cleanup_removed(cluster: &Cluster) -> usize {
    let out = kvctl(
        &["--dir", cluster.dir_arg(), "-o", "json", "cleanup"],
        Duration::from_secs(60),
    )
    .await;
    assert!(out.success, "kvctl cleanup: {}", out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    (report["nodes"].as_array().expect("nodes").iter())
        .map(|n| n["cells_removed"].as_u64().expect("cells_removed") as usize)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_decommissions_under_quorum_load_and_its_data_moves() {
    let cluster = Cluster::up(1, 4).await;
    let mut c = cluster.client("dc1-n1").await;
    create_keyspace(&mut c, &[("dc1", 3)]).await;
    let load = writers(&cluster, &["dc1-n1", "dc1-n2"]).await;
    wait_acked(&cluster, &load, 200, "200 writes before the decommission").await;

    let out = kvctl(
        &["--dir", cluster.dir_arg(), "decommission", "dc1-n4"],
        Duration::from_secs(120),
    )
    .await;
    assert!(out.success, "kvctl decommission: {}", out.stderr);
    let before = load.acked();
    wait_acked(
        &cluster,
        &load,
        before + 100,
        "100 writes after the decommission",
    )
    .await;
    let keys = load.finish().await;

    assert_all_readable(&mut c, &keys).await;
    for key in keys.iter().take(100) {
        let values = replica_values(&mut c, key).await;
        assert!(
            !values.contains_key("dc1-n4"),
            "dc1-n4 left the replica sets"
        );
        assert_eq!(values.len(), 3, "{key}: {values:?}");
        assert!(
            values.values().all(|v| v.as_deref() == Some(key.as_str())),
            "{key} on every new owner: {values:?}"
        );
    }
    let refused = kvctl(
        &["--dir", cluster.dir_arg(), "decommission", "dc1-n3"],
        Duration::from_secs(60),
    )
    .await;
    assert!(!refused.success, "a decommission below RF must be refused");
    assert!(
        refused.stderr.contains("replication factor"),
        "{}",
        refused.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_for_a_killed_node_serves_all_acknowledged_data() {
    let cluster = Cluster::up(1, 3).await;
    let mut c = cluster.client("dc1-n1").await;
    create_keyspace(&mut c, &[("dc1", 3)]).await;
    let load = writers(&cluster, &["dc1-n1", "dc1-n2"]).await;
    wait_acked(&cluster, &load, 150, "150 writes").await;
    cluster.kill("dc1-n3").await;
    let before = load.acked();
    wait_acked(&cluster, &load, before + 150, "150 writes with dc1-n3 dead").await;
    let keys = load.finish().await;

    let replacement = cluster.add("dc1", Some("dc1-n3")).await;
    let mut r = cluster.client(&replacement).await;
    cluster
        .wait_until(
            || {
                let (mut r, last) = (r.clone(), keys.last().cloned().unwrap_or_default());
                let replacement = replacement.clone();
                async move {
                    replica_values(&mut r, &last).await.get(&replacement)
                        == Some(&Some(last.clone()))
                }
            },
            Duration::from_secs(30),
            "the replacement holds the last acknowledged write",
        )
        .await;
    for key in &keys {
        let values = replica_values(&mut r, key).await;
        assert_eq!(
            values.get(&replacement),
            Some(&Some(key.clone())),
            "{key} on the replacement: {values:?}"
        );
    }
    assert_all_readable(&mut r, &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removenode_rereplicates_a_dead_nodes_ranges() {
    let cluster = Cluster::up(1, 4).await;
    let mut c = cluster.client("dc1-n1").await;
    create_keyspace(&mut c, &[("dc1", 3)]).await;
    let load = writers(&cluster, &["dc1-n1", "dc1-n2"]).await;
    wait_acked(&cluster, &load, 200, "200 writes").await;
    let keys = load.finish().await;
    cluster.kill("dc1-n4").await;

    cluster
        .wait_seen_down(&["dc1-n1", "dc1-n2", "dc1-n3"], "dc1-n4")
        .await;
    let out = kvctl(
        &["--dir", cluster.dir_arg(), "removenode", "dc1-n4"],
        Duration::from_secs(90),
    )
    .await;
    assert!(out.success, "kvctl removenode: {}", out.stderr);
    for key in &keys {
        let values = replica_values(&mut c, key).await;
        assert!(
            !values.contains_key("dc1-n4"),
            "{key}: dc1-n4 is gone from the replica sets"
        );
        assert_eq!(values.len(), 3, "{key}: {values:?}");
        assert!(
            values.values().all(|v| v.as_deref() == Some(key.as_str())),
            "{key} re-replicated: {values:?}"
        );
    }
}
