//! Harness for multi-process tests: clusters of the real `kv-node` binary started, crashed and
//! restarted through the real `kvctl local`, each in its own temporary directory and ports.
//!
//! ```no_run
//! # async fn example() {
//! use std::time::Duration;
//! use cluster_tests::Cluster;
//!
//! let cluster = Cluster::up(2, 1).await;
//! let mut client = cluster.client("dc1-n1").await;
//! cluster.kill("dc2-n1").await;
//! cluster.start("dc2-n1").await;
//! cluster
//!     .wait_until(|| async { true }, Duration::from_secs(10), "something to hold")
//!     .await;
//! # }
//! ```
//!
//! Use `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`: when the cluster drops,
//! the nodes stop gracefully only once the test's client connections close, which needs the
//! runtime to keep running (on a current-thread runtime they are killed after a few seconds).
//!
//! Every helper panics with a message saying what it was doing: these are test helpers, and a
//! panic is how a test fails. When a test fails while a [`Cluster`] is alive, its drop prints
//! the tail of every node's log and keeps the directory; it always stops the nodes.

pub mod ops;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use client::pb::v1::key_value_client::KeyValueClient;
use serde::Deserialize;
use tempfile::TempDir;
use tokio::process::Command;
use tokio::runtime::RuntimeFlavor;
use tokio::sync::{Semaphore, SemaphorePermit};
use tonic::transport::{Channel, Endpoint};

/// Clusters alive at once in one test binary. Tests run in parallel threads, and more than two
/// clusters on a 2-core machine slow every node down until failure detectors misfire.
const CLUSTERS_AT_ONCE: usize = 2;
static CLUSTER_SLOTS: Semaphore = Semaphore::const_new(CLUSTERS_AT_ONCE);

/// How long `kvctl local up` may wait for a cluster to form.
const UP_TIMEOUT: Duration = Duration::from_secs(45);
/// Bound on every kvctl invocation beyond its own timeouts.
const KVCTL_SLACK: Duration = Duration::from_secs(15);
/// Building both binaries from scratch in debug takes a few minutes on 2 cores.
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const LOG_TAIL_LINES: usize = 40;
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The binaries under test.
#[derive(Debug)]
pub struct Binaries {
    pub kv_node: PathBuf,
    pub kvctl: PathBuf,
}

/// kv-node and kvctl from this test's own target directory (`cargo test --workspace` builds
/// every package's binaries); built with cargo when missing.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary knows its path");
        // target/<profile>/deps/<test> -> target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in target/<profile>/deps")
            .to_owned();
        let binaries = Binaries {
            kv_node: profile_dir.join("kv-node"),
            kvctl: profile_dir.join("kvctl"),
        };
        if !binaries.kv_node.is_file() || !binaries.kvctl.is_file() {
            let release = profile_dir.file_name().is_some_and(|p| p == "release");
            build(release);
        }
        for bin in [&binaries.kv_node, &binaries.kvctl] {
            assert!(
                bin.is_file(),
                "{} is missing after the build",
                bin.display()
            );
        }
        binaries
    })
}

