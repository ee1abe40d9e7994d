//! [`Client`]: typed calls (get, set, delete, list, batches, ...) over a node connection, with
//! per-attempt timeouts and retries.
//!
//! # Requests
//! Each call builds one request (batch calls several), gives it an id, and sends it through
//! the `NodeConnection`. Values larger than [`ClientConfig::inline_limit`] are streamed
//! after the frame straight from the value's own buffers (a tensor's data is never copied on
//! the way out), and values that come back streamed are read into the one buffer the returned
//! [`Entry`] keeps. Every returned entry is checked against the checksum in its metadata.
//!
//! # Retries
//! An attempt that fails with a retryable [`Error`] (timeout, lost connection, a node that
//! says `Unavailable` or `Timeout`) is sent again, up to [`ClientConfig::retries`] times,
//! after a doubling backoff. Each attempt has the full request timeout. Every request is safe
//! to send twice: reads trivially; `set` and `set_many` write the same value again (the node
//! gives the second write a newer version, so the outcome is the same value); `delete` and
//! `clear` end in the same state, though a retried `delete` may report `false` if its first
//! attempt deleted the key before the answer was lost.
//!
//! # Caveats
//! Today a client talks to the one node it was given. Ring-aware routing (sending each key
//! to its owner, following redirects, failing over to replicas) will add one
//! `NodeConnection` per member under the same calls; requests already carry the ring epoch
//! field for it (0 today).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use quinn::Endpoint;
use strata_proto::wire::{
    self, Body, Request, RequestFrame, Response, WireEntry, WireError, WireValue,
};
use strata_proto::{Entry, EntryMeta, Key, Namespace, NodeId, Value};

use crate::batch::{self, Budget, ItemCost};
use crate::config::{ClientConfig, DEFAULT_LIST_PAGE};
use crate::connection::{self, NodeConnection};
use crate::error::Error;
use crate::tls;

/// How long [`Client::close`] waits for the close to reach the node.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A connection to a Strata cluster. Cheap to clone (all clones share one connection and
/// can be used from many tasks at once).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    endpoint: Endpoint,
    node: NodeConnection,
    next_id: AtomicU64,
}

