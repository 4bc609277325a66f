//! Anti-entropy repair with Merkle trees (docs/repair.md). A coordinator repairs one range of
//! one keyspace at a time: every replica hashes the range into a tree of the same shape, the
//! coordinator finds the runs of leaves where they disagree, and for each run reads the cells
//! of one replica per group of agreeing replicas, merges them key by key (newest wins) and
//! writes each group what it lacks. Complete repairs are recorded by every replica and bound
//! tombstone purging.

mod history;
mod sync;

use std::sync::Arc;
use std::time::{Duration, Instant};

use client::pb::internode::v1 as ipb;
use client::pb::v1 as pb;
use client::KvError;
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use topology::{NodeIdx, Ring, Token, TokenRange};

pub use history::History;
use history::{RangeKey, Record};

use super::replica::Target;
use super::Node;
use crate::cluster::merkle::{self, MerkleTree, Shape};
use crate::cluster::ReplayThrottle;
use crate::config::TombstoneGc;

/// Building a tree reads the whole range from disk; a large range takes a while.
const TREE_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the background loop refreshes GC horizons while it has no range to repair.
const HORIZON_REFRESH: Duration = Duration::from_secs(10);

/// A node's repair state: history, and one throttle shared by every repair it coordinates.
pub struct Repairs {
    pub history: History,
    throttle: Mutex<ReplayThrottle>,
}

impl Repairs {
    pub fn new(history: History, mib_per_sec: u64, now_ms: u64) -> Repairs {
        Repairs {
            history,
            throttle: Mutex::new(ReplayThrottle::new(
                mib_per_sec.saturating_mul(1024),
                now_ms,
            )),
        }
    }
}

/// A pause between background repairs: `interval_ms` scaled by 0.5 + `unit` (`unit` in [0, 1)),
/// so the mean stays the interval while nodes started together stop repairing at the same
/// moments: every replica builds a tree for each repair, and three nodes' simultaneous
/// repairs stalled a 3-node cluster's operations for up to 0.5 s (docs/benchmarks.md).
fn spread(interval_ms: u64, unit: f64) -> Duration {
    Duration::from_millis(interval_ms).mul_f64(0.5 + unit.clamp(0.0, 1.0))
}

/// One range of one keyspace to repair, and the replicas to compare.
#[derive(Clone, Debug)]
pub struct Job {
    pub keyspace: String,
    pub schema_version: u64,
    pub range: TokenRange,
    pub replicas: Vec<Target>,
    /// The job is a whole ring range and names every replica in every DC: only then is a
    /// successful repair recorded.
    pub recordable: bool,
}

/// The inclusive token intervals of `(start, end]`, not wrapping.
fn intervals(r: TokenRange) -> Vec<(u128, u128)> {
    let (s, e) = (r.start.0, r.end.0);
    if s < e {
        vec![(s + 1, e)]
    } else if s == e {
        vec![(0, u128::MAX)]
    } else if s == u128::MAX {
        vec![(0, e)]
    } else {
        vec![(s + 1, u128::MAX), (0, e)]
    }
}

/// The inclusive interval `[lo, hi]` as a range `(lo - 1, hi]`.
fn from_interval(lo: u128, hi: u128) -> TokenRange {
    TokenRange::new(Token(lo.wrapping_sub(1)), Token(hi))
}

/// Ranges a replica scan takes: `(s, e]` with `s < e`, or `(MAX, e]`.
pub fn scan_pieces(r: TokenRange) -> Vec<TokenRange> {
    let (s, e) = (r.start.0, r.end.0);
    if s < e || s == u128::MAX {
        return vec![r];
    }
    vec![
        TokenRange::new(Token(s), Token(u128::MAX)),
        TokenRange::new(Token(u128::MAX), Token(e)),
    ]
}

