//! Rack-aware replica selection within one DC (Cassandra's NetworkTopologyStrategy).
//!
//! Placement and the balanced allocator both select through [`Walker`], so the allocator
//! optimises exactly the placement that the ring later computes.

/// One DC's part of the ring: its tokens in ring order and who holds them. Nodes and racks
/// are numbered locally from 0.
#[derive(Clone, Debug, Default)]
pub(crate) struct DcRing {
    pub tokens: Vec<u128>,
    pub owners: Vec<u32>,
    /// The rack of each local node.
    pub racks: Vec<u16>,
    pub rack_count: usize,
}

impl DcRing {
    /// The range ending at token `i` starts at the token before it.
    pub fn range_start(&self, i: usize) -> u128 {
        let n = self.tokens.len();
        self.tokens[(i + n - 1) % n]
    }

    pub fn node_count(&self) -> usize {
        self.racks.len()
    }
}

/// How many replicas to pick and over how many racks to spread them first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    pub rf: usize,
    pub want_racks: usize,
    pub node_count: usize,
}

impl Rule {
    /// `node_count` and `rack_count` count the nodes and racks that hold tokens; a DC
    /// with fewer nodes than `rf` yields all of them.
    pub fn new(rf: usize, node_count: usize, rack_count: usize) -> Rule {
        let rf = rf.min(node_count);
        Rule {
            rf,
            want_racks: rf.min(rack_count),
            node_count,
        }
    }
}

/// A token the walk visits before the ring token `before`, owned by `node`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Virtual {
    pub before: usize,
    pub node: u32,
}

/// Where a walk starts: at a ring token, or at the virtual token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    Token(usize),
    Virtual,
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    node: u32,
    rack: u16,
    picked: bool,
}

/// Reusable scratch space for selections, so the hot loops do not allocate.
#[derive(Default)]
pub(crate) struct Walker {
    seen: Vec<Seen>,
    racks: Vec<u16>,
}

impl Walker {
    /// Selects the replicas of the range ending where the walk starts: clockwise, distinct
    /// nodes on distinct racks first, then the earliest skipped nodes until `rule.rf`.
    /// Returns the number of tokens visited, so callers can tell how far a walk reached.
    pub fn select(
        &mut self,
        ring: &DcRing,
        rule: Rule,
        start: Start,
        virt: Option<Virtual>,
        out: &mut Vec<u32>,
    ) -> usize {
        self.seen.clear();
        out.clear();
        let steps = self.visit(ring, rule, start, virt);
        self.finish(rule, out);
        steps
    }

    fn visit(&mut self, ring: &DcRing, rule: Rule, start: Start, virt: Option<Virtual>) -> usize {
        if rule.rf == 0 {
            return 0;
        }
        let mut racks_seen = 0;
        let mut steps = 0;
        let mut offer = |seen: &mut Vec<Seen>, node: u32| {
            steps += 1;
            if !seen.iter().any(|s| s.node == node) {
                let rack = ring.racks[node as usize];
                if !seen.iter().any(|s| s.rack == rack) {
                    racks_seen += 1;
                }
                seen.push(Seen {
                    node,
                    rack,
                    picked: false,
                });
            }
            (seen.len() >= rule.rf && racks_seen >= rule.want_racks)
                || seen.len() >= rule.node_count
        };
        let n = ring.tokens.len();
        let (first, mut pending) = match start {
            Start::Token(k) => (k, virt),
            Start::Virtual => {
                let v = virt.expect("a walk from the virtual token needs one");
                if offer(&mut self.seen, v.node) {
                    return steps;
                }
                (v.before, None)
            }
        };
        for s in 0..n {
            let i = (first + s) % n;
            if let Some(v) = pending.filter(|v| s > 0 && v.before == i) {
                pending = None;
                if offer(&mut self.seen, v.node) {
                    return steps;
                }
            }
            if offer(&mut self.seen, ring.owners[i]) {
                return steps;
            }
        }
        if let Some(v) = pending {
            offer(&mut self.seen, v.node);
        }
        steps
    }

