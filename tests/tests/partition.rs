//! A network partition between two DCs, made with nftables on loopback (docs/local-clusters.md,
//! "Partitions"): each side keeps serving LOCAL_QUORUM, EACH_QUORUM is refused, each side sees
//! the other DC down, and after healing hints bring every replica to the same value.
//!
//! Needs root and `nft` (scripts/test-deps.sh installs it); without them the test says why and
//! passes. The rules match this cluster's ports only, so other clusters on the same loopback
//! addresses (other tests, other developers' runs) are not cut.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use client::pb::v1::{
    ConsistencyLevel, CreateKeyspaceRequest, DescribeRingRequest, Keyspace, Liveness,
};
use client::KvError;
use cluster_tests::ops::{get, put, replica_values, Client, KS};
use cluster_tests::Cluster;

const DC1_NET: &str = "127.0.1.0/24";
const DC2_NET: &str = "127.0.2.0/24";
/// Failure detection takes ~4 s in local clusters; this leaves room for a loaded machine.
const DETECT: Duration = Duration::from_secs(30);
/// Hints are replayed every 500 ms once the target is seen UP, over connections that may
/// first have to notice the partition broke them (HTTP/2 keepalive: 10 s + 5 s).
const CONVERGE: Duration = Duration::from_secs(45);

/// `nft`, also when /usr/sbin is not on the PATH (as for some non-login root shells).
fn nft_command() -> Command {
    let sbin = Path::new("/usr/sbin/nft");
    Command::new(if sbin.is_file() {
        sbin
    } else {
        Path::new("nft")
    })
}

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (nftables rules need CAP_NET_ADMIN)".into());
    }
    match nft_command().args(["list", "tables"]).output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`nft list tables` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!(
            "no `nft` ({e}); scripts/test-deps.sh installs nftables"
        )),
    }
}

/// Straight to stderr, past the test harness's capture, so a skip is seen in every run.
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// An nftables table that drops this cluster's traffic between two address ranges, in both
/// directions. Dropping it deletes the table, whatever happened: healed on success, on a
/// failed assertion and on any other panic.
struct Partition {
    table: String,
}

