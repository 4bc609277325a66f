//! The node's keyspaces on disk: one engine per keyspace, like Cassandra's per-table
//! directories, so dropping a keyspace is deleting a directory and a token range of one
//! keyspace is one contiguous scan. A keyspace's directory is named after its name and schema
//! version, so a keyspace dropped and created again starts empty.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use foldhash::HashMap;
use parking_lot::RwLock;

use crate::cluster::Schema;
use crate::lsm::{Cached, Cell, Db, DbStats, Mutation, Options, TryWrite};
use crate::storage_key;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("keyspace {0:?} is not in this node's schema")]
    UnknownKeyspace(String),
    #[error("keyspace {keyspace}: {source}")]
    Engine {
        keyspace: String,
        source: crate::lsm::Error,
    },
    #[error("keyspace {0}: a cleanup found its engine still in use after 10 s and was abandoned")]
    Busy(String),
    #[error("swapping {path} during a cleanup: {source}")]
    Swap {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("removing {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
}

struct Open {
    version: u64,
    db: Arc<Db>,
    /// While a cleanup rewrites the keyspace: the new engine, which receives every write too.
    shadow: Option<Arc<Db>>,
}

/// Cells copied per write while a cleanup rewrites a keyspace.
const CLEANUP_BATCH: usize = 1000;
/// How long a cleanup's swap waits for requests still using the old engine.
const SWAP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Storage {
    root: PathBuf,
    options: Options,
    keyspaces: RwLock<HashMap<String, Open>>,
}

/// One page of a replica's range scan.
pub struct ScanPage {
    /// (engine key, cell) in engine key order.
    pub cells: Vec<(Bytes, Cell)>,
    pub exhausted: bool,
}

impl Storage {
    pub fn new(root: &Path, options: Options) -> Storage {
        Storage {
            root: root.to_owned(),
            options,
            keyspaces: RwLock::new(HashMap::default()),
        }
    }

    fn dir_of(&self, name: &str, version: u64) -> PathBuf {
        self.root.join(format!("{name}-{version}"))
    }

    /// Opens the engines of new keyspaces and removes those of dropped or superseded ones.
    /// Blocking: call off the async runtime.
    pub fn sync_schema(&self, schema: &Schema) -> Result<(), StorageError> {
        let mut gone = Vec::new();
        {
            let mut open = self.keyspaces.write();
            open.retain(|name, o| {
                let keep = schema.get(name).is_some_and(|d| d.version == o.version);
                if !keep {
                    gone.push((name.clone(), o.version));
                }
                keep
            });
            for (name, def) in schema.live() {
                if open.contains_key(name) {
                    continue;
                }
                self.recover_swap(name, def.version)?;
                let db = Db::open(self.dir_of(name, def.version), self.options.clone()).map_err(
                    |source| StorageError::Engine {
                        keyspace: name.to_owned(),
                        source,
                    },
                )?;
                let entry = Open {
                    version: def.version,
                    db: Arc::new(db),
                    shadow: None,
                };
                open.insert(name.to_owned(), entry);
            }
        }
        for (name, version) in gone {
            tracing::info!(keyspace = %name, "removing the data of a dropped keyspace");
            self.remove_dir(&self.dir_of(&name, version))?;
        }
        self.remove_strays(schema)
    }

    /// Directories no live keyspace version names: left by a crash between a drop and its
    /// removal.
    fn remove_strays(&self, schema: &Schema) -> Result<(), StorageError> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Ok(());
        };
        let live: Vec<PathBuf> = (schema.live())
            .map(|(n, d)| self.dir_of(n, d.version))
            .collect();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && !live.contains(&path) {
                self.remove_dir(&path)?;
            }
        }
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> Result<(), StorageError> {
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::Remove {
                path: path.to_owned(),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    fn db(&self, keyspace: &str) -> Result<Arc<Db>, StorageError> {
        (self.keyspaces.read().get(keyspace))
            .map(|o| o.db.clone())
            .ok_or_else(|| StorageError::UnknownKeyspace(keyspace.to_owned()))
    }

    fn engine_err(keyspace: &str) -> impl FnOnce(crate::lsm::Error) -> StorageError + '_ {
        move |source| StorageError::Engine {
            keyspace: keyspace.to_owned(),
            source,
        }
    }

    /// Applies mutations keyed by engine key as one engine batch. Blocking.
    pub fn apply(&self, keyspace: &str, batch: Vec<Mutation>) -> Result<(), StorageError> {
        let (db, shadow) = (self.keyspaces.read().get(keyspace))
            .map(|o| (o.db.clone(), o.shadow.clone()))
            .ok_or_else(|| StorageError::UnknownKeyspace(keyspace.to_owned()))?;
        if let Some(shadow) = shadow {
            shadow
                .write(batch.clone())
                .map_err(Self::engine_err(keyspace))?;
        }
        db.write(batch).map_err(Self::engine_err(keyspace))
    }

    /// As [`Storage::apply`] when the engine can take the batch without waiting; never
    /// blocks. While a cleanup runs every batch is handed back, as it goes to two engines.
    pub fn try_apply(
        &self,
        keyspace: &str,
        batch: Vec<Mutation>,
    ) -> Result<TryWrite, StorageError> {
        let db = (self.keyspaces.read().get(keyspace))
            .map(|o| o.shadow.is_none().then(|| o.db.clone()))
            .ok_or_else(|| StorageError::UnknownKeyspace(keyspace.to_owned()))?;
        match db {
            Some(db) => db.try_write(batch).map_err(Self::engine_err(keyspace)),
            None => Ok(TryWrite::WouldWait(batch)),
        }
    }

    /// Rewrites `keyspace` keeping only cells whose token `keep` accepts, without stopping
    /// writes: a new engine receives every write while the kept cells are copied into it (the
    /// merge rule orders cells by timestamp, so copy and new writes may interleave), then the
    /// engines are swapped. Returns (kept, removed). Blocking.
    pub fn cleanup(
        &self,
        keyspace: &str,
        keep: impl Fn(u128) -> bool,
    ) -> Result<(u64, u64), StorageError> {
        let version = (self.keyspaces.read().get(keyspace))
            .map(|o| o.version)
            .ok_or_else(|| StorageError::UnknownKeyspace(keyspace.to_owned()))?;
        let err = Self::engine_err;
        let fresh = self.swap_dir(keyspace, version, "cleanup");
        self.remove_dir(&fresh)?;
        let shadow = Arc::new(Db::open(&fresh, self.options.clone()).map_err(err(keyspace))?);
        let old = {
            let mut open = self.keyspaces.write();
            let o = open
                .get_mut(keyspace)
                .ok_or_else(|| StorageError::UnknownKeyspace(keyspace.to_owned()))?;
            o.shadow = Some(shadow.clone());
            o.db.clone()
        };
        let (mut kept, mut removed) = (0u64, 0u64);
        let mut batch = Vec::with_capacity(CLEANUP_BATCH);
        for item in old
            .scan(Bound::Unbounded, Bound::Unbounded)
            .map_err(err(keyspace))?
        {
            let (key, cell) = item.map_err(err(keyspace))?;
            let token = crate::storage_key::decode(&key).map_or(0, |(t, _)| t);
            if !keep(token) {
                removed += 1;
                continue;
            }
            kept += 1;
            batch.push(Mutation { key, cell });
            if batch.len() == CLEANUP_BATCH {
                shadow
                    .write(std::mem::take(&mut batch))
                    .map_err(err(keyspace))?;
            }
        }
        shadow.write(batch).map_err(err(keyspace))?;
        shadow.flush().map_err(err(keyspace))?;
        drop((old, shadow));
        self.swap(keyspace, version)?;
        Ok((kept, removed))
    }

    fn swap_dir(&self, name: &str, version: u64, what: &str) -> PathBuf {
        self.root.join(format!("{name}-{version}.{what}"))
    }

    /// Replaces the keyspace's engine with its cleanup shadow: both are closed once no request
    /// uses them (new requests wait on the map's lock), the directories trade places, and the
    /// new engine reopens where the old one was.
    fn swap(&self, keyspace: &str, version: u64) -> Result<(), StorageError> {
        let err = Self::engine_err;
        let mut open = self.keyspaces.write();
        let entry = open
            .remove(keyspace)
            .ok_or_else(|| StorageError::UnknownKeyspace(keyspace.to_owned()))?;
        let shadow = entry.shadow.expect("a cleanup set the shadow");
        let shadow = match sole(shadow) {
            Ok(db) => db,
            Err(_) => return self.abandon(&mut open, keyspace, version, entry.db),
        };
        let old = match sole(entry.db) {
            Ok(db) => db,
            Err(still_used) => {
                shadow.close().map_err(err(keyspace))?;
                return self.abandon(&mut open, keyspace, version, still_used);
            }
        };
        old.close().map_err(err(keyspace))?;
        shadow.close().map_err(err(keyspace))?;
        let (live, retired) = (
            self.dir_of(keyspace, version),
            self.swap_dir(keyspace, version, "old"),
        );
        let rename = |from: &Path, to: &Path| {
            std::fs::rename(from, to).map_err(|source| StorageError::Swap {
                path: from.to_owned(),
                source,
            })
        };
        rename(&live, &retired)?;
        rename(&self.swap_dir(keyspace, version, "cleanup"), &live)?;
        let db = Db::open(&live, self.options.clone()).map_err(err(keyspace))?;
        open.insert(
            keyspace.to_owned(),
            Open {
                version,
                db: Arc::new(db),
                shadow: None,
            },
        );
        drop(open);
        self.remove_dir(&retired)
    }

    /// Gives up a cleanup whose engines stayed in use: the old engine serves on, unchanged.
    fn abandon(
        &self,
        open: &mut HashMap<String, Open>,
        keyspace: &str,
        version: u64,
        db: Arc<Db>,
    ) -> Result<(), StorageError> {
        open.insert(
            keyspace.to_owned(),
            Open {
                version,
                db,
                shadow: None,
            },
        );
        Err(StorageError::Busy(keyspace.to_owned()))
    }

    /// After a crash between the two renames of a swap, the old engine is put back (the
    /// cleanup is simply lost, and its leftovers are removed as strays).
    fn recover_swap(&self, keyspace: &str, version: u64) -> Result<(), StorageError> {
        let (live, retired) = (
            self.dir_of(keyspace, version),
            self.swap_dir(keyspace, version, "old"),
        );
        if !live.exists() && retired.exists() {
            tracing::warn!(%keyspace, "an interrupted cleanup is rolled back");
            std::fs::rename(&retired, &live).map_err(|source| StorageError::Swap {
                path: retired,
                source,
            })?;
        }
        Ok(())
    }

    /// The stored cell of an engine key, tombstones and expired cells included. Blocking.
    pub fn read(&self, keyspace: &str, key: &[u8]) -> Result<Option<Cell>, StorageError> {
        let db = self.db(keyspace)?;
        db.get(key).map_err(Self::engine_err(keyspace))
    }

    /// As [`Storage::read`] from memory only; never blocks.
    pub fn try_read(
        &self,
        keyspace: &str,
        key: &[u8],
    ) -> Result<Cached<Option<Cell>>, StorageError> {
        let db = self.db(keyspace)?;
        db.try_get(key).map_err(Self::engine_err(keyspace))
    }

    /// Up to `limit` cells with engine keys after `after` (or from `start`), up to `end`.
    /// Blocking.
    pub fn scan(
        &self,
        keyspace: &str,
        from: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        limit: usize,
    ) -> Result<ScanPage, StorageError> {
        let db = self.db(keyspace)?;
        let scan = db
            .scan(as_ref(&from), as_ref(&end))
            .map_err(Self::engine_err(keyspace))?;
        let mut cells = Vec::new();
        let mut exhausted = true;
        for item in scan {
            if cells.len() == limit {
                exhausted = false;
                break;
            }
            cells.push(item.map_err(Self::engine_err(keyspace))?);
        }
        Ok(ScanPage { cells, exhausted })
    }

    /// Calls `f` with every cell of the engine keys in the bounds, in key order, without
    /// holding them all; returns how many it visited. Blocking.
    pub fn visit(
        &self,
        keyspace: &str,
        from: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        mut f: impl FnMut(&[u8], &Cell),
    ) -> Result<u64, StorageError> {
        let db = self.db(keyspace)?;
        let scan = db
            .scan(as_ref(&from), as_ref(&end))
            .map_err(Self::engine_err(keyspace))?;
        let mut n = 0;
        for item in scan {
            let (key, cell) = item.map_err(Self::engine_err(keyspace))?;
            f(&key, &cell);
            n += 1;
        }
        Ok(n)
    }

    /// Sets the wall-clock time before which the keyspace's engine may purge deletions
    /// (`None`: the engine's own grace rule).
    pub fn set_gc_horizon_ms(
        &self,
        keyspace: &str,
        horizon_ms: Option<u64>,
    ) -> Result<(), StorageError> {
        self.db(keyspace)?.set_gc_horizon_ms(horizon_ms);
        Ok(())
    }

    /// Each keyspace's engine statistics, by keyspace name.
    pub fn engine_stats(&self) -> Vec<(String, DbStats)> {
        let dbs: Vec<(String, Arc<Db>)> = (self.keyspaces.read().iter())
            .map(|(name, o)| (name.clone(), o.db.clone()))
            .collect();
        let mut stats: Vec<_> = (dbs.into_iter())
            .map(|(name, db)| (name, db.stats()))
            .collect();
        stats.sort_by(|a, b| a.0.cmp(&b.0));
        stats
    }

    /// Bytes on disk under the keyspaces' directories, for the gossiped load.
    pub fn load_bytes(&self) -> u64 {
        let dbs: Vec<Arc<Db>> = self
            .keyspaces
            .read()
            .values()
            .map(|o| o.db.clone())
            .collect();
        dbs.iter().map(|db| dir_bytes(db.dir())).sum()
    }

    /// Flushes every memtable and closes the engines, for a graceful stop. Blocking.
    pub fn close(&self) -> Result<(), StorageError> {
        let open: Vec<(String, Open)> = self.keyspaces.write().drain().collect();
        for (name, o) in open {
            o.db.flush().map_err(Self::engine_err(&name))?;
            if let Ok(db) = Arc::try_unwrap(o.db) {
                db.close().map_err(Self::engine_err(&name))?;
            }
        }
        Ok(())
    }
}

/// The engine itself once requests still using it have finished, or the shared handle back
/// after [`SWAP_WAIT`].
fn sole(db: Arc<Db>) -> Result<Db, Arc<Db>> {
    let deadline = std::time::Instant::now() + SWAP_WAIT;
    let mut db = db;
    loop {
        match Arc::try_unwrap(db) {
            Ok(db) => return Ok(db),
            Err(shared) if std::time::Instant::now() < deadline => {
                db = shared;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(shared) => return Err(shared),
        }
    }
}

fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k),
        Bound::Excluded(k) => Bound::Excluded(k),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    (entries.flatten())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The engine key of a user key.
pub fn engine_key(user_key: &[u8]) -> Bytes {
    storage_key::encode(topology::token_of(user_key).0, user_key)
}
