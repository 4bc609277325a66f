//! Which ranges of which keyspaces were last repaired when, kept in `<data_dir>/repair_history`
//! (a [`statefile`](super::super::statefile) with magic `KVRH`) so that background repair
//! resumes with the ranges repaired longest ago after a restart, and so that the tombstone GC
//! horizon survives restarts.
//!
//! Payload (JSON): `{"entries": [{"keyspace", "schema_version", "start", "end",
//! "started_at_ms", "completed_at_ms"}]}`, tokens as decimal strings. Only complete repairs
//! (every replica of a ring range, in every DC) are recorded, by every replica of the range.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use topology::{NodeIdx, Ring};

use super::super::statefile::{self, StateFileError};
use crate::cluster::Schema;
use crate::lsm::clock::hlc_physical_ms;

const MAGIC: [u8; 4] = *b"KVRH";
const FILE: &str = "repair_history";

/// A ring range of one keyspace version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RangeKey {
    pub keyspace: String,
    pub schema_version: u64,
    pub start: u128,
    pub end: u128,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub started_at_ms: u64,
    pub completed_at_ms: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct FileBody {
    entries: Vec<FileEntry>,
}

#[derive(Serialize, Deserialize)]
struct FileEntry {
    keyspace: String,
    schema_version: u64,
    start: String,
    end: String,
    started_at_ms: u64,
    completed_at_ms: u64,
}

pub struct History {
    path: PathBuf,
    records: Mutex<BTreeMap<RangeKey, Record>>,
    /// Serialises file writes, so an older snapshot never replaces a newer one.
    write: Mutex<()>,
}

/// One keyspace's history over the ranges one node replicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyspaceSummary {
    pub ranges: u32,
    pub repaired: u32,
    pub overdue: u32,
    /// The oldest last-repair start among repaired ranges; 0 when none is.
    pub oldest_repair_ms: u64,
    /// The oldest last-repair start over every range, 0 when some range was never repaired
    /// (or `now` when the node replicates none).
    pub min_started_ms: u64,
}

impl History {
    /// Loads the history of the node whose data is in `data_dir`; empty when there is none.
    pub fn open(data_dir: &Path) -> Result<History, StateFileError> {
        let path = data_dir.join(FILE);
        let body: FileBody = statefile::read(&path, MAGIC)?.unwrap_or_default();
        let mut records = BTreeMap::new();
        for e in body.entries {
            // A token that does not parse is damage the checksum missed; forget that entry,
            // which only makes the node repair the range again.
            let (Ok(start), Ok(end)) = (e.start.parse(), e.end.parse()) else {
                continue;
            };
            records.insert(
                RangeKey {
                    keyspace: e.keyspace,
                    schema_version: e.schema_version,
                    start,
                    end,
                },
                Record {
                    started_at_ms: e.started_at_ms,
                    completed_at_ms: e.completed_at_ms,
                },
            );
        }
        Ok(History {
            path,
            records: Mutex::new(records),
            write: Mutex::new(()),
        })
    }

    pub fn get(&self, key: &RangeKey) -> Option<Record> {
        self.records.lock().get(key).copied()
    }

    /// Records a complete repair and persists the history, forgetting keyspaces no longer
    /// live and ranges no longer in the ring, so the file stays as small as the ring.
    /// Blocking.
    pub fn record(
        &self,
        key: RangeKey,
        record: Record,
        schema: &Schema,
        ring: Option<&Ring>,
    ) -> Result<(), StateFileError> {
        let _write = self.write.lock();
        let body = {
            let mut records = self.records.lock();
            let newer = records
                .get(&key)
                .is_none_or(|r| r.started_at_ms <= record.started_at_ms);
            if newer {
                records.insert(key, record);
            }
            records.retain(|k, _| {
                let live = schema
                    .get(&k.keyspace)
                    .is_some_and(|d| !d.dropped && d.version == k.schema_version);
                live && ring.is_none_or(|r| is_ring_range(r, k.start, k.end))
            });
            FileBody {
                entries: (records.iter())
                    .map(|(k, r)| FileEntry {
                        keyspace: k.keyspace.clone(),
                        schema_version: k.schema_version,
                        start: k.start.to_string(),
                        end: k.end.to_string(),
                        started_at_ms: r.started_at_ms,
                        completed_at_ms: r.completed_at_ms,
                    })
                    .collect(),
            }
        };
        statefile::write(&self.path, MAGIC, &body)
    }

    /// The history of `keyspace` over the ring ranges `me` replicates.
    pub fn summary(
        &self,
        ring: &Ring,
        keyspace: &str,
        schema_version: u64,
        me: NodeIdx,
        now_ms: u64,
        grace_ms: u64,
    ) -> KeyspaceSummary {
        let Ok(placement) = ring.placement(keyspace) else {
            return KeyspaceSummary::default();
        };
        let created_ms = hlc_physical_ms(schema_version);
        let records = self.records.lock();
        let mut s = KeyspaceSummary {
            min_started_ms: now_ms,
            ..KeyspaceSummary::default()
        };
        for i in 0..ring.tokens().len() {
            if !placement.replicas_of_range(i).indices().contains(&me) {
                continue;
            }
            let range = ring.range(i);
            let key = RangeKey {
                keyspace: keyspace.to_owned(),
                schema_version,
                start: range.start.0,
                end: range.end.0,
            };
            s.ranges += 1;
            let started = records.get(&key).map(|r| r.started_at_ms);
            if let Some(t) = started {
                s.repaired += 1;
                s.oldest_repair_ms = match s.oldest_repair_ms {
                    0 => t,
                    o => o.min(t),
                };
            }
            s.min_started_ms = s.min_started_ms.min(started.unwrap_or(0));
            if started.unwrap_or(0).max(created_ms) < now_ms.saturating_sub(grace_ms) {
                s.overdue += 1;
            }
        }
        s
    }
}

fn is_ring_range(ring: &Ring, start: u128, end: u128) -> bool {
    let tokens = ring.tokens();
    match tokens.binary_search_by(|t| t.0.cmp(&end)) {
        Ok(i) => ring.range(i).start.0 == start,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reopen_and_dropped_keyspaces_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        let mut schema = Schema::default();
        schema
            .create("a", [("dc1".to_owned(), 1)].into(), 5)
            .unwrap();
        let key = |ks: &str, v| RangeKey {
            keyspace: ks.into(),
            schema_version: v,
            start: 1,
            end: u128::MAX,
        };
        let rec = Record {
            started_at_ms: 10,
            completed_at_ms: 20,
        };
        h.record(key("a", 5), rec, &schema, None).unwrap();
        h.record(key("gone", 1), rec, &schema, None).unwrap();
        let older = Record {
            started_at_ms: 5,
            completed_at_ms: 6,
        };
        h.record(key("a", 5), older, &schema, None).unwrap();
        let h = History::open(dir.path()).unwrap();
        assert_eq!(h.get(&key("a", 5)), Some(rec));
        assert_eq!(h.get(&key("gone", 1)), None);
    }
}
