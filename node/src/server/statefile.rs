//! Small node state kept outside the engine (identity, schema) as checksummed JSON files,
//! replaced atomically: written to a temporary file, synced, renamed over the old one, and the
//! directory synced, so a crash leaves either the old or the new file, never a mix.
//!
//! Layout (little-endian):
//!
//! | offset | size | field                                   |
//! |--------|------|-----------------------------------------|
//! | 0      | 4    | magic, names the file kind (`KVID`, `KVSC`) |
//! | 4      | 2    | format version (1)                      |
//! | 6      | 2    | reserved, 0                             |
//! | 8      | 4    | payload length                          |
//! | 12     | 8    | xxh3-64 of the payload                  |
//! | 20     | n    | payload: JSON                           |

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64;

const VERSION: u16 = 1;
const HEADER_BYTES: usize = 20;
/// State files hold a schema or a token list; anything bigger is damage, not data.
const PAYLOAD_BYTES_MAX: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateFileError + '_ {
    move |source| StateFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads the file at `path`; `None` when it does not exist.
pub fn read<T: DeserializeOwned>(path: &Path, magic: [u8; 4]) -> Result<Option<T>, StateFileError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let corrupt = |reason: String| StateFileError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let payload = decode(&bytes, magic).map_err(corrupt)?;
    serde_json::from_slice(payload)
        .map(Some)
        .map_err(|e| corrupt(format!("payload: {e}")))
}

fn decode(bytes: &[u8], magic: [u8; 4]) -> Result<&[u8], String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!("{} bytes, shorter than the header", bytes.len()));
    }
    if bytes[0..4] != magic {
        return Err(format!(
            "magic {:02x?}, expected {:02x?}",
            &bytes[0..4],
            magic
        ));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return Err(format!(
            "format version {version}, this build reads {VERSION}"
        ));
    }
    if bytes[6..8] != [0, 0] {
        return Err("reserved header bytes are not zero".into());
    }
    let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let checksum = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    if len > PAYLOAD_BYTES_MAX || bytes.len() != HEADER_BYTES + len {
        return Err(format!(
            "payload length {len} does not match the file's {} bytes",
            bytes.len()
        ));
    }
    let payload = &bytes[HEADER_BYTES..];
    if xxh3_64(payload) != checksum {
        return Err("checksum mismatch".into());
    }
    Ok(payload)
}

/// Replaces the file at `path` with `value`, durably.
pub fn write<T: Serialize>(path: &Path, magic: [u8; 4], value: &T) -> Result<(), StateFileError> {
    let payload = serde_json::to_vec(value).expect("state types serialize");
    assert!(
        payload.len() <= PAYLOAD_BYTES_MAX,
        "state file payload too large"
    );
    let mut bytes = Vec::with_capacity(HEADER_BYTES + payload.len());
    bytes.extend_from_slice(&magic);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&0u16.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&xxh3_64(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    debug_assert_eq!(decode(&bytes, magic), Ok(&payload[..]));
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(&bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: [u8; 4] = *b"KVTS";

    #[test]
    fn round_trip_and_absence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        assert_eq!(read::<Vec<u32>>(&path, MAGIC).unwrap(), None);
        write(&path, MAGIC, &vec![1u32, 2, 3]).unwrap();
        assert_eq!(read::<Vec<u32>>(&path, MAGIC).unwrap(), Some(vec![1, 2, 3]));
    }

    #[test]
    fn every_damaged_byte_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write(&path, MAGIC, &vec![7u32; 4]).unwrap();
        let good = fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            fs::write(&path, &bad).unwrap();
            let err = read::<Vec<u32>>(&path, MAGIC).unwrap_err();
            assert!(err.to_string().contains("corrupt"), "byte {i}: {err}");
        }
        fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(read::<Vec<u32>>(&path, MAGIC).is_err());
        fs::write(&path, &good).unwrap();
        assert!(read::<Vec<u32>>(&path, *b"KVXX").is_err());
    }
}
