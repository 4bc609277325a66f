//! The pure core of coordination and membership: clocks, consistency levels, response
//! counting, read resolution, failure detection and gossip state. Nothing here does network
//! I/O, spawns tasks or reads the wall clock on its own: time comes in as `now_ms` arguments or
//! an injected [`crate::lsm::Clock`], so a deterministic simulation can drive every decision.
//! The one module with disk I/O is `hints`, the coordinator's hint store, a synchronous layer
//! over its own engine.

pub mod consistency;
pub mod gossip;
pub mod hints;
pub mod hlc;
pub mod merkle;
pub mod phi;
pub mod quorum;
pub mod resolve;
pub mod schema;

pub use consistency::{
    ConsistencyError, ConsistencyLevel, Coordinator, DcReplicas, Operation,
    ParseConsistencyLevelError, ReadPlan, ReplicaLayout, Requirement, Unavailable, WritePlan,
};
pub use gossip::{
    Ack, Ack2, Addresses, Digest, EndpointState, GossipState, Location, MergeReport, Syn, Versioned,
};
pub use hints::{
    Hint, HintError, HintId, HintStore, HintStoreOptions, HintSummary, HintedWrite, ReplayThrottle,
    Replayed,
};
pub use hlc::{Hlc, HlcError, DEFAULT_MAX_DRIFT_MS};
pub use phi::{FailureDetector, PhiConfig};
pub use quorum::{Failure, Outcome, Recorded, ResponseTracker, Timeout};
pub use resolve::{check_digests, digest, resolve, DigestCheck, ReadResponse, Resolution};
pub use schema::{KeyspaceDef, Schema, SchemaError};
