//! Gossip state without the transport: what each node knows about every endpoint, and the
//! three-message exchange (SYN, ACK, ACK2) that reconciles two nodes' views.
//!
//! Only an endpoint's owner changes its state. Each change takes the next value of the
//! owner's version counter, so within one generation (one process lifetime) a field's
//! version names its value, and merging is "higher generation wins, then per field higher
//! version wins": commutative, associative and idempotent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use topology::{NodeId, NodeState, Token};

use super::schema::Schema;

/// Endpoints known at most; states about further nodes are refused, so a confused or hostile
/// peer cannot grow the map without bound.
pub const DEFAULT_MAX_ENDPOINTS: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned<T> {
    pub version: u64,
    pub value: T,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    pub client: String,
    pub internode: String,
    pub http: String,
}

/// Where a node is and how to reach it; set once per generation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub dc: String,
    pub rack: String,
    pub addresses: Addresses,
}

/// What is known of one endpoint. The same type carries a delta: fields the receiver already
/// has at that version or newer are left out (`None`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointState {
    /// When the process started; a restart starts a new generation and supersedes the old.
    pub generation: u64,
    /// Version of the latest heartbeat: it changes every round while the node is alive.
    pub heartbeat: u64,
    pub status: Option<Versioned<NodeState>>,
    pub tokens: Option<Versioned<Vec<Token>>>,
    /// The node's whole schema: small, and gossiping it whole lets any peer catch up from any
    /// other without a separate schema pull.
    pub schema: Option<Versioned<Schema>>,
    pub load_bytes: Option<Versioned<u64>>,
    pub location: Option<Versioned<Location>>,
    /// The dead node whose tokens this node takes over (replace); its ring entry yields to
    /// this node's once this node is NORMAL.
    #[serde(default)]
    pub replacing: Option<Versioned<NodeId>>,
}

/// What merging one endpoint's state changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    None,
    Heartbeat,
    Fields,
    Generation,
}

impl EndpointState {
    /// The highest version of anything in this state.
    pub fn max_version(&self) -> u64 {
        [
            self.status.as_ref().map(|v| v.version),
            self.tokens.as_ref().map(|v| v.version),
            self.schema.as_ref().map(|v| v.version),
            self.load_bytes.as_ref().map(|v| v.version),
            self.location.as_ref().map(|v| v.version),
            self.replacing.as_ref().map(|v| v.version),
        ]
        .into_iter()
        .flatten()
        .fold(self.heartbeat, u64::max)
    }

    /// The part of this state newer than `version`.
    pub fn delta_since(&self, version: u64) -> EndpointState {
        fn newer<T: Clone>(f: &Option<Versioned<T>>, version: u64) -> Option<Versioned<T>> {
            f.as_ref().filter(|v| v.version > version).cloned()
        }
        EndpointState {
            generation: self.generation,
            heartbeat: self.heartbeat,
            status: newer(&self.status, version),
            tokens: newer(&self.tokens, version),
            schema: newer(&self.schema, version),
            load_bytes: newer(&self.load_bytes, version),
            location: newer(&self.location, version),
            replacing: newer(&self.replacing, version),
        }
    }

    fn merge(&mut self, other: EndpointState) -> Change {
        if other.generation > self.generation {
            *self = other;
            return Change::Generation;
        }
        if other.generation < self.generation {
            return Change::None;
        }
        fn take<T>(mine: &mut Option<Versioned<T>>, theirs: Option<Versioned<T>>) -> bool {
            let newer = match (&mine, &theirs) {
                (Some(m), Some(t)) => t.version > m.version,
                (None, Some(_)) => true,
                (_, None) => false,
            };
            if newer {
                *mine = theirs;
            }
            newer
        }
        let fields = [
            take(&mut self.status, other.status),
            take(&mut self.tokens, other.tokens),
            take(&mut self.schema, other.schema),
            take(&mut self.load_bytes, other.load_bytes),
            take(&mut self.location, other.location),
            take(&mut self.replacing, other.replacing),
        ];
        let beat = other.heartbeat > self.heartbeat;
        self.heartbeat = self.heartbeat.max(other.heartbeat);
        match (fields.contains(&true), beat) {
            (true, _) => Change::Fields,
            (false, true) => Change::Heartbeat,
            (false, false) => Change::None,
        }
    }
}

