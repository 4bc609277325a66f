//! Counting the answers to one request against its consistency level.

use super::consistency::{ConsistencyLevel, Operation, ReplicaLayout, Requirement};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    NotAsked,
    Waiting,
    Acked,
    Failed,
}

#[derive(Clone, Debug)]
struct Slot<N> {
    node: N,
    dc: usize,
    reply: Reply,
}

/// What became of one reply fed to the tracker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// An ack that counts towards the level.
    Counted,
    /// Recorded, but it does not count: a failure, or an ack from a replica outside the
    /// level's scope (another DC under LOCAL_*).
    NotCounted,
    /// The replica had already answered; only its first answer counts.
    Duplicate,
    /// Not a replica of this key.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Success,
    /// Enough replicas failed that the level can no longer be met.
    Failed(Failure),
}

/// Replicas answered with errors: the level cannot be met whatever the others say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("operation failed at {level}: {required} acknowledgements required, {received} received, {failures} replicas failed")]
pub struct Failure {
    pub level: ConsistencyLevel,
    pub required: usize,
    pub received: usize,
    pub failures: usize,
}

/// Too few replicas answered before the deadline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("operation timed out at {level}: {received} of {required} required replicas acknowledged{}", if *write_may_have_applied { " (the write may still have been applied)" } else { "" })]
pub struct Timeout {
    pub level: ConsistencyLevel,
    pub required: usize,
    pub received: usize,
    /// A replica received the mutation (or a hint was stored) and may apply it: the client
    /// must not assume the write did not happen.
    pub write_may_have_applied: bool,
}

/// The answers to one request. Feed it replies as they arrive; ask [`Self::outcome`] after
/// each, and [`Self::timed_out`] when the deadline timer fires.
#[derive(Clone, Debug)]
pub struct ResponseTracker<N> {
    requirement: Requirement,
    slots: Vec<Slot<N>>,
    hints: usize,
    deadline_ms: u64,
}

impl<N: Copy + Eq> ResponseTracker<N> {
    /// A tracker for a request sent to `contacted` (replicas of `layout`), due at
    /// `deadline_ms`.
    pub fn new(
        requirement: Requirement,
        layout: &ReplicaLayout<N>,
        contacted: impl IntoIterator<Item = N>,
        deadline_ms: u64,
    ) -> Self {
        let slots = (layout.dcs().iter().enumerate())
            .flat_map(|(dc, d)| {
                d.replicas.iter().map(move |&node| Slot {
                    node,
                    dc,
                    reply: Reply::NotAsked,
                })
            })
            .collect();
        let mut tracker = ResponseTracker {
            requirement,
            slots,
            hints: 0,
            deadline_ms,
        };
        contacted.into_iter().for_each(|n| tracker.contact(n));
        tracker
    }

    /// Records that a request went to one more replica (a speculative retry).
    pub fn contact(&mut self, node: N) {
        if let Some(slot) = self.slot_mut(node) {
            if slot.reply == Reply::NotAsked {
                slot.reply = Reply::Waiting;
            }
        }
    }

    pub fn ack(&mut self, node: N) -> Recorded {
        match self.record(node, Reply::Acked) {
            Ok(dc) if self.requirement.counts(dc) => Recorded::Counted,
            Ok(_) => Recorded::NotCounted,
            Err(r) => r,
        }
    }

    pub fn fail(&mut self, node: N) -> Recorded {
        self.record(node, Reply::Failed)
            .map_or_else(|r| r, |_| Recorded::NotCounted)
    }

    /// A hint was stored for a replica that did not acknowledge; under ANY that is enough.
    pub fn hint_stored(&mut self) {
        self.hints += 1;
    }

    /// Stores a first answer and returns the replica's DC.
    fn record(&mut self, node: N, reply: Reply) -> Result<usize, Recorded> {
        let slot = self.slot_mut(node).ok_or(Recorded::Unknown)?;
        if matches!(slot.reply, Reply::Acked | Reply::Failed) {
            return Err(Recorded::Duplicate);
        }
        slot.reply = reply;
        Ok(slot.dc)
    }

