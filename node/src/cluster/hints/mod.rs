//! The coordinator's durable hint store: writes meant for a replica that was down or did not
//! answer, kept per target node until the target is back, then replayed oldest first.
//!
//! Hints live in their own [`Db`], apart from user data, so hint churn never compacts with
//! user tables and the whole store can be inspected or wiped on its own. Nothing here does
//! network I/O or async: the replay loop asks [`HintStore::replay`] for a batch, sends it,
//! [`HintStore::ack`]s what was delivered, and sleeps as [`ReplayThrottle`] says.

mod format;
#[cfg(test)]
mod tests;
mod throttle;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::lsm::clock::hlc_from_physical_ms;
use crate::lsm::clock::HLC_LOGICAL_BITS;
use crate::lsm::{Cell, CellValue, Clock, Db, Mutation, Options, SyncPolicy, SystemClock};

pub use format::{FormatError, HintId, HintedWrite, FORMAT_V1, TARGET_BYTES_MAX};
pub use throttle::{ReplayThrottle, DEFAULT_REPLAY_KIB_PER_SEC};

/// Cassandra's `max_hint_window`: a target down longer than this is left to repair.
pub const DEFAULT_HINT_WINDOW_MS: u64 = 3 * 3600 * 1000;
pub const DEFAULT_HINT_BYTES_MAX_PER_TARGET: u64 = 1024 * 1024 * 1024;

