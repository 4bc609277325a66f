use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock source, injected so tests and simulations control time (TTL expiry, GC horizons,
/// WAL rotation by age).
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now_ms: u64) -> Self {
        ManualClock(AtomicU64::new(now_ms))
    }

    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, delta_ms: u64) {
        self.0.fetch_add(delta_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Hybrid-logical-clock timestamps are `physical_ms << 16 | logical`. The engine never builds
/// them; it only reads their physical part to compare with wall-clock horizons.
pub const HLC_LOGICAL_BITS: u32 = 16;

/// The wall-clock milliseconds inside a hybrid-logical-clock timestamp.
pub fn hlc_physical_ms(timestamp: u64) -> u64 {
    timestamp >> HLC_LOGICAL_BITS
}

/// The smallest timestamp whose physical part is `physical_ms`.
pub fn hlc_from_physical_ms(physical_ms: u64) -> u64 {
    physical_ms << HLC_LOGICAL_BITS
}
