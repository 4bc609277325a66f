//! The in-memory write buffer: a hash index of key -> cell for point reads and writes, and a
//! B-tree of the same entries for order (scans, flushes), brought up to date only when order
//! is asked for.
//!
//! A key holds one entry however often it is written, as a Cassandra memtable partition does.
//! Its cell is shared by the two structures and merged in place, under the cell's own lock,
//! which readers take to copy it. The index is striped by key; a write holds its key's stripe
//! while it looks the key up and, for a new key, adds it to the index and to the stripe's list
//! of keys not yet ordered, so two first writes of a key cannot both add one. Ordering is
//! deferred because a search of an ordered structure of tens of thousands of keys is a chain of
//! cache misses: as a skip list, linked on every new key, its search was 8.7% of the machine's
//! samples during a load. Sorting a batch of new keys and adding it to the tree in order costs a
//! fraction of that, and a memtable that is never scanned is ordered once, by its flush.
//!
//! A write touches memory shared by every writer only once per batch: the key's hash picks its
//! stripe and its slot in the stripe's table alike, and the size and timestamp summary is
//! published when an [`Inserter`] is dropped. Each of those atomics moved a cache line between
//! the two cores of the benchmark machine on every insert (docs/benchmarks.md).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering as AtOrd};
use std::sync::Arc;

use bytes::Bytes;
use foldhash::quality::RandomState;
use hashbrown::HashTable;
use parking_lot::{Mutex, RwLock};

use super::cell::{Cell, MergeRule};

/// Bytes charged per entry on top of key and value: the index's slot, the tree's share of a
/// node, the shared cell's allocation, the unordered list's slot, and `Bytes` headers.
const ENTRY_OVERHEAD_BYTES: usize = 160;
/// Stripes of the hash index, each under its own lock; a power of two.
const INDEX_STRIPES: usize = 64;
/// Where in a key's hash its stripe number sits: clear of the low bits that place it in the
/// stripe's table and of the top 7 that the table keeps as its tag, so that the keys of one
/// stripe still spread over their table.
const STRIPE_SHIFT: u32 = 32;

/// One key's merged cell, shared by the tree and the index.
type Slot = Arc<Mutex<Cell>>;

/// One stripe of the index: its keys, and those of them the tree does not hold yet.
#[derive(Default)]
struct Stripe {
    map: HashTable<(Bytes, Slot)>,
    unordered: Vec<(MemKey, Slot)>,
}

impl Stripe {
    fn find(&self, hash: u64, key: &[u8]) -> Option<&Slot> {
        self.map
            .find(hash, |(k, _)| k.as_ref() == key)
            .map(|(_, slot)| slot)
    }
}

/// A tree key. `prefix` holds the key's first 8 bytes so most comparisons finish on the
/// entry itself, without following `key` to another allocation.
struct MemKey {
    prefix: u64,
    key: Bytes,
}

impl MemKey {
    fn new(key: Bytes) -> Self {
        MemKey {
            prefix: key_prefix(&key),
            key,
        }
    }
}

/// The first 8 bytes of `key`, zero-padded, big-endian: ordering prefixes and then whole keys
/// gives the same order as comparing whole keys.
fn key_prefix(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}

/// Key ascending, by prefix first.
fn compare(a: (u64, &[u8]), b: (u64, &[u8])) -> Ordering {
    a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1))
}

/// A borrowed view of a tree key, so lookups need no allocation.
trait KeyView {
    fn parts(&self) -> (u64, &[u8]);
}

impl KeyView for MemKey {
    fn parts(&self) -> (u64, &[u8]) {
        (self.prefix, &self.key)
    }
}

/// A lookup position.
struct Probe<'k> {
    prefix: u64,
    key: &'k [u8],
}

impl<'k> Probe<'k> {
    fn new(key: &'k [u8]) -> Self {
        Probe {
            prefix: key_prefix(key),
            key,
        }
    }
}

impl KeyView for Probe<'_> {
    fn parts(&self) -> (u64, &[u8]) {
        (self.prefix, self.key)
    }
}

impl<'a> Borrow<dyn KeyView + 'a> for MemKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

impl Ord for dyn KeyView + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(self.parts(), other.parts())
    }
}

impl PartialOrd for dyn KeyView + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for dyn KeyView + '_ {}

impl Ord for MemKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(self.parts(), other.parts())
    }
}

impl PartialOrd for MemKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for MemKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for MemKey {}

