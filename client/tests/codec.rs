//! Messages keep their content through encode and decode, and bytes that are not a valid
//! message give an error instead of a panic: a node decodes whatever arrives on its sockets.

use std::collections::BTreeMap;

use client::pb::internode::v1 as inode;
use client::pb::v1::*;
use client::{decode_token, encode_token, KvError};
use prost::bytes::Bytes;
use prost::Message;
use topology::Token;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(message: &M) {
    let bytes = message.encode_to_vec();
    assert_eq!(&M::decode(bytes.as_slice()).unwrap(), message);
}

fn value_cell(timestamp: u64, value: &'static [u8]) -> Cell {
    Cell {
        timestamp,
        content: Some(cell::Content::Value(Bytes::from_static(value))),
        expires_at_ms: Some(1_700_000_000_000),
        causal: Bytes::new(),
    }
}

fn tombstone(timestamp: u64) -> Cell {
    Cell {
        timestamp,
        content: Some(cell::Content::Tombstone(Tombstone {})),
        expires_at_ms: None,
        causal: Bytes::from_static(b"vc"),
    }
}

#[test]
fn client_messages_round_trip() {
    round_trip(&PutRequest {
        keyspace: "app".into(),
        consistency: ConsistencyLevel::EachQuorum as i32,
        key: Bytes::from_static(b"user:1"),
        value: Bytes::new(),
        timestamp: Some(0),
        ttl_ms: Some(3_600_000),
    });
    round_trip(&BatchRequest {
        keyspace: "app".into(),
        consistency: ConsistencyLevel::LocalQuorum as i32,
        mutations: vec![
            Mutation {
                key: Bytes::from_static(b"a"),
                op: Some(mutation::Op::Value(Bytes::from_static(b"1"))),
                ttl_ms: None,
            },
            Mutation {
                key: Bytes::from_static(b"b"),
                op: Some(mutation::Op::Delete(Tombstone {})),
                ttl_ms: Some(5),
            },
        ],
        timestamp: None,
        ttl_ms: Some(10),
    });
    round_trip(&ScanRequest {
        keyspace: "app".into(),
        consistency: ConsistencyLevel::One as i32,
        range: Some(client::encode_token_range(topology::TokenRange::new(
            Token(u128::MAX - 5),
            Token(7),
        ))),
        page_size: 500,
        paging_state: Bytes::from_static(&[0, 1, 2, 255]),
    });
    round_trip(&CreateKeyspaceRequest {
        keyspace: Some(Keyspace {
            name: "app".into(),
            replication: BTreeMap::from([("us-east".into(), 3), ("eu-west".into(), 3)]),
            schema_version: 0,
        }),
        if_not_exists: true,
    });
    round_trip(&DescribeRingResponse {
        nodes: vec![RingNode {
            id: "dc1-n1".into(),
            dc: "dc1".into(),
            rack: "r1".into(),
            client_address: "127.0.0.1:7100".into(),
            internode_address: "127.0.0.1:7200".into(),
            state: NodeState::Normal as i32,
            liveness: Liveness::Up as i32,
            tokens: vec![encode_token(Token(0)), encode_token(Token::MAX)],
            load_bytes: None,
        }],
        ring_epoch: 9,
        local_dc: "dc1".into(),
        token_function: client::TOKEN_FUNCTION.into(),
    });
    round_trip(&InspectResponse {
        key: Bytes::from_static(b"k"),
        token: encode_token(Token::of(b"k")),
        dcs: vec![DcReplicas {
            dc: "dc1".into(),
            replicas: vec![
                ReplicaCell {
                    node_id: "dc1-n1".into(),
                    rack: "r1".into(),
                    outcome: Some(replica_cell::Outcome::Cell(tombstone(3))),
                },
                ReplicaCell {
                    node_id: "dc1-n2".into(),
                    rack: "r2".into(),
                    outcome: Some(replica_cell::Outcome::Missing(Missing {})),
                },
                ReplicaCell {
                    node_id: "dc1-n3".into(),
                    rack: "r3".into(),
                    outcome: Some(replica_cell::Outcome::Error(
                        KvError::Timeout(Timeout {
                            consistency: ConsistencyLevel::One as i32,
                            required: 1,
                            received: 0,
                            is_write: false,
                            write_may_have_applied: false,
                            per_dc: vec![],
                        })
                        .into(),
                    )),
                },
            ],
        }],
    });
}

