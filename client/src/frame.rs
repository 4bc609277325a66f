//! Framing for the two long-lived sessions that carry single-key operations: the internode
//! pipe (replica operations, `PipeRequest`/`PipeResponse`) and a client's pipeline session
//! (`PipelineRequest`/`PipelineResponse`). Protobuf messages on a plain TCP connection, without
//! HTTP/2: each side opens with an 8-byte preface, then sends frames of one message each.
//!
//! Why not gRPC: with one operation per message, the two HTTP/2 layers (client and server
//! connection tasks, frame queues, flow-control windows) cost about 28% of a node's user-space
//! instructions (callgrind, docs/benchmarks.md). These sessions need none of what HTTP/2 adds:
//! each is one long-lived stream, already multiplexed by the operations' ids.
//!
//! Preface, sent once by each side as the connection opens (the connecting side first):
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 6 | magic: `KVPIPE` for a pipe, `KVSESS` for a client session (the `K` tells either from HTTP/2's `PRI` on a shared port) |
//! | 6 | 1 | protocol version, [`PIPE_VERSION`] |
//! | 7 | 1 | flags: bit 0 asks for zstd-compressed frames both ways; other bits zero |
//!
//! Frame, [`FRAME_HEADER_BYTES`] of header then the body:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | body length as sent, `u32` little-endian, at most [`FRAME_BODY_BYTES_MAX`] |
//! | 4 | 1 | flags: bit 0 the body is zstd-compressed; other bits zero |
//! | 5 | 3 | zero |
//! | 8 | 8 | xxh3-64 of the body as sent, little-endian |
//! | 16 | length | body: one protobuf message, compressed if the flag says so |
//!
//! Every length is checked before anything is allocated for it, and a decompressed body may
//! not exceed [`crate::MAX_MESSAGE_BYTES`] either.

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use xxhash_rust::xxh3::xxh3_64;

use crate::MAX_MESSAGE_BYTES;

/// The first byte of every preface, and never the first of HTTP/2's (`P`).
pub const PREFACE_FIRST_BYTE: u8 = b'K';
pub const PIPE_VERSION: u8 = 1;
pub const PREFACE_BYTES: usize = 8;
pub const FRAME_HEADER_BYTES: usize = 16;
/// A compressed body may be a little larger than the message it holds (zstd's worst case adds
/// well under 1%).
pub const FRAME_BODY_BYTES_MAX: usize = MAX_MESSAGE_BYTES + MAX_MESSAGE_BYTES / 64;
const FLAG_ZSTD: u8 = 1;
const ZSTD_LEVEL: i32 = 1;
/// Reads are buffered so that a burst of small frames costs one system call: the read buffer
/// grows by at least this much when it runs short.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// The least room a read is given: less would turn a burst into many small reads.
const READ_BYTES_MIN: usize = 8 * 1024;
thread_local! {
    /// zstd contexts, one per thread and reused: making one per frame cost 26 µs for a 1.2 KB
    /// message against 2 µs with a reused one (measured 2026-12-04), about a tenth of what a
    /// whole cross-DC write cost.
    static COMPRESSOR: std::cell::RefCell<zstd::bulk::Compressor<'static>> =
        std::cell::RefCell::new(zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("a zstd context"));
    static DECOMPRESSOR: std::cell::RefCell<zstd::bulk::Decompressor<'static>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().expect("a zstd context"));
}

/// A writer gathers frames up to this much into one write, and keeps a buffer no larger for the
/// next (one frame may hold a 16 MiB value).
pub const WRITE_BUFFER_BYTES_KEPT: usize = 1024 * 1024;

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("framed connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("preface: magic {found:?} is neither KVPIPE nor KVSESS", found = String::from_utf8_lossy(found))]
    Magic { found: [u8; 6] },
    #[error("preface: {found} where {expected} was expected (wrong port?)")]
    Protocol { found: Protocol, expected: Protocol },
    #[error("preface: version {found} is not supported (this side speaks {PIPE_VERSION})")]
    Version { found: u8 },
    #[error("{what}: unknown flags {flags:#04x}")]
    Flags { what: &'static str, flags: u8 },
    #[error("frame: body of {bytes} bytes is over the {max}-byte limit")]
    TooLarge { bytes: usize, max: usize },
    #[error("frame: checksum {found:#018x} does not match the body's {computed:#018x}")]
    Checksum { found: u64, computed: u64 },
    #[error("frame: zstd body does not decompress within {MAX_MESSAGE_BYTES} bytes: {0}")]
    Decompress(std::io::Error),
    #[error("frame: the connection ended inside a frame")]
    Truncated,
    #[error("frame: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Which session a connection carries, named by its preface's magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Replica operations between nodes, on the internode port.
    Pipe,
    /// A client's single-key operations, on the client port.
    Session,
}

impl Protocol {
    pub const fn magic(self) -> [u8; 6] {
        match self {
            Protocol::Pipe => *b"KVPIPE",
            Protocol::Session => *b"KVSESS",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Pipe => "an internode pipe",
            Protocol::Session => "a client session",
        })
    }
}

/// What one side's preface says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preface {
    pub protocol: Protocol,
    pub compress: bool,
}

