//! Phi-accrual failure detection (Hayashibara et al. 2004): instead of a yes/no timeout, a
//! suspicion level that grows the longer a node stays silent compared with how regularly it
//! has been heard from.

use std::collections::{BTreeMap, VecDeque};
use std::f64::consts::LN_10;

/// Tuning of the detector. With steady 1 s heartbeats the defaults convict a silent node
/// after about 10.6 s: mean (1 s) + acceptable pause (7 s) + 5.2 standard deviations
/// (0.5 s floor) is where phi reaches 8.
#[derive(Clone, Debug, PartialEq)]
pub struct PhiConfig {
    /// Phi at or above which a node is considered down.
    pub threshold: f64,
    /// Inter-arrival samples kept per node; the oldest drop out.
    pub window: usize,
    /// Floor for the standard deviation, so a perfectly regular node is not convicted the
    /// moment one heartbeat is a little late.
    pub min_std_dev_ms: u64,
    /// Silence tolerated on top of the mean interval (GC pauses, a gossip round that went
    /// to someone else).
    pub acceptable_pause_ms: u64,
    /// The interval assumed before a node has a history, so a node just seen is not down.
    pub first_heartbeat_estimate_ms: u64,
    /// Longer gaps are outages, not the node's rhythm, and are not sampled: one outage would
    /// otherwise inflate the mean and slow the next conviction.
    pub max_sample_ms: u64,
}

impl Default for PhiConfig {
    fn default() -> Self {
        PhiConfig {
            threshold: 8.0,
            window: 1000,
            min_std_dev_ms: 500,
            acceptable_pause_ms: 7_000,
            first_heartbeat_estimate_ms: 1_000,
            max_sample_ms: 10_000,
        }
    }
}

#[derive(Clone, Debug)]
struct History {
    intervals: VecDeque<u64>,
    sum: u64,
    sum_sq: u128,
    last_ms: u64,
}

impl History {
    /// Seeded with two samples whose mean is the estimate and whose deviation is a quarter
    /// of it, which real samples soon outweigh.
    fn new(now_ms: u64, estimate_ms: u64) -> Self {
        let mut h = History {
            intervals: VecDeque::new(),
            sum: 0,
            sum_sq: 0,
            last_ms: now_ms,
        };
        let spread = estimate_ms / 4;
        h.push(estimate_ms - spread, usize::MAX);
        h.push(estimate_ms + spread, usize::MAX);
        h
    }

    fn push(&mut self, interval: u64, window: usize) {
        if self.intervals.len() >= window.max(1) {
            if let Some(old) = self.intervals.pop_front() {
                self.sum -= old;
                self.sum_sq -= u128::from(old) * u128::from(old);
            }
        }
        self.intervals.push_back(interval);
        self.sum += interval;
        self.sum_sq += u128::from(interval) * u128::from(interval);
    }

    fn mean_and_std_dev(&self) -> (f64, f64) {
        let n = self.intervals.len() as f64;
        let mean = self.sum as f64 / n;
        let variance = (self.sum_sq as f64 / n - mean * mean).max(0.0);
        (mean, variance.sqrt())
    }
}

/// Phi per monitored node. Holds one history per node it was told about; the membership
/// layer calls [`FailureDetector::forget`] for nodes that leave, so it is bounded by the
/// cluster size.
#[derive(Clone, Debug)]
pub struct FailureDetector<N> {
    config: PhiConfig,
    /// How many standard deviations past the expected arrival phi reaches the threshold.
    /// Phi rises monotonically with that distance, so liveness is one comparison, not the
    /// logarithms and exponentials of phi itself: the coordinator asks for every request.
    threshold_std_devs: f64,
    nodes: BTreeMap<N, History>,
}

