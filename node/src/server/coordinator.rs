//! Coordinating one key's write or read across its replicas at a consistency level: the
//! async drivers around the pure plans of [`crate::cluster`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use client::KvError;
use futures_util::stream::StreamExt;
use tokio::sync::{mpsc, oneshot};
use topology::{NodeIdx, Token};

use super::latency::Speculation;
use super::racing::Racing;
use super::replica::{ReplicaRead, Target, Timer};
use super::route::Route;
use super::Node;
use crate::cluster::{
    check_digests, resolve, ConsistencyLevel, DigestCheck, Outcome, ReadPlan, ReadResponse,
    ResponseTracker, WritePlan,
};
use crate::lsm::{Cell, LastWriteWins, Mutation};

impl Node {
    /// The route of a user key.
    pub fn route(&self, keyspace: &str, key: &[u8]) -> Result<Route, KvError> {
        self.route_token(keyspace, topology::token_of(key))
    }

    pub fn route_token(&self, keyspace: &str, token: Token) -> Result<Route, KvError> {
        Route::new(self.members.view(), keyspace, token, &self.config.dc)
    }

    pub fn target(&self, route: &Route, n: NodeIdx) -> Target {
        route.view.targets[n.index()].clone()
    }

    /// The liveness of the route's replicas, judged once per request and together: a check
    /// takes the failure detector's lock and reads the clock, and building a plan asks about
    /// each replica two or three times.
    fn alive_fn<'a>(&'a self, route: &'a Route) -> impl Fn(NodeIdx) -> bool + 'a {
        let judged = (self.members).judge(route.layout.replicas().map(|n| (n, route.id(n))));
        move |n| match judged.iter().find(|&&(m, _)| m == n) {
            Some(&(_, alive)) => alive,
            None => self.members.is_alive(route.id(n)),
        }
    }

    /// Writes one key at `level`. Returns once the level is met; replicas that do not
    /// acknowledge by the deadline get hints, whatever the client was told.
    pub async fn coordinate_write(
        self: &Arc<Self>,
        keyspace: &str,
        key: Bytes,
        cell: Cell,
        level: ConsistencyLevel,
    ) -> Result<(), KvError> {
        let mut route = self.route(keyspace, &key)?;
        let pending = route
            .view
            .pending_targets(keyspace, topology::token_of(&key));
        let pending_dcs = route.add_pending(&pending);
        let mut plan = WritePlan::new(
            level,
            &route.layout,
            &route.coordinator,
            self.alive_fn(&route),
        )
        .map_err(|e| route.consistency_error(e, self.alive_fn(&route)))?;
        if !pending_dcs.is_empty() {
            self.require_pending(&mut plan, &route, &pending_dcs)?;
        }
        let muts = Arc::new(vec![Mutation {
            key: super::storage::engine_key(&key),
            cell,
        }]);
        let timeout = Duration::from_millis(self.config.coordinator.write_timeout_ms);
        let (done_tx, done_rx) = oneshot::channel();
        let node = self.clone();
        let keyspace = keyspace.to_owned();
        // Boxed for the reason `run_op` is.
        tokio::spawn(Box::pin(node.drive_write(
            route,
            plan,
            keyspace,
            muts,
            Instant::now() + timeout,
            done_tx,
        )));
        done_rx.await.unwrap_or_else(|_| {
            Err(KvError::Other {
                code: tonic::Code::Internal,
                message: "the write's coordinator task ended without an answer".into(),
            })
        })
    }

    /// As Cassandra does: each pending replica adds one ack to what the level needs, so a
    /// write acknowledged mid-change is on enough of the replicas that own it afterwards.
    fn require_pending(
        &self,
        plan: &mut WritePlan<NodeIdx>,
        route: &Route,
        pending_dcs: &[usize],
    ) -> Result<(), KvError> {
        for &dc in pending_dcs {
            if plan.requirement.counts(dc) {
                plan.requirement.total += 1;
            }
            if let Some(e) = plan.requirement.per_dc.iter_mut().find(|e| e.0 == dc) {
                e.1 += 1;
            }
        }
        (plan.requirement)
            .check_alive(&route.layout, self.alive_fn(route))
            .map_err(|u| route.consistency_error(u.into(), self.alive_fn(route)))
    }

