//! Consistency levels: how many replicas, and which, a request must hear from.

use std::fmt;
use std::str::FromStr;

use topology::{NodeIdx, Placement, ReplicaSet};

/// How many replicas must answer before a request succeeds (Cassandra's meanings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConsistencyLevel {
    /// Writes only: one replica, or a hint stored for one.
    Any,
    One,
    Two,
    Three,
    /// A majority of all replicas in all DCs.
    Quorum,
    /// One replica in the coordinator's DC.
    LocalOne,
    /// A majority of the replicas in the coordinator's DC.
    LocalQuorum,
    /// A majority in every DC.
    EachQuorum,
    All,
}

const LEVELS: [(ConsistencyLevel, &str); 9] = [
    (ConsistencyLevel::Any, "ANY"),
    (ConsistencyLevel::One, "ONE"),
    (ConsistencyLevel::Two, "TWO"),
    (ConsistencyLevel::Three, "THREE"),
    (ConsistencyLevel::Quorum, "QUORUM"),
    (ConsistencyLevel::LocalOne, "LOCAL_ONE"),
    (ConsistencyLevel::LocalQuorum, "LOCAL_QUORUM"),
    (ConsistencyLevel::EachQuorum, "EACH_QUORUM"),
    (ConsistencyLevel::All, "ALL"),
];

impl ConsistencyLevel {
    pub fn as_str(self) -> &'static str {
        LEVELS
            .iter()
            .find(|(l, _)| *l == self)
            .map(|(_, s)| *s)
            .expect("every level is listed")
    }

    /// Whether only the coordinator's DC counts.
    pub fn is_local(self) -> bool {
        matches!(
            self,
            ConsistencyLevel::LocalOne | ConsistencyLevel::LocalQuorum
        )
    }
}

impl fmt::Display for ConsistencyLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid consistency level {input:?}: expected one of ANY, ONE, TWO, THREE, QUORUM, LOCAL_ONE, LOCAL_QUORUM, EACH_QUORUM, ALL")]
pub struct ParseConsistencyLevelError {
    pub input: String,
}

impl FromStr for ConsistencyLevel {
    type Err = ParseConsistencyLevelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().replace('-', "_");
        LEVELS
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(&wanted))
            .map(|(l, _)| *l)
            .ok_or_else(|| ParseConsistencyLevelError {
                input: s.to_owned(),
            })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Read,
    Write,
}

/// One DC's replicas of a key, in ring walk order, and the replication factor asked for
/// there (which may exceed the replicas when the DC is too small).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DcReplicas<N> {
    pub dc: String,
    pub rf: usize,
    pub replicas: Vec<N>,
}

/// The replicas of one key, DC by DC. Generic over the node handle so that the coordinator
/// uses cheap [`NodeIdx`]es and tests use plain integers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaLayout<N> {
    dcs: Vec<DcReplicas<N>>,
}

impl<N: Copy + Eq> ReplicaLayout<N> {
    pub fn new(dcs: Vec<DcReplicas<N>>) -> Self {
        ReplicaLayout { dcs }
    }

    pub fn dcs(&self) -> &[DcReplicas<N>] {
        &self.dcs
    }

    pub fn dc_index(&self, dc: &str) -> Option<usize> {
        self.dcs.iter().position(|d| d.dc == dc)
    }

    /// The index of the DC a replica is in; `None` for a node that is not a replica.
    pub fn dc_of(&self, node: N) -> Option<usize> {
        self.dcs.iter().position(|d| d.replicas.contains(&node))
    }

    pub fn replicas(&self) -> impl Iterator<Item = N> + '_ {
        self.dcs.iter().flat_map(|d| d.replicas.iter().copied())
    }

    fn total_rf(&self) -> usize {
        self.dcs.iter().map(|d| d.rf).sum()
    }
}

impl ReplicaLayout<NodeIdx> {
    /// The layout of one replica set of a keyspace's placement.
    pub fn from_ring(placement: &Placement<'_>, set: &ReplicaSet<'_>) -> Self {
        let dcs = placement
            .replication()
            .map(|(dc, rf)| DcReplicas {
                dc: dc.to_owned(),
                rf,
                replicas: set.in_dc(dc).to_vec(),
            })
            .collect();
        ReplicaLayout { dcs }
    }
}

/// The node coordinating a request: replicas near it are asked first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coordinator<N> {
    pub node: N,
    pub dc: String,
}

fn quorum(rf: usize) -> usize {
    rf / 2 + 1
}

