//! [`ClientConfig`]: where the cluster is, which certificates prove who the client is, and
//! how patient the client is with it.
//!
//! The configuration is plain data, separate from the running [`Client`](crate::Client): build
//! it with [`ClientConfig::new`] (standard certificate file names in one directory, defaults
//! for everything else), adjust fields, and hand it to [`Client::connect`](crate::Client).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::DnsName;
use strata_proto::wire;

use crate::error::Error;
use crate::io::ReadLimits;
use crate::routing::AddressSelection;

/// Server name used for nodes addressed by IP: every node certificate issued by
/// `strata certs init` carries it as a DNS SAN, whatever its addresses.
pub const DEFAULT_SERVER_NAME: &str = "strata-node";

/// How long a QUIC + TLS handshake may take. A handshake is one or two round trips; 5 s
/// covers a slow or lossy network but still fails fast enough for a person at a prompt when
/// the address is wrong (QUIC gets no "connection refused", so a dead address only times out).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one attempt of one request may take, from opening its stream to reading the last
/// byte of its answer. Generous enough for a 256 MiB value over a slow link, short enough
/// that a stuck node is noticed.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times a failed request is sent again (so at most 21 attempts). Only retryable
/// failures are retried (see [`Error::is_retryable`]). With the doubling backoff capped at
/// [`DEFAULT_MAX_RETRY_BACKOFF`] the pauses add up to about 7 s: several times the one to
/// three seconds a failover takes (see docs/chaos.md), with room for a starved machine,
/// while a retry follows the cluster's recovery within 0.4 s.
pub const DEFAULT_RETRIES: u32 = 20;

/// Pause before the first retry; it doubles on each further retry. 50 ms lets a node that
/// answered `Unavailable` catch its breath without a person noticing the delay.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// Longest pause between retries, whatever the doubling says: short, so that a request
/// waiting out a failover goes through soon after the new epoch.
pub const DEFAULT_MAX_RETRY_BACKOFF: Duration = Duration::from_millis(400);

/// Budget of inline bytes (keys and inline values) in one batch request frame. Half the
/// node's default frame limit ([`wire::DEFAULT_MAX_FRAME_BYTES`], 16 MiB), so a batch frame
/// never comes near the limit even with per-item encoding overhead.
pub const DEFAULT_BATCH_FRAME_BYTES: usize = 8 << 20;

/// Budget of streamed value bytes in one batch request. Values above the inline limit follow
/// the frame; bounding their sum keeps what one request makes a node hold (and what one
/// retry resends) modest, while still carrying many large values per request.
pub const DEFAULT_BATCH_STREAMED_BYTES: u64 = 64 << 20;

/// Most items in one batch request, so that one slow batch does not hold up thousands of
/// results and per-item answers stay small.
pub const DEFAULT_BATCH_MAX_ITEMS: usize = 1000;

/// Keys asked for per page when listing keys.
pub const DEFAULT_LIST_PAGE: u32 = 1000;

/// How many batch requests of one `get_many`/`set_many` call are in flight at once. They share
/// one connection as separate streams; a few in parallel hide round trips without flooding
/// the node.
pub const DEFAULT_BATCH_PARALLELISM: usize = 8;

/// The client's TLS material: the cluster CA that signs node certificates, and the client's
/// own certificate and key (nodes require mutual TLS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file with the cluster CA certificate(s) trusted to sign node certificates.
    pub ca: PathBuf,
    /// PEM file with the client certificate chain.
    pub cert: PathBuf,
    /// PEM file with the client's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// File name of the cluster CA certificate in a certificates directory.
    pub const CA_FILE: &'static str = "ca.pem";
    /// File name of the client certificate in a certificates directory.
    pub const CERT_FILE: &'static str = "client.pem";
    /// File name of the client private key in a certificates directory.
    pub const KEY_FILE: &'static str = "client.key";

    /// The standard files of a directory made by `strata certs init --out DIR`.
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        Self {
            ca: dir.join(Self::CA_FILE),
            cert: dir.join(Self::CERT_FILE),
            key: dir.join(Self::KEY_FILE),
        }
    }
}

