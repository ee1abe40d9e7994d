//! [`Client::get_or_compute`]: read a key, or compute its value once for the whole fleet.
//!
//! # Semantics
//! Many agents that miss the same key at once should pay for its computation once. Each call
//! sends `Compute` to the key's owner (see the node's `flight` module), which answers one of:
//!
//! - **the value** — it is cached (or another caller just stored it): returned;
//! - **a lease** — nobody else is computing it: this caller runs its `compute` closure,
//!   renewing the lease every third of its length while the closure runs, and stores the
//!   result with the caller's TTL; the store ends the lease and hands the value to every
//!   waiter. If the closure fails, the lease is released at once and one waiter takes over
//!   (running its own closure); the error is returned to this caller only;
//! - **still computing** — another caller holds a live lease: the owner has already waited up
//!   to [`ComputeOptions::poll`] for it, and the call asks again, until the value arrives,
//!   the lease passes to this caller (the holder failed, died or stopped renewing), or
//!   [`ComputeOptions::max_wait`] has passed.
//!
//! So each caller runs its closure at most once, and across the fleet a value is computed
//! once per miss, plus once more for each computing caller that fails or dies (after its
//! lease expires, [`ComputeOptions::lease`]).
//!
//! # Caveats
//! - Leases live in the owner's memory. When the key's owner changes (it fails, members join
//!   or leave) while a value is being computed, the new owner knows no lease and the value may
//!   be computed one extra time; both results are ordinary writes and the newer one stays.
//! - A computing caller that cannot renew its lease in time (a network partition longer than
//!   the lease) may see another caller take over; both store their value.
//! - If the computed value cannot be stored, it is still returned
//!   ([`Computed::store_error`] says why it was not stored) and the lease is released, so a
//!   waiter takes over and tries again.
//! - A caller that is cancelled (its future dropped) or whose closure panics releases its
//!   lease in the background if it can, else the lease expires.

use std::future::Future;
use std::time::{Duration, Instant};

use strata_proto::wire::{Request, Response};
use strata_proto::{Key, Namespace, Value};

use crate::cache_error::CacheError;
use crate::client::{Client, entry_from_wire, unexpected};
use crate::error::Error;

/// Shortest lease a caller may ask for; nodes clamp shorter ones up to this.
pub const MIN_LEASE: Duration = Duration::from_millis(200);
/// Default lease: a killed computing caller delays the others by at most this much, and
/// renewals (every third of it) survive a lost packet or two.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// Default time one poll waits on the owner for another caller's value. Nodes cap it at 5 s;
/// the client also keeps it under half its request timeout.
pub const DEFAULT_POLL: Duration = Duration::from_secs(2);
/// Default bound on waiting for other callers' computations (10 minutes): long enough for
/// expensive model calls, short enough that a stuck fleet is noticed.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(600);

/// How [`Client::get_or_compute_with`] holds its lease and waits for others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComputeOptions {
    /// How long this caller's lease lasts without a renewal; renewed every third of it while
    /// the computation runs. At least [`MIN_LEASE`].
    pub lease: Duration,
    /// How long one `Compute` request may wait on the owner before it answers "still
    /// computing" and the client asks again. Not zero.
    pub poll: Duration,
    /// How long to wait for other callers' computations in all before failing with
    /// [`Error::Timeout`]. Not zero.
    pub max_wait: Duration,
}

impl Default for ComputeOptions {
    fn default() -> Self {
        Self {
            lease: DEFAULT_LEASE,
            poll: DEFAULT_POLL,
            max_wait: DEFAULT_MAX_WAIT,
        }
    }
}

/// Where the value of a [`Client::get_or_compute_with`] call came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// It was cached when asked for.
    Cached,
    /// Another caller computed it while this one waited.
    Waited,
    /// This caller computed it.
    Computed,
}

/// The value of a [`Client::get_or_compute_with`] call, and how it was obtained.
#[derive(Clone, Debug, PartialEq)]
pub struct Computed {
    /// The value.
    pub value: Value,
    /// Where it came from.
    pub origin: Origin,
    /// Why the value this caller computed could not be stored (it is returned anyway).
    pub store_error: Option<Error>,
}

impl Computed {
    fn read(value: Value, origin: Origin) -> Self {
        Self {
            value,
            origin,
            store_error: None,
        }
    }
}

/// Why [`Client::get_or_compute`] failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ComputeError<E> {
    /// An argument cannot work (a zero TTL, a lease below [`MIN_LEASE`], ...); nothing was
    /// sent.
    #[error("invalid get_or_compute argument: {0}")]
    InvalidArgument(String),
    /// The cache failed (including [`Error::Timeout`] after [`ComputeOptions::max_wait`]).
    #[error(transparent)]
    Cache(#[from] Error),
    /// This caller's computation failed; its lease was released, so another caller takes
    /// over.
    #[error("the computation failed: {0}")]
    Compute(E),
    /// A typed cache refused the input (an empty text, ...), or the stored value is not the
    /// kind it keeps there; nothing was computed or stored.
    #[error(transparent)]
    Typed(CacheError),
}

