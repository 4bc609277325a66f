//! Pipeline sessions, as a gRPC stream or framed (`session.rs`): single-key ops over one
//! stream. Each op runs in its own task
//! through the same handlers as the unary Get, Put and Delete, so validation, metrics and
//! timestamps cannot drift apart; results go back in one message per batch of whatever finished
//! meanwhile, which is what saves the per-call HTTP/2 work.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use client::pb::v1 as pb;
use client::{KvError, PIPELINE_OPS_MAX};
use futures_util::{Stream, StreamExt};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::mpsc::{self, OwnedPermit};
use tonic::Status;

use super::ClientService;
use crate::server::Node;

/// Ops of one session running or answered but not yet sent. At the bound the session stops
/// reading its stream, so flow control (HTTP/2's or TCP's) holds the client back rather than
/// the node buffering without end.
const SESSION_OPS_MAX: usize = 4096;

/// Encoded results per response. A single result may be a 16 MiB value, so this leaves room
/// under the message limit for the framing of up to PIPELINE_OPS_MAX results.
const RESPONSE_BYTES_MAX: usize = client::MAX_MESSAGE_BYTES - 1024 * 1024;

/// Ids of a session's ops that have not been answered yet, to refuse duplicates.
type Outstanding = Arc<Mutex<HashSet<u64>>>;

impl ClientService {
    /// Starts reading a session's ops and returns the stream of their results.
    pub(super) fn open_pipeline<S>(&self, requests: S) -> Responses
    where
        S: Stream<Item = Result<pb::PipelineRequest, Status>> + Send + Unpin + 'static,
    {
        let (results, receiver) = mpsc::channel(SESSION_OPS_MAX);
        let end = Arc::new(OnceLock::new());
        let service = Arc::new(self.clone());
        tokio::spawn(service.read_session(requests, results, end.clone()));
        Responses {
            node: self.node.clone(),
            results: receiver,
            carry: None,
            end,
            ended: false,
        }
    }

    /// Starts each op as it arrives, until the client closes its side, the stream fails, the
    /// node stops or the input breaks a rule. The response stream ends once every started op
    /// has answered (each holds a sender of `results`), with the status left in `end`.
    async fn read_session<S>(
        self: Arc<Self>,
        mut requests: S,
        results: mpsc::Sender<pb::PipelineResult>,
        end: Arc<OnceLock<Status>>,
    ) where
        S: Stream<Item = Result<pb::PipelineRequest, Status>> + Unpin,
    {
        let outstanding = Outstanding::default();
        let mut stop = self.stop.clone();
        loop {
            let message = tokio::select! {
                message = requests.next() => message,
                // A dropped sender means the server is gone too.
                _ = stop.wait_for(|stopped| *stopped) => {
                    let _ = end.set(Status::unavailable("the node is shutting down"));
                    return;
                }
            };
            let request = match message {
                Some(Ok(request)) => request,
                None => return,
                // Said back to the client where it can still hear (a framed session's bad
                // frame); a broken gRPC stream has nobody left to answer.
                Some(Err(status)) => {
                    let _ = end.set(status);
                    return;
                }
            };
            if let Err(e) = self.start_ops(request, &results, &outstanding).await {
                let _ = end.set(self.failed(e).into_status());
                return;
            }
        }
    }

    async fn start_ops(
        self: &Arc<Self>,
        request: pb::PipelineRequest,
        results: &mpsc::Sender<pb::PipelineResult>,
        outstanding: &Outstanding,
    ) -> Result<(), KvError> {
        if request.ops.len() > PIPELINE_OPS_MAX {
            let reason = format!(
                "{} ops, above the limit of {PIPELINE_OPS_MAX}",
                request.ops.len()
            );
            return Err(KvError::invalid_argument("ops", reason));
        }
        for (i, op) in request.ops.into_iter().enumerate() {
            // Waits while the session is at its bound; fails only when the response stream is
            // gone, and then the request stream fails next.
            let Ok(slot) = results.clone().reserve_owned().await else {
                return Ok(());
            };
            if !outstanding.lock().insert(op.id) {
                let reason = format!("{} is the id of an op not yet answered", op.id);
                return Err(KvError::invalid_argument(format!("ops[{i}].id"), reason));
            }
            // Boxed, so the task holds a pointer: tokio copies a task's future whole when it
            // spawns it and again when it stores the output, each a kilobyte or more here.
            tokio::spawn(Box::pin(self.clone().run_op(op, slot, outstanding.clone())));
        }
        Ok(())
    }

    async fn run_op(
        self: Arc<Self>,
        op: pb::PipelineOp,
        slot: OwnedPermit<pb::PipelineResult>,
        outstanding: Outstanding,
    ) {
        use pb::pipeline_op::Op;
        use pb::pipeline_result::Result as Outcome;
        let outcome = match op.op {
            Some(Op::Get(r)) => self.get_inner(r).await.map(Outcome::Get),
            Some(Op::Put(r)) => self.put_inner(r).await.map(Outcome::Put),
            Some(Op::Delete(r)) => self.delete_inner(r).await.map(Outcome::Delete),
            None => Err(KvError::invalid_argument(
                "op",
                "none of get, put and delete is set",
            )),
        };
        let outcome = outcome.unwrap_or_else(|e| Outcome::Error(self.failed(e).into()));
        // Before the result leaves: the client may reuse the id as soon as it has the result.
        outstanding.lock().remove(&op.id);
        slot.send(pb::PipelineResult {
            id: op.id,
            result: Some(outcome),
        });
    }
}

/// The last message of a framed session that ends with `status`.
pub(super) fn closing(node: &Node, status: &Status) -> pb::PipelineResponse {
    pb::PipelineResponse {
        results: Vec::new(),
        ring_epoch: node.members.view().epoch,
        closed: Some(KvError::from_status(status).into()),
    }
}

/// The response side of a session, polled by the connection's task: each message holds every
/// result ready at that moment.
pub(super) struct Responses {
    node: Arc<Node>,
    results: mpsc::Receiver<pb::PipelineResult>,
    /// A result that did not fit in the previous message.
    carry: Option<pb::PipelineResult>,
    /// How the stream ends once every op has answered; OK when unset.
    end: Arc<OnceLock<Status>>,
    ended: bool,
}

impl Stream for Responses {
    type Item = Result<pb::PipelineResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        let first = match this.carry.take() {
            Some(result) => result,
            None => match ready!(this.results.poll_recv(cx)) {
                Some(result) => result,
                None => {
                    this.ended = true;
                    return Poll::Ready(this.end.get().cloned().map(Err));
                }
            },
        };
        Poll::Ready(Some(Ok(this.batch(first))))
    }
}

impl Responses {
    fn batch(&mut self, first: pb::PipelineResult) -> pb::PipelineResponse {
        let mut bytes = first.encoded_len();
        let mut results = vec![first];
        while results.len() < PIPELINE_OPS_MAX {
            let Ok(next) = self.results.try_recv() else {
                break;
            };
            let len = next.encoded_len();
            if bytes + len > RESPONSE_BYTES_MAX {
                self.carry = Some(next);
                break;
            }
            bytes += len;
            results.push(next);
        }
        pb::PipelineResponse {
            results,
            ring_epoch: self.node.members.view().epoch,
            closed: None,
        }
    }
}
