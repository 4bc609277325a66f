//! The database: write path (WAL + memtable with group commit and back-pressure), read path
//! (memtables, then L0 newest first, then one table per deeper level), and the background
//! flush and compaction workers.

mod background;
mod pace;
mod recovery;
mod stats;
mod version;

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};

use super::cache::{BlockCache, LruCache};
use super::cell::Cell;
use super::clock::hlc_physical_ms;
use super::error::{Error, Result};
use super::iter::MergeIter;
use super::manifest::{Manifest, VersionEdit};
use super::memtable::Memtable;
use super::options::{CompactionStrategy, Options, SyncPolicy};
use super::wal::Wal;
use super::{BlockAccess, Cached, Mutation, TryWrite};

use stats::Counters;
pub use stats::DbStats;
use version::Version;

/// Shards of the row-cache write counters (see [`Inner::row_cache_guard`]).
const ROW_CACHE_STRIPES: usize = 1024;
/// Bytes charged per row-cache entry on top of key and cell.
const ROW_CACHE_ENTRY_OVERHEAD_BYTES: usize = 64;
/// Longest a stalled writer sleeps before re-checking (it is also woken by progress).
const STALL_POLL_MS: u64 = 50;
/// Delay per write while L0 is past its slowdown mark.
const SLOWDOWN_DELAY_US: u64 = 1000;

/// An open database. Cheap to share across threads by reference; `close` it to stop the
/// background workers and sync the WAL (dropping does the same, ignoring errors).
pub struct Db {
    inner: Arc<Inner>,
    workers: Vec<JoinHandle<()>>,
}

struct Inner {
    dir: PathBuf,
    /// Holds the directory's advisory lock while open.
    _lock: std::fs::File,
    opts: Options,
    /// Writers hold it shared from WAL append to memtable insert; a memtable switch holds it
    /// exclusively, so a memtable and its WAL segments always agree.
    write_gate: RwLock<Arc<Memtable>>,
    version: RwLock<Arc<Version>>,
    /// Serialises manifest edits with the version installs they describe.
    edit_lock: Mutex<()>,
    /// Held by the one thread switching memtables.
    switch_lock: Mutex<()>,
    /// Set once a switch is due and the flush worker has been asked for it, until that
    /// switch is done: writers meanwhile go on into the full memtable (its size is a target,
    /// not a bound) instead of one of them doing the switch and waiting for its fsyncs.
    switch_requested: AtomicBool,
    manifest: Manifest,
    wal: Wal,
    next_seq: AtomicU64,
    next_file: AtomicU64,
    flushed_seq: AtomicU64,
    block_cache: Arc<BlockCache>,
    row_cache: LruCache<Bytes, Option<Cell>>,
    row_cache_writes: Vec<AtomicU64>,
    /// Caller-supplied GC horizon in wall-clock ms; 0 means now minus `gc_grace_ms`.
    gc_horizon_ms: AtomicU64,
    /// Background progress: flushes and compactions notify, stalled writers and workers wait.
    bg: Mutex<BgState>,
    bg_cond: Condvar,
    closed: AtomicBool,
    counters: Counters,
    /// Wall-clock ms at which the live memtable started filling.
    memtable_started_ms: AtomicU64,
    /// How long the last memtable switched for being full took to fill; 0 before one has.
    memtable_fill_ms: AtomicU64,
}

#[derive(Default)]
struct BgState {
    /// The first background failure; the database refuses writes after it.
    error: Option<String>,
    compactions_running: usize,
    compaction_wanted: bool,
    shutdown: bool,
    /// Callers waiting in `flush` or `wait_for_compactions`: background work is not paced
    /// while there are any.
    waiters: usize,
}

