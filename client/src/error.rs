//! Errors a client can act on, and how they ride inside gRPC statuses and per-item results.
//!
//! A call-level error is a gRPC status whose details are a `google.rpc.Status` holding one of
//! the `kv.v1` error messages as a `google.protobuf.Any`: generic gRPC tooling shows the code and
//! message, and a client of this crate gets the typed detail back with [`KvError::from_status`].

use std::fmt;

use prost::{Message, Name};
use prost_types::Any;
use tonic::{Code, Status};

use crate::pb::v1::{self as pb, error::Detail, ConsistencyLevel};

/// An error a node reports, decoded from a status or a per-item [`pb::Error`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KvError {
    /// Too few replicas alive to try; nothing was written.
    #[error("{}", Unavailability(.0))]
    Unavailable(pb::Unavailable),
    /// Too few replicas answered in time; a write may still have been applied.
    #[error("{}", TimedOut(.0))]
    Timeout(pb::Timeout),
    /// The request broke a rule; the field names the culprit.
    #[error("invalid argument {}: {}", .0.field, .0.reason)]
    InvalidArgument(pb::InvalidArgument),
    /// No keyspace of that name.
    #[error("keyspace {:?} does not exist", .0.keyspace)]
    KeyspaceNotFound(pb::KeyspaceNotFound),
    /// CreateKeyspace found the name taken.
    #[error("keyspace {:?} already exists", .0.existing.as_ref().map_or("", |k| k.name.as_str()))]
    KeyspaceExists(pb::KeyspaceExists),
    /// Any status without a detail this protocol defines, including transport failures: an
    /// UNAVAILABLE without an [`pb::Unavailable`] detail means the node itself was unreachable.
    #[error("{code:?}: {message}")]
    Other { code: Code, message: String },
}

impl KvError {
    /// Shorthand for the most common server-side error.
    pub fn invalid_argument(field: impl Into<String>, reason: impl Into<String>) -> Self {
        KvError::InvalidArgument(pb::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        })
    }

    /// The same error with an invalid field named from `parent` down (`key` under
    /// `mutations[3]` becomes `mutations[3].key`): validation of a message's parts names the
    /// field without formatting its path for every part that passes.
    pub fn within(self, parent: impl std::fmt::Display) -> Self {
        match self {
            KvError::InvalidArgument(mut d) => {
                d.field = format!("{parent}.{}", d.field);
                KvError::InvalidArgument(d)
            }
            other => other,
        }
    }

    /// The gRPC code this error travels with.
    pub fn code(&self) -> Code {
        match self {
            KvError::Unavailable(_) => Code::Unavailable,
            KvError::Timeout(_) => Code::DeadlineExceeded,
            KvError::InvalidArgument(_) => Code::InvalidArgument,
            KvError::KeyspaceNotFound(_) => Code::NotFound,
            KvError::KeyspaceExists(_) => Code::AlreadyExists,
            KvError::Other { code, .. } => *code,
        }
    }

    /// The status a server returns for this error.
    pub fn into_status(self) -> Status {
        let code = self.code();
        // The code travels beside the message; an untyped error's message is kept as it came
        // so that it is not prefixed with its code again at every hop.
        let message = match &self {
            KvError::Other { message, .. } => message.clone(),
            _ => self.to_string(),
        };
        let detail = match self {
            KvError::Unavailable(d) => Some(pack(&d)),
            KvError::Timeout(d) => Some(pack(&d)),
            KvError::InvalidArgument(d) => Some(pack(&d)),
            KvError::KeyspaceNotFound(d) => Some(pack(&d)),
            KvError::KeyspaceExists(d) => Some(pack(&d)),
            KvError::Other { .. } => None,
        };
        match detail {
            Some(detail) => {
                let rpc_status = tonic_types::pb::Status {
                    code: code as i32,
                    message: message.clone(),
                    details: vec![detail],
                };
                Status::with_details(code, message, rpc_status.encode_to_vec().into())
            }
            None => Status::new(code, message),
        }
    }

    /// Decodes what a server sent. Never fails: a status whose details are missing, malformed
    /// or of unknown types becomes [`KvError::Other`] with the status's own code and message.
    pub fn from_status(status: &Status) -> Self {
        tonic_types::pb::Status::decode(status.details())
            .ok()
            .and_then(|rpc| rpc.details.iter().find_map(unpack))
            .unwrap_or_else(|| KvError::Other {
                code: status.code(),
                message: status.message().to_owned(),
            })
    }
}

