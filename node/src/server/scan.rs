//! Token-range scans at a consistency level. The requested range is walked in token order,
//! one stretch of ring ranges at a time; within a stretch the same replicas answer, each
//! returns its cells after the position, and the coordinator merges them key by key with the
//! keyspace's rule. Only keys every truncated replica has reached are returned, so a key one
//! replica holds and another has not yet listed is never skipped.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use client::pb::internode::v1 as ipb;
use client::pb::v1 as pb;
use client::KvError;
use topology::{NodeIdx, Token, TokenRange};

use super::convert::cell_from_pb;
use super::route::Route;
use super::Node;
use crate::cluster::{ConsistencyLevel, ReadPlan};
use crate::lsm::{Cell, LastWriteWins, MergeRule};

const PAGING_VERSION: u8 = 1;

type EngineBounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// Everything up to `token` (and, within it, up to `key`) has been returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub token: u128,
    pub key: Option<Bytes>,
}

impl Position {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(18 + self.key.as_ref().map_or(0, |k| k.len()));
        b.put_u8(PAGING_VERSION);
        b.put_u128(self.token);
        if let Some(k) = &self.key {
            b.put_u8(1);
            b.put_slice(k);
        } else {
            b.put_u8(0);
        }
        b.freeze()
    }

    pub fn decode(b: &[u8]) -> Result<Position, KvError> {
        let bad = |why: &str| KvError::invalid_argument("paging_state", why.to_owned());
        if b.len() < 18 || b[0] != PAGING_VERSION {
            return Err(bad("not a paging state of this server version"));
        }
        let token = u128::from_be_bytes(b[1..17].try_into().expect("16 bytes"));
        let key = match b[17] {
            0 if b.len() == 18 => None,
            1 if b.len() > 18 => Some(Bytes::copy_from_slice(&b[18..])),
            _ => return Err(bad("malformed")),
        };
        Ok(Position { token, key })
    }
}

/// Engine bounds of a replica scan of `range`, resuming after the engine key `after`.
/// `(MAX, e]` means tokens `0..=e`; `(t, t]` the whole ring; other wrapping ranges are refused.
pub fn engine_bounds(range: TokenRange, after: &[u8]) -> Result<EngineBounds, KvError> {
    let (s, e) = (range.start.0, range.end.0);
    let hi_of = |e: u128| match e.checked_add(1) {
        Some(n) => Bound::Excluded(n.to_be_bytes().to_vec()),
        None => Bound::Unbounded,
    };
    let (lo, hi) = if s < e {
        crate::storage_key::token_range(s, e)
    } else if s == e {
        (Bound::Unbounded, Bound::Unbounded)
    } else if s == u128::MAX {
        (Bound::Unbounded, hi_of(e))
    } else {
        return Err(KvError::invalid_argument(
            "range",
            "a replica scan range must not wrap; split it",
        ));
    };
    let lo = if after.is_empty() {
        lo
    } else {
        Bound::Excluded(after.to_vec())
    };
    Ok((lo, hi))
}

/// The wire range of the inclusive token interval `[lo, hi]`.
fn range_pb(lo: u128, hi: u128) -> pb::TokenRange {
    let start = lo.checked_sub(1).unwrap_or(u128::MAX);
    client::encode_token_range(TokenRange::new(Token(start), Token(hi)))
}

/// The requested `(start, end]` as inclusive intervals in scan order.
fn segments(range: TokenRange) -> Vec<(u128, u128)> {
    let (s, e) = (range.start.0, range.end.0);
    let mut out = Vec::with_capacity(2);
    if s < e {
        out.push((s + 1, e));
        return out;
    }
    if s < u128::MAX {
        out.push((s + 1, u128::MAX));
    }
    out.push((0, e));
    out
}

/// The index of the ring range holding `t`: the first token at or above it, wrapping.
fn range_index(tokens: &[Token], t: u128) -> usize {
    let i = tokens.partition_point(|x| x.0 < t);
    if i == tokens.len() {
        0
    } else {
        i
    }
}

pub struct ScanPage {
    pub entries: Vec<pb::ScanEntry>,
    pub next: Option<Position>,
}

