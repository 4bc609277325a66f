//! Writes a table front to back in one pass.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use zstd::bulk::Compressor;

use super::block::BlockBuilder;
use super::bloom::BloomBuilder;
use super::footer::{
    block_checksum, BlockHandle, Footer, BLOCK_TYPE_LZ4, BLOCK_TYPE_RAW, BLOCK_TYPE_ZSTD,
    FOOTER_BYTES,
};
use super::table::CACHE_ENTRY_OVERHEAD_BYTES;
use super::{table_path, table_temp_path, Properties, TableMeta, TableOptions};
use crate::lsm::cache::BlockCache;
use crate::lsm::cell::Cell;
use crate::lsm::codec::put_varint;
use crate::lsm::error::{Error, IoContext, Result};
use crate::lsm::options::Compression;

/// Large enough that blocks reach the file in few system calls.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// Builds a table under its temporary name; [`TableBuilder::finish`] makes it visible under
/// [`table_path`]. Dropping an unfinished builder removes the temporary file.
pub struct TableBuilder {
    dir: PathBuf,
    file_number: u64,
    writer: BlockWriter,
    block_bytes: usize,
    data: BlockBuilder,
    index: BlockBuilder,
    /// The last flushed data block, waiting for the next key to pick its separator.
    pending_handle: Option<BlockHandle>,
    bloom: BloomBuilder,
    props: Properties,
    last_key: Vec<u8>,
    done: bool,
    /// Receives each data block as written, so reads of a new table do not first miss.
    cache: Option<Arc<BlockCache>>,
}

impl TableBuilder {
    pub fn create(
        dir: &Path,
        file_number: u64,
        level: u32,
        created_ms: u64,
        opts: &TableOptions,
    ) -> Result<Self> {
        let path = table_temp_path(dir, file_number);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .at(&path)?;
        let compressor = match opts.compression {
            Compression::None => Codec::None,
            Compression::Zstd { level } => Codec::Zstd(Box::new(Compressor::new(level).at(&path)?)),
            Compression::Lz4 => Codec::Lz4,
        };
        Ok(TableBuilder {
            dir: dir.to_path_buf(),
            file_number,
            writer: BlockWriter {
                out: BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
                path,
                offset: 0,
                compressor,
                scratch: Vec::new(),
                probe: CompressionProbe::default(),
            },
            block_bytes: opts.block_bytes,
            data: BlockBuilder::new(),
            index: BlockBuilder::new(),
            pending_handle: None,
            bloom: BloomBuilder::new(opts.bloom_bits_per_key),
            props: Properties::new(level, created_ms),
            last_key: Vec::new(),
            done: false,
            cache: None,
        })
    }

    /// Puts each data block into `cache` (if given) as it is written, under the key a read of the
    /// finished table looks it up by, so the table's first reads hit. What the cache gains is
    /// a read's `pread`, checksum and decompression per block, on a request thread; what it
    /// costs is a copy per block here, on the writing (background) thread.
    pub fn fill_cache(mut self, cache: Option<Arc<BlockCache>>) -> Self {
        self.cache = cache;
        self
    }

    /// Appends an entry; `key` must sort strictly after the previous one.
    pub fn add(&mut self, key: &[u8], cell: &Cell) -> Result<()> {
        if self.props.entries > 0 && key <= self.last_key.as_slice() {
            return Err(Error::KeyOrder {
                path: self.writer.path.clone(),
                reason: format!(
                    "key {} does not sort after {}",
                    hex(key),
                    hex(&self.last_key)
                ),
            });
        }
        let cell_len = cell.encoded_len();
        if !self.data.is_empty() && self.data.len_after(key.len(), cell_len) > self.block_bytes {
            self.flush_data_block()?;
        }
        if let Some(handle) = self.pending_handle.take() {
            let separator = shortest_separator(&self.last_key, key);
            self.add_index_entry(&separator, handle);
        }
        self.data.add(key, cell_len, |buf| cell.encode_into(buf));
        self.bloom.add(key);
        self.props.add(key, cell);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        Ok(())
    }

    /// Bytes the file would have if finished now.
    pub fn estimated_bytes(&self) -> u64 {
        (self.writer.offset as usize
            + self.data.len()
            + self.index.len()
            + self.bloom.len()
            + FOOTER_BYTES) as u64
    }

    pub fn entries(&self) -> u64 {
        self.props.entries
    }