    fn slot_mut(&mut self, node: N) -> Option<&mut Slot<N>> {
        self.slots.iter_mut().find(|s| s.node == node)
    }

    /// Counted acks, in all DCs in scope.
    pub fn received(&self) -> usize {
        self.count(|s| s.reply == Reply::Acked && self.requirement.counts(s.dc))
    }

    fn count(&self, pred: impl Fn(&Slot<N>) -> bool) -> usize {
        self.slots.iter().filter(|s| pred(s)).count()
    }

    /// Whether the level would be met if every slot matching `counted` acked.
    fn met_by(&self, counted: impl Fn(&Slot<N>) -> bool) -> bool {
        let req = &self.requirement;
        let in_dc = |dc| self.count(|s| s.dc == dc && counted(s));
        let total = self.count(|s| req.counts(s.dc) && counted(s));
        total >= req.total && req.per_dc.iter().all(|&(dc, n)| in_dc(dc) >= n)
    }

    pub fn outcome(&self) -> Outcome {
        let acked = |s: &Slot<N>| s.reply == Reply::Acked;
        if self.met_by(acked) || (self.requirement.hints_count && self.hints > 0) {
            return Outcome::Success;
        }
        let may_ack = |s: &Slot<N>| matches!(s.reply, Reply::Acked | Reply::Waiting);
        if self.requirement.hints_count || self.met_by(may_ack) {
            return Outcome::Pending;
        }
        Outcome::Failed(Failure {
            level: self.requirement.level,
            required: self.requirement.total,
            received: self.received(),
            failures: self.count(|s| s.reply == Reply::Failed),
        })
    }

