//! Byte layout of a WAL segment (docs/storage-format.md, "WAL segment", has the full rules).
//!
//! Segment header, 40 bytes:
//!
//! | offset | size | field                                                     |
//! |--------|------|-----------------------------------------------------------|
//! | 0      | 8    | magic `KVWALSEG`                                          |
//! | 8      | 4    | format version, u32 LE (1)                                |
//! | 12     | 4    | flags, u32 LE, 0 (a reader refuses unknown bits)          |
//! | 16     | 8    | segment id, u64 LE (equals the id in the file name)       |
//! | 24     | 8    | salt, u64 LE, random per segment: seeds record checksums  |
//! | 32     | 8    | xxh3-64 of bytes 0..32, u64 LE                            |
//!
//! Records follow back to back from offset 40:
//!
//! | offset | size   | field                                                          |
//! |--------|--------|----------------------------------------------------------------|
//! | 0      | 4      | body length B, u32 LE: bytes after the checksum                |
//! | 4      | 8      | checksum, u64 LE: xxh3-64 seeded with the salt over bytes 0..4 then the body |
//! | 12     | 8      | body: sequence number of the first mutation, u64 LE             |
//! | 20     | 8      | body: synced offset, u64 LE: every byte before it was fdatasynced when this record was written |
//! | 28     | varint | body: mutation count N (at least 1)                            |
//! | ..     |        | body: N times key length (varint), key, `Cell::encode_into`     |
//!
//! The salt keeps a record-shaped byte string inside a user value, or in a stale file, from
//! ever verifying; the synced offset is what lets replay tell a torn tail from corruption.

use bytes::Bytes;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::lsm::codec::{get_u32_le, get_u64_le, get_varint, put_varint, varint_len};
use crate::lsm::{Cell, Error, Mutation, Result};

pub const MAGIC: [u8; 8] = *b"KVWALSEG";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 40;
/// Body length and checksum.
pub const RECORD_PREFIX_BYTES: usize = 12;
/// Sequence number and synced offset.
const BODY_FIXED_BYTES: usize = 16;
/// Key length varint, empty key, smallest cell (flags + timestamp).
const MUTATION_BYTES_MIN: usize = 1 + 9;
pub const RECORD_BODY_BYTES_MIN: usize = BODY_FIXED_BYTES + 1 + MUTATION_BYTES_MIN;
/// Largest record body: a batch of the largest allowed value (256 MiB) has room to spare, and a
/// corrupt length never asks for more.
pub const RECORD_BODY_BYTES_MAX: usize = 512 << 20;
/// Largest key the engine accepts (`Options::key_bytes_max` tops out here).
pub const KEY_BYTES_MAX: usize = 64 << 10;

const SYNCED_OFFSET_AT: usize = RECORD_PREFIX_BYTES + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub segment_id: u64,
    pub salt: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[16..24].copy_from_slice(&self.segment_id.to_le_bytes());
        h[24..32].copy_from_slice(&self.salt.to_le_bytes());
        let sum = xxh3_64(&h[..32]);
        h[32..40].copy_from_slice(&sum.to_le_bytes());
        h
    }

    /// Checks the checksum before anything else, so a damaged header is reported as such rather
    /// than as an odd version.
    pub fn decode(h: &[u8]) -> Result<Self, String> {
        let h = h.get(..HEADER_BYTES).ok_or("segment header truncated")?;
        let stored = get_u64_le(h, 32).ok_or("segment header truncated")?;
        if xxh3_64(&h[..32]) != stored {
            return Err("segment header checksum mismatch".into());
        }
        if h[0..8] != MAGIC {
            return Err("not a WAL segment (bad magic)".into());
        }
        let version = get_u32_le(h, 8).ok_or("segment header truncated")?;
        if version != FORMAT_VERSION {
            return Err(format!("unsupported WAL format version {version}"));
        }
        let flags = get_u32_le(h, 12).ok_or("segment header truncated")?;
        if flags != 0 {
            return Err(format!("unknown segment header flags {flags:#x}"));
        }
        Ok(SegmentHeader {
            segment_id: get_u64_le(h, 16).ok_or("segment header truncated")?,
            salt: get_u64_le(h, 24).ok_or("segment header truncated")?,
        })
    }
}