/// One page of [`Client::list_keys_page`].
#[derive(Clone, Debug, PartialEq)]
pub struct KeysPage {
    /// Keys, in key order, with their metadata if it was asked for.
    pub keys: Vec<(Key, Option<EntryMeta>)>,
    /// Pass as `after` to get the next page; `None` after the last page.
    pub next: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.config.addr)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Checks the configuration, loads the certificates, resolves the node's address and
    /// connects to it. Later requests reuse that connection and reconnect if it breaks.
    pub async fn connect(config: ClientConfig) -> Result<Self, Error> {
        config.validate()?;
        let quic = tls::quic_config(&config.tls)?;
        let remote = connection::resolve(&config.addr).await?;
        let bind: SocketAddr = if remote.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = Endpoint::client(bind).map_err(|e| Error::Connect {
            addr: config.addr.clone(),
            reason: format!("cannot open a UDP socket on {bind}: {e}"),
        })?;
        let node = NodeConnection::new(&config, remote, endpoint.clone(), quic)?;
        node.connection().await?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                endpoint,
                node,
                next_id: AtomicU64::new(1),
            }),
        })
    }

    /// The configuration the client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Closes the connection (telling the node) and waits up to a second for the close to be
    /// delivered. Requests made afterwards connect again.
    pub async fn close(&self) {
        self.inner.node.close();
        let _ = tokio::time::timeout(CLOSE_GRACE, self.inner.endpoint.wait_idle()).await;
    }

    /// Checks that the node answers; returns its id.
    pub async fn ping(&self) -> Result<NodeId, Error> {
        match self.call(Request::Ping, &[]).await?.0 {
            Response::Pong { node, .. } => Ok(node),
            other => Err(unexpected("ping", &other)),
        }
    }

    /// The entry under `key`, or `None` if there is none (or it expired).
    pub async fn get(&self, namespace: &Namespace, key: &Key) -> Result<Option<Entry>, Error> {
        let request = Request::Get {
            namespace: namespace.to_string(),
            key: key.to_string(),
        };
        match self.call(request, &[]).await? {
            (Response::Entry(None), _) => Ok(None),
            (Response::Entry(Some(entry)), bodies) => {
                let mut bodies = bodies.into_iter();
                entry_from_wire(entry, &mut bodies).map(Some)
            }
            (other, _) => Err(unexpected("get", &other)),
        }
    }

    /// Stores `value` under `key`, expiring after `ttl` (never if `None`). Large values are
    /// streamed from their own buffers. Retried on transient failures: writing the same value
    /// twice leaves the same value.
    pub async fn set(
        &self,
        namespace: &Namespace,
        key: &Key,
        value: Value,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        let (value, streamed) = wire::split_value(&value, self.inner.config.inline_limit);
        let request = Request::Set {
            namespace: namespace.to_string(),
            key: key.to_string(),
            ttl_ms: ttl.map(ttl_ms),
            value,
        };
        let bodies: Vec<Bytes> = streamed.into_iter().flatten().collect();
        match self.call(request, &bodies).await?.0 {
            Response::Stored => Ok(()),
            other => Err(unexpected("set", &other)),
        }
    }

    /// Deletes `key`; whether it existed.
    pub async fn delete(&self, namespace: &Namespace, key: &Key) -> Result<bool, Error> {
        let request = Request::Delete {
            namespace: namespace.to_string(),
            key: key.to_string(),
        };
        match self.call(request, &[]).await?.0 {
            Response::Deleted(existed) => Ok(existed),
            other => Err(unexpected("delete", &other)),
        }
    }

    /// Whether a live entry is stored under `key`.
    pub async fn exists(&self, namespace: &Namespace, key: &Key) -> Result<bool, Error> {
        let request = Request::Exists {
            namespace: namespace.to_string(),
            key: key.to_string(),
        };
        match self.call(request, &[]).await?.0 {
            Response::Exists(exists) => Ok(exists),
            other => Err(unexpected("exists", &other)),
        }
    }

    /// The metadata of the entry under `key`, without its value.
    pub async fn metadata(
        &self,
        namespace: &Namespace,
        key: &Key,
    ) -> Result<Option<EntryMeta>, Error> {
        let request = Request::Metadata {
            namespace: namespace.to_string(),
            key: key.to_string(),
        };
        match self.call(request, &[]).await?.0 {
            Response::Metadata(meta) => Ok(meta),
            other => Err(unexpected("metadata", &other)),
        }
    }

    /// Deletes every entry of the namespace whose key matches the glob `pattern` (every
    /// entry if `None`); how many were removed.
    pub async fn clear(&self, namespace: &Namespace, pattern: Option<&str>) -> Result<u64, Error> {
        let request = Request::Clear {
            namespace: namespace.to_string(),
            pattern: pattern.map(str::to_owned),
        };
        match self.call(request, &[]).await?.0 {
            Response::Cleared(n) => Ok(n),
            other => Err(unexpected("clear", &other)),
        }
    }

    /// Every key of the namespace matching the glob `pattern` (all if `None`), in key order,
    /// with metadata if `with_meta`. Fetched a page of 1000 at a time.
    pub async fn list_keys(
        &self,
        namespace: &Namespace,
        pattern: Option<&str>,
        with_meta: bool,
    ) -> Result<Vec<(Key, Option<EntryMeta>)>, Error> {
        let mut keys = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .list_keys_page(
                    namespace,
                    pattern,
                    with_meta,
                    after.as_deref(),
                    DEFAULT_LIST_PAGE,
                )
                .await?;
            keys.extend(page.keys);
            match page.next {
                None => return Ok(keys),
                Some(next) if after.as_ref() == Some(&next) => {
                    return Err(Error::Protocol(format!(
                        "listing keys does not advance: the node returned the same page cursor {next:?} twice"
                    )));
                }
                Some(next) => after = Some(next),
            }
        }
    }

    /// One page of keys: at most `limit`, starting after the key `after` (from the previous
    /// page's [`KeysPage::next`]).
    pub async fn list_keys_page(
        &self,
        namespace: &Namespace,
        pattern: Option<&str>,
        with_meta: bool,
        after: Option<&str>,
        limit: u32,
    ) -> Result<KeysPage, Error> {
        let request = Request::ListKeys {
            namespace: namespace.to_string(),
            pattern: pattern.map(str::to_owned),
            with_meta,
            after: after.map(str::to_owned),
            limit,
        };
        match self.call(request, &[]).await?.0 {
            Response::Keys { keys, next } => {
                let keys = keys
                    .into_iter()
                    .map(|(key, meta)| {
                        Key::new(&key)
                            .map(|key| (key, meta))
                            .map_err(|e| Error::Protocol(format!("node listed a bad key: {e}")))
                    })
                    .collect::<Result<_, _>>()?;
                Ok(KeysPage { keys, next })
            }
            other => Err(unexpected("list_keys", &other)),
        }
    }

    /// The node's counters and sizes (its tiers' statistics), as JSON.
    pub async fn stats(&self) -> Result<serde_json::Value, Error> {
        match self.call(Request::Stats, &[]).await?.0 {
            Response::Stats(json) => serde_json::from_str(&json)
                .map_err(|e| Error::Protocol(format!("node statistics are not JSON: {e}"))),
            other => Err(unexpected("stats", &other)),
        }
    }

    /// The entries under `keys`, in the same order (`None` for a miss). Sent as several
    /// requests in parallel when there are many keys (few enough per request that the
    /// answer frame stays under the frame limit); fails if any request fails.
    pub async fn get_many(
        &self,
        namespace: &Namespace,
        keys: &[Key],
    ) -> Result<Vec<Option<Entry>>, Error> {
        let config = &self.inner.config;
        let per_request = batch::get_batch_len(
            config.limits.max_frame_bytes,
            config.inline_limit,
            config.batch_max_items,
        );
        // Owned chunks: a stream of futures that borrow their argument would make this
        // call's future lose `Send` (rustc cannot prove it for every lifetime).
        let chunks: Vec<Vec<Key>> = keys.chunks(per_request).map(<[Key]>::to_vec).collect();
        let batches: Vec<Vec<Option<Entry>>> = futures::stream::iter(chunks)
            .map(|chunk| self.get_batch(namespace, chunk))
            .buffered(config.batch_parallelism)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        Ok(batches.into_iter().flatten().collect())
    }

    async fn get_batch(
        &self,
        namespace: &Namespace,
        keys: Vec<Key>,
    ) -> Result<Vec<Option<Entry>>, Error> {
        let request = Request::GetMany {
            namespace: namespace.to_string(),
            keys: keys.iter().map(Key::to_string).collect(),
        };
        match self.call(request, &[]).await? {
            (Response::Entries(entries), bodies) if entries.len() == keys.len() => {
                let mut bodies = bodies.into_iter();
                entries
                    .into_iter()
                    .map(|e| e.map(|e| entry_from_wire(e, &mut bodies)).transpose())
                    .collect()
            }
            (Response::Entries(entries), _) => Err(Error::Protocol(format!(
                "asked for {} keys, got {} answers",
                keys.len(),
                entries.len()
            ))),
            (other, _) => Err(unexpected("get_many", &other)),
        }
    }

    /// Stores many values, all expiring after `ttl`; one outcome per item, in order. Items
    /// are sent as several requests in parallel, each within the batch budgets of the
    /// configuration (inline bytes per frame, streamed bytes, item count); large values are
    /// streamed. A request that fails as a whole fails each of its items with the same error.
    /// Retried like [`Client::set`].
    pub async fn set_many(
        &self,
        namespace: &Namespace,
        items: Vec<(Key, Value)>,
        ttl: Option<Duration>,
    ) -> Vec<Result<(), Error>> {
        let config = &self.inner.config;
        let prepared: Vec<PreparedItem> = items
            .iter()
            .map(|(key, value)| {
                let (wire, streamed) = wire::split_value(value, config.inline_limit);
                PreparedItem {
                    key: key.to_string(),
                    wire,
                    streamed,
                }
            })
            .collect();
        // The wire forms hold the values' own buffers (streamed ones uncopied); the
        // originals are no longer needed.
        drop(items);
        let costs: Vec<ItemCost> = prepared
            .iter()
            .map(|item| {
                ItemCost::of_set(
                    &item.key,
                    &item.wire.format,
                    item.wire.body.len(),
                    item.streamed.is_some(),
                )
            })
            .collect();
        let budget = Budget {
            frame_bytes: config.batch_frame_bytes,
            streamed_bytes: config.batch_streamed_bytes,
            max_items: config.batch_max_items,
        };
        let mut rest = prepared.into_iter();
        let batches: Vec<Vec<PreparedItem>> = batch::plan(&costs, budget)
            .into_iter()
            .map(|range| rest.by_ref().take(range.len()).collect())
            .collect();
        let ttl_ms = ttl.map(ttl_ms);
        futures::stream::iter(batches)
            .map(|items| self.set_batch(namespace, items, ttl_ms))
            .buffered(config.batch_parallelism)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn set_batch(
        &self,
        namespace: &Namespace,
        items: Vec<PreparedItem>,
        ttl_ms: Option<u64>,
    ) -> Vec<Result<(), Error>> {
        let count = items.len();
        let mut bodies = Vec::new();
        let mut wire_items = Vec::with_capacity(count);
        for item in items {
            bodies.extend(item.streamed.into_iter().flatten());
            wire_items.push((item.key, item.wire));
        }
        let request = Request::SetMany {
            namespace: namespace.to_string(),
            ttl_ms,
            items: wire_items,
        };
        let outcome = match self.call(request, &bodies).await {
            Ok((Response::StoredMany(outcomes), _)) if outcomes.len() == count => {
                return outcomes
                    .into_iter()
                    .map(|o| o.map_or(Ok(()), |e: WireError| Err(e.into())))
                    .collect();
            }
            Ok((Response::StoredMany(outcomes), _)) => Error::Protocol(format!(
                "sent {count} items, got {} outcomes",
                outcomes.len()
            )),
            Ok((other, _)) => unexpected("set_many", &other),
            Err(e) => e,
        };
        vec![Err(outcome); count]
    }

    /// Sends one request with retries; a node's error answer becomes [`Error::Server`].
    async fn call(
        &self,
        request: Request,
        bodies: &[Bytes],
    ) -> Result<(Response, Vec<Bytes>), Error> {
        let inner = &*self.inner;
        // One id for all attempts, so a node's logs tie the retries of a request together.
        let frame = RequestFrame {
            id: inner.next_id.fetch_add(1, Ordering::Relaxed),
            epoch: 0,
            request,
        };
        let mut retry = 0;
        loop {
            let outcome = match inner.node.exchange(&frame, bodies).await {
                Ok((answer, _)) if answer.id != frame.id => Err(Error::Protocol(format!(
                    "answer for request {} arrived on the stream of request {}",
                    answer.id, frame.id
                ))),
                Ok((answer, bodies)) => match answer.response {
                    Response::Error(e) => Err(Error::from(e)),
                    response => Ok((response, bodies)),
                },
                Err(e) => Err(e),
            };
            match outcome {
                Err(e) if e.is_retryable() && retry < inner.config.retries => {
                    let pause = inner.config.backoff(retry);
                    tracing::debug!(
                        id = frame.id,
                        kind = frame.request.kind(),
                        node = inner.node.addr(),
                        retry = retry + 1,
                        ?pause,
                        error = %e,
                        "retrying"
                    );
                    tokio::time::sleep(pause).await;
                    retry += 1;
                }
                outcome => return outcome,
            }
        }
    }
}

