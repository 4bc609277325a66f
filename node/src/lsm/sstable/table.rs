//! An open table: footer, index, bloom and properties in memory, data blocks read on demand.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;
use zstd::bulk::Decompressor;

use super::block::{Block, BlockCursor, BlockError};
use super::bloom::Bloom;
use super::footer::{
    BlockHandle, Footer, BLOCK_TRAILER_BYTES, BLOCK_TYPE_LZ4, BLOCK_TYPE_RAW, BLOCK_TYPE_ZSTD,
    FOOTER_BYTES,
};
use super::iter::TableIter;
use super::{table_path, Properties, TableMeta};
use crate::lsm::cache::BlockCache;
use crate::lsm::cell::Cell;
use crate::lsm::codec::get_varint;
use crate::lsm::error::{Error, IoContext, Result};
use crate::lsm::{BlockAccess, Cached};

/// A decompressed block may not claim more: the largest entry (a 64 KiB key and a 256 MiB
/// value, the option limits) fits with room to spare.
const RAW_BLOCK_BYTES_MAX: u64 = 512 * 1024 * 1024;
/// Charged to the block cache per block on top of its bytes: map slot, list node, `Bytes`.
pub(super) const CACHE_ENTRY_OVERHEAD_BYTES: usize = 96;

thread_local! {
    /// A zstd context is costly to set up, so each reading thread keeps one.
    static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
}

pub struct Table {
    file: TableFile,
    meta: TableMeta,
    index: Index,
    bloom: Bloom,
    cache: Arc<BlockCache>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("path", &self.file.path)
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl Table {
    /// Opens `dir/<file_number>.sst`, verifying the footer and the checksums and structure of
    /// the index, bloom and properties blocks.
    pub fn open(dir: &Path, file_number: u64, block_cache: Arc<BlockCache>) -> Result<Arc<Table>> {
        let path = table_path(dir, file_number);
        let file = File::open(&path).at(&path)?;
        let file_bytes = file.metadata().at(&path)?.len();
        let file = TableFile { file, path };
        let footer = file.read_footer(file_bytes)?;
        let props_bytes = file.read_block(footer.properties, "properties")?;
        let props = Properties::decode(&props_bytes)
            .map_err(|r| file.corruption(footer.properties.offset, r))?;
        let bloom = Bloom::parse(file.read_block(footer.bloom, "bloom")?)
            .map_err(|r| file.corruption(footer.bloom.offset, r))?;
        let data_end = [footer.bloom, footer.index, footer.properties]
            .iter()
            .map(|h| h.offset)
            .min()
            .unwrap_or(0);
        let index = Index::parse(file.read_block(footer.index, "index")?, data_end)
            .map_err(|r| file.corruption(footer.index.offset, r))?;
        if (props.entries == 0) != (index.len() == 0) {
            return Err(file.corruption(
                footer.properties.offset,
                format!("{} entries in {} data blocks", props.entries, index.len()),
            ));
        }
        let meta = TableMeta {
            file_number,
            file_bytes,
            props,
        };
        Ok(Arc::new(Table {
            file,
            meta,
            index,
            bloom,
            cache: block_cache,
        }))
    }

    pub fn meta(&self) -> &TableMeta {
        &self.meta
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// False if `key` is certainly absent: outside the key range, or rejected by the bloom filter.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        let p = &self.meta.props;
        p.entries > 0
            && key >= &p.min_key[..]
            && key <= &p.max_key[..]
            && self.bloom.may_contain(key)
    }

    /// Point lookup: the bloom filter, a binary search of the index, one block.
    pub fn get(&self, key: &[u8]) -> Result<Option<Cell>> {
        match self.lookup(key, BlockAccess::Read)? {
            Cached::Hit(found) => Ok(found),
            Cached::Miss => unreachable!("a lookup allowed to read always answers"),
        }
    }

    /// Point lookup that reads a data block from the file only if `access` allows it; the
    /// bloom filter and the index are always in memory.
    pub fn lookup(&self, key: &[u8], access: BlockAccess) -> Result<Cached<Option<Cell>>> {
        if !self.may_contain(key) {
            return Ok(Cached::Hit(None));
        }
        let i = self.index.find(key);
        if i == self.index.len() {
            return Ok(Cached::Hit(None));
        }
        let offset = self.index.handle(i).offset;
        let block = match access {
            BlockAccess::Read => self.data_block(i, true)?,
            BlockAccess::CacheOnly => match self.cached_data_block(i)? {
                Some(block) => block,
                None => return Ok(Cached::Miss),
            },
        };
        let mut cursor = BlockCursor::new(block);
        let found = cursor
            .seek(key)
            .map_err(|e| self.block_corruption(offset, e))?;
        if !found || cursor.key() != key {
            return Ok(Cached::Hit(None));
        }
        self.decode_cell(&cursor.value(), offset)
            .map(|c| Cached::Hit(Some(c)))
    }

    /// An iterator from the first entry; `fill_cache = false` keeps a one-off scan (compaction)
    /// from evicting the blocks reads need.
    pub fn iter(self: &Arc<Self>, fill_cache: bool) -> TableIter {
        TableIter::new(Arc::clone(self), fill_cache)
    }

    pub(super) fn block_count(&self) -> usize {
        self.index.len()
    }

    /// The first data block that may hold `key` or any key after it.
    pub(super) fn find_block(&self, key: &[u8]) -> usize {
        self.index.find(key)
    }

    pub(super) fn block_offset(&self, i: usize) -> u64 {
        self.index.handle(i).offset
    }

    /// Data block `i` if the block cache holds it or the OS page cache holds its bytes (read
    /// without waiting for the disk, then cached as any read block is).
    fn cached_data_block(&self, i: usize) -> Result<Option<Block>> {
        let handle = self.index.handle(i);
        let key = (self.meta.file_number, handle.offset);
        let bytes = match self.cache.get(&key) {
            Some(bytes) => bytes,
            None => match self.file.read_block_nowait(handle, "data")? {
                Some(bytes) => {
                    let charge = bytes.len() + CACHE_ENTRY_OVERHEAD_BYTES;
                    self.cache.insert(key, bytes.clone(), charge);
                    bytes
                }
                None => return Ok(None),
            },
        };
        Block::parse(bytes)
            .map(Some)
            .map_err(|e| self.block_corruption(handle.offset, e))
    }

    /// Data block `i` from the cache, or read, verified and decompressed from the file.
    pub(super) fn data_block(&self, i: usize, fill_cache: bool) -> Result<Block> {
        let handle = self.index.handle(i);
        let key = (self.meta.file_number, handle.offset);
        let bytes = match self.cache.get(&key) {
            Some(bytes) => bytes,
            None => {
                let bytes = self.file.read_block(handle, "data")?;
                if fill_cache {
                    let charge = bytes.len() + CACHE_ENTRY_OVERHEAD_BYTES;
                    self.cache.insert(key, bytes.clone(), charge);
                }
                bytes
            }
        };
        Block::parse(bytes).map_err(|e| self.block_corruption(handle.offset, e))
    }

    pub(super) fn decode_cell(&self, value: &Bytes, block_offset: u64) -> Result<Cell> {
        match Cell::decode(value) {
            Ok((cell, used)) if used == value.len() => Ok(cell),
            Ok(_) => Err(self
                .file
                .corruption(block_offset, "trailing bytes after a cell")),
            Err(e) => Err(self
                .file
                .corruption(block_offset, format!("data block: {e}"))),
        }
    }

    pub(super) fn block_corruption(&self, block_offset: u64, e: BlockError) -> Error {
        self.file
            .corruption(block_offset, format!("data block: {}", e.0))
    }
}

/// The file and its name, for reads that report where they failed.
struct TableFile {
    file: File,
    path: PathBuf,
}

impl TableFile {
    fn corruption(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::corruption(&self.path, offset, reason)
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        match self.file.read_exact_at(&mut buf, offset) {
            Ok(()) => Ok(buf),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(self.corruption(offset, format!("{len} bytes past the end of the file")))
            }
            Err(e) => Err(Error::io(&self.path, e)),
        }
    }

