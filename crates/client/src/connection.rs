//! [`NodeConnection`]: the client's link to one node.
//!
//! One QUIC connection per node carries every request as its own bidirectional stream, so
//! concurrent requests never wait for each other (up to the node's stream limit, beyond
//! which opening a stream waits for one to finish). The connection is made once and kept;
//! when it breaks (the node restarted, an idle timeout, a network change), the next request
//! makes a new one. Only one reconnect runs at a time: concurrent requests that find the
//! connection broken wait for that one handshake instead of starting their own, and a
//! request that gives up does not cut the handshake short for the next one.
//!
//! An exchange is one attempt of one request: open a stream, write the frame and the
//! streamed bodies, finish, read the answer frame and its bodies, all under the request
//! timeout. A node may answer before it has read the whole request (to refuse it early) and
//! stop our sending side; the answer is still read and reported. An exchange that is
//! abandoned (timeout, error) resets its stream, so the node stops working on it.
//!
//! Retries and the choice of node belong to [`Client`](crate::Client): this type knows one
//! node and tries once. The client keeps one `NodeConnection` per cluster member (and per
//! seed address), all on one shared QUIC endpoint, and picks the owner of each key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use quinn::{Connection, ConnectionError, Endpoint, RecvStream, SendStream, VarInt};
use strata_proto::wire::{RequestFrame, ResponseFrame};

use crate::config::{ClientConfig, split_host_port};
use crate::error::Error;
use crate::io::{self, ReadLimits, StreamError};

/// Code sent when the client abandons a stream (timeout, error): "cancelled".
const CANCELLED: VarInt = VarInt::from_u32(0);

/// Silence after which a connection whose requests time out is given up.
const SILENT_DROP: Duration = Duration::from_millis(1500);

/// Code sent when the client closes its connection on purpose.
const CLOSED_BY_CLIENT: VarInt = VarInt::from_u32(0);

/// Resolves `HOST:PORT`, preferring an IPv4 address: `localhost` often resolves to `::1`
/// first while nodes commonly listen on `127.0.0.1`/`0.0.0.0`, and QUIC to an address nobody
/// listens on only fails by timing out.
pub async fn resolve(addr: &str) -> Result<SocketAddr, Error> {
    let (host, port) = split_host_port(addr)?;
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Error::Connect {
            addr: addr.to_owned(),
            reason: format!("cannot resolve {host}: {e}"),
        })?
        .collect();
    resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| resolved.first())
        .copied()
        .ok_or_else(|| Error::Connect {
            addr: addr.to_owned(),
            reason: format!("{host} resolves to no address"),
        })
}

