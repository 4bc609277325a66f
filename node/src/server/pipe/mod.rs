//! Pipes: one long-lived TCP connection per pair of nodes carrying a coordinator's replica
//! operations in batches, framed by [`client::frame`] rather than gRPC, on the peer's internode
//! port. At the sending end callers await one operation each; the connection's task sends every
//! operation queued at that moment as one frame and routes each result back by id. The serving
//! end ([`serve`]) runs each frame's operations together and answers them in one frame.

pub mod serve;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use client::frame::{encode_frame, write_out, FrameReader, Preface, Protocol};
use client::pb::internode::v1 as ipb;
use foldhash::HashMap;
use parking_lot::Mutex;
use prost::Message;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::replica::ReplicaError;

/// Operations one pipe holds unanswered at most; a caller past it waits for a slot, so a slow
/// peer pushes back on its coordinators instead of growing a queue.
pub const PIPE_PENDING_OPS_MAX: usize = 8192;
/// Most operations per frame, as the protocol allows.
pub const PIPE_BATCH_OPS_MAX: usize = 4096;
/// Most targets of one forwarded write: a DC holds at most this many replicas of a key.
pub const PIPE_FORWARD_TARGETS_MAX: usize = crate::cluster::schema::REPLICATION_FACTOR_MAX as usize;
/// A batch stops growing past this size; one operation may exceed it alone (up to
/// [`PIPE_OP_BYTES_MAX`]), so large writes are not split.
const PIPE_BATCH_BYTES_SOFT_MAX: usize = 1024 * 1024;
/// The largest operation a pipe carries: a frame holds at most the message limit, and the
/// batch's own framing (a tag and a length per operation, at most 4096 of them) fits in the
/// slack between that and the frame limit.
pub const PIPE_OP_BYTES_MAX: usize = client::MAX_MESSAGE_BYTES;
/// A peer that does not accept a connection within this long fails the pipe's operations; the
/// failure detector, not this timeout, decides whether it is down.
const PIPE_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Sent data the peer's kernel has not acknowledged for this long ends the connection
/// (TCP_USER_TIMEOUT), and so do keepalive probes unanswered for about as long on an idle
/// one: how a pipe notices a peer host that vanished without closing its connections, as
/// HTTP/2 pings did before.
const PIPE_DEAD_PEER_MS: u64 = 15_000;
const PIPE_KEEPALIVE_IDLE_MS: u64 = 10_000;
const PIPE_KEEPALIVE_INTERVAL_MS: u64 = 2_000;
const PIPE_KEEPALIVE_PROBES: u32 = 3;

type Answer = Result<ipb::pipe_result::Result, ReplicaError>;

#[derive(Default)]
struct State {
    pending: HashMap<u64, oneshot::Sender<Answer>>,
    /// Why the connection ended; once set, no operation is accepted.
    closed: Option<String>,
}

/// An operation and its encoded size, measured once by its caller.
type Queued = (ipb::PipeOp, usize);

pub struct Pipe {
    queue: mpsc::Sender<Queued>,
    state: Arc<Mutex<State>>,
    next_id: AtomicU64,
    slots: Semaphore,
}

/// Where a pipe goes and who opens it.
pub struct PipeTarget {
    /// The peer's internode address, `ip:port`.
    pub address: String,
    /// zstd both ways: pipes to other DCs, where bandwidth is dear.
    pub compress: bool,
    /// The address connections leave from, when the node listens on a specific one.
    pub local_ip: Option<IpAddr>,
    pub sender: Option<ipb::Sender>,
    /// The peer's host id, which it checks against its own.
    pub node_id: String,
}

/// Removes a caller's pending entry when it stops waiting (timed out or dropped), so abandoned
/// operations do not hold slots until the peer answers. An answered entry is gone already.
struct Forget<'a> {
    state: &'a Mutex<State>,
    id: u64,
}

impl Forget<'_> {
    /// Waits for the answer; an answer delivered leaves nothing to forget.
    async fn answer(self, rx: oneshot::Receiver<Answer>) -> Answer {
        let answer = rx.await;
        if answer.is_ok() {
            std::mem::forget(self);
        }
        answer.unwrap_or_else(|_| Err(ReplicaError::Failed("the pipe closed".into())))
    }
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.state.lock().pending.remove(&self.id);
    }
}

