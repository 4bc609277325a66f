//! The SSTable fail point, in its own test binary because fail points are process-global.
#![cfg(feature = "failpoints")]

use node::lsm::sstable::{table_path, table_temp_path, TableBuilder, TableOptions};
use node::lsm::{Cell, Error};

#[test]
fn failed_rename_leaves_neither_table_nor_temporary_file() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let build = |n| {
        let mut b = TableBuilder::create(dir.path(), n, 0, 0, &TableOptions::default()).unwrap();
        b.add(b"key", &Cell::value(1, "value")).unwrap();
        b.finish()
    };
    fail::cfg("sstable-rename", "return").unwrap();
    assert!(matches!(build(1), Err(Error::Injected("sstable-rename"))));
    assert!(!table_path(dir.path(), 1).exists());
    assert!(!table_temp_path(dir.path(), 1).exists());
    fail::remove("sstable-rename");
    assert_eq!(build(2).unwrap().props.entries, 1);
    scenario.teardown();
}
