//! Between wire messages and the node's own types. Decoders validate everything a peer or
//! client sends and answer with an [`KvError::InvalidArgument`] naming the field, never a panic.

use std::collections::BTreeMap;
use std::str::FromStr;

use bytes::Bytes;
use client::pb::internode::v1 as ipb;
use client::pb::v1 as pb;
use client::{decode_token, encode_token, KvError};
use topology::{NodeId, NodeState};

use crate::cluster::gossip::{Addresses, Digest, EndpointState, Location, Versioned};
use crate::cluster::{ConsistencyLevel, KeyspaceDef, Schema};
use crate::lsm::{Cell, CellValue};

type Result<T> = std::result::Result<T, KvError>;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> KvError {
    KvError::invalid_argument(field, reason)
}

/// A request's consistency level; 0 and unknown numbers are refused.
pub fn level(raw: i32) -> Result<ConsistencyLevel> {
    let unknown = || invalid("consistency", format!("{raw} is not a consistency level"));
    let pb_level = pb::ConsistencyLevel::try_from(raw).map_err(|_| unknown())?;
    if pb_level == pb::ConsistencyLevel::Unspecified {
        return Err(invalid(
            "consistency",
            "missing: choose a level such as LOCAL_QUORUM",
        ));
    }
    ConsistencyLevel::from_str(pb_level.name()).map_err(|_| unknown())
}

pub fn level_to_pb(level: ConsistencyLevel) -> pb::ConsistencyLevel {
    pb::ConsistencyLevel::from_str(level.as_str()).unwrap_or(pb::ConsistencyLevel::Unspecified)
}

pub fn cell_to_pb(cell: &Cell) -> pb::Cell {
    let content = match &cell.value {
        CellValue::Value(v) => pb::cell::Content::Value(v.clone()),
        CellValue::Tombstone => pb::cell::Content::Tombstone(pb::Tombstone {}),
    };
    pb::Cell {
        timestamp: cell.timestamp,
        content: Some(content),
        expires_at_ms: cell.expires_at_ms,
        causal: cell.causal.clone(),
    }
}

pub fn cell_from_pb(cell: pb::Cell, field: &str) -> Result<Cell> {
    let value = match cell.content {
        Some(pb::cell::Content::Value(v)) => {
            if v.len() + cell.causal.len() > client::MAX_VALUE_BYTES {
                return Err(invalid(
                    format!("{field}.value"),
                    format!(
                        "{} bytes, above the limit of {}",
                        v.len(),
                        client::MAX_VALUE_BYTES
                    ),
                ));
            }
            CellValue::Value(v)
        }
        Some(pb::cell::Content::Tombstone(_)) => CellValue::Tombstone,
        None => {
            return Err(invalid(
                field,
                "a cell is a value or a tombstone; neither is set",
            ))
        }
    };
    Ok(Cell {
        timestamp: cell.timestamp,
        expires_at_ms: cell.expires_at_ms,
        causal: cell.causal,
        value,
    })
}

/// Refuses empty and oversized keys.
pub fn check_key(key: &[u8], field: &str) -> Result<()> {
    if key.is_empty() {
        return Err(invalid(field, "empty; a key is 1 byte to 64 KiB"));
    }
    if key.len() > client::MAX_KEY_BYTES {
        return Err(invalid(
            field,
            format!(
                "{} bytes, above the limit of {}",
                key.len(),
                client::MAX_KEY_BYTES
            ),
        ));
    }
    Ok(())
}

pub fn check_value(value: &[u8], field: &str) -> Result<()> {
    if value.len() > client::MAX_VALUE_BYTES {
        return Err(invalid(
            field,
            format!(
                "{} bytes, above the limit of {}",
                value.len(),
                client::MAX_VALUE_BYTES
            ),
        ));
    }
    Ok(())
}

pub fn node_state_to_pb(state: NodeState) -> pb::NodeState {
    match state {
        NodeState::Joining => pb::NodeState::Joining,
        NodeState::Normal => pb::NodeState::Normal,
        NodeState::Leaving => pb::NodeState::Leaving,
        NodeState::Left => pb::NodeState::Left,
    }
}

fn node_state_from_pb(raw: i32) -> Result<NodeState> {
    match pb::NodeState::try_from(raw) {
        Ok(pb::NodeState::Joining) => Ok(NodeState::Joining),
        Ok(pb::NodeState::Normal) => Ok(NodeState::Normal),
        Ok(pb::NodeState::Leaving) => Ok(NodeState::Leaving),
        Ok(pb::NodeState::Left) => Ok(NodeState::Left),
        _ => Err(invalid("node_state", format!("{raw} is not a node state"))),
    }
}