    /// Writes the bloom, index and properties blocks and the footer, fsyncs, renames the file
    /// into place and fsyncs the directory so the name survives a crash.
    pub fn finish(mut self) -> Result<TableMeta> {
        let file_bytes = self.write_tail()?;
        self.writer.out.flush().at(&self.writer.path)?;
        self.writer.out.get_ref().sync_all().at(&self.writer.path)?;
        fail::fail_point!("sstable-rename", |_| Err(Error::Injected("sstable-rename")));
        let path = table_path(&self.dir, self.file_number);
        std::fs::rename(&self.writer.path, &path).at(&path)?;
        self.done = true;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .at(&self.dir)?;
        Ok(TableMeta {
            file_number: self.file_number,
            file_bytes,
            props: std::mem::take(&mut self.props),
        })
    }

    /// Gives up on the table and removes its temporary file.
    pub fn abandon(mut self) -> Result<()> {
        self.done = true;
        std::fs::remove_file(&self.writer.path).at(&self.writer.path)
    }

    fn write_tail(&mut self) -> Result<u64> {
        if !self.data.is_empty() {
            self.flush_data_block()?;
        }
        if let Some(handle) = self.pending_handle.take() {
            let last_key = std::mem::take(&mut self.last_key);
            self.add_index_entry(&last_key, handle);
            self.last_key = last_key;
        }
        self.props.max_key = Bytes::copy_from_slice(&self.last_key);
        let footer = Footer {
            bloom: self.writer.write(&self.bloom.finish(), false)?,
            index: self.writer.write(self.index.finish(), true)?,
            properties: self.writer.write(&self.props.encode(), false)?,
        };
        self.writer.write_raw(&footer.encode())?;
        Ok(self.writer.offset)
    }

    fn flush_data_block(&mut self) -> Result<()> {
        let raw = self.data.finish();
        let handle = self.writer.write_data(raw)?;
        if let Some(cache) = &self.cache {
            let charge = raw.len() + CACHE_ENTRY_OVERHEAD_BYTES;
            let key = (self.file_number, handle.offset);
            cache.insert(key, Bytes::copy_from_slice(raw), charge);
        }
        self.data.reset();
        self.pending_handle = Some(handle);
        Ok(())
    }

    fn add_index_entry(&mut self, separator: &[u8], handle: BlockHandle) {
        let mut value = Vec::with_capacity(20);
        handle.encode_varint(&mut value);
        self.index
            .add(separator, value.len(), |buf| buf.extend_from_slice(&value));
    }
}

impl Drop for TableBuilder {
    fn drop(&mut self) {
        if !self.done {
            // Best effort: an unfinished table is garbage, and startup removes leftovers anyway.
            let _ = std::fs::remove_file(&self.writer.path);
        }
    }
}

/// Appends stored blocks (payload and trailer) to the file.
struct BlockWriter {
    out: BufWriter<File>,
    path: PathBuf,
    offset: u64,
    compressor: Codec,
    scratch: Vec<u8>,
    probe: CompressionProbe,
}

/// Whether to try compressing the next data block. Data that does not compress (random
/// bytes, already-compressed values; and for LZ4, which finds only repeats, any text without
/// them) tends to come in long runs, and trying cost a flush 5% of the node's time in a
/// YCSB load whose values LZ4 never shrank (docs/benchmarks.md). After `n` blocks in a row
/// that were not worth compressing, the next 2^n - 1 (at most 31) are stored without trying;
/// a block that compresses resets it.
#[derive(Default)]
struct CompressionProbe {
    failures: u32,
    skip: u32,
}

impl CompressionProbe {
    const FAILURES_COUNTED_MAX: u32 = 5;

    fn attempt(&mut self) -> bool {
        if self.skip == 0 {
            return true;
        }
        self.skip -= 1;
        false
    }

    fn record(&mut self, compressed: bool) {
        if compressed {
            self.failures = 0;
            return;
        }
        self.failures = (self.failures + 1).min(Self::FAILURES_COUNTED_MAX);
        self.skip = (1 << self.failures) - 1;
    }
}

enum Codec {
    None,
    Zstd(Box<Compressor<'static>>),
    Lz4,
}

impl BlockWriter {
    /// Writes a data block, compressed when the probe says to try and it pays.
    fn write_data(&mut self, raw: &[u8]) -> Result<BlockHandle> {
        let attempt = !matches!(self.compressor, Codec::None) && self.probe.attempt();
        let (handle, compressed) = self.write_block(raw, attempt)?;
        if attempt {
            self.probe.record(compressed);
        }
        Ok(handle)
    }

    fn write(&mut self, raw: &[u8], compress: bool) -> Result<BlockHandle> {
        self.write_block(raw, compress).map(|(handle, _)| handle)
    }

