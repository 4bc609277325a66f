//! `kvctl local` against real kv-node processes: a cluster forms, nodes stop, crash and come
//! back, and bad requests are refused before anything starts.

use std::net::TcpListener;
use std::time::Duration;

use client::pb::v1::{
    ConsistencyLevel, CreateKeyspaceRequest, DescribeRingRequest, GetRequest, Keyspace, Liveness,
    NodeState, PutRequest,
};
use cluster_tests::{binaries, free_port_base, kvctl, Cluster};

/// What `dc1-n1` currently thinks of `node`, or None if it does not list it.
async fn seen_from(cluster: &Cluster, observer: &str, node: &str) -> Option<(NodeState, Liveness)> {
    let mut client = cluster.client(observer).await;
    let ring = client
        .describe_ring(DescribeRingRequest {})
        .await
        .ok()?
        .into_inner();
    ring.nodes
        .iter()
        .find(|n| n.id == node)
        .map(|n| (n.state(), n.liveness()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dcs_form_and_status_shows_both_running() {
    let cluster = Cluster::up(2, 1).await;

    let status = cluster.status().await;
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2);
    for (node, dc) in nodes.iter().zip(["dc1", "dc2"]) {
        assert_eq!(node["dc"], dc);
        assert_eq!(node["running"], true, "{node}");
        assert_eq!(node["health"], "ok", "{node}");
        assert_eq!(node["state"], "NORMAL", "{node}");
        assert_eq!(node["liveness"], "UP", "{node}");
    }
    for observer in ["dc1-n1", "dc2-n1"] {
        for node in ["dc1-n1", "dc2-n1"] {
            assert_eq!(
                seen_from(&cluster, observer, node).await,
                Some((NodeState::Normal, Liveness::Up)),
                "{observer} about {node}"
            );
        }
    }

    let again = kvctl(
        &[
            "local",
            "up",
            "--dcs",
            "2",
            "--nodes-per-dc",
            "1",
            "--dir",
            cluster.dir_arg(),
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(!again.success);
    assert!(
        again.stderr.contains("has a running cluster"),
        "{}",
        again.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_is_seen_down_then_restarts_and_is_seen_up() {
    let cluster = Cluster::up(2, 1).await;

    cluster.stop("dc2-n1").await;
    let status = cluster.status().await;
    assert_eq!(status["nodes"][1]["running"], false);
    assert!(cluster.node("dc2-n1").pid.is_none());
    cluster
        .wait_until(
            || async {
                seen_from(&cluster, "dc1-n1", "dc2-n1").await.map(|s| s.1) == Some(Liveness::Down)
            },
            Duration::from_secs(40),
            "dc1-n1 sees the stopped dc2-n1 DOWN",
        )
        .await;

    cluster.start("dc2-n1").await;
    assert!(cluster.node("dc2-n1").pid.is_some());
    assert_eq!(
        seen_from(&cluster, "dc1-n1", "dc2-n1").await,
        Some((NodeState::Normal, Liveness::Up))
    );
    assert!(
        cluster
            .log_tail("dc2-n1", 1000)
            .matches("kvctl local: starting")
            .count()
            == 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_comes_back_with_its_writes() {
    let cluster = Cluster::up(2, 1).await;
    let mut client = cluster.client("dc1-n1").await;
    client
        .create_keyspace(CreateKeyspaceRequest {
            keyspace: Some(Keyspace {
                name: "crash".into(),
                replication: [("dc1".to_owned(), 1), ("dc2".to_owned(), 1)].into(),
                schema_version: 0,
            }),
            if_not_exists: false,
        })
        .await
        .expect("CreateKeyspace");
    // A write at ALL is on dc2-n1 once acknowledged; the schema may take a gossip round.
    cluster
        .wait_until(
            || {
                let mut client = client.clone();
                async move {
                    client
                        .put(PutRequest {
                            keyspace: "crash".into(),
                            consistency: ConsistencyLevel::All as i32,
                            key: b"k".to_vec().into(),
                            value: b"before the crash".to_vec().into(),
                            timestamp: None,
                            ttl_ms: None,
                        })
                        .await
                        .is_ok()
                }
            },
            Duration::from_secs(20),
            "a write at ALL succeeds",
        )
        .await;

    cluster.kill("dc2-n1").await;
    cluster.start("dc2-n1").await;

    let mut dc2 = cluster.client("dc2-n1").await;
    let read = dc2
        .get(GetRequest {
            keyspace: "crash".into(),
            consistency: ConsistencyLevel::LocalOne as i32,
            key: b"k".to_vec().into(),
        })
        .await
        .expect("Get at LOCAL_ONE on the restarted node")
        .into_inner();
    assert_eq!(
        read.value.map(|v| v.value.to_vec()),
        Some(b"before the crash".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_ports_are_refused_before_anything_starts() {
    let base = free_port_base(1, 1);
    let _holder = TcpListener::bind(("127.0.1.1", base + 1)).expect("bind the internode port");
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("c");
    let out = kvctl(
        &[
            "local",
            "up",
            "--dcs",
            "1",
            "--nodes-per-dc",
            "1",
            "--port-base",
            &base.to_string(),
            "--dir",
            cluster_dir.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(!out.success);
    assert!(
        out.stderr
            .contains(&format!("127.0.1.1:{} (internode of dc1-n1)", base + 1)),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--port-base"), "{}", out.stderr);
    assert!(!cluster_dir.join("cluster.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_kv_node_binary_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = kvctl(
        &[
            "local",
            "up",
            "--kv-node",
            "/nonexistent/kv-node",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(!out.success);
    assert!(
        out.stderr.contains("/nonexistent/kv-node"),
        "{}",
        out.stderr
    );
    assert!(binaries().kv_node.is_file());
}