/// A summary of one endpoint: enough for a peer to tell who is behind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub node: NodeId,
    pub generation: u64,
    pub max_version: u64,
}

/// The initiator's opening message: digests of everything it knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Syn {
    pub digests: Vec<Digest>,
}

/// The reply: states the initiator lacks, and digests of what the replier wants (each saying
/// what the replier already has).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub states: Vec<(NodeId, EndpointState)>,
    pub requests: Vec<Digest>,
}

/// The initiator's answer to the requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack2 {
    pub states: Vec<(NodeId, EndpointState)>,
}

/// What a merge changed, for the layers above: heartbeats feed the failure detector, restarts
/// reset it, field changes may change the ring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Nodes heard from (a newer heartbeat or generation).
    pub heartbeats: Vec<NodeId>,
    /// Nodes seen with a new generation (restarted, or seen for the first time).
    pub restarted: Vec<NodeId>,
    /// Nodes whose status, tokens, schema, load or location changed.
    pub changed: Vec<NodeId>,
    /// States refused because the endpoint limit was reached.
    pub refused: usize,
}

/// One node's view of the cluster. Its own entry is authoritative: peers' views of it are
/// never merged in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipState {
    me: NodeId,
    endpoints: BTreeMap<NodeId, EndpointState>,
    max_endpoints: usize,
}

impl GossipState {
    /// The view of a node starting generation `generation` at `location`.
    pub fn new(me: NodeId, generation: u64, location: Location, status: NodeState) -> Self {
        let local = EndpointState {
            generation,
            heartbeat: 0,
            status: Some(Versioned {
                version: 1,
                value: status,
            }),
            tokens: None,
            schema: None,
            load_bytes: None,
            location: Some(Versioned {
                version: 2,
                value: location,
            }),
            replacing: None,
        };
        GossipState {
            endpoints: [(me.clone(), local)].into(),
            me,
            max_endpoints: DEFAULT_MAX_ENDPOINTS,
        }
    }

