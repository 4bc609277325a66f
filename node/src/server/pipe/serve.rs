//! The serving end of pipes, on the internode port beside gRPC (see `server::accept`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use client::frame::{
    encode_frame, write_out, FrameError, FrameReader, Preface, Protocol, WRITE_BUFFER_BYTES_KEPT,
};
use client::pb::internode::v1 as ipb;
use client::KvError;
use foldhash::HashMap;
use futures_util::future::Either;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch, Semaphore};
use tonic::Code;

use super::{PIPE_BATCH_BYTES_SOFT_MAX, PIPE_BATCH_OPS_MAX, PIPE_FORWARD_TARGETS_MAX};
use crate::cluster::digest;
use crate::lsm::Mutation;
use crate::server::accept::Framed;
use crate::server::convert::{cell_to_pb, check_key};
use crate::server::internode_service::{check_sender, check_target};
use crate::server::replica::{from_pb_mutations, Target, Timer};
use crate::server::Node;

/// Response frames a pipe's serving end queues for its connection at most.
const PIPE_RESPONSES_QUEUED: usize = 64;
/// Request frames a pipe's serving end works on at once; past it, it stops reading, and TCP
/// flow control pushes back on the sender.
const PIPE_BATCHES_IN_FLIGHT: usize = 32;

/// Serves one pipe connection until the peer closes it, it breaks the protocol, or this node
/// stops; the operations already started are still answered.
pub async fn serve_connection(node: Arc<Node>, connection: Framed, stop: watch::Receiver<bool>) {
    let Framed {
        reader,
        write,
        preface,
    } = connection;
    let compress = preface.as_ref().is_ok_and(|p| p.compress);
    let (tx, rx) = mpsc::channel(PIPE_RESPONSES_QUEUED);
    tokio::spawn(write_responses(write, rx, compress));
    match preface {
        Ok(_) => read_requests(node, reader, tx, stop).await,
        Err(e) => {
            let _ = tx.send(closing(Code::InvalidArgument, e.to_string())).await;
        }
    }
}

/// The last frame of a pipe the node ends, saying why.
fn closing(code: Code, message: String) -> ipb::PipeResponse {
    ipb::PipeResponse {
        results: Vec::new(),
        closed: Some(client::pb::v1::Error {
            code: code as i32,
            message,
            ..Default::default()
        }),
    }
}

