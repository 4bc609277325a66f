//! The validated ring, and each keyspace's replicas computed once per token range so that a
//! lookup is a binary search and a slice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use crate::error::TopologyError;
use crate::state::{Keyspace, Node, NodeId, RingState};
use crate::token::{Token, TokenRange};
use crate::walk::{DcRing, Rule, Start, Walker};

/// A node's position in [`Ring::nodes`]; stable for the life of one `Ring`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeIdx(u32);

impl NodeIdx {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A DC and the nodes that own ranges in it (NORMAL or LEAVING).
pub(crate) struct Dc {
    pub name: String,
    /// Racks of the owning nodes, sorted.
    pub racks: Vec<String>,
    /// Owning nodes; a node's position here is its local number in `ring`.
    pub owners: Vec<NodeIdx>,
    pub ring: DcRing,
}

/// A validated [`RingState`] with every keyspace's replica sets precomputed.
pub struct Ring {
    state: RingState,
    index: HashMap<NodeId, NodeIdx>,
    pub(crate) dcs: Vec<Dc>,
    /// Tokens of owning nodes in ring order; range `i` ends at `tokens[i]`.
    tokens: Vec<Token>,
    owners: Vec<NodeIdx>,
    tables: BTreeMap<String, ReplicaTable>,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("epoch", &self.state.epoch)
            .field("nodes", &self.state.nodes.len())
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Ring {
    /// Validates the state and precomputes placement. A DC with fewer nodes than a
    /// keyspace's replication factor is allowed here (its replica sets report a
    /// [`Shortfall`]); [`Ring::check`] rejects it.
    pub fn new(state: RingState) -> Result<Ring, TopologyError> {
        let index = index_nodes(&state)?;
        let claimed = claimed_tokens(&state)?;
        let dcs = build_dcs(&state, &claimed);
        check_keyspace_dcs(&state, &dcs)?;
        let (tokens, owners) = claimed
            .into_iter()
            .filter(|&(_, n)| state.nodes[n.index()].state.owns_ranges())
            .unzip();
        let mut ring = Ring {
            state,
            index,
            dcs,
            tokens,
            owners,
            tables: BTreeMap::new(),
        };
        ring.tables = ring
            .state
            .keyspaces
            .iter()
            .map(|(name, ks)| (name.clone(), ReplicaTable::build(&ring, ks)))
            .collect();
        Ok(ring)
    }

    /// Rejects what [`Ring::new`] tolerates: a keyspace wanting more replicas in a DC than
    /// the DC has owning nodes.
    pub fn check(&self) -> Result<(), TopologyError> {
        self.tables
            .keys()
            .try_for_each(|ks| self.placement(ks)?.check())
    }

    pub fn state(&self) -> &RingState {
        &self.state
    }

    pub fn into_state(self) -> RingState {
        self.state
    }

    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    /// Every node of the state, including those that have left.
    pub fn nodes(&self) -> &[Node] {
        &self.state.nodes
    }

    pub fn node(&self, idx: NodeIdx) -> &Node {
        &self.state.nodes[idx.index()]
    }

    pub fn find(&self, id: &str) -> Option<NodeIdx> {
        self.index.get(id).copied()
    }

    pub(crate) fn find_or_err(&self, id: &NodeId) -> Result<NodeIdx, TopologyError> {
        self.find(id.as_str())
            .ok_or_else(|| TopologyError::UnknownNode(id.clone()))
    }

    /// The tokens that own ranges, in ring order.
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// DCs that any node of the state names, by name.
    pub fn datacenters(&self) -> impl Iterator<Item = &str> {
        self.dcs.iter().map(|d| d.name.as_str())
    }

    /// The nodes of a DC that own ranges (NORMAL or LEAVING).
    pub fn owners_in(&self, dc: &str) -> &[NodeIdx] {
        self.dc(dc).map_or(&[], |d| &d.owners)
    }

    /// The racks of a DC's owning nodes, by name.
    pub fn racks_in(&self, dc: &str) -> &[String] {
        self.dc(dc).map_or(&[], |d| &d.racks)
    }

    pub(crate) fn dc(&self, name: &str) -> Option<&Dc> {
        self.dcs
            .binary_search_by(|d| d.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.dcs[i])
    }

    pub fn keyspaces(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(String::as_str)
    }

    pub fn placement(&self, keyspace: &str) -> Result<Placement<'_>, TopologyError> {
        let (name, table) = self
            .tables
            .get_key_value(keyspace)
            .ok_or_else(|| TopologyError::UnknownKeyspace(keyspace.to_owned()))?;
        Ok(Placement {
            ring: self,
            keyspace: name,
            table,
        })
    }