    async fn drive_write(
        self: Arc<Self>,
        route: Route,
        plan: WritePlan<NodeIdx>,
        keyspace: String,
        muts: Arc<Vec<Mutation>>,
        deadline: Instant,
        done: oneshot::Sender<Result<(), KvError>>,
    ) {
        let contacted: Vec<NodeIdx> = plan.contacted().collect();
        let mut tracker = ResponseTracker::new(
            plan.requirement.clone(),
            &route.layout,
            contacted.iter().copied(),
            0,
        );
        // Replicas written directly are awaited right here rather than each in a task of its
        // own; forwarded DCs report through the channel as their forwarders stream acks back.
        let forward = self.config.coordinator.forward_remote_writes;
        let direct = (plan.remote.iter())
            .filter(|_| !forward)
            .flat_map(|(_, nodes)| nodes);
        let node = &self;
        let mut local: Racing<_> = (plan.local.iter().chain(direct))
            .map(|&n| {
                let (target, muts, ks) = (self.target(&route, n), muts.clone(), &keyspace);
                async move {
                    let timer = Timer::Callers;
                    (
                        n,
                        (node.write_replica(&target, ks, muts, deadline, timer)).await,
                    )
                }
            })
            .collect();
        // Only writes that forward to another DC need the channel; making and dropping one for
        // every write was 0.6% of a load's samples.
        let mut forwarded = (forward && !plan.remote.is_empty()).then(|| {
            let (tx, rx) = mpsc::channel::<(NodeIdx, bool)>(contacted.len().max(1));
            self.send_forwards(&route, &plan, &keyspace, &muts, deadline, &tx);
            rx
        });
        let mut done = Some(done);
        let hinted_now = self
            .store_hints(&route, &plan.hinted, &keyspace, &muts)
            .await;
        if hinted_now > 0 {
            tracker.hint_stored();
        }
        let mut acked = Vec::new();
        let mut answered = 0;
        // One timer for the whole write: the replica calls above have none of their own.
        let expiry = tokio::time::sleep_until(deadline.into());
        tokio::pin!(expiry);
        loop {
            if let Some(result) = settled(&tracker) {
                if let Some(d) = done.take() {
                    let _ = d.send(result);
                }
            }
            if answered == contacted.len() {
                break;
            }
            let msg = tokio::select! {
                Some((n, outcome)) = local.next() => Some((n, counted(outcome))),
                Some((n, ok)) = next_forwarded(&mut forwarded) => Some((n, Some(ok))),
                _ = &mut expiry => None,
            };
            let Some((n, ok)) = msg else { break };
            answered += 1;
            match ok {
                Some(true) => {
                    tracker.ack(n);
                    acked.push(n);
                }
                Some(false) => {
                    tracker.fail(n);
                }
                None => {}
            }
        }
        drop(local);
        let missed: Vec<NodeIdx> = (contacted.iter().copied())
            .filter(|n| !acked.contains(n))
            .collect();
        let hinted_late = self.store_hints(&route, &missed, &keyspace, &muts).await;
        if let Some(d) = done.take() {
            if hinted_late > 0 {
                tracker.hint_stored();
            }
            let result = match tracker.outcome() {
                Outcome::Success => Ok(()),
                _ => Err(route.timeout(&plan.requirement, &acked, true, true)),
            };
            let _ = d.send(result);
        }
    }

