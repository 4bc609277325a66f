//! The internode pipe against a real kv-node, spoken by hand over TCP: who may open one, that
//! each operation of a batch succeeds or fails on its own, and that a malformed frame or
//! preface ends the pipe with a reason and writes nothing, and that a forward is answered per
//! target.

use std::time::Duration;

use client::frame::{encode_frame, FrameReader, Preface, Protocol, FRAME_HEADER_BYTES};
use client::pb::internode::v1::internode_client::InternodeClient;
use client::pb::internode::v1::{
    self as ipb, pipe_op::Op, pipe_result::Result as Answer, PipeOp, PipeRequest, PipeWrite,
    ReplicaMutation,
};
use client::pb::v1::key_value_client::KeyValueClient;
use client::pb::v1::{cell, Cell, ConsistencyLevel};
use cluster_tests::ops::{create_keyspace, get, replica_values, KS};
use cluster_tests::{Cluster, Node};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(10);
const PIPE: Preface = Preface {
    protocol: Protocol::Pipe,
    compress: false,
};

/// A pipe spoken by hand: the preface and frames of `client::frame` on a plain connection.
struct Pipe {
    write: OwnedWriteHalf,
    read: FrameReader<OwnedReadHalf>,
}

/// Why the node ended a pipe, from its closing frame.
#[derive(Debug)]
struct Closed {
    code: Code,
    message: String,
}

impl Closed {
    fn assert_is(&self, code: Code, naming: &str) {
        assert_eq!(self.code, code, "{self:?}");
        assert!(self.message.contains(naming), "{self:?}");
    }
}

impl Pipe {
    async fn connect(address: &str, preface: [u8; 8]) -> Pipe {
        let stream = TcpStream::connect(address)
            .await
            .expect("internode port answers");
        let (read, mut write) = stream.into_split();
        write.write_all(&preface).await.expect("preface sent");
        let mut read = FrameReader::new(read);
        let theirs = tokio::time::timeout(TIMEOUT, read.read_preface(Protocol::Pipe)).await;
        assert_eq!(
            theirs.expect("a preface in time").expect("a valid preface"),
            PIPE
        );
        Pipe { write, read }
    }

    async fn open(address: &str, cluster: &str, target: &str, first: Vec<PipeOp>) -> Pipe {
        let mut pipe = Pipe::connect(address, PIPE.encode()).await;
        pipe.send(PipeRequest {
            sender: Some(ipb::Sender {
                cluster: cluster.into(),
                node_id: "a-test".into(),
            }),
            target_node_id: target.into(),
            ops: first,
        })
        .await;
        pipe
    }

    async fn send(&mut self, request: PipeRequest) {
        let mut frame = Vec::new();
        encode_frame(&request, false, &mut frame);
        self.write.write_all(&frame).await.expect("frame sent");
    }

    /// Every result of the operations sent, by id, or why the node ended the pipe.
    async fn answers(&mut self, count: usize) -> Result<Vec<(u64, Answer)>, Closed> {
        Ok(self.answers_and_frames(count).await?.0)
    }

    /// [`Pipe::answers`], and how many frames carried them.
    async fn answers_and_frames(
        &mut self,
        count: usize,
    ) -> Result<(Vec<(u64, Answer)>, usize), Closed> {
        let mut out = Vec::new();
        let mut frames = 0;
        while out.len() < count {
            frames += 1;
            let next = tokio::time::timeout(TIMEOUT, self.read.read_message()).await;
            let batch: ipb::PipeResponse = next
                .expect("an answer in time")
                .expect("a valid frame")
                .expect("the connection stays open");
            if let Some(e) = batch.closed {
                let closed = Closed {
                    code: Code::from_i32(e.code),
                    message: e.message,
                };
                let end = self.read.read_frame().await.expect("a clean end");
                assert!(end.is_none(), "the node closes after its closing frame");
                return Err(closed);
            }
            out.extend(
                batch
                    .results
                    .into_iter()
                    .map(|r| (r.id, r.result.expect("set"))),
            );
        }
        out.sort_by_key(|(id, _)| *id);
        Ok((out, frames))
    }
}

