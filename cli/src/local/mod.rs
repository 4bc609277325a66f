//! `kvctl local ...`: clusters of real kv-node processes on this machine, one loopback address
//! per node (127.0.D.N), for trying the store out and for multi-process tests. Described in
//! docs/local-clusters.md.

mod add;
pub mod layout;
pub mod probe;
pub mod process;
pub mod state;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use client::pb::v1::{Liveness, NodeState};
use serde::Serialize;

use crate::output::Format;
use crate::Outcome;
use layout::{LocalSpec, DEFAULT_PORT_BASE, DEFAULT_VNODES};
use process::Signal;
use state::{ClusterFile, NodeEntry};

/// A cluster of one machine's nodes on a shared CPU forms in seconds; a minute means trouble.
const DEFAULT_READY_TIMEOUT: &str = "60s";
/// A graceful stop flushes memtables of at most 8 MiB: seconds, even on a busy machine.
const DEFAULT_STOP_TIMEOUT: &str = "30s";
/// After SIGKILL only the kernel is left to act.
const KILL_WAIT: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct LocalArgs {
    #[command(subcommand)]
    command: LocalCommand,
}

#[derive(Subcommand)]
enum LocalCommand {
    /// Start a new cluster in DIR and wait until every node sees every node NORMAL and UP
    Up(UpArgs),
    /// Stop every node gracefully (SIGTERM), killing those that do not exit in time
    Down(DownArgs),
    /// Crash a node (SIGKILL); `start` brings it back from its WAL
    Kill(NodeArgs),
    /// Stop a node gracefully (SIGTERM) and wait until it has exited
    Stop(StopArgs),
    /// Restart a stopped or killed node with its config and wait until it and the others see each other UP
    Start(StartArgs),
    /// Show each node's process, addresses, health, and the ring as the first serving node sees it
    Status,
    /// Add a node that joins the running cluster (balanced tokens, streams its ranges, then
    /// serves), and wait until every node sees it NORMAL and UP
    Add(AddArgs),
}

#[derive(Args)]
struct AddArgs {
    /// Its datacenter, e.g. dc1; the node is named dcD-nN after the DC's last node
    #[arg(long)]
    dc: String,
    /// Its rack [default: the DC's least used rack]
    #[arg(long)]
    rack: Option<String>,
    /// Replace this dead node (taking over its tokens) instead of joining with new ones
    #[arg(long, value_name = "NODE")]
    replace: Option<String>,
    /// How long joining (streaming included) may take
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    timeout: Duration,
    /// The kv-node binary [default: the one the cluster was started with]
    #[arg(long, value_name = "PATH", env = process::KV_NODE_ENV)]
    kv_node: Option<PathBuf>,
}

#[derive(Args)]
pub struct ShapeArgs {
    /// Datacenters, named dc1..dcN
    #[arg(long, default_value_t = 1)]
    pub dcs: usize,
    /// Nodes per datacenter, named dcD-n1..dcD-nM and listening on 127.0.D.1..127.0.D.M
    #[arg(long, default_value_t = 3)]
    pub nodes_per_dc: usize,
    /// Racks per datacenter, r1..rR; nodes are dealt to them in turn
    #[arg(long, default_value_t = 1)]
    pub racks: usize,
    /// Tokens per node: the balanced allocator keeps ownership even at 16, and fewer tokens
    /// keep gossip and ring walks small
    #[arg(long, default_value_t = DEFAULT_VNODES)]
    pub vnodes: usize,
    /// Client port of every node; internode is the next port, HTTP (health, metrics) the one after
    #[arg(long, default_value_t = DEFAULT_PORT_BASE)]
    pub port_base: u16,
    /// Simulated one-way latency between DCs, e.g. 40ms (written to each node's wan_latency_ms)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub wan_latency: Option<Duration>,
    /// The cluster's name, written to each node's cluster_name
    #[arg(long, default_value = "kv")]
    pub cluster_name: String,
    /// The kv-node binary [default: the one beside kvctl]
    #[arg(long, value_name = "PATH", env = process::KV_NODE_ENV)]
    pub kv_node: Option<PathBuf>,
    /// How long to wait for the cluster to form
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_READY_TIMEOUT, value_parser = parse_duration)]
    pub timeout: Duration,
    /// A node setting written into every node.toml, e.g. hints.enabled=false or
    /// repair.interval_ms=500; repeatable. Values are TOML (true, 500, "text"); anything else
    /// is taken as a string
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = layout::parse_setting)]
    pub set: Vec<(String, toml::Value)>,
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    shape: ShapeArgs,
}

