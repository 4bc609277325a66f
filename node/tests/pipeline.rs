//! The Pipeline rpc against a real one-node cluster in this process, spoken through the
//! generated client so that the tests control every message: concurrency, per-op errors,
//! malformed input, the ring epoch and how sessions end.

use std::collections::HashMap;
use std::time::Duration;

use client::pb::v1::key_value_client::KeyValueClient;
use client::pb::v1::pipeline_op::Op;
use client::pb::v1::pipeline_result::Result as Outcome;
use client::pb::v1::{self as pb, ConsistencyLevel};
use client::{Client, ClientOptions, KvError, PIPELINE_OPS_MAX};
use node::config::NodeConfig;
use node::server::{Node, RunningNode};
use prost::bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

const KS: &str = "app";
/// Messages the test queues for a session's request stream.
const REQUESTS_MAX: usize = 64;

struct TestNode {
    running: RunningNode,
    client: KeyValueClient<Channel>,
    /// The client port, for framed sessions.
    address: String,
    _dir: tempfile::TempDir,
}

fn free_address() -> std::net::SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

/// A one-node cluster with keyspace `app` (RF 1).
async fn start() -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig {
        node_id: "n1".into(),
        data_dir: dir.path().join("n1"),
        vnodes: 4,
        ..NodeConfig::default()
    };
    config.listen.client = free_address();
    config.listen.internode = free_address();
    config.listen.http = free_address();
    config.validate().unwrap();
    let address = config.listen.client.to_string();
    let running = Node::start(config).await.unwrap();
    let sdk = Client::connect(ClientOptions::new([address.clone()]))
        .await
        .unwrap();
    sdk.create_keyspace(KS, [("dc1".to_owned(), 1)].into(), false)
        .await
        .unwrap();
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    TestNode {
        running,
        client: KeyValueClient::new(channel),
        address,
        _dir: dir,
    }
}

/// An open session: what the test sends, and the node's answers.
struct Session {
    /// `None` once the test closed its side.
    requests: Option<mpsc::Sender<pb::PipelineRequest>>,
    responses: Streaming<pb::PipelineResponse>,
}

impl Session {
    async fn open(node: &TestNode) -> Session {
        let (requests, queue) = mpsc::channel(REQUESTS_MAX);
        let responses = node
            .client
            .clone()
            .pipeline(ReceiverStream::new(queue))
            .await
            .unwrap()
            .into_inner();
        Session {
            requests: Some(requests),
            responses,
        }
    }

    async fn send(&self, ops: Vec<pb::PipelineOp>) {
        let requests = self.requests.as_ref().expect("open");
        requests.send(pb::PipelineRequest { ops }).await.unwrap();
    }

    /// Results by id until `n` have come, with the ring epoch of each response.
    async fn results(&mut self, n: usize) -> (HashMap<u64, Outcome>, Vec<u64>) {
        let (mut results, mut epochs) = (HashMap::new(), Vec::new());
        while results.len() < n {
            let response = tokio::time::timeout(Duration::from_secs(10), self.responses.message())
                .await
                .expect("results in time")
                .unwrap()
                .expect("the session goes on");
            epochs.push(response.ring_epoch);
            for r in response.results {
                let outcome = r.result.expect("a result");
                assert!(results.insert(r.id, outcome).is_none(), "id {} twice", r.id);
            }
        }
        (results, epochs)
    }

    /// How the stream ends, skipping results: `None` for OK.
    async fn end(mut self) -> Option<Status> {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), self.responses.message())
                .await
                .expect("the stream ends in time");
            match next {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    }
}

fn key(i: u64) -> Bytes {
    Bytes::from(format!("key-{i}"))
}

fn put(id: u64, key: Bytes, value: &str) -> pb::PipelineOp {
    pb::PipelineOp {
        id,
        op: Some(Op::Put(pb::PutRequest {
            keyspace: KS.into(),
            consistency: ConsistencyLevel::One as i32,
            key,
            value: Bytes::from(value.to_owned()),
            timestamp: None,
            ttl_ms: None,
        })),
    }
}

