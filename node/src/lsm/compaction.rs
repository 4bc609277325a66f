//! Choosing what to compact. Pure functions over table descriptions, so every strategy is
//! tested without touching disk; the database runs the tasks they return.

use std::collections::{BTreeMap, HashSet};

use super::clock::hlc_physical_ms;
use super::options::CompactionStrategy;
use super::sstable::Properties;

/// Deepest level a leveled tree uses.
pub const LEVELS_MAX: u32 = 7;
/// A table whose droppable cells exceed this share is compacted alone (size-tiered, and within
/// time windows), as Cassandra's `tombstone_threshold`.
const TOMBSTONE_RATIO_MAX: f64 = 0.2;
/// ...but not more often than this, so unpurgeable tombstones do not cause a loop.
const TOMBSTONE_COMPACTION_INTERVAL_MS: u64 = 24 * 3600 * 1000;
/// Size-tiered: tables below this size all share one bucket.
const SMALL_TABLE_BYTES: u64 = 4 << 20;

/// What the picker needs to know about a live table.
#[derive(Clone, Debug, PartialEq)]
pub struct TableInfo {
    pub file_number: u64,
    /// Where the manifest has it now (`props.level` is where it was written).
    pub level: u32,
    pub file_bytes: u64,
    pub props: Properties,
}

impl TableInfo {
    fn overlaps(&self, min: &[u8], max: &[u8]) -> bool {
        self.props.min_key.as_ref() <= max && min <= self.props.max_key.as_ref()
    }

    /// Every cell carries an expiry, and the last one lapsed before `horizon_ms`.
    fn fully_expired_before(&self, horizon_ms: u64) -> bool {
        self.props.entries > 0
            && self.props.expiring == self.props.entries
            && self.props.max_expires_at_ms < horizon_ms
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Task {
    /// Merge `inputs` into new tables at `output_level`, cut at `table_bytes_target` if set.
    Merge {
        inputs: Vec<u64>,
        output_level: u32,
        table_bytes_target: Option<u64>,
    },
    /// Move a table to another level without rewriting it.
    Move { file_number: u64, to_level: u32 },
    /// Delete tables whose every cell has expired and can shadow nothing.
    Drop { files: Vec<u64> },
}

impl Task {
    pub fn files(&self) -> Vec<u64> {
        match self {
            Task::Merge { inputs, .. } => inputs.clone(),
            Task::Move { file_number, .. } => vec![*file_number],
            Task::Drop { files } => files.clone(),
        }
    }
}

/// The inputs to a pick: live tables, those already being compacted, and time.
pub struct PickContext<'a> {
    pub tables: &'a [TableInfo],
    pub busy: &'a HashSet<u64>,
    pub now_ms: u64,
    /// Deleted cells older than this (wall-clock ms) may be purged.
    pub gc_horizon_ms: u64,
    /// Smallest timestamp still only in memtables (`u64::MAX` if none).
    pub memtable_min_timestamp: u64,
}

/// The next task the strategy wants, or `None` if the tree is in shape.
pub fn pick(strategy: &CompactionStrategy, cx: &PickContext) -> Option<Task> {
    match *strategy {
        CompactionStrategy::Leveled {
            l0_trigger_files,
            l1_bytes,
            level_multiplier,
            table_bytes_target,
        } => {
            let shape = LeveledShape {
                l0_trigger_files,
                l1_bytes,
                level_multiplier,
                table_bytes_target,
            };
            pick_leveled(&shape, cx)
        }
        CompactionStrategy::SizeTiered {
            min_threshold,
            max_threshold,
            bucket_low,
            bucket_high,
        } => {
            let tiers = Tiers {
                min_threshold,
                max_threshold,
                bucket_low,
                bucket_high,
            };
            let free: Vec<&TableInfo> = cx
                .tables
                .iter()
                .filter(|t| !cx.busy.contains(&t.file_number))
                .collect();
            pick_tiered(&tiers, &free).or_else(|| pick_tombstone_heavy(&free, cx))
        }
        CompactionStrategy::TimeWindow {
            window_ms,
            min_threshold,
        } => pick_time_window(window_ms, min_threshold, cx),
    }
}

struct LeveledShape {
    l0_trigger_files: usize,
    l1_bytes: u64,
    level_multiplier: u64,
    table_bytes_target: u64,
}

impl LeveledShape {
    fn target_bytes(&self, level: u32) -> u64 {
        let mut target = self.l1_bytes;
        for _ in 1..level {
            target = target.saturating_mul(self.level_multiplier);
        }
        target
    }
}

fn level_tables<'a>(cx: &'a PickContext, level: u32) -> impl Iterator<Item = &'a TableInfo> {
    cx.tables.iter().filter(move |t| t.level == level)
}

