//! Properties of placement, allocation and change plans over randomly generated clusters.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use rand::{rngs::StdRng, SeedableRng};
use topology::layout::{layout, ClusterSpec, DcSpec};
use topology::{
    allocate_tokens, Allocator, Change, ChangePlan, NewNode, Node, NodeId, NodeState, Ring,
    RingState, Token,
};

/// A DC as (racks, nodes, rf); racks never outnumber nodes.
fn dc_shape() -> impl Strategy<Value = (usize, usize, usize)> {
    (1usize..=8, 1usize..=4, 1usize..=4)
        .prop_map(|(nodes, racks, rf)| (racks.min(nodes), nodes, rf))
}

fn spec(dcs: &[(usize, usize, usize)], vnodes: usize) -> ClusterSpec {
    let name = |i: usize| format!("dc{i}");
    ClusterSpec {
        dcs: dcs
            .iter()
            .enumerate()
            .map(|(i, &(racks, nodes, _))| DcSpec::new(&name(i), racks, nodes))
            .collect(),
        vnodes,
        keyspace: "ks".into(),
        replication: dcs
            .iter()
            .enumerate()
            .map(|(i, d)| (name(i), d.2))
            .collect(),
    }
}

fn random_ring(dcs: &[(usize, usize, usize)], vnodes: usize, seed: u64) -> Ring {
    let state = layout(
        &spec(dcs, vnodes),
        Allocator::Random,
        &mut StdRng::seed_from_u64(seed),
    )
    .unwrap();
    Ring::new(state).unwrap()
}

/// Cassandra's NetworkTopologyStrategy as it reads, written independently of the crate:
/// walk the DC's tokens clockwise, take a node of each unseen rack, remember the nodes
/// skipped for a seen rack, and once every rack (up to RF) is seen fill from the skipped
/// ones first, then from the rest of the walk.
fn naive_replicas(state: &RingState, dc: &str, rf: usize, token: Token) -> Vec<NodeId> {
    let owners: Vec<&Node> = state
        .nodes
        .iter()
        .filter(|n| n.dc == dc && n.state.owns_ranges())
        .collect();
    let mut ring: Vec<(Token, &Node)> = owners
        .iter()
        .flat_map(|n| n.tokens.iter().map(move |&t| (t, *n)))
        .collect();
    ring.sort_by_key(|(t, _)| *t);
    let racks: BTreeSet<&str> = owners.iter().map(|n| n.rack.as_str()).collect();
    let want_racks = rf.min(racks.len());
    let want = rf.min(owners.len());
    let start = ring.iter().position(|(t, _)| *t >= token).unwrap_or(0);
    let (mut picked, mut skipped, mut seen_racks) = (Vec::new(), Vec::new(), BTreeSet::new());
    for i in 0..ring.len() {
        if picked.len() == want {
            break;
        }
        let node = ring[(start + i) % ring.len()].1;
        if picked.contains(&node.id) || skipped.contains(&node.id) {
            continue;
        }
        if seen_racks.len() < want_racks {
            if seen_racks.insert(node.rack.as_str()) {
                picked.push(node.id.clone());
                if seen_racks.len() == want_racks {
                    while picked.len() < want && !skipped.is_empty() {
                        picked.push(skipped.remove(0));
                    }
                }
            } else {
                skipped.push(node.id.clone());
            }
        } else {
            picked.push(node.id.clone());
        }
    }
    picked
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn prop_every_key_gets_rf_distinct_nodes_per_dc_across_min_rf_racks(
        dcs in prop::collection::vec(dc_shape(), 1..=3),
        vnodes in 1usize..=12,
        seed in any::<u64>(),
        keys in prop::collection::vec(any::<u128>(), 1..40),
    ) {
        let ring = random_ring(&dcs, vnodes, seed);
        let placement = ring.placement("ks").unwrap();
        for key in keys {
            let set = placement.replicas(Token(key));
            for (i, &(racks, nodes, rf)) in dcs.iter().enumerate() {
                let dc = format!("dc{i}");
                let local: Vec<&Node> = set.in_dc(&dc).iter().map(|&n| ring.node(n)).collect();
                let distinct: BTreeSet<&str> = local.iter().map(|n| n.id.as_str()).collect();
                let spanned: BTreeSet<&str> = local.iter().map(|n| n.rack.as_str()).collect();
                prop_assert_eq!(local.len(), rf.min(nodes));
                prop_assert_eq!(distinct.len(), local.len());
                prop_assert!(local.iter().all(|n| n.dc == dc));
                prop_assert_eq!(spanned.len(), rf.min(racks));
                let ids: Vec<NodeId> = local.iter().map(|n| n.id.clone()).collect();
                prop_assert_eq!(ids, naive_replicas(ring.state(), &dc, rf, Token(key)));
            }
            let short = dcs.iter().filter(|d| d.1 < d.2).count();
            prop_assert_eq!(set.shortfalls().len(), short);
        }
    }

    #[test]
    fn prop_ring_state_round_trips_through_json_and_toml(
        dcs in prop::collection::vec(dc_shape(), 1..=2),
        vnodes in 1usize..=8,
        seed in any::<u64>(),
        joining in any::<bool>(),
    ) {
        let mut state = random_ring(&dcs, vnodes, seed).into_state();
        if joining {
            state.nodes[0].state = NodeState::Joining;
        }
        let json = serde_json::to_string(&state).unwrap();
        prop_assert_eq!(&serde_json::from_str::<RingState>(&json).unwrap(), &state);
        let toml_text = toml::to_string(&state).unwrap();
        prop_assert_eq!(&toml::from_str::<RingState>(&toml_text).unwrap(), &state);
    }

    #[test]
    fn prop_a_change_plan_applied_to_the_old_ring_yields_the_new_one(
        dcs in prop::collection::vec(dc_shape(), 1..=2),
        vnodes in 1usize..=8,
        seed in any::<u64>(),
        pick in any::<prop::sample::Index>(),
        kind in 0usize..5,
        keys in prop::collection::vec(any::<u128>(), 1..40),
    ) {
        let before = random_ring(&dcs, vnodes, seed);
        let change = some_change(&before, kind, pick, seed);
        let plan = ChangePlan::new(&before, &change).unwrap();
        let after = plan.after();
        let ks = plan.keyspace("ks").unwrap();
        let (old_p, new_p) = (before.placement("ks").unwrap(), after.placement("ks").unwrap());
        let probes = keys.into_iter().map(Token).chain(before.tokens().iter().copied());
        for token in probes.chain(after.tokens().iter().copied()) {
            let old: BTreeSet<NodeId> = old_p.replicas(token).nodes().map(|n| n.id.clone()).collect();
            let new: BTreeSet<NodeId> = new_p.replicas(token).nodes().map(|n| n.id.clone()).collect();
            let mut applied = old.clone();
            if let Some(t) = ks.transfers.iter().find(|t| t.range.contains(token)) {
                for r in &t.released {
                    prop_assert!(applied.remove(r), "released {} held nothing", r);
                }
                for s in &t.streams {
                    prop_assert!(applied.insert(s.target.clone()), "{} streamed twice", s.target);
                    if let Some(source) = &s.source {
                        prop_assert!(old.contains(source), "source {} had no copy", source);
                        prop_assert!(Some(source) != change.dead_node(), "dead source");
                    }
                }
            }
            prop_assert_eq!(applied, new);
        }
    }
}

