//! Topology changes driven by the node that changes: joining (bootstrap), replacing a dead
//! node, and decommissioning. Each is a sequence of gossiped states; a join or replace keeps
//! its progress in `<data_dir>/bootstrap` (a [`super::statefile`] with magic `KVBS`) so a
//! restart resumes with the same tokens and skips the ranges already streamed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::pb::v1 as pb;
use client::pb::v1::key_value_client::KeyValueClient;
use client::KvError;
use serde::{Deserialize, Serialize};
use topology::{Allocator, Change, ChangePlan, NewNode, NodeId, NodeState, Token, TokenRange};

use super::identity::{self, Identity};
use super::replica::Target;
use super::statefile;
use super::Node;

const MAGIC: [u8; 4] = *b"KVBS";
const FILE: &str = "bootstrap";
/// How long a change waits for every live node to see its new state before going on anyway.
const AGREEMENT_WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Progress {
    /// (keyspace, range start, range end) streamed and applied.
    done: BTreeSet<(String, u128, u128)>,
}

fn failed(message: impl Into<String>) -> KvError {
    KvError::Other {
        code: tonic::Code::FailedPrecondition,
        message: message.into(),
    }
}

impl Node {
    /// Whether this start must bootstrap: a first start with `join` or `replace`, or an
    /// unfinished bootstrap.
    pub(super) fn needs_bootstrap(config: &crate::config::NodeConfig, identity: &Identity) -> bool {
        config.data_dir.join(FILE).exists()
            || (identity.tokens.is_empty() && (config.join || config.replace.is_some()))
    }

    /// Joins (or replaces) and becomes NORMAL; on an error that retrying cannot fix, logs it
    /// and asks the process to stop.
    pub(super) async fn bootstrap(self: Arc<Self>, identity: Identity) {
        if let Err(e) = self.try_bootstrap(identity).await {
            tracing::error!(error = %e, "bootstrap failed; stopping");
            self.request_stop();
        }
    }

    async fn try_bootstrap(self: &Arc<Self>, mut identity: Identity) -> Result<(), String> {
        let path = self.config.data_dir.join(FILE);
        let mut progress: Progress = statefile::read(&path, MAGIC)
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        statefile::write(&path, MAGIC, &progress).map_err(|e| e.to_string())?;
        self.wait_for_cluster().await;
        if identity.tokens.is_empty() {
            let view = self.members.view();
            if let Some((id, m)) = view.change_in_progress(&self.me.0) {
                return Err(format!(
                    "another topology change is under way ({id} is {:?}); start this node again \
                     once it is done (one change at a time)",
                    m.status
                ));
            }
        }
        if let Some(dead) = &self.config.replace {
            self.wait_until_convicted(dead).await?;
        }
        if identity.tokens.is_empty() {
            identity.tokens = self.choose_tokens()?;
            identity::save(&self.config, &identity).map_err(|e| e.to_string())?;
        }
        self.members
            .announce_joining(identity.tokens.clone(), self.config.replace.clone());
        tracing::info!(
            tokens = identity.tokens.len(),
            "announced JOINING; waiting for the cluster to see it"
        );
        self.wait_peers_see(|n| n.is_some_and(|n| n.state() == pb::NodeState::Joining))
            .await;
        let plan = self.bootstrap_plan(&identity.tokens)?;
        for (keyspace, source, ranges) in self.streams_to(&plan, &self.me) {
            let todo: Vec<TokenRange> = (ranges.into_iter())
                .filter(|r| {
                    !progress
                        .done
                        .contains(&(keyspace.clone(), r.start.0, r.end.0))
                })
                .collect();
            if todo.is_empty() {
                continue;
            }
            self.pull_with_fallback(&keyspace, &todo, source.as_ref())
                .await?;
            for r in todo {
                progress.done.insert((keyspace.clone(), r.start.0, r.end.0));
            }
            statefile::write(&path, MAGIC, &progress).map_err(|e| e.to_string())?;
        }
        self.members.set_status(NodeState::Normal);
        std::fs::remove_file(&path).map_err(|e| e.to_string())?;
        tracing::info!("bootstrap complete: NORMAL");
        Ok(())
    }

