//! The one error type of the SDK.

use std::fmt;

use crate::KvError;

/// Why an SDK call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// A node answered with an error; the typed detail (replicas required and alive, the
    /// offending field, ...) is inside.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The node could not be reached (connection refused, reset, or no answer before the
    /// connection broke). Reads have already been retried on other nodes when this is returned.
    #[error("node {address} unreachable: {message}")]
    Unreachable { address: String, message: String },
    /// No endpoint given to [`Client::connect`](super::Client::connect) answered DescribeRing.
    #[error("no endpoint reachable: {}", EndpointList(.0))]
    NoEndpointsReachable(Vec<EndpointError>),
    /// An endpoint that is not a `host:port`.
    #[error("invalid endpoint {address:?}: {reason}")]
    InvalidEndpoint { address: String, reason: String },
    /// The node answered something the protocol does not allow, e.g. a MultiGet result without
    /// an outcome.
    #[error("malformed response: {0}")]
    Malformed(String),
}

impl ClientError {
    /// The typed node error, when a node answered with one.
    pub fn kv(&self) -> Option<&KvError> {
        match self {
            ClientError::Kv(e) => Some(e),
            _ => None,
        }
    }
}

/// What one endpoint answered when the client tried to connect through it.
#[derive(Debug, Clone)]
pub struct EndpointError {
    pub address: String,
    pub error: Box<ClientError>,
}

struct EndpointList<'a>(&'a [EndpointError]);

impl fmt::Display for EndpointList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no endpoints given");
        }
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.address, e.error)?;
        }
        Ok(())
    }
}

/// The SDK's result type.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
