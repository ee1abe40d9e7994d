//! Raw quinn request/response throughput on loopback: the ceiling `strata bench` is compared
//! against (see `cluster/bench.sh` and docs/benchmarks.md).
//!
//! One process, two tokio runtimes of two worker threads each (like a node and a bench client
//! in two processes): a server on `127.0.0.1:0` with a self-signed rcgen certificate, TLS 1.3
//! with the ring provider only, and one client connection. Transport windows match the node's
//! and the client's (`strata_node::config::Config::transport`, `strata_client` TLS settings):
//! 8 MiB per stream, 32 MiB per connection, 32 MiB send window, 256 concurrent streams.
//!
//! Each request is a fresh bidirectional stream: the client sends a 16-byte request and
//! finishes; the server answers with `--size` bytes (one shared buffer, written without a copy
//! in `--chunk`-byte pieces, like the node's 256 KiB chunks) and finishes. `--concurrency`
//! client tasks loop, one request in flight each, for `--secs` seconds after a short warm-up.
//! The client reads with `read_chunk` and only counts bytes (no copy into a value buffer), so
//! this is the transport's ceiling, not what an application that keeps the bytes would see;
//! `--copy` instead reads each answer into a fresh zeroed buffer of its size, as the Strata
//! client does (without the Strata client's checksum).
//!
//! Prints one JSON line: requests, req/s, MB/s (10^6 bytes) and MiB/s.
//!
//! ```sh
//! cargo run --release -p strata-cli --example quinn_raw -- --size 1048576 --concurrency 8 --secs 10
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, TransportConfig, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Command-line options.
#[derive(Parser)]
struct Args {
    /// Response size in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    size: usize,
    /// Requests in flight at once (one task each).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Measured duration in seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Size of the pieces the server writes (the node's default chunk is 256 KiB).
    #[arg(long, default_value_t = 256 << 10)]
    chunk: usize,
    /// Read each answer into a fresh zeroed buffer instead of only counting its bytes.
    #[arg(long)]
    copy: bool,
    /// Upper bound of MTU discovery (UDP payload bytes; quinn's default is 1452). Both
    /// endpoints also accept datagrams up to this size.
    #[arg(long, default_value_t = 1452)]
    mtu: u16,
    /// Ask the peer to acknowledge only every N+1 ack-eliciting packets (QUIC ACK frequency
    /// extension); none leaves QUIC's default (every other packet).
    #[arg(long)]
    ack_threshold: Option<u32>,
}

/// The node's windows (crates/node/src/config.rs) and stream limit.
fn transport(mtu: u16, ack_threshold: Option<u32>) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    let mut discovery = quinn::MtuDiscoveryConfig::default();
    discovery.upper_bound(mtu);
    t.mtu_discovery_config(Some(discovery));
    if let Some(n) = ack_threshold {
        let mut acks = quinn::AckFrequencyConfig::default();
        acks.ack_eliciting_threshold(VarInt::from_u32(n));
        t.ack_frequency_config(Some(acks));
    }
    t.stream_receive_window(VarInt::from_u32(8 << 20))
        .receive_window(VarInt::from_u32(32 << 20))
        .send_window(32 << 20)
        .max_concurrent_bidi_streams(VarInt::from_u32(256))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    Arc::new(t)
}

/// A server endpoint on 127.0.0.1:0 and a client config that trusts its certificate.
fn endpoints(mtu: u16, ack_threshold: Option<u32>) -> Result<(Endpoint, quinn::ClientConfig)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)?;
    server_tls.alpn_protocols = vec![b"bench".to_vec()];
    let mut server =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls)?));
    server.transport_config(transport(mtu, ack_threshold));
    let endpoint = Endpoint::new(
        endpoint_config(mtu)?,
        Some(server),
        std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?,
        Arc::new(quinn::TokioRuntime),
    )?;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![b"bench".to_vec()];
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls)?));
    client.transport_config(transport(mtu, ack_threshold));
    Ok((endpoint, client))
}

