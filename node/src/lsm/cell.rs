//! The versioned cell: what the engine stores under a key.

use std::cmp::Reverse;

use bytes::{BufMut, Bytes};

use super::codec::{get_u64_le, get_varint, put_varint};

/// A versioned value or tombstone.
///
/// Replicas receive writes out of order, so which cell wins is decided by a [`MergeRule`] over
/// timestamps, never by arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    /// The writer's hybrid-logical-clock timestamp (see [`super::clock::hlc_physical_ms`]).
    pub timestamp: u64,
    /// Absolute wall-clock expiry in ms since the Unix epoch; an expired cell reads as deleted.
    pub expires_at_ms: Option<u64>,
    /// Opaque causal context (vector clock, CRDT metadata) for merge rules that need one.
    /// Empty under last-write-wins.
    pub causal: Bytes,
    pub value: CellValue,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CellValue {
    Value(Bytes),
    Tombstone,
}

const FLAG_TOMBSTONE: u8 = 1;
const FLAG_EXPIRY: u8 = 1 << 1;
const FLAG_CAUSAL: u8 = 1 << 2;
const FLAGS_KNOWN: u8 = FLAG_TOMBSTONE | FLAG_EXPIRY | FLAG_CAUSAL;

/// Why a cell failed to decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CellDecodeError {
    #[error("cell truncated")]
    Truncated,
    #[error("unknown cell flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("cell length field {0} exceeds the remaining {1} bytes")]
    BadLength(u64, usize),
}

impl Cell {
    pub fn value(timestamp: u64, value: impl Into<Bytes>) -> Self {
        Cell {
            timestamp,
            expires_at_ms: None,
            causal: Bytes::new(),
            value: CellValue::Value(value.into()),
        }
    }

    pub fn tombstone(timestamp: u64) -> Self {
        Cell {
            timestamp,
            expires_at_ms: None,
            causal: Bytes::new(),
            value: CellValue::Tombstone,
        }
    }

    pub fn with_expiry(mut self, expires_at_ms: u64) -> Self {
        self.expires_at_ms = Some(expires_at_ms);
        self
    }

    pub fn is_tombstone(&self) -> bool {
        matches!(self.value, CellValue::Tombstone)
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|e| e <= now_ms)
    }

    /// True if a read at `now_ms` sees no value: a tombstone or an expired cell.
    pub fn is_deleted_at(&self, now_ms: u64) -> bool {
        self.is_tombstone() || self.is_expired(now_ms)
    }

    /// The live value at `now_ms`, if any.
    pub fn live_value(&self, now_ms: u64) -> Option<&Bytes> {
        match &self.value {
            CellValue::Value(v) if !self.is_expired(now_ms) => Some(v),
            _ => None,
        }
    }

    /// Bytes of the user value (0 for a tombstone).
    pub fn value_len(&self) -> usize {
        match &self.value {
            CellValue::Value(v) => v.len(),
            CellValue::Tombstone => 0,
        }
    }

    /// Size of [`Cell::encode_into`]'s output.
    pub fn encoded_len(&self) -> usize {
        use super::codec::varint_len;
        let mut n = 1 + 8;
        if self.expires_at_ms.is_some() {
            n += 8;
        }
        if !self.causal.is_empty() {
            n += varint_len(self.causal.len() as u64) + self.causal.len();
        }
        if let CellValue::Value(v) = &self.value {
            n += varint_len(v.len() as u64) + v.len();
        }
        n
    }

    /// Appends the self-delimiting encoding:
    ///
    /// | field           | size        | present when                  |
    /// |-----------------|-------------|-------------------------------|
    /// | flags           | 1           | always: bit 0 tombstone, bit 1 expiry, bit 2 causal; others 0 |
    /// | timestamp       | 8, LE       | always                        |
    /// | expires_at_ms   | 8, LE       | flag bit 1                    |
    /// | causal length   | varint      | flag bit 2 (never 0)          |
    /// | causal context  | that many   | flag bit 2                    |
    /// | value length    | varint      | not a tombstone               |
    /// | value           | that many   | not a tombstone               |
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        let mut flags = 0;
        if self.is_tombstone() {
            flags |= FLAG_TOMBSTONE;
        }
        if self.expires_at_ms.is_some() {
            flags |= FLAG_EXPIRY;
        }
        if !self.causal.is_empty() {
            flags |= FLAG_CAUSAL;
        }
        buf.push(flags);
        buf.put_u64_le(self.timestamp);
        if let Some(e) = self.expires_at_ms {
            buf.put_u64_le(e);
        }
        if !self.causal.is_empty() {
            put_varint(buf, self.causal.len() as u64);
            buf.extend_from_slice(&self.causal);
        }
        if let CellValue::Value(v) = &self.value {
            put_varint(buf, v.len() as u64);
            buf.extend_from_slice(v);
        }
    }

    /// Decodes a cell at the start of `buf`, returning it and the bytes consumed. Value and
    /// causal context share `buf`'s allocation (no copy).
    pub fn decode(buf: &Bytes) -> Result<(Cell, usize), CellDecodeError> {
        let flags = *buf.first().ok_or(CellDecodeError::Truncated)?;
        if flags & !FLAGS_KNOWN != 0 {
            return Err(CellDecodeError::UnknownFlags(flags));
        }
        let timestamp = get_u64_le(buf, 1).ok_or(CellDecodeError::Truncated)?;
        let mut at = 9;
        let expires_at_ms = if flags & FLAG_EXPIRY != 0 {
            let e = get_u64_le(buf, at).ok_or(CellDecodeError::Truncated)?;
            at += 8;
            Some(e)
        } else {
            None
        };
        let causal = if flags & FLAG_CAUSAL != 0 {
            take_len_prefixed(buf, &mut at)?
        } else {
            Bytes::new()
        };
        let value = if flags & FLAG_TOMBSTONE != 0 {
            CellValue::Tombstone
        } else {
            CellValue::Value(take_len_prefixed(buf, &mut at)?)
        };
        let cell = Cell {
            timestamp,
            expires_at_ms,
            causal,
            value,
        };
        Ok((cell, at))
    }
}

