//! `kvctl bench`: a YCSB load generator (core workloads A-F) driving this store through the SDK,
//! or Redis Cluster and etcd with the `bench-peers` feature, closed or open loop, with HDR
//! latency histograms per operation.

#[cfg(feature = "bench-peers")]
mod peers;
mod stats;
mod store;
mod workload;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::builder::RangedU64ValueParser;
use clap::{Args, ValueEnum};
use client::pb::v1::ConsistencyLevel;
use client::{Client, ClientError, KvError};
use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::distributions::Alphanumeric;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use self::stats::{PhaseReport, Recorder};
use self::store::{Store, StoreKind};
use self::workload::{
    key_name, scan_length, Distribution, InsertCounter, KeyChooser, OpKind, Workload,
};
use crate::connect::Target;
use crate::data::parse_level;
use crate::output::{print_json, Format};
use crate::Outcome;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    /// Insert records 0..N
    Load,
    /// The workload's mix over loaded records
    Run,
    /// Load, then run
    Both,
}

#[derive(Args)]
pub struct BenchArgs {
    /// YCSB core workload
    #[arg(long, value_enum, default_value_t = Workload::A)]
    workload: Workload,
    /// Key distribution; the workload's own when absent (latest for D, zipfian otherwise)
    #[arg(long, value_enum)]
    distribution: Option<Distribution>,
    /// Records the load phase inserts and the run phase reads
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Operations of the run phase
    #[arg(long, default_value_t = 100_000)]
    ops: u64,
    /// Bytes per value
    #[arg(long, default_value_t = 1000)]
    value_size: usize,
    /// Consistency level of every operation (ours only)
    #[arg(long, value_name = "LEVEL", default_value = "LOCAL_QUORUM", value_parser = parse_level)]
    cl: ConsistencyLevel,
    /// Tasks issuing operations
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Operations each task keeps outstanding
    #[arg(long, default_value_t = 32)]
    inflight: usize,
    /// Worker threads of the generator's async runtime. One keeps up with 125k ops/s on the
    /// 2-core development machine and spends less per operation than two, which wake each
    /// other; raise it on a client machine of its own when kvctl uses a whole core
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    runtime_threads: usize,
    /// Open loop: operations per second in all, each timed from when it was due, not from when
    /// it could be sent
    #[arg(long, value_name = "OPS/S")]
    rate: Option<f64>,
    /// Keyspace (ours only), created when missing
    #[arg(long, short = 'k', default_value = "ycsb")]
    keyspace: String,
    /// Replication of a keyspace this creates; default RF 3 (or the DC's node count if
    /// smaller) in every DC of the ring
    #[arg(long, value_name = "DC:RF,...", value_parser = crate::admin::parse_replication)]
    replication: Option<BTreeMap<String, u32>>,
    #[arg(long, value_enum, default_value_t = Phase::Both)]
    phase: Phase,
    /// The store to drive; redis and etcd need kvctl built with the bench-peers feature and
    /// default to what `bench/peers.sh up` starts
    #[arg(long = "target", value_enum, default_value_t = StoreKind::Kv)]
    store: StoreKind,
    /// One unary call per operation instead of the SDK's pipeline sessions (ours only), to
    /// compare the two
    #[arg(long, env = "KV_BENCH_NO_PIPELINING")]
    no_pipelining: bool,
    /// Pipeline sessions as gRPC streams instead of framed connections (ours only), to compare
    /// the two
    #[arg(long, env = "KV_BENCH_GRPC_SESSIONS")]
    grpc_sessions: bool,
}

/// The replication factor a keyspace created here gets in each DC.
const DEFAULT_RF: u32 = 3;
/// How long every node may take to learn a keyspace this created.
const SCHEMA_TIMEOUT: Duration = Duration::from_secs(30);
/// Values are cut from this much random text, so making one costs no copy.
const VALUE_POOL_BYTES: usize = 1 << 20;

