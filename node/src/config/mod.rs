//! kv-node configuration: defaults, then a TOML file, then `KV_NODE_*` environment variables,
//! then command-line flags; validated as a whole before the node starts, so bad config is
//! refused with the path of the field at fault. Field reference: docs/configuration.md.

mod convert;
mod error;
mod layers;
mod seed;
mod size;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use topology::Token;

pub use error::ConfigError;
pub use layers::{env_vars, NodeArgs, CONFIG_ENV_VAR};
pub use seed::Seed;
pub use size::{ByteSize, ParseByteSizeError};

/// Everything a kv-node needs to start. Sections mirror the TOML tables.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Nodes refuse internode traffic from another cluster's nodes, so two clusters sharing
    /// seeds or addresses never merge.
    pub cluster_name: String,
    pub node_id: String,
    pub data_dir: PathBuf,
    pub dc: String,
    pub rack: String,
    /// Internode addresses of nodes to learn the cluster from: `IP:port`, `[v6]:port`,
    /// `name:port` or an SRV name ([`Seed`]). Kept as strings: names are resolved again when
    /// their records expire, so a replaced seed is found again.
    pub seeds: Vec<String>,
    pub vnodes: usize,
    /// Exactly `vnodes` tokens, to place the node by hand; otherwise the node allocates them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_tokens: Option<Vec<Token>>,
    /// On first start, join a running cluster: learn the ring from the seeds, choose balanced
    /// tokens, stream this node's future ranges, then serve them. Ignored once the node has
    /// data (a restart resumes an unfinished join instead).
    pub join: bool,
    /// On first start, take over the tokens of this dead node and stream its ranges from the
    /// surviving replicas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replace: Option<String>,
    /// Streaming bandwidth of topology changes, per stream; 0 leaves it unthrottled.
    pub stream_throughput_mib_per_sec: u64,
    /// Threads serving requests; 0 is one per core. Nodes sharing a machine each want their
    /// share of its cores, not all of them.
    pub worker_threads: usize,
    /// Heap the node touches at start and hands to its allocator, which keeps it, so that
    /// memtables and caches filling up do not fault pages in on request threads. Unset: sized
    /// from the engine's memtables and caches ([`NodeConfig::memory_prefault_bytes`]); 0 off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_prefault_bytes: Option<ByteSize>,
    pub listen: Listen,
    pub engine: Engine,
    pub coordinator: Coordinator,
    pub hints: Hints,
    pub gossip: Gossip,
    pub repair: Repair,
    /// Simulated one-way delay added to internode messages sent to each named remote DC
    /// (`kvctl demo --wan-latency`), so that LOCAL_ and EACH_ levels feel different on loopback.
    pub wan_latency_ms: BTreeMap<String, u64>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            cluster_name: "kv".into(),
            node_id: "node1".into(),
            data_dir: "data".into(),
            dc: "dc1".into(),
            rack: "r1".into(),
            seeds: Vec::new(),
            vnodes: topology::DEFAULT_VNODES,
            initial_tokens: None,
            join: false,
            replace: None,
            stream_throughput_mib_per_sec: 64,
            worker_threads: 0,
            memory_prefault_bytes: None,
            listen: Listen::default(),
            engine: Engine::default(),
            coordinator: Coordinator::default(),
            hints: Hints::default(),
            gossip: Gossip::default(),
            repair: Repair::default(),
            wan_latency_ms: BTreeMap::new(),
        }
    }
}

/// Where the node accepts connections. Loopback by default, so an unconfigured node is not
/// reachable from the network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    /// Client gRPC (SDK, kvctl, dc-router).
    pub client: SocketAddr,
    /// Internode gRPC (replica traffic, hints, gossip); what peers list as seeds.
    pub internode: SocketAddr,
    /// Metrics and health over HTTP.
    pub http: SocketAddr,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            client: ([127, 0, 0, 1], 9042).into(),
            internode: ([127, 0, 0, 1], 7000).into(),
            http: ([127, 0, 0, 1], 7080).into(),
        }
    }
}

