//! The manifest: which SSTables are live at which level, which WAL segments still hold
//! unflushed writes, the highest flushed sequence number and the next file number. It lives in
//! sled and changes only through [`VersionEdit`]s, each applied as one atomic, fsynced batch.
//!
//! Record layout (sled key -> value); every value ends with an xxh3-64 of the bytes before it:
//!
//! | key                          | value                                                    |
//! |------------------------------|----------------------------------------------------------|
//! | `format`                     | magic `KVMF` (4) + version u8 (1) + checksum (8)          |
//! | `t` + file number (8, BE)    | version u8 + level u32 LE + file bytes u64 LE + checksum |
//! | `w` + segment id (8, BE)     | version u8 + checksum                                    |
//! | `flushed_seq`                | version u8 + u64 LE + checksum                           |
//! | `next_file`                  | version u8 + u64 LE + checksum                           |

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use super::codec::{get_u32_le, get_u64_le};
use super::error::{Error, Result};

const MAGIC: &[u8; 4] = b"KVMF";
const VERSION: u8 = 1;
const KEY_FORMAT: &[u8] = b"format";
const KEY_FLUSHED_SEQ: &[u8] = b"flushed_seq";
const KEY_NEXT_FILE: &[u8] = b"next_file";
const PREFIX_TABLE: u8 = b't';
const PREFIX_WAL: u8 = b'w';

/// A live SSTable as the manifest records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableEntry {
    pub level: u32,
    pub file_bytes: u64,
}

/// The manifest's current contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestState {
    pub tables: BTreeMap<u64, TableEntry>,
    pub wal_segments: BTreeSet<u64>,
    pub flushed_seq: u64,
    pub next_file_number: u64,
}

/// One atomic change. Adding a table that exists moves it (a trivial move to another level).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionEdit {
    pub add_tables: Vec<(u64, TableEntry)>,
    pub remove_tables: Vec<u64>,
    pub add_wal: Vec<u64>,
    pub remove_wal: Vec<u64>,
    pub flushed_seq: Option<u64>,
    pub next_file_number: Option<u64>,
}

pub struct Manifest {
    db: sled::Db,
    path: PathBuf,
}

impl Manifest {
    /// Opens (or creates) the manifest in `dir` and reads its state.
    pub fn open(dir: &Path) -> Result<(Manifest, ManifestState)> {
        let db = open_sled(dir)?;
        let manifest = Manifest {
            db,
            path: dir.to_path_buf(),
        };
        manifest.check_format()?;
        let state = manifest.read_state()?;
        Ok((manifest, state))
    }

    fn check_format(&self) -> Result<()> {
        match self
            .db
            .get(KEY_FORMAT)
            .map_err(|e| sled_err(&self.path, e))?
        {
            None => {
                let mut v = MAGIC.to_vec();
                v.push(VERSION);
                self.db
                    .insert(KEY_FORMAT, seal(v))
                    .map_err(|e| sled_err(&self.path, e))?;
                self.flush()
            }
            Some(v) => {
                let body = unseal(&self.path, KEY_FORMAT, &v)?;
                if body.get(..4) != Some(MAGIC) || body.get(4) != Some(&VERSION) {
                    return Err(self.corrupt(KEY_FORMAT, "not a manifest of this format version"));
                }
                Ok(())
            }
        }
    }

    fn read_state(&self) -> Result<ManifestState> {
        let mut state = ManifestState::default();
        for item in self.db.iter() {
            let (k, v) = item.map_err(|e| sled_err(&self.path, e))?;
            self.read_record(&mut state, &k, &v)?;
        }
        Ok(state)
    }

    fn read_record(&self, state: &mut ManifestState, k: &[u8], v: &[u8]) -> Result<()> {
        if k == KEY_FORMAT {
            return Ok(());
        }
        let body = unseal(&self.path, k, v)?;
        let bad = || self.corrupt(k, "malformed record");
        if body.first() != Some(&VERSION) {
            return Err(self.corrupt(k, "unknown record version"));
        }
        match k {
            KEY_FLUSHED_SEQ => state.flushed_seq = get_u64_le(body, 1).ok_or_else(bad)?,
            KEY_NEXT_FILE => state.next_file_number = get_u64_le(body, 1).ok_or_else(bad)?,
            [PREFIX_TABLE, id @ ..] if id.len() == 8 => {
                let entry = TableEntry {
                    level: get_u32_le(body, 1).ok_or_else(bad)?,
                    file_bytes: get_u64_le(body, 5).ok_or_else(bad)?,
                };
                state.tables.insert(be_u64(id), entry);
            }
            [PREFIX_WAL, id @ ..] if id.len() == 8 => {
                state.wal_segments.insert(be_u64(id));
            }
            _ => return Err(self.corrupt(k, "unknown key")),
        }
        Ok(())
    }

