//! Counters the node exposes on `/metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        m.hints_stored.add(3);
        let text = m.render(&[("kv_up", "1 when serving", 1)]);
        assert!(text.contains("kv_hints_stored_total 3\n"), "{text}");
        assert!(text.contains("# TYPE kv_up gauge\nkv_up 1\n"), "{text}");
    }
}
