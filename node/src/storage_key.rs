//! How the node lays cluster keys into the engine: the 128-bit token first (big-endian), then
//! the user key. Byte order then equals token order, so a token range is one contiguous scan
//! (what streaming, cleanup and Merkle repair need), and keys sharing a token stay distinct.

use std::ops::Bound;

use bytes::{BufMut, Bytes, BytesMut};

pub const TOKEN_BYTES: usize = 16;

/// The engine key for `user_key` whose token is `token`.
pub fn encode(token: u128, user_key: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(TOKEN_BYTES + user_key.len());
    buf.put_u128(token);
    buf.put_slice(user_key);
    buf.freeze()
}

/// Splits an engine key into token and user key; `None` if it is shorter than a token.
pub fn decode(key: &[u8]) -> Option<(u128, &[u8])> {
    let (token, user) = key.split_at_checked(TOKEN_BYTES)?;
    Some((u128::from_be_bytes(token.try_into().ok()?), user))
}

/// Engine bounds covering every key whose token lies in the ring range `(start, end]` (the
/// Cassandra convention: a vnode owns the tokens after its predecessor up to its own). A range
/// that wraps past the top of the ring must be split by the caller.
pub fn token_range(start_exclusive: u128, end_inclusive: u128) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let Some(first) = start_exclusive.checked_add(1) else {
        // (MAX, end] is empty: nothing follows the top of the ring.
        return (Bound::Excluded(Vec::new()), Bound::Excluded(Vec::new()));
    };
    let lo = Bound::Included(first.to_be_bytes().to_vec());
    let hi = match end_inclusive.checked_add(1) {
        Some(next) => Bound::Excluded(next.to_be_bytes().to_vec()),
        None => Bound::Unbounded,
    };
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::ops::RangeBounds;

    proptest! {
        #[test]
        fn prop_token_order_is_byte_order(a in any::<u128>(), b in any::<u128>(),
                                          ka in proptest::collection::vec(any::<u8>(), 0..8),
                                          kb in proptest::collection::vec(any::<u8>(), 0..8)) {
            let (ea, eb) = (encode(a, &ka), encode(b, &kb));
            if a != b {
                prop_assert_eq!(a.cmp(&b), ea.cmp(&eb));
            }
            prop_assert_eq!(decode(&ea), Some((a, &ka[..])));
        }

        #[test]
        fn prop_token_range_holds_exactly_its_tokens(start in any::<u128>(), len in 0u128..1000,
                                                     probe in 0u128..1200,
                                                     key in proptest::collection::vec(any::<u8>(), 0..4)) {
            let end = start.saturating_add(len);
            let token = start.saturating_add(probe);
            let (lo, hi) = token_range(start, end);
            let encoded = encode(token, &key).to_vec();
            let inside = token > start && token <= end;
            prop_assert_eq!((lo, hi).contains(&encoded), inside);
        }
    }

    #[test]
    fn a_range_starting_at_the_top_is_empty() {
        let (lo, hi) = token_range(u128::MAX, u128::MAX);
        assert!(!(lo, hi).contains(&encode(u128::MAX, &[0xff, 0xff]).to_vec()));
    }

    #[test]
    fn the_top_of_the_ring_is_covered() {
        let (lo, hi) = token_range(u128::MAX - 1, u128::MAX);
        let key = encode(u128::MAX, b"k").to_vec();
        assert!((lo, hi).contains(&key));
        assert_eq!(decode(b"short"), None);
    }
}
