//! Ports that carry gRPC and framed sessions both (the client port: gRPC and client sessions;
//! the internode port: gRPC and pipes). The first byte tells them apart: `K` opens every framed
//! preface, `P` opens HTTP/2's, so a node's advertised addresses stay one per port.

use std::future::Future;
use std::time::Duration;

use client::frame::{FrameError, FrameReader, Preface, Protocol, PREFACE_FIRST_BYTE};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// A connection that has not said what it is within this long is dropped.
const FIRST_BYTES_TIMEOUT_MS: u64 = 10_000;
/// After a failed accept (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_RETRY_MS: u64 = 50;
/// Accepted gRPC connections waiting for the gRPC server to take them.
const GRPC_ACCEPTED_QUEUED: usize = 64;

/// A framed connection whose peer has sent its preface.
pub struct Framed {
    pub reader: FrameReader<OwnedReadHalf>,
    pub write: OwnedWriteHalf,
    /// The peer's preface, or why it is refused: the serving end still answers with its own
    /// preface, then ends the connection with a closing message saying why.
    pub preface: Result<Preface, FrameError>,
}

/// Serves gRPC `routes` and the framed sessions of `protocol` on `listener` until `stop` turns;
/// each framed connection is handed to `framed` in a task of its own once its preface is in.
pub async fn serve_shared_port<F, Fut>(
    what: &'static str,
    listener: TcpListener,
    routes: tonic::service::Routes,
    stop: watch::Receiver<bool>,
    protocol: Protocol,
    framed: F,
) where
    F: Fn(Framed, watch::Receiver<bool>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (grpc_tx, grpc_rx) = mpsc::channel(GRPC_ACCEPTED_QUEUED);
    let accept = tokio::spawn(accept(
        what,
        listener,
        grpc_tx,
        stop.clone(),
        protocol,
        framed,
    ));
    let incoming = ReceiverStream::new(grpc_rx).map(Ok::<_, std::io::Error>);
    super::serve_grpc(what, routes, incoming, stop).await;
    let _ = accept.await;
}

async fn accept<F, Fut>(
    what: &'static str,
    listener: TcpListener,
    grpc: mpsc::Sender<TcpStream>,
    mut stop: watch::Receiver<bool>,
    protocol: Protocol,
    framed: F,
) where
    F: Fn(Framed, watch::Receiver<bool>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let route = route(stream, grpc.clone(), stop.clone(), protocol, framed.clone());
                tokio::spawn(route);
            }
            Err(e) => {
                tracing::warn!(port = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
            }
        }
    }
}

async fn route<F, Fut>(
    stream: TcpStream,
    grpc: mpsc::Sender<TcpStream>,
    mut stop: watch::Receiver<bool>,
    protocol: Protocol,
    framed: F,
) where
    F: Fn(Framed, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()>,
{
    // Without it Nagle's algorithm meets delayed ACKs and small replies wait ~40 ms.
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let mut first = [0u8; 1];
    let timeout = Duration::from_millis(FIRST_BYTES_TIMEOUT_MS);
    let peeked = tokio::select! {
        peeked = tokio::time::timeout(timeout, stream.peek(&mut first)) => peeked,
        _ = stop.wait_for(|stopped| *stopped) => return,
    };
    let Ok(Ok(1)) = peeked else { return };
    if first[0] != PREFACE_FIRST_BYTE {
        let _ = grpc.send(stream).await;
        return;
    }
    if super::pipe::tune(&stream).is_err() {
        return;
    }
    let (read, write) = stream.into_split();
    let mut reader = FrameReader::new(read);
    let preface = tokio::select! {
        preface = tokio::time::timeout(timeout, reader.read_preface(protocol)) => preface,
        _ = stop.wait_for(|stopped| *stopped) => return,
    };
    let Ok(preface) = preface else { return };
    let connection = Framed {
        reader,
        write,
        preface,
    };
    framed(connection, stop).await;
}
