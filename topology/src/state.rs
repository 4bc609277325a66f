//! The ring state as it is stored and shared: nodes, their tokens, keyspaces, an epoch.
//! Nodes, the router, the CLI and Terraform outputs all read and write this one format.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::token::Token;

/// The number of tokens a node gets unless it asks for another.
pub const DEFAULT_VNODES: usize = 256;

/// A node's stable name, unique in the cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl NodeId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId(s.to_owned())
    }
}

impl From<String> for NodeId {
    fn from(s: String) -> Self {
        NodeId(s)
    }
}

impl Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a node is in its life in the ring. Being down is a liveness fact kept elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeState {
    /// Streaming its ranges in: receives writes for them, serves no reads yet.
    Joining,
    /// Owns its ranges.
    Normal,
    /// Streaming its ranges out: still owns them until it has left.
    Leaving,
    /// Gone; kept so that gossip does not resurrect it.
    Left,
}

impl NodeState {
    /// Whether the node's tokens count for reads (the natural replicas).
    pub fn owns_ranges(self) -> bool {
        matches!(self, NodeState::Normal | NodeState::Leaving)
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            NodeState::Joining => "JOINING",
            NodeState::Normal => "NORMAL",
            NodeState::Leaving => "LEAVING",
            NodeState::Left => "LEFT",
        };
        f.write_str(s)
    }
}

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    /// Where peers reach it, e.g. `10.0.1.7:7000`.
    pub address: String,
    pub dc: String,
    /// Racks are failure domains within a DC; an empty rack is rejected by validation.
    #[serde(default)]
    pub rack: String,
    pub state: NodeState,
    /// Its vnodes; their count is its weight, so bigger machines can own more.
    #[serde(default)]
    pub tokens: Vec<Token>,
}

/// How many replicas a keyspace keeps in each DC (NetworkTopologyStrategy).
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Keyspace {
    /// DC name to replication factor; DCs not named hold no replica.
    pub replication: BTreeMap<String, usize>,
}

impl Keyspace {
    pub fn new<S: Into<String>>(replication: impl IntoIterator<Item = (S, usize)>) -> Self {
        Keyspace {
            replication: replication
                .into_iter()
                .map(|(dc, rf)| (dc.into(), rf))
                .collect(),
        }
    }
}

/// A version of the ring. Every change makes a new state with a higher epoch.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RingState {
    pub epoch: u64,
    // Tables come after plain values so that TOML can write the struct.
    #[serde(default)]
    pub keyspaces: BTreeMap<String, Keyspace>,
    #[serde(default)]
    pub nodes: Vec<Node>,
}

impl RingState {
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id.as_str() == id)
    }
}
