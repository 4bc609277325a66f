use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::lsm::cache::BlockCache;
use crate::lsm::cell::{Cell, CellValue};
use crate::lsm::error::Error;

const KIB: usize = 1024;
const CACHE_BYTES: usize = 1024 * KIB;
const FILE: u64 = 7;

type Model = BTreeMap<Vec<u8>, Cell>;

fn cache() -> Arc<BlockCache> {
    Arc::new(BlockCache::new(CACHE_BYTES))
}

const ZSTD: Compression = Compression::Zstd { level: 1 };
const CODECS: [Compression; 3] = [Compression::None, ZSTD, Compression::Lz4];

fn opts(block_bytes: usize, compression: Compression) -> TableOptions {
    TableOptions {
        block_bytes,
        compression,
        bloom_bits_per_key: 10,
    }
}

fn write(dir: &Path, model: &Model, opts: &TableOptions) -> TableMeta {
    let mut b = TableBuilder::create(dir, FILE, 2, 1234, opts).unwrap();
    for (k, c) in model {
        b.add(k, c).unwrap();
    }
    assert_eq!(b.entries(), model.len() as u64);
    b.finish().unwrap()
}

fn scan(table: &Arc<Table>) -> Vec<(Vec<u8>, Cell)> {
    table
        .iter(true)
        .map(|r| r.map(|(k, c)| (k.to_vec(), c)).unwrap())
        .collect()
}

/// What the builder should have recorded for `model`.
fn expected_props(model: &Model) -> Properties {
    let mut p = Properties::new(2, 1234);
    for (k, c) in model {
        p.add(k, c);
    }
    if let Some(k) = model.keys().next_back() {
        p.max_key = Bytes::copy_from_slice(k);
    }
    p
}

fn arb_cell() -> impl Strategy<Value = Cell> {
    let value = prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..48),
        1 => (5_000usize..70_000, any::<u8>()).prop_map(|(len, b)| big_value(len, b)),
    ];
    (
        any::<u64>(),
        proptest::option::of(any::<u64>()),
        proptest::collection::vec(any::<u8>(), 0..6),
        proptest::option::of(value),
    )
        .prop_map(|(timestamp, expires_at_ms, causal, value)| Cell {
            timestamp,
            expires_at_ms,
            causal: Bytes::from(causal),
            value: value.map_or(CellValue::Tombstone, |v| CellValue::Value(v.into())),
        })
}

/// Generated whole: proptest would draw (and shrink) each byte separately.
fn big_value(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i / 5) as u8)).collect()
}

/// Keys over a small alphabet so that neighbours share prefixes and seeks land between them.
fn arb_key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(b'a'..b'e', 1..14)
}

fn arb_model() -> impl Strategy<Value = Model> {
    prop_oneof![
        1 => proptest::collection::btree_map(arb_key(), arb_cell(), 0..2),
        4 => proptest::collection::btree_map(arb_key(), arb_cell(), 0..400),
    ]
}

