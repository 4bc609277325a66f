//! Moving token ranges between nodes for topology changes: the sending side of StreamRanges
//! (engine scans in chunks, checksummed, throttled) and the receiving side (verify, apply
//! through the merge rule, resume after the last applied key when a stream breaks), with a
//! registry of streams for `kvctl netstats`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use client::pb::internode::v1 as ipb;
use client::pb::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use topology::TokenRange;
use xxhash_rust::xxh3::Xxh3;

use super::convert::cell_to_pb;
use super::replica::{from_pb_mutations, Target};
use super::Node;
use crate::cluster::ReplayThrottle;
use crate::lsm::{Cell, Mutation};

/// Cells per chunk: large enough to amortise a message, small enough that a broken stream
/// loses little.
const CHUNK_CELLS: usize = 512;
/// Chunks buffered between the scanning task and the network.
const CHUNKS_IN_FLIGHT: usize = 4;
/// Attempts per stream; each resumes after the last applied key.
const ATTEMPTS: usize = 3;
const STREAMS_KEPT: usize = 1000;

/// xxh3 over each mutation's key length (u32 LE), key, and cell encoding, in order.
pub fn chunk_checksum(cells: &[ipb::ReplicaMutation]) -> Result<u64, String> {
    let mut h = Xxh3::new();
    let mut buf = Vec::new();
    for m in cells {
        h.update(&(m.key.len() as u32).to_le_bytes());
        h.update(&m.key);
        let cell = m.cell.clone().ok_or("a streamed mutation without a cell")?;
        let cell = super::convert::cell_from_pb(cell, "cell").map_err(|e| e.to_string())?;
        buf.clear();
        cell.encode_into(&mut buf);
        h.update(&buf);
    }
    Ok(h.digest())
}

/// One stream, as netstats shows it.
pub struct StreamEntry {
    pub direction: &'static str,
    pub peer: String,
    pub keyspace: String,
    pub ranges: u32,
    pub ranges_done: AtomicU32,
    pub cells: AtomicU64,
    pub bytes: AtomicU64,
    pub done: AtomicBool,
}

impl StreamEntry {
    fn note(&self, cells: u64, bytes: u64) {
        self.cells.fetch_add(cells, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn to_pb(&self) -> pb::StreamProgress {
        pb::StreamProgress {
            direction: self.direction.to_owned(),
            peer: self.peer.clone(),
            keyspace: self.keyspace.clone(),
            ranges: self.ranges,
            ranges_done: self.ranges_done.load(Ordering::Relaxed),
            cells: self.cells.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Relaxed),
        }
    }
}

#[derive(Default)]
pub struct Streams {
    list: Mutex<VecDeque<Arc<StreamEntry>>>,
}

impl Streams {
    pub fn open(
        &self,
        direction: &'static str,
        peer: &str,
        keyspace: &str,
        ranges: usize,
    ) -> Arc<StreamEntry> {
        let entry = Arc::new(StreamEntry {
            direction,
            peer: peer.to_owned(),
            keyspace: keyspace.to_owned(),
            ranges: ranges as u32,
            ranges_done: AtomicU32::new(0),
            cells: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            done: AtomicBool::new(false),
        });
        let mut list = self.list.lock();
        if list.len() == STREAMS_KEPT {
            list.pop_front();
        }
        list.push_back(entry.clone());
        entry
    }

