//! The table's bloom filter: one bit array over every key, probed by double hashing of the
//! key's xxh3-64 (Kirsch-Mitzenmacher: probe `i` is `h1 + i * h2`, so one hash yields `k`).
//!
//! Stored as the bit array followed by `k` (1 byte). A filter of the single byte 0 (no bits)
//! admits every key: the table was written with `bloom_bits_per_key = 0`.

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

/// Small filters have a noisy false-positive rate; this floor costs only 8 bytes.
const FILTER_BITS_MIN: u64 = 64;
/// Probes beyond this cost more lookup time than they save in false positives.
const PROBES_MAX: u32 = 30;

pub(crate) fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

pub(crate) struct BloomBuilder {
    bits_per_key: u32,
    hashes: Vec<u64>,
}

impl BloomBuilder {
    pub fn new(bits_per_key: u32) -> Self {
        BloomBuilder {
            bits_per_key,
            hashes: Vec::new(),
        }
    }

    pub fn add(&mut self, key: &[u8]) {
        if self.bits_per_key > 0 {
            self.hashes.push(key_hash(key));
        }
    }

    /// Size of [`BloomBuilder::finish`]'s output.
    pub fn len(&self) -> usize {
        self.filter_bits().div_ceil(8) as usize + 1
    }

    fn filter_bits(&self) -> u64 {
        if self.bits_per_key == 0 || self.hashes.is_empty() {
            return 0;
        }
        let bits = self.hashes.len() as u64 * u64::from(self.bits_per_key);
        bits.clamp(FILTER_BITS_MIN, u64::from(u32::MAX)).div_ceil(8) * 8
    }

    pub fn finish(&self) -> Vec<u8> {
        let bits = self.filter_bits();
        let mut buf = vec![0u8; (bits / 8) as usize];
        // k = bits_per_key * ln 2 minimises the false-positive rate.
        let k = ((f64::from(self.bits_per_key) * std::f64::consts::LN_2).round() as u32)
            .clamp(1, PROBES_MAX);
        if bits > 0 {
            for &h in &self.hashes {
                for bit in probes(h, k, bits) {
                    buf[(bit / 8) as usize] |= 1 << (bit % 8);
                }
            }
        }
        buf.push(if bits > 0 { k as u8 } else { 0 });
        buf
    }
}

fn probes(hash: u64, k: u32, bits: u64) -> impl Iterator<Item = u64> {
    let h1 = hash as u32;
    let h2 = (hash >> 32) as u32;
    (0..k).map(move |i| {
        let probe = h1.wrapping_add(i.wrapping_mul(h2));
        // Multiply-shift maps the 32-bit probe onto 0..bits without a division.
        (u64::from(probe) * bits) >> 32
    })
}

/// A parsed filter sharing the bloom block's bytes.
#[derive(Debug, Clone)]
pub(crate) struct Bloom {
    bits: Bytes,
    k: u32,
}

impl Bloom {
    pub fn parse(mut block: Bytes) -> Result<Bloom, &'static str> {
        let Some(&k) = block.last() else {
            return Err("bloom block is empty");
        };
        block.truncate(block.len() - 1);
        let k = u32::from(k);
        let empty = block.is_empty();
        if empty != (k == 0) || k > PROBES_MAX {
            return Err("bloom probe count does not match its bit array");
        }
        if block.len() as u64 * 8 > 1 << 32 {
            return Err("bloom bit array too large");
        }
        Ok(Bloom { bits: block, k })
    }

    pub fn may_contain(&self, key: &[u8]) -> bool {
        if self.k == 0 {
            return true;
        }
        let bits = self.bits.len() as u64 * 8;
        probes(key_hash(key), self.k, bits)
            .all(|bit| self.bits[(bit / 8) as usize] & (1 << (bit % 8)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(keys: impl Iterator<Item = Vec<u8>>, bits_per_key: u32) -> Bloom {
        let mut b = BloomBuilder::new(bits_per_key);
        for k in keys {
            b.add(&k);
        }
        let bytes = b.finish();
        assert_eq!(bytes.len(), b.len());
        Bloom::parse(Bytes::from(bytes)).unwrap()
    }

    /// Measured 0.77% here (theory: 0.82% for k = 7); the bound leaves room for any seed.
    #[test]
    fn false_positive_rate_is_near_one_percent_at_ten_bits_per_key() {
        const KEYS: u32 = 20_000;
        const PROBED: u32 = 200_000;
        let bloom = filter((0..KEYS).map(|i| format!("present-{i}").into_bytes()), 10);
        for i in 0..KEYS {
            assert!(
                bloom.may_contain(format!("present-{i}").as_bytes()),
                "false negative {i}"
            );
        }
        let fp = (0..PROBED)
            .filter(|i| bloom.may_contain(format!("absent-{i}").as_bytes()))
            .count();
        let rate = fp as f64 / f64::from(PROBED);
        assert!((0.004..0.015).contains(&rate), "false-positive rate {rate}");
    }

    #[test]
    fn zero_bits_per_key_admits_everything() {
        let bloom = filter((0..10u8).map(|i| vec![i]), 0);
        assert!(bloom.may_contain(b"anything"));
    }

    #[test]
    fn inconsistent_filters_are_refused() {
        assert!(Bloom::parse(Bytes::new()).is_err());
        assert!(Bloom::parse(Bytes::from_static(&[0xff, 0])).is_err());
        assert!(Bloom::parse(Bytes::from_static(&[3])).is_err());
        assert!(Bloom::parse(Bytes::from_static(&[0xff, 31])).is_err());
    }
}
