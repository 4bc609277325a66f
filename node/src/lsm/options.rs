use std::sync::Arc;

use super::cell::{LastWriteWins, MergeRule};
use super::clock::{Clock, SystemClock};
use super::error::{Error, Result};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const GIB: usize = 1024 * MIB;
/// Past half, memtables would flush at a fraction of their size for no further gain: a
/// quarter already spreads the replicas' flushes apart within a few cycles.
pub const MEMTABLE_JITTER_PERCENT_MAX: u32 = 50;
/// Long enough to spread an L0 -> L1 merge's few hundred ms of CPU thin; short beside the
/// several memtables' worth of writes it takes L0 to refill.
pub const BACKGROUND_PACE_MS_DEFAULT: u64 = 4000;
/// Past a minute a paced job would hold its inputs, and the flushed WAL, for no further gain.
pub const BACKGROUND_PACE_MS_MAX: u64 = 60_000;
/// Two cover a steady write load: one segment retired by each flush, one taken by each switch.
pub const WAL_RECYCLE_SEGMENTS_DEFAULT: usize = 2;
/// Bound on `wal_recycle_segments_max`: each kept segment holds a memtable's worth of disk.
pub const WAL_RECYCLE_SEGMENTS_MAX: usize = 16;

/// When the WAL is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fdatasync before a write returns (concurrent writers share one sync: group commit).
    Always,
    /// fdatasync every `interval_ms` or every `writes` writes, whichever comes first. A crash
    /// loses at most the last interval.
    Periodic { interval_ms: u64, writes: u64 },
    /// Never fsync the WAL; the OS writes it back when it likes.
    Never,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        SyncPolicy::Periodic {
            interval_ms: 100,
            writes: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    /// zstd at this level, per block; a block that does not shrink is kept raw.
    Zstd {
        level: i32,
    },
    /// LZ4 per block: a larger file than zstd, but several times cheaper to decompress, which
    /// is what a point read that misses the block cache pays (Cassandra's default).
    Lz4,
}

/// How SSTables are merged in the background.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CompactionStrategy {
    /// L0 compacts into L1 at `l0_trigger_files`; L1 holds `l1_bytes`, each deeper level
    /// `level_multiplier` times more; L1+ hold non-overlapping tables of `table_bytes_target`.
    Leveled {
        l0_trigger_files: usize,
        l1_bytes: u64,
        level_multiplier: u64,
        table_bytes_target: u64,
    },
    /// Tables of similar size (within `bucket_low`..`bucket_high` of the bucket's average) merge
    /// once `min_threshold` of them exist, at most `max_threshold` at a time.
    SizeTiered {
        min_threshold: usize,
        max_threshold: usize,
        bucket_low: f64,
        bucket_high: f64,
    },
    /// Tables are grouped by the window of their newest timestamp and compacted size-tiered
    /// within a window; a table whose every cell has expired is dropped whole.
    TimeWindow {
        window_ms: u64,
        min_threshold: usize,
    },
}

impl CompactionStrategy {
    /// L1 holds what one L0 compaction hands it, four 64 MiB memtables (RocksDB sizes its
    /// `max_bytes_for_level_base` the same way): at the design document's 10 MiB every L0
    /// compaction overflowed L1 twentyfold and went on into L2 as a dozen more merges, on
    /// every replica at once, which was most of the open-loop tail (docs/benchmarks.md).
    pub fn leveled() -> Self {
        CompactionStrategy::Leveled {
            l0_trigger_files: 4,
            l1_bytes: 256 * MIB as u64,
            level_multiplier: 10,
            table_bytes_target: 8 * MIB as u64,
        }
    }

    pub fn size_tiered() -> Self {
        CompactionStrategy::SizeTiered {
            min_threshold: 4,
            max_threshold: 32,
            bucket_low: 0.5,
            bucket_high: 1.5,
        }
    }

    pub fn time_window(window_ms: u64) -> Self {
        CompactionStrategy::TimeWindow {
            window_ms,
            min_threshold: 4,
        }
    }
}