fn pick_leveled(shape: &LeveledShape, cx: &PickContext) -> Option<Task> {
    pick_l0(shape, cx).or_else(|| pick_deeper_level(shape, cx))
}

fn pick_l0(shape: &LeveledShape, cx: &PickContext) -> Option<Task> {
    let l0: Vec<&TableInfo> = level_tables(cx, 0).collect();
    if l0.len() < shape.l0_trigger_files || l0.iter().any(|t| cx.busy.contains(&t.file_number)) {
        return None;
    }
    let min = l0.iter().map(|t| &t.props.min_key).min()?;
    let max = l0.iter().map(|t| &t.props.max_key).max()?;
    let l1: Vec<&TableInfo> = level_tables(cx, 1)
        .filter(|t| t.overlaps(min, max))
        .collect();
    if l1.iter().any(|t| cx.busy.contains(&t.file_number)) {
        return None;
    }
    let inputs = l0.iter().chain(&l1).map(|t| t.file_number).collect();
    Some(Task::Merge {
        inputs,
        output_level: 1,
        table_bytes_target: Some(shape.table_bytes_target),
    })
}

fn pick_deeper_level(shape: &LeveledShape, cx: &PickContext) -> Option<Task> {
    let mut scores: Vec<(f64, u32)> = (1..LEVELS_MAX - 1)
        .map(|level| {
            let bytes: u64 = level_tables(cx, level).map(|t| t.file_bytes).sum();
            (bytes as f64 / shape.target_bytes(level) as f64, level)
        })
        .filter(|(score, _)| *score >= 1.0)
        .collect();
    scores.sort_by(|a, b| b.0.total_cmp(&a.0));
    scores
        .into_iter()
        .find_map(|(_, level)| pick_in_level(shape, cx, level))
}

/// Of a level's free tables, the one whose rewrite costs least per byte it pushes down
/// (RocksDB's min-overlapping-ratio).
fn pick_in_level(shape: &LeveledShape, cx: &PickContext, level: u32) -> Option<Task> {
    let next: Vec<&TableInfo> = level_tables(cx, level + 1).collect();
    let mut best: Option<(f64, &TableInfo, Vec<&TableInfo>)> = None;
    for t in level_tables(cx, level).filter(|t| !cx.busy.contains(&t.file_number)) {
        let overlap: Vec<&TableInfo> = next
            .iter()
            .copied()
            .filter(|n| n.overlaps(&t.props.min_key, &t.props.max_key))
            .collect();
        if overlap.iter().any(|n| cx.busy.contains(&n.file_number)) {
            continue;
        }
        let ratio =
            overlap.iter().map(|n| n.file_bytes).sum::<u64>() as f64 / t.file_bytes.max(1) as f64;
        if best.as_ref().is_none_or(|(r, _, _)| ratio < *r) {
            best = Some((ratio, t, overlap));
        }
    }
    let (_, table, overlap) = best?;
    if overlap.is_empty() {
        return Some(Task::Move {
            file_number: table.file_number,
            to_level: level + 1,
        });
    }
    let inputs = std::iter::once(table)
        .chain(overlap)
        .map(|t| t.file_number)
        .collect();
    Some(Task::Merge {
        inputs,
        output_level: level + 1,
        table_bytes_target: Some(shape.table_bytes_target),
    })
}

struct Tiers {
    min_threshold: usize,
    max_threshold: usize,
    bucket_low: f64,
    bucket_high: f64,
}

/// Size-tiered: groups tables of similar size and merges the bucket of smallest tables that
/// has enough members.
fn pick_tiered(tiers: &Tiers, tables: &[&TableInfo]) -> Option<Task> {
    let mut sorted: Vec<&TableInfo> = tables.to_vec();
    sorted.sort_by_key(|t| t.file_bytes);
    let mut buckets: Vec<Vec<&TableInfo>> = Vec::new();
    for t in sorted {
        match buckets.last_mut() {
            Some(bucket) if fits_bucket(tiers, bucket, t) => bucket.push(t),
            _ => buckets.push(vec![t]),
        }
    }
    let bucket = buckets
        .into_iter()
        .find(|b| b.len() >= tiers.min_threshold)?;
    let inputs = bucket
        .iter()
        .take(tiers.max_threshold)
        .map(|t| t.file_number)
        .collect();
    Some(Task::Merge {
        inputs,
        output_level: 0,
        table_bytes_target: None,
    })
}