/// What a request must hear before it succeeds. Counting rule: an ack counts if it comes from
/// a replica in scope; success needs `total` counted acks and, per DC listed in `per_dc`,
/// that many from the DC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub level: ConsistencyLevel,
    pub op: Operation,
    pub total: usize,
    /// (DC index in the layout, acks needed there); EACH_QUORUM only.
    pub per_dc: Vec<(usize, usize)>,
    /// Only this DC's replicas count (LOCAL_*).
    pub only_dc: Option<usize>,
    /// A stored hint counts as an ack (ANY).
    pub hints_count: bool,
}

impl Requirement {
    /// What `level` needs for `op` on `layout`, coordinated from `local_dc`.
    pub fn new<N: Copy + Eq>(
        level: ConsistencyLevel,
        op: Operation,
        layout: &ReplicaLayout<N>,
        local_dc: &str,
    ) -> Result<Self, ConsistencyError> {
        use ConsistencyLevel as L;
        if level == L::Any && op == Operation::Read {
            return Err(ConsistencyError::AnyIsWriteOnly);
        }
        if layout.total_rf() == 0 {
            return Err(ConsistencyError::NoReplicas);
        }
        let mut req = Requirement {
            level,
            op,
            total: 0,
            per_dc: Vec::new(),
            only_dc: None,
            hints_count: level == L::Any,
        };
        match level {
            L::Any | L::One => req.total = 1,
            L::Two => req.total = 2,
            L::Three => req.total = 3,
            L::Quorum => req.total = quorum(layout.total_rf()),
            L::All => req.total = layout.total_rf(),
            L::LocalOne | L::LocalQuorum => {
                let dc = layout
                    .dc_index(local_dc)
                    .filter(|&i| layout.dcs[i].rf > 0)
                    .ok_or_else(|| ConsistencyError::NoLocalReplicas {
                        level,
                        dc: local_dc.to_owned(),
                    })?;
                req.only_dc = Some(dc);
                let rf = layout.dcs[dc].rf;
                req.total = if level == L::LocalOne { 1 } else { quorum(rf) };
            }
            L::EachQuorum => {
                req.per_dc = (layout.dcs.iter().enumerate())
                    .filter(|(_, d)| d.rf > 0)
                    .map(|(i, d)| (i, quorum(d.rf)))
                    .collect();
                req.total = req.per_dc.iter().map(|(_, n)| n).sum();
            }
        }
        Ok(req)
    }

    /// Whether a replica in DC `dc` counts towards this requirement.
    pub fn counts(&self, dc: usize) -> bool {
        self.only_dc.is_none_or(|only| only == dc)
    }

    /// Fails fast when too few replicas are alive to ever succeed. ANY never fails: a hint
    /// can always be stored.
    pub fn check_alive<N: Copy + Eq>(
        &self,
        layout: &ReplicaLayout<N>,
        alive: impl Fn(N) -> bool,
    ) -> Result<(), Unavailable> {
        if self.hints_count {
            return Ok(());
        }
        let alive_in = |dc: usize| {
            layout.dcs[dc]
                .replicas
                .iter()
                .filter(|&&n| alive(n))
                .count()
        };
        for &(dc, required) in &self.per_dc {
            let alive = alive_in(dc);
            if alive < required {
                return Err(self.unavailable(Some(&layout.dcs[dc].dc), required, alive));
            }
        }
        let alive: usize = (0..layout.dcs.len())
            .filter(|&dc| self.counts(dc))
            .map(alive_in)
            .sum();
        if alive < self.total {
            let dc = self.only_dc.map(|i| layout.dcs[i].dc.as_str());
            return Err(self.unavailable(dc, self.total, alive));
        }
        Ok(())
    }

    fn unavailable(&self, dc: Option<&str>, required: usize, alive: usize) -> Unavailable {
        Unavailable {
            level: self.level,
            dc: dc.map(str::to_owned),
            required,
            alive,
        }
    }
}