/// Tombstones written per engine batch when deleting many hints.
const DELETE_BATCH_HINTS: usize = 1024;
/// The engine's own ceiling: a write the data path accepted must not be refused as a hint
/// for being a few envelope bytes larger. Space is bounded per target instead.
const ENGINE_VALUE_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Hints are consumed within hours, so a smaller memtable than user data's.
const ENGINE_MEMTABLE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HintError {
    #[error("hint store engine: {0}")]
    Engine(#[from] crate::lsm::Error),
    #[error("hints for {target} hold {stored_bytes} bytes; a {hint_bytes}-byte hint would exceed hint_bytes_max_per_target ({hint_bytes_max_per_target} bytes)")]
    TargetFull {
        target: String,
        stored_bytes: u64,
        hint_bytes: u64,
        hint_bytes_max_per_target: u64,
    },
    #[error("target node id is {len} bytes; it must be 1..={TARGET_BYTES_MAX}")]
    BadTarget { len: usize },
    #[error("corrupt hint for {target} ({id}): {reason}; ack it to discard it")]
    Corrupt {
        target: String,
        id: HintId,
        reason: FormatError,
    },
    #[error("corrupt hint key {key:02x?}: {reason}")]
    CorruptKey { key: Vec<u8>, reason: FormatError },
    #[error("invalid hint option {name}: {reason}")]
    InvalidOption { name: &'static str, reason: String },
}

pub type Result<T, E = HintError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct HintStoreOptions {
    /// A hint is live while `now_ms < created_ms + hint_window_ms`.
    pub hint_window_ms: u64,
    /// Stored bytes (keys and values) per target beyond which new hints are refused.
    pub hint_bytes_max_per_target: u64,
    pub sync: SyncPolicy,
    /// The engine's clock (WAL rotation by age, GC); hint ages use the `now_ms` arguments.
    pub clock: Arc<dyn Clock>,
}

impl Default for HintStoreOptions {
    fn default() -> Self {
        HintStoreOptions {
            hint_window_ms: DEFAULT_HINT_WINDOW_MS,
            hint_bytes_max_per_target: DEFAULT_HINT_BYTES_MAX_PER_TARGET,
            sync: SyncPolicy::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl HintStoreOptions {
    fn validate(&self) -> Result<()> {
        let bad = |name, reason: &str| {
            Err(HintError::InvalidOption {
                name,
                reason: reason.into(),
            })
        };
        if self.hint_window_ms == 0 {
            return bad("hint_window_ms", "must be positive");
        }
        if self.hint_bytes_max_per_target == 0 {
            return bad("hint_bytes_max_per_target", "must be positive");
        }
        Ok(())
    }

    fn engine(&self) -> Options {
        Options {
            sync: self.sync,
            clock: self.clock.clone(),
            // A hint tombstone protects nothing once compaction has met the hint it deletes
            // (the engine checks that), so it may go at once rather than after 10 days.
            gc_grace_ms: 0,
            value_bytes_max: ENGINE_VALUE_BYTES_MAX,
            memtable_bytes: ENGINE_MEMTABLE_BYTES,
            ..Options::default()
        }
    }
}

/// A stored hint, as handed to the replay loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    pub id: HintId,
    pub write: HintedWrite,
    /// Stored bytes (key and value), what counts against the per-target limit.
    pub stored_bytes: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HintSummary {
    pub count: u64,
    pub bytes: u64,
    /// Creation time of the oldest live hint; `None` when there are none.
    pub oldest_ms: Option<u64>,
}

/// What one replay call found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// The oldest live hints, oldest first.
    pub hints: Vec<Hint>,
    /// Hints past the window met (and deleted) on the way.
    pub expired: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct TargetState {
    count: u64,
    bytes: u64,
    /// While `oldest_stale` is false, the oldest live hint's creation time. While it is
    /// true (the oldest was deleted and the next is unknown), the oldest of the hints stored
    /// since, to be combined with a scan.
    oldest_ms: Option<u64>,
    oldest_stale: bool,
}

/// A live hint found by a read, with what deleting it frees.
#[derive(Clone, Copy, Debug)]
struct Found {
    id: HintId,
    stored_bytes: u64,
    /// The stored cell's engine timestamp, which its tombstone reuses.
    timestamp: u64,
}

/// See the module docs. Counts and bytes are not persisted: [`HintStore::open`] recomputes
/// them with one scan, which reads keys and value lengths only (hints are bounded by the
/// window, and a persisted counter would need its own crash consistency with the hints).
pub struct HintStore {
    db: Db,
    hint_window_ms: u64,
    hint_bytes_max_per_target: u64,
    next_seq: AtomicU64,
    targets: Mutex<BTreeMap<String, TargetState>>,
    /// Serialises deletions with the reads that choose them, so a hint is uncounted exactly
    /// once even when an ack races an expiry. Taken before `targets`, never while holding it.
    deletes: Mutex<()>,
    expired_total: AtomicU64,
}

impl HintStore {
    /// Opens or creates the store in `dir` (e.g. `<data>/hints`).
    pub fn open(dir: impl AsRef<Path>, opts: HintStoreOptions) -> Result<HintStore> {
        opts.validate()?;
        let db = Db::open(dir, opts.engine())?;
        let (targets, next_seq) = recount(&db)?;
        Ok(HintStore {
            db,
            hint_window_ms: opts.hint_window_ms,
            hint_bytes_max_per_target: opts.hint_bytes_max_per_target,
            next_seq: AtomicU64::new(next_seq),
            targets: Mutex::new(targets),
            deletes: Mutex::new(()),
            expired_total: AtomicU64::new(0),
        })
    }

    /// Stores a write for `target`. Refused, with nothing stored, if it would take the
    /// target's hints past `hint_bytes_max_per_target`.
    pub fn store(
        &self,
        target: &str,
        keyspace: &str,
        key: &[u8],
        cell: &Cell,
        now_ms: u64,
    ) -> Result<HintId> {
        check_target(target)?;
        let id = HintId {
            created_ms: now_ms,
            seq: self.next_seq.fetch_add(1, Ordering::SeqCst),
        };
        let hint_key = format::encode_key(target, id);
        let value = format::encode_value(keyspace, key, cell);
        let stored_bytes = (hint_key.len() + value.len()) as u64;
        self.reserve(target, stored_bytes)?;
        let timestamp = engine_timestamp(id);
        if let Err(e) = self.db.put(&hint_key, Cell::value(timestamp, value)) {
            let unstored = Found {
                id,
                stored_bytes,
                timestamp,
            };
            self.uncount(target, &[unstored]);
            return Err(e.into());
        }
        self.note_stored(target, id);
        Ok(id)
    }

    /// Up to `limit` of the oldest live hints for `target`, oldest first. Expired hints in
    /// front of them are deleted. A corrupt hint stops the batch with [`HintError::Corrupt`].
    pub fn replay(&self, target: &str, now_ms: u64, limit: usize) -> Result<Replayed> {
        let _deletes = self.deletes.lock();
        let mut hints = Vec::new();
        let mut expired = Vec::new();
        let mut first_live = None;
        let mut failure = None;
        for item in self.scan_target(target)? {
            let Some((found, value)) = live_entry(item?)? else {
                continue;
            };
            let Found {
                id, stored_bytes, ..
            } = found;
            if self.is_expired(id, now_ms) {
                expired.push(found);
                continue;
            }
            first_live.get_or_insert(id.created_ms);
            if hints.len() >= limit {
                break;
            }
            match format::decode_value(&value) {
                Ok(write) => hints.push(Hint {
                    id,
                    write,
                    stored_bytes,
                }),
                Err(reason) => {
                    failure = Some(corrupt(target, id, reason));
                    break;
                }
            }
        }
        self.delete_expired(target, &expired)?;
        self.refresh_oldest(target, first_live);
        match failure {
            Some(e) => Err(e),
            None => Ok(Replayed {
                hints,
                expired: expired.len() as u64,
            }),
        }
    }

    /// Deletes delivered hints. Ids already gone are ignored, so a repeated ack is harmless;
    /// returns how many were deleted.
    pub fn ack(&self, target: &str, ids: &[HintId]) -> Result<u64> {
        check_target(target)?;
        let _deletes = self.deletes.lock();
        let mut doomed = Vec::with_capacity(ids.len());
        for &id in ids {
            let key = format::encode_key(target, id);
            if let Some(cell) = self.db.get(&key)? {
                if !cell.is_tombstone() {
                    doomed.push(Found {
                        id,
                        stored_bytes: (key.len() + cell.value_len()) as u64,
                        timestamp: cell.timestamp,
                    });
                }
            }
        }
        self.delete(target, &doomed)?;
        Ok(doomed.len() as u64)
    }

    /// Deletes every hint for `target` (the node left the cluster for good); returns what was
    /// there.
    pub fn drop_target(&self, target: &str) -> Result<HintSummary> {
        let _deletes = self.deletes.lock();
        let mut doomed = Vec::new();
        for item in self.scan_target(target)? {
            if let Some((found, _)) = live_entry(item?)? {
                doomed.push(found);
            }
        }
        self.delete(target, &doomed)?;
        let dropped = HintSummary {
            count: doomed.len() as u64,
            bytes: doomed.iter().map(|f| f.stored_bytes).sum(),
            oldest_ms: doomed.first().map(|f| f.id.created_ms),
        };
        self.targets.lock().remove(target);
        Ok(dropped)
    }

    /// Deletes every expired hint of every target; returns how many.
    pub fn expire(&self, now_ms: u64) -> Result<u64> {
        let targets: Vec<String> = self.targets.lock().keys().cloned().collect();
        let mut total = 0;
        for target in targets {
            total += self.replay(&target, now_ms, 0)?.expired;
        }
        Ok(total)
    }

    /// Count, bytes and age of `target`'s hints.
    pub fn pending(&self, target: &str) -> Result<HintSummary> {
        let stale = self
            .targets
            .lock()
            .get(target)
            .is_some_and(|t| t.oldest_stale);
        if stale {
            let _deletes = self.deletes.lock();
            let first_live = self.first_live(target)?;
            self.refresh_oldest(target, first_live);
        }
        let state = self.targets.lock().get(target).copied().unwrap_or_default();
        Ok(HintSummary {
            count: state.count,
            bytes: state.bytes,
            oldest_ms: state.oldest_ms,
        })
    }

    /// Targets with hints, in id order.
    pub fn targets(&self) -> Vec<String> {
        let targets = self.targets.lock();
        targets
            .iter()
            .filter(|(_, t)| t.count > 0)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Hints expired since open, for metrics.
    pub fn expired_total(&self) -> u64 {
        self.expired_total.load(Ordering::Relaxed)
    }

    pub fn close(self) -> Result<()> {
        Ok(self.db.close()?)
    }

    /// Every entry of `target`, tombstones included, oldest first.
    fn scan_target(&self, target: &str) -> Result<crate::lsm::Scan> {
        check_target(target)?;
        let first = format::target_prefix(target);
        let last = format::target_last_key(target);
        Ok(self
            .db
            .scan(Bound::Included(&first[..]), Bound::Included(&last[..]))?)
    }

    fn is_expired(&self, id: HintId, now_ms: u64) -> bool {
        id.created_ms.saturating_add(self.hint_window_ms) <= now_ms
    }

    /// Counts a hint before it is written, so concurrent stores cannot together overshoot
    /// the limit.
    fn reserve(&self, target: &str, stored_bytes: u64) -> Result<()> {
        let mut targets = self.targets.lock();
        let state = targets.entry(target.to_owned()).or_default();
        if state.bytes.saturating_add(stored_bytes) > self.hint_bytes_max_per_target {
            return Err(HintError::TargetFull {
                target: target.to_owned(),
                stored_bytes: state.bytes,
                hint_bytes: stored_bytes,
                hint_bytes_max_per_target: self.hint_bytes_max_per_target,
            });
        }
        state.count += 1;
        state.bytes += stored_bytes;
        Ok(())
    }

    /// After the write: only now may a scan see the hint, so only now may it be the oldest.
    fn note_stored(&self, target: &str, id: HintId) {
        let mut targets = self.targets.lock();
        if let Some(state) = targets.get_mut(target) {
            state.oldest_ms = Some(
                state
                    .oldest_ms
                    .map_or(id.created_ms, |o| o.min(id.created_ms)),
            );
        }
    }

    fn uncount(&self, target: &str, gone: &[Found]) {
        let mut targets = self.targets.lock();
        let Some(state) = targets.get_mut(target) else {
            return;
        };
        state.count = state.count.saturating_sub(gone.len() as u64);
        state.bytes = state
            .bytes
            .saturating_sub(gone.iter().map(|f| f.stored_bytes).sum());
        if state.count == 0 {
            targets.remove(target);
        } else if gone
            .iter()
            .any(|f| Some(f.id.created_ms) <= state.oldest_ms)
        {
            state.oldest_ms = None;
            state.oldest_stale = true;
        }
    }

    /// Must be called holding `deletes`, with `first_live` from a scan made under it.
    fn refresh_oldest(&self, target: &str, first_live: Option<u64>) {
        let mut targets = self.targets.lock();
        if let Some(state) = targets.get_mut(target) {
            if state.oldest_stale {
                state.oldest_ms = match (first_live, state.oldest_ms) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                state.oldest_stale = false;
            }
        }
    }

    fn first_live(&self, target: &str) -> Result<Option<u64>> {
        for item in self.scan_target(target)? {
            if let Some((found, _)) = live_entry(item?)? {
                return Ok(Some(found.id.created_ms));
            }
        }
        Ok(None)
    }

    fn delete_expired(&self, target: &str, expired: &[Found]) -> Result<()> {
        self.delete(target, expired)?;
        self.expired_total
            .fetch_add(expired.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Writes tombstones for `doomed`, then uncounts them. Caller holds `deletes`.
    fn delete(&self, target: &str, doomed: &[Found]) -> Result<()> {
        for chunk in doomed.chunks(DELETE_BATCH_HINTS) {
            let batch = chunk
                .iter()
                .map(|f| Mutation {
                    key: Bytes::from(format::encode_key(target, f.id)),
                    cell: Cell::tombstone(f.timestamp),
                })
                .collect();
            self.db.write(batch)?;
            self.uncount(target, chunk);
        }
        Ok(())
    }
}

/// The engine timestamp of a hint. Its tombstone takes the timestamp read back with it (a
/// tombstone wins a tie), so even a hint rewritten by hand can be deleted; using the creation
/// time makes the tombstone purgeable (deletion time before the GC horizon) as soon as
/// compaction meets its hint.
fn engine_timestamp(id: HintId) -> u64 {
    hlc_from_physical_ms(id.created_ms.min(u64::MAX >> HLC_LOGICAL_BITS))
}

fn check_target(target: &str) -> Result<()> {
    if target.is_empty() || target.len() > TARGET_BYTES_MAX {
        return Err(HintError::BadTarget { len: target.len() });
    }
    Ok(())
}

/// A stored entry if it is a live hint, with its encoded value.
fn live_entry((key, cell): (Bytes, Cell)) -> Result<Option<(Found, Bytes)>> {
    let CellValue::Value(value) = cell.value else {
        return Ok(None);
    };
    let (_, id) = format::decode_key(&key).map_err(|reason| HintError::CorruptKey {
        key: key.to_vec(),
        reason,
    })?;
    let found = Found {
        id,
        stored_bytes: (key.len() + value.len()) as u64,
        timestamp: cell.timestamp,
    };
    Ok(Some((found, value)))
}

fn corrupt(target: &str, id: HintId, reason: FormatError) -> HintError {
    HintError::Corrupt {
        target: target.to_owned(),
        id,
        reason,
    }
}

/// Per-target counts from one scan, and a sequence above every stored one. Tombstones count
/// for the sequence too: a new hint reusing a deleted hint's key would lose to its tombstone.
fn recount(db: &Db) -> Result<(BTreeMap<String, TargetState>, u64)> {
    let mut targets = BTreeMap::<String, TargetState>::new();
    let mut next_seq = 0;
    for item in db.scan(Bound::Unbounded, Bound::Unbounded)? {
        let (key, cell) = item?;
        let (target, id) = format::decode_key(&key).map_err(|reason| HintError::CorruptKey {
            key: key.to_vec(),
            reason,
        })?;
        next_seq = next_seq.max(id.seq.saturating_add(1));
        if cell.is_tombstone() {
            continue;
        }
        let state = targets.entry(target.to_owned()).or_default();
        state.count += 1;
        state.bytes += (key.len() + cell.value_len()) as u64;
        state.oldest_ms = Some(
            state
                .oldest_ms
                .map_or(id.created_ms, |o| o.min(id.created_ms)),
        );
    }
    Ok((targets, next_seq))
}
