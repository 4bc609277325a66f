//! Pipeline sessions: one long-lived session per node carries the single-key calls of every
//! task, each message holding whatever was queued when it was sent. This saves the HTTP/2 work
//! of one call per op (a stream, HEADERS, hpack, trailers) on both ends. A session is framed
//! (the messages in `crate::frame`'s frames on a TCP connection of its own, without HTTP/2 at
//! all) or, where HTTP/2 must be kept (a gRPC proxy between client and node, a node that does
//! not serve framed sessions), the `Pipeline` gRPC stream.
//!
//! Every op waits in `pending` under an id until its result comes back. When the stream fails
//! or ends, every op still waiting fails with the stream's status, which the caller classifies
//! exactly as the status of a unary call; the next op opens a new session.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::Status;

use crate::error::KvError;
use crate::frame::{
    encode_frame, write_out, FrameError, FrameReader, Preface, Protocol, WRITE_BUFFER_BYTES_KEPT,
};
use crate::pb::v1::key_value_client::KeyValueClient;
use crate::pb::v1::{self as pb, pipeline_op, pipeline_result};
use crate::{MAX_MESSAGE_BYTES, PIPELINE_OPS_MAX};

/// Ops of one session queued or awaiting their results; callers beyond it wait for a slot.
const SESSION_OPS_MAX: usize = 4096;

/// Encoded ops per request: one op may hold a 16 MiB value, so this leaves room under the
/// message limit for the framing of up to PIPELINE_OPS_MAX ops.
const REQUEST_BYTES_MAX: usize = MAX_MESSAGE_BYTES - 1024 * 1024;

/// How a session reaches its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Framed, on a TCP connection of its own to the node's client port.
    Framed,
    /// The `Pipeline` gRPC stream, on one of the node's HTTP/2 channels.
    Grpc,
}

/// What the node answered to one op.
pub(crate) struct Answer {
    /// The op's result (`None` when the node sent one without a case, which is malformed), or
    /// the status that ended the session before it came.
    pub result: Result<Option<pipeline_result::Result>, Status>,
    /// The node's ring epoch, when the result came from the node.
    pub epoch: Option<u64>,
}

impl Answer {
    fn failed(status: Status) -> Answer {
        Answer {
            result: Err(status),
            epoch: None,
        }
    }
}

struct Waiter {
    reply: oneshot::Sender<Answer>,
    /// Held until the result arrives, even when the caller gave up waiting.
    _slot: OwnedSemaphorePermit,
}

/// What the session's callers and its reader share.
struct State {
    /// Ops sent or queued, by id; `None` once the session has ended, so no op can wait on a
    /// session that will never answer.
    pending: Mutex<Option<HashMap<u64, Waiter>>>,
    /// Why the session ended, for ops that come after.
    end: OnceLock<Status>,
    slots: Arc<Semaphore>,
}

/// One node's open session.
pub(crate) struct Session {
    ops: mpsc::Sender<pb::PipelineOp>,
    state: Arc<State>,
    next_id: AtomicU64,
    transport: Transport,
}

impl Session {
    /// Opens a gRPC session on `client`'s channel; the stream starts with the first op.
    pub(crate) fn open_grpc(mut client: KeyValueClient<Channel>) -> Session {
        Session::open(Transport::Grpc, |requests, state| async move {
            match client.pipeline(requests).await {
                Ok(response) => state.read(response.into_inner()).await,
                Err(status) => status,
            }
        })
    }

    /// Opens a framed session on a new connection to `address`.
    pub(crate) fn open_framed(address: String, connect_timeout: Duration) -> Session {
        Session::open(Transport::Framed, move |requests, state| async move {
            run_framed(&address, connect_timeout, requests, &state).await
        })
    }

