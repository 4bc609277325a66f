//! The balanced allocator: places a new node's tokens one at a time, each where it most
//! reduces the DC's ownership imbalance for the replication factor.
//!
//! The quality of a DC is a sum of squares: for every other node, how far its effective
//! ownership is from its fair share, relative to that share; for the new node, how far
//! the token's net gain is from its quota (what it still lacks over the tokens it still has
//! to place). The quota, rather than the fair share itself, keeps the first tokens from
//! grabbing too much while the others are far above their share.
//!
//! A candidate is "split range j": put the new token inside it. That changes the replicas
//! of the split range and of the few ranges before it whose walk reaches the new token; the
//! ownership changes are linear in where the token sits inside the range, so the best spot
//! has a closed form. Those changes ("deltas") depend only on the nearby tokens and are
//! cached; candidates wait in a max-heap by improvement, and a popped one is re-scored from
//! its cached deltas and taken if it still beats the next (lazy greedy). A new token
//! invalidates the deltas of the candidates whose walks meet it.

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};

use rand::Rng;

use super::{claim, largest_gap_middle, spaced, LocalDc};
use crate::token::{advance, span_share};
use crate::walk::{DcRing, Rule, Start, Virtual, Walker};

/// Weight of the new node's distance from its quota, against the other nodes' distances
/// from their fair shares (both relative).
const QUOTA_WEIGHT: f64 = 0.0003;
/// A new token lands at least this far (as a share of the range) from the range's ends,
/// so that no vnode is created empty.
const MIN_SPLIT_SHARE: f64 = 1.0 / 32.0;

pub(super) fn allocate<R: Rng + ?Sized>(
    local: LocalDc,
    rf: usize,
    vnodes: usize,
    taken: &mut HashSet<u128>,
    rng: &mut R,
) -> Vec<u128> {
    let ring = &local.ring;
    let x = local.new_node as usize;
    if ring.tokens.is_empty() {
        return spaced(rng.gen(), vnodes, taken);
    }
    // While the DC has no more nodes than replicas, every node holds everything: only
    // spreading the tokens matters, for the nodes that come later. Evenly spaced tokens
    // give them a regular ring to split (random ones leave irregular ranges that later
    // nodes cannot balance with few vnodes), at the price of a repeating pattern in which
    // the same pairs of nodes share ranges (see QuorumLoss).
    if x < rf {
        let offset = largest_gap_middle(ring).expect("ring has tokens");
        return spaced(offset, vnodes, taken);
    }
    let racks_before = ring.racks[..x].iter().collect::<BTreeSet<_>>().len();
    let opens_rack = !ring.racks[..x].contains(&ring.racks[x]);
    let mut balancer = Balancer::new(local, rf, taken);
    // A new rack, while racks are fewer than replicas, changes how every range picks its
    // replicas, which the local evaluation cannot see: place the first token plainly.
    if opens_rack && racks_before < rf {
        let first = largest_gap_middle(&balancer.ring).expect("ring has tokens");
        balancer.insert_plain(first);
    }
    balancer.run(vnodes - balancer.placed.len());
    balancer.placed
}

/// How a node's ownership changes when the new token takes `w` of the range it splits:
/// by `fixed + slope * w`.
#[derive(Clone, Copy, Debug)]
struct Delta {
    node: u32,
    fixed: f64,
    slope: f64,
}

/// What splitting one range does, independent of the current ownership.
#[derive(Clone, Debug, Default)]
struct Split {
    deltas: Vec<Delta>,
    /// Width of the range, as a share of the ring.
    whole: f64,
    /// How many ranges before the split one change replicas.
    reach: usize,
}

struct Entry {
    improvement: f64,
    end: u128,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.improvement
            .total_cmp(&other.improvement)
            .then(self.end.cmp(&other.end))
    }
}

struct Balancer<'a> {
    ring: DcRing,
    rule: Rule,
    x: u32,
    /// Effective ownership per node.
    owned: Vec<f64>,
    /// Fair effective ownership per node.
    fair: Vec<f64>,
    /// Vnodes per node.
    weights: Vec<f64>,
    /// What the next token should add to the new node.
    quota: f64,
    taken: &'a mut HashSet<u128>,
    placed: Vec<u128>,
    /// Splits by the end token of the range they split.
    splits: HashMap<u128, Split>,
    heap: BinaryHeap<Entry>,
    walker: Walker,
    old: Vec<u32>,
    new: Vec<u32>,
}

