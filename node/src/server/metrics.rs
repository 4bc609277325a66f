//! Counters the node exposes on `/metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::lsm::DbStats;

/// A storage-engine statistic exposed per keyspace: name, help, Prometheus type, value.
type EngineSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&DbStats) -> u64,
);

/// What an operator watches to tell whether the engines keep up: compaction backlog, L0,
/// memtables waiting for flush, and the writes that waited for any of them.
const ENGINE_SERIES: [EngineSeries; 17] = [
    (
        "kv_engine_compactions_pending",
        "compaction tasks the strategy would start now",
        "gauge",
        |s| s.compactions_pending as u64,
    ),
    (
        "kv_engine_compactions_running",
        "compactions in progress",
        "gauge",
        |s| s.compactions_running as u64,
    ),
    ("kv_engine_l0_tables", "tables in level 0", "gauge", |s| {
        s.tables_per_level.first().copied().unwrap_or(0) as u64
    }),
    (
        "kv_engine_immutable_memtables",
        "sealed memtables waiting for flush",
        "gauge",
        |s| s.immutable_memtables as u64,
    ),
    (
        "kv_engine_memtable_bytes",
        "bytes in the active memtable",
        "gauge",
        |s| s.memtable_bytes,
    ),
    (
        "kv_engine_table_bytes",
        "bytes of tables on disk",
        "gauge",
        DbStats::table_bytes,
    ),
    (
        "kv_engine_flushes_total",
        "memtables flushed",
        "counter",
        |s| s.flushes,
    ),
    (
        "kv_engine_block_cache_hits_total",
        "table blocks found in the block cache",
        "counter",
        |s| s.block_cache.hits,
    ),
    (
        "kv_engine_block_cache_misses_total",
        "table blocks read from disk (or the page cache)",
        "counter",
        |s| s.block_cache.misses,
    ),
    (
        "kv_engine_row_cache_hits_total",
        "reads answered by the row cache",
        "counter",
        |s| s.row_cache.hits,
    ),
    (
        "kv_engine_row_cache_misses_total",
        "reads the row cache could not answer",
        "counter",
        |s| s.row_cache.misses,
    ),
    (
        "kv_engine_memtable_switches_total",
        "memtables sealed for flushing",
        "counter",
        |s| s.memtable_switches,
    ),
    (
        "kv_engine_compactions_total",
        "compactions completed",
        "counter",
        |s| s.compactions,
    ),
    (
        "kv_engine_compaction_bytes_written_total",
        "bytes compactions wrote",
        "counter",
        |s| s.compaction_bytes_written,
    ),
    (
        "kv_engine_write_stall_microseconds_total",
        "time writes waited for a flush or for L0 to shrink",
        "counter",
        |s| s.write_stall_micros,
    ),
    (
        "kv_engine_write_slowdowns_total",
        "writes delayed because L0 passed its slowdown mark",
        "counter",
        |s| s.write_slowdowns,
    ),
    (
        "kv_engine_background_paced_microseconds_total",
        "time flushes and compactions slept to spread their CPU while their backlog was small",
        "counter",
        |s| s.background_paced_micros,
    ),
];

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct Metrics {
    pub client_reads: Counter,
    pub client_writes: Counter,
    pub client_errors: Counter,
    pub read_repairs: Counter,
    pub speculative_retries: Counter,
    pub hints_stored: Counter,
    pub hints_replayed: Counter,
    pub repairs_completed: Counter,
    pub repair_ranges_differing: Counter,
    pub repair_bytes_streamed: Counter,
}

impl Metrics {
    fn counters(&self) -> [(&'static str, &'static str, &Counter); 10] {
        [
            (
                "kv_client_reads_total",
                "key reads coordinated",
                &self.client_reads,
            ),
            (
                "kv_client_writes_total",
                "key writes coordinated",
                &self.client_writes,
            ),
            (
                "kv_client_errors_total",
                "client requests that failed",
                &self.client_errors,
            ),
            (
                "kv_read_repairs_total",
                "reads whose replicas disagreed",
                &self.read_repairs,
            ),
            (
                "kv_speculative_retries_total",
                "reads that asked one more replica",
                &self.speculative_retries,
            ),
            (
                "kv_hints_stored_total",
                "hints stored for replicas that missed a write",
                &self.hints_stored,
            ),
            (
                "kv_hints_replayed_total",
                "hints delivered to their replica",
                &self.hints_replayed,
            ),
            (
                "kv_repairs_completed_total",
                "range repairs this node coordinated in which every replica took part",
                &self.repairs_completed,
            ),
            (
                "kv_repair_ranges_differing_total",
                "range repairs that found replicas' Merkle trees differing",
                &self.repair_ranges_differing,
            ),
            (
                "kv_repair_bytes_streamed_total",
                "bytes of cells repair read from and wrote to replicas",
                &self.repair_bytes_streamed,
            ),
        ]
    }

    /// The Prometheus exposition of every counter, plus the gauges passed in.
    pub fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
        let mut out = String::new();
        for (name, help, c) in self.counters() {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.get()
            );
        }
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }

    /// Appends the engine series of each `(keyspace, stats)`, labelled by keyspace.
    pub fn render_engines(out: &mut String, engines: &[(String, DbStats)]) {
        for (name, help, kind, value) in ENGINE_SERIES {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (keyspace, stats) in engines {
                let _ = writeln!(out, "{name}{{keyspace=\"{keyspace}\"}} {}", value(stats));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::cache::CacheStats;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        m.hints_stored.add(3);
        let text = m.render(&[("kv_up", "1 when serving", 1)]);
        assert!(text.contains("kv_hints_stored_total 3\n"), "{text}");
        assert!(text.contains("# TYPE kv_up gauge\nkv_up 1\n"), "{text}");
    }

    #[test]
    fn renders_engine_series_per_keyspace() {
        let stats = DbStats {
            compactions_pending: 2,
            tables_per_level: vec![5, 1],
            write_stall_micros: 1500,
            block_cache: CacheStats {
                hits: 7,
                misses: 3,
                ..CacheStats::default()
            },
            row_cache: CacheStats {
                hits: 11,
                ..CacheStats::default()
            },
            ..DbStats::default()
        };
        let mut text = String::new();
        Metrics::render_engines(
            &mut text,
            &[("ycsb".into(), stats.clone()), ("b".into(), stats)],
        );
        assert!(
            text.contains("kv_engine_compactions_pending{keyspace=\"ycsb\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("kv_engine_l0_tables{keyspace=\"b\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE kv_engine_write_stall_microseconds_total counter\nkv_engine_write_stall_microseconds_total{keyspace=\"ycsb\"} 1500\n"), "{text}");
        for series in [
            "kv_engine_block_cache_hits_total{keyspace=\"ycsb\"} 7\n",
            "kv_engine_block_cache_misses_total{keyspace=\"ycsb\"} 3\n",
            "kv_engine_row_cache_hits_total{keyspace=\"b\"} 11\n",
            "kv_engine_row_cache_misses_total{keyspace=\"b\"} 0\n",
        ] {
            assert!(text.contains(series), "{series} missing from {text}");
        }
        assert_eq!(
            text.matches("# TYPE kv_engine_l0_tables gauge").count(),
            1,
            "{text}"
        );
    }
}
