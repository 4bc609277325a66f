//! RocksDB through the `rocksdb` crate (RocksDB 10.4), configured to match our engine's defaults.

use std::path::Path;
use std::sync::Arc;

use anyhow::{ensure, Result};
use rocksdb::{
    BlockBasedOptions, Cache, DBCompressionType, Options, WaitForCompactOptions, WriteOptions, DB,
};

use super::periodic::PeriodicSync;
use super::{
    Codec, Engine, ScanStats, Settings, SyncMode, BLOCK_BYTES, BLOOM_BITS_PER_KEY,
    WRITE_BUFFER_BYTES, ZSTD_LEVEL,
};

/// RocksDB's default zstd window (`CompressionOptions::window_bits`).
const ZSTD_WINDOW_BITS: i32 = -14;

pub struct Rocks {
    db: Arc<DB>,
    sync_each_write: bool,
    syncer: Option<PeriodicSync>,
}

thread_local! {
    // `WriteOptions` is Send but not Sync, and making one per write would add an allocation to
    // every timed put; index 1 is the synced variant.
    static WRITE_OPTS: [WriteOptions; 2] = [write_options(false), write_options(true)];
}

fn write_options(sync: bool) -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(sync);
    opts.disable_wal(false);
    opts
}

fn options(settings: &Settings) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_size(BLOCK_BYTES);
    table.set_block_cache(&Cache::new_lru_cache(settings.cache_bytes));
    table.set_bloom_filter(f64::from(BLOOM_BITS_PER_KEY), false);

    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_block_based_table_factory(&table);
    opts.set_write_buffer_size(WRITE_BUFFER_BYTES);
    opts.set_compression_type(DBCompressionType::Zstd);
    opts.set_compression_options(ZSTD_WINDOW_BITS, ZSTD_LEVEL, 0, 0);
    opts
}

impl Rocks {
    pub fn open(dir: &Path, settings: &Settings) -> Result<Self> {
        // The crate is built with its zstd feature only: LZ4 would mean compiling RocksDB again.
        ensure!(
            settings.compression == Codec::Zstd,
            "this kvbench's RocksDB has zstd only"
        );
        let db = Arc::new(DB::open(&options(settings), dir)?);
        let syncer = (settings.sync == SyncMode::Periodic).then(|| {
            let db = Arc::clone(&db);
            PeriodicSync::spawn(move || Ok(db.flush_wal(true)?))
        });
        Ok(Rocks {
            db,
            sync_each_write: settings.sync == SyncMode::Always,
            syncer,
        })
    }
}

impl Engine for Rocks {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let synced = usize::from(self.sync_each_write);
        WRITE_OPTS.with(|opts| self.db.put_opt(key, value, &opts[synced]))?;
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<usize>> {
        Ok(self.db.get_pinned(key)?.map(|v| v.len()))
    }

    fn scan(&self, start: &[u8], limit: usize) -> Result<ScanStats> {
        let mut stats = ScanStats {
            entries: 0,
            bytes: 0,
        };
        let mut iter = self.db.raw_iterator();
        iter.seek(start);
        while stats.entries < limit {
            let (Some(k), Some(v)) = (iter.key(), iter.value()) else {
                break;
            };
            stats.entries += 1;
            stats.bytes += k.len() + v.len();
            iter.next();
        }
        iter.status()?;
        Ok(stats)
    }

    fn settle(&self) -> Result<()> {
        self.db.flush()?;
        let mut opts = WaitForCompactOptions::default();
        opts.set_flush(true);
        self.db.wait_for_compact(&opts)?;
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        if let Some(syncer) = self.syncer {
            syncer.stop()?;
        }
        Ok(())
    }
}