    /// Spawns `run`, which carries the session's requests until it ends, and fails every op
    /// still waiting with the status it ends with.
    fn open<F, Fut>(transport: Transport, run: F) -> Session
    where
        F: FnOnce(Requests, Arc<State>) -> Fut,
        Fut: std::future::Future<Output = Status> + Send + 'static,
    {
        let (ops, queue) = mpsc::channel(SESSION_OPS_MAX);
        let state = Arc::new(State {
            pending: Mutex::new(Some(HashMap::new())),
            end: OnceLock::new(),
            slots: Arc::new(Semaphore::new(SESSION_OPS_MAX)),
        });
        let running = run(Requests { queue, carry: None }, state.clone());
        let reader = state.clone();
        tokio::spawn(async move { reader.fail_all(running.await) });
        Session {
            ops,
            state,
            next_id: AtomicU64::new(0),
            transport,
        }
    }

    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }

    /// Whether the session has ended; a new one must be opened then.
    pub(crate) fn ended(&self) -> bool {
        self.state.pending.lock().expect("not poisoned").is_none()
    }

    /// Sends one op and waits for its answer. Dropping the future drops the answer when it
    /// comes.
    pub(crate) async fn call(&self, op: pipeline_op::Op) -> Answer {
        let Ok(slot) = self.state.slots.clone().acquire_owned().await else {
            return Answer::failed(self.state.end_status());
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        {
            let mut pending = self.state.pending.lock().expect("not poisoned");
            let Some(pending) = pending.as_mut() else {
                return Answer::failed(self.state.end_status());
            };
            pending.insert(id, Waiter { reply, _slot: slot });
        }
        let op = pb::PipelineOp { id, op: Some(op) };
        // Never full: the queue holds as many ops as there are slots. Closed means the stream
        // is gone, and the reader fails every pending op, this one included.
        let _ = self.ops.try_send(op);
        answer
            .await
            .unwrap_or_else(|_| Answer::failed(self.state.end_status()))
    }
}

impl State {
    /// Hands each result to its op until the stream ends; answers the status it ended with.
    async fn read(&self, mut responses: tonic::Streaming<pb::PipelineResponse>) -> Status {
        loop {
            match responses.message().await {
                Ok(Some(response)) => self.deliver(response),
                Ok(None) => return Status::unavailable("the node ended the pipeline session"),
                Err(status) => return status,
            }
        }
    }

    fn deliver(&self, response: pb::PipelineResponse) {
        let mut pending = self.pending.lock().expect("not poisoned");
        let Some(pending) = pending.as_mut() else {
            return;
        };
        for result in response.results {
            let Some(waiter) = pending.remove(&result.id) else {
                continue;
            };
            // The caller may have timed out and gone: its answer is simply dropped.
            let _ = waiter.reply.send(Answer {
                result: Ok(result.result),
                epoch: Some(response.ring_epoch),
            });
        }
    }

    fn fail_all(&self, status: Status) {
        let _ = self.end.set(status.clone());
        self.slots.close();
        let pending = self.pending.lock().expect("not poisoned").take();
        for (_, waiter) in pending.into_iter().flatten() {
            let _ = waiter.reply.send(Answer::failed(status.clone()));
        }
    }

    fn end_status(&self) -> Status {
        (self.end.get().cloned())
            .unwrap_or_else(|| Status::unavailable("the pipeline session ended"))
    }
}

/// The request side of a session, polled by the connection's task: each message holds every op
/// queued at that moment.
struct Requests {
    queue: mpsc::Receiver<pb::PipelineOp>,
    /// An op that did not fit in the previous message.
    carry: Option<pb::PipelineOp>,
}

impl Stream for Requests {
    type Item = pb::PipelineRequest;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let first = match this.carry.take() {
            Some(op) => op,
            None => match ready!(this.queue.poll_recv(cx)) {
                Some(op) => op,
                // The session was dropped: closing our side lets the node finish and end.
                None => return Poll::Ready(None),
            },
        };
        Poll::Ready(Some(this.batch(first)))
    }
}

impl Requests {
    /// A request of the ops queued now, if any, without waiting.
    fn ready(&mut self) -> Option<pb::PipelineRequest> {
        let first = self.carry.take().or_else(|| self.queue.try_recv().ok())?;
        Some(self.batch(first))
    }