impl Db {
    /// Opens or creates the database in `dir`, replaying its WAL.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Db> {
        opts.validate()?;
        let inner = Arc::new(recovery::open(dir.as_ref(), opts)?);
        let workers = background::start(&inner)?;
        inner.switch_memtable(false)?;
        inner.wake_background();
        Ok(Db { inner, workers })
    }

    /// Writes one cell.
    pub fn put(&self, key: &[u8], cell: Cell) -> Result<()> {
        self.write(vec![Mutation {
            key: Bytes::copy_from_slice(key),
            cell,
        }])
    }

    /// Writes a batch atomically: after a crash, all of it or none of it is there.
    pub fn write(&self, batch: Vec<Mutation>) -> Result<()> {
        self.inner.write(batch)
    }

    /// As [`Db::write`] when that would not wait for anything but other writers of its WAL
    /// group (which take microseconds); otherwise hands the batch back untouched, so an async
    /// caller writes inline in the common case and moves to a blocking thread only when the
    /// engine is stalling, slowing writes, or syncing every write.
    pub fn try_write(&self, batch: Vec<Mutation>) -> Result<TryWrite> {
        if self.inner.write_would_wait() {
            return Ok(TryWrite::WouldWait(batch));
        }
        self.inner.write_now(batch)?;
        self.inner.request_switch();
        Ok(TryWrite::Written)
    }

    /// The merged cell stored for `key`, tombstones and expired cells included (replication
    /// needs to see them); `None` if the key was never written or has been purged.
    pub fn get(&self, key: &[u8]) -> Result<Option<Cell>> {
        match self.inner.get(key, BlockAccess::Read)? {
            Cached::Hit(found) => Ok(found),
            Cached::Miss => unreachable!("a lookup allowed to read always answers"),
        }
    }

    /// As [`Db::get`], from memory only: [`Cached::Miss`] when a data block is not in the
    /// block cache. Never waits on the disk, so an async runtime may call it inline.
    pub fn try_get(&self, key: &[u8]) -> Result<Cached<Option<Cell>>> {
        self.inner.get(key, BlockAccess::CacheOnly)
    }

    /// The live value of `key` now, if any.
    pub fn get_live(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let now = self.inner.opts.clock.now_ms();
        Ok(self.get(key)?.and_then(|c| c.live_value(now).cloned()))
    }

    /// Merged cells with keys in the range, in key order, tombstones and expired cells included.
    pub fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<Scan> {
        self.inner.scan(start, end)
    }

    /// Seals the memtable and waits until it and every older one are on disk.
    pub fn flush(&self) -> Result<()> {
        self.inner.switch_memtable(true)?;
        self.inner.wait_until(|v, _| v.imm.is_empty())
    }

    /// Waits until the compaction strategy has nothing more to do.
    pub fn wait_for_compactions(&self) -> Result<()> {
        self.inner.wait_until(|v, bg| {
            bg.compactions_running == 0 && !bg.compaction_wanted && v.imm.is_empty()
        })?;
        Ok(())
    }

    /// Sets the time (wall-clock ms) before which tombstones and expired cells may be purged,
    /// e.g. the start of the last repair that covered all data. `None` returns to now minus
    /// `gc_grace_ms`.
    pub fn set_gc_horizon_ms(&self, horizon_ms: Option<u64>) {
        self.inner
            .gc_horizon_ms
            .store(horizon_ms.unwrap_or(0), Ordering::SeqCst);
        self.inner.wake_background();
    }

    pub fn stats(&self) -> DbStats {
        self.inner.stats()
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Stops the workers (a compaction in progress is abandoned, its inputs stay live) and
    /// syncs the WAL. Unflushed memtables are rebuilt from the WAL at the next open.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        {
            let mut bg = self.inner.bg.lock();
            bg.shutdown = true;
        }
        self.inner.bg_cond.notify_all();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        let _gate = self.inner.write_gate.write();
        self.inner.wal.trim()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// A merged range scan. Holds the tables it reads, so compaction can proceed meanwhile.
pub struct Scan {
    inner: MergeIter,
    skip_first: Option<Bytes>,
}

impl Iterator for Scan {
    type Item = Result<(Bytes, Cell)>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.inner.next()?;
        if let (Some(skip), Ok((k, _))) = (&self.skip_first, &item) {
            if k == skip {
                self.skip_first = None;
                return self.inner.next();
            }
        }
        self.skip_first = None;
        Some(item)
    }
}

/// Clears a switch request when the switch that answers it ends, errors included.
struct SwitchRequest<'a>(&'a AtomicBool);

impl Drop for SwitchRequest<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Inner {
    fn write(&self, batch: Vec<Mutation>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.throttle_writes()?;
        self.write_now(batch)?;
        self.request_switch();
        Ok(())
    }

