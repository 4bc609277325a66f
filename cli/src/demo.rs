//! `kvctl demo`: a 3-DC local cluster with simulated WAN latency, a short workload at three
//! consistency levels so their cost across DCs shows, and the cluster left running until Ctrl-C.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use client::pb::v1::key_value_client::KeyValueClient;
use client::pb::v1::{
    ConsistencyLevel, CreateKeyspaceRequest, GetRequest, Keyspace, ListKeyspacesRequest, PutRequest,
};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::local::{self, layout::DEFAULT_VNODES, parse_duration, probe, table, ShapeArgs};
use crate::Outcome;

const KEYSPACE: &str = "demo";
const DCS: usize = 3;
const NODES_PER_DC: usize = 3;
const REPLICAS_PER_DC: u32 = 3;
const VALUE_BYTES: usize = 100;
/// Schema spreads by gossip; a few rounds at most on one machine.
const SCHEMA_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longer than the node's own coordinator timeouts, so the node's answer is what we report.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

const LEVELS: [(ConsistencyLevel, &str); 3] = [
    (
        ConsistencyLevel::LocalQuorum,
        "2 of dc1's 3 replicas: never leaves dc1",
    ),
    (
        ConsistencyLevel::EachQuorum,
        "2 of 3 replicas in every DC: one WAN round trip",
    ),
    (
        ConsistencyLevel::Quorum,
        "5 of all 9 replicas: at least 2 outside dc1, one WAN round trip",
    ),
];

#[derive(Args)]
pub struct DemoArgs {
    /// Simulated one-way latency between DCs
    #[arg(long, value_name = "DURATION", default_value = "40ms", value_parser = parse_duration)]
    wan_latency: Duration,
    /// Keep the temporary directory (configs, logs, data) at exit
    #[arg(long)]
    keep: bool,
    /// Puts, and as many gets, per consistency level
    #[arg(long, default_value_t = 200)]
    ops: usize,
    /// Requests in flight at once
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Client port of every node; internode and HTTP take the next two
    #[arg(long, default_value_t = local::layout::DEFAULT_PORT_BASE)]
    port_base: u16,
    /// The kv-node binary [default: the one beside kvctl]
    #[arg(long, value_name = "PATH", env = local::process::KV_NODE_ENV)]
    kv_node: Option<PathBuf>,
    /// How long to wait for the cluster to form
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
    /// Stop the cluster right after the workload instead of waiting for Ctrl-C (for scripts)
    #[arg(long)]
    exit_after_workload: bool,
}

/// `dir` is kvctl's global `--dir`: the cluster's directory, kept at exit; without it a
/// temporary directory is used and removed at exit.
pub fn run(args: DemoArgs, dir: Option<&Path>) -> anyhow::Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(demo(args, dir))?;
    Ok(Outcome::Done)
}

