//! YCSB's core workloads: the operation mixes, the key choosers and the key names, following
//! `site.ycsb.workloads.CoreWorkload` so figures compare with published YCSB runs.

use std::sync::atomic::{AtomicU64, Ordering};

use clap::ValueEnum;
use rand::rngs::SmallRng;
use rand::Rng;

/// The six core workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// 50% reads, 50% updates, zipfian
    A,
    /// 95% reads, 5% updates, zipfian
    B,
    /// Reads only, zipfian
    C,
    /// 95% reads of the latest inserts, 5% inserts
    D,
    /// 95% short scans (up to 100 entries), 5% inserts, zipfian
    E,
    /// 50% reads, 50% read-modify-writes, zipfian
    F,
}

/// How the key of a read, update, scan or read-modify-write is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    Uniform,
    /// YCSB's scrambled zipfian (constant 0.99): popular keys spread over the record space
    Zipfian,
    /// Zipfian over the insertion order, newest first
    Latest,
}

/// What one operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Read,
    Update,
    Insert,
    Scan,
    Rmw,
}

impl OpKind {
    pub const ALL: [OpKind; 5] = [
        OpKind::Read,
        OpKind::Update,
        OpKind::Insert,
        OpKind::Scan,
        OpKind::Rmw,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::Scan => "scan",
            OpKind::Rmw => "rmw",
        }
    }
}

/// The longest scan of workload E (YCSB's `maxscanlength`).
pub const MAX_SCAN_LENGTH: u32 = 100;

impl Workload {
    /// Shares of each operation, summing to 1.
    pub fn mix(self) -> &'static [(OpKind, f64)] {
        match self {
            Workload::A => &[(OpKind::Read, 0.5), (OpKind::Update, 0.5)],
            Workload::B => &[(OpKind::Read, 0.95), (OpKind::Update, 0.05)],
            Workload::C => &[(OpKind::Read, 1.0)],
            Workload::D => &[(OpKind::Read, 0.95), (OpKind::Insert, 0.05)],
            Workload::E => &[(OpKind::Scan, 0.95), (OpKind::Insert, 0.05)],
            Workload::F => &[(OpKind::Read, 0.5), (OpKind::Rmw, 0.5)],
        }
    }

    pub fn default_distribution(self) -> Distribution {
        match self {
            Workload::D => Distribution::Latest,
            _ => Distribution::Zipfian,
        }
    }

    pub fn insert_share(self) -> f64 {
        self.mix()
            .iter()
            .filter(|(k, _)| *k == OpKind::Insert)
            .map(|(_, s)| s)
            .sum()
    }

    /// Draws the next operation.
    pub fn pick(self, rng: &mut SmallRng) -> OpKind {
        let mut x: f64 = rng.gen();
        let mix = self.mix();
        for &(kind, share) in mix {
            if x < share {
                return kind;
            }
            x -= share;
        }
        mix[mix.len() - 1].0
    }
}

/// YCSB's key name: `user` and the FNV-1a hash of the record number, so inserts in order do not
/// land in key order.
pub fn key_name(n: u64) -> String {
    format!("user{}", fnv_hash64(n))
}

/// YCSB's `Utils.fnvhash64`: FNV-1a over the 8 bytes, low first, made non-negative.
fn fnv_hash64(mut value: u64) -> u64 {
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    for _ in 0..8 {
        hash ^= value & 0xff;
        hash = hash.wrapping_mul(1_099_511_628_211);
        value >>= 8;
    }
    (hash as i64).unsigned_abs()
}

/// Record numbers handed out to inserts, shared by every task. Reads choose among records whose
/// insert has been acknowledged, so `latest` never asks for a key that was never sent.
pub struct InsertCounter {
    next: AtomicU64,
    acknowledged: AtomicU64,
}

impl InsertCounter {
    /// `records` already exist (the load phase wrote 0..records).
    pub fn new(records: u64) -> Self {
        InsertCounter {
            next: AtomicU64::new(records),
            acknowledged: AtomicU64::new(records),
        }
    }

    pub fn claim(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Inserts finish out of order, so this counts them rather than tracking the highest:
    /// `acknowledged` lags the true frontier by at most the inserts in flight.
    pub fn acknowledge(&self) {
        self.acknowledged.fetch_add(1, Ordering::Release);
    }

    pub fn records(&self) -> u64 {
        self.acknowledged.load(Ordering::Acquire)
    }
}

/// Gray et al.'s zipfian generator ("Quickly generating billion-record synthetic databases"),
/// as YCSB's `ZipfianGenerator`, with its incremental zeta when the item count grows.
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zeta2: f64,
    zetan: f64,
    eta: f64,
}

pub const ZIPFIAN_CONSTANT: f64 = 0.99;