    /// Reads the footer and checks that the blocks it points at lie before it.
    fn read_footer(&self, file_bytes: u64) -> Result<Footer> {
        let Some(footer_at) = file_bytes.checked_sub(FOOTER_BYTES as u64) else {
            let reason = format!("file is {file_bytes} bytes, shorter than a footer");
            return Err(self.corruption(0, reason));
        };
        let footer = Footer::decode(&self.read_at(footer_at, FOOTER_BYTES)?)
            .map_err(|r| self.corruption(footer_at, r))?;
        for (what, h) in [
            ("bloom", footer.bloom),
            ("index", footer.index),
            ("properties", footer.properties),
        ] {
            if h.end().is_none_or(|end| end > footer_at) {
                let reason = format!("{what} block {h:?} overlaps the footer");
                return Err(self.corruption(footer_at, reason));
            }
        }
        Ok(footer)
    }

    /// Reads a stored block whose handle is known to lie within the file, verifies its
    /// checksum and returns its raw contents.
    /// As [`TableFile::read_at`] when the page cache holds every byte; `None` when reading
    /// would wait for the disk (or the kernel cannot tell without waiting).
    fn read_at_nowait(&self, offset: u64, len: usize) -> Result<Option<Vec<u8>>> {
        // Not zeroed first: zeroing each block's buffer was 0.9% of the machine's samples at
        // YCSB-A's peak, and the kernel overwrites all of it or the buffer is not used.
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: len,
        };
        let Ok(offset) = libc::off_t::try_from(offset) else {
            return Ok(None);
        };
        // SAFETY: `iov` describes `buf`'s `len` bytes of capacity, which live and are not
        // otherwise borrowed until the call returns; the descriptor is open for as long as
        // `self.file` is.
        let read =
            unsafe { libc::preadv2(self.file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
        // EAGAIN (not cached), EOPNOTSUPP (no RWF_NOWAIT here) and short reads all mean: read
        // it the blocking way, which also reports real errors with the file's name.
        if read != len as isize {
            return Ok(None);
        }
        // SAFETY: the kernel wrote all `len` bytes.
        unsafe { buf.set_len(len) };
        Ok(Some(buf))
    }

    fn read_block(&self, handle: BlockHandle, what: &str) -> Result<Bytes> {
        let size = handle.size as usize;
        let buf = self.read_at(handle.offset, size + BLOCK_TRAILER_BYTES)?;
        self.decode_block(handle, what, buf)
    }

    /// As [`TableFile::read_block`], or `None` when the page cache does not hold the block.
    fn read_block_nowait(&self, handle: BlockHandle, what: &str) -> Result<Option<Bytes>> {
        let size = handle.size as usize;
        match self.read_at_nowait(handle.offset, size + BLOCK_TRAILER_BYTES)? {
            Some(buf) => self.decode_block(handle, what, buf).map(Some),
            None => Ok(None),
        }
    }

    /// Verifies a block read with its trailer and undoes its compression.
    fn decode_block(&self, handle: BlockHandle, what: &str, mut buf: Vec<u8>) -> Result<Bytes> {
        let size = handle.size as usize;
        let block_type = buf[size];
        let stored = u64::from_le_bytes(buf[size + 1..].try_into().unwrap_or_default());
        if xxh3_64(&buf[..=size]) != stored {
            return Err(self.corruption(handle.offset, format!("{what} block checksum mismatch")));
        }
        match block_type {
            BLOCK_TYPE_RAW => {
                buf.truncate(size);
                Ok(Bytes::from(buf))
            }
            BLOCK_TYPE_ZSTD | BLOCK_TYPE_LZ4 => decompress(&buf[..size], block_type)
                .map(Bytes::from)
                .map_err(|r| self.corruption(handle.offset, format!("{what} block: {r}"))),
            t => Err(self.corruption(handle.offset, format!("{what} block has unknown type {t}"))),
        }
    }
}

/// Undoes the builder's varint raw length + zstd frame or LZ4 block.
fn decompress(payload: &[u8], block_type: u8) -> Result<Vec<u8>, String> {
    let (raw_len, used) = get_varint(payload).ok_or("compressed length truncated")?;
    if raw_len > RAW_BLOCK_BYTES_MAX {
        return Err(format!("claims {raw_len} bytes decompressed"));
    }
    let body = &payload[used..];
    let out = if block_type == BLOCK_TYPE_LZ4 {
        let mut out = vec![0u8; raw_len as usize];
        let n =
            lz4_flex::block::decompress_into(body, &mut out).map_err(|e| format!("lz4: {e}"))?;
        out.truncate(n);
        out
    } else {
        zstd_decompress(body, raw_len)?
    };
    if out.len() as u64 != raw_len {
        return Err(format!(
            "decompressed to {} bytes, expected {raw_len}",
            out.len()
        ));
    }
    Ok(out)
}

fn zstd_decompress(body: &[u8], raw_len: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(raw_len as usize);
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = match slot.as_mut() {
            Some(d) => d,
            None => slot.insert(Decompressor::new().map_err(|e| format!("zstd: {e}"))?),
        };
        d.decompress_to_buffer(body, &mut out)
            .map_err(|e| format!("zstd: {e}"))
    })?;
    Ok(out)
}

