//! An immutable snapshot of what a read must look at. Readers clone the current `Arc<Version>`
//! and never hold a lock while they do I/O; background work installs new versions.

use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use crate::lsm::cell::{Cell, MergeRule};
use crate::lsm::compaction::{TableInfo, LEVELS_MAX};
use crate::lsm::error::Result;
use crate::lsm::iter::{MemtableIter, Source};
use crate::lsm::memtable::Memtable;
use crate::lsm::sstable::{Table, TableIter};
use crate::lsm::{BlockAccess, Cached};

/// A point lookup's merged cell, and whether any table was read for it.
#[derive(Default)]
pub struct Found {
    pub cell: Option<Cell>,
    pub from_tables: bool,
}

pub struct Version {
    /// The memtable taking writes.
    pub mem: Arc<Memtable>,
    /// Sealed memtables waiting for flush, newest first.
    pub imm: Vec<Arc<Memtable>>,
    /// `levels[0]` may overlap and is ordered newest timestamp first; deeper levels hold
    /// disjoint tables sorted by key.
    pub levels: Vec<Vec<Arc<Table>>>,
}

impl Version {
    pub fn new(
        mem: Arc<Memtable>,
        imm: Vec<Arc<Memtable>>,
        tables: Vec<(u32, Arc<Table>)>,
    ) -> Self {
        let mut levels: Vec<Vec<Arc<Table>>> = vec![Vec::new(); LEVELS_MAX as usize];
        for (level, table) in tables {
            levels[level as usize].push(table);
        }
        sort_levels(&mut levels);
        Version { mem, imm, levels }
    }

    /// The same tables with `mem`/`imm` replaced.
    pub fn with_memtables(&self, mem: Arc<Memtable>, imm: Vec<Arc<Memtable>>) -> Self {
        Version {
            mem,
            imm,
            levels: self.levels.clone(),
        }
    }

    /// A copy with `removed` tables gone and `added` tables placed at their levels.
    pub fn with_tables(&self, removed: &[u64], added: Vec<(u32, Arc<Table>)>) -> Self {
        let mut levels: Vec<Vec<Arc<Table>>> = self
            .levels
            .iter()
            .map(|l| {
                l.iter()
                    .filter(|t| !removed.contains(&t.meta().file_number))
                    .cloned()
                    .collect()
            })
            .collect();
        for (level, table) in added {
            levels[level as usize].push(table);
        }
        sort_levels(&mut levels);
        Version {
            mem: self.mem.clone(),
            imm: self.imm.clone(),
            levels,
        }
    }

    pub fn memtables(&self) -> impl Iterator<Item = &Arc<Memtable>> {
        std::iter::once(&self.mem).chain(&self.imm)
    }

    pub fn tables(&self) -> impl Iterator<Item = (u32, &Arc<Table>)> {
        self.levels
            .iter()
            .enumerate()
            .flat_map(|(l, ts)| ts.iter().map(move |t| (l as u32, t)))
    }

    /// Bytes on disk of every table at every level.
    pub fn table_bytes(&self) -> u64 {
        self.tables().map(|(_, t)| t.meta().file_bytes).sum()
    }

    pub fn find_table(&self, file_number: u64) -> Option<(u32, &Arc<Table>)> {
        self.tables()
            .find(|(_, t)| t.meta().file_number == file_number)
    }

    pub fn table_infos(&self) -> Vec<TableInfo> {
        self.tables()
            .map(|(level, t)| table_info(level, t))
            .collect()
    }

    pub fn memtable_min_timestamp(&self) -> u64 {
        self.memtables()
            .map(|m| m.min_timestamp())
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The merged cell for `key`, tombstones included. Sources are visited newest first and
    /// skipped once the merge rule says nothing older can change the answer.
    pub fn get(
        &self,
        key: &[u8],
        rule: &dyn MergeRule,
        access: BlockAccess,
    ) -> Result<Cached<Found>> {
        let mut found = Found::default();
        let settled = |found: &Found, older_max: u64| {
            (found.cell.as_ref()).is_some_and(|f| rule.settles(f, older_max))
        };
        for mem in self.memtables() {
            if !settled(&found, mem.max_timestamp()) {
                found.cell = merge_opt(rule, found.cell, mem.get(key));
            }
        }
        for table in self.candidate_tables(key) {
            if !settled(&found, table.meta().props.max_timestamp) && table.may_contain(key) {
                found.from_tables = true;
                match table.lookup(key, access)? {
                    Cached::Hit(cell) => found.cell = merge_opt(rule, found.cell, cell),
                    Cached::Miss => return Ok(Cached::Miss),
                }
            }
        }
        Ok(Cached::Hit(found))
    }

    /// Tables that may hold `key`: every L0 table, then at most one per deeper level.
    fn candidate_tables<'a>(&'a self, key: &'a [u8]) -> impl Iterator<Item = &'a Arc<Table>> + 'a {
        let deeper = self.levels.iter().skip(1).filter_map(move |level| {
            let i = level.partition_point(|t| t.meta().props.max_key.as_ref() < key);
            level
                .get(i)
                .filter(|t| t.meta().props.min_key.as_ref() <= key)
        });
        self.levels[0].iter().chain(deeper)
    }