/// Everything a [`Client`](crate::Client) needs to know before it connects.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The node to reach the cluster through, as `HOST:PORT` (`[v6]:PORT` for IPv6
    /// addresses). Any member will do: the client asks it for the ring and then talks to every
    /// member directly. It is also the node [`Client::ping`](crate::Client::ping) and
    /// [`Client::stats`](crate::Client::stats) ask.
    pub addr: String,
    /// More members to try, in order, when `addr` cannot be reached (at connect time, and
    /// when the ring has to be fetched again and no known member answers). Empty by default.
    pub seeds: Vec<String>,
    /// Name every node's certificate is checked against. `None` picks, for each node, the
    /// host of its address if it is a DNS name, else [`DEFAULT_SERVER_NAME`] (see
    /// [`ClientConfig::server_name_for`]).
    pub server_name: Option<String>,
    /// CA, client certificate and key.
    pub tls: TlsFiles,
    /// Which of each member's addresses to dial: the one peers dial, or the one advertised
    /// for clients outside the members' network. Default [`AddressSelection::Auto`].
    pub addresses: AddressSelection,
    /// Bound on one connection handshake.
    pub connect_timeout: Duration,
    /// Bound on one attempt of one request.
    pub request_timeout: Duration,
    /// Retries after the first attempt, for retryable failures only.
    pub retries: u32,
    /// Pause before the first retry; doubles per retry up to `max_retry_backoff`.
    pub retry_backoff: Duration,
    /// Cap on the pause between retries.
    pub max_retry_backoff: Duration,
    /// Values whose payload is larger than this travel after the frame, streamed in chunks;
    /// smaller ones travel inside the frame.
    pub inline_limit: usize,
    /// Size of the chunks streamed values are written in.
    pub chunk_bytes: usize,
    /// What the client accepts from a node: frame size, value size, bytes per response.
    pub limits: ReadLimits,
    /// Inline bytes per batch request frame.
    pub batch_frame_bytes: usize,
    /// Streamed bytes per batch request.
    pub batch_streamed_bytes: u64,
    /// Items per batch request.
    pub batch_max_items: usize,
    /// Batch requests of one call in flight at once.
    pub batch_parallelism: usize,
}

impl ClientConfig {
    /// A configuration for the node at `addr` (`HOST:PORT`) with the standard certificate
    /// files of `certs_dir` (`ca.pem`, `client.pem`, `client.key`) and default timeouts,
    /// retries and limits.
    pub fn new(addr: impl Into<String>, certs_dir: impl AsRef<Path>) -> Self {
        Self {
            addr: addr.into(),
            seeds: Vec::new(),
            server_name: None,
            tls: TlsFiles::in_dir(certs_dir),
            addresses: AddressSelection::Auto,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retries: DEFAULT_RETRIES,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
            max_retry_backoff: DEFAULT_MAX_RETRY_BACKOFF,
            inline_limit: wire::DEFAULT_CHUNK_BYTES,
            chunk_bytes: wire::DEFAULT_CHUNK_BYTES,
            limits: ReadLimits::default(),
            batch_frame_bytes: DEFAULT_BATCH_FRAME_BYTES,
            batch_streamed_bytes: DEFAULT_BATCH_STREAMED_BYTES,
            batch_max_items: DEFAULT_BATCH_MAX_ITEMS,
            batch_parallelism: DEFAULT_BATCH_PARALLELISM,
        }
    }

    /// The name the node's certificate must carry: `server_name` if set; otherwise the host
    /// of `addr` when it is a DNS name (`localhost`, `node1.example`), and
    /// [`DEFAULT_SERVER_NAME`] when it is an IP address (or not a valid DNS name).
    pub fn server_name(&self) -> Result<String, Error> {
        self.server_name_for(&self.addr)
    }

    /// The name the certificate of the node at `addr` must carry: `server_name` if set,
    /// otherwise derived from the host of `addr` as for [`ClientConfig::server_name`].
    pub fn server_name_for(&self, addr: &str) -> Result<String, Error> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let (host, _) = split_host_port(addr)?;
        Ok(default_server_name(host))
    }

    /// The addresses to reach the cluster through: `addr`, then `seeds`.
    pub fn seed_addrs(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.addr.as_str()).chain(self.seeds.iter().map(String::as_str))
    }

    /// The pause before retry number `retry` (0 for the first retry): `retry_backoff`
    /// doubled `retry` times, at most `max_retry_backoff`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.retry_backoff
            .saturating_mul(factor)
            .min(self.max_retry_backoff)
    }

    /// Checks the fields that could make the client misbehave rather than merely fail.
    pub fn validate(&self) -> Result<(), Error> {
        for addr in self.seed_addrs() {
            split_host_port(addr)?;
        }
        let bad = |what: &str| Err(Error::Config(what.to_owned()));
        if self.chunk_bytes == 0 {
            return bad("chunk_bytes must be at least 1");
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return bad("timeouts must be longer than zero");
        }
        if self.batch_max_items == 0 || self.batch_parallelism == 0 {
            return bad("batch_max_items and batch_parallelism must be at least 1");
        }
        if self.inline_limit > self.batch_frame_bytes
            || self.batch_frame_bytes > self.limits.max_frame_bytes as usize
        {
            return bad("need inline_limit <= batch_frame_bytes <= limits.max_frame_bytes");
        }
        Ok(())
    }
}