    /// One forward per remote DC, on the pipe to a replica there, each in a task that reports
    /// acks as they come back.
    fn send_forwards(
        self: &Arc<Self>,
        route: &Route,
        plan: &WritePlan<NodeIdx>,
        keyspace: &str,
        muts: &Arc<Vec<Mutation>>,
        deadline: Instant,
        tx: &mpsc::Sender<(NodeIdx, bool)>,
    ) {
        for (_, nodes) in &plan.remote {
            let targets: Vec<(NodeIdx, Target)> =
                nodes.iter().map(|&n| (n, self.target(route, n))).collect();
            let (node, tx, muts, ks) =
                (self.clone(), tx.clone(), muts.clone(), keyspace.to_owned());
            tokio::spawn(async move {
                let forwarder = targets[0].1.clone();
                let only: Vec<Target> = targets.iter().map(|(_, t)| t.clone()).collect();
                // The channel holds one message per contacted replica, so try_send never
                // finds it full; acks are counted as they stream in, not when all are in.
                node.forward_write(&forwarder, &only, &ks, muts, deadline, |id, outcome| {
                    let n = targets.iter().find(|(_, t)| t.id == id).map(|(n, _)| *n);
                    if let (Some(n), Some(ok)) = (n, counted(outcome)) {
                        let _ = tx.try_send((n, ok));
                    }
                })
                .await;
            });
        }
    }

    /// Stores a hint per replica that missed the write; returns how many were stored.
    async fn store_hints(
        self: &Arc<Self>,
        route: &Route,
        replicas: &[NodeIdx],
        keyspace: &str,
        muts: &Arc<Vec<Mutation>>,
    ) -> usize {
        if replicas.is_empty() || !self.config.hints.enabled {
            return 0;
        }
        let targets: Vec<String> = replicas.iter().map(|&n| route.id(n).to_owned()).collect();
        let (node, muts, ks) = (self.clone(), muts.clone(), keyspace.to_owned());
        let now = self.clock.now_ms();
        let stored = tokio::task::spawn_blocking(move || {
            let mut stored = 0;
            for target in &targets {
                for m in muts.iter() {
                    match node.hints.store(target, &ks, &m.key, &m.cell, now) {
                        Ok(_) => stored += 1,
                        Err(e) => tracing::warn!(%target, error = %e, "hint not stored"),
                    }
                }
            }
            stored
        });
        let stored = stored.await.unwrap_or(0);
        self.metrics.hints_stored.add(stored as u64);
        stored
    }

