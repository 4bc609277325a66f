//! Turns a measured run into figures (throughput, latency percentiles, amplification) and prints
//! them as a table row or one JSON object per benchmark.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::workload::Measured;

#[derive(Serialize)]
pub struct Report {
    pub engine: &'static str,
    pub benchmark: &'static str,
    pub sync: &'static str,
    pub compression: &'static str,
    pub threads: usize,
    pub key_size: usize,
    pub value_size: usize,
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub mb_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub found: Option<u64>,
    pub background_writes: Option<u64>,
    /// Bytes the process caused to be written to storage (all threads, flushes and compactions
    /// included, measured until the engine settled) over the user bytes written.
    pub write_amp: Option<f64>,
    /// Disk blocks allocated under the database directory over the live user bytes.
    pub space_amp: Option<f64>,
    pub disk_bytes: u64,
    pub user_bytes_written: u64,
    pub live_user_bytes: Option<u64>,
}

/// What was known around the run that the measurement itself does not carry.
pub struct RunFacts {
    pub engine: &'static str,
    pub benchmark: &'static str,
    pub sync: &'static str,
    pub compression: &'static str,
    pub threads: usize,
    pub key_size: usize,
    pub value_size: usize,
    pub process_bytes_written: u64,
    pub disk_bytes: u64,
    pub live_user_bytes: Option<u64>,
}

impl Report {
    pub fn new(m: &Measured, ctx: RunFacts) -> Self {
        let secs = m.elapsed.as_secs_f64().max(1e-9);
        let pct = |q: f64| m.latency_ns.value_at_quantile(q) as f64 / 1000.0;
        let user = m.user_write_bytes;
        Report {
            engine: ctx.engine,
            benchmark: ctx.benchmark,
            sync: ctx.sync,
            compression: ctx.compression,
            threads: ctx.threads,
            key_size: ctx.key_size,
            value_size: ctx.value_size,
            ops: m.ops,
            seconds: secs,
            ops_per_sec: m.ops as f64 / secs,
            mb_per_sec: m.bytes as f64 / secs / 1e6,
            p50_us: pct(0.5),
            p99_us: pct(0.99),
            p999_us: pct(0.999),
            found: m.found,
            background_writes: m.background_writes,
            write_amp: (user > 0).then(|| ctx.process_bytes_written as f64 / user as f64),
            space_amp: ctx
                .live_user_bytes
                .filter(|&live| live > 0)
                .map(|live| ctx.disk_bytes as f64 / live as f64),
            disk_bytes: ctx.disk_bytes,
            user_bytes_written: user,
            live_user_bytes: ctx.live_user_bytes,
        }
    }
}

pub fn print_header() {
    println!(
        "{:<8} {:<16} {:>8} {:>12} {:>8} {:>9} {:>9} {:>9} {:>7} {:>7} {:>9}  note",
        "engine",
        "benchmark",
        "sync",
        "ops/s",
        "MB/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "w-amp",
        "s-amp",
        "disk MB"
    );
}

pub fn print_row(r: &Report) {
    let amp = |a: Option<f64>| a.map_or_else(|| "-".to_string(), |a| format!("{a:.2}"));
    println!(
        "{:<8} {:<16} {:>8} {:>12.0} {:>8.1} {:>9.2} {:>9.2} {:>9.2} {:>7} {:>7} {:>9.1}  {}",
        r.engine,
        r.benchmark,
        r.sync,
        r.ops_per_sec,
        r.mb_per_sec,
        r.p50_us,
        r.p99_us,
        r.p999_us,
        amp(r.write_amp),
        amp(r.space_amp),
        r.disk_bytes as f64 / 1e6,
        note(r)
    );
}

fn note(r: &Report) -> String {
    let found = r.found.map(|f| format!("{f} of {} found", r.ops));
    let writes = r.background_writes.map(|w| format!("{w} writes alongside"));
    [found, writes]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn print_json(r: &Report) -> Result<()> {
    println!("{}", serde_json::to_string(r)?);
    Ok(())
}

/// Bytes this process has caused to be sent to storage so far (`write_bytes` in
/// /proc/self/io): it counts every engine's WAL, flushes and compactions the same way, whatever
/// the engine itself reports.
pub fn process_bytes_written() -> Result<u64> {
    let io = std::fs::read_to_string("/proc/self/io").context("reading /proc/self/io")?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .context("no write_bytes in /proc/self/io")?
        .trim()
        .parse()
        .context("parsing write_bytes")
}

/// Disk blocks allocated under `dir`, as `du` counts them: preallocated log space counts.
pub fn dir_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.blocks() * 512
        };
    }
    Ok(total)
}