    fn finish(&mut self, rule: Rule, out: &mut Vec<u32>) {
        self.racks.clear();
        for s in self.seen.iter_mut() {
            if self.racks.len() < rule.want_racks && !self.racks.contains(&s.rack) {
                self.racks.push(s.rack);
                s.picked = true;
                out.push(s.node);
            }
        }
        for s in self.seen.iter().filter(|s| !s.picked) {
            if out.len() >= rule.rf {
                break;
            }
            out.push(s.node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring with one token per entry of `layout`, each a (node, rack) pair.
    fn ring(layout: &[(u32, u16)]) -> DcRing {
        let nodes = layout.iter().map(|&(n, _)| n).max().unwrap() as usize + 1;
        let mut racks = vec![0; nodes];
        for &(n, r) in layout {
            racks[n as usize] = r;
        }
        let rack_count = racks
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        DcRing {
            tokens: (0..layout.len() as u128).map(|i| i * 10).collect(),
            owners: layout.iter().map(|&(n, _)| n).collect(),
            racks,
            rack_count,
        }
    }

    fn nodes(ring: &DcRing, rf: usize, start: Start, virt: Option<Virtual>) -> Vec<u32> {
        let rule = Rule::new(rf, ring.node_count(), ring.rack_count);
        let mut out = Vec::new();
        Walker::default().select(ring, rule, start, virt, &mut out);
        out
    }

    #[test]
    fn distinct_racks_come_first() {
        // Nodes 0 and 1 share rack 0; the walk from token 0 skips node 1 for node 2.
        let r = ring(&[(0, 0), (1, 0), (2, 1), (3, 2)]);
        assert_eq!(nodes(&r, 3, Start::Token(0), None), vec![0, 2, 3]);
    }

    #[test]
    fn fewer_racks_than_replicas_fills_from_skipped_nodes_in_walk_order() {
        let r = ring(&[(0, 0), (1, 0), (2, 0), (3, 1)]);
        assert_eq!(nodes(&r, 3, Start::Token(0), None), vec![0, 3, 1]);
    }

    #[test]
    fn a_node_reached_twice_counts_once() {
        let r = ring(&[(0, 0), (0, 0), (1, 1)]);
        assert_eq!(nodes(&r, 2, Start::Token(0), None), vec![0, 1]);
    }

    #[test]
    fn small_dc_yields_every_node() {
        let r = ring(&[(0, 0), (1, 1)]);
        assert_eq!(nodes(&r, 3, Start::Token(1), None), vec![1, 0]);
    }

    #[test]
    fn walk_wraps_around_the_ring() {
        let r = ring(&[(0, 0), (1, 1), (2, 2)]);
        assert_eq!(nodes(&r, 2, Start::Token(2), None), vec![2, 0]);
    }

    #[test]
    fn virtual_token_is_visited_just_before_its_successor() {
        // Node 4 (rack 2) holds no token yet; the virtual token puts it before token 2.
        let r = DcRing {
            tokens: vec![0, 10, 20, 30],
            owners: vec![0, 1, 2, 3],
            racks: vec![0, 0, 0, 1, 2],
            rack_count: 3,
        };
        let v = Some(Virtual { before: 2, node: 4 });
        assert_eq!(nodes(&r, 3, Start::Token(0), v), vec![0, 4, 3]);
        assert_eq!(nodes(&r, 3, Start::Virtual, v), vec![4, 2, 3]);
        // Walking from its successor, the virtual token comes last.
        assert_eq!(nodes(&r, 3, Start::Token(2), v), vec![2, 3, 4]);
    }

    #[test]
    fn steps_count_the_tokens_visited() {
        let r = ring(&[(0, 0), (0, 0), (1, 1), (2, 2)]);
        let rule = Rule::new(2, 3, 3);
        let mut out = Vec::new();
        assert_eq!(
            Walker::default().select(&r, rule, Start::Token(0), None, &mut out),
            3
        );
    }
}
