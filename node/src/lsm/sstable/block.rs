//! The block format shared by data and index blocks: sorted entries with prefix-compressed keys
//! and a restart array for binary search (layout in the [module docs](super)).

use std::cmp::Ordering;
use std::ops::Range;

use bytes::Bytes;

use crate::lsm::codec::{get_u32_le, get_varint, put_varint, varint_len};

/// Entries between two full keys: longer runs share more prefix but make a seek scan further.
pub(crate) const RESTART_INTERVAL_ENTRIES: usize = 16;
const U32_BYTES: usize = 4;

/// Why a block's bytes could not be decoded; the table adds the file and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockError(pub &'static str);

pub(crate) struct BlockBuilder {
    buf: Vec<u8>,
    restarts: Vec<u32>,
    since_restart: usize,
    last_key: Vec<u8>,
}

impl BlockBuilder {
    pub fn new() -> Self {
        BlockBuilder {
            buf: Vec::new(),
            restarts: vec![0],
            since_restart: 0,
            last_key: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Size of [`BlockBuilder::finish`]'s output.
    pub fn len(&self) -> usize {
        self.buf.len() + (self.restarts.len() + 1) * U32_BYTES
    }

    /// An upper bound on [`BlockBuilder::len`] after adding an entry of these sizes.
    pub fn len_after(&self, key_len: usize, value_len: usize) -> usize {
        let header = 3 * varint_len(key_len.max(value_len) as u64);
        self.len() + header + key_len + value_len + U32_BYTES
    }

    /// Appends an entry whose value `write_value` appends, `value_len` bytes. Keys must ascend;
    /// the table builder checks that.
    pub fn add(&mut self, key: &[u8], value_len: usize, write_value: impl FnOnce(&mut Vec<u8>)) {
        let shared = if self.since_restart == RESTART_INTERVAL_ENTRIES {
            self.restarts.push(self.buf.len() as u32);
            self.since_restart = 0;
            0
        } else {
            common_prefix(&self.last_key, key)
        };
        put_varint(&mut self.buf, shared as u64);
        put_varint(&mut self.buf, (key.len() - shared) as u64);
        put_varint(&mut self.buf, value_len as u64);
        self.buf.extend_from_slice(&key[shared..]);
        let value_start = self.buf.len();
        write_value(&mut self.buf);
        debug_assert_eq!(self.buf.len() - value_start, value_len);
        self.last_key.truncate(shared);
        self.last_key.extend_from_slice(&key[shared..]);
        self.since_restart += 1;
    }

    /// Appends the restart array and returns the finished block; [`BlockBuilder::reset`] before
    /// reuse.
    pub fn finish(&mut self) -> &[u8] {
        for r in &self.restarts {
            self.buf.extend_from_slice(&r.to_le_bytes());
        }
        self.buf
            .extend_from_slice(&(self.restarts.len() as u32).to_le_bytes());
        &self.buf
    }

    pub fn reset(&mut self) {
        self.buf.clear();
        self.restarts.clear();
        self.restarts.push(0);
        self.since_restart = 0;
        self.last_key.clear();
    }
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A parsed block sharing the (cached) block bytes.
#[derive(Clone, Debug)]
pub(crate) struct Block {
    data: Bytes,
    /// Where the entries end and the restart array starts.
    restarts_at: usize,
    restart_count: usize,
}

impl Block {
    pub fn parse(data: Bytes) -> Result<Block, BlockError> {
        let count_at = data
            .len()
            .checked_sub(U32_BYTES)
            .ok_or(BlockError("block shorter than its restart count"))?;
        let restart_count = get_u32_le(&data, count_at).unwrap_or(0) as usize;
        if restart_count == 0 {
            return Err(BlockError("block has no restart points"));
        }
        let restarts_at = restart_count
            .checked_mul(U32_BYTES)
            .and_then(|n| count_at.checked_sub(n))
            .ok_or(BlockError("restart array larger than the block"))?;
        Ok(Block {
            data,
            restarts_at,
            restart_count,
        })
    }

    fn is_empty(&self) -> bool {
        self.restarts_at == 0
    }

    fn restart_offset(&self, i: usize) -> Result<usize, BlockError> {
        let at = self.restarts_at + i * U32_BYTES;
        let offset = get_u32_le(&self.data, at).ok_or(BlockError("restart index out of range"))?;
        let offset = offset as usize;
        if offset >= self.restarts_at {
            return Err(BlockError("restart offset past the entries"));
        }
        Ok(offset)
    }

    /// Decodes the entry at `at`: shared key length, unshared key bytes, value range.
    fn entry(&self, at: usize) -> Result<Entry, BlockError> {
        let entries = &self.data[..self.restarts_at];
        let truncated = BlockError("entry header truncated");
        let mut pos = at;
        let mut field = || -> Result<usize, BlockError> {
            let (v, used) = get_varint(entries.get(pos..).ok_or(truncated)?).ok_or(truncated)?;
            pos += used;
            usize::try_from(v).map_err(|_| truncated)
        };
        let shared = field()?;
        let unshared = field()?;
        let value_len = field()?;
        let key_end = pos
            .checked_add(unshared)
            .filter(|&e| e <= entries.len())
            .ok_or(BlockError("entry key past the entries"))?;
        let value_end = key_end
            .checked_add(value_len)
            .filter(|&e| e <= entries.len())
            .ok_or(BlockError("entry value past the entries"))?;
        Ok(Entry {
            shared,
            key_delta: pos..key_end,
            value: key_end..value_end,
        })
    }

    /// The full key stored at a restart point.
    fn restart_key(&self, i: usize) -> Result<&[u8], BlockError> {
        let e = self.entry(self.restart_offset(i)?)?;
        if e.shared != 0 {
            return Err(BlockError("restart entry shares a prefix"));
        }
        Ok(&self.data[e.key_delta])
    }
}

struct Entry {
    shared: usize,
    key_delta: Range<usize>,
    value: Range<usize>,
}

/// A position in a block. Starts before the first entry; [`BlockCursor::advance`] and
/// [`BlockCursor::seek`] move it onto an entry, whose key and value are then readable.
pub(crate) struct BlockCursor {
    block: Block,
    key: Vec<u8>,
    value: Range<usize>,
    next: usize,
}

impl BlockCursor {
    pub fn new(block: Block) -> Self {
        BlockCursor {
            block,
            key: Vec::new(),
            value: 0..0,
            next: 0,
        }
    }

    /// Moves to the next entry; `false` once past the last.
    pub fn advance(&mut self) -> Result<bool, BlockError> {
        if self.next >= self.block.restarts_at {
            return Ok(false);
        }
        let e = self.block.entry(self.next)?;
        if e.shared > self.key.len() {
            return Err(BlockError("entry shares more than the previous key"));
        }
        self.key.truncate(e.shared);
        self.key.extend_from_slice(&self.block.data[e.key_delta]);
        self.next = e.value.end;
        self.value = e.value;
        Ok(true)
    }

    /// Moves to the first entry with a key at or after `target`; `false` if there is none.
    pub fn seek(&mut self, target: &[u8]) -> Result<bool, BlockError> {
        if self.block.is_empty() {
            self.next = 0;
            return Ok(false);
        }
        let start = self.last_restart_before(target)?;
        self.next = self.block.restart_offset(start)?;
        self.key.clear();
        while self.advance()? {
            if self.key.as_slice() >= target {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Binary search for the last restart point whose key is below `target` (or the first
    /// point), so the scan from it passes every key that could be the answer.
    fn last_restart_before(&self, target: &[u8]) -> Result<usize, BlockError> {
        let (mut lo, mut hi) = (0, self.block.restart_count - 1);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            match self.block.restart_key(mid)?.cmp(target) {
                Ordering::Less => lo = mid,
                _ => hi = mid - 1,
            }
        }
        Ok(lo)
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The current value, sharing the block's bytes.
    pub fn value(&self) -> Bytes {
        self.block.data.slice(self.value.clone())
    }

    pub fn value_slice(&self) -> &[u8] {
        &self.block.data[self.value.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn build(entries: &BTreeMap<Vec<u8>, Vec<u8>>) -> Block {
        let mut b = BlockBuilder::new();
        for (k, v) in entries {
            b.add(k, v.len(), |buf| buf.extend_from_slice(v));
        }
        let len = b.len();
        let bytes = Bytes::copy_from_slice(b.finish());
        assert_eq!(bytes.len(), len);
        Block::parse(bytes).unwrap()
    }

    fn arb_entries() -> impl Strategy<Value = BTreeMap<Vec<u8>, Vec<u8>>> {
        let key = proptest::collection::vec(0u8..4, 0..6);
        let value = proptest::collection::vec(any::<u8>(), 0..8);
        proptest::collection::btree_map(key, value, 0..60)
    }

    proptest! {
        #[test]
        fn prop_block_scan_and_seek_match_the_model(
            entries in arb_entries(),
            targets in proptest::collection::vec(proptest::collection::vec(0u8..5, 0..6), 1..10),
        ) {
            let block = build(&entries);
            let mut c = BlockCursor::new(block.clone());
            let mut scanned = BTreeMap::new();
            while c.advance().unwrap() {
                scanned.insert(c.key().to_vec(), c.value_slice().to_vec());
            }
            prop_assert_eq!(&scanned, &entries);
            for t in targets {
                let mut c = BlockCursor::new(block.clone());
                let found = c.seek(&t).unwrap().then(|| (c.key().to_vec(), c.value().to_vec()));
                let want = entries.range(t..).next().map(|(k, v)| (k.clone(), v.clone()));
                prop_assert_eq!(found, want);
            }
        }

        #[test]
        fn prop_block_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), t in proptest::collection::vec(any::<u8>(), 0..3)) {
            if let Ok(block) = Block::parse(Bytes::from(bytes)) {
                let mut c = BlockCursor::new(block.clone());
                while let Ok(true) = c.advance() {}
                let _ = BlockCursor::new(block).seek(&t);
            }
        }
    }

    #[test]
    fn restart_points_store_whole_keys() {
        let entries: BTreeMap<_, _> = (0..40u32)
            .map(|i| (format!("key{i:04}").into_bytes(), vec![i as u8]))
            .collect();
        let block = build(&entries);
        assert_eq!(block.restart_count, 3);
        assert_eq!(block.restart_key(2).unwrap(), b"key0032");
    }
}
