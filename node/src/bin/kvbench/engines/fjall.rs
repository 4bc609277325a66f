//! fjall 3 (on lsm-tree 3): one keyspace, configured to match our engine where fjall allows.

use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use anyhow::Result;
use fjall::config::{
    BlockSizePolicy, BloomConstructionPolicy, CompressionPolicy, FilterPolicy, FilterPolicyEntry,
};
use fjall::{CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::periodic::PeriodicSync;
use super::{
    Engine, ScanStats, Settings, SyncMode, BLOCK_BYTES, BLOOM_BITS_PER_KEY, WRITE_BUFFER_BYTES,
};

/// lsm-tree's leveled strategy compacts L0 once it holds this many tables.
const L0_TRIGGER_TABLES: usize = 4;

pub struct Fjall {
    db: Database,
    keyspace: Keyspace,
    sync_each_write: bool,
    syncer: Option<PeriodicSync>,
}

fn keyspace_options() -> KeyspaceCreateOptions {
    let bloom = FilterPolicyEntry::Bloom(BloomConstructionPolicy::BitsPerKey(
        BLOOM_BITS_PER_KEY as f32,
    ));
    KeyspaceCreateOptions::default()
        .max_memtable_size(WRITE_BUFFER_BYTES as u64)
        .data_block_size_policy(BlockSizePolicy::all(BLOCK_BYTES as u32))
        // fjall 3 has no zstd; LZ4 is the only block compression it offers.
        .data_block_compression_policy(CompressionPolicy::all(CompressionType::Lz4))
        .filter_policy(FilterPolicy::all(bloom))
}

impl Fjall {
    pub fn open(dir: &Path, settings: &Settings) -> Result<Self> {
        let db = Database::builder(dir)
            .cache_size(settings.cache_bytes as u64)
            .manual_journal_persist(false)
            .open()?;
        let keyspace = db.keyspace("bench", keyspace_options)?;
        let syncer = (settings.sync == SyncMode::Periodic).then(|| {
            let db = db.clone();
            PeriodicSync::spawn(move || Ok(db.persist(PersistMode::SyncData)?))
        });
        Ok(Fjall {
            db,
            keyspace,
            sync_each_write: settings.sync == SyncMode::Always,
            syncer,
        })
    }

    fn busy(&self) -> bool {
        self.db.outstanding_flushes() > 0
            || self.db.active_compactions() > 0
            || self.keyspace.l0_table_count() >= L0_TRIGGER_TABLES
    }
}

impl Engine for Fjall {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.keyspace.insert(key, value)?;
        if self.sync_each_write {
            self.db.persist(PersistMode::SyncData)?;
        }
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<usize>> {
        Ok(self.keyspace.get(key)?.map(|v| v.len()))
    }

    fn scan(&self, start: &[u8], limit: usize) -> Result<ScanStats> {
        let mut stats = ScanStats {
            entries: 0,
            bytes: 0,
        };
        for guard in self.keyspace.range(start..).take(limit) {
            let (k, v) = guard.into_inner()?;
            stats.entries += 1;
            stats.bytes += k.len() + v.len();
        }
        Ok(stats)
    }

    /// fjall has no "wait for compactions" call: poll until no flush or compaction has been
    /// running, and L0 is below the trigger, for two checks in a row.
    fn settle(&self) -> Result<()> {
        self.keyspace.rotate_memtable_and_wait()?;
        let mut quiet = 0;
        while quiet < 2 {
            sleep(Duration::from_millis(50));
            quiet = if self.busy() { 0 } else { quiet + 1 };
        }
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        if let Some(syncer) = self.syncer {
            syncer.stop()?;
        }
        self.db.persist(PersistMode::Buffer)?;
        Ok(())
    }
}
