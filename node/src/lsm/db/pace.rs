//! Backlog-aware pacing of flushes and compactions.
//!
//! Run flat out, a flush of a 64 MiB memtable takes ~100 ms of a core and an L0 -> L1 merge
//! 150-300 ms. Replicas take the same writes, so two of them often do both in the same
//! second, and on a 2-core host whose request threads keep the cores 80% busy that second has
//! no CPU left to serve requests in: the open-loop tail at half of peak was made of such
//! seconds (docs/benchmarks.md). A nice value does not stop it. So while the backlog is small
//! a job is spread over time instead: a flush over half the time its memtable took to fill
//! (it then ends before the next one is half full), any job over at most
//! `background_pace_ms_max`. Once the backlog grows, the job runs at full speed to its end:
//! ScyllaDB's backlog controllers, reduced to two states.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{background::pending_tasks, Inner};
use crate::lsm::options::CompactionStrategy;

/// Leads shorter than this are not slept off: a sleep on a busy host overshoots by more.
const REST_MIN: Duration = Duration::from_millis(2);
/// The longest single sleep, so a growing backlog is noticed soon.
const REST_MAX: Duration = Duration::from_millis(50);
/// L0 tables past the leveled trigger at which a compaction stops pacing itself.
const L0_SLACK_FILES: usize = 2;

/// Holds one job to its pace: `rest` sleeps off how far ahead of it the job is.
pub(super) struct Pacer {
    started: Instant,
    bytes_total: u64,
    /// How long the job should take while the backlog is small; zero: unpaced.
    target: Duration,
    /// The operator's fixed bandwidth cap, which applies whatever the backlog; 0: none.
    cap_bytes_per_sec: u64,
    hurried: bool,
}

impl Pacer {
    pub(super) fn new(bytes_total: u64, target: Duration, cap_bytes_per_sec: u64) -> Self {
        Pacer {
            started: Instant::now(),
            bytes_total,
            target,
            cap_bytes_per_sec,
            hurried: target.is_zero(),
        }
    }

    /// Sleeps while the job, `bytes_done` into it, is ahead of its pace. `backlog_high` is
    /// asked before each sleep the pace (not the cap) calls for; once it says yes, the pace
    /// no longer applies. Returns the time slept.
    pub(super) fn rest(&mut self, bytes_done: u64, backlog_high: impl Fn() -> bool) -> Duration {
        let mut slept = Duration::ZERO;
        loop {
            let lead = self.due(bytes_done).saturating_sub(self.started.elapsed());
            if lead < REST_MIN {
                return slept;
            }
            if !self.hurried && self.cap_due(bytes_done) < self.started.elapsed() + REST_MIN {
                self.hurried = backlog_high();
                if self.hurried {
                    continue;
                }
            }
            let nap = lead.min(REST_MAX);
            std::thread::sleep(nap);
            slept += nap;
        }
    }

    fn due(&self, bytes_done: u64) -> Duration {
        self.cap_due(bytes_done).max(self.paced_due(bytes_done))
    }

    fn paced_due(&self, bytes_done: u64) -> Duration {
        if self.hurried || self.bytes_total == 0 {
            return Duration::ZERO;
        }
        let share = (bytes_done as f64 / self.bytes_total as f64).min(1.0);
        self.target.mul_f64(share)
    }

    fn cap_due(&self, bytes_done: u64) -> Duration {
        match self.cap_bytes_per_sec {
            0 => Duration::ZERO,
            rate => Duration::from_secs_f64(bytes_done as f64 / rate as f64),
        }
    }
}

impl Inner {
    /// Records when the live memtable started filling, and, if it was switched for being
    /// full, how long it took: the write rate the flush pace follows.
    pub(super) fn note_memtable_switch(&self, full: bool) {
        let now = self.opts.clock.now_ms();
        let started = self.memtable_started_ms.swap(now, Ordering::Relaxed);
        if full {
            let fill_ms = now.saturating_sub(started).max(1);
            self.memtable_fill_ms.store(fill_ms, Ordering::Relaxed);
        }
    }

