//! Effective ownership, imbalance, and what the vnode count costs in availability.

use crate::ring::{NodeIdx, Placement, Segment};

/// A node's effective ownership: the share of the ring it holds a replica of (what
/// `nodetool status` shows as "Owns (effective)"). A DC's shares add up to its RF.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NodeOwnership {
    pub node: NodeIdx,
    pub share: f64,
}

/// Ownership within one DC for one keyspace.
#[derive(Clone, Debug, PartialEq)]
pub struct DcOwnership {
    pub dc: String,
    pub rf: usize,
    pub nodes: Vec<NodeOwnership>,
    /// Max over min of ownership per token held, so that a node given more vnodes on
    /// purpose does not count as imbalance; with equal vnode counts this is max/min
    /// effective ownership. 1.0 is perfect; infinite if a node owns nothing.
    pub imbalance: f64,
}

/// What two failed nodes of a DC cost: ranges whose replicas in the DC fall below a
/// QUORUM of the replication factor. More vnodes spread each node's ranges over more
/// partners, so more pairs share a range (why Cassandra lowered its default to 16).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuorumLoss {
    /// Share of the DC's node pairs whose joint failure loses QUORUM on some range.
    pub pairs: f64,
    /// Share of the ring that loses QUORUM, averaged over all pairs.
    pub mean_share: f64,
    /// Share of the ring that loses QUORUM for the worst pair.
    pub max_share: f64,
}

