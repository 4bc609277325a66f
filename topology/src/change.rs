//! Changes to the cluster, and the ring state each one leads to.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::TopologyError;
use crate::ring::Ring;
use crate::state::{Node, NodeId, NodeState, RingState};
use crate::token::Token;

/// A change to the cluster's members or tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A new node (or one already JOINING) takes its place with the tokens it was given.
    Join { node: Node },
    /// A live node streams its ranges to their new owners and leaves.
    Decommission { node: NodeId },
    /// A dead node is dropped; its ranges are rebuilt from the surviving replicas.
    RemoveNode { node: NodeId },
    /// A new node takes over a dead node's tokens, streaming from the surviving replicas.
    Replace { dead: NodeId, replacement: Node },
    /// One vnode moves to another position, e.g. into a hot range to split it.
    MoveToken { from: Token, to: Token },
}

impl Change {
    /// The node that is gone and cannot stream anything.
    pub fn dead_node(&self) -> Option<&NodeId> {
        match self {
            Change::RemoveNode { node } => Some(node),
            Change::Replace { dead, .. } => Some(dead),
            _ => None,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Join { node } => write!(f, "join {} in {}/{}", node.id, node.dc, node.rack),
            Change::Decommission { node } => write!(f, "decommission {node}"),
            Change::RemoveNode { node } => write!(f, "removenode {node}"),
            Change::Replace { dead, replacement } => {
                write!(f, "replace {dead} with {}", replacement.id)
            }
            Change::MoveToken { from, to } => write!(f, "move token {from} to {to}"),
        }
    }
}

impl Ring {
    /// The state after `change`, one epoch later. The result is validated when it becomes a
    /// [`Ring`]: a moved token that lands on another, say, fails there.
    pub fn apply(&self, change: &Change) -> Result<RingState, TopologyError> {
        let mut state = self.state().clone();
        state.epoch += 1;
        match change {
            Change::Join { node } => self.join(&mut state, node)?,
            Change::Decommission { node } => self.leave(&mut state, node, "decommission")?,
            Change::RemoveNode { node } => self.leave(&mut state, node, "removenode")?,
            Change::Replace { dead, replacement } => self.replace(&mut state, dead, replacement)?,
            Change::MoveToken { from, to } => self.move_token(&mut state, *from, *to)?,
        }
        Ok(state)
    }

    fn join(&self, state: &mut RingState, node: &Node) -> Result<(), TopologyError> {
        let joined = Node {
            state: NodeState::Normal,
            ..node.clone()
        };
        match self.find(node.id.as_str()) {
            None => state.nodes.push(joined),
            Some(i) if self.node(i).state == NodeState::Joining => {
                state.nodes[i.index()] = joined;
            }
            Some(_) => return Err(TopologyError::DuplicateNode(node.id.clone())),
        }
        Ok(())
    }

    fn leave(
        &self,
        state: &mut RingState,
        id: &NodeId,
        change: &'static str,
    ) -> Result<(), TopologyError> {
        let i = self.owning_node(id, change)?;
        state.nodes[i].state = NodeState::Left;
        Ok(())
    }

    fn replace(
        &self,
        state: &mut RingState,
        dead: &NodeId,
        replacement: &Node,
    ) -> Result<(), TopologyError> {
        let i = self.owning_node(dead, "replace")?;
        let old = &state.nodes[i];
        if old.dc != replacement.dc {
            return Err(TopologyError::ReplacementInOtherDc {
                dead: dead.clone(),
                dead_dc: old.dc.clone(),
                replacement: replacement.id.clone(),
                replacement_dc: replacement.dc.clone(),
            });
        }
        if self.find(replacement.id.as_str()).is_some() {
            return Err(TopologyError::DuplicateNode(replacement.id.clone()));
        }
        let new = Node {
            state: NodeState::Normal,
            tokens: old.tokens.clone(),
            ..replacement.clone()
        };
        state.nodes[i].state = NodeState::Left;
        state.nodes.push(new);
        Ok(())
    }

    fn move_token(
        &self,
        state: &mut RingState,
        from: Token,
        to: Token,
    ) -> Result<(), TopologyError> {
        let owner = self
            .tokens()
            .binary_search(&from)
            .map_err(|_| TopologyError::UnknownToken(from))?;
        let node = self.owner_of(owner);
        let tokens = &mut state.nodes[node.index()].tokens;
        let at = tokens
            .iter()
            .position(|&t| t == from)
            .expect("owner holds it");
        tokens[at] = to;
        Ok(())
    }

