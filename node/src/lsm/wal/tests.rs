//! Writer and replay together: what goes in comes back, and damage is told apart from tears.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::lsm::codec::get_u32_le;
use crate::lsm::{Cell, CellValue, Error, ManualClock, Mutation, SyncPolicy, SystemClock};

fn opts(sync: SyncPolicy) -> WalOptions {
    WalOptions {
        sync,
        preallocate_bytes: 64 << 10,
        recycle_segments_max: 0,
        segment_bytes_max: 1 << 20,
        segment_age_ms_max: 60_000,
    }
}

fn create(dir: &Path, id: u64, sync: SyncPolicy) -> Wal {
    Wal::create(dir, id, opts(sync), Arc::new(SystemClock)).unwrap()
}

fn batch(seq: u64, n: usize) -> Vec<Mutation> {
    (0..n)
        .map(|i| Mutation {
            key: Bytes::from(format!("key-{seq}-{i}")),
            cell: Cell::value(seq + i as u64, format!("value-{seq}-{i}")),
        })
        .collect()
}

type Replayed = Vec<(u64, Vec<Mutation>)>;

fn replay(path: &Path, is_last: bool) -> crate::lsm::Result<(SegmentReplay, Replayed)> {
    let mut seen = Vec::new();
    let r = replay_segment(path, is_last, |seq, m| {
        seen.push((seq, m));
        Ok(())
    })?;
    Ok((r, seen))
}

/// Writes `n` single-mutation records with seqs 1..=n and closes; returns the file.
fn segment_with(dir: &Path, sync: SyncPolicy, n: u64) -> PathBuf {
    let wal = create(dir, 1, sync);
    for seq in 1..=n {
        wal.append(seq, &batch(seq, 1)).unwrap();
    }
    wal.close().unwrap();
    segment_path(dir, 1)
}

/// Offsets where each record ends.
fn record_ends(bytes: &[u8]) -> Vec<u64> {
    let mut ends = Vec::new();
    let mut at = HEADER_BYTES;
    while let Some(len) = get_u32_le(bytes, at).filter(|&l| l != 0) {
        at += 12 + len as usize;
        ends.push(at as u64);
    }
    ends
}

fn expect_corruption(result: crate::lsm::Result<(SegmentReplay, Replayed)>, file: &Path, at: u64) {
    match result {
        Err(Error::Corruption { path, offset, .. }) => {
            assert_eq!((path.as_path(), offset), (file, at));
        }
        other => panic!("expected corruption at {at}, got {other:?}"),
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn wal_is_send_and_sync() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Wal>();
}

#[test]
fn concurrent_appenders_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let wal = create(dir.path(), 1, SyncPolicy::Never);
    let (threads, per_thread) = (8u64, 100u64);
    std::thread::scope(|s| {
        for t in 0..threads {
            let wal = &wal;
            s.spawn(move || {
                for i in 0..per_thread {
                    let seq = t * 10_000 + i * 3;
                    wal.append(seq, &batch(seq, 3)).unwrap();
                }
            });
        }
    });
    assert_eq!(wal.stats().records, threads * per_thread);
    wal.close().unwrap();
    let (r, seen) = replay(&segment_path(dir.path(), 1), true).unwrap();
    assert_eq!(r.records, threads * per_thread);
    assert_eq!(r.truncated_at, None);
    assert_eq!(
        r.last_seq,
        Some((threads - 1) * 10_000 + (per_thread - 1) * 3 + 2)
    );
    let mut seqs: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
    for (seq, m) in &seen {
        assert_eq!(m, &batch(*seq, 3));
    }
    for t in 0..threads {
        let mine: Vec<u64> = seqs.iter().copied().filter(|s| s / 10_000 == t).collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "thread {t} out of order"
        );
    }
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len() as u64, threads * per_thread);
}