fn take_len_prefixed(buf: &Bytes, at: &mut usize) -> Result<Bytes, CellDecodeError> {
    let rest = buf.get(*at..).ok_or(CellDecodeError::Truncated)?;
    let (len, used) = get_varint(rest).ok_or(CellDecodeError::Truncated)?;
    let start = *at + used;
    let remaining = buf.len() - start;
    if len > remaining as u64 {
        return Err(CellDecodeError::BadLength(len, remaining));
    }
    let end = start + len as usize;
    *at = end;
    Ok(buf.slice(start..end))
}

/// How two versions of one key combine. Must be commutative, associative and idempotent, since
/// replicas, reads and compactions apply it in any order and any grouping.
pub trait MergeRule: Send + Sync + 'static {
    fn merge(&self, a: Cell, b: Cell) -> Cell;

    /// True if no cell with a timestamp at most `older_max_timestamp` can change the outcome of
    /// merging into `found`, letting a point read stop before older tables. Conservative
    /// default: never.
    fn settles(&self, found: &Cell, older_max_timestamp: u64) -> bool {
        let _ = (found, older_max_timestamp);
        false
    }
}

/// Last-write-wins: the higher timestamp wins. On a tie a tombstone wins, then the cell that
/// expires first (a cell without expiry last), then the larger value, so every replica picks
/// the same cell. Preferring the earlier expiry makes turning an expired value into a tombstone
/// (which compaction does) change no outcome: whenever that value has expired, so has anything
/// it beat.
#[derive(Debug, Default, Clone, Copy)]
pub struct LastWriteWins;

impl MergeRule for LastWriteWins {
    fn merge(&self, a: Cell, b: Cell) -> Cell {
        if lww_rank(&a) >= lww_rank(&b) {
            a
        } else {
            b
        }
    }

    fn settles(&self, found: &Cell, older_max_timestamp: u64) -> bool {
        found.timestamp > older_max_timestamp
    }
}

type LwwRank<'a> = (u64, bool, Reverse<u64>, Option<&'a [u8]>, &'a [u8]);