/// A change of the given kind on the node or token `pick` selects.
fn some_change(ring: &Ring, kind: usize, pick: prop::sample::Index, seed: u64) -> Change {
    let owners: Vec<&Node> = ring.nodes().iter().collect();
    let victim = pick.get(&owners);
    let newcomer = |tokens: Vec<Token>| Node {
        id: "newcomer".into(),
        address: "newcomer:7000".into(),
        dc: victim.dc.clone(),
        rack: victim.rack.clone(),
        state: NodeState::Joining,
        tokens,
    };
    match kind {
        0 => {
            let request = NewNode {
                id: "newcomer",
                dc: &victim.dc,
                rack: "fresh-rack",
                vnodes: victim.tokens.len(),
            };
            let mut rng = StdRng::seed_from_u64(seed);
            let tokens =
                allocate_tokens(ring.state(), &request, 3, Allocator::Random, &mut rng).unwrap();
            Change::Join {
                node: Node {
                    rack: "fresh-rack".into(),
                    ..newcomer(tokens)
                },
            }
        }
        1 => Change::Decommission {
            node: victim.id.clone(),
        },
        2 => Change::RemoveNode {
            node: victim.id.clone(),
        },
        3 => Change::Replace {
            dead: victim.id.clone(),
            replacement: newcomer(Vec::new()),
        },
        _ => {
            let from = *pick.get(ring.tokens());
            Change::MoveToken {
                from,
                to: Token(from.0.wrapping_add(seed as u128 | 1)),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn prop_a_join_moves_about_one_nth_of_its_dc_and_only_onto_the_new_node(
        nodes in 3usize..=9,
        rf in 1usize..=3,
        other in dc_shape(),
        seed in any::<u64>(),
    ) {
        let dcs = [(1, nodes, rf), other];
        let mut rng = StdRng::seed_from_u64(seed);
        let state = layout(&spec(&dcs, 32), Allocator::Balanced, &mut rng).unwrap();
        let before = Ring::new(state).unwrap();
        let request = NewNode { id: "newcomer", dc: "dc0", rack: "rack1", vnodes: 32 };
        let tokens =
            allocate_tokens(before.state(), &request, rf, Allocator::Balanced, &mut rng).unwrap();
        let node = Node {
            id: "newcomer".into(),
            address: "newcomer:7000".into(),
            dc: "dc0".into(),
            rack: "rack1".into(),
            state: NodeState::Joining,
            tokens,
        };
        let plan = ChangePlan::new(&before, &Change::Join { node }).unwrap();
        let ks = plan.keyspace("ks").unwrap();
        let moved: &BTreeMap<String, f64> = &ks.moved_fraction;
        let expected = 1.0 / (nodes + 1) as f64;
        prop_assert!(
            (moved["dc0"] - expected).abs() < 0.2 * expected,
            "moved {} of dc0, expected about {}", moved["dc0"], expected
        );
        prop_assert_eq!(moved["dc1"], 0.0);
        for t in &ks.transfers {
            prop_assert!(t.streams.iter().all(|s| s.target.as_str() == "newcomer"));
            prop_assert!(t.released.iter().all(|r| before.state().node(r.as_str()).unwrap().dc == "dc0"));
        }
    }
}