#[test]
fn group_commit_coalesces_syncs_under_always() {
    let dir = tempfile::tempdir().unwrap();
    let wal = create(dir.path(), 1, SyncPolicy::Always);
    let (threads, per_thread) = (8u64, 40u64);
    std::thread::scope(|s| {
        for t in 0..threads {
            let wal = &wal;
            s.spawn(move || {
                for i in 0..per_thread {
                    wal.append(t * 1000 + i, &batch(t * 1000 + i, 1)).unwrap();
                }
            });
        }
    });
    let stats = wal.stats();
    assert_eq!(stats.records, threads * per_thread);
    assert!(stats.syncs < stats.records, "{stats:?}");
    assert!(stats.group_commits < stats.records, "{stats:?}");
    assert!(stats.syncs <= stats.group_commits, "{stats:?}");
    wal.close().unwrap();
    let (r, _) = replay(&segment_path(dir.path(), 1), true).unwrap();
    assert_eq!(r.records, threads * per_thread);
}

#[test]
fn always_syncs_each_lone_append() {
    let dir = tempfile::tempdir().unwrap();
    let wal = create(dir.path(), 1, SyncPolicy::Always);
    for seq in 1..=3 {
        wal.append(seq, &batch(seq, 2)).unwrap();
    }
    let stats = wal.stats();
    assert_eq!((stats.records, stats.syncs, stats.group_commits), (3, 3, 3));
}

#[test]
fn periodic_syncs_after_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let sync = SyncPolicy::Periodic {
        interval_ms: 5,
        writes: 1_000_000,
    };
    let wal = create(dir.path(), 1, sync);
    wal.append(1, &batch(1, 1)).unwrap();
    wait_for("the interval sync", || wal.stats().syncs >= 1);
}

#[test]
fn periodic_syncs_once_enough_writes_are_unsynced() {
    let dir = tempfile::tempdir().unwrap();
    let sync = SyncPolicy::Periodic {
        interval_ms: 3_600_000,
        writes: 4,
    };
    let wal = create(dir.path(), 1, sync);
    for seq in 1..=4 {
        wal.append(seq, &batch(seq, 1)).unwrap();
    }
    wait_for("the write-count sync", || wal.stats().syncs >= 1);
    wal.close().unwrap();
}

#[test]
fn never_policy_leaves_syncing_to_close() {
    let dir = tempfile::tempdir().unwrap();
    let wal = create(dir.path(), 1, SyncPolicy::Never);
    for seq in 1..=10 {
        wal.append(seq, &batch(seq, 1)).unwrap();
    }
    assert_eq!(wal.stats().syncs, 0);
    wal.sync().unwrap();
    assert_eq!(wal.stats().syncs, 1);
    wal.sync().unwrap();
    assert_eq!(wal.stats().syncs, 1, "nothing new to sync");
}

#[test]
fn empty_batch_writes_nothing_and_bad_batch_does_not_poison() {
    let dir = tempfile::tempdir().unwrap();
    let wal = create(dir.path(), 1, SyncPolicy::Never);
    wal.append(1, &[]).unwrap();
    let huge = Mutation {
        key: Bytes::from(vec![b'k'; KEY_BYTES_MAX + 1]),
        cell: Cell::tombstone(1),
    };
    assert!(matches!(
        wal.append(1, &[huge]),
        Err(Error::KeyTooLarge { .. })
    ));
    wal.append(1, &batch(1, 1)).unwrap();
    assert_eq!(wal.stats().records, 1);
}

#[test]
fn zeros_after_the_last_record_are_a_clean_end() {
    let dir = tempfile::tempdir().unwrap();
    let wal = create(dir.path(), 1, SyncPolicy::Always);
    for seq in 1..=3 {
        wal.append(seq, &batch(seq, 1)).unwrap();
    }
    let path = segment_path(dir.path(), 1);
    let len_before = std::fs::metadata(&path).unwrap().len();
    assert_eq!(len_before, 64 << 10, "preallocated");
    for is_last in [true, false] {
        let (r, _) = replay(&path, is_last).unwrap();
        assert_eq!((r.records, r.truncated_at, r.last_seq), (3, None, Some(3)));
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len_before);
    drop(wal);
}