/// Too few replicas are alive to even try.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot achieve consistency level {level}: {required} replicas required{} but only {alive} alive", dc.as_ref().map(|d| format!(" in {d}")).unwrap_or_default())]
pub struct Unavailable {
    pub level: ConsistencyLevel,
    /// The DC that is short, for LOCAL_* and EACH_QUORUM.
    pub dc: Option<String>,
    pub required: usize,
    pub alive: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsistencyError {
    #[error("consistency level ANY is only supported for writes")]
    AnyIsWriteOnly,
    #[error("consistency level {level} needs replicas in the coordinator's datacenter {dc}, but the keyspace keeps none there")]
    NoLocalReplicas { level: ConsistencyLevel, dc: String },
    #[error("the keyspace keeps no replicas in any datacenter")]
    NoReplicas,
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// Replicas to read from: full data from the closest, digests from the rest the level
/// needs, and live replicas left over for a speculative retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadPlan<N> {
    pub requirement: Requirement,
    pub data: N,
    pub digests: Vec<N>,
    pub spare: Vec<N>,
}

impl<N: Copy + Eq> ReadPlan<N> {
    pub fn new(
        level: ConsistencyLevel,
        layout: &ReplicaLayout<N>,
        coordinator: &Coordinator<N>,
        alive: impl Fn(N) -> bool,
    ) -> Result<Self, ConsistencyError> {
        let requirement = Requirement::new(level, Operation::Read, layout, &coordinator.dc)?;
        requirement.check_alive(layout, &alive)?;
        let candidates: Vec<(usize, N)> = by_proximity(layout, coordinator)
            .into_iter()
            .filter(|&(dc, n)| requirement.counts(dc) && alive(n))
            .collect();
        let mut chosen = pick_per_dc(&candidates, &requirement.per_dc);
        for &(_, n) in &candidates {
            if chosen.len() >= requirement.total {
                break;
            }
            if !chosen.contains(&n) {
                chosen.push(n);
            }
        }
        let spare = (candidates.iter().map(|&(_, n)| n))
            .filter(|n| !chosen.contains(n))
            .collect();
        let mut chosen = chosen.into_iter();
        let data = chosen.next().expect("availability was checked");
        Ok(ReadPlan {
            requirement,
            data,
            digests: chosen.collect(),
            spare,
        })
    }

    /// Every replica the plan reads from.
    pub fn contacted(&self) -> impl Iterator<Item = N> + '_ {
        std::iter::once(self.data).chain(self.digests.iter().copied())
    }
}

/// Replicas in the order a read asks them: the coordinator itself, its DC, then the other
/// DCs in layout order, each in ring walk order.
fn by_proximity<N: Copy + Eq>(
    layout: &ReplicaLayout<N>,
    coordinator: &Coordinator<N>,
) -> Vec<(usize, N)> {
    let mut all: Vec<(usize, N)> = (layout.dcs.iter().enumerate())
        .flat_map(|(i, d)| d.replicas.iter().map(move |&n| (i, n)))
        .collect();
    all.sort_by_key(|&(dc, n)| (n != coordinator.node, layout.dcs[dc].dc != coordinator.dc));
    all
}

/// The closest `needed` candidates of each DC that has a per-DC requirement.
fn pick_per_dc<N: Copy + Eq>(candidates: &[(usize, N)], per_dc: &[(usize, usize)]) -> Vec<N> {
    per_dc
        .iter()
        .flat_map(|&(dc, needed)| {
            (candidates.iter().filter(move |&&(d, _)| d == dc))
                .take(needed)
                .map(|&(_, n)| n)
        })
        .collect()
}

/// Where a write goes: every live replica (Cassandra sends writes to all of them whatever the
/// level; the level only says how many acks to wait for), grouped so that each remote DC gets
/// one message; dead replicas get hints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WritePlan<N> {
    pub requirement: Requirement,
    /// Live replicas in the coordinator's DC.
    pub local: Vec<N>,
    /// Live replicas of each other DC, by DC name.
    pub remote: Vec<(String, Vec<N>)>,
    pub hinted: Vec<N>,
}

impl<N: Copy + Eq> WritePlan<N> {
    pub fn new(
        level: ConsistencyLevel,
        layout: &ReplicaLayout<N>,
        coordinator: &Coordinator<N>,
        alive: impl Fn(N) -> bool,
    ) -> Result<Self, ConsistencyError> {
        let requirement = Requirement::new(level, Operation::Write, layout, &coordinator.dc)?;
        requirement.check_alive(layout, &alive)?;
        let mut plan = WritePlan {
            requirement,
            local: Vec::new(),
            remote: Vec::new(),
            hinted: layout.replicas().filter(|&n| !alive(n)).collect(),
        };
        for d in &layout.dcs {
            let live: Vec<N> = d.replicas.iter().copied().filter(|&n| alive(n)).collect();
            if d.dc == coordinator.dc {
                plan.local = live;
            } else if !live.is_empty() {
                plan.remote.push((d.dc.clone(), live));
            }
        }
        Ok(plan)
    }

