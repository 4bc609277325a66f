use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::lsm::ManualClock;

const WINDOW_MS: u64 = 10_000;

fn options(clock: &Arc<ManualClock>) -> HintStoreOptions {
    HintStoreOptions {
        hint_window_ms: WINDOW_MS,
        sync: SyncPolicy::Never,
        clock: clock.clone(),
        ..HintStoreOptions::default()
    }
}

fn open(dir: &Path, clock: &Arc<ManualClock>) -> HintStore {
    HintStore::open(dir, options(clock)).unwrap()
}

fn cell(i: u64) -> Cell {
    Cell::value(i << 16, format!("value-{i}"))
}

fn keys(replayed: &Replayed) -> Vec<Bytes> {
    replayed.hints.iter().map(|h| h.write.key.clone()).collect()
}

#[test]
fn store_replay_ack_round_trip_in_order_across_targets() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let store = open(dir.path(), &clock);
    // Out-of-order creation times: replay follows creation time, not arrival.
    for (i, now) in [(0, 1_500), (1, 1_200), (2, 1_200), (3, 1_900)] {
        store
            .store("n1", "ks", format!("k{i}").as_bytes(), &cell(i), now)
            .unwrap();
        store.store("n2", "other", b"x", &cell(i), now).unwrap();
    }
    let got = store.replay("n1", 2_000, 3).unwrap();
    assert_eq!(
        keys(&got),
        [&b"k1"[..], b"k2", b"k0"].map(Bytes::from_static)
    );
    assert_eq!(got.hints[0].write.cell, cell(1));
    assert_eq!(got.hints[0].write.keyspace, "ks");
    assert_eq!(got.expired, 0);

    let ids: Vec<HintId> = got.hints.iter().map(|h| h.id).collect();
    assert_eq!(store.ack("n1", &ids).unwrap(), 3);
    assert_eq!(
        store.ack("n1", &ids).unwrap(),
        0,
        "a repeated ack deletes nothing"
    );
    let rest = store.replay("n1", 2_000, 10).unwrap();
    assert_eq!(keys(&rest), [Bytes::from_static(b"k3")]);
    let n1 = store.pending("n1").unwrap();
    assert_eq!(
        (n1.count, n1.bytes, n1.oldest_ms),
        (1, rest.hints[0].stored_bytes, Some(1_900))
    );
    let n2 = store.pending("n2").unwrap();
    assert_eq!((n2.count, n2.oldest_ms), (4, Some(1_200)));
}

#[test]
fn hints_and_counts_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let store = open(dir.path(), &clock);
    let first = store.store("n1", "ks", b"a", &cell(1), 100).unwrap();
    store.store("n1", "ks", b"b", &cell(2), 100).unwrap();
    store.ack("n1", &[first]).unwrap();
    let before = store.pending("n1").unwrap();
    store.close().unwrap();

    let store = open(dir.path(), &clock);
    assert_eq!(store.pending("n1").unwrap(), before);
    // Same millisecond as the deleted hint: a reused sequence would hide this one behind
    // that hint's tombstone.
    let again = store.store("n1", "ks", b"c", &cell(3), 100).unwrap();
    assert!(again.seq > first.seq);
    let got = store.replay("n1", 200, 10).unwrap();
    assert_eq!(keys(&got), [&b"b"[..], b"c"].map(Bytes::from_static));
}

#[test]
fn a_hint_expires_exactly_at_the_window_edge() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(5_000));
    let store = open(dir.path(), &clock);
    store
        .store("n1", "ks", b"k", &cell(1), clock.now_ms())
        .unwrap();

    clock.advance(WINDOW_MS - 1);
    let live = store.replay("n1", clock.now_ms(), 10).unwrap();
    assert_eq!((live.hints.len(), live.expired), (1, 0));

    clock.advance(1);
    let gone = store.replay("n1", clock.now_ms(), 10).unwrap();
    assert_eq!((gone.hints.len(), gone.expired), (0, 1));
    assert_eq!(store.pending("n1").unwrap(), HintSummary::default());
    assert_eq!(store.expired_total(), 1);
}

#[test]
fn expire_sweeps_every_target_and_keeps_live_hints() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let store = open(dir.path(), &clock);
    for target in ["n1", "n2", "n3"] {
        store.store(target, "ks", b"old", &cell(1), 0).unwrap();
        store.store(target, "ks", b"new", &cell(2), 5_000).unwrap();
    }
    assert_eq!(store.expire(WINDOW_MS).unwrap(), 3);
    for target in ["n1", "n2", "n3"] {
        let left = store.pending(target).unwrap();
        assert_eq!((left.count, left.oldest_ms), (1, Some(5_000)), "{target}");
    }
}