/// The storage engine's settings that operators tune; the rest keep the engine's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Engine {
    pub memtable_bytes: ByteSize,
    /// Each memtable flushes at `memtable_bytes` less up to this many percent, drawn per
    /// memtable and node, so that replicas do not flush and compact in step.
    pub memtable_jitter_percent: u32,
    pub block_bytes: ByteSize,
    pub block_cache_bytes: ByteSize,
    /// Flushes (and compactions while the tables fit in half the cache) fill the block cache
    /// as they write.
    pub block_cache_prepopulate: bool,
    pub row_cache_bytes: ByteSize,
    /// 0 leaves compaction unthrottled.
    pub compaction_throughput_mib_per_sec: u64,
    /// While their backlog is small, flushes and compactions spread their CPU over up to this
    /// long; 0 runs them flat out.
    pub background_pace_ms_max: u64,
    /// Nice value of flush and compaction threads, 0..=19.
    pub background_nice: i32,
    /// Flush and compaction threads under SCHED_IDLE (Linux): they run only on idle cores.
    pub background_sched_idle: bool,
    /// Flushed WAL segments kept to be written again instead of new files; 0 keeps none.
    pub wal_recycle_segments_max: usize,
    pub sync: SyncConfig,
    pub compression: CompressionConfig,
    pub compaction: CompactionConfig,
}

impl Default for Engine {
    fn default() -> Self {
        Engine {
            memtable_bytes: ByteSize::mib(64),
            memtable_jitter_percent: 25,
            block_bytes: ByteSize::kib(16),
            block_cache_bytes: ByteSize::gib(1),
            block_cache_prepopulate: true,
            row_cache_bytes: ByteSize(0),
            compaction_throughput_mib_per_sec: 0,
            background_pace_ms_max: crate::lsm::BACKGROUND_PACE_MS_DEFAULT,
            background_nice: 10,
            background_sched_idle: false,
            wal_recycle_segments_max: crate::lsm::WAL_RECYCLE_SEGMENTS_DEFAULT,
            sync: SyncConfig::default(),
            compression: CompressionConfig::default(),
            compaction: CompactionConfig::default(),
        }
    }
}

/// When the WAL is fsynced; `policy = "always" | "periodic" | "never"`. Choices without
/// parameters, here and in the other tagged tables, are empty struct variants: serde lets a
/// unit variant ignore stray keys, which would accept `interval_ms` under `always` silently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "lowercase", deny_unknown_fields)]
pub enum SyncConfig {
    Always {},
    Periodic(PeriodicSync),
    Never {},
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig::Periodic(PeriodicSync::default())
    }
}

/// Sync every `interval_ms` or every `writes` writes, whichever comes first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeriodicSync {
    pub interval_ms: u64,
    pub writes: u64,
}

impl Default for PeriodicSync {
    fn default() -> Self {
        PeriodicSync {
            interval_ms: 100,
            writes: 1000,
        }
    }
}

