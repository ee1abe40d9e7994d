//! Background housekeeping: a thread that runs a task every interval until told to stop.
//!
//! The filesystem tier uses it for its expiry janitor and its periodic fsync; [`Janitor`]
//! runs `cleanup_expired` on any tier. Threads hold weak references to what they clean, so a
//! tier that is dropped stops its threads instead of being kept alive by them.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::tier::Tier;

/// A stop flag that sleeping threads wake up for.
#[derive(Debug, Default)]
pub struct StopSignal {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl StopSignal {
    /// Tells every waiting thread to stop.
    pub fn stop(&self) {
        *self.stopped.lock() = true;
        self.cv.notify_all();
    }

    /// Whether stop was called.
    pub fn is_stopped(&self) -> bool {
        *self.stopped.lock()
    }

    /// Sleeps for `d` or until stopped; whether it was stopped.
    pub fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut stopped = self.stopped.lock();
        while !*stopped {
            if self.cv.wait_until(&mut stopped, deadline).timed_out() {
                break;
            }
        }
        *stopped
    }
}

/// A thread running a task periodically.
pub(crate) struct Periodic;

impl Periodic {
    /// Runs `task` every `interval` until `stop` is signalled or `task` returns false.
    pub(crate) fn spawn(
        name: &str,
        interval: Duration,
        stop: Arc<StopSignal>,
        mut task: impl FnMut() -> bool + Send + 'static,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while !stop.sleep(interval) {
                    if !task() {
                        break;
                    }
                }
            })
    }
}

/// Runs `cleanup_expired` on a tier every interval; stops when dropped.
pub struct Janitor {
    stop: Arc<StopSignal>,
    thread: Option<JoinHandle<()>>,
}

impl Janitor {
    /// Starts cleaning `tier` every `interval`.
    pub fn spawn(tier: Arc<dyn Tier>, interval: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(StopSignal::default());
        let weak = Arc::downgrade(&tier);
        drop(tier);
        let thread = Periodic::spawn("strata-janitor", interval, Arc::clone(&stop), move || {
            let Some(tier) = weak.upgrade() else {
                return false;
            };
            match tier.cleanup_expired() {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(tier = tier.name(), removed = n, "expired entries removed")
                }
                Err(e) => tracing::warn!(tier = tier.name(), error = %e, "janitor failed"),
            }
            true
        })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