impl Pipe {
    /// Opens a pipe to `target`. Returns at once; operations queue until the connection is up.
    pub fn open(target: PipeTarget) -> Pipe {
        let (queue, rx) = mpsc::channel(PIPE_PENDING_OPS_MAX);
        let state = Arc::new(Mutex::new(State::default()));
        let task_state = state.clone();
        tokio::spawn(async move {
            let reason = match connect(&target).await {
                Ok(stream) => run(stream, rx, target, &task_state).await,
                Err(e) => format!("pipe to {}: {e}", target.address),
            };
            close(&task_state, reason);
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

    /// Sends one operation and waits for its result. The caller bounds the wait. The same as
    /// [`Pipe::call_each`] with one answer, without its two vectors: every replica read and
    /// write of a coordinator comes this way.
    pub async fn call(&self, keyspace: &str, op: ipb::pipe_op::Op) -> Answer {
        let _slot = self.slots.acquire().await.map_err(|_| closed())?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.state.lock();
            if let Some(reason) = &state.closed {
                return Err(ReplicaError::Failed(reason.clone()));
            }
            state.pending.insert(id, tx);
        }
        let forget = Forget {
            state: &self.state,
            id,
        };
        self.send(id, keyspace, op).await?;
        forget.answer(rx).await
    }

    /// Sends one operation that is answered `answers` times (a forward, once per target) and
    /// returns a future per answer, in the order of the ids `id..id + answers` it reserved.
    /// Each holds its slot until it is answered or dropped; the caller bounds the waits.
    pub async fn call_each<'a>(
        &'a self,
        keyspace: &str,
        op: ipb::pipe_op::Op,
        answers: usize,
    ) -> Result<Vec<impl Future<Output = Answer> + 'a>, ReplicaError> {
        let count = u32::try_from(answers).map_err(|_| closed())?;
        let mut slots = self.slots.acquire_many(count).await.map_err(|_| closed())?;
        let id = self.next_id.fetch_add(answers as u64, Ordering::Relaxed);
        let mut waiting = Vec::with_capacity(answers);
        {
            let mut state = self.state.lock();
            if let Some(reason) = &state.closed {
                return Err(ReplicaError::Failed(reason.clone()));
            }
            for i in 0..answers as u64 {
                let (tx, rx) = oneshot::channel();
                state.pending.insert(id + i, tx);
                let slot = slots.split(1).expect("a slot per answer");
                let forget = Forget {
                    state: &self.state,
                    id: id + i,
                };
                waiting.push((rx, slot, forget));
            }
        }
        self.send(id, keyspace, op).await?;
        let answer = |(rx, slot, forget): (_, _, Forget<'a>)| async move {
            let _slot = slot;
            forget.answer(rx).await
        };
        Ok(waiting.into_iter().map(answer).collect())
    }

    /// Queues operation `id` for the connection's next frame.
    async fn send(
        &self,
        id: u64,
        keyspace: &str,
        op: ipb::pipe_op::Op,
    ) -> Result<(), ReplicaError> {
        let op = ipb::PipeOp {
            id,
            keyspace: keyspace.to_owned(),
            op: Some(op),
        };
        let bytes = op.encoded_len();
        if bytes > PIPE_OP_BYTES_MAX {
            return Err(ReplicaError::Failed(format!(
                "a replica operation of {bytes} bytes is over the pipe's {PIPE_OP_BYTES_MAX}-byte limit"
            )));
        }
        self.queue.send((op, bytes)).await.map_err(|_| closed())
    }
}

fn closed() -> ReplicaError {
    ReplicaError::Failed("the pipe is closed".into())
}

async fn connect(target: &PipeTarget) -> io::Result<TcpStream> {
    // An `ip:port` (what gossip carries) is parsed without a DNS lookup.
    let addr = (tokio::net::lookup_host(&target.address).await?)
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = target.local_ip {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let timeout = Duration::from_millis(PIPE_CONNECT_TIMEOUT_MS);
    let stream = (tokio::time::timeout(timeout, socket.connect(addr)).await).map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect timed out after {PIPE_CONNECT_TIMEOUT_MS} ms"),
        )
    })??;
    tune(&stream)?;
    Ok(stream)
}

/// Socket options both ends of a pipe set: no Nagle delay on small frames, and a dead peer
/// noticed by the kernel instead of by a timer per frame.
pub(in crate::server) fn tune(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let socket = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_millis(PIPE_KEEPALIVE_IDLE_MS))
        .with_interval(Duration::from_millis(PIPE_KEEPALIVE_INTERVAL_MS))
        .with_retries(PIPE_KEEPALIVE_PROBES);
    socket.set_tcp_keepalive(&keepalive)?;
    socket.set_tcp_user_timeout(Some(Duration::from_millis(PIPE_DEAD_PEER_MS)))
}