    /// The timeout to report if the request is still pending at `now_ms`.
    pub fn timed_out(&self, now_ms: u64) -> Option<Timeout> {
        if now_ms < self.deadline_ms || self.outcome() != Outcome::Pending {
            return None;
        }
        let reached = self.hints > 0 || self.slots.iter().any(|s| s.reply == Reply::Waiting);
        let reached = reached || self.count(|s| s.reply == Reply::Acked) > 0;
        Some(Timeout {
            level: self.requirement.level,
            required: self.requirement.total,
            received: self.received(),
            write_may_have_applied: self.requirement.op == Operation::Write && reached,
        })
    }

    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// Contacted replicas that have not answered: candidates for hints after a write.
    pub fn unanswered(&self) -> impl Iterator<Item = N> + '_ {
        (self.slots.iter())
            .filter(|s| s.reply == Reply::Waiting)
            .map(|s| s.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::consistency::tests::layout;
    use crate::cluster::ConsistencyLevel as L;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn tracker(level: L, op: Operation, rfs: &[usize]) -> ResponseTracker<u32> {
        let l = layout(rfs);
        let req = Requirement::new(level, op, &l, "dc1").unwrap();
        let all: Vec<u32> = l.replicas().collect();
        ResponseTracker::new(req, &l, all, 100)
    }

    #[test]
    fn quorum_succeeds_on_the_majority_across_dcs() {
        let mut t = tracker(L::Quorum, Operation::Write, &[3, 3]);
        for n in [10, 20, 21] {
            assert_eq!(t.ack(n), Recorded::Counted);
            assert_eq!(t.outcome(), Outcome::Pending);
        }
        t.ack(11);
        assert_eq!(t.outcome(), Outcome::Success);
    }

    #[test]
    fn local_quorum_ignores_remote_acks() {
        let mut t = tracker(L::LocalQuorum, Operation::Write, &[3, 3]);
        assert_eq!(t.ack(20), Recorded::NotCounted);
        assert_eq!(t.ack(21), Recorded::NotCounted);
        t.ack(10);
        assert_eq!(t.outcome(), Outcome::Pending);
        t.ack(12);
        assert_eq!(t.outcome(), Outcome::Success);
    }

    #[test]
    fn each_quorum_needs_every_dc() {
        let mut t = tracker(L::EachQuorum, Operation::Write, &[3, 3]);
        for n in [10, 11, 12, 20] {
            t.ack(n);
        }
        assert_eq!(t.outcome(), Outcome::Pending);
        t.fail(21);
        t.fail(22);
        assert_eq!(
            t.outcome(),
            Outcome::Failed(Failure {
                level: L::EachQuorum,
                required: 4,
                received: 4,
                failures: 2
            })
        );
    }

    #[test]
    fn a_replica_counts_once_and_its_first_answer_stands() {
        let mut t = tracker(L::Two, Operation::Read, &[3]);
        assert_eq!(t.ack(10), Recorded::Counted);
        assert_eq!(t.ack(10), Recorded::Duplicate);
        assert_eq!(t.fail(10), Recorded::Duplicate);
        assert_eq!(t.ack(77), Recorded::Unknown);
        assert_eq!(t.received(), 1);
        assert_eq!(t.outcome(), Outcome::Pending);
    }

    #[test]
    fn a_timed_out_write_says_it_may_have_applied() {
        let mut t = tracker(L::All, Operation::Write, &[3]);
        t.ack(10);
        assert_eq!(t.timed_out(99), None);
        let timeout = t.timed_out(100).unwrap();
        assert_eq!(
            timeout.to_string(),
            "operation timed out at ALL: 1 of 3 required replicas acknowledged \
             (the write may still have been applied)"
        );
        let mut t = tracker(L::All, Operation::Read, &[3]);
        t.ack(10);
        assert!(!t.timed_out(100).unwrap().write_may_have_applied);
    }

    #[test]
    fn any_succeeds_with_a_hint_alone() {
        let l = layout(&[3]);
        let req = Requirement::new(L::Any, Operation::Write, &l, "dc1").unwrap();
        let mut t = ResponseTracker::new(req, &l, [], 100);
        assert_eq!(t.outcome(), Outcome::Pending);
        t.hint_stored();
        assert_eq!(t.outcome(), Outcome::Success);
    }

    #[test]
    fn speculative_retries_keep_a_read_alive() {
        let l = layout(&[3]);
        let req = Requirement::new(L::Quorum, Operation::Read, &l, "dc1").unwrap();
        let mut t = ResponseTracker::new(req, &l, [10, 11], 100);
        t.fail(11);
        assert!(matches!(t.outcome(), Outcome::Failed(_)));
        t.contact(12);
        assert_eq!(t.outcome(), Outcome::Pending);
        t.ack(10);
        t.ack(12);
        assert_eq!(t.outcome(), Outcome::Success);
        assert_eq!(t.unanswered().count(), 0);
    }

    fn levels() -> Vec<L> {
        use L::*;
        vec![
            One,
            Two,
            Three,
            Quorum,
            LocalOne,
            LocalQuorum,
            EachQuorum,
            All,
        ]
    }

    proptest! {
        #[test]
        fn prop_success_exactly_when_distinct_counted_acks_meet_the_level(
            rfs in proptest::collection::vec(1usize..5, 1..4),
            level in proptest::sample::select(levels()),
            events in proptest::collection::vec((any::<bool>(), 0usize..4, 0u32..5), 0..40),
        ) {
            let l = layout(&rfs);
            let req = Requirement::new(level, Operation::Write, &l, "dc1").unwrap();
            let all: Vec<u32> = l.replicas().collect();
            let mut t = ResponseTracker::new(req.clone(), &l, all.clone(), 100);
            let mut answered = HashSet::new();
            let mut acked = HashSet::new();
            for (is_ack, dc, r) in events {
                let node = (dc as u32 + 1) * 10 + r;
                if is_ack { t.ack(node); } else { t.fail(node); }
                if all.contains(&node) && answered.insert(node) && is_ack {
                    acked.insert(node);
                }
                let counted = |dc: usize| acked.iter()
                    .filter(|&&n| l.dc_of(n) == Some(dc) && req.counts(dc)).count();
                let total: usize = (0..l.dcs().len()).map(counted).sum();
                let met = total >= req.total
                    && req.per_dc.iter().all(|&(dc, n)| counted(dc) >= n);
                prop_assert_eq!(t.received(), total);
                prop_assert_eq!(t.outcome() == Outcome::Success, met);
            }
        }
    }
}
