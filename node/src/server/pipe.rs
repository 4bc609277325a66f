//! Pipes: one long-lived internode stream per pair of nodes carrying a coordinator's replica
//! operations in batches (`Pipe` in the internode protocol). At the sending end callers await
//! one operation each; a batching stream sends every operation queued at that moment as one
//! message, and a reader task routes each result back by id. The serving end runs each
//! message's operations together and answers them in one message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use client::pb::internode::v1 as ipb;
use futures_util::Stream;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::convert::{cell_to_pb, check_key};
use super::internode_service::{check_sender, check_target};
use super::peers::Internode;
use super::replica::{from_pb_mutations, ReplicaError};
use super::Node;
use crate::cluster::digest;
use crate::lsm::Mutation;
use client::KvError;

/// Operations one pipe holds unanswered at most; a caller past it waits for a slot, so a slow
/// peer pushes back on its coordinators instead of growing a queue.
pub const PIPE_PENDING_OPS_MAX: usize = 8192;
/// Most operations per message, as the protocol allows.
pub const PIPE_BATCH_OPS_MAX: usize = 4096;
/// A batch stops growing past this size; one operation may exceed it alone (up to the
/// message limit), so large writes are not split.
const PIPE_BATCH_BYTES_SOFT_MAX: usize = 1024 * 1024;

type Answer = Result<ipb::pipe_result::Result, ReplicaError>;

#[derive(Default)]
struct State {
    pending: HashMap<u64, oneshot::Sender<Answer>>,
    /// Why the stream ended; once set, no operation is accepted.
    closed: Option<String>,
}

pub struct Pipe {
    queue: mpsc::Sender<ipb::PipeOp>,
    state: Arc<Mutex<State>>,
    next_id: AtomicU64,
    slots: Semaphore,
}

/// Removes a caller's pending entry when it stops waiting (answered, timed out or dropped), so
/// abandoned operations do not hold slots until the peer answers.
struct Forget<'a> {
    state: &'a Mutex<State>,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.state.lock().pending.remove(&self.id);
    }
}