/// The index block decoded once at open: separators in one buffer, and each block's handle.
struct Index {
    keys: Vec<u8>,
    key_ends: Vec<usize>,
    handles: Vec<BlockHandle>,
}

impl Index {
    /// Decodes the index, checking that separators ascend and that the data blocks tile
    /// `0..data_end` exactly.
    fn parse(bytes: Bytes, data_end: u64) -> Result<Index, String> {
        let mut cursor = BlockCursor::new(Block::parse(bytes).map_err(|e| e.0.to_string())?);
        let mut index = Index {
            keys: Vec::new(),
            key_ends: Vec::new(),
            handles: Vec::new(),
        };
        let mut next_offset = 0;
        while cursor.advance().map_err(|e| e.0.to_string())? {
            let i = index.len();
            if i > 0 && cursor.key() <= index.key(i - 1) {
                return Err(format!("index separator {i} does not ascend"));
            }
            let handle = BlockHandle::decode_varint(cursor.value_slice())
                .ok_or_else(|| format!("index entry {i} has a malformed handle"))?;
            if handle.offset != next_offset {
                return Err(format!(
                    "data block {i} at {} should start at {next_offset}",
                    handle.offset
                ));
            }
            next_offset = handle.end().ok_or("data block size overflows")?;
            index.keys.extend_from_slice(cursor.key());
            index.key_ends.push(index.keys.len());
            index.handles.push(handle);
        }
        if next_offset != data_end {
            return Err(format!(
                "data blocks end at {next_offset}, metadata starts at {data_end}"
            ));
        }
        Ok(index)
    }

    fn len(&self) -> usize {
        self.handles.len()
    }

    fn key(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.key_ends[i - 1] };
        &self.keys[start..self.key_ends[i]]
    }

    fn handle(&self, i: usize) -> BlockHandle {
        self.handles[i]
    }

    /// The first block whose separator is at or after `key`: the only one that can hold it.
    fn find(&self, key: &[u8]) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.key(mid) < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}