/// Engine settings. Defaults follow the design document.
#[derive(Clone)]
pub struct Options {
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
    pub batch_bytes_max: usize,
    pub sync: SyncPolicy,
    pub wal_segment_bytes_max: u64,
    pub wal_segment_age_ms_max: u64,
    /// Bytes reserved ahead of the WAL's end, in steps of this size, so synced appends do not
    /// also update the file size (0 disables preallocation). Small steps keep the unused
    /// reservation, counted as disk space, small.
    pub wal_preallocate_bytes: u64,
    /// Flushed WAL segments kept to be written again instead of new files (0: none). Each
    /// holds a memtable's worth of disk; writing into its resident, already-written pages
    /// skips the page allocation, zeroing and extent conversion a new file costs.
    pub wal_recycle_segments_max: usize,
    pub memtable_bytes: usize,
    /// Each memtable is switched at `memtable_bytes` less a share of up to this many percent,
    /// drawn per memtable from `memtable_jitter_seed`. Replicas take the same writes, so
    /// without it they fill, flush and compact in step, and a quorum then waits on two busy
    /// replicas at once.
    pub memtable_jitter_percent: u32,
    pub memtable_jitter_seed: u64,
    /// Sealed memtables waiting for flush before writes stall.
    pub immutable_memtables_max: usize,
    pub block_bytes: usize,
    pub compression: Compression,
    pub bloom_bits_per_key: u32,
    pub block_cache_bytes: usize,
    /// Flushes put each block they write into the block cache, and compactions do too while
    /// every table fits in half of it: a new table's first reads then hit instead of each
    /// reading, checking and decompressing its block on a request thread.
    pub block_cache_prepopulate: bool,
    pub row_cache_bytes: usize,
    pub compaction: CompactionStrategy,
    /// L0 file count at which writes are slowed down.
    pub l0_slowdown_files: usize,
    /// L0 file count at which writes wait for compaction.
    pub l0_stop_files: usize,
    /// Background compaction bandwidth (bytes written per second); 0 means unthrottled.
    pub compaction_bytes_per_sec: u64,
    /// While their backlog is small, a flush is spread over half the time its memtable took
    /// to fill and a compaction over this long, at most (0: both run flat out). See
    /// `db/pace.rs`.
    pub background_pace_ms_max: u64,
    /// Nice value of the flush and compaction threads (0..=19; 0 leaves them at the
    /// process's): a burst of background work then takes the CPU the request threads leave
    /// idle instead of sharing it evenly with them.
    pub background_nice: i32,
    /// Runs the flush and compaction threads under SCHED_IDLE, which Linux schedules only on
    /// a core no other thread wants (the nice value then no longer matters). Nice alone does
    /// not keep a burst of background work from delaying request threads that wake and sleep
    /// in microseconds. Off by default: beside another busy process the threads would get
    /// almost no CPU, and writes would stall behind their flushes.
    pub background_sched_idle: bool,
    /// Tombstones and expired cells older than now minus this may be purged, unless the caller
    /// supplies its own horizon (the node ties it to completed repairs).
    pub gc_grace_ms: u64,
    pub merge_rule: Arc<dyn MergeRule>,
    pub clock: Arc<dyn Clock>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            key_bytes_max: 64 * KIB,
            value_bytes_max: 16 * MIB,
            batch_bytes_max: 64 * MIB,
            sync: SyncPolicy::default(),
            wal_segment_bytes_max: 1024 * MIB as u64,
            wal_segment_age_ms_max: 10 * 60 * 1000,
            wal_preallocate_bytes: 8 * MIB as u64,
            wal_recycle_segments_max: WAL_RECYCLE_SEGMENTS_DEFAULT,
            block_cache_prepopulate: true,
            memtable_bytes: 64 * MIB,
            memtable_jitter_percent: 0,
            memtable_jitter_seed: 0,
            immutable_memtables_max: 2,
            block_bytes: 16 * KIB,
            compression: Compression::Lz4,
            bloom_bits_per_key: 10,
            block_cache_bytes: GIB,
            row_cache_bytes: 0,
            compaction: CompactionStrategy::leveled(),
            l0_slowdown_files: 20,
            l0_stop_files: 36,
            compaction_bytes_per_sec: 0,
            background_pace_ms_max: BACKGROUND_PACE_MS_DEFAULT,
            background_nice: 10,
            background_sched_idle: false,
            gc_grace_ms: 10 * 24 * 3600 * 1000,
            merge_rule: Arc::new(LastWriteWins),
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("sync", &self.sync)
            .field("memtable_bytes", &self.memtable_bytes)
            .field("memtable_jitter_percent", &self.memtable_jitter_percent)
            .field("block_bytes", &self.block_bytes)
            .field("compression", &self.compression)
            .field("compaction", &self.compaction)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Refuses settings the engine cannot honour, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, reason: String| Err(Error::InvalidOption { name, reason });
        if !(4 * KIB..=64 * KIB).contains(&self.block_bytes) {
            return bad(
                "block_bytes",
                format!("{} is outside 4 KiB..=64 KiB", self.block_bytes),
            );
        }
        if self.memtable_bytes < 64 * KIB {
            return bad(
                "memtable_bytes",
                format!("{} is below 64 KiB", self.memtable_bytes),
            );
        }
        if self.memtable_jitter_percent > MEMTABLE_JITTER_PERCENT_MAX {
            return bad(
                "memtable_jitter_percent",
                format!(
                    "{} is above {MEMTABLE_JITTER_PERCENT_MAX}",
                    self.memtable_jitter_percent
                ),
            );
        }
        if self.key_bytes_max == 0 || self.key_bytes_max > u16::MAX as usize + 1 {
            return bad(
                "key_bytes_max",
                format!("{} is outside 1..=65536", self.key_bytes_max),
            );
        }
        if self.value_bytes_max == 0 || self.value_bytes_max > 256 * MIB {
            return bad(
                "value_bytes_max",
                format!("{} is outside 1..=256 MiB", self.value_bytes_max),
            );
        }
        if self.immutable_memtables_max == 0 {
            return bad("immutable_memtables_max", "must be at least 1".into());
        }
        if self.l0_slowdown_files > self.l0_stop_files {
            return bad("l0_slowdown_files", "must not exceed l0_stop_files".into());
        }
        if !(0..=19).contains(&self.background_nice) {
            return bad(
                "background_nice",
                format!("{} is outside 0..=19", self.background_nice),
            );
        }
        if self.background_pace_ms_max > BACKGROUND_PACE_MS_MAX {
            return bad(
                "background_pace_ms_max",
                format!(
                    "{} is above {BACKGROUND_PACE_MS_MAX} ms",
                    self.background_pace_ms_max
                ),
            );
        }
        if self.wal_recycle_segments_max > WAL_RECYCLE_SEGMENTS_MAX {
            return bad(
                "wal_recycle_segments_max",
                format!(
                    "{} is above {WAL_RECYCLE_SEGMENTS_MAX}",
                    self.wal_recycle_segments_max
                ),
            );
        }
        if self.bloom_bits_per_key > 32 {
            return bad(
                "bloom_bits_per_key",
                format!("{} is above 32", self.bloom_bits_per_key),
            );
        }
        if let SyncPolicy::Periodic {
            interval_ms,
            writes,
        } = self.sync
        {
            if interval_ms == 0 || writes == 0 {
                return bad(
                    "sync",
                    "periodic interval_ms and writes must be positive".into(),
                );
            }
        }
        if let Compression::Zstd { level } = self.compression {
            if !(-7..=22).contains(&level) {
                return bad(
                    "compression",
                    format!("zstd level {level} is outside -7..=22"),
                );
            }
        }
        self.compaction_validate()
    }

    fn compaction_validate(&self) -> Result<()> {
        let bad = |reason: &str| {
            Err(Error::InvalidOption {
                name: "compaction",
                reason: reason.into(),
            })
        };
        match self.compaction {
            CompactionStrategy::Leveled {
                l0_trigger_files,
                level_multiplier,
                l1_bytes,
                table_bytes_target,
            } => {
                if l0_trigger_files < 2 || level_multiplier < 2 || l1_bytes == 0 {
                    return bad(
                        "leveled needs l0_trigger_files >= 2, level_multiplier >= 2, l1_bytes > 0",
                    );
                }
                if table_bytes_target < 64 * KIB as u64 {
                    return bad("leveled table_bytes_target must be at least 64 KiB");
                }
            }
            CompactionStrategy::SizeTiered {
                min_threshold,
                max_threshold,
                bucket_low,
                bucket_high,
            } => {
                if min_threshold < 2 || max_threshold < min_threshold {
                    return bad("size-tiered needs 2 <= min_threshold <= max_threshold");
                }
                if !(bucket_low > 0.0 && bucket_low < 1.0 && bucket_high > 1.0) {
                    return bad("size-tiered needs 0 < bucket_low < 1 < bucket_high");
                }
            }
            CompactionStrategy::TimeWindow {
                window_ms,
                min_threshold,
            } => {
                if window_ms == 0 || min_threshold < 2 {
                    return bad("time-window needs window_ms > 0 and min_threshold >= 2");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Options::default().validate().unwrap();
    }

    #[test]
    fn bad_block_size_is_named() {
        let opts = Options {
            block_bytes: 1024,
            ..Options::default()
        };
        let err = opts.validate().unwrap_err().to_string();
        assert!(err.contains("block_bytes"), "{err}");
    }

    #[test]
    fn memtable_jitter_past_half_is_refused() {
        let opts = Options {
            memtable_jitter_percent: MEMTABLE_JITTER_PERCENT_MAX + 1,
            ..Options::default()
        };
        let err = opts.validate().unwrap_err().to_string();
        assert!(err.contains("memtable_jitter_percent"), "{err}");
    }
}