impl Preface {
    pub fn encode(self) -> [u8; PREFACE_BYTES] {
        let mut out = [0; PREFACE_BYTES];
        out[..6].copy_from_slice(&self.protocol.magic());
        out[6] = PIPE_VERSION;
        out[7] = if self.compress { FLAG_ZSTD } else { 0 };
        out
    }

    pub fn decode(bytes: &[u8; PREFACE_BYTES]) -> Result<Preface, FrameError> {
        let magic: [u8; 6] = bytes[..6].try_into().expect("6 bytes");
        let protocol = [Protocol::Pipe, Protocol::Session]
            .into_iter()
            .find(|p| p.magic() == magic)
            .ok_or(FrameError::Magic { found: magic })?;
        if bytes[6] != PIPE_VERSION {
            return Err(FrameError::Version { found: bytes[6] });
        }
        let flags = bytes[7];
        if flags & !FLAG_ZSTD != 0 {
            return Err(FrameError::Flags {
                what: "preface",
                flags,
            });
        }
        Ok(Preface {
            protocol,
            compress: flags & FLAG_ZSTD != 0,
        })
    }
}

/// Appends `message` to `out` as one frame, compressed when `compress` is set.
pub fn encode_frame(message: &impl prost::Message, compress: bool, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + FRAME_HEADER_BYTES, 0);
    let flags = if compress {
        let plain = message.encode_to_vec();
        let packed = COMPRESSOR
            .with_borrow_mut(|c| c.compress(&plain))
            .expect("zstd compresses in memory");
        out.extend_from_slice(&packed);
        FLAG_ZSTD
    } else {
        message
            .encode(out)
            .expect("a Vec grows to take any message");
        0
    };
    let body_bytes = out.len() - start - FRAME_HEADER_BYTES;
    assert!(
        body_bytes <= FRAME_BODY_BYTES_MAX,
        "a pipe frame of {body_bytes} bytes: senders bound their messages"
    );
    let checksum = xxh3_64(&out[start + FRAME_HEADER_BYTES..]);
    let header = &mut out[start..start + FRAME_HEADER_BYTES];
    header[..4].copy_from_slice(&(body_bytes as u32).to_le_bytes());
    header[4] = flags;
    header[8..].copy_from_slice(&checksum.to_le_bytes());
}

/// Lets every task that is ready now run before the caller goes on, so that a session's writer
/// woken by the first of several operations sends the others in the same frame: the caller's
/// task goes to the back of its worker's run queue. `tokio::task::yield_now` would also wait
/// for the I/O driver to be polled, an `epoll_wait` per call.
pub async fn yield_to_ready_tasks() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        // A task that wakes itself while polled is queued behind the tasks already ready.
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// Writes the frames gathered in `buf` whole, then empties it, keeping its allocation unless a
/// large frame grew it past [`WRITE_BUFFER_BYTES_KEPT`].
pub async fn write_out<W: AsyncWrite + Unpin>(
    write: &mut W,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    write.write_all(buf).await?;
    if buf.capacity() > WRITE_BUFFER_BYTES_KEPT {
        *buf = Vec::new();
    } else {
        buf.clear();
    }
    Ok(())
}

/// A frame's header, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FrameHeader {
    body_bytes: usize,
    compressed: bool,
    checksum: u64,
}

