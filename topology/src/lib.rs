//! The token ring of the store: who owns a key, and what must move when the cluster changes.
//!
//! Keys map to 128-bit tokens ([`token_of`], xxh3-128). Nodes hold vnodes (tokens) and live
//! in datacenters and racks. A keyspace says how many replicas it keeps per DC, and
//! [`Placement`] walks each DC's ring clockwise, distinct racks first, as Cassandra's
//! NetworkTopologyStrategy does. Pure: no I/O, no async.

mod alloc;
mod change;
mod error;
pub mod layout;
mod ownership;
mod plan;
mod ring;
mod state;
mod token;
mod walk;

pub use alloc::{allocate_tokens, Allocator, NewNode, ParseAllocatorError};
pub use change::Change;
pub use error::TopologyError;
pub use ownership::{DcOwnership, NodeOwnership, QuorumLoss};
pub use plan::{ChangePlan, KeyspacePlan, RangeTransfer, Stream};
pub use ring::{NodeIdx, Placement, ReplicaSet, Ring, Shortfall};
pub use state::{Keyspace, Node, NodeId, NodeState, RingState, DEFAULT_VNODES};
pub use token::{token_of, ParseTokenError, Token, TokenRange};