/// Per-block compression; `codec = "lz4" | "zstd" | "none"`. lz4 is the default, as the design
/// document and Cassandra have it: under YCSB-A, zstd's compression in flushes and compactions
/// alone took 8% of a node's CPU, and every block cache miss pays its slower decompression.
/// zstd makes files about a quarter smaller, for data that is read rarely.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "codec", rename_all = "lowercase", deny_unknown_fields)]
pub enum CompressionConfig {
    Zstd(ZstdCompression),
    Lz4 {},
    None {},
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig::Lz4 {}
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZstdCompression {
    /// -7..=22; low levels cost little CPU on the write path.
    pub level: i32,
}

impl Default for ZstdCompression {
    fn default() -> Self {
        ZstdCompression { level: 1 }
    }
}

/// How SSTables are merged; `strategy = "leveled" | "size-tiered" | "time-window"`, each with
/// its own parameters (a parameter of another strategy is refused, not ignored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CompactionConfig {
    Leveled(Leveled),
    SizeTiered(SizeTiered),
    TimeWindow(TimeWindow),
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig::Leveled(Leveled::default())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Leveled {
    pub l0_trigger_files: usize,
    pub l1_bytes: ByteSize,
    pub level_multiplier: u64,
    pub table_bytes_target: ByteSize,
}

impl Default for Leveled {
    fn default() -> Self {
        Leveled {
            l0_trigger_files: 4,
            l1_bytes: ByteSize::mib(256),
            level_multiplier: 10,
            table_bytes_target: ByteSize::mib(8),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SizeTiered {
    pub min_threshold: usize,
    pub max_threshold: usize,
    pub bucket_low: f64,
    pub bucket_high: f64,
}

impl Default for SizeTiered {
    fn default() -> Self {
        SizeTiered {
            min_threshold: 4,
            max_threshold: 32,
            bucket_low: 0.5,
            bucket_high: 1.5,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeWindow {
    pub window_ms: u64,
    pub min_threshold: usize,
}

impl Default for TimeWindow {
    fn default() -> Self {
        TimeWindow {
            window_ms: 24 * 3600 * 1000,
            min_threshold: 4,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Coordinator {
    pub write_timeout_ms: u64,
    pub read_timeout_ms: u64,
    /// Ask one more replica when one is slower than its recent p99.
    pub speculative_retry: bool,
    /// A peer or client timestamp further ahead of local wall time is refused, so one bad
    /// clock cannot drag every node's timestamps into the future.
    pub hlc_max_drift_ms: u64,
    /// How a write reaches another DC's replicas: true (the default) forwards it once per DC,
    /// on the pipe to a replica there that writes to the others, as Cassandra does, so one copy
    /// crosses the WAN; false sends it to each of them on its pipe, a copy per replica over the
    /// WAN. Both are batched with other operations and zstd-compressed.
    pub forward_remote_writes: bool,
}

impl Default for Coordinator {
    fn default() -> Self {
        Coordinator {
            write_timeout_ms: 2_000,
            read_timeout_ms: 5_000,
            speculative_retry: true,
            hlc_max_drift_ms: crate::cluster::DEFAULT_MAX_DRIFT_MS,
            forward_remote_writes: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hints {
    pub enabled: bool,
    /// A target down for longer gets no more hints; repair brings it up to date instead.
    pub window_ms: u64,
    /// Replay bandwidth per target; 0 leaves replay unthrottled.
    pub throttle_kib_per_sec: u64,
    /// Hints kept for one target; past it, further writes for that target are not hinted.
    pub bytes_max_per_target: ByteSize,
}

impl Default for Hints {
    fn default() -> Self {
        Hints {
            enabled: true,
            window_ms: 3 * 3600 * 1000,
            throttle_kib_per_sec: 1024,
            bytes_max_per_target: ByteSize::gib(1),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gossip {
    pub interval_ms: u64,
    /// Phi at or above which a peer is marked down.
    pub phi_threshold: f64,
    /// Silence tolerated on top of the mean heartbeat interval before suspicion grows fast;
    /// with 1 s rounds the default convicts a silent node after about 10.6 s.
    pub acceptable_pause_ms: u64,
}

impl Default for Gossip {
    fn default() -> Self {
        Gossip {
            interval_ms: 1_000,
            phi_threshold: 8.0,
            acceptable_pause_ms: 7_000,
        }
    }
}

/// Anti-entropy repair (docs/repair.md): the background loop, its pace, and how tombstone
/// purging is tied to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Repair {
    /// Repair the ranges this node is primary for, one at a time, in the background.
    pub enabled: bool,
    /// Mean pause between two background range repairs; each is drawn from half to one and a
    /// half times it.
    pub interval_ms: u64,
    /// Bytes a repair streams (pulled plus pushed) per second; 0 leaves it unthrottled.
    pub throughput_mib_per_sec: u64,
    /// Merkle leaves per range are 2^depth.
    pub merkle_depth: u8,
    /// What lets a tombstone be purged: `repair` (only once a complete repair of every range
    /// the node replicates started after it) or `grace` (once older than `gc_grace_ms`,
    /// Cassandra's rule, which loses deletes when repair falls behind).
    pub tombstone_gc: TombstoneGc,
    /// The grace period: the purge age under `grace`, and the repair age past which
    /// `kvctl status` warns.
    pub gc_grace_ms: u64,
}

impl Default for Repair {
    fn default() -> Self {
        Repair {
            enabled: true,
            interval_ms: 60_000,
            throughput_mib_per_sec: 16,
            merkle_depth: crate::cluster::merkle::DEFAULT_DEPTH,
            tombstone_gc: TombstoneGc::Repair,
            gc_grace_ms: 10 * 24 * 3600 * 1000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TombstoneGc {
    Repair,
    Grace,
}
