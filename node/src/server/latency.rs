//! Recent read latencies per replica, for speculative retry: a replica slower than its own
//! recent p99 is probably stuck (GC pause, compaction, a dying disk), so one more is asked.

use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Samples kept per replica; the p99 of 128 samples is their second largest.
const WINDOW: usize = 128;
/// Before a replica has a history, wait this long before asking another.
const DEFAULT_THRESHOLD: Duration = Duration::from_millis(50);
/// Never retry sooner: below this, a retry costs more than the wait it saves.
const MIN_THRESHOLD: Duration = Duration::from_millis(2);

/// Samples between recomputations of a replica's threshold. Sorting a copy of the window on
/// every read cost about 8.6k instructions per read (callgrind), more than the engine's own
/// work for it; a threshold up to this many samples old is as good a guess.
const REFRESH_SAMPLES: usize = 16;

#[derive(Default)]
struct Window {
    samples_us: Vec<u64>,
    next: usize,
    /// The p99 of the window, once it holds WINDOW / 4 samples; refreshed every
    /// REFRESH_SAMPLES samples.
    threshold: Option<Duration>,
}

impl Window {
    fn push(&mut self, us: u64) {
        if self.samples_us.len() < WINDOW {
            self.samples_us.push(us);
        } else {
            self.samples_us[self.next] = us;
        }
        self.next = (self.next + 1) % WINDOW;
        let due = self.threshold.is_none() || self.next.is_multiple_of(REFRESH_SAMPLES);
        if due && self.samples_us.len() >= WINDOW / 4 {
            self.threshold = Some(self.p99());
        }
    }

    fn p99(&self) -> Duration {
        let mut copy = [0; WINDOW];
        let samples = &mut copy[..self.samples_us.len()];
        samples.copy_from_slice(&self.samples_us);
        let i = (samples.len() * 99 / 100).min(samples.len() - 1);
        let (_, p99, _) = samples.select_nth_unstable(i);
        Duration::from_micros(*p99).max(MIN_THRESHOLD)
    }
}

#[derive(Default)]
pub struct Latencies {
    replicas: DashMap<String, Window, foldhash::fast::RandomState>,
}

impl Latencies {
    pub fn record(&self, replica: &str, latency: Duration) {
        let us = latency.as_micros().min(u64::MAX as u128) as u64;
        // Looked up by &str first: the owned key is only built for a replica never seen.
        if let Some(mut w) = self.replicas.get_mut(replica) {
            w.push(us);
            return;
        }
        self.replicas
            .entry(replica.to_owned())
            .or_default()
            .push(us);
    }

    /// How long to wait for `replica` before asking another.
    pub fn retry_after(&self, replica: &str) -> Duration {
        (self.replicas.get(replica).and_then(|w| w.threshold)).unwrap_or(DEFAULT_THRESHOLD)
    }
}

/// When a read asks one more replica: once a replica it still waits for is slower than its
/// own recent p99. Timing the whole read against the closest replica's p99 instead retried a
/// third of all reads at peak load on a 3-node cluster, and in the slowest seconds at half of
/// it nearly all: the closest is the coordinator itself, whose p99 is microseconds (so the
/// 2 ms floor), while a digest from a peer takes a millisecond or two. At peak those extra
/// reads cost 16% of the nodes' CPU per YCSB-A operation.
pub struct Speculation<N> {
    started: Instant,
    /// Contacted replicas that have not answered, with their thresholds.
    waiting: Vec<(N, Duration)>,
    /// Set once a retry was made for lateness; a failure still asks for one more.
    spent: bool,
    failed: bool,
}

impl<N: Copy + Eq> Speculation<N> {
    pub fn new(started: Instant, waiting: Vec<(N, Duration)>) -> Self {
        Speculation {
            started,
            waiting,
            spent: false,
            failed: false,
        }
    }

    /// When to ask another replica, if one should be asked at all.
    pub fn due(&self) -> Option<Instant> {
        if self.failed {
            return Some(self.started);
        }
        if self.spent {
            return None;
        }
        let threshold = self.waiting.iter().map(|(_, d)| *d).min()?;
        Some(self.started + threshold)
    }

    pub fn answered(&mut self, n: N) {
        self.waiting.retain(|(m, _)| *m != n);
    }

    /// `n` failed: its place is taken at once.
    pub fn failed(&mut self, n: N) {
        self.answered(n);
        self.failed = true;
    }

    /// Another replica was asked (or there was none left to ask), answering [`Self::due`]:
    /// a failed replica is replaced each time, lateness only once per read.
    pub fn asked(&mut self) {
        if !std::mem::take(&mut self.failed) {
            self.spent = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_follows_the_replicas_own_tail() {
        let l = Latencies::default();
        assert_eq!(l.retry_after("a"), DEFAULT_THRESHOLD);
        for i in 0..200u64 {
            let ms = if i % 50 == 0 { 40 } else { 5 };
            l.record("a", Duration::from_millis(ms));
        }
        let t = l.retry_after("a");
        assert!(
            t >= Duration::from_millis(5) && t <= Duration::from_millis(40),
            "{t:?}"
        );
        for _ in 0..WINDOW {
            l.record("b", Duration::from_micros(100));
        }
        assert_eq!(l.retry_after("b"), MIN_THRESHOLD);
    }

    #[test]
    fn a_replica_that_slows_down_is_given_longer_within_refresh_samples() {
        let l = Latencies::default();
        for _ in 0..WINDOW {
            l.record("a", Duration::from_millis(1));
        }
        assert_eq!(l.retry_after("a"), MIN_THRESHOLD);
        // The p99 of 128 samples is their second largest.
        l.record("a", Duration::from_millis(50));
        l.record("a", Duration::from_millis(50));
        for _ in 0..REFRESH_SAMPLES - 2 {
            l.record("a", Duration::from_millis(1));
        }
        assert_eq!(l.retry_after("a"), Duration::from_millis(50));
    }

    #[test]
    fn a_read_speculates_only_on_a_replica_slower_than_its_own_p99() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = Speculation::new(t0, vec![(1, ms(2)), (2, ms(9))]);
        assert_eq!(s.due(), Some(t0 + ms(2)));
        s.answered(1);
        assert_eq!(s.due(), Some(t0 + ms(9)), "the fast replica answered");
        s.asked();
        assert_eq!(s.due(), None, "one speculative retry per read");
        s.failed(2);
        assert_eq!(s.due(), Some(t0), "a failure is replaced at once");
        s.asked();
        assert_eq!(s.due(), None);
    }

    #[test]
    fn all_answered_leaves_nothing_to_speculate_on() {
        let mut s = Speculation::new(Instant::now(), vec![(1, Duration::from_millis(2))]);
        s.answered(1);
        assert_eq!(s.due(), None);
    }
}
