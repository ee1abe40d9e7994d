//! Links to the other members: two kept QUIC connections per peer — one for the control
//! plane (Raft, leases, membership), one for data (replication, forwarding, hand-off pages)
//! — made from this node's own endpoint with its node certificate (mutual TLS, like
//! clients), reconnected lazily. Keeping them apart means a burst of replicated writes, which
//! can fill a connection's stream budget, never delays a lease renewal or a Raft heartbeat.
//!
//! Every exchange is one attempt of one request; callers (Raft's replication loop, the
//! hand-off, write forwarding) decide about retries.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use quinn::Endpoint;
use strata_client::ClientConfig;
use strata_client::connection::{self, NodeConnection};
use strata_proto::wire::{Request, RequestFrame, Response};

/// Why a call to a peer failed.
pub type PeerError = strata_client::Error;

/// The pool of peer links.
pub struct Peers {
    endpoint: Endpoint,
    quic: quinn::ClientConfig,
    base: ClientConfig,
    links: Mutex<HashMap<(String, Plane), Arc<NodeConnection>>>,
    next_id: AtomicU64,
}

/// Which connection to a peer a request travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Plane {
    Control,
    Data,
}

fn plane_of(request: &Request) -> Plane {
    match request {
        Request::Raft { .. }
        | Request::Lease { .. }
        | Request::Propose(_)
        | Request::Join { .. }
        | Request::Leave { .. }
        | Request::Ring
        | Request::Ping => Plane::Control,
        _ => Plane::Data,
    }
}

impl Peers {
    /// Links made from `endpoint`, presenting the certificate in `quic`; `base` gives the
    /// timeouts and limits.
    pub fn new(endpoint: Endpoint, quic: quinn::ClientConfig, base: ClientConfig) -> Self {
        Self {
            endpoint,
            quic,
            base,
            links: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// The link to the peer at `addr` (`HOST:PORT`) for `plane`, made on first use.
    ///
    /// A link without a live connection to a peer known by name is checked against a fresh
    /// resolution of the name and made again if the name now points elsewhere: a container
    /// restarted by Docker comes back at another IP address under the same service name.
    async fn link(&self, addr: &str, plane: Plane) -> Result<Arc<NodeConnection>, PeerError> {
        let id = (addr.to_owned(), plane);
        let cached = self.links.lock().get(&id).map(Arc::clone);
        if let Some(link) = cached {
            let by_name = addr.parse::<std::net::SocketAddr>().is_err();
            if link.is_connected() || !by_name {
                return Ok(link);
            }
            match connection::resolve(addr).await {
                Ok(remote) if remote != link.remote() => {
                    tracing::info!(peer = addr, from = %link.remote(), to = %remote, "peer moved");
                    link.close();
                    self.links.lock().remove(&id);
                }
                _ => return Ok(link),
            }
        }
        let remote = connection::resolve(addr).await?;
        let mut config = self.base.clone();
        config.addr = addr.to_owned();
        let link = Arc::new(NodeConnection::new(
            &config,
            remote,
            self.endpoint.clone(),
            self.quic.clone(),
        )?);
        Ok(Arc::clone(self.links.lock().entry(id).or_insert(link)))
    }

    /// Sends `request` to the peer at `addr` once, bounded by `timeout`. An error answer
    /// becomes [`PeerError::Server`].
    pub async fn call(
        &self,
        addr: &str,
        epoch: u64,
        request: Request,
        bodies: &[Bytes],
        timeout: Duration,
    ) -> Result<(Response, Vec<Bytes>), PeerError> {
        let link = self.link(addr, plane_of(&request)).await?;
        let frame = RequestFrame {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            epoch,
            request,
        };
        let kind = frame.request.kind();
        // Bounded inside, so that a peer that went silent has its connection dropped.
        let (answer, bodies) = link.exchange_within(&frame, bodies, timeout).await?;
        match answer.response {
            Response::Error(e) => Err(PeerError::from(e)),
            response => {
                tracing::trace!(peer = addr, request = kind, "peer answered");
                Ok((response, bodies))
            }
        }
    }

    /// Forgets the link to `addr` (the member left).
    pub fn forget(&self, addr: &str) {
        let mut links = self.links.lock();
        for plane in [Plane::Control, Plane::Data] {
            if let Some(link) = links.remove(&(addr.to_owned(), plane)) {
                link.close();
            }
        }
    }
}
