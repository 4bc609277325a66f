//! What this node knows of the cluster: the gossip state, the failure detector fed by it, and
//! the immutable [`View`] (ring, schema, members) that requests read without locks held.

use std::collections::BTreeMap;
use std::sync::Arc;

use foldhash::HashMap;
use parking_lot::{Mutex, RwLock};
use topology::{ChangePlan, NodeId, NodeIdx, NodeState, Ring, RingState, Token};

use crate::cluster::gossip::{Ack, Ack2, Addresses, Digest, EndpointState, Location};
use crate::cluster::{FailureDetector, GossipState, Hlc, MergeReport, PhiConfig, Schema};
use crate::lsm::Clock;
use crate::server::replica::Target;

/// One member as gossip describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub dc: String,
    pub rack: String,
    pub addresses: Addresses,
    pub status: NodeState,
    pub tokens: Vec<topology::Token>,
    pub load_bytes: Option<u64>,
    /// The dead node this one takes over.
    pub replacing: Option<NodeId>,
}

/// A consistent snapshot for one request: the ring is built from exactly these members and
/// this schema.
pub struct View {
    pub ring: Option<Arc<Ring>>,
    /// Why the ring could not be built from the members, when it could not.
    pub ring_error: Option<String>,
    /// Grows whenever the members' states or tokens change (see DescribeRing).
    pub epoch: u64,
    pub schema: Schema,
    pub members: BTreeMap<NodeId, Member>,
    /// The ring's nodes as replica targets, by [`NodeIdx`]: built with the ring, so requests
    /// share them instead of copying their names and addresses.
    pub targets: Arc<[Target]>,
    /// This node's place in the ring, when it has one.
    pub me: Option<NodeIdx>,
    /// While nodes are JOINING or LEAVING: what moves, and so which nodes must take writes
    /// for ranges they do not own yet.
    pub pending: Option<Arc<ChangePlan>>,
}

impl View {
    /// Nodes that must also receive writes for `token` of `keyspace` while a change is under
    /// way (joiners for the ranges they will own, new replicas of a leaver's ranges).
    pub fn pending_targets(&self, keyspace: &str, token: Token) -> Vec<NodeIdx> {
        let (Some(plan), Some(ring)) = (&self.pending, &self.ring) else {
            return Vec::new();
        };
        let Some(ks) = plan.keyspace(keyspace) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for t in ks.transfers.iter().filter(|t| t.range.contains(token)) {
            for s in &t.streams {
                if let Some(n) = ring.find(s.target.as_str()) {
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
            }
        }
        out
    }

    /// A node in the middle of a topology change (JOINING, LEAVING, or replacing another),
    /// other than `except`.
    pub fn change_in_progress(&self, except: &str) -> Option<(&NodeId, &Member)> {
        (self.members.iter()).find(|(id, m)| {
            id.as_str() != except && matches!(m.status, NodeState::Joining | NodeState::Leaving)
        })
    }

    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.get(&NodeId(id.to_owned()))
    }
}

struct Detector {
    phi: FailureDetector<u32>,
    ids: HashMap<NodeId, u32>,
}

impl Detector {
    fn id(&mut self, node: &NodeId) -> u32 {
        let next = self.ids.len() as u32;
        *self.ids.entry(node.clone()).or_insert(next)
    }
}

pub struct Membership {
    me: NodeId,
    clock: Arc<dyn Clock>,
    hlc: Arc<Hlc>,
    state: Mutex<GossipState>,
    detector: Mutex<Detector>,
    view: RwLock<Arc<View>>,
    /// Serialises view rebuilds, so a slower rebuild never installs an older view.
    rebuild: Mutex<()>,
}

impl Membership {
    pub fn new(
        state: GossipState,
        phi: PhiConfig,
        clock: Arc<dyn Clock>,
        hlc: Arc<Hlc>,
    ) -> Membership {
        let m = Membership {
            me: state.me().clone(),
            clock,
            hlc,
            state: Mutex::new(state),
            detector: Mutex::new(Detector {
                phi: FailureDetector::new(phi),
                ids: HashMap::default(),
            }),
            view: RwLock::new(Arc::new(View {
                ring: None,
                ring_error: None,
                epoch: 0,
                schema: Schema::default(),
                members: BTreeMap::new(),
                targets: Arc::new([]),
                me: None,
                pending: None,
            })),
            rebuild: Mutex::new(()),
        };
        m.rebuild_view();
        m
    }