async fn read_requests(
    node: Arc<Node>,
    mut reader: FrameReader<OwnedReadHalf>,
    tx: mpsc::Sender<ipb::PipeResponse>,
    mut stop: watch::Receiver<bool>,
) {
    let batches = Arc::new(Semaphore::new(PIPE_BATCHES_IN_FLIGHT));
    let mut first = true;
    loop {
        let message = tokio::select! {
            message = reader.read_message::<ipb::PipeRequest>() => message,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let request = match message {
            Ok(Some(request)) => request,
            Ok(None) | Err(FrameError::Io(_)) => return,
            Err(e) => {
                let _ = tx.send(closing(Code::InvalidArgument, e.to_string())).await;
                return;
            }
        };
        if let Err(refused) = check(&node, &request, std::mem::take(&mut first)) {
            let _ = tx.send(refused).await;
            return;
        }
        let Ok(slot) = batches.clone().acquire_owned().await else {
            return;
        };
        let (node, tx) = (node.clone(), tx.clone());
        tokio::spawn(async move {
            answer(&node, request.ops, &tx).await;
            drop(slot);
        });
    }
}

/// Who may send (checked on the first frame) and how much one frame may ask.
fn check(node: &Node, request: &ipb::PipeRequest, first: bool) -> Result<(), ipb::PipeResponse> {
    if first {
        check_sender(node, &request.sender)
            .and_then(|()| check_target(node, &request.target_node_id))
            .map_err(|status| closing(status.code(), status.message().to_owned()))?;
    }
    if request.ops.len() > PIPE_BATCH_OPS_MAX {
        let message = format!(
            "a pipe frame holds {} operations, more than {PIPE_BATCH_OPS_MAX}",
            request.ops.len()
        );
        return Err(closing(Code::InvalidArgument, message));
    }
    Ok(())
}

/// Writes the preface at once (a peer may wait for it), then every response as it is ready;
/// the responses ready together go out in one write. Ends after a closing frame or when every
/// sender is gone.
async fn write_responses(
    mut write: OwnedWriteHalf,
    mut rx: mpsc::Receiver<ipb::PipeResponse>,
    compress: bool,
) {
    if write
        .write_all(
            &Preface {
                protocol: Protocol::Pipe,
                compress,
            }
            .encode(),
        )
        .await
        .is_err()
    {
        return;
    }
    let mut buf = Vec::new();
    while let Some(response) = rx.recv().await {
        let mut last = response.closed.is_some();
        encode_response(response, compress, &mut buf);
        while !last && buf.len() < WRITE_BUFFER_BYTES_KEPT {
            let Ok(response) = rx.try_recv() else { break };
            last = response.closed.is_some();
            encode_response(response, compress, &mut buf);
        }
        if write_out(&mut write, &mut buf).await.is_err() || last {
            break;
        }
    }
    let _ = write.shutdown().await;
}

/// Encodes one batch's answers as frames of about [`PIPE_BATCH_BYTES_SOFT_MAX`] at most (one
/// answer alone may be larger, up to a value's size): a batch of reads of large values would
/// otherwise pass the frame limit.
fn encode_response(response: ipb::PipeResponse, compress: bool, out: &mut Vec<u8>) {
    let mut part = ipb::PipeResponse::default();
    let mut bytes = 0;
    for result in response.results {
        let result_bytes = result.encoded_len();
        if !part.results.is_empty() && bytes + result_bytes > PIPE_BATCH_BYTES_SOFT_MAX {
            encode_frame(&part, compress, out);
            part.results.clear();
            bytes = 0;
        }
        bytes += result_bytes;
        part.results.push(result);
    }
    part.closed = response.closed;
    encode_frame(&part, compress, out);
}

/// Runs one frame's operations and sends their answers: the frame's own in one response, and
/// the copies it forwards to other replicas as they come back, those that come back together
/// in one response.
async fn answer(node: &Arc<Node>, ops: Vec<ipb::PipeOp>, tx: &mpsc::Sender<ipb::PipeResponse>) {
    let Work { frame, relays } = Work::sort(node, ops);
    let relays = (relays.into_iter()).map(|r| Either::Right(relay(node, r).map(|a| vec![a])));
    let frame = run(node, frame);
    let mut pending: FuturesUnordered<_> =
        std::iter::once(Either::Left(frame)).chain(relays).collect();
    while let Some(mut results) = pending.next().await {
        while let Some(Some(more)) = pending.next().now_or_never() {
            results.extend(more);
        }
        let response = ipb::PipeResponse {
            results,
            closed: None,
        };
        if tx.send(response).await.is_err() {
            return;
        }
    }
}

/// One frame's operations, sorted by how they run.
#[derive(Default)]
struct Work {
    frame: Frame,
    /// Forwarded copies for other replicas.
    relays: Vec<Relay>,
}

/// What this node answers of a frame itself, together.
#[derive(Default)]
struct Frame {
    /// Answers known before anything runs: operations refused as malformed.
    answered: Vec<ipb::PipeResult>,
    /// (id, keyspace, user key, whether a digest is asked)
    reads: Vec<(u64, String, Bytes, bool)>,
    /// By keyspace: (id, mutations), forwarded copies for this node included.
    writes: HashMap<String, Vec<(u64, Vec<Mutation>)>>,
}

/// A forwarded write's copy for another replica, answered under its own id.
struct Relay {
    id: u64,
    keyspace: String,
    target: Target,
    muts: Arc<Vec<Mutation>>,
    deadline: Instant,
}

impl Work {
    fn sort(node: &Node, ops: Vec<ipb::PipeOp>) -> Work {
        let mut work = Work::default();
        let frame = &mut work.frame;
        for op in ops {
            let (id, keyspace) = (op.id, op.keyspace);
            match op.op {
                Some(ipb::pipe_op::Op::Write(w)) => match from_pb_mutations(w.mutations) {
                    Ok(muts) => frame.write(keyspace, id, muts),
                    Err(e) => frame.answered.push(error(id, e)),
                },
                Some(ipb::pipe_op::Op::ReadKey(key)) => {
                    frame.reads.push((id, keyspace, key, false))
                }
                Some(ipb::pipe_op::Op::DigestKey(key)) => {
                    frame.reads.push((id, keyspace, key, true))
                }
                Some(ipb::pipe_op::Op::Forward(f)) => {
                    work.relays.extend(frame.forward(node, id, keyspace, f))
                }
                None => {
                    (frame.answered).push(error(id, KvError::invalid_argument("op", "missing")))
                }
            }
        }
        work
    }
}

impl Frame {
    fn write(&mut self, keyspace: String, id: u64, muts: Vec<Mutation>) {
        self.writes.entry(keyspace).or_default().push((id, muts));
    }

    /// A forward's copies: this node's joins the frame's writes, the others are returned as
    /// relays. A forward refused whole is refused under each id its sender reserved (the first
    /// 32).
    fn forward(
        &mut self,
        node: &Node,
        id: u64,
        keyspace: String,
        f: ipb::PipeForward,
    ) -> Vec<Relay> {
        let ids =
            (0..f.targets.len().min(PIPE_FORWARD_TARGETS_MAX)).map(|i| id.wrapping_add(i as u64));
        let muts = match check_forward(&f.targets).and_then(|()| from_pb_mutations(f.mutations)) {
            Ok(muts) => Arc::new(muts),
            Err(e) => {
                self.answered.extend(ids.map(|id| error(id, e.clone())));
                return Vec::new();
            }
        };
        let deadline = Instant::now() + Duration::from_millis(f.timeout_ms.into());
        let view = node.members.view();
        let mut relays = Vec::new();
        for (id, target) in ids.zip(f.targets) {
            if target == node.me.0 {
                self.write(keyspace.clone(), id, muts.to_vec());
                continue;
            }
            let Some(member) = view.member(&target) else {
                let e = KvError::invalid_argument("targets", format!("no node {target} is known"));
                self.answered.push(error(id, e));
                continue;
            };
            relays.push(Relay {
                id,
                keyspace: keyspace.clone(),
                target: Target::new(
                    target,
                    member.dc.clone(),
                    member.addresses.internode.clone(),
                ),
                muts: muts.clone(),
                deadline,
            });
        }
        relays
    }
}

/// A forward names 1 to [`PIPE_FORWARD_TARGETS_MAX`] targets, each once: the answers' ids are
/// derived from the targets' places, so a repeat would answer one id twice.
fn check_forward(targets: &[String]) -> Result<(), KvError> {
    if targets.is_empty() || targets.len() > PIPE_FORWARD_TARGETS_MAX {
        let n = targets.len();
        let e = format!("{n} targets, outside 1..={PIPE_FORWARD_TARGETS_MAX}");
        return Err(KvError::invalid_argument("targets", e));
    }
    match (1..targets.len()).find(|&i| targets[..i].contains(&targets[i])) {
        Some(i) => Err(KvError::invalid_argument(
            format!("targets[{i}]"),
            format!("{} is named twice", targets[i]),
        )),
        None => Ok(()),
    }
}

async fn relay(node: &Arc<Node>, r: Relay) -> ipb::PipeResult {
    match node
        .write_replica(&r.target, &r.keyspace, r.muts, r.deadline, Timer::Own)
        .await
    {
        Ok(()) => written(r.id),
        Err(e) => error(r.id, e),
    }
}

/// Runs the frame's own operations: its writes to one keyspace as one engine batch, its reads
/// concurrently (inline when memory answers).
async fn run(node: &Arc<Node>, frame: Frame) -> Vec<ipb::PipeResult> {
    let Frame {
        answered: mut results,
        reads,
        writes,
    } = frame;
    let reads = reads
        .into_iter()
        .map(|(id, keyspace, key, digest)| read(node, id, keyspace, key, digest));
    let (read_results, write_results) = tokio::join!(
        futures_util::future::join_all(reads),
        futures_util::future::join_all(
            (writes.into_iter()).map(|(keyspace, ops)| write(node, keyspace, ops))
        ),
    );
    results.extend(read_results);
    results.extend(write_results.into_iter().flatten());
    results
}

async fn read(
    node: &Arc<Node>,
    id: u64,
    keyspace: String,
    key: Bytes,
    want_digest: bool,
) -> ipb::PipeResult {
    if let Err(e) = check_key(&key, "read_key") {
        return error(id, e);
    }
    let result = match node.read_local(&keyspace, &key).await {
        Ok(cell) if want_digest => ipb::pipe_result::Result::Digest(digest(cell.as_ref())),
        Ok(cell) => ipb::pipe_result::Result::Read(ipb::PipeCell {
            cell: cell.as_ref().map(cell_to_pb),
        }),
        Err(e) => return error(id, e),
    };
    ipb::PipeResult {
        id,
        result: Some(result),
    }
}

/// Applies every write of one keyspace together ([`Node::apply_together`]).
async fn write(
    node: &Arc<Node>,
    keyspace: String,
    ops: Vec<(u64, Vec<Mutation>)>,
) -> Vec<ipb::PipeResult> {
    let (ids, writes): (Vec<u64>, Vec<_>) = ops.into_iter().unzip();
    let results = node.apply_together(&keyspace, writes).await;
    (ids.into_iter().zip(results))
        .map(|(id, result)| match result {
            Ok(()) => written(id),
            Err(e) => error(id, e),
        })
        .collect()
}

fn written(id: u64) -> ipb::PipeResult {
    ipb::PipeResult {
        id,
        result: Some(ipb::pipe_result::Result::Written(ipb::PipeWritten {})),
    }
}

fn error(id: u64, e: impl Into<client::pb::v1::Error>) -> ipb::PipeResult {
    ipb::PipeResult {
        id,
        result: Some(ipb::pipe_result::Result::Error(e.into())),
    }
}
