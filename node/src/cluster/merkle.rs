//! Merkle trees over a token range, for anti-entropy repair: replicas hash what they hold of a
//! range into the same fixed-shape tree, and only the sub-ranges whose leaves differ are
//! streamed.
//!
//! **Shape.** A range `(start, end]` of length `L` (`2^128` when `start == end`, the whole ring)
//! is cut into `2^depth` leaves of equal token width `w = ceil(L / 2^depth)`; leaf `i` covers the
//! tokens at offsets `[i*w, (i+1)*w)` after `start` (the last used leaf may be shorter, leaves
//! past `L` stay empty). The shape depends only on the range and the depth, so every replica
//! builds the same one without coordination.
//!
//! **Leaf hash.** The wrapping sum of `xxh3-64(key_len u32 LE ‖ engine key ‖ cell encoding)` over
//! the leaf's cells, 0 for an empty leaf. A sum is order-independent, so a leaf needs no buffer
//! and a cell can be added from any source; the cell encoding is canonical (one encoding per
//! cell) and covers timestamp, tombstone flag, expiry, causal context and value.
//!
//! **Inner nodes** (for roots and coarser levels): `xxh3-64(left u64 LE ‖ right u64 LE)`.

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::lsm::clock::hlc_physical_ms;
use crate::lsm::Cell;
use crate::storage_key;

/// 2^15 = 32 768 leaves: 256 KiB of leaf hashes per range.
pub const DEFAULT_DEPTH: u8 = 15;
/// 2^20 leaves are 8 MiB on the wire; deeper trees would outgrow a message.
pub const MAX_DEPTH: u8 = 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    #[error("depth {0} is outside 0..={MAX_DEPTH}")]
    Depth(u8),
    #[error("{got} leaf bytes, expected {expected} (8 per leaf)")]
    LeafBytes { got: usize, expected: usize },
    #[error("leaf checksum mismatch")]
    Checksum,
    #[error("the trees cover different ranges or depths")]
    Shape,
}

/// A token range `(start, end]` cut into `2^depth` leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    start: u128,
    /// `L - 1`, so the whole ring (`L = 2^128`) fits in a u128.
    last_offset: u128,
    depth: u8,
    width: u128,
}

impl Shape {
    pub fn new(start: u128, end: u128, depth: u8) -> Result<Shape, MerkleError> {
        if depth > MAX_DEPTH {
            return Err(MerkleError::Depth(depth));
        }
        let last_offset = end.wrapping_sub(start).wrapping_sub(1);
        Ok(Shape {
            start,
            last_offset,
            depth,
            width: (last_offset >> depth) + 1,
        })
    }

    pub fn depth(&self) -> u8 {
        self.depth
    }

    pub fn leaf_count(&self) -> usize {
        1 << self.depth
    }

    /// The leaf holding `token`, `None` when the token is outside the range.
    pub fn leaf_of(&self, token: u128) -> Option<usize> {
        let offset = token.wrapping_sub(self.start).wrapping_sub(1);
        (offset <= self.last_offset).then(|| (offset / self.width) as usize)
    }

    /// The tokens of leaves `first..=last` as `(start, end]`; `None` when they hold no token.
    pub fn span(&self, first: usize, last: usize) -> Option<(u128, u128)> {
        let lo = (first as u128).checked_mul(self.width)?;
        if lo > self.last_offset || first > last {
            return None;
        }
        let hi = (last as u128)
            .saturating_mul(self.width)
            .saturating_add(self.width - 1)
            .min(self.last_offset);
        Some((
            self.start.wrapping_add(lo),
            self.start.wrapping_add(hi).wrapping_add(1),
        ))
    }
}

/// Whether a cell takes part in a tree: deletions older than `purge_before_ms` are left out,
/// because replicas purge them on their own schedules and would otherwise differ forever.
pub fn counts(cell: &Cell, purge_before_ms: u64) -> bool {
    let deleted_at = match cell.expires_at_ms {
        Some(e) => Some(e),
        None if cell.is_tombstone() => Some(hlc_physical_ms(cell.timestamp)),
        None => None,
    };
    deleted_at.is_none_or(|d| d >= purge_before_ms)
}

/// The hash one cell adds to its leaf.
pub fn cell_hash(engine_key: &[u8], cell: &Cell) -> u64 {
    let mut h = Xxh3::new();
    h.update(&(engine_key.len() as u32).to_le_bytes());
    h.update(engine_key);
    let mut buf = Vec::with_capacity(cell.encoded_len());
    cell.encode_into(&mut buf);
    h.update(&buf);
    h.digest()
}

fn parent(left: u64, right: u64) -> u64 {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&left.to_le_bytes());
    b[8..].copy_from_slice(&right.to_le_bytes());
    xxh3_64(&b)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleTree {
    shape: Shape,
    leaves: Vec<u64>,
}

impl MerkleTree {
    pub fn new(shape: Shape) -> MerkleTree {
        MerkleTree {
            leaves: vec![0; shape.leaf_count()],
            shape,
        }
    }

