//! The wire protocol of the key-value store: the gRPC services and messages generated from
//! `proto/`, the limits every node enforces, and the conversions every client and node needs
//! (tokens as bytes, consistency-level names, typed errors inside gRPC statuses).
//!
//! The protocol is described for people in `docs/wire-protocol.md`.

mod consistency;
mod error;
pub mod frame;
pub mod sdk;
#[cfg(feature = "test-util")]
pub mod testing;
mod token;

pub use consistency::ParseConsistencyError;
pub use error::KvError;
pub use sdk::{BatchOutcome, Client, ClientError, ClientOptions, Scan, WriteOptions};
pub use token::{
    decode_token, decode_token_range, encode_token, encode_token_range, TokenBytesError,
};

/// Code generated from `proto/` by build.rs. The module tree mirrors the protobuf packages
/// (`kv.v1`, `kv.internode.v1`) because generated code refers across packages by relative path.
pub mod pb {
    /// Package `kv.v1`: the client service and the types shared with the internode protocol.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/kv.v1.rs"));
    }

    /// Package `kv.internode.*`: node-to-node traffic.
    pub mod internode {
        /// Package `kv.internode.v1`.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/kv.internode.v1.rs"));
        }
    }
}

/// The largest key the storage engine accepts (its `key_bytes_max` default); empty keys are
/// refused too.
pub const MAX_KEY_BYTES: usize = 64 * 1024;

/// The largest value the storage engine accepts (its `value_bytes_max` default), counting the
/// causal context with the value.
pub const MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;

/// The largest gRPC message either side sends or accepts. Twice the value limit, so a request
/// with a maximal key and value and the response that returns it fit, with room for a few
/// smaller items in multi-key calls. tonic's default of 4 MiB would refuse legal values, so
/// every client and server must set this on both directions.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// Ops per `PipelineRequest` and results per `PipelineResponse`: a node decodes a whole
/// message before it can push back, so one message must stay a bounded amount of work.
pub const PIPELINE_OPS_MAX: usize = 1024;

/// Response header in which a node reports its ring epoch, so a client learns that its copy of
/// the ring is stale without polling DescribeRing.
pub const RING_EPOCH_HEADER: &str = "kv-ring-epoch";

/// The key-to-token function nodes name in `DescribeRingResponse.token_function`.
pub const TOKEN_FUNCTION: &str = "xxh3-128";
