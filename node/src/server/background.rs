//! The node's periodic work: gossip rounds and hint replay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use client::pb::internode::v1 as ipb;
use rand::seq::SliceRandom;
use rand::Rng;
use tokio::sync::watch;
use topology::NodeState;

use super::convert::{cell_to_pb, digest_from_pb, digest_to_pb, endpoint_from_pb, endpoint_to_pb};
use super::Node;
use crate::cluster::gossip::{Ack, Ack2};
use crate::cluster::ReplayThrottle;

/// Gossip rounds between load refreshes: load changes slowly and costs a directory walk.
const LOAD_EVERY_ROUNDS: u64 = 10;
/// Hints sent in one HintDeliver; with 16 MiB values still under the 32 MiB message limit
/// only when values are small, so batches are also cut by bytes.
const HINT_BATCH: usize = 128;
const HINT_BATCH_BYTES_MAX: u64 = 8 << 20;
const HINT_TICK: Duration = Duration::from_millis(500);

type Failed = Box<dyn std::error::Error + Send + Sync>;

impl Node {
    pub(super) async fn gossip_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.gossip.interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut round = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if round.is_multiple_of(LOAD_EVERY_ROUNDS) {
                let node = self.clone();
                if let Ok(load) =
                    tokio::task::spawn_blocking(move || node.storage.load_bytes()).await
                {
                    self.members.set_load_bytes(load);
                }
            }
            round += 1;
            self.members.start_round();
            let (targets, want_seed) = self.gossip_targets();
            for addr in targets.iter().cloned() {
                let node = self.clone();
                tokio::spawn(async move { node.gossip_with(addr).await });
            }
            if want_seed {
                tokio::spawn(self.clone().gossip_with_seed(targets));
            }
        }
    }

    /// One random live peer; sometimes a down one, so its return is noticed; and whether to
    /// add a seed, when few peers are known, so partitioned views merge again (seed names are
    /// resolved in the seed's own task, so a slow DNS server never delays the round).
    fn gossip_targets(&self) -> (Vec<String>, bool) {
        let peers = self.members.peers();
        let live: Vec<&String> = peers.iter().filter(|p| p.2).map(|p| &p.1).collect();
        let down: Vec<&String> = peers.iter().filter(|p| !p.2).map(|p| &p.1).collect();
        let mut rng = self.rng.lock();
        let mut out: Vec<String> = Vec::with_capacity(3);
        if let Some(p) = live.choose(&mut *rng) {
            out.push((*p).clone());
        }
        if !down.is_empty() && rng.gen_range(0..=live.len()) < down.len() {
            out.extend(down.choose(&mut *rng).map(|p| (*p).clone()));
        }
        let seeds = self.seeds.len();
        let want_seed = seeds > 0 && (live.is_empty() || rng.gen_range(0..=live.len()) < seeds);
        (out, want_seed)
    }

    /// One SYN / ACK / ACK2 exchange with the node at `addr`; failures are normal (the peer
    /// may be down) and only logged.
    pub(super) async fn gossip_with(self: &Arc<Self>, addr: String) {
        let timeout = Duration::from_millis(self.config.gossip.interval_ms.max(500) * 2);
        match tokio::time::timeout(timeout, self.exchange(&addr)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::trace!(%addr, error = %e, "gossip round failed"),
            Err(_) => tracing::trace!(%addr, "gossip round timed out"),
        }
    }

    async fn exchange(self: &Arc<Self>, addr: &str) -> Result<(), Failed> {
        let mut client = self.peers.client(addr, None)?;
        let digests = self.members.digests();
        let ack = client
            .gossip_syn(ipb::GossipSynRequest {
                sender: self.peers.sender(),
                digests: digests.iter().map(digest_to_pb).collect(),
            })
            .await?
            .into_inner();
        let ack = Ack {
            states: (ack.states.into_iter())
                .map(endpoint_from_pb)
                .collect::<Result<_, _>>()?,
            requests: ack.requests.into_iter().map(digest_from_pb).collect(),
        };
        let (ack2, schema) = self.members.on_ack(ack);
        if let Some(schema) = schema {
            self.adopt_schema(schema).await?;
        }
        if ack2.states.is_empty() {
            return Ok(());
        }
        client
            .gossip_ack2(ipb::GossipAck2Request {
                sender: self.peers.sender(),
                states: ack2_to_pb(&ack2),
            })
            .await?;
        Ok(())
    }

    /// Replays stored hints to their targets while those are alive, throttled per target.
    pub(super) async fn hint_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut throttles: HashMap<String, ReplayThrottle> = HashMap::new();
        let mut tick = tokio::time::interval(HINT_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let node = self.clone();
            let now = self.clock.now_ms();
            let _ = tokio::task::spawn_blocking(move || node.hints.expire(now)).await;
            for target in self.hints.targets() {
                let Some(to) = self.hint_recipient(&target).await else {
                    continue;
                };
                if !self.members.is_alive(&to) {
                    continue;
                }
                let kib = self.config.hints.throttle_kib_per_sec;
                let throttle = throttles
                    .entry(target.clone())
                    .or_insert_with(|| ReplayThrottle::new(kib, now));
                let replay = self.replay_hints(&target, &to, throttle);
                tokio::select! {
                    r = replay => if let Err(e) = r {
                        tracing::debug!(%target, error = %e, "hint replay paused");
                    },
                    _ = stop.changed() => return,
                }
            }
        }
    }

    /// Who gets `target`'s hints: itself; the node that replaced it (it took over exactly
    /// its ranges); or nobody, when it left (its hints are dropped: the ranges were streamed
    /// to their new owners).
    async fn hint_recipient(self: &Arc<Self>, target: &str) -> Option<String> {
        let view = self.members.view();
        let replacement = (view.members.iter()).find(|(_, m)| {
            m.status == NodeState::Normal
                && m.replacing.as_ref().is_some_and(|d| d.as_str() == target)
        });
        if let Some((id, _)) = replacement {
            return Some(id.0.clone());
        }
        if view
            .member(target)
            .is_some_and(|m| m.status == NodeState::Left)
        {
            let (node, t) = (self.clone(), target.to_owned());
            match tokio::task::spawn_blocking(move || node.hints.drop_target(&t)).await {
                Ok(Ok(dropped)) => {
                    tracing::info!(%target, hints = dropped.count, "node left; its hints dropped")
                }
                Ok(Err(e)) => {
                    tracing::warn!(%target, error = %e, "dropping a departed node's hints failed")
                }
                Err(e) => {
                    tracing::warn!(%target, error = %e, "dropping a departed node's hints failed")
                }
            }
            return None;
        }
        Some(target.to_owned())
    }

    /// Sends `target`'s hints to `to` (itself or its replacement), oldest first, until none are left or a delivery fails.
    async fn replay_hints(
        self: &Arc<Self>,
        target: &str,
        to: &str,
        throttle: &mut ReplayThrottle,
    ) -> Result<(), Failed> {
        let (address, dc) = (self.members.view().member(to))
            .map(|m| (m.addresses.internode.clone(), m.dc.clone()))
            .ok_or("target has no known address")?;
        loop {
            let node = self.clone();
            let t = target.to_owned();
            let now = self.clock.now_ms();
            let batch = tokio::task::spawn_blocking(move || node.hints.replay(&t, now, HINT_BATCH))
                .await??;
            let mut bytes = 0;
            let hints: Vec<_> = (batch.hints.into_iter())
                .take_while(|h| {
                    bytes += h.stored_bytes;
                    bytes <= HINT_BATCH_BYTES_MAX || h.stored_bytes == bytes
                })
                .collect();
            if hints.is_empty() {
                return Ok(());
            }
            let wait = throttle.admit(bytes, self.clock.now_ms());
            tokio::time::sleep(wait).await;
            let request = ipb::HintDeliverRequest {
                sender: self.peers.sender(),
                target_node_id: to.to_owned(),
                hints: (hints.iter())
                    .map(|h| ipb::Hint {
                        keyspace: h.write.keyspace.clone(),
                        mutation: Some(ipb::ReplicaMutation {
                            key: h.write.key.slice(crate::storage_key::TOKEN_BYTES..),
                            cell: Some(cell_to_pb(&h.write.cell)),
                        }),
                        hinted_at_ms: h.id.created_ms,
                    })
                    .collect(),
            };
            let mut client = self.peers.client(&address, Some(&dc))?;
            let applied = client.hint_deliver(request).await?.into_inner().applied as usize;
            let ids: Vec<_> = hints.iter().take(applied).map(|h| h.id).collect();
            let node = self.clone();
            let t = target.to_owned();
            tokio::task::spawn_blocking(move || node.hints.ack(&t, &ids)).await??;
            self.metrics.hints_replayed.add(applied as u64);
            if applied < hints.len() {
                return Err("target applied only part of a hint batch".into());
            }
        }
    }
}

fn ack2_to_pb(ack2: &Ack2) -> Vec<ipb::EndpointState> {
    ack2.states
        .iter()
        .map(|(n, s)| endpoint_to_pb(n, s))
        .collect()
}