    pub fn view(&self) -> Arc<View> {
        self.view.read().clone()
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Whether requests should go to `node`: this node always; others while the failure
    /// detector has heard from them recently enough.
    pub fn is_alive(&self, node: &str) -> bool {
        self.judge(std::iter::once(((), node)))[0].1
    }

    /// [`Membership::is_alive`] of each node, under one lock and one clock read.
    pub fn judge<'a, K>(&self, nodes: impl Iterator<Item = (K, &'a str)>) -> Vec<(K, bool)> {
        let now = self.now_ms();
        let d = self.detector.lock();
        nodes
            .map(|(k, node)| {
                let alive =
                    node == self.me.0 || (d.ids.get(node)).is_some_and(|&i| d.phi.is_alive(i, now));
                (k, alive)
            })
            .collect()
    }

    /// The suspicion level of a peer, for status displays.
    pub fn phi(&self, node: &str) -> Option<f64> {
        let now = self.now_ms();
        let d = self.detector.lock();
        d.ids.get(node).and_then(|&i| d.phi.phi(i, now))
    }

    /// Starts a gossip round: tells peers this node is alive.
    pub fn start_round(&self) {
        self.state.lock().beat();
    }

    /// What a SYN sends: a digest of every endpoint known.
    pub fn digests(&self) -> Vec<Digest> {
        self.state.lock().digest()
    }

    pub fn set_status(&self, status: NodeState) {
        self.state.lock().set_status(status);
        self.rebuild_view();
    }

    /// Speaks for a dead node in gossip (removenode).
    pub fn force_status(&self, node: &str, status: NodeState) -> bool {
        let done = self.state.lock().force_status(node, status);
        self.rebuild_view();
        done
    }

    /// A joining (or replacing) node's tokens, published while it stays JOINING.
    pub fn announce_joining(&self, tokens: Vec<Token>, replacing: Option<String>) {
        {
            let mut state = self.state.lock();
            if let Some(dead) = replacing {
                state.set_replacing(NodeId(dead));
            }
            state.set_tokens(tokens);
            state.set_status(NodeState::Joining);
        }
        self.rebuild_view();
    }

    pub fn set_load_bytes(&self, bytes: u64) {
        self.state.lock().set_load_bytes(bytes);
    }

    /// The responder's side of a SYN.
    pub fn on_syn(&self, digests: &[Digest]) -> Ack {
        self.state.lock().apply_digest(digests)
    }

    /// The initiator's side of an ACK: merges what came and returns what to send back, and a
    /// schema newer than ours if peers have one.
    pub fn on_ack(&self, ack: Ack) -> (Ack2, Option<Schema>) {
        let (ack2, report) = self.state.lock().handle_ack(ack);
        (ack2, self.absorb(report))
    }

    /// The responder's side of an ACK2.
    pub fn on_ack2(&self, ack2: Ack2) -> Option<Schema> {
        let report = self.state.lock().handle_ack2(ack2);
        self.absorb(report)
    }

    /// Feeds the detector and rebuilds the view after a merge; returns the merged schema when
    /// a peer's is newer than ours, for the node to store before adopting it.
    fn absorb(&self, report: MergeReport) -> Option<Schema> {
        let now = self.now_ms();
        {
            let mut d = self.detector.lock();
            for node in &report.restarted {
                let id = d.id(node);
                d.phi.forget(id);
            }
            for node in &report.heartbeats {
                let id = d.id(node);
                d.phi.heartbeat(id, now);
            }
        }
        if report.changed.is_empty() {
            return None;
        }
        self.rebuild_view();
        let state = self.state.lock();
        let mine = state.local().schema.as_ref().map(|s| &s.value);
        let mut merged = mine.cloned().unwrap_or_default();
        let mut changed = false;
        for s in state.endpoints().values() {
            if let Some(theirs) = &s.schema {
                changed |= merged.merge(&theirs.value);
            }
        }
        changed.then_some(merged)
    }

    /// Makes `schema` (merged with ours) this node's, once its storage is ready for it.
    pub fn adopt_schema(&self, schema: &Schema) -> Schema {
        let merged = {
            let mut state = self.state.lock();
            let mut merged = (state.local().schema.as_ref())
                .map(|s| s.value.clone())
                .unwrap_or_default();
            if merged.merge(schema) || state.local().schema.is_none() {
                state.set_schema(merged.clone());
            }
            merged
        };
        self.rebuild_view();
        merged
    }

    /// The schema this node serves.
    pub fn schema(&self) -> Schema {
        self.view().schema.clone()
    }

    /// Nodes whose schema differs from ours, among those alive: for waiting on agreement.
    pub fn schema_disagreement(&self) -> Vec<NodeId> {
        let state = self.state.lock();
        let mine = state.local().schema.as_ref().map(|s| &s.value);
        (state.endpoints().iter())
            .filter(|(_, s)| {
                s.schema.as_ref().map(|s| &s.value) != mine
                    && s.status
                        .as_ref()
                        .is_some_and(|st| st.value != NodeState::Left)
            })
            .map(|(id, _)| id.clone())
            .filter(|id| self.is_alive(&id.0))
            .collect()
    }

    /// Internode addresses of every other known node, with whether it is alive.
    pub fn peers(&self) -> Vec<(NodeId, String, bool)> {
        let view = self.view();
        (view.members.iter())
            .filter(|(id, m)| **id != self.me && m.status != NodeState::Left)
            .map(|(id, m)| {
                (
                    id.clone(),
                    m.addresses.internode.clone(),
                    self.is_alive(&id.0),
                )
            })
            .collect()
    }

    /// Rebuilds the view after gossip or schema changes. The ring is rebuilt only when
    /// members' states, tokens or DCs or the schema changed: load updates arrive every few
    /// seconds from every node and must not cost a ring build each.
    fn rebuild_view(&self) {
        let _serial = self.rebuild.lock();
        let (members, schema) = {
            let state = self.state.lock();
            let members = (state.endpoints().iter())
                .filter_map(|(id, s)| Some((id.clone(), member(s)?)))
                .collect();
            let schema = (state.local().schema.as_ref())
                .map(|s| s.value.clone())
                .unwrap_or_default();
            (members, schema)
        };
        let current = self.view();
        let ring_changed = ring_fields(&current.members) != ring_fields(&members);
        let epoch = if ring_changed || current.epoch == 0 {
            self.hlc.now()
        } else {
            current.epoch
        };
        let reuse = !ring_changed && current.epoch != 0 && current.schema == schema;
        let (ring, ring_error, pending) = if reuse {
            (
                current.ring.clone(),
                current.ring_error.clone(),
                current.pending.clone(),
            )
        } else {
            match build_ring(&members, &schema, epoch) {
                Ok(ring) => {
                    let pending = pending_plan(&ring);
                    (Some(Arc::new(ring)), None, pending)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot build the ring from gossip; keeping members without one");
                    (None, Some(e), None)
                }
            }
        };
        let targets = (ring.as_ref()).map_or_else(
            || Arc::new([]) as Arc<[Target]>,
            |r| r.nodes().iter().map(Target::of).collect(),
        );
        let me = ring.as_ref().and_then(|r| r.find(&self.me.0));
        *self.view.write() = Arc::new(View {
            me,
            ring,
            ring_error,
            epoch,
            schema,
            members,
            targets,
            pending,
        });
    }
}