fn fits_bucket(tiers: &Tiers, bucket: &[&TableInfo], t: &TableInfo) -> bool {
    let avg = bucket.iter().map(|b| b.file_bytes).sum::<u64>() as f64 / bucket.len() as f64;
    let size = t.file_bytes as f64;
    let small = t.file_bytes < SMALL_TABLE_BYTES && avg < SMALL_TABLE_BYTES as f64;
    small || (size >= avg * tiers.bucket_low && size <= avg * tiers.bucket_high)
}

/// A table mostly made of tombstones and expiring cells, rewritten alone so they can go.
fn pick_tombstone_heavy(tables: &[&TableInfo], cx: &PickContext) -> Option<Task> {
    tables
        .iter()
        .filter(|t| {
            cx.now_ms.saturating_sub(t.props.created_ms) >= TOMBSTONE_COMPACTION_INTERVAL_MS
        })
        .filter(|t| hlc_physical_ms(t.props.min_timestamp) < cx.gc_horizon_ms)
        .find(|t| {
            let droppable = t.props.tombstones + t.props.expiring;
            t.props.entries > 0 && droppable as f64 / t.props.entries as f64 > TOMBSTONE_RATIO_MAX
        })
        .map(|t| Task::Merge {
            inputs: vec![t.file_number],
            output_level: t.level,
            table_bytes_target: None,
        })
}

/// Time-window: drop fully expired tables, compact the newest window size-tiered and every
/// older window down to one table.
fn pick_time_window(window_ms: u64, min_threshold: usize, cx: &PickContext) -> Option<Task> {
    if let Some(drop) = pick_expired_drop(cx) {
        return Some(drop);
    }
    let free: Vec<&TableInfo> = cx
        .tables
        .iter()
        .filter(|t| !cx.busy.contains(&t.file_number))
        .collect();
    let mut windows: BTreeMap<u64, Vec<&TableInfo>> = BTreeMap::new();
    for t in &free {
        windows
            .entry(hlc_physical_ms(t.props.max_timestamp) / window_ms)
            .or_default()
            .push(t);
    }
    let newest = *windows.keys().next_back()?;
    let tiers = Tiers {
        min_threshold,
        max_threshold: 32,
        bucket_low: 0.5,
        bucket_high: 1.5,
    };
    let newest_task = pick_tiered(&tiers, &windows[&newest]);
    newest_task
        .or_else(|| {
            windows
                .iter()
                .filter(|(w, tables)| **w != newest && tables.len() > 1)
                .map(|(_, tables)| Task::Merge {
                    inputs: tables.iter().map(|t| t.file_number).collect(),
                    output_level: 0,
                    table_bytes_target: None,
                })
                .next()
        })
        .or_else(|| pick_tombstone_heavy(&free, cx))
}