    pub fn snapshot(&self) -> Vec<pb::StreamProgress> {
        self.list.lock().iter().map(|e| e.to_pb()).collect()
    }
}

/// A range as scannable pieces in ring order, each with the position to resume after: a
/// wrapping range `(s, e]` is `(s, MAX]` then `(MAX, e]` (tokens `0..=e`), and a resume
/// position in the second piece means the first is done.
fn pieces(range: TokenRange, after: Bytes) -> Vec<(TokenRange, Bytes)> {
    let (s, e) = (range.start, range.end);
    if s < e || s.0 == u128::MAX {
        return vec![(range, after)];
    }
    let top = TokenRange::new(s, topology::Token(u128::MAX));
    let bottom = TokenRange::new(topology::Token(u128::MAX), e);
    let in_bottom = crate::storage_key::decode(&after).is_some_and(|(t, _)| t <= e.0);
    match (after.is_empty(), in_bottom) {
        (false, true) => vec![(bottom, after)],
        (false, false) => vec![(top, after), (bottom, Bytes::new())],
        (true, _) => vec![(top, Bytes::new()), (bottom, Bytes::new())],
    }
}

fn stream_bytes(cells: &[(Bytes, Cell)]) -> u64 {
    cells
        .iter()
        .map(|(k, c)| (k.len() + c.value_len()) as u64)
        .sum()
}

impl Node {
    /// The sending side of StreamRanges: every range in order, from `after` in the first.
    pub fn serve_stream(
        self: &Arc<Self>,
        keyspace: String,
        ranges: Vec<TokenRange>,
        after: Bytes,
        peer: &str,
    ) -> mpsc::Receiver<Result<ipb::StreamRangesChunk, tonic::Status>> {
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let entry = self.streams.open("sending", peer, &keyspace, ranges.len());
        let node = self.clone();
        tokio::spawn(async move {
            let mut throttle = ReplayThrottle::new(
                node.config.stream_throughput_mib_per_sec * 1024,
                node.clock.now_ms(),
            );
            for (i, range) in ranges.into_iter().enumerate() {
                let resume = if i == 0 { after.clone() } else { Bytes::new() };
                for (range, mut position) in pieces(range, resume) {
                    loop {
                        let page = node.scan_page(&keyspace, range, &position).await;
                        let page = match page {
                            Ok(p) => p,
                            Err(e) => {
                                let _ = tx.send(Err(tonic::Status::unavailable(e))).await;
                                return;
                            }
                        };
                        let bytes = stream_bytes(&page.cells);
                        tokio::time::sleep(throttle.admit(bytes, node.clock.now_ms())).await;
                        let last = page.cells.last().map(|(k, _)| k.clone());
                        let mutations: Vec<ipb::ReplicaMutation> = (page.cells.iter())
                            .map(|(k, c)| ipb::ReplicaMutation {
                                key: k.slice(crate::storage_key::TOKEN_BYTES..),
                                cell: Some(cell_to_pb(c)),
                            })
                            .collect();
                        entry.note(mutations.len() as u64, bytes);
                        let chunk = ipb::StreamRangesChunk {
                            checksum: chunk_checksum(&mutations).unwrap_or_default(),
                            mutations,
                            progress_token: last
                                .as_ref()
                                .map(|k| k.slice(..crate::storage_key::TOKEN_BYTES))
                                .unwrap_or_default(),
                            range_index: i as u32,
                        };
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                        match (page.exhausted, last) {
                            (false, Some(k)) => position = k,
                            _ => break,
                        }
                    }
                }
                entry.ranges_done.fetch_add(1, Ordering::Relaxed);
            }
            entry.done.store(true, Ordering::Relaxed);
        });
        rx
    }

