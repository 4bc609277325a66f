//! Faults injected at the engine's fail points (run with `--features failpoints`). Each test
//! arms points for the whole process, so they run one at a time under `FailScenario`.
#![cfg(feature = "failpoints")]

use std::time::{Duration, Instant};

use bytes::Bytes;
use node::lsm::{Cell, Db, Error, Mutation, Options, SyncPolicy, TryWrite};

fn opts() -> Options {
    Options {
        memtable_bytes: 64 * 1024,
        immutable_memtables_max: 1,
        sync: SyncPolicy::Never,
        wal_preallocate_bytes: 1 << 20,
        ..Options::default()
    }
}

fn fill(db: &Db, from: u32, to: u32) {
    for i in from..to {
        db.put(
            &i.to_be_bytes(),
            Cell::value(i as u64 + 1, vec![i as u8; 200]),
        )
        .unwrap();
    }
}

fn assert_all_present(db: &Db, to: u32) {
    for i in 0..to {
        let got = db.get_live(&i.to_be_bytes()).unwrap();
        assert_eq!(
            got.as_deref(),
            Some(&vec![i as u8; 200][..]),
            "key {i} lost"
        );
    }
}

#[test]
fn writes_stall_instead_of_growing_memory_when_flushes_fall_behind() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    fail::cfg("flush-build", "sleep(100)").unwrap();
    fill(&db, 0, 1500);
    let stats = db.stats();
    assert!(stats.write_stalls > 0, "{stats:?}");
    assert!(stats.immutable_memtables <= 1);
    fail::remove("flush-build");
    assert_all_present(&db, 1500);
    scenario.teardown();
}

fn try_put(db: &Db, i: u32) -> TryWrite {
    let cell = Cell::value(i as u64 + 1, vec![i as u8; 200]);
    let key = Bytes::copy_from_slice(&i.to_be_bytes());
    db.try_write(vec![Mutation { key, cell }]).unwrap()
}

/// The flush worker switches memtables, not the writer that fills one: while the switch
/// creates its WAL segment, writes go on inline into the full memtable, up to twice its size,
/// then wait for the switch.
#[test]
fn writers_go_on_while_a_switch_prepares_its_wal_segment_up_to_twice_the_memtable() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            immutable_memtables_max: 2,
            ..opts()
        },
    )
    .unwrap();
    fail::cfg("wal-prepare", "pause").unwrap();
    let memtable_bytes = opts().memtable_bytes as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut next = 0;
    while matches!(try_put(&db, next), TryWrite::Written) {
        next += 1;
        assert!(Instant::now() < deadline, "no bound on the memtable");
    }
    let stats = db.stats();
    assert!(stats.memtable_bytes >= 2 * memtable_bytes, "{stats:?}");
    assert!(
        stats.memtable_bytes <= 2 * memtable_bytes + 1024,
        "{stats:?}"
    );
    assert_eq!(
        stats.immutable_memtables + stats.flushes as usize,
        0,
        "{stats:?}"
    );
    fail::remove("wal-prepare");
    // A blocking write waits until the switch makes room.
    fill(&db, next, next + 1);
    next += 1;
    assert_all_present(&db, next);
    db.close().unwrap();
    assert_all_present(&Db::open(dir.path(), opts()).unwrap(), next);
    scenario.teardown();
}

#[test]
fn a_failed_manifest_edit_stops_writes_and_loses_nothing() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), opts()).unwrap();
        fill(&db, 0, 100);
        fail::cfg("manifest-edit", "return").unwrap();
        let err = db.flush().unwrap_err();
        assert!(matches!(err, Error::Injected("manifest-edit")), "{err}");
        fail::remove("manifest-edit");
        db.close().unwrap();
    }
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_all_present(&db, 100);
    scenario.teardown();
}

#[test]
fn a_failed_sstable_rename_fails_the_flush_and_loses_nothing() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), opts()).unwrap();
        fill(&db, 0, 300);
        fail::cfg("sstable-rename", "return").unwrap();
        let err = db.flush().unwrap_err();
        assert!(err.to_string().contains("sstable-rename"), "{err}");
        let write = db.put(b"after", Cell::value(1, "x")).unwrap_err();
        assert!(matches!(write, Error::BackgroundFailed(_)), "{write}");
        fail::remove("sstable-rename");
    }
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_all_present(&db, 300);
    // The reopened engine may be flushing what it replayed: a table it is writing is no
    // leftover.
    db.wait_for_compactions().unwrap();
    let leftovers = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .to_string_lossy()
                .ends_with(".tmp")
        })
        .count();
    assert_eq!(leftovers, 0);
    scenario.teardown();
}

#[test]
fn a_failed_wal_append_refuses_the_write_and_every_later_one_until_reopen() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), opts()).unwrap();
        db.put(b"before", Cell::value(1, "v")).unwrap();
        fail::cfg("wal-append", "return").unwrap();
        let err = db.put(b"k", Cell::value(1, "v")).unwrap_err();
        assert!(err.to_string().contains("wal-append"), "{err}");
        fail::remove("wal-append");
        assert_eq!(
            db.get(b"k").unwrap(),
            None,
            "a refused write is not visible"
        );
        // After a failed write the log's state on disk is unknown, so it takes no more.
        let later = db.put(b"k2", Cell::value(2, "v")).unwrap_err();
        assert!(later.to_string().contains("wal-append"), "{later}");
    }
    let db = Db::open(dir.path(), opts()).unwrap();
    assert!(db.get_live(b"before").unwrap().is_some());
    assert_eq!(db.get(b"k").unwrap(), None);
    db.put(b"k", Cell::value(2, "v")).unwrap();
    scenario.teardown();
}

/// A segment retired for reuse gets its new header synced before it takes the new name; a
/// switch that fails in between leaves the old segment current, and the segment the manifest
/// already listed for the switch never exists.
#[test]
fn a_failed_segment_reuse_fails_the_switch_and_loses_nothing() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), opts()).unwrap();
        fill(&db, 0, 100);
        db.flush().unwrap();
        assert_eq!(
            node::lsm::wal::list_recyclable(dir.path()).unwrap().len(),
            1
        );
        fill(&db, 100, 200);
        fail::cfg("wal-recycle", "return").unwrap();
        let err = db.flush().unwrap_err();
        assert!(matches!(err, Error::Injected("wal-recycle")), "{err}");
        fail::remove("wal-recycle");
        fill(&db, 200, 300);
        db.flush().unwrap();
        fill(&db, 300, 400);
        db.close().unwrap();
    }
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_all_present(&db, 400);
    scenario.teardown();
}