/// Whether a QUIC error code carries a TLS alert (the handshake failed on certificates).
fn is_tls_alert(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

/// The client's link to one node: a kept connection, made again when it breaks.
pub struct NodeConnection {
    /// The node's address as configured, for messages.
    addr: String,
    /// The address connected to.
    remote: SocketAddr,
    /// The name the node's certificate must carry.
    server_name: String,
    /// The client's endpoint (one UDP socket shared by all node links).
    endpoint: Endpoint,
    /// TLS and transport settings for new connections.
    quic: quinn::ClientConfig,
    connect_timeout: Duration,
    request_timeout: Duration,
    chunk_bytes: usize,
    limits: ReadLimits,
    /// The live connection, if one was made.
    current: Arc<Mutex<Option<Connection>>>,
    /// Held while a new connection is being made, so only one handshake runs at a time.
    dialing: Arc<tokio::sync::Mutex<()>>,
    /// The connection's received-datagram count when a timed-out request last saw it
    /// change, and when: how long the node has been silent.
    heard: Mutex<Option<(usize, u64, std::time::Instant)>>,
}

impl NodeConnection {
    /// A link to the node at `remote` (resolved from `config.addr`); connects lazily.
    pub fn new(
        config: &ClientConfig,
        remote: SocketAddr,
        endpoint: Endpoint,
        quic: quinn::ClientConfig,
    ) -> Result<Self, Error> {
        Self::to(config, &config.addr, remote, endpoint, quic)
    }

    /// A link to the node at `addr` (`HOST:PORT`, resolved to `remote`), with the timeouts
    /// and limits of `config`; connects lazily. The node's certificate must carry the name
    /// [`ClientConfig::server_name_for`] gives for `addr`.
    pub fn to(
        config: &ClientConfig,
        addr: &str,
        remote: SocketAddr,
        endpoint: Endpoint,
        quic: quinn::ClientConfig,
    ) -> Result<Self, Error> {
        Ok(Self {
            addr: addr.to_owned(),
            remote,
            server_name: config.server_name_for(addr)?,
            endpoint,
            quic,
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            chunk_bytes: config.chunk_bytes,
            limits: config.limits,
            current: Arc::new(Mutex::new(None)),
            dialing: Arc::new(tokio::sync::Mutex::new(())),
            heard: Mutex::new(None),
        })
    }

    /// The node's address as configured.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The socket address the link connects to.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// The live connection, making one if there is none or it has closed.
    pub async fn connection(&self) -> Result<Connection, Error> {
        if let Some(conn) = self.live() {
            return Ok(conn);
        }
        let dialing = Arc::clone(&self.dialing).lock_owned().await;
        // Another request may have reconnected while this one waited.
        if let Some(conn) = self.live() {
            return Ok(conn);
        }
        self.dial(dialing).await
    }

    /// Whether the link holds a live connection now (it does not dial).
    pub fn is_connected(&self) -> bool {
        self.live().is_some()
    }

    fn live(&self) -> Option<Connection> {
        self.current
            .lock()
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// Makes a new connection and keeps it; `dialing` is held until the handshake ends.
    ///
    /// The handshake runs on a task of its own: a request that gives up meanwhile (its
    /// timeout may be much shorter than the connect timeout) does not abort it, and the next
    /// request finds the connection made. On a starved machine a handshake cut off by every
    /// short request would otherwise never finish.
    async fn dial(&self, dialing: tokio::sync::OwnedMutexGuard<()>) -> Result<Connection, Error> {
        tracing::debug!(addr = %self.addr, remote = %self.remote, server_name = %self.server_name, "connecting");
        let connecting = self
            .endpoint
            .connect_with(self.quic.clone(), self.remote, &self.server_name)
            .map_err(|e| Error::Connect {
                addr: self.addr.clone(),
                reason: e.to_string(),
            })?;
        let (current, limit) = (Arc::clone(&self.current), self.connect_timeout);
        let handshake = tokio::spawn(async move {
            let _dialing = dialing;
            let result = tokio::time::timeout(limit, connecting).await;
            if let Ok(Ok(conn)) = &result {
                *current.lock() = Some(conn.clone());
            }
            result
        });
        match handshake.await {
            Err(e) => Err(Error::Connect {
                addr: self.addr.clone(),
                reason: format!("the handshake task failed: {e}"),
            }),
            Ok(Err(_)) => Err(self.connect_timed_out()),
            Ok(Ok(Err(e))) => Err(self.handshake_failed(e)),
            Ok(Ok(Ok(conn))) => {
                tracing::debug!(addr = %self.addr, "connected");
                Ok(conn)
            }
        }
    }

    /// Sends one request and reads its answer: one attempt, bounded by the request timeout.
    /// `bodies` are the payload buffers of the frame's streamed values, in frame order.
    pub async fn exchange(
        &self,
        frame: &RequestFrame,
        bodies: &[Bytes],
    ) -> Result<(ResponseFrame, Vec<Bytes>), Error> {
        self.exchange_within(frame, bodies, self.request_timeout)
            .await
    }

    /// [`NodeConnection::exchange`] bounded by `timeout` instead of the request timeout.
    pub async fn exchange_within(
        &self,
        frame: &RequestFrame,
        bodies: &[Bytes],
        timeout: Duration,
    ) -> Result<(ResponseFrame, Vec<Bytes>), Error> {
        let connect = tokio::time::timeout(timeout, self.connection()).await;
        let conn = match connect {
            Ok(conn) => conn?,
            Err(_) => {
                return Err(Error::Timeout {
                    what: format!("connecting to {}", self.addr),
                    after: timeout,
                });
            }
        };
        match tokio::time::timeout(timeout, self.exchange_on(&conn, frame, bodies)).await {
            Ok(result) => result,
            Err(_) => {
                // A live node acknowledges packets even when it is slow to answer; one that
                // has sent nothing for `SILENT_DROP` is gone or frozen, and the connection is
                // dropped so that the next request dials afresh (a restarted node at the same
                // address is then reached at once). A node that is only slow (a starved
                // machine) keeps its connection: a new handshake would cost it more.
                if self.silent_for(&conn) >= SILENT_DROP {
                    tracing::debug!(addr = %self.addr, "no packet from the node for a while: dropping the connection");
                    self.forget(&conn);
                }
                Err(Error::Timeout {
                    what: format!("{} request to {}", frame.request.kind(), self.addr),
                    after: timeout,
                })
            }
        }
    }

    async fn exchange_on(
        &self,
        conn: &Connection,
        frame: &RequestFrame,
        bodies: &[Bytes],
    ) -> Result<(ResponseFrame, Vec<Bytes>), Error> {
        let (send, recv) = conn.open_bi().await.map_err(|e| self.broken(e))?;
        let mut stream = Stream {
            send,
            recv,
            done: false,
        };
        // Inside a recorded span, the request carries its trace context.
        let traced = crate::trace::traced_frame(frame);
        let frame = traced.as_ref().unwrap_or(frame);
        let written =
            match io::write_message(&mut stream.send, frame, bodies, self.chunk_bytes).await {
                Ok(()) => stream
                    .send
                    .finish()
                    .map_err(|e| StreamError::Transport(e.to_string())),
                Err(e) => Err(e),
            };
        // Read the answer even if writing failed: a node that refuses a request early answers
        // and stops our side, and its answer says more than the failed write.
        let response = match io::read_frame::<ResponseFrame>(&mut stream.recv, &self.limits).await {
            Ok(response) => response,
            Err(read_error) => {
                let cause = written.err().unwrap_or(read_error);
                return Err(self.stream_failed(conn, cause));
            }
        };
        let lengths = response.response.streamed_lengths();
        let response_bodies = io::read_bodies(&mut stream.recv, &lengths, &self.limits)
            .await
            .map_err(|e| self.stream_failed(conn, e))?;
        stream.done = true;
        Ok((response, response_bodies))
    }

    /// How long `conn` has received nothing, as seen at this call and the earlier ones.
    fn silent_for(&self, conn: &Connection) -> Duration {
        let received = conn.stats().udp_rx.datagrams;
        let now = std::time::Instant::now();
        let mut heard = self.heard.lock();
        match *heard {
            Some((id, count, since)) if id == conn.stable_id() && count == received => {
                now.duration_since(since)
            }
            _ => {
                *heard = Some((conn.stable_id(), received, now));
                Duration::ZERO
            }
        }
    }

    /// Drops `conn` if it is still the current connection.
    fn forget(&self, conn: &Connection) {
        let mut current = self.current.lock();
        if current
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id())
            && let Some(old) = current.take()
        {
            old.close(CLOSED_BY_CLIENT, b"node unresponsive");
        }
    }

    /// Closes the connection, telling the node. The next request connects again.
    pub fn close(&self) {
        let conn = self.current.lock().take();
        if let Some(conn) = conn {
            conn.close(CLOSED_BY_CLIENT, b"client closed");
        }
    }

    fn connect_timed_out(&self) -> Error {
        Error::Timeout {
            what: format!("connect to {}", self.addr),
            after: self.connect_timeout,
        }
    }

    /// Maps a failed handshake.
    fn handshake_failed(&self, e: ConnectionError) -> Error {
        match e {
            ConnectionError::TimedOut => self.connect_timed_out(),
            e => match self.tls_failure(&e) {
                Some(tls) => tls,
                None => Error::Connect {
                    addr: self.addr.clone(),
                    reason: e.to_string(),
                },
            },
        }
    }

    /// Maps the failure of an established connection.
    fn broken(&self, e: ConnectionError) -> Error {
        self.tls_failure(&e)
            .unwrap_or_else(|| Error::ConnectionLost {
                addr: self.addr.clone(),
                reason: e.to_string(),
            })
    }

    /// A TLS error if the connection ended on a TLS alert. With TLS 1.3 a node checks the
    /// client certificate after the client considers the handshake done, so a node that
    /// rejects the client's certificate shows up as a connection closed with an alert.
    fn tls_failure(&self, e: &ConnectionError) -> Option<Error> {
        match e {
            ConnectionError::TransportError(t) if is_tls_alert(t.code) => Some(Error::Tls(
                format!("handshake with {} failed: {e}", self.addr),
            )),
            ConnectionError::ConnectionClosed(c) if is_tls_alert(c.error_code) => {
                Some(Error::Tls(format!(
                    "{} refused the TLS handshake (is the client certificate signed by the cluster CA?): {c}",
                    self.addr
                )))
            }
            _ => None,
        }
    }

    /// Maps a failure to read or write a stream.
    fn stream_failed(&self, conn: &Connection, e: StreamError) -> Error {
        match e {
            StreamError::Protocol(wire) => {
                Error::Protocol(format!("bad answer from {}: {wire}", self.addr))
            }
            StreamError::Truncated(short) => Error::Protocol(format!(
                "answer from {} ended {short} bytes early",
                self.addr
            )),
            StreamError::Closed => {
                Error::Protocol(format!("{} closed the stream without answering", self.addr))
            }
            // The stream's error is only text; the connection knows why it closed, if it did.
            StreamError::Transport(reason) => match conn.close_reason() {
                Some(closed) => self.broken(closed),
                None => Error::ConnectionLost {
                    addr: self.addr.clone(),
                    reason,
                },
            },
        }
    }
}

/// One request's stream; reset on drop unless the exchange completed, so that a node stops
/// working on a request the client gave up on.
struct Stream {
    send: SendStream,
    recv: RecvStream,
    done: bool,
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.send.reset(CANCELLED);
            let _ = self.recv.stop(CANCELLED);
        }
    }
}