    pub fn with_max_endpoints(mut self, max_endpoints: usize) -> Self {
        self.max_endpoints = max_endpoints.max(1);
        self
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    pub fn local(&self) -> &EndpointState {
        &self.endpoints[&self.me]
    }

    pub fn get(&self, node: &str) -> Option<&EndpointState> {
        self.endpoints.get(node)
    }

    pub fn endpoints(&self) -> &BTreeMap<NodeId, EndpointState> {
        &self.endpoints
    }

    fn local_mut(&mut self) -> (&mut EndpointState, u64) {
        let local = self.endpoints.get_mut(&self.me).expect("own state is kept");
        let next = local.max_version() + 1;
        (local, next)
    }

    /// Called once per gossip round: tells peers this node is alive.
    pub fn beat(&mut self) {
        let (local, next) = self.local_mut();
        local.heartbeat = next;
    }

    pub fn set_status(&mut self, status: NodeState) {
        let (local, version) = self.local_mut();
        local.status = Some(Versioned {
            version,
            value: status,
        });
    }

    pub fn set_tokens(&mut self, tokens: Vec<Token>) {
        let (local, version) = self.local_mut();
        local.tokens = Some(Versioned {
            version,
            value: tokens,
        });
    }

    pub fn set_schema(&mut self, schema: Schema) {
        let (local, version) = self.local_mut();
        local.schema = Some(Versioned {
            version,
            value: schema,
        });
    }

    pub fn set_replacing(&mut self, dead: NodeId) {
        let (local, version) = self.local_mut();
        local.replacing = Some(Versioned {
            version,
            value: dead,
        });
    }

    /// Sets the status of another, dead endpoint (removenode): its owner cannot, so this node
    /// speaks for it with the next version of that endpoint's state, which then wins
    /// everywhere. A restart of the node (a new generation) overrides it again.
    pub fn force_status(&mut self, node: &str, status: NodeState) -> bool {
        let Some(state) = self.endpoints.get_mut(node) else {
            return false;
        };
        let version = state.max_version() + 1;
        state.status = Some(Versioned {
            version,
            value: status,
        });
        true
    }

    pub fn set_load_bytes(&mut self, load: u64) {
        let (local, version) = self.local_mut();
        local.load_bytes = Some(Versioned {
            version,
            value: load,
        });
    }

    /// A digest of every known endpoint.
    pub fn digest(&self) -> Vec<Digest> {
        (self.endpoints.iter())
            .map(|(node, s)| Digest {
                node: node.clone(),
                generation: s.generation,
                max_version: s.max_version(),
            })
            .collect()
    }

    pub fn syn(&self) -> Syn {
        Syn {
            digests: self.digest(),
        }
    }

    /// The receiver's side of a SYN: send what the initiator is behind on, request what it is
    /// ahead on. Unlike Cassandra, endpoints the initiator did not list are sent too, so a
    /// new node spreads in one exchange rather than waiting for the receiver's own round.
    pub fn apply_digest(&self, remote: &[Digest]) -> Ack {
        let mut ack = Ack {
            states: Vec::new(),
            requests: Vec::new(),
        };
        for d in remote {
            let Some(mine) = self.endpoints.get(&d.node) else {
                ack.requests.push(Digest {
                    node: d.node.clone(),
                    generation: 0,
                    max_version: 0,
                });
                continue;
            };
            let ours = (mine.generation, mine.max_version());
            let theirs = (d.generation, d.max_version);
            if theirs > ours {
                ack.requests.push(Digest {
                    node: d.node.clone(),
                    generation: ours.0,
                    max_version: ours.1,
                });
            } else if let Some(s) = self.newer_than(&d.node, d.generation, d.max_version) {
                ack.states.push((d.node.clone(), s));
            }
        }
        let listed = |n: &NodeId| remote.iter().any(|d| &d.node == n);
        for (node, s) in &self.endpoints {
            if !listed(node) {
                ack.states.push((node.clone(), s.clone()));
            }
        }
        ack
    }

    /// What of `node` is newer than a peer's (generation, version): everything after a
    /// restart, otherwise the fields changed since.
    fn newer_than(&self, node: &NodeId, generation: u64, version: u64) -> Option<EndpointState> {
        let mine = self.endpoints.get(node)?;
        match mine.generation.cmp(&generation) {
            std::cmp::Ordering::Greater => Some(mine.clone()),
            std::cmp::Ordering::Equal if mine.max_version() > version => {
                Some(mine.delta_since(version))
            }
            _ => None,
        }
    }

    /// The initiator's side of an ACK: take the states, answer the requests.
    pub fn handle_ack(&mut self, ack: Ack) -> (Ack2, MergeReport) {
        let report = self.merge(ack.states);
        let states = (ack.requests.iter())
            .filter_map(|r| {
                let s = self.newer_than(&r.node, r.generation, r.max_version)?;
                Some((r.node.clone(), s))
            })
            .collect();
        (Ack2 { states }, report)
    }

    pub fn handle_ack2(&mut self, ack2: Ack2) -> MergeReport {
        self.merge(ack2.states)
    }

    /// Merges peers' states: higher generation wins, then each field's higher version.
    pub fn merge(
        &mut self,
        states: impl IntoIterator<Item = (NodeId, EndpointState)>,
    ) -> MergeReport {
        let mut report = MergeReport::default();
        for (node, state) in states {
            if node == self.me {
                continue;
            }
            let full = self.endpoints.len() >= self.max_endpoints;
            let change = match self.endpoints.get_mut(&node) {
                Some(mine) => mine.merge(state),
                None if full => {
                    report.refused += 1;
                    continue;
                }
                None => {
                    self.endpoints.insert(node.clone(), state);
                    Change::Generation
                }
            };
            report.note(node, change);
        }
        report
    }
}

impl MergeReport {
    fn note(&mut self, node: NodeId, change: Change) {
        if change == Change::None {
            return;
        }
        if change == Change::Generation {
            self.restarted.push(node.clone());
        }
        if matches!(change, Change::Generation | Change::Fields) {
            self.changed.push(node.clone());
        }
        self.heartbeats.push(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(name: &str, generation: u64) -> GossipState {
        let location = Location {
            dc: "dc1".into(),
            rack: "r1".into(),
            addresses: Addresses::default(),
        };
        let mut g = GossipState::new(name.into(), generation, location, NodeState::Normal);
        g.set_tokens(vec![Token(generation as u128)]);
        g
    }

    /// One full SYN / ACK / ACK2 exchange started by `a`.
    fn exchange(a: &mut GossipState, b: &mut GossipState) -> (MergeReport, MergeReport) {
        let ack = b.apply_digest(&a.syn().digests);
        let (ack2, on_a) = a.handle_ack(ack);
        let on_b = b.handle_ack2(ack2);
        (on_a, on_b)
    }

    #[test]
    fn one_exchange_reconciles_two_views_both_ways() {
        let (mut a, mut b) = (node("a", 1), node("b", 1));
        a.beat();
        let (on_a, on_b) = exchange(&mut a, &mut b);
        assert_eq!(a.endpoints(), b.endpoints());
        assert_eq!(on_a.restarted, vec![NodeId::from("b")]);
        assert_eq!(on_b.heartbeats, vec![NodeId::from("a")]);
        b.beat();
        b.set_load_bytes(42);
        let (on_a, _) = exchange(&mut a, &mut b);
        assert_eq!(on_a.changed, vec![NodeId::from("b")]);
        assert_eq!(a.get("b").unwrap().load_bytes.as_ref().unwrap().value, 42);
    }

    #[test]
    fn only_changed_fields_travel_within_a_generation() {
        let (mut a, mut b) = (node("a", 1), node("b", 1));
        exchange(&mut a, &mut b);
        b.beat();
        let ack = b.apply_digest(&a.syn().digests);
        let (_, delta) = &ack.states[0];
        assert!(delta.tokens.is_none() && delta.location.is_none());
        assert_eq!(delta.heartbeat, b.local().heartbeat);
    }

    #[test]
    fn the_receiver_passes_on_endpoints_the_initiator_never_heard_of() {
        let (mut a, mut b, mut c) = (node("a", 1), node("b", 1), node("c", 1));
        exchange(&mut b, &mut c);
        exchange(&mut a, &mut b);
        assert!(a.get("c").is_some());
    }

    #[test]
    fn a_restarted_node_supersedes_its_old_state() {
        let (mut old_a, mut b) = (node("a", 1), node("b", 1));
        (0..50).for_each(|_| old_a.beat());
        exchange(&mut old_a, &mut b);
        let mut new_a = node("a", 2);
        let (_, on_b) = exchange(&mut new_a, &mut b);
        assert_eq!(b.get("a"), Some(new_a.local()));
        assert_eq!(on_b.restarted, vec![NodeId::from("a")]);
        // The stale generation arriving late changes nothing.
        assert_eq!(
            b.merge([("a".into(), old_a.local().clone())]),
            MergeReport::default()
        );
    }

    #[test]
    fn peers_never_overwrite_a_nodes_own_state() {
        let mut a = node("a", 1);
        let mut forged = a.local().clone();
        forged.generation = 9;
        a.merge([("a".into(), forged)]);
        assert_eq!(a.local().generation, 1);
    }

    #[test]
    fn endpoints_beyond_the_limit_are_refused() {
        let mut a = node("a", 1).with_max_endpoints(2);
        let report = a.merge([
            ("b".into(), node("b", 1).local().clone()),
            ("c".into(), node("c", 1).local().clone()),
        ]);
        assert_eq!(report.refused, 1);
        assert_eq!(a.endpoints().len(), 2);
    }

    #[test]
    fn state_round_trips_through_json() {
        let (mut a, mut b) = (node("a", 1), node("b", 7));
        exchange(&mut a, &mut b);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<GossipState>(&json).unwrap(), a);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Beat(usize),
        Load(usize, u64),
        Status(usize),
        Restart(usize),
        Exchange(usize, usize),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..3).prop_map(Op::Beat),
            (0usize..3, 0u64..100).prop_map(|(n, l)| Op::Load(n, l)),
            (0usize..3).prop_map(Op::Status),
            (0usize..3).prop_map(Op::Restart),
            (0usize..3, 0usize..3).prop_map(|(a, b)| Op::Exchange(a, b)),
            (0usize..3, 0usize..3).prop_map(|(a, b)| Op::Exchange(a, b)),
        ]
    }