pub fn schema_to_pb(schema: &Schema) -> ipb::Schema {
    let mut out = ipb::Schema {
        version: schema.version(),
        ..Default::default()
    };
    for (name, def) in schema.entries() {
        if def.dropped {
            out.dropped.push(ipb::DroppedKeyspace {
                name: name.to_owned(),
                schema_version: def.version,
            });
        } else {
            out.keyspaces.push(keyspace_to_pb(name, def));
        }
    }
    out
}

pub fn keyspace_to_pb(name: &str, def: &KeyspaceDef) -> pb::Keyspace {
    pb::Keyspace {
        name: name.to_owned(),
        replication: def.replication.clone(),
        schema_version: def.version,
    }
}

fn schema_from_pb(schema: ipb::Schema) -> Result<Schema> {
    let live = schema.keyspaces.into_iter().map(|k| {
        let def = KeyspaceDef {
            version: k.schema_version,
            dropped: false,
            replication: k.replication,
        };
        (k.name, def)
    });
    let dropped = schema.dropped.into_iter().map(|d| {
        let def = KeyspaceDef {
            version: d.schema_version,
            dropped: true,
            replication: BTreeMap::new(),
        };
        (d.name, def)
    });
    Schema::from_entries(live.chain(dropped)).map_err(|e| invalid("schema", e.to_string()))
}

pub fn digest_to_pb(d: &Digest) -> ipb::GossipDigest {
    ipb::GossipDigest {
        node_id: d.node.0.clone(),
        generation: d.generation,
        max_version: d.max_version,
    }
}

pub fn digest_from_pb(d: ipb::GossipDigest) -> Digest {
    Digest {
        node: NodeId(d.node_id),
        generation: d.generation,
        max_version: d.max_version,
    }
}

fn app_state(key: ipb::AppStateKey, version: u64, value: ipb::app_state::Value) -> ipb::AppState {
    ipb::AppState {
        key: key as i32,
        version,
        value: Some(value),
    }
}

pub fn endpoint_to_pb(node: &NodeId, s: &EndpointState) -> ipb::EndpointState {
    use ipb::app_state::Value;
    use ipb::AppStateKey as K;
    let mut states = Vec::new();
    if let Some(v) = &s.status {
        let state = node_state_to_pb(v.value) as i32;
        states.push(app_state(K::Status, v.version, Value::NodeState(state)));
    }
    if let Some(v) = &s.tokens {
        let tokens = v.value.iter().map(|t| encode_token(*t)).collect();
        states.push(app_state(
            K::Tokens,
            v.version,
            Value::Tokens(ipb::Tokens { tokens }),
        ));
    }
    if let Some(v) = &s.schema {
        states.push(app_state(
            K::Schema,
            v.version,
            Value::Schema(schema_to_pb(&v.value)),
        ));
    }
    if let Some(v) = &s.load_bytes {
        states.push(app_state(K::Load, v.version, Value::Number(v.value)));
    }
    if let Some(v) = &s.replacing {
        states.push(app_state(
            K::Replacing,
            v.version,
            Value::Text(v.value.0.clone()),
        ));
    }
    if let Some(v) = &s.location {
        let l = &v.value;
        for (key, text) in [
            (K::Dc, &l.dc),
            (K::Rack, &l.rack),
            (K::ClientAddress, &l.addresses.client),
            (K::InternodeAddress, &l.addresses.internode),
            (K::HttpAddress, &l.addresses.http),
        ] {
            states.push(app_state(key, v.version, Value::Text(text.clone())));
        }
    }
    ipb::EndpointState {
        node_id: node.0.clone(),
        generation: s.generation,
        heartbeat: s.heartbeat,
        app_states: states,
    }
}

/// Location fields travel as separate keys at one version; they are taken only together.
#[derive(Default)]
struct LocationParts {
    version: u64,
    dc: Option<String>,
    rack: Option<String>,
    client: Option<String>,
    internode: Option<String>,
    http: Option<String>,
}