    /// Writes one block; says whether it was stored compressed.
    fn write_block(&mut self, raw: &[u8], compress: bool) -> Result<(BlockHandle, bool)> {
        let compressed = if compress { self.compress(raw) } else { None };
        let (payload, block_type) = match compressed {
            Some(block_type) => (self.scratch.as_slice(), block_type),
            None => (raw, BLOCK_TYPE_RAW),
        };
        let handle = BlockHandle {
            offset: self.offset,
            size: payload.len() as u64,
        };
        let checksum = block_checksum(payload, block_type);
        let mut trailer = [0u8; 9];
        trailer[0] = block_type;
        trailer[1..].copy_from_slice(&checksum.to_le_bytes());
        self.out.write_all(payload).at(&self.path)?;
        self.out.write_all(&trailer).at(&self.path)?;
        self.offset += (payload.len() + trailer.len()) as u64;
        Ok((handle, compressed.is_some()))
    }

    /// Compresses `raw` into `scratch` as varint raw length + zstd frame or LZ4 block, and
    /// returns the block type; `None` if it is not worth it, so the block is stored raw.
    fn compress(&mut self, raw: &[u8]) -> Option<u8> {
        self.scratch.clear();
        put_varint(&mut self.scratch, raw.len() as u64);
        let prefix = self.scratch.len();
        let block_type = match &mut self.compressor {
            Codec::None => return None,
            Codec::Zstd(c) => {
                self.scratch
                    .reserve(zstd::zstd_safe::compress_bound(raw.len()));
                let mut cursor = Cursor::new(&mut self.scratch);
                cursor.set_position(prefix as u64);
                // A failed compression only costs space: the block is stored raw.
                c.compress_to_buffer(raw, &mut cursor).ok()?;
                BLOCK_TYPE_ZSTD
            }
            Codec::Lz4 => {
                self.scratch.resize(
                    prefix + lz4_flex::block::get_maximum_output_size(raw.len()),
                    0,
                );
                let n = lz4_flex::block::compress_into(raw, &mut self.scratch[prefix..]).ok()?;
                self.scratch.truncate(prefix + n);
                BLOCK_TYPE_LZ4
            }
        };
        // Decompressing costs read time; below this saving it is not worth paying.
        let saving_min = raw.len() / 8;
        (self.scratch.len() + saving_min.max(1) <= raw.len()).then_some(block_type)
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).at(&self.path)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }
}

/// A short key `s` with `start <= s < limit`, so index entries cost fewer bytes than whole keys.
fn shortest_separator(start: &[u8], limit: &[u8]) -> Vec<u8> {
    let common = start.iter().zip(limit).take_while(|(a, b)| a == b).count();
    if let Some(&s) = start.get(common).filter(|&&s| s < 0xff) {
        let mut sep = start[..=common].to_vec();
        sep[common] = s + 1;
        if sep.as_slice() < limit {
            return sep;
        }
    }
    start.to_vec()
}

fn hex(key: &[u8]) -> String {
    const SHOWN_BYTES_MAX: usize = 32;
    let mut s: String = key
        .iter()
        .take(SHOWN_BYTES_MAX)
        .map(|b| format!("{b:02x}"))
        .collect();
    if key.len() > SHOWN_BYTES_MAX {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn prop_separator_lies_between(a in proptest::collection::vec(any::<u8>(), 0..6), b in proptest::collection::vec(any::<u8>(), 0..6)) {
            let (start, limit) = if a < b { (a, b) } else { (b, a) };
            prop_assume!(start < limit);
            let sep = shortest_separator(&start, &limit);
            prop_assert!(start <= sep && sep < limit);
        }
    }

    #[test]
    fn incompressible_runs_are_tried_ever_more_rarely_and_one_success_resets() {
        let mut probe = CompressionProbe::default();
        let mut tried = 0;
        for _ in 0..1_000 {
            if probe.attempt() {
                tried += 1;
                probe.record(false);
            }
        }
        // Tried at blocks 0, 2, 6, 14, 30 and 62, then one in 32.
        assert_eq!(tried, 6 + (1_000 - 62 - 1) / 32);
        while !probe.attempt() {}
        probe.record(true);
        assert!((0..10).all(|_| probe.attempt()));
    }

    #[test]
    fn separator_is_shortened_when_there_is_room() {
        assert_eq!(shortest_separator(b"apple", b"banana"), b"b");
        assert_eq!(shortest_separator(b"abc1xyz", b"abc9"), b"abc2");
        assert_eq!(shortest_separator(b"abc", b"abcd"), b"abc");
        assert_eq!(shortest_separator(b"ab1x", b"ab2"), b"ab1x");
    }
}