fn get(id: u64, keyspace: &str, key: Bytes) -> pb::PipelineOp {
    pb::PipelineOp {
        id,
        op: Some(Op::Get(pb::GetRequest {
            keyspace: keyspace.into(),
            consistency: ConsistencyLevel::One as i32,
            key,
        })),
    }
}

fn delete(id: u64, key: Bytes) -> pb::PipelineOp {
    pb::PipelineOp {
        id,
        op: Some(Op::Delete(pb::DeleteRequest {
            keyspace: KS.into(),
            consistency: ConsistencyLevel::One as i32,
            key,
            timestamp: None,
        })),
    }
}

fn op_error(outcome: &Outcome) -> KvError {
    match outcome {
        Outcome::Error(e) => KvError::from(e.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn invalid_field(status: &Status) -> String {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    match KvError::from_status(status) {
        KvError::InvalidArgument(a) => a.field,
        other => panic!("expected a typed INVALID_ARGUMENT, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_ops_over_one_session_are_all_answered() {
    let node = start().await;
    let mut session = Session::open(&node).await;
    const KEYS: u64 = 3000;
    // Writes in messages of the largest size allowed, each key's write in flight at once.
    let puts: Vec<_> = (0..KEYS)
        .map(|i| put(i, key(i), &format!("v{i}")))
        .collect();
    for chunk in puts.chunks(PIPELINE_OPS_MAX) {
        session.send(chunk.to_vec()).await;
    }
    let (results, _) = session.results(KEYS as usize).await;
    let mut timestamps = HashMap::new();
    for i in 0..KEYS {
        match &results[&i] {
            Outcome::Put(p) => timestamps.insert(i, p.timestamp),
            other => panic!("put {i}: {other:?}"),
        };
    }
    // Ids are free again once answered; deletes and gets interleave, one op per message.
    for i in 0..KEYS {
        let op = match i % 2 {
            0 => delete(i, key(i)),
            _ => get(i, KS, key(i)),
        };
        session.send(vec![op]).await;
    }
    let (results, _) = session.results(KEYS as usize).await;
    for i in 0..KEYS {
        match (&results[&i], i % 2) {
            (Outcome::Delete(d), 0) => assert!(d.timestamp > timestamps[&i]),
            (Outcome::Get(g), 1) => {
                let value = g.value.as_ref().expect("written");
                assert_eq!(value.value, format!("v{i}"));
                assert_eq!(value.timestamp, timestamps[&i]);
            }
            (other, _) => panic!("op {i}: {other:?}"),
        }
    }
    drop(session);
    node.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_op_error_is_that_op_s_alone() {
    let node = start().await;
    let mut session = Session::open(&node).await;
    let empty_key = put(1, Bytes::new(), "v");
    let no_body = pb::PipelineOp { id: 2, op: None };
    let unknown_keyspace = get(3, "nope", key(3));
    let good = put(4, key(4), "v");
    session
        .send(vec![empty_key, no_body, unknown_keyspace, good])
        .await;
    let (results, _) = session.results(4).await;
    assert!(matches!(op_error(&results[&1]), KvError::InvalidArgument(a) if a.field == "key"));
    assert!(matches!(op_error(&results[&2]), KvError::InvalidArgument(a) if a.field == "op"));
    assert!(matches!(
        op_error(&results[&3]),
        KvError::KeyspaceNotFound(k) if k.keyspace == "nope"
    ));
    assert!(matches!(results[&4], Outcome::Put(_)));

    session.send(vec![get(5, KS, key(4))]).await;
    let (results, _) = session.results(1).await;
    assert!(matches!(&results[&5], Outcome::Get(g) if g.value.is_some()));
    session.requests = None;
    assert!(session.end().await.is_none(), "OK after the client closes");
    node.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_ends_the_session_with_the_field_named() {
    let node = start().await;

    let session = Session::open(&node).await;
    let ops = (0..=PIPELINE_OPS_MAX as u64)
        .map(|i| get(i, KS, key(i)))
        .collect();
    session.send(ops).await;
    let status = session.end().await.expect("an error");
    assert_eq!(invalid_field(&status), "ops");
    assert!(status.message().contains("1025 ops"), "{status:?}");

    // One id many times in a message: the ops run concurrently, so some are still
    // outstanding when a duplicate is read.
    let session = Session::open(&node).await;
    let ops = (0..PIPELINE_OPS_MAX as u64)
        .map(|i| put(7, key(i), "v"))
        .collect();
    session.send(ops).await;
    let status = session.end().await.expect("an error");
    let field = invalid_field(&status);
    assert!(
        field.starts_with("ops[") && field.ends_with("].id"),
        "{field}"
    );

    // Other sessions are untouched.
    let mut session = Session::open(&node).await;
    session.send(vec![get(1, KS, key(1))]).await;
    session.results(1).await;
    drop(session);
    node.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_the_ring_epoch() {
    let node = start().await;
    let ring = node
        .client
        .clone()
        .describe_ring(pb::DescribeRingRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(ring.ring_epoch > 0);
    let mut session = Session::open(&node).await;
    for i in 0..20 {
        session.send(vec![put(i, key(i), "v")]).await;
    }
    let (_, epochs) = session.results(20).await;
    assert!(epochs.iter().all(|&e| e == ring.ring_epoch), "{epochs:?}");
    drop(session);
    node.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_sessions_with_unavailable() {
    let node = start().await;
    let mut session = Session::open(&node).await;
    session.send(vec![put(1, key(1), "v")]).await;
    session.results(1).await;
    // A client that vanishes mid-session leaves the node serving others.
    let abandoned = Session::open(&node).await;
    abandoned
        .send((0..100).map(|i| put(i, key(i), "v")).collect())
        .await;
    drop(abandoned);

    // The open session must not hold up the server's graceful shutdown.
    let shutdown = tokio::spawn(node.running.shutdown());
    let status = session.end().await.expect("ended with an error");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    tokio::time::timeout(Duration::from_secs(20), shutdown)
        .await
        .expect("shutdown completes")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_framed_sessions_with_a_closing_unavailable() {
    use client::frame::{encode_frame, FrameReader, Preface, Protocol};
    use tokio::io::AsyncWriteExt;

    let node = start().await;
    let stream = tokio::net::TcpStream::connect(&node.address).await.unwrap();
    let (read, mut write) = stream.into_split();
    let preface = Preface {
        protocol: Protocol::Session,
        compress: false,
    };
    let mut wire = preface.encode().to_vec();
    let request = pb::PipelineRequest {
        ops: vec![put(1, key(1), "v")],
    };
    encode_frame(&request, false, &mut wire);
    write.write_all(&wire).await.unwrap();
    let mut read = FrameReader::new(read);
    read.read_preface(Protocol::Session).await.unwrap();
    let answered: pb::PipelineResponse = read.read_message().await.unwrap().expect("an answer");
    assert_eq!(answered.results.len(), 1);
    assert!(answered.closed.is_none());

    // The open session must not hold up the node's shutdown, and hears why it ends.
    let shutdown = tokio::spawn(node.running.shutdown());
    let last = tokio::time::timeout(Duration::from_secs(10), read.read_message())
        .await
        .expect("the session ends in time")
        .unwrap();
    let last: pb::PipelineResponse = last.expect("a closing message");
    let closed = last.closed.expect("the reason");
    assert_eq!(Code::from_i32(closed.code), Code::Unavailable, "{closed:?}");
    tokio::time::timeout(Duration::from_secs(20), shutdown)
        .await
        .expect("shutdown completes")
        .unwrap()
        .unwrap();
}