#[derive(Args)]
struct DownArgs {
    /// How long each node may take to exit after SIGTERM before it is killed
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_STOP_TIMEOUT, value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
struct NodeArgs {
    /// The node, e.g. dc1-n2
    node: String,
}

#[derive(Args)]
struct StopArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// How long the node may take to exit
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_STOP_TIMEOUT, value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
struct StartArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// How long to wait until the node serves and the others see it UP
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_READY_TIMEOUT, value_parser = parse_duration)]
    timeout: Duration,
    /// The kv-node binary [default: the one the cluster was started with]
    #[arg(long, value_name = "PATH", env = process::KV_NODE_ENV)]
    kv_node: Option<PathBuf>,
}

pub fn run(args: LocalArgs, dir: Option<&Path>, output: Format) -> anyhow::Result<Outcome> {
    let Some(dir) = dir else {
        bail!("kvctl local needs --dir DIR: the cluster's directory");
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match args.command {
            LocalCommand::Up(a) => {
                let started = Instant::now();
                let cluster = up(dir, &a.shape).await?;
                match output {
                    Format::Json => println!("{}", serde_json::to_string_pretty(&cluster)?),
                    Format::Text => {
                        print!("{}", nodes_table(&cluster));
                        println!(
                            "{} nodes NORMAL and UP in {:.1}s; stop them with `kvctl --dir {} local down`",
                            cluster.nodes.len(),
                            started.elapsed().as_secs_f64(),
                            dir.display()
                        );
                    }
                }
            }
            LocalCommand::Down(a) => {
                let outcome = down(dir, a.timeout).await?;
                match output {
                    Format::Json => println!("{}", serde_json::to_string_pretty(&outcome)?),
                    Format::Text => println!("{}", outcome.text(a.timeout)),
                }
            }
            LocalCommand::Kill(a) => {
                let pid = kill(dir, &a.node).await?;
                report(output, &a.node, "killed", pid);
            }
            LocalCommand::Stop(a) => {
                let pid = stop(dir, &a.node.node, a.timeout).await?;
                report(output, &a.node.node, "stopped", pid);
            }
            LocalCommand::Start(a) => {
                let pid = start(dir, &a.node.node, a.kv_node.as_deref(), a.timeout).await?;
                report(output, &a.node.node, "started", Some(pid));
            }
            LocalCommand::Add(a) => {
                let node = add::add(dir, &a.dc, a.rack.as_deref(), a.replace.as_deref(), a.kv_node.as_deref(), a.timeout).await?;
                report(output, &node.id, "joined", node.pid);
            }
            LocalCommand::Status => {
                let status = status(dir).await?;
                match output {
                    Format::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                    Format::Text => print!("{}", status.text()),
                }
            }
        }
        Ok(Outcome::Done)
    })
}

fn report(output: Format, node: &str, action: &str, pid: Option<u32>) {
    match output {
        Format::Json => println!(
            "{}",
            serde_json::json!({ "node": node, "action": action, "pid": pid })
        ),
        Format::Text => match pid {
            Some(pid) => println!("{node}: {action} (pid {pid})"),
            None => println!("{node}: was not running"),
        },
    }
}

/// `40ms`, `2s`, `1m`, or a bare number of milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 40ms, 2s or 1m"))?;
    match unit.trim() {
        "" | "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" | "min" => Ok(Duration::from_secs(number * 60)),
        other => Err(format!(
            "unknown unit {other:?} in {text:?}: use ms, s or m"
        )),
    }
}