/// Appends one record with its synced offset and checksum left zero: only the group-commit
/// leader knows them (see [`seal_group`]). Refuses what replay would refuse.
pub fn encode_record(seq: u64, mutations: &[Mutation], buf: &mut Vec<u8>) -> Result<()> {
    let start = buf.len();
    buf.resize(start + RECORD_PREFIX_BYTES + BODY_FIXED_BYTES, 0);
    buf[start + RECORD_PREFIX_BYTES..start + SYNCED_OFFSET_AT].copy_from_slice(&seq.to_le_bytes());
    put_varint(buf, mutations.len() as u64);
    for m in mutations {
        if m.key.len() > KEY_BYTES_MAX {
            buf.truncate(start);
            return Err(Error::KeyTooLarge {
                len: m.key.len(),
                max: KEY_BYTES_MAX,
            });
        }
        put_varint(buf, m.key.len() as u64);
        buf.extend_from_slice(&m.key);
        m.cell.encode_into(buf);
    }
    let body_len = buf.len() - start - RECORD_PREFIX_BYTES;
    if body_len > RECORD_BODY_BYTES_MAX {
        buf.truncate(start);
        return Err(Error::BatchTooLarge {
            len: body_len,
            max: RECORD_BODY_BYTES_MAX,
        });
    }
    buf[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    Ok(())
}

/// Upper bound of [`encode_record`]'s output, to size its buffer once.
pub fn record_bytes_estimate(mutations: &[Mutation]) -> usize {
    let muts: usize = mutations
        .iter()
        .map(|m| varint_len(m.key.len() as u64) + m.key.len() + m.cell.encoded_len())
        .sum();
    RECORD_PREFIX_BYTES + BODY_FIXED_BYTES + varint_len(mutations.len() as u64) + muts
}

/// Stamps every record of a group (records from [`encode_record`], back to back) with the
/// synced offset and computes its checksum.
pub fn seal_group(group: &mut [u8], salt: u64, synced_offset: u64) {
    let mut at = 0;
    while at < group.len() {
        let body_len = get_u32_le(group, at).expect("group holds whole records") as usize;
        let end = at + RECORD_PREFIX_BYTES + body_len;
        let rec = &mut group[at..end];
        rec[SYNCED_OFFSET_AT..SYNCED_OFFSET_AT + 8].copy_from_slice(&synced_offset.to_le_bytes());
        let sum = record_checksum(salt, &rec[..4], &rec[RECORD_PREFIX_BYTES..]);
        rec[4..12].copy_from_slice(&sum.to_le_bytes());
        at = end;
    }
}

pub fn record_checksum(salt: u64, length_field: &[u8], body: &[u8]) -> u64 {
    let mut h = Xxh3::with_seed(salt);
    h.update(length_field);
    h.update(body);
    h.digest()
}

/// The fixed fields at the start of a record, readable before the body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHead {
    pub body_len: usize,
    pub checksum: u64,
    pub seq: u64,
    pub synced_offset: u64,
}

pub const RECORD_HEAD_BYTES: usize = RECORD_PREFIX_BYTES + BODY_FIXED_BYTES;

impl RecordHead {
    pub fn decode(b: &[u8]) -> Option<Self> {
        Some(RecordHead {
            body_len: get_u32_le(b, 0)? as usize,
            checksum: get_u64_le(b, 4)?,
            seq: get_u64_le(b, RECORD_PREFIX_BYTES)?,
            synced_offset: get_u64_le(b, SYNCED_OFFSET_AT)?,
        })
    }

    pub fn record_len(&self) -> usize {
        RECORD_PREFIX_BYTES + self.body_len
    }
}

/// Decodes the mutations of a body whose checksum verified. Keys and cells share `body`'s
/// allocation.
pub fn decode_mutations(body: &Bytes) -> Result<Vec<Mutation>, String> {
    let mut at = BODY_FIXED_BYTES;
    let (count, used) = body
        .get(at..)
        .and_then(get_varint)
        .ok_or("mutation count truncated")?;
    at += used;
    if count == 0 || count > ((body.len() - at) / MUTATION_BYTES_MIN) as u64 {
        return Err(format!("mutation count {count} does not fit the record"));
    }
    let mut mutations = Vec::with_capacity(count as usize);
    for i in 0..count {
        let (key, next) = decode_key(body, at).map_err(|e| format!("mutation {i}: {e}"))?;
        let (cell, used) =
            Cell::decode(&body.slice(next..)).map_err(|e| format!("mutation {i}: {e}"))?;
        at = next + used;
        mutations.push(Mutation { key, cell });
    }
    if at != body.len() {
        return Err(format!("{} bytes after the last mutation", body.len() - at));
    }
    Ok(mutations)
}

