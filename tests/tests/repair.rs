//! Anti-entropy repair against real kv-node processes: with hints off, a node that was down
//! misses writes and deletes; `kvctl repair` (or the background loop alone) makes every replica
//! hold the same cells again, checked per key with Inspect and per range by equal Merkle roots.

use std::collections::BTreeSet;
use std::time::Duration;

use client::pb::v1::{
    self as pb, ConsistencyLevel, CreateKeyspaceRequest, DeleteRequest, Keyspace,
};
use cluster_tests::ops::{self, replica_values, Client, KS};
use cluster_tests::{kvctl, Cluster};
use serde_json::Value;

const KEYS: usize = 60;
const STALE: &str = "dc1-n3";

async fn put(c: &mut Client, key: &str, value: &str, level: ConsistencyLevel) {
    ops::put(c, key, value, level)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

/// Keys whose replicas do not all hold the same cell.
async fn diverged(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..KEYS {
        let key = format!("k{i}");
        let cells = replica_values(c, &key).await;
        let distinct: BTreeSet<&Option<String>> = cells.values().collect();
        if cells.len() != 3 || distinct.len() != 1 {
            out.push(key);
        }
    }
    out
}

/// A 3-node cluster (RF 3) where `STALE` missed the writes of half the keys and some deletes.
/// With background repair on, the node may be repaired before the check, so `expect_stale`
/// is for manual repairs only; hints are off and Inspect does not read-repair, so only repair
/// can bring replicas together.
async fn diverged_cluster(settings: &[&str], expect_stale: bool) -> (Cluster, Client) {
    let mut args = vec!["--vnodes", "8"];
    for s in settings {
        args.extend(["--set", s]);
    }
    let cluster = Cluster::builder(1, 3).args(args).up().await;
    let mut c = cluster.client("dc1-n1").await;
    c.create_keyspace(CreateKeyspaceRequest {
        keyspace: Some(Keyspace {
            name: KS.into(),
            replication: [("dc1".to_owned(), 3)].into(),
            schema_version: 0,
        }),
        if_not_exists: false,
    })
    .await
    .expect("CreateKeyspace");
    for i in 0..KEYS / 2 {
        put(&mut c, &format!("k{i}"), "v1", ConsistencyLevel::All).await;
    }
    cluster.kill(STALE).await;
    for i in KEYS / 2..KEYS {
        put(&mut c, &format!("k{i}"), "v1", ConsistencyLevel::Quorum).await;
    }
    for i in 0..5 {
        c.delete(DeleteRequest {
            keyspace: KS.into(),
            consistency: ConsistencyLevel::Quorum as i32,
            key: format!("k{i}").into_bytes().into(),
            timestamp: None,
        })
        .await
        .expect("delete");
    }
    put(&mut c, "k5", "v2", ConsistencyLevel::Quorum).await;
    cluster.start(STALE).await;
    let stale = diverged(&mut c).await;
    assert!(
        !expect_stale || stale.len() >= KEYS / 2,
        "with hints off the restarted node should have missed writes, diverged: {stale:?}"
    );
    (cluster, c)
}

/// How many (node, keyspace) pairs `kvctl status` warns about.
async fn status_warnings(cluster: &Cluster) -> usize {
    let out = kvctl(
        &["--dir", cluster.dir_arg(), "-o", "json", "status"],
        Duration::from_secs(20),
    )
    .await;
    assert!(out.success, "kvctl status failed: {}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    v["repair_warnings"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_repair_makes_every_replica_hold_the_merge() {
    let (cluster, mut c) = diverged_cluster(
        &[
            "hints.enabled=false",
            "repair.enabled=false",
            "repair.merkle_depth=8",
            // A grace period short enough for `kvctl status` to warn within the test.
            "hints.window_ms=1000",
            "repair.gc_grace_ms=4000",
        ],
        true,
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while status_warnings(&cluster).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "kvctl status never warned"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let first = cluster.repair(KS).await;
    let s = &first["summary"];
    assert_eq!(s["ranges_failed"], 0, "{first}");
    assert!(s["ranges_differing"].as_u64().unwrap() > 0, "{first}");
    assert!(
        s["cells_pushed"].as_u64().unwrap() >= (KEYS / 2) as u64,
        "{s}"
    );
    assert_eq!(diverged(&mut c).await, Vec::<String>::new());
    // Newest wins: the deletes and the overwrite survived the merge.
    let k0 = replica_values(&mut c, "k0").await;
    assert!(
        k0.values().all(|v| v.as_deref() == Some("<tombstone>")),
        "{k0:?}"
    );
    let k5 = replica_values(&mut c, "k5").await;
    assert!(k5.values().all(|v| v.as_deref() == Some("v2")), "{k5:?}");

    // A second pass finds every range's replicas with equal Merkle roots.
    let second = cluster.repair(KS).await;
    assert_eq!(second["summary"]["ranges_differing"], 0, "{second}");
    assert_eq!(second["summary"]["cells_pushed"], 0, "{second}");
    for range in second["ranges"].as_array().unwrap() {
        let roots: BTreeSet<&str> = (range["replicas"].as_array().unwrap().iter())
            .map(|r| r["root"].as_str().unwrap())
            .collect();
        assert_eq!(roots.len(), 1, "replicas' roots differ: {range}");
        assert_eq!(range["replicas"].as_array().unwrap().len(), 3, "{range}");
        assert_eq!(range["complete"], true, "{range}");
    }

    assert_eq!(status_warnings(&cluster).await, 0);

    // Every replica recorded the complete repairs: status shows nothing overdue.
    let status = c
        .repair_status(pb::RepairStatusRequest {})
        .await
        .expect("RepairStatus")
        .into_inner();
    let ks = status.keyspaces.iter().find(|k| k.keyspace == KS).unwrap();
    assert_eq!(ks.ranges, ks.ranges_repaired, "{status:?}");
    assert!(ks.gc_horizon_ms > 0, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_repair_alone_converges_replicas() {
    let (cluster, mut c) = diverged_cluster(
        &[
            "hints.enabled=false",
            "repair.enabled=true",
            "repair.interval_ms=20",
            "repair.merkle_depth=6",
        ],
        false,
    )
    .await;
    let mut left = Vec::new();
    for _ in 0..150 {
        left = diverged(&mut c).await;
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        left.is_empty(),
        "background repair left keys diverged: {left:?}\n{}",
        cluster.log_tail(STALE, 20)
    );
}