    /// How long a flush should take while the backlog is small: half the time the last full
    /// memtable took to fill, within `background_pace_ms_max`; zero before any filled.
    pub(super) fn flush_pace(&self) -> Duration {
        let fill_ms = self.memtable_fill_ms.load(Ordering::Relaxed);
        Duration::from_millis((fill_ms / 2).min(self.opts.background_pace_ms_max))
    }

    /// How long a compaction of `input_bytes` should take while the backlog is small: as long
    /// as writes took to fill that much memtable, within `background_pace_ms_max`; zero
    /// before any memtable filled.
    pub(super) fn compaction_pace(&self, input_bytes: u64) -> Duration {
        let fill_ms = self.memtable_fill_ms.load(Ordering::Relaxed) as f64;
        let memtables = input_bytes as f64 / self.opts.memtable_bytes.max(1) as f64;
        let ms = (fill_ms * memtables).min(self.opts.background_pace_ms_max as f64);
        Duration::from_millis(ms as u64)
    }

    /// True when a flush must not wait: the next memtable is half full or already due to
    /// switch, another sealed memtable waits behind this one, or someone waits for the work.
    pub(super) fn flush_backlog_high(&self) -> bool {
        if self.someone_waits() || self.switch_requested() {
            return true;
        }
        if self.current().imm.len() > 1 {
            return true;
        }
        let mem = self.write_gate.read();
        mem.approx_bytes().saturating_mul(2) >= self.switch_bytes(&mem)
    }

    /// True when a compaction must not wait: L0 is past its trigger by [`L0_SLACK_FILES`],
    /// another task is due besides this one, or someone waits for the work.
    pub(super) fn compaction_backlog_high(&self) -> bool {
        if self.someone_waits() {
            return true;
        }
        let v = self.current();
        if let CompactionStrategy::Leveled {
            l0_trigger_files, ..
        } = self.opts.compaction
        {
            if v.levels[0].len() >= l0_trigger_files + L0_SLACK_FILES {
                return true;
            }
        }
        pending_tasks(self, &v) > 1
    }

    /// Shutdown, or a caller in `flush` or `wait_for_compactions`.
    fn someone_waits(&self) -> bool {
        let bg = self.bg.lock();
        bg.shutdown || bg.waiters > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_job_sleeps_off_its_lead_until_the_backlog_grows() {
        let mut pacer = Pacer::new(1000, Duration::from_millis(400), 0);
        let slept = pacer.rest(100, || false);
        assert!(slept >= Duration::from_millis(30), "{slept:?}");
        assert!(pacer.started.elapsed() >= Duration::from_millis(40));
        let asked = std::cell::Cell::new(0);
        let slept = pacer.rest(1000, || {
            asked.set(asked.get() + 1);
            true
        });
        assert_eq!(slept, Duration::ZERO);
        assert_eq!(asked.get(), 1);
        assert_eq!(pacer.rest(1000, || panic!("asked again")), Duration::ZERO);
    }

    #[test]
    fn the_bandwidth_cap_holds_even_when_hurried() {
        let mut pacer = Pacer::new(1000, Duration::ZERO, 10_000);
        let started = Instant::now();
        pacer.rest(500, || panic!("an unpaced job has no backlog to ask about"));
        assert!(started.elapsed() >= Duration::from_millis(48));
    }

    #[test]
    fn an_unpaced_job_never_sleeps() {
        let mut pacer = Pacer::new(1000, Duration::ZERO, 0);
        assert_eq!(pacer.rest(1000, || true), Duration::ZERO);
        let mut empty = Pacer::new(0, Duration::from_secs(10), 0);
        assert_eq!(empty.rest(0, || false), Duration::ZERO);
    }
}