/// The parts of ring range `ring_range` inside `wanted`: the ring range itself when it lies
/// wholly inside.
fn clip(ring_range: TokenRange, wanted: Option<TokenRange>) -> Vec<TokenRange> {
    let Some(wanted) = wanted else {
        return vec![ring_range];
    };
    let mine = intervals(ring_range);
    let mut out = Vec::new();
    for &(a, b) in &mine {
        for &(c, d) in &intervals(wanted) {
            let (lo, hi) = (a.max(c), b.min(d));
            if lo <= hi {
                out.push((lo, hi));
            }
        }
    }
    if out == mine {
        return vec![ring_range];
    }
    out.into_iter().map(|(l, h)| from_interval(l, h)).collect()
}

fn target_of(ring: &Ring, n: NodeIdx) -> Target {
    Target::of(ring.node(n))
}

fn unavailable(message: String) -> KvError {
    KvError::Other {
        code: tonic::Code::Unavailable,
        message,
    }
}

#[derive(Default)]
struct Totals {
    summary: pb::RepairSummary,
}

impl Totals {
    fn add(&mut self, r: &pb::RangeRepaired) {
        let s = &mut self.summary;
        s.ranges_compared += 1;
        s.ranges_differing += u32::from(r.sub_ranges_differing > 0);
        s.ranges_failed += u32::from(!r.error.is_empty());
        s.sub_ranges_differing += u64::from(r.sub_ranges_differing);
        s.cells_pulled += r.cells_pulled;
        s.bytes_pulled += r.bytes_pulled;
        s.cells_pushed += r.cells_pushed;
        s.bytes_pushed += r.bytes_pushed;
    }
}

impl Node {
    /// The jobs of a client's repair request, validated before anything runs.
    pub fn plan_repair(&self, r: &pb::RepairRequest) -> Result<Vec<Job>, KvError> {
        let view = self.members.view();
        let ring = (view.ring.as_ref())
            .ok_or_else(|| unavailable("this node has no usable ring yet".into()))?;
        let keyspaces: Vec<(String, u64)> = if r.keyspace.is_empty() {
            (view.schema.live())
                .map(|(n, d)| (n.to_owned(), d.version))
                .collect()
        } else {
            let def = view.schema.get(&r.keyspace).ok_or_else(|| {
                KvError::KeyspaceNotFound(pb::KeyspaceNotFound {
                    keyspace: r.keyspace.clone(),
                })
            })?;
            vec![(r.keyspace.clone(), def.version)]
        };
        if !r.dc.is_empty() && !ring.datacenters().any(|d| d == r.dc) {
            return Err(KvError::invalid_argument(
                "dc",
                format!("no node of the ring is in DC {:?}", r.dc),
            ));
        }
        let wanted = (r.range.as_ref())
            .map(client::decode_token_range)
            .transpose()
            .map_err(|(f, e)| KvError::invalid_argument(format!("range.{f}"), e.to_string()))?;
        let mut jobs = Vec::new();
        for (keyspace, version) in keyspaces {
            let Ok(placement) = ring.placement(&keyspace) else {
                continue;
            };
            for i in 0..ring.tokens().len() {
                let set = placement.replicas_of_range(i);
                let replicas: Vec<Target> = (set.indices().iter())
                    .map(|&n| target_of(ring, n))
                    .filter(|t| r.dc.is_empty() || t.dc == r.dc)
                    .collect();
                let ring_range = ring.range(i);
                for range in clip(ring_range, wanted) {
                    jobs.push(Job {
                        keyspace: keyspace.clone(),
                        schema_version: version,
                        range,
                        recordable: range == ring_range && r.dc.is_empty(),
                        replicas: replicas.clone(),
                    });
                }
            }
        }
        Ok(jobs)
    }

    /// Runs `jobs`, reporting each range and then the totals on `progress`; stops early when
    /// the receiver is gone (kvctl interrupted).
    pub async fn run_repair(
        self: Arc<Self>,
        jobs: Vec<Job>,
        progress: mpsc::Sender<Result<pb::RepairProgress, tonic::Status>>,
    ) {
        let started = Instant::now();
        let mut totals = Totals::default();
        for job in jobs {
            let outcome = self.repair_range(&job).await;
            totals.add(&outcome);
            let event = pb::repair_progress::Event::Range(outcome);
            let sent = progress
                .send(Ok(pb::RepairProgress { event: Some(event) }))
                .await;
            if sent.is_err() {
                tracing::info!("repair abandoned: the client went away");
                return;
            }
        }
        totals.summary.duration_ms = started.elapsed().as_millis() as u64;
        let event = pb::repair_progress::Event::Summary(totals.summary);
        let _ = progress
            .send(Ok(pb::RepairProgress { event: Some(event) }))
            .await;
    }

