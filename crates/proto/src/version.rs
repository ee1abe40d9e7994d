//! Versions: hybrid logical clock stamps plus the id of the node that issued them.
//!
//! Every write gets a [`Version`] from the key's primary. Versions are totally ordered —
//! first by physical time, then by the logical counter, then by node id — so any two replicas
//! that see the same set of writes agree on which one is newest, and a replica applies a write
//! only if it is newer than what it holds.
//!
//! The [`Hlc`] (hybrid logical clock, Kulkarni et al. 2014) keeps versions close to wall-clock
//! time while guaranteeing that they never go backwards on one node, and that a node which has
//! seen version `v` issues only versions greater than `v` — even if its wall clock is behind.
//!
//! The clock is pure: the caller passes in the wall time, which keeps it deterministic under
//! test. Caveat: a peer whose clock runs far ahead would drag every clock forward with it, so
//! [`Hlc::observe`] refuses stamps further ahead than a configured drift.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Identifies a node in the cluster.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A totally ordered write stamp. Field order is the comparison order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct Version {
    /// Milliseconds since the Unix epoch, as known to the hybrid clock.
    pub physical_ms: u64,
    /// Counter that orders events within one physical millisecond.
    pub logical: u32,
    /// The node that issued the version; breaks ties between nodes.
    pub node: NodeId,
}

impl Version {
    /// Older than every version a clock issues.
    pub const ZERO: Version = Version {
        physical_ms: 0,
        logical: 0,
        node: NodeId(0),
    };
}

impl fmt::Display for Version {
    /// `PHYSICAL.LOGICAL@NODE`, e.g. `1732492800123.0@1`; sorts like the version when the
    /// physical parts have the same number of digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.physical_ms, self.logical, self.node)
    }
}

impl FromStr for Version {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidVersion(crate::error::printable(s));
        let (time, node) = s.split_once('@').ok_or_else(bad)?;
        let (physical, logical) = time.split_once('.').ok_or_else(bad)?;
        Ok(Version {
            physical_ms: physical.parse().map_err(|_| bad())?,
            logical: logical.parse().map_err(|_| bad())?,
            node: NodeId(node.parse().map_err(|_| bad())?),
        })
    }
}

/// A hybrid logical clock for one node.
#[derive(Clone, Debug)]
pub struct Hlc {
    node: NodeId,
    physical_ms: u64,
    logical: u32,
    max_drift_ms: u64,
}

impl Hlc {
    /// Default limit on how far ahead of local time a remote stamp may be: one minute. Far
    /// above NTP-level skew, far below anything that would make TTLs or tombstone grace
    /// periods meaningless.
    pub const DEFAULT_MAX_DRIFT_MS: u64 = 60_000;

    /// A clock for `node` that has seen nothing yet.
    pub fn new(node: NodeId) -> Self {
        Self {
            node,
            physical_ms: 0,
            logical: 0,
            max_drift_ms: Self::DEFAULT_MAX_DRIFT_MS,
        }
    }

    /// Sets the drift limit used by [`Hlc::observe`].
    pub fn with_max_drift_ms(mut self, max_drift_ms: u64) -> Self {
        self.max_drift_ms = max_drift_ms;
        self
    }

    /// The node this clock stamps for.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The newest version issued or observed so far (with this clock's node id).
    pub fn last(&self) -> Version {
        Version {
            physical_ms: self.physical_ms,
            logical: self.logical,
            node: self.node,
        }
    }

    /// Issues a version for a local event at wall time `wall_ms`. Strictly greater than every
    /// version issued or observed before.
    pub fn tick(&mut self, wall_ms: u64) -> Version {
        if wall_ms > self.physical_ms {
            self.physical_ms = wall_ms;
            self.logical = 0;
        } else {
            self.bump_logical();
        }
        self.last()
    }

