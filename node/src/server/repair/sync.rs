//! Streaming one differing sub-range: a paged k-way merge of one replica per group of
//! agreeing replicas, writing each group the newest cell of every key it lacks or holds an
//! older version of. Memory stays at one page per group plus one push batch per group.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use client::pb::internode::v1 as ipb;
use client::pb::v1 as pb;
use topology::TokenRange;

use super::super::convert::cell_from_pb;
use super::super::replica::{Target, Timer};
use super::super::Node;
use crate::cluster::merkle::MerkleTree;
use crate::lsm::{Cell, LastWriteWins, MergeRule, Mutation};

/// Cells per page read from a replica.
const PAGE: u32 = 1_000;
/// A group's pending writes are sent once they reach either bound; well under the 32 MiB
/// internode message limit.
const PUSH_CELLS: usize = 1_000;
const PUSH_BYTES: u64 = 4 << 20;

/// What one sub-range moved.
#[derive(Default)]
pub struct Moved {
    cells_pulled: u64,
    bytes_pulled: u64,
    cells_pushed: u64,
    bytes_pushed: u64,
}

impl Moved {
    pub fn add_to(&self, out: &mut pb::RangeRepaired) {
        out.cells_pulled += self.cells_pulled;
        out.bytes_pulled += self.bytes_pulled;
        out.cells_pushed += self.cells_pushed;
        out.bytes_pushed += self.bytes_pushed;
    }
}

/// Replicas whose leaves `a..=b` are equal hold the same cells there (up to a hash
/// collision): one of them is read for the whole group, and all of them get its writes.
pub fn groups(trees: &[(Target, MerkleTree)], a: usize, b: usize) -> Vec<Vec<Target>> {
    let mut out: Vec<(&[u64], Vec<Target>)> = Vec::new();
    for (t, tree) in trees {
        let leaves = &tree.leaves()[a..=b];
        match out.iter_mut().find(|(l, _)| *l == leaves) {
            Some((_, members)) => members.push(t.clone()),
            None => out.push((leaves, vec![t.clone()])),
        }
    }
    out.into_iter().map(|(_, m)| m).collect()
}

fn cell_bytes(key: &[u8], cell: &Cell) -> u64 {
    (key.len() + cell.encoded_len()) as u64
}

struct Cursor {
    /// The last engine key read; empty before the first page.
    after: Bytes,
    buf: VecDeque<(Bytes, Cell)>,
    exhausted: bool,
}

struct Pending {
    muts: Vec<Mutation>,
    bytes: u64,
}

impl Node {
    /// Makes every group hold the newest cell of every key of `range` (a range a replica scan
    /// takes: not wrapping, or `(MAX, e]`).
    pub(super) async fn sync_range(
        self: &Arc<Self>,
        keyspace: &str,
        range: TokenRange,
        groups: &[Vec<Target>],
    ) -> Result<Moved, String> {
        let mut moved = Moved::default();
        let mut cursors: Vec<Cursor> = (0..groups.len())
            .map(|_| Cursor {
                after: Bytes::new(),
                buf: VecDeque::new(),
                exhausted: false,
            })
            .collect();
        let mut pending: Vec<Pending> = (0..groups.len())
            .map(|_| Pending {
                muts: Vec::new(),
                bytes: 0,
            })
            .collect();
        loop {
            for (g, c) in cursors.iter_mut().enumerate() {
                if !c.buf.is_empty() || c.exhausted {
                    continue;
                }
                let (cells, exhausted) =
                    self.page(&groups[g][0], keyspace, range, &c.after).await?;
                let bytes: u64 = cells.iter().map(|(k, c)| cell_bytes(k, c)).sum();
                moved.cells_pulled += cells.len() as u64;
                moved.bytes_pulled += bytes;
                self.throttle(bytes).await;
                c.exhausted = exhausted;
                if let Some((k, _)) = cells.last() {
                    c.after = k.clone();
                }
                c.buf.extend(cells);
            }
            if cursors.iter().all(|c| c.exhausted && c.buf.is_empty()) {
                break;
            }
            // Only keys every unfinished replica has reached can be judged: a key beyond one
            // replica's page may still be on its next page.
            let frontier: Option<Bytes> = (cursors.iter())
                .filter(|c| !c.exhausted)
                .filter_map(|c| c.buf.back().map(|(k, _)| k.clone()))
                .min();
            let mut merged: BTreeMap<Bytes, Vec<Option<Cell>>> = BTreeMap::new();
            for (g, c) in cursors.iter_mut().enumerate() {
                while let Some((k, _)) = c.buf.front() {
                    if frontier.as_ref().is_some_and(|f| k > f) {
                        break;
                    }
                    let (k, cell) = c.buf.pop_front().expect("front exists");
                    merged.entry(k).or_insert_with(|| vec![None; groups.len()])[g] = Some(cell);
                }
            }
            for (key, cells) in merged {
                let winner = (cells.iter().flatten().cloned())
                    .reduce(|a, b| LastWriteWins.merge(a, b))
                    .expect("a merged key has a cell");
                for (g, cell) in cells.iter().enumerate() {
                    if cell.as_ref() == Some(&winner) {
                        continue;
                    }
                    let p = &mut pending[g];
                    p.bytes += cell_bytes(&key, &winner);
                    p.muts.push(Mutation {
                        key: key.clone(),
                        cell: winner.clone(),
                    });
                    if p.muts.len() >= PUSH_CELLS || p.bytes >= PUSH_BYTES {
                        self.push(keyspace, &groups[g], p, &mut moved).await?;
                    }
                }
            }
        }
        for (g, p) in pending.iter_mut().enumerate() {
            self.push(keyspace, &groups[g], p, &mut moved).await?;
        }
        Ok(moved)
    }

