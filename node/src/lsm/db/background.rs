//! The flush worker (sealed memtables -> L0 tables) and the compaction worker.

use std::collections::HashSet;
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::pace::Pacer;
use super::version::Version;
use super::{deletion_ms, Inner};
use crate::lsm::cache::BlockCache;
use crate::lsm::cell::{Cell, CellValue};
use crate::lsm::compaction::{self, PickContext, Task};
use crate::lsm::error::{Error, Result};
use crate::lsm::iter::{MergeIter, Source};
use crate::lsm::manifest::{TableEntry, VersionEdit};
use crate::lsm::memtable::Memtable;
use crate::lsm::sstable::{Table, TableBuilder, TableMeta, TableOptions};

/// How often idle workers look again: time alone can make work (expiry, GC horizons).
const IDLE_TICK_MS: u64 = 1000;
/// Entries between checks of a flush's or compaction's pace (and a compaction's check for
/// shutdown): about 1 MiB of YCSB's 1 KB values.
const CHECK_EVERY_ENTRIES: u64 = 1024;

/// Starts the flush and compaction workers. If one cannot be started, those already running
/// are told to stop and the error is returned.
pub(super) fn start(inner: &Arc<Inner>) -> Result<Vec<JoinHandle<()>>> {
    let spawn = |name: &str, work: fn(&Inner)| {
        let worker = inner.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                lower_priority(
                    worker.opts.background_nice,
                    worker.opts.background_sched_idle,
                );
                work(&worker)
            })
            .map_err(|e| Error::io(&inner.dir, e))
    };
    let mut workers = Vec::with_capacity(2);
    for (name, work) in [
        ("lsm-flush", flush_loop as fn(&Inner)),
        ("lsm-compact", compaction_loop),
    ] {
        match spawn(name, work) {
            Ok(handle) => workers.push(handle),
            Err(e) => {
                inner.bg.lock().shutdown = true;
                inner.bg_cond.notify_all();
                return Err(e);
            }
        }
    }
    Ok(workers)
}

