//! One adapter per engine behind [`Engine`], each given the same settings (see
//! docs/benchmarks.md for what each engine gets and where they cannot be made equal).

#[cfg(feature = "peer-fjall")]
mod fjall;
mod ours;
#[cfg(any(feature = "peer-rocksdb", feature = "peer-fjall"))]
mod periodic;
#[cfg(feature = "peer-rocksdb")]
mod rocksdb;
mod sled;

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

pub const WRITE_BUFFER_BYTES: usize = 64 << 20;
pub const BLOCK_BYTES: usize = 16 << 10;
pub const BLOOM_BITS_PER_KEY: u32 = 10;
pub const ZSTD_LEVEL: i32 = 1;
/// How often `--sync periodic` fsyncs the write-ahead log.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    Ours,
    Rocksdb,
    Fjall,
    Sled,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Ours => "ours",
            EngineKind::Rocksdb => "rocksdb",
            EngineKind::Fjall => "fjall",
            EngineKind::Sled => "sled",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// The log is written on every write but never fsynced.
    None,
    /// The log is fsynced every 100 ms.
    Periodic,
    /// Every write is fsynced before it returns.
    Always,
}

impl SyncMode {
    pub fn name(self) -> &'static str {
        match self {
            SyncMode::None => "none",
            SyncMode::Periodic => "periodic",
            SyncMode::Always => "always",
        }
    }
}

/// Block compression asked for; engines without it say so (see docs/benchmarks.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Codec {
    /// zstd level 1: ours and RocksDB (fjall falls back to LZ4, sled runs uncompressed).
    Zstd,
    /// LZ4: ours and fjall; this build's RocksDB has zstd only.
    Lz4,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Lz4 => "lz4",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub sync: SyncMode,
    pub cache_bytes: usize,
    pub compression: Codec,
}

/// Entries a scan read and their key plus value bytes.
pub struct ScanStats {
    pub entries: usize,
    pub bytes: usize,
}

pub trait Engine: Send + Sync {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()>;
    /// The length of the value under `key`: the value is read, but no adapter has to copy it out.
    fn get(&self, key: &[u8]) -> Result<Option<usize>>;
    /// Reads up to `limit` entries from the first key at or after `start`.
    fn scan(&self, start: &[u8], limit: usize) -> Result<ScanStats>;
    /// Writes out memtables and waits for background compaction, so disk figures are settled.
    fn settle(&self) -> Result<()>;
    fn close(self: Box<Self>) -> Result<()>;
}

pub fn open(kind: EngineKind, dir: &Path, settings: &Settings) -> Result<Box<dyn Engine>> {
    std::fs::create_dir_all(dir)?;
    match kind {
        EngineKind::Ours => Ok(Box::new(ours::Ours::open(dir, settings)?)),
        EngineKind::Sled => Ok(Box::new(sled::Sled::open(dir, settings)?)),
        EngineKind::Rocksdb => open_rocksdb(dir, settings),
        EngineKind::Fjall => open_fjall(dir, settings),
    }
}

#[cfg(feature = "peer-rocksdb")]
fn open_rocksdb(dir: &Path, settings: &Settings) -> Result<Box<dyn Engine>> {
    Ok(Box::new(rocksdb::Rocks::open(dir, settings)?))
}

#[cfg(not(feature = "peer-rocksdb"))]
fn open_rocksdb(_: &Path, _: &Settings) -> Result<Box<dyn Engine>> {
    anyhow::bail!("kvbench was built without RocksDB: rebuild with `--features peers`")
}

#[cfg(feature = "peer-fjall")]
fn open_fjall(dir: &Path, settings: &Settings) -> Result<Box<dyn Engine>> {
    Ok(Box::new(fjall::Fjall::open(dir, settings)?))
}

#[cfg(not(feature = "peer-fjall"))]
fn open_fjall(_: &Path, _: &Settings) -> Result<Box<dyn Engine>> {
    anyhow::bail!("kvbench was built without fjall: rebuild with `--features peers`")
}