pub fn endpoint_from_pb(e: ipb::EndpointState) -> Result<(NodeId, EndpointState)> {
    use ipb::app_state::Value;
    use ipb::AppStateKey as K;
    let mut s = EndpointState {
        generation: e.generation,
        heartbeat: e.heartbeat,
        status: None,
        tokens: None,
        schema: None,
        load_bytes: None,
        location: None,
        replacing: None,
    };
    let mut loc = LocationParts::default();
    for a in e.app_states {
        let version = a.version;
        let key = K::try_from(a.key).unwrap_or(K::Unspecified);
        match (key, a.value) {
            (K::Status, Some(Value::NodeState(n))) => {
                s.status = Some(Versioned {
                    version,
                    value: node_state_from_pb(n)?,
                })
            }
            (K::Tokens, Some(Value::Tokens(t))) => {
                let tokens = (t.tokens.iter())
                    .map(|b| decode_token(b).map_err(|e| invalid("tokens", e.to_string())))
                    .collect::<Result<Vec<_>>>()?;
                s.tokens = Some(Versioned {
                    version,
                    value: tokens,
                });
            }
            (K::Schema, Some(Value::Schema(schema))) => {
                s.schema = Some(Versioned {
                    version,
                    value: schema_from_pb(schema)?,
                })
            }
            (K::Replacing, Some(Value::Text(t))) => {
                s.replacing = Some(Versioned {
                    version,
                    value: NodeId(t),
                })
            }
            (K::Load, Some(Value::Number(n))) => {
                s.load_bytes = Some(Versioned { version, value: n })
            }
            (
                K::Dc | K::Rack | K::ClientAddress | K::InternodeAddress | K::HttpAddress,
                Some(Value::Text(t)),
            ) => {
                loc.version = version;
                let slot = match key {
                    K::Dc => &mut loc.dc,
                    K::Rack => &mut loc.rack,
                    K::ClientAddress => &mut loc.client,
                    K::InternodeAddress => &mut loc.internode,
                    _ => &mut loc.http,
                };
                *slot = Some(t);
            }
            // Keys added by newer nodes are skipped, as the protocol promises.
            (K::Unspecified, _) => {}
            (key, _) => {
                return Err(invalid(
                    "app_states",
                    format!("{} carries a value of the wrong type", key.as_str_name()),
                ))
            }
        }
    }
    if let LocationParts {
        version,
        dc: Some(dc),
        rack: Some(rack),
        client: Some(client),
        internode: Some(internode),
        http,
    } = loc
    {
        let addresses = Addresses {
            client,
            internode,
            http: http.unwrap_or_default(),
        };
        let location = Location {
            dc,
            rack,
            addresses,
        };
        s.location = Some(Versioned {
            version,
            value: location,
        });
    }
    Ok((NodeId(e.node_id), s))
}

pub fn error_to_pb(e: &KvError) -> pb::Error {
    use pb::error::Detail;
    let detail = match e {
        KvError::Unavailable(d) => Some(Detail::Unavailable(d.clone())),
        KvError::Timeout(d) => Some(Detail::Timeout(d.clone())),
        KvError::InvalidArgument(d) => Some(Detail::InvalidArgument(d.clone())),
        KvError::KeyspaceNotFound(d) => Some(Detail::KeyspaceNotFound(d.clone())),
        _ => None,
    };
    pb::Error {
        code: e.code() as i32,
        message: e.to_string(),
        detail,
    }
}

/// A user key's wire value, for responses.
pub fn read_value(cell: &Cell, now_ms: u64) -> Option<pb::ReadValue> {
    cell.live_value(now_ms).map(|v: &Bytes| pb::ReadValue {
        value: v.clone(),
        timestamp: cell.timestamp,
        expires_at_ms: cell.expires_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::GossipState;
    use topology::Token;

    #[test]
    fn endpoint_states_round_trip() {
        let location = Location {
            dc: "dc1".into(),
            rack: "r1".into(),
            addresses: Addresses {
                client: "127.0.1.1:9042".into(),
                internode: "127.0.1.1:7000".into(),
                http: "127.0.1.1:7080".into(),
            },
        };
        let mut g = GossipState::new(NodeId("a".into()), 7, location, NodeState::Normal);
        g.set_tokens(vec![Token(1), Token(u128::MAX)]);
        let mut schema = Schema::default();
        schema.create("app", [("dc1".into(), 3)].into(), 5).unwrap();
        schema.create("old", [("dc1".into(), 1)].into(), 6).unwrap();
        schema.drop_keyspace("old", 8).unwrap();
        g.set_schema(schema);
        g.set_load_bytes(42);
        g.beat();
        let me = g.me().clone();
        let wire = endpoint_to_pb(&me, g.local());
        assert_eq!(endpoint_from_pb(wire).unwrap(), (me, g.local().clone()));
    }

    #[test]
    fn malformed_values_are_refused_by_field() {
        let e = endpoint_from_pb(ipb::EndpointState {
            node_id: "a".into(),
            app_states: vec![app_state(
                ipb::AppStateKey::Tokens,
                1,
                ipb::app_state::Value::Tokens(ipb::Tokens {
                    tokens: vec![Bytes::from_static(b"short")],
                }),
            )],
            ..Default::default()
        });
        assert!(matches!(e, Err(KvError::InvalidArgument(a)) if a.field == "tokens"));
        let cell = cell_from_pb(pb::Cell::default(), "cell");
        assert!(matches!(cell, Err(KvError::InvalidArgument(a)) if a.field == "cell"));
        assert!(matches!(level(0), Err(KvError::InvalidArgument(a)) if a.field == "consistency"));
        assert!(level(99).is_err());
        assert_eq!(level(7).unwrap(), ConsistencyLevel::LocalQuorum);
    }
}
