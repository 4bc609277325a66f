//! Opening a database: lock the directory, read the manifest, remove files it does not list,
//! open the live tables and rebuild the memtable from the WAL.

use std::fs;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};

use super::stats::Counters;
use super::version::Version;
use super::{BgState, Inner, ROW_CACHE_STRIPES};
use crate::lsm::cache::{BlockCache, LruCache};
use crate::lsm::error::{Error, IoContext, Result};
use crate::lsm::manifest::{Manifest, ManifestState, VersionEdit};
use crate::lsm::memtable::Memtable;
use crate::lsm::sstable::{table_path, Table};
use crate::lsm::wal::{self, Wal, WalOptions};
use crate::lsm::{MergeRule, Options};

const MANIFEST_DIR: &str = "manifest";
const LOCK_FILE: &str = "LOCK";

pub(super) fn open(dir: &Path, opts: Options) -> Result<Inner> {
    fs::create_dir_all(dir).at(dir)?;
    let lock = lock_dir(dir)?;
    let (manifest, state) = Manifest::open(&dir.join(MANIFEST_DIR))?;
    remove_unlisted_files(dir, &state)?;
    let block_cache = Arc::new(BlockCache::new(opts.block_cache_bytes));
    let tables = open_tables(dir, &state, &block_cache)?;
    let max_file = tables
        .iter()
        .map(|(_, t)| t.meta().file_number)
        .chain(state.wal_segments.iter().copied())
        .max()
        .unwrap_or(0);
    let new_segment = state.next_file_number.max(max_file + 1);
    let (segments, never_created) = existing_segments(dir, &state)?;
    let replayed = Memtable::new(segments.iter().copied().chain([new_segment]).collect());
    let last_seq = replay_wal(
        dir,
        &segments,
        state.flushed_seq,
        &replayed,
        &*opts.merge_rule,
    )?;
    // Segments holding only flushed records would otherwise pile up, one per reopen.
    let (mem, obsolete) = if replayed.is_empty() {
        (Arc::new(Memtable::new(vec![new_segment])), segments)
    } else {
        (Arc::new(replayed), Vec::new())
    };
    manifest.apply(&VersionEdit {
        add_wal: vec![new_segment],
        remove_wal: never_created
            .into_iter()
            .chain(obsolete.iter().copied())
            .collect(),
        next_file_number: Some(new_segment + 1),
        ..Default::default()
    })?;
    wal::trim_recyclable(dir, opts.wal_recycle_segments_max)?;
    for id in obsolete {
        wal::retire_segment(dir, id, opts.wal_recycle_segments_max)?;
    }
    let wal = Wal::create(
        dir,
        new_segment,
        WalOptions::from(&opts),
        opts.clock.clone(),
    )?;
    let version = Version::new(mem.clone(), Vec::new(), tables);
    Ok(Inner {
        dir: dir.to_path_buf(),
        _lock: lock,
        write_gate: RwLock::new(mem),
        version: RwLock::new(Arc::new(version)),
        edit_lock: Mutex::new(()),
        switch_lock: Mutex::new(()),
        switch_requested: AtomicBool::new(false),
        manifest,
        wal,
        next_seq: AtomicU64::new(last_seq.max(state.flushed_seq) + 1),
        next_file: AtomicU64::new(new_segment + 1),
        flushed_seq: AtomicU64::new(state.flushed_seq),
        block_cache,
        row_cache: LruCache::new(opts.row_cache_bytes),
        row_cache_writes: (0..ROW_CACHE_STRIPES).map(|_| AtomicU64::new(0)).collect(),
        gc_horizon_ms: AtomicU64::new(0),
        bg: Mutex::new(BgState::default()),
        bg_cond: Condvar::new(),
        closed: AtomicBool::new(false),
        counters: Counters::default(),
        memtable_started_ms: AtomicU64::new(opts.clock.now_ms()),
        memtable_fill_ms: AtomicU64::new(0),
        opts,
    })
}