    /// Reads one key at `level`: data from the closest replica, digests from the others the
    /// level needs, one more replica when one is slower than its p99, and on disagreement a
    /// full read, resolution and read repair.
    pub async fn coordinate_read(
        self: &Arc<Self>,
        keyspace: &str,
        key: Bytes,
        level: ConsistencyLevel,
    ) -> Result<Option<Cell>, KvError> {
        let route = self.route(keyspace, &key)?;
        let plan = ReadPlan::new(
            level,
            &route.layout,
            &route.coordinator,
            self.alive_fn(&route),
        )
        .map_err(|e| route.consistency_error(e, self.alive_fn(&route)))?;
        let deadline =
            Instant::now() + Duration::from_millis(self.config.coordinator.read_timeout_ms);
        let mut tracker =
            ResponseTracker::new(plan.requirement.clone(), &route.layout, plan.contacted(), 0);
        // Awaited here, not in tasks: once the level is met the rest are dropped, and the
        // pipe forgets them.
        let read = |n: NodeIdx, want_digest: bool| {
            let target = self.target(&route, n);
            let read = ReplicaRead {
                key: &key,
                want_digest,
                deadline,
            };
            async move {
                let r = (self.read_replica(&target, keyspace, read, Timer::Callers)).await;
                (n, r.ok())
            }
        };
        let mut reads = Racing::with_capacity(1 + plan.digests.len() + plan.spare.len());
        reads.push(read(plan.data, false));
        for &n in &plan.digests {
            reads.push(read(n, true));
        }
        let mut spares = plan.spare.clone().into_iter();
        let mut speculation = self.speculation(&route, &plan);
        let mut responses: Vec<(NodeIdx, ReadResponse)> = Vec::new();
        let mut acked = Vec::new();
        // One timer for the whole read, set to the next speculative retry or the deadline,
        // whichever comes first: the replica reads have none of their own.
        let wake = tokio::time::sleep_until(deadline.into());
        tokio::pin!(wake);
        loop {
            let has_data = responses
                .iter()
                .any(|(_, r)| matches!(r, ReadResponse::Data(_)));
            match tracker.outcome() {
                Outcome::Success if has_data => break,
                Outcome::Failed(f) => {
                    return Err(KvError::Other {
                        code: tonic::Code::Unavailable,
                        message: f.to_string(),
                    })
                }
                _ => {}
            }
            let due: tokio::time::Instant = (speculation.due())
                .map_or(deadline, |r| r.min(deadline))
                .into();
            if wake.deadline() != due {
                wake.as_mut().reset(due);
            }
            let msg = tokio::select! {
                Some(m) = reads.next() => Some(m),
                _ = &mut wake => None,
            };
            match msg {
                Some((n, Some(r))) => {
                    speculation.answered(n);
                    tracker.ack(n);
                    acked.push(n);
                    responses.push((n, r));
                }
                Some((n, None)) => {
                    speculation.failed(n);
                    tracker.fail(n);
                }
                None if Instant::now() >= deadline => {
                    return Err(route.timeout(&plan.requirement, &acked, false, false));
                }
                None => {
                    speculation.asked();
                    if let Some(n) = spares.next() {
                        self.metrics.speculative_retries.add(1);
                        tracker.contact(n);
                        reads.push(read(n, false));
                    }
                }
            }
        }
        drop(reads);
        self.settle_read(&route, keyspace, &key, responses, deadline)
            .await
    }

    /// The speculative-retry timer of a read: each contacted replica given its own recent p99;
    /// none when speculative retry is off.
    fn speculation(&self, route: &Route, plan: &ReadPlan<NodeIdx>) -> Speculation<NodeIdx> {
        let waiting = match self.config.coordinator.speculative_retry {
            true => (plan.contacted())
                .map(|n| (n, self.latencies.retry_after(route.id(n))))
                .collect(),
            false => Vec::new(),
        };
        Speculation::new(Instant::now(), waiting)
    }

    /// Compares digests with the data response; on a mismatch fetches full data from the
    /// disagreeing replicas, resolves, and repairs.
    async fn settle_read(
        self: &Arc<Self>,
        route: &Route,
        keyspace: &str,
        key: &Bytes,
        responses: Vec<(NodeIdx, ReadResponse)>,
        deadline: Instant,
    ) -> Result<Option<Cell>, KvError> {
        let mut data: Vec<(NodeIdx, Option<Cell>)> = Vec::new();
        let mut digests: Vec<(NodeIdx, u64)> = Vec::new();
        for (n, r) in responses {
            match r {
                ReadResponse::Data(c) => data.push((n, c)),
                ReadResponse::Digest(d) => digests.push((n, d)),
            }
        }
        for (n, c) in data.iter().skip(1) {
            digests.push((*n, crate::cluster::digest(c.as_ref())));
        }
        let first = data[0].1.clone();
        let mismatched = match check_digests(first.as_ref(), &digests) {
            DigestCheck::Agree => return Ok(first),
            DigestCheck::Disagree { mismatched, .. } => mismatched,
        };
        // Boxed: inline, the repair's replica calls made every read's future (moved into the
        // client op's task) several times larger, though few reads repair.
        Box::pin(self.read_repair(route, keyspace, key, data, mismatched, deadline)).await
    }