impl From<KvError> for Status {
    fn from(error: KvError) -> Self {
        error.into_status()
    }
}

impl From<Status> for KvError {
    fn from(status: Status) -> Self {
        KvError::from_status(&status)
    }
}

impl From<KvError> for pb::Error {
    fn from(error: KvError) -> Self {
        let code = error.code() as i32;
        // As in a status: an untyped error's message is kept as it came, not prefixed with
        // its code again.
        let message = match &error {
            KvError::Other { message, .. } => message.clone(),
            _ => error.to_string(),
        };
        let detail = match error {
            KvError::Unavailable(d) => Some(Detail::Unavailable(d)),
            KvError::Timeout(d) => Some(Detail::Timeout(d)),
            KvError::InvalidArgument(d) => Some(Detail::InvalidArgument(d)),
            KvError::KeyspaceNotFound(d) => Some(Detail::KeyspaceNotFound(d)),
            KvError::KeyspaceExists(_) | KvError::Other { .. } => None,
        };
        pb::Error {
            code,
            message,
            detail,
        }
    }
}

impl From<pb::Error> for KvError {
    fn from(error: pb::Error) -> Self {
        match error.detail {
            Some(Detail::Unavailable(d)) => KvError::Unavailable(d),
            Some(Detail::Timeout(d)) => KvError::Timeout(d),
            Some(Detail::InvalidArgument(d)) => KvError::InvalidArgument(d),
            Some(Detail::KeyspaceNotFound(d)) => KvError::KeyspaceNotFound(d),
            None => KvError::Other {
                code: Code::from_i32(error.code),
                message: error.message,
            },
        }
    }
}

fn pack<M: Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

fn unpack(any: &Any) -> Option<KvError> {
    // Any::to_msg checks the type URL, so trying each known type in turn is a dispatch on it.
    if let Ok(d) = any.to_msg::<pb::Unavailable>() {
        Some(KvError::Unavailable(d))
    } else if let Ok(d) = any.to_msg::<pb::Timeout>() {
        Some(KvError::Timeout(d))
    } else if let Ok(d) = any.to_msg::<pb::InvalidArgument>() {
        Some(KvError::InvalidArgument(d))
    } else if let Ok(d) = any.to_msg::<pb::KeyspaceNotFound>() {
        Some(KvError::KeyspaceNotFound(d))
    } else if let Ok(d) = any.to_msg::<pb::KeyspaceExists>() {
        Some(KvError::KeyspaceExists(d))
    } else {
        None
    }
}

/// A level number as its name, keeping unknown numbers visible rather than hiding them.
struct Level(i32);

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match ConsistencyLevel::try_from(self.0) {
            Ok(level) => level.fmt(f),
            Err(_) => write!(f, "level {}", self.0),
        }
    }
}

struct Unavailability<'a>(&'a pb::Unavailable);

impl fmt::Display for Unavailability<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = self.0;
        write!(
            f,
            "not enough replicas alive for {}: {} required, {} alive",
            Level(u.consistency),
            u.required,
            u.alive
        )?;
        for (i, dc) in u.per_dc.iter().enumerate() {
            let sep = if i == 0 { " (" } else { "; " };
            write!(
                f,
                "{sep}{}: {} required, {} alive",
                dc.dc, dc.required, dc.alive
            )?;
        }
        if !u.per_dc.is_empty() {
            f.write_str(")")?;
        }
        Ok(())
    }
}

struct TimedOut<'a>(&'a pb::Timeout);

impl fmt::Display for TimedOut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        write!(
            f,
            "{} timed out at {}: {} of {} required replicas answered",
            if t.is_write { "write" } else { "read" },
            Level(t.consistency),
            t.received,
            t.required
        )?;
        for (i, dc) in t.per_dc.iter().enumerate() {
            let sep = if i == 0 { " (" } else { "; " };
            write!(f, "{sep}{}: {} of {}", dc.dc, dc.received, dc.required)?;
        }
        if !t.per_dc.is_empty() {
            f.write_str(")")?;
        }
        if t.is_write && t.write_may_have_applied {
            f.write_str("; the write may have been applied")?;
        }
        Ok(())
    }
}
