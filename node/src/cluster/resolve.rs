//! Read resolution: do the replicas agree, and if not, what is the answer and who must be
//! repaired.

use xxhash_rust::xxh3::xxh3_64;

use crate::lsm::{Cell, MergeRule};

/// What a replica sent back for a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadResponse {
    /// The replica's cell, or `None` when it has nothing for the key.
    Data(Option<Cell>),
    Digest(u64),
}

/// The digest of a replica's answer: xxh3-64 of the cell's storage encoding (which is
/// canonical: one encoding per cell), and of the empty string for "no cell" — an encoded
/// cell is at least 9 bytes, so the two never share an input.
pub fn digest(cell: Option<&Cell>) -> u64 {
    let mut buf = Vec::new();
    if let Some(c) = cell {
        buf.reserve(c.encoded_len());
        c.encode_into(&mut buf);
    }
    xxh3_64(&buf)
}

/// Whether the digest replicas agree with the data replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DigestCheck<N> {
    /// Every digest matched: the data response is the answer.
    Agree,
    /// Some differ. Only `mismatched` need a full read: a matching digest means that
    /// replica holds exactly the data replica's cell, so `matching` already have it.
    Disagree {
        matching: Vec<N>,
        mismatched: Vec<N>,
    },
}

pub fn check_digests<N: Copy>(data: Option<&Cell>, digests: &[(N, u64)]) -> DigestCheck<N> {
    let expected = digest(data);
    let nodes = |matches: bool| -> Vec<N> {
        (digests.iter())
            .filter(|(_, d)| (*d == expected) == matches)
            .map(|(n, _)| *n)
            .collect()
    };
    let mismatched = nodes(false);
    if mismatched.is_empty() {
        return DigestCheck::Agree;
    }
    DigestCheck::Disagree {
        matching: nodes(true),
        mismatched,
    }
}

/// The answer to a read and the replicas that must be sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution<N> {
    pub winner: Option<Cell>,
    /// Replicas whose cell is not the winner (including those with none); each gets the
    /// winner as a repair mutation.
    pub repairs: Vec<N>,
}

/// Merges full responses with `rule`. The rule is commutative and associative, so the winner
/// does not depend on the order responses arrived in.
pub fn resolve<N: Copy>(responses: &[(N, Option<Cell>)], rule: &dyn MergeRule) -> Resolution<N> {
    let winner = (responses.iter())
        .filter_map(|(_, c)| c.clone())
        .reduce(|a, b| rule.merge(a, b));
    let repairs = (responses.iter())
        .filter(|(_, c)| *c != winner)
        .map(|(n, _)| *n)
        .collect();
    Resolution { winner, repairs }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::LastWriteWins;
    use proptest::prelude::*;

    #[test]
    fn digests_tell_cells_apart_and_absence_from_everything() {
        let a = Cell::value(1, "a");
        assert_eq!(digest(Some(&a)), digest(Some(&a.clone())));
        assert_ne!(digest(Some(&a)), digest(Some(&Cell::value(2, "a"))));
        assert_ne!(digest(Some(&a)), digest(Some(&a.clone().with_expiry(5))));
        assert_ne!(digest(None), digest(Some(&Cell::tombstone(0))));
    }

    #[test]
    fn matching_digests_settle_the_read() {
        let a = Cell::value(1, "a");
        let d = digest(Some(&a));
        assert_eq!(
            check_digests(Some(&a), &[(2, d), (3, d)]),
            DigestCheck::Agree
        );
        assert_eq!(
            check_digests(Some(&a), &[(2, d), (3, digest(None))]),
            DigestCheck::Disagree {
                matching: vec![2],
                mismatched: vec![3]
            }
        );
    }

    #[test]
    fn the_newest_cell_wins_and_stale_or_missing_replicas_are_repaired() {
        let old = Cell::value(1, "old");
        let new = Cell::tombstone(2);
        let r = resolve(
            &[(1, Some(old)), (2, Some(new.clone())), (3, None)],
            &LastWriteWins,
        );
        assert_eq!(r.winner, Some(new));
        assert_eq!(r.repairs, vec![1, 3]);
        let r = resolve::<u8>(&[(1, None), (2, None)], &LastWriteWins);
        assert_eq!(
            r,
            Resolution {
                winner: None,
                repairs: vec![]
            }
        );
    }

    fn arb_cell() -> impl Strategy<Value = Option<Cell>> {
        proptest::option::of((0u64..4, 0u8..3, any::<bool>()).prop_map(|(ts, v, tomb)| {
            if tomb {
                Cell::tombstone(ts)
            } else {
                Cell::value(ts, vec![v])
            }
        }))
    }

    proptest! {
        #[test]
        fn prop_winner_is_order_independent_and_every_other_replica_is_repaired(
            cells in proptest::collection::vec(arb_cell(), 1..6),
            seed in any::<u64>(),
        ) {
            let responses: Vec<(usize, Option<Cell>)> = cells.into_iter().enumerate().collect();
            let mut shuffled = responses.clone();
            let n = shuffled.len();
            for i in 0..n {
                shuffled.swap(i, (seed.rotate_left(i as u32 * 7) as usize) % n);
            }
            let a = resolve(&responses, &LastWriteWins);
            let b = resolve(&shuffled, &LastWriteWins);
            prop_assert_eq!(&a.winner, &b.winner);
            for (node, cell) in &responses {
                prop_assert_eq!(a.repairs.contains(node), *cell != a.winner);
            }
        }
    }
}