async fn demo(args: DemoArgs, dir: Option<&Path>) -> anyhow::Result<()> {
    let (dir, temp) = match dir {
        Some(dir) => (dir.to_owned(), None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("kv-demo.")
                .tempdir()
                .context("cannot create a temporary directory")?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    let shape = ShapeArgs {
        dcs: DCS,
        nodes_per_dc: NODES_PER_DC,
        racks: NODES_PER_DC,
        vnodes: DEFAULT_VNODES,
        port_base: args.port_base,
        wan_latency: Some(args.wan_latency),
        cluster_name: "demo".to_owned(),
        kv_node: args.kv_node.clone(),
        timeout: args.timeout,
        set: Vec::new(),
    };
    // From here the guard owns the temporary directory, so that on a panic it stops the nodes
    // before the directory goes.
    let mut guard = StopOnDrop {
        dir: dir.clone(),
        temp,
        armed: true,
    };
    let outcome = tokio::select! {
        outcome = show(&dir, &shape, &args) => outcome,
        signal = interrupted() => signal.and(Err(anyhow!("interrupted"))),
    };
    if outcome.is_ok() && !args.exit_after_workload {
        println!("\nThe cluster runs until Ctrl-C.");
        interrupted().await?;
    }
    let stopped = stop_cluster(&dir).await;
    guard.armed = false;
    let keep = outcome.is_err() || stopped.is_err() || args.keep;
    match guard.temp.take() {
        Some(temp) if keep => {
            let kept = temp.keep();
            println!("kept {} (configs, logs, data)", kept.display());
        }
        Some(temp) => {
            temp.close()
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        None => {}
    }
    outcome.and(stopped)
}

/// Sends SIGTERM to every node if the demo unwinds before stopping them, e.g. when printing
/// to a closed pipe panics: nodes run in their own process group and would outlive kvctl. It
/// signals before the temporary directory (a field, so dropped after) is removed, and does not
/// wait.
struct StopOnDrop {
    dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    armed: bool,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(cluster) = local::state::ClusterFile::load(&self.dir) {
            for node in &cluster.nodes {
                let _ = local::process::signal(node, local::process::Signal::Term);
            }
        }
    }
}

/// Ctrl-C, or SIGTERM from whoever runs the demo.
async fn interrupted() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot watch for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}

async fn stop_cluster(dir: &Path) -> anyhow::Result<()> {
    if !local::state::ClusterFile::exists(dir) {
        return Ok(());
    }
    println!("stopping the cluster...");
    let outcome = local::down(dir, STOP_TIMEOUT).await?;
    if !outcome.killed.is_empty() {
        println!(
            "killed after {}s without exiting: {}",
            STOP_TIMEOUT.as_secs(),
            outcome.killed.join(", ")
        );
    }
    Ok(())
}

async fn show(dir: &Path, shape: &ShapeArgs, args: &DemoArgs) -> anyhow::Result<()> {
    println!(
        "Starting {} nodes ({DCS} DCs x {NODES_PER_DC} nodes, one per rack) in {}, {} ms between DCs...",
        DCS * NODES_PER_DC,
        dir.display(),
        args.wan_latency.as_millis()
    );
    let started = Instant::now();
    let cluster = local::up(dir, shape).await?;
    println!(
        "All nodes NORMAL and UP in {:.1}s.\n",
        started.elapsed().as_secs_f64()
    );
    let coordinator = cluster.node("dc1-n1")?;
    let mut client = probe::connect(&coordinator.client_address).await?;
    create_keyspace(&mut client, &cluster).await?;
    println!(
        "Keyspace {KEYSPACE} (dc1:3, dc2:3, dc3:3). {} puts then {} gets per level, {} at a time, \
         all coordinated by dc1-n1:\n",
        args.ops, args.ops, args.concurrency
    );
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (level, meaning) in LEVELS {
        let name = level.as_str_name().trim_start_matches("CONSISTENCY_LEVEL_");
        for op in [Op::Put, Op::Get] {
            let result = run_ops(&client, level, op, args.ops, args.concurrency).await;
            if let Some(first) = &result.first_error {
                failures.push(format!("{name} {}: {first}", op.name()));
            }
            rows.push(vec![
                name.to_owned(),
                op.name().to_owned(),
                result.ok.to_string(),
                result.errors.to_string(),
                ms(result.latency.value_at_quantile(0.5)),
                ms(result.latency.value_at_quantile(0.99)),
                if op == Op::Put {
                    meaning.to_owned()
                } else {
                    String::new()
                },
            ]);
        }
    }
    print!(
        "{}",
        table(
            &[
                "level",
                "op",
                "ok",
                "errors",
                "p50 ms",
                "p99 ms",
                "waits for"
            ],
            &rows
        )
    );
    for failure in &failures {
        println!("  first error: {failure}");
    }
    let status = local::status(dir).await?;
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.clone(),
                n.dc.clone(),
                n.rack.clone(),
                n.state.clone().unwrap_or_else(|| "?".to_owned()),
                n.liveness.clone().unwrap_or_else(|| "?".to_owned()),
            ]
        })
        .collect();
    println!(
        "\nThe ring as {} sees it:",
        status.observer.as_deref().unwrap_or("no node")
    );
    print!(
        "{}",
        table(&["node", "dc", "rack", "state", "liveness"], &rows)
    );
    print_usage(dir);
    if !failures.is_empty() {
        bail!("{} of the workload's steps had errors", failures.len());
    }
    Ok(())
}

fn print_usage(dir: &Path) {
    let kvctl = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "kvctl".to_owned());
    let dir = dir.display();
    println!("\nTry, from another terminal:");
    println!("  {kvctl} --dir {dir} get -k {KEYSPACE} local_quorum-1");
    println!("  {kvctl} --dir {dir} put -k {KEYSPACE} hello world --cl EACH_QUORUM");
    println!("  {kvctl} --dir {dir} status");
    println!("  {kvctl} --dir {dir} local kill dc2-n1     # crash a node...");
    println!("  {kvctl} --dir {dir} local start dc2-n1    # ...and bring it back");
    println!("Each node's config and log: {dir}/<node>/node.toml, node.log");
}