    /// Every replica the write is sent to.
    pub fn contacted(&self) -> impl Iterator<Item = N> + '_ {
        let remote = self.remote.iter().flat_map(|(_, r)| r.iter().copied());
        self.local.iter().copied().chain(remote)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use ConsistencyLevel as L;

    /// DC `dc1` holds replicas 10, 11, 12..., `dc2` holds 20, 21, ...
    pub(crate) fn layout(rfs: &[usize]) -> ReplicaLayout<u32> {
        ReplicaLayout::new(
            rfs.iter()
                .enumerate()
                .map(|(i, &rf)| DcReplicas {
                    dc: format!("dc{}", i + 1),
                    rf,
                    replicas: (0..rf as u32).map(|r| (i as u32 + 1) * 10 + r).collect(),
                })
                .collect(),
        )
    }

    fn coord(dc: &str) -> Coordinator<u32> {
        Coordinator {
            node: 99,
            dc: dc.into(),
        }
    }

    #[test]
    fn levels_parse_case_insensitively_and_print_canonically() {
        for (level, name) in LEVELS {
            assert_eq!(name.to_lowercase().parse::<L>().unwrap(), level);
            assert_eq!(level.to_string(), name);
        }
        assert_eq!("local-quorum".parse::<L>().unwrap(), L::LocalQuorum);
        assert_eq!(
            "most".parse::<L>().unwrap_err().to_string(),
            "invalid consistency level \"most\": expected one of ANY, ONE, TWO, THREE, QUORUM, \
             LOCAL_ONE, LOCAL_QUORUM, EACH_QUORUM, ALL"
        );
    }

    #[test]
    fn requirements_follow_cassandra_across_dcs() {
        let l = layout(&[3, 3]);
        let req = |level| Requirement::new(level, Operation::Write, &l, "dc1").unwrap();
        assert_eq!(req(L::One).total, 1);
        assert_eq!(req(L::Three).total, 3);
        assert_eq!(req(L::Quorum).total, 4);
        assert_eq!(req(L::All).total, 6);
        assert_eq!(req(L::LocalQuorum).total, 2);
        assert_eq!(req(L::LocalQuorum).only_dc, Some(0));
        assert_eq!(req(L::EachQuorum).per_dc, vec![(0, 2), (1, 2)]);
        assert_eq!(req(L::EachQuorum).total, 4);
        assert!(req(L::Any).hints_count);
    }

    #[test]
    fn any_is_refused_for_reads_and_local_levels_need_local_replicas() {
        let l = layout(&[3]);
        assert_eq!(
            Requirement::new(L::Any, Operation::Read, &l, "dc1"),
            Err(ConsistencyError::AnyIsWriteOnly)
        );
        let err = Requirement::new(L::LocalQuorum, Operation::Read, &l, "dc9").unwrap_err();
        assert_eq!(
            err.to_string(),
            "consistency level LOCAL_QUORUM needs replicas in the coordinator's datacenter dc9, \
             but the keyspace keeps none there"
        );
    }

