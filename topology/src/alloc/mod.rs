//! Choosing a new node's tokens.

mod balanced;

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::TopologyError;
use crate::state::{NodeState, RingState};
use crate::token::{advance, span_share, Token};
use crate::walk::DcRing;

/// How to pick a new node's tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Allocator {
    /// Uniformly random tokens: simple, but ownership varies by several percent even with
    /// 256 vnodes, and by far more with few.
    Random,
    /// Tokens evenly spaced around the ring. Perfect when a whole cluster is laid out at
    /// once ([`crate::layout`]); a node added later starts in the DC's largest gap.
    Even,
    /// Tokens that minimise the ownership imbalance of the node's DC for its replication
    /// factor, rack-aware (Cassandra's allocate_tokens_for_local_replication_factor).
    #[default]
    Balanced,
}

impl fmt::Display for Allocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Allocator::Random => "random",
            Allocator::Even => "even",
            Allocator::Balanced => "balanced",
        })
    }
}

/// Why a string names no allocator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown allocator {0:?}: expected random, even or balanced")]
pub struct ParseAllocatorError(String);

impl FromStr for Allocator {
    type Err = ParseAllocatorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "random" => Ok(Allocator::Random),
            "even" => Ok(Allocator::Even),
            "balanced" => Ok(Allocator::Balanced),
            other => Err(ParseAllocatorError(other.to_owned())),
        }
    }
}

/// Where a node that needs tokens will live, and how many it wants.
#[derive(Clone, Copy, Debug)]
pub struct NewNode<'a> {
    pub id: &'a str,
    pub dc: &'a str,
    pub rack: &'a str,
    pub vnodes: usize,
}

/// Chooses tokens for a node about to join `state`. `rf` is the replication factor the
/// balanced allocator optimises the node's DC for. Tokens of every node that has not left
/// count, so concurrent joiners never collide.
pub fn allocate_tokens<R: Rng + ?Sized>(
    state: &RingState,
    node: &NewNode<'_>,
    rf: usize,
    allocator: Allocator,
    rng: &mut R,
) -> Result<Vec<Token>, TopologyError> {
    if node.vnodes == 0 {
        return Err(TopologyError::NoVnodes {
            node: node.id.to_owned(),
        });
    }
    let mut taken: HashSet<u128> = state
        .nodes
        .iter()
        .filter(|n| n.state != NodeState::Left)
        .flat_map(|n| n.tokens.iter().map(|t| t.0))
        .collect();
    let local = LocalDc::new(state, node);
    let tokens = match allocator {
        Allocator::Random => random(node.vnodes, &mut taken, rng),
        Allocator::Even => {
            let offset = largest_gap_middle(&local.ring).unwrap_or_else(|| rng.gen());
            spaced(offset, node.vnodes, &mut taken)
        }
        Allocator::Balanced => balanced::allocate(local, rf.max(1), node.vnodes, &mut taken, rng),
    };
    Ok(tokens.into_iter().map(Token).collect())
}

/// The new node's DC as the allocators see it: nodes that have not left, with the new node
/// numbered last and holding no token yet.
pub(crate) struct LocalDc {
    pub ring: DcRing,
    /// Vnode count of each local node, the new one's included.
    pub weights: Vec<f64>,
    pub new_node: u32,
}

impl LocalDc {
    fn new(state: &RingState, node: &NewNode<'_>) -> LocalDc {
        let members: Vec<_> = state
            .nodes
            .iter()
            .filter(|n| n.dc == node.dc && n.state != NodeState::Left && !n.tokens.is_empty())
            .collect();
        let racks: Vec<&str> = members
            .iter()
            .map(|n| n.rack.as_str())
            .chain([node.rack])
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let rack_of = |r: &str| racks.binary_search(&r).expect("rack listed") as u16;
        let mut held: Vec<(u128, u32)> = members
            .iter()
            .enumerate()
            .flat_map(|(l, n)| n.tokens.iter().map(move |t| (t.0, l as u32)))
            .collect();
        held.sort_unstable();
        let (tokens, owners) = held.into_iter().unzip();
        let mut node_racks: Vec<u16> = members.iter().map(|n| rack_of(&n.rack)).collect();
        node_racks.push(rack_of(node.rack));
        let mut weights: Vec<f64> = members.iter().map(|n| n.tokens.len() as f64).collect();
        weights.push(node.vnodes as f64);
        LocalDc {
            ring: DcRing {
                tokens,
                owners,
                racks: node_racks,
                rack_count: racks.len(),
            },
            weights,
            new_node: members.len() as u32,
        }
    }
}

fn random<R: Rng + ?Sized>(count: usize, taken: &mut HashSet<u128>, rng: &mut R) -> Vec<u128> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let t = rng.gen::<u128>();
        if taken.insert(t) {
            out.push(t);
        }
    }
    out
}

/// `count` tokens a `1/count` of the ring apart, starting at `offset`.
pub(crate) fn spaced(offset: u128, count: usize, taken: &mut HashSet<u128>) -> Vec<u128> {
    (0..count)
        .map(|i| claim(taken, advance(offset, i as f64 / count as f64)))
        .collect()
}

/// The middle of the widest range of a DC's ring, if it has tokens.
pub(crate) fn largest_gap_middle(ring: &DcRing) -> Option<u128> {
    (0..ring.tokens.len())
        .map(|i| (span_share(ring.range_start(i), ring.tokens[i]), i))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(share, i)| advance(ring.range_start(i), share / 2.0))
}

/// The first free token at or after `t`.
pub(crate) fn claim(taken: &mut HashSet<u128>, mut t: u128) -> u128 {
    while !taken.insert(t) {
        t = t.wrapping_add(1);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn new_node(vnodes: usize) -> NewNode<'static> {
        NewNode {
            id: "n1",
            dc: "dc1",
            rack: "r1",
            vnodes,
        }
    }

    #[test]
    fn allocator_names_parse_and_print_back() {
        for a in [Allocator::Random, Allocator::Even, Allocator::Balanced] {
            assert_eq!(a.to_string().parse::<Allocator>().unwrap(), a);
        }
        let err = "fair".parse::<Allocator>().unwrap_err();
        assert!(err.to_string().contains("fair"));
    }

    #[test]
    fn a_node_without_vnodes_is_rejected() {
        let err = allocate_tokens(
            &RingState::default(),
            &new_node(0),
            3,
            Allocator::Random,
            &mut StdRng::seed_from_u64(1),
        )
        .unwrap_err();
        assert_eq!(err, TopologyError::NoVnodes { node: "n1".into() });
    }

    #[test]
    fn even_tokens_on_an_empty_ring_are_a_fixed_step_apart() {
        let tokens = allocate_tokens(
            &RingState::default(),
            &new_node(4),
            3,
            Allocator::Even,
            &mut StdRng::seed_from_u64(1),
        )
        .unwrap();
        let mut sorted: Vec<u128> = tokens.iter().map(|t| t.0).collect();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            assert_eq!(w[1] - w[0], 1u128 << 126);
        }
    }

    #[test]
    fn claim_skips_taken_tokens() {
        let mut taken: HashSet<u128> = [5, 6].into();
        assert_eq!(claim(&mut taken, 5), 7);
        assert!(taken.contains(&7));
    }
}
