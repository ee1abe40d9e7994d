//! The admin HTTP endpoint: `/metrics`, `/health`, `/ready`, `/stats`.
//!
//! Plain HTTP/1.1 on the `admin` address (loopback by default), served by hyper on the
//! node's runtime, one task per connection. Every route is a `GET`:
//!
//! - `/health`: `200 ok` while the process runs and serves — liveness.
//! - `/ready`: `200 ready` once the node is an active member with its partitions synced
//!   and its lease held (see [`status`](crate::cluster::status)); `503` with the reason
//!   before. Outside a cluster a node is ready as soon as it serves.
//! - `/stats`: the node's statistics as JSON, the same document `strata stats` reads over
//!   QUIC: the reference's `get_stats` shape (`manager` and per-`tiers`), plus `node` and
//!   `cluster` identity.
//! - `/metrics`: every metric in Prometheus text format (see [`metrics`](crate::metrics)).
//!
//! # Caveats
//! The endpoint has no authentication and no TLS: it tells what the node does, it changes
//! nothing, and it listens on loopback unless configured otherwise. Put it on a private
//! network (or behind a proxy) when exposing it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::service::Service;

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the routes read.
pub struct AdminState {
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// The node's cluster view (readiness).
    pub cluster: Arc<Cluster>,
    /// The request service (statistics).
    pub service: Arc<Service>,
}

/// A running admin endpoint.
pub struct AdminServer {
    local_addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port); [`AdminServer::start`] serves on it.
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admin address {addr}"))
    }

    /// Serves on `listener` until [`AdminServer::shutdown`].
    pub fn start(listener: TcpListener, state: AdminState) -> Self {
        let local_addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, Arc::new(state), stop.clone()));
        Self {
            local_addr,
            stop,
            task,
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections and closes the open ones.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "admin endpoint: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        let stop = stop.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(route(&state, &request)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "admin connection failed");
                    }
                }
                _ = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// Answers one request.
fn route(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
    }
    match request.uri().path() {
        "/health" => text(StatusCode::OK, "ok\n"),
        "/ready" => match state.cluster.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/stats" => {
            let mut response = Response::new(Full::new(Bytes::from(state.service.stats_json())));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(state.metrics.render())));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /health, /ready, /stats or /metrics\n",
        ),
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