/// What an entry costs the memtable's size budget.
fn charge(key: &[u8], cell: &Cell) -> usize {
    key.len() + cell.encoded_len() + ENTRY_OVERHEAD_BYTES
}

pub struct Memtable {
    index: [RwLock<Stripe>; INDEX_STRIPES],
    hasher: RandomState,
    /// Every key, in order, except those still in a stripe's `unordered` list. Lock order:
    /// the tree before any stripe.
    tree: RwLock<BTreeMap<MemKey, Slot>>,
    /// Set, under the stripe's lock, by a write that finds its stripe's `unordered` list empty,
    /// and cleared, under the tree's write lock, by the ordering that empties the lists. So a
    /// key is unordered only while this is set or while an ordering that will take it holds the
    /// tree.
    unordered_any: AtomicBool,
    approx_bytes: AtomicUsize,
    min_timestamp: AtomicU64,
    max_timestamp: AtomicU64,
    max_seq: AtomicU64,
    /// WAL segments whose records live only here until this memtable is flushed.
    wal_segments: Vec<u64>,
}

impl Memtable {
    pub fn new(wal_segments: Vec<u64>) -> Self {
        Memtable {
            index: std::array::from_fn(|_| RwLock::default()),
            hasher: RandomState::default(),
            tree: RwLock::default(),
            unordered_any: AtomicBool::new(false),
            approx_bytes: AtomicUsize::new(0),
            min_timestamp: AtomicU64::new(u64::MAX),
            max_timestamp: AtomicU64::new(0),
            max_seq: AtomicU64::new(0),
            wal_segments,
        }
    }

    /// Merges `cell` into the key's entry with `rule`.
    pub fn insert(&self, key: Bytes, seq: u64, cell: Cell, rule: &dyn MergeRule) {
        self.inserter().insert(key, seq, cell, rule);
    }

    /// Inserts whose entries are readable as each returns and whose sizes and timestamps reach
    /// the memtable's summary when the inserter is dropped.
    pub fn inserter(&self) -> Inserter<'_> {
        Inserter {
            mem: self,
            tally: Tally::default(),
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn stripe(&self, hash: u64) -> &RwLock<Stripe> {
        &self.index[(hash >> STRIPE_SHIFT) as usize & (INDEX_STRIPES - 1)]
    }

    /// The key's merged cell, or `None` if the key was never written here.
    pub fn get(&self, key: &[u8]) -> Option<Cell> {
        let hash = self.hash(key);
        let stripe = self.stripe(hash).read();
        stripe.find(hash, key).map(|slot| slot.lock().clone())
    }

    /// Up to `limit` merged entries with keys after `after` (or from `start`), in key order:
    /// the cursor a scan or flush walks with, holding no borrow between chunks.
    pub fn chunk(&self, from: Bound<&[u8]>, limit: usize) -> Vec<(Bytes, Cell)> {
        self.order();
        let probe;
        let lo = match from {
            Bound::Included(k) => {
                probe = Probe::new(k);
                Bound::Included(&probe as &dyn KeyView)
            }
            Bound::Excluded(k) => {
                probe = Probe::new(k);
                Bound::Excluded(&probe as &dyn KeyView)
            }
            Bound::Unbounded => Bound::Unbounded,
        };
        let tree = self.tree.read();
        tree.range::<dyn KeyView, _>((lo, Bound::Unbounded))
            .take(limit)
            .map(|(k, slot)| (k.key.clone(), slot.lock().clone()))
            .collect()
    }

    /// Calls `entry` with every entry in key order, without copying any, and `between` after
    /// each one once its cell is unlocked again (so `between` may sleep without holding up a
    /// reader of that key); both are handed `state`. Stops at the first error. The tree stays
    /// read-locked throughout, which holds up only the ordering of keys written meanwhile:
    /// meant for a sealed memtable's flush.
    pub fn try_for_each<S, E>(
        &self,
        state: &mut S,
        mut entry: impl FnMut(&mut S, &[u8], &Cell) -> Result<(), E>,
        mut between: impl FnMut(&mut S) -> Result<(), E>,
    ) -> Result<(), E> {
        self.order();
        let tree = self.tree.read();
        tree.iter().try_for_each(|(k, slot)| {
            entry(state, &k.key, &slot.lock())?;
            between(state)
        })
    }

    /// Moves every key written before the call into the tree: sorted as one batch, which an
    /// empty tree takes whole.
    fn order(&self) {
        if !self.unordered_any.load(AtOrd::Acquire) {
            return;
        }
        let mut tree = self.tree.write();
        if !self.unordered_any.swap(false, AtOrd::AcqRel) {
            return;
        }
        let mut fresh = Vec::new();
        for stripe in &self.index {
            fresh.append(&mut stripe.write().unordered);
        }
        fresh.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if tree.is_empty() {
            let added = fresh.len();
            *tree = BTreeMap::from_iter(fresh);
            debug_assert_eq!(tree.len(), added, "a key was unordered twice");
        } else {
            for (key, slot) in fresh {
                let old = tree.insert(key, slot);
                debug_assert!(old.is_none(), "a key was unordered twice");
            }
        }
    }

    /// True if `key` is here; cheaper than `get`.
    pub fn contains(&self, key: &[u8]) -> bool {
        let hash = self.hash(key);
        self.stripe(hash).read().find(hash, key).is_some()
    }

    pub fn approx_bytes(&self) -> usize {
        self.approx_bytes.load(AtOrd::Relaxed)
    }

    /// True until the first write batch is done: an entry is charged to `approx_bytes` when
    /// its [`Inserter`] is dropped.
    pub fn is_empty(&self) -> bool {
        self.approx_bytes() == 0
    }

    /// Smallest timestamp held, `u64::MAX` when empty.
    pub fn min_timestamp(&self) -> u64 {
        self.min_timestamp.load(AtOrd::Relaxed)
    }

    pub fn max_timestamp(&self) -> u64 {
        self.max_timestamp.load(AtOrd::Relaxed)
    }

    pub fn max_seq(&self) -> u64 {
        self.max_seq.load(AtOrd::Relaxed)
    }

    pub fn wal_segments(&self) -> &[u64] {
        &self.wal_segments
    }

    /// Entries in the index and in the tree plus the unordered lists: always equal.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let tree = self.tree.read();
        let stripes: Vec<_> = self.index.iter().map(|s| s.read()).collect();
        let indexed = stripes.iter().map(|s| s.map.len()).sum();
        let unordered: usize = stripes.iter().map(|s| s.unordered.len()).sum();
        (indexed, tree.len() + unordered)
    }
}

