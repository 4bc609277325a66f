//! Pacing of hint replay, so a node coming back is not flooded by every coordinator at once.

use std::time::Duration;

/// Cassandra's `hinted_handoff_throttle` default.
pub const DEFAULT_REPLAY_KIB_PER_SEC: u64 = 1024;

/// A token bucket in KiB/s that holds at most one second of tokens, so an idle spell allows a
/// one-second burst and no more.
///
/// `admit` charges at once and answers how long to wait before sending: the bucket may go
/// into debt, so a hint larger than the bucket still goes through (at the paced rate) and the
/// caller never has to ask twice. Time comes in as `now_ms`; nothing here sleeps.
#[derive(Clone, Debug)]
pub struct ReplayThrottle {
    /// 0 disables throttling, as in Cassandra.
    bytes_per_sec: u64,
    /// Tokens in byte-milliseconds (bytes x 1000), so that each elapsed millisecond adds
    /// exactly `bytes_per_sec` units and no rounding accumulates.
    tokens: i128,
    last_ms: u64,
}

impl ReplayThrottle {
    /// A full bucket at `now_ms`.
    pub fn new(kib_per_sec: u64, now_ms: u64) -> Self {
        let bytes_per_sec = kib_per_sec.saturating_mul(1024);
        ReplayThrottle {
            bytes_per_sec,
            tokens: Self::capacity(bytes_per_sec),
            last_ms: now_ms,
        }
    }

    pub fn kib_per_sec(&self) -> u64 {
        self.bytes_per_sec / 1024
    }

    /// Charges `bytes` and returns how long to wait before sending them (zero when the
    /// bucket covers them).
    pub fn admit(&mut self, bytes: u64, now_ms: u64) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        self.refill(now_ms);
        self.tokens -= i128::from(bytes) * 1000;
        if self.tokens >= 0 {
            return Duration::ZERO;
        }
        let rate = i128::from(self.bytes_per_sec);
        let wait_ms = (-self.tokens + rate - 1) / rate;
        Duration::from_millis(u64::try_from(wait_ms).unwrap_or(u64::MAX))
    }

    fn refill(&mut self, now_ms: u64) {
        // A clock that steps back adds nothing and does not move `last_ms` back, or the same
        // interval would be credited twice.
        let elapsed_ms = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let added = i128::from(elapsed_ms) * i128::from(self.bytes_per_sec);
        self.tokens = (self.tokens + added).min(Self::capacity(self.bytes_per_sec));
    }

    fn capacity(bytes_per_sec: u64) -> i128 {
        i128::from(bytes_per_sec) * 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `hint_bytes` hints back to back for `duration_ms`, sleeping as told, and
    /// returns the bytes sent.
    fn simulate(throttle: &mut ReplayThrottle, hint_bytes: u64, duration_ms: u64) -> u64 {
        let mut now_ms = 0;
        let mut sent = 0;
        while now_ms < duration_ms {
            now_ms += throttle.admit(hint_bytes, now_ms).as_millis() as u64;
            if now_ms < duration_ms {
                sent += hint_bytes;
            }
        }
        sent
    }

    #[test]
    fn admits_the_configured_rate_over_simulated_time() {
        for hint_bytes in [100, 4096, 70_000, 3 * 1024 * 1024] {
            let mut throttle = ReplayThrottle::new(DEFAULT_REPLAY_KIB_PER_SEC, 0);
            let duration_ms = 60_000;
            let sent = simulate(&mut throttle, hint_bytes, duration_ms);
            // One second of burst from the initial full bucket, then the rate.
            let expected = 1024 * 1024 * (duration_ms / 1000 + 1);
            let tolerance = expected / 100 + hint_bytes;
            assert!(
                sent.abs_diff(expected) <= tolerance,
                "{hint_bytes}-byte hints: sent {sent}, expected about {expected}"
            );
        }
    }

    #[test]
    fn a_full_bucket_admits_one_second_then_waits() {
        let mut throttle = ReplayThrottle::new(1, 0);
        assert_eq!(throttle.admit(1024, 0), Duration::ZERO);
        assert_eq!(throttle.admit(512, 0), Duration::from_millis(500));
        assert_eq!(throttle.admit(0, 500), Duration::ZERO);
    }

    #[test]
    fn idle_time_does_not_bank_more_than_one_second() {
        let mut throttle = ReplayThrottle::new(1, 0);
        assert_eq!(throttle.admit(1024, 3_600_000), Duration::ZERO);
        assert_eq!(throttle.admit(1024, 3_600_000), Duration::from_secs(1));
    }

    #[test]
    fn a_clock_stepping_back_credits_nothing() {
        let mut throttle = ReplayThrottle::new(1, 10_000);
        throttle.admit(1024, 10_000);
        assert_eq!(throttle.admit(1024, 5_000), Duration::from_secs(1));
    }

    #[test]
    fn zero_rate_is_unthrottled() {
        let mut throttle = ReplayThrottle::new(0, 0);
        assert_eq!(throttle.admit(u64::MAX, 0), Duration::ZERO);
    }
}