fn lww_rank(c: &Cell) -> LwwRank<'_> {
    let value = match &c.value {
        CellValue::Value(v) => Some(v.as_ref()),
        CellValue::Tombstone => None,
    };
    let expiry = Reverse(c.expires_at_ms.unwrap_or(u64::MAX));
    (
        c.timestamp,
        c.is_tombstone(),
        expiry,
        value,
        c.causal.as_ref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn arb_cell() -> impl Strategy<Value = Cell> {
        // Small ranges, so ties (where the tie-breaks matter) are common.
        (
            prop_oneof![0u64..4, any::<u64>()],
            proptest::option::of(prop_oneof![0u64..4, any::<u64>()]),
            proptest::collection::vec(0u8..2, 0..3),
            proptest::option::of(proptest::collection::vec(0u8..3, 0..3)),
        )
            .prop_map(|(ts, exp, causal, value)| Cell {
                timestamp: ts,
                expires_at_ms: exp,
                causal: Bytes::from(causal),
                value: value.map_or(CellValue::Tombstone, |v| CellValue::Value(v.into())),
            })
    }

    #[test]
    fn the_encoding_is_byte_for_byte_the_documented_layout() {
        let cell = Cell {
            timestamp: 0x0102_0304_0506_0708,
            expires_at_ms: Some(0x1112_1314_1516_1718),
            causal: Bytes::from_static(b"vc"),
            value: CellValue::Value(Bytes::from(vec![0xAB; 200])),
        };
        let mut want = vec![FLAG_EXPIRY | FLAG_CAUSAL];
        want.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]);
        want.extend_from_slice(&[0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11]);
        want.extend_from_slice(&[2, b'v', b'c', 0xC8, 0x01]);
        want.extend_from_slice(&[0xAB; 200]);
        let mut buf = Vec::new();
        cell.encode_into(&mut buf);
        assert_eq!(buf, want);
        let mut tomb = Vec::new();
        Cell::tombstone(5).encode_into(&mut tomb);
        assert_eq!(tomb, [FLAG_TOMBSTONE, 5, 0, 0, 0, 0, 0, 0, 0]);
    }

    proptest! {
        #[test]
        fn prop_cell_round_trips(cell in arb_cell(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut buf = Vec::new();
            cell.encode_into(&mut buf);
            prop_assert_eq!(buf.len(), cell.encoded_len());
            let n = buf.len();
            buf.extend_from_slice(&tail);
            let (back, used) = Cell::decode(&Bytes::from(buf)).unwrap();
            prop_assert_eq!(used, n);
            prop_assert_eq!(back, cell);
        }

        #[test]
        fn prop_cell_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Cell::decode(&Bytes::from(bytes));
        }

        #[test]
        fn prop_lww_is_commutative_associative_idempotent(a in arb_cell(), b in arb_cell(), c in arb_cell()) {
            let r = LastWriteWins;
            prop_assert_eq!(r.merge(a.clone(), b.clone()), r.merge(b.clone(), a.clone()));
            prop_assert_eq!(
                r.merge(r.merge(a.clone(), b.clone()), c.clone()),
                r.merge(a.clone(), r.merge(b.clone(), c.clone()))
            );
            prop_assert_eq!(r.merge(a.clone(), a.clone()), a);
        }
    }

    #[test]
    fn newer_timestamp_wins_regardless_of_order() {
        let old = Cell::value(5, "old");
        let new = Cell::tombstone(9);
        assert_eq!(LastWriteWins.merge(old.clone(), new.clone()), new);
        assert_eq!(LastWriteWins.merge(new.clone(), old), new);
    }

    #[test]
    fn tombstone_wins_a_timestamp_tie() {
        let v = Cell::value(7, "v");
        let t = Cell::tombstone(7);
        assert_eq!(LastWriteWins.merge(v, t.clone()), t);
    }

    #[test]
    fn on_a_tie_the_earlier_expiry_wins_so_expiring_changes_no_outcome() {
        let short = Cell::value(7, "a").with_expiry(100);
        let long = Cell::value(7, "zzz").with_expiry(200);
        let forever = Cell::value(7, "zzzz");
        assert_eq!(LastWriteWins.merge(long.clone(), short.clone()), short);
        assert_eq!(LastWriteWins.merge(forever, short.clone()), short);
        let mut expired = short.clone();
        expired.value = CellValue::Tombstone;
        assert!(LastWriteWins.merge(long, expired).is_tombstone());
    }

    proptest! {
        #[test]
        fn prop_an_expired_value_and_its_tombstone_merge_alike(a in arb_cell(), b in arb_cell()) {
            let Some(expiry) = a.expires_at_ms else { return Ok(()) };
            let mut converted = a.clone();
            converted.value = CellValue::Tombstone;
            let original = LastWriteWins.merge(a, b.clone());
            let after = LastWriteWins.merge(converted, b);
            prop_assert_eq!(original.is_deleted_at(expiry), after.is_deleted_at(expiry));
        }
    }

    #[test]
    fn expired_cell_reads_as_deleted() {
        let c = Cell::value(1, "v").with_expiry(100);
        assert!(!c.is_deleted_at(99));
        assert!(c.is_deleted_at(100));
        assert_eq!(c.live_value(100), None);
    }
}