/// YCSB's scrambled zipfian draws over this many items whatever the record count, then hashes
/// into the record space, so the popular keys are spread out and the skew does not depend on
/// the table size.
const SCRAMBLED_ITEMS: u64 = 10_000_000_000;
/// zeta(SCRAMBLED_ITEMS, 0.99), precomputed by YCSB (summing 1e10 terms takes minutes).
const SCRAMBLED_ZETAN: f64 = 26.469_028_201_783_02;

impl Zipfian {
    pub fn new(items: u64, theta: f64) -> Self {
        Self::with_zetan(items, theta, zeta(0, items, theta, 0.0))
    }

    fn with_zetan(items: u64, theta: f64, zetan: f64) -> Self {
        let zeta2 = zeta(0, 2, theta, 0.0);
        let mut z = Zipfian {
            items,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta2,
            zetan,
            eta: 0.0,
        };
        z.eta = z.eta_for();
        z
    }

    fn eta_for(&self) -> f64 {
        (1.0 - (2.0 / self.items as f64).powf(1.0 - self.theta)) / (1.0 - self.zeta2 / self.zetan)
    }

    /// An item in `0..items`, 0 the most popular; grows the item count first when `items` is
    /// larger than last time (YCSB does the same for `latest`).
    pub fn next(&mut self, rng: &mut SmallRng, items: u64) -> u64 {
        if items > self.items {
            self.zetan = zeta(self.items, items, self.theta, self.zetan);
            self.items = items;
            self.eta = self.eta_for();
        }
        let u: f64 = rng.gen();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let n = self.items as f64;
        let item = (n * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        item.min(self.items - 1)
    }
}

/// zeta(n, theta) = sum of 1/i^theta for i in 1..=n, continued from `from` items whose sum is
/// `sum`.
fn zeta(from: u64, n: u64, theta: f64, sum: f64) -> f64 {
    (from..n).fold(sum, |acc, i| acc + 1.0 / ((i + 1) as f64).powf(theta))
}

/// Draws the record number of a read, update, scan or read-modify-write. Each task owns one.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    Uniform,
    Zipfian {
        zipf: Zipfian,
        /// The record space the hash folds into: YCSB's `recordcount + 2 * expected inserts`,
        /// so keys inserted during the run are drawn too.
        space: u64,
    },
    Latest(Zipfian),
}

impl KeyChooser {
    pub fn new(distribution: Distribution, records: u64, expected_inserts: u64) -> Self {
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform,
            Distribution::Zipfian => KeyChooser::Zipfian {
                zipf: Zipfian::with_zetan(SCRAMBLED_ITEMS, ZIPFIAN_CONSTANT, SCRAMBLED_ZETAN),
                space: (records + 2 * expected_inserts).max(1),
            },
            Distribution::Latest => {
                KeyChooser::Latest(Zipfian::new(records.max(1), ZIPFIAN_CONSTANT))
            }
        }
    }

    /// A record number below `records` (those known to exist now).
    pub fn next(&mut self, rng: &mut SmallRng, records: u64) -> u64 {
        let records = records.max(1);
        match self {
            KeyChooser::Uniform => rng.gen_range(0..records),
            KeyChooser::Zipfian { zipf, space } => loop {
                // Scrambled into the whole space; YCSB redraws what is not inserted yet.
                let n = fnv_hash64(zipf.next(rng, SCRAMBLED_ITEMS)) % *space;
                if n < records {
                    return n;
                }
            },
            KeyChooser::Latest(zipf) => records - 1 - zipf.next(rng, records),
        }
    }
}