    /// Takes in a version seen from another node, so that every later [`Hlc::tick`] is newer
    /// than it. Refuses stamps further ahead of `wall_ms` than the drift limit.
    pub fn observe(&mut self, remote: Version, wall_ms: u64) -> Result<()> {
        let ahead = remote.physical_ms.saturating_sub(wall_ms);
        if ahead > self.max_drift_ms {
            return Err(Error::ClockDrift {
                remote_ms: remote.physical_ms,
                ahead_ms: ahead,
            });
        }
        if (remote.physical_ms, remote.logical) > (self.physical_ms, self.logical) {
            self.physical_ms = remote.physical_ms;
            self.logical = remote.logical;
        }
        Ok(())
    }

    fn bump_logical(&mut self) {
        match self.logical.checked_add(1) {
            Some(l) => self.logical = l,
            // 4 billion events in one millisecond: borrow the next millisecond.
            None => {
                self.physical_ms += 1;
                self.logical = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(p: u64, l: u32, n: u64) -> Version {
        Version {
            physical_ms: p,
            logical: l,
            node: NodeId(n),
        }
    }

    #[test]
    fn order_is_physical_then_logical_then_node() {
        assert!(v(2, 0, 0) > v(1, 9, 9));
        assert!(v(1, 2, 0) > v(1, 1, 9));
        assert!(v(1, 1, 2) > v(1, 1, 1));
        assert!(Version::ZERO < v(0, 0, 1));
    }

    #[test]
    fn tick_follows_wall_time_and_never_goes_back() {
        let mut hlc = Hlc::new(NodeId(7));
        assert_eq!(hlc.tick(100), v(100, 0, 7));
        assert_eq!(hlc.tick(100), v(100, 1, 7));
        // Wall clock stepped back: stay on the old physical time, count up.
        assert_eq!(hlc.tick(50), v(100, 2, 7));
        assert_eq!(hlc.tick(101), v(101, 0, 7));
    }

    #[test]
    fn observe_moves_the_clock_past_remote_versions() {
        let mut hlc = Hlc::new(NodeId(1));
        hlc.tick(100);
        hlc.observe(v(150, 4, 2), 120).unwrap();
        let next = hlc.tick(120);
        assert!(
            next > v(150, 4, 2),
            "{next} should be newer than the observed stamp"
        );
        assert_eq!(next, v(150, 5, 1));
    }

    #[test]
    fn observe_refuses_runaway_clocks() {
        let mut hlc = Hlc::new(NodeId(1)).with_max_drift_ms(1_000);
        let err = hlc.observe(v(10_000, 0, 2), 1_000).unwrap_err();
        assert!(matches!(
            err,
            Error::ClockDrift {
                ahead_ms: 9_000,
                ..
            }
        ));
        assert_eq!(
            hlc.tick(1_000),
            v(1_000, 0, 1),
            "a refused stamp changes nothing"
        );
    }

    #[test]
    fn logical_overflow_borrows_a_millisecond() {
        let mut hlc = Hlc::new(NodeId(1));
        hlc.observe(v(5, u32::MAX, 2), 5).unwrap();
        assert_eq!(hlc.tick(5), v(6, 0, 1));
    }

    #[test]
    fn display_parses_back() {
        let x = v(1_732_492_800_123, 17, 3);
        assert_eq!(x.to_string(), "1732492800123.17@3");
        assert_eq!(x.to_string().parse::<Version>().unwrap(), x);
        assert!("12@".parse::<Version>().is_err());
        assert!("a.b@c".parse::<Version>().is_err());
    }

    proptest! {
        /// Whatever the wall clock does and whatever remote stamps arrive, each tick is
        /// strictly newer than everything before it.
        #[test]
        fn ticks_are_strictly_increasing(
            events in proptest::collection::vec((0u64..1_000, any::<bool>(), 0u64..1_000, 0u32..4), 1..200)
        ) {
            let mut hlc = Hlc::new(NodeId(1));
            let mut newest = Version::ZERO;
            for (wall, is_remote, remote_time, remote_logical) in events {
                if is_remote {
                    let remote = v(remote_time, remote_logical, 2);
                    if hlc.observe(remote, wall).is_ok() {
                        newest = newest.max(remote);
                    }
                } else {
                    let t = hlc.tick(wall);
                    prop_assert!(t > newest, "{t} not newer than {newest}");
                    newest = t;
                }
            }
        }
    }
}