/// Lays out, configures and starts a new cluster in `dir`, and waits until it has formed.
/// Nodes that started stay up when it fails, so their logs and state can be inspected; the
/// error says how to stop them.
pub async fn up(dir: &Path, shape: &ShapeArgs) -> anyhow::Result<ClusterFile> {
    let kv_node = process::find_kv_node(shape.kv_node.as_deref())?;
    let spec = LocalSpec {
        cluster_name: shape.cluster_name.clone(),
        dcs: shape.dcs,
        nodes_per_dc: shape.nodes_per_dc,
        racks: shape.racks,
        vnodes: shape.vnodes,
        port_base: shape.port_base,
        wan_latency_ms: shape
            .wan_latency
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    let planned = layout::plan(&spec)?;
    let dir = prepare_dir(dir)?;
    process::check_ports_free(planned.iter().flat_map(|n| {
        n.listen_addresses()
            .map(|(role, addr)| (n.id.clone(), role, addr))
    }))?;
    let seeds = layout::seeds(&planned, spec.nodes_per_dc);
    let mut cluster = ClusterFile {
        cluster_name: spec.cluster_name.clone(),
        kv_node: kv_node.clone(),
        nodes: Vec::with_capacity(planned.len()),
    };
    for node in &planned {
        let entry = node.entry(&dir);
        fs::create_dir_all(entry.dir.join("data"))
            .with_context(|| format!("cannot create {}", entry.dir.display()))?;
        let config = layout::node_toml(&spec, node, &seeds, &entry.dir)?;
        let config = layout::with_settings(&config, &shape.set)?;
        fs::write(entry.config_path(), config)
            .with_context(|| format!("cannot write {}", entry.config_path().display()))?;
        cluster.nodes.push(entry);
    }
    // Saved before anything starts, so `down` finds whatever did start if kvctl dies midway.
    cluster.save(&dir)?;
    for i in 0..cluster.nodes.len() {
        match process::spawn(&kv_node, &cluster.nodes[i]) {
            Ok(pid) => cluster.nodes[i].pid = Some(pid),
            Err(e) => {
                for node in &cluster.nodes[..i] {
                    process::signal(node, Signal::Kill)?;
                }
                for node in &mut cluster.nodes {
                    node.pid = None;
                }
                cluster.save(&dir)?;
                return Err(e);
            }
        }
    }
    cluster.save(&dir)?;
    let all: Vec<&NodeEntry> = cluster.nodes.iter().collect();
    probe::wait_ready(&all, &all, shape.timeout)
        .await
        .with_context(|| {
            format!(
                "the cluster in {} did not form (its nodes keep running for inspection; \
                 `kvctl --dir {} local down` stops them)",
                dir.display(),
                dir.display()
            )
        })?;
    Ok(cluster)
}

/// Creates `dir` when needed and refuses one that holds a cluster or anything else, so a new
/// cluster never mixes with old data.
fn prepare_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    if ClusterFile::exists(&dir) {
        let cluster = ClusterFile::load(&dir)?;
        let running: Vec<String> = cluster
            .nodes
            .iter()
            .filter(|n| process::is_running(n))
            .map(|n| format!("{} (pid {})", n.id, n.pid.unwrap_or_default()))
            .collect();
        if running.is_empty() {
            bail!(
                "{} holds a stopped cluster: restart its nodes with `kvctl --dir {} local start NODE`, \
                 or remove the directory for a new cluster",
                dir.display(),
                dir.display()
            );
        }
        bail!(
            "{} has a running cluster ({}); stop it first with `kvctl --dir {} local down`",
            dir.display(),
            running.join(", "),
            dir.display()
        );
    }
    let mut entries =
        fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if entries.next().is_some() {
        bail!(
            "{} is not empty; choose a new or empty directory for the cluster",
            dir.display()
        );
    }
    Ok(dir)
}

#[derive(Serialize)]
pub struct DownOutcome {
    /// Exited after SIGTERM.
    pub stopped: Vec<String>,
    /// Killed after the timeout.
    pub killed: Vec<String>,
    /// Still there even after SIGKILL (e.g. stuck in the kernel).
    pub remaining: Vec<String>,
}

impl DownOutcome {
    fn text(&self, timeout: Duration) -> String {
        let mut lines = Vec::new();
        if self.stopped.is_empty() && self.killed.is_empty() && self.remaining.is_empty() {
            lines.push("no node was running".to_owned());
        }
        if !self.stopped.is_empty() {
            lines.push(format!("stopped: {}", self.stopped.join(", ")));
        }
        if !self.killed.is_empty() {
            lines.push(format!(
                "killed after {}s without exiting: {}",
                timeout.as_secs(),
                self.killed.join(", ")
            ));
        }
        if !self.remaining.is_empty() {
            lines.push(format!(
                "still running after SIGKILL: {}",
                self.remaining.join(", ")
            ));
        }
        lines.join("\n")
    }
}

