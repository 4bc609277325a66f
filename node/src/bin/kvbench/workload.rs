//! The benchmarks: which keys each one touches, in what order, and the per-operation timing.
//! Keys, values and orders follow RocksDB's db_bench so figures can be compared with it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engines::Engine;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Benchmark {
    #[value(name = "fillseq")]
    FillSeq,
    #[value(name = "fillrandom")]
    FillRandom,
    #[value(name = "overwrite")]
    Overwrite,
    #[value(name = "readrandom")]
    ReadRandom,
    #[value(name = "readmissing")]
    ReadMissing,
    #[value(name = "seekrandom")]
    SeekRandom,
    #[value(name = "readwhilewriting")]
    ReadWhileWriting,
}

impl Benchmark {
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::FillSeq => "fillseq",
            Benchmark::FillRandom => "fillrandom",
            Benchmark::Overwrite => "overwrite",
            Benchmark::ReadRandom => "readrandom",
            Benchmark::ReadMissing => "readmissing",
            Benchmark::SeekRandom => "seekrandom",
            Benchmark::ReadWhileWriting => "readwhilewriting",
        }
    }

    /// Fills start from an empty database, as in db_bench.
    pub fn is_fill(self) -> bool {
        matches!(self, Benchmark::FillSeq | Benchmark::FillRandom)
    }
}

/// The shape of the data and how much of it each benchmark touches.
#[derive(Clone, Debug)]
pub struct Workload {
    pub num: u64,
    pub reads: u64,
    pub key_size: usize,
    pub value_size: usize,
    pub threads: usize,
    pub seek_nexts: usize,
    pub seed: u64,
}

/// What one benchmark did, summed over its threads (readers only, for readwhilewriting).
pub struct Measured {
    pub ops: u64,
    /// Reads that found a key (seeks that found at least one entry).
    pub found: Option<u64>,
    /// Key and value bytes moved by the timed operations.
    pub bytes: u64,
    /// Key and value bytes handed to the engine by writes, timed or not.
    pub user_write_bytes: u64,
    pub elapsed: Duration,
    pub latency_ns: Histogram<u64>,
    /// Writes done by readwhilewriting's background writer.
    pub background_writes: Option<u64>,
}

/// Which key indices hold a value, so space amplification can divide by live bytes.
pub struct LiveKeys {
    words: Vec<AtomicU64>,
}

