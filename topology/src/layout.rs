//! Laying out a whole cluster from a short description, for planning and tests.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;

use crate::alloc::{allocate_tokens, Allocator, NewNode};
use crate::error::TopologyError;
use crate::state::{Keyspace, Node, NodeId, NodeState, RingState};
use crate::token::{advance, Token};

/// A DC of `nodes` nodes spread round-robin over `racks` racks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DcSpec {
    pub name: String,
    pub racks: usize,
    pub nodes: usize,
}

impl DcSpec {
    pub fn new(name: &str, racks: usize, nodes: usize) -> DcSpec {
        DcSpec {
            name: name.to_owned(),
            racks,
            nodes,
        }
    }
}

/// A cluster to lay out: its DCs, vnodes per node, and one keyspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    pub dcs: Vec<DcSpec>,
    pub vnodes: usize,
    pub keyspace: String,
    pub replication: BTreeMap<String, usize>,
}

/// The id of the `n`th node (from 1) of a DC in a laid-out cluster.
pub fn node_id(dc: &str, n: usize) -> NodeId {
    NodeId(format!("{dc}-{n}"))
}

/// The name of the `r`th rack (from 1) of a DC in a laid-out cluster.
pub fn rack_name(r: usize) -> String {
    format!("rack{r}")
}

/// Builds the ring of a new cluster: nodes `dc-1`, `dc-2`, ... on racks `rack1`, `rack2`,
/// ... in turn, all NORMAL, at epoch 1. With [`Allocator::Even`] each DC's tokens are
/// interleaved evenly at once; otherwise nodes join one by one through the allocator.
pub fn layout<R: Rng + ?Sized>(
    spec: &ClusterSpec,
    allocator: Allocator,
    rng: &mut R,
) -> Result<RingState, TopologyError> {
    check_spec(spec)?;
    let mut state = RingState {
        epoch: 1,
        keyspaces: [(
            spec.keyspace.clone(),
            Keyspace {
                replication: spec.replication.clone(),
            },
        )]
        .into(),
        nodes: Vec::new(),
    };
    for (d, dc) in spec.dcs.iter().enumerate() {
        for i in 0..dc.nodes {
            let node = new_node(dc, i);
            let tokens = match allocator {
                Allocator::Even => even_tokens(spec, d, i),
                _ => {
                    let rf = spec.replication.get(&dc.name).copied().unwrap_or(1);
                    let request = NewNode {
                        id: node.id.as_str(),
                        dc: &node.dc,
                        rack: &node.rack,
                        vnodes: spec.vnodes,
                    };
                    allocate_tokens(&state, &request, rf, allocator, rng)?
                }
            };
            state.nodes.push(Node { tokens, ..node });
        }
    }
    Ok(state)
}

fn check_spec(spec: &ClusterSpec) -> Result<(), TopologyError> {
    if spec.vnodes == 0 {
        return Err(TopologyError::NoVnodes {
            node: "every node".to_owned(),
        });
    }
    let mut names = BTreeSet::new();
    for dc in &spec.dcs {
        let bad = |reason: String| TopologyError::BadDcSpec {
            dc: dc.name.clone(),
            reason,
        };
        if !names.insert(dc.name.as_str()) {
            return Err(bad("named twice".to_owned()));
        }
        if dc.nodes == 0 || dc.racks == 0 {
            return Err(bad("needs at least one rack and one node".to_owned()));
        }
        if dc.racks > dc.nodes {
            return Err(bad(format!(
                "{} racks cannot all hold one of {} nodes",
                dc.racks, dc.nodes
            )));
        }
    }
    Ok(())
}

fn new_node(dc: &DcSpec, i: usize) -> Node {
    let id = node_id(&dc.name, i + 1);
    Node {
        address: format!("{id}:7000"),
        id,
        dc: dc.name.clone(),
        rack: rack_name(i % dc.racks + 1),
        state: NodeState::Normal,
        tokens: Vec::new(),
    }
}

/// Node `i` of DC `d` takes every `nodes`th of the DC's evenly spaced positions, so
/// consecutive tokens cycle through the nodes and, nodes being dealt to racks in turn,
/// through the racks. DCs are offset by a fraction of a step so that tokens never meet.
fn even_tokens(spec: &ClusterSpec, d: usize, i: usize) -> Vec<Token> {
    let positions = (spec.dcs[d].nodes * spec.vnodes) as f64;
    let offset = d as f64 / spec.dcs.len() as f64;
    (0..spec.vnodes)
        .map(|v| {
            let position = (v * spec.dcs[d].nodes + i) as f64 + offset;
            Token(advance(0, position / positions))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ring;
    use rand::{rngs::StdRng, SeedableRng};

    fn spec(dcs: Vec<DcSpec>) -> ClusterSpec {
        ClusterSpec {
            replication: dcs.iter().map(|d| (d.name.clone(), 3)).collect(),
            dcs,
            vnodes: 8,
            keyspace: "ks".into(),
        }
    }

    #[test]
    fn nodes_are_dealt_to_racks_in_turn() {
        let state = layout(
            &spec(vec![DcSpec::new("east", 2, 3)]),
            Allocator::Random,
            &mut StdRng::seed_from_u64(1),
        )
        .unwrap();
        let racks: Vec<(&str, &str)> = state
            .nodes
            .iter()
            .map(|n| (n.id.as_str(), n.rack.as_str()))
            .collect();
        assert_eq!(
            racks,
            vec![
                ("east-1", "rack1"),
                ("east-2", "rack2"),
                ("east-3", "rack1")
            ]
        );
        assert!(state.nodes.iter().all(|n| n.tokens.len() == 8));
    }

    #[test]
    fn even_layouts_of_several_dcs_never_share_a_token() {
        let state = layout(
            &spec(vec![DcSpec::new("a", 3, 6), DcSpec::new("b", 3, 6)]),
            Allocator::Even,
            &mut StdRng::seed_from_u64(1),
        )
        .unwrap();
        let ring = Ring::new(state).unwrap();
        assert_eq!(ring.tokens().len(), 96);
    }

    #[test]
    fn bad_specs_name_the_dc_and_the_problem() {
        let mut rng = StdRng::seed_from_u64(1);
        let err = layout(
            &spec(vec![DcSpec::new("a", 4, 3)]),
            Allocator::Even,
            &mut rng,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "datacenter a: 4 racks cannot all hold one of 3 nodes"
        );
        let twice = spec(vec![DcSpec::new("a", 1, 1), DcSpec::new("a", 1, 1)]);
        assert!(layout(&twice, Allocator::Even, &mut rng)
            .unwrap_err()
            .to_string()
            .contains("named twice"));
        let none = ClusterSpec {
            vnodes: 0,
            ..spec(vec![DcSpec::new("a", 1, 1)])
        };
        assert!(matches!(
            layout(&none, Allocator::Even, &mut rng),
            Err(TopologyError::NoVnodes { .. })
        ));
    }
}
