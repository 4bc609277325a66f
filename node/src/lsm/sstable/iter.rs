//! Ordered iteration over a table, one cached block at a time.

use std::sync::Arc;

use bytes::Bytes;

use super::block::BlockCursor;
use super::table::Table;
use crate::lsm::cell::Cell;
use crate::lsm::error::Result;

/// Yields a table's entries in key order. Keys are copied (prefix compression splits them);
/// cells slice the block. After an error is yielded the iterator ends.
pub struct TableIter {
    table: Arc<Table>,
    fill_cache: bool,
    /// The block to load once the current one is exhausted.
    next_block: usize,
    /// The current block's cursor and file offset.
    cursor: Option<(BlockCursor, u64)>,
    /// The cursor sits on an entry that `next` has not yielded yet (after a seek).
    pending: bool,
    done: bool,
}

impl TableIter {
    pub(super) fn new(table: Arc<Table>, fill_cache: bool) -> Self {
        TableIter {
            table,
            fill_cache,
            next_block: 0,
            cursor: None,
            pending: false,
            done: false,
        }
    }

    pub fn seek_to_first(&mut self) -> Result<()> {
        self.reposition(0);
        Ok(())
    }

    /// Positions the iterator so that `next` yields the first key at or after `key`.
    pub fn seek(&mut self, key: &[u8]) -> Result<()> {
        let i = self.table.find_block(key);
        self.reposition(i);
        if i == self.table.block_count() {
            return Ok(());
        }
        let offset = self.table.block_offset(i);
        let positioned = self.table.data_block(i, self.fill_cache).and_then(|block| {
            let mut cursor = BlockCursor::new(block);
            let found = cursor
                .seek(key)
                .map_err(|e| self.table.block_corruption(offset, e))?;
            Ok((cursor, found))
        });
        match positioned {
            Ok((cursor, found)) => {
                self.cursor = Some((cursor, offset));
                self.next_block = i + 1;
                self.pending = found;
                Ok(())
            }
            Err(e) => {
                self.done = true;
                Err(e)
            }
        }
    }

    fn reposition(&mut self, block: usize) {
        self.next_block = block;
        self.cursor = None;
        self.pending = false;
        self.done = false;
    }

    /// The next entry, loading blocks as needed; `None` at the end of the table.
    fn step(&mut self) -> Result<Option<(Bytes, Cell)>> {
        loop {
            if let Some((cursor, offset)) = self.cursor.as_mut() {
                let offset = *offset;
                let on_entry = std::mem::take(&mut self.pending)
                    || cursor
                        .advance()
                        .map_err(|e| self.table.block_corruption(offset, e))?;
                if on_entry {
                    let cell = self.table.decode_cell(&cursor.value(), offset)?;
                    return Ok(Some((Bytes::copy_from_slice(cursor.key()), cell)));
                }
                self.cursor = None;
            }
            let i = self.next_block;
            if i >= self.table.block_count() {
                return Ok(None);
            }
            let block = self.table.data_block(i, self.fill_cache)?;
            self.cursor = Some((BlockCursor::new(block), self.table.block_offset(i)));
            self.next_block += 1;
        }
    }
}

impl Iterator for TableIter {
    type Item = Result<(Bytes, Cell)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.step().transpose();
        self.done = !matches!(item, Some(Ok(_)));
        item
    }
}
