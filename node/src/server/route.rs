//! Where one key's replicas are, as seen by one request, and the errors a client gets when the
//! consistency level cannot even be tried.

use std::sync::Arc;

use client::pb::v1 as pb;
use client::KvError;
use topology::{NodeIdx, Token};

use super::convert::level_to_pb;
use super::membership::View;
use crate::cluster::{ConsistencyError, Coordinator, ReplicaLayout, Requirement, Unavailable};

/// One key's replicas in one view of the ring.
pub struct Route {
    pub view: Arc<View>,
    pub layout: ReplicaLayout<NodeIdx>,
    pub coordinator: Coordinator<NodeIdx>,
    /// This node, when it is in the ring.
    pub me: Option<NodeIdx>,
}

impl Route {
    /// The replicas of `token` in `keyspace`, coordinated by this node (`view.me`) in `dc`.
    pub fn new(view: Arc<View>, keyspace: &str, token: Token, dc: &str) -> Result<Route, KvError> {
        let ring = view.ring.as_ref().ok_or_else(|| KvError::Other {
            code: tonic::Code::Unavailable,
            message: format!(
                "this node has no usable ring yet: {}",
                view.ring_error
                    .as_deref()
                    .unwrap_or("no members with tokens")
            ),
        })?;
        let placement = ring.placement(keyspace).map_err(|_| {
            KvError::KeyspaceNotFound(pb::KeyspaceNotFound {
                keyspace: keyspace.to_owned(),
            })
        })?;
        let set = placement.replicas(token);
        let layout = ReplicaLayout::from_ring(&placement, &set);
        let me_idx = view.me;
        let first = layout.replicas().next();
        let node = me_idx.or(first).ok_or_else(|| KvError::Other {
            code: tonic::Code::Unavailable,
            message: format!("keyspace {keyspace} has no replicas in the ring"),
        })?;
        Ok(Route {
            layout,
            coordinator: Coordinator {
                node,
                dc: dc.to_owned(),
            },
            me: me_idx,
            view,
        })
    }

    /// Adds pending replicas (nodes taking over ranges) as write targets in their DCs;
    /// returns the layout index of the DC of each one added.
    pub fn add_pending(&mut self, pending: &[NodeIdx]) -> Vec<usize> {
        if pending.is_empty() {
            return Vec::new();
        }
        let mut dcs = self.layout.dcs().to_vec();
        let mut added = Vec::new();
        for &n in pending {
            let dc = &self.node(n).dc;
            if let Some(i) = dcs.iter().position(|d| &d.dc == dc) {
                if !dcs[i].replicas.contains(&n) {
                    dcs[i].replicas.push(n);
                    added.push(i);
                }
            }
        }
        self.layout = ReplicaLayout::new(dcs);
        added
    }

    pub fn node(&self, n: NodeIdx) -> &topology::Node {
        self.view.ring.as_ref().expect("a route has a ring").node(n)
    }

    pub fn id(&self, n: NodeIdx) -> &str {
        self.node(n).id.as_str()
    }

    pub fn find(&self, id: &str) -> Option<NodeIdx> {
        self.view.ring.as_ref()?.find(id)
    }

    pub fn is_me(&self, n: NodeIdx) -> bool {
        self.me == Some(n)
    }

    /// The error for a level the live replicas cannot meet, with the per-DC picture.
    pub fn consistency_error(
        &self,
        e: ConsistencyError,
        alive: impl Fn(NodeIdx) -> bool,
    ) -> KvError {
        match e {
            ConsistencyError::Unavailable(u) => self.unavailable(&u, alive),
            ConsistencyError::AnyIsWriteOnly | ConsistencyError::NoLocalReplicas { .. } => {
                KvError::invalid_argument("consistency", e.to_string())
            }
            ConsistencyError::NoReplicas => KvError::Other {
                code: tonic::Code::FailedPrecondition,
                message: e.to_string(),
            },
        }
    }

    fn unavailable(&self, u: &Unavailable, alive: impl Fn(NodeIdx) -> bool) -> KvError {
        let requirement = Requirement::new(
            u.level,
            crate::cluster::Operation::Write,
            &self.layout,
            &self.coordinator.dc,
        )
        .ok();
        let total_alive = self.layout.replicas().filter(|&n| alive(n)).count();
        let per_dc = (self.layout.dcs().iter().enumerate())
            .map(|(i, d)| pb::DcAlive {
                dc: d.dc.clone(),
                required: requirement.as_ref().map_or(0, |r| required_in(r, i)) as u32,
                alive: d.replicas.iter().filter(|&&n| alive(n)).count() as u32,
            })
            .collect();
        KvError::Unavailable(pb::Unavailable {
            consistency: level_to_pb(u.level) as i32,
            required: u.required as u32,
            alive: if u.dc.is_some() { u.alive } else { total_alive } as u32,
            per_dc,
        })
    }

    /// A timeout's per-DC picture: what the level needed and who acknowledged in each DC.
    pub fn timeout(
        &self,
        requirement: &Requirement,
        acked: &[NodeIdx],
        is_write: bool,
        may_have_applied: bool,
    ) -> KvError {
        let counted = |dc: usize| {
            let d = &self.layout.dcs()[dc];
            acked.iter().filter(|n| d.replicas.contains(n)).count()
        };
        let per_dc: Vec<pb::DcReceived> = (self.layout.dcs().iter().enumerate())
            .map(|(i, d)| pb::DcReceived {
                dc: d.dc.clone(),
                required: required_in(requirement, i) as u32,
                received: counted(i) as u32,
            })
            .collect();
        let received = (0..self.layout.dcs().len())
            .filter(|&i| requirement.counts(i))
            .map(counted)
            .sum::<usize>();
        KvError::Timeout(pb::Timeout {
            consistency: level_to_pb(requirement.level) as i32,
            required: requirement.total as u32,
            received: received as u32,
            is_write,
            write_may_have_applied: is_write && may_have_applied,
            per_dc,
        })
    }
}

/// Acks a level needs from DC `dc` in particular (0 when any DC's count).
fn required_in(r: &Requirement, dc: usize) -> usize {
    if let Some(&(_, n)) = r.per_dc.iter().find(|(d, _)| *d == dc) {
        return n;
    }
    if r.only_dc == Some(dc) {
        return r.total;
    }
    0
}
