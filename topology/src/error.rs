use crate::state::{NodeId, NodeState};
use crate::token::Token;

/// Everything that makes a ring state or a change to it invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("token {token} is claimed by both {first} and {second}")]
    DuplicateToken {
        token: Token,
        first: NodeId,
        second: NodeId,
    },
    #[error("node id {0} appears more than once")]
    DuplicateNode(NodeId),
    #[error("node {0} has no rack")]
    NodeWithoutRack(NodeId),
    #[error("node {0} has no datacenter")]
    NodeWithoutDc(NodeId),
    #[error("node {node} is {state} but has no tokens")]
    NodeWithoutTokens { node: NodeId, state: NodeState },
    #[error("keyspace {keyspace} replicates to unknown datacenter {dc} (known: {known})")]
    UnknownDc {
        keyspace: String,
        dc: String,
        known: String,
    },
    #[error("keyspace {keyspace} wants {rf} replicas in {dc}, which has only {nodes} nodes")]
    RfExceedsNodes {
        keyspace: String,
        dc: String,
        rf: usize,
        nodes: usize,
    },
    #[error("unknown keyspace {0}")]
    UnknownKeyspace(String),
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    #[error("no node holds token {0}")]
    UnknownToken(Token),
    #[error("node {node} is {state}, but {change} needs it {expected}")]
    WrongState {
        node: NodeId,
        state: NodeState,
        change: &'static str,
        expected: NodeState,
    },
    #[error("replacement {replacement} is in {replacement_dc}, but {dead} was in {dead_dc}")]
    ReplacementInOtherDc {
        dead: NodeId,
        dead_dc: String,
        replacement: NodeId,
        replacement_dc: String,
    },
    #[error("datacenter {dc}: {reason}")]
    BadDcSpec { dc: String, reason: String },
    #[error("{node} asks for no tokens; a node needs at least one")]
    NoVnodes { node: String },
}