#[test]
fn torn_tail_at_every_offset_keeps_complete_records() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(segment_with(dir.path(), SyncPolicy::Always, 6)).unwrap();
    let ends = record_ends(&bytes);
    assert_eq!(ends.len(), 6);
    let torn = tempfile::tempdir().unwrap();
    let path = segment_path(torn.path(), 1);
    for cut in ends[3]..=ends[5] {
        for zeros in [0, 4096] {
            let mut file = bytes[..cut as usize].to_vec();
            file.resize(file.len() + zeros, 0);
            std::fs::write(&path, &file).unwrap();
            let kept = ends.iter().filter(|&&e| e <= cut).count() as u64;
            let boundary = *ends.iter().rfind(|&&e| e <= cut).unwrap();
            let (r, seen) = replay(&path, true).unwrap();
            assert_eq!(r.records, kept, "cut {cut}");
            assert_eq!(seen.last().unwrap().0, kept);
            let cut_expected = (boundary != cut).then_some(boundary);
            assert_eq!(r.truncated_at, cut_expected, "cut {cut} zeros {zeros}");
            if cut_expected.is_some() {
                assert_eq!(std::fs::metadata(&path).unwrap().len(), boundary);
                let (again, _) = replay(&path, false).unwrap();
                assert_eq!((again.records, again.truncated_at), (kept, None));
            }
        }
    }
}

#[test]
fn records_larger_than_the_read_window_replay_and_tear() {
    let dir = tempfile::tempdir().unwrap();
    let wal = create(dir.path(), 1, SyncPolicy::Never);
    let sizes = [300 << 10, 700 << 10, 5, 2 << 20, 100 << 10, 3 << 20];
    let batches: Vec<Vec<Mutation>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            vec![Mutation {
                key: Bytes::from(format!("big-{i}")),
                cell: Cell::value(i as u64, vec![i as u8 + 1; n]),
            }]
        })
        .collect();
    for (seq, b) in batches.iter().enumerate() {
        wal.append(seq as u64, b).unwrap();
    }
    wal.close().unwrap();
    let path = segment_path(dir.path(), 1);
    let (r, seen) = replay(&path, true).unwrap();
    assert_eq!(r.records, sizes.len() as u64);
    assert!(seen.iter().map(|(_, m)| m).eq(batches.iter()));
    let bytes = std::fs::read(&path).unwrap();
    let ends = record_ends(&bytes);
    let cut = ends[4] + (1 << 20) + 17;
    std::fs::write(&path, &bytes[..cut as usize]).unwrap();
    let (torn, _) = replay(&path, true).unwrap();
    assert_eq!((torn.records, torn.truncated_at), (5, Some(ends[4])));
}

#[test]
fn garbage_tail_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = segment_with(dir.path(), SyncPolicy::Always, 3);
    let clean_len = std::fs::metadata(&path).unwrap().len();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend((0..1000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    std::fs::write(&path, &bytes).unwrap();
    let (r, _) = replay(&path, true).unwrap();
    assert_eq!((r.records, r.truncated_at), (3, Some(clean_len)));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), clean_len);
}

#[test]
fn damage_in_a_synced_middle_record_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let path = segment_with(dir.path(), SyncPolicy::Always, 5);
    let clean = std::fs::read(&path).unwrap();
    let ends = record_ends(&clean);
    let (start, end) = (ends[1], ends[2]);
    for at in [start, start + 4, start + 12, start + 20, end - 1] {
        let mut bytes = clean.clone();
        bytes[at as usize] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        expect_corruption(replay(&path, true), &path, start);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "a corrupt segment is left as it is"
        );
    }
}

#[test]
fn damage_in_unsynced_records_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = segment_with(dir.path(), SyncPolicy::Never, 5);
    let mut bytes = std::fs::read(&path).unwrap();
    let ends = record_ends(&bytes);
    // A page of the middle record never reached the disk, later ones did: the OS may write
    // unsynced pages back in any order.
    bytes[ends[1] as usize..ends[2] as usize].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let (r, _) = replay(&path, true).unwrap();
    assert_eq!((r.records, r.truncated_at), (2, Some(ends[1])));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), ends[1]);
}