    fn pair(nodes: &mut [GossipState], a: usize, b: usize) -> (&mut GossipState, &mut GossipState) {
        let (lo, hi) = nodes.split_at_mut(a.max(b));
        if a < b {
            (&mut lo[a], &mut hi[0])
        } else {
            (&mut hi[0], &mut lo[b])
        }
    }

    fn apply(nodes: &mut [GossipState], generations: &mut [u64], op: Op) {
        let names = ["a", "b", "c"];
        match op {
            Op::Beat(n) => nodes[n].beat(),
            Op::Load(n, l) => nodes[n].set_load_bytes(l),
            Op::Status(n) => nodes[n].set_status(NodeState::Leaving),
            Op::Restart(n) => {
                generations[n] += 1;
                nodes[n] = node(names[n], generations[n]);
            }
            Op::Exchange(a, b) if a != b => {
                let (x, y) = pair(nodes, a, b);
                exchange(x, y);
            }
            Op::Exchange(..) => {}
        }
    }

    /// Every endpoint state one node could ever have said about itself in a history.
    fn history_snapshots(ops: &[Op]) -> Vec<EndpointState> {
        let mut g = node("x", 1);
        let mut generation = 1;
        let mut out = vec![g.local().clone()];
        for op in ops {
            match op {
                Op::Beat(_) => g.beat(),
                Op::Load(_, l) => g.set_load_bytes(*l),
                Op::Status(_) => g.set_status(NodeState::Leaving),
                Op::Restart(_) => {
                    generation += 1;
                    g = node("x", generation);
                }
                Op::Exchange(_, v) => {
                    let since = g.local().max_version().saturating_sub(*v as u64 + 1);
                    out.push(g.local().delta_since(since));
                }
            }
            out.push(g.local().clone());
        }
        out
    }