fn build(release: bool) {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = StdCommand::new(cargo);
    command.current_dir(workspace).args([
        "build", "-p", "node", "--bin", "kv-node", "-p", "cli", "--bin", "kvctl",
    ]);
    if release {
        command.arg("--release");
    }
    eprintln!("cluster-tests: building kv-node and kvctl: {command:?}");
    let mut child = command.spawn().expect("cargo runs");
    let deadline = Instant::now() + BUILD_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("cargo can be waited for") {
            assert!(
                status.success(),
                "building kv-node and kvctl failed: {status}"
            );
            return;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "building kv-node and kvctl took over {}s",
                BUILD_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits for one of the [`CLUSTERS_AT_ONCE`] slots; hold it while a cluster of your own (e.g.
/// `kvctl demo`'s) runs. [`Cluster`] takes one itself.
pub async fn cluster_slot() -> SemaphorePermit<'static> {
    CLUSTER_SLOTS
        .acquire()
        .await
        .expect("the semaphore is never closed")
}

/// A client port base whose three ports are free on every node address of a `dcs` x
/// `nodes_per_dc` cluster. Bases differ between the clusters of one process, and start from
/// the process id so that test processes running side by side rarely probe the same ports.
pub fn free_port_base(dcs: usize, nodes_per_dc: usize) -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 30_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = std::process::id() * 7 % SPAN;
    for _ in 0..1000 {
        let step = u32::from(NEXT.fetch_add(1, Ordering::Relaxed));
        let base = (LOW + (start + step * 3) % SPAN) as u16;
        let all_free = node_ips(dcs, nodes_per_dc).all(|ip| {
            (base..base + 3).all(|port| TcpListener::bind(SocketAddr::from((ip, port))).is_ok())
        });
        if all_free {
            return base;
        }
    }
    panic!("no free port base found for a {dcs}x{nodes_per_dc} cluster");
}

fn node_ips(dcs: usize, nodes_per_dc: usize) -> impl Iterator<Item = Ipv4Addr> {
    (1..=dcs)
        .flat_map(move |d| (1..=nodes_per_dc).map(move |n| Ipv4Addr::new(127, 0, d as u8, n as u8)))
}

/// A node as `DIR/cluster.json` describes it.
#[derive(Clone, Debug, Deserialize)]
pub struct Node {
    pub id: String,
    pub dc: String,
    pub rack: String,
    pub client_address: String,
    pub internode_address: String,
    pub http_address: String,
    pub dir: PathBuf,
    pub pid: Option<u32>,
}

impl Node {
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }
}

#[derive(Deserialize)]
struct ClusterFile {
    nodes: Vec<Node>,
}

/// The output of one kvctl run.
#[derive(Debug)]
pub struct KvctlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real kvctl with `args`, killing it if it outlives `timeout`.
pub async fn kvctl(args: &[&str], timeout: Duration) -> KvctlOutput {
    kvctl_with_env(args, &[], timeout).await
}

/// As [`kvctl`], with more environment variables, which nodes it starts inherit.
pub async fn kvctl_with_env(
    args: &[&str],
    env: &[(String, String)],
    timeout: Duration,
) -> KvctlOutput {
    let mut command = Command::new(&binaries().kvctl);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("KV_NODE_BIN", &binaries().kv_node)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .unwrap_or_else(|_| panic!("kvctl {args:?} ran over {}s", timeout.as_secs()))
        .expect("kvctl starts");
    KvctlOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Polls `condition` until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(mut condition: F, timeout: Duration, what: &str)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {:.1}s waiting for: {what}",
            timeout.as_secs_f64()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A client for a node's client service, with the protocol's message limit both ways.
pub async fn connect(address: &str) -> KeyValueClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .expect("a host:port makes a URI")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {address}: {e}"));
    KeyValueClient::new(channel)
        .max_decoding_message_size(client::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(client::MAX_MESSAGE_BYTES)
}

/// How to start a [`Cluster`]; [`Cluster::up`] is the common case.
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    dcs: usize,
    nodes_per_dc: usize,
    racks: usize,
    wan_latency: Option<Duration>,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
}

impl ClusterBuilder {
    pub fn racks(mut self, racks: usize) -> Self {
        self.racks = racks;
        self
    }

    /// Simulated one-way latency between DCs.
    pub fn wan_latency(mut self, latency: Duration) -> Self {
        self.wan_latency = Some(latency);
        self
    }