#[test]
fn zeroed_synced_record_before_valid_ones_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let path = segment_with(dir.path(), SyncPolicy::Always, 5);
    let mut bytes = std::fs::read(&path).unwrap();
    let ends = record_ends(&bytes);
    bytes[ends[1] as usize..ends[2] as usize].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    expect_corruption(replay(&path, true), &path, ends[1]);
}

#[test]
fn any_damage_in_a_non_last_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let path = segment_with(dir.path(), SyncPolicy::Never, 4);
    let clean = std::fs::read(&path).unwrap();
    let ends = record_ends(&clean);
    let mut flipped = clean.clone();
    *flipped.last_mut().unwrap() ^= 1;
    std::fs::write(&path, &flipped).unwrap();
    expect_corruption(replay(&path, false), &path, ends[2]);
    std::fs::write(&path, &clean[..clean.len() - 1]).unwrap();
    expect_corruption(replay(&path, false), &path, ends[2]);
}

#[test]
fn header_damage_is_an_error_even_in_the_last_segment() {
    let dir = tempfile::tempdir().unwrap();
    let path = segment_with(dir.path(), SyncPolicy::Always, 2);
    let clean = std::fs::read(&path).unwrap();
    for at in [0, 9, 17, 25, 33] {
        let mut bytes = clean.clone();
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        for is_last in [true, false] {
            expect_corruption(replay(&path, is_last), &path, 0);
        }
    }
    let renamed = segment_path(dir.path(), 7);
    std::fs::write(&renamed, &clean).unwrap();
    expect_corruption(replay(&renamed, true), &renamed, 16);
}

#[test]
fn interrupted_creation_reads_as_an_empty_segment() {
    let dir = tempfile::tempdir().unwrap();
    let path = segment_path(dir.path(), 3);
    std::fs::write(&path, vec![0; 4096]).unwrap();
    expect_corruption(replay(&path, false), &path, 0);
    let (r, seen) = replay(&path, true).unwrap();
    assert_eq!((r.records, r.truncated_at), (0, Some(0)));
    assert!(seen.is_empty());
    let (again, _) = replay(&path, false).unwrap();
    assert_eq!((again.records, again.truncated_at), (0, None));
}

#[test]
fn visitor_error_stops_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = segment_with(dir.path(), SyncPolicy::Never, 3);
    let mut calls = 0;
    let result = replay_segment(&path, true, |_, _| {
        calls += 1;
        Err(Error::Closed)
    });
    assert!(matches!(result, Err(Error::Closed)));
    assert_eq!(calls, 1);
}

#[test]
fn rotates_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        segment_bytes_max: 4096,
        ..opts(SyncPolicy::Never)
    };
    let wal = Wal::create(dir.path(), 1, options, Arc::new(SystemClock)).unwrap();
    let mut seq = 0;
    while !wal.needs_rotation() {
        seq += 1;
        wal.append(seq, &batch(seq, 4)).unwrap();
    }
    wal.rotate(2).unwrap();
    assert_eq!(wal.segment_id(), 2);
    assert!(!wal.needs_rotation());
    wal.append(seq + 4, &batch(seq + 4, 1)).unwrap();
    wal.close().unwrap();
    assert_eq!(list_segments(dir.path()).unwrap(), vec![1, 2]);
    let old = segment_path(dir.path(), 1);
    let old_len = std::fs::metadata(&old).unwrap().len();
    assert!(
        (4096..8192).contains(&old_len),
        "cut to its records: {old_len}"
    );
    let (r1, _) = replay(&old, false).unwrap();
    let (r2, _) = replay(&segment_path(dir.path(), 2), true).unwrap();
    assert_eq!((r1.records, r2.records), (seq, 1));
}

#[test]
fn rotates_by_age_of_the_oldest_record() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let wal = Wal::create(dir.path(), 1, opts(SyncPolicy::Never), clock.clone()).unwrap();
    clock.advance(120_000);
    assert!(!wal.needs_rotation(), "an empty segment never asks");
    wal.append(1, &batch(1, 1)).unwrap();
    clock.advance(59_999);
    assert!(!wal.needs_rotation());
    clock.advance(1);
    assert!(wal.needs_rotation());
    wal.rotate(2).unwrap();
    assert!(!wal.needs_rotation());
}