async fn create_keyspace(
    client: &mut KeyValueClient<Channel>,
    cluster: &local::state::ClusterFile,
) -> anyhow::Result<()> {
    let replication: BTreeMap<String, u32> = (1..=DCS)
        .map(|d| (local::layout::dc_name(d), REPLICAS_PER_DC))
        .collect();
    client
        .create_keyspace(CreateKeyspaceRequest {
            keyspace: Some(Keyspace {
                name: KEYSPACE.to_owned(),
                replication,
                schema_version: 0,
            }),
            if_not_exists: true,
        })
        .await
        .context("CreateKeyspace failed")?;
    // Replicas refuse writes for a keyspace they have not heard of yet.
    let deadline = Instant::now() + SCHEMA_TIMEOUT;
    for node in &cluster.nodes {
        loop {
            let mut client = probe::connect(&node.client_address).await?;
            let listed = client
                .list_keyspaces(ListKeyspacesRequest {})
                .await
                .map(|r| r.into_inner().keyspaces.iter().any(|k| k.name == KEYSPACE))
                .unwrap_or(false);
            if listed {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "keyspace {KEYSPACE} did not reach {} within {}s; see {}",
                    node.id,
                    SCHEMA_TIMEOUT.as_secs(),
                    node.log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
        }
    }
}

struct OpsResult {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    /// Microseconds, successful requests only.
    latency: Histogram<u64>,
}

fn key(level: ConsistencyLevel, i: usize) -> String {
    let level = level
        .as_str_name()
        .trim_start_matches("CONSISTENCY_LEVEL_")
        .to_lowercase();
    format!("{level}-{i}")
}

fn value(i: usize) -> Vec<u8> {
    let mut value = format!("value {i} ").into_bytes();
    value.resize(VALUE_BYTES, b'.');
    value
}

/// `ops` requests from `concurrency` workers that take the next index in turn; gets read back
/// the keys the puts of the same level wrote and count a wrong or missing value as an error.
async fn run_ops(
    client: &KeyValueClient<Channel>,
    level: ConsistencyLevel,
    op: Op,
    ops: usize,
    concurrency: usize,
) -> OpsResult {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let mut client = client.clone();
        let next = Arc::clone(&next);
        workers.spawn(async move {
            let mut result = OpsResult {
                ok: 0,
                errors: 0,
                first_error: None,
                latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    return result;
                }
                let started = Instant::now();
                let outcome = tokio::time::timeout(REQUEST_TIMEOUT, one(&mut client, level, op, i))
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!("no answer in {}s", REQUEST_TIMEOUT.as_secs()))
                    });
                match outcome {
                    Ok(()) => {
                        result.ok += 1;
                        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                        result.latency.saturating_record(us);
                    }
                    Err(e) => {
                        result.errors += 1;
                        result.first_error.get_or_insert(e);
                    }
                }
            }
        });
    }
    let mut total = OpsResult {
        ok: 0,
        errors: 0,
        first_error: None,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
    };
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(part) => {
                total.ok += part.ok;
                total.errors += part.errors;
                total.first_error = total.first_error.or(part.first_error);
                total
                    .latency
                    .add(&part.latency)
                    .expect("histograms share their bounds");
            }
            Err(e) => {
                total.errors += 1;
                total
                    .first_error
                    .get_or_insert(format!("worker failed: {e}"));
            }
        }
    }
    total
}

async fn one(
    client: &mut KeyValueClient<Channel>,
    level: ConsistencyLevel,
    op: Op,
    i: usize,
) -> Result<(), String> {
    let key = key(level, i);
    match op {
        Op::Put => client
            .put(PutRequest {
                keyspace: KEYSPACE.to_owned(),
                consistency: level as i32,
                key: key.clone().into_bytes().into(),
                value: value(i).into(),
                timestamp: None,
                ttl_ms: None,
            })
            .await
            .map(drop)
            .map_err(|s| format!("put {key}: {}: {}", s.code(), s.message())),
        Op::Get => {
            let response = client
                .get(GetRequest {
                    keyspace: KEYSPACE.to_owned(),
                    consistency: level as i32,
                    key: key.clone().into_bytes().into(),
                })
                .await
                .map_err(|s| format!("get {key}: {}: {}", s.code(), s.message()))?;
            match response.into_inner().value {
                Some(read) if read.value.as_ref() == value(i).as_slice() => Ok(()),
                Some(_) => Err(format!("get {key}: read back a different value")),
                None => Err(format!("get {key}: read back nothing")),
            }
        }
    }
}

/// Microseconds as milliseconds with two decimals; "-" when nothing succeeded.
fn ms(us: u64) -> String {
    if us == 0 {
        "-".to_owned()
    } else {
        format!("{:.2}", us as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_level_and_values_have_a_fixed_size() {
        assert_eq!(key(ConsistencyLevel::EachQuorum, 7), "each_quorum-7");
        assert_eq!(value(3).len(), VALUE_BYTES);
        assert!(value(3).starts_with(b"value 3 "));
    }
}
