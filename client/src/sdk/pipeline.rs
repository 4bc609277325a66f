//! Pipeline sessions: one long-lived `Pipeline` stream per node carries the single-key calls
//! of every task, each message holding whatever was queued when it was sent. This saves the
//! HTTP/2 work of one call per op (a stream, HEADERS, hpack, trailers) on both ends.
//!
//! Every op waits in `pending` under an id until its result comes back. When the stream fails
//! or ends, every op still waiting fails with the stream's status, which the caller classifies
//! exactly as the status of a unary call; the next op opens a new session.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};

use prost::Message;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::transport::Channel;
use tonic::Status;

use crate::pb::v1::key_value_client::KeyValueClient;
use crate::pb::v1::{self as pb, pipeline_op, pipeline_result};
use crate::{MAX_MESSAGE_BYTES, PIPELINE_OPS_MAX};

/// Ops of one session queued or awaiting their results; callers beyond it wait for a slot.
const SESSION_OPS_MAX: usize = 4096;

/// Encoded ops per request: one op may hold a 16 MiB value, so this leaves room under the
/// message limit for the framing of up to PIPELINE_OPS_MAX ops.
const REQUEST_BYTES_MAX: usize = MAX_MESSAGE_BYTES - 1024 * 1024;

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
}

impl Session {
    /// Opens a session on `client`'s channel; the stream starts with the first op.
    pub(crate) fn open(mut client: KeyValueClient<Channel>) -> Session {
        let (ops, queue) = mpsc::channel(SESSION_OPS_MAX);
        let state = Arc::new(State {
            pending: Mutex::new(Some(HashMap::new())),
            end: OnceLock::new(),
            slots: Arc::new(Semaphore::new(SESSION_OPS_MAX)),
        });
        let reader = state.clone();
        tokio::spawn(async move {
            let status = match client.pipeline(Requests { queue, carry: None }).await {
                Ok(response) => reader.read(response.into_inner()).await,
                Err(status) => status,
            };
            reader.fail_all(status);
        });
        Session {
            ops,
            state,
            next_id: AtomicU64::new(0),
        }
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
        let mut bytes = first.encoded_len();
        let mut ops = vec![first];
        while ops.len() < PIPELINE_OPS_MAX {
            let Ok(next) = this.queue.try_recv() else {
                break;
            };
            let len = next.encoded_len();
            if bytes + len > REQUEST_BYTES_MAX {
                this.carry = Some(next);
                break;
            }
            bytes += len;
            ops.push(next);
        }
        Poll::Ready(Some(pb::PipelineRequest { ops }))
    }
}
