//! Byte-bounded LRU caches, sharded so concurrent readers rarely contend on one lock.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

use bytes::Bytes;
// Seeded per cache, as std's SipHash `RandomState` is, since clients choose the keys; SipHash
// here and in the request path's other maps was 5% of a node's instructions.
use foldhash::quality::RandomState;
use parking_lot::Mutex;

/// Enough that 2-16 reader threads seldom meet on a lock; each shard gets `1/16` of the bytes.
pub const SHARD_COUNT_DEFAULT: usize = 16;

/// Data blocks by `(file_number, block offset)`: decompressed and checksum-verified.
pub type BlockCache = LruCache<(u64, u64), Bytes>;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    pub evictions: u64,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
}

/// A least-recently-used cache bounded by the sum of its entries' charges. An entry charged
/// more than a shard's share is not kept. Capacity 0 disables it: every `get` misses.
pub struct LruCache<K, V> {
    shards: Box<[Mutex<Shard<K, V>>]>,
    /// Picks the shard; independent of the shards' own map hashers so that the keys of one
    /// shard still spread over its map's buckets.
    shard_hasher: RandomState,
    capacity_bytes: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> LruCache<K, V> {
    pub fn new(capacity_bytes: usize) -> Self {
        Self::with_shards(capacity_bytes, SHARD_COUNT_DEFAULT)
    }

    /// Splits `capacity_bytes` over `shard_count` shards (at least 1). LRU order holds per
    /// shard, so a single shard gives exact global order.
    pub fn with_shards(capacity_bytes: usize, shard_count: usize) -> Self {
        let n = shard_count.max(1);
        let shards = (0..n)
            .map(|i| {
                let share = capacity_bytes / n + usize::from(i < capacity_bytes % n);
                Mutex::new(Shard::new(share))
            })
            .collect();
        LruCache {
            shards,
            shard_hasher: RandomState::default(),
            capacity_bytes,
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, k: &Q) -> &Mutex<Shard<K, V>> {
        let h = self.shard_hasher.hash_one(k);
        &self.shards[(h % self.shards.len() as u64) as usize]
    }

    pub fn get(&self, k: &K) -> Option<V> {
        self.get_ref(k)
    }

    /// [`LruCache::get`] by a borrowed form of the key (`&[u8]` for `Bytes` keys), so a lookup
    /// need not build a key.
    pub fn get_ref<Q>(&self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard(k).lock().get(k)
    }

    /// False for a cache built with capacity 0, which stores nothing.
    pub fn is_enabled(&self) -> bool {
        self.capacity_bytes > 0
    }

    pub fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    /// Inserts or replaces `k`, evicting least-recently-used entries to make room.
    pub fn insert(&self, k: K, v: V, charge: usize) {
        self.shard(&k).lock().insert(k, v, charge);
    }

    pub fn remove<Q>(&self, k: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard(k).lock().remove(k);
    }

    pub fn stats(&self) -> CacheStats {
        let mut total = CacheStats::default();
        for shard in self.shards.iter() {
            let s = shard.lock();
            total.hits += s.stats.hits;
            total.misses += s.stats.misses;
            total.inserts += s.stats.inserts;
            total.evictions += s.stats.evictions;
            total.used_bytes += s.used_bytes as u64;
            total.capacity_bytes += s.capacity_bytes as u64;
        }
        total
    }
}

/// Marks the ends of the recency list.
const NIL: usize = usize::MAX;

struct Node<K, V> {
    key: K,
    value: V,
    charge: usize,
    /// Towards the most recently used end.
    prev: usize,
    next: usize,
}

/// One lock's worth of cache: a map to slots in `nodes`, which also form a doubly linked list
/// from most (`head`) to least (`tail`) recently used. Removal swaps the last slot into the
/// hole, keeping `nodes` dense.
struct Shard<K, V> {
    map: HashMap<K, usize, RandomState>,
    nodes: Vec<Node<K, V>>,
    head: usize,
    tail: usize,
    used_bytes: usize,
    capacity_bytes: usize,
    stats: CacheStats,
}

impl<K: Hash + Eq + Clone, V: Clone> Shard<K, V> {
    fn new(capacity_bytes: usize) -> Self {
        Shard {
            map: HashMap::with_hasher(RandomState::default()),
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
            used_bytes: 0,
            capacity_bytes,
            stats: CacheStats::default(),
        }
    }

    fn get<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(&i) = self.map.get(k) else {
            self.stats.misses += 1;
            return None;
        };
        self.stats.hits += 1;
        self.unlink(i);
        self.push_front(i);
        Some(self.nodes[i].value.clone())
    }

    fn insert(&mut self, key: K, value: V, charge: usize) {
        self.remove(&key);
        if charge > self.capacity_bytes || self.capacity_bytes == 0 {
            return;
        }
        while self.used_bytes + charge > self.capacity_bytes && self.tail != NIL {
            self.remove_at(self.tail);
            self.stats.evictions += 1;
        }
        let i = self.nodes.len();
        self.map.insert(key.clone(), i);
        self.nodes.push(Node {
            key,
            value,
            charge,
            prev: NIL,
            next: NIL,
        });
        self.push_front(i);
        self.used_bytes += charge;
        self.stats.inserts += 1;
    }

    fn remove<Q>(&mut self, k: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(&i) = self.map.get(k) {
            self.remove_at(i);
        }
    }

    fn remove_at(&mut self, i: usize) {
        self.unlink(i);
        let node = self.nodes.swap_remove(i);
        self.map.remove(&node.key);
        self.used_bytes -= node.charge;
        if i < self.nodes.len() {
            self.relocated(i);
        }
    }

    /// Points the neighbours and the map at the node `swap_remove` just moved into slot `i`.
    fn relocated(&mut self, i: usize) {
        let (prev, next) = (self.nodes[i].prev, self.nodes[i].next);
        match prev {
            NIL => self.head = i,
            p => self.nodes[p].next = i,
        }
        match next {
            NIL => self.tail = i,
            n => self.nodes[n].prev = i,
        }
        if let Some(slot) = self.map.get_mut(&self.nodes[i].key) {
            *slot = i;
        }
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.nodes[i].prev, self.nodes[i].next);
        match prev {
            NIL => self.head = next,
            p => self.nodes[p].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n].prev = prev,
        }
    }

    fn push_front(&mut self, i: usize) {
        self.nodes[i].prev = NIL;
        self.nodes[i].next = self.head;
        match self.head {
            NIL => self.tail = i,
            h => self.nodes[h].prev = i,
        }
        self.head = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    #[test]
    fn least_recently_used_entry_is_evicted_first() {
        let c = LruCache::with_shards(30, 1);
        c.insert(1, "a", 10);
        c.insert(2, "b", 10);
        c.insert(3, "c", 10);
        assert_eq!(c.get(&1), Some("a"));
        c.insert(4, "d", 10);
        assert_eq!(c.get(&2), None, "2 was least recently used");
        assert_eq!(c.get(&1), Some("a"));
        assert_eq!(c.get(&3), Some("c"));
        assert_eq!(c.get(&4), Some("d"));
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.inserts, s.evictions), (4, 1, 4, 1));
        assert_eq!((s.used_bytes, s.capacity_bytes), (30, 30));
    }

    #[test]
    fn replacing_a_key_updates_value_and_charge() {
        let c = LruCache::with_shards(100, 1);
        c.insert("k", 1, 60);
        c.insert("k", 2, 30);
        assert_eq!(c.get(&"k"), Some(2));
        assert_eq!(c.stats().used_bytes, 30);
        c.remove(&"k");
        assert_eq!(c.get(&"k"), None);
        assert_eq!(c.stats().used_bytes, 0);
    }

    #[test]
    fn byte_keys_are_found_by_slice() {
        let c: LruCache<Bytes, u32> = LruCache::new(1024);
        c.insert(Bytes::from_static(b"key"), 1, 10);
        assert_eq!(c.get_ref(b"key".as_slice()), Some(1));
        assert_eq!(c.get_ref(b"other".as_slice()), None);
    }

    #[test]
    fn oversized_entries_and_zero_capacity_store_nothing() {
        let c = LruCache::with_shards(10, 1);
        c.insert(1, 1, 11);
        assert_eq!(c.get(&1), None);
        let off: LruCache<u32, u32> = LruCache::new(0);
        assert!(!off.is_enabled() && c.is_enabled());
        off.insert(1, 1, 0);
        assert_eq!(off.get(&1), None);
        assert_eq!(off.stats().used_bytes, 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Get(u8),
        Insert(u8, usize),
        Remove(u8),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..24).prop_map(Op::Get),
            (0u8..24, 0usize..40).prop_map(|(k, c)| Op::Insert(k, c)),
            (0u8..24).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Against a model that keeps keys in recency order: same answers, and the byte
        /// bound always holds.
        #[test]
        fn prop_lru_matches_a_model(ops in proptest::collection::vec(arb_op(), 0..200)) {
            const CAPACITY_BYTES: usize = 100;
            let c = LruCache::with_shards(CAPACITY_BYTES, 1);
            let mut model: Vec<(u8, usize, usize)> = Vec::new(); // (key, value, charge), MRU last
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Get(k) => {
                        let pos = model.iter().position(|e| e.0 == k);
                        let want = pos.map(|p| { let e = model.remove(p); model.push(e); e.1 });
                        prop_assert_eq!(c.get(&k), want);
                    }
                    Op::Insert(k, charge) => {
                        c.insert(k, step, charge);
                        model.retain(|e| e.0 != k);
                        if charge <= CAPACITY_BYTES {
                            while model.iter().map(|e| e.2).sum::<usize>() + charge > CAPACITY_BYTES {
                                model.remove(0);
                            }
                            model.push((k, step, charge));
                        }
                    }
                    Op::Remove(k) => {
                        c.remove(&k);
                        model.retain(|e| e.0 != k);
                    }
                }
                let used = c.stats().used_bytes as usize;
                prop_assert!(used <= CAPACITY_BYTES);
                prop_assert_eq!(used, model.iter().map(|e| e.2).sum::<usize>());
            }
        }
    }

    #[test]
    fn concurrent_readers_and_writers_keep_the_bound() {
        const CAPACITY_BYTES: usize = 64 * 1024;
        let c = Arc::new(LruCache::<u64, Bytes>::new(CAPACITY_BYTES));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    for i in 0..5_000u64 {
                        let k = (i * 7 + t) % 2_000;
                        if c.get(&k).is_none() {
                            c.insert(k, Bytes::from(vec![t as u8; 100]), 100);
                        }
                        if i % 97 == 0 {
                            c.remove(&k);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = c.stats();
        assert!(s.used_bytes <= CAPACITY_BYTES as u64, "{s:?}");
        assert_eq!(s.hits + s.misses, 20_000);
        assert!(s.evictions > 0 && s.hits > 0, "{s:?}");
    }
}