impl Placement<'_> {
    /// Effective ownership of every owning node, DC by DC.
    pub fn ownership(&self) -> Vec<DcOwnership> {
        self.segments()
            .iter()
            .map(|seg| self.dc_ownership(seg))
            .collect()
    }

    fn dc_ownership(&self, seg: &Segment) -> DcOwnership {
        let ring = self.ring();
        let dc = &ring.dcs[seg.dc];
        let shares = self.local_shares(seg, |_, _| ());
        let nodes: Vec<NodeOwnership> = dc
            .owners
            .iter()
            .zip(&shares)
            .map(|(&node, &share)| NodeOwnership { node, share })
            .collect();
        let per_token = nodes
            .iter()
            .map(|o| o.share / ring.node(o.node).tokens.len() as f64);
        let (min, max) = per_token.fold((f64::INFINITY, 0.0f64), |(lo, hi), s| {
            (lo.min(s), hi.max(s))
        });
        let imbalance = if nodes.is_empty() { 1.0 } else { max / min };
        DcOwnership {
            dc: dc.name.clone(),
            rf: seg.rf,
            nodes,
            imbalance,
        }
    }

    /// Each DC owner's share, and every range's local replica numbers passed to `each`.
    fn local_shares(&self, seg: &Segment, mut each: impl FnMut(&[usize], f64)) -> Vec<f64> {
        let ring = self.ring();
        let owners = &ring.dcs[seg.dc].owners;
        let mut shares = vec![0.0; owners.len()];
        let mut local = Vec::with_capacity(seg.len);
        for i in 0..ring.tokens().len() {
            let share = ring.range(i).share();
            let row = self.replicas_of_range(i).indices();
            local.clear();
            local.extend(
                row[seg.offset..seg.offset + seg.len]
                    .iter()
                    .map(|n| owners.binary_search(n).expect("replica owns in its DC")),
            );
            for &l in &local {
                shares[l] += share;
            }
            each(&local, share);
        }
        shares
    }

    /// The cost of losing any two nodes of a DC; `None` if the keyspace keeps no replica
    /// there or the DC has fewer than two nodes.
    pub fn quorum_loss(&self, dc: &str) -> Option<QuorumLoss> {
        let ring = self.ring();
        let seg = self.segments().iter().find(|s| ring.dcs[s.dc].name == dc)?;
        let n = ring.dcs[seg.dc].owners.len();
        if n < 2 {
            return None;
        }
        let mut together = vec![0.0; n * n];
        let shares = self.local_shares(seg, |local, share| {
            for (i, &a) in local.iter().enumerate() {
                for &b in &local[i + 1..] {
                    together[a.min(b) * n + a.max(b)] += share;
                }
            }
        });
        // A range survives with `len - failed` live replicas; QUORUM needs rf/2 + 1.
        let quorum = seg.rf / 2 + 1;
        let fatal = (seg.len + 1).saturating_sub(quorum);
        let pair_loss = |a: usize, b: usize| match fatal {
            0 => 1.0,
            1 => shares[a] + shares[b] - together[a * n + b],
            2 => together[a * n + b],
            _ => 0.0,
        };
        let (mut hit, mut sum, mut max) = (0usize, 0.0, 0.0f64);
        for a in 0..n {
            for b in a + 1..n {
                let loss = pair_loss(a, b);
                hit += usize::from(loss > 0.0);
                sum += loss;
                max = max.max(loss);
            }
        }
        let pairs = (n * (n - 1) / 2) as f64;
        Some(QuorumLoss {
            pairs: hit as f64 / pairs,
            mean_share: sum / pairs,
            max_share: max,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::layout::{layout, ClusterSpec, DcSpec};
    use crate::{Allocator, Ring};
    use rand::{rngs::StdRng, SeedableRng};

    fn ring(nodes: usize, racks: usize, vnodes: usize, rf: usize, allocator: Allocator) -> Ring {
        let spec = ClusterSpec {
            dcs: vec![DcSpec::new("dc1", racks, nodes)],
            vnodes,
            keyspace: "ks".into(),
            replication: [("dc1".to_owned(), rf)].into(),
        };
        let state = layout(&spec, allocator, &mut StdRng::seed_from_u64(7)).unwrap();
        Ring::new(state).unwrap()
    }

    #[test]
    fn shares_of_a_dc_add_up_to_its_replication_factor() {
        let ring = ring(7, 2, 8, 3, Allocator::Random);
        let own = ring.placement("ks").unwrap().ownership();
        let total: f64 = own[0].nodes.iter().map(|o| o.share).sum();
        assert!((total - 3.0).abs() < 1e-9, "{total}");
    }

    #[test]
    fn evenly_spaced_tokens_on_equal_racks_are_perfectly_balanced() {
        let ring = ring(6, 3, 4, 3, Allocator::Even);
        let own = &ring.placement("ks").unwrap().ownership()[0];
        assert!((own.imbalance - 1.0).abs() < 1e-9, "{}", own.imbalance);
        assert!((own.nodes[0].share - 0.5).abs() < 1e-9);
    }

    #[test]
    fn one_vnode_per_node_spares_pairs_that_share_no_range() {
        // 8 nodes, 1 rack, 1 evenly spaced token each, RF 3: node i replicates ranges i, i-1,
        // i-2, so only nodes at most two apart share a range: 16 of the 28 pairs.
        let loss = ring(8, 1, 1, 3, Allocator::Even)
            .placement("ks")
            .unwrap()
            .quorum_loss("dc1")
            .unwrap();
        assert!((loss.pairs - 16.0 / 28.0).abs() < 1e-9, "{loss:?}");
        // Neighbours share two ranges (a quarter of the ring), nodes two apart one.
        assert!((loss.max_share - 0.25).abs() < 1e-9, "{loss:?}");
    }

    #[test]
    fn many_vnodes_make_every_cross_rack_pair_fatal() {
        let loss = ring(9, 3, 64, 3, Allocator::Random)
            .placement("ks")
            .unwrap()
            .quorum_loss("dc1")
            .unwrap();
        // Nodes on one rack never share a range: 9 of the 36 pairs.
        assert!((loss.pairs - 27.0 / 36.0).abs() < 1e-9, "{loss:?}");
    }

    #[test]
    fn replication_factor_five_survives_any_two_failures() {
        let loss = ring(6, 1, 8, 5, Allocator::Random)
            .placement("ks")
            .unwrap()
            .quorum_loss("dc1")
            .unwrap();
        assert_eq!(loss.pairs, 0.0);
        assert_eq!(loss.max_share, 0.0);
    }
}