impl LiveKeys {
    pub fn new(num: u64) -> Self {
        LiveKeys {
            words: (0..num.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn insert(&self, idx: u64) {
        self.words[(idx / 64) as usize].fetch_or(1 << (idx % 64), Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }
}

pub fn run(
    bench: Benchmark,
    engine: &dyn Engine,
    wl: &Workload,
    live: Option<&LiveKeys>,
) -> Result<Measured> {
    let values = ValuePool::new(wl.seed, wl.value_size);
    let ctx = Ctx {
        engine,
        wl,
        values: &values,
        live,
        seed: wl.seed ^ (bench as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    };
    match bench {
        Benchmark::FillSeq => ctx.parallel(wl.num, |t, n| ctx.fill_seq(t, n)),
        Benchmark::FillRandom | Benchmark::Overwrite => {
            ctx.parallel(wl.num, |t, n| ctx.write_random(t, n))
        }
        Benchmark::ReadRandom => ctx.parallel(wl.reads, |t, n| ctx.read_random(t, n, false)),
        Benchmark::ReadMissing => ctx.parallel(wl.reads, |t, n| ctx.read_random(t, n, true)),
        Benchmark::SeekRandom => ctx.parallel(wl.reads, |t, n| ctx.seek_random(t, n)),
        Benchmark::ReadWhileWriting => ctx.read_while_writing(),
    }
}

/// Per-thread counters; merged once the threads finish.
struct Tally {
    latency_ns: Histogram<u64>,
    ops: u64,
    found: u64,
    bytes: u64,
    written: u64,
}

impl Tally {
    fn new() -> Self {
        Tally {
            latency_ns: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .expect("static histogram bounds"),
            ops: 0,
            found: 0,
            bytes: 0,
            written: 0,
        }
    }

    fn time<T>(&mut self, op: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let out = op()?;
        self.latency_ns
            .saturating_record(start.elapsed().as_nanos() as u64);
        self.ops += 1;
        Ok(out)
    }

    fn merge(&mut self, other: Tally) {
        self.latency_ns
            .add(other.latency_ns)
            .expect("histograms share bounds");
        self.ops += other.ops;
        self.found += other.found;
        self.bytes += other.bytes;
        self.written += other.written;
    }
}

struct Ctx<'a> {
    engine: &'a dyn Engine,
    wl: &'a Workload,
    values: &'a ValuePool,
    live: Option<&'a LiveKeys>,
    seed: u64,
}

impl Ctx<'_> {
    fn rng(&self, thread: usize) -> StdRng {
        StdRng::seed_from_u64(self.seed.wrapping_add(thread as u64 * 0x1000_0000_01B3))
    }

    /// Splits `total` operations over the threads and times the whole run.
    fn parallel(
        &self,
        total: u64,
        work: impl Fn(usize, u64) -> Result<Tally> + Sync,
    ) -> Result<Measured> {
        let threads = self.wl.threads as u64;
        let start = Instant::now();
        let tallies = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let share = total / threads + u64::from(t < total % threads);
                    let work = &work;
                    s.spawn(move || work(t as usize, share))
                })
                .collect();
            handles.into_iter().map(join).collect::<Result<Vec<_>>>()
        })?;
        let elapsed = start.elapsed();
        let mut sum = Tally::new();
        tallies.into_iter().for_each(|t| sum.merge(t));
        Ok(measured(sum, elapsed, None))
    }

    fn put(&self, tally: &mut Tally, key_buf: &mut Vec<u8>, idx: u64, seq: u64) -> Result<()> {
        key(idx, self.wl.key_size, false, key_buf);
        let value = self.values.get(seq);
        tally.time(|| self.engine.put(key_buf, value))?;
        let n = (key_buf.len() + value.len()) as u64;
        tally.bytes += n;
        tally.written += n;
        if let Some(live) = self.live {
            live.insert(idx);
        }
        Ok(())
    }

    fn fill_seq(&self, thread: usize, n: u64) -> Result<Tally> {
        let threads = self.wl.threads as u64;
        let first =
            thread as u64 * (self.wl.num / threads) + (thread as u64).min(self.wl.num % threads);
        let mut tally = Tally::new();
        let mut key_buf = Vec::new();
        for i in first..first + n {
            self.put(&mut tally, &mut key_buf, i, i)?;
        }
        Ok(tally)
    }

    fn write_random(&self, thread: usize, n: u64) -> Result<Tally> {
        let mut rng = self.rng(thread);
        let mut tally = Tally::new();
        let mut key_buf = Vec::new();
        for i in 0..n {
            let idx = rng.gen_range(0..self.wl.num);
            self.put(&mut tally, &mut key_buf, idx, i + ((thread as u64) << 40))?;
        }
        Ok(tally)
    }

    fn read_random(&self, thread: usize, n: u64, missing: bool) -> Result<Tally> {
        let mut rng = self.rng(thread);
        let mut tally = Tally::new();
        let mut key_buf = Vec::new();
        for _ in 0..n {
            key(
                rng.gen_range(0..self.wl.num),
                self.wl.key_size,
                missing,
                &mut key_buf,
            );
            if let Some(len) = tally.time(|| self.engine.get(&key_buf))? {
                tally.found += 1;
                tally.bytes += (key_buf.len() + len) as u64;
            }
        }
        Ok(tally)
    }

    fn seek_random(&self, thread: usize, n: u64) -> Result<Tally> {
        let mut rng = self.rng(thread);
        let mut tally = Tally::new();
        let mut key_buf = Vec::new();
        for _ in 0..n {
            key(
                rng.gen_range(0..self.wl.num),
                self.wl.key_size,
                false,
                &mut key_buf,
            );
            let scan = tally.time(|| self.engine.scan(&key_buf, 1 + self.wl.seek_nexts))?;
            tally.found += u64::from(scan.entries > 0);
            tally.bytes += scan.bytes as u64;
        }
        Ok(tally)
    }

    /// `threads - 1` readers (at least one) run `reads` lookups while one writer overwrites
    /// random keys until the last reader is done; the readers' figures are reported.
    fn read_while_writing(&self) -> Result<Measured> {
        let readers = self.wl.threads.saturating_sub(1).max(1);
        let remaining = AtomicUsize::new(readers);
        let stop = AtomicBool::new(false);
        let start = Instant::now();
        let (tallies, writer) = std::thread::scope(|s| {
            let writer = s.spawn(|| self.write_until(&stop));
            let handles: Vec<_> = (0..readers)
                .map(|t| {
                    let share = self.wl.reads / readers as u64
                        + u64::from((t as u64) < self.wl.reads % readers as u64);
                    let (remaining, stop) = (&remaining, &stop);
                    s.spawn(move || {
                        let out = self.read_random(t + 1, share, false);
                        if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                            stop.store(true, Ordering::Release);
                        }
                        out
                    })
                })
                .collect();
            let tallies = handles.into_iter().map(join).collect::<Result<Vec<_>>>();
            stop.store(true, Ordering::Release);
            (tallies, join(writer))
        });
        let elapsed = start.elapsed();
        let writer = writer?;
        let mut sum = Tally::new();
        tallies?.into_iter().for_each(|t| sum.merge(t));
        sum.written = writer.written;
        Ok(measured(sum, elapsed, Some(writer.ops)))
    }

    fn write_until(&self, stop: &AtomicBool) -> Result<Tally> {
        let mut rng = self.rng(0);
        let mut tally = Tally::new();
        let mut key_buf = Vec::new();
        let mut seq = 0;
        while !stop.load(Ordering::Acquire) {
            let idx = rng.gen_range(0..self.wl.num);
            self.put(&mut tally, &mut key_buf, idx, seq)?;
            seq += 1;
        }
        Ok(tally)
    }
}

