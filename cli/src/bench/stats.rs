//! What a phase measured: latency histograms per operation, errors by kind, and the report
//! printed from them.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::workload::OpKind;

/// How a failed operation is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    Unavailable,
    Timeout,
    Other,
}

impl ErrorKind {
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::Timeout => "TIMEOUT",
            ErrorKind::Other => "OTHER",
        }
    }
}

/// A failed operation: how it counts, and the error in words (the first of each kind is kept
/// for the report).
#[derive(Debug)]
pub struct OpError {
    pub kind: ErrorKind,
    pub message: String,
}

/// One task's figures; tasks merge theirs at the end of a phase.
#[derive(Default)]
pub struct Recorder {
    /// Microseconds, 3 significant digits, up to an hour.
    histograms: BTreeMap<OpKind, Histogram<u64>>,
    errors: BTreeMap<ErrorKind, (u64, String)>,
    /// Reads that found no value: not errors (a `latest` read can race its insert), but worth
    /// seeing.
    pub not_found: u64,
}

impl Recorder {
    pub fn record(&mut self, kind: OpKind, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.histograms
            .entry(kind)
            .or_insert_with(|| {
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
            })
            .saturating_record(us);
    }

    pub fn error(&mut self, error: OpError) {
        let entry = self
            .errors
            .entry(error.kind)
            .or_insert_with(|| (0, error.message));
        entry.0 += 1;
    }

    pub fn merge(&mut self, other: Recorder) {
        for (kind, h) in other.histograms {
            match self.histograms.get_mut(&kind) {
                Some(mine) => mine.add(&h).expect("histograms of the same bounds"),
                None => {
                    self.histograms.insert(kind, h);
                }
            }
        }
        for (kind, (n, message)) in other.errors {
            self.errors.entry(kind).or_insert((0, message)).0 += n;
        }
        self.not_found += other.not_found;
    }

    pub fn report(&self, phase: &'static str, elapsed: Duration) -> PhaseReport {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let operations: BTreeMap<&'static str, OpReport> = OpKind::ALL
            .iter()
            .filter_map(|kind| {
                let h = self.histograms.get(kind)?;
                Some((
                    kind.name(),
                    OpReport {
                        count: h.len(),
                        ops_per_sec: h.len() as f64 / seconds,
                        mean_us: h.mean(),
                        p50_us: h.value_at_quantile(0.5),
                        p95_us: h.value_at_quantile(0.95),
                        p99_us: h.value_at_quantile(0.99),
                        p999_us: h.value_at_quantile(0.999),
                        max_us: h.max(),
                    },
                ))
            })
            .collect();
        let ok: u64 = operations.values().map(|o| o.count).sum();
        let errors: BTreeMap<&'static str, u64> =
            [ErrorKind::Unavailable, ErrorKind::Timeout, ErrorKind::Other]
                .into_iter()
                .map(|k| (k.name(), self.errors.get(&k).map_or(0, |e| e.0)))
                .collect();
        let failed: u64 = errors.values().sum();
        PhaseReport {
            phase,
            ops: ok + failed,
            ok,
            errors,
            first_errors: self
                .errors
                .iter()
                .map(|(k, (_, m))| (k.name(), m.clone()))
                .collect(),
            not_found: self.not_found,
            seconds,
            ops_per_sec: ok as f64 / seconds,
            operations,
        }
    }
}

#[derive(Serialize)]
pub struct OpReport {
    pub count: u64,
    pub ops_per_sec: f64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

#[derive(Serialize)]
pub struct PhaseReport {
    pub phase: &'static str,
    /// Operations finished, failed ones included.
    pub ops: u64,
    pub ok: u64,
    pub errors: BTreeMap<&'static str, u64>,
    /// The message of the first error of each kind seen.
    pub first_errors: BTreeMap<&'static str, String>,
    pub not_found: u64,
    pub seconds: f64,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    pub operations: BTreeMap<&'static str, OpReport>,
}

impl PhaseReport {
    pub fn text(&self) -> String {
        let mut out = format!(
            "{}: {} ops in {:.2}s, {:.0} ops/s, errors: {}",
            self.phase,
            self.ops,
            self.seconds,
            self.ops_per_sec,
            self.errors
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if self.not_found > 0 {
            out.push_str(&format!(", reads not found: {}", self.not_found));
        }
        out.push('\n');
        let rows: Vec<Vec<String>> = self
            .operations
            .iter()
            .map(|(name, o)| {
                vec![
                    (*name).to_owned(),
                    o.count.to_string(),
                    format!("{:.0}", o.ops_per_sec),
                    format!("{:.0}", o.mean_us),
                    o.p50_us.to_string(),
                    o.p95_us.to_string(),
                    o.p99_us.to_string(),
                    o.p999_us.to_string(),
                    o.max_us.to_string(),
                ]
            })
            .collect();
        out.push_str(&crate::output::table(
            &[
                "op",
                "count",
                "ops/s",
                "mean µs",
                "p50 µs",
                "p95 µs",
                "p99 µs",
                "p99.9 µs",
                "max µs",
            ],
            &rows,
        ));
        for (kind, message) in &self.first_errors {
            out.push_str(&format!("first {kind}: {message}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_recorders_add_up() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for i in 1..=100 {
            a.record(OpKind::Read, Duration::from_micros(i));
            b.record(OpKind::Update, Duration::from_micros(i * 10));
        }
        b.error(OpError {
            kind: ErrorKind::Timeout,
            message: "slow".into(),
        });
        a.merge(b);
        let r = a.report("run", Duration::from_secs(2));
        assert_eq!(r.ops, 201);
        assert_eq!(r.ok, 200);
        assert_eq!(r.errors["TIMEOUT"], 1);
        assert_eq!(r.errors["UNAVAILABLE"], 0);
        assert_eq!(r.operations["read"].count, 100);
        assert_eq!(r.operations["update"].max_us, 1000);
        assert!((r.ops_per_sec - 100.0).abs() < 1e-9);
    }
}
