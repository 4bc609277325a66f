//! How hints lie in the hint store's engine: keys that make one target's hints a contiguous,
//! time-ordered range, and self-checking values that carry the hinted write.

use std::fmt;

use bytes::{BufMut, Bytes};

use crate::lsm::cell::CellDecodeError;
use crate::lsm::codec::{get_varint, put_varint};
use crate::lsm::Cell;

/// Longest target node id, in bytes: ids are host names or UUIDs, and the length prefix is two
/// bytes.
pub const TARGET_BYTES_MAX: usize = 1024;

/// The one byte a value starts with: `0xA` in the high nibble marks a hint value, the low
/// nibble is the format version, so a future layout can be read beside this one.
pub const FORMAT_V1: u8 = 0xA1;

const ID_BYTES: usize = 16;
const CHECKSUM_BYTES: usize = 8;

/// A hint's identity within its target: creation time first, so keys sort by age, then a
/// store-wide sequence that tells apart hints created in the same millisecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HintId {
    pub created_ms: u64,
    pub seq: u64,
}

impl fmt::Display for HintId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "created_ms={} seq={}", self.created_ms, self.seq)
    }
}

/// Why a stored hint key or value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("value is {0} bytes, shorter than format byte plus checksum")]
    Short(usize),
    #[error("checksum mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    Checksum { stored: u64, computed: u64 },
    #[error("unknown format byte {0:#04x}")]
    UnknownFormat(u8),
    #[error("{field} length is missing or malformed")]
    BadVarint { field: &'static str },
    #[error("{field} length {len} exceeds the remaining {remaining} bytes")]
    BadLength {
        field: &'static str,
        len: u64,
        remaining: usize,
    },
    #[error("keyspace name is not UTF-8")]
    KeyspaceNotUtf8,
    #[error("cell: {0}")]
    Cell(#[from] CellDecodeError),
    #[error("{0} bytes follow the cell")]
    Trailing(usize),
    #[error("key is {0} bytes; a hint key is a 2-byte length, the target, and 16 id bytes")]
    KeyShape(usize),
    #[error("target node id is not UTF-8")]
    TargetNotUtf8,
}

/// Key layout (big-endian, so byte order is target, then age):
///
/// | field          | size         |
/// |----------------|--------------|
/// | target length  | 2, BE        |
/// | target node id | that many    |
/// | created_ms     | 8, BE        |
/// | seq            | 8, BE        |
pub fn encode_key(target: &str, id: HintId) -> Vec<u8> {
    let mut key = target_prefix(target);
    key.put_u64(id.created_ms);
    key.put_u64(id.seq);
    key
}

/// The bytes every key of `target` starts with. The length prefix keeps one target's range
/// from containing another whose id merely starts the same way.
pub fn target_prefix(target: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(2 + target.len() + ID_BYTES);
    prefix.put_u16(target.len() as u16);
    prefix.extend_from_slice(target.as_bytes());
    prefix
}

/// The last possible key of `target`, for an inclusive scan bound.
pub fn target_last_key(target: &str) -> Vec<u8> {
    let mut key = target_prefix(target);
    key.extend_from_slice(&[0xff; ID_BYTES]);
    key
}

/// Splits a stored key into its target and id.
pub fn decode_key(key: &[u8]) -> Result<(&str, HintId), FormatError> {
    let shape = || FormatError::KeyShape(key.len());
    let (len, rest) = key.split_at_checked(2).ok_or_else(shape)?;
    let target_len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if rest.len() != target_len + ID_BYTES {
        return Err(shape());
    }
    let (target, id) = rest.split_at(target_len);
    let target = std::str::from_utf8(target).map_err(|_| FormatError::TargetNotUtf8)?;
    let (created, seq) = id.split_at(8);
    let id = HintId {
        created_ms: u64::from_be_bytes(created.try_into().map_err(|_| shape())?),
        seq: u64::from_be_bytes(seq.try_into().map_err(|_| shape())?),
    };
    Ok((target, id))
}

/// The hinted write, as decoded from a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HintedWrite {
    pub keyspace: String,
    /// The engine key on the target (token, then user key).
    pub key: Bytes,
    pub cell: Cell,
}

/// Value layout:
///
/// | field           | size      | notes                                   |
/// |-----------------|-----------|-----------------------------------------|
/// | format          | 1         | [`FORMAT_V1`]                           |
/// | keyspace length | varint    |                                         |
/// | keyspace        | that many | UTF-8                                   |
/// | key length      | varint    |                                         |
/// | key             | that many | engine key on the target                |
/// | cell            | rest      | [`Cell::encode_into`], self-delimiting  |
/// | checksum        | 8, LE     | xxh3-64 of every byte before it         |
pub fn encode_value(keyspace: &str, key: &[u8], cell: &Cell) -> Vec<u8> {
    let mut buf = Vec::with_capacity(
        1 + 10 + keyspace.len() + 10 + key.len() + cell.encoded_len() + CHECKSUM_BYTES,
    );
    buf.push(FORMAT_V1);
    put_varint(&mut buf, keyspace.len() as u64);
    buf.extend_from_slice(keyspace.as_bytes());
    put_varint(&mut buf, key.len() as u64);
    buf.extend_from_slice(key);
    cell.encode_into(&mut buf);
    let checksum = xxhash_rust::xxh3::xxh3_64(&buf);
    buf.put_u64_le(checksum);
    buf
}