/// An exclusive advisory lock on the directory, released when the returned file is closed.
fn lock_dir(dir: &Path) -> Result<fs::File> {
    let path = dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .at(&path)?;
    // SAFETY: flock on a valid, open descriptor has no memory-safety preconditions.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(Error::io(
            &path,
            std::io::Error::new(
                err.kind(),
                format!("database is in use by another process: {err}"),
            ),
        ));
    }
    Ok(file)
}

/// Tables and WAL segments the manifest does not list are leftovers of a crash mid-flush or
/// mid-compaction (or already obsolete); removing them keeps the directory equal to the manifest.
fn remove_unlisted_files(dir: &Path, state: &ManifestState) -> Result<()> {
    let live_wal: Vec<_> = state
        .wal_segments
        .iter()
        .map(|id| wal::segment_path(dir, *id))
        .collect();
    let live_tables: Vec<_> = state.tables.keys().map(|id| table_path(dir, *id)).collect();
    for entry in fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let is_table = name.ends_with(".sst") || name.ends_with(".sst.tmp");
        let is_wal = wal::segment_id_of(&path).is_some();
        let stale =
            (is_table && !live_tables.contains(&path)) || (is_wal && !live_wal.contains(&path));
        if stale {
            tracing::info!(file = %path.display(), "removing file not in the manifest");
            fs::remove_file(&path).at(&path)?;
        }
    }
    Ok(())
}

fn open_tables(
    dir: &Path,
    state: &ManifestState,
    cache: &Arc<BlockCache>,
) -> Result<Vec<(u32, Arc<Table>)>> {
    let mut tables = Vec::with_capacity(state.tables.len());
    for (&number, entry) in &state.tables {
        let table = Table::open(dir, number, cache.clone())?;
        if table.meta().file_bytes != entry.file_bytes {
            let reason = format!(
                "manifest says {} bytes, file has {}",
                entry.file_bytes,
                table.meta().file_bytes
            );
            return Err(Error::corruption(table.path(), 0, reason));
        }
        tables.push((entry.level, table));
    }
    Ok(tables)
}

/// The listed WAL segments that exist, and the newest listed one if a crash came between
/// recording it in the manifest and creating it. Any other missing segment is corruption.
fn existing_segments(dir: &Path, state: &ManifestState) -> Result<(Vec<u64>, Vec<u64>)> {
    let mut segments: Vec<u64> = state.wal_segments.iter().copied().collect();
    let mut never_created = Vec::new();
    if let Some(&last) = segments.last() {
        if !wal::segment_path(dir, last).exists() {
            never_created.push(last);
            segments.pop();
        }
    }
    if let Some(gone) = segments
        .iter()
        .find(|id| !wal::segment_path(dir, **id).exists())
    {
        let reason = "the manifest lists this WAL segment but it does not exist";
        return Err(Error::corruption(wal::segment_path(dir, *gone), 0, reason));
    }
    Ok((segments, never_created))
}

/// Rebuilds the memtable from `segments`, skipping records already flushed. Returns the
/// highest sequence number seen. Only the two newest segments may end in a torn write.
fn replay_wal(
    dir: &Path,
    segments: &[u64],
    flushed_seq: u64,
    mem: &Memtable,
    rule: &dyn MergeRule,
) -> Result<u64> {
    let mut last_seq = 0;
    for (i, &id) in segments.iter().enumerate() {
        let path = wal::segment_path(dir, id);
        // A switch retires the old segment before syncing it, so the one before the newest
        // may have been in flight at a crash too.
        let in_flight = i + 2 >= segments.len();
        let replay = wal::replay_segment(&path, in_flight, |seq, mutations| {
            for (j, m) in mutations.into_iter().enumerate() {
                let s = seq + j as u64;
                last_seq = last_seq.max(s);
                if s > flushed_seq {
                    mem.insert(m.key, s, m.cell, rule);
                }
            }
            Ok(())
        })?;
        if let Some(t) = replay.truncated_at {
            tracing::warn!(segment = %path.display(), offset = t, "cut a torn WAL tail");
        }
    }
    Ok(last_seq)
}