impl Partition {
    /// Cuts `a` from `b` for TCP to or from `ports` (an inclusive range).
    fn cut(a: &str, b: &str, ports: (u16, u16)) -> Partition {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let table = format!(
            "kvtest_partition_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // Made before the table, so that a panic from here on deletes it.
        let partition = Partition { table };
        let (lo, hi) = ports;
        let mut rules = String::new();
        for (from, to) in [(a, b), (b, a)] {
            for dir in ["dport", "sport"] {
                rules += &format!("ip saddr {from} ip daddr {to} tcp {dir} {lo}-{hi} drop\n");
            }
        }
        let script = format!(
            "table inet {} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n{rules} }}\n}}\n",
            partition.table
        );
        nft_script(&script);
        partition
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let out = nft_command()
            .args(["delete", "table", "inet", &self.table])
            .output();
        match out {
            Ok(out) if out.status.success() => {}
            other => say(&format!(
                "partition: cannot delete nft table {} ({other:?}); remove it with \
                 `nft delete table inet {}`",
                self.table, self.table
            )),
        }
    }
}

/// Applies an nft script: one transaction, so it applies whole or not at all.
fn nft_script(script: &str) {
    let mut child = nft_command()
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft runs");
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(script.as_bytes())
        .expect("nft reads its script");
    drop(stdin);
    let out = child.wait_with_output().expect("nft finishes");
    assert!(
        out.status.success(),
        "nft -f failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr),
    );
}

/// The lowest and highest port any node of `cluster` listens on.
fn port_range(cluster: &Cluster) -> (u16, u16) {
    let ports: Vec<u16> = (cluster.nodes().iter())
        .flat_map(|n| [&n.client_address, &n.internode_address, &n.http_address])
        .map(|a| {
            a.parse::<SocketAddr>()
                .expect("node addresses are IP:port")
                .port()
        })
        .collect();
    let lo = *ports.iter().min().expect("the cluster has nodes");
    let hi = *ports.iter().max().expect("the cluster has nodes");
    (lo, hi)
}

/// Whether every one of `replicas` replicas of every key holds the expected value, as Inspect
/// shows each replica's own cell. The single place where this test decides that the DCs
/// converged: the Merkle-root comparison of repair belongs here, beside the per-key check.
async fn replicas_converged(
    c: &mut Client,
    expected: &BTreeMap<String, String>,
    replicas: usize,
) -> Result<(), String> {
    for (key, value) in expected {
        let values = replica_values(c, key).await;
        let agree = values.len() == replicas
            && values
                .values()
                .all(|v| v.as_deref() == Some(value.as_str()));
        if !agree {
            return Err(format!(
                "{key}: expected {value:?} on {replicas} replicas, got {values:?}"
            ));
        }
    }
    Ok(())
}

/// How `observer` sees each node, by id; empty when it does not answer.
async fn liveness(cluster: &Cluster, observer: &str) -> BTreeMap<String, Liveness> {
    let Ok(Ok(mut c)) = tokio::time::timeout(
        Duration::from_secs(2),
        Client::connect(format!("http://{}", cluster.node(observer).client_address)),
    )
    .await
    else {
        return BTreeMap::new();
    };
    match c.describe_ring(DescribeRingRequest {}).await {
        Ok(ring) => (ring.into_inner().nodes.iter())
            .map(|n| (n.id.clone(), n.liveness()))
            .collect(),
        Err(_) => BTreeMap::new(),
    }
}

/// Waits until every node of `observers` sees every node of `nodes` as `want`.
async fn wait_seen(cluster: &Cluster, observers: &[String], nodes: &[String], want: Liveness) {
    for observer in observers {
        cluster
            .wait_until(
                || async {
                    let seen = liveness(cluster, observer).await;
                    nodes.iter().all(|n| seen.get(n) == Some(&want))
                },
                DETECT,
                &format!("{observer} sees {} {want:?}", nodes.join(", ")),
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_between_dcs_keeps_local_quorum_refuses_each_quorum_and_heals_by_hints() {
    if let Some(why) = unsupported() {
        say(&format!("SKIPPED partition test: {why}"));
        return;
    }
    let cluster = Cluster::up(2, 3).await;
    let ids = |dc: &str| -> Vec<String> {
        (cluster.nodes().iter())
            .filter(|n| n.dc == dc)
            .map(|n| n.id.clone())
            .collect()
    };
    let (dc1, dc2) = (ids("dc1"), ids("dc2"));
    let all: Vec<String> = dc1.iter().chain(&dc2).cloned().collect();
    let mut c1 = cluster.client("dc1-n1").await;
    let mut c2 = cluster.client("dc2-n1").await;
    c1.create_keyspace(CreateKeyspaceRequest {
        keyspace: Some(Keyspace {
            name: KS.into(),
            replication: [("dc1".into(), 3), ("dc2".into(), 3)].into(),
            schema_version: 0,
        }),
        if_not_exists: false,
    })
    .await
    .expect("CreateKeyspace");
    let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    for key in &keys {
        put(&mut c1, key, "before", ConsistencyLevel::All)
            .await
            .unwrap_or_else(|e| panic!("{key} at ALL before the partition: {e}"));
    }

    let partition = Partition::cut(DC1_NET, DC2_NET, port_range(&cluster));
    wait_seen(&cluster, &dc1, &dc2, Liveness::Down).await;
    wait_seen(&cluster, &dc2, &dc1, Liveness::Down).await;

    // Each side overwrites its half of the keys, and reads its own writes locally.
    let mut expected = BTreeMap::new();
    for (i, key) in keys.iter().enumerate() {
        let (c, side) = if i % 2 == 0 {
            (&mut c1, "dc1")
        } else {
            (&mut c2, "dc2")
        };
        put(c, key, side, ConsistencyLevel::LocalQuorum)
            .await
            .unwrap_or_else(|e| panic!("{key} at LOCAL_QUORUM from {side} while partitioned: {e}"));
        assert_eq!(
            get(c, key, ConsistencyLevel::LocalQuorum).await,
            Ok(Some(side.to_owned())),
            "{key} read at LOCAL_QUORUM from {side} while partitioned"
        );
        expected.insert(key.clone(), side.to_owned());
    }
    // The other side has not seen them: the partition is real.
    assert_eq!(
        get(&mut c2, &keys[0], ConsistencyLevel::LocalQuorum).await,
        Ok(Some("before".into())),
        "dc2 reads {} at LOCAL_QUORUM while partitioned",
        keys[0]
    );
    for (c, side, other) in [(&mut c1, "dc1", "dc2"), (&mut c2, "dc2", "dc1")] {
        match put(c, "each", side, ConsistencyLevel::EachQuorum).await {
            Err(KvError::Unavailable(u)) => {
                let alive: BTreeMap<&str, u32> =
                    u.per_dc.iter().map(|d| (d.dc.as_str(), d.alive)).collect();
                assert_eq!(alive, [(side, 3), (other, 0)].into(), "{side}: {u:?}");
            }
            other => panic!("EACH_QUORUM from {side} with the other DC down: {other:?}"),
        }
    }

    drop(partition);
    wait_seen(&cluster, &all, &all, Liveness::Up).await;
    let mut last = String::new();
    let converged = tokio::time::timeout(CONVERGE, async {
        loop {
            match replicas_converged(&mut c1, &expected, 6).await {
                Ok(()) => return,
                Err(why) => last = why,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        converged.is_ok(),
        "hints did not bring every replica to the partition's writes within {}s: {last}",
        CONVERGE.as_secs()
    );
    // Whatever hints missed, repair moves; then every range's replicas have one Merkle root.
    cluster.repair(KS).await;
    let report = cluster.repair(KS).await;
    assert_eq!(
        Cluster::differing_roots(&report),
        Vec::<String>::new(),
        "after hints and repair"
    );
}
