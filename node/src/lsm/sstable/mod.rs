//! Sorted string tables: immutable files of sorted `(key, Cell)` entries.
//!
//! A table is written once by [`TableBuilder`] (to a temporary name, renamed into place when
//! complete) and read by any number of threads through [`Table`]. Data blocks are read with
//! positional reads and shared through the [`BlockCache`](super::cache::BlockCache) already
//! checksum-verified and decompressed, so iterators hand out cells that slice the cached block.
//!
//! # File layout
//!
//! | region           | contents                                                         |
//! |------------------|------------------------------------------------------------------|
//! | data blocks      | contiguous from offset 0, each a [stored block](#stored-block)   |
//! | bloom block      | stored block, never compressed: bit array, then `k` (1 byte)     |
//! | index block      | stored block in the data-block format: separator -> block handle |
//! | properties block | stored block, never compressed: [`Properties`]                   |
//! | footer           | [`FOOTER_BYTES`] bytes, see below                                |
//!
//! # Stored block
//!
//! | field    | size           | meaning                                                   |
//! |----------|----------------|-----------------------------------------------------------|
//! | payload  | `handle.size`  | raw block, or varint raw length + one zstd frame          |
//! | type     | 1              | 0 raw, 1 zstd                                             |
//! | checksum | 8, LE          | xxh3-64 of payload and type                               |
//!
//! A block handle is `(offset, size)` of the payload; the 9-byte trailer follows it.
//!
//! # Block (raw)
//!
//! | field          | size        | meaning                                               |
//! |----------------|-------------|-------------------------------------------------------|
//! | entries        | ...         | each: shared varint, unshared varint, value length varint, unshared key bytes, value |
//! | restart array  | 4 each, LE  | offsets of entries that store their whole key (shared = 0), every 16 entries, the first at 0 |
//! | restart count  | 4, LE       | at least 1                                            |
//!
//! Data-block values are [`Cell::encode_into`](super::Cell::encode_into) encodings; index values
//! are handles as two varints (offset, size). An index key is a separator: at least the last
//! key of its block and below the first key of the next one.
//!
//! # Footer
//!
//! | offset | size | field                                    |
//! |--------|------|------------------------------------------|
//! | 0      | 16   | bloom handle: offset u64 LE, size u64 LE |
//! | 16     | 16   | index handle                             |
//! | 32     | 16   | properties handle                        |
//! | 48     | 4    | format version u32 LE (1)                |
//! | 52     | 8    | xxh3-64 of bytes 0..52, LE               |
//! | 60     | 8    | magic u64 LE ([`MAGIC`])                 |

mod block;
mod bloom;
mod builder;
mod footer;
mod iter;
mod properties;
mod table;

use std::path::{Path, PathBuf};

pub use builder::TableBuilder;
pub use footer::{FOOTER_BYTES, FORMAT_VERSION, MAGIC};
pub use iter::TableIter;
pub use properties::Properties;
pub use table::Table;

use super::options::{Compression, Options};

/// How a table is written. Readers need none of it: everything is recorded in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableOptions {
    /// Target size of an uncompressed data block; a single larger entry gets a block of its own.
    pub block_bytes: usize,
    pub compression: Compression,
    /// 0 writes no filter, so every lookup reads a block.
    pub bloom_bits_per_key: u32,
}

impl TableOptions {
    pub fn from_options(opts: &Options) -> Self {
        TableOptions {
            block_bytes: opts.block_bytes,
            compression: opts.compression,
            bloom_bits_per_key: opts.bloom_bits_per_key,
        }
    }
}

impl Default for TableOptions {
    fn default() -> Self {
        TableOptions::from_options(&Options::default())
    }
}

/// What the DB records about a finished table.
#[derive(Clone, Debug, PartialEq)]
pub struct TableMeta {
    pub file_number: u64,
    pub file_bytes: u64,
    pub props: Properties,
}

/// `dir/000042.sst`.
pub fn table_path(dir: &Path, file_number: u64) -> PathBuf {
    dir.join(format!("{file_number:06}.sst"))
}

/// Where a table is written before it is complete: `dir/000042.sst.tmp`.
pub fn table_temp_path(dir: &Path, file_number: u64) -> PathBuf {
    dir.join(format!("{file_number:06}.sst.tmp"))
}

#[cfg(test)]
mod tests;