/// Tables whose every cell expired before the GC horizon, provided no other table or memtable
/// could hold older data for their keys that they still shadow.
fn pick_expired_drop(cx: &PickContext) -> Option<Task> {
    let files: Vec<u64> = cx
        .tables
        .iter()
        .filter(|t| {
            let horizon = cx.gc_horizon_ms.min(cx.now_ms);
            !cx.busy.contains(&t.file_number) && t.fully_expired_before(horizon)
        })
        .filter(|t| t.props.max_timestamp < cx.memtable_min_timestamp)
        .filter(|t| {
            !cx.tables.iter().any(|o| {
                o.file_number != t.file_number
                    && o.overlaps(&t.props.min_key, &t.props.max_key)
                    && o.props.min_timestamp <= t.props.max_timestamp
            })
        })
        .map(|t| t.file_number)
        .collect();
    (!files.is_empty()).then_some(Task::Drop { files })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::clock::hlc_from_physical_ms;
    use bytes::Bytes;

    const MIB: u64 = 1 << 20;

    fn table(file_number: u64, level: u32, mib: u64, keys: (&str, &str)) -> TableInfo {
        TableInfo {
            file_number,
            level,
            file_bytes: mib * MIB,
            props: Properties {
                min_key: Bytes::copy_from_slice(keys.0.as_bytes()),
                max_key: Bytes::copy_from_slice(keys.1.as_bytes()),
                entries: 100,
                ..Properties::default()
            },
        }
    }

    fn cx<'a>(tables: &'a [TableInfo], busy: &'a HashSet<u64>) -> PickContext<'a> {
        PickContext {
            tables,
            busy,
            now_ms: 1_000,
            gc_horizon_ms: 0,
            memtable_min_timestamp: u64::MAX,
        }
    }

    #[test]
    fn leveled_waits_for_four_l0_files_then_takes_overlapping_l1() {
        let none = HashSet::new();
        let mut tables: Vec<_> = (1..=3).map(|i| table(i, 0, 1, ("c", "f"))).collect();
        tables.push(table(10, 1, 2, ("a", "b")));
        tables.push(table(11, 1, 2, ("d", "e")));
        assert_eq!(
            pick(&CompactionStrategy::leveled(), &cx(&tables, &none)),
            None
        );
        tables.push(table(4, 0, 1, ("c", "g")));
        let task = pick(&CompactionStrategy::leveled(), &cx(&tables, &none)).unwrap();
        assert_eq!(
            task,
            Task::Merge {
                inputs: vec![1, 2, 3, 4, 11],
                output_level: 1,
                table_bytes_target: Some(8 * MIB)
            }
        );
        let busy: HashSet<u64> = [11].into();
        assert_eq!(
            pick(&CompactionStrategy::leveled(), &cx(&tables, &busy)),
            None
        );
    }

    #[test]
    fn oversized_level_pushes_the_cheapest_table_down() {
        let none = HashSet::new();
        let strategy = CompactionStrategy::Leveled {
            l0_trigger_files: 4,
            l1_bytes: 10 * MIB,
            level_multiplier: 10,
            table_bytes_target: 8 * MIB,
        };
        let tables = vec![
            table(1, 1, 6, ("a", "c")),
            table(2, 1, 6, ("d", "f")),
            table(3, 2, 50, ("a", "c")),
        ];
        assert_eq!(
            pick(&CompactionStrategy::leveled(), &cx(&tables, &none)),
            None,
            "12 MiB is within the default L1"
        );
        let task = pick(&strategy, &cx(&tables, &none)).unwrap();
        assert_eq!(
            task,
            Task::Move {
                file_number: 2,
                to_level: 2
            }
        );
    }

    #[test]
    fn size_tiered_merges_four_similar_tables() {
        let none = HashSet::new();
        let mut tables: Vec<_> = (1..=3).map(|i| table(i, 0, 100, ("a", "z"))).collect();
        tables.push(table(9, 0, 1000, ("a", "z")));
        assert_eq!(
            pick(&CompactionStrategy::size_tiered(), &cx(&tables, &none)),
            None
        );
        tables.push(table(4, 0, 120, ("a", "z")));
        let Some(Task::Merge { mut inputs, .. }) =
            pick(&CompactionStrategy::size_tiered(), &cx(&tables, &none))
        else {
            panic!("expected a merge");
        };
        inputs.sort();
        assert_eq!(inputs, vec![1, 2, 3, 4]);
    }

    #[test]
    fn time_window_drops_only_tables_that_shadow_nothing() {
        let none = HashSet::new();
        let window = 1000;
        let mut expired = table(1, 0, 1, ("a", "m"));
        expired.props.expiring = expired.props.entries;
        expired.props.max_expires_at_ms = 500;
        expired.props.min_timestamp = hlc_from_physical_ms(100);
        expired.props.max_timestamp = hlc_from_physical_ms(200);
        let mut older = table(2, 0, 1, ("k", "z"));
        older.props.max_timestamp = hlc_from_physical_ms(5_000);
        older.props.min_timestamp = hlc_from_physical_ms(50);
        let strategy = CompactionStrategy::time_window(window);
        let tables = vec![expired.clone(), older.clone()];
        let mut ctx = cx(&tables, &none);
        ctx.gc_horizon_ms = 600;
        assert_eq!(
            pick(&strategy, &ctx),
            None,
            "table 2 may hold older data table 1 shadows"
        );
        older.props.min_timestamp = hlc_from_physical_ms(300);
        let tables = vec![expired, older];
        let mut ctx = cx(&tables, &none);
        ctx.gc_horizon_ms = 600;
        assert_eq!(pick(&strategy, &ctx), Some(Task::Drop { files: vec![1] }));
        ctx.gc_horizon_ms = 400;
        assert_eq!(pick(&strategy, &ctx), None, "not past the GC horizon yet");
    }

    #[test]
    fn time_window_compacts_an_old_window_to_one_table() {
        let none = HashSet::new();
        let mut tables = Vec::new();
        for (i, ms) in [(1, 100), (2, 200), (3, 5_100)] {
            let mut t = table(i, 0, 1, ("a", "z"));
            t.props.max_timestamp = hlc_from_physical_ms(ms);
            tables.push(t);
        }
        let task = pick(&CompactionStrategy::time_window(1000), &cx(&tables, &none));
        assert_eq!(
            task,
            Some(Task::Merge {
                inputs: vec![1, 2],
                output_level: 0,
                table_bytes_target: None
            })
        );
    }
}