    async fn scan_page(
        self: &Arc<Self>,
        keyspace: &str,
        range: TokenRange,
        after: &[u8],
    ) -> Result<super::storage::ScanPage, String> {
        let (from, end) = super::scan::engine_bounds(range, after).map_err(|e| e.to_string())?;
        let (node, ks) = (self.clone(), keyspace.to_owned());
        tokio::task::spawn_blocking(move || node.storage.scan(&ks, from, end, CHUNK_CELLS))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Pulls `ranges` of `keyspace` from `source` and applies them; a broken stream resumes
    /// after the last applied key. Returns (cells, bytes) applied.
    pub async fn pull_ranges(
        self: &Arc<Self>,
        keyspace: &str,
        ranges: &[TokenRange],
        source: &Target,
        session_id: u64,
    ) -> Result<(u64, u64), String> {
        let entry = self
            .streams
            .open("receiving", &source.id, keyspace, ranges.len());
        let mut first = 0usize;
        let mut after = Bytes::new();
        let mut last_error = String::new();
        for _ in 0..ATTEMPTS {
            let todo = &ranges[first..];
            match self
                .pull_once(keyspace, todo, after.clone(), source, session_id, &entry)
                .await
            {
                Ok(()) => {
                    entry.done.store(true, Ordering::Relaxed);
                    let (cells, bytes) = (
                        entry.cells.load(Ordering::Relaxed),
                        entry.bytes.load(Ordering::Relaxed),
                    );
                    return Ok((cells, bytes));
                }
                Err((progress, e)) => {
                    if let Some((index, key)) = progress {
                        first += index;
                        after = key;
                    }
                    tracing::warn!(source = %source.id, %keyspace, error = %e, "stream broke; resuming");
                    last_error = e;
                }
            }
        }
        Err(format!(
            "streaming {keyspace} from {} failed: {last_error}",
            source.id
        ))
    }

    /// One attempt; on failure, how far it got: (index into `ranges`, last applied engine key).
    async fn pull_once(
        self: &Arc<Self>,
        keyspace: &str,
        ranges: &[TokenRange],
        after: Bytes,
        source: &Target,
        session_id: u64,
        entry: &StreamEntry,
    ) -> Result<(), (Option<(usize, Bytes)>, String)> {
        let fail = |e: String| (None, e);
        let mut client = self
            .peers
            .client(&source.address, Some(&source.dc))
            .map_err(|e| fail(e.to_string()))?;
        let request = ipb::StreamRangesRequest {
            sender: self.peers.sender(),
            keyspace: keyspace.to_owned(),
            ranges: ranges
                .iter()
                .map(|r| client::encode_token_range(*r))
                .collect(),
            session_id,
            after,
        };
        let mut stream = client
            .stream_ranges(request)
            .await
            .map_err(|s| fail(s.message().to_owned()))?
            .into_inner();
        let mut progress: Option<(usize, Bytes)> = None;
        let mut done_index = 0;
        loop {
            let chunk = match stream.message().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(s) => return Err((progress, s.message().to_owned())),
            };
            let expected = chunk_checksum(&chunk.mutations).map_err(|e| (progress.clone(), e))?;
            if expected != chunk.checksum {
                return Err((
                    progress,
                    format!("chunk checksum mismatch from {}", source.id),
                ));
            }
            let index = chunk.range_index as usize;
            while done_index < index {
                entry.ranges_done.fetch_add(1, Ordering::Relaxed);
                done_index += 1;
            }
            let muts: Vec<Mutation> = from_pb_mutations(chunk.mutations)
                .map_err(|e| (progress.clone(), e.to_string()))?;
            let Some(last) = muts.last().map(|m| m.key.clone()) else {
                continue;
            };
            let bytes: u64 = muts
                .iter()
                .map(|m| (m.key.len() + m.cell.value_len()) as u64)
                .sum();
            let count = muts.len() as u64;
            self.apply_local(keyspace, muts)
                .await
                .map_err(|e| (progress.clone(), e.to_string()))?;
            entry.note(count, bytes);
            progress = Some((index, last));
        }
        entry.ranges_done.store(entry.ranges, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use topology::Token;

    #[test]
    fn wrapping_ranges_stream_top_then_bottom_and_resume_in_either() {
        let wrap = TokenRange::new(Token(100), Token(5));
        let p = pieces(wrap, Bytes::new());
        assert_eq!(
            p.iter().map(|x| x.0).collect::<Vec<_>>(),
            [
                TokenRange::new(Token(100), Token(u128::MAX)),
                TokenRange::new(Token(u128::MAX), Token(5)),
            ]
        );
        let in_bottom = crate::storage_key::encode(3, b"k");
        assert_eq!(
            pieces(wrap, in_bottom.clone()),
            [(TokenRange::new(Token(u128::MAX), Token(5)), in_bottom)]
        );
        let in_top = crate::storage_key::encode(200, b"k");
        assert_eq!(
            pieces(wrap, in_top.clone())[0],
            (TokenRange::new(Token(100), Token(u128::MAX)), in_top)
        );
        let plain = TokenRange::new(Token(1), Token(9));
        assert_eq!(pieces(plain, Bytes::new()), [(plain, Bytes::new())]);
    }
}
