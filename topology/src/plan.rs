//! Change plans: which ranges change hands between two versions of the ring, where each
//! is streamed from and to, and so which ranges a node must take writes for meanwhile.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::change::Change;
use crate::error::TopologyError;
use crate::ring::{Placement, Ring};
use crate::state::{NodeId, NodeState};
use crate::token::{Token, TokenRange};

/// One copy of a range to stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stream {
    /// A replica that holds the range before the change; `None` when no live one does
    /// (the only replica died), which means the data is lost.
    pub source: Option<NodeId>,
    pub target: NodeId,
}

/// A range whose replicas change: the new replicas stream it in, the old ones drop it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RangeTransfer {
    pub range: TokenRange,
    pub streams: Vec<Stream>,
    /// Replicas that hold the range before the change and not after.
    pub released: Vec<NodeId>,
}

/// What a change does to one keyspace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyspacePlan {
    /// In ring order; only the ranges that change, and only the replicas that change.
    pub transfers: Vec<RangeTransfer>,
    /// Per DC, the share of the DC's data (all its replicas) that is streamed.
    pub moved_fraction: BTreeMap<String, f64>,
}

impl KeyspacePlan {
    /// The ranges each new replica must take writes for while the change is under way
    /// (besides the old replicas, which keep taking them until it is done).
    pub fn pending_ranges(&self) -> BTreeMap<NodeId, Vec<TokenRange>> {
        let mut pending: BTreeMap<NodeId, Vec<TokenRange>> = BTreeMap::new();
        for t in &self.transfers {
            for s in &t.streams {
                pending.entry(s.target.clone()).or_default().push(t.range);
            }
        }
        pending
    }
}

/// The ring after a change and, per keyspace, what must move.
pub struct ChangePlan {
    after: Ring,
    keyspaces: BTreeMap<String, KeyspacePlan>,
}

impl ChangePlan {
    /// Plans `change` on `before`. A removed or replaced node is dead: it streams nothing.
    pub fn new(before: &Ring, change: &Change) -> Result<ChangePlan, TopologyError> {
        let after = Ring::new(before.apply(change)?)?;
        let dead: Vec<NodeId> = change.dead_node().into_iter().cloned().collect();
        ChangePlan::between(before, after, &dead)
    }

    /// Plans the moves under way in `ring`: JOINING nodes becoming NORMAL and LEAVING
    /// nodes leaving. Its pending ranges are what the joiners must already take writes for.
    pub fn settle(ring: &Ring) -> Result<ChangePlan, TopologyError> {
        let mut state = ring.state().clone();
        state.epoch += 1;
        for node in &mut state.nodes {
            node.state = match node.state {
                NodeState::Joining => NodeState::Normal,
                NodeState::Leaving => NodeState::Left,
                other => other,
            };
        }
        ChangePlan::between(ring, Ring::new(state)?, &[])
    }

    /// Plans the move from `before` to `after`, streaming from no node in `dead`.
    pub fn between(
        before: &Ring,
        after: Ring,
        dead: &[NodeId],
    ) -> Result<ChangePlan, TopologyError> {
        let mut keyspaces = BTreeMap::new();
        for name in after.keyspaces() {
            let plan = plan_keyspace(&before.placement(name)?, &after.placement(name)?, dead);
            keyspaces.insert(name.to_owned(), plan);
        }
        Ok(ChangePlan { after, keyspaces })
    }

    pub fn after(&self) -> &Ring {
        &self.after
    }

    pub fn into_after(self) -> Ring {
        self.after
    }

    pub fn keyspace(&self, name: &str) -> Option<&KeyspacePlan> {
        self.keyspaces.get(name)
    }