#[test]
fn internode_messages_round_trip() {
    let mutation = inode::ReplicaMutation {
        key: Bytes::from_static(b"k"),
        cell: Some(value_cell(5 << 16, b"v")),
    };
    round_trip(&inode::HintDeliverRequest {
        sender: None,
        target_node_id: "dc2-n3".into(),
        hints: vec![inode::Hint {
            keyspace: "app".into(),
            mutation: Some(mutation.clone()),
            hinted_at_ms: 1_700_000_000_000,
        }],
    });
    round_trip(&inode::PipeRequest {
        sender: None,
        target_node_id: "dc1-n3".into(),
        ops: vec![
            inode::PipeOp {
                id: 1,
                keyspace: "app".into(),
                op: Some(inode::pipe_op::Op::Write(inode::PipeWrite {
                    mutations: vec![mutation.clone()],
                })),
            },
            inode::PipeOp {
                id: 2,
                keyspace: "app".into(),
                op: Some(inode::pipe_op::Op::DigestKey(b"k".to_vec().into())),
            },
            inode::PipeOp {
                id: 3,
                keyspace: "app".into(),
                op: Some(inode::pipe_op::Op::Forward(inode::PipeForward {
                    mutations: vec![mutation.clone()],
                    targets: vec!["dc2-n1".into(), "dc2-n2".into()],
                    timeout_ms: 2_000,
                })),
            },
        ],
    });
    round_trip(&inode::PipeResponse {
        results: vec![
            inode::PipeResult {
                id: 2,
                result: Some(inode::pipe_result::Result::Read(inode::PipeCell {
                    cell: Some(tombstone(9)),
                })),
            },
            inode::PipeResult {
                id: 1,
                result: Some(inode::pipe_result::Result::Digest(u64::MAX)),
            },
        ],
        closed: None,
    });
    round_trip(&inode::PipeResponse {
        results: Vec::new(),
        closed: Some(client::pb::v1::Error {
            code: 9,
            message: "meant for node \"dc9-n9\"".into(),
            ..Default::default()
        }),
    });
    round_trip(&inode::GossipAck {
        states: vec![inode::EndpointState {
            node_id: "dc1-n2".into(),
            generation: 1_700_000_000,
            heartbeat: 12,
            app_states: vec![
                inode::AppState {
                    key: inode::AppStateKey::Status as i32,
                    version: 3,
                    value: Some(inode::app_state::Value::NodeState(
                        NodeState::Joining as i32,
                    )),
                },
                inode::AppState {
                    key: inode::AppStateKey::Tokens as i32,
                    version: 4,
                    value: Some(inode::app_state::Value::Tokens(inode::Tokens {
                        tokens: vec![encode_token(Token(42))],
                    })),
                },
                inode::AppState {
                    key: inode::AppStateKey::Schema as i32,
                    version: 5,
                    value: Some(inode::app_state::Value::Schema(inode::Schema {
                        version: 2,
                        keyspaces: vec![Keyspace {
                            name: "app".into(),
                            replication: BTreeMap::from([("dc1".into(), 3)]),
                            schema_version: 2,
                        }],
                        dropped: vec![],
                    })),
                },
            ],
        }],
        requests: vec![inode::GossipDigest {
            node_id: "dc1-n3".into(),
            generation: 1,
            max_version: 0,
        }],
    });
}

#[test]
fn an_empty_value_is_still_a_value() {
    // A oneof tracks which case is set, so a zero-length value is not mistaken for a missing
    // content (which would read as a malformed cell).
    let bytes = value_cell(1, b"").encode_to_vec();
    let cell = Cell::decode(bytes.as_slice()).unwrap();
    assert_eq!(cell.content, Some(cell::Content::Value(Bytes::new())));
}

#[test]
fn tokens_on_the_wire_are_big_endian() {
    let t = Token(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
    assert_eq!(&encode_token(t)[..], (1..=16).collect::<Vec<u8>>());
    assert_eq!(decode_token(&encode_token(t)), Ok(t));
}

#[test]
fn malformed_bytes_give_errors_not_panics() {
    let good = PutRequest {
        keyspace: "app".into(),
        consistency: ConsistencyLevel::One as i32,
        key: Bytes::from_static(b"key"),
        value: Bytes::from(vec![9; 300]),
        timestamp: Some(1),
        ttl_ms: None,
    }
    .encode_to_vec();

    // A message cut short inside a length-delimited field.
    for cut in [good.len() - 1, good.len() / 2, 2] {
        assert!(PutRequest::decode(&good[..cut]).is_err(), "cut at {cut}");
    }
    // A length prefix far beyond the buffer, a varint that never ends, a reserved wire type,
    // and field number zero.
    let cases: [&[u8]; 4] = [
        &[0x1a, 0xff, 0xff, 0xff, 0x0f, 1, 2],
        &[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
        &[0x0f, 0x00],
        &[0x00, 0x01],
    ];
    for bytes in cases {
        assert!(PutRequest::decode(bytes).is_err(), "{bytes:?}");
        assert!(inode::GossipAck::decode(bytes).is_err(), "{bytes:?}");
    }
    // Pseudo-random garbage: decoding may fail or, rarely, yield some message, but must return.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..2_000 {
        let bytes: Vec<u8> = (0..64)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let _ = InspectResponse::decode(bytes.as_slice());
        let _ = inode::PipeRequest::decode(bytes.as_slice());
        let _ = inode::GossipAck::decode(bytes.as_slice());
    }
}

#[test]
fn error_details_round_trip_through_a_status() {
    let errors = [
        KvError::Unavailable(Unavailable {
            consistency: ConsistencyLevel::EachQuorum as i32,
            required: 4,
            alive: 3,
            per_dc: vec![DcAlive {
                dc: "dc2".into(),
                required: 2,
                alive: 1,
            }],
        }),
        KvError::Timeout(Timeout {
            consistency: ConsistencyLevel::Quorum as i32,
            required: 2,
            received: 1,
            is_write: true,
            write_may_have_applied: true,
            per_dc: vec![],
        }),
        KvError::invalid_argument("mutations[3].value", "too large"),
        KvError::KeyspaceNotFound(KeyspaceNotFound {
            keyspace: "x".into(),
        }),
        KvError::KeyspaceExists(KeyspaceExists {
            existing: Some(Keyspace::default()),
        }),
    ];
    for error in errors {
        let status = error.clone().into_status();
        assert_eq!(status.code(), error.code());
        assert_eq!(status.message(), error.to_string());
        assert_eq!(KvError::from_status(&status), error);
    }
}

#[test]
fn undecodable_status_details_fall_back_to_code_and_message() {
    for details in [&b"\xff\xff garbage"[..], b"", b"\x1a\x03\x0a\x01x"] {
        let status = tonic::Status::with_details(
            tonic::Code::Unavailable,
            "connection refused",
            Bytes::copy_from_slice(details),
        );
        assert_eq!(
            KvError::from_status(&status),
            KvError::Other {
                code: tonic::Code::Unavailable,
                message: "connection refused".into(),
            }
        );
    }
}