impl<E> ComputeError<E> {
    /// Whether calling again may succeed: only cache failures that say so (see
    /// [`Error::is_retryable`]; a computation's own error is the caller's to judge).
    pub fn is_retryable(&self) -> bool {
        self.cache_error().is_some_and(Error::is_retryable)
    }

    /// The cache's error, if the cache failed.
    pub fn cache_error(&self) -> Option<&Error> {
        match self {
            ComputeError::Cache(e) => Some(e),
            _ => None,
        }
    }
}

/// Checks the arguments of a call.
fn check(ttl: Option<Duration>, options: &ComputeOptions) -> Result<(), String> {
    if ttl.is_some_and(|t| t.is_zero()) {
        return Err(
            "a TTL of zero would expire the value at once, and every waiter would compute it again"
                .into(),
        );
    }
    if options.lease < MIN_LEASE {
        return Err(format!(
            "a lease of {:?} is shorter than the minimum of {MIN_LEASE:?}",
            options.lease
        ));
    }
    if options.poll.is_zero() || options.max_wait.is_zero() {
        return Err("the poll interval and the longest wait must not be zero".into());
    }
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Releases a lease when dropped while armed: the caller was cancelled or its closure
/// panicked. Sent in the background, best effort (otherwise the lease expires).
struct LeaseGuard {
    client: Client,
    namespace: Namespace,
    key: Key,
    token: u64,
    armed: bool,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, namespace, key, token) = (
                self.client.clone(),
                self.namespace.clone(),
                self.key.clone(),
                self.token,
            );
            runtime.spawn(async move {
                let _ = client.release_lease(&namespace, &key, token).await;
            });
        }
    }
}

impl Client {
    /// The value under `key`; if there is none, computes it with `compute`, stores it with
    /// `ttl`, and returns it — with cluster-wide single flight: while one caller anywhere in
    /// the fleet computes a key, the others wait for its value instead of computing it too
    /// (see the [module documentation](crate::flight)). Default [`ComputeOptions`].
    ///
    /// ```no_run
    /// # async fn demo(client: strata_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use strata_proto::{Key, Namespace, Value};
    ///
    /// let ns = Namespace::default_namespace();
    /// let key = Key::new("video:abc123:transcript")?;
    /// let value = client
    ///     .get_or_compute(&ns, &key, Some(Duration::from_secs(3600)), || async {
    ///         // The expensive part, run once for the whole fleet.
    ///         Ok::<_, std::io::Error>(Value::from(b"hello agents".to_vec()))
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_or_compute<F, Fut, E>(
        &self,
        namespace: &Namespace,
        key: &Key,
        ttl: Option<Duration>,
        compute: F,
    ) -> Result<Value, ComputeError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Value, E>>,
    {
        self.get_or_compute_with(namespace, key, ttl, &ComputeOptions::default(), compute)
            .await
            .map(|c| c.value)
    }

