//! An embedded log-structured merge-tree engine. It knows nothing about the cluster: keys are
//! opaque bytes in lexicographic order (the node puts the 128-bit token first, so a token range
//! is one contiguous scan), values are versioned [`Cell`]s resolved by a [`MergeRule`].

pub mod cache;
pub mod cell;
pub mod clock;
pub mod codec;
pub(crate) mod compaction;
pub mod db;
pub mod error;
pub(crate) mod iter;
pub(crate) mod manifest;
pub(crate) mod memtable;
pub mod options;
pub mod sstable;
pub mod wal;

pub use cell::{Cell, CellValue, LastWriteWins, MergeRule};
pub use clock::{Clock, ManualClock, SystemClock};
pub use db::{Db, DbStats, Scan};
pub use error::{Error, Result};
pub use options::{
    CompactionStrategy, Compression, Options, SyncPolicy, BACKGROUND_PACE_MS_DEFAULT,
    WAL_RECYCLE_SEGMENTS_DEFAULT,
};

use bytes::Bytes;

/// Whether a point lookup may read data blocks from files, or must answer from memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockAccess {
    Read,
    /// Memtables, the row cache and the block cache only: what an async caller may do on its
    /// own thread without risking a wait on the disk.
    CacheOnly,
}

/// The answer of a lookup that may decline to read from disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cached<T> {
    Hit(T),
    /// Answering needs a block that is not in the block cache.
    Miss,
}

/// The answer of [`Db::try_write`].
#[derive(Debug)]
pub enum TryWrite {
    Written,
    /// The write would have waited (a stall, a slowdown, a memtable switch or a WAL fsync), so
    /// it was not made; the batch is handed back for a thread that may block.
    WouldWait(Vec<Mutation>),
}

/// One write in a batch: a key and the cell to merge into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mutation {
    pub key: Bytes,
    pub cell: Cell,
}
