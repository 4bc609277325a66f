//! One attempt of a call at one node: what it came to, and how its failure is classified. Unary
//! calls and pipelined ops end up here alike, so that retries treat them the same.

use tonic::metadata::MetadataMap;
use tonic::{Code, Response, Status};

use super::error::ClientError;
use crate::{KvError, RING_EPOCH_HEADER};

/// The ring epoch a unary response or status carries in its header.
fn header_epoch(metadata: &MetadataMap) -> Option<u64> {
    metadata
        .get(RING_EPOCH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// What one attempt at one node came to.
pub(super) struct Attempt<T> {
    pub result: std::result::Result<T, Failure>,
    /// The ring epoch the node reported with it.
    pub epoch: Option<u64>,
}

impl<T> Attempt<T> {
    pub fn unary(result: Result<Response<T>, Status>) -> Self {
        match result {
            Ok(response) => Attempt {
                epoch: header_epoch(response.metadata()),
                result: Ok(response.into_inner()),
            },
            Err(status) => Attempt {
                epoch: header_epoch(status.metadata()),
                result: Err(Failure::Status(status)),
            },
        }
    }

    pub fn failed(status: Status) -> Self {
        Attempt {
            result: Err(Failure::Status(status)),
            epoch: None,
        }
    }
}

/// Why an attempt failed.
pub(super) enum Failure {
    /// A call's status, from the node or from the local transport; a pipeline session's
    /// status when it ended.
    Status(Status),
    /// A pipelined op's own error, as the node answered it.
    Node(KvError),
    /// An answer the protocol does not allow.
    Malformed(String),
}

impl Failure {
    /// The SDK error, and whether it means the node could not be reached (the only failure
    /// another node might not have).
    pub fn classify(self, address: &str) -> (ClientError, bool) {
        match self {
            Failure::Status(status) => {
                // A status made by the local transport (not sent by a node) carries its cause.
                let local = std::error::Error::source(&status).is_some();
                let error = KvError::from_status(&status);
                sort(address, error, local, || transport_message(&status))
            }
            Failure::Node(error) => {
                let message = match &error {
                    KvError::Other { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                sort(address, error, false, || message)
            }
            Failure::Malformed(what) => (ClientError::Malformed(what), false),
        }
    }
}

/// The SDK error for a failed call (see [`Failure::classify`]): an untyped UNAVAILABLE means the
/// node could not be reached, and so does any local transport error but the client's deadline.
fn sort(
    address: &str,
    error: KvError,
    local: bool,
    message: impl FnOnce() -> String,
) -> (ClientError, bool) {
    let unreachable = match &error {
        KvError::Other { code, .. } => {
            *code == Code::Unavailable || (local && *code != Code::DeadlineExceeded)
        }
        _ => false,
    };
    if unreachable {
        let error = ClientError::Unreachable {
            address: address.to_owned(),
            message: message(),
        };
        (error, true)
    } else {
        (ClientError::Kv(error), false)
    }
}

fn transport_message(status: &Status) -> String {
    let mut message = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
