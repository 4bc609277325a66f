//! Seed names through the real resolver: a node whose only seed is `localhost:PORT` joins the
//! node listening on 127.0.0.1. `localhost` is answered by the resolver itself (RFC 6761) or
//! /etc/hosts, so the test sends nothing beyond loopback.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use client::pb::v1::key_value_client::KeyValueClient;
use client::pb::v1::{DescribeRingRequest, Liveness};
use cluster_tests::{binaries, cluster_slot, wait_until};
use tokio::process::{Child, Command};
use tonic::transport::Endpoint;

/// A kv-node started by hand (kvctl local puts every node on 127.0.D.N, and `localhost`
/// names 127.0.0.1); killed when dropped, its log printed when the test failed.
struct Standalone {
    id: &'static str,
    client: SocketAddr,
    internode: SocketAddr,
    log: std::path::PathBuf,
    child: Child,
}

impl Standalone {
    fn start(id: &'static str, ip: &str, dir: &Path, seeds: &str) -> Standalone {
        let [client, internode, http] = free_ports(ip);
        let data = dir.join(id);
        std::fs::create_dir_all(&data).expect("node directory");
        // The local clusters' gossip rhythm, so a failure is seen in seconds.
        let config = data.join("node.toml");
        std::fs::write(
            &config,
            "[gossip]\ninterval_ms = 200\nacceptable_pause_ms = 1000\n",
        )
        .expect("config file");
        let log = data.join("node.log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(&binaries().kv_node)
            .env("KV_NODE_CONFIG", &config)
            .env("KV_NODE_NODE_ID", id)
            .env("KV_NODE_DATA_DIR", data.join("data"))
            .env("KV_NODE_LISTEN_CLIENT", client.to_string())
            .env("KV_NODE_LISTEN_INTERNODE", internode.to_string())
            .env("KV_NODE_LISTEN_HTTP", http.to_string())
            .env("KV_NODE_SEEDS", seeds)
            .env("KV_NODE_VNODES", "8")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file handle"))
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("kv-node starts");
        Standalone {
            id,
            client,
            internode,
            log,
            child,
        }
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("---- log of {} ----\n{text}", self.id);
        }
    }
}

/// Three ports free on `ip` now (bound together, so they differ, then released).
fn free_ports(ip: &str) -> [SocketAddr; 3] {
    let sockets = [0, 1, 2].map(|_| TcpListener::bind((ip, 0)).expect("a free port"));
    sockets.map(|s| s.local_addr().expect("bound"))
}

/// Whether the node at `client` serves and sees `peer` UP.
async fn sees_up(client: SocketAddr, peer: &str) -> bool {
    let endpoint = Endpoint::from_shared(format!("http://{client}"))
        .expect("an address makes a URI")
        .connect_timeout(Duration::from_secs(2));
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    let mut c = KeyValueClient::new(channel);
    let Ok(ring) = c.describe_ring(DescribeRingRequest {}).await else {
        return false;
    };
    let ring = ring.into_inner();
    ring.nodes
        .iter()
        .any(|n| n.id == peer && n.liveness() == Liveness::Up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_seed_is_localhost_joins() {
    let _slot = cluster_slot().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let first = Standalone::start("first", "127.0.0.1", dir.path(), "");
    let seed = format!("localhost:{}", first.internode.port());
    let second = Standalone::start("second", "127.0.0.2", dir.path(), &seed);
    let (a, b) = (first.client, second.client);
    wait_until(
        || async move { sees_up(b, "first").await && sees_up(a, "second").await },
        Duration::from_secs(30),
        &format!("the node seeded with {seed} and the seed see each other UP"),
    )
    .await;
}