/// A `set_many` item in wire form, with the buffers to stream if it is large.
struct PreparedItem {
    key: String,
    wire: WireValue,
    streamed: Option<[Bytes; 2]>,
}

/// Milliseconds of a TTL for the wire; a non-zero TTL never rounds down to zero.
fn ttl_ms(ttl: Duration) -> u64 {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 && !ttl.is_zero() { 1 } else { ms }
}

/// Rebuilds an entry from its wire form, taking its payload from `streamed` if it followed
/// the frame, and checks the payload against the checksum in its metadata.
fn entry_from_wire(
    entry: WireEntry,
    streamed: &mut impl Iterator<Item = Bytes>,
) -> Result<Entry, Error> {
    let payload = match entry.body {
        Body::Inline(bytes) => bytes,
        Body::Streamed(_) => streamed
            .next()
            .ok_or_else(|| Error::Protocol("a streamed value's bytes are missing".into()))?,
    };
    let checksum = strata_proto::checksum(&payload);
    if checksum != entry.meta.checksum {
        return Err(Error::Protocol(format!(
            "value fails its checksum (computed {checksum:08x}, metadata says {:08x})",
            entry.meta.checksum
        )));
    }
    let value = wire::join_value(&entry.meta.format, payload)
        .map_err(|e| Error::Protocol(format!("node sent a value that does not decode: {e}")))?;
    Ok(Entry {
        meta: entry.meta,
        value,
    })
}

