//! A writer process is killed with SIGKILL at random moments; after each kill the database
//! must hold every write the writer saw acknowledged, and nothing it never wrote.

use std::io::{BufRead, BufReader, Write};
use std::ops::Bound;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use node::lsm::{Cell, CompactionStrategy, Db, Options, SyncPolicy};
use rand::{Rng, SeedableRng};

const CHILD_DIR_ENV: &str = "KV_CRASH_CHILD_DIR";
const CHILD_START_ENV: &str = "KV_CRASH_CHILD_START";
const CHILD_SYNC_ENV: &str = "KV_CRASH_CHILD_SYNC";
const ROUNDS: usize = 6;
const ROUND_DEADLINE: Duration = Duration::from_secs(60);

/// `periodic` acknowledges before the fsync; a SIGKILL keeps the page cache, so it too must
/// lose nothing here (power loss, which it may, is the WAL tests' business).
fn options(sync: &str) -> Options {
    let sync = match sync {
        "always" => SyncPolicy::Always,
        _ => SyncPolicy::default(),
    };
    Options {
        sync,
        memtable_bytes: 128 * 1024,
        block_bytes: 4096,
        wal_preallocate_bytes: 1 << 20,
        compaction: CompactionStrategy::Leveled {
            l0_trigger_files: 2,
            l1_bytes: 256 * 1024,
            level_multiplier: 4,
            table_bytes_target: 128 * 1024,
        },
        ..Options::default()
    }
}

fn key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

fn value(i: u64) -> Vec<u8> {
    let len = 50 + (i * 7919 % 900) as usize;
    (0..len).map(|j| (i as usize + j) as u8).collect()
}

#[test]
#[ignore = "child process of the sigkill tests"]
fn crash_child_writer() {
    let (Ok(dir), Ok(start), Ok(sync)) = (
        std::env::var(CHILD_DIR_ENV),
        std::env::var(CHILD_START_ENV),
        std::env::var(CHILD_SYNC_ENV),
    ) else {
        return;
    };
    let start: u64 = start.parse().unwrap();
    let db = Db::open(&dir, options(&sync)).unwrap();
    let mut out = std::io::stdout().lock();
    for i in start.. {
        db.put(&key(i), Cell::value(i + 1, value(i))).unwrap();
        writeln!(out, "ack {i}").unwrap();
        out.flush().unwrap();
    }
}

/// Runs the writer from `start` until it has acknowledged `kill_after` writes, then kills it.
/// Returns the highest key the writer acknowledged before it died (the pipe is drained after
/// the kill: the writer may have gone on acknowledging while this side stopped reading).
fn run_and_kill(dir: &Path, sync: &str, start: u64, kill_after: u64) -> Option<u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_START_ENV, start.to_string())
        .env(CHILD_SYNC_ENV, sync)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Lines come through a thread so that a writer that hangs without closing its output
    // still ends the round at the deadline.
    let (tx, acks) = std::sync::mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let reader = std::thread::spawn(move || {
        for ack in stdout
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| parse_ack(&l))
        {
            if tx.send(ack).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + ROUND_DEADLINE;
    let mut acked = None;
    let mut count = 0;
    while count < kill_after {
        let left = deadline.saturating_duration_since(Instant::now());
        match acks.recv_timeout(left) {
            Ok(i) => {
                acked = Some(i);
                count += 1;
            }
            Err(_) => break,
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        count >= kill_after,
        "writer stopped early or hung ({status}) after {count} acks in {ROUND_DEADLINE:?}"
    );
    reader.join().unwrap();
    acks.try_iter().last().or(acked)
}

fn parse_ack(line: &str) -> Option<u64> {
    line.strip_prefix("ack ").map(|i| i.parse().unwrap())
}

fn verify(dir: &Path, acked: u64) {
    let db = Db::open(dir, options("always")).unwrap();
    for i in 0..=acked {
        let got = db.get_live(&key(i)).unwrap();
        assert_eq!(
            got.as_deref(),
            Some(&value(i)[..]),
            "acknowledged key {i} of {acked} lost"
        );
    }
    let mut seen = 0u64;
    for item in db.scan(Bound::Unbounded, Bound::Unbounded).unwrap() {
        let (k, cell) = item.unwrap();
        let i = u64::from_be_bytes(k.as_ref().try_into().unwrap());
        assert!(
            i <= acked + 1,
            "key {i} appeared but the writer was at most at {}",
            acked + 1
        );
        assert_eq!(
            cell.live_value(0).map(|v| v.to_vec()),
            Some(value(i)),
            "key {i} has wrong data"
        );
        seen += 1;
    }
    assert!(seen == acked + 1 || seen == acked + 2);
    db.close().unwrap();
}

fn kill_repeatedly(sync: &str) {
    let dir = tempfile::tempdir().unwrap();
    let seed: u64 = rand::random();
    eprintln!("crash test ({sync}) seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut next = 0;
    for _ in 0..ROUNDS {
        let kill_after = rng.gen_range(20..1500);
        let acked = run_and_kill(dir.path(), sync, next, kill_after)
            .expect("the writer acknowledged something");
        verify(dir.path(), acked);
        next = acked + 1;
    }
}

#[test]
fn sigkill_loses_no_acknowledged_write() {
    kill_repeatedly("always");
}

#[test]
fn sigkill_under_periodic_sync_loses_no_acknowledged_write() {
    kill_repeatedly("periodic");
}