    pub fn keyspaces(&self) -> impl Iterator<Item = (&str, &KeyspacePlan)> {
        self.keyspaces.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// Compares both placements on every range between consecutive tokens of either ring, so
/// that each compared range has one replica set before and one after.
fn plan_keyspace(before: &Placement<'_>, after: &Placement<'_>, dead: &[NodeId]) -> KeyspacePlan {
    let mut bounds: Vec<Token> = before.ring().tokens().to_vec();
    bounds.extend_from_slice(after.ring().tokens());
    bounds.sort_unstable();
    bounds.dedup();
    let dcs: Vec<&str> = after.replication().map(|(dc, _)| dc).collect();
    let mut moved: BTreeMap<String, f64> = dcs.iter().map(|&dc| (dc.to_owned(), 0.0)).collect();
    let mut transfers: Vec<RangeTransfer> = Vec::new();
    for (i, &end) in bounds.iter().enumerate() {
        let range = TokenRange::new(bounds[(i + bounds.len() - 1) % bounds.len()], end);
        let mut change = RangeTransfer {
            range,
            streams: Vec::new(),
            released: Vec::new(),
        };
        for dc in &dcs {
            let copies = diff_dc(before, after, end, dc, dead, &mut change);
            *moved.get_mut(*dc).expect("listed") += range.share() * copies;
        }
        if change.streams.is_empty() && change.released.is_empty() {
            continue;
        }
        match transfers.last_mut() {
            Some(last)
                if last.range.end == range.start
                    && last.streams == change.streams
                    && last.released == change.released =>
            {
                last.range.end = range.end;
            }
            _ => transfers.push(change),
        }
    }
    KeyspacePlan {
        transfers,
        moved_fraction: moved,
    }
}

/// Adds one DC's changes for the range ending at `end` to `change`; returns the share of
/// the DC's copies of the range that are streamed.
fn diff_dc(
    before: &Placement<'_>,
    after: &Placement<'_>,
    end: Token,
    dc: &str,
    dead: &[NodeId],
    change: &mut RangeTransfer,
) -> f64 {
    let old_set = before.replicas(end);
    let old: Vec<&NodeId> = ids(before, old_set.in_dc(dc));
    let new: Vec<&NodeId> = ids(after, after.replicas(end).in_dc(dc));
    let alive = |n: &&NodeId| !dead.contains(n);
    let released: Vec<&NodeId> = old.iter().copied().filter(|n| !new.contains(n)).collect();
    let kept: Vec<&NodeId> = old.iter().copied().filter(|n| new.contains(n)).collect();
    let elsewhere: Vec<&NodeId> = ids(before, old_set.indices());
    let mut givers = released.iter().copied().filter(alive);
    let mut targets = 0;
    for target in new.iter().copied().filter(|n| !old.contains(n)) {
        // Prefer the replica that gives the range up, as Cassandra does for consistent
        // range movement; then one that keeps it; then one in another DC.
        let source = givers
            .next()
            .or_else(|| kept.iter().copied().find(alive))
            .or_else(|| elsewhere.iter().copied().find(alive));
        change.streams.push(Stream {
            source: source.cloned(),
            target: target.clone(),
        });
        targets += 1;
    }
    change.released.extend(released.into_iter().cloned());
    let copies = old.len().max(new.len());
    if copies == 0 {
        0.0
    } else {
        f64::from(targets) / copies as f64
    }
}

fn ids<'a>(placement: &Placement<'a>, nodes: &[crate::NodeIdx]) -> Vec<&'a NodeId> {
    let ring = placement.ring();
    nodes.iter().map(|&n| &ring.node(n).id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Keyspace, Node, RingState};

    fn node(id: &str, tokens: &[u128]) -> Node {
        Node {
            id: id.into(),
            address: format!("{id}:7000"),
            dc: "east".into(),
            rack: "r1".into(),
            state: NodeState::Normal,
            tokens: tokens.iter().map(|&t| Token(t)).collect(),
        }
    }

    /// Four nodes on one rack, one token each, at 100, 200, 300, 400.
    fn ring(rf: usize) -> Ring {
        Ring::new(RingState {
            epoch: 1,
            keyspaces: [("ks".to_owned(), Keyspace::new([("east", rf)]))].into(),
            nodes: vec![
                node("a", &[100]),
                node("b", &[200]),
                node("c", &[300]),
                node("d", &[400]),
            ],
        })
        .unwrap()
    }

