//! What the node builds from a configuration: engine options, failure detector settings.

use super::{CompactionConfig, CompressionConfig, NodeConfig, SyncConfig, TombstoneGc};
use crate::cluster::PhiConfig;
use crate::lsm::{CompactionStrategy, Compression, Options, SyncPolicy};

const MIB: u64 = 1 << 20;
/// Heap a node holds besides its memtables and caches: request and pipe buffers, tables'
/// indexes and filters, flush and compaction buffers.
const PREFAULT_SLACK_BYTES: usize = 64 << 20;

impl NodeConfig {
    /// The engine's options: this configuration's settings over the engine's defaults.
    pub fn engine_options(&self) -> Options {
        let e = &self.engine;
        Options {
            sync: e.sync.policy(),
            memtable_bytes: e.memtable_bytes.as_usize(),
            memtable_jitter_percent: e.memtable_jitter_percent,
            block_bytes: e.block_bytes.as_usize(),
            compression: e.compression.compression(),
            block_cache_bytes: e.block_cache_bytes.as_usize(),
            block_cache_prepopulate: e.block_cache_prepopulate,
            row_cache_bytes: e.row_cache_bytes.as_usize(),
            compaction: e.compaction.strategy(),
            compaction_bytes_per_sec: e.compaction_throughput_mib_per_sec.saturating_mul(MIB),
            background_pace_ms_max: e.background_pace_ms_max,
            background_nice: e.background_nice,
            background_sched_idle: e.background_sched_idle,
            wal_recycle_segments_max: e.wal_recycle_segments_max,
            gc_grace_ms: self.engine_gc_grace_ms(),
            ..Options::default()
        }
    }

    /// The heap to touch at start: as configured, or else the engine's memtables (the live one
    /// and those waiting for flush) twice over, its caches, and [`PREFAULT_SLACK_BYTES`]. The
    /// memtables are counted twice because a node's heap outgrows their count: under YCSB-A at
    /// 22k ops/s a node with 264 MiB of memtables and caches reached ~370 MiB, and touching
    /// only the 264 MiB left it faulting pages in on request threads (docs/benchmarks.md).
    pub fn memory_prefault_bytes(&self) -> usize {
        if let Some(bytes) = self.memory_prefault_bytes {
            return bytes.as_usize();
        }
        let o = self.engine_options();
        let memtables = o
            .memtable_bytes
            .saturating_mul(1 + o.immutable_memtables_max);
        memtables
            .saturating_mul(2)
            .saturating_add(o.block_cache_bytes)
            .saturating_add(o.row_cache_bytes)
            .saturating_add(PREFAULT_SLACK_BYTES)
    }

    /// Under repair-tied GC an engine purges nothing until the repair history sets its
    /// horizon: a grace of "forever" closes the gap between opening an engine and the first
    /// horizon update, in which the engine's own default would purge by age.
    fn engine_gc_grace_ms(&self) -> u64 {
        match self.repair.tombstone_gc {
            TombstoneGc::Repair => u64::MAX,
            TombstoneGc::Grace => self.repair.gc_grace_ms,
        }
    }

    /// The detector expects a heartbeat per gossip round, so a new peer is judged against the
    /// configured rhythm rather than the default one.
    pub fn phi_config(&self) -> PhiConfig {
        PhiConfig {
            threshold: self.gossip.phi_threshold,
            first_heartbeat_estimate_ms: self.gossip.interval_ms,
            acceptable_pause_ms: self.gossip.acceptable_pause_ms,
            ..PhiConfig::default()
        }
    }
}

impl SyncConfig {
    pub fn policy(&self) -> SyncPolicy {
        match self {
            SyncConfig::Always {} => SyncPolicy::Always,
            SyncConfig::Periodic(p) => SyncPolicy::Periodic {
                interval_ms: p.interval_ms,
                writes: p.writes,
            },
            SyncConfig::Never {} => SyncPolicy::Never,
        }
    }
}

impl CompressionConfig {
    pub fn compression(&self) -> Compression {
        match self {
            CompressionConfig::Zstd(z) => Compression::Zstd { level: z.level },
            CompressionConfig::Lz4 {} => Compression::Lz4,
            CompressionConfig::None {} => Compression::None,
        }
    }
}

impl CompactionConfig {
    pub fn strategy(&self) -> CompactionStrategy {
        match self {
            CompactionConfig::Leveled(l) => CompactionStrategy::Leveled {
                l0_trigger_files: l.l0_trigger_files,
                l1_bytes: l.l1_bytes.0,
                level_multiplier: l.level_multiplier,
                table_bytes_target: l.table_bytes_target.0,
            },
            CompactionConfig::SizeTiered(s) => CompactionStrategy::SizeTiered {
                min_threshold: s.min_threshold,
                max_threshold: s.max_threshold,
                bucket_low: s.bucket_low,
                bucket_high: s.bucket_high,
            },
            CompactionConfig::TimeWindow(t) => CompactionStrategy::TimeWindow {
                window_ms: t.window_ms,
                min_threshold: t.min_threshold,
            },
        }
    }
}