    /// Writes a group's pending cells to each of its members.
    async fn push(
        self: &Arc<Self>,
        keyspace: &str,
        members: &[Target],
        p: &mut Pending,
        moved: &mut Moved,
    ) -> Result<(), String> {
        if p.muts.is_empty() {
            return Ok(());
        }
        let muts = Arc::new(std::mem::take(&mut p.muts));
        let bytes = std::mem::take(&mut p.bytes);
        for t in members {
            self.throttle(bytes).await;
            let deadline = Instant::now()
                + Duration::from_millis(self.config.coordinator.write_timeout_ms * 5);
            (self.write_replica(t, keyspace, muts.clone(), deadline, Timer::Own))
                .await
                .map_err(|e| format!("writing to {}: {e}", t.id))?;
            moved.cells_pushed += muts.len() as u64;
            moved.bytes_pushed += bytes;
        }
        Ok(())
    }

    /// One page of a replica's raw cells of `range` after the engine key `after`.
    async fn page(
        self: &Arc<Self>,
        t: &Target,
        keyspace: &str,
        range: TokenRange,
        after: &Bytes,
    ) -> Result<(Vec<(Bytes, Cell)>, bool), String> {
        if t.id == self.me.0 {
            let (from, end) =
                super::super::scan::engine_bounds(range, after).map_err(|e| e.to_string())?;
            let node = self.clone();
            let ks = keyspace.to_owned();
            let page = tokio::task::spawn_blocking(move || {
                node.storage.scan(&ks, from, end, PAGE as usize)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            return Ok((page.cells, page.exhausted));
        }
        let mut client = (self.peers.client(&t.address, Some(&t.dc))).map_err(|e| e.to_string())?;
        let mut request = tonic::Request::new(ipb::ReplicaScanRequest {
            sender: self.peers.sender(),
            keyspace: keyspace.to_owned(),
            range: Some(client::encode_token_range(range)),
            after: after.clone(),
            limit: PAGE,
        });
        request.set_timeout(Duration::from_millis(
            self.config.coordinator.read_timeout_ms,
        ));
        let resp = (self.peers.call(&t.dc, client.replica_scan(request)).await)
            .map_err(|s| format!("reading from {}: {}", t.id, s.message()))?
            .into_inner();
        let cells = (resp.cells.into_iter())
            .map(|m| {
                let cell =
                    cell_from_pb(m.cell.unwrap_or_default(), "cell").map_err(|e| e.to_string())?;
                Ok((super::super::storage::engine_key(&m.key), cell))
            })
            .collect::<Result<_, String>>()?;
        Ok((cells, resp.exhausted))
    }
}