    /// Deletions older than this are left out of trees and streams: the keyspace's GC
    /// horizon, so what replicas may already have purged is not compared.
    fn purge_before_ms(&self, keyspace: &str, schema_version: u64) -> u64 {
        match self.config.repair.tombstone_gc {
            TombstoneGc::Grace => {
                (self.clock.now_ms()).saturating_sub(self.config.repair.gc_grace_ms)
            }
            TombstoneGc::Repair => self.repair_horizon_ms(keyspace, schema_version),
        }
    }

    /// Repairs one range: trees from every replica, then the differing sub-ranges.
    pub async fn repair_range(self: &Arc<Self>, job: &Job) -> pb::RangeRepaired {
        let started_at_ms = self.clock.now_ms();
        let depth = self.config.repair.merkle_depth;
        let mut out = pb::RangeRepaired {
            keyspace: job.keyspace.clone(),
            range: Some(client::encode_token_range(job.range)),
            ..pb::RangeRepaired::default()
        };
        let shape = match Shape::new(job.range.start.0, job.range.end.0, depth) {
            Ok(s) => s,
            Err(e) => {
                out.error = e.to_string();
                return out;
            }
        };
        if job.replicas.len() == 1 && job.replicas[0].id == self.me.0 && job.recordable {
            // A single replica agrees with itself; recording it lets its tombstones be purged.
            out.replicas.push(pb::ReplicaRoot {
                node_id: self.me.0.clone(),
                ..pb::ReplicaRoot::default()
            });
            out.complete = true;
            self.metrics.repairs_completed.add(1);
            self.announce_repair(job, started_at_ms).await;
            return out;
        }
        let purge_before = self.purge_before_ms(&job.keyspace, job.schema_version);
        let trees = futures_util::future::join_all(
            (job.replicas.iter())
                .map(|t| self.tree_of(t, &job.keyspace, job.range, shape, purge_before)),
        )
        .await;
        let mut ok: Vec<(Target, MerkleTree)> = Vec::new();
        for (t, tree) in job.replicas.iter().zip(trees) {
            match tree {
                Ok(tree) => {
                    out.replicas.push(pb::ReplicaRoot {
                        node_id: t.id.clone(),
                        root: tree.root(),
                        error: String::new(),
                    });
                    ok.push((t.clone(), tree));
                }
                Err(e) => out.replicas.push(pb::ReplicaRoot {
                    node_id: t.id.clone(),
                    root: 0,
                    error: e.clone(),
                }),
            }
        }
        let failed = ok.len() < job.replicas.len();
        let Some((_, first)) = ok.first() else {
            out.error = "no replica built a tree".into();
            return out;
        };
        let runs = first.runs(|i| ok.iter().any(|(_, t)| t.leaves()[i] != first.leaves()[i]));
        out.sub_ranges_differing = runs.len() as u32;
        if !runs.is_empty() {
            self.metrics.repair_ranges_differing.add(1);
        }
        let mut sync_error = None;
        for (a, b) in runs {
            let Some((lo, hi)) = shape.span(a, b) else {
                continue;
            };
            let groups = sync::groups(&ok, a, b);
            let sub = TokenRange::new(Token(lo), Token(hi));
            for piece in scan_pieces(sub) {
                match self.sync_range(&job.keyspace, piece, &groups).await {
                    Ok(moved) => moved.add_to(&mut out),
                    Err(e) => sync_error = Some(e),
                }
            }
        }
        self.metrics
            .repair_bytes_streamed
            .add(out.bytes_pulled + out.bytes_pushed);
        if let Some(e) = sync_error {
            out.error = e;
        } else if failed {
            out.error = "some replicas built no tree; they were not repaired".into();
        } else {
            self.metrics.repairs_completed.add(1);
            out.complete = job.recordable;
            if job.recordable {
                self.announce_repair(job, started_at_ms).await;
            }
        }
        out
    }