    /// The node owning the range a token falls in, whatever the keyspace: the primary
    /// replica in the Cassandra sense ("primary range" repairs walk these).
    pub fn primary(&self, token: Token) -> Option<&Node> {
        self.range_index(token).map(|i| self.node(self.owner_of(i)))
    }

    /// The node holding ring token `i`.
    pub(crate) fn owner_of(&self, i: usize) -> NodeIdx {
        self.owners[i]
    }

    /// The range `i` of the ring, ending at `tokens()[i]`.
    pub fn range(&self, i: usize) -> TokenRange {
        let n = self.tokens.len();
        TokenRange::new(self.tokens[(i + n - 1) % n], self.tokens[i])
    }

    /// Which range a token falls in: the first ring token at or after it, wrapping.
    pub(crate) fn range_index(&self, token: Token) -> Option<usize> {
        if self.tokens.is_empty() {
            return None;
        }
        let i = self.tokens.partition_point(|t| *t < token);
        Some(if i == self.tokens.len() { 0 } else { i })
    }
}

fn index_nodes(state: &RingState) -> Result<HashMap<NodeId, NodeIdx>, TopologyError> {
    let mut index = HashMap::with_capacity(state.nodes.len());
    for (i, node) in state.nodes.iter().enumerate() {
        if node.dc.trim().is_empty() {
            return Err(TopologyError::NodeWithoutDc(node.id.clone()));
        }
        if node.rack.trim().is_empty() {
            return Err(TopologyError::NodeWithoutRack(node.id.clone()));
        }
        if node.state.owns_ranges() && node.tokens.is_empty() {
            return Err(TopologyError::NodeWithoutTokens {
                node: node.id.clone(),
                state: node.state,
            });
        }
        if index.insert(node.id.clone(), NodeIdx(i as u32)).is_some() {
            return Err(TopologyError::DuplicateNode(node.id.clone()));
        }
    }
    Ok(index)
}

/// All tokens of nodes that have not left, sorted, each claimed once.
fn claimed_tokens(state: &RingState) -> Result<Vec<(Token, NodeIdx)>, TopologyError> {
    let mut claimed: Vec<(Token, NodeIdx)> = state
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.state != crate::NodeState::Left)
        .flat_map(|(i, n)| n.tokens.iter().map(move |&t| (t, NodeIdx(i as u32))))
        .collect();
    claimed.sort_unstable();
    if let Some(w) = claimed.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(TopologyError::DuplicateToken {
            token: w[0].0,
            first: state.nodes[w[0].1.index()].id.clone(),
            second: state.nodes[w[1].1.index()].id.clone(),
        });
    }
    Ok(claimed)
}

fn build_dcs(state: &RingState, claimed: &[(Token, NodeIdx)]) -> Vec<Dc> {
    // A DC whose nodes all left stays known: its keyspaces then report a shortfall
    // rather than naming an unknown DC.
    let names: BTreeSet<&str> = state.nodes.iter().map(|n| n.dc.as_str()).collect();
    names
        .into_iter()
        .map(|name| build_dc(state, claimed, name))
        .collect()
}

