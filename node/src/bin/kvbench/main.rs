//! kvbench: db_bench-style workloads run the same way on our LSM engine and on peer engines
//! (RocksDB, fjall, sled), so their figures can be set side by side. See docs/benchmarks.md.

mod engines;
mod report;
mod workload;

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};

use clap::Parser;

use engines::{Codec, Engine, EngineKind, Settings, SyncMode};
use report::{Report, RunFacts};
use workload::{Benchmark, LiveKeys, Workload};

/// The allocator our node binaries ship with (glibc malloc's free-list upkeep showed up at ~7%
/// of a fill profile). Peers written in C++ keep their own allocation paths.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "db_bench-style benchmark for our LSM engine and its peers")]
struct Args {
    #[arg(long, value_enum, default_value = "ours")]
    engine: EngineKind,
    /// Comma-separated, run in order on one database; fills start from an empty one.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "fillrandom,readrandom"
    )]
    benchmarks: Vec<Benchmark>,
    /// Entries written by fills and overwrite; keys are drawn from 0..num.
    #[arg(long, default_value_t = 1_000_000)]
    num: u64,
    /// Lookups or seeks done by read benchmarks (default: --num).
    #[arg(long)]
    reads: Option<u64>,
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, value_enum, default_value = "none")]
    sync: SyncMode,
    /// Database directory (default: $TMPDIR/kvbench-ENGINE).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Keep what is in --db instead of starting empty (fills still start empty).
    #[arg(long)]
    use_existing: bool,
    /// Block cache bytes (sled: its page cache).
    #[arg(long, default_value_t = 64 << 20)]
    cache_bytes: usize,
    /// Block compression (fjall always uses LZ4, sled none).
    #[arg(long, value_enum, default_value = "zstd")]
    compression: Codec,
    /// One JSON object per benchmark instead of a table.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value_t = 301)]
    seed: u64,
    /// Entries read after each seek in seekrandom.
    #[arg(long, default_value_t = 10)]
    seek_nexts: usize,
}

impl Args {
    fn validate(&self) -> Result<()> {
        ensure!(
            self.key_size >= 8,
            "--key-size must be at least 8 (the key index is 8 bytes)"
        );
        ensure!(
            self.num > 0 && self.threads > 0,
            "--num and --threads must be positive"
        );
        Ok(())
    }

    fn db_dir(&self) -> PathBuf {
        self.db
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("kvbench-{}", self.engine.name())))
    }

    fn workload(&self) -> Workload {
        Workload {
            num: self.num,
            reads: self.reads.unwrap_or(self.num),
            key_size: self.key_size,
            value_size: self.value_size,
            threads: self.threads,
            seek_nexts: self.seek_nexts,
            seed: self.seed,
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    args.validate()?;
    let dir = args.db_dir();
    let settings = Settings {
        sync: args.sync,
        cache_bytes: args.cache_bytes,
        compression: args.compression,
    };
    if !args.use_existing {
        empty_dir(&dir)?;
    }
    let mut engine = engines::open(args.engine, &dir, &settings)?;
    let mut live = None;
    if !args.json {
        report::print_header();
    }
    for &bench in &args.benchmarks {
        if bench.is_fill() {
            engine.close()?;
            empty_dir(&dir)?;
            engine = engines::open(args.engine, &dir, &settings)?;
            live = Some(LiveKeys::new(args.num));
        }
        let report = run_one(&args, bench, engine.as_ref(), &dir, live.as_ref())?;
        if args.json {
            report::print_json(&report)?;
        } else {
            report::print_row(&report);
        }
    }
    engine.close()
}

/// Times one benchmark; after a writing one, lets the engine settle so the amplification figures
/// include the flushes and compactions the writes caused.
fn run_one(
    args: &Args,
    bench: Benchmark,
    engine: &dyn Engine,
    dir: &Path,
    live: Option<&LiveKeys>,
) -> Result<Report> {
    let written_before = report::process_bytes_written()?;
    let measured = workload::run(bench, engine, &args.workload(), live)?;
    if measured.user_write_bytes > 0 {
        engine.settle()?;
    }
    let entry_bytes = (args.key_size + args.value_size) as u64;
    let facts = RunFacts {
        engine: args.engine.name(),
        benchmark: bench.name(),
        sync: args.sync.name(),
        compression: args.compression.name(),
        threads: args.threads,
        key_size: args.key_size,
        value_size: args.value_size,
        process_bytes_written: report::process_bytes_written()? - written_before,
        disk_bytes: report::dir_bytes(dir)?,
        live_user_bytes: live.map(|l| l.count() * entry_bytes),
    };
    Ok(Report::new(&measured, facts))
}

fn empty_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}
