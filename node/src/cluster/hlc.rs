//! Hybrid logical clock: timestamps that follow wall time but never go backwards and always
//! order a write after every timestamp its coordinator has seen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::lsm::clock::{hlc_from_physical_ms, hlc_physical_ms, Clock};

/// How far ahead of local wall time a remote timestamp may be before it is refused.
pub const DEFAULT_MAX_DRIFT_MS: u64 = 500;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HlcError {
    #[error(
        "timestamp {remote_ms} ms is {} ms ahead of local time {local_ms} ms (at most {max_drift_ms} ms allowed)",
        remote_ms - local_ms
    )]
    TooFarAhead {
        remote_ms: u64,
        local_ms: u64,
        max_drift_ms: u64,
    },
}

/// A hybrid logical clock issuing `physical_ms << 16 | logical` timestamps (the layout of
/// [`hlc_physical_ms`]). When more than 65 536 timestamps are taken in one millisecond the
/// logical part carries into the physical one: the clock runs slightly ahead rather than
/// repeating a timestamp.
pub struct Hlc {
    clock: Arc<dyn Clock>,
    last: AtomicU64,
    max_drift_ms: u64,
}

impl std::fmt::Debug for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hlc")
            .field("last", &self.last.load(Ordering::Relaxed))
            .field("max_drift_ms", &self.max_drift_ms)
            .finish()
    }
}

impl Hlc {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self::with_max_drift(clock, DEFAULT_MAX_DRIFT_MS)
    }

    pub fn with_max_drift(clock: Arc<dyn Clock>, max_drift_ms: u64) -> Self {
        Hlc {
            clock,
            last: AtomicU64::new(0),
            max_drift_ms,
        }
    }

    /// A timestamp greater than every one this clock issued or observed, and at least the
    /// current wall time.
    pub fn now(&self) -> u64 {
        let wall = hlc_from_physical_ms(self.clock.now_ms());
        let mut prev = self.last.load(Ordering::Acquire);
        loop {
            let next = wall.max(prev.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return next,
                Err(actual) => prev = actual,
            }
        }
    }

    /// Merges a timestamp from a peer or client so that later [`Hlc::now`] calls order after
    /// it. A timestamp too far in the future is refused rather than adopted: adopting it
    /// would drag this node's clock (and every write it coordinates) ahead with it.
    pub fn observe(&self, remote: u64) -> Result<(), HlcError> {
        let local_ms = self.clock.now_ms();
        let remote_ms = hlc_physical_ms(remote);
        if remote_ms > local_ms.saturating_add(self.max_drift_ms) {
            return Err(HlcError::TooFarAhead {
                remote_ms,
                local_ms,
                max_drift_ms: self.max_drift_ms,
            });
        }
        self.last.fetch_max(remote, Ordering::AcqRel);
        Ok(())
    }

    /// The latest timestamp issued or observed (0 before any).
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::ManualClock;
    use proptest::prelude::*;

    fn hlc_at(ms: u64) -> (Arc<ManualClock>, Hlc) {
        let clock = Arc::new(ManualClock::new(ms));
        (clock.clone(), Hlc::new(clock))
    }

    #[test]
    fn timestamps_carry_wall_time_in_the_engine_layout() {
        let (_, hlc) = hlc_at(1_000);
        let t = hlc.now();
        assert_eq!(hlc_physical_ms(t), 1_000);
        assert_eq!(t, hlc_from_physical_ms(1_000));
    }

    #[test]
    fn a_clock_going_back_still_yields_increasing_timestamps() {
        let (clock, hlc) = hlc_at(1_000);
        let a = hlc.now();
        clock.set(900);
        let b = hlc.now();
        assert!(b > a);
        assert_eq!(hlc_physical_ms(b), 1_000);
        clock.set(1_001);
        assert_eq!(hlc.now(), hlc_from_physical_ms(1_001));
    }

    #[test]
    fn observed_timestamps_order_before_the_next_one() {
        let (_, hlc) = hlc_at(1_000);
        let remote = hlc_from_physical_ms(1_400) + 7;
        hlc.observe(remote).unwrap();
        assert_eq!(hlc.now(), remote + 1);
    }

    #[test]
    fn timestamps_beyond_the_drift_limit_are_refused_and_not_adopted() {
        let (_, hlc) = hlc_at(1_000);
        let err = hlc.observe(hlc_from_physical_ms(1_501)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "timestamp 1501 ms is 501 ms ahead of local time 1000 ms (at most 500 ms allowed)"
        );
        assert_eq!(hlc_physical_ms(hlc.now()), 1_000);
        assert!(hlc.observe(hlc_from_physical_ms(1_500)).is_ok());
    }

    #[test]
    fn concurrent_callers_never_share_a_timestamp() {
        let (_, hlc) = hlc_at(5);
        let hlc = Arc::new(hlc);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let hlc = hlc.clone();
                std::thread::spawn(move || (0..2_000).map(|_| hlc.now()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    proptest! {
        #[test]
        fn prop_now_is_strictly_increasing_whatever_the_wall_clock_and_peers_do(
            steps in proptest::collection::vec((0u64..3_000, proptest::option::of(0u64..3_000)), 1..50)
        ) {
            let (clock, hlc) = hlc_at(1_000);
            let mut prev = 0;
            for (wall, remote) in steps {
                clock.set(wall);
                if let Some(r) = remote {
                    let _ = hlc.observe(hlc_from_physical_ms(r));
                }
                let t = hlc.now();
                prop_assert!(t > prev);
                prop_assert!(t >= hlc_from_physical_ms(wall));
                prev = t;
            }
        }
    }
}