/// Drives one connection until either direction ends; returns why.
async fn run(
    stream: TcpStream,
    rx: mpsc::Receiver<Queued>,
    target: PipeTarget,
    state: &Mutex<State>,
) -> String {
    let (read, write) = stream.into_split();
    // The first frame says who sends and for whom; it goes out with the preface, without
    // waiting for the peer's, so a pipe costs no extra round trip to open.
    let hello = ipb::PipeRequest {
        sender: target.sender,
        target_node_id: target.node_id,
        ops: Vec::new(),
    };
    tokio::select! {
        reason = send_batches(write, rx, hello, target.compress) => reason,
        reason = read_results(FrameReader::new(read), state) => reason,
    }
}

/// Sends every operation queued when the connection can take the next frame, as one frame of
/// at most the message limit (an operation that would pass it waits for the next frame).
async fn send_batches(
    mut write: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Queued>,
    hello: ipb::PipeRequest,
    compress: bool,
) -> String {
    let preface = Preface {
        protocol: Protocol::Pipe,
        compress,
    };
    let mut buf = preface.encode().to_vec();
    encode_frame(&hello, compress, &mut buf);
    let mut request = ipb::PipeRequest::default();
    let mut carried = None;
    loop {
        if let Err(e) = write_out(&mut write, &mut buf).await {
            return format!("pipe: sending: {e}");
        }
        let next = match carried.take() {
            Some(queued) => Some(queued),
            None => rx.recv().await,
        };
        let Some((op, mut bytes)) = next else {
            return "the pipe was dropped".into();
        };
        // The tasks that are ready to run may queue operations too (a client message's ops
        // each start one): let them, and send theirs in this frame.
        client::frame::yield_to_ready_tasks().await;
        request.ops.push(op);
        while request.ops.len() < PIPE_BATCH_OPS_MAX && bytes < PIPE_BATCH_BYTES_SOFT_MAX {
            let Ok((op, op_bytes)) = rx.try_recv() else {
                break;
            };
            if bytes + op_bytes > PIPE_OP_BYTES_MAX {
                carried = Some((op, op_bytes));
                break;
            }
            bytes += op_bytes;
            request.ops.push(op);
        }
        encode_frame(&request, compress, &mut buf);
        request.ops.clear();
    }
}

/// Routes results to their callers until the connection ends; returns why it ended.
async fn read_results(mut reader: FrameReader<OwnedReadHalf>, state: &Mutex<State>) -> String {
    if let Err(e) = reader.read_preface(Protocol::Pipe).await {
        return e.to_string();
    }
    loop {
        let batch = match reader.read_message::<ipb::PipeResponse>().await {
            Ok(Some(batch)) => batch,
            Ok(None) => return "the peer closed the pipe".into(),
            Err(e) => return e.to_string(),
        };
        deliver(state, batch.results);
        if let Some(e) = batch.closed {
            return format!("pipe: {:?}: {}", tonic::Code::from_i32(e.code), e.message);
        }
    }
}

fn deliver(state: &Mutex<State>, results: Vec<ipb::PipeResult>) {
    let mut state = state.lock();
    for result in results {
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

/// Fails every waiting operation and refuses new ones.
fn close(state: &Mutex<State>, reason: String) {
    let mut state = state.lock();
    for (_, tx) in state.pending.drain() {
        let _ = tx.send(Err(ReplicaError::Failed(reason.clone())));
    }
    state.closed = Some(reason);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pipe_socket_gives_up_on_a_silent_peer_within_the_dead_peer_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let stream = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        tune(&stream).expect("tuned");
        let socket = socket2::SockRef::from(&stream);
        let dead_peer = Duration::from_millis(PIPE_DEAD_PEER_MS);
        assert_eq!(socket.tcp_user_timeout().expect("read"), Some(dead_peer));
        assert!(socket.keepalive().expect("read"));
        let probing = socket.tcp_keepalive_time().expect("read")
            + socket.tcp_keepalive_interval().expect("read")
                * socket.tcp_keepalive_retries().expect("read");
        assert!(probing <= dead_peer + Duration::from_secs(1), "{probing:?}");
        assert!(stream.nodelay().expect("read"));
    }
}