    /// More `kvctl local up` flags, e.g. `["--vnodes", "8"]`.
    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable for every node started by `up` (`KV_NODE_*` settings).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts the cluster with `kvctl local up` and waits until it has formed. Retries on
    /// another port base when another process took the ports between probe and start.
    pub async fn up(self) -> Cluster {
        let slot = cluster_slot().await;
        let dir = tempfile::Builder::new()
            .prefix("kv-cluster-test.")
            .tempdir()
            .expect("a temporary directory");
        let path = dir.path().join("cluster");
        for attempt in 1..=3 {
            let port_base = free_port_base(self.dcs, self.nodes_per_dc);
            let mut args: Vec<String> = [
                "local",
                "up",
                "--dir",
                path.to_str().expect("temporary paths are UTF-8"),
            ]
            .map(String::from)
            .to_vec();
            args.extend([
                "--dcs".to_owned(),
                self.dcs.to_string(),
                "--nodes-per-dc".to_owned(),
                self.nodes_per_dc.to_string(),
                "--racks".to_owned(),
                self.racks.to_string(),
                "--port-base".to_owned(),
                port_base.to_string(),
                "--timeout".to_owned(),
                format!("{}s", UP_TIMEOUT.as_secs()),
            ]);
            if let Some(latency) = self.wan_latency {
                args.extend([
                    "--wan-latency".to_owned(),
                    format!("{}ms", latency.as_millis()),
                ]);
            }
            args.extend(self.extra_args.iter().cloned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = kvctl_with_env(&args, &self.env, UP_TIMEOUT + KVCTL_SLACK).await;
            if out.success {
                let cluster = Cluster {
                    dir: Some(dir),
                    path,
                    nodes: Mutex::new(Vec::new()),
                    _slot: slot,
                };
                cluster.reload();
                return cluster;
            }
            let busy = out.stderr.contains("addresses in use");
            if busy && attempt < 3 {
                continue;
            }
            // Nodes that did start must not outlive the test; their logs explain the failure.
            let cluster = Cluster {
                dir: Some(dir),
                path,
                nodes: Mutex::new(Vec::new()),
                _slot: slot,
            };
            panic!(
                "kvctl local up failed in {}:\n{}",
                cluster.path.display(),
                out.stderr
            );
        }
        unreachable!("the last attempt returns or panics")
    }
}

/// A running cluster of real kv-node processes; stopped when dropped.
pub struct Cluster {
    /// Taken by the drop that keeps the directory of a failed test.
    dir: Option<TempDir>,
    /// The `--dir` of kvctl local, inside `dir`.
    path: PathBuf,
    /// As of the last kvctl call made through this cluster; behind a lock so that every
    /// helper takes `&self` and a cluster can be shared with spawned tasks.
    nodes: Mutex<Vec<Node>>,
    _slot: SemaphorePermit<'static>,
}

impl Cluster {
    /// `dcs` DCs of `nodes_per_dc` nodes each, on one rack per DC.
    pub async fn up(dcs: usize, nodes_per_dc: usize) -> Cluster {
        Cluster::builder(dcs, nodes_per_dc).up().await
    }

