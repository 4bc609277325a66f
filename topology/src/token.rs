//! Tokens: positions on the ring of 0 to 2^128-1, and ranges between them.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A position on the ring. Ordered as unsigned 128-bit integers; the ring wraps from
/// [`Token::MAX`] to [`Token::MIN`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Token(pub u128);

/// The number of tokens on the ring (2^128) as a float, to turn spans into shares of the ring.
pub(crate) const RING_SIZE: f64 = 340_282_366_920_938_463_463_374_607_431_768_211_456.0;

impl Token {
    pub const MIN: Token = Token(0);
    pub const MAX: Token = Token(u128::MAX);

    /// The token of a key. Every component places keys with this one function.
    pub fn of(key: &[u8]) -> Token {
        Token(xxhash_rust::xxh3::xxh3_128(key))
    }
}

/// The token of a key: xxh3-128 of its bytes.
pub fn token_of(key: &[u8]) -> Token {
    Token::of(key)
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a string is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid token {input:?}: expected a decimal integer from 0 to 2^128-1")]
pub struct ParseTokenError {
    input: String,
}

impl FromStr for Token {
    type Err = ParseTokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<u128>()
            .map(Token)
            .map_err(|_| ParseTokenError {
                input: s.to_owned(),
            })
    }
}

// Tokens travel as decimal strings: TOML integers stop at 2^63 and JSON readers such as
// JavaScript (Terraform outputs, dashboards) lose precision above 2^53.
impl Serialize for Token {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TokenVisitor)
    }
}

struct TokenVisitor;

impl Visitor<'_> for TokenVisitor {
    type Value = Token;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a token: a decimal string or a non-negative integer")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Token, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Token, E> {
        Ok(Token(v.into()))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Token, E> {
        Ok(Token(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Token, E> {
        u128::try_from(v)
            .map(Token)
            .map_err(|_| E::custom(format!("token {v} is negative")))
    }
}

/// The tokens after `start` up to and including `end`, going clockwise; `(start, end]` in
/// Cassandra's notation. When `start == end` the range is the whole ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRange {
    pub start: Token,
    pub end: Token,
}

impl TokenRange {
    pub fn new(start: Token, end: Token) -> Self {
        TokenRange { start, end }
    }

    pub fn contains(&self, token: Token) -> bool {
        let (s, e, t) = (self.start, self.end, token);
        match s.cmp(&e) {
            std::cmp::Ordering::Less => s < t && t <= e,
            std::cmp::Ordering::Greater => t > s || t <= e,
            std::cmp::Ordering::Equal => true,
        }
    }

    /// The share of the ring this range covers, from 0 (exclusive) to 1.
    pub fn share(&self) -> f64 {
        span_share(self.start.0, self.end.0)
    }
}

impl fmt::Display for TokenRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {}]", self.start, self.end)
    }
}

/// The share of the ring from `start` (exclusive) clockwise to `end` (inclusive); a range
/// that starts where it ends is the whole ring.
pub(crate) fn span_share(start: u128, end: u128) -> f64 {
    if start == end {
        1.0
    } else {
        end.wrapping_sub(start) as f64 / RING_SIZE
    }
}

/// The token a share of the ring past `start`, for placing a token inside a range.
pub(crate) fn advance(start: u128, share: f64) -> u128 {
    start.wrapping_add((share * RING_SIZE) as u128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_of_is_xxh3_128() {
        assert_eq!(
            token_of(b"user:123").0,
            xxhash_rust::xxh3::xxh3_128(b"user:123")
        );
        assert_ne!(token_of(b"a"), token_of(b"b"));
    }

    #[test]
    fn parse_and_display_round_trip_at_the_extremes() {
        for t in [Token::MIN, Token(12345), Token::MAX] {
            assert_eq!(t.to_string().parse::<Token>().unwrap(), t);
        }
    }

    #[test]
    fn parse_rejects_negative_and_oversized_input() {
        assert!("-1".parse::<Token>().is_err());
        let too_big = "340282366920938463463374607431768211456";
        let err = too_big.parse::<Token>().unwrap_err();
        assert!(err.to_string().contains(too_big));
    }

    #[test]
    fn serde_writes_decimal_strings_and_reads_integers_too() {
        let json = serde_json::to_string(&Token::MAX).unwrap();
        assert_eq!(json, format!("\"{}\"", u128::MAX));
        assert_eq!(serde_json::from_str::<Token>(&json).unwrap(), Token::MAX);
        assert_eq!(serde_json::from_str::<Token>("42").unwrap(), Token(42));
        assert!(serde_json::from_str::<Token>("-3").is_err());
    }

    #[test]
    fn ranges_contain_their_end_but_not_their_start() {
        let r = TokenRange::new(Token(10), Token(20));
        assert!(!r.contains(Token(10)));
        assert!(r.contains(Token(11)));
        assert!(r.contains(Token(20)));
        assert!(!r.contains(Token(21)));
    }

    #[test]
    fn wrapping_range_covers_both_ends_of_the_ring() {
        let r = TokenRange::new(Token(u128::MAX - 5), Token(5));
        assert!(r.contains(Token::MAX));
        assert!(r.contains(Token::MIN));
        assert!(r.contains(Token(5)));
        assert!(!r.contains(Token(6)));
        assert!((r.share() - 11.0 / RING_SIZE).abs() < 1e-40);
    }

    #[test]
    fn range_from_a_token_to_itself_is_the_whole_ring() {
        let r = TokenRange::new(Token(7), Token(7));
        assert!(r.contains(Token(3)));
        assert_eq!(r.share(), 1.0);
    }

    #[test]
    fn advance_by_half_reaches_the_opposite_side() {
        assert_eq!(advance(0, 0.5), 1u128 << 127);
        assert_eq!(advance(u128::MAX, 0.5), (1u128 << 127) - 1);
    }
}
