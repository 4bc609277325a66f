//! Which node a request goes to: the ring as DescribeRing told it, and the candidate list for
//! each request (best first; retries walk down it).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use topology::{Keyspace, Node, NodeId, NodeState, Ring, RingState, Token};

use crate::TokenBytesError;

use crate::pb::v1 as pb;
use crate::{decode_token, TOKEN_FUNCTION};

/// A node as routing sees it.
#[derive(Clone, Debug)]
pub(crate) struct RouteNode {
    pub address: String,
    pub dc: String,
    /// Not judged DOWN by the node that answered DescribeRing.
    pub up: bool,
}

/// A keyspace's replication and the ring built with it, if it could be.
type KeyspaceRing = (Keyspace, Option<Arc<Ring>>);

/// One DescribeRing answer, ready for routing.
pub(crate) struct Topology {
    pub epoch: u64,
    pub local_dc: String,
    /// False when the ring names a token function this client does not know, or its tokens
    /// do not decode: then requests go round-robin instead of to replicas.
    pub token_aware: bool,
    pub nodes: Vec<RouteNode>,
    state: RingState,
    /// Per keyspace, the ring built with that keyspace's replication (`None` when the ring
    /// cannot place it, e.g. it names a DC with no nodes). Built on first use because a ring
    /// with many vnodes costs milliseconds to build.
    rings: Mutex<HashMap<String, KeyspaceRing>>,
}

impl Topology {
    /// `local_dc` wins over the answering node's DC when given.
    pub(crate) fn new(response: pb::DescribeRingResponse, local_dc: Option<&str>) -> Topology {
        let state = ring_state(&response);
        let token_aware = response.token_function == TOKEN_FUNCTION && state.is_ok();
        let nodes = response
            .nodes
            .iter()
            .filter(|n| !n.client_address.is_empty())
            .map(|n| RouteNode {
                address: n.client_address.clone(),
                dc: n.dc.clone(),
                up: n.liveness != pb::Liveness::Down as i32,
            })
            .collect();
        Topology {
            epoch: response.ring_epoch,
            local_dc: local_dc.unwrap_or(&response.local_dc).to_owned(),
            token_aware,
            nodes,
            state: state.unwrap_or_default(),
            rings: Mutex::new(HashMap::new()),
        }
    }

    fn ring_for(&self, keyspace: &str, replication: &Keyspace) -> Option<Arc<Ring>> {
        let mut rings = self.rings.lock().expect("not poisoned");
        if let Some((known, ring)) = rings.get(keyspace) {
            if known == replication {
                return ring.clone();
            }
        }
        let mut state = self.state.clone();
        state
            .keyspaces
            .insert(keyspace.to_owned(), replication.clone());
        let ring = Ring::new(state).ok().map(Arc::new);
        rings.insert(keyspace.to_owned(), (replication.clone(), ring.clone()));
        ring
    }

    /// Indexes in `nodes` of the local-DC replicas of a key, in preference-list order.
    fn local_replicas(&self, keyspace: &str, replication: &Keyspace, token: Token) -> Vec<usize> {
        let Some(ring) = self.ring_for(keyspace, replication) else {
            return Vec::new();
        };
        let Ok(placement) = ring.placement(keyspace) else {
            return Vec::new();
        };
        placement
            .replicas(token)
            .in_dc(&self.local_dc)
            .iter()
            .filter_map(|&i| {
                let address = &ring.node(i).address;
                self.nodes.iter().position(|n| &n.address == address)
            })
            .collect()
    }