    /// L0 files as back-pressure counts them: only leveled compaction bounds L0.
    fn l0_files(&self, v: &Version) -> usize {
        let leveled = matches!(self.opts.compaction, CompactionStrategy::Leveled { .. });
        if leveled {
            v.levels[0].len()
        } else {
            0
        }
    }

    /// True when a write now would block on more than its WAL group.
    fn write_would_wait(&self) -> bool {
        let v = self.current();
        let l0 = self.l0_files(&v);
        self.opts.sync == SyncPolicy::Always
            || v.imm.len() >= self.opts.immutable_memtables_max
            || l0 >= self.opts.l0_slowdown_files
            || self.memtable_overfull()
    }

    /// Writers go on into a full memtable until the flush worker has switched it, but not
    /// past twice its size: a switch held up by a slow disk or a busy CPU must not let memory
    /// grow without bound.
    fn memtable_overfull(&self) -> bool {
        self.write_gate.read().approx_bytes() >= self.opts.memtable_bytes.saturating_mul(2)
    }

    /// Appends to the WAL and inserts into the memtable, without throttling or switching.
    fn write_now(&self, batch: Vec<Mutation>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let user_bytes = self.validate(&batch)?;
        self.check_open()?;
        {
            let mem = self.write_gate.read();
            let seq = self
                .next_seq
                .fetch_add(batch.len() as u64, Ordering::SeqCst);
            self.wal.append(seq, &batch)?;
            let mut inserter = mem.inserter();
            for (i, m) in batch.into_iter().enumerate() {
                inserter.insert(
                    m.key.clone(),
                    seq + i as u64,
                    m.cell,
                    &*self.opts.merge_rule,
                );
                self.invalidate_row(&m.key);
            }
        }
        self.counters.add_user_bytes(user_bytes);
        Ok(())
    }

    fn validate(&self, batch: &[Mutation]) -> Result<u64> {
        let mut total = 0usize;
        for m in batch {
            if m.key.is_empty() {
                return Err(Error::KeyEmpty);
            }
            if m.key.len() > self.opts.key_bytes_max {
                return Err(Error::KeyTooLarge {
                    len: m.key.len(),
                    max: self.opts.key_bytes_max,
                });
            }
            let value = m.cell.value_len() + m.cell.causal.len();
            if value > self.opts.value_bytes_max {
                return Err(Error::ValueTooLarge {
                    len: value,
                    max: self.opts.value_bytes_max,
                });
            }
            total += m.key.len() + value;
        }
        if total > self.opts.batch_bytes_max {
            return Err(Error::BatchTooLarge {
                len: total,
                max: self.opts.batch_bytes_max,
            });
        }
        Ok(total as u64)
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        match &self.bg.lock().error {
            Some(e) => Err(Error::BackgroundFailed(e.clone())),
            None => Ok(()),
        }
    }

    /// Back-pressure: wait while sealed memtables, L0 or the memtable being switched are at
    /// their limit, and slow down
    /// while L0 is past its slowdown mark, instead of letting memory or read cost grow.
    fn throttle_writes(&self) -> Result<()> {
        loop {
            let v = self.current();
            let l0 = self.l0_files(&v);
            let stop = v.imm.len() >= self.opts.immutable_memtables_max
                || l0 >= self.opts.l0_stop_files
                || self.memtable_overfull();
            if stop {
                // A writer's switch request is cleared when the switch in progress ends, so
                // one made while it ran is lost; a writer held here writes nothing more and
                // would never ask again.
                self.request_switch();
                let started = std::time::Instant::now();
                {
                    let mut bg = self.bg.lock();
                    if bg.error.is_none() && !bg.shutdown {
                        self.bg_cond
                            .wait_for(&mut bg, Duration::from_millis(STALL_POLL_MS));
                    }
                }
                self.counters.add_stall(started.elapsed());
                self.check_open()?;
                continue;
            }
            if l0 >= self.opts.l0_slowdown_files {
                self.counters.add_slowdown();
                std::thread::sleep(Duration::from_micros(SLOWDOWN_DELAY_US));
            }
            return Ok(());
        }
    }

    /// Asks the flush worker for a switch once the memtable is full or its WAL segment due to
    /// rotate. The writer that fills it does not switch itself: it, and every operation of
    /// its batch (a whole pipe message on a replica), would wait for the switch's file
    /// creation and syncs, hundreds of milliseconds while a flush is writing.
    fn request_switch(&self) {
        if self.switch_requested.load(Ordering::Acquire) || !self.switch_due(false) {
            return;
        }
        if !self.switch_requested.swap(true, Ordering::AcqRel) {
            let _bg = self.bg.lock();
            self.bg_cond.notify_all();
        }
    }

