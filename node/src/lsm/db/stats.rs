//! Counters the engine keeps and the snapshot it reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::version::Version;
use crate::lsm::cache::{BlockCache, CacheStats, LruCache};
use crate::lsm::cell::Cell;
use crate::lsm::wal::{Wal, WalStats};

#[derive(Default)]
pub(super) struct Counters {
    user_bytes: AtomicU64,
    switches: AtomicU64,
    flushes: AtomicU64,
    flush_bytes: AtomicU64,
    compactions: AtomicU64,
    compaction_read_bytes: AtomicU64,
    compaction_written_bytes: AtomicU64,
    purged_cells: AtomicU64,
    stalls: AtomicU64,
    stall_micros: AtomicU64,
    slowdowns: AtomicU64,
    paced_micros: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    pub fn add_user_bytes(&self, n: u64) {
        bump(&self.user_bytes, n);
    }

    pub fn add_switch(&self) {
        bump(&self.switches, 1);
    }

    pub fn add_flush(&self, file_bytes: u64) {
        bump(&self.flushes, 1);
        bump(&self.flush_bytes, file_bytes);
    }

    pub fn add_compaction(&self) {
        bump(&self.compactions, 1);
    }

    pub fn add_compaction_read(&self, n: u64) {
        bump(&self.compaction_read_bytes, n);
    }

    pub fn add_compaction_written(&self, n: u64) {
        bump(&self.compaction_written_bytes, n);
    }

    pub fn add_purged(&self, n: u64) {
        bump(&self.purged_cells, n);
    }

    pub fn add_stall(&self, waited: Duration) {
        bump(&self.stalls, 1);
        bump(&self.stall_micros, waited.as_micros() as u64);
    }

    pub fn add_slowdown(&self) {
        bump(&self.slowdowns, 1);
    }

    pub fn add_paced(&self, slept: Duration) {
        bump(&self.paced_micros, slept.as_micros() as u64);
    }

    pub fn snapshot(
        &self,
        v: &Version,
        block_cache: &BlockCache,
        row_cache: &LruCache<Bytes, Option<Cell>>,
        wal: &Wal,
    ) -> DbStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DbStats {
            user_bytes_written: get(&self.user_bytes),
            memtable_switches: get(&self.switches),
            flushes: get(&self.flushes),
            flush_bytes_written: get(&self.flush_bytes),
            compactions: get(&self.compactions),
            compactions_pending: 0,
            compactions_running: 0,
            compaction_bytes_read: get(&self.compaction_read_bytes),
            compaction_bytes_written: get(&self.compaction_written_bytes),
            purged_cells: get(&self.purged_cells),
            write_stalls: get(&self.stalls),
            write_stall_micros: get(&self.stall_micros),
            write_slowdowns: get(&self.slowdowns),
            background_paced_micros: get(&self.paced_micros),
            memtable_bytes: v.mem.approx_bytes() as u64,
            immutable_memtables: v.imm.len(),
            tables_per_level: v.levels.iter().map(|l| l.len()).collect(),
            bytes_per_level: v
                .levels
                .iter()
                .map(|l| l.iter().map(|t| t.meta().file_bytes).sum())
                .collect(),
            block_cache: block_cache.stats(),
            row_cache: row_cache.stats(),
            wal: wal.stats(),
        }
    }
}

/// What the engine has done and holds, for operators and benchmarks.
#[derive(Clone, Debug, Default)]
pub struct DbStats {
    /// Key and value bytes accepted from callers.
    pub user_bytes_written: u64,
    /// Memtables sealed for flushing, for any reason (full, `flush`, WAL rotation).
    pub memtable_switches: u64,
    pub flushes: u64,
    pub flush_bytes_written: u64,
    pub compactions: u64,
    /// Compaction tasks the strategy would start now, if it could run them all at once.
    pub compactions_pending: usize,
    pub compactions_running: usize,
    pub compaction_bytes_read: u64,
    pub compaction_bytes_written: u64,
    /// Tombstones and expired cells dropped by compaction.
    pub purged_cells: u64,
    /// Writes that waited for a flush or for L0 to shrink, and for how long in total.
    pub write_stalls: u64,
    pub write_stall_micros: u64,
    /// Writes delayed because L0 passed its slowdown mark.
    pub write_slowdowns: u64,
    /// Time flushes and compactions slept to keep to their pace while the backlog was small.
    pub background_paced_micros: u64,
    pub memtable_bytes: u64,
    pub immutable_memtables: usize,
    pub tables_per_level: Vec<usize>,
    pub bytes_per_level: Vec<u64>,
    pub block_cache: CacheStats,
    pub row_cache: CacheStats,
    pub wal: WalStats,
}

impl DbStats {
    /// Table bytes written (flush + compaction) per user byte, WAL excluded as RocksDB does.
    pub fn write_amplification(&self) -> f64 {
        let written = self.flush_bytes_written + self.compaction_bytes_written;
        written as f64 / self.user_bytes_written.max(1) as f64
    }

    pub fn table_bytes(&self) -> u64 {
        self.bytes_per_level.iter().sum()
    }
}