    /// Waits until gossip has brought at least one NORMAL member with tokens: the ring to
    /// join. No bound: a node that cannot reach its seeds has nothing else to do.
    async fn wait_for_cluster(&self) {
        let mut logged = Instant::now();
        loop {
            let view = self.members.view();
            let known = (view.members.iter()).any(|(id, m)| {
                *id != self.me && m.status == NodeState::Normal && !m.tokens.is_empty()
            });
            if known && view.ring.is_some() {
                return;
            }
            if logged.elapsed() > Duration::from_secs(10) {
                tracing::warn!(seeds = ?self.config.seeds, "still waiting to hear from the cluster");
                logged = Instant::now();
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A node just learned through gossip counts as alive until its silence says otherwise,
    /// so the replaced node is given time to be convicted; one whose heartbeat still advances
    /// is alive and must not be replaced.
    async fn wait_until_convicted(&self, dead: &str) -> Result<(), String> {
        let deadline = Instant::now() + AGREEMENT_WAIT;
        while self.members.is_alive(dead) {
            if Instant::now() >= deadline {
                return Err(format!("cannot replace {dead}: it is alive; stop it first"));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    fn choose_tokens(&self) -> Result<Vec<Token>, String> {
        let view = self.members.view();
        let ring = view.ring.as_ref().ok_or("no ring")?;
        if let Some(dead) = &self.config.replace {
            let m = view
                .member(dead)
                .ok_or_else(|| format!("cannot replace {dead}: no such node in the ring"))?;
            if m.dc != self.config.dc {
                return Err(format!(
                    "cannot replace {dead} of {} from {}",
                    m.dc, self.config.dc
                ));
            }
            return Ok(m.tokens.clone());
        }
        let rf = (view.schema.live())
            .filter_map(|(_, d)| d.replication.get(&self.config.dc).copied())
            .max()
            .unwrap_or(3) as usize;
        let request = NewNode {
            id: &self.config.node_id,
            dc: &self.config.dc,
            rack: &self.config.rack,
            vnodes: self.config.vnodes,
        };
        let mut rng = self.rng.lock();
        topology::allocate_tokens(ring.state(), &request, rf, Allocator::Balanced, &mut *rng)
            .map_err(|e| e.to_string())
    }

    fn bootstrap_plan(&self, tokens: &[Token]) -> Result<ChangePlan, String> {
        let view = self.members.view();
        let ring = view.ring.as_ref().ok_or("no ring")?;
        match &self.config.replace {
            None => ChangePlan::settle(ring).map_err(|e| e.to_string()),
            Some(dead) => {
                let replacement = topology::Node {
                    id: self.me.clone(),
                    address: self.config.listen.internode.to_string(),
                    dc: self.config.dc.clone(),
                    rack: self.config.rack.clone(),
                    state: NodeState::Joining,
                    tokens: tokens.to_vec(),
                };
                let change = Change::Replace {
                    dead: NodeId(dead.clone()),
                    replacement,
                };
                ChangePlan::new(ring, &change).map_err(|e| e.to_string())
            }
        }
    }

    /// Per keyspace and source, the ranges `target` must receive.
    fn streams_to(
        &self,
        plan: &ChangePlan,
        target: &NodeId,
    ) -> Vec<(String, Option<NodeId>, Vec<TokenRange>)> {
        let mut out: BTreeMap<(String, Option<NodeId>), Vec<TokenRange>> = BTreeMap::new();
        for (keyspace, ks) in plan.keyspaces() {
            for t in &ks.transfers {
                for s in t.streams.iter().filter(|s| &s.target == target) {
                    out.entry((keyspace.to_owned(), s.source.clone()))
                        .or_default()
                        .push(t.range);
                }
            }
        }
        out.into_iter().map(|((k, s), r)| (k, s, r)).collect()
    }

    fn target_of(&self, id: &str) -> Option<Target> {
        let view = self.members.view();
        (view.member(id))
            .map(|m| Target::new(id.to_owned(), m.dc.clone(), m.addresses.internode.clone()))
    }

    /// Pulls from the planned source, or range by range from any other live replica when the
    /// source fails.
    async fn pull_with_fallback(
        self: &Arc<Self>,
        keyspace: &str,
        ranges: &[TokenRange],
        source: Option<&NodeId>,
    ) -> Result<(), String> {
        let session = self.hlc.now();
        let planned = source
            .and_then(|s| self.target_of(s.as_str()))
            .filter(|t| self.members.is_alive(&t.id));
        if let Some(t) = &planned {
            match self.pull_ranges(keyspace, ranges, t, session).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "planned source failed; trying other replicas")
                }
            }
        }
        for range in ranges {
            let candidates = self.live_replicas_of(keyspace, *range);
            let mut pulled = false;
            for t in candidates {
                if self
                    .pull_ranges(keyspace, &[*range], &t, session)
                    .await
                    .is_ok()
                {
                    pulled = true;
                    break;
                }
            }
            if !pulled {
                return Err(format!(
                    "no live replica could stream {keyspace} range {range}"
                ));
            }
        }
        Ok(())
    }

    fn live_replicas_of(&self, keyspace: &str, range: TokenRange) -> Vec<Target> {
        let Ok(route) = self.route_token(keyspace, range.end) else {
            return Vec::new();
        };
        (route.layout.replicas())
            .filter(|&n| !route.is_me(n) && self.members.is_alive(route.id(n)))
            .map(|n| self.target(&route, n))
            .collect()
    }

    /// Waits until every live peer's DescribeRing shows this node matching `pred`, so every
    /// coordinator writes to it (or stops writing to it) before data moves. Bounded: after
    /// the wait, gossip finishes the job and the change goes on.
    async fn wait_peers_see(&self, pred: impl Fn(Option<&pb::RingNode>) -> bool) {
        let me = self.me.0.clone();
        self.wait_peers_see_node(&me, pred).await
    }

    /// Like [`Self::wait_peers_see`], about any node.
    async fn wait_peers_see_node(&self, node: &str, pred: impl Fn(Option<&pb::RingNode>) -> bool) {
        let deadline = Instant::now() + AGREEMENT_WAIT;
        loop {
            let mut behind = Vec::new();
            for (id, m) in self.members.view().members.iter() {
                if *id == self.me
                    || m.status == NodeState::Left
                    || !self.members.is_alive(id.as_str())
                {
                    continue;
                }
                if !self.peer_sees(&m.addresses.client, node, &pred).await {
                    behind.push(id.0.clone());
                }
            }
            if behind.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    ?behind,
                    "not every live node sees this node's new state yet; going on"
                );
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn peer_sees(
        &self,
        client_address: &str,
        node: &str,
        pred: &impl Fn(Option<&pb::RingNode>) -> bool,
    ) -> bool {
        let Ok(endpoint) =
            tonic::transport::Endpoint::from_shared(format!("http://{client_address}"))
        else {
            return false;
        };
        let ask = async {
            let channel = endpoint
                .connect_timeout(Duration::from_secs(1))
                .connect()
                .await
                .ok()?;
            let ring = KeyValueClient::new(channel)
                .describe_ring(pb::DescribeRingRequest {})
                .await
                .ok()?;
            let ring = ring.into_inner();
            Some(pred(ring.nodes.iter().find(|n| n.id == node)))
        };
        tokio::time::timeout(Duration::from_secs(2), ask)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    /// Streams this node's ranges to their new owners, leaves the ring and stops the process.
    pub async fn decommission(self: &Arc<Self>) -> Result<pb::DecommissionResponse, KvError> {
        let _guard = self
            .change_lock
            .try_lock()
            .map_err(|_| failed("a decommission of this node is already under way"))?;
        self.check_decommission()?;
        self.members.set_status(NodeState::Leaving);
        tracing::info!("decommissioning: LEAVING");
        self.wait_peers_see(|n| n.is_some_and(|n| n.state() == pb::NodeState::Leaving))
            .await;
        let view = self.members.view();
        let ring = view.ring.as_ref().ok_or_else(|| failed("no ring"))?;
        let plan = ChangePlan::settle(ring).map_err(|e| failed(e.to_string()))?;
        let mut summary = pb::DecommissionResponse::default();
        for (keyspace, ks) in plan.keyspaces() {
            let mut by_target: BTreeMap<(NodeId, Option<NodeId>), Vec<TokenRange>> =
                BTreeMap::new();
            for t in &ks.transfers {
                for s in &t.streams {
                    by_target
                        .entry((s.target.clone(), s.source.clone()))
                        .or_default()
                        .push(t.range);
                }
            }
            for ((target, source), ranges) in by_target {
                let source = source.unwrap_or_else(|| self.me.clone());
                let cells = self.hand_over(keyspace, &target, &source, &ranges).await?;
                summary.ranges += ranges.len() as u32;
                summary.cells += cells;
            }
        }
        self.members.set_status(NodeState::Left);
        tracing::info!(
            ranges = summary.ranges,
            cells = summary.cells,
            "decommissioned: LEFT"
        );
        // A peer that saw LEFT no longer lists the node at all.
        self.wait_peers_see(|n| n.is_none_or(|n| n.state() == pb::NodeState::Left))
            .await;
        self.request_stop();
        Ok(summary)
    }

    /// Removes the dead node `dead`: marks it LEAVING (so writes for its ranges also go to
    /// their future replicas), has every future replica pull from a surviving one, then marks
    /// it LEFT.
    pub async fn remove_node(
        self: &Arc<Self>,
        dead: &str,
    ) -> Result<pb::RemoveNodeResponse, KvError> {
        let _guard = (self.change_lock.try_lock())
            .map_err(|_| failed("a topology change driven by this node is under way"))?;
        let view = self.members.view();
        if let Some((id, m)) = view.change_in_progress(dead) {
            return Err(failed(format!(
                "another topology change is under way ({id} is {:?}); one change at a time",
                m.status
            )));
        }
        let m = view
            .member(dead)
            .ok_or_else(|| failed(format!("no node {dead} in the cluster")))?;
        if dead == self.me.0 || self.members.is_alive(dead) {
            return Err(failed(format!(
                "{dead} is alive: decommission it instead (removenode is for dead nodes)"
            )));
        }
        if !matches!(m.status, NodeState::Normal | NodeState::Leaving) {
            return Err(failed(format!(
                "{dead} is {:?}, not a member that owns ranges",
                m.status
            )));
        }
        self.members.force_status(dead, NodeState::Leaving);
        self.wait_peers_see_node(dead, |n| {
            n.is_some_and(|n| n.state() == pb::NodeState::Leaving)
        })
        .await;
        let view = self.members.view();
        let ring = view.ring.as_ref().ok_or_else(|| failed("no ring"))?;
        let change = Change::RemoveNode {
            node: NodeId(dead.to_owned()),
        };
        let plan = ChangePlan::new(ring, &change).map_err(|e| failed(e.to_string()))?;
        let mut summary = pb::RemoveNodeResponse::default();
        for (keyspace, ks) in plan.keyspaces() {
            let mut by_target: BTreeMap<(NodeId, NodeId), Vec<TokenRange>> = BTreeMap::new();
            for t in &ks.transfers {
                for s in &t.streams {
                    let source = s.source.clone().ok_or_else(|| {
                        failed(format!(
                            "range {} of {keyspace} has no surviving replica: its data is lost",
                            t.range
                        ))
                    })?;
                    by_target
                        .entry((s.target.clone(), source))
                        .or_default()
                        .push(t.range);
                }
            }
            for ((target, source), ranges) in by_target {
                summary.cells += self.hand_over(keyspace, &target, &source, &ranges).await?;
                summary.ranges += ranges.len() as u32;
            }
        }
        self.members.force_status(dead, NodeState::Left);
        tracing::info!(node = %dead, ranges = summary.ranges, cells = summary.cells, "removed: LEFT");
        Ok(summary)
    }

    /// Refuses a decommission that another change, or the replication factors, forbid.
    fn check_decommission(&self) -> Result<(), KvError> {
        let view = self.members.view();
        if let Some((id, m)) = view.change_in_progress(&self.me.0) {
            return Err(failed(format!(
                "another topology change is under way ({id} is {:?}); one change at a time",
                m.status
            )));
        }
        let me = view
            .member(&self.me.0)
            .ok_or_else(|| failed("this node is not in its own view"))?;
        if me.status != NodeState::Normal {
            return Err(failed(format!("this node is {:?}, not NORMAL", me.status)));
        }
        let remaining = (view.members.iter())
            .filter(|(id, m)| **id != self.me && m.dc == me.dc && m.status == NodeState::Normal)
            .count();
        for (name, def) in view.schema.live() {
            if let Some(&rf) = def.replication.get(&me.dc) {
                if remaining < rf as usize {
                    return Err(failed(format!(
                        "decommissioning {} would leave {} with {remaining} nodes, below keyspace {name}'s replication factor {rf} there",
                        self.me, me.dc
                    )));
                }
            }
        }
        Ok(())
    }

    /// Asks `target` to pull `ranges` from `source`; returns the cells it applied.
    async fn hand_over(
        &self,
        keyspace: &str,
        target: &NodeId,
        source: &NodeId,
        ranges: &[TokenRange],
    ) -> Result<u64, KvError> {
        let t = self
            .target_of(target.as_str())
            .ok_or_else(|| failed(format!("no address for {target}")))?;
        let entry = self
            .streams
            .open("sending", target.as_str(), keyspace, ranges.len());
        let mut client = self
            .peers
            .client(&t.address, Some(&t.dc))
            .map_err(|e| failed(e.to_string()))?;
        let request = client::pb::internode::v1::FetchRangesRequest {
            sender: self.peers.sender(),
            keyspace: keyspace.to_owned(),
            ranges: ranges
                .iter()
                .map(|r| client::encode_token_range(*r))
                .collect(),
            source_node_id: source.0.clone(),
            session_id: self.hlc.now(),
        };
        let response = client.fetch_ranges(request).await.map_err(|s| {
            failed(format!(
                "{target} could not take over its ranges: {}",
                s.message()
            ))
        })?;
        let r = response.into_inner();
        entry
            .ranges_done
            .store(ranges.len() as u32, std::sync::atomic::Ordering::Relaxed);
        entry
            .cells
            .store(r.cells, std::sync::atomic::Ordering::Relaxed);
        entry
            .bytes
            .store(r.bytes, std::sync::atomic::Ordering::Relaxed);
        entry.done.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(r.cells)
    }

    /// The internode side of a hand-over: pull from the named source.
    pub async fn fetch_ranges(
        self: &Arc<Self>,
        keyspace: &str,
        ranges: &[TokenRange],
        source: &str,
        session: u64,
    ) -> Result<(u64, u64), String> {
        let t = self
            .target_of(source)
            .ok_or_else(|| format!("unknown source node {source}"))?;
        self.pull_ranges(keyspace, ranges, &t, session).await
    }
}

impl Node {
    /// Drops the data of ranges this node no longer replicates, keyspace by keyspace.
    pub async fn cleanup(self: &Arc<Self>) -> Result<pb::CleanupResponse, KvError> {
        let _guard = (self.change_lock.try_lock())
            .map_err(|_| failed("a topology change of this node is under way"))?;
        let view = self.members.view();
        if let Some((id, m)) = view.change_in_progress("") {
            return Err(failed(format!(
                "a topology change is under way ({id} is {:?}); clean up once it is done, or data \
                 still streaming would be dropped",
                m.status
            )));
        }
        let ring = view.ring.clone().ok_or_else(|| failed("no ring"))?;
        let me = ring
            .find(&self.me.0)
            .ok_or_else(|| failed("this node owns no ranges"))?;
        let mut summary = pb::CleanupResponse::default();
        for (keyspace, _) in view.schema.live() {
            let Ok(placement) = ring.placement(keyspace) else {
                continue;
            };
            let owned = placement.ranges_of(me);
            let (node, ks) = (self.clone(), keyspace.to_owned());
            let keep = move |t: u128| owned.iter().any(|r| r.contains(Token(t)));
            let (kept, removed) =
                tokio::task::spawn_blocking(move || node.storage.cleanup(&ks, keep))
                    .await
                    .map_err(|e| failed(e.to_string()))?
                    .map_err(|e| failed(e.to_string()))?;
            tracing::info!(%keyspace, kept, removed, "cleanup done");
            summary.cells_kept += kept;
            summary.cells_removed += removed;
        }
        Ok(summary)
    }
}
