//! Get, Put and Delete, which travel unary or as ops of the node's pipeline session.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::attempt::{Attempt, Failure};
use super::pool::NodeConns;
use super::timed;
use crate::pb::v1::{self as pb, key_value_client::KeyValueClient};
use crate::pb::v1::{pipeline_op, pipeline_result};

/// A single-key request, which travels unary or as an op of a pipeline session.
pub(super) trait KeyOp: Clone + Send {
    type Response;

    fn into_op(self) -> pipeline_op::Op;

    /// The response, when the result is of this request's kind.
    fn response(result: pipeline_result::Result) -> Option<Self::Response>;

    fn unary(
        client: KeyValueClient<Channel>,
        request: Request<Self>,
    ) -> impl Future<Output = Result<Response<Self::Response>, Status>> + Send;
}

impl KeyOp for pb::GetRequest {
    type Response = pb::GetResponse;

    fn into_op(self) -> pipeline_op::Op {
        pipeline_op::Op::Get(self)
    }

    fn response(result: pipeline_result::Result) -> Option<Self::Response> {
        match result {
            pipeline_result::Result::Get(response) => Some(response),
            _ => None,
        }
    }

    async fn unary(
        mut client: KeyValueClient<Channel>,
        request: Request<Self>,
    ) -> Result<Response<Self::Response>, Status> {
        client.get(request).await
    }
}

impl KeyOp for pb::PutRequest {
    type Response = pb::PutResponse;

    fn into_op(self) -> pipeline_op::Op {
        pipeline_op::Op::Put(self)
    }

    fn response(result: pipeline_result::Result) -> Option<Self::Response> {
        match result {
            pipeline_result::Result::Put(response) => Some(response),
            _ => None,
        }
    }

    async fn unary(
        mut client: KeyValueClient<Channel>,
        request: Request<Self>,
    ) -> Result<Response<Self::Response>, Status> {
        client.put(request).await
    }
}

impl KeyOp for pb::DeleteRequest {
    type Response = pb::DeleteResponse;

    fn into_op(self) -> pipeline_op::Op {
        pipeline_op::Op::Delete(self)
    }

    fn response(result: pipeline_result::Result) -> Option<Self::Response> {
        match result {
            pipeline_result::Result::Delete(response) => Some(response),
            _ => None,
        }
    }

    async fn unary(
        mut client: KeyValueClient<Channel>,
        request: Request<Self>,
    ) -> Result<Response<Self::Response>, Status> {
        client.delete(request).await
    }
}

/// One attempt through the node's pipeline session; a framed session falls back to a gRPC one
/// and that to a unary call where the node does not serve them.
pub(super) async fn pipelined<R: KeyOp>(
    node: Arc<NodeConns>,
    request: R,
    timeout: Option<Duration>,
) -> Attempt<R::Response> {
    while !node.unary_only() {
        let session = node.session();
        // A clone, because a node that refuses the session gets the request again.
        let answer = session.call(request.clone().into_op()).await;
        match answer.result {
            // Only the session's status can say this: a node's op errors are never statuses.
            Err(status) if status.code() == Code::Unimplemented => {
                node.refused(session.transport())
            }
            result => {
                return Attempt {
                    result: result.map_err(Failure::Status).and_then(op_response::<R>),
                    epoch: answer.epoch,
                }
            }
        }
    }
    Attempt::unary(R::unary(node.client(), timed(request, timeout)).await)
}

fn op_response<R: KeyOp>(
    result: Option<pipeline_result::Result>,
) -> std::result::Result<R::Response, Failure> {
    match result {
        Some(pipeline_result::Result::Error(error)) => Err(Failure::Node(error.into())),
        Some(result) => R::response(result)
            .ok_or_else(|| Failure::Malformed("a pipeline result of another kind".into())),
        None => Err(Failure::Malformed(
            "a pipeline result without result".into(),
        )),
    }
}