    /// Sources for a merged scan of `[start, end)`-style bounds (`end` is applied by the merge).
    pub fn scan_sources(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<Vec<Source>> {
        let start_owned = start.map(Bytes::copy_from_slice);
        let mut sources: Vec<Source> = self
            .memtables()
            .map(|m| Box::new(MemtableIter::new(m.clone(), start_owned.clone())) as Source)
            .collect();
        let in_range = |t: &Arc<Table>| overlaps_range(t, start, end);
        for table in self.levels[0].iter().filter(|t| in_range(t)) {
            sources.push(Box::new(seeked(table, start)?));
        }
        for level in self.levels.iter().skip(1) {
            let tables: Vec<Arc<Table>> = level.iter().filter(|t| in_range(t)).cloned().collect();
            if !tables.is_empty() {
                sources.push(Box::new(LevelIter::new(tables, start_owned.clone())));
            }
        }
        Ok(sources)
    }
}

fn merge_opt(rule: &dyn MergeRule, a: Option<Cell>, b: Option<Cell>) -> Option<Cell> {
    match (a, b) {
        (Some(a), Some(b)) => Some(rule.merge(a, b)),
        (a, b) => a.or(b),
    }
}

fn sort_levels(levels: &mut [Vec<Arc<Table>>]) {
    levels[0].sort_by_key(|t| std::cmp::Reverse(t.meta().props.max_timestamp));
    for level in levels.iter_mut().skip(1) {
        level.sort_by(|a, b| a.meta().props.min_key.cmp(&b.meta().props.min_key));
    }
}

pub fn table_info(level: u32, t: &Table) -> TableInfo {
    let meta = t.meta();
    TableInfo {
        file_number: meta.file_number,
        level,
        file_bytes: meta.file_bytes,
        props: meta.props.clone(),
    }
}

fn overlaps_range(t: &Table, start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    let p = &t.meta().props;
    let after_start = match start {
        Bound::Included(s) => p.max_key.as_ref() >= s,
        Bound::Excluded(s) => p.max_key.as_ref() > s,
        Bound::Unbounded => true,
    };
    let before_end = match end {
        Bound::Included(e) => p.min_key.as_ref() <= e,
        Bound::Excluded(e) => p.min_key.as_ref() < e,
        Bound::Unbounded => true,
    };
    after_start && before_end
}

fn seeked(table: &Arc<Table>, start: Bound<&[u8]>) -> Result<TableIter> {
    let mut it = table.iter(true);
    match start {
        Bound::Included(k) | Bound::Excluded(k) => it.seek(k)?,
        Bound::Unbounded => it.seek_to_first()?,
    }
    Ok(it)
}

/// Concatenates the disjoint, sorted tables of one level, opening each only when reached.
struct LevelIter {
    tables: std::vec::IntoIter<Arc<Table>>,
    current: Option<TableIter>,
    start: Option<Bound<Bytes>>,
}

impl LevelIter {
    fn new(tables: Vec<Arc<Table>>, start: Bound<Bytes>) -> Self {
        LevelIter {
            tables: tables.into_iter(),
            current: None,
            start: Some(start),
        }
    }

    fn open_next(&mut self) -> Option<Result<()>> {
        let table = self.tables.next()?;
        let start = self.start.take().unwrap_or(Bound::Unbounded);
        match seeked(&table, start.as_ref().map(|b| b.as_ref())) {
            Ok(it) => {
                self.current = Some(it);
                Some(Ok(()))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

impl Iterator for LevelIter {
    type Item = Result<(Bytes, Cell)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.current.as_mut().and_then(|it| it.next()) {
                return Some(item);
            }
            if let Err(e) = self.open_next()? {
                return Some(Err(e));
            }
        }
    }
}
