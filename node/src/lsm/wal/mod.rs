//! The write-ahead log: every batch is appended here before it reaches the memtable, so that a
//! restart can rebuild the memtables that were not flushed yet.
//!
//! The log is a directory of segment files `wal-<id>.log`; one is open for appends at a time
//! and [`Wal::rotate`] starts the next. A segment can be deleted once every record in it is in
//! an SSTable. The byte layout is in `format.rs` and in docs/storage-format.md ("WAL
//! segment"), which also gives the rule that tells a torn tail from corruption.

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

/// The segment id in a WAL file name such as `wal-000000000042.log`; `None` for any other file.
pub fn segment_id_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).at(dir)?.sync_all().at(dir)
}