    fn plan(ring: &Ring, change: Change) -> KeyspacePlan {
        ChangePlan::new(ring, &change)
            .unwrap()
            .keyspace("ks")
            .unwrap()
            .clone()
    }

    fn stream(source: &str, target: &str) -> Stream {
        Stream {
            source: Some(source.into()),
            target: target.into(),
        }
    }

    #[test]
    fn a_join_takes_its_range_from_the_replica_that_gives_it_up() {
        let p = plan(
            &ring(2),
            Change::Join {
                node: node("e", &[150]),
            },
        );
        // (100, 150] was on b and c, now on e and b: c hands it to e. (400, 100] was on a
        // and b and is now on a and e: b hands it over.
        assert_eq!(
            p.transfers,
            vec![
                RangeTransfer {
                    range: TokenRange::new(Token(400), Token(100)),
                    streams: vec![stream("b", "e")],
                    released: vec!["b".into()],
                },
                RangeTransfer {
                    range: TokenRange::new(Token(100), Token(150)),
                    streams: vec![stream("c", "e")],
                    released: vec!["c".into()],
                },
            ]
        );
        let pending = p.pending_ranges();
        assert_eq!(pending.keys().collect::<Vec<_>>(), vec![&NodeId::from("e")]);
        assert_eq!(pending[&NodeId::from("e")].len(), 2);
    }

    #[test]
    fn a_decommissioned_node_streams_its_own_ranges_away() {
        let p = plan(&ring(1), Change::Decommission { node: "b".into() });
        assert_eq!(
            p.transfers,
            vec![RangeTransfer {
                range: TokenRange::new(Token(100), Token(200)),
                streams: vec![stream("b", "c")],
                released: vec!["b".into()],
            }]
        );
        assert!((p.moved_fraction["east"] - 100.0 / crate::token::RING_SIZE).abs() < 1e-30);
    }

    #[test]
    fn a_dead_node_is_never_a_source() {
        let p = plan(
            &ring(2),
            Change::Replace {
                dead: "b".into(),
                replacement: node("e", &[]),
            },
        );
        // b held (400, 100] with a and (100, 200] with c: they stream to e, not b.
        let sources: Vec<_> = p
            .transfers
            .iter()
            .flat_map(|t| t.streams.iter().map(|s| s.source.clone().unwrap()))
            .collect();
        assert_eq!(sources, vec![NodeId::from("a"), NodeId::from("c")]);
        assert!(p
            .transfers
            .iter()
            .all(|t| t.streams[0].target.as_str() == "e"));
    }

    #[test]
    fn removing_the_only_replica_leaves_no_source() {
        let p = plan(&ring(1), Change::RemoveNode { node: "b".into() });
        assert_eq!(p.transfers[0].streams[0].source, None);
    }

    #[test]
    fn moving_a_token_streams_only_the_range_between_old_and_new_position() {
        let p = plan(
            &ring(1),
            Change::MoveToken {
                from: Token(200),
                to: Token(250),
            },
        );
        assert_eq!(
            p.transfers,
            vec![RangeTransfer {
                range: TokenRange::new(Token(200), Token(250)),
                streams: vec![stream("c", "b")],
                released: vec!["c".into()],
            }]
        );
    }

    #[test]
    fn settling_a_joining_node_gives_its_pending_ranges() {
        let mut state = ring(1).into_state();
        let mut e = node("e", &[150]);
        e.state = NodeState::Joining;
        state.nodes.push(e);
        let ring = Ring::new(state).unwrap();
        let settle = ChangePlan::settle(&ring).unwrap();
        let pending = settle.keyspace("ks").unwrap().pending_ranges();
        assert_eq!(
            pending[&NodeId::from("e")],
            vec![TokenRange::new(Token(100), Token(150))]
        );
        assert_eq!(settle.after().epoch(), 2);
    }
}