    /// Every node to try for a request, best first. With a key: the key's local-DC replicas
    /// believed up, then other local-DC nodes believed up, then up nodes of other DCs, then
    /// the rest. Each group starts at `rotation` so that load spreads over its members.
    /// Works on node indexes and asks `locally_down` once per node: this runs for every
    /// request.
    pub(crate) fn candidates(
        &self,
        key: Option<(&str, &Keyspace, Token)>,
        rotation: usize,
        locally_down: impl Fn(&str) -> bool,
    ) -> Vec<&str> {
        let up: Vec<bool> = (self.nodes.iter())
            .map(|n| n.up && !locally_down(&n.address))
            .collect();
        let local = |i: usize| self.nodes[i].dc == self.local_dc;
        let mut order: Vec<usize> = Vec::with_capacity(self.nodes.len());
        let mut group = Vec::with_capacity(self.nodes.len());
        let mut push = |members: &mut dyn Iterator<Item = usize>| {
            group.clear();
            group.extend(members);
            if !group.is_empty() {
                let len = group.len();
                group.rotate_left(rotation % len);
            }
            for &i in &group {
                if !order.contains(&i) {
                    order.push(i);
                }
            }
        };
        let all = 0..self.nodes.len();
        if self.token_aware {
            if let Some((keyspace, replication, token)) = key {
                let replicas = self.local_replicas(keyspace, replication, token);
                push(&mut replicas.into_iter().filter(|&i| up[i]));
            }
            push(&mut all.clone().filter(|&i| up[i] && local(i)));
        }
        push(&mut all.clone().filter(|&i| up[i]));
        if self.token_aware {
            push(&mut all.clone().filter(|&i| local(i)));
        }
        push(&mut all.clone());
        (order.into_iter())
            .map(|i| self.nodes[i].address.as_str())
            .collect()
    }
}

/// The ring a DescribeRing answer describes, without keyspaces, each node's `address` being its
/// client address. Fails on a token that is not 16 bytes.
pub fn ring_state(response: &pb::DescribeRingResponse) -> Result<RingState, TokenBytesError> {
    let nodes = response
        .nodes
        .iter()
        .map(|n| {
            let tokens = n
                .tokens
                .iter()
                .map(|t| decode_token(t))
                .collect::<Result<_, _>>()?;
            let state = match pb::NodeState::try_from(n.state) {
                Ok(pb::NodeState::Normal) => NodeState::Normal,
                Ok(pb::NodeState::Leaving) => NodeState::Leaving,
                Ok(pb::NodeState::Left) => NodeState::Left,
                // Unknown states own no ranges: such a node still coordinates requests, it just
                // is not a replica.
                _ => NodeState::Joining,
            };
            Ok(Node {
                id: NodeId(n.id.clone()),
                address: n.client_address.clone(),
                dc: n.dc.clone(),
                rack: n.rack.clone(),
                state,
                tokens,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(RingState {
        epoch: response.ring_epoch,
        keyspaces: BTreeMap::new(),
        nodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode_token;

    fn node(id: &str, dc: &str, token: u128, liveness: pb::Liveness) -> pb::RingNode {
        pb::RingNode {
            id: id.into(),
            dc: dc.into(),
            rack: "r1".into(),
            client_address: format!("{id}:9042"),
            internode_address: String::new(),
            state: pb::NodeState::Normal as i32,
            liveness: liveness as i32,
            tokens: vec![encode_token(Token(token))],
            load_bytes: None,
        }
    }

    fn topology(function: &str) -> Topology {
        let q = u128::MAX / 4;
        Topology::new(
            pb::DescribeRingResponse {
                nodes: vec![
                    node("a", "dc1", q, pb::Liveness::Up),
                    node("b", "dc1", 2 * q, pb::Liveness::Down),
                    node("c", "dc1", 3 * q, pb::Liveness::Up),
                    node("x", "dc2", q + 1, pb::Liveness::Up),
                ],
                ring_epoch: 3,
                local_dc: "dc1".into(),
                token_function: function.into(),
            },
            None,
        )
    }

    #[test]
    fn replicas_first_then_local_then_remote_then_down() {
        let t = topology(TOKEN_FUNCTION);
        let ks = Keyspace::new([("dc1", 2), ("dc2", 1)]);
        // Token 1 falls in a's range; with RF 2 the local replicas are a and b, b is down.
        let c = t.candidates(Some(("ks", &ks, Token(1))), 0, |_| false);
        assert_eq!(c, ["a:9042", "c:9042", "x:9042", "b:9042"]);
        // A node the client saw fail goes last too.
        let c = t.candidates(Some(("ks", &ks, Token(1))), 0, |a| a == "a:9042");
        assert_eq!(c[0], "c:9042");
        assert_eq!(c.last(), Some(&"b:9042"));
    }

    #[test]
    fn unknown_token_function_means_round_robin() {
        let t = topology("md5");
        assert!(!t.token_aware);
        let ks = Keyspace::new([("dc1", 1)]);
        let first: Vec<&str> = (0..3)
            .map(|r| t.candidates(Some(("ks", &ks, Token(1))), r, |_| false)[0])
            .collect();
        assert_eq!(first, ["a:9042", "c:9042", "x:9042"]);
    }
}
