//! Recent read latencies per replica, for speculative retry: a replica slower than its own
//! recent p99 is probably stuck (GC pause, compaction, a dying disk), so one more is asked.

use std::time::Duration;

use dashmap::DashMap;

/// Samples kept per replica; the p99 of 128 samples is their second largest.
const WINDOW: usize = 128;
/// Before a replica has a history, wait this long before asking another.
const DEFAULT_THRESHOLD: Duration = Duration::from_millis(50);
/// Never retry sooner: below this, a retry costs more than the wait it saves.
const MIN_THRESHOLD: Duration = Duration::from_millis(2);

#[derive(Default)]
struct Window {
    samples_us: Vec<u64>,
    next: usize,
}

#[derive(Default)]
pub struct Latencies {
    replicas: DashMap<String, Window>,
}

impl Latencies {
    pub fn record(&self, replica: &str, latency: Duration) {
        let us = latency.as_micros().min(u64::MAX as u128) as u64;
        let mut w = self.replicas.entry(replica.to_owned()).or_default();
        if w.samples_us.len() < WINDOW {
            w.samples_us.push(us);
        } else {
            let i = w.next;
            w.samples_us[i] = us;
        }
        w.next = (w.next + 1) % WINDOW;
    }

    /// How long to wait for `replica` before asking another.
    pub fn retry_after(&self, replica: &str) -> Duration {
        let Some(w) = self.replicas.get(replica) else {
            return DEFAULT_THRESHOLD;
        };
        if w.samples_us.len() < WINDOW / 4 {
            return DEFAULT_THRESHOLD;
        }
        let mut sorted = w.samples_us.clone();
        sorted.sort_unstable();
        let p99 = sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)];
        Duration::from_micros(p99).max(MIN_THRESHOLD)
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
}