impl<'a> Balancer<'a> {
    fn new(local: LocalDc, rf: usize, taken: &'a mut HashSet<u128>) -> Balancer<'a> {
        let LocalDc {
            ring,
            weights,
            new_node,
        } = local;
        let rule = Rule::new(rf, ring.node_count(), ring.rack_count);
        let mut b = Balancer {
            owned: vec![0.0; weights.len()],
            fair: fair_shares(&ring, rule, &weights),
            weights,
            ring,
            rule,
            x: new_node,
            quota: 0.0,
            taken,
            placed: Vec::new(),
            splits: HashMap::new(),
            heap: BinaryHeap::new(),
            walker: Walker::default(),
            old: Vec::new(),
            new: Vec::new(),
        };
        b.recount();
        b
    }

    fn recount(&mut self) {
        self.owned.iter_mut().for_each(|o| *o = 0.0);
        for k in 0..self.ring.tokens.len() {
            let share = self.width(k);
            self.walker
                .select(&self.ring, self.rule, Start::Token(k), None, &mut self.old);
            for &n in &self.old {
                self.owned[n as usize] += share;
            }
        }
    }

    fn width(&self, k: usize) -> f64 {
        span_share(self.ring.range_start(k), self.ring.tokens[k])
    }

    /// Inserts a token without optimising, then recounts everything.
    fn insert_plain(&mut self, token: u128) {
        let token = claim(self.taken, token);
        self.insert(token);
        self.recount();
    }

    fn insert(&mut self, token: u128) -> usize {
        let pos = self.ring.tokens.partition_point(|&t| t < token);
        self.ring.tokens.insert(pos, token);
        self.ring.owners.insert(pos, self.x);
        self.placed.push(token);
        pos
    }

    fn run(&mut self, count: usize) {
        self.set_quota(count);
        for j in 0..self.ring.tokens.len() {
            self.push(j);
        }
        for left in (1..=count).rev() {
            self.set_quota(left);
            self.place_best();
        }
    }

    fn set_quota(&mut self, tokens_left: usize) {
        let lacking = self.fair[self.x as usize] - self.owned[self.x as usize];
        self.quota = lacking.max(0.0) / tokens_left as f64;
    }

    /// Re-derives the split of range `j` and queues it.
    fn push(&mut self, j: usize) {
        let end = self.ring.tokens[j];
        let split = self.split(j);
        let (_, improvement) = self.solve(&split);
        self.splits.insert(end, split);
        self.heap.push(Entry { improvement, end });
    }

    fn place_best(&mut self) {
        loop {
            let entry = self.heap.pop().expect("every range has a candidate");
            let split = &self.splits[&entry.end];
            let (share, improvement) = self.solve(split);
            if self
                .heap
                .peek()
                .is_none_or(|top| improvement >= top.improvement)
            {
                self.accept(entry.end, share);
                return;
            }
            self.heap.push(Entry {
                improvement,
                end: entry.end,
            });
        }
    }

    /// Places the new token `share` into the range ending at `end`.
    fn accept(&mut self, end: u128, share: f64) {
        let split = self.splits.remove(&end).expect("split was scored");
        for d in &split.deltas {
            self.owned[d.node as usize] += d.fixed + d.slope * share;
        }
        let j = self.ring.tokens.binary_search(&end).expect("tokens stay");
        let token = claim(self.taken, advance(self.ring.range_start(j), share));
        let pos = self.insert(token);
        let n = self.ring.tokens.len();
        let ahead = self.walker.select(
            &self.ring,
            self.rule,
            Start::Token(pos),
            None,
            &mut self.old,
        );
        // Splits whose walks meet the new token: the ranges whose walk reaches it (and one
        // more, whose walk from its own split point may), and those that the walk from the
        // new token reaches.
        for back in 0..=split.reach + 1 {
            self.push((pos + n - back) % n);
        }
        for ahead in 1..=ahead {
            self.push((pos + ahead) % n);
        }
    }

    /// What splitting range `j` (ending at `ring.tokens[j]`) changes.
    fn split(&mut self, j: usize) -> Split {
        let virt = Virtual {
            before: j,
            node: self.x,
        };
        let whole = self.width(j);
        let mut split = Split {
            deltas: Vec::new(),
            whole,
            reach: 0,
        };
        // Up to the new token a new walk; after it, the walk from the range's end, which
        // may now meet the new token last.
        self.select(Start::Token(j), None, true);
        record(&mut split.deltas, &self.old, -whole, 0.0);
        self.select(Start::Virtual, Some(virt), false);
        record(&mut split.deltas, &self.new, 0.0, 1.0);
        self.select(Start::Token(j), Some(virt), false);
        record(&mut split.deltas, &self.new, whole, -1.0);
        split.reach = self.record_earlier(j, virt, &mut split.deltas);
        split
    }

    fn select(&mut self, start: Start, virt: Option<Virtual>, old: bool) -> usize {
        let out = if old { &mut self.old } else { &mut self.new };
        self.walker.select(&self.ring, self.rule, start, virt, out)
    }

    /// Ranges before `j` whose walk gets past token `j - 1` now meet the new token.
    /// Returns how many there are.
    fn record_earlier(&mut self, j: usize, virt: Virtual, deltas: &mut Vec<Delta>) -> usize {
        let n = self.ring.tokens.len();
        for back in 1..n {
            let k = (j + n - back) % n;
            // A walk that ended within the `back` tokens before `j` is untouched, and so
            // are the walks from earlier ranges, which end no later.
            if self.select(Start::Token(k), None, true) <= back {
                return back - 1;
            }
            let share = self.width(k);
            record(deltas, &self.old, -share, 0.0);
            self.select(Start::Token(k), Some(virt), false);
            record(deltas, &self.new, share, 0.0);
        }
        n - 1
    }

    /// Current value, target and weight of a node in the sum of squares.
    fn term(&self, node: u32) -> (f64, f64, f64) {
        let owned = self.owned[node as usize];
        if node == self.x {
            // Relative to the fair share per vnode, not to the quota, which reaches zero
            // once the node has all it should.
            let per_vnode = self.fair[node as usize] / self.weights[node as usize];
            (
                owned,
                owned + self.quota,
                QUOTA_WEIGHT / (per_vnode * per_vnode),
            )
        } else {
            let fair = self.fair[node as usize];
            (owned, fair, 1.0 / (fair * fair))
        }
    }

    /// Where in the range the new token should sit (as a share of the ring past the
    /// range's start), and how much that improves the sum of squares.
    fn solve(&self, split: &Split) -> (f64, f64) {
        // Each term w * ((v - t)^2 - (v + c + d * s - t)^2) is a quadratic in the share s:
        // sum them as a + b * s - q * s^2.
        let (mut a, mut b, mut q) = (0.0, 0.0, 0.0);
        for d in &split.deltas {
            let (value, target, weight) = self.term(d.node);
            let gap = value - target;
            a -= weight * (2.0 * gap * d.fixed + d.fixed * d.fixed);
            b -= weight * 2.0 * (gap + d.fixed) * d.slope;
            q += weight * d.slope * d.slope;
        }
        let whole = split.whole;
        let share = if q > 0.0 {
            (b / (2.0 * q)).clamp(whole * MIN_SPLIT_SHARE, whole * (1.0 - MIN_SPLIT_SHARE))
        } else {
            whole / 2.0
        };
        (share, a + b * share - q * share * share)
    }
}

/// Adds `fixed + slope * w` to each of `nodes`, merging with what is already recorded.
fn record(deltas: &mut Vec<Delta>, nodes: &[u32], fixed: f64, slope: f64) {
    for &node in nodes {
        match deltas.iter_mut().find(|d| d.node == node) {
            Some(d) => {
                d.fixed += fixed;
                d.slope += slope;
            }
            None => deltas.push(Delta { node, fixed, slope }),
        }
    }
}

/// Each node's fair effective ownership. Racks bound what a node can own: with at least as
/// many racks as replicas a range has at most one replica per rack, with at most as many
/// every rack holds at least one. Each rack gets a share of the replicas proportional to
/// its vnodes within those bounds (water-filling), and each node its vnodes' part of it.
fn fair_shares(ring: &DcRing, rule: Rule, weights: &[f64]) -> Vec<f64> {
    let racks = ring.rack_count;
    let mut rack_weight = vec![0.0; racks];
    let mut rack_nodes = vec![0usize; racks];
    for (n, &w) in weights.iter().enumerate() {
        rack_weight[ring.racks[n] as usize] += w;
        rack_nodes[ring.racks[n] as usize] += 1;
    }
    let floor = if racks <= rule.rf { 1.0 } else { 0.0 };
    let cap = |r: usize| {
        if racks >= rule.rf {
            1.0
        } else {
            rack_nodes[r].min(rule.rf - racks + 1) as f64
        }
    };
    let rack_share = |r: usize, level: f64| (level * rack_weight[r]).clamp(floor, cap(r));
    let total = |level: f64| (0..racks).map(|r| rack_share(r, level)).sum::<f64>();
    let replicas = rule.rf as f64;
    let (mut lo, mut hi) = (0.0, 1.0);
    while total(hi) < replicas {
        hi *= 2.0;
    }
    for _ in 0..64 {
        let mid = (lo + hi) / 2.0;
        if total(mid) < replicas {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    weights
        .iter()
        .enumerate()
        .map(|(n, &w)| {
            let r = ring.racks[n] as usize;
            rack_share(r, hi) * w / rack_weight[r]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{layout, ClusterSpec, DcSpec};
    use crate::{Allocator, Ring};
    use rand::{rngs::StdRng, SeedableRng};

    fn imbalance(racks: usize, nodes: usize, vnodes: usize, rf: usize) -> f64 {
        let spec = ClusterSpec {
            dcs: vec![DcSpec::new("dc1", racks, nodes)],
            vnodes,
            keyspace: "ks".into(),
            replication: [("dc1".to_owned(), rf)].into(),
        };
        let state = layout(&spec, Allocator::Balanced, &mut StdRng::seed_from_u64(3)).unwrap();
        let ring = Ring::new(state).unwrap();
        ring.placement("ks").unwrap().ownership()[0].imbalance
    }

    #[test]
    fn twelve_nodes_of_256_vnodes_on_three_racks_stay_within_five_percent() {
        let imbalance = imbalance(3, 12, 256, 3);
        assert!(imbalance < 1.05, "imbalance {imbalance}");
    }

    #[test]
    fn twelve_nodes_of_256_vnodes_on_one_rack_stay_within_five_percent() {
        let imbalance = imbalance(1, 12, 256, 3);
        assert!(imbalance < 1.05, "imbalance {imbalance}");
    }

    #[test]
    fn fair_shares_follow_racks_when_racks_equal_replicas() {
        // Racks of 2, 1 and 1 nodes: each rack holds one replica of everything.
        let ring = DcRing {
            tokens: vec![1, 2, 3, 4],
            owners: vec![0, 1, 2, 3],
            racks: vec![0, 0, 1, 2],
            rack_count: 3,
        };
        let fair = fair_shares(&ring, Rule::new(3, 4, 3), &[1.0; 4]);
        assert_eq!(fair, vec![0.5, 0.5, 1.0, 1.0]);
    }

    #[test]
    fn fair_shares_cap_racks_when_racks_outnumber_replicas() {
        // RF 2 over racks of 3, 1 and 1 nodes: the big rack may hold at most one replica.
        let ring = DcRing {
            tokens: vec![1, 2, 3, 4, 5],
            owners: vec![0, 1, 2, 3, 4],
            racks: vec![0, 0, 0, 1, 2],
            rack_count: 3,
        };
        let fair = fair_shares(&ring, Rule::new(2, 5, 3), &[1.0; 5]);
        let expected = [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 0.5, 0.5];
        for (f, e) in fair.iter().zip(expected) {
            assert!((f - e).abs() < 1e-9, "{fair:?}");
        }
    }
}