fn build_dc(state: &RingState, claimed: &[(Token, NodeIdx)], name: &str) -> Dc {
    let owns = |n: &Node| n.dc == name && n.state.owns_ranges();
    let owners: Vec<NodeIdx> = (0..state.nodes.len())
        .filter(|&i| owns(&state.nodes[i]))
        .map(|i| NodeIdx(i as u32))
        .collect();
    let racks: Vec<String> = owners
        .iter()
        .map(|n| state.nodes[n.index()].rack.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut local = HashMap::with_capacity(owners.len());
    for (l, n) in owners.iter().enumerate() {
        local.insert(*n, l as u32);
    }
    let (tokens, local_owners) = claimed
        .iter()
        .filter_map(|(t, n)| local.get(n).map(|&l| (t.0, l)))
        .unzip();
    let rack_of = |n: &NodeIdx| {
        let rack = &state.nodes[n.index()].rack;
        racks.binary_search(rack).expect("rack listed") as u16
    };
    let ring = DcRing {
        tokens,
        owners: local_owners,
        racks: owners.iter().map(rack_of).collect(),
        rack_count: racks.len(),
    };
    Dc {
        name: name.to_owned(),
        racks,
        owners,
        ring,
    }
}

fn check_keyspace_dcs(state: &RingState, dcs: &[Dc]) -> Result<(), TopologyError> {
    for (keyspace, ks) in &state.keyspaces {
        for (dc, &rf) in &ks.replication {
            if rf > 0 && !dcs.iter().any(|d| &d.name == dc) {
                let known: Vec<&str> = dcs.iter().map(|d| d.name.as_str()).collect();
                return Err(TopologyError::UnknownDc {
                    keyspace: keyspace.clone(),
                    dc: dc.clone(),
                    known: if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    },
                });
            }
        }
    }
    Ok(())
}

/// A DC too small for a keyspace's replication factor: its replica sets hold every owning
/// node of the DC, fewer than asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shortfall {
    pub dc: String,
    pub rf: usize,
    pub nodes: usize,
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} has {} nodes, fewer than the {} replicas asked for",
            self.dc, self.nodes, self.rf
        )
    }
}

/// One DC's slice of every replica row.
#[derive(Clone, Debug)]
pub(crate) struct Segment {
    /// Index into the ring's DCs.
    pub dc: usize,
    pub rf: usize,
    pub offset: usize,
    pub len: usize,
}

/// The replicas of every range for one keyspace: row `i` (of `stride` nodes) serves range
/// `i`, DC after DC in name order. A DC always yields exactly min(RF, its nodes), so rows
/// have a fixed width.
pub(crate) struct ReplicaTable {
    pub segments: Vec<Segment>,
    pub stride: usize,
    replicas: Vec<NodeIdx>,
    shortfalls: Vec<Shortfall>,
}

impl ReplicaTable {
    fn build(ring: &Ring, ks: &Keyspace) -> ReplicaTable {
        let mut segments = Vec::new();
        let mut shortfalls = Vec::new();
        let mut stride = 0;
        for (name, &rf) in ks.replication.iter().filter(|(_, &rf)| rf > 0) {
            let dc = ring
                .dcs
                .iter()
                .position(|d| &d.name == name)
                .expect("checked");
            let nodes = ring.dcs[dc].owners.len();
            if nodes < rf {
                shortfalls.push(Shortfall {
                    dc: name.clone(),
                    rf,
                    nodes,
                });
            }
            let len = rf.min(nodes);
            segments.push(Segment {
                dc,
                rf,
                offset: stride,
                len,
            });
            stride += len;
        }
        let mut replicas = vec![NodeIdx(0); ring.tokens.len() * stride];
        for seg in &segments {
            fill_segment(ring, seg, stride, &mut replicas);
        }
        ReplicaTable {
            segments,
            stride,
            replicas,
            shortfalls,
        }
    }

    fn row(&self, range: usize) -> &[NodeIdx] {
        &self.replicas[range * self.stride..(range + 1) * self.stride]
    }
}