#[test]
fn segment_files_are_named_listed_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        segment_path(dir.path(), 42).file_name().unwrap(),
        "wal-000000000042.log"
    );
    for id in [10, 2, 33] {
        create(dir.path(), id, SyncPolicy::Never).close().unwrap();
    }
    for other in ["wal-.log", "wal-12.log.tmp", "wal-x1.log", "MANIFEST"] {
        std::fs::write(dir.path().join(other), b"").unwrap();
    }
    assert_eq!(list_segments(dir.path()).unwrap(), vec![2, 10, 33]);
    delete_segment(dir.path(), 10).unwrap();
    assert_eq!(list_segments(dir.path()).unwrap(), vec![2, 33]);
    assert!(matches!(
        delete_segment(dir.path(), 10),
        Err(Error::Io { .. })
    ));
}

fn recycling(max: usize) -> WalOptions {
    WalOptions {
        recycle_segments_max: max,
        ..opts(SyncPolicy::Always)
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// A WAL on segment 2 whose segment 1, holding records 1..=`n`, waits for reuse.
fn wal_with_a_retired_segment(dir: &Path, n: u64) -> Wal {
    let wal = Wal::create(dir, 1, recycling(2), Arc::new(SystemClock)).unwrap();
    for seq in 1..=n {
        wal.append(seq, &batch(seq, 4)).unwrap();
    }
    wal.rotate(2).unwrap();
    retire_segment(dir, 1, 2).unwrap();
    assert_eq!(list_segments(dir).unwrap(), vec![2]);
    wal
}

#[test]
fn a_recycled_segment_after_a_crash_replays_only_its_own_records() {
    let dir = tempfile::tempdir().unwrap();
    let wal = wal_with_a_retired_segment(dir.path(), 200);
    let retired = list_recyclable(dir.path()).unwrap();
    let retired_len = file_len(&retired[0]);
    wal.rotate(3).unwrap();
    assert!(list_recyclable(dir.path()).unwrap().is_empty());
    let path = segment_path(dir.path(), 3);
    assert_eq!(file_len(&path), retired_len, "the file keeps its length");
    for seq in 1000..1010 {
        wal.append(seq, &batch(seq, 1)).unwrap();
    }
    // Dropped without a close, as at a crash: the old records stay behind the new ones.
    drop(wal);
    let (r, seen) = replay(&path, true).unwrap();
    assert_eq!(r.records, 10);
    let seqs: Vec<u64> = seen.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1000..1010).collect::<Vec<_>>());
    assert_eq!(seen[0].1, batch(1000, 1));
    let cut = r.truncated_at.expect("the old records are cut off");
    assert_eq!(file_len(&path), cut);
    let (again, _) = replay(&path, false).unwrap();
    assert_eq!((again.records, again.truncated_at), (10, None));
}

#[test]
fn a_rotated_recycled_segment_ends_at_its_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let wal = wal_with_a_retired_segment(dir.path(), 200);
    wal.rotate(3).unwrap();
    wal.append(7, &batch(7, 1)).unwrap();
    wal.rotate(4).unwrap();
    let (r, seen) = replay(&segment_path(dir.path(), 3), false).unwrap();
    assert_eq!((r.records, r.truncated_at), (1, None));
    assert_eq!(seen[0], (7, batch(7, 1)));
    wal.close().unwrap();
}

#[test]
fn recycling_never_replaces_an_existing_segment() {
    let dir = tempfile::tempdir().unwrap();
    let wal = wal_with_a_retired_segment(dir.path(), 3);
    assert!(matches!(wal.rotate(2), Err(Error::Io { .. })));
    assert_eq!(wal.segment_id(), 2);
    assert_eq!(list_recyclable(dir.path()).unwrap().len(), 1);
    wal.close().unwrap();
}