    /// One replica's tree of the range: built here for this node, asked for otherwise.
    async fn tree_of(
        self: &Arc<Self>,
        t: &Target,
        keyspace: &str,
        range: TokenRange,
        shape: Shape,
        purge_before_ms: u64,
    ) -> Result<MerkleTree, String> {
        if t.id == self.me.0 {
            return self
                .build_tree(keyspace, range, shape, purge_before_ms)
                .await
                .map_err(|e| e.to_string());
        }
        let mut client = (self.peers.client(&t.address, Some(&t.dc))).map_err(|e| e.to_string())?;
        let mut request = tonic::Request::new(ipb::MerkleTreeRequest {
            sender: self.peers.sender(),
            keyspace: keyspace.to_owned(),
            range: Some(client::encode_token_range(range)),
            depth: shape.depth().into(),
            purge_before_ms,
        });
        request.set_timeout(TREE_TIMEOUT);
        let r = self
            .peers
            .call(&t.dc, client.merkle_tree(request))
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        merkle::decode_leaves(shape, &r.leaves, r.leaves_checksum).map_err(|e| e.to_string())
    }

    /// This node's tree of `range`, read in one pass over the engine.
    pub async fn build_tree(
        self: &Arc<Self>,
        keyspace: &str,
        range: TokenRange,
        shape: Shape,
        purge_before_ms: u64,
    ) -> Result<MerkleTree, KvError> {
        let node = self.clone();
        let keyspace = keyspace.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut tree = MerkleTree::new(shape);
            for piece in scan_pieces(range) {
                let (from, end) = super::scan::engine_bounds(piece, b"")?;
                node.storage
                    .visit(&keyspace, from, end, |k, c| {
                        if merkle::counts(c, purge_before_ms) {
                            tree.insert(k, c);
                        }
                    })
                    .map_err(|e| unavailable(e.to_string()))?;
            }
            Ok(tree)
        })
        .await
        .map_err(|e| unavailable(e.to_string()))?
    }

    /// Records a complete repair here and on every other replica of the range.
    async fn announce_repair(self: &Arc<Self>, job: &Job, started_at_ms: u64) {
        let completed_at_ms = self.clock.now_ms();
        let calls = job.replicas.iter().map(|t| async move {
            if t.id == self.me.0 {
                return self
                    .record_repair(&job.keyspace, job.schema_version, job.range, started_at_ms)
                    .await
                    .map_err(|e| e.to_string());
            }
            let mut client =
                (self.peers.client(&t.address, Some(&t.dc))).map_err(|e| e.to_string())?;
            let request = ipb::RepairCompletedRequest {
                sender: self.peers.sender(),
                keyspace: job.keyspace.clone(),
                schema_version: job.schema_version,
                range: Some(client::encode_token_range(job.range)),
                started_at_ms,
            };
            let mut request = tonic::Request::new(request);
            request.set_timeout(Duration::from_millis(
                self.config.coordinator.write_timeout_ms,
            ));
            (self
                .peers
                .call(&t.dc, client.repair_completed(request))
                .await)
                .map(|_| ())
                .map_err(|s| s.message().to_owned())
        });
        for (t, r) in job
            .replicas
            .iter()
            .zip(futures_util::future::join_all(calls).await)
        {
            if let Err(e) = r {
                // The replica keeps its older record: it only purges less, never too much.
                tracing::warn!(node = %t.id, keyspace = %job.keyspace, error = %e, completed_at_ms,
                    "a replica did not record a repair");
            }
        }
    }

    /// Records a complete repair of one ring range and moves the keyspace's GC horizon.
    pub async fn record_repair(
        self: &Arc<Self>,
        keyspace: &str,
        schema_version: u64,
        range: TokenRange,
        started_at_ms: u64,
    ) -> Result<(), KvError> {
        let node = self.clone();
        let key = RangeKey {
            keyspace: keyspace.to_owned(),
            schema_version,
            start: range.start.0,
            end: range.end.0,
        };
        let record = Record {
            started_at_ms,
            completed_at_ms: self.clock.now_ms(),
        };
        tokio::task::spawn_blocking(move || {
            let view = node.members.view();
            node.repairs
                .history
                .record(key, record, &view.schema, view.ring.as_deref())
        })
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .map_err(|e| unavailable(e.to_string()))?;
        self.update_gc_horizons();
        Ok(())
    }

    /// The time before which every replica of every range this node holds of `keyspace` has
    /// seen every write: the oldest start of the ranges' last complete repairs, less the
    /// write timeout and the clock drift bound (a write stamped just before the repair
    /// started may still have been on its way). 0 when some range was never repaired.
    fn repair_horizon_ms(&self, keyspace: &str, schema_version: u64) -> u64 {
        let view = self.members.view();
        let Some(ring) = view.ring.as_ref() else {
            return 0;
        };
        let Some(me) = ring.find(&self.me.0) else {
            return 0;
        };
        let s = self.repairs.history.summary(
            ring,
            keyspace,
            schema_version,
            me,
            self.clock.now_ms(),
            self.config.repair.gc_grace_ms,
        );
        let margin =
            self.config.coordinator.write_timeout_ms + self.config.coordinator.hlc_max_drift_ms;
        s.min_started_ms.saturating_sub(margin)
    }

    /// Sets every keyspace engine's GC horizon from the repair history (under repair-tied
    /// GC; under grace the engines keep their own rule).
    pub fn update_gc_horizons(&self) {
        if self.config.repair.tombstone_gc != TombstoneGc::Repair {
            return;
        }
        let view = self.members.view();
        for (name, def) in view.schema.live() {
            // 1, not 0: the engine reads 0 as "use the grace rule".
            let horizon = self.repair_horizon_ms(name, def.version).max(1);
            if let Err(e) = self.storage.set_gc_horizon_ms(name, Some(horizon)) {
                tracing::debug!(keyspace = %name, error = %e, "no GC horizon set");
            }
        }
    }

    /// This node's repair history per keyspace, for RepairStatus.
    pub fn repair_status(&self) -> pb::RepairStatusResponse {
        let view = self.members.view();
        let now = self.clock.now_ms();
        let grace = self.config.repair.gc_grace_ms;
        let mut keyspaces = Vec::new();
        if let (Some(ring), Some(me)) = (
            view.ring.as_ref(),
            view.ring.as_ref().and_then(|r| r.find(&self.me.0)),
        ) {
            for (name, def) in view.schema.live() {
                let s = self
                    .repairs
                    .history
                    .summary(ring, name, def.version, me, now, grace);
                let gc_horizon_ms = match self.config.repair.tombstone_gc {
                    TombstoneGc::Repair => self.repair_horizon_ms(name, def.version),
                    TombstoneGc::Grace => now.saturating_sub(grace),
                };
                keyspaces.push(pb::KeyspaceRepairStatus {
                    keyspace: name.to_owned(),
                    ranges: s.ranges,
                    ranges_repaired: s.repaired,
                    ranges_overdue: s.overdue,
                    oldest_repair_ms: s.oldest_repair_ms,
                    gc_horizon_ms,
                });
            }
        }
        pb::RepairStatusResponse {
            node_id: self.me.0.clone(),
            gc_grace_ms: grace,
            keyspaces,
        }
    }

    /// The next range this node is primary for (first replica of the range) whose replicas
    /// are all up, the one repaired longest ago first; never-repaired ranges come first.
    fn next_background_job(&self) -> Option<Job> {
        let view = self.members.view();
        let ring = view.ring.as_ref()?;
        let me = ring.find(&self.me.0)?;
        let mut best: Option<(u64, Job)> = None;
        for (name, def) in view.schema.live() {
            let Ok(placement) = ring.placement(name) else {
                continue;
            };
            for i in 0..ring.tokens().len() {
                let set = placement.replicas_of_range(i);
                if set.indices().first() != Some(&me) {
                    continue;
                }
                if !set
                    .indices()
                    .iter()
                    .all(|&n| self.members.is_alive(ring.node(n).id.as_str()))
                {
                    continue;
                }
                let range = ring.range(i);
                let last = self
                    .repairs
                    .history
                    .get(&RangeKey {
                        keyspace: name.to_owned(),
                        schema_version: def.version,
                        start: range.start.0,
                        end: range.end.0,
                    })
                    .map_or(0, |r| r.completed_at_ms);
                if best.as_ref().is_none_or(|(b, _)| last < *b) {
                    let replicas = set.indices().iter().map(|&n| target_of(ring, n)).collect();
                    best = Some((
                        last,
                        Job {
                            keyspace: name.to_owned(),
                            schema_version: def.version,
                            range,
                            replicas,
                            recordable: true,
                        },
                    ));
                }
            }
        }
        best.map(|(_, j)| j)
    }

    /// Continuous anti-entropy: one range every `repair.interval_ms`, and GC horizons kept up
    /// to date with the history (also when background repair is off, for manual repairs).
    pub(super) async fn repair_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let cfg = &self.config.repair;
        loop {
            self.update_gc_horizons();
            let pause = match cfg.enabled {
                true => spread(cfg.interval_ms, self.rng.lock().gen()),
                false => HORIZON_REFRESH,
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
            if !cfg.enabled {
                continue;
            }
            let Some(job) = self.next_background_job() else {
                continue;
            };
            let outcome = tokio::select! {
                o = self.repair_range(&job) => o,
                _ = stop.changed() => return,
            };
            if outcome.sub_ranges_differing > 0 || !outcome.error.is_empty() {
                tracing::info!(
                    keyspace = %job.keyspace, range = %job.range,
                    differing = outcome.sub_ranges_differing,
                    cells_pushed = outcome.cells_pushed, error = %outcome.error,
                    "background repair of a range"
                );
            }
        }
    }

    /// Waits as long as the repair throughput allows for `bytes` more.
    async fn throttle(&self, bytes: u64) {
        let wait = self
            .repairs
            .throttle
            .lock()
            .admit(bytes, self.clock.now_ms());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: u128, e: u128) -> TokenRange {
        TokenRange::new(Token(s), Token(e))
    }

    #[test]
    fn clipping_keeps_whole_ranges_whole() {
        assert_eq!(clip(r(10, 20), None), vec![r(10, 20)]);
        assert_eq!(clip(r(10, 20), Some(r(5, 5))), vec![r(10, 20)]);
        assert_eq!(clip(r(10, 20), Some(r(15, 30))), vec![r(15, 20)]);
        assert_eq!(clip(r(10, 20), Some(r(20, 30))), vec![]);
        assert_eq!(clip(r(u128::MAX - 1, 5), Some(r(0, 3))), vec![r(0, 3)]);
        assert_eq!(clip(r(50, 5), Some(r(1, 100))), vec![r(50, 100), r(1, 5)]);
        assert_eq!(clip(r(50, 5), Some(r(40, 10))), vec![r(50, 5)]);
    }

    #[test]
    fn wrapping_ranges_split_for_scans() {
        assert_eq!(scan_pieces(r(3, 9)), vec![r(3, 9)]);
        assert_eq!(scan_pieces(r(u128::MAX, 9)), vec![r(u128::MAX, 9)]);
        assert_eq!(scan_pieces(r(9, 3)), vec![r(9, u128::MAX), r(u128::MAX, 3)]);
        assert_eq!(scan_pieces(r(9, 9)), vec![r(9, u128::MAX), r(u128::MAX, 9)]);
    }

    #[test]
    fn background_repair_pauses_spread_around_the_interval() {
        let ms = |unit| spread(60_000, unit).as_millis();
        assert_eq!((ms(0.0), ms(0.5), ms(0.999)), (30_000, 60_000, 89_940));
        assert_eq!(
            (ms(-1.0), ms(7.0)),
            (30_000, 90_000),
            "out-of-range draws are clamped"
        );
    }
}
