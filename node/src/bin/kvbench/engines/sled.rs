//! sled 0.34: a Bw-tree over a log-structured page store; the log doubles as its WAL. It runs
//! uncompressed: its `compression` feature needs zstd-sys 1.x, which cannot link next to the
//! zstd-sys 2.x that our engine and RocksDB use.

use std::path::Path;

use anyhow::Result;

use super::{Engine, ScanStats, Settings, SyncMode, SYNC_INTERVAL};

pub struct Sled {
    db: sled::Db,
    sync_each_write: bool,
}

impl Sled {
    pub fn open(dir: &Path, settings: &Settings) -> Result<Self> {
        let flush_every_ms =
            (settings.sync == SyncMode::Periodic).then_some(SYNC_INTERVAL.as_millis() as u64);
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(settings.cache_bytes as u64)
            .flush_every_ms(flush_every_ms)
            .open()?;
        Ok(Sled {
            db,
            sync_each_write: settings.sync == SyncMode::Always,
        })
    }
}

impl Engine for Sled {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.db.insert(key, value)?;
        if self.sync_each_write {
            self.db.flush()?;
        }
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<usize>> {
        Ok(self.db.get(key)?.map(|v| v.len()))
    }

    fn scan(&self, start: &[u8], limit: usize) -> Result<ScanStats> {
        let mut stats = ScanStats {
            entries: 0,
            bytes: 0,
        };
        for entry in self.db.range(start..).take(limit) {
            let (k, v) = entry?;
            stats.entries += 1;
            stats.bytes += k.len() + v.len();
        }
        Ok(stats)
    }

    fn settle(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        // With `--sync none` nothing else would write sled's buffers out before exit.
        self.db.flush()?;
        Ok(())
    }
}