    /// A tree from leaves another replica sent (see [`encode_leaves`]).
    pub fn from_leaves(shape: Shape, leaves: Vec<u64>) -> Result<MerkleTree, MerkleError> {
        if leaves.len() != shape.leaf_count() {
            return Err(MerkleError::LeafBytes {
                got: leaves.len() * 8,
                expected: shape.leaf_count() * 8,
            });
        }
        Ok(MerkleTree { shape, leaves })
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Adds a cell keyed by its engine key (token first); cells outside the range or with a
    /// malformed key are ignored, they belong to no leaf.
    pub fn insert(&mut self, engine_key: &[u8], cell: &Cell) {
        let Some((token, _)) = storage_key::decode(engine_key) else {
            return;
        };
        if let Some(i) = self.shape.leaf_of(token) {
            self.leaves[i] = self.leaves[i].wrapping_add(cell_hash(engine_key, cell));
        }
    }

    pub fn leaves(&self) -> &[u64] {
        &self.leaves
    }

    /// The hashes `level` steps below the root (0 is the root, `depth` the leaves).
    pub fn level(&self, level: u8) -> Vec<u64> {
        let mut nodes = self.leaves.clone();
        for _ in level.min(self.shape.depth)..self.shape.depth {
            nodes = nodes.chunks(2).map(|p| parent(p[0], p[1])).collect();
        }
        nodes
    }

    pub fn root(&self) -> u64 {
        self.level(0)[0]
    }

    /// Runs of consecutive leaves where `differs(i)` holds, as inclusive `(first, last)`.
    pub fn runs(&self, differs: impl Fn(usize) -> bool) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        for i in (0..self.leaves.len()).filter(|&i| differs(i)) {
            match out.last_mut() {
                Some(run) if run.1 + 1 == i => run.1 = i,
                _ => out.push((i, i)),
            }
        }
        out
    }

    /// The token ranges `(start, end]` where this tree and `other` differ, adjacent leaves
    /// merged.
    pub fn diff(&self, other: &MerkleTree) -> Result<Vec<(u128, u128)>, MerkleError> {
        if self.shape != other.shape {
            return Err(MerkleError::Shape);
        }
        Ok(self
            .runs(|i| self.leaves[i] != other.leaves[i])
            .into_iter()
            .filter_map(|(a, b)| self.shape.span(a, b))
            .collect())
    }
}

/// The wire form of leaf hashes: 8 bytes little-endian per leaf, in leaf order, and the
/// xxh3-64 of those bytes.
pub fn encode_leaves(leaves: &[u64]) -> (Vec<u8>, u64) {
    let bytes: Vec<u8> = leaves.iter().flat_map(|l| l.to_le_bytes()).collect();
    let sum = xxh3_64(&bytes);
    (bytes, sum)
}