/// Gives the calling thread the nice value `nice` and, if `sched_idle`, the SCHED_IDLE policy.
/// Linux keeps both per thread, so this leaves the request threads as they are. Best effort: a
/// refusal costs latency, never correctness.
fn lower_priority(nice: i32, sched_idle: bool) {
    // SAFETY: gettid and setpriority take and return plain integers; no memory is passed.
    let tid = unsafe { libc::gettid() };
    if nice != 0 {
        // SAFETY: as above.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) } != 0 {
            let error = std::io::Error::last_os_error();
            tracing::warn!(nice, %error, "cannot lower the priority of a background thread");
        }
    }
    if sched_idle {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` outlives the call, which only reads it.
        if unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) } != 0 {
            let error = std::io::Error::last_os_error();
            tracing::warn!(%error, "cannot run a background thread under SCHED_IDLE");
        }
    }
}

fn record_failure(inner: &Inner, what: &str, e: &Error) {
    tracing::error!(error = %e, "{what} failed; the database refuses writes until reopened");
    let mut bg = inner.bg.lock();
    bg.error.get_or_insert_with(|| format!("{what}: {e}"));
    drop(bg);
    inner.bg_cond.notify_all();
}

/// What the flush worker does next.
enum FlushWork {
    /// Switch memtables, as a writer asked.
    Switch,
    Flush(Arc<Memtable>),
}

fn flush_loop(inner: &Inner) {
    while let Some(work) = next_flush_work(inner) {
        let (what, result) = match work {
            FlushWork::Switch => ("memtable switch", inner.switch_memtable(false)),
            FlushWork::Flush(mem) => ("flush", flush_one(inner, &mem)),
        };
        if let Err(e) = result {
            record_failure(inner, what, &e);
            return;
        }
        inner.wake_background();
    }
}

/// A requested switch first, so writers stop filling the old memtable; then the oldest
/// sealed memtable. Waits for either; `None` at shutdown.
fn next_flush_work(inner: &Inner) -> Option<FlushWork> {
    let mut bg = inner.bg.lock();
    loop {
        if bg.shutdown {
            return None;
        }
        if inner.switch_requested() {
            return Some(FlushWork::Switch);
        }
        if let Some(mem) = inner.current().imm.last() {
            return Some(FlushWork::Flush(mem.clone()));
        }
        inner
            .bg_cond
            .wait_for(&mut bg, Duration::from_millis(IDLE_TICK_MS));
    }
}

fn flush_one(inner: &Inner, mem: &Arc<Memtable>) -> Result<()> {
    let started = Instant::now();
    fail::fail_point!("flush-build", |_| Err(Error::Injected("flush-build")));
    let number = inner.next_file.fetch_add(1, Ordering::SeqCst);
    let table = if mem.is_empty() {
        None
    } else {
        let meta = write_memtable(inner, number, mem)?;
        inner.counters.add_flush(meta.file_bytes);
        Some(Table::open(&inner.dir, number, inner.block_cache.clone())?)
    };
    let flushed_seq = inner.flushed_seq.load(Ordering::SeqCst).max(mem.max_seq());
    let edit = VersionEdit {
        add_tables: table
            .iter()
            .map(|t| {
                (
                    number,
                    TableEntry {
                        level: 0,
                        file_bytes: t.meta().file_bytes,
                    },
                )
            })
            .collect(),
        remove_wal: mem.wal_segments().to_vec(),
        flushed_seq: Some(flushed_seq),
        next_file_number: Some(inner.next_file.load(Ordering::SeqCst)),
        ..Default::default()
    };
    {
        let _edit = inner.edit_lock.lock();
        inner.manifest.apply(&edit)?;
        inner.flushed_seq.store(flushed_seq, Ordering::SeqCst);
        // Before the install, so a waiter that sees the memtable gone also sees work pending.
        inner.bg.lock().compaction_wanted = true;
        let mut version = inner.version.write();
        let imm = version
            .imm
            .iter()
            .filter(|m| !Arc::ptr_eq(m, mem))
            .cloned()
            .collect();
        let next = version.with_memtables(version.mem.clone(), imm);
        *version = Arc::new(next.with_tables(&[], table.into_iter().map(|t| (0, t)).collect()));
    }
    for segment in mem.wal_segments() {
        crate::lsm::wal::retire_segment(&inner.dir, *segment, inner.opts.wal_recycle_segments_max)?;
    }
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "flushed a memtable"
    );
    Ok(())
}

/// Writes every entry of a sealed memtable into one new L0 table, encoding each cell where it
/// lies: copying each out first (a key and a value reference to count up and down, a queue of
/// chunks) was 2.9% of a load's samples.
fn write_memtable(inner: &Inner, number: u64, mem: &Memtable) -> Result<TableMeta> {
    let mut builder = TableBuilder::create(
        &inner.dir,
        number,
        0,
        inner.opts.clock.now_ms(),
        &TableOptions::from_options(&inner.opts),
    )?
    .fill_cache(inner.flush_cache());
    let mut pacer = Pacer::new(mem.approx_bytes() as u64, inner.flush_pace(), 0);
    let mut added = 0u64;
    let written = mem.try_for_each(
        &mut builder,
        |builder, k, c| builder.add(k, c),
        |builder| {
            added += 1;
            if added.is_multiple_of(CHECK_EVERY_ENTRIES) {
                let slept = pacer.rest(builder.estimated_bytes(), || inner.flush_backlog_high());
                inner.counters.add_paced(slept);
            }
            Ok(())
        },
    );
    if let Err(e) = written {
        let _ = builder.abandon();
        return Err(e);
    }
    builder.finish()
}

impl Inner {
    /// The cache a flush fills as it writes: a flush holds the latest writes, the likeliest to
    /// be read next (RocksDB's `prepopulate_block_cache = kFlushOnly`).
    fn flush_cache(&self) -> Option<Arc<BlockCache>> {
        (self.opts.block_cache_prepopulate && self.block_cache.is_enabled())
            .then(|| self.block_cache.clone())
    }

    /// The cache a compaction fills as it writes: only while every table fits in half of it,
    /// so that rewriting cold data never evicts the blocks reads keep hot.
    fn compaction_cache(&self, v: &Version) -> Option<Arc<BlockCache>> {
        let room = self.block_cache.capacity_bytes() as u64 / 2;
        self.flush_cache().filter(|_| v.table_bytes() <= room)
    }
}

fn compaction_loop(inner: &Inner) {
    while wait_for_compaction_work(inner) {
        let result = run_pending(inner);
        let mut bg = inner.bg.lock();
        bg.compactions_running -= 1;
        drop(bg);
        inner.bg_cond.notify_all();
        if let Err(e) = result {
            record_failure(inner, "compaction", &e);
            return;
        }
    }
}

/// Waits until compaction may be needed; false at shutdown.
fn wait_for_compaction_work(inner: &Inner) -> bool {
    let mut bg = inner.bg.lock();
    while !bg.compaction_wanted && !bg.shutdown {
        let timed_out = inner
            .bg_cond
            .wait_for(&mut bg, Duration::from_millis(IDLE_TICK_MS))
            .timed_out();
        if timed_out {
            break;
        }
    }
    if bg.shutdown || bg.error.is_some() {
        return false;
    }
    bg.compaction_wanted = false;
    bg.compactions_running += 1;
    true
}

fn run_pending(inner: &Inner) -> Result<()> {
    while !inner.bg.lock().shutdown {
        let v = inner.current();
        let Some(task) = pick(inner, &v) else {
            return Ok(());
        };
        run_task(inner, &v, task)?;
        inner.bg_cond.notify_all();
    }
    Ok(())
}

fn pick(inner: &Inner, v: &Version) -> Option<Task> {
    pick_avoiding(inner, v, &v.table_infos(), &HashSet::new())
}

fn pick_avoiding(
    inner: &Inner,
    v: &Version,
    infos: &[compaction::TableInfo],
    busy: &HashSet<u64>,
) -> Option<Task> {
    let cx = PickContext {
        tables: infos,
        busy,
        now_ms: inner.opts.clock.now_ms(),
        gc_horizon_ms: inner.gc_horizon_ms(),
        memtable_min_timestamp: v.memtable_min_timestamp(),
    };
    compaction::pick(&inner.opts.compaction, &cx)
}

/// How many independent tasks the strategy would run now (an estimate of the backlog: tasks
/// that only become due after others finish are not counted).
pub(super) fn pending_tasks(inner: &Inner, v: &Version) -> usize {
    const COUNT_MAX: usize = 64;
    let infos = v.table_infos();
    let mut busy = HashSet::new();
    let mut count = 0;
    while count < COUNT_MAX {
        let Some(task) = pick_avoiding(inner, v, &infos, &busy) else {
            break;
        };
        busy.extend(task.files());
        count += 1;
    }
    count
}

fn run_task(inner: &Inner, v: &Version, task: Task) -> Result<()> {
    let started = Instant::now();
    match &task {
        Task::Merge {
            inputs,
            output_level,
            table_bytes_target,
        } => {
            let Some(outputs) = merge(inner, v, inputs, *output_level, *table_bytes_target)? else {
                return Ok(());
            };
            install(inner, inputs, outputs, *output_level)?;
        }
        Task::Move {
            file_number,
            to_level,
        } => {
            let (_, table) = v
                .find_table(*file_number)
                .ok_or_else(|| missing(*file_number))?;
            let edit = VersionEdit {
                add_tables: vec![(
                    *file_number,
                    TableEntry {
                        level: *to_level,
                        file_bytes: table.meta().file_bytes,
                    },
                )],
                ..Default::default()
            };
            apply_and_install(
                inner,
                &edit,
                &[*file_number],
                vec![(*to_level, table.clone())],
            )?;
        }
        Task::Drop { files } => {
            let edit = VersionEdit {
                remove_tables: files.clone(),
                ..Default::default()
            };
            apply_and_install(inner, &edit, files, Vec::new())?;
            delete_tables(inner, files)?;
        }
    }
    inner.counters.add_compaction();
    tracing::debug!(
        ?task,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "compaction done"
    );
    Ok(())
}

fn missing(file_number: u64) -> Error {
    Error::Manifest(format!("compaction input table {file_number} is not live"))
}

/// Merges the inputs into new tables; `None` if shutdown interrupted it.
fn merge(
    inner: &Inner,
    v: &Version,
    inputs: &[u64],
    level: u32,
    target: Option<u64>,
) -> Result<Option<Vec<TableMeta>>> {
    let tables: Vec<Arc<Table>> = inputs
        .iter()
        .map(|n| {
            v.find_table(*n)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| missing(*n))
        })
        .collect::<Result<_>>()?;
    let gc = Gc::new(inner, v, inputs);
    let mut sources: Vec<Source> = Vec::with_capacity(tables.len());
    for t in &tables {
        let mut it = t.iter(false);
        it.seek_to_first()?;
        sources.push(Box::new(it));
    }
    let read_bytes = tables.iter().map(|t| t.meta().file_bytes).sum();
    inner.counters.add_compaction_read(read_bytes);
    let mut out = Outputs::new(inner, level, target, read_bytes, inner.compaction_cache(v));
    let mut seen = 0u64;
    for item in MergeIter::new(sources, inner.opts.merge_rule.clone(), Bound::Unbounded) {
        let (key, cell) = item?;
        if let Some(cell) = gc.keep(&key, cell) {
            out.add(&key, &cell)?;
        }
        seen += 1;
        if seen.is_multiple_of(CHECK_EVERY_ENTRIES) && !out.rest() {
            out.abandon();
            return Ok(None);
        }
    }
    inner.counters.add_purged(gc.purged.get());
    out.finish().map(Some)
}

/// Decides, cell by cell, what a compaction may drop.
struct Gc<'a> {
    inner: &'a Inner,
    now_ms: u64,
    horizon_ms: u64,
    others: Vec<Arc<Table>>,
    memtables: Vec<Arc<Memtable>>,
    purged: std::cell::Cell<u64>,
}

impl<'a> Gc<'a> {
    fn new(inner: &'a Inner, v: &Version, inputs: &[u64]) -> Self {
        Gc {
            inner,
            now_ms: inner.opts.clock.now_ms(),
            horizon_ms: inner.gc_horizon_ms(),
            others: v
                .tables()
                .filter(|(_, t)| !inputs.contains(&t.meta().file_number))
                .map(|(_, t)| t.clone())
                .collect(),
            memtables: v.memtables().cloned().collect(),
            purged: std::cell::Cell::new(0),
        }
    }

    /// The cell to write, or `None` to purge it. An expired value becomes a tombstone (the
    /// value is dead weight); a deleted cell goes once it is older than the GC horizon and
    /// nothing outside this compaction could hold older data for its key that it shadows.
    fn keep(&self, key: &[u8], mut cell: Cell) -> Option<Cell> {
        if !cell.is_tombstone() && cell.is_expired(self.now_ms) {
            cell.value = CellValue::Tombstone;
            self.inner.invalidate_row(key);
        }
        if cell.is_tombstone()
            && deletion_ms(&cell) < self.horizon_ms
            && !self.shadows_elsewhere(key, &cell)
        {
            self.purged.set(self.purged.get() + 1);
            self.inner.invalidate_row(key);
            return None;
        }
        Some(cell)
    }

    fn shadows_elsewhere(&self, key: &[u8], cell: &Cell) -> bool {
        let in_tables = self.others.iter().any(|t| {
            let p = &t.meta().props;
            p.min_timestamp <= cell.timestamp
                && p.min_key.as_ref() <= key
                && key <= p.max_key.as_ref()
                && t.may_contain(key)
        });
        in_tables
            || self
                .memtables
                .iter()
                .any(|m| m.min_timestamp() <= cell.timestamp && m.contains(key))
    }
}

/// The tables a compaction writes, cut at the target size, paced by the backlog and the
/// operator's bandwidth cap.
struct Outputs<'a> {
    inner: &'a Inner,
    level: u32,
    target: Option<u64>,
    current: Option<TableBuilder>,
    done: Vec<TableMeta>,
    pacer: Pacer,
    cache: Option<Arc<BlockCache>>,
}

impl<'a> Outputs<'a> {
    fn new(
        inner: &'a Inner,
        level: u32,
        target: Option<u64>,
        input_bytes: u64,
        cache: Option<Arc<BlockCache>>,
    ) -> Self {
        Outputs {
            inner,
            level,
            target,
            current: None,
            done: Vec::new(),
            cache,
            pacer: Pacer::new(
                input_bytes,
                inner.compaction_pace(input_bytes),
                inner.opts.compaction_bytes_per_sec,
            ),
        }
    }

    fn add(&mut self, key: &[u8], cell: &Cell) -> Result<()> {
        if self.current.is_none() {
            let number = self.inner.next_file.fetch_add(1, Ordering::SeqCst);
            let opts = TableOptions::from_options(&self.inner.opts);
            self.current = Some(
                TableBuilder::create(
                    &self.inner.dir,
                    number,
                    self.level,
                    self.inner.opts.clock.now_ms(),
                    &opts,
                )?
                .fill_cache(self.cache.clone()),
            );
        }
        let builder = self.current.as_mut().expect("a builder was just created");
        builder.add(key, cell)?;
        if self.target.is_some_and(|t| builder.estimated_bytes() >= t) {
            self.cut()?;
        }
        Ok(())
    }

    fn cut(&mut self) -> Result<()> {
        if let Some(builder) = self.current.take() {
            let meta = builder.finish()?;
            self.inner.counters.add_compaction_written(meta.file_bytes);
            self.done.push(meta);
        }
        Ok(())
    }

    fn written_bytes(&self) -> u64 {
        self.done.iter().map(|m| m.file_bytes).sum::<u64>()
            + self.current.as_ref().map_or(0, |b| b.estimated_bytes())
    }

    /// Sleeps off any lead on the pace; false if the database is shutting down.
    fn rest(&mut self) -> bool {
        let inner = self.inner;
        let written = self.written_bytes();
        let slept = self.pacer.rest(written, || inner.compaction_backlog_high());
        inner.counters.add_paced(slept);
        !inner.bg.lock().shutdown
    }

    fn abandon(mut self) {
        if let Some(b) = self.current.take() {
            let _ = b.abandon();
        }
        for meta in &self.done {
            let _ = std::fs::remove_file(crate::lsm::sstable::table_path(
                &self.inner.dir,
                meta.file_number,
            ));
        }
    }

    fn finish(mut self) -> Result<Vec<TableMeta>> {
        self.cut()?;
        Ok(std::mem::take(&mut self.done))
    }
}

fn install(inner: &Inner, inputs: &[u64], outputs: Vec<TableMeta>, level: u32) -> Result<()> {
    let mut added = Vec::with_capacity(outputs.len());
    for meta in &outputs {
        added.push((
            level,
            Table::open(&inner.dir, meta.file_number, inner.block_cache.clone())?,
        ));
    }
    let edit = VersionEdit {
        add_tables: outputs
            .iter()
            .map(|m| {
                (
                    m.file_number,
                    TableEntry {
                        level,
                        file_bytes: m.file_bytes,
                    },
                )
            })
            .collect(),
        remove_tables: inputs.to_vec(),
        next_file_number: Some(inner.next_file.load(Ordering::SeqCst)),
        ..Default::default()
    };
    apply_and_install(inner, &edit, inputs, added)?;
    delete_tables(inner, inputs)
}

fn apply_and_install(
    inner: &Inner,
    edit: &VersionEdit,
    removed: &[u64],
    added: Vec<(u32, Arc<Table>)>,
) -> Result<()> {
    let _edit = inner.edit_lock.lock();
    inner.manifest.apply(edit)?;
    let mut version = inner.version.write();
    *version = Arc::new(version.with_tables(removed, added));
    Ok(())
}

/// Unlinks obsolete tables; readers still holding them keep their open descriptors.
fn delete_tables(inner: &Inner, files: &[u64]) -> Result<()> {
    for n in files {
        let path = crate::lsm::sstable::table_path(&inner.dir, *n);
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}