/// What a run of inserts adds to the memtable's summary.
struct Tally {
    added_bytes: usize,
    freed_bytes: usize,
    min_timestamp: u64,
    max_timestamp: u64,
    max_seq: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            added_bytes: 0,
            freed_bytes: 0,
            min_timestamp: u64::MAX,
            max_timestamp: 0,
            max_seq: 0,
        }
    }
}

/// A writer's run of inserts into one memtable (see [`Memtable::inserter`]). A writer holds it
/// only while the memtable cannot be sealed, so a sealed memtable's summary is complete.
pub struct Inserter<'m> {
    mem: &'m Memtable,
    tally: Tally,
}

impl Inserter<'_> {
    /// Merges `cell` into the key's entry with `rule`; readable when this returns.
    pub fn insert(&mut self, key: Bytes, seq: u64, cell: Cell, rule: &dyn MergeRule) {
        let t = &mut self.tally;
        t.min_timestamp = t.min_timestamp.min(cell.timestamp);
        t.max_timestamp = t.max_timestamp.max(cell.timestamp);
        t.max_seq = t.max_seq.max(seq);
        let mem = self.mem;
        let hash = mem.hash(&key);
        let mut stripe = mem.stripe(hash).write();
        if let Some(slot) = stripe.find(hash, &key) {
            let mut held = slot.lock();
            t.freed_bytes += charge(&key, &held);
            *held = rule.merge(held.clone(), cell);
            t.added_bytes += charge(&key, &held);
            return;
        }
        t.added_bytes += charge(&key, &cell);
        let slot = Arc::new(Mutex::new(cell));
        if stripe.unordered.is_empty() {
            mem.unordered_any.store(true, AtOrd::Release);
        }
        stripe
            .unordered
            .push((MemKey::new(key.clone()), slot.clone()));
        stripe
            .map
            .insert_unique(hash, (key, slot), |(k, _)| mem.hash(k));
    }
}