impl<N: Ord + Copy> FailureDetector<N> {
    pub fn new(config: PhiConfig) -> Self {
        FailureDetector {
            threshold_std_devs: phi_normal_inverse(config.threshold),
            config,
            nodes: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &PhiConfig {
        &self.config
    }

    /// Records a heartbeat from `node` (a newer heartbeat version seen through gossip).
    pub fn heartbeat(&mut self, node: N, now_ms: u64) {
        let config = &self.config;
        let Some(h) = self.nodes.get_mut(&node) else {
            let h = History::new(now_ms, config.first_heartbeat_estimate_ms);
            self.nodes.insert(node, h);
            return;
        };
        let Some(interval) = now_ms.checked_sub(h.last_ms) else {
            return;
        };
        if interval <= config.max_sample_ms {
            h.push(interval, config.window);
        }
        h.last_ms = now_ms;
    }

    /// The suspicion level of `node` at `now_ms`; `None` for a node never heard from.
    pub fn phi(&self, node: N, now_ms: u64) -> Option<f64> {
        let (late, std_dev) = self.lateness(node, now_ms)?;
        Some(phi_normal(late / std_dev))
    }

    /// Whether phi is below the threshold. A node never heard from is not alive: the
    /// coordinator then hints rather than waits.
    pub fn is_alive(&self, node: N, now_ms: u64) -> bool {
        (self.lateness(node, now_ms))
            .is_some_and(|(late, std_dev)| late < self.threshold_std_devs * std_dev)
    }

    /// How long past its expected arrival `node`'s next heartbeat is, and the standard
    /// deviation that is measured in.
    fn lateness(&self, node: N, now_ms: u64) -> Option<(f64, f64)> {
        let h = self.nodes.get(&node)?;
        let elapsed = now_ms.saturating_sub(h.last_ms) as f64;
        let (mean, std_dev) = h.mean_and_std_dev();
        let std_dev = std_dev.max(self.config.min_std_dev_ms as f64);
        let expected = mean + self.config.acceptable_pause_ms as f64;
        Some((elapsed - expected, std_dev))
    }

    /// Drops a node's history: it left, or restarted (a new gossip generation) and its old
    /// rhythm says nothing about the new process.
    pub fn forget(&mut self, node: N) {
        self.nodes.remove(&node);
    }
}

/// -log10 of the probability that a normally distributed interval is longer than `y`
/// standard deviations above the mean, using the logistic approximation of the normal CDF
/// (Bowling et al. 2009), computed in log space so that it stays finite and increasing far
/// out in the tail.
fn phi_normal(y: f64) -> f64 {
    let g = y * (1.5976 + 0.070566 * y * y);
    if g >= 0.0 {
        g / LN_10 + (-g).exp().ln_1p() / LN_10
    } else {
        g.exp().ln_1p() / LN_10
    }
}

/// The `y` at which [`phi_normal`] reaches `phi`, by bisection; below it phi is lower. Phi is
/// above 0 everywhere, so a threshold of 0 or less (or NaN) gives a `y` nothing is below.
fn phi_normal_inverse(phi: f64) -> f64 {
    if phi.is_nan() || phi <= 0.0 {
        return f64::NEG_INFINITY;
    }
    let (mut low, mut high) = (-1.0, 1.0);
    while phi_normal(low) >= phi {
        low *= 2.0;
    }
    while phi_normal(high) < phi {
        high *= 2.0;
    }
    for _ in 0..200 {
        let mid = (low + high) / 2.0;
        if mid <= low || mid >= high {
            break;
        }
        match phi_normal(mid) < phi {
            true => low = mid,
            false => high = mid,
        }
    }
    high
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(intervals: impl IntoIterator<Item = u64>) -> (FailureDetector<u8>, u64) {
        let mut fd = FailureDetector::new(PhiConfig::default());
        let mut now = 0;
        fd.heartbeat(1, now);
        for i in intervals {
            now += i;
            fd.heartbeat(1, now);
        }
        (fd, now)
    }

    /// How long after `last` phi first reaches the threshold, to 100 ms.
    fn conviction_after(fd: &FailureDetector<u8>, last: u64) -> u64 {
        (0..600)
            .map(|i| i * 100)
            .find(|&d| !fd.is_alive(1, last + d))
            .expect("convicted within a minute")
    }

    #[test]
    fn steady_heartbeats_keep_phi_low() {
        let (fd, last) = fed([1_000; 100]);
        assert!(fd.phi(1, last + 1_000).unwrap() < 0.01);
        assert!(fd.phi(1, last + 5_000).unwrap() < 0.5);
    }

    #[test]
    fn silence_convicts_after_the_expected_time() {
        let (fd, last) = fed([1_000; 100]);
        let after = conviction_after(&fd, last);
        assert!((10_000..=11_500).contains(&after), "{after}");
    }

    #[test]
    fn jittery_heartbeats_are_tolerated_longer() {
        let (steady, s_last) = fed([1_000; 100]);
        let (jittery, j_last) = fed([200, 1_800].repeat(50));
        assert!(conviction_after(&jittery, j_last) > conviction_after(&steady, s_last) + 1_000);
    }

    #[test]
    fn a_fresh_node_is_not_down_at_once_and_an_unknown_one_is() {
        let (fd, _) = fed([]);
        assert!(fd.is_alive(1, 3_000));
        assert!(!fd.is_alive(1, 30_000));
        assert!(!fd.is_alive(2, 0));
        assert_eq!(fd.phi(2, 0), None);
    }

    #[test]
    fn the_window_is_bounded_and_outages_are_not_sampled() {
        let (mut fd, last) = fed([1_000; 1_500]);
        assert_eq!(fd.nodes[&1].intervals.len(), 1_000);
        fd.heartbeat(1, last + 60_000);
        let (mean, _) = fd.nodes[&1].mean_and_std_dev();
        assert_eq!(mean, 1_000.0);
        fd.forget(1);
        assert_eq!(fd.phi(1, last), None);
    }

    proptest::proptest! {
        #[test]
        fn prop_liveness_is_phi_below_the_threshold(
            intervals in proptest::collection::vec(1u64..4_000, 0..40),
            silence_ms in 0u64..60_000,
            threshold in 0.5f64..20.0,
        ) {
            let config = PhiConfig { threshold, ..PhiConfig::default() };
            let mut fd = FailureDetector::new(config);
            let mut now = 0;
            fd.heartbeat(1, now);
            for i in intervals {
                now += i;
                fd.heartbeat(1, now);
            }
            let at = now + silence_ms;
            let phi = fd.phi(1, at).unwrap();
            // Only at the threshold itself may rounding tell them apart.
            if (phi - threshold).abs() > 1e-9 {
                proptest::prop_assert_eq!(fd.is_alive(1, at), phi < threshold);
            }
        }
    }

    #[test]
    fn the_threshold_inverts_to_its_distance() {
        for threshold in [0.1, 1.0, 8.0, 16.0, 100.0] {
            let y = phi_normal_inverse(threshold);
            assert!(phi_normal(y) >= threshold && phi_normal(y - 1e-9) < threshold);
        }
        assert_eq!(phi_normal_inverse(0.0), f64::NEG_INFINITY);
        assert_eq!(phi_normal_inverse(f64::NAN), f64::NEG_INFINITY);
    }

    #[test]
    fn phi_rises_monotonically_into_the_far_tail() {
        let ys: Vec<f64> = (-400..400).map(|i| f64::from(i) / 10.0).collect();
        let phis: Vec<f64> = ys.iter().map(|&y| phi_normal(y)).collect();
        assert!(phis.iter().all(|p| p.is_finite() && *p >= 0.0));
        assert!(phis.windows(2).all(|w| w[0] <= w[1]));
        assert!((phi_normal(0.0) - 2f64.log10()).abs() < 1e-12);
    }
}