#[test]
fn the_per_target_limit_refuses_with_the_numbers_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let opts = HintStoreOptions {
        hint_bytes_max_per_target: 200,
        ..options(&clock)
    };
    let store = HintStore::open(dir.path(), opts).unwrap();
    let big = Cell::value(1, vec![7u8; 60]);
    store.store("n1", "ks", b"k", &big, 1).unwrap();
    let held = store.pending("n1").unwrap();
    store.store("n1", "ks", b"k", &big, 2).unwrap_err();
    let err = store.store("n1", "ks", b"k", &big, 3).unwrap_err();
    let HintError::TargetFull {
        stored_bytes,
        hint_bytes,
        hint_bytes_max_per_target,
        ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(
        (*stored_bytes, *hint_bytes_max_per_target),
        (held.bytes, 200)
    );
    assert!(stored_bytes + hint_bytes > 200);
    let message = err.to_string();
    assert!(message.contains("n1") && message.contains("hint_bytes_max_per_target"));
    assert_eq!(store.pending("n1").unwrap(), held);
    assert_eq!(store.replay("n1", 10, 10).unwrap().hints.len(), 1);
    store.store("n2", "ks", b"k", &big, 4).unwrap();
}

#[test]
fn concurrent_stores_never_overshoot_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let opts = HintStoreOptions {
        hint_bytes_max_per_target: 10_000,
        ..options(&clock)
    };
    let store = HintStore::open(dir.path(), opts).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let store = &store;
            s.spawn(move || {
                for i in 0..100 {
                    let _ = store.store(
                        "n1",
                        "ks",
                        b"k",
                        &Cell::value(1, vec![0u8; 80]),
                        t * 100 + i,
                    );
                }
            });
        }
    });
    let held = store.pending("n1").unwrap();
    assert!(
        held.bytes <= 10_000 && held.bytes > 10_000 - 200,
        "{held:?}"
    );
    let replayed = store.replay("n1", 1, usize::MAX).unwrap();
    assert_eq!(replayed.hints.len() as u64, held.count);
    let bytes: u64 = replayed.hints.iter().map(|h| h.stored_bytes).sum();
    assert_eq!(bytes, held.bytes);
}

#[test]
fn drop_target_removes_only_that_target() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let store = open(dir.path(), &clock);
    // "n1" is a prefix of "n10": the length prefix keeps their ranges apart.
    for target in ["n1", "n10", "n2"] {
        store.store(target, "ks", b"k", &cell(1), 10).unwrap();
        store.store(target, "ks", b"l", &cell(2), 20).unwrap();
    }
    let dropped = store.drop_target("n1").unwrap();
    assert_eq!((dropped.count, dropped.oldest_ms), (2, Some(10)));
    assert_eq!(store.pending("n1").unwrap(), HintSummary::default());
    assert_eq!(store.targets(), ["n10", "n2"]);
    for target in ["n10", "n2"] {
        assert_eq!(store.replay(target, 30, 10).unwrap().hints.len(), 2);
    }
}

#[test]
fn a_corrupt_hint_is_a_clear_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let store = open(dir.path(), &clock);
    let bad = store.store("n1", "ks", b"a", &cell(1), 10).unwrap();
    store.store("n1", "ks", b"b", &cell(2), 20).unwrap();
    store.close().unwrap();
    corrupt_in_place(dir.path(), "n1", bad);

    let store = open(dir.path(), &clock);
    let err = store.replay("n1", 30, 10).unwrap_err();
    assert!(
        matches!(&err, HintError::Corrupt { target, id, reason: FormatError::Checksum { .. } }
            if target == "n1" && *id == bad),
        "{err}"
    );
    assert!(err.to_string().contains("created_ms=10"), "{err}");
    store.ack("n1", &[bad]).unwrap();
    assert_eq!(
        keys(&store.replay("n1", 30, 10).unwrap()),
        [Bytes::from_static(b"b")]
    );
}

/// Flips a byte of a stored hint through the engine directly, as disk rot past the engine's
/// own checksums would.
fn corrupt_in_place(dir: &Path, target: &str, id: HintId) {
    let db = Db::open(dir, Options::default()).unwrap();
    let key = format::encode_key(target, id);
    let stored = db.get(&key).unwrap().unwrap();
    let CellValue::Value(value) = stored.value else {
        panic!("not a value");
    };
    let mut value = value.to_vec();
    value[2] ^= 0xff;
    db.put(&key, Cell::value(stored.timestamp + 1, value))
        .unwrap();
    db.close().unwrap();
}

#[derive(Clone, Debug)]
enum Op {
    Store {
        target: usize,
        advance_ms: u64,
        value_bytes: usize,
    },
    Ack {
        target: usize,
        pick: usize,
    },
    Replay {
        target: usize,
        limit: usize,
    },
    Expire {
        advance_ms: u64,
    },
    Reopen,
}