impl Drop for Inserter<'_> {
    fn drop(&mut self) {
        let (mem, t) = (self.mem, &self.tally);
        if t.added_bytes == 0 && t.freed_bytes == 0 {
            return;
        }
        mem.approx_bytes.fetch_add(t.added_bytes, AtOrd::Relaxed);
        mem.approx_bytes.fetch_sub(t.freed_bytes, AtOrd::Relaxed);
        mem.min_timestamp.fetch_min(t.min_timestamp, AtOrd::Relaxed);
        mem.max_timestamp.fetch_max(t.max_timestamp, AtOrd::Relaxed);
        mem.max_seq.fetch_max(t.max_seq, AtOrd::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::cell::LastWriteWins;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn put(m: &Memtable, key: &str, seq: u64, cell: Cell) {
        m.insert(
            Bytes::copy_from_slice(key.as_bytes()),
            seq,
            cell,
            &LastWriteWins,
        );
    }

    #[test]
    fn out_of_order_versions_resolve_by_timestamp() {
        let m = Memtable::new(vec![1]);
        put(&m, "k", 1, Cell::value(20, "new"));
        put(&m, "k", 2, Cell::value(10, "old"));
        assert_eq!(m.get(b"k"), Some(Cell::value(20, "new")));
        assert_eq!(m.get(b"k\0"), None);
        assert_eq!(m.get(b""), None);
        assert_eq!((m.min_timestamp(), m.max_timestamp()), (10, 20));
    }

    #[test]
    fn rewriting_a_key_keeps_one_entry_and_charges_it_once() {
        let m = Memtable::new(vec![]);
        put(&m, "k", 1, Cell::value(1, "vvvv"));
        let one = m.approx_bytes();
        for seq in 2..100 {
            put(&m, "k", seq, Cell::value(seq, "vvvv"));
        }
        put(&m, "k", 100, Cell::value(5, "late"));
        assert_eq!((m.counts(), m.approx_bytes()), ((1, 1), one));
        assert_eq!(m.get(b"k"), Some(Cell::value(99, "vvvv")));
    }

    #[test]
    fn a_batch_is_readable_at_once_and_summarised_when_its_inserter_is_dropped() {
        let m = Memtable::new(vec![]);
        let mut batch = m.inserter();
        batch.insert(
            Bytes::from_static(b"a"),
            7,
            Cell::value(30, "x"),
            &LastWriteWins,
        );
        batch.insert(
            Bytes::from_static(b"b"),
            8,
            Cell::value(20, "y"),
            &LastWriteWins,
        );
        assert_eq!(m.get(b"b"), Some(Cell::value(20, "y")));
        assert!(m.is_empty() && m.max_seq() == 0);
        drop(batch);
        let alone = Memtable::new(vec![]);
        put(&alone, "a", 1, Cell::value(30, "x"));
        put(&alone, "b", 2, Cell::value(20, "y"));
        assert_eq!(m.approx_bytes(), alone.approx_bytes());
        assert_eq!(
            (m.min_timestamp(), m.max_timestamp(), m.max_seq()),
            (20, 30, 8)
        );
    }

    #[test]
    fn concurrent_writers_of_one_key_lose_no_cell() {
        let m = Memtable::new(vec![]);
        let seq = AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (m, seq) = (&m, &seq);
                s.spawn(move || {
                    for i in 0..500u64 {
                        let ts = i * 4 + t;
                        put(
                            m,
                            "k",
                            seq.fetch_add(1, AtOrd::Relaxed),
                            Cell::value(ts, "v"),
                        );
                    }
                });
            }
        });
        assert_eq!(m.counts(), (1, 1));
        assert_eq!(m.get(b"k"), Some(Cell::value(1999, "v")));
    }

    /// Runs `each(thread, k)` for k in 0..300 on each of four threads at once.
    fn on_four_threads(each: impl Fn(u64, u64) + Sync) {
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let each = &each;
                s.spawn(move || (0..300u64).for_each(|k| each(t, k)));
            }
        });
    }

    #[test]
    fn concurrent_first_writes_link_each_key_once_and_charge_it_once() {
        let m = Memtable::new(vec![]);
        on_four_threads(|t, k| put(&m, &format!("k{k:03}"), k, Cell::value(t, "v")));
        let alone = Memtable::new(vec![]);
        for k in 0..300u64 {
            put(&alone, &format!("k{k:03}"), k, Cell::value(3, "v"));
        }
        assert_eq!(
            (m.counts(), m.approx_bytes()),
            ((300, 300), alone.approx_bytes())
        );
        assert!((0..300).all(|k| m.get(format!("k{k:03}").as_bytes()) == Some(Cell::value(3, "v"))));
    }

    /// Every entry, walked `chunk` entries at a time.
    fn scan(m: &Memtable, chunk: usize) -> Vec<(Bytes, Cell)> {
        let mut all = Vec::new();
        let mut from: Option<Bytes> = None;
        loop {
            let bound = from.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let part = m.chunk(bound, chunk);
            let Some((last, _)) = part.last() else {
                return all;
            };
            from = Some(last.clone());
            all.extend(part);
        }
    }

    #[test]
    fn a_scan_sees_every_write_that_returned_before_it() {
        let m = Memtable::new(vec![]);
        on_four_threads(|t, k| {
            let key = format!("k{t}-{k:03}");
            put(&m, &key, k, Cell::value(t, "v"));
            let first = m.chunk(Bound::Included(key.as_bytes()), 1);
            assert_eq!(first[0].0, key.as_bytes(), "a scan missed {key}");
        });
        assert_eq!(m.counts(), (1200, 1200));
        assert_eq!(scan(&m, 7).len(), 1200);
    }

    #[test]
    fn try_for_each_walks_every_entry_in_order_and_stops_at_an_error() {
        let m = Memtable::new(vec![]);
        for k in ["c", "a", "b"] {
            put(&m, k, 1, Cell::value(1, k));
        }
        let mut seen = Vec::new();
        let mut gaps = 0;
        let all: Result<(), ()> = m.try_for_each(
            &mut seen,
            |seen, k, c| {
                seen.push((Bytes::copy_from_slice(k), c.clone()));
                Ok(())
            },
            |seen| {
                gaps += 1;
                let (last, _) = seen.last().expect("an entry came first");
                assert!(
                    m.get(last).is_some(),
                    "the cell is unlocked between entries"
                );
                Ok(())
            },
        );
        assert_eq!((all, seen, gaps), (Ok(()), scan(&m, 2), 3));
        let mut visited = 0;
        let stopped = m.try_for_each(
            &mut visited,
            |visited, k, _| {
                *visited += 1;
                if k == b"b" {
                    Err("stop")
                } else {
                    Ok(())
                }
            },
            |_| Ok(()),
        );
        assert_eq!((stopped, visited), (Err("stop"), 2));
    }

    #[test]
    fn prefix_keys_do_not_mix() {
        let m = Memtable::new(vec![]);
        put(&m, "a", 1, Cell::value(1, "a"));
        put(&m, "ab", 2, Cell::value(1, "ab"));
        put(&m, "a\0", 3, Cell::value(1, "a0"));
        assert!(m.contains(b"a") && m.contains(b"ab") && !m.contains(b"aa"));
        let keys: Vec<_> = m
            .chunk(Bound::Unbounded, 10)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec!["a", "a\0", "ab"]);
    }

    proptest! {
        #[test]
        fn prop_prefix_order_matches_key_order(
            a in proptest::collection::vec(0u8..3, 0..12),
            b in proptest::collection::vec(0u8..3, 0..12),
        ) {
            let ka = (key_prefix(&a), &a[..]);
            let kb = (key_prefix(&b), &b[..]);
            prop_assert_eq!(compare(ka, kb), a.cmp(&b));
        }

        #[test]
        fn prop_memtable_matches_model(
            writes in proptest::collection::vec((0u8..20, 0u64..50, any::<bool>(), proptest::bool::weighted(0.05)), 1..200),
            chunk in 1usize..7,
        ) {
            let m = Memtable::new(vec![]);
            let mut model: BTreeMap<Vec<u8>, Cell> = BTreeMap::new();
            for (seq, (k, ts, del, scan_now)) in writes.into_iter().enumerate() {
                if scan_now {
                    let expect: Vec<_> = model.iter().map(|(k, c)| (Bytes::from(k.clone()), c.clone())).collect();
                    prop_assert_eq!(scan(&m, chunk), expect);
                }
                let key = vec![b'k', k];
                let cell = if del { Cell::tombstone(ts) } else { Cell::value(ts, vec![k; 3]) };
                m.insert(Bytes::from(key.clone()), seq as u64, cell.clone(), &LastWriteWins);
                let merged = match model.remove(&key) {
                    Some(old) => LastWriteWins.merge(old, cell),
                    None => cell,
                };
                model.insert(key, merged);
            }
            for (k, c) in &model {
                let got = m.get(k);
                prop_assert_eq!(got.as_ref(), Some(c));
            }
            prop_assert_eq!(m.counts(), (model.len(), model.len()));
            let expect: Vec<_> = model.into_iter().map(|(k, c)| (Bytes::from(k), c)).collect();
            prop_assert_eq!(scan(&m, chunk), expect);
        }
    }
}