fn join<T>(handle: std::thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow!("benchmark thread panicked"))?
}

fn measured(sum: Tally, elapsed: Duration, background_writes: Option<u64>) -> Measured {
    let reads = sum.written == 0 || background_writes.is_some();
    Measured {
        ops: sum.ops,
        found: reads.then_some(sum.found),
        bytes: sum.bytes,
        user_write_bytes: sum.written,
        elapsed,
        latency_ns: sum.latency_ns,
        background_writes,
    }
}

/// db_bench's key layout: the index big-endian in 8 bytes, padded to `size` with b'0'. A missing
/// key gets one more byte, so it sorts between two present keys and only a filter or a block
/// search can rule it out.
pub fn key(idx: u64, size: usize, missing: bool, buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&idx.to_be_bytes());
    buf.resize(size, b'0');
    if missing {
        buf.push(b'.');
    }
}

/// Values cut from a 1 MiB pool of pieces that are half random, half repetition, so block
/// compression shrinks them to about 50%, like db_bench's `--compression_ratio=0.5`.
struct ValuePool {
    data: Vec<u8>,
    value_size: usize,
}

const POOL_BYTES: usize = 1 << 20;
const PIECE_BYTES: usize = 100;

impl ValuePool {
    fn new(seed: u64, value_size: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut data = Vec::with_capacity(POOL_BYTES + value_size + PIECE_BYTES);
        while data.len() < POOL_BYTES + value_size {
            let random: Vec<u8> = (0..PIECE_BYTES / 2)
                .map(|_| rng.gen_range(b' '..=b'~'))
                .collect();
            data.extend(random.iter().cycle().take(PIECE_BYTES));
        }
        ValuePool { data, value_size }
    }

    fn get(&self, seq: u64) -> &[u8] {
        let start = (seq.wrapping_mul(self.value_size as u64) % POOL_BYTES as u64) as usize;
        &self.data[start..start + self.value_size]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_key_sorts_between_neighbours() {
        let (mut a, mut m, mut b) = (Vec::new(), Vec::new(), Vec::new());
        key(7, 16, false, &mut a);
        key(7, 16, true, &mut m);
        key(8, 16, false, &mut b);
        assert!(a < m && m < b);
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn values_compress_to_about_half() {
        let pool = ValuePool::new(1, 100);
        let sample: Vec<u8> = (0..200).flat_map(|i| pool.get(i * 37).to_vec()).collect();
        let packed = zstd::bulk::compress(&sample, 1).unwrap();
        let ratio = packed.len() as f64 / sample.len() as f64;
        assert!((0.35..0.65).contains(&ratio), "ratio {ratio}");
    }

    #[test]
    fn live_keys_count_distinct_indices() {
        let live = LiveKeys::new(130);
        [0, 5, 5, 64, 129].into_iter().for_each(|i| live.insert(i));
        assert_eq!(live.count(), 4);
    }
}