impl FrameHeader {
    fn decode(bytes: &[u8; FRAME_HEADER_BYTES]) -> Result<FrameHeader, FrameError> {
        let body_bytes = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
        if body_bytes > FRAME_BODY_BYTES_MAX {
            return Err(FrameError::TooLarge {
                bytes: body_bytes,
                max: FRAME_BODY_BYTES_MAX,
            });
        }
        let flags = bytes[4];
        if flags & !FLAG_ZSTD != 0 || bytes[5..8] != [0; 3] {
            return Err(FrameError::Flags {
                what: "frame",
                flags,
            });
        }
        Ok(FrameHeader {
            body_bytes,
            compressed: flags & FLAG_ZSTD != 0,
            checksum: u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes")),
        })
    }

    /// Checks `body` against the header and returns the message bytes it carries.
    fn open(&self, body: Bytes) -> Result<Bytes, FrameError> {
        debug_assert_eq!(body.len(), self.body_bytes);
        let computed = xxh3_64(&body);
        if computed != self.checksum {
            return Err(FrameError::Checksum {
                found: self.checksum,
                computed,
            });
        }
        if !self.compressed {
            return Ok(body);
        }
        // Sized by the size the frame declares: a buffer of the whole limit per frame had the
        // kernel zero fresh pages for most of a 2-DC load's CPU (first touches of huge pages).
        let capacity = match zstd::zstd_safe::get_frame_content_size(&body) {
            Ok(Some(declared)) if declared <= MAX_MESSAGE_BYTES as u64 => declared as usize,
            Ok(Some(declared)) => {
                let e = std::io::Error::other(format!("it declares {declared} bytes"));
                return Err(FrameError::Decompress(e));
            }
            _ => MAX_MESSAGE_BYTES,
        };
        let plain = DECOMPRESSOR
            .with_borrow_mut(|d| d.decompress(&body, capacity))
            .map_err(FrameError::Decompress)?;
        Ok(Bytes::from(plain))
    }
}