/// A scan's length: uniform in 1..=MAX_SCAN_LENGTH, YCSB's default `scanlengthdistribution`.
pub fn scan_length(rng: &mut SmallRng) -> u32 {
    rng.gen_range(1..=MAX_SCAN_LENGTH)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::SeedableRng;

    use super::*;

    const DRAWS: usize = 200_000;

    fn counts(chooser: &mut KeyChooser, records: u64) -> HashMap<u64, usize> {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = HashMap::new();
        for _ in 0..DRAWS {
            let n = chooser.next(&mut rng, records);
            assert!(n < records, "{n} out of 0..{records}");
            *counts.entry(n).or_default() += 1;
        }
        counts
    }

    #[test]
    fn zipfian_top_key_gets_a_plausible_share() {
        let records = 10_000;
        let mut chooser = KeyChooser::new(Distribution::Zipfian, records, 0);
        let counts = counts(&mut chooser, records);
        let mut sorted: Vec<usize> = counts.values().copied().collect();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        // Over 1e10 items, item 0 has 1/zeta = 3.8% of the draws; redraws of what falls
        // outside the record space leave the shares of what falls inside as they were.
        let top = sorted[0] as f64 / DRAWS as f64;
        assert!((0.03..0.05).contains(&top), "top key share {top}");
        // Skewed: the 1% most drawn keys take far more than 1%.
        let top_percent: usize = sorted.iter().take(records as usize / 100).sum();
        let share = top_percent as f64 / DRAWS as f64;
        assert!(share > 0.15, "top 1% of keys got {share}");
    }

    #[test]
    fn zipfian_popular_keys_are_scattered() {
        let records = 10_000;
        let mut chooser = KeyChooser::new(Distribution::Zipfian, records, 0);
        let counts = counts(&mut chooser, records);
        let mut by_count: Vec<(u64, usize)> = counts.into_iter().collect();
        by_count.sort_unstable_by_key(|&(_, c)| std::cmp::Reverse(c));
        let low_half = by_count[..10]
            .iter()
            .filter(|(n, _)| *n < records / 2)
            .count();
        assert!((1..10).contains(&low_half), "top 10 keys {by_count:?}");
    }

    #[test]
    fn plain_zipfian_matches_the_formula() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut zipf = Zipfian::new(1000, ZIPFIAN_CONSTANT);
        let zeros = (0..DRAWS)
            .filter(|_| zipf.next(&mut rng, 1000) == 0)
            .count();
        let expected = 1.0 / zeta(0, 1000, ZIPFIAN_CONSTANT, 0.0);
        let got = zeros as f64 / DRAWS as f64;
        assert!((got - expected).abs() < 0.01, "{got} vs {expected}");
    }

    #[test]
    fn incremental_zeta_equals_the_direct_sum() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut zipf = Zipfian::new(100, ZIPFIAN_CONSTANT);
        zipf.next(&mut rng, 5000);
        let direct = zeta(0, 5000, ZIPFIAN_CONSTANT, 0.0);
        assert!((zipf.zetan - direct).abs() < 1e-9);
    }

    #[test]
    fn latest_favours_recent_inserts() {
        let records = 10_000;
        let mut chooser = KeyChooser::new(Distribution::Latest, records, 0);
        let counts = counts(&mut chooser, records);
        let newest = counts.get(&(records - 1)).copied().unwrap_or(0) as f64 / DRAWS as f64;
        assert!(newest > 0.05, "newest record share {newest}");
        let recent: usize = counts
            .iter()
            .filter(|(n, _)| **n >= records - 100)
            .map(|(_, c)| c)
            .sum();
        let oldest_100: usize = counts
            .iter()
            .filter(|(n, _)| **n < 100)
            .map(|(_, c)| c)
            .sum();
        assert!(recent > 20 * oldest_100.max(1), "{recent} vs {oldest_100}");
        // New inserts become the favourites at once.
        let mut rng = SmallRng::seed_from_u64(9);
        let newer = (0..DRAWS)
            .filter(|_| chooser.next(&mut rng, records + 50) >= records)
            .count();
        assert!(newer as f64 / DRAWS as f64 > 0.3);
    }

    #[test]
    fn uniform_covers_the_space_evenly() {
        let records = 1_000;
        let mut chooser = KeyChooser::new(Distribution::Uniform, records, 0);
        let counts = counts(&mut chooser, records);
        assert_eq!(counts.len(), records as usize);
        let expected = DRAWS as f64 / records as f64;
        for (&n, &c) in &counts {
            assert!(
                (c as f64 - expected).abs() < expected * 0.4,
                "record {n} drawn {c} times, expected ~{expected}"
            );
        }
    }

    #[test]
    fn mixes_are_drawn_in_their_proportions() {
        let mut rng = SmallRng::seed_from_u64(5);
        for workload in Workload::value_variants() {
            let mix = workload.mix();
            let total: f64 = mix.iter().map(|(_, s)| s).sum();
            assert!((total - 1.0).abs() < 1e-12, "{workload:?}");
            let mut counts: HashMap<OpKind, usize> = HashMap::new();
            for _ in 0..DRAWS {
                *counts.entry(workload.pick(&mut rng)).or_default() += 1;
            }
            for &(kind, share) in mix {
                let got = counts.get(&kind).copied().unwrap_or(0) as f64 / DRAWS as f64;
                assert!(
                    (got - share).abs() < 0.005,
                    "{workload:?} {kind:?}: {got} vs {share}"
                );
            }
            assert_eq!(counts.len(), mix.len(), "{workload:?} drew {counts:?}");
        }
    }

    #[test]
    fn keys_are_ycsb_names() {
        assert!(key_name(0).starts_with("user"));
        assert_ne!(key_name(1), key_name(2));
        assert!(fnv_hash64(u64::MAX) < 1 << 63);
    }

    #[test]
    fn scan_lengths_stay_in_bounds() {
        let mut rng = SmallRng::seed_from_u64(2);
        let lengths: Vec<u32> = (0..10_000).map(|_| scan_length(&mut rng)).collect();
        assert!(lengths.iter().all(|l| (1..=MAX_SCAN_LENGTH).contains(l)));
        assert!(lengths.contains(&1) && lengths.contains(&MAX_SCAN_LENGTH));
    }
}
