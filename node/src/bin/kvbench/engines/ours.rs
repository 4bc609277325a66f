//! Our engine (`node::lsm`), given the settings the peers are matched to.

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use bytes::Bytes;
use node::lsm::{Cell, Compression, Db, Options, SyncPolicy};

use super::{
    Codec, Engine, ScanStats, Settings, SyncMode, BLOCK_BYTES, BLOOM_BITS_PER_KEY, SYNC_INTERVAL,
    WRITE_BUFFER_BYTES, ZSTD_LEVEL,
};

pub struct Ours {
    db: Db,
    /// Cells are versioned; every put needs a newer timestamp than the last for its key.
    next_timestamp: AtomicU64,
}

fn options(settings: &Settings) -> Options {
    let sync = match settings.sync {
        SyncMode::None => SyncPolicy::Never,
        // Peers fsync on a timer only, so the write-count trigger is taken out of play.
        SyncMode::Periodic => SyncPolicy::Periodic {
            interval_ms: SYNC_INTERVAL.as_millis() as u64,
            writes: u64::MAX,
        },
        SyncMode::Always => SyncPolicy::Always,
    };
    Options {
        sync,
        memtable_bytes: WRITE_BUFFER_BYTES,
        block_bytes: BLOCK_BYTES,
        compression: match settings.compression {
            Codec::Zstd => Compression::Zstd { level: ZSTD_LEVEL },
            Codec::Lz4 => Compression::Lz4,
        },
        bloom_bits_per_key: BLOOM_BITS_PER_KEY,
        block_cache_bytes: settings.cache_bytes,
        // The peers get one cache of --cache-bytes and no row cache (RocksDB's is off by
        // default), so ours gets the same memory, all of it as block cache.
        row_cache_bytes: 0,
        ..Options::default()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Ours {
    pub fn open(dir: &Path, settings: &Settings) -> Result<Self> {
        Ok(Ours {
            db: Db::open(dir, options(settings))?,
            next_timestamp: AtomicU64::new(now_ms() << 16),
        })
    }
}

impl Engine for Ours {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let ts = self.next_timestamp.fetch_add(1, Ordering::Relaxed);
        self.db
            .put(key, Cell::value(ts, Bytes::copy_from_slice(value)))?;
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<usize>> {
        Ok(self.db.get_live(key)?.map(|v| v.len()))
    }

    fn scan(&self, start: &[u8], limit: usize) -> Result<ScanStats> {
        let mut stats = ScanStats {
            entries: 0,
            bytes: 0,
        };
        let now = now_ms();
        let mut scan = self.db.scan(Bound::Included(start), Bound::Unbounded)?;
        while stats.entries < limit {
            let Some(entry) = scan.next() else { break };
            let (k, cell) = entry?;
            if let Some(v) = cell.live_value(now) {
                stats.entries += 1;
                stats.bytes += k.len() + v.len();
            }
        }
        Ok(stats)
    }

    fn settle(&self) -> Result<()> {
        self.db.flush()?;
        self.db.wait_for_compactions()?;
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.db.close()?;
        Ok(())
    }
}