/// Reads prefaces and frames from one direction of a connection.
pub struct FrameReader<R> {
    inner: R,
    /// Bytes read and not yet handed out. A frame's body is split off it, not copied: the
    /// frame (and the values later sliced from it) shares the buffer's allocation, which is
    /// freed when the last of them is dropped. Copying each body out of a `BufReader` into an
    /// allocation of its own was 2.1% of the machine's samples during a cluster load (the copy
    /// and the kernel zeroing the fresh pages of large bodies).
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: BytesMut::new(),
        }
    }

    /// The peer's preface, which must open a session of `expected`.
    pub async fn read_preface(&mut self, expected: Protocol) -> Result<Preface, FrameError> {
        let bytes = self.take(PREFACE_BYTES).await?;
        let preface = Preface::decode(bytes[..].try_into().expect("a preface's bytes"))?;
        if preface.protocol != expected {
            return Err(FrameError::Protocol {
                found: preface.protocol,
                expected,
            });
        }
        Ok(preface)
    }

    /// The next frame's message bytes, or `None` when the peer closed the connection between
    /// frames.
    pub async fn read_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if !self.fill(1).await? {
            return Ok(None);
        }
        let header = self.take(FRAME_HEADER_BYTES).await?;
        let header = FrameHeader::decode(header[..].try_into().expect("a header's bytes"))?;
        let body = self.take(header.body_bytes).await?;
        header.open(body).map(Some)
    }

    /// The next `n` bytes; `Truncated` if the connection ends first. `n` is a checked length.
    async fn take(&mut self, n: usize) -> Result<Bytes, FrameError> {
        if !self.fill(n).await? {
            return Err(FrameError::Truncated);
        }
        Ok(self.buf.split_to(n).freeze())
    }

    /// Reads until at least `n` bytes are buffered; false if the connection ended first.
    async fn fill(&mut self, n: usize) -> Result<bool, FrameError> {
        while self.buf.len() < n {
            // Room for the rest of what is needed and for a useful read beyond it; growing only
            // when short, since a buffer that frames still share is reallocated, not reused.
            let short = n - self.buf.len();
            if self.buf.capacity() - self.buf.len() < short.max(READ_BYTES_MIN) {
                self.buf.reserve(short.max(READ_BUFFER_BYTES));
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The next frame decoded as `M`; `None` at a clean end.
    pub async fn read_message<M: prost::Message + Default>(
        &mut self,
    ) -> Result<Option<M>, FrameError> {
        match self.read_frame().await? {
            Some(bytes) => Ok(Some(M::decode(bytes)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::internode::v1::{PipeOp, PipeRequest};
    use proptest::prelude::*;
    use prost::Message;

    fn request(ops: usize) -> PipeRequest {
        PipeRequest {
            ops: (0..ops as u64)
                .map(|id| PipeOp {
                    id,
                    keyspace: "ks".into(),
                    op: Some(crate::pb::internode::v1::pipe_op::Op::ReadKey(Bytes::from(
                        vec![b'k'; 100],
                    ))),
                })
                .collect(),
            ..Default::default()
        }
    }

    async fn read_all(bytes: &[u8]) -> Result<Vec<PipeRequest>, FrameError> {
        let mut reader = FrameReader::new(bytes);
        let mut out = Vec::new();
        while let Some(m) = reader.read_message::<PipeRequest>().await? {
            out.push(m);
        }
        Ok(out)
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn frames_round_trip_plain_and_compressed_back_to_back() {
        let mut wire = Vec::new();
        encode_frame(&request(3), false, &mut wire);
        encode_frame(&request(0), false, &mut wire);
        encode_frame(&request(50), true, &mut wire);
        let plain_50 = request(50).encode_to_vec().len();
        let read = block_on(read_all(&wire)).expect("valid frames");
        assert_eq!(read, vec![request(3), request(0), request(50)]);
        assert!(wire.len() < plain_50, "50 alike ops compress");
    }

    #[test]
    fn a_flipped_body_byte_is_a_checksum_error() {
        let mut wire = Vec::new();
        encode_frame(&request(2), false, &mut wire);
        wire[FRAME_HEADER_BYTES + 5] ^= 0x40;
        let err = block_on(read_all(&wire)).expect_err("corrupt");
        assert!(matches!(err, FrameError::Checksum { .. }), "{err}");
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading_the_body() {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = block_on(read_all(&header)).expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("limit"), "{err}");
    }

    #[test]
    fn a_frame_cut_short_is_truncated_not_a_clean_end() {
        let mut wire = Vec::new();
        encode_frame(&request(2), false, &mut wire);
        for cut in [1, FRAME_HEADER_BYTES, wire.len() - 1] {
            let err = block_on(read_all(&wire[..cut])).expect_err("cut");
            assert!(matches!(err, FrameError::Truncated), "cut at {cut}: {err}");
        }
    }

    #[test]
    fn unknown_flags_and_a_zstd_bomb_are_refused() {
        let mut wire = Vec::new();
        encode_frame(&request(1), false, &mut wire);
        wire[4] = 0x02;
        let err = block_on(read_all(&wire)).expect_err("flags");
        assert!(matches!(err, FrameError::Flags { .. }), "{err}");

        let bomb = zstd::bulk::compress(&vec![0u8; MAX_MESSAGE_BYTES + 1], 1).expect("compress");
        let mut wire = vec![0u8; FRAME_HEADER_BYTES];
        wire[..4].copy_from_slice(&(bomb.len() as u32).to_le_bytes());
        wire[4] = FLAG_ZSTD;
        wire[8..16].copy_from_slice(&xxh3_64(&bomb).to_le_bytes());
        wire.extend_from_slice(&bomb);
        let err = block_on(read_all(&wire)).expect_err("bomb");
        assert!(matches!(err, FrameError::Decompress(_)), "{err}");
    }

    #[test]
    fn prefaces_name_what_is_wrong() {
        for protocol in [Protocol::Pipe, Protocol::Session] {
            let good = Preface {
                protocol,
                compress: true,
            };
            assert_eq!(Preface::decode(&good.encode()).expect("valid"), good);
            assert_eq!(good.encode()[0], PREFACE_FIRST_BYTE);
        }
        let good = Preface {
            protocol: Protocol::Pipe,
            compress: true,
        };
        let mut http2 = *b"PRI * HT";
        let err = Preface::decode(&http2).expect_err("HTTP/2");
        assert!(matches!(err, FrameError::Magic { .. }), "{err}");
        assert!(err.to_string().contains("\"PRI * \""), "{err}");
        http2[..6].copy_from_slice(&Protocol::Pipe.magic());
        let err = Preface::decode(&http2).expect_err("version");
        assert!(err.to_string().contains("version 72"), "{err}");
        let mut flags = good.encode();
        flags[7] = 0x80;
        assert!(matches!(
            Preface::decode(&flags),
            Err(FrameError::Flags { .. })
        ));
    }

    #[test]
    fn a_preface_for_the_other_port_names_both_protocols() {
        let session = Preface {
            protocol: Protocol::Session,
            compress: false,
        }
        .encode();
        let read = block_on(async {
            FrameReader::new(&session[..])
                .read_preface(Protocol::Pipe)
                .await
        });
        let err = read.expect_err("a session on the pipe port");
        assert!(matches!(err, FrameError::Protocol { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("a client session where an internode pipe was expected"),
            "{err}"
        );
    }

    #[test]
    fn yielding_lets_the_tasks_that_are_ready_run_first() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let current = tokio::runtime::Builder::new_current_thread().build();
        let one_worker = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build();
        for runtime in [current, one_worker] {
            let runtime = runtime.expect("runtime");
            let ran_first = runtime.block_on(async {
                let task = tokio::spawn(async {
                    let ran = Arc::new(AtomicBool::new(false));
                    let other = ran.clone();
                    tokio::spawn(async move { other.store(true, Ordering::SeqCst) });
                    yield_to_ready_tasks().await;
                    ran.load(Ordering::SeqCst)
                });
                task.await.expect("joined")
            });
            assert!(
                ran_first,
                "the task ready before the yield ran before it returned"
            );
        }
    }

    #[test]
    fn write_out_empties_the_buffer_and_gives_back_a_large_one() {
        let mut sink = Vec::new();
        let mut buf = vec![7u8; 100];
        buf.reserve(1000);
        block_on(write_out(&mut sink, &mut buf)).expect("written");
        assert_eq!(sink, vec![7u8; 100]);
        assert!(
            buf.is_empty() && buf.capacity() >= 1100,
            "a small buffer is kept"
        );
        let mut buf = vec![1u8; WRITE_BUFFER_BYTES_KEPT + 1];
        block_on(write_out(&mut sink, &mut buf)).expect("written");
        assert_eq!(sink.len(), 100 + WRITE_BUFFER_BYTES_KEPT + 1);
        assert_eq!(buf.capacity(), 0, "a large buffer is given back");
    }

    /// Delivers `wire` through a pipe that carries at most `chunk` bytes per read.
    async fn read_in_chunks(wire: Vec<u8>, chunk: usize) -> Result<Vec<PipeRequest>, FrameError> {
        use tokio::io::AsyncWriteExt;
        let (mut tx, rx) = tokio::io::duplex(chunk);
        let writer = tokio::spawn(async move { tx.write_all(&wire).await });
        let mut reader = FrameReader::new(rx);
        let mut out = Vec::new();
        while let Some(m) = reader.read_message::<PipeRequest>().await? {
            out.push(m);
        }
        writer.await.expect("writer").expect("written");
        Ok(out)
    }

    proptest! {
        #[test]
        fn prop_decoding_arbitrary_bytes_never_panics(
            garbage in proptest::collection::vec(any::<u8>(), 0..256),
            after_a_valid_frame: bool,
        ) {
            let mut wire = Vec::new();
            if after_a_valid_frame {
                encode_frame(&request(1), false, &mut wire);
            }
            wire.extend_from_slice(&garbage);
            let _ = block_on(read_all(&wire));
        }

        #[test]
        fn prop_valid_frames_survive_any_split_into_reads(
            ops in 0usize..40,
            compress: bool,
            chunk in 1usize..64,
        ) {
            let mut wire = Vec::new();
            encode_frame(&request(ops), compress, &mut wire);
            encode_frame(&request(1), compress, &mut wire);
            let read = block_on(read_in_chunks(wire, chunk)).expect("valid");
            prop_assert_eq!(read, vec![request(ops), request(1)]);
        }
    }
}