    /// [`Client::get_or_compute`] with explicit options; also says where the value came from.
    pub async fn get_or_compute_with<F, Fut, E>(
        &self,
        namespace: &Namespace,
        key: &Key,
        ttl: Option<Duration>,
        options: &ComputeOptions,
        compute: F,
    ) -> Result<Computed, ComputeError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Value, E>>,
    {
        check(ttl, options).map_err(ComputeError::InvalidArgument)?;
        let poll = options.poll.min(self.config().request_timeout / 2);
        let started = Instant::now();
        let mut waited = false;
        // Each round is one bounded request; the rounds are bounded by `max_wait`.
        let token = loop {
            let request = Request::Compute {
                namespace: namespace.to_string(),
                key: key.to_string(),
                lease_ms: millis(options.lease),
                wait_ms: millis(poll),
            };
            match self
                .call_key(namespace.as_str(), key.as_str(), request, &[])
                .await?
            {
                (Response::Entry(Some(entry)), bodies) => {
                    let origin = if waited {
                        Origin::Waited
                    } else {
                        Origin::Cached
                    };
                    let entry = entry_from_wire(entry, &mut bodies.into_iter())?;
                    return Ok(Computed::read(entry.value, origin));
                }
                (Response::ComputeWaited(entry), bodies) => {
                    let entry = entry_from_wire(entry, &mut bodies.into_iter())?;
                    return Ok(Computed::read(entry.value, Origin::Waited));
                }
                (Response::ComputeLease { token, .. }, _) => break token,
                (Response::ComputePending { .. }, _) => {
                    waited = true;
                    if started.elapsed() >= options.max_wait {
                        return Err(ComputeError::Cache(Error::Timeout {
                            what: format!(
                                "get_or_compute of {key:?} waiting for another caller's computation"
                            ),
                            after: options.max_wait,
                        }));
                    }
                }
                (other, _) => return Err(unexpected("compute", &other).into()),
            }
        };
        tracing::debug!(key = key.as_str(), token, "computing under a lease");
        let mut guard = LeaseGuard {
            client: self.clone(),
            namespace: namespace.clone(),
            key: key.clone(),
            token,
            armed: true,
        };
        let computed = {
            let renewing = self.renew_lease_while_computing(namespace, key, token, options.lease);
            let computing = compute();
            tokio::pin!(renewing, computing);
            tokio::select! {
                outcome = &mut computing => outcome,
                never = &mut renewing => match never {},
            }
        };
        let value = match computed {
            Ok(value) => value,
            Err(e) => {
                guard.armed = false;
                // One waiter takes over now rather than when the lease expires.
                if let Err(release) = self.release_lease(namespace, key, token).await {
                    tracing::warn!(key = key.as_str(), error = %release, "could not release a compute lease; it will expire");
                }
                return Err(ComputeError::Compute(e));
            }
        };
        // The store ends the lease on the owner and wakes the waiters.
        let store_error = match self.set(namespace, key, value.clone(), ttl).await {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(key = key.as_str(), error = %e, "a computed value could not be stored");
                let _ = self.release_lease(namespace, key, token).await;
                Some(e)
            }
        };
        // Stored (which ended the lease) or released; cancelled before this, the guard
        // releases it.
        guard.armed = false;
        Ok(Computed {
            value,
            origin: Origin::Computed,
            store_error,
        })
    }

    /// Renews a lease every third of its length, for as long as it is polled; stops
    /// renewing (and waits for ever) once the owner says the lease is gone.
    async fn renew_lease_while_computing(
        &self,
        namespace: &Namespace,
        key: &Key,
        token: u64,
        lease: Duration,
    ) -> std::convert::Infallible {
        loop {
            tokio::time::sleep(lease / 3).await;
            let request = Request::ComputeRenew {
                namespace: namespace.to_string(),
                key: key.to_string(),
                token,
                lease_ms: millis(lease),
            };
            match self
                .call_key(namespace.as_str(), key.as_str(), request, &[])
                .await
            {
                Ok((Response::ComputeRenewed(true), _)) => {}
                Ok((Response::ComputeRenewed(false), _)) => {
                    tracing::warn!(
                        key = key.as_str(),
                        "the compute lease was lost (expired or the owner changed); another caller may compute the value too"
                    );
                    return std::future::pending().await;
                }
                Ok((other, _)) => {
                    tracing::warn!(key = key.as_str(), error = %unexpected("compute_renew", &other), "renewing a compute lease");
                }
                Err(e) => {
                    tracing::warn!(key = key.as_str(), error = %e, "could not renew a compute lease");
                }
            }
        }
    }

    /// Gives a lease up; whether the owner still had it.
    async fn release_lease(
        &self,
        namespace: &Namespace,
        key: &Key,
        token: u64,
    ) -> Result<bool, Error> {
        let request = Request::ComputeRelease {
            namespace: namespace.to_string(),
            key: key.to_string(),
            token,
        };
        match self
            .call_key(namespace.as_str(), key.as_str(), request, &[])
            .await?
            .0
        {
            Response::ComputeReleased(released) => Ok(released),
            other => Err(unexpected("compute_release", &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_that_cannot_work_are_refused_with_a_reason() {
        let ok = ComputeOptions::default();
        assert_eq!(check(None, &ok), Ok(()));
        assert_eq!(check(Some(Duration::from_millis(1)), &ok), Ok(()));
        let zero_ttl = check(Some(Duration::ZERO), &ok).unwrap_err();
        assert!(zero_ttl.contains("TTL of zero"), "{zero_ttl}");
        let short = ComputeOptions {
            lease: Duration::from_millis(10),
            ..ok.clone()
        };
        assert!(check(None, &short).unwrap_err().contains("minimum"));
        let no_poll = ComputeOptions {
            poll: Duration::ZERO,
            ..ok.clone()
        };
        assert!(check(None, &no_poll).is_err());
        let no_wait = ComputeOptions {
            max_wait: Duration::ZERO,
            ..ok
        };
        assert!(check(None, &no_wait).is_err());
    }

    #[test]
    fn only_cache_failures_that_say_so_are_retryable() {
        let routing = ComputeError::<&str>::Cache(Error::Routing("moving".into()));
        assert!(routing.is_retryable());
        assert!(!ComputeError::<&str>::Cache(Error::Protocol("bad".into())).is_retryable());
        assert!(!ComputeError::Compute("model down").is_retryable());
        assert!(!ComputeError::<&str>::InvalidArgument("ttl".into()).is_retryable());
        assert!(!ComputeError::<&str>::Typed(CacheError::EmptyText).is_retryable());
    }
}