/// SIGTERM to every running node, SIGKILL to those still there after `timeout`.
pub async fn down(dir: &Path, timeout: Duration) -> anyhow::Result<DownOutcome> {
    let cluster = ClusterFile::load(dir)?;
    let running: Vec<&NodeEntry> = cluster
        .nodes
        .iter()
        .filter(|n| process::is_running(n))
        .collect();
    for node in &running {
        process::signal(node, Signal::Term)?;
    }
    let stragglers = process::wait_exited(&running, timeout).await;
    for node in &stragglers {
        process::signal(node, Signal::Kill)?;
    }
    let remaining = process::wait_exited(&stragglers, KILL_WAIT).await;
    let ids = |nodes: &[&NodeEntry]| nodes.iter().map(|n| n.id.clone()).collect::<Vec<_>>();
    let outcome = DownOutcome {
        stopped: running
            .iter()
            .filter(|n| !stragglers.iter().any(|s| s.id == n.id))
            .map(|n| n.id.clone())
            .collect(),
        killed: stragglers
            .iter()
            .filter(|n| !remaining.iter().any(|s| s.id == n.id))
            .map(|n| n.id.clone())
            .collect(),
        remaining: ids(&remaining),
    };
    let gone: Vec<String> = running
        .iter()
        .filter(|n| !remaining.iter().any(|s| s.id == n.id))
        .map(|n| n.id.clone())
        .collect();
    ClusterFile::update(dir, |c| {
        for node in c.nodes.iter_mut().filter(|n| gone.contains(&n.id)) {
            node.pid = None;
        }
    })?;
    if !outcome.remaining.is_empty() {
        bail!(
            "{} still running after SIGKILL",
            outcome.remaining.join(", ")
        );
    }
    Ok(outcome)
}

/// SIGKILL: a crash. Returns the pid killed, None when the node was not running.
pub async fn kill(dir: &Path, id: &str) -> anyhow::Result<Option<u32>> {
    signal_and_wait(dir, id, Signal::Kill, KILL_WAIT).await
}

/// SIGTERM, and wait until the node has exited.
pub async fn stop(dir: &Path, id: &str, timeout: Duration) -> anyhow::Result<Option<u32>> {
    signal_and_wait(dir, id, Signal::Term, timeout).await
}

async fn signal_and_wait(
    dir: &Path,
    id: &str,
    signal: Signal,
    timeout: Duration,
) -> anyhow::Result<Option<u32>> {
    let cluster = ClusterFile::load(dir)?;
    let node = cluster.node(id)?;
    if !process::is_running(node) {
        return Ok(None);
    }
    process::signal(node, signal)?;
    if !process::wait_exited(&[node], timeout).await.is_empty() {
        bail!(
            "{id} (pid {}) still runs {}s after {signal:?}; see {}{}",
            node.pid.unwrap_or_default(),
            timeout.as_secs(),
            node.log_path().display(),
            if signal == Signal::Term {
                format!(
                    "; `kvctl local kill {id} --dir {}` crashes it",
                    dir.display()
                )
            } else {
                String::new()
            }
        );
    }
    let pid = node.pid;
    ClusterFile::update(dir, |c| {
        if let Ok(node) = c.node_mut(id) {
            node.pid = None;
        }
    })?;
    Ok(pid)
}

/// Restarts a node with its config, and waits until it serves and it and every running node
/// see each other UP.
pub async fn start(
    dir: &Path,
    id: &str,
    kv_node: Option<&Path>,
    timeout: Duration,
) -> anyhow::Result<u32> {
    let cluster = ClusterFile::load(dir)?;
    let node = cluster.node(id)?;
    if process::is_running(node) {
        bail!(
            "{id} is already running (pid {})",
            node.pid.unwrap_or_default()
        );
    }
    let kv_node = process::find_kv_node(Some(kv_node.unwrap_or(&cluster.kv_node)))?;
    let addresses = [
        ("client", &node.client_address),
        ("internode", &node.internode_address),
        ("http", &node.http_address),
    ];
    let mut parsed = Vec::with_capacity(addresses.len());
    for (role, address) in addresses {
        let addr = address
            .parse()
            .with_context(|| format!("{id}'s {role} address {address:?} in cluster.json"))?;
        parsed.push((id.to_owned(), role, addr));
    }
    process::check_ports_free(parsed)?;
    let pid = process::spawn(&kv_node, node)?;
    ClusterFile::update(dir, |c| {
        if let Ok(node) = c.node_mut(id) {
            node.pid = Some(pid);
        }
    })?;
    // The restarted node must also have heard of the others again: until it has, it may not
    // know every DC its keyspaces name, and refuses requests.
    let cluster = ClusterFile::load(dir)?;
    let running: Vec<&NodeEntry> = cluster
        .nodes
        .iter()
        .filter(|n| process::is_running(n))
        .collect();
    probe::wait_ready(&running, &running, timeout).await?;
    Ok(pid)
}

#[derive(Serialize)]
pub struct Status {
    pub cluster_name: String,
    /// The node whose view of the ring gave `state` and `liveness`; none when none serves.
    pub observer: Option<String>,
    pub nodes: Vec<NodeStatus>,
}