    fn view_after(states: &[EndpointState]) -> GossipState {
        let mut v = node("me", 1);
        v.merge(states.iter().map(|s| (NodeId::from("x"), s.clone())));
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn prop_three_nodes_gossiping_in_any_order_converge(
            ops in proptest::collection::vec(arb_op(), 0..60),
        ) {
            let mut nodes = vec![node("a", 1), node("b", 1), node("c", 1)];
            let mut generations = vec![1, 1, 1];
            for op in ops {
                apply(&mut nodes, &mut generations, op);
            }
            for (a, b) in [(0, 1), (1, 2), (2, 0), (0, 1)] {
                let (x, y) = pair(&mut nodes, a, b);
                exchange(x, y);
            }
            prop_assert_eq!(nodes[0].endpoints(), nodes[1].endpoints());
            prop_assert_eq!(nodes[1].endpoints(), nodes[2].endpoints());
            for (i, g) in nodes.iter().enumerate() {
                prop_assert_eq!(g.local().generation, generations[i]);
            }
        }

        #[test]
        fn prop_merge_is_commutative_and_idempotent(
            ops in proptest::collection::vec(arb_op(), 0..30),
            picks in proptest::collection::vec(any::<proptest::sample::Index>(), 1..6),
            seed in any::<u64>(),
        ) {
            let all = history_snapshots(&ops);
            let chosen: Vec<EndpointState> = picks.iter().map(|i| all[i.index(all.len())].clone()).collect();
            let mut reordered = chosen.clone();
            let n = reordered.len();
            for i in 0..n {
                reordered.swap(i, (seed.rotate_left(i as u32 * 5) as usize) % n);
            }
            let once = view_after(&chosen);
            prop_assert_eq!(&once, &view_after(&reordered));
            let twice = view_after(&[chosen.clone(), chosen].concat());
            prop_assert_eq!(once, twice);
        }
    }
}
