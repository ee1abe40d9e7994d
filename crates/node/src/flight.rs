//! Compute leases: cluster-wide single flight for `get_or_compute`.
//!
//! # Mechanism
//! A client that misses a key and wants to compute its value sends
//! [`Request::Compute`](strata_proto::wire::Request::Compute) to the key's owner. The owner
//! keeps one [`Flights`] table in memory, key → the lease of the caller computing it:
//!
//! - a live value is answered at once;
//! - with no lease (or an expired one) the caller is granted a lease, named by a random
//!   token, for `lease_ms`: it computes, renews the lease while it does, and stores the value
//!   with an ordinary `Set`, which ends the lease ([`Flights::finish`]) and wakes every waiter;
//! - with a live lease held by someone else the request waits, bounded by its `wait_ms`, until
//!   the lease ends (the value is stored, the holder releases it after a failed computation,
//!   or it expires because the holder died or stalled). Then the waiter reads the value, or
//!   takes the lease over. The table is claimed under one lock, so of many waiters exactly
//!   one takes over; the others go on waiting for it.
//!
//! Every entry is bounded in time: a lease lasts `lease_ms` unless renewed, so a computing
//! client that is killed holds the key up for one lease length at most.
//!
//! # Caveats
//! - Leases live in the owner's memory only, not in Raft and not on the replicas. When the
//!   key's ownership moves (the owner dies, a member joins or leaves), the new owner knows no
//!   lease and grants one to the next caller, while the old holder may still be computing:
//!   the value may be computed once more per ownership change. Both results are stored as
//!   ordinary writes; the newer version wins. The same holds if the owner restarts.
//! - Single flight holds among callers that use `Compute`; a plain `Set` of the key simply
//!   ends the lease (its value is what the waiters then read).
//! - A caller whose lease expired while it was still computing (it could not renew in time)
//!   may finish and store its value after another caller took over: at most one extra
//!   computation per expiry, never a lost or damaged value.

use std::collections::HashMap;

use parking_lot::Mutex;
use strata_proto::EntryKey;
use tokio::sync::watch;
use tokio::time::{Duration, Instant};

/// Shortest lease granted: shorter ones would expire between two renewals on a busy network.
pub const MIN_LEASE: Duration = Duration::from_millis(200);
/// Longest lease granted without a renewal (10 minutes): a holder that dies blocks its key
/// for at most this long, however long it asked for.
pub const MAX_LEASE: Duration = Duration::from_secs(600);
/// Longest a `Compute` request waits on the node before answering "still computing": well
/// under the node's and the clients' request timeouts, so a long computation is waited for
/// by polling, and a waiter notices a moved owner between polls.
pub const MAX_WAIT: Duration = Duration::from_secs(5);
/// Size of the table above which expired leases are swept out (checked on each grant): a
/// key whose holder died and that nobody asks for again does not stay for ever.
const SWEEP_AT: usize = 1024;

/// The lease of one key.
struct Flight {
    token: u64,
    expires: Instant,
    /// Dropped when the lease ends (value stored or lease released), which wakes every
    /// waiter holding a receiver.
    ended: watch::Sender<()>,
}

/// What [`Flights::claim`] decided.
#[derive(Debug)]
pub enum Claim {
    /// The caller holds the lease now, under this token.
    Granted(u64),
    /// Someone else holds a live lease until `expires`. `ended` reports (its `changed()`
    /// returns) when the lease ends before that.
    Held {
        /// When the lease runs out unless renewed.
        expires: Instant,
        /// Fires when the lease is finished or released.
        ended: watch::Receiver<()>,
    },
}

/// The compute leases of the keys a node owns. See the [module documentation](self).
pub struct Flights {
    table: Mutex<Table>,
}

struct Table {
    flights: HashMap<EntryKey, Flight>,
    next_token: u64,
    sweep_at: usize,
}

impl Default for Flights {
    fn default() -> Self {
        Self::new()
    }
}