impl Node {
    /// One page of `range` after `position`.
    pub async fn coordinate_scan(
        self: &Arc<Self>,
        keyspace: &str,
        range: TokenRange,
        level: ConsistencyLevel,
        page_size: usize,
        mut position: Option<Position>,
    ) -> Result<ScanPage, KvError> {
        let deadline =
            Instant::now() + Duration::from_millis(self.config.coordinator.read_timeout_ms);
        let now_ms = self.clock.now_ms();
        let mut entries = Vec::new();
        let segs = segments(range);
        let first = (position.as_ref())
            .and_then(|p| {
                segs.iter()
                    .position(|(lo, hi)| (*lo..=*hi).contains(&p.token))
            })
            .unwrap_or(0);
        for (j, &(seg_lo, seg_hi)) in segs.iter().enumerate().skip(first) {
            let mut lo = seg_lo;
            if let (true, Some(p)) = (j == first, &position) {
                lo = match (&p.key, p.token.checked_add(1)) {
                    (Some(_), _) => p.token,
                    (None, Some(next)) if p.token < seg_hi => next,
                    (None, _) => continue,
                };
            }
            loop {
                let want = page_size - entries.len();
                let (chunk_hi, cells, done) = self
                    .scan_chunk(
                        keyspace,
                        level,
                        lo,
                        seg_hi,
                        position.as_ref(),
                        want,
                        deadline,
                    )
                    .await?;
                for (key, cell) in cells {
                    let token = topology::token_of(&key);
                    position = Some(Position {
                        token: token.0,
                        key: Some(key.clone()),
                    });
                    if let Some(v) = super::convert::read_value(&cell, now_ms) {
                        entries.push(pb::ScanEntry {
                            key,
                            token: client::encode_token(token),
                            value: Some(v),
                        });
                    }
                }
                if !done {
                    return Ok(ScanPage {
                        entries,
                        next: position,
                    });
                }
                position = Some(Position {
                    token: chunk_hi,
                    key: None,
                });
                if chunk_hi >= seg_hi {
                    break;
                }
                lo = chunk_hi + 1;
                if entries.len() >= page_size {
                    return Ok(ScanPage {
                        entries,
                        next: position,
                    });
                }
            }
        }
        Ok(ScanPage {
            entries,
            next: None,
        })
    }

    /// Scans `[lo, ..]` up to the end of the stretch of ring ranges the same replicas serve
    /// (capped at `hi`); returns the stretch's end, the merged cells, and whether the stretch
    /// was finished.
    #[allow(clippy::too_many_arguments)]
    async fn scan_chunk(
        self: &Arc<Self>,
        keyspace: &str,
        level: ConsistencyLevel,
        lo: u128,
        hi: u128,
        position: Option<&Position>,
        want: usize,
        deadline: Instant,
    ) -> Result<(u128, Vec<(Bytes, Cell)>, bool), KvError> {
        let route = self.route_token(keyspace, Token(lo))?;
        let alive = |n: NodeIdx| self.members.is_alive(route.id(n));
        let plan = ReadPlan::new(level, &route.layout, &route.coordinator, alive)
            .map_err(|e| route.consistency_error(e, alive))?;
        let nodes: Vec<NodeIdx> = plan.contacted().collect();
        let chunk_hi = self.stretch_end(&route, keyspace, &nodes, lo, hi);
        let after = match position {
            Some(Position {
                token,
                key: Some(k),
            }) if *token >= lo => crate::storage_key::encode(*token, k),
            _ => Bytes::new(),
        };
        let limit = want.max(1) as u32;
        let calls = nodes.iter().map(|&n| {
            let request = ipb::ReplicaScanRequest {
                sender: self.peers.sender(),
                keyspace: keyspace.to_owned(),
                range: Some(range_pb(lo, chunk_hi)),
                after: after.clone(),
                limit,
            };
            self.scan_replica(&route, n, request, deadline)
        });
        let answers = futures_util::future::join_all(calls).await;
        let mut merged: BTreeMap<Bytes, Cell> = BTreeMap::new();
        let mut frontier: Option<Bytes> = None;
        for (i, answer) in answers.into_iter().enumerate() {
            let (cells, exhausted) =
                answer.map_err(|_| route.timeout(&plan.requirement, &nodes[..i], false, false))?;
            if !exhausted {
                let last = cells.last().map(|(k, _)| k.clone());
                frontier = match (frontier, last) {
                    (Some(f), Some(l)) => Some(f.min(l)),
                    (f, l) => f.or(l),
                };
            }
            for (k, c) in cells {
                let c = match merged.remove(&k) {
                    Some(m) => LastWriteWins.merge(m, c),
                    None => c,
                };
                merged.insert(k, c);
            }
        }
        let done = frontier.is_none();
        let cells = (merged.into_iter())
            .filter(|(k, _)| frontier.as_ref().is_none_or(|f| k <= f))
            .map(|(k, c)| (k.slice(crate::storage_key::TOKEN_BYTES..), c))
            .collect();
        Ok((chunk_hi, cells, done))
    }