fn arb_options() -> impl Strategy<Value = TableOptions> {
    (4 * KIB..=64 * KIB, 0..CODECS.len()).prop_map(|(block_bytes, c)| opts(block_bytes, CODECS[c]))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn prop_tables_round_trip_through_iter_get_and_seek(
        model in arb_model(),
        opts in arb_options(),
        probes in proptest::collection::vec(arb_key(), 1..30),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let meta = write(dir.path(), &model, &opts);
        let table = Table::open(dir.path(), FILE, cache()).unwrap();
        prop_assert_eq!(table.meta(), &meta);
        prop_assert_eq!(&meta.props, &expected_props(&model));
        prop_assert_eq!(meta.file_bytes, std::fs::metadata(table.path()).unwrap().len());

        let want: Vec<_> = model.iter().map(|(k, c)| (k.clone(), c.clone())).collect();
        prop_assert_eq!(scan(&table), want);
        for (k, c) in &model {
            prop_assert!(table.may_contain(k));
            prop_assert_eq!(table.get(k).unwrap(), Some(c.clone()));
        }
        let mut it = table.iter(false);
        for p in &probes {
            prop_assert_eq!(table.get(p).unwrap(), model.get(p).cloned());
            it.seek(p).unwrap();
            let got: Vec<_> = it.by_ref().take(3).map(|r| r.unwrap().0.to_vec()).collect();
            let want: Vec<_> = model.range(p.clone()..).take(3).map(|(k, _)| k.clone()).collect();
            prop_assert_eq!(got, want);
        }
        it.seek_to_first().unwrap();
        prop_assert_eq!(it.count(), model.len());
    }

    /// A builder that fills the cache leaves every data block there as a read would have
    /// cached it: the whole table reads back right without reading a data block from the file.
    #[test]
    fn prop_a_table_built_into_the_cache_reads_back_without_a_miss(
        model in arb_model(),
        opts in arb_options(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        // Room for every block in every shard, so nothing is evicted.
        let cache = Arc::new(BlockCache::new(256 << 20));
        let mut b = TableBuilder::create(dir.path(), FILE, 1, 0, &opts)
            .unwrap()
            .fill_cache(Some(Arc::clone(&cache)));
        for (k, c) in &model {
            b.add(k, c).unwrap();
        }
        b.finish().unwrap();
        let table = Table::open(dir.path(), FILE, Arc::clone(&cache)).unwrap();
        let want: Vec<_> = model.iter().map(|(k, c)| (k.clone(), c.clone())).collect();
        prop_assert_eq!(scan(&table), want);
        for (k, c) in &model {
            prop_assert_eq!(table.get(k).unwrap(), Some(c.clone()));
        }
        prop_assert_eq!(cache.stats().misses, 0);
    }

    /// Any single corrupted byte is caught at open, by a lookup or by the scan; nothing ever
    /// returns data that was not written.
    #[test]
    fn prop_a_flipped_byte_never_yields_wrong_data(
        model in proptest::collection::btree_map(arb_key(), arb_cell(), 1..60),
        codec in 0..CODECS.len(),
        position in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &model, &opts(4 * KIB, CODECS[codec]));
        let path = table_path(dir.path(), FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = position.index(bytes.len());
        bytes[at] ^= mask;
        std::fs::write(&path, &bytes).unwrap();
        prop_assert!(check_only_true_data(dir.path(), &model), "flip at {} went unnoticed", at);
    }
}

/// Opens the (possibly damaged) table and checks that every answer is right or an error;
/// true if some error was seen.
fn check_only_true_data(dir: &Path, model: &Model) -> bool {
    let Ok(table) = Table::open(dir, FILE, cache()) else {
        return true;
    };
    assert_eq!(table.meta().props, expected_props(model));
    let mut detected = false;
    for (k, c) in model {
        match table.get(k) {
            Ok(got) => assert_eq!(got.as_ref(), Some(c), "lookup of {k:?}"),
            Err(_) => detected = true,
        }
    }
    let mut want = model.iter();
    for item in table.iter(true) {
        let Ok((k, c)) = item else { return true };
        assert_eq!(Some((&k.to_vec(), &c)), want.next(), "scan");
    }
    assert_eq!(want.next(), None, "scan ended early without an error");
    detected
}

#[test]
fn flipping_any_byte_of_a_small_table_is_detected() {
    let model: Model = (0..12u32)
        .map(|i| {
            let cell = match i % 3 {
                0 => Cell::tombstone(u64::from(i)),
                1 => Cell::value(u64::from(i), format!("value {i}")).with_expiry(99),
                _ => Cell::value(u64::from(i), "same value same value same value"),
            };
            (format!("key{i:03}").into_bytes(), cell)
        })
        .collect();
    for compression in CODECS {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &model, &opts(4 * KIB, compression));
        let path = table_path(dir.path(), FILE);
        let good = std::fs::read(&path).unwrap();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            std::fs::write(&path, &bad).unwrap();
            let detected = check_only_true_data(dir.path(), &model);
            assert!(detected, "flip at {at} of {} went unnoticed", good.len());
        }
    }
}

#[test]
fn truncated_file_is_a_corruption_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let model: Model = (0..500u32)
        .map(|i| (i.to_be_bytes().to_vec(), Cell::value(1, vec![7u8; 40])))
        .collect();
    write(dir.path(), &model, &opts(4 * KIB, Compression::None));
    let path = table_path(dir.path(), FILE);
    let full = std::fs::read(&path).unwrap();
    for len in [
        0,
        1,
        FOOTER_BYTES - 1,
        FOOTER_BYTES,
        full.len() / 2,
        full.len() - 1,
    ] {
        std::fs::write(&path, &full[..len]).unwrap();
        match Table::open(dir.path(), FILE, cache()) {
            Err(Error::Corruption { path: p, .. }) => assert_eq!(p, path, "truncated to {len}"),
            other => panic!("truncated to {len}: {other:?}"),
        }
    }
}

#[test]
fn keys_out_of_order_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = TableBuilder::create(dir.path(), FILE, 0, 0, &opts(4 * KIB, ZSTD)).unwrap();
    b.add(b"b", &Cell::value(1, "x")).unwrap();
    assert!(matches!(
        b.add(b"a", &Cell::value(1, "x")),
        Err(Error::KeyOrder { .. })
    ));
    assert!(matches!(
        b.add(b"b", &Cell::value(2, "x")),
        Err(Error::KeyOrder { .. })
    ));
    b.add(b"c", &Cell::value(1, "x")).unwrap();
    assert_eq!(b.finish().unwrap().props.entries, 2);
}