fn decode_key(body: &Bytes, at: usize) -> Result<(Bytes, usize), String> {
    let (len, used) = body
        .get(at..)
        .and_then(get_varint)
        .ok_or("key length truncated")?;
    let start = at + used;
    let remaining = body.len() - start;
    if len > KEY_BYTES_MAX as u64 || len > remaining as u64 {
        return Err(format!(
            "key length {len} is invalid with {remaining} bytes left"
        ));
    }
    let end = start + len as usize;
    Ok((body.slice(start..end), end))
}

/// Highest sequence number a record's batch uses.
pub fn last_seq_of(seq: u64, mutations: usize) -> u64 {
    seq.saturating_add(mutations as u64)
        .saturating_sub(1)
        .max(seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn muts(n: usize) -> Vec<Mutation> {
        (0..n)
            .map(|i| Mutation {
                key: Bytes::from(format!("key-{i}")),
                cell: Cell::value(i as u64, format!("value-{i}")),
            })
            .collect()
    }

    fn body_of(rec: &[u8]) -> Bytes {
        Bytes::copy_from_slice(&rec[RECORD_PREFIX_BYTES..])
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = SegmentHeader {
            segment_id: 42,
            salt: 7,
        };
        let bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(h));
        for i in 0..HEADER_BYTES {
            let mut bad = bytes;
            bad[i] ^= 0x10;
            assert!(SegmentHeader::decode(&bad).is_err(), "byte {i}");
        }
        assert!(SegmentHeader::decode(&bytes[..HEADER_BYTES - 1]).is_err());
    }

    #[test]
    fn sealed_record_verifies_and_decodes() {
        let mut buf = Vec::new();
        encode_record(9, &muts(3), &mut buf).unwrap();
        encode_record(12, &muts(1), &mut buf).unwrap();
        seal_group(&mut buf, 5, 40);
        let head = RecordHead::decode(&buf).unwrap();
        assert_eq!((head.seq, head.synced_offset), (9, 40));
        let rec = &buf[..head.record_len()];
        let sum = record_checksum(5, &rec[..4], &rec[RECORD_PREFIX_BYTES..]);
        assert_eq!(sum, head.checksum);
        assert_ne!(
            record_checksum(6, &rec[..4], &rec[RECORD_PREFIX_BYTES..]),
            sum
        );
        assert_eq!(decode_mutations(&body_of(rec)).unwrap(), muts(3));
    }

    #[test]
    fn oversized_key_is_refused_and_leaves_buffer_unchanged() {
        let mut buf = vec![1, 2, 3];
        let m = Mutation {
            key: Bytes::from(vec![0; KEY_BYTES_MAX + 1]),
            cell: Cell::tombstone(1),
        };
        let err = encode_record(1, &[m], &mut buf).unwrap_err();
        assert!(matches!(err, Error::KeyTooLarge { .. }), "{err}");
        assert_eq!(buf, [1, 2, 3]);
    }

    #[test]
    fn estimate_is_exact_for_small_batches() {
        let m = muts(4);
        let mut buf = Vec::new();
        encode_record(1, &m, &mut buf).unwrap();
        assert_eq!(record_bytes_estimate(&m), buf.len());
    }

    #[test]
    fn last_seq_covers_the_batch() {
        assert_eq!(last_seq_of(10, 1), 10);
        assert_eq!(last_seq_of(10, 3), 12);
        assert_eq!(last_seq_of(u64::MAX, 3), u64::MAX);
    }

    proptest! {
        #[test]
        fn prop_decode_mutations_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = decode_mutations(&Bytes::from(bytes));
        }

        #[test]
        fn prop_header_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
            let _ = SegmentHeader::decode(&bytes);
        }
    }
}