    /// Fetches full data from the replicas whose digests disagreed, resolves, and repairs.
    async fn read_repair(
        self: &Arc<Self>,
        route: &Route,
        keyspace: &str,
        key: &Bytes,
        data: Vec<(NodeIdx, Option<Cell>)>,
        mismatched: Vec<NodeIdx>,
        deadline: Instant,
    ) -> Result<Option<Cell>, KvError> {
        self.metrics.read_repairs.add(1);
        let mut full = vec![data[0].clone()];
        full.extend(
            data.iter()
                .skip(1)
                .filter(|(n, _)| mismatched.contains(n))
                .cloned(),
        );
        let fetch = mismatched
            .iter()
            .filter(|n| !full.iter().any(|(m, _)| m == *n));
        for &n in fetch.collect::<Vec<_>>() {
            let target = self.target(route, n);
            let read = ReplicaRead {
                key,
                want_digest: false,
                deadline,
            };
            match (self.read_replica(&target, keyspace, read, Timer::Own)).await {
                Ok(ReadResponse::Data(c)) => full.push((n, c)),
                // Resolved without it: the replicas that did answer still met the level.
                _ => tracing::debug!(replica = %target.id, "no full data for read repair"),
            }
        }
        let resolution = resolve(&full, &LastWriteWins);
        let Some(winner) = resolution.winner.clone() else {
            return Ok(None);
        };
        self.repair(route, keyspace, key, &winner, &resolution.repairs, deadline)
            .await;
        Ok(Some(winner))
    }

    /// Sends the winner to the stale replicas the read counted and waits for them (so a
    /// following read at the same level sees it), then to every other live replica in the
    /// background.
    async fn repair(
        self: &Arc<Self>,
        route: &Route,
        keyspace: &str,
        key: &Bytes,
        winner: &Cell,
        stale: &[NodeIdx],
        deadline: Instant,
    ) {
        let muts = Arc::new(vec![Mutation {
            key: super::storage::engine_key(key),
            cell: winner.clone(),
        }]);
        let blocking = stale.iter().map(|&n| {
            let target = self.target(route, n);
            let muts = muts.clone();
            async move { (self.write_replica(&target, keyspace, muts, deadline, Timer::Own)).await }
        });
        futures_util::future::join_all(blocking).await;
        let asked: HashSet<NodeIdx> = stale.iter().copied().collect();
        let rest: Vec<Target> = (route.layout.replicas())
            .filter(|n| !asked.contains(n) && self.members.is_alive(route.id(*n)))
            .map(|n| self.target(route, n))
            .collect();
        let (node, ks) = (self.clone(), keyspace.to_owned());
        let deadline =
            Instant::now() + Duration::from_millis(self.config.coordinator.write_timeout_ms);
        tokio::spawn(async move {
            for t in rest {
                let _ = (node.write_replica(&t, &ks, muts.clone(), deadline, Timer::Own)).await;
            }
        });
    }
}

/// The next ack a forwarder reported; never ready for a write that forwarded nothing.
async fn next_forwarded(
    acks: &mut Option<mpsc::Receiver<(NodeIdx, bool)>>,
) -> Option<(NodeIdx, bool)> {
    match acks {
        Some(acks) => acks.recv().await,
        None => std::future::pending().await,
    }
}

/// Whether a replica's answer counts as an ack or a failure; a timeout is neither, so the
/// request's own deadline decides and the client gets TIMEOUT rather than a failure.
fn counted(outcome: Result<(), super::replica::ReplicaError>) -> Option<bool> {
    match outcome {
        Ok(()) => Some(true),
        Err(super::replica::ReplicaError::Timeout) => None,
        Err(super::replica::ReplicaError::Failed(_)) => Some(false),
    }
}

/// The client's answer once the tracker has one.
fn settled(tracker: &ResponseTracker<NodeIdx>) -> Option<Result<(), KvError>> {
    match tracker.outcome() {
        Outcome::Pending => None,
        Outcome::Success => Some(Ok(())),
        Outcome::Failed(f) => Some(Err(KvError::Other {
            code: tonic::Code::Aborted,
            message: format!("{f}; the write may have been applied on some replicas"),
        })),
    }
}
