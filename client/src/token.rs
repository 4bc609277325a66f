//! Tokens on the wire: 16 bytes, big-endian, so that bytewise order is ring order.

use prost::bytes::Bytes;
use topology::{Token, TokenRange};

use crate::pb;

/// A byte string that is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token is {len} bytes; a token is exactly 16 bytes, big-endian")]
pub struct TokenBytesError {
    /// The length that was found.
    pub len: usize,
}

/// The wire form of a token.
pub fn encode_token(token: Token) -> Bytes {
    Bytes::copy_from_slice(&token.0.to_be_bytes())
}

/// Reads a token from its wire form.
pub fn decode_token(bytes: &[u8]) -> Result<Token, TokenBytesError> {
    let array: [u8; 16] = bytes
        .try_into()
        .map_err(|_| TokenBytesError { len: bytes.len() })?;
    Ok(Token(u128::from_be_bytes(array)))
}

/// The wire form of a token range.
pub fn encode_token_range(range: TokenRange) -> pb::v1::TokenRange {
    pb::v1::TokenRange {
        start: encode_token(range.start),
        end: encode_token(range.end),
    }
}

/// Reads a token range from its wire form; the error names the bound (`start` or `end`) at fault
/// so that a server can report it as the field of an invalid argument.
pub fn decode_token_range(
    range: &pb::v1::TokenRange,
) -> Result<TokenRange, (&'static str, TokenBytesError)> {
    let start = decode_token(&range.start).map_err(|e| ("start", e))?;
    let end = decode_token(&range.end).map_err(|e| ("end", e))?;
    Ok(TokenRange::new(start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_extremes_and_keeps_order() {
        for t in [0, 1, u128::MAX / 2, u128::MAX - 1, u128::MAX] {
            assert_eq!(decode_token(&encode_token(Token(t))), Ok(Token(t)));
        }
        assert!(encode_token(Token(255)) < encode_token(Token(256)));
    }

    #[test]
    fn wrong_lengths_are_refused_with_the_length() {
        for len in [0, 1, 15, 17, 32] {
            let err = decode_token(&vec![0; len]).unwrap_err();
            assert_eq!(err.len, len);
            assert!(err.to_string().contains("exactly 16 bytes"), "{err}");
        }
    }

    #[test]
    fn range_errors_name_the_bound() {
        let mut range = encode_token_range(TokenRange::new(Token(5), Token(9)));
        assert_eq!(
            decode_token_range(&range),
            Ok(TokenRange::new(Token(5), Token(9)))
        );
        range.end = Bytes::from_static(b"short");
        assert_eq!(decode_token_range(&range).unwrap_err().0, "end");
    }
}