    /// `first` and every op queued behind it that fits.
    fn batch(&mut self, first: pb::PipelineOp) -> pb::PipelineRequest {
        let mut bytes = first.encoded_len();
        let mut ops = vec![first];
        while ops.len() < PIPELINE_OPS_MAX {
            let Ok(next) = self.queue.try_recv() else {
                break;
            };
            let len = next.encoded_len();
            if bytes + len > REQUEST_BYTES_MAX {
                self.carry = Some(next);
                break;
            }
            bytes += len;
            ops.push(next);
        }
        pb::PipelineRequest { ops }
    }
}

/// Carries a framed session on a new connection to `address` until either direction ends;
/// returns the status the session's ops fail with. A node that answers with anything but a
/// session preface (one that serves only gRPC there sends HTTP/2's SETTINGS) gets
/// UNIMPLEMENTED, so the caller can fall back to a gRPC session.
async fn run_framed(
    address: &str,
    connect_timeout: Duration,
    requests: Requests,
    state: &State,
) -> Status {
    let opened = tokio::time::timeout(connect_timeout, open_framed(address)).await;
    let ended = match opened {
        Ok(Ok((write, reader))) => tokio::select! {
            ended = write_requests(write, requests) => ended,
            ended = read_responses(reader, state) => ended,
        },
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let message = format!("connecting to {address}: no answer within {connect_timeout:?}");
            return Status::unavailable(message);
        }
    };
    ended.unwrap_or_else(|e| match e {
        FrameError::Magic { .. } => {
            Status::unimplemented(format!("{address} does not serve framed sessions: {e}"))
        }
        e => Status::unavailable(format!("session to {address}: {e}")),
    })
}

/// Connects and exchanges prefaces. No op goes out before the node's preface is in: a node that
/// speaks only gRPC there would close on the bytes after ours, and a reset can discard its
/// answer before it is read, which would look like a dead node instead of an old one.
async fn open_framed(
    address: &str,
) -> Result<(OwnedWriteHalf, FrameReader<OwnedReadHalf>), FrameError> {
    let stream = TcpStream::connect(address).await?;
    // Without it Nagle's algorithm meets delayed ACKs and small requests wait ~40 ms.
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let preface = Preface {
        protocol: Protocol::Session,
        compress: false,
    };
    write.write_all(&preface.encode()).await?;
    let mut reader = FrameReader::new(read);
    reader.read_preface(Protocol::Session).await?;
    Ok((write, reader))
}

/// Sends each batch of queued ops as one frame. When the session is dropped it closes its side
/// and waits, so the node's last answers are still read.
async fn write_requests(
    mut write: OwnedWriteHalf,
    mut requests: Requests,
) -> Result<Status, FrameError> {
    let mut buf = Vec::new();
    while let Some(request) = requests.next().await {
        encode_frame(&request, false, &mut buf);
        // The tasks that are ready to run may queue ops too: let them, and send theirs in the
        // same write (what HTTP/2's connection task did by running after the encoder).
        crate::frame::yield_to_ready_tasks().await;
        while let Some(request) = requests.ready() {
            encode_frame(&request, false, &mut buf);
            if buf.len() >= WRITE_BUFFER_BYTES_KEPT {
                break;
            }
        }
        write_out(&mut write, &mut buf).await?;
    }
    write.shutdown().await?;
    std::future::pending().await
}

/// Hands each result to its op until the node ends the session; answers the status it ended
/// with.
async fn read_responses(
    mut reader: FrameReader<OwnedReadHalf>,
    state: &State,
) -> Result<Status, FrameError> {
    while let Some(mut response) = reader.read_message::<pb::PipelineResponse>().await? {
        let closed = response.closed.take();
        state.deliver(response);
        if let Some(error) = closed {
            return Ok(KvError::from(error).into_status());
        }
    }
    Ok(Status::unavailable("the node ended the pipeline session"))
}