    /// Whether a writer asked for a switch that has not been done yet.
    fn switch_requested(&self) -> bool {
        self.switch_requested.load(Ordering::Acquire)
    }

    fn switch_memtable(&self, force: bool) -> Result<()> {
        let _switch = self.switch_lock.lock();
        self.switch_locked(force)
    }

    /// The size at which `mem` is switched: `memtable_bytes` less its jitter, a share drawn
    /// by hashing its first WAL segment number with the seed (deterministic, so a simulation
    /// replays it, and different per node once seeds differ).
    fn switch_bytes(&self, mem: &Memtable) -> usize {
        let percent = u64::from(self.opts.memtable_jitter_percent);
        let segment = mem.wal_segments().first().copied().unwrap_or(0);
        let draw = xxhash_rust::xxh3::xxh3_64_with_seed(
            &segment.to_le_bytes(),
            self.opts.memtable_jitter_seed,
        ) % 10_000;
        let bytes = self.opts.memtable_bytes as u128;
        (bytes - bytes * u128::from(percent * draw) / 1_000_000) as usize
    }

    fn switch_due(&self, force: bool) -> bool {
        let mem = self.write_gate.read();
        !mem.is_empty() && (force || self.is_full(&mem) || self.wal.needs_rotation())
    }

    /// Takes no lock: a second read of `write_gate` on one thread can deadlock behind a
    /// queued switch.
    fn is_full(&self, mem: &Memtable) -> bool {
        mem.approx_bytes() >= self.switch_bytes(mem)
    }

    /// Seals the memtable and starts a new one on a new WAL segment. The segment is made
    /// (manifest edit, file creation, syncs) before writers are held off and the old one is
    /// synced after, so they wait only for a pointer swap: holding them across the five
    /// fsyncs of a switch was the largest source of tail latency under a steady write load.
    fn switch_locked(&self, force: bool) -> Result<()> {
        let _request = SwitchRequest(&self.switch_requested);
        if !self.switch_due(force) {
            return Ok(());
        }
        let full = self.is_full(&self.write_gate.read());
        let segment = self.next_file.fetch_add(1, Ordering::SeqCst);
        {
            let _edit = self.edit_lock.lock();
            self.manifest.apply(&VersionEdit {
                add_wal: vec![segment],
                next_file_number: Some(segment + 1),
                ..Default::default()
            })?;
        }
        let next = self
            .wal
            .prepare(segment)
            .inspect_err(|_| self.unlist_segment(segment))?;
        let held = std::time::Instant::now();
        {
            let mut mem = self.write_gate.write();
            self.wal.switch_to(next)?;
            let fresh = Arc::new(Memtable::new(vec![segment]));
            let sealed = std::mem::replace(&mut *mem, fresh.clone());
            let mut version = self.version.write();
            let imm = std::iter::once(sealed)
                .chain(version.imm.iter().cloned())
                .collect();
            *version = Arc::new(version.with_memtables(fresh, imm));
        }
        self.counters.add_switch();
        self.note_memtable_switch(full);
        let held_us = held.elapsed().as_micros() as u64;
        self.wake_background();
        tracing::debug!(held_us, "switched memtables");
        self.wal.seal_retired()
    }

    /// Takes a segment that was never made back out of the manifest: once a later switch
    /// succeeds it is no longer the newest, and a listed segment that is missing and not the
    /// newest reads as a lost file at the next open.
    fn unlist_segment(&self, segment: u64) {
        let _edit = self.edit_lock.lock();
        let edit = VersionEdit {
            remove_wal: vec![segment],
            ..Default::default()
        };
        if let Err(e) = self.manifest.apply(&edit) {
            tracing::error!(segment, error = %e, "could not unlist a WAL segment that was never made");
        }
    }