impl Flights {
    /// An empty table. Tokens start at a random number, so a token from before a restart
    /// does not name a lease granted after it.
    pub fn new() -> Self {
        let mut seed = [0u8; 8];
        // Without the system's randomness tokens still work within one run of the node.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        Self {
            table: Mutex::new(Table {
                flights: HashMap::new(),
                next_token: u64::from_le_bytes(seed) | 1,
                sweep_at: SWEEP_AT,
            }),
        }
    }

    /// `requested` clamped to [`MIN_LEASE`]..=[`MAX_LEASE`].
    pub fn lease_length(requested_ms: u64) -> Duration {
        Duration::from_millis(requested_ms).clamp(MIN_LEASE, MAX_LEASE)
    }

    /// Grants `key`'s lease to the caller for `lease` from `now`, unless another caller holds
    /// a live one.
    pub fn claim(&self, key: &EntryKey, lease: Duration, now: Instant) -> Claim {
        let mut table = self.table.lock();
        if let Some(flight) = table.flights.get(key)
            && flight.expires > now
        {
            return Claim::Held {
                expires: flight.expires,
                ended: flight.ended.subscribe(),
            };
        }
        let token = table.next_token;
        table.next_token = table.next_token.wrapping_add(1).max(1);
        let (ended, _) = watch::channel(());
        // Replacing an expired lease drops its sender: its waiters wake and find this one.
        table.flights.insert(
            key.clone(),
            Flight {
                token,
                expires: now + lease,
                ended,
            },
        );
        if table.flights.len() >= table.sweep_at {
            table.flights.retain(|_, f| f.expires > now);
            table.sweep_at = (table.flights.len() * 2).max(SWEEP_AT);
        }
        Claim::Granted(token)
    }

    /// Extends the lease `token` holds on `key` to `lease` from `now`; false if it no longer
    /// holds it (expired and taken over, finished, or released).
    pub fn renew(&self, key: &EntryKey, token: u64, lease: Duration, now: Instant) -> bool {
        let mut table = self.table.lock();
        match table.flights.get_mut(key) {
            // An expired lease nobody took over yet is still this holder's to extend.
            Some(flight) if flight.token == token => {
                flight.expires = now + lease;
                true
            }
            _ => false,
        }
    }

    /// Ends the lease `token` holds on `key` without a value (the computation failed), so that
    /// a waiter takes over at once; false if it no longer held it.
    pub fn release(&self, key: &EntryKey, token: u64) -> bool {
        let mut table = self.table.lock();
        match table.flights.get(key) {
            Some(flight) if flight.token == token => {
                table.flights.remove(key);
                true
            }
            _ => false,
        }
    }

    /// Ends any lease on `key`: a value was stored. Wakes the waiters.
    pub fn finish(&self, key: &EntryKey) {
        self.table.lock().flights.remove(key);
    }

    /// How many keys have a lease (live or expired and not yet swept).
    pub fn len(&self) -> usize {
        self.table.lock().flights.len()
    }

    /// Whether no key has a lease.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use strata_proto::{Key, Namespace};

    fn key(name: &str) -> EntryKey {
        EntryKey::new(Namespace::default_namespace(), Key::new(name).unwrap())
    }

    const LEASE: Duration = Duration::from_secs(5);

    fn granted(claim: Claim) -> u64 {
        match claim {
            Claim::Granted(token) => token,
            Claim::Held { .. } => panic!("expected a grant, the lease is held"),
        }
    }

    fn held(claim: Claim) -> (Instant, watch::Receiver<()>) {
        match claim {
            Claim::Held { expires, ended } => (expires, ended),
            Claim::Granted(t) => panic!("expected a held lease, got a grant ({t})"),
        }
    }

    #[test]
    fn the_first_caller_gets_the_lease_and_the_others_wait_until_it_expires() {
        let flights = Flights::new();
        let k = key("video:1:embedding");
        let t0 = Instant::now();
        let token = granted(flights.claim(&k, LEASE, t0));
        for i in 0..10 {
            let (expires, _) = held(flights.claim(&k, LEASE, t0 + Duration::from_millis(i)));
            assert_eq!(expires, t0 + LEASE);
        }
        // Another key is independent.
        granted(flights.claim(&key("other"), LEASE, t0));
        // Expired: exactly one caller takes over, with a new token.
        let later = t0 + LEASE;
        let takeover = granted(flights.claim(&k, LEASE, later));
        assert_ne!(takeover, token);
        held(flights.claim(&k, LEASE, later));
        // The old holder can no longer renew or release it.
        assert!(!flights.renew(&k, token, LEASE, later));
        assert!(!flights.release(&k, token));
        held(flights.claim(&k, LEASE, later));
    }

    #[test]
    fn renewing_keeps_the_lease_past_its_first_expiry() {
        let flights = Flights::new();
        let k = key("k");
        let t0 = Instant::now();
        let token = granted(flights.claim(&k, LEASE, t0));
        assert!(flights.renew(&k, token, LEASE, t0 + Duration::from_secs(4)));
        let (expires, _) = held(flights.claim(&k, LEASE, t0 + Duration::from_secs(6)));
        assert_eq!(expires, t0 + Duration::from_secs(9));
        assert!(!flights.renew(&k, token.wrapping_add(1), LEASE, t0));
        granted(flights.claim(&k, LEASE, t0 + Duration::from_secs(9)));
    }

    #[test]
    fn releasing_hands_the_lease_to_the_next_caller_at_once() {
        let flights = Flights::new();
        let k = key("k");
        let t0 = Instant::now();
        let token = granted(flights.claim(&k, LEASE, t0));
        let (_, ended) = held(flights.claim(&k, LEASE, t0));
        assert!(!flights.release(&k, token.wrapping_add(7)), "wrong token");
        assert!(ended.has_changed().is_ok(), "still held");
        assert!(flights.release(&k, token));
        assert!(ended.has_changed().is_err(), "the waiter is woken");
        assert!(!flights.release(&k, token), "released once");
        granted(flights.claim(&k, LEASE, t0));
    }

    #[test]
    fn finishing_ends_any_lease_and_wakes_every_waiter() {
        let flights = Flights::new();
        let k = key("k");
        let t0 = Instant::now();
        let token = granted(flights.claim(&k, LEASE, t0));
        let mut waiters: Vec<_> = (0..5)
            .map(|_| held(flights.claim(&k, LEASE, t0)).1)
            .collect();
        flights.finish(&k);
        assert!(waiters.iter_mut().all(|w| w.has_changed().is_err()));
        assert!(!flights.renew(&k, token, LEASE, t0));
        assert!(flights.is_empty());
    }

    #[test]
    fn leases_are_clamped_to_their_bounds() {
        assert_eq!(Flights::lease_length(0), MIN_LEASE);
        assert_eq!(Flights::lease_length(5_000), Duration::from_secs(5));
        assert_eq!(Flights::lease_length(u64::MAX), MAX_LEASE);
    }

    #[test]
    fn expired_leases_are_swept_when_the_table_grows() {
        let flights = Flights::new();
        let t0 = Instant::now();
        for i in 0..SWEEP_AT - 1 {
            granted(flights.claim(&key(&format!("k{i}")), LEASE, t0));
        }
        assert_eq!(flights.len(), SWEEP_AT - 1);
        // Long after: the grant that reaches the threshold sweeps the expired ones.
        granted(flights.claim(&key("late"), LEASE, t0 + LEASE * 2));
        assert_eq!(flights.len(), 1);
    }

    #[tokio::test]
    async fn a_waiter_sleeping_on_a_lease_wakes_when_the_value_is_stored() {
        let flights = std::sync::Arc::new(Flights::new());
        let k = key("k");
        granted(flights.claim(&k, LEASE, Instant::now()));
        let (_, mut ended) = held(flights.claim(&k, LEASE, Instant::now()));
        let finisher = {
            let flights = flights.clone();
            let k = k.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                flights.finish(&k);
            })
        };
        let woke = tokio::time::timeout(Duration::from_secs(5), ended.changed()).await;
        assert!(matches!(woke, Ok(Err(_))), "woken by the end of the lease");
        finisher.await.unwrap();
        granted(flights.claim(&k, LEASE, Instant::now()));
    }
}
