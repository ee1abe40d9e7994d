//! Time, injected.
//!
//! Tiers ask a [`Clock`] for the time instead of reading the system clock, so that TTL tests
//! move time forward with [`ManualClock::advance`] instead of sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use strata_proto::{Hlc, NodeId, Timestamp, Version};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(start.as_millis())))
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `t`.
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.as_millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// The clock used when none is given.
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// Issues versions for writes made directly against a local store (no cluster, so no node id:
/// node 0). A cluster node stamps writes with its own [`Hlc`] instead.
#[derive(Debug)]
pub struct LocalVersions(Mutex<Hlc>);

impl LocalVersions {
    /// A version source for `node`.
    pub fn new(node: NodeId) -> Self {
        Self(Mutex::new(Hlc::new(node)))
    }

    /// The next version at wall time `now`.
    pub fn next(&self, now: Timestamp) -> Version {
        self.0.lock().tick(now.as_millis())
    }
}

impl Default for LocalVersions {
    fn default() -> Self {
        Self::new(NodeId(0))
    }
}

/// The next version from the process-wide local version source (node 0).
pub fn local_version(now: Timestamp) -> Version {
    static LOCAL: std::sync::OnceLock<LocalVersions> = std::sync::OnceLock::new();
    LOCAL.get_or_init(LocalVersions::default).next(now)
}