pub fn run(args: BenchArgs, target: &Target, format: Format) -> anyhow::Result<Outcome> {
    if args.threads == 0 || args.inflight == 0 {
        bail!("--threads and --inflight must be at least 1");
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number of operations per second");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.runtime_threads)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let phases = runtime.block_on(run_phases(&args, target))?;
    match format {
        Format::Text => {
            for phase in &phases {
                print!("{}", phase.text());
            }
        }
        Format::Json => print_json(&json!({
            "target": args.store.name(),
            "workload": format!("{:?}", args.workload).to_lowercase(),
            "distribution": format!("{:?}", distribution(&args)).to_lowercase(),
            "records": args.records,
            "ops": args.ops,
            "value_size": args.value_size,
            "consistency": args.cl.to_string(),
            "threads": args.threads,
            "inflight": args.inflight,
            "runtime_threads": args.runtime_threads,
            "rate": args.rate,
            "pipelining": !args.no_pipelining,
            "framed_sessions": !args.grpc_sessions,
            "phases": phases,
        })),
    }
    Ok(Outcome::Done)
}

fn distribution(args: &BenchArgs) -> Distribution {
    args.distribution
        .unwrap_or_else(|| args.workload.default_distribution())
}

async fn run_phases(args: &BenchArgs, target: &Target) -> anyhow::Result<Vec<PhaseReport>> {
    let store = Arc::new(connect(args, target).await?);
    if args.store == StoreKind::Redis && args.workload == Workload::E {
        bail!("workload E scans in key order, which Redis Cluster cannot do");
    }
    let mut rng = SmallRng::from_entropy();
    let pool: Vec<u8> = (&mut rng)
        .sample_iter(Alphanumeric)
        .take(VALUE_POOL_BYTES + args.value_size)
        .collect();
    let expected_inserts = (args.ops as f64 * args.workload.insert_share()) as u64;
    let shared = Shared {
        store,
        workload: args.workload,
        chooser: KeyChooser::new(distribution(args), args.records, expected_inserts),
        inserts: InsertCounter::new(args.records),
        values: Bytes::from(pool),
        value_size: args.value_size,
    };
    let shared = Arc::new(shared);
    let mut reports = Vec::new();
    if matches!(args.phase, Phase::Load | Phase::Both) {
        reports.push(phase(args, &shared, Mode::Load, args.records).await);
    }
    if matches!(args.phase, Phase::Run | Phase::Both) {
        reports.push(phase(args, &shared, Mode::Run, args.ops).await);
    }
    Ok(reports)
}

async fn connect(args: &BenchArgs, target: &Target) -> anyhow::Result<Store> {
    match args.store {
        StoreKind::Kv => {
            let client = target
                .connect_with(|options| {
                    options.pipelining = !args.no_pipelining;
                    options.framed_sessions = !args.grpc_sessions;
                })
                .await?;
            prepare_keyspace(&client, &args.keyspace, args.replication.clone()).await?;
            Ok(Store::Kv {
                client,
                keyspace: args.keyspace.clone(),
                consistency: args.cl,
            })
        }
        #[cfg(feature = "bench-peers")]
        StoreKind::Redis => {
            let endpoints = target.endpoints_or(peers::REDIS_ENDPOINTS);
            Ok(Store::Redis(Box::new(
                peers::Redis::connect(&endpoints).await?,
            )))
        }
        #[cfg(feature = "bench-peers")]
        StoreKind::Etcd => {
            let endpoints = target.endpoints_or(peers::ETCD_ENDPOINTS);
            Ok(Store::Etcd(Box::new(
                peers::Etcd::connect(&endpoints).await?,
            )))
        }
        #[cfg(not(feature = "bench-peers"))]
        StoreKind::Redis | StoreKind::Etcd => bail!(
            "--target {} needs kvctl built with the bench-peers feature \
             (cargo build --release -p cli --features bench-peers)",
            args.store.name()
        ),
    }
}

/// Creates the keyspace when missing and waits until the nodes know it, since a replica refuses
/// writes for a keyspace it has not heard of yet.
async fn prepare_keyspace(
    client: &Client,
    name: &str,
    replication: Option<BTreeMap<String, u32>>,
) -> anyhow::Result<()> {
    match client.describe_keyspace(name).await {
        Ok(_) => return Ok(()),
        Err(ClientError::Kv(KvError::KeyspaceNotFound(_))) => {}
        Err(e) => return Err(e).context("cannot look up the keyspace"),
    }
    let ring = client.describe_ring().await?;
    let replication = match replication {
        Some(r) => r,
        None => {
            let mut per_dc: BTreeMap<String, u32> = BTreeMap::new();
            for node in &ring.nodes {
                *per_dc.entry(node.dc.clone()).or_default() += 1;
            }
            per_dc
                .into_iter()
                .map(|(dc, n)| (dc, n.min(DEFAULT_RF)))
                .collect()
        }
    };
    client
        .create_keyspace(name, replication, true)
        .await
        .context("cannot create the keyspace")?;
    // Requests without a key rotate over the nodes, so this many answers in a row that know
    // the keyspace means every node does.
    let needed = 2 * ring.nodes.len().max(1);
    let deadline = Instant::now() + SCHEMA_TIMEOUT;
    let mut in_a_row = 0;
    while in_a_row < needed {
        match client.describe_keyspace(name).await {
            Ok(_) => in_a_row += 1,
            Err(ClientError::Kv(KvError::KeyspaceNotFound(_))) => in_a_row = 0,
            Err(e) => return Err(e).context("cannot look up the keyspace"),
        }
        if Instant::now() > deadline {
            bail!(
                "the nodes did not all learn keyspace {name} within {}s",
                SCHEMA_TIMEOUT.as_secs()
            );
        }
        if in_a_row == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// What every task of a benchmark shares.
struct Shared {
    store: Arc<Store>,
    workload: Workload,
    /// Cloned by each task, which then draws on its own.
    chooser: KeyChooser,
    inserts: InsertCounter,
    values: Bytes,
    value_size: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Load,
    Run,
}

/// What one phase's tasks share.
struct PhaseState {
    shared: Arc<Shared>,
    mode: Mode,
    total: u64,
    inflight: usize,
    /// Open loop: operation `i` is due at `start + i / rate`.
    rate: Option<f64>,
    start: Instant,
    claimed: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    /// Slowest operation since the last progress line, in µs: a stall shows the second it
    /// happens, not only in the final percentiles.
    slowest_us: AtomicU64,
}

/// One operation, decided before it is sent.
enum Op {
    Read(String),
    Write {
        kind: OpKind,
        key: String,
        value: Bytes,
        /// A run-phase insert: once stored, reads may choose its record.
        insert: bool,
    },
    Scan(String, u32),
    Rmw(String, Bytes),
}

impl Op {
    fn kind(&self) -> OpKind {
        match self {
            Op::Read(_) => OpKind::Read,
            Op::Write { kind, .. } => *kind,
            Op::Scan(..) => OpKind::Scan,
            Op::Rmw(..) => OpKind::Rmw,
        }
    }
}

async fn phase(args: &BenchArgs, shared: &Arc<Shared>, mode: Mode, total: u64) -> PhaseReport {
    let name = match mode {
        Mode::Load => "load",
        Mode::Run => "run",
    };
    let state = Arc::new(PhaseState {
        shared: shared.clone(),
        mode,
        total,
        inflight: args.inflight,
        rate: args.rate,
        start: Instant::now(),
        claimed: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        slowest_us: AtomicU64::new(0),
    });
    let progress = tokio::spawn(progress(state.clone(), name));
    let tasks: Vec<_> = (0..args.threads)
        .map(|_| tokio::spawn(task(state.clone())))
        .collect();
    let mut recorder = Recorder::default();
    for t in tasks {
        recorder.merge(t.await.expect("a benchmark task does not panic"));
    }
    let elapsed = state.start.elapsed();
    progress.abort();
    recorder.report(name, elapsed)
}

/// A line a second on stderr, so a long run shows it is alive and how fast it goes.
async fn progress(state: Arc<PhaseState>, name: &'static str) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0;
    loop {
        tick.tick().await;
        let done = state.done.load(Ordering::Relaxed);
        eprintln!(
            "[{name}] {:>4.0}s {done:>10} ops {:>8} ops/s, {} errors, slowest {:.1} ms",
            state.start.elapsed().as_secs_f64(),
            done - last,
            state.failed.load(Ordering::Relaxed),
            state.slowest_us.swap(0, Ordering::Relaxed) as f64 / 1000.0,
        );
        last = done;
    }
}

/// Keeps up to `inflight` operations outstanding until the phase's operations are all claimed,
/// then waits for its last ones. Open loop, an operation starts when it is due, or as soon after
/// as a slot is free; either way its latency counts from when it was due.
async fn task(state: Arc<PhaseState>) -> Recorder {
    let mut rng = SmallRng::from_entropy();
    let mut chooser = state.shared.chooser.clone();
    let mut recorder = Recorder::default();
    let mut pending = FuturesUnordered::new();
    // Claimed but not yet due. One timer per task instead of one per operation: sleeping
    // operations each woken by their own timer made the generator cost 35 µs per operation.
    // The timer is reset only when the deadline it waits for changes; a new one per loop was a
    // timer-wheel insert and removal per finished operation.
    let mut waiting: Option<(u64, Instant)> = None;
    let timer = tokio::time::sleep_until(state.start.into());
    tokio::pin!(timer);
    loop {
        while pending.len() < state.inflight {
            let (i, due) = match waiting.take() {
                Some((i, due)) => (i, Some(due)),
                None => match claim(&state) {
                    Some(claimed) => claimed,
                    None => break,
                },
            };
            if let Some(due) = due.filter(|&due| due > Instant::now()) {
                waiting = Some((i, due));
                break;
            }
            let op = next_op(&state, i, &mut rng, &mut chooser);
            pending.push(execute(state.shared.clone(), op, due));
        }
        // With every slot taken the next operation waits for a finished one, not the timer,
        // which may have fired already and would spin the loop.
        let wake = waiting
            .map(|(_, due)| due)
            .filter(|_| pending.len() < state.inflight);
        if let Some(due) = wake.filter(|&due| timer.deadline() != due.into()) {
            timer.as_mut().reset(due.into());
        }
        let finished = tokio::select! {
            biased;
            Some(finished) = pending.next() => finished,
            () = &mut timer, if wake.is_some() => continue,
            else => return recorder,
        };
        let (kind, latency, outcome) = finished;
        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        state.slowest_us.fetch_max(latency_us, Ordering::Relaxed);
        match outcome {
            Ok(found) => {
                recorder.record(kind, latency);
                if !found {
                    recorder.not_found += 1;
                }
            }
            Err(e) => {
                recorder.error(e);
                state.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        state.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// The phase's next operation and, open loop, when it is due (`start + i / rate`); `None` once
/// every operation is claimed.
fn claim(state: &PhaseState) -> Option<(u64, Option<Instant>)> {
    let i = state.claimed.fetch_add(1, Ordering::Relaxed);
    let due = state
        .rate
        .map(|rate| state.start + Duration::from_secs_f64(i as f64 / rate));
    (i < state.total).then_some((i, due))
}

fn next_op(state: &PhaseState, i: u64, rng: &mut SmallRng, chooser: &mut KeyChooser) -> Op {
    let shared = &state.shared;
    let offset = rng.gen_range(0..VALUE_POOL_BYTES);
    let value = shared.values.slice(offset..offset + shared.value_size);
    if state.mode == Mode::Load {
        return Op::Write {
            kind: OpKind::Insert,
            key: key_name(i),
            value,
            insert: false,
        };
    }
    let kind = shared.workload.pick(rng);
    if kind == OpKind::Insert {
        return Op::Write {
            kind,
            key: key_name(shared.inserts.claim()),
            value,
            insert: true,
        };
    }
    let key = key_name(chooser.next(rng, shared.inserts.records()));
    match kind {
        OpKind::Read => Op::Read(key),
        OpKind::Update | OpKind::Insert => Op::Write {
            kind,
            key,
            value,
            insert: false,
        },
        OpKind::Scan => Op::Scan(key, scan_length(rng)),
        OpKind::Rmw => Op::Rmw(key, value),
    }
}

/// Runs one operation, started when due; its latency counts from when it was due (open loop)
/// or sent (closed loop). `Ok(false)` is a read that found nothing.
async fn execute(
    shared: Arc<Shared>,
    op: Op,
    due: Option<Instant>,
) -> (OpKind, Duration, Result<bool, stats::OpError>) {
    let start = due.unwrap_or_else(Instant::now);
    let kind = op.kind();
    let store = &shared.store;
    let outcome = match op {
        Op::Read(key) => store.read(&key).await,
        Op::Write {
            key, value, insert, ..
        } => {
            let result = store.write(key, value).await;
            if insert && result.is_ok() {
                shared.inserts.acknowledge();
            }
            result.map(|()| true)
        }
        Op::Scan(key, length) => store.scan(&key, length).await.map(|_| true),
        Op::Rmw(key, value) => match store.read(&key).await {
            Ok(found) => store.write(key, value).await.map(|()| found),
            Err(e) => Err(e),
        },
    };
    (kind, start.elapsed(), outcome)
}