    #[test]
    fn one_node_down_per_dc_keeps_local_and_each_quorum_but_not_all() {
        let l = layout(&[3, 3]);
        let alive = |n: u32| n != 10 && n != 20;
        let c = coord("dc1");
        assert!(WritePlan::new(L::LocalQuorum, &l, &c, alive).is_ok());
        assert!(WritePlan::new(L::EachQuorum, &l, &c, alive).is_ok());
        let err = WritePlan::new(L::All, &l, &c, alive).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot achieve consistency level ALL: 6 replicas required but only 4 alive"
        );
    }

    #[test]
    fn each_quorum_names_the_short_dc() {
        let l = layout(&[3, 3]);
        let alive = |n: u32| n < 20 || n == 22;
        let err = ReadPlan::new(L::EachQuorum, &l, &coord("dc1"), alive).unwrap_err();
        assert_eq!(
            err,
            ConsistencyError::Unavailable(Unavailable {
                level: L::EachQuorum,
                dc: Some("dc2".into()),
                required: 2,
                alive: 1
            })
        );
        // QUORUM counts all DCs together, so the same outage is fine for it.
        assert!(ReadPlan::new(L::Quorum, &l, &coord("dc1"), alive).is_ok());
    }

    #[test]
    fn any_writes_with_every_replica_down_go_to_hints() {
        let l = layout(&[2]);
        let plan = WritePlan::new(L::Any, &l, &coord("dc1"), |_| false).unwrap();
        assert!(plan.local.is_empty());
        assert_eq!(plan.hinted, vec![10, 11]);
        assert!(WritePlan::new(L::One, &l, &coord("dc1"), |_| false).is_err());
    }

    #[test]
    fn writes_reach_every_live_replica_grouped_by_dc() {
        let l = layout(&[3, 3, 2]);
        let plan = WritePlan::new(L::LocalOne, &l, &coord("dc2"), |n| n != 31).unwrap();
        assert_eq!(plan.local, vec![20, 21, 22]);
        assert_eq!(
            plan.remote,
            vec![("dc1".into(), vec![10, 11, 12]), ("dc3".into(), vec![30])]
        );
        assert_eq!(plan.hinted, vec![31]);
    }

    #[test]
    fn reads_go_to_the_coordinator_then_its_dc_then_others() {
        let l = layout(&[3, 3]);
        let c = Coordinator {
            node: 21,
            dc: "dc2".into(),
        };
        let plan = ReadPlan::new(L::Quorum, &l, &c, |n| n != 20).unwrap();
        assert_eq!(plan.data, 21);
        assert_eq!(plan.digests, vec![22, 10, 11]);
        assert_eq!(plan.spare, vec![12]);
        let plan = ReadPlan::new(L::LocalOne, &l, &c, |_| true).unwrap();
        assert_eq!((plan.data, plan.digests.len()), (21, 0));
        assert_eq!(plan.spare, vec![20, 22]);
    }

    #[test]
    fn each_quorum_reads_take_a_quorum_from_every_dc() {
        let l = layout(&[3, 5]);
        let plan = ReadPlan::new(L::EachQuorum, &l, &coord("dc2"), |_| true).unwrap();
        let contacted: Vec<u32> = plan.contacted().collect();
        assert_eq!(contacted, vec![10, 11, 20, 21, 22]);
    }

    #[test]
    fn layouts_come_from_the_ring_dc_by_dc() {
        use topology::{Keyspace, Node, NodeState, Ring, RingState, Token};
        let node = |id: &str, dc: &str, t: u128| Node {
            id: id.into(),
            address: String::new(),
            dc: dc.into(),
            rack: "r1".into(),
            state: NodeState::Normal,
            tokens: vec![Token(t)],
        };
        let ring = Ring::new(RingState {
            epoch: 1,
            keyspaces: [("ks".into(), Keyspace::new([("east", 2), ("west", 1)]))].into(),
            nodes: vec![
                node("a", "east", 1),
                node("b", "east", 2),
                node("w", "west", 3),
            ],
        })
        .unwrap();
        let placement = ring.placement("ks").unwrap();
        let l = ReplicaLayout::from_ring(&placement, &placement.replicas(Token(2)));
        let ids = |dc: usize| -> Vec<&str> {
            (l.dcs()[dc].replicas.iter())
                .map(|&n| ring.node(n).id.as_str())
                .collect()
        };
        assert_eq!((l.dcs()[0].dc.as_str(), l.dcs()[0].rf), ("east", 2));
        assert_eq!(ids(0), ["b", "a"]);
        assert_eq!(ids(1), ["w"]);
    }

    proptest! {
        #[test]
        fn prop_a_plan_exists_exactly_when_enough_counted_replicas_are_alive(
            rfs in proptest::collection::vec(0usize..5, 1..4),
            dead in proptest::collection::vec(any::<bool>(), 15),
            level in proptest::sample::select(LEVELS.iter().map(|(l, _)| *l).collect::<Vec<_>>()),
        ) {
            let l = layout(&rfs);
            let alive = |n: u32| !dead[((n / 10 - 1) * 5 + n % 10) as usize];
            let Ok(req) = Requirement::new(level, Operation::Write, &l, "dc1") else {
                return Ok(());
            };
            match ReadPlan::new(level, &l, &coord("dc1"), alive) {
                Ok(plan) => {
                    let contacted: Vec<u32> = plan.contacted().collect();
                    prop_assert_eq!(contacted.len(), req.total);
                    for n in &contacted {
                        prop_assert!(alive(*n));
                        prop_assert!(req.counts(l.dc_of(*n).unwrap()));
                        prop_assert_eq!(contacted.iter().filter(|m| *m == n).count(), 1);
                    }
                }
                Err(e) => prop_assert!(
                    level == L::Any || req.check_alive(&l, alive).is_err(),
                    "{e}"
                ),
            }
        }
    }
}