impl Pipe {
    /// Opens a pipe to the node `target_node_id` through `client`. Returns at once; operations
    /// queue until the stream is up.
    pub fn open(
        mut client: Internode,
        sender: Option<ipb::Sender>,
        target_node_id: String,
    ) -> Pipe {
        let (queue, rx) = mpsc::channel(PIPE_PENDING_OPS_MAX);
        let state = Arc::new(Mutex::new(State::default()));
        let requests = batches(rx, sender, target_node_id);
        let reader_state = state.clone();
        tokio::spawn(async move {
            let reason = match client.pipe(requests).await {
                Ok(response) => read_results(response.into_inner(), &reader_state).await,
                Err(status) => describe(&status),
            };
            close(&reader_state, reason);
        });
        Pipe {
            queue,
            state,
            next_id: AtomicU64::new(0),
            slots: Semaphore::new(PIPE_PENDING_OPS_MAX),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().closed.is_some()
    }

    /// Sends one operation and waits for its result. The caller bounds the wait.
    pub async fn call(&self, keyspace: &str, op: ipb::pipe_op::Op) -> Answer {
        let _slot = (self.slots.acquire().await)
            .map_err(|_| ReplicaError::Failed("the pipe is closed".into()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.state.lock();
            if let Some(reason) = &state.closed {
                return Err(ReplicaError::Failed(reason.clone()));
            }
            state.pending.insert(id, tx);
        }
        let _forget = Forget {
            state: &self.state,
            id,
        };
        let op = ipb::PipeOp {
            id,
            keyspace: keyspace.to_owned(),
            op: Some(op),
        };
        if self.queue.send(op).await.is_err() {
            return Err(ReplicaError::Failed("the pipe is closed".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(ReplicaError::Failed("the pipe closed".into())))
    }
}

/// Every operation queued when the stream asks for its next message, as one message; the first
/// message says who sends and for whom.
fn batches(
    rx: mpsc::Receiver<ipb::PipeOp>,
    sender: Option<ipb::Sender>,
    target_node_id: String,
) -> impl Stream<Item = ipb::PipeRequest> {
    let first = Some((sender, target_node_id));
    futures_util::stream::unfold((rx, first), |(mut rx, first)| async move {
        let op = rx.recv().await?;
        let mut bytes = op.encoded_len();
        let mut ops = vec![op];
        while ops.len() < PIPE_BATCH_OPS_MAX && bytes < PIPE_BATCH_BYTES_SOFT_MAX {
            let Ok(op) = rx.try_recv() else { break };
            bytes += op.encoded_len();
            ops.push(op);
        }
        let (sender, target_node_id) = first.unwrap_or_default();
        let request = ipb::PipeRequest {
            sender,
            target_node_id,
            ops,
        };
        Some((request, (rx, None)))
    })
}

/// Routes results to their callers until the stream ends; returns why it ended.
async fn read_results(
    mut stream: tonic::Streaming<ipb::PipeResponse>,
    state: &Mutex<State>,
) -> String {
    loop {
        let batch = match stream.message().await {
            Ok(Some(batch)) => batch,
            Ok(None) => return "the peer closed the pipe".into(),
            Err(status) => return describe(&status),
        };
        let mut state = state.lock();
        for result in batch.results {
            let Some(tx) = state.pending.remove(&result.id) else {
                continue;
            };
            let answer = result
                .result
                .ok_or_else(|| ReplicaError::Failed("a pipe result without outcome".into()))
                .and_then(|r| match r {
                    ipb::pipe_result::Result::Error(e)
                        if e.code == tonic::Code::DeadlineExceeded as i32 =>
                    {
                        Err(ReplicaError::Timeout)
                    }
                    ipb::pipe_result::Result::Error(e) => Err(ReplicaError::Failed(e.message)),
                    ok => Ok(ok),
                });
            let _ = tx.send(answer);
        }
    }
}

/// Fails every waiting operation and refuses new ones.
fn close(state: &Mutex<State>, reason: String) {
    let mut state = state.lock();
    for (_, tx) in state.pending.drain() {
        let _ = tx.send(Err(ReplicaError::Failed(reason.clone())));
    }
    state.closed = Some(reason);
}

fn describe(status: &tonic::Status) -> String {
    format!("pipe: {:?}: {}", status.code(), status.message())
}

/// Response messages a pipe's serving end queues for the stream at most.
pub const PIPE_RESPONSES_QUEUED: usize = 64;
/// Request messages a pipe's serving end works on at once; past it, it stops reading, and
/// HTTP/2 flow control pushes back on the sender.
const PIPE_BATCHES_IN_FLIGHT: usize = 32;

/// The serving end of a pipe: checks who sends, then runs each message's operations as one
/// task and answers them in one message. Ends when the peer closes the stream or this node
/// stops; the operations already started are still answered.
pub async fn serve(
    node: Arc<Node>,
    mut inbound: tonic::Streaming<ipb::PipeRequest>,
    tx: mpsc::Sender<Result<ipb::PipeResponse, tonic::Status>>,
    mut stop: watch::Receiver<bool>,
) {
    let batches = Arc::new(Semaphore::new(PIPE_BATCHES_IN_FLIGHT));
    let mut first = true;
    loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let Ok(Some(request)) = message else {
            return;
        };
        if std::mem::take(&mut first) {
            let checked = check_sender(&node, &request.sender)
                .and_then(|()| check_target(&node, &request.target_node_id));
            if let Err(status) = checked {
                let _ = tx.send(Err(status)).await;
                return;
            }
        }
        if request.ops.len() > PIPE_BATCH_OPS_MAX {
            let message = format!(
                "a pipe message holds {} operations, more than {PIPE_BATCH_OPS_MAX}",
                request.ops.len()
            );
            let _ = tx.send(Err(tonic::Status::invalid_argument(message))).await;
            return;
        }
        let Ok(slot) = batches.clone().acquire_owned().await else {
            return;
        };
        let (node, tx) = (node.clone(), tx.clone());
        tokio::spawn(async move {
            let results = run(&node, request.ops).await;
            let _ = tx.send(Ok(ipb::PipeResponse { results })).await;
            drop(slot);
        });
    }
}

/// Runs one message's operations: its writes to one keyspace as one engine batch, its reads
/// concurrently (inline when memory answers).
async fn run(node: &Arc<Node>, ops: Vec<ipb::PipeOp>) -> Vec<ipb::PipeResult> {
    let mut results = Vec::with_capacity(ops.len());
    let mut writes: HashMap<String, Vec<(u64, Vec<Mutation>)>> = HashMap::new();
    let mut reads = Vec::new();
    for op in ops {
        match op.op {
            Some(ipb::pipe_op::Op::Write(w)) => match from_pb_mutations(w.mutations) {
                Ok(muts) => writes.entry(op.keyspace).or_default().push((op.id, muts)),
                Err(e) => results.push(error(op.id, e)),
            },
            Some(ipb::pipe_op::Op::ReadKey(key)) => reads.push((op.id, op.keyspace, key, false)),
            Some(ipb::pipe_op::Op::DigestKey(key)) => reads.push((op.id, op.keyspace, key, true)),
            None => results.push(error(op.id, KvError::invalid_argument("op", "missing"))),
        }
    }
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
    key: bytes::Bytes,
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

/// Applies every write of one keyspace as one batch; if the batch fails, each write alone, so
/// one bad write does not fail the others.
async fn write(
    node: &Arc<Node>,
    keyspace: String,
    ops: Vec<(u64, Vec<Mutation>)>,
) -> Vec<ipb::PipeResult> {
    let written = |id| ipb::PipeResult {
        id,
        result: Some(ipb::pipe_result::Result::Written(ipb::PipeWritten {})),
    };
    if ops.len() > 1 {
        let all: Vec<Mutation> = ops.iter().flat_map(|(_, m)| m.iter().cloned()).collect();
        if node.apply_local(&keyspace, all).await.is_ok() {
            return ops.into_iter().map(|(id, _)| written(id)).collect();
        }
    }
    let mut results = Vec::with_capacity(ops.len());
    for (id, muts) in ops {
        results.push(match node.apply_local(&keyspace, muts).await {
            Ok(()) => written(id),
            Err(e) => error(id, e),
        });
    }
    results
}

fn error(id: u64, e: impl Into<client::pb::v1::Error>) -> ipb::PipeResult {
    ipb::PipeResult {
        id,
        result: Some(ipb::pipe_result::Result::Error(e.into())),
    }
}