#[derive(Serialize)]
pub struct NodeStatus {
    pub id: String,
    pub dc: String,
    pub rack: String,
    pub pid: Option<u32>,
    pub running: bool,
    /// "ok", or why /health did not answer 200.
    pub health: String,
    /// As the observer sees it, e.g. NORMAL; None when no node could tell.
    pub state: Option<String>,
    /// UP or DOWN as the observer's failure detector sees it.
    pub liveness: Option<String>,
    pub client_address: String,
    pub internode_address: String,
    pub http_address: String,
    pub log: PathBuf,
}

pub async fn status(dir: &Path) -> anyhow::Result<Status> {
    let cluster = ClusterFile::load(dir)?;
    let mut nodes = Vec::with_capacity(cluster.nodes.len());
    let mut ring = None;
    for node in &cluster.nodes {
        let running = process::is_running(node);
        let health = if running {
            match probe::health(&node.http_address).await {
                Ok(()) => "ok".to_owned(),
                Err(why) => why,
            }
        } else {
            "not running".to_owned()
        };
        if ring.is_none() && health == "ok" {
            if let Ok(r) = probe::describe_ring(&node.client_address).await {
                ring = Some((node.id.clone(), r));
            }
        }
        nodes.push(NodeStatus {
            id: node.id.clone(),
            dc: node.dc.clone(),
            rack: node.rack.clone(),
            pid: node.pid.filter(|_| running),
            running,
            health,
            state: None,
            liveness: None,
            client_address: node.client_address.clone(),
            internode_address: node.internode_address.clone(),
            http_address: node.http_address.clone(),
            log: node.log_path(),
        });
    }
    if let Some((_, ring)) = &ring {
        for status in &mut nodes {
            if let Some(seen) = ring.nodes.iter().find(|n| n.id == status.id) {
                status.state = Some(state_name(seen.state()));
                status.liveness = Some(liveness_name(seen.liveness()));
            }
        }
    }
    Ok(Status {
        cluster_name: cluster.cluster_name,
        observer: ring.map(|(id, _)| id),
        nodes,
    })
}

impl Status {
    pub fn text(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .nodes
            .iter()
            .map(|n| {
                vec![
                    n.id.clone(),
                    n.dc.clone(),
                    n.rack.clone(),
                    n.pid.map_or("-".to_owned(), |p| p.to_string()),
                    n.health.clone(),
                    n.state.clone().unwrap_or_else(|| "?".to_owned()),
                    n.liveness.clone().unwrap_or_else(|| "?".to_owned()),
                    n.client_address.clone(),
                    n.http_address.clone(),
                ]
            })
            .collect();
        let mut text = table(
            &[
                "node", "dc", "rack", "pid", "health", "state", "liveness", "client", "http",
            ],
            &rows,
        );
        match &self.observer {
            Some(id) => text.push_str(&format!("state and liveness as {id} sees them\n")),
            None => text.push_str("no node serves: state and liveness unknown\n"),
        }
        text
    }
}

/// Names without the protobuf prefix, as people say them: NORMAL, UP.
pub fn state_name(state: NodeState) -> String {
    state
        .as_str_name()
        .trim_start_matches("NODE_STATE_")
        .to_owned()
}

pub fn liveness_name(liveness: Liveness) -> String {
    liveness
        .as_str_name()
        .trim_start_matches("LIVENESS_")
        .to_owned()
}

fn nodes_table(cluster: &ClusterFile) -> String {
    let rows: Vec<Vec<String>> = cluster
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.clone(),
                n.dc.clone(),
                n.rack.clone(),
                n.pid.map_or("-".to_owned(), |p| p.to_string()),
                n.client_address.clone(),
                n.internode_address.clone(),
                n.http_address.clone(),
            ]
        })
        .collect();
    table(
        &["node", "dc", "rack", "pid", "client", "internode", "http"],
        &rows,
    )
}

/// Left-aligned columns separated by two spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut text = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_ms_s_and_m() {
        assert_eq!(parse_duration("40ms"), Ok(Duration::from_millis(40)));
        assert_eq!(parse_duration("40"), Ok(Duration::from_millis(40)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("4h").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["node", "dc"],
            &[
                vec!["dc1-n1".into(), "dc1".into()],
                vec!["x".into(), "dc22".into()],
            ],
        );
        assert_eq!(text, "node    dc\ndc1-n1  dc1\nx       dc22\n");
    }
}