/// Selects each DC-local range's replicas once, then copies them to every ring range that
/// falls in it: a DC's walk from a ring token starts at the DC's first token at or after it.
fn fill_segment(ring: &Ring, seg: &Segment, stride: usize, replicas: &mut [NodeIdx]) {
    let dc = &ring.dcs[seg.dc];
    let local = &dc.ring;
    if seg.len == 0 {
        return;
    }
    let rule = Rule::new(seg.rf, local.node_count(), local.rack_count);
    let mut walker = Walker::default();
    let mut picks = Vec::with_capacity(seg.len);
    let mut sets = Vec::with_capacity(local.tokens.len() * seg.len);
    for k in 0..local.tokens.len() {
        walker.select(local, rule, Start::Token(k), None, &mut picks);
        debug_assert_eq!(picks.len(), seg.len);
        sets.extend(picks.iter().map(|&p| dc.owners[p as usize]));
    }
    let mut l = 0;
    for (i, token) in ring.tokens.iter().enumerate() {
        while l < local.tokens.len() && local.tokens[l] < token.0 {
            l += 1;
        }
        let k = if l == local.tokens.len() { 0 } else { l };
        let row = i * stride + seg.offset;
        replicas[row..row + seg.len].copy_from_slice(&sets[k * seg.len..(k + 1) * seg.len]);
    }
}

/// One keyspace's placement on a ring.
#[derive(Clone, Copy)]
pub struct Placement<'a> {
    ring: &'a Ring,
    keyspace: &'a str,
    table: &'a ReplicaTable,
}

impl<'a> Placement<'a> {
    pub fn ring(&self) -> &'a Ring {
        self.ring
    }

    pub fn keyspace(&self) -> &'a str {
        self.keyspace
    }

    /// The replicas of the range a token falls in.
    pub fn replicas(&self, token: Token) -> ReplicaSet<'a> {
        let row = self
            .ring
            .range_index(token)
            .map_or(&[][..], |i| self.table.row(i));
        ReplicaSet {
            placement: *self,
            row,
        }
    }

    pub fn replicas_for_key(&self, key: &[u8]) -> ReplicaSet<'a> {
        self.replicas(Token::of(key))
    }

    /// The replicas of ring range `i` (see [`Ring::range`]).
    pub fn replicas_of_range(&self, i: usize) -> ReplicaSet<'a> {
        ReplicaSet {
            placement: *self,
            row: self.table.row(i),
        }
    }

    /// The DCs this keyspace replicates to, with their replication factors.
    pub fn replication(&self) -> impl Iterator<Item = (&'a str, usize)> + 'a {
        let ring = self.ring;
        self.table
            .segments
            .iter()
            .map(move |s| (ring.dcs[s.dc].name.as_str(), s.rf))
    }

    pub(crate) fn segments(&self) -> &'a [Segment] {
        &self.table.segments
    }

    pub fn shortfalls(&self) -> &'a [Shortfall] {
        &self.table.shortfalls
    }

    /// Fails if a DC has fewer nodes than the keyspace's replication factor there.
    pub fn check(&self) -> Result<(), TopologyError> {
        match self.table.shortfalls.first() {
            None => Ok(()),
            Some(s) => Err(TopologyError::RfExceedsNodes {
                keyspace: self.keyspace.to_owned(),
                dc: s.dc.clone(),
                rf: s.rf,
                nodes: s.nodes,
            }),
        }
    }

    /// The ranges a node holds a replica of, adjacent ranges merged, in ring order.
    pub fn ranges_of(&self, node: NodeIdx) -> Vec<TokenRange> {
        let mut out: Vec<TokenRange> = Vec::new();
        for i in 0..self.ring.tokens.len() {
            if !self.table.row(i).contains(&node) {
                continue;
            }
            let range = self.ring.range(i);
            match out.last_mut() {
                Some(last) if last.end == range.start => last.end = range.end,
                _ => out.push(range),
            }
        }
        if out.len() > 1 && out[out.len() - 1].end == out[0].start {
            let last = out.pop().expect("two or more");
            out[0].start = last.start;
        }
        out
    }
}

/// The ordered replicas of one range: each DC's in turn (DCs by name), in each DC the
/// walk order, so the first of a DC is its primary replica.
#[derive(Clone, Copy)]
pub struct ReplicaSet<'a> {
    placement: Placement<'a>,
    row: &'a [NodeIdx],
}

