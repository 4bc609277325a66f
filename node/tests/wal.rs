//! WAL fail points (`cargo test -p node --features failpoints --test wal`): an injected write or
//! sync error fails the appends it covers, refuses every later one (after a failed fsync the
//! file's contents are unknown), and leaves a segment that still replays.
//!
//! A separate test binary, so that configured fail points cannot hit other tests' WALs; within
//! it, `FailScenario` runs the tests one at a time.
#![cfg(feature = "failpoints")]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fail::FailScenario;
use node::lsm::wal::{replay_segment, segment_path, Wal, WalOptions};
use node::lsm::{Cell, Error, Mutation, SyncPolicy, SystemClock};

fn open(dir: &Path, sync: SyncPolicy) -> Wal {
    let opts = WalOptions {
        sync,
        preallocate_bytes: 64 << 10,
        recycle_segments_max: 0,
        segment_bytes_max: 1 << 20,
        segment_age_ms_max: 60_000,
    };
    Wal::create(dir, 1, opts, Arc::new(SystemClock)).unwrap()
}

fn batch(seq: u64) -> Vec<Mutation> {
    vec![Mutation {
        key: Bytes::from(format!("key-{seq}")),
        cell: Cell::value(seq, "v"),
    }]
}

fn replayed_seqs(dir: &Path) -> Vec<u64> {
    let mut seqs = Vec::new();
    replay_segment(&segment_path(dir, 1), true, |seq, _| {
        seqs.push(seq);
        Ok(())
    })
    .unwrap();
    seqs
}

fn assert_refused(result: node::lsm::Result<()>) {
    assert!(
        matches!(result, Err(Error::BackgroundFailed(_))),
        "{result:?}"
    );
}

#[test]
fn failed_write_fails_the_append_and_poisons_the_wal() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), SyncPolicy::Always);
    wal.append(1, &batch(1)).unwrap();
    fail::cfg("wal-append", "1*return").unwrap();
    assert!(matches!(
        wal.append(2, &batch(2)),
        Err(Error::Injected("wal-append"))
    ));
    assert_refused(wal.append(3, &batch(3)));
    assert_refused(wal.sync());
    drop(wal);
    assert_eq!(replayed_seqs(dir.path()), vec![1]);
    scenario.teardown();
}

#[test]
fn failed_fsync_fails_the_append_and_poisons_the_wal() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), SyncPolicy::Always);
    wal.append(1, &batch(1)).unwrap();
    fail::cfg("wal-fsync", "1*return").unwrap();
    assert!(matches!(
        wal.append(2, &batch(2)),
        Err(Error::Injected("wal-fsync"))
    ));
    assert_refused(wal.append(3, &batch(3)));
    assert!(wal.close().is_err());
    // Record 2 reached the page cache before its sync failed: it may replay, 3 never does.
    let seqs = replayed_seqs(dir.path());
    assert!(seqs == [1] || seqs == [1, 2], "{seqs:?}");
    scenario.teardown();
}

#[test]
fn every_member_of_a_failed_group_fails() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), SyncPolicy::Always);
    fail::cfg("wal-fsync", "return").unwrap();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let wal = &wal;
                s.spawn(move || {
                    (0..5)
                        .map(|i| wal.append(t * 10 + i, &batch(t * 10 + i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(results.len(), 40);
    assert!(
        results.iter().all(Result::is_err),
        "an append succeeded after a failed fsync"
    );
    scenario.teardown();
}

#[test]
fn failed_periodic_sync_refuses_later_appends() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let sync = SyncPolicy::Periodic {
        interval_ms: 2,
        writes: 1000,
    };
    let wal = open(dir.path(), sync);
    fail::cfg("wal-fsync", "return").unwrap();
    wal.append(1, &batch(1)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seq = 2;
    while wal.append(seq, &batch(seq)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the syncer's failure never reached the appenders"
        );
        std::thread::sleep(Duration::from_millis(1));
        seq += 1;
    }
    assert_refused(wal.append(seq + 1, &batch(seq + 1)));
    scenario.teardown();
}

#[test]
fn a_panicking_leader_fails_its_group_instead_of_hanging() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), SyncPolicy::Never);
    fail::cfg("wal-append", "1*panic").unwrap();
    let panicked =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wal.append(1, &batch(1))));
    assert!(panicked.is_err());
    assert_refused(wal.append(2, &batch(2)));
    scenario.teardown();
}
