//! Framed client sessions: the Pipeline rpc's messages on a plain TCP connection of the client
//! port, in the frames of the internode pipes (`client::frame`, preface magic `KVSESS`). The
//! ops run exactly as in a gRPC session; only the transport differs, without the HTTP/2 work
//! per message on either end (docs/benchmarks.md).

use client::frame::{
    encode_frame, write_out, FrameError, FrameReader, Preface, Protocol, WRITE_BUFFER_BYTES_KEPT,
};
use client::pb::v1 as pb;
use client::KvError;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tonic::Status;

use super::pipeline::{closing, Responses};
use super::ClientService;
use crate::server::accept::Framed;
use crate::server::Node;

impl ClientService {
    /// Serves one framed session until the client closes it, breaks the protocol, or the node
    /// stops (which the session's reader watches through the service); the ops already started
    /// are still answered.
    pub(super) async fn serve_session(self, connection: Framed, _stop: watch::Receiver<bool>) {
        let Framed {
            reader,
            mut write,
            preface,
        } = connection;
        let compress = preface.as_ref().is_ok_and(|p| p.compress);
        let ours = Preface {
            protocol: Protocol::Session,
            compress,
        };
        if write.write_all(&ours.encode()).await.is_err() {
            return;
        }
        match preface {
            Ok(_) => {
                let responses = self.open_pipeline(requests(reader));
                write_responses(write, responses, &self.node, compress).await
            }
            Err(e) => {
                let mut buf = Vec::new();
                encode_frame(&closing(&self.node, &refused(e)), compress, &mut buf);
                let _ = write.write_all(&buf).await;
                let _ = write.shutdown().await;
            }
        }
    }
}

/// The session's requests as the frames bring them; a frame that breaks the format ends the
/// session with INVALID_ARGUMENT.
fn requests(
    reader: FrameReader<OwnedReadHalf>,
) -> impl Stream<Item = Result<pb::PipelineRequest, Status>> + Send + Unpin + 'static {
    Box::pin(futures_util::stream::unfold(
        reader,
        |mut reader| async move {
            match reader.read_message::<pb::PipelineRequest>().await {
                Ok(Some(request)) => Some((Ok(request), reader)),
                Ok(None) => None,
                Err(FrameError::Io(e)) => Some((Err(Status::unavailable(e.to_string())), reader)),
                Err(e) => Some((Err(refused(e)), reader)),
            }
        },
    ))
}

/// Appends `response` as a frame, or the closing message for the status that ends the
/// session; says whether it was the last.
fn encode(
    response: Result<pb::PipelineResponse, Status>,
    node: &Node,
    compress: bool,
    buf: &mut Vec<u8>,
) -> bool {
    match response {
        Ok(response) => {
            encode_frame(&response, compress, buf);
            false
        }
        Err(status) => {
            encode_frame(&closing(node, &status), compress, buf);
            true
        }
    }
}

fn refused(e: FrameError) -> Status {
    KvError::invalid_argument("frame", e.to_string()).into_status()
}

/// Writes every response as it is ready, then the closing message if the session ended for a
/// reason, and closes the connection.
async fn write_responses(
    mut write: OwnedWriteHalf,
    mut responses: Responses,
    node: &Node,
    compress: bool,
) {
    let mut buf = Vec::new();
    while let Some(response) = responses.next().await {
        let mut last = encode(response, node, compress, &mut buf);
        // Ops that are ready to finish may answer too: let them, and send theirs in the same
        // write (what HTTP/2's connection task did by running after the encoder).
        client::frame::yield_to_ready_tasks().await;
        while !last && buf.len() < WRITE_BUFFER_BYTES_KEPT {
            let Some(Some(response)) = responses.next().now_or_never() else {
                break;
            };
            last = encode(response, node, compress, &mut buf);
        }
        if write_out(&mut write, &mut buf).await.is_err() || last {
            break;
        }
    }
    let _ = write.shutdown().await;
}