#[test]
fn only_a_finished_table_appears_under_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let names = || -> Vec<_> {
        let mut v: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let o = opts(4 * KIB, ZSTD);
    let b = TableBuilder::create(dir.path(), 42, 0, 0, &o).unwrap();
    assert_eq!(names(), ["000042.sst.tmp"]);
    b.abandon().unwrap();
    assert!(names().is_empty());
    drop(TableBuilder::create(dir.path(), 42, 0, 0, &o).unwrap());
    assert!(
        names().is_empty(),
        "dropping an unfinished builder leaves no file"
    );
    let mut b = TableBuilder::create(dir.path(), 42, 0, 0, &o).unwrap();
    b.add(b"k", &Cell::value(1, "v")).unwrap();
    let meta = b.finish().unwrap();
    assert_eq!(names(), ["000042.sst"]);
    assert_eq!(
        meta.file_bytes,
        std::fs::metadata(table_path(dir.path(), 42)).unwrap().len()
    );
}

#[test]
fn empty_table_holds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &Model::new(), &opts(4 * KIB, ZSTD));
    let table = Table::open(dir.path(), FILE, cache()).unwrap();
    assert_eq!(table.meta().props, expected_props(&Model::new()));
    assert!(!table.may_contain(b""));
    assert_eq!(table.get(b"a").unwrap(), None);
    let mut it = table.iter(true);
    it.seek(b"").unwrap();
    assert!(it.next().is_none());
}

#[test]
fn lookups_fill_the_cache_and_compaction_scans_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let model: Model = (0..2_000u32)
        .map(|i| (i.to_be_bytes().to_vec(), Cell::value(1, vec![i as u8; 30])))
        .collect();
    write(dir.path(), &model, &opts(4 * KIB, ZSTD));
    let cache = cache();
    let table = Table::open(dir.path(), FILE, Arc::clone(&cache)).unwrap();
    assert_eq!(table.iter(false).count(), model.len());
    assert_eq!(cache.stats().inserts, 0);
    let key = 77u32.to_be_bytes();
    table.get(&key).unwrap().unwrap();
    table.get(&key).unwrap().unwrap();
    let s = cache.stats();
    assert_eq!((s.inserts, s.hits), (1, 1));
}

#[test]
fn compression_shrinks_compressible_tables() {
    let model: Model = (0..3_000u32)
        .map(|i| {
            (
                format!("user:{i:08}").into_bytes(),
                Cell::value(u64::from(i), "a fairly repetitive value ".repeat(4)),
            )
        })
        .collect();
    let size = |compression| {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &model, &opts(16 * KIB, compression)).file_bytes
    };
    let (raw, zstd, lz4) = (size(Compression::None), size(ZSTD), size(Compression::Lz4));
    assert!(zstd * 4 < raw, "zstd {zstd} bytes vs raw {raw}");
    assert!(lz4 * 2 < raw, "lz4 {lz4} bytes vs raw {raw}");
}

#[test]
fn compression_resumes_after_a_run_of_incompressible_blocks() {
    let mut noise = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = || {
        noise ^= noise << 13;
        noise ^= noise >> 7;
        noise ^= noise << 17;
        noise.to_le_bytes()
    };
    let model: Model = (0..6_000u32)
        .map(|i| {
            let value: Vec<u8> = match i < 3_000 {
                true => (0..25).flat_map(|_| random()).collect(),
                false => "a fairly repetitive value ".repeat(16).into_bytes(),
            };
            (format!("user:{i:08}").into_bytes(), Cell::value(1, value))
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let size = |compression| write(dir.path(), &model, &opts(4 * KIB, compression)).file_bytes;
    let (raw, lz4) = (size(Compression::None), size(Compression::Lz4));
    // The repetitive half is about 1.3 MB raw and LZ4 shrinks it many times over, less
    // what the first blocks after the noise are stored raw while the probe backs off.
    let saved = raw.saturating_sub(lz4);
    assert!(saved > 800 * KIB as u64, "lz4 {lz4} bytes vs raw {raw}");
    let table = Table::open(dir.path(), FILE, cache()).unwrap();
    assert_eq!(scan(&table).len(), model.len());
}

#[test]
fn seeks_between_many_small_blocks_match_the_model() {
    let model: Model = (0..3_000u32)
        .map(|i| {
            (
                format!("k{:06}", i * 2).into_bytes(),
                Cell::value(u64::from(i), vec![b'v'; 50]),
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &model, &opts(4 * KIB, Compression::None));
    let table = Table::open(dir.path(), FILE, cache()).unwrap();
    assert!(table.block_count() > 30);
    let mut it = table.iter(true);
    for i in (0..6_002u32).step_by(7) {
        let target = format!("k{i:06}").into_bytes();
        it.seek(&target).unwrap();
        let got = it.next().map(|r| r.unwrap().0.to_vec());
        assert_eq!(
            got.as_ref(),
            model.range(target.clone()..).next().map(|(k, _)| k)
        );
        assert_eq!(
            table.get(&target).unwrap().is_some(),
            model.contains_key(&target)
        );
    }
}

#[test]
fn tables_and_iterators_cross_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send_sync::<Table>();
    assert_send_sync::<BlockCache>();
    assert_send::<TableIter>();
    assert_send::<TableBuilder>();
}