/// The moves under way in `ring`, if any node is JOINING or LEAVING.
fn pending_plan(ring: &Ring) -> Option<Arc<ChangePlan>> {
    let moving =
        (ring.nodes().iter()).any(|n| matches!(n.state, NodeState::Joining | NodeState::Leaving));
    if !moving {
        return None;
    }
    match ChangePlan::settle(ring) {
        Ok(plan) => Some(Arc::new(plan)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot plan the topology change under way");
            None
        }
    }
}

fn member(s: &EndpointState) -> Option<Member> {
    let Location {
        dc,
        rack,
        addresses,
    } = s.location.as_ref()?.value.clone();
    Some(Member {
        dc,
        rack,
        addresses,
        status: s.status.as_ref()?.value,
        tokens: s
            .tokens
            .as_ref()
            .map(|t| t.value.clone())
            .unwrap_or_default(),
        load_bytes: s.load_bytes.as_ref().map(|l| l.value),
        replacing: s.replacing.as_ref().map(|r| r.value.clone()),
    })
}

type RingFields<'a> = Vec<(&'a NodeId, NodeState, &'a [topology::Token], &'a str)>;

fn ring_fields(members: &BTreeMap<NodeId, Member>) -> RingFields<'_> {
    (members.iter())
        .map(|(id, m)| (id, m.status, &m.tokens[..], m.dc.as_str()))
        .collect()
}

fn build_ring(
    members: &BTreeMap<NodeId, Member>,
    schema: &Schema,
    epoch: u64,
) -> Result<Ring, String> {
    // A keyspace may name a DC no member is known in yet (a node that just restarted has
    // heard from no one; a DC not built yet): it holds no replicas until members appear.
    let known_dcs: std::collections::BTreeSet<&str> = (members.values())
        .filter(|m| !m.tokens.is_empty())
        .map(|m| m.dc.as_str())
        .collect();
    let keyspaces = (schema.live())
        .map(|(name, def)| {
            let replication = (def.replication.iter())
                .filter(|(dc, _)| known_dcs.contains(dc.as_str()))
                .map(|(dc, &rf)| (dc.clone(), rf as usize))
                .collect();
            (name.to_owned(), topology::Keyspace { replication })
        })
        .collect();
    // A replacement stays out of the ring until it is NORMAL; then it takes the dead node's
    // place, and the dead node's entry goes.
    let replaced: Vec<&NodeId> = (members.values())
        .filter(|m| m.status == NodeState::Normal)
        .filter_map(|m| m.replacing.as_ref())
        .collect();
    let nodes = (members.iter())
        .filter(|(_, m)| !m.tokens.is_empty())
        .filter(|(id, _)| !replaced.contains(id))
        .filter(|(_, m)| m.replacing.is_none() || m.status != NodeState::Joining)
        .map(|(id, m)| topology::Node {
            id: id.clone(),
            address: m.addresses.internode.clone(),
            dc: m.dc.clone(),
            rack: m.rack.clone(),
            state: m.status,
            tokens: m.tokens.clone(),
        })
        .collect();
    Ring::new(RingState {
        epoch,
        keyspaces,
        nodes,
    })
    .map_err(|e| e.to_string())
}
