//! Block handles, the stored-block trailer and the fixed-size footer.

use xxhash_rust::xxh3::xxh3_64;

use crate::lsm::codec::{get_u32_le, get_u64_le, get_varint, put_varint};

/// Ends every table; tells a table from any other file before its checksum is trusted.
pub const MAGIC: u64 = u64::from_le_bytes(*b"kvSSTab\x01");
pub const FORMAT_VERSION: u32 = 1;
pub const FOOTER_BYTES: usize = 3 * HANDLE_BYTES + 4 + 8 + 8;

const HANDLE_BYTES: usize = 16;
const FOOTER_CHECKED_BYTES: usize = 3 * HANDLE_BYTES + 4;

/// Type byte and checksum after every stored block's payload.
pub(crate) const BLOCK_TRAILER_BYTES: usize = 1 + 8;
pub(crate) const BLOCK_TYPE_RAW: u8 = 0;
pub(crate) const BLOCK_TYPE_ZSTD: u8 = 1;
pub(crate) const BLOCK_TYPE_LZ4: u8 = 2;

/// Where a stored block's payload lives; its trailer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockHandle {
    pub offset: u64,
    pub size: u64,
}

impl BlockHandle {
    /// First byte after the block's trailer, or `None` on overflow.
    pub fn end(&self) -> Option<u64> {
        self.offset
            .checked_add(self.size)?
            .checked_add(BLOCK_TRAILER_BYTES as u64)
    }

    pub fn encode_varint(&self, buf: &mut Vec<u8>) {
        put_varint(buf, self.offset);
        put_varint(buf, self.size);
    }

    /// Decodes a handle that must fill `buf` exactly.
    pub fn decode_varint(buf: &[u8]) -> Option<BlockHandle> {
        let (offset, a) = get_varint(buf)?;
        let (size, b) = get_varint(buf.get(a..)?)?;
        (a + b == buf.len()).then_some(BlockHandle { offset, size })
    }

    fn encode_fixed(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&self.offset.to_le_bytes());
        buf.extend_from_slice(&self.size.to_le_bytes());
    }

    fn decode_fixed(buf: &[u8], at: usize) -> Option<BlockHandle> {
        Some(BlockHandle {
            offset: get_u64_le(buf, at)?,
            size: get_u64_le(buf, at + 8)?,
        })
    }
}

/// Checksum stored in a block trailer: over the payload and the type byte, so a flipped type
/// cannot make a raw block parse as compressed or the reverse.
pub(crate) fn block_checksum(payload: &[u8], block_type: u8) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(payload);
    h.update(&[block_type]);
    h.digest()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Footer {
    pub bloom: BlockHandle,
    pub index: BlockHandle,
    pub properties: BlockHandle,
}

impl Footer {
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(FOOTER_BYTES);
        self.bloom.encode_fixed(&mut buf);
        self.index.encode_fixed(&mut buf);
        self.properties.encode_fixed(&mut buf);
        buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let checksum = xxh3_64(&buf);
        buf.extend_from_slice(&checksum.to_le_bytes());
        buf.extend_from_slice(&MAGIC.to_le_bytes());
        buf
    }

    /// Decodes the last [`FOOTER_BYTES`] of a file, explaining any refusal.
    pub fn decode(buf: &[u8]) -> Result<Footer, String> {
        if buf.len() != FOOTER_BYTES {
            return Err(format!(
                "footer is {} bytes, expected {FOOTER_BYTES}",
                buf.len()
            ));
        }
        let bad = || "footer truncated".to_string();
        let magic = get_u64_le(buf, FOOTER_CHECKED_BYTES + 8).ok_or_else(bad)?;
        if magic != MAGIC {
            return Err(format!("bad magic {magic:#018x}: not a table"));
        }
        let stored = get_u64_le(buf, FOOTER_CHECKED_BYTES).ok_or_else(bad)?;
        if stored != xxh3_64(&buf[..FOOTER_CHECKED_BYTES]) {
            return Err("footer checksum mismatch".into());
        }
        let version = get_u32_le(buf, 3 * HANDLE_BYTES).ok_or_else(bad)?;
        if version != FORMAT_VERSION {
            return Err(format!("unsupported format version {version}"));
        }
        Ok(Footer {
            bloom: BlockHandle::decode_fixed(buf, 0).ok_or_else(bad)?,
            index: BlockHandle::decode_fixed(buf, HANDLE_BYTES).ok_or_else(bad)?,
            properties: BlockHandle::decode_fixed(buf, 2 * HANDLE_BYTES).ok_or_else(bad)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footer() -> Footer {
        Footer {
            bloom: BlockHandle {
                offset: 100,
                size: 20,
            },
            index: BlockHandle {
                offset: 129,
                size: 30,
            },
            properties: BlockHandle {
                offset: 168,
                size: 40,
            },
        }
    }

    #[test]
    fn footer_round_trips_at_fixed_size() {
        let bytes = footer().encode();
        assert_eq!(bytes.len(), FOOTER_BYTES);
        assert_eq!(Footer::decode(&bytes), Ok(footer()));
    }

    #[test]
    fn every_footer_byte_is_protected() {
        let bytes = footer().encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Footer::decode(&bad).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn varint_handle_must_fill_its_value() {
        let h = BlockHandle {
            offset: 1 << 40,
            size: 4096,
        };
        let mut buf = Vec::new();
        h.encode_varint(&mut buf);
        assert_eq!(BlockHandle::decode_varint(&buf), Some(h));
        buf.push(0);
        assert_eq!(BlockHandle::decode_varint(&buf), None);
    }
}