/// An endpoint that accepts datagrams up to `mtu` bytes of UDP payload.
fn endpoint_config(mtu: u16) -> Result<quinn::EndpointConfig> {
    let mut config = quinn::EndpointConfig::default();
    config.max_udp_payload_size(mtu)?;
    Ok(config)
}

/// Answers every stream of every connection with `body`, written in `chunk`-byte pieces.
async fn serve(endpoint: Endpoint, body: Bytes, chunk: usize) {
    while let Some(incoming) = endpoint.accept().await {
        let body = body.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let body = body.clone();
                tokio::spawn(async move {
                    if recv.read_to_end(64).await.is_err() {
                        return;
                    }
                    let mut offset = 0;
                    while offset < body.len() {
                        let end = (offset + chunk).min(body.len());
                        if send.write_chunk(body.slice(offset..end)).await.is_err() {
                            return;
                        }
                        offset = end;
                    }
                    let _ = send.finish();
                });
            }
        });
    }
}

/// One request: open a stream, send 16 bytes, count the answer's bytes (or, with `copy`,
/// read exactly `size` of them into a new buffer).
async fn request(conn: &quinn::Connection, copy: Option<usize>) -> Result<usize> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&[0u8; 16]).await?;
    send.finish()?;
    if let Some(size) = copy {
        let mut buf = bytes::BytesMut::zeroed(size);
        recv.read_exact(&mut buf).await?;
        return Ok(buf.len());
    }
    let mut got = 0;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
        got += chunk.bytes.len();
    }
    Ok(got)
}

fn main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.concurrency >= 1 && args.chunk >= 1, "bad arguments");
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a crypto provider was already installed"))?;

    // The server gets its own runtime, as if it were another process.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (server, client_config) =
        server_rt.block_on(async { endpoints(args.mtu, args.ack_threshold) })?;
    let addr: SocketAddr = server.local_addr()?;
    let body = Bytes::from(vec![0xa5u8; args.size]);
    server_rt.spawn(serve(server.clone(), body, args.chunk));

    let result = client_rt.block_on(async move {
        let mut endpoint = Endpoint::new(
            endpoint_config(args.mtu)?,
            None,
            std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?,
            Arc::new(quinn::TokioRuntime),
        )?;
        endpoint.set_default_client_config(client_config);
        let conn = endpoint.connect(addr, "localhost")?.await?;
        let copy = args.copy.then_some(args.size);
        for _ in 0..4 * args.concurrency {
            request(&conn, copy).await.context("warm-up request")?;
        }
        let secs = Duration::from_secs_f64(args.secs);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..args.concurrency {
            let conn = conn.clone();
            let size = args.size;
            tasks.spawn(async move {
                let (mut requests, mut bytes) = (0u64, 0u64);
                while started.elapsed() < secs {
                    let got = request(&conn, copy).await?;
                    anyhow::ensure!(got == size, "short answer: {got} of {size} bytes");
                    requests += 1;
                    bytes += got as u64;
                }
                anyhow::Ok((requests, bytes))
            });
        }
        let (mut requests, mut bytes) = (0u64, 0u64);
        while let Some(joined) = tasks.join_next().await {
            let (r, b) = joined??;
            requests += r;
            bytes += b;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let mtu = conn.stats().path.current_mtu;
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        anyhow::Ok((requests, bytes, elapsed, mtu))
    });
    let (requests, bytes, elapsed, mtu) = result?;
    server.close(0u32.into(), b"done");
    println!(
        "{}",
        serde_json::json!({
            "what": "quinn_raw",
            "size_bytes": args.size,
            "concurrency": args.concurrency,
            "chunk_bytes": args.chunk,
            "copy": args.copy,
            "mtu_upper_bound": args.mtu,
            "ack_threshold": args.ack_threshold,
            "client_path_mtu": mtu,
            "requests": requests,
            "bytes": bytes,
            "elapsed_secs": elapsed,
            "req_per_sec": requests as f64 / elapsed,
            "mb_per_sec": bytes as f64 / elapsed / 1e6,
            "mib_per_sec": bytes as f64 / elapsed / (1u64 << 20) as f64,
        })
    );
    Ok(())
}
