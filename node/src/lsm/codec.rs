//! Little helpers shared by every on-disk format: LEB128 varints and bounded slice reads.
//! Decoders return `None` on short or malformed input and never panic.

/// Appends `v` as an unsigned LEB128 varint (1 to 10 bytes).
pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Reads a LEB128 varint at the start of `buf`: `(value, bytes used)`, or `None` if it is
/// truncated or longer than 10 bytes.
#[inline]
pub fn get_varint(buf: &[u8]) -> Option<(u64, usize)> {
    // Block entry lengths are nearly always below 128: one byte, no loop.
    match buf.first() {
        Some(&b) if b < 0x80 => Some((u64::from(b), 1)),
        _ => get_varint_slow(buf),
    }
}

fn get_varint_slow(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        if i == 9 && b > 1 {
            return None;
        }
        v |= part << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Number of bytes `put_varint` uses for `v`.
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros()).div_ceil(7) as usize
}

pub fn get_u32_le(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

pub fn get_u64_le(buf: &[u8], at: usize) -> Option<u64> {
    let b = buf.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn prop_varint_round_trips(v in any::<u64>()) {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            prop_assert_eq!(buf.len(), varint_len(v));
            prop_assert_eq!(get_varint(&buf), Some((v, buf.len())));
        }

        #[test]
        fn prop_varint_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let _ = get_varint(&bytes);
        }
    }

    #[test]
    fn truncated_varint_is_refused() {
        assert_eq!(get_varint(&[0x80, 0x80]), None);
        assert_eq!(get_varint(&[0xff; 11]), None);
    }
}