impl<'a> ReplicaSet<'a> {
    pub fn indices(&self) -> &'a [NodeIdx] {
        self.row
    }

    pub fn len(&self) -> usize {
        self.row.len()
    }

    pub fn is_empty(&self) -> bool {
        self.row.is_empty()
    }

    pub fn nodes(&self) -> impl Iterator<Item = &'a Node> + 'a {
        let ring = self.placement.ring;
        self.row.iter().map(move |&n| ring.node(n))
    }

    /// The replicas in one DC (the local-DC subset); empty if the keyspace keeps none there.
    pub fn in_dc(&self, dc: &str) -> &'a [NodeIdx] {
        let ring = self.placement.ring;
        self.placement
            .table
            .segments
            .iter()
            .find(|s| ring.dcs[s.dc].name == dc)
            .map_or(&[], |s| &self.row[s.offset..s.offset + s.len])
    }

    /// The first replica in a DC.
    pub fn primary(&self, dc: &str) -> Option<&'a Node> {
        let ring = self.placement.ring;
        self.in_dc(dc).first().map(|&n| ring.node(n))
    }

    /// Why this set holds fewer replicas than the keyspace asks for, if it does.
    pub fn shortfalls(&self) -> &'a [Shortfall] {
        self.placement.shortfalls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NodeState;

    fn node(id: &str, dc: &str, rack: &str, tokens: &[u128]) -> Node {
        Node {
            id: id.into(),
            address: format!("{id}:7000"),
            dc: dc.into(),
            rack: rack.into(),
            state: NodeState::Normal,
            tokens: tokens.iter().map(|&t| Token(t)).collect(),
        }
    }

    fn state(nodes: Vec<Node>, replication: &[(&str, usize)]) -> RingState {
        RingState {
            epoch: 1,
            keyspaces: [("ks".to_owned(), Keyspace::new(replication.iter().copied()))].into(),
            nodes,
        }
    }

    /// Two DCs: east has racks r1 (a, c) and r2 (b); west has one node.
    fn two_dcs() -> RingState {
        state(
            vec![
                node("a", "east", "r1", &[100, 400]),
                node("b", "east", "r2", &[200]),
                node("c", "east", "r1", &[300]),
                node("w", "west", "r1", &[250]),
            ],
            &[("east", 2), ("west", 1)],
        )
    }

    fn ids(set: &[NodeIdx], ring: &Ring) -> Vec<String> {
        set.iter().map(|&n| ring.node(n).id.0.clone()).collect()
    }

    #[test]
    fn a_token_belongs_to_the_first_ring_token_at_or_after_it() {
        let ring = Ring::new(two_dcs()).unwrap();
        let p = ring.placement("ks").unwrap();
        assert_eq!(ids(p.replicas(Token(150)).in_dc("east"), &ring), ["b", "c"]);
        assert_eq!(ids(p.replicas(Token(200)).in_dc("east"), &ring), ["b", "c"]);
        // Past the last token the ring wraps to the first.
        assert_eq!(ids(p.replicas(Token(401)).in_dc("east"), &ring), ["a", "b"]);
        assert_eq!(ring.primary(Token(401)).unwrap().id.as_str(), "a");
    }

    #[test]
    fn racks_are_spread_before_nodes_are() {
        let ring = Ring::new(two_dcs()).unwrap();
        let p = ring.placement("ks").unwrap();
        // From 250 the east walk meets c (r1), a (r1), then b (r2): a is skipped for b.
        assert_eq!(ids(p.replicas(Token(260)).in_dc("east"), &ring), ["c", "b"]);
    }

    #[test]
    fn replica_sets_list_dcs_in_name_order_with_each_dc_primary_first() {
        let ring = Ring::new(two_dcs()).unwrap();
        let set = ring.placement("ks").unwrap().replicas(Token(150));
        assert_eq!(ids(set.indices(), &ring), ["b", "c", "w"]);
        assert_eq!(set.primary("west").unwrap().id.as_str(), "w");
        assert!(set.in_dc("north").is_empty());
        assert!(set.shortfalls().is_empty());
    }

    #[test]
    fn a_dc_smaller_than_its_rf_gives_all_its_nodes_and_says_why() {
        let ring = Ring::new(state(
            vec![node("a", "east", "r1", &[1]), node("b", "east", "r2", &[2])],
            &[("east", 3)],
        ))
        .unwrap();
        let p = ring.placement("ks").unwrap();
        let set = p.replicas(Token(5));
        assert_eq!(set.len(), 2);
        assert_eq!(
            set.shortfalls()[0].to_string(),
            "east has 2 nodes, fewer than the 3 replicas asked for"
        );
        assert_eq!(
            ring.check().unwrap_err().to_string(),
            "keyspace ks wants 3 replicas in east, which has only 2 nodes"
        );
    }

    #[test]
    fn joining_and_left_nodes_own_nothing() {
        let mut s = two_dcs();
        s.nodes[1].state = NodeState::Joining;
        s.nodes[2].state = NodeState::Left;
        let ring = Ring::new(s).unwrap();
        let p = ring.placement("ks").unwrap();
        assert_eq!(ids(p.replicas(Token(150)).in_dc("east"), &ring), ["a"]);
        assert_eq!(ring.tokens().len(), 3);
    }

    #[test]
    fn ranges_of_a_node_merge_across_the_wrap() {
        let ring = Ring::new(state(
            vec![
                node("a", "east", "r1", &[10, 30]),
                node("b", "east", "r1", &[20]),
            ],
            &[("east", 1)],
        ))
        .unwrap();
        let p = ring.placement("ks").unwrap();
        let a = ring.find("a").unwrap();
        assert_eq!(p.ranges_of(a), vec![TokenRange::new(Token(20), Token(10)),]);
    }

    #[test]
    fn duplicate_tokens_are_rejected_with_both_claimants() {
        let mut s = two_dcs();
        s.nodes[1].tokens.push(Token(300));
        assert_eq!(
            Ring::new(s).unwrap_err().to_string(),
            "token 300 is claimed by both b and c"
        );
    }

    #[test]
    fn a_left_node_releases_its_tokens() {
        let mut s = two_dcs();
        s.nodes[2].state = NodeState::Left;
        s.nodes[1].tokens.push(Token(300));
        assert!(Ring::new(s).is_ok());
    }

    #[test]
    fn unknown_dc_in_a_keyspace_is_rejected() {
        let s = state(vec![node("a", "east", "r1", &[1])], &[("west", 3)]);
        assert_eq!(
            Ring::new(s).unwrap_err().to_string(),
            "keyspace ks replicates to unknown datacenter west (known: east)"
        );
    }

    #[test]
    fn nodes_without_rack_dc_or_tokens_are_rejected() {
        let s = state(vec![node("a", "east", " ", &[1])], &[]);
        assert_eq!(
            Ring::new(s).err(),
            Some(TopologyError::NodeWithoutRack("a".into()))
        );
        let s = state(vec![node("a", "", "r1", &[1])], &[]);
        assert_eq!(
            Ring::new(s).err(),
            Some(TopologyError::NodeWithoutDc("a".into()))
        );
        let s = state(vec![node("a", "east", "r1", &[])], &[]);
        assert_eq!(
            Ring::new(s).unwrap_err().to_string(),
            "node a is NORMAL but has no tokens"
        );
    }

    #[test]
    fn duplicate_node_ids_are_rejected() {
        let s = state(
            vec![node("a", "east", "r1", &[1]), node("a", "east", "r1", &[2])],
            &[],
        );
        assert_eq!(
            Ring::new(s).err(),
            Some(TopologyError::DuplicateNode("a".into()))
        );
    }

    #[test]
    fn unknown_keyspace_is_an_error() {
        let ring = Ring::new(two_dcs()).unwrap();
        assert_eq!(
            ring.placement("nope").err(),
            Some(TopologyError::UnknownKeyspace("nope".into()))
        );
    }

    #[test]
    fn an_empty_ring_has_no_replicas() {
        let ring = Ring::new(RingState::default()).unwrap();
        assert!(ring.primary(Token(1)).is_none());
    }
}
