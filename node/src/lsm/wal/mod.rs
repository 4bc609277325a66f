//! The write-ahead log: every batch is appended here before it reaches the memtable, so that a
//! restart can rebuild the memtables that were not flushed yet.
//!
//! The log is a directory of segment files `wal-<id>.log`; one is open for appends at a time
//! and [`Wal::rotate`] starts the next. A segment can be retired once every record in it is in
//! an SSTable: [`retire_segment`] renames up to `wal_recycle_segments_max` of them to
//! `recycle-<id>.wal` for a later segment to reuse, and deletes the rest. The byte layout is in
//! `format.rs` and in docs/storage-format.md ("WAL segment"), which also gives the rule that
//! tells a torn tail from corruption.

mod format;
mod replay;
mod writer;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::lsm::error::IoContext;
use crate::lsm::Result;

pub use format::{HEADER_BYTES, KEY_BYTES_MAX, RECORD_BODY_BYTES_MAX};
pub use replay::{replay_segment, SegmentReplay};
pub use writer::{NextSegment, Wal, WalOptions, WalStats};

const FILE_PREFIX: &str = "wal-";
const FILE_SUFFIX: &str = ".log";
const RECYCLE_PREFIX: &str = "recycle-";
const RECYCLE_SUFFIX: &str = ".wal";

/// The file of segment `id`, e.g. `wal-000000000042.log`.
pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{FILE_PREFIX}{id:012}{FILE_SUFFIX}"))
}

/// Ids of the segments in `dir`, ascending. Other files are ignored.
pub fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        if let Some(id) = segment_id_of(&entry.path()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Removes segment `id` and syncs the directory, so the deletion survives a crash.
pub fn delete_segment(dir: &Path, id: u64) -> Result<()> {
    let path = segment_path(dir, id);
    std::fs::remove_file(&path).at(&path)?;
    sync_dir(dir)
}

/// Takes segment `id` out of the log: renamed for reuse while fewer than `recycle_max` files wait
/// to be reused, deleted otherwise. Either way the directory is synced, so the segment is gone
/// from the log for good before the caller goes on.
///
/// Why reuse: a new segment is written into page-cache pages the kernel must allocate and zero
/// (a first touch of cold memory on this VM) and into `posix_fallocate`d extents whose
/// conversion every fdatasync journals; a recycled file has both resident and written. Its old
/// records stay behind the new ones, but the new header's salt keeps them from verifying.
pub fn retire_segment(dir: &Path, id: u64, recycle_max: usize) -> Result<()> {
    if recycle_max == 0 || list_recyclable(dir)?.len() >= recycle_max {
        return delete_segment(dir, id);
    }
    let from = segment_path(dir, id);
    let to = recycle_path(dir, id);
    std::fs::rename(&from, &to).at(&from)?;
    sync_dir(dir)
}

/// Files retired for reuse, oldest first.
pub fn list_recyclable(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        if let Some(id) = recycled_id_of(&path) {
            found.push((id, path));
        }
    }
    found.sort_unstable();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// Deletes files retired for reuse beyond the newest `keep` (after the limit was lowered).
pub fn trim_recyclable(dir: &Path, keep: usize) -> Result<()> {
    let found = list_recyclable(dir)?;
    let extra = found.len().saturating_sub(keep);
    for path in &found[..extra] {
        std::fs::remove_file(path).at(path)?;
    }
    if extra > 0 {
        sync_dir(dir)?;
    }
    Ok(())
}

fn recycle_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{RECYCLE_PREFIX}{id:012}{RECYCLE_SUFFIX}"))
}

fn recycled_id_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    parse_id(
        name.strip_prefix(RECYCLE_PREFIX)?
            .strip_suffix(RECYCLE_SUFFIX)?,
    )
}

fn parse_id(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment id in a WAL file name such as `wal-000000000042.log`; `None` for any other file.
pub fn segment_id_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    parse_id(name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).at(dir)?.sync_all().at(dir)
}