/// Decodes [`encode_leaves`]'s output for a tree of `shape`; never panics on bad input.
pub fn decode_leaves(shape: Shape, bytes: &[u8], checksum: u64) -> Result<MerkleTree, MerkleError> {
    let expected = shape.leaf_count() * 8;
    if bytes.len() != expected {
        return Err(MerkleError::LeafBytes {
            got: bytes.len(),
            expected,
        });
    }
    if xxh3_64(bytes) != checksum {
        return Err(MerkleError::Checksum);
    }
    let leaves = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    MerkleTree::from_leaves(shape, leaves)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// (token, user key, timestamp, value or tombstone)
    type Item = (u128, Vec<u8>, u64, Option<Vec<u8>>);

    fn cells() -> impl Strategy<Value = Vec<Item>> {
        proptest::collection::vec(
            (
                any::<u128>(),
                proptest::collection::vec(any::<u8>(), 1..6),
                1u64..1 << 40,
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            ),
            0..60,
        )
    }

    fn cell(ts: u64, v: &Option<Vec<u8>>) -> Cell {
        match v {
            Some(v) => Cell::value(ts, v.clone()),
            None => Cell::tombstone(ts),
        }
    }

    fn build(shape: Shape, items: &[Item], order: &[usize]) -> MerkleTree {
        let mut t = MerkleTree::new(shape);
        for &i in order {
            let (tok, k, ts, v) = &items[i];
            t.insert(&storage_key::encode(*tok, k), &cell(*ts, v));
        }
        t
    }

    proptest! {
        #[test]
        fn prop_equal_data_gives_equal_roots(start in any::<u128>(), end in any::<u128>(),
                                             depth in 0u8..8, items in cells(),
                                             seed in any::<u64>()) {
            let shape = Shape::new(start, end, depth).unwrap();
            let forward: Vec<usize> = (0..items.len()).collect();
            let mut shuffled = forward.clone();
            // Any permutation: the leaf sum does not depend on insertion order.
            let n = shuffled.len();
            for i in 0..n {
                let j = (seed.wrapping_mul(i as u64 + 7) as usize) % n;
                shuffled.swap(i, j);
            }
            let a = build(shape, &items, &forward);
            let b = build(shape, &items, &shuffled);
            prop_assert_eq!(a.root(), b.root());
            prop_assert!(a.diff(&b).unwrap().is_empty());
        }

        #[test]
        fn prop_one_changed_cell_differs_in_exactly_its_leaf(
            start in any::<u128>(), len in 1u128.., depth in 0u8..10, items in cells(),
            pick in any::<prop::sample::Index>(), new_ts in 1u64..1 << 40) {
            prop_assume!(!items.is_empty());
            let end = start.wrapping_add(len);
            let shape = Shape::new(start, end, depth).unwrap();
            // Keep only distinct cells inside the range: a key appears once per replica.
            let mut items: Vec<_> = items.into_iter()
                .map(|(t, k, ts, v)| (start.wrapping_add(1).wrapping_add(t % len), k, ts, v))
                .collect();
            items.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            items.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
            let all: Vec<usize> = (0..items.len()).collect();
            let a = build(shape, &items, &all);
            let i = pick.index(items.len());
            prop_assume!(items[i].2 != new_ts);
            items[i].2 = new_ts;
            let b = build(shape, &items, &all);
            let leaf = shape.leaf_of(items[i].0).unwrap();
            let differing: Vec<usize> = (0..shape.leaf_count())
                .filter(|&l| a.leaves()[l] != b.leaves()[l]).collect();
            prop_assert_eq!(differing, vec![leaf]);
            prop_assert_ne!(a.root(), b.root());
            let diff = a.diff(&b).unwrap();
            prop_assert_eq!(diff.len(), 1);
            let (lo, hi) = diff[0];
            let r = topology::TokenRange::new(topology::Token(lo), topology::Token(hi));
            prop_assert!(r.contains(topology::Token(items[i].0)));
        }

        #[test]
        fn prop_leaves_tile_the_range(start in any::<u128>(), len in 0u128.., depth in 0u8..12,
                                      probe in any::<u128>()) {
            let shape = Shape::new(start, start.wrapping_add(len), depth).unwrap();
            let whole = topology::TokenRange::new(topology::Token(start),
                                                  topology::Token(start.wrapping_add(len)));
            let token = probe;
            match shape.leaf_of(token) {
                None => prop_assert!(!whole.contains(topology::Token(token))),
                Some(i) => {
                    prop_assert!(whole.contains(topology::Token(token)));
                    let (lo, hi) = shape.span(i, i).unwrap();
                    let leaf = topology::TokenRange::new(topology::Token(lo), topology::Token(hi));
                    prop_assert!(leaf.contains(topology::Token(token)));
                }
            }
        }

        #[test]
        fn prop_leaf_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                                           sum in any::<u64>()) {
            let shape = Shape::new(0, 100, 2).unwrap();
            let _ = decode_leaves(shape, &bytes, sum);
        }
    }

    #[test]
    fn leaves_round_trip_and_damage_is_refused() {
        let shape = Shape::new(5, 5, 3).unwrap();
        let mut t = MerkleTree::new(shape);
        t.insert(&storage_key::encode(77, b"k"), &Cell::value(9, "v"));
        let (bytes, sum) = encode_leaves(t.leaves());
        assert_eq!(decode_leaves(shape, &bytes, sum).unwrap(), t);
        let mut bad = bytes.clone();
        bad[3] ^= 1;
        assert_eq!(decode_leaves(shape, &bad, sum), Err(MerkleError::Checksum));
        assert!(decode_leaves(shape, &bytes[1..], sum).is_err());
        assert_eq!(Shape::new(0, 1, MAX_DEPTH + 1), Err(MerkleError::Depth(21)));
    }

    #[test]
    fn the_whole_ring_splits_into_equal_leaves() {
        let shape = Shape::new(u128::MAX, u128::MAX, 1).unwrap();
        assert_eq!(shape.span(0, 0), Some((u128::MAX, (1u128 << 127) - 1)));
        assert_eq!(shape.span(1, 1), Some(((1u128 << 127) - 1, u128::MAX)));
        assert_eq!(shape.leaf_of(0), Some(0));
        assert_eq!(shape.leaf_of(u128::MAX), Some(1));
    }

    #[test]
    fn a_small_range_leaves_later_leaves_empty() {
        let shape = Shape::new(10, 13, 3).unwrap();
        assert_eq!(shape.span(0, 0), Some((10, 11)));
        assert_eq!(shape.span(2, 7), Some((12, 13)));
        assert_eq!(shape.span(3, 7), None);
        assert_eq!(shape.leaf_of(10), None);
        assert_eq!(shape.leaf_of(13), Some(2));
    }

    #[test]
    fn old_deletions_do_not_count() {
        let old = Cell::tombstone(1000 << 16);
        assert!(!counts(&old, 2000));
        assert!(counts(&old, 1000));
        assert!(counts(&Cell::value(1 << 16, "v"), u64::MAX));
        assert!(!counts(&Cell::value(1 << 16, "v").with_expiry(5), 6));
    }
}
