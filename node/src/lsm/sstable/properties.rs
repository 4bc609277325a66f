//! The properties block: what compaction and reads want to know without reading data blocks.

use bytes::Bytes;

use crate::lsm::cell::Cell;
use crate::lsm::codec::{get_varint, put_varint};

/// Summary of a table. For an empty table every field except `level` and `created_ms` is
/// zero or empty.
///
/// Encoded as `min_key` and `max_key` (each a varint length and the bytes), then the integer
/// fields as varints in declaration order, nothing after.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Properties {
    pub min_key: Bytes,
    pub max_key: Bytes,
    pub min_timestamp: u64,
    pub max_timestamp: u64,
    pub entries: u64,
    pub tombstones: u64,
    /// Cells with an expiry.
    pub expiring: u64,
    /// Latest expiry among `expiring` cells; 0 when there are none.
    pub max_expires_at_ms: u64,
    pub level: u32,
    pub created_ms: u64,
    /// Sum of key lengths.
    pub raw_key_bytes: u64,
    /// Sum of user value lengths (tombstones count 0), before encoding and compression.
    pub raw_value_bytes: u64,
}

impl Properties {
    pub(crate) fn new(level: u32, created_ms: u64) -> Self {
        Properties {
            level,
            created_ms,
            ..Properties::default()
        }
    }

    /// Accounts for one more entry; keys arrive in ascending order.
    pub(crate) fn add(&mut self, key: &[u8], cell: &Cell) {
        if self.entries == 0 {
            self.min_key = Bytes::copy_from_slice(key);
            self.min_timestamp = cell.timestamp;
        }
        self.entries += 1;
        self.min_timestamp = self.min_timestamp.min(cell.timestamp);
        self.max_timestamp = self.max_timestamp.max(cell.timestamp);
        self.tombstones += u64::from(cell.is_tombstone());
        if let Some(e) = cell.expires_at_ms {
            self.expiring += 1;
            self.max_expires_at_ms = self.max_expires_at_ms.max(e);
        }
        self.raw_key_bytes += key.len() as u64;
        self.raw_value_bytes += cell.value_len() as u64;
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.min_key.len() + self.max_key.len() + 64);
        for key in [&self.min_key, &self.max_key] {
            put_varint(&mut buf, key.len() as u64);
            buf.extend_from_slice(key);
        }
        for v in self.integers() {
            put_varint(&mut buf, v);
        }
        buf
    }

    fn integers(&self) -> [u64; 10] {
        [
            self.min_timestamp,
            self.max_timestamp,
            self.entries,
            self.tombstones,
            self.expiring,
            self.max_expires_at_ms,
            u64::from(self.level),
            self.created_ms,
            self.raw_key_bytes,
            self.raw_value_bytes,
        ]
    }

    pub(crate) fn decode(buf: &Bytes) -> Result<Properties, &'static str> {
        let mut r = Reader { buf, at: 0 };
        let min_key = r.bytes()?;
        let max_key = r.bytes()?;
        let mut ints = [0u64; 10];
        for v in &mut ints {
            *v = r.varint()?;
        }
        if r.at != buf.len() {
            return Err("trailing bytes after the properties");
        }
        let [min_timestamp, max_timestamp, entries, tombstones, expiring, max_expires_at_ms, level, created_ms, raw_key_bytes, raw_value_bytes] =
            ints;
        let props = Properties {
            min_key,
            max_key,
            min_timestamp,
            max_timestamp,
            entries,
            tombstones,
            expiring,
            max_expires_at_ms,
            level: u32::try_from(level).map_err(|_| "level out of range")?,
            created_ms,
            raw_key_bytes,
            raw_value_bytes,
        };
        props.check()?;
        Ok(props)
    }

    fn check(&self) -> Result<(), &'static str> {
        if self.min_key > self.max_key || self.min_timestamp > self.max_timestamp {
            return Err("properties have min above max");
        }
        if self.tombstones > self.entries || self.expiring > self.entries {
            return Err("properties count more tombstones or expiring cells than entries");
        }
        Ok(())
    }
}

struct Reader<'a> {
    buf: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, &'static str> {
        let rest = self.buf.get(self.at..).unwrap_or_default();
        let (v, used) = get_varint(rest).ok_or("properties truncated")?;
        self.at += used;
        Ok(v)
    }

    fn bytes(&mut self) -> Result<Bytes, &'static str> {
        let len = self.varint()?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.at.checked_add(len))
            .filter(|&end| end <= self.buf.len())
            .ok_or("properties key length past the block")?;
        let b = self.buf.slice(self.at..end);
        self.at = end;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn properties_round_trip_exactly() {
        let mut p = Properties::new(3, 1_700_000_000_000);
        p.add(b"a", &Cell::value(5, "xyz").with_expiry(99));
        p.add(b"b", &Cell::tombstone(2));
        p.max_key = Bytes::from_static(b"b");
        let bytes = Bytes::from(p.encode());
        assert_eq!(Properties::decode(&bytes), Ok(p));
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(Properties::decode(&Bytes::from(longer)).is_err());
    }

    proptest! {
        #[test]
        fn prop_properties_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
            let _ = Properties::decode(&Bytes::from(bytes));
        }
    }
}
