//! Framed client sessions against a real kv-node, spoken by hand over TCP on the client port:
//! ops are answered as over gRPC, the client closing its side gets every answer before the
//! node closes, and a malformed frame (which writes nothing), a duplicate id or a pipe's
//! preface ends the session with a reason.

use std::time::Duration;

use client::frame::{encode_frame, FrameReader, Preface, Protocol};
use client::pb::v1::pipeline_op::Op;
use client::pb::v1::pipeline_result::Result as Answer;
use client::pb::v1::{
    ConsistencyLevel, GetRequest, PipelineOp, PipelineRequest, PipelineResponse, PutRequest,
};
use cluster_tests::ops::{create_keyspace, get, KS};
use cluster_tests::{Cluster, Node};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(10);
const SESSION: Preface = Preface {
    protocol: Protocol::Session,
    compress: false,
};

struct Session {
    write: OwnedWriteHalf,
    read: FrameReader<OwnedReadHalf>,
}

/// How a session ended: cleanly, or with the node's closing message.
#[derive(Debug, PartialEq)]
enum End {
    Clean,
    Closed { code: Code, message: String },
}

impl Session {
    async fn connect(node: &Node, preface: Preface) -> Session {
        let stream = TcpStream::connect(&node.client_address)
            .await
            .expect("client port answers");
        let (read, mut write) = stream.into_split();
        write
            .write_all(&preface.encode())
            .await
            .expect("preface sent");
        let mut read = FrameReader::new(read);
        let theirs = tokio::time::timeout(TIMEOUT, read.read_preface(Protocol::Session)).await;
        assert_eq!(
            theirs.expect("a preface in time").expect("a valid preface"),
            SESSION
        );
        Session { write, read }
    }

    async fn send_frame(&mut self, frame: &[u8]) {
        self.write.write_all(frame).await.expect("frame sent");
    }

    async fn send(&mut self, ops: Vec<PipelineOp>) {
        let mut frame = Vec::new();
        encode_frame(&PipelineRequest { ops }, false, &mut frame);
        self.send_frame(&frame).await;
    }

    /// Results by id until `count` have come or the session ends, and how it ended (`None`
    /// while it is still open).
    async fn answers(&mut self, count: usize) -> (Vec<(u64, Answer)>, Option<End>) {
        let mut out = Vec::new();
        let mut end = None;
        while out.len() < count || end.is_none() && count == usize::MAX {
            let next = tokio::time::timeout(TIMEOUT, self.read.read_message()).await;
            let next: Option<PipelineResponse> =
                next.expect("an answer in time").expect("a valid frame");
            let Some(response) = next else {
                end = Some(End::Clean);
                break;
            };
            assert!(
                response.ring_epoch > 0,
                "every message carries the ring epoch"
            );
            out.extend(
                response
                    .results
                    .into_iter()
                    .map(|r| (r.id, r.result.expect("set"))),
            );
            if let Some(e) = response.closed {
                end = Some(End::Closed {
                    code: Code::from_i32(e.code),
                    message: e.message,
                });
                let after = self.read.read_frame().await.expect("a clean end");
                assert!(after.is_none(), "the node closes after its closing message");
                break;
            }
        }
        out.sort_by_key(|(id, _)| *id);
        (out, end)
    }
}

fn put(id: u64, key: &str, value: &str) -> PipelineOp {
    PipelineOp {
        id,
        op: Some(Op::Put(PutRequest {
            keyspace: KS.into(),
            consistency: ConsistencyLevel::One as i32,
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            timestamp: None,
            ttl_ms: None,
        })),
    }
}

fn read(id: u64, key: &str) -> PipelineOp {
    PipelineOp {
        id,
        op: Some(Op::Get(GetRequest {
            keyspace: KS.into(),
            consistency: ConsistencyLevel::One as i32,
            key: key.as_bytes().to_vec().into(),
        })),
    }
}

fn assert_closed(end: Option<End>, code: Code, naming: &str) {
    match end {
        Some(End::Closed { code: c, message }) => {
            assert_eq!(c, code, "{message}");
            assert!(message.contains(naming), "{message}");
        }
        other => panic!("expected a closing message with {code:?}, got {other:?}"),
    }
}

async fn one_node_with_keyspace() -> (Cluster, Node) {
    let cluster = Cluster::up(1, 1).await;
    let node = cluster.nodes()[0].clone();
    let mut c = cluster.client(&node.id).await;
    create_keyspace(&mut c, &[("dc1", 1)]).await;
    (cluster, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framed_session_answers_every_op_and_ends_cleanly_after_the_client_closes() {
    let (_cluster, node) = one_node_with_keyspace().await;
    let mut session = Session::connect(&node, SESSION).await;
    session.send(vec![put(1, "a", "1"), put(2, "b", "2")]).await;
    let (written, end) = session.answers(2).await;
    assert_eq!(end, None);
    assert!(
        written.iter().all(|(_, a)| matches!(a, Answer::Put(_))),
        "{written:?}"
    );

    session.send(vec![read(3, "a"), read(4, "missing")]).await;
    session.write.shutdown().await.expect("our side closed");
    let (answers, end) = session.answers(usize::MAX).await;
    assert_eq!(
        end,
        Some(End::Clean),
        "no closing message when the client ends"
    );
    let values: Vec<_> = answers
        .iter()
        .map(|(id, a)| match a {
            Answer::Get(g) => (*id, g.value.as_ref().map(|v| v.value.clone())),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(values, vec![(3, Some(b"1".to_vec().into())), (4, None)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_frame_a_duplicate_id_or_a_pipe_preface_ends_the_session_with_the_reason() {
    let (cluster, node) = one_node_with_keyspace().await;
    let mut c = cluster.client(&node.id).await;

    let mut session = Session::connect(&node, SESSION).await;
    let mut frame = Vec::new();
    encode_frame(
        &PipelineRequest {
            ops: vec![put(1, "flipped", "v")],
        },
        false,
        &mut frame,
    );
    let last = frame.len() - 1;
    frame[last] ^= 0x01;
    session.send_frame(&frame).await;
    let (answers, end) = session.answers(usize::MAX).await;
    assert!(answers.is_empty(), "{answers:?}");
    assert_closed(end, Code::InvalidArgument, "checksum");
    let got = get(&mut c, "flipped", ConsistencyLevel::One).await;
    assert_eq!(
        got.expect("read"),
        None,
        "nothing of a corrupt frame is applied"
    );

    // One id many times in a message: the ops run concurrently, so some are still
    // outstanding when a duplicate is read.
    let mut session = Session::connect(&node, SESSION).await;
    let ops = (0..1024)
        .map(|i| put(7, &format!("dup-{i}"), "v"))
        .collect();
    session.send(ops).await;
    let (_, end) = session.answers(usize::MAX).await;
    assert_closed(end, Code::InvalidArgument, "].id");

    let pipe = Preface {
        protocol: Protocol::Pipe,
        compress: false,
    };
    let mut session = Session::connect(&node, pipe).await;
    let (_, end) = session.answers(usize::MAX).await;
    assert_closed(
        end,
        Code::InvalidArgument,
        "an internode pipe where a client session was expected",
    );
}