    pub fn builder(dcs: usize, nodes_per_dc: usize) -> ClusterBuilder {
        ClusterBuilder {
            dcs,
            nodes_per_dc,
            racks: 1,
            wan_latency: None,
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// The cluster's directory, as `kvctl local --dir` takes it.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    pub fn dir_arg(&self) -> &str {
        self.path.to_str().expect("temporary paths are UTF-8")
    }

    /// Every node, with the pids as of the last kvctl call made through this cluster.
    pub fn nodes(&self) -> Vec<Node> {
        self.nodes.lock().expect("not poisoned").clone()
    }

    pub fn node(&self, id: &str) -> Node {
        let nodes = self.nodes();
        let found = nodes.iter().find(|n| n.id == id).cloned();
        found.unwrap_or_else(|| {
            let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
            panic!("no node {id:?}; the cluster has {}", ids.join(", "))
        })
    }

    /// A client connected to `node`'s client service.
    pub async fn client(&self, node: &str) -> KeyValueClient<Channel> {
        connect(&self.node(node).client_address).await
    }

    /// Stops `node` with SIGSTOP, like a long GC pause: it keeps its sockets, and the failure
    /// detector believes it alive for a few seconds. It resumes when the guard is dropped, so a
    /// failed assertion does not leave it stopped through the teardown's SIGTERM grace.
    pub fn pause(&self, node: &str) -> Paused {
        let pid = self
            .node(node)
            .pid
            .unwrap_or_else(|| panic!("{node} is not running"));
        let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
        // SAFETY: kill(2) only reads its two integer arguments.
        let rc = unsafe { libc::kill(pid, libc::SIGSTOP) };
        let error = std::io::Error::last_os_error();
        assert_eq!(rc, 0, "SIGSTOP to {node}: {error}");
        Paused { pid }
    }

    /// Crashes `node` with SIGKILL.
    pub async fn kill(&self, node: &str) {
        self.local(&["kill", node], Duration::from_secs(10)).await;
    }

    /// Stops `node` with SIGTERM and waits until it has exited.
    pub async fn stop(&self, node: &str) {
        self.local(&["stop", node, "--timeout", "30s"], Duration::from_secs(30))
            .await;
    }

    /// Restarts `node` and waits until it serves and every running node sees it UP.
    pub async fn start(&self, node: &str) {
        self.local(
            &["start", node, "--timeout", "45s"],
            Duration::from_secs(45),
        )
        .await;
    }

    /// Adds a node to `dc` with `kvctl local add` (joining, or replacing the dead node
    /// `replace`) and waits until every running node sees it NORMAL and UP; returns its id.
    pub async fn add(&self, dc: &str, replace: Option<&str>) -> String {
        let before: Vec<String> = self.nodes().into_iter().map(|n| n.id).collect();
        let mut args = vec!["add", "--dc", dc, "--timeout", "90s"];
        if let Some(dead) = replace {
            args.extend(["--replace", dead]);
        }
        self.local(&args, Duration::from_secs(90)).await;
        let added = self.nodes().into_iter().find(|n| !before.contains(&n.id));
        added.expect("kvctl local add lists the new node").id
    }

    /// `kvctl repair --keyspace KEYSPACE -o json`: per range, each replica's Merkle root.
    pub async fn repair(&self, keyspace: &str) -> serde_json::Value {
        let args = [
            "--dir",
            self.dir_arg(),
            "-o",
            "json",
            "repair",
            "--keyspace",
            keyspace,
        ];
        let out = kvctl(&args, Duration::from_secs(60)).await;
        assert!(out.success, "kvctl repair failed: {}", out.stderr);
        serde_json::from_str(&out.stdout).expect("kvctl repair -o json prints JSON")
    }

    /// Ranges of a repair report whose replicas' Merkle roots differ.
    pub fn differing_roots(report: &serde_json::Value) -> Vec<String> {
        let ranges = report["ranges"].as_array().cloned().unwrap_or_default();
        (ranges.iter())
            .filter(|range| {
                let replicas = range["replicas"].as_array().cloned().unwrap_or_default();
                let roots: std::collections::BTreeSet<String> =
                    replicas.iter().map(|r| r["root"].to_string()).collect();
                roots.len() != 1
            })
            .map(|range| range.to_string())
            .collect()
    }

    /// Waits until every one of `observers` sees `node` DOWN.
    pub async fn wait_seen_down(&self, observers: &[&str], node: &str) {
        for observer in observers {
            let c = self.client(observer).await;
            self.wait_until(
                || {
                    let mut c = c.clone();
                    async move {
                        let ring = c
                            .describe_ring(client::pb::v1::DescribeRingRequest {})
                            .await;
                        let ring = ring.map(|r| r.into_inner()).unwrap_or_default();
                        (ring.nodes.iter().find(|n| n.id == node))
                            .is_some_and(|n| n.liveness() == client::pb::v1::Liveness::Down)
                    }
                },
                Duration::from_secs(30),
                &format!("{observer} sees {node} down"),
            )
            .await;
        }
    }

    /// `kvctl local status -o json`.
    pub async fn status(&self) -> serde_json::Value {
        let out = kvctl(
            &["local", "status", "--dir", self.dir_arg(), "-o", "json"],
            KVCTL_SLACK + Duration::from_secs(30),
        )
        .await;
        assert!(out.success, "kvctl local status failed:\n{}", out.stderr);
        serde_json::from_str(&out.stdout).expect("status -o json prints JSON")
    }

    /// Runs `kvctl local <args> --dir DIR`, panicking when it fails.
    async fn local(&self, args: &[&str], timeout: Duration) -> KvctlOutput {
        let dir = self.dir_arg().to_owned();
        let mut full = vec!["local"];
        full.extend_from_slice(args);
        full.extend(["--dir", &dir]);
        let out = kvctl(&full, timeout + KVCTL_SLACK).await;
        self.reload();
        assert!(
            out.success,
            "kvctl {} failed:\n{}",
            full.join(" "),
            out.stderr
        );
        out
    }

    /// Polls `condition` until it holds; panics with `what` after `timeout` (and the drop then
    /// prints every node's log).
    pub async fn wait_until<F, Fut>(&self, condition: F, timeout: Duration, what: &str)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        wait_until(condition, timeout, what).await;
    }

