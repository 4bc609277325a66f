//! Errors in words: the typed details the nodes send, spelled out for an operator.

use std::fmt::Write;

use client::pb::v1::{self as pb, ConsistencyLevel};
use client::{ClientError, KvError};
use serde_json::{json, Value};

/// The whole error chain on one line, typed node errors spelled out.
pub fn describe(error: &anyhow::Error) -> String {
    match error.downcast_ref::<ClientError>() {
        Some(e) => {
            let context: Vec<String> = error
                .chain()
                .take_while(|c| c.downcast_ref::<ClientError>().is_none())
                .map(ToString::to_string)
                .collect();
            let mut out = context.join(": ");
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&client_error(e));
            out
        }
        None => format!("{error:#}"),
    }
}

pub fn client_error(error: &ClientError) -> String {
    match error {
        ClientError::Kv(e) => kv_error(e),
        ClientError::Unreachable { address, message } => {
            format!("UNREACHABLE: node {address} could not be reached: {message}")
        }
        other => other.to_string(),
    }
}

pub fn kv_error(error: &KvError) -> String {
    match error {
        KvError::Unavailable(u) => {
            let mut s = format!(
                "UNAVAILABLE: {} needs {} replicas, {} alive",
                level(u.consistency),
                u.required,
                u.alive
            );
            let dcs: Vec<String> = u
                .per_dc
                .iter()
                .map(|d| match d.required {
                    0 => format!("{}: {} alive", d.dc, d.alive),
                    n => format!("{}: {} of {} alive", d.dc, d.alive, n),
                })
                .collect();
            if !dcs.is_empty() {
                write!(s, " ({})", dcs.join(", ")).expect("write to a String");
            }
            s
        }
        KvError::Timeout(t) => {
            let mut s = format!(
                "TIMEOUT: {} {} got {} of {} required answers in time",
                level(t.consistency),
                if t.is_write { "write" } else { "read" },
                t.received,
                t.required
            );
            let dcs: Vec<String> = t
                .per_dc
                .iter()
                .map(|d| format!("{}: {} of {}", d.dc, d.received, d.required))
                .collect();
            if !dcs.is_empty() {
                write!(s, " ({})", dcs.join(", ")).expect("write to a String");
            }
            if t.is_write {
                s.push_str(if t.write_may_have_applied {
                    "; the write may have been applied (retry with the same --timestamp)"
                } else {
                    "; the write was not applied"
                });
            }
            s
        }
        KvError::InvalidArgument(a) => {
            format!("INVALID_ARGUMENT: field {}: {}", a.field, a.reason)
        }
        KvError::KeyspaceNotFound(k) => {
            format!("NOT_FOUND: keyspace {} does not exist", k.keyspace)
        }
        KvError::KeyspaceExists(e) => match &e.existing {
            Some(k) => format!(
                "ALREADY_EXISTS: keyspace {} exists with replication {}",
                k.name,
                replication(k)
            ),
            None => "ALREADY_EXISTS: the keyspace exists".to_owned(),
        },
        KvError::Other { code, message } => format!("{}: {message}", code_name(*code)),
    }
}

/// A per-item error for JSON output: code name, the sentence, and the typed detail's fields.
pub fn kv_error_json(error: &KvError) -> Value {
    let detail = match error {
        KvError::Unavailable(u) => json!({
            "consistency": level(u.consistency),
            "required": u.required,
            "alive": u.alive,
            "per_dc": u.per_dc.iter().map(|d| json!({"dc": d.dc, "required": d.required, "alive": d.alive})).collect::<Vec<_>>(),
        }),
        KvError::Timeout(t) => json!({
            "consistency": level(t.consistency),
            "required": t.required,
            "received": t.received,
            "is_write": t.is_write,
            "write_may_have_applied": t.write_may_have_applied,
        }),
        KvError::InvalidArgument(a) => json!({"field": a.field, "reason": a.reason}),
        KvError::KeyspaceNotFound(k) => json!({"keyspace": k.keyspace}),
        KvError::KeyspaceExists(_) | KvError::Other { .. } => Value::Null,
    };
    json!({
        "code": code_name(error.code()),
        "message": kv_error(error),
        "detail": detail,
    })
}

pub fn replication(k: &pb::Keyspace) -> String {
    k.replication
        .iter()
        .map(|(dc, rf)| format!("{dc}:{rf}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn level(n: i32) -> String {
    ConsistencyLevel::try_from(n).map_or_else(|_| format!("level {n}"), |l| l.to_string())
}

/// The gRPC code as the protocol documents name it, e.g. `DEADLINE_EXCEEDED`.
pub fn code_name(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}