    /// The end of the run of ring ranges from `lo` whose replicas all include `nodes`.
    fn stretch_end(
        &self,
        route: &Route,
        keyspace: &str,
        nodes: &[NodeIdx],
        lo: u128,
        hi: u128,
    ) -> u128 {
        let ring = route.view.ring.as_ref().expect("a route has a ring");
        let Ok(placement) = ring.placement(keyspace) else {
            return hi;
        };
        let tokens = ring.tokens();
        let mut i = range_index(tokens, lo);
        for _ in 0..tokens.len() {
            let end = tokens[i].0;
            if end >= hi || end < lo {
                return hi;
            }
            let next = (i + 1) % tokens.len();
            let set = placement.replicas_of_range(next);
            if !nodes.iter().all(|n| set.indices().contains(n)) {
                return end;
            }
            i = next;
        }
        hi
    }

    async fn scan_replica(
        self: &Arc<Self>,
        route: &Route,
        n: NodeIdx,
        request: ipb::ReplicaScanRequest,
        deadline: Instant,
    ) -> Result<(Vec<(Bytes, Cell)>, bool), KvError> {
        let to_kv = |e: String| KvError::Other {
            code: tonic::Code::Unavailable,
            message: e,
        };
        let target = self.target(route, n);
        if route.is_me(n) {
            let range = client::decode_token_range(request.range.as_ref().expect("set above"))
                .map_err(|(_, e)| to_kv(e.to_string()))?;
            let (from, end) = engine_bounds(range, &request.after)?;
            let node = self.clone();
            let ks = request.keyspace.clone();
            let limit = request.limit as usize;
            let page =
                tokio::task::spawn_blocking(move || node.storage.scan(&ks, from, end, limit))
                    .await
                    .map_err(|e| to_kv(e.to_string()))?
                    .map_err(|e| to_kv(e.to_string()))?;
            return Ok((page.cells, page.exhausted));
        }
        let mut client = self
            .peers
            .client(&target.address)
            .map_err(|e| to_kv(e.to_string()))?;
        let mut request = tonic::Request::new(request);
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let resp = self
            .peers
            .call(&target.dc, client.replica_scan(request))
            .await
            .map_err(|s| to_kv(s.message().to_owned()))?
            .into_inner();
        let cells = (resp.cells.into_iter())
            .map(|m| {
                let cell = cell_from_pb(m.cell.unwrap_or_default(), "cell")?;
                Ok((super::storage::engine_key(&m.key), cell))
            })
            .collect::<Result<_, KvError>>()?;
        Ok((cells, resp.exhausted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_state_round_trips_and_refuses_garbage() {
        for p in [
            Position {
                token: 7,
                key: None,
            },
            Position {
                token: u128::MAX,
                key: Some(Bytes::from_static(b"k")),
            },
        ] {
            assert_eq!(Position::decode(&p.encode()).unwrap(), p);
        }
        assert!(Position::decode(b"").is_err());
        assert!(Position::decode(&[9; 18]).is_err());
    }

    #[test]
    fn wrapping_ranges_split_in_scan_order() {
        let r = |s, e| TokenRange::new(Token(s), Token(e));
        assert_eq!(segments(r(5, 10)), vec![(6, 10)]);
        assert_eq!(segments(r(10, 5)), vec![(11, u128::MAX), (0, 5)]);
        assert_eq!(segments(r(3, 3)), vec![(4, u128::MAX), (0, 3)]);
        assert_eq!(segments(r(u128::MAX, u128::MAX)), vec![(0, u128::MAX)]);
    }

    #[test]
    fn engine_bounds_cover_the_bottom_of_the_ring() {
        let (lo, hi) = engine_bounds(TokenRange::new(Token(u128::MAX), Token(0)), b"").unwrap();
        assert_eq!(lo, Bound::Unbounded);
        assert_eq!(hi, Bound::Excluded(1u128.to_be_bytes().to_vec()));
        assert!(engine_bounds(TokenRange::new(Token(9), Token(3)), b"").is_err());
    }
}