    /// The sum of every series of metric `name` on `node`'s /metrics page (0 when it has none).
    pub async fn metric(&self, node: &str, name: &str) -> f64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let address = self.node(node).http_address;
        let mut stream = tokio::net::TcpStream::connect(&address)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {node}'s HTTP port {address}: {e}"));
        let request = format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("cannot ask {node} for /metrics: {e}"));
        let mut page = String::new();
        stream
            .read_to_string(&mut page)
            .await
            .unwrap_or_else(|e| panic!("cannot read {node}'s /metrics: {e}"));
        (page.lines())
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The last `lines` lines of `node`'s log.
    pub fn log_tail(&self, node: &str, lines: usize) -> String {
        tail(&self.node(node).log_path(), lines)
    }

    fn reload(&self) {
        let path = self.path.join("cluster.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let file: ClusterFile = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is malformed: {e}", path.display()));
        *self.nodes.lock().expect("not poisoned") = file.nodes;
    }

    fn print_logs(&self) {
        for node in self.nodes() {
            eprintln!(
                "---- last {LOG_TAIL_LINES} lines of {} ----\n{}",
                node.log_path().display(),
                tail(&node.log_path(), LOG_TAIL_LINES)
            );
        }
    }

    /// Stops every node: `kvctl local down` (SIGTERM, then SIGKILL), and SIGKILL to any pid
    /// still recorded if kvctl itself fails. Blocking, because it runs in drop.
    fn teardown(&mut self) {
        if !self.path.join("cluster.json").exists() {
            return;
        }
        let down = StdCommand::new(&binaries().kvctl)
            .args(["local", "down", "--timeout", "10s", "--dir", self.dir_arg()])
            .stdin(Stdio::null())
            .output();
        match down {
            Ok(out) if out.status.success() => {}
            other => {
                eprintln!("cluster-tests: kvctl local down failed ({other:?}); killing pids");
                self.reload_quietly();
                for node in self.nodes() {
                    // Only a process whose command line names this cluster's directory: a
                    // recycled pid belongs to someone else.
                    let ours = node.pid.is_some_and(|pid| {
                        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                            String::from_utf8_lossy(&cmdline).contains(self.dir_arg())
                        })
                    });
                    if let Some(pid) = node.pid.filter(|_| ours) {
                        if let Ok(pid) = libc::pid_t::try_from(pid) {
                            // SAFETY: kill(2) only reads its two integer arguments.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                    }
                }
            }
        }
    }
}

/// A node stopped by [`Cluster::pause`]; dropping it sends SIGCONT.
#[must_use = "the node resumes when this is dropped"]
pub struct Paused {
    pid: libc::pid_t,
}

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: kill(2) only reads its two integer arguments.
        unsafe { libc::kill(self.pid, libc::SIGCONT) };
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if !self.path.join("cluster.json").exists() {
            return;
        }
        self.reload_quietly();
        if failed {
            self.print_logs();
        }
        // The nodes finish in-flight requests before exiting, so the connections of this
        // test's clients must close, and their tasks run on the test's runtime: on a
        // multi-thread runtime they keep running while this thread blocks.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.teardown())
            }
            _ => self.teardown(),
        }
        if failed {
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "cluster-tests: kept {} for inspection",
                    dir.keep().display()
                );
            }
        }
    }
}

impl Cluster {
    /// For drop: a second panic while unwinding would abort the test binary.
    fn reload_quietly(&self) {
        let path = self.path.join("cluster.json");
        if let Ok(file) = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<ClusterFile>(&t).map_err(|e| e.to_string()))
        {
            if let Ok(mut nodes) = self.nodes.lock() {
                *nodes = file.nodes;
            }
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