/// The error for an answer of the wrong kind.
fn unexpected(request: &str, response: &Response) -> Error {
    Error::Protocol(format!(
        "node answered a {request} request with {}",
        response.kind()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::{Timestamp, Version};

    /// Compiles only if a client can be shared across tasks and its calls spawned.
    #[allow(dead_code)]
    fn clients_and_their_calls_are_send(client: &Client, ns: &Namespace, keys: &[Key]) {
        fn shared<T: Clone + Send + Sync + 'static>(_: &T) {}
        fn send<T: Send>(_: T) {}
        shared(client);
        send(client.get(ns, &keys[0]));
        send(client.set(ns, &keys[0], Value::from(Vec::new()), None));
        send(client.get_many(ns, keys));
        send(client.set_many(ns, Vec::new(), None));
        send(client.list_keys(ns, None, true));
        send(client.stats());
    }

    #[test]
    fn ttls_keep_millisecond_precision_and_never_round_to_zero() {
        assert_eq!(ttl_ms(Duration::from_secs(2)), 2000);
        assert_eq!(ttl_ms(Duration::from_micros(10)), 1);
        assert_eq!(ttl_ms(Duration::ZERO), 0);
        assert_eq!(ttl_ms(Duration::MAX), u64::MAX);
    }

    #[test]
    fn entries_are_rebuilt_from_inline_or_streamed_payloads() {
        let value = Value::from(b"hello".to_vec());
        let entry = Entry::new(value.clone(), Timestamp(1), None, Version::ZERO);
        let inline = WireEntry {
            meta: entry.meta.clone(),
            body: Body::Inline(Bytes::from_static(b"hello")),
        };
        assert_eq!(
            entry_from_wire(inline, &mut std::iter::empty()).unwrap(),
            entry
        );
        let streamed = WireEntry {
            meta: entry.meta.clone(),
            body: Body::Streamed(5),
        };
        let mut bodies = vec![Bytes::from_static(b"hello")].into_iter();
        assert_eq!(
            entry_from_wire(streamed.clone(), &mut bodies).unwrap(),
            entry
        );
        assert!(matches!(
            entry_from_wire(streamed, &mut std::iter::empty()),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn corrupt_payloads_are_refused() {
        let entry = Entry::new(
            Value::from(b"hello".to_vec()),
            Timestamp(1),
            None,
            Version::ZERO,
        );
        let corrupt = WireEntry {
            meta: entry.meta,
            body: Body::Inline(Bytes::from_static(b"jello")),
        };
        let err = entry_from_wire(corrupt, &mut std::iter::empty()).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}