    fn get(&self, key: &[u8], access: BlockAccess) -> Result<Cached<Option<Cell>>> {
        if let Some(hit) = self.row_cache.get_ref(key) {
            return Ok(Cached::Hit(hit));
        }
        let stripe = self.row_cache_stripe(key);
        let before = stripe.load(Ordering::SeqCst);
        let (found, from_tables) = match self.current().get(key, &*self.opts.merge_rule, access)? {
            Cached::Hit(found) => (found.cell, found.from_tables),
            Cached::Miss => return Ok(Cached::Miss),
        };
        // A cell the memtables alone answered for is cheaper to find again than to cache, and
        // the hottest keys are written often enough to stay in a memtable: caching them only
        // churned the cache, each fill evicting a row that had cost a table read.
        let worth_caching = from_tables && self.row_cache.is_enabled();
        if worth_caching && stripe.load(Ordering::SeqCst) == before {
            let charge = key.len()
                + found.as_ref().map_or(0, |c| c.encoded_len())
                + ROW_CACHE_ENTRY_OVERHEAD_BYTES;
            let key = Bytes::copy_from_slice(key);
            self.row_cache.insert(key.clone(), found.clone(), charge);
            if stripe.load(Ordering::SeqCst) != before {
                self.row_cache.remove(&key);
            }
        }
        Ok(Cached::Hit(found))
    }

    /// Called after the stored cell of `key` changed.
    fn invalidate_row(&self, key: &[u8]) {
        if self.row_cache.is_enabled() {
            self.row_cache_stripe(key).fetch_add(1, Ordering::SeqCst);
            self.row_cache.remove(key);
        }
    }

    /// The write counter a row-cache fill must see unchanged. A writer bumps it after its
    /// memtable insert and then evicts the key; a reader re-checks it after filling and evicts
    /// its own fill if a write raced in, so the cache never keeps a stale cell.
    fn row_cache_stripe(&self, key: &[u8]) -> &AtomicU64 {
        let h = xxhash_rust::xxh3::xxh3_64(key) as usize;
        &self.row_cache_writes[h % ROW_CACHE_STRIPES]
    }

    fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<Scan> {
        let sources = self.current().scan_sources(start, end)?;
        let end = end.map(Bytes::copy_from_slice);
        let skip_first = match start {
            Bound::Excluded(k) => Some(Bytes::copy_from_slice(k)),
            _ => None,
        };
        Ok(Scan {
            inner: MergeIter::new(sources, self.opts.merge_rule.clone(), end),
            skip_first,
        })
    }

    fn current(&self) -> Arc<Version> {
        self.version.read().clone()
    }

    fn wake_background(&self) {
        self.bg.lock().compaction_wanted = true;
        self.bg_cond.notify_all();
    }

    /// Blocks until `done` holds, failing if a background error occurs first.
    fn wait_until(&self, done: impl Fn(&Version, &BgState) -> bool) -> Result<()> {
        let mut bg = self.bg.lock();
        bg.waiters += 1;
        let outcome = loop {
            if let Some(e) = &bg.error {
                break Err(Error::BackgroundFailed(e.clone()));
            }
            if done(&self.current(), &bg) {
                break Ok(());
            }
            if bg.shutdown {
                break Err(Error::Closed);
            }
            self.bg_cond
                .wait_for(&mut bg, Duration::from_millis(STALL_POLL_MS));
        };
        bg.waiters -= 1;
        outcome
    }

    /// Wall-clock ms before which deleted cells may be purged; never later than now, whatever
    /// the caller set, so nothing can count as expired before it has.
    fn gc_horizon_ms(&self) -> u64 {
        let now = self.opts.clock.now_ms();
        match self.gc_horizon_ms.load(Ordering::SeqCst) {
            0 => now.saturating_sub(self.opts.gc_grace_ms),
            h => h.min(now),
        }
    }

    fn stats(&self) -> DbStats {
        let v = self.current();
        let mut stats = self
            .counters
            .snapshot(&v, &self.block_cache, &self.row_cache, &self.wal);
        stats.compactions_pending = background::pending_tasks(self, &v);
        stats.compactions_running = self.bg.lock().compactions_running;
        stats
    }
}

/// When a deleted cell stops shadowing older data for purposes of GC: a tombstone from its
/// write time, an expiring cell from its expiry, whichever is later.
fn deletion_ms(cell: &Cell) -> u64 {
    hlc_physical_ms(cell.timestamp).max(cell.expires_at_ms.unwrap_or(0))
}

#[cfg(test)]
mod tests;
