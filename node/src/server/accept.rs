//! The accept loop of a port that carries gRPC and framed sessions both (the client port:
//! gRPC and client sessions; the internode port: gRPC and pipes). The first byte tells them
//! apart: `K` opens every framed preface, `P` opens HTTP/2's, so a node's advertised addresses
//! stay one per port.

use std::future::Future;
use std::time::Duration;

use client::frame::PREFACE_FIRST_BYTE;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// A connection that has not said what it is within this long is dropped.
pub const FIRST_BYTES_TIMEOUT_MS: u64 = 10_000;
/// After a failed accept (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_RETRY_MS: u64 = 50;

/// Accepts connections until `stop` turns: framed ones are served by `framed` in a task of
/// their own, gRPC ones handed to `grpc`.
pub async fn accept<F, Fut>(
    what: &'static str,
    listener: TcpListener,
    grpc: mpsc::Sender<TcpStream>,
    mut stop: watch::Receiver<bool>,
    framed: F,
) where
    F: Fn(TcpStream, watch::Receiver<bool>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(route(stream, grpc.clone(), stop.clone(), framed.clone()));
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
    framed: F,
) where
    F: Fn(TcpStream, watch::Receiver<bool>) -> Fut,
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
    if first[0] == PREFACE_FIRST_BYTE {
        framed(stream, stop).await;
    } else {
        let _ = grpc.send(stream).await;
    }
}