    /// The index of a node that owns ranges now, as `change` needs.
    fn owning_node(&self, id: &NodeId, change: &'static str) -> Result<usize, TopologyError> {
        let i = self.find_or_err(id)?;
        let node = self.node(i);
        if !node.state.owns_ranges() {
            return Err(TopologyError::WrongState {
                node: id.clone(),
                state: node.state,
                change,
                expected: NodeState::Normal,
            });
        }
        Ok(i.index())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Keyspace;

    fn node(id: &str, dc: &str, state: NodeState, tokens: &[u128]) -> Node {
        Node {
            id: id.into(),
            address: format!("{id}:7000"),
            dc: dc.into(),
            rack: "r1".into(),
            state,
            tokens: tokens.iter().map(|&t| Token(t)).collect(),
        }
    }

    fn ring() -> Ring {
        Ring::new(RingState {
            epoch: 4,
            keyspaces: [("ks".to_owned(), Keyspace::new([("east", 1)]))].into(),
            nodes: vec![
                node("a", "east", NodeState::Normal, &[10, 20]),
                node("b", "east", NodeState::Normal, &[30]),
                node("c", "east", NodeState::Joining, &[40]),
            ],
        })
        .unwrap()
    }

    #[test]
    fn every_change_bumps_the_epoch() {
        let after = ring()
            .apply(&Change::Decommission { node: "b".into() })
            .unwrap();
        assert_eq!(after.epoch, 5);
        assert_eq!(after.node("b").unwrap().state, NodeState::Left);
    }

    #[test]
    fn a_joining_node_becomes_normal_with_its_tokens() {
        let joined = node("c", "east", NodeState::Joining, &[45]);
        let after = ring().apply(&Change::Join { node: joined }).unwrap();
        let c = after.node("c").unwrap();
        assert_eq!(
            (c.state, c.tokens.clone()),
            (NodeState::Normal, vec![Token(45)])
        );
        assert_eq!(after.nodes.len(), 3);
    }

    #[test]
    fn joining_under_a_taken_id_fails() {
        let dup = node("a", "east", NodeState::Normal, &[50]);
        assert_eq!(
            ring().apply(&Change::Join { node: dup }),
            Err(TopologyError::DuplicateNode("a".into()))
        );
    }

    #[test]
    fn only_owning_nodes_can_leave() {
        let err = ring()
            .apply(&Change::Decommission { node: "c".into() })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "node c is JOINING, but decommission needs it NORMAL"
        );
        assert_eq!(
            ring().apply(&Change::RemoveNode { node: "zz".into() }),
            Err(TopologyError::UnknownNode("zz".into()))
        );
    }

    #[test]
    fn a_replacement_inherits_the_dead_node_tokens() {
        let replacement = node("d", "east", NodeState::Joining, &[]);
        let after = ring()
            .apply(&Change::Replace {
                dead: "a".into(),
                replacement,
            })
            .unwrap();
        assert_eq!(after.node("a").unwrap().state, NodeState::Left);
        let d = after.node("d").unwrap();
        assert_eq!(d.tokens, vec![Token(10), Token(20)]);
        assert_eq!(d.state, NodeState::Normal);
        assert!(Ring::new(after).is_ok(), "a left node's tokens are free");
    }

    #[test]
    fn a_replacement_stays_in_the_dead_node_dc() {
        let replacement = node("d", "west", NodeState::Joining, &[]);
        let err = ring()
            .apply(&Change::Replace {
                dead: "a".into(),
                replacement,
            })
            .unwrap_err();
        assert!(matches!(err, TopologyError::ReplacementInOtherDc { .. }));
    }

    #[test]
    fn moving_a_token_changes_only_that_token() {
        let change = Change::MoveToken {
            from: Token(20),
            to: Token(25),
        };
        let after = ring().apply(&change).unwrap();
        assert_eq!(after.node("a").unwrap().tokens, vec![Token(10), Token(25)]);
        let missing = Change::MoveToken {
            from: Token(21),
            to: Token(25),
        };
        assert_eq!(
            ring().apply(&missing),
            Err(TopologyError::UnknownToken(Token(21)))
        );
        let onto_another = Change::MoveToken {
            from: Token(20),
            to: Token(30),
        };
        let err = Ring::new(ring().apply(&onto_another).unwrap()).unwrap_err();
        assert!(matches!(err, TopologyError::DuplicateToken { .. }));
    }
}