/// Reads a value back, checking the checksum before trusting any length in it.
pub fn decode_value(value: &Bytes) -> Result<HintedWrite, FormatError> {
    let body_len = value
        .len()
        .checked_sub(CHECKSUM_BYTES)
        .filter(|&n| n >= 1)
        .ok_or(FormatError::Short(value.len()))?;
    let stored = u64::from_le_bytes(value[body_len..].try_into().expect("8 bytes"));
    let computed = xxhash_rust::xxh3::xxh3_64(&value[..body_len]);
    if stored != computed {
        return Err(FormatError::Checksum { stored, computed });
    }
    let body = value.slice(..body_len);
    if body[0] != FORMAT_V1 {
        return Err(FormatError::UnknownFormat(body[0]));
    }
    let mut at = 1;
    let keyspace = take(&body, &mut at, "keyspace")?;
    let keyspace =
        String::from_utf8(keyspace.to_vec()).map_err(|_| FormatError::KeyspaceNotUtf8)?;
    let key = take(&body, &mut at, "key")?;
    let (cell, used) = Cell::decode(&body.slice(at..))?;
    let trailing = body.len() - at - used;
    if trailing != 0 {
        return Err(FormatError::Trailing(trailing));
    }
    Ok(HintedWrite {
        keyspace,
        key,
        cell,
    })
}

fn take(buf: &Bytes, at: &mut usize, field: &'static str) -> Result<Bytes, FormatError> {
    let rest = buf.get(*at..).unwrap_or_default();
    let (len, used) = get_varint(rest).ok_or(FormatError::BadVarint { field })?;
    let remaining = rest.len() - used;
    if len > remaining as u64 {
        return Err(FormatError::BadLength {
            field,
            len,
            remaining,
        });
    }
    let start = *at + used;
    *at = start + len as usize;
    Ok(buf.slice(start..*at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> (String, Vec<u8>, Cell) {
        let cell = Cell::value(7 << 16, "v").with_expiry(99);
        ("ks".into(), b"engine-key".to_vec(), cell)
    }

    #[test]
    fn value_round_trips() {
        let (ks, key, cell) = sample();
        let value = Bytes::from(encode_value(&ks, &key, &cell));
        let back = decode_value(&value).unwrap();
        assert_eq!(
            (back.keyspace, back.key.to_vec(), back.cell),
            (ks, key, cell)
        );
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let (ks, key, cell) = sample();
        let mut value = encode_value(&ks, &key, &cell);
        value[3] ^= 0x10;
        let err = decode_value(&Bytes::from(value)).unwrap_err();
        assert!(matches!(err, FormatError::Checksum { .. }), "{err}");
    }

    #[test]
    fn lengths_are_checked_even_under_a_valid_checksum() {
        let mut body = vec![FORMAT_V1];
        put_varint(&mut body, 1000);
        body.extend_from_slice(b"ks");
        let checksum = xxhash_rust::xxh3::xxh3_64(&body);
        body.put_u64_le(checksum);
        let err = decode_value(&Bytes::from(body)).unwrap_err();
        assert_eq!(
            err,
            FormatError::BadLength {
                field: "keyspace",
                len: 1000,
                remaining: 2
            }
        );
    }

    #[test]
    fn keys_sort_by_target_then_age() {
        let id = |created_ms, seq| HintId { created_ms, seq };
        assert!(encode_key("a", id(2, 0)) < encode_key("a", id(10, 0)));
        assert!(encode_key("a", id(2, 9)) < encode_key("a", id(3, 0)));
        assert!(encode_key("a", id(u64::MAX, u64::MAX)) < encode_key("ab", id(0, 0)));
        assert_eq!(
            encode_key("a", id(u64::MAX, u64::MAX)),
            target_last_key("a")
        );
        assert_eq!(
            decode_key(&encode_key("n1", id(5, 6))),
            Ok(("n1", id(5, 6)))
        );
    }

    proptest! {
        #[test]
        fn prop_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_value(&Bytes::from(bytes.clone()));
            let _ = decode_key(&bytes);
        }

        /// Past a valid checksum every length is still checked.
        #[test]
        fn prop_decoding_checksummed_garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 1..64)) {
            let mut value = body;
            value[0] = FORMAT_V1;
            let checksum = xxhash_rust::xxh3::xxh3_64(&value);
            value.put_u64_le(checksum);
            let _ = decode_value(&Bytes::from(value));
        }

        #[test]
        fn prop_decoding_a_truncated_value_fails(cut in 0usize..40) {
            let (ks, key, cell) = sample();
            let value = encode_value(&ks, &key, &cell);
            let cut = cut.min(value.len() - 1);
            prop_assert!(decode_value(&Bytes::copy_from_slice(&value[..cut])).is_err());
        }
    }
}