#[test]
fn retired_segments_are_kept_up_to_the_limit_then_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::create(dir.path(), 1, recycling(2), Arc::new(SystemClock)).unwrap();
    for id in 2..=4 {
        wal.append(id, &batch(id, 1)).unwrap();
        wal.rotate(id).unwrap();
    }
    for id in 1..=3 {
        retire_segment(dir.path(), id, 2).unwrap();
    }
    let names = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names(dir.path()),
        [
            "recycle-000000000001.wal",
            "recycle-000000000002.wal",
            "wal-000000000004.log"
        ]
    );
    trim_recyclable(dir.path(), 1).unwrap();
    assert_eq!(
        names(dir.path()),
        ["recycle-000000000002.wal", "wal-000000000004.log"]
    );
    wal.rotate(5).unwrap();
    retire_segment(dir.path(), 4, 0).unwrap();
    assert_eq!(names(dir.path()), ["wal-000000000005.log"]);
    wal.close().unwrap();
}

#[test]
fn create_refuses_an_existing_segment_and_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    let wal = create(dir.path(), 5, SyncPolicy::Never);
    let again = Wal::create(
        dir.path(),
        5,
        opts(SyncPolicy::Never),
        Arc::new(SystemClock),
    );
    assert!(matches!(again, Err(Error::Io { .. })));
    assert!(matches!(wal.rotate(5), Err(Error::Io { .. })));
    assert_eq!(
        wal.segment_id(),
        5,
        "a failed rotation keeps the old segment"
    );
    wal.append(1, &batch(1, 1)).unwrap();
    let bad = WalOptions {
        sync: SyncPolicy::Periodic {
            interval_ms: 0,
            writes: 1,
        },
        ..opts(SyncPolicy::Never)
    };
    let refused = Wal::create(dir.path(), 6, bad, Arc::new(SystemClock));
    assert!(matches!(refused, Err(Error::InvalidOption { .. })));
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    (
        proptest::collection::vec(any::<u8>(), 0..24),
        any::<u64>(),
        proptest::option::of(any::<u64>()),
        proptest::collection::vec(any::<u8>(), 0..6),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
    )
        .prop_map(|(key, ts, exp, causal, value)| Mutation {
            key: key.into(),
            cell: Cell {
                timestamp: ts,
                expires_at_ms: exp,
                causal: causal.into(),
                value: value.map_or(CellValue::Tombstone, |v| CellValue::Value(v.into())),
            },
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn prop_random_batches_round_trip(
        batches in proptest::collection::vec(
            (any::<u64>(), proptest::collection::vec(arb_mutation(), 1..5)), 1..20),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let wal = create(dir.path(), 1, SyncPolicy::Never);
        for (seq, muts) in &batches {
            wal.append(*seq, muts).unwrap();
        }
        wal.close().unwrap();
        let (r, seen) = replay(&segment_path(dir.path(), 1), true).unwrap();
        prop_assert_eq!(r.records, batches.len() as u64);
        prop_assert_eq!(seen, batches.clone());
    }

    #[test]
    fn prop_replay_never_panics_on_garbage(
        garbage in proptest::collection::vec(any::<u8>(), 0..300),
        keep in 0usize..400,
        is_last in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_with(dir.path(), SyncPolicy::Never, 3);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(keep.max(HEADER_BYTES));
        bytes.extend_from_slice(&garbage);
        std::fs::write(&path, &bytes).unwrap();
        let _ = replay(&path, is_last);
    }
}

/// Synced appends per second with and without preallocation, and what group commit does with
/// concurrent writers. Figures only, no assertions: `cargo test -p node --lib -- --ignored
/// wal_sync_throughput --nocapture` (set `WAL_BENCH_DIR` to measure another disk).
#[test]
#[ignore]
fn wal_sync_throughput() {
    let base = std::env::var_os("WAL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    // Interleaved so that both settings see the same disk weather (it varies several-fold).
    let rounds = 15;
    let settings = [0, 64 << 20];
    let mut rates = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (rate, &preallocate_bytes) in rates.iter_mut().zip(&settings) {
            rate.push(appends_per_sec(&base, preallocate_bytes, 1, 500));
        }
    }
    for (mut rate, preallocate_bytes) in rates.into_iter().zip(settings) {
        rate.sort_by(f64::total_cmp);
        println!(
            "preallocate {preallocate_bytes:>8} B, 1 writer, Always: median {:.0}, best {:.0} synced appends/s",
            rate[rounds / 2],
            rate[rounds - 1]
        );
    }
    for writers in [2, 4, 8, 16, 32] {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let options = WalOptions {
            preallocate_bytes: 64 << 20,
            ..opts(SyncPolicy::Always)
        };
        let wal = Wal::create(dir.path(), 1, options, Arc::new(SystemClock)).unwrap();
        let per_writer = 8000 / writers;
        let started = Instant::now();
        run_writers(&wal, writers, per_writer);
        let secs = started.elapsed().as_secs_f64();
        let s = wal.stats();
        println!(
            "{writers:>2} writers, Always: {:.0} appends/s, {:.0} fdatasync/s, {:.1} records per group",
            s.records as f64 / secs,
            s.syncs as f64 / secs,
            s.records as f64 / s.group_commits as f64
        );
    }
}

fn appends_per_sec(base: &Path, preallocate_bytes: u64, writers: u64, per_writer: u64) -> f64 {
    let dir = tempfile::tempdir_in(base).unwrap();
    let options = WalOptions {
        preallocate_bytes,
        segment_bytes_max: 1 << 30,
        ..opts(SyncPolicy::Always)
    };
    let wal = Wal::create(dir.path(), 1, options, Arc::new(SystemClock)).unwrap();
    let started = Instant::now();
    run_writers(&wal, writers, per_writer);
    (writers * per_writer) as f64 / started.elapsed().as_secs_f64()
}

fn run_writers(wal: &Wal, writers: u64, per_writer: u64) {
    let value = Bytes::from(vec![7u8; 100]);
    std::thread::scope(|s| {
        for t in 0..writers {
            let value = value.clone();
            s.spawn(move || {
                for i in 0..per_writer {
                    let m = Mutation {
                        key: Bytes::from(format!("bench-{t}-{i}")),
                        cell: Cell::value(i, value.clone()),
                    };
                    wal.append(t * per_writer + i, &[m]).unwrap();
                }
            });
        }
    });
}

/// Replay speed over a large segment: `cargo test -p node --lib -- --ignored
/// wal_replay_throughput --nocapture`.
#[test]
#[ignore]
fn wal_replay_throughput() {
    let base = std::env::var_os("WAL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = tempfile::tempdir_in(base).unwrap();
    let wal = create(dir.path(), 1, SyncPolicy::Never);
    let records = 200_000u64;
    run_writers(&wal, 1, records);
    wal.close().unwrap();
    let path = segment_path(dir.path(), 1);
    let bytes = std::fs::metadata(&path).unwrap().len();
    let started = Instant::now();
    let (r, _) = replay(&path, true).unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(r.records, records);
    println!(
        "replayed {records} records ({:.1} MiB) in {:.2} s: {:.0} records/s, {:.0} MiB/s",
        bytes as f64 / f64::from(1 << 20),
        secs,
        records as f64 / secs,
        bytes as f64 / f64::from(1 << 20) / secs
    );
}

#[test]
fn trim_cuts_the_preallocation_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let wal = create(dir.path(), 1, SyncPolicy::Never);
    let path = segment_path(dir.path(), 1);
    wal.append(1, &batch(1, 2)).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 << 10);
    wal.trim().unwrap();
    let trimmed = std::fs::metadata(&path).unwrap().len();
    assert!(trimmed < 1024, "{trimmed}");
    wal.append(3, &batch(3, 1)).unwrap();
    drop(wal);
    let (r, seen) = replay(&path, true).unwrap();
    assert_eq!(
        seen.iter().map(|(s, m)| (*s, m.len())).collect::<Vec<_>>(),
        vec![(1, 2), (3, 1)]
    );
    assert_eq!(r.truncated_at, None);
}