fn op(id: u64, keyspace: &str, op: Op) -> PipeOp {
    PipeOp {
        id,
        keyspace: keyspace.into(),
        op: Some(op),
    }
}

fn write(key: &[u8], value: &str) -> Op {
    Op::Write(PipeWrite {
        mutations: vec![ReplicaMutation {
            key: key.to_vec().into(),
            cell: Some(Cell {
                timestamp: 1 << 40,
                content: Some(cell::Content::Value(value.as_bytes().to_vec().into())),
                ..Default::default()
            }),
        }],
    })
}

fn error_code(answer: &Answer) -> Option<Code> {
    match answer {
        Answer::Error(e) => Some(Code::from_i32(e.code)),
        _ => None,
    }
}

async fn one_node_with_keyspace() -> (Cluster, Node, KeyValueClient<Channel>) {
    let cluster = Cluster::up(1, 1).await;
    let node = cluster.nodes()[0].clone();
    let mut c = cluster.client(&node.id).await;
    create_keyspace(&mut c, &[("dc1", 1)]).await;
    (cluster, node, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_answers_each_operation_on_its_own_and_refuses_strangers() {
    let (_cluster, node, mut c) = one_node_with_keyspace().await;
    let address = &node.internode_address;

    let mut stranger = Pipe::open(address, "another-cluster", &node.id, vec![]).await;
    let refused = stranger
        .answers(1)
        .await
        .expect_err("another cluster is refused");
    refused.assert_is(Code::FailedPrecondition, "another-cluster");
    let mut misdirected = Pipe::open(address, "kv", "dc9-n9", vec![]).await;
    let refused = misdirected
        .answers(1)
        .await
        .expect_err("another target is refused");
    refused.assert_is(Code::FailedPrecondition, "dc9-n9");

    let writes = vec![
        op(1, KS, write(b"good", "v1")),
        op(2, KS, write(b"", "empty key")),
        op(3, "no_such_keyspace", write(b"k", "v")),
        PipeOp {
            id: 4,
            keyspace: KS.into(),
            op: None,
        },
        op(5, KS, write(b"also-good", "v5")),
    ];
    let mut pipe = Pipe::open(address, "kv", &node.id, writes).await;
    let answers = pipe.answers(5).await.expect("answers");
    assert!(matches!(answers[0].1, Answer::Written(_)), "{answers:?}");
    assert_eq!(error_code(&answers[1].1), Some(Code::InvalidArgument));
    assert!(error_code(&answers[2].1).is_some(), "{answers:?}");
    assert_eq!(error_code(&answers[3].1), Some(Code::InvalidArgument));
    assert!(matches!(answers[4].1, Answer::Written(_)), "{answers:?}");
    let got = get(&mut c, "good", ConsistencyLevel::One).await;
    assert_eq!(got.expect("read").as_deref(), Some("v1"));

    let reads = vec![
        op(6, KS, Op::ReadKey(b"also-good".to_vec().into())),
        op(7, KS, Op::DigestKey(b"also-good".to_vec().into())),
        op(8, KS, Op::DigestKey(b"never-written".to_vec().into())),
    ];
    pipe.send(PipeRequest {
        ops: reads,
        ..Default::default()
    })
    .await;
    let answers = pipe.answers(3).await.expect("answers");
    let Answer::Read(read) = &answers[0].1 else {
        panic!("{answers:?}")
    };
    let content = read.cell.as_ref().and_then(|c| c.content.clone());
    assert_eq!(content, Some(cell::Content::Value(b"v5".to_vec().into())));
    let (Answer::Digest(held), Answer::Digest(none)) = (&answers[1].1, &answers[2].1) else {
        panic!("{answers:?}")
    };
    assert_ne!(held, none, "a held cell and no cell digest differently");

    let too_many = (0..4097)
        .map(|i| op(100 + i, KS, write(b"x", "y")))
        .collect();
    pipe.send(PipeRequest {
        ops: too_many,
        ..Default::default()
    })
    .await;
    let refused = pipe
        .answers(1)
        .await
        .expect_err("an oversized batch ends the pipe");
    refused.assert_is(Code::InvalidArgument, "4097");
    let got = get(&mut c, "x", ConsistencyLevel::One).await;
    assert_eq!(
        got.expect("read"),
        None,
        "no operation of a refused batch is applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_frame_or_preface_ends_the_pipe_with_the_reason_and_writes_nothing() {
    let (_cluster, node, mut c) = one_node_with_keyspace().await;
    let address = &node.internode_address;

    let mut pipe = Pipe::open(address, "kv", &node.id, vec![]).await;
    pipe.answers(0).await.expect("the hello is accepted");
    let mut frame = Vec::new();
    let request = PipeRequest {
        ops: vec![op(1, KS, write(b"flipped", "v"))],
        ..Default::default()
    };
    encode_frame(&request, false, &mut frame);
    let last = frame.len() - 1;
    frame[last] ^= 0x01;
    pipe.write.write_all(&frame).await.expect("sent");
    let refused = pipe
        .answers(1)
        .await
        .expect_err("a corrupt frame ends the pipe");
    refused.assert_is(Code::InvalidArgument, "checksum");
    assert!(frame.len() > FRAME_HEADER_BYTES);
    let got = get(&mut c, "flipped", ConsistencyLevel::One).await;
    assert_eq!(
        got.expect("read"),
        None,
        "nothing of a corrupt frame is applied"
    );

    let mut future = PIPE.encode();
    future[6] = 9;
    let mut pipe = Pipe::connect(address, future).await;
    let refused = pipe
        .answers(1)
        .await
        .expect_err("an unknown version is refused");
    refused.assert_is(Code::InvalidArgument, "version 9");

    let session = Preface {
        protocol: Protocol::Session,
        compress: false,
    };
    let mut pipe = Pipe::connect(address, session.encode()).await;
    let refused = pipe
        .answers(1)
        .await
        .expect_err("a client session on the internode port is refused");
    refused.assert_is(
        Code::InvalidArgument,
        "a client session where an internode pipe was expected",
    );

    let mut grpc = InternodeClient::connect(format!("http://{address}"))
        .await
        .expect("gRPC on the port pipes share");
    let refused = grpc
        .replica_scan(ipb::ReplicaScanRequest::default())
        .await
        .expect_err("a scan without a sender is refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_larger_than_a_frame_together_come_back_in_several_frames() {
    let (_cluster, node, _c) = one_node_with_keyspace().await;
    let mut pipe = Pipe::open(&node.internode_address, "kv", &node.id, vec![]).await;
    pipe.answers(0).await.expect("the hello is accepted");
    let value = "v".repeat(11 << 20);
    for id in 1..=3 {
        let key = format!("big-{id}");
        pipe.send(PipeRequest {
            ops: vec![op(id, KS, write(key.as_bytes(), &value))],
            ..Default::default()
        })
        .await;
        let written = pipe.answers(1).await.expect("written");
        assert!(matches!(written[0].1, Answer::Written(_)), "{written:?}");
    }
    let reads = (1..=3)
        .map(|id| {
            op(
                10 + id,
                KS,
                Op::ReadKey(format!("big-{id}").into_bytes().into()),
            )
        })
        .collect();
    pipe.send(PipeRequest {
        ops: reads,
        ..Default::default()
    })
    .await;
    let (answers, frames) = pipe.answers_and_frames(3).await.expect("33 MiB of answers");
    assert!(frames >= 2, "33 MiB cannot fit one frame, came in {frames}");
    for (id, answer) in answers {
        let Answer::Read(read) = answer else {
            panic!("{id}: {answer:?}")
        };
        let content = read.cell.and_then(|c| c.content);
        let Some(cell::Content::Value(v)) = content else {
            panic!("{id}: no value")
        };
        assert_eq!(v.len(), value.len(), "answer {id}");
    }
}

fn forward(key: &[u8], value: &str, targets: &[&str], timeout_ms: u32) -> Op {
    let Op::Write(w) = write(key, value) else {
        unreachable!("write builds a write")
    };
    Op::Forward(ipb::PipeForward {
        mutations: w.mutations,
        targets: targets.iter().map(|t| t.to_string()).collect(),
        timeout_ms,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_is_answered_per_target_as_each_answers_and_a_bad_one_per_reserved_id() {
    let cluster = Cluster::up(1, 3).await;
    let mut c = cluster.client("dc1-n1").await;
    create_keyspace(&mut c, &[("dc1", 3)]).await;
    let forwarder = cluster.node("dc1-n1");
    let mut pipe = Pipe::open(&forwarder.internode_address, "kv", "dc1-n1", vec![]).await;
    pipe.answers(0).await.expect("the hello is accepted");

    let paused = cluster.pause("dc1-n3");
    let targets = ["dc1-n1", "dc1-n2", "dc1-n3", "dc9-n9"];
    // Long enough that dc1-n2 answers before it on a loaded machine: at 1 s, with builds
    // running beside the suite, dc1-n2's answer once came after dc1-n3's deadline.
    pipe.send(PipeRequest {
        ops: vec![op(10, KS, forward(b"fwd", "v", &targets, 3_000))],
        ..Default::default()
    })
    .await;
    let mut frames = Vec::new();
    while frames.iter().map(Vec::len).sum::<usize>() < targets.len() {
        let next = tokio::time::timeout(TIMEOUT, pipe.read.read_message()).await;
        let batch: ipb::PipeResponse = next.expect("in time").expect("valid").expect("open");
        let answers = batch.results.into_iter();
        frames.push(
            answers
                .map(|r| (r.id, r.result.expect("set")))
                .collect::<Vec<_>>(),
        );
    }
    drop(paused);
    let last = frames.pop().expect("answers");
    assert_eq!(
        last.len(),
        1,
        "the paused target's answer comes alone, last: {last:?}"
    );
    assert_eq!(
        (last[0].0, error_code(&last[0].1)),
        (12, Some(Code::DeadlineExceeded))
    );
    let mut earlier: Vec<_> = frames.into_iter().flatten().collect();
    earlier.sort_by_key(|(id, _)| *id);
    assert!(
        matches!(earlier[0], (10, Answer::Written(_))),
        "{earlier:?}"
    );
    assert!(
        matches!(earlier[1], (11, Answer::Written(_))),
        "{earlier:?}"
    );
    assert_eq!(
        (earlier[2].0, error_code(&earlier[2].1)),
        (13, Some(Code::InvalidArgument))
    );
    let held = replica_values(&mut c, "fwd").await;
    assert_eq!(held.get("dc1-n1"), Some(&Some("v".into())), "{held:?}");
    assert_eq!(held.get("dc1-n2"), Some(&Some("v".into())), "{held:?}");

    let too_many: Vec<String> = (0..33).map(|i| format!("n{i}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    pipe.send(PipeRequest {
        ops: vec![
            op(20, KS, forward(b"twice", "v", &["dc1-n2", "dc1-n2"], 1_000)),
            op(30, KS, forward(b"many", "v", &too_many, 1_000)),
        ],
        ..Default::default()
    })
    .await;
    let answers = pipe.answers(2 + 32).await.expect("answers");
    let ids: Vec<u64> = answers.iter().map(|(id, _)| *id).collect();
    let expected: Vec<u64> = (20..22).chain(30..62).collect();
    assert_eq!(ids, expected, "one answer per id the sender reserved");
    for (id, answer) in &answers {
        assert_eq!(
            error_code(answer),
            Some(Code::InvalidArgument),
            "{id}: {answer:?}"
        );
    }
    for key in ["twice", "many"] {
        let held = replica_values(&mut c, key).await;
        assert!(held.values().all(Option::is_none), "{key}: {held:?}");
    }
}
