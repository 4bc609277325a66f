//! Merging sorted sources into one sorted stream, combining versions of a key with the merge
//! rule. Used by scans, flushes and compactions alike.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use super::cell::{Cell, MergeRule};
use super::error::Result;
use super::memtable::Memtable;

/// A sorted stream of distinct keys.
pub type Source = Box<dyn Iterator<Item = Result<(Bytes, Cell)>> + Send>;

struct Head {
    key: Bytes,
    cell: Cell,
    source: usize,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key
            .cmp(&other.key)
            .then(self.source.cmp(&other.source))
    }
}

/// K-way merge of sources, each yielding distinct keys in ascending order. Stops after the
/// first error, which it yields.
pub struct MergeIter {
    sources: Vec<Source>,
    heap: BinaryHeap<Reverse<Head>>,
    rule: Arc<dyn MergeRule>,
    end: Bound<Bytes>,
    failed: bool,
    primed: bool,
}

impl MergeIter {
    pub fn new(sources: Vec<Source>, rule: Arc<dyn MergeRule>, end: Bound<Bytes>) -> Self {
        MergeIter {
            heap: BinaryHeap::with_capacity(sources.len()),
            sources,
            rule,
            end,
            failed: false,
            primed: false,
        }
    }

    fn pull(&mut self, source: usize) -> Result<()> {
        if let Some(item) = self.sources[source].next() {
            let (key, cell) = item?;
            self.heap.push(Reverse(Head { key, cell, source }));
        }
        Ok(())
    }

    fn past_end(&self, key: &[u8]) -> bool {
        match &self.end {
            Bound::Included(e) => key > e.as_ref(),
            Bound::Excluded(e) => key >= e.as_ref(),
            Bound::Unbounded => false,
        }
    }

    fn step(&mut self) -> Result<Option<(Bytes, Cell)>> {
        if !self.primed {
            self.primed = true;
            for s in 0..self.sources.len() {
                self.pull(s)?;
            }
        }
        let Some(Reverse(first)) = self.heap.pop() else {
            return Ok(None);
        };
        if self.past_end(&first.key) {
            self.heap.clear();
            return Ok(None);
        }
        self.pull(first.source)?;
        let mut cell = first.cell;
        while let Some(Reverse(next)) = self.heap.peek() {
            if next.key != first.key {
                break;
            }
            let Some(Reverse(next)) = self.heap.pop() else {
                break;
            };
            cell = self.rule.merge(cell, next.cell);
            self.pull(next.source)?;
        }
        Ok(Some((first.key, cell)))
    }
}

impl Iterator for MergeIter {
    type Item = Result<(Bytes, Cell)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(item) => item.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Walks a memtable in chunks so the iterator owns no borrow of it.
pub struct MemtableIter {
    mem: Arc<Memtable>,
    buf: VecDeque<(Bytes, Cell)>,
    next_from: Option<Bound<Bytes>>,
}

const MEMTABLE_CHUNK_ENTRIES: usize = 256;

impl MemtableIter {
    pub fn new(mem: Arc<Memtable>, start: Bound<Bytes>) -> Self {
        MemtableIter {
            mem,
            buf: VecDeque::new(),
            next_from: Some(start),
        }
    }

    fn refill(&mut self) {
        let Some(from) = self.next_from.take() else {
            return;
        };
        let chunk = self
            .mem
            .chunk(from.as_ref().map(|b| b.as_ref()), MEMTABLE_CHUNK_ENTRIES);
        if chunk.len() == MEMTABLE_CHUNK_ENTRIES {
            self.next_from = chunk.last().map(|(k, _)| Bound::Excluded(k.clone()));
        }
        self.buf.extend(chunk);
    }
}

impl Iterator for MemtableIter {
    type Item = Result<(Bytes, Cell)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            self.refill();
        }
        self.buf.pop_front().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::cell::LastWriteWins;
    use crate::lsm::error::Error;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn source(items: Vec<(Vec<u8>, Cell)>) -> Source {
        Box::new(items.into_iter().map(|(k, c)| Ok((Bytes::from(k), c))))
    }

    proptest! {
        #[test]
        fn prop_merge_matches_model(
            inputs in proptest::collection::vec(
                proptest::collection::btree_map(0u8..40, (0u64..30, any::<bool>()), 0..30), 0..5),
            end in proptest::option::of(0u8..40),
        ) {
            let mut model: BTreeMap<Vec<u8>, Cell> = BTreeMap::new();
            let mut sources = Vec::new();
            for input in &inputs {
                let items: Vec<_> = input.iter().map(|(k, (ts, del))| {
                    let cell = if *del { Cell::tombstone(*ts) } else { Cell::value(*ts, vec![*k]) };
                    (vec![*k], cell)
                }).collect();
                for (k, c) in &items {
                    let merged = match model.remove(k) {
                        Some(old) => LastWriteWins.merge(old, c.clone()),
                        None => c.clone(),
                    };
                    model.insert(k.clone(), merged);
                }
                sources.push(source(items));
            }
            let end_bound = end.map_or(Bound::Unbounded, |e| Bound::Excluded(Bytes::from(vec![e])));
            let got: Vec<_> = MergeIter::new(sources, Arc::new(LastWriteWins), end_bound)
                .map(|r| r.unwrap())
                .collect();
            let expect: Vec<_> = model
                .into_iter()
                .filter(|(k, _)| end.is_none_or(|e| k[0] < e))
                .map(|(k, c)| (Bytes::from(k), c))
                .collect();
            prop_assert_eq!(got, expect);
        }
    }

    #[test]
    fn an_error_ends_the_stream() {
        let bad: Source = Box::new(
            vec![
                Ok((Bytes::from_static(b"a"), Cell::value(1, "a"))),
                Err(Error::Closed),
            ]
            .into_iter(),
        );
        let good = source(vec![(b"b".to_vec(), Cell::value(1, "b"))]);
        let out: Vec<_> =
            MergeIter::new(vec![bad, good], Arc::new(LastWriteWins), Bound::Unbounded).collect();
        assert!(out.iter().any(|r| r.is_err()));
        assert!(out.last().unwrap().is_err());
    }

    #[test]
    fn memtable_iter_walks_every_chunk() {
        let mem = Arc::new(Memtable::new(vec![]));
        for i in 0..1000u32 {
            mem.insert(
                Bytes::from(i.to_be_bytes().to_vec()),
                i as u64,
                Cell::value(1, "v"),
                &LastWriteWins,
            );
        }
        let start = Bound::Included(Bytes::from(10u32.to_be_bytes().to_vec()));
        let keys: Vec<_> = MemtableIter::new(mem, start)
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(keys.len(), 990);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }
}