/// Splits `HOST:PORT` or `[V6]:PORT` into host (without brackets) and port.
pub(crate) fn split_host_port(addr: &str) -> Result<(&str, u16), Error> {
    let bad = |why: &str| Error::Config(format!("address {addr:?}: {why}"));
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        rest.split_once("]:")
            .ok_or_else(|| bad("expected [IPV6]:PORT"))?
    } else {
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| bad("expected HOST:PORT"))?;
        if host.contains(':') {
            return Err(bad("put an IPv6 address in brackets: [ADDR]:PORT"));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    Ok((host, port))
}

/// The certificate name to expect from `host` when none is configured.
fn default_server_name(host: &str) -> String {
    if host.parse::<IpAddr>().is_err() && DnsName::try_from(host).is_ok() {
        host.to_owned()
    } else {
        DEFAULT_SERVER_NAME.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_standard_file_names() {
        let c = ClientConfig::new("127.0.0.1:7400", "/etc/strata/certs");
        assert_eq!(c.tls.ca, Path::new("/etc/strata/certs/ca.pem"));
        assert_eq!(c.tls.cert, Path::new("/etc/strata/certs/client.pem"));
        assert_eq!(c.tls.key, Path::new("/etc/strata/certs/client.key"));
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        assert_eq!(c.retries, DEFAULT_RETRIES);
        assert_eq!(c.retry_backoff, Duration::from_millis(50));
        assert_eq!(c.inline_limit, wire::DEFAULT_CHUNK_BYTES);
        assert_eq!(c.chunk_bytes, wire::DEFAULT_CHUNK_BYTES);
        assert_eq!(c.limits.max_frame_bytes, wire::DEFAULT_MAX_FRAME_BYTES);
        c.validate().unwrap();
    }

    #[test]
    fn server_name_follows_the_host() {
        let name = |addr: &str| ClientConfig::new(addr, ".").server_name().unwrap();
        assert_eq!(name("localhost:7400"), "localhost");
        assert_eq!(
            name("node-1.strata.internal:7400"),
            "node-1.strata.internal"
        );
        assert_eq!(name("127.0.0.1:7400"), DEFAULT_SERVER_NAME);
        assert_eq!(name("[::1]:7400"), DEFAULT_SERVER_NAME);
        assert_eq!(name("not!a-dns-name:7400"), DEFAULT_SERVER_NAME);
        let mut c = ClientConfig::new("127.0.0.1:7400", ".");
        c.server_name = Some("node-7".into());
        assert_eq!(c.server_name().unwrap(), "node-7");
    }

    #[test]
    fn addresses_need_a_host_and_a_port() {
        assert_eq!(split_host_port("[::1]:80").unwrap(), ("::1", 80));
        assert_eq!(split_host_port("a.b:1").unwrap(), ("a.b", 1));
        for bad in [
            "localhost",
            ":80",
            "host:",
            "host:99999",
            "::1:80",
            "[::1]80",
        ] {
            let err = split_host_port(bad).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{bad}: {err}");
        }
        let err = ClientConfig::new("::1:80", ".").server_name().unwrap_err();
        assert!(err.to_string().contains("brackets"), "{err}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = ClientConfig::new("h:1", ".");
        assert_eq!(c.backoff(0), Duration::from_millis(50));
        assert_eq!(c.backoff(1), Duration::from_millis(100));
        assert_eq!(c.backoff(3), Duration::from_millis(400));
        assert_eq!(c.backoff(4), Duration::from_millis(400));
        assert_eq!(c.backoff(u32::MAX), Duration::from_millis(400));
    }

    #[test]
    fn validation_rejects_inconsistent_limits() {
        let mut c = ClientConfig::new("h:1", ".");
        c.chunk_bytes = 0;
        assert!(c.validate().is_err());
        let mut c = ClientConfig::new("h:1", ".");
        c.inline_limit = c.batch_frame_bytes + 1;
        assert!(c.validate().is_err());
        let mut c = ClientConfig::new("h:1", ".");
        c.request_timeout = Duration::ZERO;
        assert!(c.validate().is_err());
        let mut c = ClientConfig::new("h:1", ".");
        c.seeds = vec!["h2:2".into(), "no-port".into()];
        assert!(c.validate().is_err());
    }

    #[test]
    fn seeds_follow_the_address() {
        let mut c = ClientConfig::new("a:1", ".");
        assert!(c.seeds.is_empty());
        c.seeds = vec!["b:2".into(), "c:3".into()];
        assert_eq!(c.seed_addrs().collect::<Vec<_>>(), ["a:1", "b:2", "c:3"]);
        assert_eq!(
            c.server_name_for("node-2.internal:7400").unwrap(),
            "node-2.internal"
        );
        assert_eq!(
            c.server_name_for("10.0.0.2:7400").unwrap(),
            DEFAULT_SERVER_NAME
        );
    }
}