    /// Applies `edit` atomically and durably: after this returns, a reopen sees all of it;
    /// after a crash during it, a reopen sees all of it or none of it.
    pub fn apply(&self, edit: &VersionEdit) -> Result<()> {
        fail::fail_point!("manifest-edit", |_| Err(Error::Injected("manifest-edit")));
        let mut batch = sled::Batch::default();
        for id in &edit.remove_tables {
            batch.remove(prefixed(PREFIX_TABLE, *id).to_vec());
        }
        for (id, entry) in &edit.add_tables {
            let mut v = vec![VERSION];
            v.extend_from_slice(&entry.level.to_le_bytes());
            v.extend_from_slice(&entry.file_bytes.to_le_bytes());
            batch.insert(prefixed(PREFIX_TABLE, *id).to_vec(), seal(v));
        }
        for id in &edit.remove_wal {
            batch.remove(prefixed(PREFIX_WAL, *id).to_vec());
        }
        for id in &edit.add_wal {
            batch.insert(prefixed(PREFIX_WAL, *id).to_vec(), seal(vec![VERSION]));
        }
        let counters = [
            (KEY_FLUSHED_SEQ, edit.flushed_seq),
            (KEY_NEXT_FILE, edit.next_file_number),
        ];
        for (key, value) in counters {
            if let Some(n) = value {
                let mut v = vec![VERSION];
                v.extend_from_slice(&n.to_le_bytes());
                batch.insert(key, seal(v));
            }
        }
        self.db
            .apply_batch(batch)
            .map_err(|e| sled_err(&self.path, e))?;
        self.flush()
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(|e| sled_err(&self.path, e))?;
        Ok(())
    }

    fn corrupt(&self, key: &[u8], reason: &str) -> Error {
        let name = describe_key(key);
        Error::corruption(&self.path, 0, format!("manifest record {name}: {reason}"))
    }
}

/// How long to wait for a previous instance in this process to let go of sled's file lock.
const SLED_LOCK_WAIT_MS: u64 = 5_000;
const SLED_LOCK_POLL_MS: u64 = 10;

/// Opens sled, waiting a bounded time for its file lock: sled's background threads release it
/// only after a dropped instance's last I/O task ends, so a close followed at once by an open
/// in the same process can find it still held. Another process cannot be the holder, since the
/// database directory's own lock is already ours.
fn open_sled(dir: &Path) -> Result<sled::Db> {
    let config = sled::Config::new().path(dir).mode(sled::Mode::LowSpace);
    let started = std::time::Instant::now();
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if is_lock_busy(&e)
                    && started.elapsed().as_millis() < u128::from(SLED_LOCK_WAIT_MS) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(SLED_LOCK_POLL_MS));
            }
            result => return result.map_err(|e| sled_err(dir, e)),
        }
    }
}

fn is_lock_busy(e: &std::io::Error) -> bool {
    e.to_string().contains("could not acquire lock")
}

fn prefixed(prefix: u8, id: u64) -> [u8; 9] {
    let mut k = [prefix; 9];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_be_bytes(a)
}

fn seal(mut body: Vec<u8>) -> Vec<u8> {
    let sum = xxh3_64(&body);
    body.extend_from_slice(&sum.to_le_bytes());
    body
}

fn unseal<'a>(path: &Path, key: &[u8], v: &'a [u8]) -> Result<&'a [u8]> {
    let name = describe_key(key);
    let split = v
        .len()
        .checked_sub(8)
        .ok_or_else(|| Error::corruption(path, 0, format!("manifest record {name}: too short")))?;
    let (body, sum) = v.split_at(split);
    if get_u64_le(sum, 0) != Some(xxh3_64(body)) {
        return Err(Error::corruption(
            path,
            0,
            format!("manifest record {name}: checksum mismatch"),
        ));
    }
    Ok(body)
}

fn describe_key(key: &[u8]) -> String {
    match key {
        [PREFIX_TABLE, id @ ..] if id.len() == 8 => format!("table {}", be_u64(id)),
        [PREFIX_WAL, id @ ..] if id.len() == 8 => format!("wal segment {}", be_u64(id)),
        _ => String::from_utf8_lossy(key).into_owned(),
    }
}

fn sled_err(path: &Path, e: sled::Error) -> Error {
    match e {
        sled::Error::Io(io) => Error::io(path, io),
        other => Error::Manifest(format!("{}: {other}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(level: u32, file_bytes: u64) -> TableEntry {
        TableEntry { level, file_bytes }
    }

    #[test]
    fn edits_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (m, state) = Manifest::open(dir.path()).unwrap();
            assert_eq!(state, ManifestState::default());
            m.apply(&VersionEdit {
                add_tables: vec![(7, table(0, 100)), (8, table(0, 200))],
                add_wal: vec![3, 4],
                next_file_number: Some(9),
                ..Default::default()
            })
            .unwrap();
            m.apply(&VersionEdit {
                add_tables: vec![(8, table(1, 200))],
                remove_tables: vec![7],
                remove_wal: vec![3],
                flushed_seq: Some(42),
                ..Default::default()
            })
            .unwrap();
        }
        let (_, state) = Manifest::open(dir.path()).unwrap();
        assert_eq!(
            state.tables.into_iter().collect::<Vec<_>>(),
            vec![(8, table(1, 200))]
        );
        assert_eq!(state.wal_segments.into_iter().collect::<Vec<_>>(), vec![4]);
        assert_eq!((state.flushed_seq, state.next_file_number), (42, 9));
    }

    #[test]
    fn a_damaged_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (m, _) = Manifest::open(dir.path()).unwrap();
        m.db.insert(prefixed(PREFIX_TABLE, 1), vec![VERSION; 21])
            .unwrap();
        let err = m.read_state().unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        m.db.insert(prefixed(PREFIX_TABLE, 1), vec![VERSION, 0, 0])
            .unwrap();
        let err = m.read_state().unwrap_err().to_string();
        assert!(err.contains("too short"), "{err}");
    }
}