const TARGETS: [&str; 3] = ["a", "b", "c"];

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, 0..3_000u64, 0..40usize).prop_map(|(target, advance_ms, value_bytes)| Op::Store {
            target,
            advance_ms,
            value_bytes
        }),
        3 => (0..3usize, any::<usize>()).prop_map(|(target, pick)| Op::Ack { target, pick }),
        2 => (0..3usize, 0..4usize).prop_map(|(target, limit)| Op::Replay { target, limit }),
        1 => (0..6_000u64).prop_map(|advance_ms| Op::Expire { advance_ms }),
        1 => Just(Op::Reopen),
    ]
}

/// What the store should hold: per target, hints by id with their stored size.
#[derive(Default)]
struct Model {
    now_ms: u64,
    hints: BTreeMap<&'static str, BTreeMap<HintId, (Bytes, Cell, u64)>>,
    acked: Vec<(&'static str, HintId)>,
}

impl Model {
    fn expire(&mut self, target: &str) -> u64 {
        let now_ms = self.now_ms;
        let Some(hints) = self.hints.get_mut(target) else {
            return 0;
        };
        let before = hints.len();
        hints.retain(|id, _| id.created_ms + WINDOW_MS > now_ms);
        (before - hints.len()) as u64
    }

    fn summary(&self, target: &str) -> HintSummary {
        let Some(hints) = self.hints.get(target).filter(|h| !h.is_empty()) else {
            return HintSummary::default();
        };
        HintSummary {
            count: hints.len() as u64,
            bytes: hints.values().map(|h| h.2).sum(),
            oldest_ms: hints.keys().next().map(|id| id.created_ms),
        }
    }
}

/// Applies `op` to both; returns the store, reopened if the op says so.
fn apply(
    store: HintStore,
    model: &mut Model,
    op: Op,
    dir: &Path,
    clock: &Arc<ManualClock>,
) -> HintStore {
    match op {
        Op::Store {
            target,
            advance_ms,
            value_bytes,
        } => {
            model.now_ms += advance_ms;
            let key = Bytes::from(format!("key-{}", model.now_ms));
            let cell = Cell::value(model.now_ms << 16, vec![1u8; value_bytes]);
            let id = store
                .store(TARGETS[target], "ks", &key, &cell, model.now_ms)
                .unwrap();
            let bytes = (format::encode_key(TARGETS[target], id).len()
                + format::encode_value("ks", &key, &cell).len()) as u64;
            model
                .hints
                .entry(TARGETS[target])
                .or_default()
                .insert(id, (key, cell, bytes));
        }
        Op::Ack { target, pick } => {
            let name = TARGETS[target];
            let live: Vec<HintId> = model
                .hints
                .get(name)
                .map(|h| h.keys().copied().collect())
                .unwrap_or_default();
            let id = match (live.is_empty(), model.acked.is_empty()) {
                (false, _) => live[pick % live.len()],
                (true, false) => model.acked[pick % model.acked.len()].1,
                (true, true) => return store,
            };
            let deleted = store.ack(name, &[id]).unwrap();
            let was_live = model.hints.entry(name).or_default().remove(&id).is_some();
            assert_eq!(deleted, u64::from(was_live));
            model.acked.push((name, id));
        }
        Op::Replay { target, limit } => {
            let name = TARGETS[target];
            let expired = model.expire(name);
            let got = store.replay(name, model.now_ms, limit).unwrap();
            assert_eq!(got.expired, expired);
            let want: Vec<(HintId, Bytes, Cell)> = model
                .hints
                .get(name)
                .into_iter()
                .flatten()
                .take(limit)
                .map(|(id, (k, c, _))| (*id, k.clone(), c.clone()))
                .collect();
            let seen: Vec<(HintId, Bytes, Cell)> = got
                .hints
                .into_iter()
                .map(|h| (h.id, h.write.key, h.write.cell))
                .collect();
            assert_eq!(seen, want);
        }
        Op::Expire { advance_ms } => {
            model.now_ms += advance_ms;
            let expired: u64 = TARGETS.iter().map(|t| model.expire(t)).sum();
            assert_eq!(store.expire(model.now_ms).unwrap(), expired);
        }
        Op::Reopen => {
            store.close().unwrap();
            return open(dir, clock);
        }
    }
    store
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn prop_store_ack_expire_match_a_model(ops in proptest::collection::vec(arb_op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(0));
        let mut store = open(dir.path(), &clock);
        let mut model = Model::default();
        for op in ops {
            store = apply(store, &mut model, op, dir.path(), &clock);
            for target in TARGETS {
                prop_assert_eq!(store.pending(target).unwrap(), model.summary(target), "{}", target);
            }
        }
    }
}
